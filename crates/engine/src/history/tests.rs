//! The history conformance suite: the contract of [`HistoryStore`], checked on real files.
//! Every backend runs these checks; the embedded one runs them here.

use super::embedded::{EmbeddedConfig, EmbeddedHistory};
use super::*;
use kickstand_domain::{BucketSpan, VehicleState};
use std::path::Path;

const H: i64 = 3_600_000;
/// 2026-11-25T00:00:00Z.
const T0: i64 = 1_795_564_800_000;

fn open(dir: &Path, config: EmbeddedConfig) -> EmbeddedHistory {
    EmbeddedHistory::open(dir, BucketSpan::HOUR, config).unwrap()
}

fn small_checkpoints() -> EmbeddedConfig {
    EmbeddedConfig {
        checkpoint_fixes: 50,
        checkpoint_interval_ms: 60_000,
        compact_grace_secs: 0,
    }
}

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

#[test]
fn appended_fixes_read_back_exactly_before_and_after_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), small_checkpoints());
    let mut w = h.writer(0).unwrap();
    let fixes: Vec<Fix> = (0..500).map(|i| fix("v1", T0 + i * 1000)).collect();
    for chunk in fixes.chunks(37) {
        assert!(append(w.as_mut(), chunk).iter().all(|n| *n));
    }
    let got = h.track(&vid("v1"), T0, T0 + H).unwrap();
    let want: Vec<Point> = fixes.iter().map(|f| f.point).collect();
    assert_eq!(got, want);
    w.close().unwrap();
    drop(h);
    let h = open(dir.path(), small_checkpoints());
    assert_eq!(h.track(&vid("v1"), T0, T0 + H).unwrap(), want);
}

#[test]
fn re_appending_is_idempotent_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), small_checkpoints());
    let mut w = h.writer(0).unwrap();
    let fixes: Vec<Fix> = (0..200).map(|i| fix("v1", T0 + i * 1000)).collect();
    append(w.as_mut(), &fixes);
    // Some of these are checkpointed by now, some still in the memtable.
    assert!(append(w.as_mut(), &fixes).iter().all(|n| !*n));
    // A repeat inside one append counts once.
    let twice = [fix("v2", T0), fix("v2", T0)];
    assert_eq!(append(w.as_mut(), &twice), vec![true, false]);
    w.close().unwrap();
    drop(h);
    let h = open(dir.path(), small_checkpoints());
    let mut w = h.writer(0).unwrap();
    assert!(
        append(w.as_mut(), &fixes).iter().all(|n| !*n),
        "after restart too"
    );
    assert_eq!(track_ts(&h, "v1", T0, T0 + H).len(), 200);
}

#[test]
fn late_fixes_land_in_their_own_bucket_and_hour_boundaries_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), small_checkpoints());
    let mut w = h.writer(0).unwrap();
    append(w.as_mut(), &[fix("v1", T0 + 2 * H + 5)]);
    append(w.as_mut(), &[fix("v1", T0 + H)]); // exactly on the hour, late
    append(w.as_mut(), &[fix("v1", T0 + H - 1)]); // last ms of the previous hour, late
    w.close().unwrap();
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
    assert_eq!(track_ts(&h, "v1", T0 + H, T0 + H), vec![T0 + H]);
}

#[test]
fn tracks_cross_buckets_and_days_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), small_checkpoints());
    let mut w = h.writer(0).unwrap();
    let fixes: Vec<Fix> = (0..60)
        .map(|i| fix("v1", T0 - 3 * H + i * 10 * 60_000))
        .collect();
    // Sent out of order.
    let mut shuffled = fixes.clone();
    shuffled.reverse();
    append(w.as_mut(), &shuffled[..30]);
    append(w.as_mut(), &shuffled[30..]);
    let all = track_ts(&h, "v1", T0 - 3 * H, T0 + 10 * H);
    assert_eq!(all, fixes.iter().map(|f| f.point.ts).collect::<Vec<_>>());
    let part = track_ts(&h, "v1", T0 - 10 * 60_000, T0 + 10 * 60_000);
    assert_eq!(part, vec![T0 - 10 * 60_000, T0, T0 + 10 * 60_000]);
    assert!(track_ts(&h, "v1", T0 + 1, T0 - 1).is_empty());
    assert!(track_ts(&h, "nobody", T0 - H, T0 + H).is_empty());
}

