//! The history conformance suite: the contract of [`HistoryStore`], checked against every
//! backend on real storage: the embedded store on real files, PostgreSQL on a real server
//! (`KICKSTAND_TEST_POSTGRES_URL`), MongoDB on a real server (`KICKSTAND_TEST_MONGODB_URL`).
//!
//! Each check is a function generic over [`Backend`]; `conformance!` instantiates all of them
//! for one backend, in a module named after it (`history::tests::postgres::…`).

use super::embedded::{EmbeddedConfig, EmbeddedHistory};
use super::mongodb::{MongoConfig, MongoHistory, MongoLayout};
use super::postgres::{PostgresConfig, PostgresHistory};
use super::*;
use kickstand_domain::{BucketSpan, VehicleState};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

const H: i64 = 3_600_000;
const DAY: i64 = 24 * H;
/// 2026-11-25T00:00:00Z.
const T0: i64 = 1_795_564_800_000;

/// Where a backend under test keeps its data, and how to open it.
trait Backend: Sized {
    /// A fresh, empty store, or `None` when its service is not configured (the test is then
    /// skipped with a notice, or fails under `KICKSTAND_REQUIRE_SERVICES=1`).
    fn fresh() -> Option<Self>;
    /// Opens the store (again): a second call is a restart.
    fn open(&self) -> Box<dyn HistoryStore>;
    /// Opens it so that writers keep fixes unflushed as long as they can (embedded: a large
    /// memtable); backends without such a stage open normally.
    fn open_unflushed(&self) -> Box<dyn HistoryStore> {
        self.open()
    }
    /// A string from which a child process re-opens the same store.
    fn locator(&self) -> String;
    /// The same store in a child process; it does not delete the store when dropped.
    fn from_locator(locator: &str) -> Self;
    /// Whether one `append` is atomic: a writer killed inside it leaves all of the group or
    /// none. (MongoDB without transactions: a killed append may leave part of its group,
    /// and the replay stores exactly the rest.)
    const ATOMIC_APPEND: bool = true;
    /// Whether `maintain` merges chunks (MongoDB's time-series layout leaves that to the
    /// server).
    const COMPACTS: bool = true;
}

struct Embedded {
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

fn small_checkpoints() -> EmbeddedConfig {
    EmbeddedConfig {
        checkpoint_fixes: 50,
        checkpoint_interval_ms: 60_000,
        compact_grace_secs: 0,
    }
}

impl Backend for Embedded {
    fn fresh() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        Some(Embedded {
            path: dir.path().to_owned(),
            _dir: Some(dir),
        })
    }
    fn open(&self) -> Box<dyn HistoryStore> {
        Box::new(EmbeddedHistory::open(&self.path, BucketSpan::HOUR, small_checkpoints()).unwrap())
    }
    fn open_unflushed(&self) -> Box<dyn HistoryStore> {
        let config = EmbeddedConfig {
            checkpoint_fixes: 1_000_000,
            ..small_checkpoints()
        };
        Box::new(EmbeddedHistory::open(&self.path, BucketSpan::HOUR, config).unwrap())
    }
    fn locator(&self) -> String {
        self.path.display().to_string()
    }
    fn from_locator(locator: &str) -> Self {
        Embedded {
            _dir: None,
            path: PathBuf::from(locator),
        }
    }
}

/// A schema of its own in the test database, dropped at the end.
struct Postgres {
    config: PostgresConfig,
    owner: bool,
}

