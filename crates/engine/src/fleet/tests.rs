//! The fleet store contract: the behaviour of [`FleetStore`], checked against every store on
//! real storage: SQLite in a temporary directory, PostgreSQL in a schema of its own on a real
//! server (`KICKSTAND_TEST_POSTGRES_URL`; skipped with a notice when unset, failed under
//! `KICKSTAND_REQUIRE_SERVICES=1`).
//!
//! Each check is a function over `&dyn FleetStore` (or over a way to open the store again, for
//! the checks that need several handles); `contract!` instantiates all of them for one store,
//! in a module named after it (`fleet::tests::postgres::…`). Checks only PostgreSQL needs
//! (migrations refused, started at once) are in `postgres_only`.

use super::postgres::PgFleetStore;
use super::sqlite::SqliteFleetStore;
use super::*;
use crate::history::postgres::PostgresConfig;
use kickstand_domain::zone::Area;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// 2026-11-25T00:00:00Z.
const T0: i64 = 1_795_564_800_000;
const MIN: i64 = 60_000;

/// Where a store under test keeps its data, and how to open it.
trait Backend: Sized {
    /// A fresh, empty store, or `None` when its service is not configured.
    fn fresh() -> Option<Self>;
    /// Opens the store (again): another process's handle on the same data.
    fn open(&self) -> Box<dyn FleetStore>;
}

/// The embedded store belongs to one process (its vehicle index is locked), so "another
/// handle" is the open store itself while one is alive, and a reopened file once every handle
/// is gone: as `kickstand run` shares one store between its workers, API and dispatcher.
struct Sqlite {
    dir: tempfile::TempDir,
    live: parking_lot::Mutex<std::sync::Weak<SqliteFleetStore>>,
}

impl Backend for Sqlite {
    fn fresh() -> Option<Self> {
        Some(Sqlite {
            dir: tempfile::tempdir().unwrap(),
            live: parking_lot::Mutex::default(),
        })
    }
    fn open(&self) -> Box<dyn FleetStore> {
        let mut live = self.live.lock();
        if let Some(store) = live.upgrade() {
            return Box::new(store);
        }
        let store = Arc::new(SqliteFleetStore::open(&self.dir.path().join("fleet.db")).unwrap());
        *live = Arc::downgrade(&store);
        Box::new(store)
    }
}

impl<T: FleetStore + ?Sized> FleetStore for Arc<T> {
    fn put_geofence(&self, g: &Geofence) -> FleetResult<()> {
        (**self).put_geofence(g)
    }
    fn delete_geofence(&self, id: &str) -> FleetResult<bool> {
        (**self).delete_geofence(id)
    }
    fn geofence(&self, id: &str) -> FleetResult<Option<Geofence>> {
        (**self).geofence(id)
    }
    fn geofences(&self) -> FleetResult<Vec<Geofence>> {
        (**self).geofences()
    }
    fn geofences_version(&self) -> FleetResult<u64> {
        (**self).geofences_version()
    }
    fn append_events(&self, events: &[Event], recorded_at: i64) -> FleetResult<()> {
        (**self).append_events(events, recorded_at)
    }
    fn stage_events(&self, events: &[Event], recorded_at: i64) -> FleetResult<StagedEvents> {
        (**self).stage_events(events, recorded_at)
    }
    fn event_record_durable(&self, record: u64) -> bool {
        (**self).event_record_durable(record)
    }
    fn events(&self, q: &EventQuery) -> FleetResult<Vec<StoredEvent>> {
        (**self).events(q)
    }
    fn event_head(&self) -> FleetResult<u64> {
        (**self).event_head()
    }
    fn drop_events_before(&self, ts: i64) -> FleetResult<usize> {
        (**self).drop_events_before(ts)
    }
    fn last_trip_ends(&self) -> FleetResult<Vec<(VehicleId, i64)>> {
        (**self).last_trip_ends()
    }
    fn last_state_events(&self, vehicles: &[VehicleId]) -> FleetResult<Vec<Event>> {
        (**self).last_state_events(vehicles)
    }
}

/// A schema of its own in the test database, dropped at the end through the first handle
/// (which works even after a test has made the schema unopenable).
struct Postgres {
    config: PostgresConfig,
    first: PgFleetStore,
}

/// Settings for a schema no other test uses, or `None` when PostgreSQL is not configured.
fn pg_config() -> Option<PostgresConfig> {
    Some(PostgresConfig {
        url: crate::testing::service_url("POSTGRES")?,
        schema: crate::testing::unique_name("fleettest"),
        pool_size: 4,
        ..PostgresConfig::default()
    })
}

impl Backend for Postgres {
    fn fresh() -> Option<Self> {
        let config = pg_config()?;
        match PgFleetStore::open(&config) {
            Ok(first) => Some(Postgres { config, first }),
            Err(e) => crate::testing::unreachable("PostgreSQL", e),
        }
    }
    fn open(&self) -> Box<dyn FleetStore> {
        Box::new(PgFleetStore::open(&self.config).unwrap())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.first.drop_schema();
    }
}

macro_rules! contract {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;
            macro_rules! check {
                ($name:ident) => {
                    #[test]
                    fn $name() {
                        if let Some(b) = <$backend>::fresh() {
                            super::$name(&*b.open());
                        }
                    }
                };
            }
            macro_rules! check_handles {
                ($name:ident) => {
                    #[test]
                    fn $name() {
                        if let Some(b) = <$backend>::fresh() {
                            super::$name(&|| b.open());
                        }
                    }
                };
            }
            check!(geofences_are_put_replaced_listed_and_deleted_and_bump_the_version);
            check!(appending_is_idempotent);
            check!(events_are_filtered_by_vehicle_kind_zone_and_time);
            check!(events_are_paged_by_sequence_number);
            check!(event_head_is_the_highest_sequence_number);
            check!(retention_drops_only_older_events);
            check!(last_trip_ends_are_the_newest_per_vehicle);
            check!(last_state_events_are_the_newest_per_vehicle_in_the_order_asked);
            check_handles!(reopening_and_other_handles_see_everything);
            check_handles!(concurrent_appenders_are_followed_without_missing_an_event);
        }
    };
}

