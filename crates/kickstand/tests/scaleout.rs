//! `kickstand serve --role …`: separate ingest, worker and API processes of the real binary on
//! the real RabbitMQ, Redis and PostgreSQL, each test on queues, keys and a schema of its own.
//! The fault tests of issue 5: a worker killed with SIGKILL mid-stream, Redis flushed
//! mid-stream, RabbitMQ unreachable from ingest, a poison message.

mod common;

use common::{Deployment, Proxy, Server, client, fix, get_json, now_ms};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

async fn post(c: &reqwest::Client, s: &Server, body: &Value) -> reqwest::Response {
    c.post(s.url("/api/v1/telemetry"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Polls `check` every 100 ms until it is true or `secs` pass.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn latest_ts(c: &reqwest::Client, s: &Server, id: &str) -> Option<i64> {
    let r = c
        .get(s.url(&format!("/api/v1/vehicles/{id}")))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    kickstand_domain::timefmt::parse_rfc3339_ms(v["ts"].as_str()?)
}

/// Every stored timestamp of a vehicle's track (duplicates kept).
async fn track(c: &reqwest::Client, s: &Server, id: &str, from: i64) -> Vec<i64> {
    let to = now_ms() + 60_000;
    let v = get_json(
        c,
        &s.url(&format!("/api/v1/vehicles/{id}/track?from={from}&to={to}")),
    )
    .await;
    v["fixes"]
        .as_array()
        .unwrap_or_else(|| panic!("no fixes in {v}"))
        .iter()
        .map(|f| kickstand_domain::timefmt::parse_rfc3339_ms(f["ts"].as_str().unwrap()).unwrap())
        .collect()
}

/// Waits until every vehicle's track is exactly its acked timestamps (each once) and its latest
/// state is the newest of them.
async fn assert_exactly_once(
    c: &reqwest::Client,
    s: &Server,
    acked: &BTreeMap<String, BTreeSet<i64>>,
    from: i64,
) {
    let start = Instant::now();
    for (id, want) in acked {
        let want: Vec<i64> = want.iter().copied().collect();
        loop {
            let got = track(c, s, id, from).await;
            if got == want && latest_ts(c, s, id).await == want.last().copied() {
                break;
            }
            let dup = got.len() != got.iter().collect::<BTreeSet<_>>().len();
            assert!(!dup, "{id}: a fix is stored twice: {got:?}");
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{id}: history {got:?} (latest {:?}) is not the acked {want:?}",
                latest_ts(c, s, id).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn dirs() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_share_one_fleet_and_a_poison_message_is_dead_lettered() {
    let Some(d) = Deployment::new(0) else { return };
    let tmp = dirs();
    let ingest = Server::serve(&tmp.path().join("i"), "ingest", &d.env);
    let api = Server::serve(&tmp.path().join("a"), "api", &d.env);
    let w1 = Server::serve(&tmp.path().join("w1"), "worker", &d.env);
    let w2 = Server::serve(&tmp.path().join("w2"), "worker", &d.env);
    let c = client();
    let t0 = now_ms() - 60_000;
    let body: Vec<Value> = (0..100)
        .flat_map(|v| {
            let id = format!("sc-{v}");
            [
                fix(&id, t0, 37.5, 127.0 + f64::from(v) * 1e-4),
                fix(&id, t0 + 1_000, 37.5, 127.0 + f64::from(v) * 1e-4),
            ]
        })
        .collect();
    let r = post(&c, &ingest, &Value::Array(body)).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 200, "{v}");

    // The API process (no ingest, no worker) sees what the workers wrote.
    eventually(
        20,
        "every vehicle at its newest fix on the API node",
        || async {
            let v: Value = get_json(&c, &api.url("/api/v1/fleet/summary")).await;
            v["vehicles"] == 100 && latest_ts(&c, &api, "sc-99").await == Some(t0 + 1_000)
        },
    )
    .await;
    assert_eq!(track(&c, &api, "sc-7", t0 - 1).await, vec![t0, t0 + 1_000]);
    let near: Value = get_json(
        &c,
        &api.url("/api/v1/vehicles?near=37.5,127.0&radius_m=100"),
    )
    .await;
    assert_eq!(near["vehicles"][0]["vehicle_id"], "sc-0", "{near}");

    // An API-only node refuses ingest, saying why.
    let r = post(&c, &api, &fix("sc-1", t0 + 2_000, 37.5, 127.0)).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("ingest role"));

    // A poison message on a shard queue goes to the dead-letter queue with the reason and does
    // not block its shard.
    let poison_shard = 0;
    publish_raw(
        &d.rabbit,
        &d.rabbit.shard_queue(poison_shard),
        b"{\"not\":\"a batch\"}",
    )
    .await;
    // (Each where it was: a jump of hundreds of metres in seconds would be flagged.)
    let later: Vec<Value> = (0..100)
        .map(|v| {
            let lon = 127.0 + f64::from(v) * 1e-4;
            fix(&format!("sc-{v}"), t0 + 3_000, 37.5, lon)
        })
        .collect();
    assert_eq!(post(&c, &ingest, &Value::Array(later)).await.status(), 202);
    eventually(
        20,
        "the fixes after the poison message are applied",
        || async {
            let mut all = true;
            for v in 0..100 {
                all &= latest_ts(&c, &api, &format!("sc-{v}")).await == Some(t0 + 3_000);
            }
            all
        },
    )
    .await;
    let (body, reason) = get_dead_letter(&d.rabbit).await.expect("a dead letter");
    assert_eq!(body, b"{\"not\":\"a batch\"}");
    assert!(reason.contains("magic"), "{reason}");

    for s in [ingest, api, w1, w2] {
        s.stop();
    }
    d.clean_up().await;
}

async fn amqp(cfg: &kickstand_engine::rabbitmq::RabbitConfig) -> amqprs::connection::Connection {
    amqprs::connection::Connection::open(&cfg.connection_args().unwrap())
        .await
        .unwrap()
}

async fn publish_raw(cfg: &kickstand_engine::rabbitmq::RabbitConfig, queue: &str, body: &[u8]) {
    use amqprs::channel::{BasicPublishArguments, ConfirmSelectArguments};
    let conn = amqp(cfg).await;
    let ch = conn.open_channel(None).await.unwrap();
    ch.confirm_select(ConfirmSelectArguments::default())
        .await
        .unwrap();
    let mut props = amqprs::BasicProperties::default();
    props.with_delivery_mode(amqprs::DELIVERY_MODE_PERSISTENT);
    ch.basic_publish(props, body.to_vec(), BasicPublishArguments::new("", queue))
        .await
        .unwrap();
    // Closing the channel waits for the broker to have processed the publish.
    ch.close().await.unwrap();
    conn.close().await.unwrap();
}

/// Takes one message off the dead-letter queue: its body and `x-kickstand-reason`.
async fn get_dead_letter(
    cfg: &kickstand_engine::rabbitmq::RabbitConfig,
) -> Option<(Vec<u8>, String)> {
    use amqprs::channel::BasicGetArguments;
    let conn = amqp(cfg).await;
    let ch = conn.open_channel(None).await.unwrap();
    let mut args = BasicGetArguments::new(&cfg.dead_letter_queue());
    args.no_ack(true);
    let got = ch.basic_get(args).await.unwrap();
    let out = got.map(|(_, props, body)| {
        let reason = props
            .headers()
            .and_then(|h| h.get(&"x-kickstand-reason".try_into().unwrap()).cloned())
            .map(|v| match v {
                amqprs::FieldValue::S(s) => s.to_string(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        (body, reason)
    });
    ch.close().await.unwrap();
    conn.close().await.unwrap();
    out
}

/// Sends one fix per vehicle per round until `stop`, each request retried until it is acked;
/// returns every acked (vehicle, ts).
async fn stream_fixes(
    ingest: std::net::SocketAddr,
    vehicles: usize,
    t0: i64,
    rounds: i64,
    pause: Duration,
) -> BTreeMap<String, BTreeSet<i64>> {
    let c = client();
    let url = format!("http://{ingest}/api/v1/telemetry");
    let mut acked: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for round in 0..rounds {
        let ts = t0 + round * 1_000;
        let body: Vec<Value> = (0..vehicles)
            .map(|v| fix(&format!("k-{v}"), ts, 37.5, 127.0 + v as f64 * 1e-4))
            .collect();
        let start = Instant::now();
        loop {
            match c.post(&url).json(&body).send().await {
                Ok(r) if r.status() == 202 => break,
                Ok(r) => assert_eq!(r.status(), 503, "only 503 may refuse a good batch"),
                Err(_) => {}
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no ack in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for v in 0..vehicles {
            acked.entry(format!("k-{v}")).or_default().insert(ts);
        }
        tokio::time::sleep(pause).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_and_duplicates_nothing() {
    let Some(d) = Deployment::new(0) else { return };
    let tmp = dirs();
    let ingest = Server::serve(&tmp.path().join("i"), "ingest,api", &d.env);
    let w1 = Server::serve(&tmp.path().join("w1"), "worker", &d.env);
    let w2 = Server::serve(&tmp.path().join("w2"), "worker", &d.env);
    let t0 = now_ms() - 600_000;
    let sender = tokio::spawn(stream_fixes(
        ingest.addr,
        200,
        t0,
        60,
        Duration::from_millis(50),
    ));
    // Let both workers hold shards (rebalancing runs every second), then kill one.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    w1.kill9();
    let acked = sender.await.unwrap();
    assert_eq!(acked.values().map(BTreeSet::len).sum::<usize>(), 200 * 60);
    assert_exactly_once(&client(), &ingest, &acked, t0 - 1).await;
    ingest.stop();
    w2.stop();
    d.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_mid_stream_is_rebuilt_from_history_within_seconds() {
    // Database 7 is this test's own, so FLUSHDB is a real flush that touches nothing else.
    let Some(d) = Deployment::new(7) else { return };
    let tmp = dirs();
    let ingest = Server::serve(&tmp.path().join("i"), "ingest,api", &d.env);
    let w = Server::serve(&tmp.path().join("w"), "worker", &d.env);
    let c = client();
    let t0 = now_ms() - 600_000;
    let first = stream_fixes(ingest.addr, 300, t0, 3, Duration::ZERO).await;
    eventually(20, "the fleet is in Redis", || async {
        latest_ts(&c, &ingest, "k-299").await == Some(t0 + 2_000)
    })
    .await;
    let url = d.redis_url.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("FLUSHDB").query(&mut conn).unwrap();
    })
    .await
    .unwrap();
    let flushed = Instant::now();
    // Ingest goes on while the store is rebuilt.
    let mut acked = stream_fixes(ingest.addr, 300, t0 + 3_000, 2, Duration::ZERO).await;
    for (id, ts) in first {
        acked.get_mut(&id).unwrap().extend(ts);
    }
    eventually(10, "the latest state is whole again", || async {
        let v: Value = get_json(&c, &ingest.url("/api/v1/fleet/summary")).await;
        v["vehicles"] == 300
    })
    .await;
    eprintln!("state whole again {:?} after the flush", flushed.elapsed());
    assert_exactly_once(&c, &ingest, &acked, t0 - 1).await;
    ingest.stop();
    w.stop();
    d.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unreachable_makes_ingest_answer_503_and_it_recovers_by_itself() {
    let Some(d) = Deployment::new(0) else { return };
    // amqp://user:pass@host:port/vhost → the proxy in place of host:port.
    let url = &d.rabbit.url;
    let at = url
        .rfind('@')
        .map_or(url.find("://").unwrap() + 3, |i| i + 1);
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    let proxy = Proxy::start(url[at..end].to_owned()).await;
    let proxied = format!("{}127.0.0.1:{}{}", &url[..at], proxy.port, &url[end..]);
    let tmp = dirs();
    let ingest = Server::serve(
        &tmp.path().join("i"),
        "ingest,api",
        &d.with("KICKSTAND_TRANSPORT__RABBITMQ__URL", &proxied),
    );
    let w = Server::serve(&tmp.path().join("w"), "worker", &d.env);
    let c = client();
    let t0 = now_ms() - 600_000;
    let mut acked: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut ts = t0;
    // Sends one new fix; records it when acked; returns the status and Retry-After.
    macro_rules! send {
        () => {{
            ts += 1;
            let r = post(&c, &ingest, &fix("r-1", ts, 37.5, 127.0)).await;
            if r.status() == 202 {
                acked.entry("r-1".into()).or_default().insert(ts);
            }
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        }};
    }
    assert_eq!(send!(), (202, false));
    proxy.cut();
    let start = Instant::now();
    loop {
        match send!() {
            (503, retry_after) => {
                assert!(retry_after, "503 without Retry-After");
                break;
            }
            (202, _) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still acking");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(send!(), (503, true), "the broker is still away");
    proxy.restore();
    let start = Instant::now();
    while send!().0 != 202 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "ingest did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "ingest recovered {:?} after the broker came back",
        start.elapsed()
    );
    assert_exactly_once(&c, &ingest, &acked, t0 - 1).await;
    ingest.stop();
    w.stop();
    d.clean_up().await;
}