impl Backend for Postgres {
    fn fresh() -> Option<Self> {
        let url = crate::testing::service_url("POSTGRES")?;
        let pg = Postgres {
            config: PostgresConfig {
                url,
                schema: crate::testing::unique_name("conformance"),
                pool_size: 4,
                compact_grace_secs: 0,
                ..PostgresConfig::default()
            },
            owner: true,
        };
        match PostgresHistory::open(&pg.config, BucketSpan::HOUR) {
            Ok(_) => Some(pg),
            Err(e) => crate::testing::unreachable("PostgreSQL", e),
        }
    }
    fn open(&self) -> Box<dyn HistoryStore> {
        Box::new(PostgresHistory::open(&self.config, BucketSpan::HOUR).unwrap())
    }
    fn locator(&self) -> String {
        format!("{}\n{}", self.config.url, self.config.schema)
    }
    fn from_locator(locator: &str) -> Self {
        let (url, schema) = locator.split_once('\n').unwrap();
        Postgres {
            config: PostgresConfig {
                url: url.into(),
                schema: schema.into(),
                pool_size: 2,
                compact_grace_secs: 0,
                ..PostgresConfig::default()
            },
            owner: false,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.owner
            && let Ok(h) = PostgresHistory::open(&self.config, BucketSpan::HOUR)
        {
            let _ = h.drop_schema();
        }
    }
}

/// A database of its own on the MongoDB server, dropped at the end.
struct Mongo<const TIMESERIES: bool> {
    config: MongoConfig,
    owner: bool,
}

impl<const TIMESERIES: bool> Mongo<TIMESERIES> {
    const LAYOUT: MongoLayout = if TIMESERIES {
        MongoLayout::Timeseries
    } else {
        MongoLayout::Buckets
    };
}

impl<const TIMESERIES: bool> Backend for Mongo<TIMESERIES> {
    const ATOMIC_APPEND: bool = false;
    const COMPACTS: bool = !TIMESERIES;
    fn fresh() -> Option<Self> {
        let config = super::mongodb::server_tests::test_config(Self::LAYOUT)?;
        super::mongodb::server_tests::test_store(&config)?;
        Some(Mongo {
            config,
            owner: true,
        })
    }
    fn open(&self) -> Box<dyn HistoryStore> {
        Box::new(MongoHistory::open(&self.config, BucketSpan::HOUR, 0).unwrap())
    }
    fn locator(&self) -> String {
        format!("{}\n{}", self.config.url, self.config.database)
    }
    fn from_locator(locator: &str) -> Self {
        let (url, database) = locator.split_once('\n').unwrap();
        Mongo {
            config: MongoConfig {
                url: url.into(),
                database: database.into(),
                layout: Self::LAYOUT,
                ..MongoConfig::default()
            },
            owner: false,
        }
    }
}

impl<const TIMESERIES: bool> Drop for Mongo<TIMESERIES> {
    fn drop(&mut self) {
        if self.owner
            && let Ok(h) = MongoHistory::open(&self.config, BucketSpan::HOUR, 0)
        {
            let _ = h.drop_database();
        }
    }
}

macro_rules! conformance {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;
            macro_rules! check {
                ($name:ident) => {
                    #[test]
                    fn $name() {
                        if let Some(b) = <$backend>::fresh() {
                            super::$name(&b);
                        }
                    }
                };
            }
            check!(appended_fixes_read_back_exactly_before_and_after_restart);
            check!(every_field_round_trips_at_the_extremes);
            check!(re_appending_is_idempotent_everywhere);
            check!(late_fixes_land_in_their_own_bucket_and_hour_boundaries_are_exact);
            check!(tracks_cross_buckets_and_days_in_order);
            check!(fleet_scan_is_in_bucket_then_vehicle_order);
            check!(retention_drops_whole_buckets_only);
            check!(retention_drops_whole_days);
            check!(compaction_merges_chunks_without_changing_reads);
            check!(latest_is_the_newest_fix_of_each_vehicle);
            check!(a_writer_that_dies_without_closing_loses_nothing_acked);
            check!(two_writers_append_different_vehicles_at_once);

            #[test]
            fn a_writer_killed_between_batches_leaves_no_partial_or_duplicated_bucket() {
                if let Some(b) = <$backend>::fresh() {
                    super::killed_writer(&b, concat!(module_path!(), "::kill_child"));
                }
            }

            /// Not a test: the child process of the test above, which runs it with
            /// `--ignored --exact` and `KICKSTAND_CONFORMANCE_CHILD` set.
            #[test]
            #[ignore = "entry point of the kill -9 test's child process"]
            fn kill_child() {
                if let Ok(locator) = std::env::var("KICKSTAND_CONFORMANCE_CHILD") {
                    super::kill_child_body(&<$backend>::from_locator(&locator));
                }
            }
        }
    };
}

conformance!(embedded, Embedded);
conformance!(postgres, Postgres);
conformance!(mongodb_buckets, Mongo<false>);
conformance!(mongodb_timeseries, Mongo<true>);

