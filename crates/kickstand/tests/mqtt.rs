//! MQTT ingest through a real broker (Mosquitto, `KICKSTAND_TEST_MQTT_URL`): QoS 1 messages with
//! the HTTP JSON payloads become durable fixes, each once; malformed payloads land in the
//! dead-letter log with the reason and do not hold anything up. Mosquitto restarted mid-stream:
//! the ingest reconnects and resubscribes, and no QoS 1 message is lost.
//!
//! The restart test stops and starts the machine's Mosquitto, so the tests of this file take a
//! lock and run one at a time.

mod common;

use common::{Server, client, now_ms};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn broker() -> Option<(String, u16)> {
    let url = kickstand_engine::testing::service_url("MQTT")?;
    let rest = url.strip_prefix("mqtt://").unwrap_or(&url);
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    let port: u16 = port.trim_end_matches('/').parse().expect("a port");
    match std::net::TcpStream::connect((host, port)) {
        Ok(_) => Some((host.to_owned(), port)),
        Err(e) => kickstand_engine::testing::unreachable("Mosquitto", e),
    }
}

/// A server whose MQTT ingest subscribes to `<prefix>/+/telemetry` (in `share_group`, or
/// directly when it is empty) with `connections` connections.
fn start_ingest(
    dir: &std::path::Path,
    host: &str,
    port: u16,
    prefix: &str,
    share_group: &str,
    connections: usize,
) -> Server {
    let (port, topic) = (port.to_string(), format!("{prefix}/+/telemetry"));
    let (client_id, connections) = (format!("{prefix}-ingest"), connections.to_string());
    Server::start_with(
        dir,
        &[
            ("KICKSTAND_MQTT__ENABLED", "true"),
            ("KICKSTAND_MQTT__HOST", host),
            ("KICKSTAND_MQTT__PORT", &port),
            ("KICKSTAND_MQTT__TOPIC", &topic),
            ("KICKSTAND_MQTT__SHARE_GROUP", share_group),
            ("KICKSTAND_MQTT__CLIENT_ID", &client_id),
            ("KICKSTAND_MQTT__CONNECTIONS", &connections),
        ],
    )
}

/// Publishes every payload with QoS 1 and returns once the broker acked them all.
async fn publish_all(host: &str, port: u16, messages: Vec<(String, Vec<u8>)>) {
    let id = kickstand_engine::testing::unique_name("pub");
    let mut options = MqttOptions::new(id, host, port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut events) = AsyncClient::new(options, 64);
    let n = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            c.publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        c
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked < n {
        assert!(Instant::now() < deadline, "the broker acked {acked} of {n}");
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
            acked += 1;
        }
    }
    let c = sender.await.unwrap();
    let _ = c.disconnect().await;
}

