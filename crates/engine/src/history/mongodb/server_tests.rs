//! What is particular to MongoDB, checked against a real server for both layouts (a replay after
//! a crash inside an append, `near`, refusing another layout or span); the history contract
//! itself is the generic conformance suite (`history/tests.rs`, `mongodb_buckets` and
//! `mongodb_timeseries`). Gated by `crate::testing`: these run only when
//! `KICKSTAND_TEST_MONGODB_URL` is set (e.g. `mongodb://127.0.0.1:27017`) and are skipped with
//! a notice otherwise, also under `KICKSTAND_REQUIRE_SERVICES=1` (see
//! `testing::NOT_ON_CI_MACHINES`): no server can be installed where this repository's CI
//! runs. Each test works in a database of its own and drops it at the end.
//!
//! [`test_config`] is also the hook through which the generic conformance suite opens this
//! backend.

use super::document as d;
use super::{MongoConfig, MongoHistory, MongoLayout};
use crate::history::{HistoryError, HistoryStore, HistoryWriter};
use kickstand_domain::{BucketSpan, Fix, Point, VehicleId, VehicleState};

/// A config for a fresh, uniquely named database on the test server
/// (`KICKSTAND_TEST_MONGODB_URL`), or `None` when the variable is not set.
pub(crate) fn test_config(layout: MongoLayout) -> Option<MongoConfig> {
    Some(MongoConfig {
        url: crate::testing::service_url("MONGODB")?,
        database: crate::testing::unique_name("kickstand_test"),
        layout,
        chunk_max_points: 50,
        compact_grace_secs: 0,
        ..MongoConfig::default()
    })
}

/// Opens a fresh test store, or `None` when the server is unreachable or (timeseries layout)
/// older than 6.3, with a notice.
pub(crate) fn test_store(config: &MongoConfig) -> Option<MongoHistory> {
    match MongoHistory::open(config, BucketSpan::HOUR, 0) {
        Ok(h) => Some(h),
        Err(HistoryError::Config(msg)) if msg.contains("needs MongoDB") => {
            eprintln!("skipped: {msg}");
            None
        }
        Err(e) => crate::testing::unreachable("MongoDB", e),
    }
}

const H: i64 = 3_600_000;
/// 2026-11-25T00:00:00Z.
const T0: i64 = 1_795_564_800_000;
const LAYOUTS: [MongoLayout; 2] = [MongoLayout::Buckets, MongoLayout::Timeseries];

fn open(config: &MongoConfig) -> MongoHistory {
    MongoHistory::open(config, BucketSpan::HOUR, 0).unwrap()
}

/// Runs `check` on a fresh database of each layout, then drops the database.
fn each_layout(check: impl Fn(&MongoConfig, &MongoHistory)) {
    for layout in LAYOUTS {
        let Some(config) = test_config(layout) else {
            return;
        };
        let Some(h) = test_store(&config) else {
            continue;
        };
        check(&config, &h);
        h.drop_database().unwrap();
    }
}

fn fix(id: &str, ts: i64) -> Fix {
    Fix {
        vehicle_id: vid(id),
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

fn vid(id: &str) -> VehicleId {
    VehicleId::new(id).unwrap()
}

fn append(w: &mut dyn HistoryWriter, fixes: &[Fix]) -> Vec<bool> {
    let mut out = Vec::new();
    w.append(fixes, &mut out).unwrap();
    assert_eq!(out.len(), fixes.len());
    out
}

fn latest(h: &dyn HistoryStore) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    h.for_each_latest(&mut |id, p| out.push((id.as_str().to_owned(), p.ts)))
        .unwrap();
    out.sort();
    out
}

#[test]
fn latest_is_the_newest_fix_of_each_vehicle_and_near_finds_it() {
    each_layout(|_, h| {
        let mut w = h.writer(0).unwrap();
        append(w.as_mut(), &[fix("a", T0 + 5000), fix("b", T0)]);
        append(w.as_mut(), &[fix("a", T0 + 1000)]);
        assert_eq!(latest(h), vec![("a".into(), T0 + 5000), ("b".into(), T0)]);
        let a = fix("a", T0 + 5000).point;
        // "b" lies about 0.7 m away.
        let near = h.near(a.lat_e6, a.lon_e6, 0.1, 10).unwrap();
        assert_eq!(near, vec![(vid("a"), a)]);
        let both = h.near(a.lat_e6, a.lon_e6, 10_000.0, 10).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].0, vid("a"), "nearest first");
        assert_eq!(h.near(a.lat_e6, a.lon_e6, 10_000.0, 1).unwrap().len(), 1);
    });
}

