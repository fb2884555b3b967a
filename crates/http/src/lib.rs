//! # kickstand-http
//!
//! The HTTP API of the tracking engine: `POST /api/v1/telemetry`, the vehicle and fleet
//! queries, `/healthz`, `/readyz` and `/metrics`. Errors are `application/problem+json`
//! (RFC 9457) through one type, [`problem::Problem`].
//!
//! `router(state)` builds the whole API; the binary serves it, tests call it directly or over a
//! real socket. Handlers do no blocking I/O: ingest awaits the workers' group commit, queries
//! read the in-memory state or the history store.

pub mod auth;
pub mod events;
pub mod feeds;
pub mod geofences;
pub mod json;
pub mod openapi;
pub mod osmand;
pub mod problem;
pub mod stream;
pub mod tasks;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kickstand_domain::geo::{self, BBox};
use kickstand_domain::input::{BodyError, BodyFormat, parse_body};
use kickstand_domain::timefmt::parse_query_time;
use kickstand_domain::{Point, VehicleId, VehicleState};
use kickstand_engine::Engine;
use kickstand_engine::metrics as m;
use kickstand_engine::state::StateFilter;
use kickstand_engine::transport::SubmitError;
use metrics_exporter_prometheus::PrometheusHandle;
use openapi::TelemetryBody;
use problem::Problem;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Settings of the HTTP API (`[http]`).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest accepted request body in bytes (413 above it).
    pub body_limit_bytes: usize,
    /// Seconds a client is told to wait (`Retry-After`) when the pipeline is full.
    pub retry_after_secs: u64,
    /// Longest track a single request may ask for, in hours (use `kickstand export` beyond).
    pub max_track_hours: u64,
    /// Ingest requests read and parsed at once; more get 503 with `Retry-After` before their
    /// body is read. With `body_limit_bytes` this bounds the memory that bodies can take.
    pub max_inflight_ingest: usize,
    /// Seconds a client may take to send a request body before it gets 408 and its slot is
    /// freed, so slow or stalled clients cannot hold ingest slots.
    pub body_timeout_secs: u64,
    /// Live streams (`/api/v1/stream`) open at once; more get 503.
    pub max_streams: usize,
    /// The absolute URL clients reach this server at (`https://fleet.example.com`), for the
    /// links in GBFS and MDS; taken from each request's `Host` header when unset.
    pub public_url: Option<String>,
}

/// Settings of the live map (`[map]`).
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapConfig {
    /// A raster tile URL template with `{z}`, `{x}` and `{y}`, drawn under the vehicles; none by
    /// default (the map works offline with a plain grid).
    pub tile_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit_bytes: 8 * 1024 * 1024,
            retry_after_secs: 1,
            max_track_hours: 24 * 7,
            max_inflight_ingest: 128,
            body_timeout_secs: 30,
            max_streams: 64,
            public_url: None,
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub config: HttpConfig,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Permits for ingest requests in flight (`max_inflight_ingest`).
    pub ingest_slots: Arc<tokio::sync::Semaphore>,
    /// Permits for open live streams (`max_streams`).
    pub stream_slots: Arc<tokio::sync::Semaphore>,
    pub map: MapConfig,
    /// API keys; `None` when authentication is off.
    pub keys: Option<Arc<auth::KeyStore>>,
    /// Set to `true` when the server starts shutting down, so long-lived responses (live
    /// streams) end and graceful shutdown does not wait for them forever.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// GBFS and MDS settings.
    pub feeds: Arc<feeds::FeedSettings>,
    /// Webhook subscriptions; `None` in a process without events (the routes answer 404).
    pub webhooks: Option<Arc<kickstand_webhooks::WebhookService>>,
}

