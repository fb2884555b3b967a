//! The history contract checked against a real MongoDB server, for both layouts, plus what is
//! particular to MongoDB (a replay after a crash inside an append, `near`, refusing another
//! layout or span, retention changed in place). Gated by `crate::testing`: these run only when
//! `KICKSTAND_TEST_MONGODB_URL` is set (e.g. `mongodb://127.0.0.1:27017`) and are skipped with
//! a notice otherwise (or fail, under `KICKSTAND_REQUIRE_SERVICES=1`). No server can be
//! installed where this repository's CI runs, so there they are skipped. Each test works in a
//! database of its own and drops it at the end.
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

fn track_ts(h: &dyn HistoryStore, id: &str, from: i64, to: i64) -> Vec<i64> {
    h.track(&vid(id), from, to)
        .unwrap()
        .iter()
        .map(|p| p.ts)
        .collect()
}

fn latest(h: &dyn HistoryStore) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    h.for_each_latest(&mut |id, p| out.push((id.as_str().to_owned(), p.ts)))
        .unwrap();
    out.sort();
    out
}

#[test]
fn appended_fixes_read_back_exactly_and_after_reopening() {
    each_layout(|config, h| {
        let mut w = h.writer(0).unwrap();
        let mut fixes: Vec<Fix> = (0..500).map(|i| fix("v1", T0 + i * 1000)).collect();
        // Every optional field, at its ends.
        fixes[3].point = Point {
            speed_dkmh: Some(2500),
            heading_ddeg: Some(3600),
            accuracy_dm: Some(u32::MAX),
            altitude_dm: Some(-10_000),
            odometer_m: Some(1_000_000_000_000),
            locked: Some(true),
            state: Some(VehicleState::NonOperational),
            ..fixes[3].point
        };
        for chunk in fixes.chunks(37) {
            assert!(append(w.as_mut(), chunk).iter().all(|n| *n));
        }
        let want: Vec<Point> = fixes.iter().map(|f| f.point).collect();
        assert_eq!(h.track(&vid("v1"), T0, T0 + H).unwrap(), want);
        w.close().unwrap();
        let again = open(config);
        assert_eq!(again.track(&vid("v1"), T0, T0 + H).unwrap(), want);
    });
}

#[test]
fn re_appending_is_idempotent_everywhere() {
    each_layout(|config, h| {
        let mut w = h.writer(0).unwrap();
        let fixes: Vec<Fix> = (0..200).map(|i| fix("v1", T0 + i * 1000)).collect();
        append(w.as_mut(), &fixes);
        assert!(append(w.as_mut(), &fixes).iter().all(|n| !*n));
        let twice = [fix("v2", T0), fix("v2", T0)];
        assert_eq!(append(w.as_mut(), &twice), vec![true, false]);
        w.close().unwrap();
        let h = open(config);
        let mut w = h.writer(0).unwrap();
        assert!(
            append(w.as_mut(), &fixes).iter().all(|n| !*n),
            "after reopening too"
        );
        assert_eq!(track_ts(&h, "v1", T0, T0 + H).len(), 200);
    });
}

#[test]
fn late_fixes_land_in_their_own_bucket_and_hour_boundaries_are_exact() {
    each_layout(|_, h| {
        let mut w = h.writer(0).unwrap();
        append(w.as_mut(), &[fix("v1", T0 + 2 * H + 5)]);
        append(w.as_mut(), &[fix("v1", T0 + H)]);
        append(w.as_mut(), &[fix("v1", T0 + H - 1)]);
        let mut buckets = Vec::new();
        h.scan(T0, T0 + 3 * H, &mut |b| {
            buckets.push((
                b.bucket_start,
                b.points.iter().map(|p| p.ts).collect::<Vec<_>>(),
            ));
            true
        })
        .unwrap();
        assert_eq!(
            buckets,
            vec![
                (T0, vec![T0 + H - 1]),
                (T0 + H, vec![T0 + H]),
                (T0 + 2 * H, vec![T0 + 2 * H + 5]),
            ]
        );
        assert_eq!(track_ts(h, "v1", T0 + H, T0 + H), vec![T0 + H]);
    });
}

