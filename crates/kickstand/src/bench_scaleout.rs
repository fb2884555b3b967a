//! `kickstand bench --phases scaleout`: the same HTTP load as the ingest phase, sent to a
//! scale-out deployment of real processes: one `serve --role ingest,api` and N
//! `serve --role worker`, on RabbitMQ, Redis and PostgreSQL (queues, keys and a schema of the
//! bench's own, removed afterwards).
//!
//! Two rates: **acked** (every request answered 202: the broker confirmed every fix) and
//! **end to end** (every fix written to PostgreSQL and applied to Redis by the workers, read from
//! the workers' own counters). The CPU time each component used during the run shows which one
//! is the limit on a small machine.

use crate::client::{connect, request};
use kickstand_engine::history::postgres::{PostgresConfig, PostgresHistory};
use kickstand_engine::rabbitmq::RabbitConfig;
use kickstand_engine::state::RedisStateConfig;
use kickstand_engine::state::redis::RedisState;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct ScaleoutBenchArgs {
    /// RabbitMQ of the scaleout phase [default: KICKSTAND_TEST_RABBITMQ_URL, else the local one].
    #[arg(long)]
    pub scaleout_rabbitmq_url: Option<String>,
    /// Redis of the scaleout phase [default: KICKSTAND_TEST_REDIS_URL, else the local one].
    #[arg(long)]
    pub scaleout_redis_url: Option<String>,
    /// PostgreSQL of the scaleout phase [default: KICKSTAND_TEST_POSTGRES_URL, else the local
    /// `test` database].
    #[arg(long)]
    pub scaleout_postgres_url: Option<String>,
    /// Worker processes of the scaleout phase.
    #[arg(long, default_value_t = 2)]
    pub scaleout_workers: usize,
    /// Single-fix MQTT messages sent through the deployment after the HTTP load (0: none). The
    /// broker is --mqtt-url or KICKSTAND_TEST_MQTT_URL.
    #[arg(long, default_value_t = 100_000)]
    pub scaleout_mqtt_messages: usize,
    /// Subscribing connections of the ingest node in the scaleout phase (mqtt.connections).
    #[arg(long, default_value_t = 32)]
    pub scaleout_mqtt_connections: usize,
}

fn or_env(v: &Option<String>, var: &str, default: &str) -> String {
    v.clone()
        .or_else(|| std::env::var(var).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| default.to_owned())
}

/// A child `kickstand serve` process, stopped with SIGTERM on drop.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, roles: &str, env: &[(String, String)]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "serve",
        "--role",
        roles,
        "--listen",
        "127.0.0.1:0",
        "--auth",
        "off",
        "--data",
    ])
    .arg(dir)
    .env("KICKSTAND_LOG__LEVEL", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("`serve --role {roles}` did not start: {line:?}"))?;
    Ok(Proc { child, addr })
}

/// The sum over the workers of the metric lines that start with each of `names`.
async fn worker_metrics<const N: usize>(
    workers: &[SocketAddr],
    names: [&str; N],
) -> anyhow::Result<[f64; N]> {
    let mut total = [0.0; N];
    for &w in workers {
        let mut c = connect(w).await?;
        let (_, body) = request(&mut c, hyper::Method::GET, "/metrics", Default::default()).await?;
        for line in String::from_utf8_lossy(&body).lines() {
            for (i, name) in names.iter().enumerate() {
                if line.starts_with(name) && line[name.len()..].starts_with(' ') {
                    total[i] += line
                        .rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0);
                }
            }
        }
    }
    Ok(total)
}

/// Fixes the workers have taken (stored or recognised as duplicates), from their metrics.
async fn worker_fixes(workers: &[SocketAddr]) -> anyhow::Result<u64> {
    let [a, d] = worker_metrics(
        workers,
        [
            "kickstand_ingest_accepted_fixes_total",
            "kickstand_ingest_duplicate_fixes_total",
        ],
    )
    .await?;
    Ok((a + d) as u64)
}