contract!(sqlite, Sqlite);
contract!(postgres, Postgres);

fn vid(id: &str) -> VehicleId {
    VehicleId::new(id).unwrap()
}

/// An event with every optional field set that its kind would carry.
fn ev(vehicle: &str, kind: EventKind, ts: i64, zone: Option<&str>) -> Event {
    let mut e = Event::new(
        vid(vehicle),
        kind,
        ts,
        37_500_000 + (ts / MIN % 1000) as i32,
        -122_000_000 - (ts / MIN % 777) as i32,
        zone,
    );
    e.battery_dpct = Some(873);
    e.speed_dkmh = Some((ts / MIN % 300) as u16);
    match kind {
        EventKind::SpeedingInSlowZone => e.limit_dkmh = Some(150),
        EventKind::Stale | EventKind::ReportingAgain => e.last_fix_ts = Some(ts - 15 * MIN),
        _ => {}
    }
    e
}

fn state(vehicle: &str, ts: i64, from: Option<VehicleState>, to: VehicleState) -> Event {
    let mut e = ev(vehicle, EventKind::StateChanged, ts, None);
    e.from_state = from;
    e.to_state = Some(to);
    e
}

fn area(geojson: serde_json::Value) -> Area {
    Area::from_geojson(&geojson).unwrap()
}

fn square(lon: f64, lat: f64, side: f64) -> Vec<[f64; 2]> {
    vec![
        [lon, lat],
        [lon + side, lat],
        [lon + side, lat + side],
        [lon, lat + side],
        [lon, lat],
    ]
}

fn geofence(id: &str, kind: ZoneKind, area: Area, at: i64) -> Geofence {
    Geofence {
        id: id.into(),
        name: format!("zone {id}"),
        kind,
        max_speed_kmh: (kind == ZoneKind::SlowZone).then_some(12.5),
        area,
        created_at: at,
        updated_at: at,
    }
}

/// Every event stored, by sequence number.
fn all(s: &dyn FleetStore) -> Vec<StoredEvent> {
    s.events(&EventQuery {
        limit: 1_000_000,
        ..EventQuery::default()
    })
    .unwrap()
}

fn ids(events: &[StoredEvent]) -> Vec<String> {
    events.iter().map(|e| e.event.id.clone()).collect()
}

fn geofences_are_put_replaced_listed_and_deleted_and_bump_the_version(s: &dyn FleetStore) {
    let v0 = s.geofences_version().unwrap();
    assert_eq!(s.geofences().unwrap(), vec![]);
    assert_eq!(s.geofence("a").unwrap(), None);

    let slow = geofence(
        "b",
        ZoneKind::SlowZone,
        area(serde_json::json!({"type": "Polygon", "coordinates": [square(-122.42, 37.77, 0.01)]})),
        T0,
    );
    // A MultiPolygon, one of its polygons with a hole, coordinates with long decimals.
    let no_parking = geofence(
        "a",
        ZoneKind::NoParking,
        area(serde_json::json!({"type": "MultiPolygon", "coordinates": [
            [square(-122.5, 37.5, 0.25), square(-122.48, 37.72, 0.01)],
            [square(-122.3, 37.8, 0.0013)],
        ]})),
        T0 + 1,
    );
    // Ids are listed in byte order: upper case before lower case.
    let operating = geofence(
        "Z.1",
        ZoneKind::OperatingArea,
        area(serde_json::json!({"type": "Polygon", "coordinates": [square(-123.0, 37.0, 1.0)]})),
        T0 + 2,
    );
    for g in [&slow, &no_parking, &operating] {
        s.put_geofence(g).unwrap();
    }
    assert_eq!(s.geofences_version().unwrap(), v0 + 3);
    assert_eq!(
        s.geofences().unwrap(),
        vec![operating.clone(), no_parking.clone(), slow.clone()]
    );
    assert_eq!(s.geofence("b").unwrap(), Some(slow.clone()));
    assert_eq!(s.geofence("a").unwrap(), Some(no_parking.clone()));

    // Replacing keeps the creation time and takes everything else.
    let replaced = Geofence {
        name: "renamed".into(),
        kind: ZoneKind::NoRide,
        max_speed_kmh: None,
        area: area(
            serde_json::json!({"type": "Polygon", "coordinates": [square(10.0, -45.0, 2.5)]}),
        ),
        created_at: T0 + 100,
        updated_at: T0 + 200,
        ..slow.clone()
    };
    s.put_geofence(&replaced).unwrap();
    assert_eq!(s.geofences_version().unwrap(), v0 + 4);
    let want = Geofence {
        created_at: slow.created_at,
        ..replaced
    };
    assert_eq!(s.geofence("b").unwrap(), Some(want.clone()));
    assert_eq!(s.geofences().unwrap().len(), 3);

    assert!(s.delete_geofence("a").unwrap());
    assert_eq!(s.geofences_version().unwrap(), v0 + 5);
    // Deleting what is not there changes nothing, the version included.
    assert!(!s.delete_geofence("a").unwrap());
    assert!(!s.delete_geofence("nope").unwrap());
    assert_eq!(s.geofences_version().unwrap(), v0 + 5);
    assert_eq!(s.geofence("a").unwrap(), None);
    assert_eq!(s.geofences().unwrap(), vec![operating, want]);
}

