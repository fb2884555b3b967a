//! The HTTP API of webhooks (`/api/v1/webhooks…`): handlers with their OpenAPI annotations,
//! returned as an [`OpenApiRouter`] for any state that holds an `Arc<WebhookService>`
//! (`axum::extract::FromRef`), so the main HTTP crate merges it behind its own auth layer.
//!
//! Errors are `application/problem+json` ([`Problem`]); storage errors are logged and answered
//! with a 500 that says nothing more. Handlers run every store call on the blocking pool.

use crate::config::WebhookConfig;
use crate::dispatch::{DispatcherHandle, Envelope, EventFeed, blocking, now_ms, unix_secs};
use crate::send::{SendResult, Sender, check_url};
use crate::store::{
    Attempt, Delivery, NewSubscription, Outcome, StoreError, Subscription, SubscriptionPatch,
    WebhookStore, random_hex,
};
use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kickstand_domain::event::EventKind;
use kickstand_domain::timefmt::format_ms;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::HashMap;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the handlers need: the store, the feed (new subscriptions start at its head), the
/// sender (test pings), the settings, and optionally the dispatcher to wake.
pub struct WebhookService {
    /// SQLite in a single process, PostgreSQL when several API processes share it.
    pub store: Arc<dyn WebhookStore>,
    pub feed: Arc<dyn EventFeed>,
    pub sender: Sender,
    pub config: WebhookConfig,
    /// Woken when a subscription is created or re-enabled, so it starts without a poll's delay.
    /// Only this process's dispatcher is woken: when another process leads, it finds the
    /// change at its next poll.
    pub dispatcher: Option<DispatcherHandle>,
}

impl WebhookService {
    /// Sends a `ping` delivery to a subscription now (enabled or not) and logs it; `None` when
    /// there is no such subscription.
    pub async fn ping(&self, id: &str) -> Result<Option<SendResult>, StoreError> {
        let store = self.store.clone();
        let key = id.to_owned();
        let Some(sub) = blocking(move || store.get(&key)).await? else {
            return Ok(None);
        };
        let ping_id = format!("ping_{}", random_hex(12)?);
        let at = now_ms();
        let data = serde_json::json!({ "subscription_id": sub.id });
        let body = serde_json::to_vec(&Envelope {
            id: &ping_id,
            kind: "ping",
            created_at: format_ms(at),
            data: &data,
        })
        .expect("a ping serializes");
        let result = self
            .sender
            .post(&sub.url, &sub.secret, &ping_id, body, unix_secs())
            .await;
        let record = Attempt {
            subscription_id: sub.id,
            event_id: ping_id,
            event_seq: 0,
            attempt: 1,
            status_code: result.status,
            error: result.error.clone(),
            duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
            at,
            outcome: if result.delivered() {
                Outcome::Delivered
            } else {
                Outcome::Failed
            },
            next_attempt_at: None,
            disable: None,
        };
        let store = self.store.clone();
        blocking(move || store.record_test(&record)).await?;
        Ok(Some(result))
    }

    fn wake(&self) {
        if let Some(d) = &self.dispatcher {
            d.notify();
        }
    }
}

/// The webhook routes, for any state from which the service can be taken.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<WebhookService>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(test_webhook))
}

/// An error (RFC 9457 problem details).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and title say what happened.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of error.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this case.
    pub detail: String,
    /// The field or parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::BAD_REQUEST, "Invalid request", detail);
        p.field = Some(field.into());
        p
    }

    fn not_found(id: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("no webhook {id}"),
        )
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Problem {
        tracing::error!(message = "webhook store failed", %error);
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "the webhook store failed; see the server log",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed: an `http://` or `https://` URL.
    #[schema(example = "https://ops.example.com/kickstand")]
    pub url: String,
    /// The event kinds to deliver (e.g. `battery_low`); absent or empty: all kinds.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// The zone ids to deliver events of; absent or empty: all events. Events without a zone
    /// do not match a non-empty list.
    #[serde(default)]
    pub zones: Vec<String>,
    /// The signing secret, 16–256 printable ASCII characters; a random `whsec_…` one when
    /// absent. Returned once, in the answer to this request.
    pub secret: Option<String>,
}

