//! The MDS 2.0 Provider API (micromobility mode), built from fleet data as JSON values: the
//! `vehicles`, `vehicles/status`, `trips`, `telemetry` and `events` payloads, their response
//! envelopes, the query parameters those endpoints take, and the error bodies they answer with.
//!
//! **Architecture Invariant:** no I/O and no clock. The HTTP layer gathers the points and
//! events, passes the current time in, and serves what comes out with [`CONTENT_TYPE`].
//!
//! # Identifiers
//!
//! MDS wants UUIDs where Kickstand has vehicle ids and timestamps, and it wants the same UUID
//! every time a record is served. Every id is therefore *derived*, never stored:
//!
//! | MDS id | derived from |
//! |---|---|
//! | `device_id` | UUID v5 in the namespace `provider_id`, name `device <vehicle_id>` |
//! | `trip_id` | UUID v5 in `provider_id`, name `trip <vehicle_id> <start ts ms>` |
//! | `telemetry_id` | UUID v5 in `provider_id`, name `telemetry <vehicle_id> <ts ms>` |
//! | `event_id` | Kickstand's [`Event::id`] (128 bits) as a UUID v8 (6 bits give way to the version and variant) |
//!
//! Changing `provider_id` therefore changes every `device_id` and `trip_id`. A trip is named
//! by its first `on_trip` fix, which is also the fix whose `state_changed` event starts it, so
//! the trip in `/trips`, the `trip_start` event and the trip's telemetry carry the same id.
//!
//! # Event mapping
//!
//! MDS events are changes of vehicle state, and MDS 2.0 allows only certain `event_types` in
//! each `vehicle_state` (the micromobility table in `modes/micromobility/event.yaml`). Every
//! pair below is in that table; Kickstand never knows *why* a state changed, so where MDS
//! asks for a reason the most plausible one is given.
//!
//! | Kickstand event | from → to | `vehicle_state` | `event_types` |
//! |---|---|---|---|
//! | `state_changed` | `on_trip` → `available` | `available` | `trip_end` (†) |
//! | | `reserved` → `available` | `available` | `reservation_cancel` |
//! | | `non_operational` → `available` | `available` | `maintenance` (on-street maintenance done) |
//! | | none, `removed`, `elsewhere` → `available` | `available` | `provider_drop_off` |
//! | | `elsewhere` → `on_trip` | `on_trip` | `trip_enter_jurisdiction` (‡) |
//! | | any other → `on_trip` | `on_trip` | `trip_start` (‡) |
//! | | any → `reserved` | `reserved` | `reservation_start` |
//! | | any → `non_operational` | `non_operational` | `battery_low` when the event's battery is below [`MdsConfig::battery_low_pct`], else `maintenance` |
//! | | `non_operational` → `removed` | `removed` | `maintenance_pick_up` |
//! | | any other → `removed` | `removed` | `unspecified` |
//! | | `on_trip` → `elsewhere` | `elsewhere` | `trip_leave_jurisdiction` (†) |
//! | | any other → `elsewhere` | `elsewhere` | `unspecified` |
//! | `stale` | | `non_contactable` | `comms_lost` |
//! | every other kind, and a `state_changed` without a new state | | no MDS event | |
//!
//! (‡) with `trip_ids` = the trip the event starts (its id is known from the event alone).
//! (†) with `trip_ids` when the caller passes the start of the trip that ends (see [`event`]).
//!
//! MDS 2.0 micromobility has no `service_start` or `service_end` (those are car-share and
//! delivery-robot types), so they are never emitted; nor is `decommissioned`, a permanent
//! removal, which Kickstand cannot tell from a night's pickup. Kickstand's
//! `battery_low` is *not* an MDS event on its own: it changes no state, and reporting it as
//! `non_operational` would claim one. When a vehicle does go `non_operational` with a low
//! battery, the state change carries `battery_low`. `reporting_again` needs the vehicle's
//! state, which the event does not carry; [`vehicle_status`] reports it as `comms_restored`.
//!
//! # Trips
//!
//! A trip is a maximal run of a vehicle's fixes in the `on_trip` state ([`trips_from_points`]);
//! a fix without a `state` keeps the previous one (devices may report their state only when it
//! changes). A run still open at the end of the points is not a trip yet. MDS 2.0 trips have
//! no `route`: a trip's path is its telemetry, whose `trip_ids` name the trip.

use kickstand_domain::event::{Event, EventKind};
use kickstand_domain::geo::distance_m;
use kickstand_domain::{Point, VehicleId, VehicleState};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::ops::Range;
use uuid::Uuid;

/// The content type of every MDS 2.0 response.
pub const CONTENT_TYPE: &str = "application/vnd.mds+json;version=2.0";

/// The MDS version written in every response body.
pub const VERSION: &str = "2.0.0";

/// The placeholder `provider_id` of a deployment that sets none. It is the same for every
/// Kickstand deployment: replace it with the UUID the agency (or the OMF provider list)
/// assigned to the operator.
pub const DEFAULT_PROVIDER_ID: Uuid = uuid::uuid!("5b0b1e42-6c1f-4d0e-9a8e-0c3f6f1d2a7b");

/// How far back `/events/recent` may reach: two weeks (MDS 2.0 Provider API).
pub const EVENTS_RECENT_MAX_AGE_MS: i64 = 14 * 24 * 3_600_000;

