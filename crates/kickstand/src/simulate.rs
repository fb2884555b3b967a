//! `kickstand sim`: drives a running Kickstand over HTTP with a simulated fleet, like real
//! devices behind a gateway would: every interval, every scooter reports, in batches, over a
//! few kept-alive connections. A 503 is retried after its `Retry-After`. Shows the achieved rate
//! on a progress bar and prints a summary at the end.

use crate::client::{Connection, connect, parse_target, request_with};
use crate::sim::{self, Fleet};
use axum::body::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SimArgs {
    /// Base URL of the Kickstand to drive, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    target: String,
    /// Scooters in the fleet.
    #[arg(long, default_value_t = 1000)]
    vehicles: usize,
    /// Time between two reports of a scooter (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop after this long (e.g. 10m); runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Fixes per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// City to drive in: seoul, paris, berlin, new-york, sao-paulo.
    #[arg(long, default_value = "seoul")]
    city: String,
    /// Seed: the same seed gives the same fleet and the same trips.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// API key with the ingest scope.
    #[arg(long, env = "KICKSTAND_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

/// Sends one body, retrying 503s; counts the outcome.
async fn send(
    conn: &mut Connection,
    path: &str,
    token: Option<&str>,
    body: Bytes,
    items: u64,
    tally: &Tally,
) {
    for _ in 0..20 {
        match request_with(conn, hyper::Method::POST, path, token, body.clone()).await {
            Ok((202, _, resp)) => {
                let v: serde_json::Value = serde_json::from_slice(&resp).unwrap_or_default();
                tally
                    .accepted
                    .fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                tally
                    .duplicates
                    .fetch_add(v["duplicates"].as_u64().unwrap_or(0), Ordering::Relaxed);
                let rejected = v["rejected"].as_array().map_or(0, |r| r.len() as u64);
                tally.rejected.fetch_add(rejected, Ordering::Relaxed);
                return;
            }
            Ok((503, headers, _)) => {
                tally.retries.fetch_add(1, Ordering::Relaxed);
                let wait = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait.min(10))).await;
            }
            Ok((status, _, resp)) => {
                tracing::warn!(message = "request refused", status, body = %String::from_utf8_lossy(&resp));
                tally.failed.fetch_add(items, Ordering::Relaxed);
                return;
            }
            Err(error) => {
                tracing::warn!(message = "request failed", %error);
                tally.failed.fetch_add(items, Ordering::Relaxed);
                return;
            }
        }
    }
    tally.failed.fetch_add(items, Ordering::Relaxed);
}

async fn run_async(args: SimArgs) -> anyhow::Result<()> {
    let (addr, prefix) = parse_target(&args.target)?;
    let path = format!("{}/api/v1/telemetry", prefix.trim_end_matches('/'));
    let city =
        sim::city(&args.city).ok_or_else(|| anyhow::anyhow!("unknown --city {:?}", args.city))?;
    anyhow::ensure!(
        args.vehicles > 0 && args.batch > 0 && args.connections > 0,
        "--vehicles, --batch and --connections must be positive"
    );
    anyhow::ensure!(!args.interval.is_zero(), "--interval must be positive");
    let mut fleet = Fleet::new(args.vehicles, city, args.seed);
    let tally = Arc::new(Tally::default());
    let token: Option<Arc<str>> = args.token.as_deref().map(Arc::from);
    // Bodies go to a bounded queue drained by one task per connection: when the server is
    // slower than the fleet, the simulator falls behind instead of buffering without bound.
    let (tx, rx) = async_channel(args.connections * 2);
    let mut senders = Vec::new();
    for _ in 0..args.connections {
        let mut conn = connect(addr).await?;
        let rx = rx.clone();
        let tally = tally.clone();
        let path = path.clone();
        let token = token.clone();
        senders.push(tokio::spawn(async move {
            while let Ok((body, items)) = rx.recv().await {
                send(&mut conn, &path, token.as_deref(), body, items, &tally).await;
            }
        }));
    }
    drop(rx);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("a valid template"),
    );
    let started = Instant::now();
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let dt = args.interval.as_secs_f64();
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let fixes = fleet.tick(dt, now_ms());
        for chunk in fixes.chunks(args.batch) {
            let mut body = Vec::with_capacity(chunk.len() * 230 + 2);
            body.push(b'[');
            for (i, f) in chunk.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                sim::write_json(&mut body, f);
            }
            body.push(b']');
            tally.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if tx
                .send((Bytes::from(body), chunk.len() as u64))
                .await
                .is_err()
            {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{} vehicles · {} fixes sent · {:.0}/s · {} accepted · {} duplicates · {} rejected · {} retries",
            args.vehicles,
            tally.sent.load(Ordering::Relaxed),
            tally.accepted.load(Ordering::Relaxed) as f64 / secs,
            tally.accepted.load(Ordering::Relaxed),
            tally.duplicates.load(Ordering::Relaxed),
            tally.rejected.load(Ordering::Relaxed),
            tally.retries.load(Ordering::Relaxed),
        ));
        bar.tick();
    }
    drop(tx);
    for s in senders {
        let _ = s.await;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let t = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "vehicles": args.vehicles,
        "seconds": (secs * 10.0).round() / 10.0,
        "sent": t(&tally.sent),
        "accepted": t(&tally.accepted),
        "duplicates": t(&tally.duplicates),
        "rejected": t(&tally.rejected),
        "failed": t(&tally.failed),
        "retries_503": t(&tally.retries),
        "accepted_per_s": (t(&tally.accepted) as f64 / secs).round(),
    });
    println!("{summary}");
    anyhow::ensure!(
        t(&tally.failed) == 0,
        "{} fixes could not be delivered",
        t(&tally.failed)
    );
    Ok(())
}

/// A bounded multi-consumer queue from tokio's primitives.
fn async_channel<T: Send + 'static>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (Sender(tx), Receiver(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct Sender<T>(tokio::sync::mpsc::Sender<T>);

impl<T> Sender<T> {
    async fn send(&self, v: T) -> Result<(), ()> {
        self.0.send(v).await.map_err(|_| ())
    }
}

struct Receiver<T>(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>);

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver(self.0.clone())
    }
}

impl<T> Receiver<T> {
    async fn recv(&self) -> Result<T, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
