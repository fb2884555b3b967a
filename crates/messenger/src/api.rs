//! The messenger's HTTP API: templates (`/api/v1/templates…`), channels (`/api/v1/channels`)
//! and messages (`/api/v1/messages…`), with their OpenAPI annotations. Errors are
//! `application/problem+json`; a storage failure is logged and answered with a 500 that says
//! nothing more. Bodies are limited to 256 KiB.

use crate::channel::valid_name;
use crate::service::Messenger;
use crate::store::{self, KeyState, MessageRow, TemplateRow};
use crate::template::{self, Source, TemplateError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kickstand_domain::timefmt::{format_ms, parse_rfc3339_ms};
use kickstand_service::{Caller, Problem, now_ms};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The largest request body.
const MAX_BODY: usize = 256 * 1024;
/// The most messages one page may hold.
const MAX_PAGE: usize = 500;
/// How far ahead `send_at` may be.
const MAX_AHEAD_MS: i64 = 366 * 24 * 3600 * 1000;
/// The header that names an idempotent request, and the one that marks a replayed answer.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

pub(crate) fn router() -> OpenApiRouter<Arc<Messenger>> {
    OpenApiRouter::new()
        .routes(routes!(list_templates))
        .routes(routes!(put_template, get_template))
        .routes(routes!(get_template_version))
        .routes(routes!(list_channels))
        .routes(routes!(send_message, list_messages))
        .routes(routes!(get_message))
        .routes(routes!(retry_message))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// A new version of a template.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutTemplate {
    /// The subject (MiniJinja); for chat channels it is the first, bold line.
    #[schema(example = "Low battery: {{ vehicle }}")]
    pub subject: String,
    /// The text body (MiniJinja).
    #[schema(example = "{{ vehicle }} is at {{ battery }}% in {{ zone }}.")]
    pub body: String,
    /// An HTML body (MiniJinja, values auto-escaped), sent beside the text in emails.
    pub html: Option<String>,
}

/// A stored template version.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TemplateView {
    pub name: String,
    /// 1, 2, 3, …: every `PUT` stores the next one.
    pub version: i64,
    pub subject: String,
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// The variables the template uses: a message must give every one.
    pub variables: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Who stored it (the API key's name and id).
    pub created_by: String,
}

impl From<TemplateRow> for TemplateView {
    fn from(t: TemplateRow) -> TemplateView {
        TemplateView {
            name: t.name,
            version: t.version,
            subject: t.subject,
            body: t.body,
            html: t.html,
            variables: t.variables,
            created_at: format_ms(t.created_at),
            created_by: t.created_by,
        }
    }
}

/// One version in a template's history.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct VersionEntry {
    pub version: i64,
    pub created_at: String,
    pub created_by: String,
}

/// A template: its latest version and the list of versions.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TemplateDetail {
    pub latest: TemplateView,
    pub versions: Vec<VersionEntry>,
}

/// Every template, latest versions.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateView>,
}

/// A message to send.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The channel's name (see `GET /api/v1/channels`).
    pub channel: String,
    /// The recipient: for email one or more addresses separated by commas (required); for
    /// webhooks passed on as `to`; ignored by Slack.
    pub to: Option<String>,
    /// The template's name; or give `subject` and `body` instead.
    pub template: Option<String>,
    /// The template's version; the latest when absent.
    pub template_version: Option<i64>,
    /// An inline subject (MiniJinja, rendered with `vars` like a template).
    pub subject: Option<String>,
    /// An inline text body (MiniJinja).
    pub body: Option<String>,
    /// An inline HTML body (MiniJinja).
    pub html: Option<String>,
    /// The template's variables: a JSON object. A variable the template uses and this lacks is
    /// a 400.
    #[schema(value_type = Object)]
    pub vars: Option<serde_json::Map<String, serde_json::Value>>,
    /// When to send: RFC 3339 or epoch milliseconds; now when absent or past.
    #[schema(value_type = Option<String>)]
    pub send_at: Option<serde_json::Value>,
}

/// A message accepted.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
pub struct SendAnswer {
    /// `msg_…`.
    pub id: String,
    /// `queued` or `scheduled` (for a later `send_at`).
    pub status: String,
}

/// What `Messenger::send` returns: the answer, and whether it is the replay of an earlier
/// request with the same idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub answer: SendAnswer,
    pub replayed: bool,
}

