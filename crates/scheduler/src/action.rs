//! What a job or a rule does, and doing it: one HTTP request to the ops API (a script run, a
//! message, a built-in task), with an `Idempotency-Key` so a retried request never acts twice.
//!
//! Owns the action's shape and the HTTP client; it does not know about jobs, runs or leases.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::time::Duration;
use utoipa::ToSchema;

/// An action: exactly one of `script`, `message` or `task`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Start a registered script: `POST /api/v1/scripts/{name}/runs` with `{args}`.
    Script(ScriptAction),
    /// Send a message: `POST /api/v1/messages` with this object as the body (`channel`, `to`,
    /// `template`, `vars`, and whatever else the messenger takes).
    #[schema(value_type = Object)]
    Message(Map<String, Json>),
    /// Run a built-in task: `POST /api/v1/tasks/{task}`.
    Task(BuiltinTask),
}

/// A script to run.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptAction {
    /// The registered script's name.
    pub name: String,
    /// Its arguments (checked by the runner against the script's manifest).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub args: Map<String, Json>,
}

/// The built-in tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinTask {
    /// Drop history and events past their retention.
    Retention,
    /// Look for vehicles that stopped reporting.
    StaleSweep,
    /// The daily fleet report.
    FleetReport,
}

impl BuiltinTask {
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinTask::Retention => "retention",
            BuiltinTask::StaleSweep => "stale_sweep",
            BuiltinTask::FleetReport => "fleet_report",
        }
    }
}

impl Action {
    /// `script`, `message` or `task`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Script(_) => "script",
            Action::Message(_) => "message",
            Action::Task(_) => "task",
        }
    }

    /// Checks what the ops API would refuse anyway, so a bad job is refused at creation:
    /// `(field, detail)` of the first problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        match self {
            Action::Script(s) => {
                let ok = !s.name.is_empty()
                    && s.name.len() <= 64
                    && s.name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err((
                        "action.script.name".into(),
                        "a script name is 1-64 letters, digits, `_` or `-`".into(),
                    ));
                }
            }
            Action::Message(m) => {
                // The body of `POST /api/v1/messages`: the messenger checks the rest (`to` is
                // optional for Slack, `vars` must match the template) when it is sent.
                if m.get("channel")
                    .is_none_or(|v| v.as_str().is_none_or(str::is_empty))
                {
                    return Err((
                        "action.message.channel".into(),
                        "a message needs `channel` (a non-empty string)".into(),
                    ));
                }
                let text = |key: &str| {
                    m.get(key)
                        .and_then(Json::as_str)
                        .is_some_and(|s| !s.is_empty())
                };
                if !text("template") && !text("body") {
                    return Err((
                        "action.message.template".into(),
                        "a message needs `template` (a template's name) or an inline `body`".into(),
                    ));
                }
            }
            Action::Task(_) => {}
        }
        Ok(())
    }
}

/// What came of performing an action.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Done (a message accepted, a task finished); the answer's body.
    Done(Json),
    /// A script run was started; its id (to poll and cancel) and the answer.
    Started { run_id: String, answer: Json },
    /// Refused or failed for good (a 4xx, or every attempt failed): what was said.
    Failed(String),
}

/// The status of a script run as the runner reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptStatus {
    /// `queued`, `running`, `succeeded`, `failed`, `timed_out` or `cancelled`.
    pub status: String,
    pub answer: Json,
}

impl ScriptStatus {
    pub fn finished(&self) -> bool {
        !matches!(self.status.as_str(), "queued" | "running")
    }
}

/// The HTTP client of the ops API.
#[derive(Clone)]
pub struct ActionClient {
    http: reqwest::Client,
    base: String,
    /// Sent as `Authorization: Bearer`; never logged.
    key: Option<String>,
    attempts: u32,
}

/// The largest answer body kept in a run record.
const MAX_ANSWER: usize = 16 * 1024;

impl ActionClient {
    pub fn new(
        base: &str,
        key: Option<String>,
        timeout: Duration,
        attempts: u32,
    ) -> Result<ActionClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(ActionClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
            attempts: attempts.max(1),
        })
    }

    /// Performs `action` once, whatever the retries: every attempt carries `idempotency_key`.
    pub async fn perform(&self, action: &Action, idempotency_key: &str) -> Outcome {
        let (path, body) = match action {
            Action::Script(s) => (
                format!("/api/v1/scripts/{}/runs", s.name),
                serde_json::json!({ "args": s.args }),
            ),
            Action::Message(m) => ("/api/v1/messages".to_owned(), Json::Object(m.clone())),
            Action::Task(t) => (
                format!("/api/v1/tasks/{}", t.as_str()),
                serde_json::json!({}),
            ),
        };
        match self
            .send(
                reqwest::Method::POST,
                &path,
                Some(&body),
                Some(idempotency_key),
            )
            .await
        {
            Ok(answer) => match action {
                Action::Script(_) => match answer.get("run_id").and_then(Json::as_str) {
                    Some(id) => Outcome::Started {
                        run_id: id.to_owned(),
                        answer,
                    },
                    None => Outcome::Failed(format!(
                        "the script runner's answer has no run_id: {}",
                        clip(&answer.to_string())
                    )),
                },
                _ => Outcome::Done(answer),
            },
            Err(e) => Outcome::Failed(e),
        }
    }

    /// The status of a script run.
    pub async fn script_status(&self, run_id: &str) -> Result<ScriptStatus, String> {
        let answer = self
            .send(
                reqwest::Method::GET,
                &format!("/api/v1/scripts/runs/{run_id}"),
                None,
                None,
            )
            .await?;
        let status = answer
            .get("status")
            .and_then(Json::as_str)
            .ok_or_else(|| "the script run's answer has no status".to_owned())?
            .to_owned();
        Ok(ScriptStatus { status, answer })
    }

    /// Asks the runner to cancel a script run.
    pub async fn cancel_script(&self, run_id: &str) -> Result<(), String> {
        self.send(
            reqwest::Method::POST,
            &format!("/api/v1/scripts/runs/{run_id}/cancel"),
            Some(&serde_json::json!({})),
            Some(&format!("cancel:{run_id}")),
        )
        .await
        .map(drop)
    }

    /// One request, retried on transport errors and 5xx answers (with the same key); a 4xx is
    /// final. Answers the JSON body (or `null`).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Json>,
        idempotency_key: Option<&str>,
    ) -> Result<Json, String> {
        let url = format!("{}{path}", self.base);
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt - 2))).await;
            }
            let mut req = self.http.request(method.clone(), &url);
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let json =
                        serde_json::from_str(&text).unwrap_or_else(|_| Json::String(clip(&text)));
                    if status.is_success() {
                        return Ok(if text.is_empty() { Json::Null } else { json });
                    }
                    last = format!("{method} {path} answered {status}: {}", clip(&text));
                    // 409: the same key is still in flight at the receiver; try again.
                    if status.is_client_error() && status != reqwest::StatusCode::CONFLICT {
                        return Err(last);
                    }
                }
                Err(e) => {
                    // Without the URL: it is configuration, and may be long.
                    last = format!("{method} {path} failed: {}", e.without_url());
                }
            }
        }
        Err(last)
    }
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_ANSWER {
        return text.to_owned();
    }
    let mut end = MAX_ANSWER;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
