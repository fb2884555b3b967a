//! The OsmAnd / Traccar Client protocol: `GET` or `POST /osmand` with the position in the
//! query string, a form body, or the JSON body of Traccar Client 9+ (mapping in
//! [`kickstand_domain::osmand`]). The same handler answers on `/` of the protocol's own port
//! (5055 by convention) when `[osmand] listen` is set.
//!
//! `200` is sent only once the fix is durable, like the JSON ingest's `202`; a refused report
//! gets `400` with the reason. Devices cannot send headers, so the API key may be given as
//! `access_token` in the URL (`http://host:5055/?access_token=ks_…`); Traccar Client keeps a
//! query in its server URL and adds its parameters to it.

use crate::problem::Problem;
use crate::{AppState, now_ms, read_body, submit_problem};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kickstand_domain::osmand::{OsmandBody, parse_merged};
use kickstand_engine::metrics as m;

#[utoipa::path(
    post,
    path = "/osmand",
    tag = "telemetry",
    summary = "Send a position (OsmAnd / Traccar Client)",
    description = "One position as query parameters (`id`, `lat`, `lon`, `timestamp` in epoch \
        seconds, milliseconds or ISO 8601, `location=lat,lon`, `speed` in knots, `bearing` or \
        `heading`, `altitude`, `accuracy`, `batt`), as a form body, or as the JSON body of \
        Traccar Client 9+ (`device_id`, `location.timestamp`, `location.coords` with speed in \
        m/s, `battery.level` 0-1, `odometer`). `GET` works the same. The key may be passed as \
        `access_token` in the query. `200` once the fix is durable.",
    responses(
        (status = 200, description = "Stored (or already stored)."),
        (status = 400, description = "The report is not a valid position; `detail` says which parameter.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The pipeline is full; retry after `Retry-After` seconds.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn osmand_post(State(app): State<AppState>, req: Request) -> Response {
    handle(app, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    get,
    path = "/osmand",
    tag = "telemetry",
    summary = "Send a position (OsmAnd, query string)",
    description = "As `POST /osmand`, with every parameter in the query string.",
    responses(
        (status = 200, description = "Stored (or already stored)."),
        (status = 400, description = "The report is not a valid position.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The pipeline is full; retry later.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn osmand_get(State(app): State<AppState>, req: Request) -> Response {
    handle(app, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Handles one report on any path and method (the protocol port routes everything here).
pub async fn handle(app: AppState, req: Request) -> Result<Response, Problem> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let body = read_body(req.into_body(), 64 * 1024).await?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        OsmandBody::Query("")
    } else if content_type == "application/json" || content_type.ends_with("+json") {
        OsmandBody::Json(&body)
    } else if content_type.is_empty() || content_type == "application/x-www-form-urlencoded" {
        OsmandBody::Form(&body)
    } else {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            "send the report as a query string, application/x-www-form-urlencoded or application/json",
        ));
    };
    let fix = parse_merged(&query, input, now_ms()).map_err(|e| {
        metrics::counter!(m::INGEST_REJECTED_TOTAL).increment(1);
        Problem::new(StatusCode::BAD_REQUEST, "Invalid position", e.to_string())
    })?;
    app.engine
        .transport
        .submit(vec![fix])
        .await
        .map_err(|e| submit_problem(&app, e))?;
    Ok(StatusCode::OK.into_response())
}

/// The protocol's own port: every path and method is a report, behind the `ingest` scope.
pub fn protocol_router(app: AppState) -> axum::Router<()> {
    let guard = crate::auth::Guard {
        keys: app.keys.clone(),
        scope: crate::auth::Scope::Ingest,
        query_token: true,
    };
    axum::Router::new()
        .fallback(|State(app): State<AppState>, req: Request| async move {
            handle(app, req)
                .await
                .unwrap_or_else(IntoResponse::into_response)
        })
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::auth::require,
        ))
        .with_state(app)
}