fn appending_is_idempotent(s: &dyn FleetStore) {
    s.append_events(&[], T0).unwrap();
    assert_eq!(all(s), vec![]);
    let batch = vec![
        state("v1", T0, None, VehicleState::Available),
        ev("v1", EventKind::GeofenceEntered, T0, Some("z1")),
        ev("v1", EventKind::GeofenceEntered, T0, Some("z2")),
        ev("v2", EventKind::BatteryLow, T0 + 1, None),
        ev("v2", EventKind::Stale, T0 + 2, None),
    ];
    s.append_events(&batch, T0 + 10).unwrap();
    s.append_events(&batch, T0 + 20).unwrap();
    let stored = all(s);
    assert_eq!(
        stored.iter().map(|e| &e.event).collect::<Vec<_>>(),
        batch.iter().collect::<Vec<_>>(),
        "stored in the order given, every field read back"
    );
    assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(stored.iter().all(|e| e.recorded_at == T0 + 10));

    // A batch repeating an event within itself and one stored before stores the rest once.
    let new = ev("v3", EventKind::MovingWhileLocked, T0 + 3, None);
    let mixed = vec![
        new.clone(),
        batch[1].clone(),
        new.clone(),
        ev("v3", EventKind::ReportingAgain, T0 + 4, None),
    ];
    s.append_events(&mixed, T0 + 30).unwrap();
    let stored = all(s);
    assert_eq!(stored.len(), 7);
    assert_eq!(stored[5].event, new);
    assert_eq!(stored[5].recorded_at, T0 + 30);
    assert_eq!(stored[6].event, mixed[3]);
    s.append_events(&mixed, T0 + 40).unwrap();
    assert_eq!(all(s), stored);
}

/// Vehicles `v0`..`v3`, kinds and zones mixed, `ts` not in seq order.
fn mixed_events() -> Vec<Event> {
    let kinds = [
        EventKind::GeofenceEntered,
        EventKind::BatteryLow,
        EventKind::GeofenceExited,
        EventKind::StateChanged,
        EventKind::Stale,
    ];
    (0..60)
        .map(|i: i64| {
            let kind = kinds[(i % 5) as usize];
            let zone = matches!(kind, EventKind::GeofenceEntered | EventKind::GeofenceExited)
                .then(|| format!("z{}", i % 3));
            let ts = T0 + ((i * 37) % 60) * MIN;
            let mut e = ev(&format!("v{}", i % 4), kind, ts, zone.as_deref());
            if kind == EventKind::StateChanged {
                e.from_state = Some(VehicleState::Available);
                e.to_state = Some(VehicleState::OnTrip);
            }
            e
        })
        .collect()
}

fn events_are_filtered_by_vehicle_kind_zone_and_time(s: &dyn FleetStore) {
    let events = mixed_events();
    for chunk in events.chunks(13) {
        s.append_events(chunk, T0).unwrap();
    }
    let check = |q: EventQuery, keep: &dyn Fn(&Event) -> bool| {
        let want: Vec<String> = events
            .iter()
            .filter(|e| keep(e))
            .take(q.limit.max(1))
            .map(|e| e.id.clone())
            .collect();
        assert!(!want.is_empty(), "{q:?} selects something");
        assert_eq!(ids(&s.events(&q).unwrap()), want, "{q:?}");
    };
    let q = |limit: usize| EventQuery {
        limit,
        ..EventQuery::default()
    };
    check(q(1000), &|_| true);
    check(
        EventQuery {
            vehicle_id: Some(vid("v2")),
            ..q(1000)
        },
        &|e| e.vehicle_id.as_str() == "v2",
    );
    check(
        EventQuery {
            kinds: vec![EventKind::BatteryLow],
            ..q(1000)
        },
        &|e| e.kind == EventKind::BatteryLow,
    );
    check(
        EventQuery {
            kinds: vec![EventKind::Stale, EventKind::GeofenceExited],
            ..q(1000)
        },
        &|e| matches!(e.kind, EventKind::Stale | EventKind::GeofenceExited),
    );
    check(
        EventQuery {
            zone_id: Some("z1".into()),
            ..q(1000)
        },
        &|e| e.zone_id.as_deref() == Some("z1"),
    );
    // `from` is inclusive, `to` exclusive.
    check(
        EventQuery {
            from: Some(T0 + 10 * MIN),
            to: Some(T0 + 20 * MIN),
            ..q(1000)
        },
        &|e| e.ts >= T0 + 10 * MIN && e.ts < T0 + 20 * MIN,
    );
    check(
        EventQuery {
            vehicle_id: Some(vid("v1")),
            kinds: vec![EventKind::GeofenceEntered, EventKind::GeofenceExited],
            zone_id: Some("z2".into()),
            from: Some(T0 + 5 * MIN),
            ..q(1000)
        },
        &|e| {
            e.vehicle_id.as_str() == "v1"
                && matches!(
                    e.kind,
                    EventKind::GeofenceEntered | EventKind::GeofenceExited
                )
                && e.zone_id.as_deref() == Some("z2")
                && e.ts >= T0 + 5 * MIN
        },
    );
    // A limit of 0 is read as 1.
    check(q(0), &|_| true);
    check(q(7), &|_| true);
    let none = EventQuery {
        vehicle_id: Some(vid("v9")),
        ..q(1000)
    };
    assert_eq!(s.events(&none).unwrap(), vec![]);
    let none = EventQuery {
        kinds: vec![EventKind::MovingWhileLocked],
        ..q(1000)
    };
    assert_eq!(s.events(&none).unwrap(), vec![]);
}

