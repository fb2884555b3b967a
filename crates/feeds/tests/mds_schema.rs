//! The MDS builders against the official MDS 2.0 OpenAPI models, on a synthetic fleet.
//!
//! The models are YAML files that `$ref` each other by relative path
//! (`../data-types/uuid.yaml`). [`Mds`] loads the files an endpoint needs into one JSON Schema
//! (2020-12, which OpenAPI 3.1 schemas are) with every file under `$defs`, and rewrites each
//! reference to point there. Three repairs are made on the way, each a defect of the published
//! files rather than a loosening:
//!
//! - a `oneOf` over the four modes (`modes/car-share/…`, `modes/micromobility/…`, …) is cut to
//!   the micromobility branch: the mode schemas overlap (a micromobility record often matches
//!   car-share too), so `oneOf` over them rejects valid records, and Kickstand is a
//!   micromobility provider;
//! - `contains: [a, b, …]` (a list, which is not a schema) becomes `contains: {enum: [a, b, …]}`,
//!   what the mode files mean by it ("trip events need `trip_ids`");
//! - `$id`/`$schema` of embedded files (the GeoJSON schema's) are dropped, so the file is a
//!   plain subschema of the one document.

mod conformance {
    pub mod mds;
}

use conformance::mds::{Mds, assert_rejects, assert_valid};
use kickstand_domain::event::{Event, EventKind};
use kickstand_domain::fix::Quality;
use kickstand_domain::{Point, VehicleId, VehicleState};
use kickstand_feeds::mds::{self, Endpoint, MdsConfig, MdsError};
use serde_json::{Value, json};

// ---- a synthetic fleet ----

/// 2024-05-01T12:00:00Z.
const T0: i64 = 1_714_564_800_000;
const STEP_MS: i64 = 30_000;

fn vid(s: &str) -> VehicleId {
    VehicleId::new(s).unwrap()
}

fn point(i: i64, lat_e6: i32, state: Option<VehicleState>) -> Point {
    Point {
        ts: T0 + i * STEP_MS,
        lat_e6,
        lon_e6: 13_400_000,
        speed_dkmh: Some(150),
        heading_ddeg: Some(0),
        battery_dpct: Some(777),
        accuracy_dm: Some(45),
        altitude_dm: Some(340),
        odometer_m: None,
        state,
        locked: Some(false),
        ..Point::default()
    }
}

/// One vehicle's afternoon, one fix every 30 s along the meridian 13.4° E:
///
/// - fixes 0–2 `available`;
/// - trip A, fixes 3–12: ten fixes 0.001° apart northwards, fix 7 without a state;
/// - fix 13 `reserved`;
/// - trip B, fixes 14–16: three fixes 0.002° apart;
/// - fixes 17–18 `available`, 19 `non_operational`, 20 `available`;
/// - fixes 21–23 `on_trip` to the end: an open trip.
fn afternoon() -> Vec<Point> {
    use VehicleState::*;
    let base = 52_500_000;
    let mut pts = Vec::new();
    for i in 0..3 {
        pts.push(point(i, base, Some(Available)));
    }
    for k in 0..10 {
        let state = if k == 4 { None } else { Some(OnTrip) };
        pts.push(point(3 + k, base + 1_000 * k as i32, state));
    }
    let end_a = base + 9_000;
    pts.push(point(13, end_a, Some(Reserved)));
    for k in 0..3 {
        pts.push(point(14 + k, end_a + 2_000 * k as i32, Some(OnTrip)));
    }
    let end_b = end_a + 4_000;
    pts.push(point(17, end_b, Some(Available)));
    pts.push(point(18, end_b, Some(Available)));
    pts.push(point(19, end_b, Some(NonOperational)));
    pts.push(point(20, end_b, Some(Available)));
    for k in 0..3 {
        pts.push(point(21 + k, end_b + 500 * k as i32, Some(OnTrip)));
    }
    pts
}

/// Metres along a meridian for `micro_deg` millionths of a degree of latitude.
fn meridian_m(micro_deg: f64) -> f64 {
    kickstand_domain::geo::EARTH_RADIUS_M * (micro_deg / 1e6).to_radians()
}

