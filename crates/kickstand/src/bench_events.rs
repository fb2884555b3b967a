//! `kickstand bench --phases events`: the cost of fleet intelligence. The ingest phase's load
//! (simulated scooters over HTTP, acked when durable) is sent three times, each to a fresh
//! server: without the fleet watch, with the quality filters only (events off), and with events
//! on and `--events-geofences` geofences loaded over the simulated city. Also measured: the
//! zone test alone, per fix, on the same fixes.

use crate::bench::{LoadResult, load, now_ms, percentile};
use crate::sim::SEOUL;
use axum::body::Bytes;
use kickstand_domain::Fix;
use kickstand_domain::watch::{EventConfig, QualityConfig};
use kickstand_domain::zone::{Area, Polygon, ZoneKind};
use kickstand_engine::fleet::sqlite::SqliteFleetStore;
use kickstand_engine::fleet::zones::{ZoneMemo, ZoneSet, Zones};
use kickstand_engine::fleet::{FleetStore, Geofence};
use kickstand_engine::watcher::FleetWatch;
use kickstand_engine::{Engine, EngineConfig};
use kickstand_http::HttpConfig;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct EventsBenchArgs {
    /// Geofences loaded for the events phase.
    #[arg(long, default_value_t = 10_000)]
    events_geofences: usize,
    /// Rounds of events off then events on, each on a fresh server; the ratio reported is the
    /// median of the rounds' ratios (the host's speed drifts between runs, so one pair of
    /// phases says little).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    events_rounds: u32,
}

const M_PER_DEG_LAT: f64 = 111_195.0;

/// `n` geofences over the simulated city: three operating areas that cover it, then no-parking
/// zones of 30-80 m across (nine in ten: station fronts, crossings, building entrances) and
/// slow zones of 200-400 m (squares, parks), placed by a fixed PRNG. With 10,000 of them about
/// a fifth of the city is in some zone besides the operating areas.
pub fn city_geofences(n: usize) -> Vec<Geofence> {
    let m_per_deg_lon = M_PER_DEG_LAT * SEOUL.lat.to_radians().cos();
    let square = |east_m: f64, north_m: f64, half_m: f64| {
        let (lat, lon) = (
            SEOUL.lat + north_m / M_PER_DEG_LAT,
            SEOUL.lon + east_m / m_per_deg_lon,
        );
        let (dlat, dlon) = (half_m / M_PER_DEG_LAT, half_m / m_per_deg_lon);
        Area {
            polygons: vec![Polygon {
                rings: vec![vec![
                    [lon - dlon, lat - dlat],
                    [lon + dlon, lat - dlat],
                    [lon + dlon, lat + dlat],
                    [lon - dlon, lat + dlat],
                    [lon - dlon, lat - dlat],
                ]],
            }],
            single: true,
        }
    };
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let r = SEOUL.radius_m;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (kind, area, max_speed_kmh) = if i < 3 {
            // Three overlapping areas, together the whole city and a margin.
            let shift = (i as f64 - 1.0) * r * 0.5;
            (ZoneKind::OperatingArea, square(shift, 0.0, r * 1.1), None)
        } else if i % 10 == 0 {
            let half = 100.0 + next() * 100.0;
            let (e, nn) = ((next() * 2.0 - 1.0) * r, (next() * 2.0 - 1.0) * r);
            (ZoneKind::SlowZone, square(e, nn, half), Some(10.0))
        } else {
            let half = 15.0 + next() * 25.0;
            let (e, nn) = ((next() * 2.0 - 1.0) * r, (next() * 2.0 - 1.0) * r);
            (ZoneKind::NoParking, square(e, nn, half), None)
        };
        out.push(Geofence {
            id: format!("z{i:05}"),
            name: format!("zone {i}"),
            kind,
            max_speed_kmh,
            area,
            created_at: 0,
            updated_at: 0,
        });
    }
    out
}

