//! `kickstand bench --phases mqtt`: single-fix MQTT messages through a real broker into the
//! pipeline of an engine on a temporary directory: messages/s from the first publish until the
//! last fix is durable (every vehicle's latest state is its last fix).

use crate::sim::{SEOUL, Scooter};
use kickstand_engine::{Engine, EngineConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct MqttBenchArgs {
    /// Broker of the mqtt phase, `mqtt://host:port` [default: KICKSTAND_TEST_MQTT_URL].
    #[arg(long)]
    pub mqtt_url: Option<String>,
    /// Single-fix messages the mqtt phase publishes.
    #[arg(long, default_value_t = 200_000)]
    pub mqtt_messages: usize,
    /// Publishing connections (each keeps up to 100 messages in flight).
    #[arg(long, default_value_t = 4)]
    pub mqtt_publishers: usize,
    /// Subscribing connections of the ingest (mqtt.connections; Mosquitto drops what overflows
    /// a slow subscriber's queue, see docs/mqtt.md).
    #[arg(long, default_value_t = 32)]
    pub mqtt_connections: usize,
}

pub async fn run(
    args: &MqttBenchArgs,
    dir: &Path,
    config: &EngineConfig,
    end: i64,
    seed: u64,
) -> anyhow::Result<serde_json::Value> {
    let url = args
        .mqtt_url
        .clone()
        .or_else(|| std::env::var("KICKSTAND_TEST_MQTT_URL").ok())
        .ok_or_else(|| anyhow::anyhow!("the mqtt phase needs --mqtt-url"))?;
    let (host, port) = host_port(&url)?;
    let host = host.as_str();
    let vehicles = 1000.min(args.mqtt_messages.max(1));
    let per_vehicle = args.mqtt_messages.div_ceil(vehicles);
    let start = end - per_vehicle as i64 * 1000;
    eprintln!(
        "mqtt phase: {} single-fix messages of {vehicles} vehicles through {host}:{port} …",
        vehicles * per_vehicle
    );
    let d = dir.to_path_buf();
    let cfg = config.clone();
    let engine =
        Arc::new(tokio::task::spawn_blocking(move || Engine::start_embedded(&d, cfg)).await??);
    let prefix = kickstand_engine::testing::unique_name("bench");
    let settings = crate::mqtt::MqttSettings {
        enabled: true,
        host: host.to_owned(),
        port,
        topic: format!("{prefix}/+/telemetry"),
        share_group: prefix.clone(),
        client_id: format!("{prefix}-ingest"),
        connections: args.mqtt_connections,
        ..crate::mqtt::MqttSettings::default()
    };
    let dead = Arc::new(crate::mqtt::DeadLetters::open(dir)?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ingest = tokio::spawn(crate::mqtt::run(
        settings,
        engine.transport.clone(),
        dead,
        stopped,
    ));
    // Let the subscriptions settle: a shared subscription drops what arrives before it.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (per_publisher, last) = payloads(
        &prefix,
        vehicles,
        per_vehicle,
        start,
        seed,
        args.mqtt_publishers,
    );
    let total: usize = per_publisher.iter().map(Vec::len).sum();
    let started = Instant::now();
    publish_all(host, port, &prefix, per_publisher).await?;
    let published = started.elapsed();
    // Durable: every vehicle's state holds its last fix (state moves only after the commit).
    loop {
        let done = last.iter().all(|(id, ts)| {
            engine
                .state
                .get(id)
                .ok()
                .flatten()
                .is_some_and(|p| p.ts == *ts)
        });
        if done {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the mqtt phase did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    let _ = ingest.await;
    // Every message is in history, once (not timed).
    let e = engine.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let mut n = 0usize;
        e.history.scan(start, end, &mut |b| {
            n += b.points.len();
            true
        })?;
        anyhow::Ok(n)
    })
    .await??;
    anyhow::ensure!(stored == total, "history holds {stored} of {total} fixes");
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.shutdown()).await?;
    let rate = total as f64 / elapsed.as_secs_f64();
    eprintln!("  {rate:.0} messages/s");
    Ok(json!({
        "messages": total,
        "messages_per_s": rate.round(),
        "broker_acked_per_s": (total as f64 / published.as_secs_f64()).round(),
        "publishers": args.mqtt_publishers,
        "ingest_connections": args.mqtt_connections,
    }))
}

/// Messages per publisher (vehicle v's fixes in time order, on publisher v mod n) on topics
/// `<prefix>/<vehicle>/telemetry`, and each vehicle's last (id, ts). Made before the clock starts.
pub(crate) type Payloads = (
    Vec<Vec<(String, Vec<u8>)>>,
    Vec<(kickstand_domain::VehicleId, i64)>,
);

pub(crate) fn payloads(
    prefix: &str,
    vehicles: usize,
    per_vehicle: usize,
    start: i64,
    seed: u64,
    publishers: usize,
) -> Payloads {
    let mut scooters: Vec<Scooter> = (0..vehicles)
        .map(|i| Scooter::new(i, &SEOUL, seed))
        .collect();
    let mut per_publisher: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); publishers];
    let mut last = Vec::with_capacity(vehicles);
    for t in 0..per_vehicle {
        for (v, s) in scooters.iter_mut().enumerate() {
            s.step(1.0, &SEOUL);
            let f = s.fix(start + t as i64 * 1000, &SEOUL);
            let body = json!({"vehicle_id": f.vehicle_id.as_str(), "ts": f.point.ts,
                "lat": f.point.lat(), "lon": f.point.lon(), "state": "on_trip"});
            // One vehicle always on one publisher, so its fixes arrive in order.
            per_publisher[v % publishers].push((
                format!("{prefix}/{}/telemetry", f.vehicle_id),
                body.to_string().into_bytes(),
            ));
            if t + 1 == per_vehicle {
                last.push((f.vehicle_id.clone(), f.point.ts));
            }
        }
    }
    (per_publisher, last)
}

/// Publishes every message with QoS 1 (100 in flight per connection) and waits for every PUBACK.
pub(crate) async fn publish_all(
    host: &str,
    port: u16,
    prefix: &str,
    per_publisher: Vec<Vec<(String, Vec<u8>)>>,
) -> anyhow::Result<()> {
    let mut publishers = Vec::new();
    for (n, messages) in per_publisher.into_iter().enumerate() {
        let mut options = MqttOptions::new(format!("{prefix}-pub-{n}"), host, port);
        options.set_inflight(100);
        let (client, mut events) = AsyncClient::new(options, 1000);
        let count = messages.len();
        publishers.push(tokio::spawn(async move {
            let sender = tokio::spawn(async move {
                for (topic, payload) in messages {
                    client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await?;
                }
                anyhow::Ok(client)
            });
            let mut acked = 0;
            while acked < count {
                if let Event::Incoming(Packet::PubAck(_)) = events.poll().await? {
                    acked += 1;
                }
            }
            let client = sender.await??;
            let _ = client.try_disconnect();
            anyhow::Ok(())
        }));
    }
    for p in publishers {
        p.await??;
    }
    Ok(())
}

/// `mqtt://host:port` → (host, port).
pub(crate) fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url.strip_prefix("mqtt://").unwrap_or(url);
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    Ok((host.to_owned(), port.trim_end_matches('/').parse()?))
}