impl AppState {
    pub fn new(
        engine: Arc<Engine>,
        config: HttpConfig,
        map: MapConfig,
        keys: Option<Arc<auth::KeyStore>>,
        metrics: Option<PrometheusHandle>,
    ) -> AppState {
        let ingest_slots = Arc::new(tokio::sync::Semaphore::new(
            config.max_inflight_ingest.max(1),
        ));
        let stream_slots = Arc::new(tokio::sync::Semaphore::new(config.max_streams.max(1)));
        AppState {
            engine,
            config,
            metrics,
            ingest_slots,
            stream_slots,
            map,
            keys,
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            feeds: Arc::new(feeds::FeedSettings::default()),
            webhooks: None,
        }
    }

    /// With the GBFS and MDS settings (`public_url` is taken from the HTTP settings).
    pub fn with_feeds(mut self, mut feeds: feeds::FeedSettings) -> AppState {
        feeds.public_url = self.config.public_url.clone();
        self.feeds = Arc::new(feeds);
        self
    }

    /// With webhook subscriptions.
    pub fn with_webhooks(
        mut self,
        webhooks: Option<Arc<kickstand_webhooks::WebhookService>>,
    ) -> AppState {
        self.webhooks = webhooks;
        self
    }
}

/// Whether this process runs a webhook service, put in every request by [`router`].
#[derive(Clone, Copy)]
struct WebhooksPresent(bool);

/// Answers 404 on the webhook routes of a process that runs no webhook service.
async fn webhooks_available(
    axum::Extension(present): axum::Extension<WebhooksPresent>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if !present.0 {
        return Problem::not_found("webhooks are not available in this process").into_response();
    }
    next.run(req).await
}

/// Every route with its documentation, route groups behind the scope they need (see
/// [`auth`]). Routes are added only with `routes!`, which takes the method and path from the
/// handler's `#[utoipa::path]`, so the router and the OpenAPI document come from this one list
/// (see [`openapi`]). `keys` only feeds the guards; the document does not depend on it.
fn routes(keys: Option<Arc<auth::KeyStore>>) -> OpenApiRouter<AppState> {
    use auth::Scope;
    let ingest_routes = guarded(
        OpenApiRouter::new()
            .routes(routes!(ingest))
            .routes(routes!(osmand::osmand_get, osmand::osmand_post)),
        Scope::Ingest,
        &keys,
    );
    let admin_routes = guarded(
        OpenApiRouter::new().routes(routes!(tasks::drop_before)),
        Scope::Admin,
        &keys,
    );
    let operate_routes = guarded(
        OpenApiRouter::new()
            .routes(routes!(tasks::run_task))
            .routes(routes!(geofences::create))
            .routes(routes!(geofences::replace, geofences::delete)),
        Scope::Operate,
        &keys,
    );
    let webhook_routes = guarded(
        kickstand_webhooks::api::router::<AppState>()
            .route_layer(axum::middleware::from_fn(webhooks_available)),
        Scope::Operate,
        &keys,
    );
    let mds_routes = guarded(
        OpenApiRouter::new()
            .routes(routes!(feeds::mds_vehicles))
            .routes(routes!(feeds::mds_vehicle))
            .routes(routes!(feeds::mds_vehicles_status))
            .routes(routes!(feeds::mds_vehicle_status))
            .routes(routes!(feeds::mds_trips))
            .routes(routes!(feeds::mds_telemetry))
            .routes(routes!(feeds::mds_events_historical))
            .routes(routes!(feeds::mds_events_recent)),
        Scope::Read,
        &keys,
    );
    let read_routes = guarded(
        OpenApiRouter::new()
            .routes(routes!(list_vehicles))
            .routes(routes!(get_vehicle))
            .routes(routes!(track))
            .routes(routes!(summary))
            .routes(routes!(stream::stream))
            .routes(routes!(map_config))
            .routes(routes!(metrics_text))
            .routes(routes!(geofences::list))
            .routes(routes!(geofences::get))
            .routes(routes!(events::list))
            .routes(routes!(tasks::export)),
        Scope::Read,
        &keys,
    );
    let open_routes = OpenApiRouter::new()
        .routes(routes!(map_page))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(openapi::api_page))
        .routes(routes!(feeds::gbfs_file));
    OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
        .merge(ingest_routes)
        .merge(admin_routes)
        .merge(operate_routes)
        .merge(webhook_routes)
        .merge(mds_routes)
        .merge(read_routes)
        .merge(open_routes)
}

