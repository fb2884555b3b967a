//! The HTTP API of the runner (`/api/v1/scripts…`): handlers with their OpenAPI annotations,
//! returned by [`Runner::router`] with the runner as state. The binary mounts it behind the
//! API-key guard (scope `operate`); the handlers check each script's own scope, and `admin`
//! for reload and the audit log, from the [`Caller`] the guard recorded.
//!
//! Errors are `application/problem+json`. Secret argument values appear in no answer: the
//! recorded arguments hold `***`, and the output is masked.

use crate::manifest::{ArgType, ArgValue, ArgvStyle, Script};
use crate::output::Stream;
use crate::runner::Runner;
use crate::store::{RunRecord, Status};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kickstand_domain::timefmt::format_ms;
use kickstand_service::{Caller, Problem};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The header that makes a start idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

impl Runner {
    /// The `/api/v1/scripts` routes with this runner as their state.
    pub fn router(self: &Arc<Self>) -> OpenApiRouter {
        OpenApiRouter::new()
            .routes(routes!(list_scripts))
            .routes(routes!(reload_scripts))
            .routes(routes!(list_runs))
            .routes(routes!(audit_log))
            .routes(routes!(get_run))
            .routes(routes!(run_output))
            .routes(routes!(cancel_run))
            .routes(routes!(get_script))
            .routes(routes!(start_run))
            .with_state(self.clone())
    }
}

/// A registered script and its argument schema.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScriptView {
    pub name: String,
    pub description: String,
    /// The executable, relative to the scripts directory.
    pub command: String,
    /// The scope a caller needs to run it.
    pub scope: String,
    pub timeout_secs: u64,
    /// The most runs of this script at once (per runner process).
    pub max_concurrent: usize,
    /// The most output kept per run (stdout and stderr together).
    pub output_limit_bytes: usize,
    /// How arguments become the argument vector.
    pub argv: ArgvStyle,
    /// The environment variables it receives from the runner's settings (names only).
    pub env: Vec<String>,
    pub args: Vec<ArgView>,
}

/// One argument of a script.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ArgView {
    pub name: String,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: ArgType,
    pub required: bool,
    /// The value used when the argument is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Json>,
    /// The allowed values (enum, or a string's allowed list).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub values: Vec<String>,
    /// A regular expression the whole string must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The longest string, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// The value is passed to the script (as `KICKSTAND_SECRET_<NAME>`) but never stored,
    /// logged or answered.
    pub secret: bool,
}

impl ScriptView {
    fn from(s: &Script) -> ScriptView {
        ScriptView {
            name: s.name.clone(),
            description: s.description.clone(),
            command: s.command.clone(),
            scope: s.scope.clone(),
            timeout_secs: s.timeout.as_secs(),
            max_concurrent: s.max_concurrent,
            output_limit_bytes: s.output_limit,
            argv: s.argv_style,
            env: s.env.clone(),
            args: s
                .args
                .iter()
                .map(|a| ArgView {
                    name: a.name.clone(),
                    description: a.description.clone(),
                    kind: a.kind,
                    required: a.required,
                    default: a.default.as_ref().map(ArgValue::to_json),
                    values: a.values.clone(),
                    pattern: a.pattern.as_ref().map(|(p, _)| p.clone()),
                    min: a.min,
                    max: a.max,
                    max_len: (a.kind == ArgType::String).then_some(a.max_len),
                    secret: a.secret,
                })
                .collect(),
        }
    }
}

/// A manifest that was refused.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvalidManifest {
    /// The manifest's file name.
    pub file: String,
    /// Why it was refused.
    pub error: String,
}

/// The registered scripts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScriptList {
    pub scripts: Vec<ScriptView>,
    /// Manifests refused, with the reason; those scripts cannot run until fixed.
    pub invalid: Vec<InvalidManifest>,
    /// Why the scripts directory could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory_error: Option<String>,
}

/// A request to run a script.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// Argument name → value (JSON string, number or boolean as the schema says; numbers and
    /// booleans may also be strings).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub args: Map<String, Json>,
}