/// The process died after some of an append's fix writes landed and before `vehicle_last`:
/// the replay stores the rest once, reports the landed ones as duplicates and repairs
/// `vehicle_last`.
#[test]
fn a_replay_after_a_crash_inside_an_append_neither_loses_nor_duplicates() {
    each_layout(|config, h| {
        let fixes: Vec<Fix> = (0..120).map(|i| fix("v1", T0 + i * 1000)).collect();
        let mut w = h.writer(0).unwrap();
        append(w.as_mut(), &fixes[..10]);
        // What the dead append managed to write: fixes 10..70 and the newest one, 119, but
        // nothing of vehicle_last.
        let landed: Vec<&Fix> = fixes[10..70].iter().chain([&fixes[119]]).collect();
        let s = h.shared();
        s.block_on(async {
            match config.layout {
                MongoLayout::Buckets => {
                    for piece in landed.chunks(7) {
                        let points: Vec<Point> = piece.iter().map(|f| f.point).collect();
                        let start = BucketSpan::HOUR.start_of(points[0].ts);
                        let up = d::chunk_append(&vid("v1"), start, &points, 50);
                        s.chunks
                            .update_one(up.filter, up.update)
                            .upsert(true)
                            .await
                            .unwrap();
                    }
                }
                MongoLayout::Timeseries => {
                    let docs = d::fix_documents(landed.iter().map(|f| (&f.vehicle_id, &f.point)));
                    s.fixes.insert_many(docs).ordered(false).await.unwrap();
                }
            }
        });
        drop(w);
        assert_eq!(
            latest(h),
            vec![("v1".into(), T0 + 9000)],
            "vehicle_last lags"
        );
        let h = open(config);
        let mut w = h.writer(0).unwrap();
        let flags = append(w.as_mut(), &fixes);
        for (i, new) in flags.iter().enumerate() {
            let landed = i < 70 || i == 119;
            assert_eq!(*new, !landed, "fix {i}");
        }
        assert_eq!(
            h.track(&vid("v1"), T0, T0 + H).unwrap(),
            fixes.iter().map(|f| f.point).collect::<Vec<_>>()
        );
        // No new fix was newer than 119: the repair of the cold vehicle moved vehicle_last.
        assert_eq!(latest(&h), vec![("v1".into(), T0 + 119_000)]);
        let h = open(config);
        let mut w = h.writer(0).unwrap();
        assert!(append(w.as_mut(), &fixes).iter().all(|n| !*n));
    });
}

#[test]
fn a_database_of_another_span_or_layout_is_refused() {
    let Some(config) = test_config(MongoLayout::Buckets) else {
        return;
    };
    let Some(h) = test_store(&config) else {
        return;
    };
    let day = BucketSpan::from_secs(86_400).unwrap();
    assert!(matches!(
        MongoHistory::open(&config, day, 0),
        Err(HistoryError::Config(_))
    ));
    let other = MongoConfig {
        layout: MongoLayout::Timeseries,
        ..config.clone()
    };
    assert!(matches!(
        MongoHistory::open(&other, BucketSpan::HOUR, 0),
        Err(HistoryError::Config(_))
    ));
    // Retention can be turned on, changed and off again in place.
    for days in [30, 7, 0] {
        MongoHistory::open(&config, BucketSpan::HOUR, days).unwrap();
    }
    h.drop_database().unwrap();
}
