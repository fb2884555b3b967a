//! Gateway overhead: the same requests to a local backend directly and through the gateway, in
//! one run.
//!
//! `nice -n 19 cargo bench -p kickstand-gateway` (or `cargo run --release` of this bench
//! target). Settings from the environment: `GATEWAY_BENCH_REQUESTS` (default 40000, per
//! phase), `GATEWAY_BENCH_CONNECTIONS` (default 16 keep-alive connections), and
//! `GATEWAY_BENCH_ROUNDS` (default 2; the phases alternate so a noisy moment hits both).
//!
//! Backend, gateway and load generator share one tokio runtime in one process, so the figures
//! include the load generator's own cost; the overhead is the difference between the phases.

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use kickstand_gateway::{ActionConfig, ForwardConfig, Gateway, GatewayConfig, TargetGroupConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let requests = env("GATEWAY_BENCH_REQUESTS", 40_000);
    let connections = env("GATEWAY_BENCH_CONNECTIONS", 16).max(1);
    let rounds = env("GATEWAY_BENCH_ROUNDS", 2).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let backend = start_backend().await;
        let gateway = start_gateway(backend).await;
        println!(
            "gateway bench: {requests} requests per phase over {connections} keep-alive connections, {} CPUs, {rounds} rounds",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        // Warm up both paths (connections, pools, caches).
        run(backend, requests / 10, connections).await;
        run(gateway, requests / 10, connections).await;
        for round in 1..=rounds {
            let direct = run(backend, requests, connections).await;
            let through = run(gateway, requests, connections).await;
            println!("round {round}:");
            direct.print("  direct ");
            through.print("  gateway");
            println!(
                "  overhead: p50 +{:.1} µs, p99 +{:.1} µs, throughput {:.0}% of direct",
                through.p50_us - direct.p50_us,
                through.p99_us - direct.p99_us,
                100.0 * through.rps / direct.rps
            );
        }
    });
}

async fn start_backend() -> SocketAddr {
    let app = Router::new().fallback(get(|| async {
        (
            [("content-type", "application/json")],
            r#"{"vehicle_id":"scooter-0042","battery_pct":87,"state":"available"}"#,
        )
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn start_gateway(backend: SocketAddr) -> SocketAddr {
    let config = GatewayConfig {
        default_action: Some(ActionConfig::Forward(ForwardConfig {
            target_group: Some("api".into()),
            target_groups: Vec::new(),
        })),
        target_groups: vec![TargetGroupConfig {
            name: "api".into(),
            targets: vec![backend.to_string()],
            request_timeout_ms: 60_000,
            health_check: Default::default(),
        }],
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start(config).await.expect("a valid config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    addr
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

impl Figures {
    fn print(&self, name: &str) {
        println!(
            "{name}: p50 {:>7.1} µs  p99 {:>7.1} µs  {:>8.0} requests/s",
            self.p50_us, self.p99_us, self.rps
        );
    }
}

/// `requests` GETs spread over `connections` HTTP/1.1 keep-alive connections, each sending its
/// share one after the other.
async fn run(addr: SocketAddr, requests: usize, connections: usize) -> Figures {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let share = requests / connections + usize::from(c < requests % connections);
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(share);
            for _ in 0..share {
                let req = Request::get("/api/v1/vehicles/scooter-0042")
                    .header("host", addr.to_string())
                    .body(Empty::new())
                    .expect("a request");
                let t = Instant::now();
                sender.ready().await.expect("connection ready");
                let resp = sender.send_request(req).await.expect("a response");
                assert!(resp.status().is_success(), "status {}", resp.status());
                resp.into_body().collect().await.expect("the body");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all: Vec<Duration> = Vec::with_capacity(requests);
    for t in tasks {
        all.extend(t.await.expect("a load task"));
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i].as_secs_f64() * 1e6
    };
    Figures {
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        rps: all.len() as f64 / elapsed.as_secs_f64(),
    }
}
