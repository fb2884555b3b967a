//! `kickstand bench --phases history`: the history backends side by side in one run, driven
//! directly through the history port (no HTTP), with the same simulated data for each.
//!
//! For each backend: points/s appended by one writer and by two writers at once with
//! fleet-shaped groups (one fix per vehicle per group, what a worker's group commit holds when
//! every vehicle reports once a second), points/s with bulk groups (many fixes per vehicle: a
//! device uploading its buffer, a history copy), bytes per point on disk for 24 hours at 1 Hz
//! once the buckets are compacted, and the latency of reading one vehicle's 24-hour track.

use crate::sim::{SEOUL, Scooter};
use kickstand_domain::{BucketSpan, Fix, VehicleId};
use kickstand_engine::history::embedded::{EmbeddedConfig, EmbeddedHistory};
use kickstand_engine::history::postgres::{PostgresConfig, PostgresHistory};
use kickstand_engine::history::{HistoryStore, HistoryWriter};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

#[derive(clap::Args, Clone)]
pub struct HistoryBenchArgs {
    /// Backends of the history phase (comma-separated: embedded, postgres).
    #[arg(long, value_delimiter = ',', default_value = "embedded,postgres")]
    pub history_backends: Vec<String>,
    /// PostgreSQL for the history phase (a schema of its own is created and dropped);
    /// defaults to KICKSTAND_TEST_POSTGRES_URL.
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// Vehicles of the history phase's fleet.
    #[arg(long, default_value_t = 20_000)]
    pub history_vehicles: usize,
    /// Seconds of 1 Hz fixes per vehicle in the history phase's append runs.
    #[arg(long, default_value_t = 30)]
    pub history_seconds: usize,
    /// Vehicles with a 24-hour 1 Hz track (bytes per point, track latency).
    #[arg(long, default_value_t = 4)]
    pub history_track_vehicles: usize,
}

enum Backend {
    Embedded(tempfile::TempDir),
    Postgres(PostgresConfig),
}

const SPAN: BucketSpan = BucketSpan::HOUR;

impl Backend {
    fn fresh(name: &str, args: &HistoryBenchArgs, tmp: &Path) -> anyhow::Result<Backend> {
        Ok(match name {
            "embedded" => Backend::Embedded(tempfile::tempdir_in(tmp)?),
            "postgres" => {
                let url = args
                    .postgres_url
                    .clone()
                    .or_else(|| std::env::var("KICKSTAND_TEST_POSTGRES_URL").ok())
                    .ok_or_else(|| anyhow::anyhow!("the postgres backend needs --postgres-url"))?;
                Backend::Postgres(PostgresConfig {
                    url,
                    schema: kickstand_engine::testing::unique_name("bench"),
                    ..PostgresConfig::default()
                })
            }
            other => anyhow::bail!("unknown history backend {other:?}"),
        })
    }

    fn open(&self) -> anyhow::Result<Box<dyn HistoryStore>> {
        Ok(match self {
            Backend::Embedded(dir) => Box::new(EmbeddedHistory::open(
                dir.path(),
                SPAN,
                EmbeddedConfig::default(),
            )?),
            Backend::Postgres(c) => Box::new(PostgresHistory::open(c, SPAN)?),
        })
    }