/// One attempt to send a message.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1-based, over the message's whole life (a retried dead letter goes on counting).
    pub attempt: i64,
    /// RFC 3339.
    pub at: String,
    pub duration_ms: i64,
    /// `sent`, `retry` (failed; tried again at `next_attempt_at`) or `failed` (dead-lettered).
    pub outcome: String,
    /// The HTTP status, or the SMTP reply code.
    pub code: Option<i64>,
    /// The start of the HTTP answer body, or the SMTP reply text.
    pub answer: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
    pub next_attempt_at: Option<String>,
}

/// A message with its attempts.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct MessageView {
    pub id: String,
    pub channel: String,
    pub to: Option<String>,
    pub subject: String,
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[schema(value_type = Object)]
    pub vars: serde_json::Value,
    pub template: Option<String>,
    pub template_version: Option<i64>,
    /// `scheduled`, `queued`, `sending`, `sent` or `dead`.
    pub status: String,
    /// Attempts so far.
    pub attempt_count: i64,
    /// When it is (or was) due: RFC 3339.
    pub due_at: String,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: String,
    pub last_error: Option<String>,
    /// Oldest first; only in `GET /api/v1/messages/{id}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptView>,
}

impl MessageView {
    fn from(m: MessageRow, attempts: Vec<store::AttemptRow>) -> MessageView {
        MessageView {
            vars: serde_json::from_str(&m.vars).unwrap_or_default(),
            id: m.id,
            channel: m.channel,
            to: m.to,
            subject: m.subject,
            body: m.body,
            html: m.html,
            template: m.template_name,
            template_version: m.template_version,
            status: m.status,
            attempt_count: m.attempts,
            due_at: format_ms(m.due_at),
            created_at: format_ms(m.created_at),
            updated_at: format_ms(m.updated_at),
            created_by: m.created_by,
            last_error: m.last_error,
            attempts: attempts
                .into_iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    at: format_ms(a.started_at),
                    duration_ms: a.duration_ms,
                    outcome: a.outcome,
                    code: a.code,
                    answer: a.answer,
                    error: a.error,
                    next_attempt_at: a.next_attempt_at.map(format_ms),
                })
                .collect(),
        }
    }
}

/// A page of messages, newest first.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Every channel, secrets replaced by where they are read from.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ChannelList {
    #[schema(value_type = Vec<Object>)]
    pub channels: Vec<serde_json::Value>,
}

fn template_problem(e: TemplateError, field_prefix: &str) -> Problem {
    Problem::invalid(
        format!("{field_prefix}{}", e.part),
        format!("template error in {e}"),
    )
}