/// The largest `ttl` MDS allows: five minutes.
pub const MAX_TTL_SECS: u32 = 300;

/// The earliest timestamp MDS accepts (`data-types/timestamp.yaml`): 2018-01-01T00:00:00Z.
pub const MIN_TIMESTAMP_MS: i64 = 1_514_764_800_000;

const HOUR_MS: i64 = 3_600_000;

/// The `[mds]` section of the configuration: who the provider is and what it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MdsConfig {
    /// The operator's MDS `provider_id`, as the agency assigned it. Every `device_id` and
    /// `trip_id` is derived from it, so changing it renames every vehicle and trip. The default
    /// is a placeholder shared by every Kickstand deployment ([`DEFAULT_PROVIDER_ID`]).
    pub provider_id: Uuid,
    /// The MDS `vehicle_type` of the fleet (one type per deployment).
    pub vehicle_type: VehicleType,
    /// The MDS `propulsion_types` of the fleet's vehicles; at least one, no repeats.
    pub propulsion_types: Vec<PropulsionType>,
    /// The most records on one page of `/vehicles`, `/vehicles/status` and `/events/recent`.
    pub page_size: usize,
    /// How long clients may cache `/vehicles` and `/vehicles/status`, in seconds; at most 300
    /// (MDS sends it as `ttl` in milliseconds).
    pub ttl_secs: u32,
    /// A vehicle that turns `non_operational` with its battery below this percentage is
    /// reported with the event type `battery_low`; otherwise with `maintenance`.
    pub battery_low_pct: u8,
}

impl Default for MdsConfig {
    fn default() -> MdsConfig {
        MdsConfig {
            provider_id: DEFAULT_PROVIDER_ID,
            vehicle_type: VehicleType::ScooterStanding,
            propulsion_types: vec![PropulsionType::Electric],
            page_size: 1000,
            ttl_secs: 60,
            battery_low_pct: 10,
        }
    }
}

/// A setting of the `[mds]` section that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("mds.{field}: {reason}")]
pub struct MdsConfigError {
    pub field: &'static str,
    pub reason: &'static str,
}

impl MdsConfig {
    /// Checks what serde cannot: the bounds MDS puts on these values.
    pub fn validate(&self) -> Result<(), MdsConfigError> {
        let fail = |field, reason| Err(MdsConfigError { field, reason });
        if self.propulsion_types.is_empty() {
            return fail("propulsion_types", "must name at least one propulsion type");
        }
        for (i, p) in self.propulsion_types.iter().enumerate() {
            if self.propulsion_types[..i].contains(p) {
                return fail("propulsion_types", "must not repeat a propulsion type");
            }
        }
        if self.page_size == 0 {
            return fail("page_size", "must be at least 1");
        }
        if self.ttl_secs > MAX_TTL_SECS {
            return fail("ttl_secs", "must be at most 300 (MDS: five minutes)");
        }
        if self.battery_low_pct > 100 {
            return fail("battery_low_pct", "must be a percentage, 0 to 100");
        }
        Ok(())
    }
}

/// MDS `vehicle_type` (`data-types/vehicle-type.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VehicleType {
    Bicycle,
    Bus,
    CargoBicycle,
    Car,
    DeliveryRobot,
    Moped,
    Motorcycle,
    ScooterStanding,
    ScooterSeated,
    Truck,
    Other,
}

/// MDS `propulsion_type` (`data-types/propulsion-type.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropulsionType {
    Human,
    ElectricAssist,
    Electric,
    Combustion,
    CombustionDiesel,
    Hybrid,
    HydrogenFuelCell,
    PlugInHybrid,
}

/// The Provider API endpoints, each with its own envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/vehicles`: paged, with `last_updated` and `ttl`.
    Vehicles,
    /// `/vehicles/{device_id}`: one vehicle, with `last_updated` and `ttl`.
    Vehicle,
    /// `/vehicles/status`: paged, with `last_updated` and `ttl`.
    VehiclesStatus,
    /// `/vehicles/status/{device_id}`: one status, with `last_updated` and `ttl`.
    VehicleStatus,
    /// `/trips?end_time=`.
    Trips,
    /// `/telemetry?telemetry_time=`.
    Telemetry,
    /// `/events/historical?event_time=`.
    EventsHistorical,
    /// `/events/recent?start_time=&end_time=`: paged.
    EventsRecent,
}

impl Endpoint {
    /// The field of the envelope that holds the records.
    pub fn payload_key(self) -> &'static str {
        match self {
            Endpoint::Vehicles | Endpoint::Vehicle => "vehicles",
            Endpoint::VehiclesStatus | Endpoint::VehicleStatus => "vehicles_status",
            Endpoint::Trips => "trips",
            Endpoint::Telemetry => "telemetry",
            Endpoint::EventsHistorical | Endpoint::EventsRecent => "events",
        }
    }

    /// Whether the spec pages this endpoint (and so whether [`envelope`] writes `links`).
    pub fn is_paged(self) -> bool {
        matches!(
            self,
            Endpoint::Vehicles | Endpoint::VehiclesStatus | Endpoint::EventsRecent
        )
    }

    /// Whether the envelope carries `last_updated` and `ttl`.
    fn is_near_realtime(self) -> bool {
        matches!(
            self,
            Endpoint::Vehicles
                | Endpoint::Vehicle
                | Endpoint::VehiclesStatus
                | Endpoint::VehicleStatus
        )
    }
}