/// Puts a route group behind `scope`: the auth layer for its routes, and the same requirement
/// (bearer key, scope, 401/403) in the document for its operations.
fn guarded<S: Clone + Send + Sync + 'static>(
    mut group: OpenApiRouter<S>,
    scope: auth::Scope,
    keys: &Option<Arc<auth::KeyStore>>,
) -> OpenApiRouter<S> {
    openapi::require_scope(group.get_openapi_mut(), scope);
    let guard = auth::Guard {
        keys: keys.clone(),
        scope,
        query_token: false,
    };
    group.route_layer(axum::middleware::from_fn_with_state(guard, auth::require))
}

/// The whole API, route groups behind the scope they need (see [`auth`]).
pub fn router(state: AppState) -> Router<()> {
    let (api, _doc) = routes(state.keys.clone()).split_for_parts();
    let present = WebhooksPresent(state.webhooks.is_some());
    api.fallback(|| async { Problem::not_found("no such route") })
        .layer(axum::Extension(present))
        .with_state(state)
}

/// [`router`] plus the routes of the operations services of this process (the messenger, the
/// script runner, the scheduler: each group with its own state), behind the `operate` scope. A
/// service checks finer scopes itself from the [`kickstand_service::Caller`] the guard hands on.
/// Their operations are added to the document `/api/v1/openapi.json` serves.
pub fn router_with(state: AppState, ops: Vec<OpenApiRouter>) -> Router<()> {
    let keys = state.keys.clone();
    if ops.is_empty() {
        return router(state);
    }
    let mut merged: OpenApiRouter = OpenApiRouter::new();
    for group in ops {
        merged = merged.merge(guarded(group, auth::Scope::Operate, &keys));
    }
    let (routes, doc) = merged.split_for_parts();
    let doc = openapi::OperationsDoc(Arc::new(openapi::document_with(doc)));
    // The document's route is in `router`, so the extension goes on the whole app.
    router(state).merge(routes).layer(axum::Extension(doc))
}

/// The HTTP side of a process that runs only operations services (`kickstand serve --role
/// messenger,runner,scheduler` with no tracking role): `/healthz`, `/readyz`, `/metrics` (scope
/// `read`) and the services' routes behind the `operate` scope.
pub fn operations_router(
    keys: Option<Arc<auth::KeyStore>>,
    metrics: Option<PrometheusHandle>,
    ops: Vec<OpenApiRouter>,
) -> Router<()> {
    let open: OpenApiRouter = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(operations_readyz));
    let metrics_route = guarded(
        OpenApiRouter::new().routes(routes!(operations_metrics)),
        auth::Scope::Read,
        &keys,
    )
    .with_state(metrics);
    let mut all = open.merge(metrics_route);
    for group in ops {
        all = all.merge(guarded(group, auth::Scope::Operate, &keys));
    }
    let (app, _doc) = all.split_for_parts();
    app.fallback(|| async { Problem::not_found("no such route") })
}

/// `GET /readyz` of a process with only operations services: they answer once started.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness of an operations process",
    description = "200 once the process's operations services have started (they start before \
        the listener opens).",
    responses((status = 200, description = "Ready.", body = String))
)]
async fn operations_readyz() -> &'static str {
    "ready"
}

/// `GET /metrics` of a process with only operations services.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics of an operations process",
    responses((status = 200, description = "Prometheus text format.", body = String, content_type = "text/plain"))
)]
async fn operations_metrics(State(metrics): State<Option<PrometheusHandle>>) -> Response {
    let text = metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson" | "application/ndjson" => Ok(BodyFormat::Ndjson),
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            format!(
                "Content-Type must be application/json or application/x-ndjson, not {:?}",
                ct
            ),
        )),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Problem> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload too large",
                format!("the body is larger than the limit of {limit} bytes"),
            )
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "Unreadable body",
                "the body could not be read",
            )
        }
    })
}