fn fix(id: &str, ts: i64) -> Fix {
    Fix {
        vehicle_id: VehicleId::new(id).unwrap(),
        point: Point {
            ts,
            lat_e6: 37_500_000 + (ts / 1000 % 1000) as i32,
            lon_e6: 127_000_000 - (ts / 1000 % 777) as i32,
            battery_dpct: Some((ts / 1000 % 1000) as u16),
            state: Some(VehicleState::OnTrip),
            ..Point::default()
        },
    }
}

fn append(w: &mut dyn HistoryWriter, fixes: &[Fix]) -> Vec<bool> {
    let mut out = Vec::new();
    w.append(fixes, &mut out).unwrap();
    assert_eq!(out.len(), fixes.len());
    out
}

fn vid(id: &str) -> VehicleId {
    VehicleId::new(id).unwrap()
}

fn track_ts(h: &dyn HistoryStore, id: &str, from: i64, to: i64) -> Vec<i64> {
    h.track(&vid(id), from, to)
        .unwrap()
        .iter()
        .map(|p| p.ts)
        .collect()
}

fn scan_all(h: &dyn HistoryStore, from: i64, to: i64) -> Vec<(i64, String, Vec<i64>)> {
    let mut out = Vec::new();
    h.scan(from, to, &mut |b| {
        out.push((
            b.bucket_start,
            b.vehicle_id.as_str().to_owned(),
            b.points.iter().map(|p| p.ts).collect(),
        ));
        true
    })
    .unwrap();
    out
}

fn appended_fixes_read_back_exactly_before_and_after_restart<B: Backend>(b: &B) {
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    let fixes: Vec<Fix> = (0..500).map(|i| fix("v1", T0 + i * 1000)).collect();
    for chunk in fixes.chunks(37) {
        assert!(append(w.as_mut(), chunk).iter().all(|n| *n));
    }
    let want: Vec<Point> = fixes.iter().map(|f| f.point).collect();
    assert_eq!(h.track(&vid("v1"), T0, T0 + H).unwrap(), want);
    w.close().unwrap();
    drop(h);
    let h = b.open();
    assert_eq!(h.track(&vid("v1"), T0, T0 + H).unwrap(), want);
}

fn every_field_round_trips_at_the_extremes<B: Backend>(b: &B) {
    let full = Point {
        ts: T0 + 1,
        lat_e6: 90_000_000,
        lon_e6: -180_000_000,
        speed_dkmh: Some(u16::MAX),
        heading_ddeg: Some(3599),
        battery_dpct: Some(1000),
        accuracy_dm: Some(u32::MAX),
        altitude_dm: Some(i32::MIN),
        odometer_m: Some(u64::MAX),
        state: Some(VehicleState::Reserved),
        locked: Some(true),
        quality: Default::default(),
    };
    let bare = Point {
        ts: T0 + 2,
        lat_e6: -90_000_000,
        lon_e6: 180_000_000,
        ..Point::default()
    };
    let mut some = bare;
    some.ts = T0 + 3;
    some.locked = Some(false);
    some.altitude_dm = Some(i32::MAX);
    some.odometer_m = Some(0);
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    // The longest id there may be (64 characters), with every kind of character allowed.
    let id = vid(&format!("Az09_.:-{}", "z".repeat(56)));
    let fixes: Vec<Fix> = [full, bare, some]
        .iter()
        .map(|p| Fix {
            vehicle_id: id.clone(),
            point: *p,
        })
        .collect();
    assert_eq!(append(w.as_mut(), &fixes), vec![true; 3]);
    w.close().unwrap();
    assert_eq!(h.track(&id, T0, T0 + H).unwrap(), vec![full, bare, some]);
    let mut latest = Vec::new();
    h.for_each_latest(&mut |v, p| latest.push((v, p))).unwrap();
    assert_eq!(latest, vec![(id, some)]);
}