/// Paging links (JSON:API style). `None` is written as `null`; `next` is `null` on the last page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Links {
    pub first: Option<String>,
    pub last: Option<String>,
    pub prev: Option<String>,
    pub next: Option<String>,
}

/// One page of `total` records: which records it holds, and the links to the other pages.
///
/// `base_url` is the absolute URL of the request without the `page` parameter (MDS validates
/// links as URIs); pages are numbered from 0 and named by a `page=N` query parameter. A page
/// past the end holds no records.
pub fn paginate(
    base_url: &str,
    total: usize,
    page: usize,
    page_size: usize,
) -> (Range<usize>, Links) {
    let page_size = page_size.max(1);
    let pages = total.div_ceil(page_size).max(1);
    let sep = if base_url.contains('?') { '&' } else { '?' };
    let url = |n: usize| Some(format!("{base_url}{sep}page={n}"));
    let start = page.saturating_mul(page_size).min(total);
    let end = start.saturating_add(page_size).min(total);
    let links = Links {
        first: url(0),
        last: url(pages - 1),
        prev: (page > 0).then(|| url((page - 1).min(pages - 1))).flatten(),
        next: (page + 1 < pages).then(|| url(page + 1)).flatten(),
    };
    (start..end, links)
}

/// A response body: `version`, the records under the endpoint's key, `links` for paged
/// endpoints when given, and `last_updated` (= `now_ms`) and `ttl` for the near-realtime ones.
pub fn envelope(
    endpoint: Endpoint,
    items: Vec<Value>,
    links: Option<&Links>,
    now_ms: i64,
    cfg: &MdsConfig,
) -> Value {
    let mut body = Map::new();
    body.insert("version".into(), VERSION.into());
    if endpoint.is_near_realtime() {
        body.insert("last_updated".into(), now_ms.into());
        let ttl_ms = u64::from(cfg.ttl_secs.min(MAX_TTL_SECS)) * 1000;
        body.insert("ttl".into(), ttl_ms.into());
    }
    if let (true, Some(links)) = (endpoint.is_paged(), links) {
        body.insert(
            "links".into(),
            serde_json::to_value(links).expect("links are plain strings"),
        );
    }
    body.insert(endpoint.payload_key().into(), Value::Array(items));
    Value::Object(body)
}

/// The MDS `device_id` of a vehicle: stable for a provider and vehicle id.
pub fn device_id(provider_id: &Uuid, vehicle_id: &VehicleId) -> String {
    v5(provider_id, &format!("device {vehicle_id}"))
}

/// The MDS `trip_id` of the trip of `vehicle_id` whose first `on_trip` fix is at `start_ts`.
pub fn trip_id(provider_id: &Uuid, vehicle_id: &VehicleId, start_ts: i64) -> String {
    v5(provider_id, &format!("trip {vehicle_id} {start_ts}"))
}

/// The MDS `telemetry_id` of the fix of `vehicle_id` at `ts` (fixes are unique by both).
pub fn telemetry_id(provider_id: &Uuid, vehicle_id: &VehicleId, ts: i64) -> String {
    v5(provider_id, &format!("telemetry {vehicle_id} {ts}"))
}

/// The MDS `event_id` of a Kickstand event id: its 128 bits as a UUID v8. An id that is not
/// 32 hex digits (none should be) is hashed into a UUID v5 instead.
pub fn event_id(kickstand_event_id: &str) -> String {
    match u128::from_str_radix(kickstand_event_id, 16) {
        Ok(bits) if kickstand_event_id.len() == 32 => {
            Uuid::new_v8(bits.to_be_bytes()).hyphenated().to_string()
        }
        _ => v5(&Uuid::NAMESPACE_OID, kickstand_event_id),
    }
}

fn v5(namespace: &Uuid, name: &str) -> String {
    Uuid::new_v5(namespace, name.as_bytes())
        .hyphenated()
        .to_string()
}

/// An MDS Vehicle: the properties of a vehicle that rarely change.
pub fn vehicle(cfg: &MdsConfig, vehicle_id: &VehicleId) -> Value {
    json!({
        "device_id": device_id(&cfg.provider_id, vehicle_id),
        "provider_id": provider(cfg),
        "vehicle_id": vehicle_id.as_str(),
        "vehicle_type": cfg.vehicle_type,
        "propulsion_types": cfg.propulsion_types,
    })
}