fn events_are_paged_by_sequence_number(s: &dyn FleetStore) {
    let events = mixed_events();
    s.append_events(&events, T0).unwrap();
    let everything = all(s);
    assert_eq!(everything.len(), events.len());
    let page = |q: &EventQuery| -> Vec<StoredEvent> {
        let mut q = q.clone();
        let mut out = Vec::new();
        loop {
            let got = s.events(&q).unwrap();
            assert!(got.len() <= q.limit);
            let Some(last) = got.last() else {
                return out;
            };
            assert!(got.first().unwrap().seq > q.after_seq);
            q.after_seq = last.seq;
            out.extend(got);
        }
    };
    for limit in [1, 7, 60, 100] {
        let q = EventQuery {
            limit,
            ..EventQuery::default()
        };
        assert_eq!(page(&q), everything, "limit {limit}");
    }
    let q = EventQuery {
        kinds: vec![EventKind::GeofenceEntered],
        limit: 4,
        ..EventQuery::default()
    };
    let want: Vec<StoredEvent> = everything
        .iter()
        .filter(|e| e.event.kind == EventKind::GeofenceEntered)
        .cloned()
        .collect();
    assert_eq!(page(&q), want);
    // After the last one there is nothing; after one in the middle, the rest.
    let q = EventQuery {
        after_seq: everything.last().unwrap().seq,
        limit: 10,
        ..EventQuery::default()
    };
    assert_eq!(s.events(&q).unwrap(), vec![]);
    let q = EventQuery {
        after_seq: everything[9].seq,
        limit: 3,
        ..EventQuery::default()
    };
    assert_eq!(s.events(&q).unwrap(), everything[10..13].to_vec());
}

fn event_head_is_the_highest_sequence_number(s: &dyn FleetStore) {
    assert_eq!(s.event_head().unwrap(), 0);
    let events = mixed_events();
    s.append_events(&events[..10], T0).unwrap();
    let head = s.event_head().unwrap();
    assert_eq!(head, all(s).last().unwrap().seq);
    // A repeated batch takes nothing.
    s.append_events(&events[..10], T0).unwrap();
    assert_eq!(s.event_head().unwrap(), head);
    s.append_events(&events[10..], T0).unwrap();
    let after = EventQuery {
        after_seq: head,
        limit: 1000,
        ..EventQuery::default()
    };
    assert_eq!(ids(&s.events(&after).unwrap()), ids(&all(s)[10..]));
    assert_eq!(s.event_head().unwrap(), all(s).last().unwrap().seq);
    assert!(s.event_head().unwrap() > head);
}

fn retention_drops_only_older_events(s: &dyn FleetStore) {
    let events: Vec<Event> = (0..6)
        .map(|i| ev("v1", EventKind::BatteryLow, T0 + i * MIN, None))
        .collect();
    s.append_events(&events, T0).unwrap();
    assert_eq!(s.drop_events_before(T0 - 1).unwrap(), 0);
    // The cutoff itself is kept.
    assert_eq!(s.drop_events_before(T0 + 2 * MIN).unwrap(), 2);
    assert_eq!(ids(&all(s)), ids_of(&events[2..]));
    assert_eq!(s.drop_events_before(T0 + 2 * MIN).unwrap(), 0);
    // A dropped event appended again is stored again, after the others.
    s.append_events(&events[..1], T0).unwrap();
    assert_eq!(all(s).len(), 5);
    assert_eq!(all(s).last().unwrap().event, events[0]);
    assert_eq!(s.drop_events_before(i64::MAX).unwrap(), 5);
    assert_eq!(all(s), vec![]);
}

