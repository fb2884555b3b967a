//! `kickstand bench`: starts the engine on a temporary directory, drives it over real HTTP from
//! a load generator in the same binary with simulated scooters, and prints one JSON object of
//! figures. A program, not a test: the figures go into BENCHMARKS.md.
//!
//! Phases: (1) batched ingest of a 100,000-vehicle fleet, concurrent connections, every request
//! acked only when durable; (2) `GET /vehicles/{id}` and `near` (500 m) under concurrent
//! requests against that fleet; (3) one vehicle's 24-hour track at 1 Hz; (4) bytes on disk per
//! point for 1 Hz traces, after the buckets closed and were compacted; (5) heap bytes per vehicle
//! of the latest-state store.

use crate::client::{connect, request};
use crate::sim::{self, SEOUL, Scooter};
use anyhow::Context;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use kickstand_engine::state::MemoryState;
use kickstand_engine::{Engine, EngineConfig};
use kickstand_http::HttpConfig;
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Vehicles in the fleet.
    #[arg(long, default_value_t = 100_000)]
    vehicles: usize,
    /// Seconds of 1 Hz reports per vehicle sent in the ingest phase.
    #[arg(long, default_value_t = 40)]
    seconds: usize,
    /// Fixes per HTTP request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests per query benchmark.
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// Worker threads of the engine (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Vehicles × hours of 1 Hz traces for the bytes-per-point phase.
    #[arg(long, default_value_t = 200)]
    storage_vehicles: usize,
    #[arg(long, default_value_t = 3)]
    storage_hours: usize,
    /// Reads of the 24-hour track (the median is reported).
    #[arg(long, default_value_t = 11)]
    track_reads: usize,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    history: crate::bench_history::HistoryBenchArgs,
    #[command(flatten)]
    mqtt: crate::bench_mqtt::MqttBenchArgs,
    #[command(flatten)]
    scaleout: crate::bench_scaleout::ScaleoutBenchArgs,
    #[command(flatten)]
    events: crate::bench_events::EventsBenchArgs,
    /// Keep the temporary directory (its path is printed).
    #[arg(long)]
    keep: bool,
    /// Run only these phases (comma-separated: ingest, track, storage, state, history, mqtt,
    /// scaleout, events); the latest and near queries run with ingest, against the fleet it
    /// loaded. `events` sends the ingest load without the fleet watch, with events off and with
    /// events on and 10,000 geofences.
    /// `history` compares the history backends directly (see --history-backends); `scaleout`
    /// sends the ingest phase's load through separate ingest and worker processes on RabbitMQ,
    /// Redis and PostgreSQL.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,track,storage,state"
    )]
    phases: Vec<String>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A server started in this process on a temporary directory.
struct Server {
    addr: SocketAddr,
    engine: Arc<Engine>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_server(dir: &Path, config: EngineConfig) -> anyhow::Result<Server> {
    let d = dir.to_path_buf();
    let engine =
        Arc::new(tokio::task::spawn_blocking(move || Engine::start_embedded(&d, config)).await??);
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
    Ok(Server {
        addr,
        engine,
        stop: Some(tx),
        task,
    })
}

impl Server {
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await??;
        Ok(())
    }
}

/// Simulates `vehicles` scooters for `seconds` at 1 Hz ending at `end_ms`, as request bodies of
/// `batch` fixes, in time order (each body: consecutive vehicles at one tick).
fn generate(
    vehicles: usize,
    seconds: usize,
    batch: usize,
    end_ms: i64,
    seed: u64,
) -> (Vec<Bytes>, usize) {
    let (bodies, fixes, _) = generate_keeping(vehicles, seconds, batch, end_ms, seed, 0);
    (bodies, fixes)
}