/// An MDS Vehicle Status: the vehicle's last event and last telemetry.
///
/// `last` is the vehicle's latest fix; `last_event` its latest `state_changed` or `stale`
/// event, if any. The event is reported as is when it still describes the vehicle: it agrees
/// with the fix's state, or it is a `stale` no fix has followed. Otherwise an event is made
/// up from the fix (id derived from the fix, location and battery from the fix):
/// `comms_restored` when the fix came after a `stale`, `unspecified` otherwise, in the fix's
/// state. A vehicle that never reported a state, and has no event, is reported `available`.
/// The telemetry's `trip_ids` name the current trip when `last_event` started it.
pub fn vehicle_status(
    cfg: &MdsConfig,
    vehicle_id: &VehicleId,
    last: &Point,
    last_event: Option<&Event>,
) -> Value {
    let mapped = last_event.and_then(|e| map_event(cfg, e).map(|m| (e, m)));
    let reported = match mapped {
        Some((e, m)) if e.kind == EventKind::Stale && e.ts >= last.ts => Some((e, m)),
        Some((e, m)) if e.kind == EventKind::StateChanged => match last.state {
            None => Some((e, m)),
            Some(s) => (mds_state(s) == m.state).then_some((e, m)),
        },
        _ => None,
    };
    let trip_start = match (last.state, last_event) {
        (Some(VehicleState::OnTrip) | None, Some(e))
            if e.kind == EventKind::StateChanged && e.to_state == Some(VehicleState::OnTrip) =>
        {
            Some(e.ts)
        }
        _ => None,
    };
    let event_json = match reported {
        Some((e, m)) => event_json(cfg, e, &m, trip_start),
        None => {
            let after_stale = matches!(mapped, Some((e, _)) if e.kind == EventKind::Stale);
            let state = last
                .state
                .map(mds_state)
                .or(mapped
                    .map(|(_, m)| m.state)
                    .filter(|s| *s != "non_contactable"))
                .unwrap_or("available");
            let kind = if after_stale {
                "comms_restored"
            } else {
                "unspecified"
            };
            let mut ev = base_record(cfg, vehicle_id);
            ev.insert(
                "event_id".into(),
                v5(
                    &cfg.provider_id,
                    &format!("status {vehicle_id} {}", last.ts),
                )
                .into(),
            );
            ev.insert("vehicle_state".into(), state.into());
            ev.insert("event_types".into(), json!([kind]));
            ev.insert("timestamp".into(), last.ts.into());
            ev.insert("location".into(), gps(last));
            if let Some(b) = battery_percent(last.battery_dpct) {
                ev.insert("battery_percent".into(), b.into());
            }
            Value::Object(ev)
        }
    };
    let mut status = base_record(cfg, vehicle_id);
    status.insert("last_event".into(), event_json);
    status.insert(
        "last_telemetry".into(),
        telemetry(cfg, vehicle_id, last, trip_start),
    );
    Value::Object(status)
}

/// An MDS Telemetry record of one fix. `trip_start_ts` is the start of the trip the fix
/// belongs to (see [`trip_id`]), `None` when the vehicle is not on a trip. Journeys are not
/// used in micromobility: `journey_id` is `null`.
pub fn telemetry(
    cfg: &MdsConfig,
    vehicle_id: &VehicleId,
    point: &Point,
    trip_start_ts: Option<i64>,
) -> Value {
    let mut t = base_record(cfg, vehicle_id);
    t.insert(
        "telemetry_id".into(),
        telemetry_id(&cfg.provider_id, vehicle_id, point.ts).into(),
    );
    t.insert("timestamp".into(), point.ts.into());
    t.insert(
        "trip_ids".into(),
        match trip_start_ts {
            Some(start) => json!([trip_id(&cfg.provider_id, vehicle_id, start)]),
            None => Value::Null,
        },
    );
    t.insert("journey_id".into(), Value::Null);
    t.insert("location".into(), gps(point));
    if let Some(b) = battery_percent(point.battery_dpct) {
        t.insert("battery_percent".into(), b.into());
    }
    Value::Object(t)
}

/// The telemetry of one vehicle's fixes (in time order), each fix on a trip naming it. Fixes
/// flagged by a quality filter are left out.
///
/// `open_trip_start_ts` is the start of the trip the vehicle was on before `points[0]`, if it
/// was on one; without it a trip in progress at the first fix is taken to start there.
pub fn telemetry_for_points(
    cfg: &MdsConfig,
    vehicle_id: &VehicleId,
    points: &[Point],
    open_trip_start_ts: Option<i64>,
) -> Vec<Value> {
    let points = good_only(points);
    let mut out = Vec::with_capacity(points.len());
    let mut starts = vec![None; points.len()];
    for run in trip_runs(&points, open_trip_start_ts.is_some()) {
        let start = match (run.first, open_trip_start_ts) {
            (0, Some(ts)) => ts,
            _ => points[run.first].ts,
        };
        for s in &mut starts[run.first..=run.last] {
            *s = Some(start);
        }
    }
    for (p, start) in points.iter().zip(starts) {
        out.push(telemetry(cfg, vehicle_id, p, start));
    }
    out
}

/// The MDS event for a Kickstand event, or `None` when it has no MDS meaning (see the module
/// doc for the table).
///
/// `trip_start_ts` is the start of the trip the event *ends* (`on_trip` → `available` or
/// `elsewhere`): MDS wants `trip_ids` on `trip_end` and `trip_leave_jurisdiction`, and the
/// event alone does not say when the trip began. Without it those events have no `trip_ids`.
/// Events that start a trip name it from their own timestamp and ignore the parameter.
pub fn event(cfg: &MdsConfig, ev: &Event, trip_start_ts: Option<i64>) -> Option<Value> {
    let m = map_event(cfg, ev)?;
    Some(event_json(cfg, ev, &m, trip_start_ts))
}