/// A change to a subscription; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    /// A new receiver URL.
    pub url: Option<String>,
    /// New kinds (empty: all).
    pub kinds: Option<Vec<String>>,
    /// New zones (empty: all).
    pub zones: Option<Vec<String>>,
    /// `false` stops deliveries; `true` re-enables a disabled subscription, clearing its
    /// failures: it resumes with the first event it had not handled.
    pub enabled: Option<bool>,
}

/// A subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// `wh_` and 24 hex digits.
    pub id: String,
    pub url: String,
    /// The kinds delivered; empty: all.
    pub kinds: Vec<String>,
    /// The zones delivered; empty: all.
    pub zones: Vec<String>,
    pub enabled: bool,
    /// Why it was disabled automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Events given up in a row since the last delivered one.
    pub consecutive_failures: u32,
    /// The seq of the last event handled.
    pub cursor: u64,
    /// The signing secret: only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl Webhook {
    fn from(sub: Subscription, with_secret: bool) -> Webhook {
        Webhook {
            id: sub.id,
            url: sub.url,
            kinds: sub.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
            zones: sub.zones,
            enabled: sub.enabled,
            disabled_reason: sub.disabled_reason,
            created_at: format_ms(sub.created_at),
            consecutive_failures: sub.consecutive_failures,
            cursor: sub.cursor,
            secret: with_secret.then_some(sub.secret),
        }
    }
}

/// Every subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// One attempt.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryEntry {
    /// Increasing; pass the last one seen as `cursor` for the next page.
    pub id: i64,
    /// The event id (`Webhook-Id`); `ping_…` for test deliveries.
    pub event_id: String,
    /// The event's seq; 0 for test deliveries.
    pub event_seq: u64,
    /// 1-based attempt number for this event.
    pub attempt: u32,
    /// The receiver's status; absent when no answer came.
    pub status_code: Option<u16>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    pub duration_ms: u64,
    /// RFC 3339 time of the attempt.
    pub at: String,
    /// `delivered`, `failed` (retried later) or `gave_up` (the last attempt for this event).
    pub outcome: String,
}

impl From<Delivery> for DeliveryEntry {
    fn from(d: Delivery) -> DeliveryEntry {
        DeliveryEntry {
            id: d.id,
            event_id: d.event_id,
            event_seq: d.event_seq,
            attempt: d.attempt,
            status_code: d.status_code,
            error: d.error,
            duration_ms: d.duration_ms,
            at: format_ms(d.at),
            outcome: d.outcome.as_str().to_owned(),
        }
    }
}

/// A page of the delivery log, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What a test delivery came to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PingResult {
    /// Whether the receiver answered 2xx.
    pub delivered: bool,
    /// The receiver's status; absent when no answer came.
    pub status_code: Option<u16>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// `POST /api/v1/webhooks`
#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    summary = "Subscribe to fleet events",
    description = "Creates a subscription. It receives the matching events stored from now on \
        (not older ones), each as a signed POST; see the crate documentation for the signature. \
        The answer holds the signing secret: the only time it is shown.",
    request_body(content = CreateWebhook, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `secret` is shown this once.", body = Webhook, content_type = "application/json"),
        (status = 400, description = "The body is not JSON, or a field is invalid; `field` names it.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_webhook(
    State(svc): State<Arc<WebhookService>>,
    body: Bytes,
) -> Result<Response, Problem> {
    let req: CreateWebhook = parse_body(&body)?;
    check_url(&req.url, svc.config.allow_private_targets)
        .map_err(|e| Problem::invalid("url", e))?;
    let kinds = parse_kinds(&req.kinds)?;
    let zones = check_zones(req.zones)?;
    if let Some(secret) = &req.secret
        && (!(16..=256).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Problem::invalid(
            "secret",
            "the secret must be 16 to 256 printable ASCII characters without spaces",
        ));
    }
    let new = NewSubscription {
        url: req.url,
        kinds,
        zones,
        secret: req.secret,
    };
    let s = svc.clone();
    let sub = blocking(move || {
        let head = s.feed.head().map_err(|e| {
            tracing::error!(message = "event feed unavailable", error = %e);
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable",
                "the event store is unavailable; retry later",
            )
        })?;
        Ok::<_, Problem>(s.store.create(new, head, now_ms())?)
    })
    .await?;
    svc.wake();
    Ok(json(StatusCode::CREATED, &Webhook::from(sub, true)))
}