fn re_appending_is_idempotent_everywhere<B: Backend>(b: &B) {
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    let fixes: Vec<Fix> = (0..200).map(|i| fix("v1", T0 + i * 1000)).collect();
    append(w.as_mut(), &fixes);
    // Some of these are checkpointed by now, some still in a memtable (embedded).
    assert!(append(w.as_mut(), &fixes).iter().all(|n| !*n));
    // A repeat inside one append counts once.
    let twice = [fix("v2", T0), fix("v2", T0)];
    assert_eq!(append(w.as_mut(), &twice), vec![true, false]);
    // Old and new mixed: only the new are stored.
    let mixed = [
        fix("v1", T0 + 5000),
        fix("v1", T0 + 500),
        fix("v1", T0 + 999_000),
    ];
    assert_eq!(append(w.as_mut(), &mixed), vec![false, true, true]);
    w.close().unwrap();
    drop(h);
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    assert!(
        append(w.as_mut(), &fixes).iter().all(|n| !*n),
        "after restart too"
    );
    assert_eq!(append(w.as_mut(), &mixed), vec![false; 3]);
    assert_eq!(track_ts(h.as_ref(), "v1", T0, T0 + H).len(), 202);
    assert_eq!(track_ts(h.as_ref(), "v2", T0, T0 + H), vec![T0]);
}

fn late_fixes_land_in_their_own_bucket_and_hour_boundaries_are_exact<B: Backend>(b: &B) {
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    append(w.as_mut(), &[fix("v1", T0 + 2 * H + 5)]);
    append(w.as_mut(), &[fix("v1", T0 + H)]); // exactly on the hour, late
    append(w.as_mut(), &[fix("v1", T0 + H - 1)]); // last ms of the previous hour, late
    w.close().unwrap();
    let buckets: Vec<(i64, Vec<i64>)> = scan_all(h.as_ref(), T0, T0 + 3 * H)
        .into_iter()
        .map(|(b, _, ts)| (b, ts))
        .collect();
    assert_eq!(
        buckets,
        vec![
            (T0, vec![T0 + H - 1]),
            (T0 + H, vec![T0 + H]),
            (T0 + 2 * H, vec![T0 + 2 * H + 5]),
        ]
    );
    assert_eq!(track_ts(h.as_ref(), "v1", T0 + H, T0 + H), vec![T0 + H]);
    assert_eq!(
        track_ts(h.as_ref(), "v1", T0 + H - 1, T0 + H),
        vec![T0 + H - 1, T0 + H]
    );
}

fn tracks_cross_buckets_and_days_in_order<B: Backend>(b: &B) {
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    let fixes: Vec<Fix> = (0..60)
        .map(|i| fix("v1", T0 - 3 * H + i * 10 * 60_000))
        .collect();
    // Sent out of order.
    let mut shuffled = fixes.clone();
    shuffled.reverse();
    append(w.as_mut(), &shuffled[..30]);
    append(w.as_mut(), &shuffled[30..]);
    let all = track_ts(h.as_ref(), "v1", T0 - 3 * H, T0 + 10 * H);
    assert_eq!(all, fixes.iter().map(|f| f.point.ts).collect::<Vec<_>>());
    let part = track_ts(h.as_ref(), "v1", T0 - 10 * 60_000, T0 + 10 * 60_000);
    assert_eq!(part, vec![T0 - 10 * 60_000, T0, T0 + 10 * 60_000]);
    assert!(track_ts(h.as_ref(), "v1", T0 + 1, T0 - 1).is_empty());
    assert!(track_ts(h.as_ref(), "nobody", T0 - H, T0 + H).is_empty());
}

fn fleet_scan_is_in_bucket_then_vehicle_order<B: Backend>(b: &B) {
    let h = b.open_unflushed();
    let mut w0 = h.writer(0).unwrap();
    let mut w1 = h.writer(1).unwrap();
    append(w0.as_mut(), &[fix("b", T0 + 10), fix("b", T0 + H + 10)]);
    append(w1.as_mut(), &[fix("a", T0 + H + 20), fix("c", T0 + 30)]);
    append(w1.as_mut(), &[fix("c", T0 + 20), fix("C", T0 + 40)]);
    w0.close().unwrap(); // embedded: "b" is in the engine, "a" and "c" still in a memtable
    let seen: Vec<(i64, String, Vec<i64>)> = scan_all(h.as_ref(), T0, T0 + 2 * H)
        .into_iter()
        .map(|(b, v, ts)| (b - T0, v, ts.iter().map(|t| t - T0).collect()))
        .collect();
    // Vehicle ids in byte order: "C" before "a".
    assert_eq!(
        seen,
        vec![
            (0, "C".into(), vec![40]),
            (0, "b".into(), vec![10]),
            (0, "c".into(), vec![20, 30]),
            (H, "a".into(), vec![H + 20]),
            (H, "b".into(), vec![H + 10]),
        ]
    );
    // Points are cut to the range; a bucket with none left is not visited.
    let cut = scan_all(h.as_ref(), T0 + 25, T0 + H + 15);
    assert_eq!(
        cut.iter()
            .map(|(_, v, ts)| (v.as_str(), ts.len()))
            .collect::<Vec<_>>(),
        vec![("C", 1), ("c", 1), ("b", 1)]
    );
    let mut first = 0;
    h.scan(T0, T0 + 2 * H, &mut |_| {
        first += 1;
        false
    })
    .unwrap();
    assert_eq!(first, 1, "visit returning false stops the scan");
    w1.close().unwrap();
}