/// `POST /api/v1/telemetry`: one fix, a JSON array of fixes, or NDJSON.
#[utoipa::path(
    post,
    path = "/api/v1/telemetry",
    tag = "telemetry",
    summary = "Send positions",
    description = "Stores fixes: one fix object, a JSON array of fixes, or NDJSON (one object \
        per line). Every item is judged on its own: good ones are stored, refused ones are listed \
        with their index, field and reason. `202` is sent only after every accepted fix is on \
        disk (fdatasync). A fix already stored is counted in `duplicates` and not stored again, \
        so retrying is always safe. Coordinates are kept to 1e-6°, speed, heading, battery, \
        accuracy and altitude to 0.1, the odometer to whole metres and time to milliseconds.",
    request_body(
        description = "`application/json`: one `FixInput` or an array of them. \
            `application/x-ndjson`: one `FixInput` object per line (blank lines are ignored).",
        content(
            (TelemetryBody = "application/json"),
            (String = "application/x-ndjson", example = json!("{\"vehicle_id\":\"scooter-1\",\"ts\":1795600800000,\"lat\":37.5665,\"lon\":126.978}\n")),
        ),
    ),
    responses(
        (status = 202, description = "Some or all fixes were accepted; refused items are listed in `rejected`.", body = openapi::IngestResult, content_type = "application/json"),
        (status = 400, description = "The body is empty, not valid JSON, or neither an object nor an array.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within `http.body_timeout_secs` (default 30 s).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over `http.body_limit_bytes` (default 8 MiB).", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The content type is not `application/json` or `application/x-ndjson`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Every item was refused; `errors` names each item's field.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The pipeline is full, or `http.max_inflight_ingest` requests are already being read. Nothing was dropped; retry after `Retry-After` seconds. Part of a refused batch may already be stored: the retry reports those fixes as duplicates.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    )
)]
async fn ingest(State(app): State<AppState>, req: Request) -> Response {
    match ingest_inner(&app, req).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn ingest_inner(app: &AppState, req: Request) -> Result<Response, Problem> {
    let limit = app.config.body_limit_bytes;
    let format = body_format(req.headers())?;
    let Ok(_slot) = app.ingest_slots.try_acquire() else {
        metrics::counter!(m::INGEST_BACKPRESSURE_TOTAL).increment(1);
        return Err(Problem::unavailable(
            "too many ingest requests in flight; retry later",
            app.config.retry_after_secs,
        ));
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload too large",
            format!("the body is larger than the limit of {limit} bytes"),
        ));
    }
    let timeout = std::time::Duration::from_secs(app.config.body_timeout_secs);
    let body = tokio::time::timeout(timeout, read_body(req.into_body(), limit))
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "Request timeout",
                format!(
                    "the body did not arrive within {} s",
                    app.config.body_timeout_secs
                ),
            )
        })??;
    let now = now_ms();
    // Large bodies are parsed off the async workers so one big request cannot stall others.
    let parsed = if body.len() > 512 * 1024 {
        tokio::task::spawn_blocking(move || parse_body(&body, format, now))
            .await
            .map_err(|_| {
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "parsing failed",
                )
            })?
    } else {
        parse_body(&body, format, now)
    };
    let parsed = parsed.map_err(|e| {
        let title = match e {
            BodyError::Empty | BodyError::NoItems => "Empty body",
            BodyError::Malformed(_) => "Malformed body",
            BodyError::NotObjectOrArray => "Unexpected body",
        };
        Problem::new(StatusCode::BAD_REQUEST, title, e.to_string())
    })?;
    let rejected = parsed.rejected;
    if !rejected.is_empty() {
        metrics::counter!(m::INGEST_REJECTED_TOTAL).increment(rejected.len() as u64);
    }
    if parsed.fixes.is_empty() {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "No valid fixes",
            format!("all {} items were refused; see errors", rejected.len()),
        );
        p.errors = rejected;
        return Err(p);
    }
    let outcome = app
        .engine
        .transport
        .submit(parsed.fixes)
        .await
        .map_err(|e| submit_problem(app, e))?;
    let body = serde_json::json!({
        "accepted": outcome.accepted,
        "duplicates": outcome.duplicates,
        "rejected": rejected,
    });
    Ok(json_response(
        StatusCode::ACCEPTED,
        body.to_string().into_bytes(),
    ))
}