#[test]
fn tracks_cross_buckets_in_order() {
    each_layout(|_, h| {
        let mut w = h.writer(0).unwrap();
        let fixes: Vec<Fix> = (0..60)
            .map(|i| fix("v1", T0 - 3 * H + i * 10 * 60_000))
            .collect();
        let mut shuffled = fixes.clone();
        shuffled.reverse();
        append(w.as_mut(), &shuffled[..30]);
        append(w.as_mut(), &shuffled[30..]);
        let all = track_ts(h, "v1", T0 - 3 * H, T0 + 10 * H);
        assert_eq!(all, fixes.iter().map(|f| f.point.ts).collect::<Vec<_>>());
        let part = track_ts(h, "v1", T0 - 10 * 60_000, T0 + 10 * 60_000);
        assert_eq!(part, vec![T0 - 10 * 60_000, T0, T0 + 10 * 60_000]);
        assert!(track_ts(h, "v1", T0 + 1, T0 - 1).is_empty());
        assert!(track_ts(h, "nobody", T0 - H, T0 + H).is_empty());
    });
}

#[test]
fn fleet_scan_is_in_bucket_then_vehicle_order_and_stops_when_asked() {
    each_layout(|_, h| {
        let mut w0 = h.writer(0).unwrap();
        let mut w1 = h.writer(1).unwrap();
        append(w0.as_mut(), &[fix("b", T0 + 10), fix("b", T0 + H + 10)]);
        append(w1.as_mut(), &[fix("a", T0 + H + 20), fix("c", T0 + 30)]);
        let mut seen = Vec::new();
        h.scan(T0, T0 + 2 * H, &mut |b| {
            seen.push((b.bucket_start - T0, b.vehicle_id.as_str().to_owned()));
            true
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (0, "b".into()),
                (0, "c".into()),
                (H, "a".into()),
                (H, "b".into())
            ]
        );
        let mut first = 0;
        h.scan(T0, T0 + 2 * H, &mut |_| {
            first += 1;
            false
        })
        .unwrap();
        assert_eq!(first, 1);
    });
}

#[test]
fn retention_drops_whole_buckets_only() {
    each_layout(|_, h| {
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
        match h.drop_before(T0 + H + 1) {
            // Time-series deletes by time need 7.0; an older test server says so plainly.
            Err(HistoryError::Config(msg)) => assert!(msg.contains("7.0"), "{msg}"),
            result => {
                assert_eq!(result.unwrap(), 2);
                assert_eq!(track_ts(h, "v1", T0, T0 + 2 * H), vec![T0 + H + 5]);
                assert_eq!(h.drop_before(T0 + H + 1).unwrap(), 0);
            }
        }
    });
}

#[test]
fn compaction_merges_chunks_without_changing_reads() {
    each_layout(|config, h| {
        let mut w = h.writer(0).unwrap();
        for i in 0..10 {
            let chunk: Vec<Fix> = (0..60)
                .map(|j| fix("v1", T0 + (i * 60 + j) * 1000))
                .collect();
            append(w.as_mut(), &chunk);
        }
        let before = h.track(&vid("v1"), T0, T0 + H).unwrap();
        assert_eq!(before.len(), 600);
        assert_eq!(h.maintain(T0 + H - 1).unwrap(), 0, "an open bucket stays");
        let want = match config.layout {
            MongoLayout::Buckets => 1,
            MongoLayout::Timeseries => 0,
        };
        assert_eq!(h.maintain(T0 + 2 * H).unwrap(), want);
        assert_eq!(h.track(&vid("v1"), T0, T0 + H).unwrap(), before);
        assert_eq!(h.maintain(T0 + 2 * H).unwrap(), 0);
        // A late fix after compaction lands in a new chunk, merged on the next pass.
        assert_eq!(append(w.as_mut(), &[fix("v1", T0 + 3_599_999)]), vec![true]);
        assert_eq!(append(w.as_mut(), &[fix("v1", T0 + 1000)]), vec![false]);
        assert_eq!(h.maintain(T0 + 2 * H).unwrap(), want);
        assert_eq!(h.track(&vid("v1"), T0, T0 + H).unwrap().len(), 601);
        let stats = h.stats().unwrap();
        assert!(stats.disk_bytes > 0);
    });
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