fn ids_of(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

fn last_trip_ends_are_the_newest_per_vehicle(s: &dyn FleetStore) {
    use VehicleState::*;
    assert_eq!(s.last_trip_ends().unwrap(), vec![]);
    let events = vec![
        state("v1", T0, Some(Available), OnTrip),
        state("v1", T0 + MIN, Some(OnTrip), Available),
        state("v1", T0 + 2 * MIN, Some(Available), OnTrip),
        state("v1", T0 + 3 * MIN, Some(OnTrip), Reserved),
        // Later, but not the end of a trip.
        state("v1", T0 + 4 * MIN, Some(Reserved), Available),
        ev("v1", EventKind::BatteryLow, T0 + 5 * MIN, None),
        // Never ended a trip.
        state("v2", T0, Some(Available), OnTrip),
        state("v2", T0 + MIN, None, Available),
        state("v3", T0 + 2 * MIN, Some(OnTrip), NonOperational),
    ];
    s.append_events(&events, T0).unwrap();
    let mut ends = s.last_trip_ends().unwrap();
    ends.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    assert_eq!(
        ends,
        vec![(vid("v1"), T0 + 3 * MIN), (vid("v3"), T0 + 2 * MIN)]
    );
}

fn last_state_events_are_the_newest_per_vehicle_in_the_order_asked(s: &dyn FleetStore) {
    use VehicleState::*;
    assert_eq!(s.last_state_events(&[vid("v1")]).unwrap(), vec![]);
    let v1_newest = ev("v1", EventKind::Stale, T0 + 2 * MIN, None);
    let v2_newest = state("v2", T0 + 3 * MIN, Some(OnTrip), Available);
    let events = vec![
        state("v1", T0, Some(Available), OnTrip),
        state("v2", T0, None, OnTrip),
        state("v1", T0 + MIN, Some(OnTrip), Available),
        v1_newest.clone(),
        v2_newest.clone(),
        // Neither state_changed nor stale: not a state event.
        ev("v1", EventKind::BatteryLow, T0 + 4 * MIN, None),
        ev("v1", EventKind::ReportingAgain, T0 + 5 * MIN, None),
        ev("v3", EventKind::GeofenceEntered, T0, Some("z1")),
    ];
    s.append_events(&events, T0).unwrap();
    assert_eq!(s.last_state_events(&[]).unwrap(), vec![]);
    assert_eq!(
        s.last_state_events(&[vid("v2"), vid("v3"), vid("v9"), vid("v1")])
            .unwrap(),
        vec![v2_newest.clone(), v1_newest.clone()]
    );
    assert_eq!(
        s.last_state_events(&[vid("v1"), vid("v2")]).unwrap(),
        vec![v1_newest, v2_newest]
    );
}

fn reopening_and_other_handles_see_everything(open: &dyn Fn() -> Box<dyn FleetStore>) {
    let a = open();
    let g = geofence(
        "z1",
        ZoneKind::NoParking,
        area(serde_json::json!({"type": "Polygon", "coordinates": [square(2.0, 48.0, 0.5)]})),
        T0,
    );
    a.put_geofence(&g).unwrap();
    let events = mixed_events();
    a.append_events(&events[..30], T0).unwrap();

    // A second handle while the first is open (another process, or a restart): its
    // migrations find nothing to do, and it sees what the first stored.
    let b = open();
    assert_eq!(b.geofences().unwrap(), vec![g.clone()]);
    assert_eq!(
        b.geofences_version().unwrap(),
        a.geofences_version().unwrap()
    );
    assert_eq!(all(&*b), all(&*a));
    // What one handle changes, the other sees: events and the geofence version.
    let version = a.geofences_version().unwrap();
    b.append_events(&events[30..], T0).unwrap();
    assert!(b.delete_geofence("z1").unwrap());
    assert_ne!(a.geofences_version().unwrap(), version);
    assert_eq!(a.geofences().unwrap(), vec![]);
    assert_eq!(ids(&all(&*a)), ids_of(&events));
    drop(a);
    drop(b);

    let c = open();
    assert_eq!(ids(&all(&*c)), ids_of(&events));
    assert_eq!(c.geofences().unwrap(), vec![]);
    // Nothing stored twice across the restart.
    let before = all(&*c);
    c.append_events(&events, T0).unwrap();
    assert_eq!(all(&*c), before);
}

/// Appenders in separate handles (processes, in production) while a follower pages by
/// `after_seq`: it must see every event exactly once, which only holds if no event commits
/// with a sequence number below one the follower has already passed.
fn concurrent_appenders_are_followed_without_missing_an_event(
    open: &dyn Fn() -> Box<dyn FleetStore>,
) {
    const WRITERS: usize = 4;
    const BATCHES: i64 = 60;
    const PER_BATCH: i64 = 8;
    let writers: Vec<Box<dyn FleetStore>> = (0..WRITERS).map(|_| open()).collect();
    let follower = open();
    let done = AtomicBool::new(false);
    let done = &done;
    let mut appended: Vec<String> = Vec::new();
    let seen = std::thread::scope(|scope| {
        let handles: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(w, store)| {
                scope.spawn(move || {
                    let mut ids = Vec::new();
                    for b in 0..BATCHES {
                        let batch: Vec<Event> = (0..PER_BATCH)
                            .map(|k| {
                                ev(
                                    &format!("w{w}-{}", k % 3),
                                    EventKind::BatteryLow,
                                    T0 + b * PER_BATCH + k,
                                    None,
                                )
                            })
                            .collect();
                        store.append_events(&batch, T0).unwrap();
                        ids.extend(batch.into_iter().map(|e| e.id));
                    }
                    ids
                })
            })
            .collect();
        let reader = {
            let follower = &follower;
            scope.spawn(move || {
                let mut seen: Vec<String> = Vec::new();
                let mut seen_set = HashSet::new();
                let mut cursor = 0;
                loop {
                    // Read `done` before the page: once it is set, every append has committed
                    // and this page (and those after it) must bring in everything left.
                    let finished = done.load(Ordering::Acquire);
                    let page = follower
                        .events(&EventQuery {
                            after_seq: cursor,
                            limit: 50,
                            ..EventQuery::default()
                        })
                        .unwrap();
                    for e in &page {
                        assert!(e.seq > cursor);
                        cursor = e.seq;
                        assert!(
                            seen_set.insert(e.event.id.clone()),
                            "event {} seen twice",
                            e.event.id
                        );
                        seen.push(e.event.id.clone());
                    }
                    if page.is_empty() {
                        if finished {
                            return seen;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            })
        };
        for h in handles {
            appended.extend(h.join().unwrap());
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap()
    });
    assert_eq!(appended.len(), WRITERS * (BATCHES * PER_BATCH) as usize);
    let appended_set: HashSet<&String> = appended.iter().collect();
    let seen_set: HashSet<&String> = seen.iter().collect();
    let missed = appended_set.difference(&seen_set).count();
    assert_eq!(
        missed, 0,
        "the follower missed {missed} events committed behind its cursor"
    );
    assert_eq!(seen.len(), appended.len());
    assert_eq!(
        ids(&all(&*follower)),
        seen,
        "the follower saw them in seq order"
    );
}

mod postgres_only {
    use super::*;

    #[test]
    fn a_database_migrated_by_a_newer_build_is_refused() {
        let Some(pg) = Postgres::fresh() else {
            return;
        };
        pg.first
            .batch_execute(
                "INSERT INTO kickstand_fleet_migrations (version, name, checksum) \
                 VALUES (999, 'from the future', 0)",
            )
            .unwrap();
        let e = PgFleetStore::open(&pg.config).err().expect("refused");
        assert!(e.0.contains("999"), "{e}");
        assert!(e.0.contains("newer"), "{e}");
    }

    #[test]
    fn a_changed_migration_is_refused() {
        let Some(pg) = Postgres::fresh() else {
            return;
        };
        pg.first
            .batch_execute(
                "UPDATE kickstand_fleet_migrations SET checksum = checksum + 1 WHERE version = 1",
            )
            .unwrap();
        let e = PgFleetStore::open(&pg.config).err().expect("refused");
        assert!(e.0.contains("differs"), "{e}");
    }

    #[test]
    fn processes_that_start_at_once_migrate_once() {
        let Some(config) = pg_config() else {
            return;
        };
        let barrier = std::sync::Barrier::new(4);
        let opened: Vec<FleetResult<PgFleetStore>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        PgFleetStore::open(&config)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (mut stores, mut errors) = (Vec::new(), Vec::new());
        for s in opened {
            match s {
                Ok(s) => stores.push(s),
                Err(e) => errors.push(e),
            }
        }
        if stores.is_empty() {
            crate::testing::unreachable::<()>("PostgreSQL", &errors[0]);
            return;
        }
        let first = stores.remove(0);
        let pg = Postgres { config, first };
        assert!(errors.is_empty(), "a concurrent open failed: {errors:?}");
        pg.first
            .batch_execute(
                "DO $$ BEGIN
                   IF (SELECT count(*) FROM kickstand_fleet_migrations) <> 1 THEN
                     RAISE EXCEPTION 'migrations recorded % times',
                       (SELECT count(*) FROM kickstand_fleet_migrations);
                   END IF;
                 END $$",
            )
            .unwrap();
        assert_eq!(pg.first.geofences_version().unwrap(), 0);
        for s in &stores {
            assert_eq!(s.event_head().unwrap(), 0);
        }
    }

    #[test]
    fn connects_over_tls_when_the_url_asks_for_it() {
        let Some(url) = crate::testing::service_url("POSTGRES_TLS") else {
            return;
        };
        let ca = std::env::var("KICKSTAND_TEST_POSTGRES_TLS_CA")
            .expect("KICKSTAND_TEST_POSTGRES_TLS_CA names the CA file of the TLS test server");
        assert!(url.contains("sslmode=require"), "{url}");
        let config = PostgresConfig {
            url,
            schema: crate::testing::unique_name("fleettls"),
            ca_file: Some(ca.into()),
            pool_size: 1,
            ..PostgresConfig::default()
        };
        let pg = Postgres {
            first: PgFleetStore::open(&config).unwrap(),
            config,
        };
        let e = ev("tls-1", EventKind::BatteryLow, T0, None);
        pg.first
            .append_events(std::slice::from_ref(&e), T0)
            .unwrap();
        assert_eq!(all(&pg.first)[0].event, e);
        // The one pooled connection is the one that answered: it must be encrypted.
        pg.first
            .batch_execute(
                "DO $$ BEGIN
                   IF NOT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) THEN
                     RAISE EXCEPTION 'the connection is not encrypted';
                   END IF;
                 END $$",
            )
            .unwrap();
    }

    #[test]
    fn a_bad_url_or_schema_is_refused_before_connecting() {
        let bad_url = PostgresConfig {
            url: "not a url at all".into(),
            ..PostgresConfig::default()
        };
        assert!(PgFleetStore::open(&bad_url).is_err());
        let bad_schema = PostgresConfig {
            schema: String::new(),
            ..PostgresConfig::default()
        };
        let e = PgFleetStore::open(&bad_schema).err().expect("refused");
        assert!(e.0.contains("schema"), "{e}");
    }
}

/// A `fleet.db` from before event blocks (schema 3: a row per event) is moved into blocks at
/// open: the same events under the same sequence numbers, its trip ends, its identities (an
/// event appended again is not stored twice), and new sequence numbers after the highest ever
/// given, even one whose row retention removed.
#[test]
fn sqlite_schema_3_rows_move_into_blocks() {
    use VehicleState::*;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let old = vec![
        state("m1", T0, Some(Available), OnTrip),
        ev("m1", EventKind::GeofenceEntered, T0 + 1, Some("z1")),
        state("m1", T0 + MIN, Some(OnTrip), Available),
        ev("m2", EventKind::BatteryLow, T0 + 2, None),
    ];
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        for (i, sql) in super::sqlite::MIGRATIONS[..3].iter().enumerate() {
            c.execute_batch(sql).unwrap();
            c.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
        }
        for (n, e) in old.iter().enumerate() {
            c.execute(
                "INSERT INTO events (seq, id, vehicle_id, kind, ts, zone_id, from_state, to_state, recorded_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                rusqlite::params![
                    (n as i64 + 1) * 10,
                    e.id,
                    e.vehicle_id.as_str(),
                    e.kind.as_str(),
                    e.ts,
                    e.zone_id.clone().unwrap_or_default(),
                    e.from_state.map(VehicleState::as_str),
                    e.to_state.map(VehicleState::as_str),
                    T0 + 5,
                    serde_json::to_string(e).unwrap()
                ],
            )
            .unwrap();
        }
        // Retention had removed the newest row: its number is never given again.
        c.execute("INSERT INTO events (seq, id, vehicle_id, kind, ts, zone_id, recorded_at, body) VALUES (99, 'x', 'gone', 'stale', 1, '', 1, '{}')", []).unwrap();
        c.execute("DELETE FROM events WHERE seq = 99", []).unwrap();
    }
    let store = SqliteFleetStore::open(&path).unwrap();
    let stored = all(&store);
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![10, 20, 30, 40]
    );
    assert_eq!(
        stored.iter().map(|e| &e.event).collect::<Vec<_>>(),
        old.iter().collect::<Vec<_>>()
    );
    assert!(stored.iter().all(|e| e.recorded_at == T0 + 5));
    assert_eq!(store.last_trip_ends().unwrap(), vec![(vid("m1"), T0 + MIN)]);
    assert_eq!(
        by_vehicle(&store, &old[..1])[0].1.len(),
        4,
        "3 events and the last state"
    );
    store.append_events(&old, T0 + 6).unwrap();
    assert_eq!(all(&store), stored);
    let new = ev("m2", EventKind::BatteryRecovered, T0 + 3, None);
    store
        .append_events(std::slice::from_ref(&new), T0 + 7)
        .unwrap();
    let last = all(&store).pop().unwrap();
    assert_eq!((last.seq, last.event), (100, new));
    assert_eq!(store.event_head().unwrap(), 100);
}