/// Groups the workers wrote so far and the fixes in them.
async fn worker_groups(workers: &[SocketAddr]) -> anyhow::Result<(f64, f64)> {
    let [count, sum] = worker_metrics(
        workers,
        [
            "kickstand_pipeline_group_fixes_count",
            "kickstand_pipeline_group_fixes_sum",
        ],
    )
    .await?;
    Ok((count, sum))
}

/// CPU seconds used so far by every process whose command name is `comm` (from /proc; Linux).
fn cpu_of_comm(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            (name == comm).then(|| ticks(rest))
        })
        .sum()
}

fn cpu_of_pid(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(ticks(stat.rsplit_once(") ")?.1)))
        .unwrap_or(0.0)
}

/// utime + stime in seconds from the fields after the command name (USER_HZ is 100 on Linux).
fn ticks(after_comm: &str) -> f64 {
    let f: Vec<&str> = after_comm.split(' ').collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

pub async fn run(
    args: &ScaleoutBenchArgs,
    mqtt_url: Option<String>,
    dir: &Path,
    bodies: Arc<Vec<axum::body::Bytes>>,
    fixes: usize,
    vehicles: usize,
    connections: usize,
) -> anyhow::Result<serde_json::Value> {
    let name = kickstand_engine::testing::unique_name("ks_bench");
    let rabbit = RabbitConfig {
        url: or_env(
            &args.scaleout_rabbitmq_url,
            "KICKSTAND_TEST_RABBITMQ_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ),
        queue_prefix: name.clone(),
        ..RabbitConfig::default()
    };
    let redis = RedisStateConfig {
        url: or_env(
            &args.scaleout_redis_url,
            "KICKSTAND_TEST_REDIS_URL",
            "redis://127.0.0.1:6379/0",
        ),
        key_prefix: name.clone(),
        ..RedisStateConfig::default()
    };
    let pg = PostgresConfig {
        url: or_env(
            &args.scaleout_postgres_url,
            "KICKSTAND_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        schema: name.clone(),
        ..PostgresConfig::default()
    };
    let env: Vec<(String, String)> = [
        ("KICKSTAND_TRANSPORT__KIND", "rabbitmq"),
        ("KICKSTAND_TRANSPORT__RABBITMQ__URL", rabbit.url.as_str()),
        ("KICKSTAND_TRANSPORT__RABBITMQ__QUEUE_PREFIX", &name),
        ("KICKSTAND_STATE__KIND", "redis"),
        ("KICKSTAND_STATE__REDIS__URL", redis.url.as_str()),
        ("KICKSTAND_STATE__REDIS__KEY_PREFIX", &name),
        ("KICKSTAND_HISTORY__KIND", "postgres"),
        ("KICKSTAND_HISTORY__POSTGRES__URL", pg.url.as_str()),
        ("KICKSTAND_HISTORY__POSTGRES__SCHEMA", &name),
        ("KICKSTAND_FLEET__STORE", "postgres"),
        ("KICKSTAND_FLEET__POSTGRES__URL", pg.url.as_str()),
        ("KICKSTAND_FLEET__POSTGRES__SCHEMA", &name),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let mqtt = match mqtt_url.or_else(|| std::env::var("KICKSTAND_TEST_MQTT_URL").ok()) {
        Some(url) if args.scaleout_mqtt_messages > 0 => Some(crate::bench_mqtt::host_port(&url)?),
        _ => None,
    };
    let mut ingest_env = env.clone();
    if let Some((host, port)) = &mqtt {
        for (k, v) in [
            ("KICKSTAND_MQTT__ENABLED", "true".to_owned()),
            ("KICKSTAND_MQTT__HOST", host.clone()),
            ("KICKSTAND_MQTT__PORT", port.to_string()),
            ("KICKSTAND_MQTT__TOPIC", format!("{name}/+/telemetry")),
            ("KICKSTAND_MQTT__SHARE_GROUP", name.clone()),
            ("KICKSTAND_MQTT__CLIENT_ID", format!("{name}-ingest")),
            // Mosquitto sends each connection at most 20 unacked messages and drops what
            // overflows its queue of 1,000 (its defaults): in-flight capacity comes from
            // connections, and a scale-out ack waits for RabbitMQ's confirm.
            (
                "KICKSTAND_MQTT__CONNECTIONS",
                args.scaleout_mqtt_connections.to_string(),
            ),
        ] {
            ingest_env.push((k.to_owned(), v));
        }
    }
    eprintln!(
        "scaleout phase: 1 ingest and {} worker processes on RabbitMQ, Redis and PostgreSQL …",
        args.scaleout_workers
    );
    let result = async {
        let (d, e, ie) = (dir.to_path_buf(), env.clone(), ingest_env.clone());
        let n = args.scaleout_workers;
        let (ingest, workers) = tokio::task::spawn_blocking(move || {
            let ingest = spawn(&d.join("ingest"), "ingest,api", &ie)?;
            let workers = (0..n)
                .map(|i| spawn(&d.join(format!("worker-{i}")), "worker", &e))
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::Ok((ingest, workers))
        })
        .await??;
        let worker_addrs: Vec<SocketAddr> = workers.iter().map(|w| w.addr).collect();
        // Every worker holds shards before the load starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let kick_pids: Vec<u32> = std::iter::once(&ingest)
            .chain(&workers)
            .map(|c| c.child.id())
            .collect();
        let services = ["beam.smp", "postgres", "redis-server", "mosquitto"];
        let cpu0: Vec<f64> = services.iter().map(|s| cpu_of_comm(s)).collect();
        let kick0: Vec<f64> = kick_pids.iter().map(|p| cpu_of_pid(*p)).collect();
        let started = Instant::now();
        let load = crate::bench::load(ingest.addr, bodies, connections).await?;
        let acked = started.elapsed();
        anyhow::ensure!(
            load.accepted as usize == fixes,
            "acked {} of {fixes}",
            load.accepted
        );
        let deadline = Instant::now() + Duration::from_secs(600);
        while (worker_fixes(&worker_addrs).await? as usize) < fixes {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the workers did not finish in 600 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e2e = started.elapsed();
        let (groups, grouped) = worker_groups(&worker_addrs).await?;
        let cpu: Vec<f64> = services
            .iter()
            .zip(&cpu0)
            .map(|(s, c0)| cpu_of_comm(s) - c0)
            .collect();
        let kick: Vec<f64> = kick_pids
            .iter()
            .zip(&kick0)
            .map(|(p, c0)| cpu_of_pid(*p) - c0)
            .collect();
        // The fleet is whole in Redis, read through the API node.
        let mut c = connect(ingest.addr).await?;
        let (_, body) = request(
            &mut c,
            hyper::Method::GET,
            "/api/v1/fleet/summary",
            Default::default(),
        )
        .await?;
        let summary: serde_json::Value = serde_json::from_slice(&body)?;
        anyhow::ensure!(
            summary["vehicles"] == vehicles,
            "Redis holds {} vehicles of {vehicles}",
            summary["vehicles"]
        );
        let secs = e2e.as_secs_f64();
        let share = |c: f64| (c / secs * 100.0).round();
        let p = |q: f64| crate::bench::percentile(&load.latencies_ms, q);
        let mut mqtt_figures = serde_json::Value::Null;
        if let Some((host, port)) = &mqtt {
            let vehicles = 1000;
            let per_vehicle = args.scaleout_mqtt_messages.div_ceil(vehicles);
            let start = crate::bench::now_ms() - 3_600_000;
            let (per_publisher, _) =
                crate::bench_mqtt::payloads(&name, vehicles, per_vehicle, start, 1, 4);
            let total: usize = per_publisher.iter().map(Vec::len).sum();
            eprintln!("  {total} single-fix MQTT messages through {host}:{port} …");
            let before = worker_fixes(&worker_addrs).await? as usize;
            let groups0 = worker_groups(&worker_addrs).await?;
            let cpu0: Vec<f64> = services.iter().map(|s| cpu_of_comm(s)).collect();
            let kick0: Vec<f64> = kick_pids.iter().map(|p| cpu_of_pid(*p)).collect();
            let started = Instant::now();
            crate::bench_mqtt::publish_all(host, *port, &name, per_publisher).await?;
            let published = started.elapsed();
            // A broker that dropped messages (Mosquitto does when a subscriber's queue
            // overflows) shows as progress that stops short: give up after 10 s without any.
            let (mut seen, mut moved) = (0usize, Instant::now());
            loop {
                let now = worker_fixes(&worker_addrs).await? as usize - before;
                if now >= total {
                    break;
                }
                if now != seen {
                    (seen, moved) = (now, Instant::now());
                }
                anyhow::ensure!(
                    moved.elapsed() < Duration::from_secs(10),
                    "only {seen} of {total} MQTT messages arrived; did the broker drop the rest? \
                     (Mosquitto logs \"Outgoing messages are being dropped\"; see docs/mqtt.md)"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let elapsed = started.elapsed();
            let groups1 = worker_groups(&worker_addrs).await?;
            let (groups, grouped) = (groups1.0 - groups0.0, groups1.1 - groups0.1);
            let secs = elapsed.as_secs_f64();
            let used = |now: f64, then: f64| ((now - then) / secs * 100.0).round();
            let c: Vec<f64> = services
                .iter()
                .zip(&cpu0)
                .map(|(s, c0)| used(cpu_of_comm(s), *c0))
                .collect();
            let k: Vec<f64> = kick_pids
                .iter()
                .zip(&kick0)
                .map(|(p, c0)| used(cpu_of_pid(*p), *c0))
                .collect();
            mqtt_figures = json!({
                "messages": total,
                "published_per_s": (total as f64 / published.as_secs_f64()).round(),
                "end_to_end_messages_per_s": (total as f64 / secs).round(),
                "worker_groups": groups,
                "worker_mean_group_fixes": (grouped / groups.max(1.0)).round(),
                "cpu_percent_of_one_core": {
                    "mosquitto": c[3],
                    "kickstand_ingest": k[0],
                    "kickstand_workers": k[1..].iter().sum::<f64>(),
                    "rabbitmq": c[0],
                    "postgres": c[1],
                    "redis": c[2],
                },
            });
        }
        let value = json!({
            "mqtt_single_fix": mqtt_figures,
            "fixes": fixes,
            "worker_processes": args.scaleout_workers,
            "acked_points_per_s": (fixes as f64 / acked.as_secs_f64()).round(),
            "end_to_end_points_per_s": (fixes as f64 / secs).round(),
            "ack_p50_ms": (p(0.5) * 1000.0).round() / 1000.0,
            "ack_p99_ms": (p(0.99) * 1000.0).round() / 1000.0,
            "retries_503": load.retries,
            "seconds_end_to_end": (secs * 1000.0).round() / 1000.0,
            "worker_groups": groups,
            "worker_mean_group_fixes": (grouped / groups.max(1.0)).round(),
            "cpu_percent_of_one_core": {
                "kickstand_ingest": share(kick[0]),
                "kickstand_workers": share(kick[1..].iter().sum()),
                "rabbitmq": share(cpu[0]),
                "postgres": share(cpu[1]),
                "redis": share(cpu[2]),
                "mosquitto": share(cpu[3]),
            },
        });
        drop(ingest);
        drop(workers);
        anyhow::Ok(value)
    }
    .await;
    // Clean up whatever happened.
    let _ = kickstand_engine::rabbitmq::delete_topology(&rabbit).await;
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(r) = RedisState::open(&redis) {
            let _ = r.delete_all();
        }
        if let Ok(h) = PostgresHistory::open(&pg, kickstand_domain::BucketSpan::HOUR) {
            let _ = h.drop_schema();
        }
    })
    .await;
    result
}