fn state_change(v: &VehicleId, ts: i64, from: Option<VehicleState>, to: VehicleState) -> Event {
    let mut e = Event::new(
        v.clone(),
        EventKind::StateChanged,
        ts,
        52_500_000,
        13_400_000,
        None,
    );
    e.from_state = from;
    e.to_state = Some(to);
    e.battery_dpct = Some(777);
    e
}

fn fleet() -> Vec<VehicleId> {
    (1..=5).map(|i| vid(&format!("scooter-{i}"))).collect()
}

// ---- the tests ----

#[test]
fn mds_trips_are_runs_of_on_trip_fixes() {
    let cfg = MdsConfig::default();
    let v = vid("scooter-1");
    let pts = afternoon();
    let trips = mds::trips_from_points(&cfg, &v, &pts);
    assert_eq!(
        trips.len(),
        2,
        "trip A, trip B; the open trip at the end is not a trip yet"
    );

    let a = &trips[0];
    assert_eq!((a.start_ts, a.end_ts), (pts[3].ts, pts[12].ts));
    assert_eq!(a.json["start_time"], pts[3].ts);
    assert_eq!(a.json["end_time"], pts[12].ts);
    assert_eq!(a.json["duration"], 270, "9 steps of 30 s");
    let expect = meridian_m(9_000.0).round();
    assert_eq!(expect, 1001.0, "9 × 0.001° of latitude");
    assert_eq!(a.json["distance"], 1001);
    assert_eq!(a.json["start_location"]["lat"], 52.5);
    assert_eq!(a.json["end_location"]["lat"], 52.509);
    assert_eq!(a.json["end_location"]["lng"], 13.4);
    assert_eq!(
        a.json["trip_id"],
        mds::trip_id(&cfg.provider_id, &v, pts[3].ts)
    );
    assert_eq!(a.json["device_id"], mds::device_id(&cfg.provider_id, &v));

    let b = &trips[1];
    assert_eq!((b.start_ts, b.end_ts), (pts[14].ts, pts[16].ts));
    assert_eq!(b.json["duration"], 60);
    assert_eq!(b.json["distance"], meridian_m(4_000.0).round() as u64);
    assert_ne!(a.json["trip_id"], b.json["trip_id"]);

    // The same fixes give the same trips; and the open trip becomes one when it ends.
    assert_eq!(mds::trips_from_points(&cfg, &v, &pts), trips);
    let mut more = pts.clone();
    more.push(point(24, 52_515_000, Some(VehicleState::Available)));
    let trips = mds::trips_from_points(&cfg, &v, &more);
    assert_eq!(trips.len(), 3);
    assert_eq!(
        (trips[2].start_ts, trips[2].end_ts),
        (pts[21].ts, pts[23].ts)
    );
    assert_eq!(
        trips[2].json["distance"],
        meridian_m(1_000.0).round() as u64
    );

    // A fix that failed a quality filter is not part of the trip: a jump 0.1° away would add
    // kilometres.
    let mut jumpy = pts.clone();
    let mut jump = point(8, 52_600_000, Some(VehicleState::OnTrip));
    jump.ts += 1;
    jump.quality = Quality::JUMP;
    jumpy.insert(9, jump);
    assert_eq!(
        mds::trips_from_points(&cfg, &v, &jumpy),
        mds::trips_from_points(&cfg, &v, &pts)
    );
    assert_eq!(
        mds::telemetry_for_points(&cfg, &v, &jumpy, None).len(),
        pts.len()
    );

    assert!(mds::trips_from_points(&cfg, &v, &[]).is_empty());
    assert!(mds::trips_from_points(&cfg, &v, &pts[..3]).is_empty());
}