    /// Reclaims the space of merged chunks, then measures the data at rest: the tables and
    /// their indexes, without write-ahead logs (the embedded store's keyspaces, as the storage
    /// phase measures them; PostgreSQL's `pg_total_relation_size` of every table).
    fn bytes_at_rest(&self) -> anyhow::Result<u64> {
        Ok(match self {
            Backend::Embedded(dir) => {
                EmbeddedHistory::open(dir.path(), SPAN, EmbeddedConfig::default())?.settle()?;
                crate::bench::dir_bytes(&dir.path().join("engine/keyspaces"))
            }
            Backend::Postgres(c) => {
                let h = PostgresHistory::open(c, SPAN)?;
                h.vacuum_full()?;
                h.stats()?.disk_bytes
            }
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Postgres(c) = self
            && let Ok(h) = PostgresHistory::open(c, SPAN)
        {
            let _ = h.drop_schema();
        }
    }
}

/// `seconds` ticks of 1 Hz fixes of `vehicles` scooters ending at `end`: one group per tick.
fn fleet_groups(vehicles: usize, seconds: usize, end: i64, seed: u64) -> Vec<Vec<Fix>> {
    let mut fleet: Vec<Scooter> = (0..vehicles)
        .map(|i| Scooter::new(i, &SEOUL, seed))
        .collect();
    let start = end - seconds as i64 * 1000;
    (0..seconds)
        .map(|t| {
            fleet
                .iter_mut()
                .map(|s| {
                    s.step(1.0, &SEOUL);
                    s.fix(start + t as i64 * 1000, &SEOUL)
                })
                .collect()
        })
        .collect()
}

/// Appends the groups with one writer per list, all at once; returns points/s.
fn append_all(h: &dyn HistoryStore, per_writer: &[Vec<Vec<Fix>>]) -> anyhow::Result<f64> {
    let total: usize = per_writer.iter().flatten().map(Vec::len).sum();
    let mut writers: Vec<Box<dyn HistoryWriter>> = (0..per_writer.len())
        .map(|s| h.writer(s))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = writers
            .iter_mut()
            .zip(per_writer)
            .map(|(w, groups)| {
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut is_new = Vec::new();
                    for g in groups {
                        is_new.clear();
                        w.append(g, &mut is_new)?;
                        anyhow::ensure!(is_new.iter().all(|n| *n), "a fix was not new");
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("writer thread")?;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    for w in writers {
        w.close()?;
    }
    Ok(total as f64 / secs)
}

/// Splits groups between two writers by vehicle, as the engine's shards do.
fn split_two(groups: &[Vec<Fix>]) -> Vec<Vec<Vec<Fix>>> {
    let mut out = vec![Vec::new(), Vec::new()];
    for g in groups {
        let (a, b): (Vec<Fix>, Vec<Fix>) = g
            .iter()
            .cloned()
            .partition(|f| f.vehicle_id.stable_hash() % 2 == 0);
        out[0].push(a);
        out[1].push(b);
    }
    out
}

/// Regroups fleet-shaped groups into bulk groups: each holds `per_vehicle` consecutive
/// fixes of every vehicle of a slice of `vehicles` vehicles.
fn bulk_groups(groups: &[Vec<Fix>], per_vehicle: usize, vehicles: usize) -> Vec<Vec<Fix>> {
    let mut out = Vec::new();
    for window in groups.chunks(per_vehicle) {
        let n = window.first().map_or(0, Vec::len);
        for lo in (0..n).step_by(vehicles) {
            let hi = (lo + vehicles).min(n);
            out.push(
                (lo..hi)
                    .flat_map(|v| window.iter().map(move |g| g[v].clone()))
                    .collect(),
            );
        }
    }
    out
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

pub fn run(
    args: &HistoryBenchArgs,
    tmp: &Path,
    end: i64,
    seed: u64,
) -> anyhow::Result<serde_json::Value> {
    eprintln!(
        "history phase: {} vehicles × {} s per append run; {} × 24 h tracks …",
        args.history_vehicles, args.history_seconds, args.history_track_vehicles
    );
    // Appends happen two days back, so every bucket is closed and compacts at once.
    let end = end - 2 * 86_400_000;
    let groups = fleet_groups(args.history_vehicles, args.history_seconds, end, seed);
    let two = split_two(&groups);
    let bulk = bulk_groups(&groups, args.history_seconds.min(60), 1000);
    let points: usize = groups.iter().map(Vec::len).sum();

    // 24 hours at 1 Hz for a few vehicles, written in one-minute groups.
    let track_end = end - 86_400_000;
    let day_start = track_end - 86_400_000 + 1000;
    let mut track_groups: Vec<Vec<Fix>> = Vec::new();
    let mut scooters: Vec<Scooter> = (0..args.history_track_vehicles)
        .map(|i| Scooter::new(900_000 + i, &SEOUL, seed))
        .collect();
    for minute in 0..1440i64 {
        let mut g = Vec::with_capacity(60 * scooters.len());
        for (i, s) in scooters.iter_mut().enumerate() {
            for sec in 0..60 {
                s.step(1.0, &SEOUL);
                let mut f = s.fix(day_start + (minute * 60 + sec) * 1000, &SEOUL);
                f.vehicle_id = VehicleId::new(&format!("track-{i}")).expect("valid");
                g.push(f);
            }
        }
        track_groups.push(g);
    }
    let track_points: usize = track_groups.iter().map(Vec::len).sum();

    let mut out = serde_json::Map::new();
    for name in &args.history_backends {
        eprintln!("  {name} …");
        let mut fig = serde_json::Map::new();
        let b = Backend::fresh(name, args, tmp)?;
        let h = b.open()?;
        fig.insert(
            "fleet_1_writer_points_per_s".into(),
            json!(append_all(h.as_ref(), std::slice::from_ref(&groups))?.round()),
        );
        let raw = h.stats()?.disk_bytes;
        fig.insert(
            "fleet_bytes_per_point_before_compaction".into(),
            json!(round(raw as f64 / points as f64, 1)),
        );
        drop(h);
        drop(b);

        let b = Backend::fresh(name, args, tmp)?;
        let h = b.open()?;
        fig.insert(
            "fleet_2_writers_points_per_s".into(),
            json!(append_all(h.as_ref(), &two)?.round()),
        );
        drop(h);
        drop(b);

        let b = Backend::fresh(name, args, tmp)?;
        let h = b.open()?;
        fig.insert(
            "bulk_1_writer_points_per_s".into(),
            json!(append_all(h.as_ref(), std::slice::from_ref(&bulk))?.round()),
        );
        drop(h);
        drop(b);

        // A compacted day: bytes per point and the 24-hour track.
        let b = Backend::fresh(name, args, tmp)?;
        let h = b.open()?;
        append_all(h.as_ref(), std::slice::from_ref(&track_groups))?;
        h.maintain(end + 86_400_000)?;
        drop(h);
        let bytes = b.bytes_at_rest()?;
        let h = b.open()?;
        fig.insert(
            "bytes_per_point".into(),
            json!(round(bytes as f64 / track_points as f64, 2)),
        );
        let id = VehicleId::new("track-0").expect("valid");
        let mut ms = Vec::new();
        for _ in 0..11 {
            let t = Instant::now();
            let n = h.track(&id, day_start, track_end)?.len();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(n == 86_400, "the 24-hour track has {n} points");
        }
        ms.sort_by(f64::total_cmp);
        fig.insert("track_24h_ms".into(), json!(round(ms[ms.len() / 2], 2)));
        out.insert(name.clone(), serde_json::Value::Object(fig));
    }
    out.insert("appended_points_per_run".into(), json!(points));
    out.insert("track_points".into(), json!(track_points));
    Ok(serde_json::Value::Object(out))
}