/// Events are durable in the journal before `fleet.db` holds them: records a crash left
/// unindexed are stored at the next open, once (with the events already stored skipped), and
/// record numbers carry on after them.
#[test]
fn sqlite_journalled_events_missing_from_the_file_are_stored_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let events = mixed_events();
    assert!(events.len() > 30);
    {
        let store = SqliteFleetStore::open(&path).unwrap();
        store.append_events(&events[..10], T0).unwrap();
        assert_eq!(all(&store).len(), 10);
    }
    // As if the process died after two more groups were journalled and acked but before the
    // writer thread stored them: the second repeats events already stored.
    {
        let (journal, pending) =
            super::journal::Journal::open(&path.with_extension("events"), 1, 1_000).unwrap();
        assert!(pending.is_empty(), "record 1 is in fleet.db");
        let bodies = |e: &[Event]| -> Vec<String> {
            e.iter()
                .map(|e| serde_json::to_string(e).unwrap())
                .collect()
        };
        assert_eq!(journal.append(T0 + 1, &bodies(&events[10..20])).unwrap(), 2);
        assert_eq!(journal.append(T0 + 2, &bodies(&events[5..25])).unwrap(), 3);
    }
    let store = SqliteFleetStore::open(&path).unwrap();
    let stored = all(&store);
    assert_eq!(ids(&stored), ids_of(&events[..25]));
    assert_eq!(stored[12].recorded_at, T0 + 1);
    assert_eq!(stored[22].recorded_at, T0 + 2);
    store.append_events(&events[25..], T0 + 3).unwrap();
    assert_eq!(ids(&all(&store)), ids_of(&events));
    drop(store);
    // Everything is indexed: only the segment the last run wrote to is left, and nothing is
    // stored twice on the next open.
    let store = SqliteFleetStore::open(&path).unwrap();
    assert_eq!(ids(&all(&store)), ids_of(&events));
    let segments = std::fs::read_dir(path.with_extension("events"))
        .unwrap()
        .count();
    assert!(segments <= 2, "{segments} journal segments kept");
}