#[test]
fn mds_telemetry_names_the_trip_of_each_fix() {
    let cfg = MdsConfig::default();
    let v = vid("scooter-1");
    let pts = afternoon();
    let trips = mds::trips_from_points(&cfg, &v, &pts);
    let tel = mds::telemetry_for_points(&cfg, &v, &pts, None);
    assert_eq!(tel.len(), pts.len());
    let ids: Vec<&Value> = tel.iter().map(|t| &t["trip_ids"]).collect();
    let trip_a = json!([trips[0].json["trip_id"]]);
    let trip_b = json!([trips[1].json["trip_id"]]);
    for (i, id) in ids.iter().enumerate().take(21) {
        let want = match i {
            3..=12 => &trip_a,
            14..=16 => &trip_b,
            _ => &Value::Null,
        };
        assert_eq!(*id, want, "fix {i}");
    }
    assert_eq!(
        ids[21],
        &json!([mds::trip_id(&cfg.provider_id, &v, pts[21].ts)])
    );

    // A window that opens mid-trip names the trip by the start it is given.
    let mid = mds::telemetry_for_points(&cfg, &v, &pts[5..], Some(pts[3].ts));
    assert_eq!(mid[0]["trip_ids"], json!([trips[0].json["trip_id"]]));

    let t = &tel[0];
    assert_eq!(t["battery_percent"], 78);
    assert_eq!(t["location"]["speed"], 4.17, "15 km/h in m/s");
    assert_eq!(t["location"]["horizontal_accuracy"], 4.5);
    assert_eq!(t["location"]["altitude"], 34.0);
    assert_eq!(t["journey_id"], Value::Null);
    assert_ne!(tel[0]["telemetry_id"], tel[1]["telemetry_id"]);
}

#[test]
fn mds_every_endpoint_answers_what_the_spec_declares() {
    let mds = Mds::load();
    let cfg = MdsConfig::default();
    let now = T0 + 3 * 3_600_000;
    let fleet = fleet();
    let pts = afternoon();
    let last = pts.last().unwrap();

    // /vehicles, paged, and /vehicles/{device_id}.
    let vehicles: Vec<Value> = fleet.iter().map(|v| mds::vehicle(&cfg, v)).collect();
    let (range, links) = mds::paginate(
        "https://fleet.example.com/mds/vehicles",
        vehicles.len(),
        1,
        2,
    );
    let page = mds::envelope(
        Endpoint::Vehicles,
        vehicles[range].to_vec(),
        Some(&links),
        now,
        &cfg,
    );
    let v_list = mds.endpoint("/vehicles");
    assert_valid(&v_list, &page, "/vehicles");
    assert_eq!(page["vehicles"].as_array().unwrap().len(), 2);
    assert_eq!(page["ttl"], 60_000);
    assert_eq!(page["last_updated"], now);
    let unpaged = mds::envelope(Endpoint::Vehicles, vehicles.clone(), None, now, &cfg);
    assert_valid(&v_list, &unpaged, "/vehicles without paging");
    let one = mds::envelope(
        Endpoint::Vehicle,
        vec![vehicles[0].clone()],
        None,
        now,
        &cfg,
    );
    assert_valid(
        &mds.endpoint("/vehicles/{device_id}"),
        &one,
        "/vehicles/{device_id}",
    );

    // /vehicles/status and /vehicles/status/{device_id}.
    let v = &fleet[0];
    let started = state_change(
        v,
        pts[21].ts,
        Some(VehicleState::Available),
        VehicleState::OnTrip,
    );
    let statuses = vec![
        mds::vehicle_status(&cfg, v, last, Some(&started)),
        mds::vehicle_status(&cfg, &fleet[1], &pts[0], None),
    ];
    assert_eq!(
        statuses[0]["last_event"]["event_types"],
        json!(["trip_start"])
    );
    assert_eq!(
        statuses[0]["last_telemetry"]["trip_ids"],
        statuses[0]["last_event"]["trip_ids"]
    );
    let body = mds::envelope(
        Endpoint::VehiclesStatus,
        statuses.clone(),
        Some(&links),
        now,
        &cfg,
    );
    assert_valid(&mds.endpoint("/vehicles/status"), &body, "/vehicles/status");
    let body = mds::envelope(
        Endpoint::VehicleStatus,
        vec![statuses[0].clone()],
        None,
        now,
        &cfg,
    );
    assert_valid(
        &mds.endpoint("/vehicles/status/{device_id}"),
        &body,
        "/vehicles/status/{device_id}",
    );

    // /trips for the hour the trips ended in.
    let (start, end) = mds::parse_hour("end_time", Some("2024-05-01T12")).unwrap();
    mds::require_past_hour((start, end), now).unwrap();
    let trips: Vec<Value> = fleet
        .iter()
        .flat_map(|v| mds::trips_from_points(&cfg, v, &pts))
        .filter(|t| (start..end).contains(&t.end_ts))
        .map(|t| t.json)
        .collect();
    assert_eq!(trips.len(), 2 * fleet.len());
    let body = mds::envelope(Endpoint::Trips, trips, None, now, &cfg);
    assert!(body.get("ttl").is_none() && body.get("links").is_none());
    assert_valid(&mds.endpoint("/trips"), &body, "/trips");

    // /telemetry.
    let telemetry: Vec<Value> = fleet
        .iter()
        .flat_map(|v| mds::telemetry_for_points(&cfg, v, &pts, None))
        .collect();
    let body = mds::envelope(Endpoint::Telemetry, telemetry, None, now, &cfg);
    assert_valid(&mds.endpoint("/telemetry"), &body, "/telemetry");

    // /events/historical and /events/recent.
    let events: Vec<Value> = history_events(v, &pts)
        .iter()
        .filter_map(|(e, trip)| mds::event(&cfg, e, *trip))
        .collect();
    assert!(events.len() >= 8, "{events:#?}");
    let body = mds::envelope(Endpoint::EventsHistorical, events.clone(), None, now, &cfg);
    assert_valid(
        &mds.endpoint("/events/historical"),
        &body,
        "/events/historical",
    );
    let (range, links) = mds::paginate(
        "https://fleet.example.com/mds/events/recent?start_time=1714564800000&end_time=1714575600000",
        events.len(),
        0,
        cfg.page_size,
    );
    let body = mds::envelope(
        Endpoint::EventsRecent,
        events[range].to_vec(),
        Some(&links),
        now,
        &cfg,
    );
    assert!(body.get("ttl").is_none());
    assert_valid(&mds.endpoint("/events/recent"), &body, "/events/recent");
}

