//! Messages per second delivered to a local webhook receiver, SQLite store, no rate limit:
//! `N` messages accepted through `Messenger::send` while the delivery loop runs, timed from
//! the first accept to the last arrival.
//!
//! `cargo bench -p kickstand-messenger --bench messenger -- [messages] [concurrency]`

use kickstand_messenger::{ChannelConfig, ChannelKind, Messenger, MessengerConfig, SendRequest};
use kickstand_service::{Caller, Db};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let total: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);

    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("url"), &url).unwrap();
    std::fs::write(dir.path().join("secret"), "whsec_bench_secret").unwrap();
    let mut ch = ChannelConfig::new("bench", ChannelKind::Webhook);
    ch.url_file = Some(dir.path().join("url").display().to_string());
    ch.secret_file = Some(dir.path().join("secret").display().to_string());
    ch.concurrency = Some(concurrency);
    let db = Db::open_sqlite(&dir.path().join("ops.db")).unwrap();
    let m = Messenger::start(
        MessengerConfig {
            channels: vec![ch],
            poll_interval_ms: 50,
            ..MessengerConfig::default()
        },
        db,
    )
    .await
    .unwrap();

    let start = Instant::now();
    let producers = 4;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let caller = Caller::anonymous();
            for i in (p..total).step_by(producers) {
                let req = SendRequest {
                    channel: "bench".into(),
                    subject: Some("Low battery: {{ v }}".into()),
                    body: Some("{{ v }} is at {{ pct }}%".into()),
                    vars: serde_json::json!({"v": format!("sc-{i}"), "pct": 9})
                        .as_object()
                        .cloned(),
                    ..SendRequest::default()
                };
                m.send(req, None, &caller).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = start.elapsed();
    while received.load(Ordering::Relaxed) < total {
        assert!(start.elapsed() < Duration::from_secs(600), "too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = start.elapsed();
    println!(
        "messenger: {total} messages, channel concurrency {concurrency}, SQLite store: \
         accepted in {:.2} s ({:.0}/s), all delivered in {:.2} s: {:.0} messages/s delivered",
        accepted.as_secs_f64(),
        total as f64 / accepted.as_secs_f64(),
        all.as_secs_f64(),
        total as f64 / all.as_secs_f64()
    );
    m.shutdown().await;
}