#[test]
fn fleet_scan_is_in_bucket_then_vehicle_order_and_merges_memtables() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(
        dir.path(),
        EmbeddedConfig {
            checkpoint_fixes: 1_000_000,
            ..small_checkpoints()
        },
    );
    let mut w0 = h.writer(0).unwrap();
    let mut w1 = h.writer(1).unwrap();
    append(w0.as_mut(), &[fix("b", T0 + 10), fix("b", T0 + H + 10)]);
    append(w1.as_mut(), &[fix("a", T0 + H + 20), fix("c", T0 + 30)]);
    w0.close().unwrap(); // "b" is in the engine, "a" and "c" still in a memtable
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
    assert_eq!(first, 1, "visit returning false stops the scan");
    w1.close().unwrap();
}

#[test]
fn retention_drops_whole_buckets_only() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), small_checkpoints());
    let mut w = h.writer(0).unwrap();
    append(
        w.as_mut(),
        &[
            fix("v1", T0 + 5),
            fix("v1", T0 + H - 1),
            fix("v1", T0 + H + 5),
        ],
    );
    w.close().unwrap();
    // The cutoff lies inside the second bucket: only the first ends before it.
    assert_eq!(h.drop_before(T0 + H + 1).unwrap(), 1);
    assert_eq!(track_ts(&h, "v1", T0, T0 + 2 * H), vec![T0 + H + 5]);
    assert_eq!(h.drop_before(T0 + H + 1).unwrap(), 0);
}

#[test]
fn compaction_merges_chunks_without_changing_reads() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), small_checkpoints());
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
    assert!(
        h.maintain(T0 + H - 1).unwrap() == 0,
        "an open bucket is not compacted"
    );
    assert_eq!(h.maintain(T0 + 2 * H).unwrap(), 1);
    assert_eq!(h.track(&vid("v1"), T0, T0 + H).unwrap(), before);
    assert_eq!(h.maintain(T0 + 2 * H).unwrap(), 0);
}

#[test]
fn latest_is_the_newest_fix_of_each_vehicle() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), small_checkpoints());
    let mut w = h.writer(0).unwrap();
    append(w.as_mut(), &[fix("a", T0 + 5000), fix("b", T0)]);
    append(w.as_mut(), &[fix("a", T0 + 1000)]); // late: must not become latest
    w.close().unwrap();
    let mut latest = Vec::new();
    h.for_each_latest(&mut |id, p| latest.push((id.as_str().to_owned(), p.ts)))
        .unwrap();
    latest.sort();
    assert_eq!(latest, vec![("a".into(), T0 + 5000), ("b".into(), T0)]);
}

#[test]
fn a_writer_that_dies_without_closing_loses_nothing_acked() {
    let dir = tempfile::tempdir().unwrap();
    let fixes: Vec<Fix> = (0..120).map(|i| fix("v1", T0 + i * 1000)).collect();
    {
        let h = open(dir.path(), small_checkpoints());
        let mut w = h.writer(0).unwrap();
        append(w.as_mut(), &fixes[..70]);
        append(w.as_mut(), &fixes[70..]);
        // No close: the memtable is lost, the WAL is not.
        drop(w);
    }
    let h = open(dir.path(), small_checkpoints());
    assert_eq!(track_ts(&h, "v1", T0, T0 + H).len(), 120);
    let mut latest = Vec::new();
    h.for_each_latest(&mut |_, p| latest.push(p.ts)).unwrap();
    assert_eq!(latest, vec![T0 + 119_000]);
    let mut w = h.writer(0).unwrap();
    assert!(
        append(w.as_mut(), &fixes).iter().all(|n| !*n),
        "no duplicates after replay"
    );
}