/// The events the engine would have made for [`afternoon`], each with the start of the trip it
/// ends, as the HTTP layer would pass it.
fn history_events(v: &VehicleId, pts: &[Point]) -> Vec<(Event, Option<i64>)> {
    let mut out = Vec::new();
    let mut prev: Option<VehicleState> = None;
    let mut trip_start = None;
    for p in pts {
        let Some(s) = p.state else { continue };
        if prev != Some(s) {
            let mut e = state_change(v, p.ts, prev, s);
            e.lat_e6 = p.lat_e6;
            out.push((e, trip_start));
            trip_start = (s == VehicleState::OnTrip).then_some(p.ts);
        }
        prev = Some(s);
    }
    let mut geofence = Event::new(
        v.clone(),
        EventKind::GeofenceEntered,
        pts[2].ts,
        52_500_000,
        13_400_000,
        Some("z"),
    );
    geofence.battery_dpct = Some(500);
    out.push((geofence, None));
    out.push((
        Event::new(
            v.clone(),
            EventKind::Stale,
            pts[23].ts + 600_000,
            52_500_000,
            13_400_000,
            None,
        ),
        None,
    ));
    out
}

#[test]
fn mds_every_mapped_event_is_a_valid_mds_event() {
    let mds = Mds::load();
    let event_model = mds.model("models/event.yaml");
    let cfg = MdsConfig::default();
    let v = vid("scooter-9");
    let ts = T0 + 600_000;
    let froms = std::iter::once(None).chain(VehicleState::ALL.map(Some));
    let mut emitted = 0;
    for from in froms {
        for to in VehicleState::ALL {
            for battery in [None, Some(50), Some(900)] {
                for trip_start in [None, Some(ts - 300_000)] {
                    let mut e = state_change(&v, ts, from, to);
                    e.battery_dpct = battery;
                    let got = mds::event(&cfg, &e, trip_start);
                    let what =
                        format!("{from:?} -> {to:?}, battery {battery:?}, trip {trip_start:?}");
                    if from == Some(to) {
                        assert_eq!(got, None, "{what}");
                        continue;
                    }
                    let got = got.unwrap_or_else(|| panic!("{what}: no MDS event"));
                    assert_valid(&event_model, &got, &what);
                    emitted += 1;
                    assert_eq!(got["vehicle_state"], to.as_str(), "{what}");
                    let types = got["event_types"].as_array().unwrap();
                    let trip_event = types
                        .iter()
                        .any(|t| t.as_str().unwrap().starts_with("trip_"));
                    let starts = to == VehicleState::OnTrip;
                    if starts {
                        assert_eq!(
                            got["trip_ids"],
                            json!([mds::trip_id(&cfg.provider_id, &v, ts)]),
                            "{what}"
                        );
                    } else if trip_event && trip_start.is_some() {
                        assert_eq!(
                            got["trip_ids"],
                            json!([mds::trip_id(&cfg.provider_id, &v, ts - 300_000)]),
                            "{what}"
                        );
                    } else {
                        assert!(got.get("trip_ids").is_none(), "{what}");
                    }
                    if to == VehicleState::NonOperational {
                        let low = battery == Some(50);
                        assert_eq!(
                            types[0],
                            if low { "battery_low" } else { "maintenance" },
                            "{what}"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(emitted, (7 * 6 - 6) * 3 * 2);

    let stale = Event::new(
        v.clone(),
        EventKind::Stale,
        ts,
        52_500_000,
        13_400_000,
        None,
    );
    let got = mds::event(&cfg, &stale, None).unwrap();
    assert_eq!(
        (
            got["vehicle_state"].as_str(),
            got["event_types"][0].as_str()
        ),
        (Some("non_contactable"), Some("comms_lost"))
    );
    assert_valid(&event_model, &got, "stale");
    assert_eq!(got["event_id"], mds::event_id(&stale.id));

    for kind in EventKind::ALL {
        if matches!(kind, EventKind::StateChanged | EventKind::Stale) {
            continue;
        }
        let e = Event::new(v.clone(), kind, ts, 52_500_000, 13_400_000, Some("zone-1"));
        assert_eq!(
            mds::event(&cfg, &e, None),
            None,
            "{kind} has no MDS meaning"
        );
    }
    let mut no_state = state_change(&v, ts, Some(VehicleState::Available), VehicleState::OnTrip);
    no_state.to_state = None;
    assert_eq!(mds::event(&cfg, &no_state, None), None);
}

#[test]
fn mds_vehicle_status_reports_the_state_the_vehicle_is_in() {
    let mds = Mds::load();
    let status_model = mds.model("models/vehicle-status.yaml");
    let cfg = MdsConfig::default();
    let v = vid("scooter-3");
    let p = |state| Point {
        state,
        ..point(40, 52_510_000, None)
    };
    let earlier = T0;
    let stale = Event::new(
        v.clone(),
        EventKind::Stale,
        p(None).ts + 1,
        52_500_000,
        13_400_000,
        None,
    );
    let old_stale = Event::new(
        v.clone(),
        EventKind::Stale,
        earlier,
        52_500_000,
        13_400_000,
        None,
    );
    let check = |last: Point, ev: Option<&Event>, state: &str, kind: &str| {
        let s = mds::vehicle_status(&cfg, &v, &last, ev);
        let what = format!(
            "{:?} after {:?}",
            last.state,
            ev.map(|e| (e.kind, e.to_state))
        );
        assert_valid(&status_model, &s, &what);
        assert_eq!(s["last_event"]["vehicle_state"], state, "{what}");
        assert_eq!(s["last_event"]["event_types"], json!([kind]), "{what}");
        assert_eq!(s["last_telemetry"]["timestamp"], last.ts, "{what}");
        s
    };
    use VehicleState::*;
    let to_avail = state_change(&v, earlier, Some(OnTrip), Available);
    let to_trip = state_change(&v, earlier, Some(Available), OnTrip);
    check(p(Some(Available)), Some(&to_avail), "available", "trip_end");
    check(p(None), Some(&to_avail), "available", "trip_end");
    // The event is older than the fix's state: made up from the fix.
    let s = check(
        p(Some(Reserved)),
        Some(&to_avail),
        "reserved",
        "unspecified",
    );
    assert_eq!(s["last_event"]["timestamp"], p(None).ts);
    check(p(Some(OnTrip)), None, "on_trip", "unspecified");
    check(p(None), None, "available", "unspecified");
    // Silent, then heard again.
    check(
        p(Some(Available)),
        Some(&stale),
        "non_contactable",
        "comms_lost",
    );
    check(
        p(Some(Available)),
        Some(&old_stale),
        "available",
        "comms_restored",
    );
    check(p(None), Some(&old_stale), "available", "comms_restored");
    // On a trip the telemetry names it.
    let s = check(p(Some(OnTrip)), Some(&to_trip), "on_trip", "trip_start");
    assert_eq!(
        s["last_telemetry"]["trip_ids"],
        json!([mds::trip_id(&cfg.provider_id, &v, earlier)])
    );
    let s = check(p(Some(Available)), Some(&to_avail), "available", "trip_end");
    assert_eq!(s["last_telemetry"]["trip_ids"], Value::Null);
}

#[test]
fn mds_the_schemas_reject_wrong_bodies() {
    let mds = Mds::load();
    let cfg = MdsConfig::default();
    let now = T0 + 3 * 3_600_000;
    let v = vid("scooter-1");
    let pts = afternoon();
    let links = mds::paginate("https://fleet.example.com/mds/vehicles", 1, 0, 10).1;

    let vehicles_v = mds.endpoint("/vehicles");
    let vehicles = mds::envelope(
        Endpoint::Vehicles,
        vec![mds::vehicle(&cfg, &v)],
        Some(&links),
        now,
        &cfg,
    );
    assert_valid(&vehicles_v, &vehicles, "/vehicles");
    assert_rejects(&vehicles_v, &vehicles, "no device_id", |b| {
        b["vehicles"][0]
            .as_object_mut()
            .unwrap()
            .remove("device_id");
    });
    assert_rejects(&vehicles_v, &vehicles, "not a UUID", |b| {
        b["vehicles"][0]["provider_id"] = json!("kickstand")
    });
    assert_rejects(&vehicles_v, &vehicles, "upper-case UUID", |b| {
        let id = b["vehicles"][0]["device_id"]
            .as_str()
            .unwrap()
            .to_uppercase();
        b["vehicles"][0]["device_id"] = json!(id);
    });
    assert_rejects(&vehicles_v, &vehicles, "unknown vehicle type", |b| {
        b["vehicles"][0]["vehicle_type"] = json!("scooter")
    });
    assert_rejects(&vehicles_v, &vehicles, "version", |b| {
        b["version"] = json!("2.0")
    });
    assert_rejects(&vehicles_v, &vehicles, "ttl over five minutes", |b| {
        b["ttl"] = json!(300_001)
    });
    assert_rejects(&vehicles_v, &vehicles, "no last_updated", |b| {
        b.as_object_mut().unwrap().remove("last_updated");
    });
    assert_rejects(&vehicles_v, &vehicles, "links without next", |b| {
        b["links"].as_object_mut().unwrap().remove("next");
    });
    assert_rejects(&vehicles_v, &vehicles, "relative link", |b| {
        b["links"]["first"] = json!("not a uri")
    });

    let trips_v = mds.endpoint("/trips");
    let trips: Vec<Value> = mds::trips_from_points(&cfg, &v, &pts)
        .into_iter()
        .map(|t| t.json)
        .collect();
    let trips = mds::envelope(Endpoint::Trips, trips, None, now, &cfg);
    assert_valid(&trips_v, &trips, "/trips");
    assert_rejects(&trips_v, &trips, "no distance", |b| {
        b["trips"][0].as_object_mut().unwrap().remove("distance");
    });
    assert_rejects(&trips_v, &trips, "negative duration", |b| {
        b["trips"][0]["duration"] = json!(-1)
    });
    assert_rejects(&trips_v, &trips, "two trip types", |b| {
        b["trips"][0]["trip_type"] = json!(["rider", "rebalance"])
    });
    assert_rejects(&trips_v, &trips, "seconds, not ms", |b| {
        b["trips"][0]["start_time"] = json!(1_714_564_800)
    });

    let tel_v = mds.endpoint("/telemetry");
    let tel = mds::envelope(
        Endpoint::Telemetry,
        mds::telemetry_for_points(&cfg, &v, &pts, None),
        None,
        now,
        &cfg,
    );
    assert_valid(&tel_v, &tel, "/telemetry");
    assert_rejects(&tel_v, &tel, "no journey_id", |b| {
        b["telemetry"][0]
            .as_object_mut()
            .unwrap()
            .remove("journey_id");
    });
    assert_rejects(&tel_v, &tel, "empty trip_ids", |b| {
        b["telemetry"][0]["trip_ids"] = json!([])
    });
    assert_rejects(&tel_v, &tel, "battery over 100", |b| {
        b["telemetry"][0]["battery_percent"] = json!(101)
    });
    assert_rejects(&tel_v, &tel, "no lng", |b| {
        b["telemetry"][0]["location"]
            .as_object_mut()
            .unwrap()
            .remove("lng");
    });

    let events_v = mds.endpoint("/events/historical");
    let trip_end = state_change(&v, T0, Some(VehicleState::OnTrip), VehicleState::Available);
    let ev = mds::event(&cfg, &trip_end, Some(T0 - 60_000)).unwrap();
    let events = mds::envelope(Endpoint::EventsHistorical, vec![ev], None, now, &cfg);
    assert_valid(&events_v, &events, "/events/historical");
    assert_rejects(
        &events_v,
        &events,
        "trip_start is not an available event",
        |b| {
            b["events"][0]["event_types"] = json!(["trip_start"]);
        },
    );
    assert_rejects(&events_v, &events, "no state", |b| {
        b["events"][0]["vehicle_state"] = json!("parked")
    });
    assert_rejects(&events_v, &events, "no event types", |b| {
        b["events"][0]["event_types"] = json!([])
    });
    assert_rejects(&events_v, &events, "a trip event without its trip", |b| {
        b["events"][0]["trip_ids"] = json!([])
    });
    assert_rejects(
        &events_v,
        &events,
        "neither location nor geographies",
        |b| {
            b["events"][0].as_object_mut().unwrap().remove("location");
        },
    );
    assert_rejects(&events_v, &events, "no events", |b| {
        b.as_object_mut().unwrap().remove("events");
    });

    let status_v = mds.endpoint("/vehicles/status/{device_id}");
    let status = mds::envelope(
        Endpoint::VehicleStatus,
        vec![mds::vehicle_status(&cfg, &v, &pts[0], None)],
        None,
        now,
        &cfg,
    );
    assert_valid(&status_v, &status, "/vehicles/status/{device_id}");
    assert_rejects(&status_v, &status, "two statuses for one device", |b| {
        let s = b["vehicles_status"][0].clone();
        b["vehicles_status"].as_array_mut().unwrap().push(s);
    });
    assert_rejects(&status_v, &status, "no last_telemetry", |b| {
        b["vehicles_status"][0]
            .as_object_mut()
            .unwrap()
            .remove("last_telemetry");
    });
}

#[test]
fn mds_errors_have_the_mds_error_bodies() {
    let mds = Mds::load();
    let error = mds.model("models/response/error.yaml");
    let bad_param = mds.model("models/response/error_bad_param.yaml");
    let missing_param = mds.model("models/response/error_missing_param.yaml");

    let bad = mds::parse_hour("end_time", Some("2024-05-01T24")).unwrap_err();
    assert_eq!(bad.status(), 400);
    assert_valid(&error, &bad.body(), "bad hour");
    assert_valid(&bad_param, &bad.body(), "bad hour");
    assert!(!missing_param.is_valid(&bad.body()));
    for text in ["2024-5-1T1", "garbage"] {
        let e = mds::parse_hour("telemetry_time", Some(text)).unwrap_err();
        assert_valid(&bad_param, &e.body(), text);
        assert_eq!(e.body()["error_details"], json!(["telemetry_time"]));
    }
    assert!(mds::parse_hour("event_time", Some("2024-05-01T13")).is_ok());

    let missing = mds::parse_hour("event_time", None).unwrap_err();
    assert_eq!(missing.status(), 400);
    assert_valid(&error, &missing.body(), "missing hour");
    assert_valid(&missing_param, &missing.body(), "missing hour");
    assert!(!bad_param.is_valid(&missing.body()));
    let missing = mds::parse_recent_range(Some("1714564800000"), None, T0).unwrap_err();
    assert_valid(&missing_param, &missing.body(), "missing end_time");

    let not_found = MdsError::NotFound("No vehicle with that device_id.".into());
    assert_eq!(not_found.status(), 404);
    assert_valid(&error, &not_found.body(), "not found");
    let future = mds::require_past_hour(
        mds::parse_hour("end_time", Some("2024-05-01T12")).unwrap(),
        T0,
    )
    .unwrap_err();
    assert_eq!(future.status(), 404);
    assert_valid(&error, &future.body(), "future hour");

    assert_rejects(&error, &bad.body(), "error without details", |b| {
        b["error_details"] = json!([])
    });
}
