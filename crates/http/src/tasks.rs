//! Built-in tasks and history housekeeping over HTTP: what the scheduler's built-in jobs call
//! (`POST /api/v1/tasks/{task}`) and what the shipped `archive-history` script uses
//! (`GET /api/v1/history/export`, `POST /api/v1/history/drop-before`).
//!
//! Every task does its work in this process's engine: in `kickstand serve` the gateway sends
//! `/api/v1/tasks/*` and `/api/v1/history/*` to an API node.

use crate::AppState;
use crate::problem::Problem;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kickstand_domain::timefmt::{format_ms, parse_query_time};
use kickstand_engine::fleet::EventQuery;
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

fn now_ms() -> i64 {
    super::now_ms()
}

fn blocking_failed(e: tokio::task::JoinError) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        format!("the task stopped: {e}"),
    )
}

fn failed(what: &str, error: impl std::fmt::Display) -> Problem {
    tracing::error!(message = what, %error);
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        format!("{what}; see the server log"),
    )
}

/// `POST /api/v1/tasks/{task}`: runs a built-in task now and answers with what it did.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{task}",
    tag = "operations",
    summary = "Run a built-in task",
    description = "Runs a built-in task now, in this process, and answers with its outcome. \
        `retention` drops whole history buckets and events older than `engine.retain_days` \
        (nothing when it is 0). `stale_sweep` reports the vehicles silent for \
        `events.stale_after_secs` (the workers' own sweep emits the `stale` events). \
        `fleet_report` answers the fleet summary and the events of the last 24 hours by kind. \
        The scheduler's built-in jobs call this route.",
    params(("task" = String, Path, description = "`retention`, `stale_sweep` or `fleet_report`.")),
    responses(
        (status = 200, description = "What the task did.", body = serde_json::Value),
        (status = 404, description = "No such task.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn run_task(
    State(app): State<AppState>,
    Path(task): Path<String>,
) -> Result<Response, Problem> {
    let started = now_ms();
    let outcome = match task.as_str() {
        "retention" => retention(&app).await?,
        "stale_sweep" => stale_sweep(&app)?,
        "fleet_report" => fleet_report(&app).await?,
        other => {
            return Err(Problem::not_found(format!(
                "no built-in task {other:?}; there are retention, stale_sweep and fleet_report"
            )));
        }
    };
    let body = serde_json::json!({
        "task": task,
        "started_at": format_ms(started),
        "duration_ms": now_ms() - started,
        "outcome": outcome,
    });
    Ok(super::json_response(
        StatusCode::OK,
        body.to_string().into_bytes(),
    ))
}

async fn retention(app: &AppState) -> Result<serde_json::Value, Problem> {
    let days = app.engine.config.retain_days;
    if days == 0 {
        return Ok(serde_json::json!({
            "retain_days": 0,
            "buckets_dropped": 0,
            "events_dropped": 0,
            "note": "engine.retain_days is 0: everything is kept",
        }));
    }
    let cutoff = now_ms() - i64::from(days) * 86_400_000;
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || -> Result<serde_json::Value, Problem> {
        let buckets = engine
            .history
            .drop_before(cutoff)
            .map_err(|e| failed("history retention failed", e))?;
        let events = match &engine.fleet {
            Some(f) => f
                .store
                .drop_events_before(cutoff)
                .map_err(|e| failed("event retention failed", e))?,
            None => 0,
        };
        Ok(serde_json::json!({
            "retain_days": days,
            "cutoff": format_ms(cutoff),
            "buckets_dropped": buckets,
            "events_dropped": events,
        }))
    })
    .await
    .map_err(blocking_failed)?
}

fn stale_sweep(app: &AppState) -> Result<serde_json::Value, Problem> {
    let after_secs = app
        .engine
        .fleet
        .as_ref()
        .map_or(15 * 60, |f| f.events.stale_after_secs);
    let summary = app
        .engine
        .state
        .summary(now_ms() - after_secs as i64 * 1000)?;
    Ok(serde_json::json!({
        "vehicles": summary.vehicles,
        "stale": summary.stale,
        "stale_after_secs": after_secs,
    }))
}