/// A group's fixes may reach history's write-ahead log before its events reach the journal
/// (the two syncs overlap, ADR 0024). After a crash, history keeps a linked record only if its
/// journal record survived (in `fleet.db` or intact in the journal); a tool opening history
/// without the fleet store is refused rather than keep fixes whose events are gone.
#[test]
fn history_keeps_a_group_only_if_its_events_reached_the_journal() {
    use crate::history::HistoryStore;
    use crate::history::embedded::{EmbeddedConfig, EmbeddedHistory};
    use kickstand_domain::{BucketSpan, Fix, Point};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let fixes = |vehicle: &str| -> Vec<Fix> {
        (0..3)
            .map(|i| Fix {
                vehicle_id: vid(vehicle),
                point: Point {
                    ts: T0 + i * 1_000,
                    lat_e6: 37_500_000,
                    lon_e6: -122_000_000,
                    ..Point::default()
                },
            })
            .collect()
    };
    let config = EmbeddedConfig::default;
    let history = {
        let fleet = SqliteFleetStore::open(&data.join("fleet.db")).unwrap();
        EmbeddedHistory::open_with_events(&data.join("history"), BucketSpan::HOUR, config(), &|r| {
            fleet.event_record_durable(r)
        })
        .unwrap()
    };
    let mut writer = history.writer(0).unwrap();
    assert!(writer.links_events());
    let mut is_new = Vec::new();
    {
        // Acked: events durable and handed on, so in `fleet.db` at the next open.
        let fleet = SqliteFleetStore::open(&data.join("fleet.db")).unwrap();
        let staged = fleet
            .stage_events(&[ev("acked", EventKind::BatteryLow, T0, None)], T0)
            .unwrap();
        writer
            .append_linked(&fixes("acked"), &mut is_new, staged.record.unwrap())
            .unwrap();
        staged.durable().unwrap();
    }
    {
        // The process dies before either of the next two groups is acked or handed on to
        // `fleet.db`: the first one's journal record is intact on disk, the second one's is
        // torn below.
        let (journal, pending) =
            super::journal::Journal::open(&data.join("fleet.events"), 1, 1_000).unwrap();
        assert!(pending.is_empty(), "record 1 is in fleet.db");
        for vehicle in ["intact", "torn"] {
            let body = serde_json::to_string(&ev(vehicle, EventKind::BatteryLow, T0, None));
            let record = journal.stage(T0, &[body.unwrap()]).unwrap();
            writer
                .append_linked(&fixes(vehicle), &mut is_new, record)
                .unwrap();
        }
        assert_eq!(is_new, vec![true; 9]);
    }
    // No close: history's write-ahead log is all there is of these fixes.
    drop(writer);
    drop(history);
    let journal = data.join("fleet.events");
    let segment = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let refused = EmbeddedHistory::open(&data.join("history"), BucketSpan::HOUR, config())
        .err()
        .expect("history alone cannot tell which fixes to keep");
    assert!(refused.to_string().contains("fleet store"), "{refused}");
    let history = crate::history::open_embedded_offline(data, BucketSpan::HOUR, config()).unwrap();
    let points = |vehicle: &str| history.track(&vid(vehicle), T0, T0 + MIN).unwrap().len();
    assert_eq!(points("acked"), 3);
    assert_eq!(points("intact"), 3, "its events survived: the group stays");
    assert_eq!(
        points("torn"),
        0,
        "its events are gone: the group goes, and is sent again"
    );
    drop(history);
    let fleet = SqliteFleetStore::open(&data.join("fleet.db")).unwrap();
    let vehicles: Vec<String> = all(&fleet)
        .iter()
        .map(|e| e.event.vehicle_id.as_str().to_owned())
        .collect();
    assert_eq!(vehicles, ["acked", "intact"]);
}