async fn count(s: &Server, id: &str, from: i64, to: i64) -> u64 {
    let v: Value = client()
        .get(s.url(&format!("/api/v1/vehicles/{id}/track?from={from}&to={to}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["count"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_become_fixes_once_and_garbage_is_dead_lettered() {
    let _one_at_a_time = BROKER.lock().await;
    let Some((host, port)) = broker() else {
        return;
    };
    let prefix = kickstand_engine::testing::unique_name("kt");
    let dir = tempfile::tempdir().unwrap();
    let s = start_ingest(dir.path(), &host, port, &prefix, &prefix, 2);
    let t0 = now_ms() - 600_000;
    let fix = |id: &str, i: i64| json!({"vehicle_id": id, "ts": t0 + i * 1000, "lat": 37.5 + i as f64 * 1e-5, "lon": 127.0});
    let on = |id: &str| format!("{prefix}/{id}/telemetry");

    // A shared subscription drops what arrives before it exists: wait until a probe lands.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publish_all(
            &host,
            port,
            vec![(on("probe"), fix("probe", 0).to_string().into())],
        )
        .await;
        if count(&s, "probe", t0 - 1, t0 + 1).await == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the ingest never subscribed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 4 vehicles × 100 single-fix messages, each sent twice (a device's retry): stored once.
    let mut messages = Vec::new();
    for i in 0..100 {
        for v in 0..4 {
            let id = format!("m{v}");
            let body = fix(&id, i).to_string().into_bytes();
            messages.push((on(&id), body.clone()));
            if i % 10 == 0 {
                messages.push((on(&id), body));
            }
        }
    }
    // NDJSON, as over HTTP.
    messages.push((
        on("n1"),
        format!("{}\n{}\n", fix("n1", 1), fix("n1", 2)).into_bytes(),
    ));
    // Garbage: not JSON, a fix out of range, and an array with one good and one bad fix.
    messages.push((on("g"), b"this is not json".to_vec()));
    messages.push((
        on("g"),
        json!({"vehicle_id": "g1", "ts": t0, "lat": 99.0, "lon": 0.0})
            .to_string()
            .into(),
    ));
    messages.push((
        on("g"),
        json!([fix("g2", 1), {"vehicle_id": "g2", "ts": t0, "lat": 1.0}])
            .to_string()
            .into(),
    ));
    publish_all(&host, port, messages).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    for v in 0..4 {
        let id = format!("m{v}");
        loop {
            let n = count(&s, &id, t0 - 1, t0 + 200_000).await;
            if n == 100 {
                break;
            }
            assert!(n < 100, "{id}: {n} fixes, more than were sent");
            assert!(
                Instant::now() < deadline,
                "{id}: only {n} of 100 fixes arrived"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(count(&s, "g2", t0 - 1, t0 + 2000).await, 1, "the good half");
    assert_eq!(count(&s, "n1", t0 - 1, t0 + 3000).await, 2, "NDJSON");
    assert_eq!(count(&s, "g1", t0 - 1, t0 + 2000).await, 0);

    let dead: Vec<Value> = std::fs::read_to_string(dir.path().join("dead-letters.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    // Messages are handled concurrently: find each record by its payload.
    let reason_of = |needle: &str| -> String {
        let d = dead
            .iter()
            .find(|d| d["payload"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no dead letter holds {needle:?}: {dead:?}"));
        assert!(d["topic"].as_str().unwrap().ends_with("/g/telemetry"));
        d["reason"].as_str().unwrap().to_owned()
    };
    assert!(reason_of("this is not json").contains("not valid JSON"));
    assert!(reason_of("\"g1\"").contains("lat must be between -90 and 90"));
    assert!(reason_of("\"g2\"").contains("item 1: lon"));
    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kickstand_dead_letters_total{source=\"mqtt\"} 3"),
        "{metrics}"
    );
    s.stop();
}

/// Starts Mosquitto again when dropped, whatever happened in between.
struct Restarter;

impl Restarter {
    fn stop_broker(port: u16) {
        let pids = std::process::Command::new("pgrep")
            .args(["-x", "mosquitto"])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            // SIGTERM: Mosquitto saves its persistent sessions and queued messages on the way out.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", pid])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "Mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Restarter {
    fn drop(&mut self) {
        if std::net::TcpStream::connect(("127.0.0.1", 1883)).is_err() {
            let _ = std::process::Command::new("mosquitto")
                .args(["-d", "-c", "/etc/mosquitto/mosquitto.conf"])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", 1883)).is_err()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_restarted_mid_stream_loses_no_qos1_message() {
    let _one_at_a_time = BROKER.lock().await;
    let Some((host, port)) = broker() else {
        return;
    };
    if host != "127.0.0.1" && host != "localhost" {
        eprintln!("skipped: the broker is not this machine's, so this test cannot restart it");
        return;
    }
    let prefix = kickstand_engine::testing::unique_name("kr");
    let dir = tempfile::tempdir().unwrap();
    // A direct subscription: Mosquitto 2.0.11 does not restore shared subscriptions from its
    // persistence file, so a shared group drops what devices publish between the broker's
    // restart and the ingest's resubscription (docs/mqtt.md).
    let s = start_ingest(dir.path(), &host, port, &prefix, "", 1);
    let t0 = now_ms() - 600_000;
    let body = |i: i64| {
        json!({"vehicle_id": "r1", "ts": t0 + i * 100, "lat": 37.5, "lon": 127.0})
            .to_string()
            .into_bytes()
    };
    let on = format!("{prefix}/r1/telemetry");
    // Wait for the subscription.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publish_all(&host, port, vec![(on.clone(), body(0))]).await;
        if count(&s, "r1", t0 - 1, t0 + 1).await == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the ingest never subscribed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A publisher with a persistent session sends 600 messages, one a millisecond or so; the
    // broker is restarted after the 200th. rumqttc resends what was not acked on reconnect.
    let restarter = Restarter;
    let mut options = MqttOptions::new(format!("{prefix}-pub"), &host, port);
    options.set_clean_session(false);
    let (c, mut events) = AsyncClient::new(options, 1000);
    let sender = {
        let on = on.clone();
        let payloads: Vec<Vec<u8>> = (1..=600).map(body).collect();
        tokio::spawn(async move {
            for (i, p) in payloads.into_iter().enumerate() {
                c.publish(on.clone(), QoS::AtLeastOnce, false, p)
                    .await
                    .unwrap();
                if i == 200 {
                    tokio::task::spawn_blocking(move || Restarter::stop_broker(port))
                        .await
                        .unwrap();
                    // Start it again (what Restarter does on drop, here on purpose).
                    tokio::task::spawn_blocking(|| drop(Restarter))
                        .await
                        .unwrap();
                }
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            c
        })
    };
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked < 600 {
        assert!(Instant::now() < deadline, "the broker acked {acked} of 600");
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let c = sender.await.unwrap();
    let _ = c.disconnect().await;
    drop(restarter);

    // Every message reaches history, once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(&s, "r1", t0 + 1, t0 + 100_000).await;
        if n == 600 {
            break;
        }
        assert!(n < 600, "{n} fixes, more than were sent");
        assert!(
            Instant::now() < deadline,
            "only {n} of 600 fixes arrived after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop();
}