/// A Kickstand event seen as MDS: its state and event type, and which trip it names.
#[derive(Clone, Copy, Debug)]
struct Mapped {
    state: &'static str,
    event_type: &'static str,
    trip: TripRef,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TripRef {
    /// Not a trip event.
    None,
    /// Starts the trip named by the event's own timestamp.
    Starts,
    /// Ends a trip that started earlier.
    Ends,
}

fn map_event(cfg: &MdsConfig, ev: &Event) -> Option<Mapped> {
    use VehicleState::*;
    let mapped = |state, event_type, trip| {
        Some(Mapped {
            state,
            event_type,
            trip,
        })
    };
    match ev.kind {
        EventKind::Stale => mapped("non_contactable", "comms_lost", TripRef::None),
        EventKind::StateChanged => {
            let to = ev.to_state?;
            if ev.from_state == Some(to) {
                return None;
            }
            let state = mds_state(to);
            match (ev.from_state, to) {
                (Some(OnTrip), Available) => mapped(state, "trip_end", TripRef::Ends),
                (Some(Reserved), Available) => mapped(state, "reservation_cancel", TripRef::None),
                (Some(NonOperational), Available) => mapped(state, "maintenance", TripRef::None),
                (_, Available) => mapped(state, "provider_drop_off", TripRef::None),
                (Some(Elsewhere), OnTrip) => {
                    mapped(state, "trip_enter_jurisdiction", TripRef::Starts)
                }
                (_, OnTrip) => mapped(state, "trip_start", TripRef::Starts),
                (_, Reserved) => mapped(state, "reservation_start", TripRef::None),
                (_, NonOperational) => {
                    let low = ev
                        .battery_dpct
                        .is_some_and(|b| b < u16::from(cfg.battery_low_pct) * 10);
                    let kind = if low { "battery_low" } else { "maintenance" };
                    mapped(state, kind, TripRef::None)
                }
                (Some(NonOperational), Removed) => {
                    mapped(state, "maintenance_pick_up", TripRef::None)
                }
                (_, Removed) => mapped(state, "unspecified", TripRef::None),
                (Some(OnTrip), Elsewhere) => {
                    mapped(state, "trip_leave_jurisdiction", TripRef::Ends)
                }
                (_, Elsewhere) => mapped(state, "unspecified", TripRef::None),
            }
        }
        EventKind::GeofenceEntered
        | EventKind::GeofenceExited
        | EventKind::LeftOperatingArea
        | EventKind::ParkedInNoParking
        | EventKind::SpeedingInSlowZone
        | EventKind::BatteryLow
        | EventKind::BatteryRecovered
        | EventKind::MovingWhileLocked
        | EventKind::ReportingAgain => None,
    }
}

fn event_json(cfg: &MdsConfig, ev: &Event, m: &Mapped, trip_start_ts: Option<i64>) -> Value {
    let mut out = base_record(cfg, &ev.vehicle_id);
    out.insert("event_id".into(), event_id(&ev.id).into());
    out.insert("vehicle_state".into(), m.state.into());
    out.insert("event_types".into(), json!([m.event_type]));
    out.insert("timestamp".into(), ev.ts.into());
    out.insert(
        "location".into(),
        json!({ "lat": ev.lat(), "lng": ev.lon() }),
    );
    if let Some(b) = battery_percent(ev.battery_dpct) {
        out.insert("battery_percent".into(), b.into());
    }
    let trip_start = match m.trip {
        TripRef::None => None,
        TripRef::Starts => Some(ev.ts),
        TripRef::Ends => trip_start_ts,
    };
    if let Some(start) = trip_start {
        out.insert(
            "trip_ids".into(),
            json!([trip_id(&cfg.provider_id, &ev.vehicle_id, start)]),
        );
    }
    Value::Object(out)
}

/// A finished trip: its bounds, for the HTTP layer to pick the trips that end in an hour, and
/// its MDS Trip record.
#[derive(Clone, Debug, PartialEq)]
pub struct Trip {
    /// Epoch ms of the trip's first `on_trip` fix.
    pub start_ts: i64,
    /// Epoch ms of its last `on_trip` fix.
    pub end_ts: i64,
    /// The MDS Trip record.
    pub json: Value,
}

/// The finished trips in one vehicle's fixes, given in time order. Fixes flagged by a quality
/// filter are left out first.
///
/// A trip is a maximal run of fixes in the `on_trip` state (a fix without a state keeps the
/// previous one): it starts at the run's first fix and ends at its last. Its `distance` is
/// the sum of the great-circle distances between consecutive fixes, in whole metres, and its
/// `duration` the time between the first and last fix, in whole seconds. A run that lasts to
/// the last fix may still go on, so it is not a trip yet. A run that starts at the first fix is
/// taken to start there: pass fixes from before the trips wanted (the longest trip's length
/// before the hour asked for, say) and keep the trips whose `end_ts` falls in the hour.
pub fn trips_from_points(cfg: &MdsConfig, vehicle_id: &VehicleId, points: &[Point]) -> Vec<Trip> {
    let points = good_only(points);
    trip_runs(&points, false)
        .into_iter()
        .filter(|run| run.closed)
        .map(|run| {
            let run_points = &points[run.first..=run.last];
            let (first, last) = (&points[run.first], &points[run.last]);
            let distance: f64 = run_points
                .windows(2)
                .map(|w| distance_m(w[0].lat(), w[0].lon(), w[1].lat(), w[1].lon()))
                .sum();
            let duration_s = (last.ts - first.ts).max(0).saturating_add(500) / 1000;
            let mut t = Map::new();
            t.insert("provider_id".into(), provider(cfg).into());
            t.insert(
                "device_id".into(),
                device_id(&cfg.provider_id, vehicle_id).into(),
            );
            t.insert(
                "trip_id".into(),
                trip_id(&cfg.provider_id, vehicle_id, first.ts).into(),
            );
            t.insert("trip_type".into(), json!(["rider"]));
            t.insert("start_time".into(), first.ts.into());
            t.insert("end_time".into(), last.ts.into());
            t.insert("start_location".into(), gps(first));
            t.insert("end_location".into(), gps(last));
            t.insert("duration".into(), duration_s.into());
            t.insert("distance".into(), (distance.round() as u64).into());
            Trip {
                start_ts: first.ts,
                end_ts: last.ts,
                json: Value::Object(t),
            }
        })
        .collect()
}

/// The fixes that passed every quality filter: like the latest state and the events, the feed
/// ignores flagged fixes (a jump would lengthen a trip, a null-island fix would put a vehicle
/// at sea).
fn good_only(points: &[Point]) -> Vec<Point> {
    points
        .iter()
        .filter(|p| p.quality.is_good())
        .copied()
        .collect()
}

/// A run of `on_trip` fixes: `points[first..=last]`; `closed` when a fix in another state
/// follows it.
struct Run {
    first: usize,
    last: usize,
    closed: bool,
}

fn trip_runs(points: &[Point], on_trip_before: bool) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut state = on_trip_before.then_some(VehicleState::OnTrip);
    let mut open: Option<usize> = None;
    for (i, p) in points.iter().enumerate() {
        if p.state.is_some() {
            state = p.state;
        }
        let on_trip = state == Some(VehicleState::OnTrip);
        match (open, on_trip) {
            (None, true) => open = Some(i),
            (Some(first), false) => {
                runs.push(Run {
                    first,
                    last: i - 1,
                    closed: true,
                });
                open = None;
            }
            _ => {}
        }
    }
    if let Some(first) = open {
        runs.push(Run {
            first,
            last: points.len() - 1,
            closed: false,
        });
    }
    runs
}