fn retention_drops_whole_buckets_only<B: Backend>(b: &B) {
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    append(
        w.as_mut(),
        &[
            fix("v1", T0 + 5),
            fix("v1", T0 + H - 1),
            fix("v1", T0 + H + 5),
            fix("v2", T0 + 7),
        ],
    );
    w.close().unwrap();
    // The cutoff lies inside the second bucket: only the first ends before it.
    assert_eq!(
        h.drop_before(T0 + H + 1).unwrap(),
        2,
        "two vehicles' buckets"
    );
    assert_eq!(track_ts(h.as_ref(), "v1", T0, T0 + 2 * H), vec![T0 + H + 5]);
    assert!(track_ts(h.as_ref(), "v2", T0, T0 + 2 * H).is_empty());
    assert_eq!(h.drop_before(T0 + H + 1).unwrap(), 0);
}

fn retention_drops_whole_days<B: Backend>(b: &B) {
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    let mut fixes = Vec::new();
    for day in 0..4 {
        for hour in [0, 5, 23] {
            fixes.push(fix("v1", T0 - 3 * DAY + day * DAY + hour * H + 1));
        }
    }
    append(w.as_mut(), &fixes);
    w.close().unwrap();
    // Two whole days and the first bucket of the third.
    assert_eq!(h.drop_before(T0 - DAY + H).unwrap(), 7);
    let left = track_ts(h.as_ref(), "v1", T0 - 3 * DAY, T0 + DAY);
    assert_eq!(
        left,
        fixes[7..].iter().map(|f| f.point.ts).collect::<Vec<_>>()
    );
    // Writing into a day whose storage was dropped works (a late fix after retention).
    let mut w = h.writer(0).unwrap();
    assert_eq!(
        append(w.as_mut(), &[fix("v1", T0 - 3 * DAY + 9)]),
        vec![true]
    );
    w.close().unwrap();
    assert_eq!(
        track_ts(h.as_ref(), "v1", T0 - 3 * DAY, T0 - 2 * DAY).len(),
        1
    );
}

fn compaction_merges_chunks_without_changing_reads<B: Backend>(b: &B) {
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    for i in 0..10 {
        let chunk: Vec<Fix> = (0..60)
            .map(|j| fix("v1", T0 + (i * 60 + j) * 1000))
            .collect();
        append(w.as_mut(), &chunk);
    }
    w.close().unwrap();
    let before = h.track(&vid("v1"), T0, T0 + H).unwrap();
    assert_eq!(before.len(), 600);
    let merged = u64::from(B::COMPACTS);
    assert!(
        h.maintain(T0 + H - 1).unwrap() == 0,
        "an open bucket is not compacted"
    );
    assert_eq!(h.maintain(T0 + 2 * H).unwrap(), merged);
    assert_eq!(h.track(&vid("v1"), T0, T0 + H).unwrap(), before);
    assert_eq!(h.maintain(T0 + 2 * H).unwrap(), 0);
    // A late fix after compaction is stored, found as a duplicate, and compacted again.
    let mut w = h.writer(0).unwrap();
    assert_eq!(append(w.as_mut(), &[fix("v1", T0 + 700_000)]), vec![true]);
    assert_eq!(append(w.as_mut(), &[fix("v1", T0 + 1000)]), vec![false]);
    w.close().unwrap();
    assert_eq!(h.maintain(T0 + 2 * H).unwrap(), merged);
    assert_eq!(h.track(&vid("v1"), T0, T0 + H).unwrap().len(), 601);
}