/// `GET /api/v1/webhooks`
#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    summary = "List subscriptions",
    description = "Every subscription, oldest first, without secrets.",
    responses(
        (status = 200, description = "The subscriptions.", body = WebhookList, content_type = "application/json"),
    )
)]
async fn list_webhooks(State(svc): State<Arc<WebhookService>>) -> Result<Response, Problem> {
    let s = svc.clone();
    let subs = blocking(move || s.store.list()).await?;
    let webhooks = subs.into_iter().map(|s| Webhook::from(s, false)).collect();
    Ok(json(StatusCode::OK, &WebhookList { webhooks }))
}

/// `GET /api/v1/webhooks/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "A subscription",
    params(("id" = String, Path, description = "The subscription id.")),
    responses(
        (status = 200, description = "The subscription, without its secret.", body = Webhook, content_type = "application/json"),
        (status = 404, description = "No such subscription.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_webhook(
    State(svc): State<Arc<WebhookService>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let s = svc.clone();
    let key = id.clone();
    let sub = blocking(move || s.store.get(&key))
        .await?
        .ok_or_else(|| Problem::not_found(&id))?;
    Ok(json(StatusCode::OK, &Webhook::from(sub, false)))
}

/// `PATCH /api/v1/webhooks/{id}`
#[utoipa::path(
    patch,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Change, disable or re-enable a subscription",
    description = "Changes the fields given. `enabled: true` on a disabled subscription clears \
        its failures; it resumes with the first event it had not handled, so nothing between is \
        lost (as long as the event store keeps it).",
    params(("id" = String, Path, description = "The subscription id.")),
    request_body(content = UpdateWebhook, content_type = "application/json"),
    responses(
        (status = 200, description = "The subscription as changed.", body = Webhook, content_type = "application/json"),
        (status = 400, description = "The body is not JSON, or a field is invalid; `field` names it.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_webhook(
    State(svc): State<Arc<WebhookService>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let req: UpdateWebhook = parse_body(&body)?;
    if let Some(url) = &req.url {
        check_url(url, svc.config.allow_private_targets).map_err(|e| Problem::invalid("url", e))?;
    }
    let patch = SubscriptionPatch {
        url: req.url,
        kinds: req.kinds.as_deref().map(parse_kinds).transpose()?,
        zones: req.zones.map(check_zones).transpose()?,
        enabled: req.enabled,
    };
    let s = svc.clone();
    let key = id.clone();
    let sub = blocking(move || s.store.update(&key, patch))
        .await?
        .ok_or_else(|| Problem::not_found(&id))?;
    svc.wake();
    Ok(json(StatusCode::OK, &Webhook::from(sub, false)))
}

/// `DELETE /api/v1/webhooks/{id}`
#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Delete a subscription",
    description = "Deletes the subscription with its delivery log. A delivery in flight may \
        still arrive.",
    params(("id" = String, Path, description = "The subscription id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such subscription.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_webhook(
    State(svc): State<Arc<WebhookService>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let s = svc.clone();
    let key = id.clone();
    if blocking(move || s.store.delete(&key)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found(&id))
    }
}

/// The most log rows one page may hold.
const MAX_PAGE: usize = 500;

/// `GET /api/v1/webhooks/{id}/deliveries`
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    summary = "The delivery log",
    description = "Every attempt (and test ping) with its status code, newest first, in pages. \
        Rows older than 30 days are pruned.",
    params(
        ("id" = String, Path, description = "The subscription id."),
        ("limit" = Option<u32>, Query, description = "Rows per page, 1–500 (default 50)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of the log.", body = DeliveryPage, content_type = "application/json"),
        (status = 400, description = "A parameter is invalid; `field` names it.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_deliveries(
    State(svc): State<Arc<WebhookService>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    if let Some(unknown) = q
        .keys()
        .find(|k| !["limit", "cursor"].contains(&k.as_str()))
    {
        return Err(Problem::invalid(
            unknown.clone(),
            format!("unknown parameter {unknown:?}"),
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
    let before = match q.get("cursor") {
        None => None,
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| Problem::invalid("cursor", "cursor must be a next_cursor value"))?,
        ),
    };
    let s = svc.clone();
    let key = id.clone();
    let rows = blocking(move || {
        if s.store.get(&key)?.is_none() {
            return Ok(None);
        }
        s.store.deliveries(&key, limit, before).map(Some)
    })
    .await?
    .ok_or_else(|| Problem::not_found(&id))?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|d| d.id.to_string()))
        .flatten();
    let page = DeliveryPage {
        deliveries: rows.into_iter().map(DeliveryEntry::from).collect(),
        next_cursor,
    };
    Ok(json(StatusCode::OK, &page))
}

/// `POST /api/v1/webhooks/{id}/test`
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/test",
    tag = "webhooks",
    summary = "Send a test delivery",
    description = "Sends a signed `ping` delivery (`{\"id\":\"ping_…\",\"type\":\"ping\",…}`) now, \
        even to a disabled subscription, logs it, and answers with what the receiver said. It is \
        not retried and does not count towards disabling.",
    params(("id" = String, Path, description = "The subscription id.")),
    responses(
        (status = 200, description = "The ping was sent (whatever the receiver answered).", body = PingResult, content_type = "application/json"),
        (status = 404, description = "No such subscription.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn test_webhook(
    State(svc): State<Arc<WebhookService>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let result = svc
        .ping(&id)
        .await?
        .ok_or_else(|| Problem::not_found(&id))?;
    Ok(json(
        StatusCode::OK,
        &PingResult {
            delivered: result.delivered(),
            status_code: result.status,
            error: result.error,
            duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
        },
    ))
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("API types serialize");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Parses a JSON body, naming the field at fault.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            "the body is empty; send a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let mut p = syntax_or_data(e.into_inner());
        if path != "." {
            p.field = Some(path);
        }
        p
    })?;
    de.end().map_err(syntax_or_data)?;
    Ok(value)
}

fn syntax_or_data(e: serde_json::Error) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "Invalid request",
        if e.is_syntax() || e.is_eof() {
            format!("the body is not valid JSON: {e}")
        } else {
            e.to_string()
        },
    )
}

fn parse_kinds(kinds: &[String]) -> Result<Vec<EventKind>, Problem> {
    let mut out = Vec::with_capacity(kinds.len());
    for (i, k) in kinds.iter().enumerate() {
        let kind = EventKind::parse(k).ok_or_else(|| {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            Problem::invalid(
                format!("kinds[{i}]"),
                format!(
                    "unknown event kind {k:?}; known kinds: {}",
                    known.join(", ")
                ),
            )
        })?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

fn check_zones(zones: Vec<String>) -> Result<Vec<String>, Problem> {
    let mut out: Vec<String> = Vec::with_capacity(zones.len());
    for (i, z) in zones.into_iter().enumerate() {
        if z.is_empty() || z.len() > 128 {
            return Err(Problem::invalid(
                format!("zones[{i}]"),
                "a zone id must be 1 to 128 characters",
            ));
        }
        if !out.contains(&z) {
            out.push(z);
        }
    }
    Ok(out)
}