/// The vehicle index beside `fleet.db` is derived data: deleted (or behind after a crash), it
/// is rebuilt from the file at open, and a second process gets a clear error.
#[test]
fn sqlite_vehicle_index_is_rebuilt_and_locked_to_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let events = mixed_events();
    let before = {
        let store = SqliteFleetStore::open(&path).unwrap();
        store.append_events(&events, T0).unwrap();
        let other = SqliteFleetStore::open(&path).err().expect("locked");
        assert!(other.to_string().contains("another process"), "{other}");
        by_vehicle(&store, &events)
    };
    assert!(before.iter().any(|(_, ids)| !ids.is_empty()));
    std::fs::remove_dir_all(dir.path().join("fleet.vindex")).unwrap();
    let store = SqliteFleetStore::open(&path).unwrap();
    assert_eq!(by_vehicle(&store, &events), before);
}

fn by_vehicle(store: &dyn FleetStore, events: &[Event]) -> Vec<(String, Vec<String>)> {
    let mut vehicles: Vec<_> = events.iter().map(|e| e.vehicle_id.clone()).collect();
    vehicles.sort();
    vehicles.dedup();
    vehicles
        .into_iter()
        .map(|v| {
            let q = EventQuery {
                vehicle_id: Some(v.clone()),
                limit: 1000,
                ..EventQuery::default()
            };
            let ids = store
                .events(&q)
                .unwrap()
                .into_iter()
                .map(|e| e.event.id)
                .collect();
            let last: Vec<String> = store
                .last_state_events(std::slice::from_ref(&v))
                .unwrap()
                .into_iter()
                .map(|e| format!("last:{}", e.id))
                .collect();
            (v.as_str().to_owned(), [ids, last].concat())
        })
        .collect()
}

/// A vehicle walking across zones gets from its memo exactly what the index answers, and a
/// rebuilt set is never answered from a memo of the old one.
#[test]
fn zone_memo_answers_like_the_index_and_not_across_sets() {
    use super::zones::{ZoneMemo, ZoneSet};
    use kickstand_domain::Point;
    let poly =
        |ring: Vec<[f64; 2]>| area(serde_json::json!({"type": "Polygon", "coordinates": [ring]}));
    let mut fences = vec![geofence(
        "city",
        ZoneKind::OperatingArea,
        poly(square(126.9, 37.5, 0.1)),
        0,
    )];
    for i in 0..40 {
        let (lon, lat) = (
            126.95 + f64::from(i % 8) * 0.0012,
            37.55 + f64::from(i / 8) * 0.0012,
        );
        fences.push(geofence(
            &format!("np{i}"),
            ZoneKind::NoParking,
            poly(square(lon, lat, 0.0005)),
            0,
        ));
    }
    let set = ZoneSet::build(1, &fences);
    let (mut memo, mut slots, mut plain_slots) = (ZoneMemo::default(), Vec::new(), Vec::new());
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let ids = |zones: &[&kickstand_domain::watch::ZoneRef]| -> Vec<String> {
        zones.iter().map(|z| z.id.to_string()).collect()
    };
    let (mut inside_some, mut answered) = (0, 0);
    // 3 m steps diagonally through the grid of no-parking zones and out of the city.
    for step in 0..5_000 {
        let p = Point {
            lat_e6: 37_548_000 + step * 11,
            lon_e6: 126_948_000 + step * 13,
            ..Point::default()
        };
        answered += usize::from(set.containing_memo(&p, &mut memo, &mut slots, &mut got));
        set.containing(&p, &mut plain_slots, &mut want);
        assert_eq!(ids(&got), ids(&want), "step {step}");
        inside_some += usize::from(got.len() > 1);
    }
    assert!(
        inside_some > 50,
        "the walk crossed no-parking zones: {inside_some}"
    );
    // Axis-aligned squares: almost every step stays in the box of the step before.
    assert!(answered > 4_000, "the memo answered {answered} of 5,000");
    // The same geofences rebuilt without one zone: the memo of the old set is not used.
    let p = Point {
        lat_e6: 37_550_200,
        lon_e6: 126_950_200,
        ..Point::default()
    };
    let mut memo = ZoneMemo::default();
    set.containing_memo(&p, &mut memo, &mut slots, &mut got);
    assert_eq!(ids(&got), ["city", "np0"]);
    let smaller = ZoneSet::build(1, &fences[..1]);
    smaller.containing_memo(&p, &mut memo, &mut slots, &mut got);
    assert_eq!(ids(&got), ["city"]);
}