/// What a client is told when the pipeline did not take its fixes. Nothing was dropped: every
/// case is a 503 with `Retry-After`.
pub(crate) fn submit_problem(app: &AppState, e: SubmitError) -> Problem {
    match e {
        SubmitError::Full => Problem::unavailable(
            "the ingest pipeline is full; retry later",
            app.config.retry_after_secs,
        ),
        SubmitError::ShuttingDown => Problem::unavailable("the server is shutting down", 5),
        SubmitError::Unavailable(detail) => {
            Problem::unavailable(detail, app.config.retry_after_secs)
        }
        SubmitError::Storage(detail) => {
            tracing::error!(message = "ingest failed in storage", %detail);
            Problem::unavailable(
                "storage is failing; retry later",
                app.config.retry_after_secs,
            )
        }
    }
}

fn vehicle_id(id: &str) -> Result<VehicleId, Problem> {
    VehicleId::new(id).map_err(|r| {
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid vehicle id",
            format!("vehicle_id {r}"),
        );
        p.field = Some("vehicle_id");
        p
    })
}

/// `GET /api/v1/vehicles/{id}`: the latest state.
#[utoipa::path(
    get,
    path = "/api/v1/vehicles/{id}",
    tag = "vehicles",
    summary = "The latest state of a vehicle",
    description = "The newest fix of a vehicle.",
    params(("id" = String, Path, description = "The vehicle id: 1–64 characters of `[A-Za-z0-9_.:-]`.")),
    responses(
        (status = 200, description = "The vehicle.", body = openapi::Vehicle, content_type = "application/json"),
        (status = 400, description = "The id is not a valid vehicle id.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No vehicle with this id has reported.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_vehicle(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = vehicle_id(&id)?;
    let p = app
        .engine
        .state
        .get(&id)?
        .ok_or_else(|| Problem::not_found(format!("no vehicle {id}")))?;
    let mut out = Vec::with_capacity(256);
    json::vehicle(&mut out, &id, &p, None);
    Ok(json_response(StatusCode::OK, out))
}

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    q.get(name).map(String::as_str).filter(|s| !s.is_empty())
}

fn num(q: &HashMap<String, String>, name: &'static str) -> Result<Option<f64>, Problem> {
    param(q, name)
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| Problem::bad_param(name, format!("{name} must be a number")))
        })
        .transpose()
}

/// The query parameters `list_vehicles` accepts (documented by [`openapi::ListQuery`]).
const KNOWN_LIST_PARAMS: [&str; 7] = [
    "near",
    "radius_m",
    "bbox",
    "state",
    "battery_lt",
    "limit",
    "cursor",
];