/// [`generate`], also returning the first `keep` fixes as values.
pub(crate) fn generate_keeping(
    vehicles: usize,
    seconds: usize,
    batch: usize,
    end_ms: i64,
    seed: u64,
    keep: usize,
) -> (Vec<Bytes>, usize, Vec<kickstand_domain::Fix>) {
    let mut kept = Vec::with_capacity(keep.min(vehicles * seconds));
    let mut fleet: Vec<Scooter> = (0..vehicles)
        .map(|i| Scooter::new(i, &SEOUL, seed))
        .collect();
    let mut bodies = Vec::new();
    let mut fixes = 0;
    let start = end_ms - seconds as i64 * 1000;
    for t in 0..seconds {
        let ts = start + t as i64 * 1000;
        for group in fleet.chunks_mut(batch) {
            let mut body = Vec::with_capacity(group.len() * 230 + 2);
            body.push(b'[');
            for (i, s) in group.iter_mut().enumerate() {
                s.step(1.0, &SEOUL);
                let fix = s.fix(ts, &SEOUL);
                if i > 0 {
                    body.push(b',');
                }
                sim::write_json(&mut body, &fix);
                fixes += 1;
                if kept.len() < keep {
                    kept.push(fix);
                }
            }
            body.push(b']');
            bodies.push(Bytes::from(body));
        }
    }
    (bodies, fixes, kept)
}

pub(crate) struct LoadResult {
    pub accepted: u64,
    pub elapsed: Duration,
    pub latencies_ms: Vec<f64>,
    pub retries: u64,
}

/// Sends every body over `connections` connections; retries a 503 after a short pause.
pub(crate) async fn load(
    addr: SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
) -> anyhow::Result<LoadResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let bodies = bodies.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            let mut lat = Vec::new();
            let (mut accepted, mut retries) = (0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                loop {
                    let t = Instant::now();
                    let (status, resp) = request(
                        &mut sender,
                        hyper::Method::POST,
                        "/api/v1/telemetry",
                        body.clone(),
                    )
                    .await?;
                    match status {
                        202 => {
                            lat.push(ms(t.elapsed()));
                            let v: serde_json::Value = serde_json::from_slice(&resp)?;
                            accepted += v["accepted"].as_u64().unwrap_or(0);
                            break;
                        }
                        503 => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        s => {
                            anyhow::bail!("ingest answered {s}: {}", String::from_utf8_lossy(&resp))
                        }
                    }
                }
            }
            anyhow::Ok((accepted, retries, lat))
        }));
    }
    let mut result = LoadResult {
        accepted: 0,
        elapsed: Duration::ZERO,
        latencies_ms: Vec::new(),
        retries: 0,
    };
    for t in tasks {
        let (a, r, l) = t.await??;
        result.accepted += a;
        result.retries += r;
        result.latencies_ms.extend(l);
    }
    result.elapsed = started.elapsed();
    result.latencies_ms.sort_by(f64::total_cmp);
    Ok(result)
}