async fn run_one(
    dir: &Path,
    config: &EngineConfig,
    watch: Option<(bool, &[Geofence])>,
    warmup: Arc<Vec<Bytes>>,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
) -> anyhow::Result<(LoadResult, u64, std::time::Duration, f64)> {
    let fleet = match watch {
        None => None,
        Some((events_on, geofences)) => {
            let store: Arc<dyn FleetStore> =
                Arc::new(SqliteFleetStore::open(&dir.join("fleet.db"))?);
            for g in geofences {
                store.put_geofence(g)?;
            }
            let zones = Arc::new(Zones::load(store.clone())?);
            Some(Arc::new(FleetWatch {
                quality: QualityConfig::default(),
                events: EventConfig {
                    enabled: events_on,
                    ..EventConfig::default()
                },
                zones,
                store,
            }))
        }
    };
    let d = dir.to_path_buf();
    let cfg = config.clone();
    let f = fleet.clone();
    let engine = Arc::new(
        tokio::task::spawn_blocking(move || Engine::open_watching(&d, cfg, &Default::default(), f))
            .await??,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = kickstand_http::AppState::new(
        engine.clone(),
        HttpConfig::default(),
        kickstand_http::MapConfig::default(),
        None,
        crate::server::metrics_handle(),
    );
    let task = tokio::spawn(crate::server::serve(listener, state, async {
        let _ = rx.await;
    }));
    // The first report of every vehicle (a fleet the server has never seen: a state and the
    // zones it is in, as events) is sent first and not timed; the timed load is the fleet
    // moving afterwards, as a running deployment sees it.
    load(addr, warmup, connections).await?;
    let before = match &fleet {
        Some(f) => f.store.event_head()?,
        None => 0,
    };
    let cpu_before = process_cpu_s();
    let result = load(addr, bodies, connections).await?;
    // The embedded store indexes journalled events beside the ack path: its head is read once
    // every event appended is queryable, and the wait counts as part of the run.
    let settling = Instant::now();
    let events = match &fleet {
        Some(f) => f.store.event_head()? - before,
        None => 0,
    };
    let settle = settling.elapsed();
    let cpu = process_cpu_s() - cpu_before;
    let _ = tx.send(());
    task.await??;
    Ok((result, events, settle, cpu))
}

/// CPU seconds used so far by this process, every thread (the server and the load generator
/// alike), from `/proc/self/stat` (in USER_HZ, 100 per second on Linux); 0 elsewhere.
fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The zone test alone: ns per fix and zones per fix with the index; then, as the workers do
/// it, with each vehicle's [`ZoneMemo`] (ns per fix, map lookup included, and the share of
/// fixes the memo answered).
fn zone_test_ns(geofences: &[Geofence], fixes: &[Fix]) -> (f64, f64, f64, f64) {
    let set = ZoneSet::build(1, geofences);
    let (mut slots, mut inside) = (Vec::new(), Vec::new());
    let mut hits = 0usize;
    let n = fixes.len().max(1) as f64;
    let started = Instant::now();
    for f in fixes {
        set.containing(&f.point, &mut slots, &mut inside);
        hits += inside.len();
    }
    let ns = started.elapsed().as_nanos() as f64 / n;
    let mut memos: std::collections::HashMap<&str, ZoneMemo> = Default::default();
    let mut remembered = 0usize;
    let started = Instant::now();
    for f in fixes {
        let memo = memos.entry(f.vehicle_id.as_str()).or_default();
        remembered += usize::from(set.containing_memo(&f.point, memo, &mut slots, &mut inside));
    }
    let memo_ns = started.elapsed().as_nanos() as f64 / n;
    (ns, hits as f64 / n, memo_ns, remembered as f64 / n)
}

/// The shape of the ingest load (the flags of the ingest phase).
pub struct LoadShape {
    pub vehicles: usize,
    pub seconds: usize,
    pub batch: usize,
    pub connections: usize,
    pub seed: u64,
}

pub async fn events_phase(
    args: &EventsBenchArgs,
    shape: LoadShape,
    config: &EngineConfig,
    tmp: &Path,
    figures: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let LoadShape {
        vehicles,
        seconds,
        batch,
        connections,
        seed,
    } = shape;
    let end = now_ms() - 60_000;
    // The same fleet as the ingest phase, kept as fixes too for the zone micro-benchmark.
    let (bodies, _, fixes) =
        crate::bench::generate_keeping(vehicles, seconds, batch, end, seed, 2_000_000);
    let first_tick = vehicles.div_ceil(batch.max(1));
    let warmup = Arc::new(bodies[..first_tick.min(bodies.len())].to_vec());
    let bodies = Arc::new(bodies[first_tick.min(bodies.len())..].to_vec());
    let geofences = city_geofences(args.events_geofences);
    let (zone_ns, zones_per_fix, memo_ns, memo_share) = zone_test_ns(&geofences, &fixes);

    // no_watch once; then events off and on, alternately, `events_rounds` times.
    let mut phases = vec![("no_watch", None)];
    for _ in 0..args.events_rounds {
        phases.push(("events_off", Some((false, &geofences[..]))));
        phases.push(("events_on", Some((true, &geofences[..]))));
    }
    let mut rates: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    // CPU of the whole process per fix in the timed load: what a phase costs, whether or not
    // the load kept the CPU busy (8 connections in a closed loop do not quite).
    let mut cpu_per_fix: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    for (i, (name, watch)) in phases.into_iter().enumerate() {
        let dir = tmp.join(format!("events-{i}-{name}"));
        std::fs::create_dir_all(&dir)?;
        let (r, events, settle, cpu) = run_one(
            &dir,
            config,
            watch,
            warmup.clone(),
            bodies.clone(),
            connections,
        )
        .await?;
        let _ = std::fs::remove_dir_all(&dir);
        // Until the last event is queryable, not only until the last ack.
        let rate = r.accepted as f64 / (r.elapsed + settle).as_secs_f64();
        eprintln!(
            "events phase {name}: {:.0} fixes/s, p99 ack {:.1} ms, {events} events, {} ms until queryable after the last ack, {:.3} µs of CPU per fix",
            rate,
            percentile(&r.latencies_ms, 0.99),
            settle.as_millis(),
            cpu * 1e6 / r.accepted.max(1) as f64
        );
        figures.insert(
            format!("events_{name}_settle_ms"),
            json!(settle.as_millis() as u64),
        );
        figures.insert(format!("events_{name}_points_per_s"), json!(rate.round()));
        figures.insert(
            format!("events_{name}_ack_p99_ms"),
            json!(percentile(&r.latencies_ms, 0.99)),
        );
        if name == "events_on" {
            figures.insert("events_on_events_stored".into(), json!(events));
            figures.insert(
                "events_on_events_per_1000_fixes".into(),
                json!((events as f64 * 1000.0 / r.accepted.max(1) as f64 * 10.0).round() / 10.0),
            );
        }
        rates.entry(name).or_default().push(rate);
        cpu_per_fix
            .entry(name)
            .or_default()
            .push(cpu * 1e6 / r.accepted.max(1) as f64);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            0.0
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        }
    };
    let (off, on) = (&rates["events_off"], &rates["events_on"]);
    let ratios: Vec<f64> = off.iter().zip(on).map(|(off, on)| on / off).collect();
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    for (name, v) in &rates {
        // With several rounds, a phase's figure is its median.
        figures.insert(
            format!("events_{name}_points_per_s"),
            json!(median(v).round()),
        );
    }
    for (name, v) in &cpu_per_fix {
        figures.insert(
            format!("events_{name}_cpu_us_per_fix"),
            json!((median(v) * 1000.0).round() / 1000.0),
        );
    }
    // The throughput ratio a server kept busy would see: CPU per fix off ÷ on, per round.
    let cpu_ratios: Vec<f64> = cpu_per_fix["events_off"]
        .iter()
        .zip(&cpu_per_fix["events_on"])
        .map(|(off, on)| off / on)
        .collect();
    figures.insert(
        "events_cpu_off_vs_on_rounds".into(),
        json!(cpu_ratios.iter().map(|r| round3(*r)).collect::<Vec<_>>()),
    );
    figures.insert(
        "events_cpu_off_vs_on".into(),
        json!(round3(median(&cpu_ratios))),
    );
    figures.insert(
        "events_on_vs_off_rounds".into(),
        json!(ratios.iter().map(|r| round3(*r)).collect::<Vec<_>>()),
    );
    figures.insert("events_geofences".into(), json!(args.events_geofences));
    figures.insert(
        "events_zone_test_ns_per_fix".into(),
        json!((zone_ns * 10.0).round() / 10.0),
    );
    figures.insert(
        "events_zone_test_memo_ns_per_fix".into(),
        json!((memo_ns * 10.0).round() / 10.0),
    );
    figures.insert(
        "events_zone_memo_answered".into(),
        json!((memo_share * 1000.0).round() / 1000.0),
    );
    figures.insert(
        "events_zones_per_fix".into(),
        json!((zones_per_fix * 1000.0).round() / 1000.0),
    );
    figures.insert("events_on_vs_off".into(), json!(round3(median(&ratios))));
    figures.insert(
        "events_on_vs_no_watch".into(),
        json!(round3(median(on) / median(&rates["no_watch"]))),
    );
    Ok(())
}