/// `PUT /api/v1/templates/{name}`
#[utoipa::path(
    put,
    path = "/api/v1/templates/{name}",
    tag = "messenger",
    summary = "Store a new version of a template",
    description = "Checks the MiniJinja syntax of every part and stores the next version. \
        Earlier versions stay readable and usable.",
    params(("name" = String, Path, description = "1-64 of A-Z a-z 0-9 _ - .")),
    request_body(content = PutTemplate, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored.", body = TemplateView, content_type = "application/json"),
        (status = 400, description = "Not JSON, a missing field, or a syntax error (`field` names the part, `detail` the line).", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn put_template(
    State(m): State<Arc<Messenger>>,
    Path(name): Path<String>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, Problem> {
    if !valid_name(&name) {
        return Err(Problem::invalid(
            "name",
            "a template name is 1 to 64 of A-Z a-z 0-9 _ - .",
        ));
    }
    let req: PutTemplate = parse_body(&body)?;
    let variables = template::check(&Source {
        subject: &req.subject,
        body: &req.body,
        html: req.html.as_deref(),
    })
    .map_err(|e| template_problem(e, ""))?;
    let mut row = TemplateRow {
        name,
        version: 0,
        subject: req.subject,
        body: req.body,
        html: req.html,
        variables,
        created_at: now_ms(),
        created_by: caller.audit_name(),
    };
    row.version = store::put_template(&m.db, &row).await?;
    Ok(json(StatusCode::CREATED, &TemplateView::from(row)))
}

/// `GET /api/v1/templates`
#[utoipa::path(
    get,
    path = "/api/v1/templates",
    tag = "messenger",
    summary = "List templates",
    description = "The latest version of every template, by name.",
    responses((status = 200, description = "The templates.", body = TemplateList, content_type = "application/json"))
)]
async fn list_templates(State(m): State<Arc<Messenger>>) -> Result<Response, Problem> {
    let templates = store::list_templates(&m.db).await?;
    Ok(json(
        StatusCode::OK,
        &TemplateList {
            templates: templates.into_iter().map(TemplateView::from).collect(),
        },
    ))
}

/// `GET /api/v1/templates/{name}`
#[utoipa::path(
    get,
    path = "/api/v1/templates/{name}",
    tag = "messenger",
    summary = "A template: latest version and history",
    params(("name" = String, Path, description = "The template's name.")),
    responses(
        (status = 200, description = "The template.", body = TemplateDetail, content_type = "application/json"),
        (status = 404, description = "No such template.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_template(
    State(m): State<Arc<Messenger>>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let latest = store::get_template(&m.db, &name, None)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no template {name}")))?;
    let versions = store::template_versions(&m.db, &name).await?;
    Ok(json(
        StatusCode::OK,
        &TemplateDetail {
            latest: latest.into(),
            versions: versions
                .into_iter()
                .map(|(version, at, by)| VersionEntry {
                    version,
                    created_at: format_ms(at),
                    created_by: by,
                })
                .collect(),
        },
    ))
}

/// `GET /api/v1/templates/{name}/versions/{version}`
#[utoipa::path(
    get,
    path = "/api/v1/templates/{name}/versions/{version}",
    tag = "messenger",
    summary = "One version of a template",
    params(
        ("name" = String, Path, description = "The template's name."),
        ("version" = i64, Path, description = "The version."),
    ),
    responses(
        (status = 200, description = "The version.", body = TemplateView, content_type = "application/json"),
        (status = 400, description = "The version is not a number.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such template or version.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_template_version(
    State(m): State<Arc<Messenger>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let v: i64 = version
        .parse()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| Problem::invalid("version", "a version is a whole number from 1"))?;
    let t = store::get_template(&m.db, &name, Some(v))
        .await?
        .ok_or_else(|| Problem::not_found(format!("no version {v} of template {name}")))?;
    Ok(json(StatusCode::OK, &TemplateView::from(t)))
}

/// `GET /api/v1/channels`
#[utoipa::path(
    get,
    path = "/api/v1/channels",
    tag = "messenger",
    summary = "List channels",
    description = "The channels of the configuration with their settings. Secrets (URLs of \
        webhooks, signing secrets, SMTP passwords) are never shown: only where they are read \
        from (`env NAME` or `file PATH`).",
    responses((status = 200, description = "The channels.", body = ChannelList, content_type = "application/json"))
)]
async fn list_channels(State(m): State<Arc<Messenger>>) -> Response {
    let channels = m
        .deliverer
        .lanes
        .values()
        .map(|l| l.channel.public.clone())
        .collect();
    json(StatusCode::OK, &ChannelList { channels })
}