/// Runs `paths` GETs over `connections` connections; returns sorted latencies in ms.
async fn query_load(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    connections: usize,
) -> anyhow::Result<Vec<f64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let paths = paths.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = paths.get(i) else { break };
                let t = Instant::now();
                let (status, body) =
                    request(&mut sender, hyper::Method::GET, path, Bytes::new()).await?;
                lat.push(ms(t.elapsed()));
                anyhow::ensure!(
                    status == 200,
                    "{path} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

pub(crate) fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: BenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("kickstand-bench-")
        .tempdir_in(std::env::current_dir()?)?;
    let config = EngineConfig {
        workers: args.workers,
        ..EngineConfig::default()
    };
    let end = now_ms() - 60_000;

    let mut figures = serde_json::Map::new();
    let phase = |name: &str| args.phases.iter().any(|p| p == name);
    if phase("ingest") {
        ingest_phases(&args, &tmp, &config, end, &mut figures).await?;
    }
    if phase("events") {
        let shape = crate::bench_events::LoadShape {
            vehicles: args.vehicles,
            seconds: args.seconds,
            batch: args.batch,
            connections: args.connections,
            seed: args.seed,
        };
        crate::bench_events::events_phase(&args.events, shape, &config, tmp.path(), &mut figures)
            .await?;
    }
    if phase("scaleout") {
        let (bodies, fixes) = generate(args.vehicles, args.seconds, args.batch, end, args.seed);
        let value = crate::bench_scaleout::run(
            &args.scaleout,
            args.mqtt.mqtt_url.clone(),
            &tmp.path().join("scaleout"),
            Arc::new(bodies),
            fixes,
            args.vehicles,
            args.connections,
        )
        .await?;
        figures.insert("scaleout".into(), value);
    }
    if phase("track") {
        track_phase(&args, &tmp, &config, end, &mut figures).await?;
    }
    if phase("storage") {
        storage_phase(&args, &tmp, &config, end, &mut figures).await?;
    }
    if phase("state") {
        figures.insert(
            "state_bytes_per_vehicle".into(),
            json!(state_phase(&args, end)?.round()),
        );
    }
    if phase("history") {
        let (h, dir) = (args.history.clone(), tmp.path().to_owned());
        let seed = args.seed;
        let value =
            tokio::task::spawn_blocking(move || crate::bench_history::run(&h, &dir, end, seed))
                .await??;
        figures.insert("history".into(), value);
    }
    if phase("mqtt") {
        let value = crate::bench_mqtt::run(
            &args.mqtt,
            &tmp.path().join("mqtt"),
            &config,
            end,
            args.seed,
        )
        .await?;
        figures.insert("mqtt".into(), value);
    }
    figures.insert("workers".into(), json!(config.worker_count()));
    figures.insert(
        "cores".into(),
        json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&figures).context("figures")?
    );
    if args.keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    Ok(())
}

type Figures = serde_json::Map<String, serde_json::Value>;

async fn ingest_phases(
    args: &BenchArgs,
    tmp: &tempfile::TempDir,
    config: &EngineConfig,
    end: i64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    // Phase 1: ingest.
    eprintln!(
        "generating {} vehicles × {} s …",
        args.vehicles, args.seconds
    );
    let (bodies, fixes) = generate(args.vehicles, args.seconds, args.batch, end, args.seed);
    let body_bytes: usize = bodies.iter().map(|b| b.len()).sum();
    let server = start_server(&tmp.path().join("main"), config.clone()).await?;
    eprintln!(
        "ingesting {fixes} fixes ({} MB of JSON) over {} connections …",
        body_bytes >> 20,
        args.connections
    );
    let bodies = Arc::new(bodies);
    let ingest = load(server.addr, bodies.clone(), args.connections).await?;
    anyhow::ensure!(
        ingest.accepted as usize == fixes,
        "accepted {} of {fixes}",
        ingest.accepted
    );
    drop(bodies);
    let ingest_rate = ingest.accepted as f64 / ingest.elapsed.as_secs_f64();
    eprintln!(
        "  {:.0} points/s, ack p99 {:.1} ms",
        ingest_rate,
        percentile(&ingest.latencies_ms, 0.99)
    );

    // Phase 2: queries against the fleet just loaded.
    let mut rng = sim::Rng::new(args.seed);
    let latest_paths: Vec<String> = (0..args.queries)
        .map(|_| {
            format!(
                "/api/v1/vehicles/scooter-{:06}",
                rng.next_u64() as usize % args.vehicles
            )
        })
        .collect();
    let near_paths: Vec<String> = (0..args.queries)
        .map(|_| {
            let lat = SEOUL.lat + rng.range(-0.04, 0.04);
            let lon = SEOUL.lon + rng.range(-0.05, 0.05);
            format!("/api/v1/vehicles?near={lat:.6},{lon:.6}&radius_m=500&limit=100")
        })
        .collect();
    eprintln!("querying latest state and near …");
    let latest = query_load(server.addr, Arc::new(latest_paths), 8).await?;
    let near = query_load(server.addr, Arc::new(near_paths), 8).await?;
    let vehicles_loaded = server.engine.state.len()?;

    server.stop().await?;

    for (k, v) in [
        ("ingest_points_per_s", json!(ingest_rate.round())),
        (
            "ingest_ack_p50_ms",
            json!(round3(percentile(&ingest.latencies_ms, 0.50))),
        ),
        (
            "ingest_ack_p99_ms",
            json!(round3(percentile(&ingest.latencies_ms, 0.99))),
        ),
        (
            "ingest_ack_max_ms",
            json!(round3(percentile(&ingest.latencies_ms, 1.0))),
        ),
        ("ingest_retries_503", json!(ingest.retries)),
        ("ingest_fixes", json!(fixes)),
        ("ingest_batch", json!(args.batch)),
        ("ingest_connections", json!(args.connections)),
        ("latest_p50_ms", json!(round3(percentile(&latest, 0.50)))),
        ("latest_p99_ms", json!(round3(percentile(&latest, 0.99)))),
        ("near_p50_ms", json!(round3(percentile(&near, 0.50)))),
        ("near_p99_ms", json!(round3(percentile(&near, 0.99)))),
        ("near_vehicles", json!(vehicles_loaded)),
    ] {
        figures.insert(k.into(), v);
    }
    Ok(())
}