/// `GET /api/v1/vehicles?near=LAT,LON&radius_m=R` or `?bbox=…`, with filters.
#[utoipa::path(
    get,
    path = "/api/v1/vehicles",
    tag = "vehicles",
    summary = "Find vehicles near a point or in a box",
    description = "Give exactly one of `near` and `bbox`. `near=LAT,LON&radius_m=500`: the \
        vehicles within the radius, nearest first, each with `distance_m`. \
        `bbox=minLon,minLat,maxLon,maxLat`: the vehicles in the box by id, paged with `limit` and \
        `cursor` (from `next_cursor`). Both accept the filters `state` and `battery_lt`.",
    params(openapi::ListQuery),
    responses(
        (status = 200, description = "The vehicles found.", body = openapi::VehicleList, content_type = "application/json"),
        (status = 400, description = "A parameter is missing, unknown or out of range; `field` names it.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_vehicles(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    if let Some(unknown) = q.keys().find(|k| !KNOWN_LIST_PARAMS.contains(&k.as_str())) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid query parameter",
            format!("unknown parameter {unknown:?}"),
        ));
    }
    let mut filter = StateFilter::default();
    if let Some(s) = param(&q, "state") {
        filter.state = Some(VehicleState::parse(s).ok_or_else(|| {
            Problem::bad_param("state", "state must be one of available, reserved, on_trip, non_operational, elsewhere, removed")
        })?);
    }
    if let Some(b) = num(&q, "battery_lt")? {
        if !(0.0..=100.0).contains(&b) {
            return Err(Problem::bad_param(
                "battery_lt",
                "battery_lt must be between 0 and 100",
            ));
        }
        filter.battery_below_dpct = Some((b * 10.0).round() as u16);
    }
    let limit = match param(&q, "limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=10_000).contains(l))
            .ok_or_else(|| {
                Problem::bad_param("limit", "limit must be an integer from 1 to 10000")
            })?,
    };
    let mut out = Vec::with_capacity(256 * limit.min(1000));
    out.extend_from_slice(b"{\"vehicles\":[");
    match (param(&q, "near"), param(&q, "bbox")) {
        (Some(near), None) => {
            let (lat, lon) = near
                .split_once(',')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?))
                })
                .filter(|(a, b)| (-90.0..=90.0).contains(a) && (-180.0..=180.0).contains(b))
                .ok_or_else(|| Problem::bad_param("near", "near must be LAT,LON within range"))?;
            let radius = num(&q, "radius_m")?.unwrap_or(500.0);
            if !(0.0..=50_000.0).contains(&radius) {
                return Err(Problem::bad_param(
                    "radius_m",
                    "radius_m must be between 0 and 50000",
                ));
            }
            if param(&q, "cursor").is_some() {
                return Err(Problem::bad_param(
                    "cursor",
                    "cursor pages bbox queries; near returns the nearest `limit`",
                ));
            }
            let found = app.engine.state.near(lat, lon, radius, filter, limit)?;
            for (i, (v, d)) in found.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::vehicle(&mut out, &v.vehicle_id, &v.point, Some(*d));
            }
            out.extend_from_slice(b"],\"next_cursor\":null}");
        }
        (None, Some(bbox)) => {
            let bbox =
                BBox::parse(bbox).map_err(|r| Problem::bad_param("bbox", format!("bbox {r}")))?;
            let after = param(&q, "cursor")
                .map(vehicle_id)
                .transpose()
                .map_err(|mut p| {
                    p.field = Some("cursor");
                    p
                })?;
            let found = app
                .engine
                .state
                .within(bbox, filter, after.as_ref(), limit + 1)?;
            let more = found.len() > limit;
            for (i, v) in found.iter().take(limit).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::vehicle(&mut out, &v.vehicle_id, &v.point, None);
            }
            out.extend_from_slice(b"],\"next_cursor\":");
            match found.get(limit.wrapping_sub(1)).filter(|_| more) {
                Some(last) => json::id(&mut out, &last.vehicle_id),
                None => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        }
        _ => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "Invalid query parameter",
                "give exactly one of near=LAT,LON (with radius_m) or bbox=minLon,minLat,maxLon,maxLat",
            ));
        }
    }
    Ok(json_response(StatusCode::OK, out))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TrackQuery {
    /// Start of the range: RFC 3339 or epoch milliseconds (default: one hour before `to`).
    from: Option<String>,
    /// End of the range: RFC 3339 or epoch milliseconds (default: now). The range may span at
    /// most `http.max_track_hours` (use `kickstand export` beyond).
    to: Option<String>,
    /// `json` (default) or `geojson` (a LineString Feature with the times in its properties).
    #[param(pattern = "^(json|geojson)$")]
    format: Option<String>,
    /// Simplify the line to this tolerance in metres (Douglas–Peucker).
    #[param(value_type = Option<f64>, minimum = 0.0)]
    simplify_m: Option<String>,
}