fn latest_is_the_newest_fix_of_each_vehicle<B: Backend>(b: &B) {
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    append(w.as_mut(), &[fix("a", T0 + 5000), fix("b", T0)]);
    append(w.as_mut(), &[fix("a", T0 + 1000)]); // late: must not become latest
    w.close().unwrap();
    let mut latest = Vec::new();
    h.for_each_latest(&mut |id, p| latest.push((id.as_str().to_owned(), p)))
        .unwrap();
    latest.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        latest,
        vec![
            ("a".into(), fix("a", T0 + 5000).point),
            ("b".into(), fix("b", T0).point)
        ]
    );
}

fn a_writer_that_dies_without_closing_loses_nothing_acked<B: Backend>(b: &B) {
    let fixes: Vec<Fix> = (0..120).map(|i| fix("v1", T0 + i * 1000)).collect();
    {
        let h = b.open();
        let mut w = h.writer(0).unwrap();
        append(w.as_mut(), &fixes[..70]);
        append(w.as_mut(), &fixes[70..]);
        // No close: whatever the writer holds in memory is lost, what it acked is not.
        drop(w);
    }
    let h = b.open();
    assert_eq!(track_ts(h.as_ref(), "v1", T0, T0 + H).len(), 120);
    let mut latest = Vec::new();
    h.for_each_latest(&mut |_, p| latest.push(p.ts)).unwrap();
    assert_eq!(latest, vec![T0 + 119_000]);
    let mut w = h.writer(0).unwrap();
    assert!(
        append(w.as_mut(), &fixes).iter().all(|n| !*n),
        "no duplicates after a restart"
    );
}

fn two_writers_append_different_vehicles_at_once<B: Backend>(b: &B) {
    let h = b.open();
    let vehicles = |w: usize| (0..20).map(move |v| format!("w{w}-v{v}"));
    std::thread::scope(|scope| {
        for shard in 0..2 {
            let h = h.as_ref();
            scope.spawn(move || {
                let mut w = h.writer(shard).unwrap();
                for second in 0..50 {
                    let batch: Vec<Fix> = vehicles(shard)
                        .map(|v| fix(&v, T0 + H - 25_000 + second * 1000))
                        .collect();
                    assert!(append(w.as_mut(), &batch).iter().all(|n| *n));
                }
                w.close().unwrap();
            });
        }
    });
    for shard in 0..2 {
        for v in vehicles(shard) {
            let got = track_ts(h.as_ref(), &v, T0, T0 + 2 * H);
            let want: Vec<i64> = (0..50).map(|s| T0 + H - 25_000 + s * 1000).collect();
            assert_eq!(got, want, "{v}");
        }
    }
    let scanned = scan_all(h.as_ref(), T0, T0 + 2 * H);
    assert_eq!(
        scanned.len(),
        80,
        "40 vehicles, each in two buckets, each once"
    );
    assert!(
        scanned
            .windows(2)
            .all(|w| (w[0].0, &w[0].1) < (w[1].0, &w[1].1))
    );
    let mut latest = 0;
    h.for_each_latest(&mut |_, p| {
        assert_eq!(p.ts, T0 + H + 24_000);
        latest += 1;
    })
    .unwrap();
    assert_eq!(latest, 40);
}

/// Batch `i` of the kill test: 6 vehicles, each with fixes in two buckets, one of them late
/// (an hour back), so a batch spans several chunks and buckets.
fn kill_batch(i: i64) -> Vec<Fix> {
    let mut out = Vec::new();
    for v in 0..6 {
        let id = format!("k{v}");
        out.push(fix(&id, T0 + 2 * H + i * 1000));
        out.push(fix(&id, T0 + 3 * H + i * 1000));
        out.push(fix(&id, T0 + H + i * 1000 + 1)); // late into an older bucket
    }
    out
}

