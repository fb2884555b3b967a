//! Ack means durable: `kill -9` a real `kickstand run` in the middle of a stream of acked
//! requests, restart it on the same directory, and check that every acked fix is in history
//! exactly once and every vehicle's latest state is its newest acked fix. On the embedded
//! store and on PostgreSQL (`KICKSTAND_TEST_POSTGRES_URL`).

mod common;

use common::{Server, client, now_ms};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const VEHICLES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_fix_survives_kill_9_exactly_once() {
    // Small checkpoints so the kill lands between checkpoints, WAL segments and engine batches.
    kill_9_and_check(&[
        ("KICKSTAND_HISTORY__EMBEDDED__CHECKPOINT_FIXES", "700"),
        ("KICKSTAND_HISTORY__EMBEDDED__CHECKPOINT_INTERVAL_MS", "50"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_fix_survives_kill_9_exactly_once_on_postgres() {
    use kickstand_domain::BucketSpan;
    use kickstand_engine::history::postgres::{PostgresConfig, PostgresHistory};
    let Some(url) = kickstand_engine::testing::service_url("POSTGRES") else {
        return;
    };
    let config = PostgresConfig {
        url: url.clone(),
        schema: kickstand_engine::testing::unique_name("crash"),
        ..PostgresConfig::default()
    };
    // The store's client runs its own runtime: open it off this one.
    let c = config.clone();
    let store =
        match tokio::task::spawn_blocking(move || PostgresHistory::open(&c, BucketSpan::HOUR))
            .await
            .unwrap()
        {
            Ok(s) => s,
            Err(e) => return kickstand_engine::testing::unreachable("PostgreSQL", e).unwrap_or(()),
        };
    kill_9_and_check(&common::pg_env(&url, &config.schema)).await;
    tokio::task::spawn_blocking(move || store.drop_schema())
        .await
        .unwrap()
        .unwrap();
}

async fn kill_9_and_check(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), env);
    let c = client();
    let base = now_ms() - 4 * 3_600_000;
    // acked[v] = timestamps acked for vehicle v.
    let acked: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let mut senders = Vec::new();
    for sender in 0..4 {
        let c = c.clone();
        let url = s.url("/api/v1/telemetry");
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for round in 0..1400 {
                // Each sender owns 10 vehicles; each request carries 5 s of reports for them,
                // crossing hour buckets as the rounds go on.
                let mut batch = Vec::new();
                for v in 0..VEHICLES / 4 {
                    let id = format!("v{}", sender * 10 + v);
                    for k in 0..5i64 {
                        let ts = base + (round * 5 + k) * 2000;
                        batch.push(json!({"vehicle_id": id, "ts": ts, "lat": 37.0 + (ts % 1000) as f64 * 1e-5, "lon": 127.0, "battery_pct": 50}));
                    }
                }
                let resp = match c.post(&url).json(&batch).send().await {
                    Ok(r) => r,
                    Err(_) => return, // the server is gone
                };
                if resp.status() != 202 {
                    continue;
                }
                let Ok(v) = resp.json::<Value>().await else { return };
                assert_eq!(v["accepted"], batch.len(), "{v}");
                let mut a = acked.lock().unwrap();
                for f in &batch {
                    a.entry(f["vehicle_id"].as_str().unwrap().to_owned())
                        .or_default()
                        .push(f["ts"].as_i64().unwrap());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill9();
    for t in senders {
        t.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(
        total > 1000,
        "too few acked before the kill to prove anything: {total}"
    );

    let s = Server::start_with(dir.path(), env);
    let mut checked = 0;
    for (id, ts) in &acked {
        let newest = *ts.iter().max().unwrap();
        let url = s.url(&format!(
            "/api/v1/vehicles/{id}/track?from={base}&to={}",
            now_ms()
        ));
        let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
        let got: Vec<i64> = v["fixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                kickstand_domain::timefmt::parse_rfc3339_ms(f["ts"].as_str().unwrap()).unwrap()
            })
            .collect();
        let mut want = ts.clone();
        want.sort_unstable();
        // Fixes sent but not acked before the kill may be there too (durable, just unanswered);
        // every acked one must be, exactly once.
        let mut dedup = got.clone();
        dedup.dedup();
        assert_eq!(dedup, got, "{id}: a fix is stored twice");
        for t in &want {
            assert!(
                got.binary_search(t).is_ok(),
                "{id}: acked fix {t} is missing"
            );
        }
        let latest: Value = c
            .get(s.url(&format!("/api/v1/vehicles/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let latest_ts =
            kickstand_domain::timefmt::parse_rfc3339_ms(latest["ts"].as_str().unwrap()).unwrap();
        assert_eq!(
            latest_ts,
            *got.last().unwrap(),
            "{id}: latest state is the newest stored fix"
        );
        assert!(
            latest_ts >= newest,
            "{id}: latest state older than an acked fix"
        );
        checked += want.len();
    }
    assert_eq!(checked, total);
    s.stop();
}
