//! Two messenger processes (two `Messenger`s, each with its own connections) on one PostgreSQL
//! schema and one Redis: the rate limit holds across both, and every message is sent once.

mod common;

use common::*;
use kickstand_messenger::{Messenger, MessengerConfig};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_two_processes() {
    let Some(redis) = service_url("REDIS") else {
        return;
    };
    let Some(store) = Store::postgres().await else {
        return;
    };
    let secrets = Secrets::new();
    let rx = Receiver::start(vec![200]).await;
    let (rate, burst, per_process) = (20.0, 4u32, 30usize);
    let mut ch = webhook_channel(&secrets, "crew", &rx.url, 100, 3);
    ch.rate_per_sec = Some(rate);
    ch.burst = Some(burst);
    let cfg = MessengerConfig {
        redis_url: Some(redis),
        redis_prefix: unique("kickstand_test"),
        ..config(vec![ch])
    };
    let a = Messenger::start(cfg.clone(), store.db.clone())
        .await
        .unwrap();
    let b = Messenger::start(cfg, store.same_postgres().await)
        .await
        .unwrap();
    let caller = kickstand_service::Caller::anonymous();
    let mut ids = Vec::new();
    for i in 0..per_process {
        for m in [&a, &b] {
            let req = serde_json::from_value(json!({
                "channel": "crew", "subject": "s", "body": format!("{i}")
            }))
            .unwrap();
            ids.push(m.send(req, None, &caller).await.unwrap().answer.id);
        }
    }
    let total = 2 * per_process;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rx.hits().len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {total} arrived",
            rx.hits().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = rx.hits();
    assert_eq!(hits.len(), total, "each message is sent once");
    // In every window from one arrival to a later one, no more than rate × time + burst
    // arrived (plus one for the network's jitter at the window's edge).
    let first = hits[0].at;
    for i in 0..hits.len() {
        for j in i..hits.len() {
            let secs = hits[j].at.duration_since(hits[i].at).as_secs_f64();
            let n = (j - i + 1) as f64;
            assert!(
                n <= rate * secs + f64::from(burst) + 1.0,
                "{n} arrivals in {secs:.3} s (from {:?})",
                hits[i].at.duration_since(first)
            );
        }
    }
    // Without a shared limit, two processes would go twice as fast: the whole run takes at
    // least (total - burst) / rate.
    let span = hits.last().unwrap().at.duration_since(first).as_secs_f64();
    assert!(
        span >= (total as f64 - f64::from(burst)) / rate - 0.1,
        "{span}"
    );
    // Every message is recorded as sent, once.
    let page = store
        .db
        .query(
            "SELECT COUNT(*) FROM messenger_messages WHERE status = 'sent'",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(page[0].int(0).unwrap(), total as i64);
    a.shutdown().await;
    b.shutdown().await;
    store.cleanup().await;
}