fn provider(cfg: &MdsConfig) -> String {
    cfg.provider_id.hyphenated().to_string()
}

/// `device_id` and `provider_id`, which every vehicle-level record starts with.
fn base_record(cfg: &MdsConfig, vehicle_id: &VehicleId) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "device_id".into(),
        device_id(&cfg.provider_id, vehicle_id).into(),
    );
    m.insert("provider_id".into(), provider(cfg).into());
    m
}

fn mds_state(s: VehicleState) -> &'static str {
    // Kickstand's states are MDS's, by name.
    s.as_str()
}

/// An MDS GPS object: position, and what else the fix reported, in MDS units (metres, degrees,
/// metres per second).
fn gps(p: &Point) -> Value {
    let mut g = Map::new();
    g.insert("lat".into(), p.lat().into());
    g.insert("lng".into(), p.lon().into());
    if let Some(a) = p.altitude_m() {
        g.insert("altitude".into(), a.into());
    }
    if let Some(h) = p.heading_deg() {
        g.insert("heading".into(), h.into());
    }
    if let Some(a) = p.accuracy_m() {
        g.insert("horizontal_accuracy".into(), a.into());
    }
    if let Some(dkmh) = p.speed_dkmh {
        // 0.1 km/h = 1/36 m/s; kept to centimetres per second.
        let mps = (f64::from(dkmh) / 36.0 * 100.0).round() / 100.0;
        g.insert("speed".into(), mps.into());
    }
    Value::Object(g)
}

/// Battery from 0.1 % to a whole percentage, as MDS wants it.
fn battery_percent(dpct: Option<u16>) -> Option<u16> {
    dpct.map(|d| (d.min(1000) + 5) / 10)
}