/// Phase 3: one vehicle's 24-hour track at 1 Hz, loaded over HTTP and read back.
async fn track_phase(
    args: &BenchArgs,
    tmp: &tempfile::TempDir,
    config: &EngineConfig,
    end: i64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let server = start_server(&tmp.path().join("track"), config.clone()).await?;
    // Phase 3: one vehicle's 24-hour track at 1 Hz.
    eprintln!("loading and reading a 24-hour track …");
    let track_end = end - 3_600_000;
    let mut s = Scooter::new(999_999_999, &SEOUL, args.seed);
    let mut bodies = Vec::new();
    let day_start = track_end - 86_400_000 + 1000;
    for chunk in (0..86_400i64).collect::<Vec<_>>().chunks(5000) {
        let mut body = vec![b'['];
        for (i, t) in chunk.iter().enumerate() {
            s.step(1.0, &SEOUL);
            let mut fix = s.fix(day_start + t * 1000, &SEOUL);
            fix.vehicle_id = kickstand_domain::VehicleId::new("bench-track").expect("valid");
            if i > 0 {
                body.push(b',');
            }
            sim::write_json(&mut body, &fix);
        }
        body.push(b']');
        bodies.push(Bytes::from(body));
    }
    let track_load = load(server.addr, Arc::new(bodies), 4).await?;
    anyhow::ensure!(
        track_load.accepted == 86_400,
        "track accepted {}",
        track_load.accepted
    );
    // Let the checkpoint move the day into the engine, as it is for any past day.
    tokio::time::sleep(Duration::from_millis(
        kickstand_engine::history::embedded::EmbeddedConfig::default().checkpoint_interval_ms
            + 1500,
    ))
    .await;
    let engine = server.engine.clone();
    tokio::task::spawn_blocking(move || engine.history.maintain(now_ms())).await??;
    let mut sender = connect(server.addr).await?;
    let path = format!("/api/v1/vehicles/bench-track/track?from={day_start}&to={track_end}");
    let mut track_ms = Vec::new();
    for _ in 0..args.track_reads {
        // Timed until the last byte arrives, as a client that streams the body would see it;
        // joining the pieces for the check below is not part of the request.
        let t = Instant::now();
        sender.ready().await?;
        let req = hyper::Request::get(path.as_str())
            .header("host", "bench")
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                pieces.push(data);
            }
        }
        track_ms.push(ms(t.elapsed()));
        anyhow::ensure!(status == 200, "track answered {status}");
        let v: serde_json::Value = serde_json::from_slice(&pieces.concat())?;
        anyhow::ensure!(v["count"] == 86_400, "track returned {}", v["count"]);
    }
    track_ms.sort_by(f64::total_cmp);
    server.stop().await?;
    figures.insert(
        "track_24h_ms".into(),
        json!(round3(percentile(&track_ms, 0.5))),
    );
    figures.insert("track_24h_min_ms".into(), json!(round3(track_ms[0])));
    figures.insert(
        "track_24h_p90_ms".into(),
        json!(round3(percentile(&track_ms, 0.9))),
    );
    Ok(())
}