/// The child: appends batches forever, printing the number of each one acked.
fn kill_child_body<B: Backend>(b: &B) {
    let h = b.open();
    let mut w = h.writer(0).unwrap();
    let stdout = std::io::stdout();
    // Within the buckets kill_batch assumes (3,600 batches).
    for i in 0..3_000 {
        append(w.as_mut(), &kill_batch(i));
        use std::io::Write;
        let mut out = stdout.lock();
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
}

/// Runs `kill_child` in a child process, kills it with SIGKILL while it is appending, and
/// checks that every acked batch is stored exactly once and the batch in flight is stored
/// wholly or not at all.
fn killed_writer<B: Backend>(b: &B, child_test: &str) {
    let name = child_test
        .split_once("::")
        .map_or(child_test, |(_, rest)| rest);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KICKSTAND_CONFORMANCE_CHILD", b.locator())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = -1;
    while acked < 30 {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(n) = line.strip_prefix("acked ") {
                    acked = n.parse().unwrap();
                }
            }
            _ => panic!("the child stopped before batch 30 (acked {acked})"),
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();
    // Lines printed before the kill may still be in the pipe.
    for line in lines.map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().unwrap();
        }
    }

    let h = b.open();
    let stored = |f: &Fix| {
        h.track(&f.vehicle_id, f.point.ts, f.point.ts)
            .unwrap()
            .contains(&f.point)
    };
    for i in 0..=acked {
        assert!(kill_batch(i).iter().all(stored), "acked batch {i} is whole");
    }
    let in_flight: Vec<bool> = kill_batch(acked + 1).iter().map(stored).collect();
    if B::ATOMIC_APPEND {
        assert!(
            in_flight.iter().all(|s| *s) || in_flight.iter().all(|s| !*s),
            "the batch in flight is whole or absent: {in_flight:?}"
        );
    }
    assert!(
        kill_batch(acked + 2).iter().all(|f| !stored(f)),
        "nothing after the batch in flight"
    );
    // No duplicates anywhere: each bucket once per vehicle, each ts once.
    let scanned = scan_all(h.as_ref(), T0, T0 + 4 * H + DAY);
    let in_flight_stored = in_flight.iter().filter(|s| **s).count();
    assert_eq!(scanned.len(), 6 * 3, "6 vehicles × 3 buckets, each once");
    for (_, _, ts) in &scanned {
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    }
    assert_eq!(
        scanned.iter().map(|s| s.2.len()).sum::<usize>(),
        (acked + 1) as usize * 18 + in_flight_stored
    );
    // Replaying everything a device might resend stores exactly what is missing.
    let mut w = h.writer(0).unwrap();
    for i in 0..=acked {
        let again = append(w.as_mut(), &kill_batch(i));
        assert_eq!(again, vec![false; 18], "replay of batch {i}");
    }
    let missing: Vec<bool> = in_flight.iter().map(|s| !*s).collect();
    let again = append(w.as_mut(), &kill_batch(acked + 1));
    assert_eq!(again, missing, "replay of the batch in flight");
    w.close().unwrap();
    let total: usize = scan_all(h.as_ref(), T0, T0 + 4 * H + DAY)
        .iter()
        .map(|s| s.2.len())
        .sum();
    assert_eq!(total, (acked + 2) as usize * 18, "everything once after it");
}

/// The embedded writer's side of ADR 0024: once refused (the events of its last linked append
/// never became durable) it takes nothing more and never checkpoints, so the record stays in
/// the WAL, where recovery drops it.
#[test]
fn a_refused_embedded_writer_leaves_its_linked_record_for_recovery_to_drop() {
    let dir = tempfile::tempdir().unwrap();
    // Every append and tick finds a checkpoint due.
    let config = EmbeddedConfig {
        checkpoint_fixes: 1,
        checkpoint_interval_ms: 0,
        compact_grace_secs: 0,
    };
    let t = 1_795_564_800_000;
    let history = EmbeddedHistory::open(dir.path(), BucketSpan::HOUR, config.clone()).unwrap();
    let mut w = history.writer(0).unwrap();
    let mut is_new = Vec::new();
    w.append_linked(&[fix("kept", t)], &mut is_new, 1).unwrap();
    w.append_linked(&[fix("refused", t)], &mut is_new, 2)
        .unwrap();
    w.refuse();
    assert!(matches!(w.tick(), Err(HistoryError::Poisoned)));
    assert!(matches!(
        w.append(&[fix("after", t)], &mut is_new),
        Err(HistoryError::Poisoned)
    ));
    drop(w);
    drop(history);
    let history =
        EmbeddedHistory::open_with_events(dir.path(), BucketSpan::HOUR, config, &|r| r != 2)
            .unwrap();
    let points = |v: &str| {
        history
            .track(&VehicleId::new(v).unwrap(), t - 1, t + 1)
            .unwrap()
            .len()
    };
    assert_eq!(points("kept"), 1);
    assert_eq!(points("refused"), 0);
    assert_eq!(points("after"), 0);
}