/// A run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub run_id: String,
    pub script: String,
    /// `queued`, `running`, `succeeded`, `failed`, `timed_out` or `cancelled`.
    pub status: String,
    /// The arguments, secret ones as `***`.
    #[schema(value_type = Object)]
    pub args: Map<String, Json>,
    /// Who started it: the API key's name and id.
    pub started_by: String,
    /// RFC 3339.
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// From start to end, or to now while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// The exit code, when the process exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The signal that ended the process, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i64>,
    /// Why it did not succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The captured stdout (masked, bounded); only in the answer for one run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// The captured stderr (masked, bounded); only in the answer for one run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Every byte the script wrote, kept or not.
    pub output_bytes: i64,
    /// Whether output beyond the limit was dropped.
    pub truncated: bool,
    /// The runner process that runs it.
    pub instance: String,
}

impl RunView {
    pub fn from_record(r: &RunRecord, with_output: bool) -> RunView {
        let end = r
            .finished_at
            .or_else(|| (r.status == Status::Running).then(kickstand_service::now_ms));
        RunView {
            run_id: r.id.clone(),
            script: r.script.clone(),
            status: r.status.as_str().into(),
            args: r.args.clone(),
            started_by: r.started_by.clone(),
            created_at: format_ms(r.created_at),
            started_at: r.started_at.map(format_ms),
            finished_at: r.finished_at.map(format_ms),
            duration_ms: r.started_at.zip(end).map(|(s, e)| (e - s).max(0)),
            exit_code: r.exit_code,
            signal: r.signal,
            error: r.error.clone(),
            stdout: if with_output { r.stdout.clone() } else { None },
            stderr: if with_output { r.stderr.clone() } else { None },
            output_bytes: r.output_bytes,
            truncated: r.truncated,
            instance: r.instance.clone(),
        }
    }
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One audit record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    pub who: String,
    /// `start`, `cancel` or `finish`.
    pub action: String,
    pub script: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The arguments, secrets as `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Json>,
    /// `accepted`, `refused: …`, `requested`, or the run's final status.
    pub outcome: String,
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).expect("API answers serialize"),
    )
        .into_response()
}

fn script_list(runner: &Runner) -> ScriptList {
    let reg = runner.registry();
    ScriptList {
        scripts: reg.scripts.values().map(|s| ScriptView::from(s)).collect(),
        invalid: reg
            .invalid
            .iter()
            .map(|(file, error)| InvalidManifest {
                file: file.clone(),
                error: error.clone(),
            })
            .collect(),
        directory_error: reg.dir_error.clone(),
    }
}

fn check_params(q: &HashMap<String, String>, known: &[&str]) -> Result<(), Problem> {
    match q.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(Problem::invalid(
            k.clone(),
            format!("unknown parameter {k:?}"),
        )),
        None => Ok(()),
    }
}

fn limit_param(q: &HashMap<String, String>) -> Result<usize, Problem> {
    match q.get("limit") {
        None => Ok(50),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=500).contains(l))
            .ok_or_else(|| Problem::invalid("limit", "limit must be a whole number from 1 to 500")),
    }
}

/// `GET /api/v1/scripts`
#[utoipa::path(
    get,
    path = "/api/v1/scripts",
    tag = "scripts",
    summary = "List registered scripts",
    description = "Every script with a valid manifest and its argument schema, and the manifests \
        that were refused with the reason.",
    responses(
        (status = 200, description = "The scripts.", body = ScriptList, content_type = "application/json"),
    )
)]
async fn list_scripts(State(runner): State<Arc<Runner>>) -> Response {
    json(StatusCode::OK, &script_list(&runner))
}

/// `GET /api/v1/scripts/{name}`
#[utoipa::path(
    get,
    path = "/api/v1/scripts/{name}",
    tag = "scripts",
    summary = "A registered script",
    params(("name" = String, Path, description = "The script's name.")),
    responses(
        (status = 200, description = "The script and its argument schema.", body = ScriptView, content_type = "application/json"),
        (status = 404, description = "No such script.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The script's manifest is invalid; `detail` says why.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_script(
    State(runner): State<Arc<Runner>>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let script = runner.script(&name)?;
    Ok(json(StatusCode::OK, &ScriptView::from(&script)))
}

/// `POST /api/v1/scripts/reload`
#[utoipa::path(
    post,
    path = "/api/v1/scripts/reload",
    tag = "scripts",
    summary = "Reload the scripts directory",
    description = "Loads every manifest again (the runner also does so by itself when the \
        directory changes). Needs the `admin` scope. Runs in progress are not affected.",
    responses(
        (status = 200, description = "The scripts now registered.", body = ScriptList, content_type = "application/json"),
        (status = 403, description = "The key lacks the `admin` scope.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn reload_scripts(
    State(runner): State<Arc<Runner>>,
    caller: Caller,
) -> Result<Response, Problem> {
    if !caller.allows("admin") {
        return Err(Problem::forbidden(
            "reloading the scripts needs the admin scope",
        ));
    }
    runner.reload().await;
    tracing::info!(message = "scripts reloaded on request", by = %caller.audit_name());
    Ok(json(StatusCode::OK, &script_list(&runner)))
}

/// `POST /api/v1/scripts/{name}/runs`
#[utoipa::path(
    post,
    path = "/api/v1/scripts/{name}/runs",
    tag = "scripts",
    summary = "Run a script",
    description = "Checks the arguments against the script's schema and starts it in the \
        background. An empty body runs it with no arguments. With an `Idempotency-Key` header, \
        a repeated request with the same script and arguments answers the first run (with \
        `Idempotent-Replayed: true`) instead of starting another; the same key with other \
        arguments is refused with 422. When the script's or the runner's concurrency limit is \
        reached the run is refused with 429 and `Retry-After` (nothing is queued).",
    params(
        ("name" = String, Path, description = "The script's name."),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters."),
    ),
    request_body(content = StartRun, content_type = "application/json"),
    responses(
        (status = 202, description = "Started (or the run of the same key). `Location` is the run's URL.", body = RunView, content_type = "application/json"),
        (status = 400, description = "The body or an argument is invalid; `field` names it (`args.<name>`).", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the script's scope.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such script.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The script's manifest is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The idempotency key was used for another request.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A concurrency limit is reached; retry after `Retry-After`.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn start_run(
    State(runner): State<Arc<Runner>>,
    Path(name): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            Problem::invalid(
                "Idempotency-Key",
                "the Idempotency-Key must be printable ASCII",
            )
        })?),
    };
    let req: StartRun = if body.iter().all(u8::is_ascii_whitespace) {
        StartRun::default()
    } else if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::invalid(
            "body",
            "the body must be a JSON object: {\"args\": {…}}",
        ));
    } else {
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." || path == "?" {
                "body".to_string()
            } else {
                path
            };
            Problem::invalid(
                field,
                format!("the body must be {{\"args\": {{…}}}}: {}", e.inner()),
            )
        })?
    };
    let started = runner.start_run(&name, &req.args, &caller, key).await?;
    let mut resp = json(
        StatusCode::ACCEPTED,
        &RunView::from_record(&started.run, false),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/scripts/runs/{}", started.run.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if started.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// `GET /api/v1/scripts/runs`
#[utoipa::path(
    get,
    path = "/api/v1/scripts/runs",
    tag = "scripts",
    summary = "List runs",
    description = "Runs newest first, without their output, optionally of one script or in one \
        status; paged with `limit` (1–500, default 50) and `cursor` (from `next_cursor`).",
    params(
        ("script" = Option<String>, Query, description = "Only runs of this script."),
        ("status" = Option<String>, Query, description = "Only runs in this status."),
        ("limit" = Option<usize>, Query, description = "Runs per page (1–500, default 50)."),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of runs.", body = RunPage, content_type = "application/json"),
        (status = 400, description = "A parameter is invalid; `field` names it.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_runs(
    State(runner): State<Arc<Runner>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    check_params(&q, &["script", "status", "limit", "cursor"])?;
    let status = q
        .get("status")
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                Problem::invalid(
                    "status",
                    "status must be one of queued, running, succeeded, failed, timed_out, cancelled",
                )
            })
        })
        .transpose()?;
    let limit = limit_param(&q)?;
    let cursor = q
        .get("cursor")
        .map(|c| {
            c.split_once(':')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)))
                .ok_or_else(|| {
                    Problem::invalid(
                        "cursor",
                        "cursor must be a next_cursor from a previous page",
                    )
                })
        })
        .transpose()?;
    let runs = runner
        .store()
        .list(
            q.get("script").map(String::as_str),
            status,
            cursor,
            limit + 1,
        )
        .await?;
    let more = runs.len() > limit;
    let next_cursor = more
        .then(|| runs.get(limit - 1))
        .flatten()
        .map(|r| format!("{}:{}", r.created_at, r.id));
    let page = RunPage {
        runs: runs
            .iter()
            .take(limit)
            .map(|r| RunView::from_record(r, false))
            .collect(),
        next_cursor,
    };
    Ok(json(StatusCode::OK, &page))
}

/// `GET /api/v1/scripts/runs/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/scripts/runs/{id}",
    tag = "scripts",
    summary = "A run",
    description = "The run with its captured output (bounded, secrets masked); while it runs in \
        the process answering, the output so far.",
    params(("id" = String, Path, description = "The run id.")),
    responses(
        (status = 200, description = "The run.", body = RunView, content_type = "application/json"),
        (status = 404, description = "No such run.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_run(
    State(runner): State<Arc<Runner>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let run = runner
        .run(&id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))?;
    Ok(json(StatusCode::OK, &RunView::from_record(&run, true)))
}

/// `GET /api/v1/scripts/runs/{id}/output`
#[utoipa::path(
    get,
    path = "/api/v1/scripts/runs/{id}/output",
    tag = "scripts",
    summary = "Follow a run's output",
    description = "Server-sent events: `stdout` and `stderr` events whose data is a JSON string \
        (a piece of output, in the order it was read), then one `end` event whose data is the \
        run (JSON, without output) once it is recorded as ended. While the run goes on in the \
        process answering, pieces arrive as the script writes them; for an ended run (or one \
        running in another process) the stored output comes at once, stdout before stderr.",
    params(("id" = String, Path, description = "The run id.")),
    responses(
        (status = 200, description = "The event stream.", content_type = "text/event-stream"),
        (status = 404, description = "No such run.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn run_output(
    State(runner): State<Arc<Runner>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let record = runner
        .store()
        .get(&id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))?;
    let state = match runner.live_output(&id) {
        Some(out) => Follow::Live {
            rx: out.subscribe(),
            out,
            next: 0,
            queue: VecDeque::new(),
        },
        None => {
            let mut queue = VecDeque::new();
            for (name, text) in [("stdout", &record.stdout), ("stderr", &record.stderr)] {
                if let Some(t) = text.as_ref().filter(|t| !t.is_empty()) {
                    queue.push_back(output_event(name, t));
                }
            }
            if record.status.is_final() {
                let end = serde_json::to_string(&RunView::from_record(&record, false))
                    .expect("a run serializes");
                queue.push_back(Event::default().event("end").data(end));
            }
            Follow::Done(queue)
        }
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let ev = st.next().await?;
        Some((Ok::<_, Infallible>(ev), st))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn output_event(stream: &str, text: &str) -> Event {
    Event::default()
        .event(stream)
        .data(serde_json::to_string(text).expect("a string serializes"))
}

/// Where an output stream is.
enum Follow {
    Live {
        out: Arc<crate::output::LiveOutput>,
        rx: tokio::sync::watch::Receiver<u64>,
        /// The next chunk to send.
        next: usize,
        queue: VecDeque<Event>,
    },
    Done(VecDeque<Event>),
}

impl Follow {
    async fn next(&mut self) -> Option<Event> {
        match self {
            Follow::Done(q) => q.pop_front(),
            Follow::Live {
                out,
                rx,
                next,
                queue,
            } => loop {
                if let Some(ev) = queue.pop_front() {
                    return Some(ev);
                }
                if *next == usize::MAX {
                    return None;
                }
                rx.borrow_and_update();
                {
                    let t = out.transcript.lock();
                    for (stream, bytes) in t.chunks_from(*next) {
                        let name = match stream {
                            Stream::Stdout => "stdout",
                            Stream::Stderr => "stderr",
                        };
                        queue.push_back(output_event(name, &String::from_utf8_lossy(bytes)));
                        *next += 1;
                    }
                }
                if queue.is_empty() {
                    if let Some(end) = out.end() {
                        *next = usize::MAX;
                        queue.push_back(Event::default().event("end").data(end));
                        continue;
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        }
    }
}

/// `POST /api/v1/scripts/runs/{id}/cancel`
#[utoipa::path(
    post,
    path = "/api/v1/scripts/runs/{id}/cancel",
    tag = "scripts",
    summary = "Cancel a run",
    description = "Sends SIGTERM to the run's process group, then SIGKILL after the grace period; \
        the run ends `cancelled`. A run of another runner process is cancelled by it within a \
        few seconds. Needs the script's scope.",
    params(("id" = String, Path, description = "The run id.")),
    responses(
        (status = 202, description = "Cancelling; the run as it was.", body = RunView, content_type = "application/json"),
        (status = 403, description = "The key lacks the script's scope.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run has ended.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn cancel_run(
    State(runner): State<Arc<Runner>>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, Problem> {
    let run = runner
        .store()
        .get(&id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))?;
    let scope = runner
        .registry()
        .scripts
        .get(&run.script)
        .map_or_else(|| "operate".to_string(), |s| s.scope.clone());
    if !caller.allows(&scope) {
        return Err(Problem::forbidden(format!(
            "cancelling a run of {:?} needs the {scope:?} scope",
            run.script
        )));
    }
    match runner.cancel(&id, &caller).await? {
        None => Err(Problem::not_found(format!("no run {id}"))),
        Some(Err(status)) => Err(Problem::conflict(format!(
            "run {id} has ended ({})",
            status.as_str()
        ))),
        Some(Ok(run)) => Ok(json(
            StatusCode::ACCEPTED,
            &RunView::from_record(&run, false),
        )),
    }
}

/// `GET /api/v1/scripts/audit`
#[utoipa::path(
    get,
    path = "/api/v1/scripts/audit",
    tag = "scripts",
    summary = "The runner's audit log",
    description = "Who started, was refused, cancelled or finished which run, with the \
        arguments (secrets as `***`), newest first; paged with `limit` and `cursor`. Needs the \
        `admin` scope.",
    params(
        ("limit" = Option<usize>, Query, description = "Entries per page (1–500, default 50)."),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of the log.", body = AuditPage, content_type = "application/json"),
        (status = 400, description = "A parameter is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the `admin` scope.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn audit_log(
    State(runner): State<Arc<Runner>>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    if !caller.allows("admin") {
        return Err(Problem::forbidden("the audit log needs the admin scope"));
    }
    check_params(&q, &["limit", "cursor"])?;
    let limit = limit_param(&q)?;
    let before = q
        .get("cursor")
        .map(|c| {
            c.parse::<i64>().map_err(|_| {
                Problem::invalid(
                    "cursor",
                    "cursor must be a next_cursor from a previous page",
                )
            })
        })
        .transpose()?;
    let entries = runner.store().audit_log(before, limit + 1).await?;
    let more = entries.len() > limit;
    let next_cursor = more
        .then(|| entries.get(limit - 1))
        .flatten()
        .map(|e| e.id.to_string());
    let page = AuditPage {
        entries: entries
            .into_iter()
            .take(limit)
            .map(|e| AuditView {
                id: e.id,
                at: format_ms(e.at),
                who: e.who,
                action: e.action,
                script: e.script,
                run_id: e.run_id,
                args: e.args,
                outcome: e.outcome,
            })
            .collect(),
        next_cursor,
    };
    Ok(json(StatusCode::OK, &page))
}