async fn storage_phase(
    args: &BenchArgs,
    tmp: &tempfile::TempDir,
    config: &EngineConfig,
    end: i64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    // Phase 4: bytes per point for 1 Hz traces.
    eprintln!(
        "measuring bytes per point ({} vehicles × {} h at 1 Hz) …",
        args.storage_vehicles, args.storage_hours
    );
    let store_dir = tmp.path().join("storage");
    let server = start_server(&store_dir, config.clone()).await?;
    let storage_end = end - 2 * 3_600_000;
    let (bodies, stored_fixes) = generate(
        args.storage_vehicles,
        args.storage_hours * 3600,
        args.batch,
        storage_end,
        args.seed + 1,
    );
    let stored = load(server.addr, Arc::new(bodies), args.connections).await?;
    anyhow::ensure!(
        stored.accepted as usize == stored_fixes,
        "storage phase accepted {}",
        stored.accepted
    );
    server.stop().await?;
    // Reopen, close every bucket and compact it, as the upkeep thread does an hour later.
    let (history_bytes, buckets) = {
        let dir = store_dir.clone();
        let span = config.span()?;
        let embedded = kickstand_engine::history::embedded::EmbeddedConfig::default();
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64)> {
            use kickstand_engine::history::HistoryStore;
            let h = kickstand_engine::history::open_embedded_offline(&dir, span, embedded)?;
            h.maintain(now_ms() + 86_400_000)?;
            h.settle()?;
            let stats = h.stats()?;
            Ok((stats.disk_bytes, stats.buckets))
        })
        .await??
    };
    // At rest, the data lives in the engine's tables; its journal and our WAL hold only what
    // is not yet checkpointed and are bounded (64 MiB journal) whatever the history's size.
    let tables = dir_bytes(&store_dir.join("history/engine/keyspaces"));
    let total = dir_bytes(&store_dir);
    figures.insert(
        "bytes_per_point".into(),
        json!(round3(tables as f64 / stored_fixes as f64)),
    );
    figures.insert("disk_bytes_total".into(), json!(total));
    figures.insert(
        "disk_bytes_per_point_incl_journal".into(),
        json!(round3(total as f64 / stored_fixes as f64)),
    );
    figures.insert(
        "history_stats_bytes_per_point".into(),
        json!(round3(history_bytes as f64 / stored_fixes as f64)),
    );
    figures.insert("stored_points".into(), json!(stored_fixes));
    figures.insert("stored_buckets".into(), json!(buckets));
    Ok(())
}

/// Phase 5: memory per vehicle of the latest-state store.
fn state_phase(args: &BenchArgs, end: i64) -> anyhow::Result<f64> {
    let state_bytes = {
        let mut fleet: Vec<Scooter> = (0..args.vehicles)
            .map(|i| Scooter::new(i, &SEOUL, args.seed))
            .collect();
        let fixes: Vec<_> = fleet.iter_mut().map(|s| s.fix(end, &SEOUL)).collect();
        crate::alloc::start();
        let state = MemoryState::default();
        for chunk in fixes.chunks(1000) {
            state.apply(chunk);
        }
        let bytes = crate::alloc::stop();
        anyhow::ensure!(state.len() == args.vehicles, "state holds {}", state.len());
        // The ids the state clones are inline (≤ 24 bytes); nothing else is counted.
        drop(state);
        bytes as f64 / args.vehicles as f64
    };
    Ok(state_bytes)
}