async fn fleet_report(app: &AppState) -> Result<serde_json::Value, Problem> {
    let mut s = app.engine.state.summary(now_ms() - 15 * 60_000)?;
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    if let Some(fleet) = app.engine.fleet.clone() {
        let from = now_ms() - 86_400_000;
        events = tokio::task::spawn_blocking(move || -> Result<_, Problem> {
            let mut by_kind = BTreeMap::new();
            let mut q = EventQuery {
                from: Some(from),
                limit: 10_000,
                ..EventQuery::default()
            };
            loop {
                let page = fleet
                    .store
                    .events(&q)
                    .map_err(|e| failed("reading events failed", e))?;
                for e in &page {
                    *by_kind.entry(e.event.kind.as_str().to_owned()).or_insert(0) += 1;
                }
                match page.last() {
                    Some(last) if page.len() == q.limit => q.after_seq = last.seq,
                    _ => return Ok(by_kind),
                }
            }
        })
        .await
        .map_err(blocking_failed)??;
    }
    Ok(serde_json::json!({
        "vehicles": s.vehicles,
        "by_state": std::mem::take(&mut s.by_state),
        "battery_pct": std::mem::take(&mut s.battery),
        "stale_15_min": s.stale,
        "events_last_24h": events,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportQuery {
    /// Start of the range, inclusive: RFC 3339 or epoch ms.
    from: String,
    /// End of the range, inclusive: RFC 3339 or epoch ms.
    to: String,
}

/// `GET /api/v1/history/export`: every stored fix of the fleet in a time range, as NDJSON.
#[utoipa::path(
    get,
    path = "/api/v1/history/export",
    tag = "history",
    summary = "Export history as NDJSON",
    description = "Every stored fix with `from <= ts <= to`, one JSON object a line (the shape of \
        `kickstand export --format ndjson`), in order of bucket, then vehicle, then time. \
        Streamed as it is read: the answer can be large.",
    params(ExportQuery),
    responses(
        (status = 200, description = "The fixes.", body = String, content_type = "application/x-ndjson"),
        (status = 400, description = "A bad time.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn export(
    State(app): State<AppState>,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let from = parse_query_time(&q.from)
        .ok_or_else(|| Problem::bad_param("from", "not an RFC 3339 time or epoch ms"))?;
    let to = parse_query_time(&q.to)
        .ok_or_else(|| Problem::bad_param("to", "not an RFC 3339 time or epoch ms"))?;
    if to < from {
        return Err(Problem::bad_param("to", "is before from"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let history = app.engine.history.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunk: Vec<u8> = Vec::with_capacity(1 << 16);
        let mut gone = false;
        let result = history.scan(from, to, &mut |b| {
            for p in &b.points {
                crate::json::vehicle(&mut chunk, &b.vehicle_id, p, None);
                chunk.push(b'\n');
            }
            if chunk.len() >= 1 << 16 {
                if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                    gone = true;
                    return false;
                }
                chunk.reserve(1 << 16);
            }
            true
        });
        if gone {
            return;
        }
        let _ = match result {
            Ok(()) => tx.blocking_send(Ok(chunk)),
            // The status is sent already: cut the body short, so the client sees an error
            // instead of a complete-looking file.
            Err(error) => {
                tracing::error!(message = "history export failed", %error);
                tx.blocking_send(Err(std::io::Error::other("history export failed")))
            }
        };
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DropBefore {
    /// Drop every bucket that ends at or before this time (RFC 3339 or epoch ms, as a string).
    before: String,
}

/// `POST /api/v1/history/drop-before`: drops old history buckets.
#[utoipa::path(
    post,
    path = "/api/v1/history/drop-before",
    tag = "history",
    summary = "Drop old history",
    description = "Drops every history bucket that ends at or before `before` — whole buckets \
        only, so a bucket that straddles `before` is kept. Fixes acked in the last seconds are \
        still in the write-ahead log until the history flusher writes them to buckets; a later \
        call drops them. Archive first (`GET /api/v1/history/export`); this cannot be undone.",
    request_body = DropBefore,
    responses(
        (status = 200, description = "How many buckets were dropped.", body = serde_json::Value),
        (status = 400, description = "A bad body.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn drop_before(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let req: DropBefore = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            format!("the body must be {{\"before\": \"<RFC 3339>\"}}: {e}"),
        )
    })?;
    let before = parse_query_time(&req.before)
        .ok_or_else(|| Problem::bad_param("before", "not an RFC 3339 time or epoch ms"))?;
    if before > now_ms() {
        return Err(Problem::bad_param(
            "before",
            "is in the future: only the past can be dropped",
        ));
    }
    let history = app.engine.history.clone();
    let dropped = tokio::task::spawn_blocking(move || history.drop_before(before))
        .await
        .map_err(blocking_failed)?
        .map_err(|e| failed("dropping history failed", e))?;
    tracing::info!(
        message = "history dropped on request",
        before = %format_ms(before),
        buckets = dropped
    );
    let body = serde_json::json!({ "before": format_ms(before), "buckets_dropped": dropped });
    Ok(super::json_response(
        StatusCode::OK,
        body.to_string().into_bytes(),
    ))
}
