//! Delivery through a real local HTTP receiver that fails on purpose: the retry schedule, the
//! signature, dead letters and their retry, and permanent failures; on a SQLite file and on
//! PostgreSQL.

mod common;

use common::*;
use kickstand_messenger::Messenger;
use kickstand_webhooks::signing;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

async fn post(http: &reqwest::Client, base: &str, body: Value) -> Value {
    let r = http
        .post(format!("{base}/api/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    r.json().await.unwrap()
}

fn gap_ms(hits: &[Hit], i: usize) -> u128 {
    hits[i + 1].at.duration_since(hits[i].at).as_millis()
}

async fn retries_then_sends(store: &Store) {
    let secrets = Secrets::new();
    let rx = Receiver::start(vec![500, 500, 200]).await;
    let cfg = config(vec![webhook_channel(&secrets, "crew", &rx.url, 150, 5)]);
    let m = Messenger::start(cfg, store.db.clone()).await.unwrap();
    let base = serve(&m).await;
    let http = reqwest::Client::new();
    let a = post(
        &http,
        &base,
        json!({"channel": "crew", "to": "swap-team", "subject": "Low battery: {{ v }}",
               "body": "{{ v }} at {{ pct }}%", "vars": {"v": "sc-7", "pct": 8}}),
    )
    .await;
    assert_eq!(a["status"], "queued");
    let id = a["id"].as_str().unwrap();
    let msg = wait_status(&http, &base, id, "sent").await;
    let hits = rx.hits();
    assert_eq!(hits.len(), 3);
    // The schedule: 150 ms then 300 ms (no jitter), each attempt a little later than its time.
    let (g1, g2) = (gap_ms(&hits, 0), gap_ms(&hits, 1));
    assert!((150..1_000).contains(&g1), "first gap {g1} ms");
    assert!((300..1_200).contains(&g2), "second gap {g2} ms");
    assert!(g2 > g1);
    // Every attempt is signed over its own timestamp and body, with the message id.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for h in &hits {
        let ts = h.headers[signing::TIMESTAMP_HEADER].to_str().unwrap();
        let sig = h.headers[signing::SIGNATURE_HEADER].to_str().unwrap();
        signing::verify(SIGNING_SECRET, ts, sig, &h.body, now, 300).unwrap();
        assert_eq!(h.headers[signing::ID_HEADER], id);
        assert!(signing::verify("whsec_wrong", ts, sig, &h.body, now, 300).is_err());
    }
    let body: Value = serde_json::from_slice(&hits[2].body).unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["channel"], "crew");
    assert_eq!(body["to"], "swap-team");
    assert_eq!(body["subject"], "Low battery: sc-7");
    assert_eq!(body["body"], "sc-7 at 8%");
    assert_eq!(body["vars"], json!({"v": "sc-7", "pct": 8}));
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    // The log holds the receiver's real answers.
    let attempts = msg["attempts"].as_array().unwrap();
    let codes: Vec<i64> = attempts
        .iter()
        .map(|a| a["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 200]);
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "sent"]);
    assert_eq!(attempts[0]["answer"], "receiver says 500 to request 1");
    assert_eq!(attempts[2]["answer"], "receiver says 200 to request 3");
    m.shutdown().await;
}