/// `POST /api/v1/messages`
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messenger",
    summary = "Send a message",
    description = "Renders the template (or the inline subject and body) with `vars` and queues \
        the message for its channel, now or at `send_at`. With an `Idempotency-Key` header, \
        the answer to the first request is stored and replayed (header `Idempotent-Replayed: \
        true`) for a request with the same key and the same body; the same key with another \
        body is a 422, and while the first request is being handled a 409. A request refused \
        (4xx) does not keep its key.",
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII characters.")),
    request_body(content = SendRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued.", body = SendAnswer, content_type = "application/json"),
        (status = 400, description = "Not JSON, a field is invalid, an unknown channel or template, or a variable the template uses is missing; `field` names it.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still being handled.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "This Idempotency-Key was used with another body.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn send_message(
    State(m): State<Arc<Messenger>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| {
                    (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    Problem::invalid(
                        "Idempotency-Key",
                        "the Idempotency-Key header must be 1 to 255 printable ASCII characters without spaces",
                    )
                })?,
        ),
    };
    let req: SendRequest = parse_body(&body)?;
    let accepted = accept(&m, req, key, &hash(&body), &caller).await?;
    let mut resp = json(StatusCode::ACCEPTED, &accepted.answer);
    if accepted.replayed {
        resp.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

pub(crate) fn hash(body: &[u8]) -> String {
    let d = Sha256::digest(body);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks, renders and queues a message, under its idempotency key when there is one.
pub(crate) async fn accept(
    m: &Messenger,
    req: SendRequest,
    key: Option<&str>,
    hash: &str,
    caller: &Caller,
) -> Result<Accepted, Problem> {
    let owner = caller.key_id.clone().unwrap_or_default();
    if let Some(key) = key {
        match store::begin_key(&m.db, &owner, key, hash, now_ms()).await? {
            KeyState::Acquired => {}
            KeyState::Mismatch => {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Idempotency key reused",
                    "this Idempotency-Key was used with a different request body",
                ));
            }
            KeyState::InFlight => {
                return Err(Problem::conflict(
                    "a request with this Idempotency-Key is still being handled; retry later",
                ));
            }
            KeyState::Done(_, body) => {
                let answer: SendAnswer = serde_json::from_str(&body).map_err(|e| {
                    Problem::internal("a stored idempotent answer is unreadable", &e)
                })?;
                return Ok(Accepted {
                    answer,
                    replayed: true,
                });
            }
        }
    }
    let result = queue(m, req, key.map(|k| (owner.as_str(), k)), caller).await;
    if let (Err(_), Some(key)) = (&result, key)
        && let Err(error) = store::drop_key(&m.db, &owner, key).await
    {
        tracing::warn!(message = "messenger: releasing an idempotency key failed; it is released after a minute", %error);
    }
    result.map(|answer| Accepted {
        answer,
        replayed: false,
    })
}

async fn queue(
    m: &Messenger,
    req: SendRequest,
    key: Option<(&str, &str)>,
    caller: &Caller,
) -> Result<SendAnswer, Problem> {
    let lane = m.deliverer.lanes.get(&req.channel).ok_or_else(|| {
        let known: Vec<&str> = m.deliverer.lanes.keys().map(String::as_str).collect();
        Problem::invalid(
            "channel",
            format!(
                "no channel {:?}; the channels are: {}",
                req.channel,
                known.join(", ")
            ),
        )
    })?;
    lane.channel
        .check_recipient(req.to.as_deref())
        .map_err(|e| Problem::invalid("to", e))?;
    let vars = serde_json::Value::Object(req.vars.clone().unwrap_or_default());
    let now = now_ms();
    let due_at = match &req.send_at {
        None | Some(serde_json::Value::Null) => now,
        Some(serde_json::Value::Number(n)) => n.as_i64().ok_or_else(|| {
            Problem::invalid("send_at", "send_at must be whole epoch milliseconds")
        })?,
        Some(serde_json::Value::String(s)) => parse_rfc3339_ms(s).ok_or_else(|| {
            Problem::invalid(
                "send_at",
                "send_at must be an RFC 3339 time or epoch milliseconds",
            )
        })?,
        Some(_) => {
            return Err(Problem::invalid(
                "send_at",
                "send_at must be an RFC 3339 time or epoch milliseconds",
            ));
        }
    }
    .max(now);
    if due_at - now > MAX_AHEAD_MS {
        return Err(Problem::invalid(
            "send_at",
            "send_at may be at most 366 days ahead",
        ));
    }
    let (rendered, template_name, template_version) = match &req.template {
        Some(name) => {
            if req.subject.is_some() || req.body.is_some() || req.html.is_some() {
                return Err(Problem::invalid(
                    "template",
                    "give a template or an inline subject and body, not both",
                ));
            }
            let t = store::get_template(&m.db, name, req.template_version)
                .await?
                .ok_or_else(|| {
                    Problem::invalid(
                        "template",
                        match req.template_version {
                            Some(v) => format!("no version {v} of template {name:?}"),
                            None => format!("no template {name:?}"),
                        },
                    )
                })?;
            let r = template::render(
                &Source {
                    subject: &t.subject,
                    body: &t.body,
                    html: t.html.as_deref(),
                },
                &vars,
            )
            .map_err(|e| template_problem(e, "vars: "))?;
            (r, Some(t.name), Some(t.version))
        }
        None => {
            if req.template_version.is_some() {
                return Err(Problem::invalid(
                    "template_version",
                    "template_version needs template",
                ));
            }
            let (Some(subject), Some(body)) = (&req.subject, &req.body) else {
                return Err(Problem::invalid(
                    "template",
                    "give a template, or an inline subject and body",
                ));
            };
            let r = template::render(
                &Source {
                    subject,
                    body,
                    html: req.html.as_deref(),
                },
                &vars,
            )
            .map_err(|e| template_problem(e, ""))?;
            (r, None, None)
        }
    };
    let mut rng = [0u8; 6];
    getrandom::fill(&mut rng).map_err(|e| Problem::internal("no randomness for an id", &e))?;
    let id = format!(
        "msg_{now:012x}{}",
        rng.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let status = if due_at > now { "scheduled" } else { "queued" };
    let row = MessageRow {
        id: id.clone(),
        channel: req.channel,
        to: req.to,
        subject: rendered.subject,
        body: rendered.body,
        html: rendered.html,
        vars: vars.to_string(),
        template_name,
        template_version,
        status: status.into(),
        attempts: 0,
        round_attempts: 0,
        due_at,
        created_at: now,
        updated_at: now,
        created_by: caller.audit_name(),
        last_error: None,
    };
    let answer = SendAnswer {
        id,
        status: status.into(),
    };
    let mut statements = vec![store::insert_message(&row)];
    if let Some((owner, key)) = key {
        let body = serde_json::to_string(&answer).expect("an answer serializes");
        statements.push(store::finish_key_sql(owner, key, 202, &body));
    }
    m.db.batch(statements).await?;
    if due_at > now {
        m.deliverer.wake_at(due_at);
    } else {
        m.wake();
    }
    Ok(answer)
}

/// `GET /api/v1/messages/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}",
    tag = "messenger",
    summary = "A message and its attempts",
    description = "The message as rendered, its status, and every attempt with the channel's \
        real answer (HTTP status and the start of the body, or the SMTP reply).",
    params(("id" = String, Path, description = "The message id.")),
    responses(
        (status = 200, description = "The message.", body = MessageView, content_type = "application/json"),
        (status = 404, description = "No such message.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_message(
    State(m): State<Arc<Messenger>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let msg = store::get_message(&m.db, &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no message {id}")))?;
    let attempts = store::attempts(&m.db, &id).await?;
    Ok(json(StatusCode::OK, &MessageView::from(msg, attempts)))
}

/// `GET /api/v1/messages`
#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "messenger",
    summary = "List messages",
    description = "Newest first, in pages. `status=dead` is the dead-letter list.",
    params(
        ("status" = Option<String>, Query, description = "scheduled, queued, sending, sent or dead."),
        ("channel" = Option<String>, Query, description = "A channel's name."),
        ("limit" = Option<u32>, Query, description = "Messages per page, 1-500 (default 50)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page.", body = MessagePage, content_type = "application/json"),
        (status = 400, description = "A parameter is invalid; `field` names it.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_messages(
    State(m): State<Arc<Messenger>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    if let Some(unknown) = q
        .keys()
        .find(|k| !["status", "channel", "limit", "cursor"].contains(&k.as_str()))
    {
        return Err(Problem::invalid(
            unknown.clone(),
            format!("unknown parameter {unknown:?}"),
        ));
    }
    let status = q.get("status").map(String::as_str);
    if let Some(s) = status
        && !["scheduled", "queued", "sending", "sent", "dead"].contains(&s)
    {
        return Err(Problem::invalid(
            "status",
            "status is one of scheduled, queued, sending, sent, dead",
        ));
    }
    let limit = match q.get("limit") {
        None => 50,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| Problem::invalid("limit", "limit must be an integer from 1 to 500"))?,
    };
    let cursor = q.get("cursor").map(String::as_str);
    if let Some(c) = cursor
        && !(c.starts_with("msg_") && c.len() < 64)
    {
        return Err(Problem::invalid(
            "cursor",
            "cursor must be a next_cursor value",
        ));
    }
    let rows = store::list_messages(
        &m.db,
        status,
        q.get("channel").map(String::as_str),
        cursor,
        limit,
    )
    .await?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    let page = MessagePage {
        messages: rows
            .into_iter()
            .map(|r| MessageView::from(r, Vec::new()))
            .collect(),
        next_cursor,
    };
    Ok(json(StatusCode::OK, &page))
}

/// `POST /api/v1/messages/{id}/retry`
#[utoipa::path(
    post,
    path = "/api/v1/messages/{id}/retry",
    tag = "messenger",
    summary = "Send a dead letter again",
    description = "Puts a dead message back in the queue, now, with a fresh round of attempts.",
    params(("id" = String, Path, description = "The message id.")),
    responses(
        (status = 202, description = "Queued again.", body = SendAnswer, content_type = "application/json"),
        (status = 404, description = "No such message.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The message is not dead.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn retry_message(
    State(m): State<Arc<Messenger>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    match store::requeue_dead(&m.db, &id, now_ms()).await? {
        None => Err(Problem::not_found(format!("no message {id}"))),
        Some(false) => Err(Problem::conflict(format!(
            "message {id} is not dead; only a dead letter can be retried"
        ))),
        Some(true) => {
            m.wake();
            Ok(json(
                StatusCode::ACCEPTED,
                &SendAnswer {
                    id,
                    status: "queued".into(),
                },
            ))
        }
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("API types serialize");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Parses a JSON body, naming the field at fault.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    kickstand_service::problem::parse_json(body)
}