/// `GET /api/v1/vehicles/{id}/track?from=&to=&format=json|geojson&simplify_m=`.
#[utoipa::path(
    get,
    path = "/api/v1/vehicles/{id}/track",
    tag = "vehicles",
    summary = "A vehicle's track",
    description = "The vehicle's fixes in a time range, in time order; the default range is the \
        last hour. An unknown vehicle has an empty track. The body streams while it is written.",
    params(
        ("id" = String, Path, description = "The vehicle id: 1–64 characters of `[A-Za-z0-9_.:-]`."),
        TrackQuery,
    ),
    responses(
        (status = 200, description = "The track: Kickstand's JSON (`format=json`) or a GeoJSON Feature (`format=geojson`).",
            content(
                (openapi::Track = "application/json"),
                (openapi::TrackFeature = "application/geo+json"),
            )),
        (status = 400, description = "A parameter is invalid or the range is too long; `field` names it.", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The history store failed.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn track(
    State(app): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<TrackQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let id = vehicle_id(&id)?;
    let time = |name: &'static str, v: &Option<String>| -> Result<Option<i64>, Problem> {
        v.as_deref()
            .map(|s| {
                parse_query_time(s).ok_or_else(|| {
                    Problem::bad_param(
                        name,
                        format!("{name} must be RFC 3339 or epoch milliseconds"),
                    )
                })
            })
            .transpose()
    };
    let to = time("to", &q.to)?.unwrap_or_else(now_ms);
    let from = time("from", &q.from)?.unwrap_or(to.saturating_sub(3_600_000));
    if from > to {
        return Err(Problem::bad_param("from", "from must not be after to"));
    }
    let max_ms = (app.config.max_track_hours as i64).saturating_mul(3_600_000);
    if to.checked_sub(from).is_none_or(|span| span > max_ms) {
        return Err(Problem::bad_param(
            "to",
            format!(
                "a track may span at most {} hours; use kickstand export for more",
                app.config.max_track_hours
            ),
        ));
    }
    let geojson = match q.format.as_deref() {
        None | Some("json") => false,
        Some("geojson") => true,
        Some(_) => {
            return Err(Problem::bad_param(
                "format",
                "format must be json or geojson",
            ));
        }
    };
    let simplify = q
        .simplify_m
        .as_deref()
        .map(|s| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    Problem::bad_param(
                        "simplify_m",
                        "simplify_m must be a non-negative number of metres",
                    )
                })
        })
        .transpose()?;
    let history = app.engine.history.clone();
    let read_id = id.clone();
    // Decoding a long track is CPU and engine I/O: keep it off the async workers.
    let points = tokio::task::spawn_blocking(move || -> Result<Vec<Point>, Problem> {
        let started = std::time::Instant::now();
        let mut points = history.track(&read_id, from, to).map_err(|error| {
            tracing::error!(message = "track query failed", %error);
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", "the history store failed")
        })?;
        if let Some(tol) = simplify {
            let line: Vec<(f64, f64)> = points.iter().map(|p| (p.lat(), p.lon())).collect();
            let keep = geo::simplify(&line, tol);
            points = keep.into_iter().map(|i| points[i]).collect();
        }
        tracing::debug!(message = "track read", vehicle = %read_id, points = points.len(), read_us = started.elapsed().as_micros() as u64);
        Ok(points)
    })
    .await
    .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", "the query failed"))??;
    // The body streams while it is written: the first bytes leave at once, a long track is
    // never held whole in memory, and a slow client holds back only a few pieces (the
    // channel is bounded).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(4);
    let format = if geojson {
        json::TrackFormat::GeoJson
    } else {
        json::TrackFormat::Json
    };
    tokio::task::spawn_blocking(move || {
        json::track_pieces(format, &id, (from, to), &points, 256 * 1024, &mut |piece| {
            tx.blocking_send(Ok(Bytes::from(piece))).is_ok()
        });
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let ct = if geojson {
        "application/geo+json"
    } else {
        "application/json"
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SummaryQuery {
    /// Count vehicles not heard from in this many minutes as stale (default 15).
    stale_minutes: Option<u32>,
}

/// `GET /api/v1/fleet/summary?stale_minutes=15`.
#[utoipa::path(
    get,
    path = "/api/v1/fleet/summary",
    tag = "fleet",
    summary = "Fleet summary",
    description = "Counts by state, a battery histogram, and the vehicles not heard from in \
        `stale_minutes` minutes.",
    params(SummaryQuery),
    responses(
        (status = 200, description = "The summary.", body = openapi::FleetSummary, content_type = "application/json"),
        (status = 400, description = "A parameter is invalid or unknown.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn summary(
    State(app): State<AppState>,
    q: Result<Query<SummaryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let stale_minutes = q.stale_minutes.unwrap_or(15);
    let mut s = app
        .engine
        .state
        .summary(now_ms() - i64::from(stale_minutes) * 60_000)?;
    let body = serde_json::json!({
        "vehicles": s.vehicles,
        "by_state": std::mem::take(&mut s.by_state),
        "battery_pct": std::mem::take(&mut s.battery),
        "stale": s.stale,
        "stale_minutes": stale_minutes,
    });
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// The live map, compiled into the binary: no separate front-end build or file to deploy.
const MAP_HTML: &str = include_str!("../assets/map.html");

/// `GET /`: the live map page. It holds no data; everything it shows comes from the API with
/// the key the page was opened with.
#[utoipa::path(
    get,
    path = "/",
    tag = "live",
    summary = "The live map",
    description = "The live map page, served from the binary. It holds no fleet data: it reads \
        the API with the key it was opened with (`/?key=…`).",
    responses(
        (status = 200, description = "The HTML page.", body = String, content_type = "text/html"),
    )
)]
async fn map_page() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        MAP_HTML,
    )
        .into_response()
}

/// `GET /api/v1/map/config`: what the map page needs from the settings.
#[utoipa::path(
    get,
    path = "/api/v1/map/config",
    tag = "live",
    summary = "Map settings",
    description = "What the map page needs from the settings (`[map]`).",
    responses(
        (status = 200, description = "The map settings.", body = openapi::MapConfig, content_type = "application/json"),
    )
)]
async fn map_config(State(app): State<AppState>) -> Response {
    let body = serde_json::json!({ "tile_url": app.map.tile_url });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// `GET /healthz`: liveness.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    description = "Answers `ok` while the process serves HTTP.",
    responses(
        (status = 200, description = "Alive.", body = String, content_type = "text/plain", example = "ok\n"),
    )
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: readiness.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness",
    description = "Ready unless the ingest queue is 90 % full or the history store has failed.",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain", example = "ready\n"),
        (status = 503, description = "The ingest pipeline is nearly full, or the history store has failed.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
    )
)]
async fn readyz(State(app): State<AppState>) -> Response {
    if !app.engine.history.is_healthy() {
        return Problem::unavailable("the history store has failed; see the logs", 30)
            .into_response();
    }
    let t = &app.engine.transport;
    if t.queue_depth() * 10 >= t.capacity() * 9 {
        return Problem::unavailable(
            "the ingest pipeline is nearly full",
            app.config.retry_after_secs,
        )
        .into_response();
    }
    "ready\n".into_response()
}

/// `GET /metrics`: Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Every series is described and present from the start \
        (`kickstand_<area>_<what>_<unit>`).",
    responses(
        (status = 200, description = "The Prometheus text format.", body = String, content_type = "text/plain"),
    )
)]
async fn metrics_text(State(app): State<AppState>) -> Response {
    metrics::gauge!(m::QUEUE_DEPTH_FIXES).set(app.engine.transport.queue_depth() as f64);
    if let Ok(n) = app.engine.state.len() {
        metrics::gauge!(m::STATE_VEHICLES).set(n as f64);
    }
    let history = app.engine.history.clone();
    // Sizes on disk come from the file system: off the async workers.
    if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || history.stats()).await {
        metrics::gauge!(m::STORE_DISK_BYTES).set(stats.disk_bytes as f64);
        metrics::gauge!(m::STORE_BUCKETS).set(stats.buckets as f64);
    }
    let text = app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}
