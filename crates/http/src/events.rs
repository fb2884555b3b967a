//! `GET /api/v1/events`: fleet events, filtered and paged by a cursor (the sequence number of
//! the last event of a page), oldest first.

use crate::geofences::{blocking, fleet};
use crate::problem::Problem;
use crate::{AppState, json_response};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use kickstand_domain::VehicleId;
use kickstand_domain::event::EventKind;
use kickstand_domain::timefmt::{format_ms, parse_query_time};
use kickstand_engine::fleet::{EventQuery, StoredEvent};
use serde::Deserialize;
use serde_json::{Value, json};

/// The JSON of an event, as the API and the live stream give it.
pub fn event_json(s: &StoredEvent) -> Value {
    let e = &s.event;
    let mut v = json!({
        "id": e.id,
        "seq": s.seq,
        "kind": e.kind.as_str(),
        "vehicle_id": e.vehicle_id.as_str(),
        "ts": format_ms(e.ts),
        "recorded_at": format_ms(s.recorded_at),
        "lat": e.lat(),
        "lon": e.lon(),
    });
    let o = v.as_object_mut().expect("built as an object");
    if let Some(z) = &e.zone_id {
        o.insert("zone_id".into(), json!(z));
    }
    if let Some(s) = e.from_state {
        o.insert("from_state".into(), json!(s.as_str()));
    }
    if let Some(s) = e.to_state {
        o.insert("to_state".into(), json!(s.as_str()));
    }
    if let Some(b) = e.battery_dpct {
        o.insert("battery_pct".into(), json!(f64::from(b) / 10.0));
    }
    if let Some(b) = e.speed_dkmh {
        o.insert("speed_kmh".into(), json!(f64::from(b) / 10.0));
    }
    if let Some(b) = e.limit_dkmh {
        o.insert("max_speed_kmh".into(), json!(f64::from(b) / 10.0));
    }
    if let Some(t) = e.last_fix_ts {
        o.insert("last_fix_ts".into(), json!(format_ms(t)));
    }
    v
}

/// Parses a comma-separated list of event kinds.
pub fn parse_kinds(text: &str) -> Result<Vec<EventKind>, Problem> {
    text.split(',')
        .filter(|k| !k.is_empty())
        .map(|k| {
            EventKind::parse(k).ok_or_else(|| {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                Problem::bad_param(
                    "kind",
                    format!("unknown event kind {k:?}; known: {}", known.join(", ")),
                )
            })
        })
        .collect()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this vehicle's events.
    vehicle_id: Option<String>,
    /// Only these kinds, comma-separated (`battery_low,stale`).
    kind: Option<String>,
    /// Only events of this geofence.
    zone_id: Option<String>,
    /// Event time at or after this (RFC 3339 or epoch ms).
    from: Option<String>,
    /// Event time before this (RFC 3339 or epoch ms).
    to: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Events per page, 1–1000 (default 100).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    summary = "Fleet events",
    description = "Events in the order they were stored, filtered, 100 a page by default. \
        `next_cursor` is set when more may follow: pass it as `cursor` for the next page. \
        Kinds: state_changed, geofence_entered, geofence_exited, left_operating_area, \
        parked_in_no_parking, speeding_in_slow_zone, battery_low, battery_recovered, \
        moving_while_locked, stale, reporting_again.",
    params(EventsQuery),
    responses(
        (status = 200, description = "`{events: [...], next_cursor}`.", body = serde_json::Value, content_type = "application/json"),
        (status = 400, description = "A parameter is invalid.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q?;
    let fleet = fleet(&app)?;
    let time = |name: &'static str, v: &Option<String>| -> Result<Option<i64>, Problem> {
        v.as_deref()
            .map(|t| {
                parse_query_time(t).ok_or_else(|| {
                    Problem::bad_param(
                        name,
                        format!("{name} must be RFC 3339 or epoch milliseconds"),
                    )
                })
            })
            .transpose()
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_param(
            "limit",
            "limit must be between 1 and 1000",
        ));
    }
    let query = EventQuery {
        vehicle_id: q
            .vehicle_id
            .as_deref()
            .map(|v| {
                VehicleId::new(v)
                    .map_err(|r| Problem::bad_param("vehicle_id", format!("vehicle_id {r}")))
            })
            .transpose()?,
        kinds: q
            .kind
            .as_deref()
            .map(parse_kinds)
            .transpose()?
            .unwrap_or_default(),
        zone_id: q.zone_id.clone(),
        from: time("from", &q.from)?,
        to: time("to", &q.to)?,
        after_seq: q
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<u64>().map_err(|_| {
                    Problem::bad_param(
                        "cursor",
                        "cursor must be the next_cursor of a previous page",
                    )
                })
            })
            .transpose()?
            .unwrap_or(0),
        limit,
    };
    let page = blocking(move || Ok(fleet.store.events(&query)?)).await?;
    let next = (page.len() == limit).then(|| page.last().map(|e| e.seq.to_string()));
    let events: Vec<Value> = page.iter().map(event_json).collect();
    let body = json!({ "events": events, "next_cursor": next.flatten() });
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// The fleet store as the webhook dispatcher's event feed: events in `seq` order.
pub struct StoreFeed(pub std::sync::Arc<dyn kickstand_engine::fleet::FleetStore>);

impl kickstand_webhooks::EventFeed for StoreFeed {
    fn events_after(
        &self,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, kickstand_domain::event::Event)>, String> {
        let q = EventQuery {
            after_seq: seq,
            limit,
            ..EventQuery::default()
        };
        let page = self.0.events(&q).map_err(|e| e.0)?;
        Ok(page.into_iter().map(|e| (e.seq, e.event)).collect())
    }

    fn head(&self) -> Result<u64, String> {
        self.0.event_head().map_err(|e| e.0)
    }
}