/// Why a Provider API request cannot be answered; renders as the MDS error body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MdsError {
    /// Required query parameters are absent: 400 `missing_param`.
    #[error("missing query parameters: {}", params.join(", "))]
    MissingParam { params: Vec<&'static str> },
    /// A parameter is malformed or out of range: 400 `bad_param`.
    #[error("{param}: {reason}")]
    BadParam { param: &'static str, reason: String },
    /// No such vehicle, or an hour that is not over yet: 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
}

impl MdsError {
    fn bad(param: &'static str, reason: impl Into<String>) -> MdsError {
        MdsError::BadParam {
            param,
            reason: reason.into(),
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            MdsError::MissingParam { .. } | MdsError::BadParam { .. } => 400,
            MdsError::NotFound(_) => 404,
        }
    }

    /// The MDS error body (`response/error*.yaml`): `error`, `error_description`,
    /// `error_details` (the parameters concerned) and, for parameter errors, `item` (the
    /// first of them).
    pub fn body(&self) -> Value {
        match self {
            MdsError::MissingParam { params } => json!({
                "error": "missing_param",
                "error_description": format!("A required parameter is missing: {}.", params.join(", ")),
                "error_details": params,
                "item": params.first().copied().unwrap_or(""),
            }),
            MdsError::BadParam { param, reason } => json!({
                "error": "bad_param",
                "error_description": format!("A validation error occurred: {param} {reason}."),
                "error_details": [param],
                "item": param,
            }),
            MdsError::NotFound(what) => json!({
                "error": "not_found",
                "error_description": what,
                "error_details": [what],
            }),
        }
    }
}

/// Parses an hour query parameter (`end_time`, `telemetry_time`, `event_time`) of the form
/// `YYYY-MM-DDTHH` (UTC, year 1970 or later) into its span `[start, end)` in epoch ms.
pub fn parse_hour(param: &'static str, text: Option<&str>) -> Result<(i64, i64), MdsError> {
    let text = text.ok_or(MdsError::MissingParam {
        params: vec![param],
    })?;
    let bad = || {
        MdsError::bad(
            param,
            "must be a UTC hour YYYY-MM-DDTHH, such as 2024-05-01T13",
        )
    };
    let b = text.as_bytes();
    let digits = |r: Range<usize>| -> Result<u16, MdsError> {
        let part = b.get(r).ok_or_else(bad)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
    };
    if b.len() != 13 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return Err(bad());
    }
    let (year, month, day, hour) = (
        digits(0..4)?,
        digits(5..7)?,
        digits(8..10)?,
        digits(11..13)?,
    );
    if year < 1970 || hour > 23 {
        return Err(bad());
    }
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(bad)?;
    let day = u8::try_from(day).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(i32::from(year), month, day).map_err(|_| bad())?;
    let start = date.midnight().assume_utc().unix_timestamp() * 1000 + i64::from(hour) * HOUR_MS;
    Ok((start, start + HOUR_MS))
}

/// Refuses an hour that is not over at `now_ms`: the spec answers 404 ("Hour is not in the
/// past") for `/trips` and `/events/historical`.
pub fn require_past_hour(span: (i64, i64), now_ms: i64) -> Result<(), MdsError> {
    if span.1 > now_ms {
        return Err(MdsError::NotFound("The hour is not in the past.".into()));
    }
    Ok(())
}

/// Parses `/events/recent`'s `start_time` and `end_time` (epoch ms; events with
/// `start_time <= timestamp < end_time`): both required, `end_time` after `start_time`, and
/// `start_time` at most two weeks before `now_ms`.
pub fn parse_recent_range(
    start_time: Option<&str>,
    end_time: Option<&str>,
    now_ms: i64,
) -> Result<(i64, i64), MdsError> {
    let (start, end) = match (start_time, end_time) {
        (Some(s), Some(e)) => (s, e),
        (s, e) => {
            let params = [("start_time", s), ("end_time", e)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(p, _)| p)
                .collect();
            return Err(MdsError::MissingParam { params });
        }
    };
    let ms = |param: &'static str, text: &str| {
        let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        match text.parse::<i64>() {
            Ok(v) if ok && v >= MIN_TIMESTAMP_MS => Ok(v),
            _ => Err(MdsError::bad(
                param,
                "must be epoch milliseconds, 2018-01-01 (1514764800000) or later",
            )),
        }
    };
    let (start, end) = (ms("start_time", start)?, ms("end_time", end)?);
    if end <= start {
        return Err(MdsError::bad("end_time", "must be after start_time"));
    }
    if start < now_ms - EVENTS_RECENT_MAX_AGE_MS {
        return Err(MdsError::bad(
            "start_time",
            "must be at most two weeks in the past (use /events/historical)",
        ));
    }
    Ok((start, end))
}

