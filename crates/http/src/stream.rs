//! `GET /api/v1/stream`: the live map's feed, as Server-Sent Events.
//!
//! Pull, not push: each connection polls the latest-state store for what changed in its box
//! since its last look ([`StateStore::changes_since`]) once per interval, and sends one `update`
//! event with each changed vehicle once (coalesced), after a first `snapshot` of the whole box.
//! Nothing is queued per client: a client that reads slowly is simply polled less often (its
//! connection's send buffer is full, so its stream is not polled), and it gets the newest state
//! when it reads again. Ingest never waits for a client, and a client costs one pending event of
//! memory at most. The number of streams is bounded (`http.max_streams`).

use crate::AppState;
use crate::json;
use crate::problem::Problem;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use kickstand_domain::event::EventKind;
use kickstand_domain::geo::BBox;
use kickstand_engine::fleet::{EventQuery, FleetStore};
use kickstand_engine::state::{StateStore, VehicleView};
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// `minLon,minLat,maxLon,maxLat`; the whole world when absent.
    bbox: Option<String>,
    /// Milliseconds between updates (50–60000, default 250).
    #[param(minimum = 50, maximum = 60000)]
    interval_ms: Option<u64>,
    /// Also stream fleet events in the box: `all`, or kinds, comma-separated
    /// (`battery_low,stale`). Each is sent as an `event` event.
    events: Option<String>,
    /// The API key, for clients that cannot send headers (EventSource); checked by the auth
    /// layer.
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// The fleet events a stream follows.
struct EventFollow {
    store: Arc<dyn FleetStore>,
    /// Empty: every kind.
    kinds: Vec<EventKind>,
    /// The sequence number of the last event looked at.
    after: u64,
}

/// One client's position in the change sequence.
struct Cursor {
    state: Arc<dyn StateStore>,
    bbox: BBox,
    since: u64,
    ticker: tokio::time::Interval,
    snapshot_sent: bool,
    events: Option<EventFollow>,
    /// Events found but not sent yet (one SSE event is sent per step).
    queue: VecDeque<Event>,
    /// Held for as long as the stream lives.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

fn event(kind: &'static str, vehicles: &[VehicleView]) -> Event {
    let mut out = Vec::with_capacity(64 + vehicles.len() * 200);
    out.extend_from_slice(b"{\"vehicles\":[");
    for (i, v) in vehicles.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::vehicle(&mut out, &v.vehicle_id, &v.point, None);
    }
    out.extend_from_slice(b"]}");
    let data = String::from_utf8(out).expect("the JSON writer only writes ASCII");
    Event::default().event(kind).data(data)
}

#[utoipa::path(
    get,
    path = "/api/v1/stream",
    tag = "live",
    summary = "Live stream of vehicle states",
    description = "Server-Sent Events (`text/event-stream`). The first event, `snapshot`, holds \
        every vehicle in `bbox`; after it, once per `interval_ms`, an `update` event holds each \
        vehicle in the box that changed since the last event, once (coalesced), and nothing is \
        sent when none did. The `data` of both events is a `StreamEvent` JSON object \
        (`{\"vehicles\": [Vehicle, …]}`). A comment keeps the connection alive every 15 s. A \
        slow client is polled less often and gets the newest state; it never slows ingest.",
    params(StreamQuery),
    responses(
        (status = 200, description = "The event stream: `event: snapshot` then `event: update` events, each with `data: StreamEvent`.",
            body = String, content_type = "text/event-stream",
            example = "event: snapshot\ndata: {\"vehicles\":[{\"vehicle_id\":\"scooter-1\",\"ts\":\"2026-11-25T10:00:00.000Z\",\"lat\":37.5665,\"lon\":126.978}]}\n\n"),
        (status = 400, description = "`bbox` or `interval_ms` is invalid, or a parameter is unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`http.max_streams` streams are already open.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream(
    State(app): State<AppState>,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let Query(q) = q?;
    let bbox = match q.bbox.as_deref() {
        Some(b) => BBox::parse(b).map_err(|r| Problem::bad_param("bbox", format!("bbox {r}")))?,
        None => BBox::parse("-180,-90,180,90").expect("the world is a valid box"),
    };
    let interval_ms = q.interval_ms.unwrap_or(250);
    if !(50..=60_000).contains(&interval_ms) {
        return Err(Problem::bad_param(
            "interval_ms",
            "interval_ms must be between 50 and 60000",
        ));
    }
    let slot = app.stream_slots.clone().try_acquire_owned().map_err(|_| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            "too many live streams are open",
        )
    })?;
    let events = match q.events.as_deref() {
        None => None,
        Some(text) => {
            let fleet = crate::geofences::fleet(&app)?;
            let kinds = if text == "all" {
                Vec::new()
            } else {
                crate::events::parse_kinds(text).map_err(|mut p| {
                    p.field = Some("events");
                    p
                })?
            };
            let store = fleet.store.clone();
            let after = crate::geofences::blocking(move || Ok(store.event_head()?)).await?;
            Some(EventFollow {
                store: fleet.store.clone(),
                kinds,
                after,
            })
        }
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    // A client that fell behind gets the newest state, not a burst of old ticks.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cursor = Cursor {
        state: app.engine.state.clone(),
        bbox,
        since: 0,
        ticker,
        snapshot_sent: false,
        events,
        queue: VecDeque::new(),
        _slot: slot,
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        let mut changed = Vec::new();
        // A state store that cannot answer (a shared one that is down) costs this client a
        // tick, not its stream: the next look starts from the same place.
        if !c.snapshot_sent {
            loop {
                c.ticker.tick().await; // the first tick is immediate
                match c.state.changes_since(&c.bbox, 0, &mut changed) {
                    Ok(since) => break c.since = since,
                    Err(error) => {
                        changed.clear();
                        tracing::debug!(message = "stream snapshot deferred", %error);
                    }
                }
            }
            c.snapshot_sent = true;
            return Some((Ok(event("snapshot", &changed)), c));
        }
        loop {
            if let Some(e) = c.queue.pop_front() {
                return Some((Ok(e), c));
            }
            c.ticker.tick().await;
            if let Some(f) = &mut c.events {
                follow_events(f, &c.bbox, &mut c.queue).await;
            }
            match c.state.changes_since(&c.bbox, c.since, &mut changed) {
                Ok(since) => c.since = since,
                Err(error) => {
                    changed.clear();
                    tracing::debug!(message = "stream update deferred", %error);
                    continue;
                }
            }
            if !changed.is_empty() {
                c.queue.push_front(event("update", &changed));
            }
        }
    });
    // The stream ends when the server shuts down, so graceful shutdown is not held open.
    let mut closing = app.closing.subscribe();
    let events = futures_util::StreamExt::take_until(events, async move {
        let _ = closing.wait_for(|c| *c).await;
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Queues the events stored since the last look that match the kinds and lie in the box.
async fn follow_events(f: &mut EventFollow, bbox: &BBox, queue: &mut VecDeque<Event>) {
    let store = f.store.clone();
    let q = EventQuery {
        kinds: f.kinds.clone(),
        after_seq: f.after,
        limit: 1000,
        ..EventQuery::default()
    };
    match tokio::task::spawn_blocking(move || store.events(&q)).await {
        Ok(Ok(page)) => {
            for e in &page {
                f.after = f.after.max(e.seq);
                if bbox.contains(e.event.lat(), e.event.lon()) {
                    let data = crate::events::event_json(e).to_string();
                    queue.push_back(Event::default().event("event").data(data));
                }
            }
        }
        Ok(Err(error)) => tracing::debug!(message = "stream events deferred", %error),
        Err(_) => {}
    }
}