async fn dead_letters_then_retry(store: &Store) {
    let secrets = Secrets::new();
    let always = Receiver::start(vec![500]).await;
    let gone = Receiver::start(vec![404]).await;
    let cfg = config(vec![
        webhook_channel(&secrets, "flaky", &always.url, 100, 4),
        webhook_channel(&secrets, "gone", &gone.url, 100, 4),
    ]);
    let m = Messenger::start(cfg, store.db.clone()).await.unwrap();
    let base = serve(&m).await;
    let http = reqwest::Client::new();
    let a = post(
        &http,
        &base,
        json!({"channel": "flaky", "subject": "s", "body": "b"}),
    )
    .await;
    let b = post(
        &http,
        &base,
        json!({"channel": "gone", "subject": "s", "body": "b"}),
    )
    .await;
    let id = a["id"].as_str().unwrap();
    let dead = wait_status(&http, &base, id, "dead").await;
    let hits = always.hits();
    assert_eq!(hits.len(), 4, "max_attempts = 4");
    // Growing gaps: 100, 200, 400 ms.
    let gaps: Vec<u128> = (0..3).map(|i| gap_ms(&hits, i)).collect();
    for (g, want) in gaps.iter().zip([100u128, 200, 400]) {
        assert!(*g >= want && *g < want + 700, "gaps {gaps:?}");
    }
    assert!(gaps[0] < gaps[1] && gaps[1] < gaps[2], "gaps {gaps:?}");
    let outcomes: Vec<&str> = dead["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "failed"]);
    assert_eq!(dead["last_error"], "HTTP 500");
    // 404 is permanent: one attempt, dead at once.
    let gone_msg = wait_status(&http, &base, b["id"].as_str().unwrap(), "dead").await;
    assert_eq!(gone_msg["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(gone_msg["attempts"][0]["code"], 404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gone.hits().len(), 1, "a 404 is not retried");
    // The dead-letter list holds both; a retry queues one again with a fresh round.
    let page: Value = http
        .get(format!("{base}/api/v1/messages?status=dead"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    let r = http
        .post(format!("{base}/api/v1/messages/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let again = wait_status(&http, &base, id, "dead").await;
    assert_eq!(again["attempts"].as_array().unwrap().len(), 8);
    assert_eq!(always.hits().len(), 8);
    // Only a dead letter can be retried; an unknown id is a 404.
    let r = http
        .post(format!("{base}/api/v1/messages/msg_nope/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let tomorrow = kickstand_service::now_ms() + 86_400_000;
    let ok = post(
        &http,
        &base,
        json!({"channel": "flaky", "subject": "s", "body": "b", "send_at": tomorrow}),
    )
    .await;
    assert_eq!(ok["status"], "scheduled");
    let r = http
        .post(format!(
            "{base}/api/v1/messages/{}/retry",
            ok["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retries_then_sends_signed() {
    let s = Store::sqlite().await;
    retries_then_sends(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dead_letters_and_retry() {
    let s = Store::sqlite().await;
    dead_letters_then_retry(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retries_then_sends_signed() {
    let Some(s) = Store::postgres().await else {
        return;
    };
    retries_then_sends(&s).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dead_letters_and_retry() {
    let Some(s) = Store::postgres().await else {
        return;
    };
    dead_letters_then_retry(&s).await;
    s.cleanup().await;
}

/// A channel whose receiver never answers in time holds only its own slots: another
/// channel's messages go through meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_channel_does_not_block_another() {
    let store = Store::sqlite().await;
    let secrets = Secrets::new();
    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hook/x", silent.local_addr().unwrap());
    let fast = Receiver::start(vec![200]).await;
    let mut slow = webhook_channel(&secrets, "slow", &silent_url, 100, 2);
    slow.concurrency = Some(2);
    let cfg = config(vec![
        slow,
        webhook_channel(&secrets, "fast", &fast.url, 100, 2),
    ]);
    let m = Messenger::start(cfg, store.db.clone()).await.unwrap();
    let base = serve(&m).await;
    let http = reqwest::Client::new();
    for _ in 0..4 {
        post(
            &http,
            &base,
            json!({"channel": "slow", "subject": "s", "body": "b"}),
        )
        .await;
    }
    let start = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        let a = post(
            &http,
            &base,
            json!({"channel": "fast", "subject": "s", "body": format!("{i}")}),
        )
        .await;
        ids.push(a["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        wait_status(&http, &base, id, "sent").await;
    }
    assert!(
        start.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        start.elapsed()
    );
    // The slow ones time out (2 s) and are retried, not sent.
    let page: Value = http
        .get(format!("{base}/api/v1/messages?channel=slow"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] != "sent")
    );
    drop(silent);
    m.shutdown().await;
}