/// Checks a `device_id` path segment: a lowercase UUID, as MDS writes them. Finding the
/// vehicle is the caller's: compare with [`device_id`] of each known vehicle.
pub fn parse_device_id(text: &str) -> Result<&str, MdsError> {
    let b = text.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        });
    if ok {
        Ok(text)
    } else {
        Err(MdsError::bad("device_id", "must be a lowercase UUID"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "end_time";

    fn check_hour(text: &str, expect: Option<i64>) {
        match (parse_hour(H, Some(text)), expect) {
            (Ok((s, e)), Some(want)) => {
                assert_eq!(s, want, "{text}");
                assert_eq!(e - s, HOUR_MS);
            }
            (Err(err), None) => {
                assert_eq!(err.status(), 400);
                assert_eq!(err.body()["error"], "bad_param", "{text}");
                assert_eq!(err.body()["error_details"], json!([H]));
            }
            (got, want) => panic!("{text}: got {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn hours_parse_strictly() {
        check_hour("2024-05-01T13", Some(1_714_568_400_000));
        check_hour("1970-01-01T00", Some(0));
        check_hour("2024-11-30T23", Some(1_733_007_600_000));
        check_hour("2024-02-29T00", Some(1_709_164_800_000));
        for bad in [
            "2024-05-01T24",
            "2024-5-1T1",
            "2024-05-01",
            "2024-05-01T13:00",
            "2024-13-01T00",
            "2023-02-29T00",
            "2024-04-31T00",
            "2024-00-10T00",
            "1969-12-31T23",
            "2024-05-01 13",
            "+024-05-01T13",
            "2024-05-01t13",
            "garbage",
            "",
            "２０２４-05-01T13",
        ] {
            check_hour(bad, None);
        }
        let missing = parse_hour(H, None).unwrap_err();
        assert_eq!(missing.status(), 400);
        assert_eq!(missing.body()["error"], "missing_param");
    }

    #[test]
    fn an_hour_must_be_over() {
        let span = parse_hour(H, Some("2024-05-01T13")).unwrap();
        assert!(require_past_hour(span, span.1).is_ok());
        let err = require_past_hour(span, span.1 - 1).unwrap_err();
        assert_eq!(err.status(), 404);
    }

    #[test]
    fn recent_ranges_are_checked() {
        let now = 1_714_568_400_000;
        let s = |v: i64| v.to_string();
        assert_eq!(
            parse_recent_range(Some(&s(now - 1000)), Some(&s(now)), now),
            Ok((now - 1000, now))
        );
        let oldest = now - EVENTS_RECENT_MAX_AGE_MS;
        assert!(parse_recent_range(Some(&s(oldest)), Some(&s(now)), now).is_ok());
        let err = |a: Option<&str>, b: Option<&str>| parse_recent_range(a, b, now).unwrap_err();
        let e = err(Some(&s(oldest - 1)), Some(&s(now)));
        assert_eq!(
            (e.status(), e.body()["item"].clone()),
            (400, json!("start_time"))
        );
        let e = err(Some(&s(now)), Some(&s(now)));
        assert_eq!(e.body()["error_details"], json!(["end_time"]));
        let e = err(None, None);
        assert_eq!(e.body()["error"], "missing_param");
        assert_eq!(e.body()["error_details"], json!(["start_time", "end_time"]));
        let e = err(Some("-5"), Some(&s(now)));
        assert_eq!(e.body()["error"], "bad_param");
        let e = err(Some("1e12"), Some(&s(now)));
        assert_eq!(e.body()["error"], "bad_param");
    }

    #[test]
    fn device_ids_are_stable_and_checked() {
        let cfg = MdsConfig::default();
        let v = VehicleId::new("scooter-1").unwrap();
        let id = device_id(&cfg.provider_id, &v);
        assert_eq!(id, device_id(&cfg.provider_id, &v));
        assert_ne!(
            id,
            device_id(&cfg.provider_id, &VehicleId::new("scooter-2").unwrap())
        );
        assert_eq!(parse_device_id(&id), Ok(id.as_str()));
        assert!(parse_device_id(&id.to_uppercase()).is_err());
        assert!(parse_device_id("nope").is_err());
        assert_ne!(
            trip_id(&cfg.provider_id, &v, 1),
            trip_id(&cfg.provider_id, &v, 2)
        );
    }

    #[test]
    fn event_ids_keep_the_kickstand_bits() {
        let a = event_id("0123456789abcdef0123456789abcdef");
        assert_eq!(a, "01234567-89ab-8def-8123-456789abcdef");
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 8);
        assert_ne!(a, event_id("0123456789abcdef0123456789abcdee"));
        assert_eq!(event_id("not hex").len(), 36);
    }

    #[test]
    fn the_default_config_parses_and_is_valid() {
        let cfg: MdsConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(cfg, MdsConfig::default());
        cfg.validate().unwrap();
        let cfg: MdsConfig = serde_json::from_value(json!({
            "provider_id": "6DDCC0AD-1D66-4046-BBA4-CF1EB1A9D0C3",
            "vehicle_type": "bicycle",
            "propulsion_types": ["human", "electric_assist"],
        }))
        .unwrap();
        assert_eq!(provider(&cfg), "6ddcc0ad-1d66-4046-bba4-cf1eb1a9d0c3");
        for bad in [
            json!({ "vehicle_type": "scooter" }),
            json!({ "provider_id": "not-a-uuid" }),
            json!({ "ttl": 5 }),
        ] {
            assert!(serde_json::from_value::<MdsConfig>(bad).is_err());
        }
        let over = MdsConfig {
            ttl_secs: 301,
            ..MdsConfig::default()
        };
        assert_eq!(over.validate().unwrap_err().field, "ttl_secs");
        let none = MdsConfig {
            propulsion_types: vec![],
            ..MdsConfig::default()
        };
        assert_eq!(none.validate().unwrap_err().field, "propulsion_types");
    }

    #[test]
    fn pages_link_to_each_other() {
        let (r, l) = paginate("https://x.test/mds/vehicles", 2500, 1, 1000);
        assert_eq!(r, 1000..2000);
        assert_eq!(
            l.first.as_deref(),
            Some("https://x.test/mds/vehicles?page=0")
        );
        assert_eq!(
            l.last.as_deref(),
            Some("https://x.test/mds/vehicles?page=2")
        );
        assert_eq!(
            l.prev.as_deref(),
            Some("https://x.test/mds/vehicles?page=0")
        );
        assert_eq!(
            l.next.as_deref(),
            Some("https://x.test/mds/vehicles?page=2")
        );
        let (r, l) = paginate("https://x.test/e?start_time=1", 0, 0, 10);
        assert_eq!(r, 0..0);
        assert_eq!((l.prev, l.next), (None, None));
        assert_eq!(
            l.last.as_deref(),
            Some("https://x.test/e?start_time=1&page=0")
        );
        assert_eq!(paginate("https://x.test/v", 5, 9, 2).0, 5..5);
    }
}
