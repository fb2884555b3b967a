//! The standard feeds, served from the fleet: GBFS 3.0 under `/gbfs/3.0/` (public, no key)
//! and the MDS 2.0 Provider API under `/mds/` (a key with the `read` scope). The payloads are
//! built by [`kickstand_feeds`]; this module gathers their inputs (the latest state, the
//! geofences, the events, the history) and serves them.

use crate::geofences::blocking;
use crate::problem::Problem;
use crate::{AppState, now_ms};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kickstand_domain::event::{Event, EventKind};
use kickstand_domain::geo::BBox;
use kickstand_domain::{Point, VehicleId, VehicleState};
use kickstand_engine::Engine;
use kickstand_engine::fleet::{EventQuery, FleetStore, ends_trip};
use kickstand_engine::state::{StateFilter, VehicleView};
use kickstand_feeds::gbfs::{self, FeedVehicle, FeedZone, GbfsConfig};
use kickstand_feeds::mds::{self, Endpoint, MdsConfig, MdsError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// The settings of the feeds.
#[derive(Clone, Debug, Default)]
pub struct FeedSettings {
    pub gbfs: GbfsConfig,
    pub mds: MdsConfig,
    /// The absolute URL clients reach this server at (`http.public_url`); from the request's
    /// `Host` when unset.
    pub public_url: Option<String>,
}

/// Every vehicle in the latest state, by id.
fn all_vehicles(engine: &Engine) -> Result<Vec<VehicleView>, Problem> {
    let world = BBox::parse("-180,-90,180,90").expect("the world is a valid box");
    let mut out: Vec<VehicleView> = Vec::new();
    loop {
        let after = out.last().map(|v| v.vehicle_id.clone());
        let page = engine
            .state
            .within(world, StateFilter::default(), after.as_ref(), 10_000)?;
        let done = page.len() < 10_000;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

fn base_url(app: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &app.feeds.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn json_with(status: StatusCode, content_type: &'static str, v: &Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

// ---------------------------------------------------------------------------------------------
// GBFS

#[utoipa::path(
    get,
    path = "/gbfs/3.0/{file}",
    tag = "feeds",
    summary = "GBFS 3.0 feed",
    description = "The public GBFS 3.0 feed: `gbfs.json` (discovery), `manifest.json`, \
        `system_information.json`, `vehicle_types.json`, `vehicle_status.json` and \
        `geofencing_zones.json`. No key. Vehicles on a trip or reserved are not listed, and \
        each vehicle's public id changes after every trip.",
    params(("file" = String, Path, description = "The file, e.g. `vehicle_status.json`.")),
    responses(
        (status = 200, description = "The file, valid against the official GBFS 3.0 schema.", body = serde_json::Value, content_type = "application/json"),
        (status = 404, description = "No such file.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn gbfs_file(
    State(app): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if !gbfs::FEEDS.contains(&file.as_str()) {
        return Err(Problem::not_found(format!(
            "no GBFS file {file}; the feeds are {}",
            gbfs::FEEDS.join(", ")
        )));
    }
    let now = now_ms();
    let cfg = app.feeds.gbfs.clone();
    let base = base_url(&app, &headers);
    let (body, ttl) = match file.as_str() {
        "gbfs.json" => (gbfs::gbfs_json(&cfg, &base, now), cfg.ttl_secs),
        "manifest.json" => (gbfs::manifest_json(&cfg, &base, now), cfg.ttl_secs),
        "system_information.json" => (gbfs::system_information(&cfg, now), cfg.ttl_secs),
        "vehicle_types.json" => (gbfs::vehicle_types(&cfg, now), cfg.ttl_secs),
        "vehicle_status.json" => {
            let engine = app.engine.clone();
            let c = cfg.clone();
            let body = blocking(move || {
                let vehicles = all_vehicles(&engine)?;
                let trip_ends: HashMap<VehicleId, i64> = match &engine.fleet {
                    Some(f) => f.store.last_trip_ends()?.into_iter().collect(),
                    None => HashMap::new(),
                };
                let feed = vehicles.iter().map(|v| FeedVehicle {
                    vehicle_id: v.vehicle_id.as_str(),
                    lat: v.point.lat(),
                    lon: v.point.lon(),
                    battery_pct: v.point.battery_pct(),
                    state: v.point.state.map(VehicleState::as_str),
                    last_reported_ms: v.point.ts,
                    trip_epoch: trip_ends.get(&v.vehicle_id).map_or(0, |t| *t as u64),
                    vehicle_type_id: None,
                });
                Ok(gbfs::vehicle_status(&c, feed, now))
            })
            .await?;
            (body, cfg.vehicle_status_ttl_secs)
        }
        _ => {
            // geofencing_zones.json
            let zones = match app.engine.fleet.clone() {
                Some(f) => blocking(move || Ok(f.store.geofences()?)).await?,
                None => Vec::new(),
            };
            let geometries: Vec<Value> = zones.iter().map(|z| z.area.to_geojson()).collect();
            let feed = zones.iter().zip(&geometries).map(|(z, g)| FeedZone {
                id: &z.id,
                name: &z.name,
                kind: z.kind.as_str(),
                max_speed_kmh: z.max_speed_kmh,
                geometry: g,
            });
            (gbfs::geofencing_zones(&cfg, feed, now), cfg.ttl_secs)
        }
    };
    let mut r = json_with(StatusCode::OK, "application/json", &body);
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={ttl}")) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// MDS

/// An MDS answer or error, with the MDS content type.
struct Mds(Result<Value, MdsError>);

impl IntoResponse for Mds {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(v) => json_with(StatusCode::OK, mds::CONTENT_TYPE, &v),
            Err(e) => {
                let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
                json_with(status, mds::CONTENT_TYPE, &e.body())
            }
        }
    }
}

fn store_error<E: std::fmt::Display>(e: E) -> Problem {
    tracing::warn!(message = "MDS query failed", error = %e);
    Problem::unavailable("a store is unavailable; retry later", 1)
}

fn page_param(q: &HashMap<String, String>) -> Result<usize, MdsError> {
    match q.get("page") {
        None => Ok(0),
        Some(p) => p.parse().map_err(|_| MdsError::BadParam {
            param: "page",
            reason: "page must be a whole number from 0".into(),
        }),
    }
}

/// The request's URL without `page`, for the paging links.
fn page_base(
    app: &AppState,
    headers: &HeaderMap,
    path: &str,
    q: &HashMap<String, String>,
) -> String {
    let mut keys: Vec<_> = q.iter().filter(|(k, _)| k.as_str() != "page").collect();
    keys.sort();
    let query: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let base = format!("{}{path}", base_url(app, headers));
    if query.is_empty() {
        base
    } else {
        format!("{base}?{}", query.join("&"))
    }
}

/// The vehicle whose `device_id` is `device`, found by computing every vehicle's.
fn by_device<'a>(
    cfg: &MdsConfig,
    vehicles: &'a [VehicleView],
    device: &str,
) -> Result<&'a VehicleView, MdsError> {
    let device = mds::parse_device_id(device)?;
    vehicles
        .iter()
        .find(|v| mds::device_id(&cfg.provider_id, &v.vehicle_id) == device)
        .ok_or_else(|| MdsError::NotFound(format!("No vehicle with device_id {device}.")))
}

#[utoipa::path(
    get,
    path = "/mds/vehicles",
    tag = "feeds",
    summary = "MDS 2.0: vehicles",
    description = "Every vehicle, paged (`page`), as MDS 2.0 Vehicle records \
        (`application/vnd.mds+json;version=2.0`).",
    responses((status = 200, description = "MDS vehicles.", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"))
)]
pub async fn mds_vehicles(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    vehicles_list(app, headers, q, None, false).await
}

#[utoipa::path(
    get,
    path = "/mds/vehicles/{device_id}",
    tag = "feeds",
    summary = "MDS 2.0: one vehicle",
    params(("device_id" = String, Path, description = "The vehicle's MDS device id (a UUID).")),
    responses((status = 200, description = "The MDS vehicle.", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"))
)]
pub async fn mds_vehicle(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(device): Path<String>,
) -> Result<Response, Problem> {
    vehicles_list(app, headers, HashMap::new(), Some(device), false).await
}

#[utoipa::path(
    get,
    path = "/mds/vehicles/status",
    tag = "feeds",
    summary = "MDS 2.0: vehicle status",
    description = "Every vehicle's last event and last telemetry, paged (`page`).",
    responses((status = 200, description = "MDS vehicle status.", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"))
)]
pub async fn mds_vehicles_status(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    vehicles_list(app, headers, q, None, true).await
}

#[utoipa::path(
    get,
    path = "/mds/vehicles/status/{device_id}",
    tag = "feeds",
    summary = "MDS 2.0: one vehicle's status",
    params(("device_id" = String, Path, description = "The vehicle's MDS device id (a UUID).")),
    responses((status = 200, description = "The MDS vehicle status.", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"))
)]
pub async fn mds_vehicle_status(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(device): Path<String>,
) -> Result<Response, Problem> {
    vehicles_list(app, headers, HashMap::new(), Some(device), true).await
}

async fn vehicles_list(
    app: AppState,
    headers: HeaderMap,
    q: HashMap<String, String>,
    device: Option<String>,
    status: bool,
) -> Result<Response, Problem> {
    let cfg = app.feeds.mds.clone();
    let now = now_ms();
    let path = if status {
        "/mds/vehicles/status"
    } else {
        "/mds/vehicles"
    };
    let base = page_base(&app, &headers, path, &q);
    let engine = app.engine.clone();
    blocking(move || {
        let vehicles = all_vehicles(&engine)?;
        let (chosen, links, endpoint): (Vec<&VehicleView>, _, _) = match &device {
            Some(d) => match by_device(&cfg, &vehicles, d) {
                Ok(v) => (
                    vec![v],
                    None,
                    if status {
                        Endpoint::VehicleStatus
                    } else {
                        Endpoint::Vehicle
                    },
                ),
                Err(e) => return Ok(Mds(Err(e)).into_response()),
            },
            None => {
                let page = match page_param(&q) {
                    Ok(p) => p,
                    Err(e) => return Ok(Mds(Err(e)).into_response()),
                };
                let (range, links) = mds::paginate(&base, vehicles.len(), page, cfg.page_size);
                (
                    vehicles[range].iter().collect(),
                    Some(links),
                    if status {
                        Endpoint::VehiclesStatus
                    } else {
                        Endpoint::Vehicles
                    },
                )
            }
        };
        let items: Vec<Value> = if status {
            let ids: Vec<VehicleId> = chosen.iter().map(|v| v.vehicle_id.clone()).collect();
            let events: HashMap<VehicleId, Event> = match &engine.fleet {
                Some(f) => f
                    .store
                    .last_state_events(&ids)?
                    .into_iter()
                    .map(|e| (e.vehicle_id.clone(), e))
                    .collect(),
                None => HashMap::new(),
            };
            chosen
                .iter()
                .map(|v| {
                    mds::vehicle_status(&cfg, &v.vehicle_id, &v.point, events.get(&v.vehicle_id))
                })
                .collect()
        } else {
            chosen
                .iter()
                .map(|v| mds::vehicle(&cfg, &v.vehicle_id))
                .collect()
        };
        Ok(Mds(Ok(mds::envelope(
            endpoint,
            items,
            links.as_ref(),
            now,
            &cfg,
        )))
        .into_response())
    })
    .await
}

/// When the trip that `end` (a `state_changed` out of `on_trip`) ends began: the newest
/// `state_changed` into `on_trip` of that vehicle in the day before it.
fn trip_start(store: &dyn FleetStore, end: &Event) -> Result<Option<i64>, Problem> {
    let q = EventQuery {
        vehicle_id: Some(end.vehicle_id.clone()),
        kinds: vec![EventKind::StateChanged],
        from: Some(end.ts - 86_400_000),
        to: Some(end.ts),
        limit: 10_000,
        ..EventQuery::default()
    };
    let events = store.events(&q)?;
    Ok(events
        .iter()
        .rev()
        .find(|e| e.event.to_state == Some(VehicleState::OnTrip))
        .map(|e| e.event.ts))
}

#[utoipa::path(
    get,
    path = "/mds/trips",
    tag = "feeds",
    summary = "MDS 2.0: trips that ended in an hour",
    description = "`end_time=YYYY-MM-DDTHH` (UTC). A trip is a run of `on_trip` fixes; its \
        distance is measured along its fixes. Each record also carries `route`, a GeoJSON \
        FeatureCollection of the trip's fixes (a Kickstand extension; MDS 2.0 puts the path in \
        telemetry).",
    params(("end_time" = String, Query, description = "The hour, `YYYY-MM-DDTHH`.")),
    responses(
        (status = 200, description = "MDS trips.", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
        (status = 400, description = "`end_time` is missing or malformed (MDS error body).", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
        (status = 404, description = "The hour is not over yet (MDS error body).", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
    )
)]
pub async fn mds_trips(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let now = now_ms();
    let hour = match mds::parse_hour("end_time", q.get("end_time").map(String::as_str))
        .and_then(|h| mds::require_past_hour(h, now).map(|()| h))
    {
        Ok(h) => h,
        Err(e) => return Ok(Mds(Err(e)).into_response()),
    };
    let cfg = app.feeds.mds.clone();
    let engine = app.engine.clone();
    blocking(move || {
        let mut trips = Vec::new();
        if let Some(f) = &engine.fleet {
            let q = EventQuery {
                kinds: vec![EventKind::StateChanged],
                from: Some(hour.0),
                to: Some(hour.1),
                limit: 100_000,
                ..EventQuery::default()
            };
            for end in f.store.events(&q)?.iter().filter(|e| ends_trip(&e.event)) {
                let end = &end.event;
                let start = trip_start(f.store.as_ref(), end)?.unwrap_or(end.ts - 86_400_000);
                let points = engine
                    .history
                    .track(&end.vehicle_id, start, end.ts)
                    .map_err(store_error)?;
                if let Some(trip) = mds::trips_from_points(&cfg, &end.vehicle_id, &points)
                    .into_iter()
                    .next_back()
                {
                    let mut json = trip.json;
                    if let Value::Object(o) = &mut json {
                        o.insert("route".into(), route(&points, trip.start_ts, trip.end_ts));
                    }
                    trips.push(json);
                }
            }
        }
        Ok(Mds(Ok(mds::envelope(Endpoint::Trips, trips, None, now, &cfg))).into_response())
    })
    .await
}

/// A trip's fixes as a GeoJSON FeatureCollection of Points with their `timestamp` (ms).
fn route(points: &[Point], from: i64, to: i64) -> Value {
    let features: Vec<Value> = points
        .iter()
        .filter(|p| p.ts >= from && p.ts <= to && p.quality.is_good())
        .map(|p| {
            serde_json::json!({
                "type": "Feature",
                "properties": {"timestamp": p.ts},
                "geometry": {"type": "Point", "coordinates": [p.lon(), p.lat()]},
            })
        })
        .collect();
    serde_json::json!({"type": "FeatureCollection", "features": features})
}

#[utoipa::path(
    get,
    path = "/mds/telemetry",
    tag = "feeds",
    summary = "MDS 2.0: telemetry of an hour",
    description = "`telemetry_time=YYYY-MM-DDTHH` (UTC): every good fix of the hour, from the \
        time-ordered history scan.",
    params(("telemetry_time" = String, Query, description = "The hour, `YYYY-MM-DDTHH`.")),
    responses(
        (status = 200, description = "MDS telemetry.", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
        (status = 400, description = "`telemetry_time` is missing or malformed (MDS error body).", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
        (status = 404, description = "The hour is not over yet (MDS error body).", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
    )
)]
pub async fn mds_telemetry(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let now = now_ms();
    let hour = match mds::parse_hour(
        "telemetry_time",
        q.get("telemetry_time").map(String::as_str),
    )
    .and_then(|h| mds::require_past_hour(h, now).map(|()| h))
    {
        Ok(h) => h,
        Err(e) => return Ok(Mds(Err(e)).into_response()),
    };
    let cfg = app.feeds.mds.clone();
    let engine = app.engine.clone();
    blocking(move || {
        let mut items = Vec::new();
        engine
            .history
            .scan(hour.0, hour.1 - 1, &mut |b| {
                items.extend(mds::telemetry_for_points(
                    &cfg,
                    &b.vehicle_id,
                    &b.points,
                    None,
                ));
                true
            })
            .map_err(store_error)?;
        Ok(Mds(Ok(mds::envelope(
            Endpoint::Telemetry,
            items,
            None,
            now,
            &cfg,
        )))
        .into_response())
    })
    .await
}

fn mds_events(engine: &Engine, cfg: &MdsConfig, from: i64, to: i64) -> Result<Vec<Value>, Problem> {
    let Some(f) = &engine.fleet else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let q = EventQuery {
            kinds: vec![EventKind::StateChanged, EventKind::Stale],
            from: Some(from),
            to: Some(to),
            after_seq: after,
            limit: 10_000,
            ..EventQuery::default()
        };
        let page = f.store.events(&q)?;
        for e in &page {
            let start = if ends_trip(&e.event) {
                trip_start(f.store.as_ref(), &e.event)?
            } else {
                None
            };
            out.extend(mds::event(cfg, &e.event, start));
        }
        match page.last() {
            Some(last) if page.len() == 10_000 => after = last.seq,
            _ => return Ok(out),
        }
    }
}

#[utoipa::path(
    get,
    path = "/mds/events/historical",
    tag = "feeds",
    summary = "MDS 2.0: events of an hour",
    params(("event_time" = String, Query, description = "The hour, `YYYY-MM-DDTHH`.")),
    responses(
        (status = 200, description = "MDS events.", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
        (status = 400, description = "`event_time` is missing or malformed (MDS error body).", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
        (status = 404, description = "The hour is not over yet (MDS error body).", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
    )
)]
pub async fn mds_events_historical(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let now = now_ms();
    let hour = match mds::parse_hour("event_time", q.get("event_time").map(String::as_str))
        .and_then(|h| mds::require_past_hour(h, now).map(|()| h))
    {
        Ok(h) => h,
        Err(e) => return Ok(Mds(Err(e)).into_response()),
    };
    let cfg = app.feeds.mds.clone();
    let engine = app.engine.clone();
    blocking(move || {
        let items = mds_events(&engine, &cfg, hour.0, hour.1)?;
        Ok(Mds(Ok(mds::envelope(
            Endpoint::EventsHistorical,
            items,
            None,
            now,
            &cfg,
        )))
        .into_response())
    })
    .await
}

#[utoipa::path(
    get,
    path = "/mds/events/recent",
    tag = "feeds",
    summary = "MDS 2.0: recent events",
    description = "`start_time` and `end_time` in epoch ms, within the last two weeks; paged (`page`).",
    params(
        ("start_time" = i64, Query, description = "Epoch ms, inclusive."),
        ("end_time" = i64, Query, description = "Epoch ms, exclusive."),
    ),
    responses(
        (status = 200, description = "MDS events.", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
        (status = 400, description = "A parameter is missing or invalid (MDS error body).", body = serde_json::Value, content_type = "application/vnd.mds+json;version=2.0"),
    )
)]
pub async fn mds_events_recent(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let now = now_ms();
    let range = match mds::parse_recent_range(
        q.get("start_time").map(String::as_str),
        q.get("end_time").map(String::as_str),
        now,
    ) {
        Ok(r) => r,
        Err(e) => return Ok(Mds(Err(e)).into_response()),
    };
    let page = match page_param(&q) {
        Ok(p) => p,
        Err(e) => return Ok(Mds(Err(e)).into_response()),
    };
    let base = page_base(&app, &headers, "/mds/events/recent", &q);
    let cfg = app.feeds.mds.clone();
    let engine = app.engine.clone();
    blocking(move || {
        let all = mds_events(&engine, &cfg, range.0, range.1)?;
        let (r, links) = mds::paginate(&base, all.len(), page, cfg.page_size);
        let items = all[r].to_vec();
        Ok(Mds(Ok(mds::envelope(
            Endpoint::EventsRecent,
            items,
            Some(&links),
            now,
            &cfg,
        )))
        .into_response())
    })
    .await
}

/// The webhook service, for the webhook routes (mounted only when the process runs one).
impl axum::extract::FromRef<AppState> for Arc<kickstand_webhooks::WebhookService> {
    fn from_ref(app: &AppState) -> Self {
        app.webhooks
            .clone()
            .expect("the webhook routes answer 404 before a handler runs when there is no service")
    }
}
