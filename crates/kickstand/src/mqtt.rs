//! MQTT ingest (`[mqtt]`): subscribes to the telemetry topic at a broker and feeds the same
//! pipeline as `POST /api/v1/telemetry`, with the same JSON payloads.
//!
//! - QoS 1, manual acknowledgements: a message is acked to the broker only once every fix in
//!   it is durable (the transport answered), or once it is recorded in the dead-letter log when
//!   it is malformed. A message not acked (the process died, the pipeline was full) is
//!   delivered again by the broker; appends are idempotent, so its effect happens once.
//! - Persistent sessions (`clean_session = false`) so the broker keeps what arrives while a
//!   connection is down; `connections` connections share one subscription group
//!   (`$share/<group>/<topic>`), so several processes (and connections) split the load.
//! - The subscription is made again on every `ConnAck`: rumqttc reconnects by itself when its
//!   event loop is polled again after an error, but does not resubscribe.
//! - Backpressure: at most `max_inflight` messages per connection are being handled; a full
//!   pipeline is retried after a pause with the message unacked, so the broker's in-flight
//!   window closes and it stops sending.
//!
//! **Architecture Invariant:** each connection's event loop is polled by a task that does
//! nothing else; handling a message (parse, submit, wait, ack) runs in tasks of its own, so
//! a slow pipeline never stops the loop from answering pings.

use anyhow::Context;
use kickstand_domain::input::{BodyFormat, parse_body};
use kickstand_engine::metrics as m;
use kickstand_engine::transport::{SubmitError, Transport};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `[mqtt]`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// Subscribe to the broker at all.
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Topic filter of the telemetry messages.
    pub topic: String,
    /// Shared-subscription group (`$share/<group>/<topic>`); empty subscribes directly (every
    /// subscriber then gets every message).
    pub share_group: String,
    /// Prefix of the client ids (`<prefix>-<n>`); persistent sessions are kept by id, so each
    /// process needs its own.
    pub client_id: String,
    /// Connections to the broker, each with its share of the subscription.
    pub connections: usize,
    /// Messages one connection handles at once.
    pub max_inflight: usize,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<String>,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 1883,
            topic: "kickstand/+/telemetry".into(),
            share_group: "kickstand".into(),
            client_id: "kickstand-ingest".into(),
            connections: 32,
            max_inflight: 1024,
            username: None,
            password: None,
        }
    }
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("enabled", &self.enabled)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("topic", &self.topic)
            .field("share_group", &self.share_group)
            .field("client_id", &self.client_id)
            .field("connections", &self.connections)
            .field("max_inflight", &self.max_inflight)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl MqttSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.connections > 0, "mqtt.connections must be positive");
        anyhow::ensure!(self.max_inflight > 0, "mqtt.max_inflight must be positive");
        anyhow::ensure!(
            !self.topic.is_empty() && !self.topic.starts_with("$share/"),
            "mqtt.topic must be a topic filter (the shared group is mqtt.share_group)"
        );
        anyhow::ensure!(!self.client_id.is_empty(), "mqtt.client_id must be set");
        Ok(())
    }

    fn filter(&self) -> String {
        if self.share_group.is_empty() {
            self.topic.clone()
        } else {
            format!("$share/{}/{}", self.share_group, self.topic)
        }
    }
}

/// The dead-letter log: one JSON line per refused input (`dead-letters.ndjson` in the data
/// directory), written and synced before the input is acknowledged, so nothing malformed is
/// dropped silently.
pub struct DeadLetters {
    path: PathBuf,
    file: std::sync::Mutex<std::fs::File>,
}

impl DeadLetters {
    pub fn open(data_dir: &Path) -> anyhow::Result<DeadLetters> {
        let path = data_dir.join("dead-letters.ndjson");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(DeadLetters {
            path,
            file: std::sync::Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `payload` (as text, invalid UTF-8 replaced) with why it was refused.
    pub fn record(
        &self,
        source: &str,
        topic: &str,
        reason: &str,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut line = serde_json::to_vec(&serde_json::json!({
            "at": kickstand_domain::timefmt::format_ms(at),
            "source": source,
            "topic": topic,
            "reason": reason,
            "payload": String::from_utf8_lossy(payload),
        }))?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)?;
        file.sync_data()?;
        metrics::counter!(m::DEAD_LETTERS_TOTAL, "source" => source.to_owned()).increment(1);
        Ok(())
    }
}

/// Runs the MQTT ingest until `stop` turns true.
pub async fn run(
    settings: MqttSettings,
    transport: Arc<dyn Transport>,
    dead: Arc<DeadLetters>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tasks = Vec::new();
    for n in 0..settings.connections {
        tasks.push(tokio::spawn(connection(
            settings.clone(),
            n,
            transport.clone(),
            dead.clone(),
            stop.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn connection(
    settings: MqttSettings,
    n: usize,
    transport: Arc<dyn Transport>,
    dead: Arc<DeadLetters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let id = format!("{}-{n}", settings.client_id);
    let mut options = MqttOptions::new(&id, &settings.host, settings.port);
    options.set_clean_session(false);
    options.set_manual_acks(true);
    options.set_keep_alive(Duration::from_secs(30));
    // A body may carry many fixes, as over HTTP.
    options.set_max_packet_size(8 << 20, 64 << 10);
    if let (Some(user), Some(pass)) = (&settings.username, &settings.password) {
        options.set_credentials(user, pass);
    }
    let (client, mut events) = AsyncClient::new(options, 1024);
    let filter = settings.filter();
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_inflight));
    // Reconnect quickly: while no member of a shared group is connected, the broker may drop
    // what devices publish to it.
    let mut backoff = Duration::from_millis(50);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(50);
                tracing::info!(message = "mqtt connected; subscribing", client = %id, %filter);
                if let Err(error) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                    tracing::error!(message = "mqtt subscribe failed", %error);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (client, transport, dead) = (client.clone(), transport.clone(), dead.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if handle(&publish, transport.as_ref(), &dead).await
                        && let Err(error) = client.ack(&publish).await
                    {
                        tracing::warn!(message = "mqtt ack failed; the broker will resend", %error);
                    }
                });
            }
            Ok(_) => {}
            Err(error) => {
                // The next poll reconnects; the session (and its unacked messages) is kept.
                tracing::warn!(message = "mqtt connection lost; reconnecting", client = %id, %error, retry_in_ms = backoff.as_millis() as u64);
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let _ = client.try_disconnect();
}

/// Handles one message; true when it may be acked (durable or dead-lettered).
async fn handle(publish: &Publish, transport: &dyn Transport, dead: &DeadLetters) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let payload = &publish.payload;
    let format = if payload.contains(&b'\n')
        && payload.first().is_some_and(|b| *b == b'{')
        && parse_body(payload, BodyFormat::Json, now).is_err()
    {
        BodyFormat::Ndjson
    } else {
        BodyFormat::Json
    };
    let parsed = match parse_body(payload, format, now) {
        Ok(p) => p,
        Err(e) => return dead_letter(dead, &publish.topic, &e.to_string(), payload),
    };
    if !parsed.rejected.is_empty() {
        let reasons: Vec<String> = parsed
            .rejected
            .iter()
            .map(|r| format!("item {}: {} {}", r.index, r.field, r.reason))
            .collect();
        if !dead_letter(dead, &publish.topic, &reasons.join("; "), payload) {
            return false;
        }
    }
    if parsed.fixes.is_empty() {
        metrics::counter!(m::MQTT_MESSAGES_TOTAL, "result" => "dead_letter").increment(1);
        return true;
    }
    let mut pause = Duration::from_millis(50);
    loop {
        match transport.submit(parsed.fixes.clone()).await {
            Ok(_) => {
                metrics::counter!(m::MQTT_MESSAGES_TOTAL, "result" => "stored").increment(1);
                return true;
            }
            // Not acked: the broker resends it after a restart.
            Err(SubmitError::ShuttingDown) => return false,
            Err(SubmitError::Full | SubmitError::Storage(_) | SubmitError::Unavailable(_)) => {
                metrics::counter!(m::INGEST_BACKPRESSURE_TOTAL).increment(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn dead_letter(dead: &DeadLetters, topic: &str, reason: &str, payload: &[u8]) -> bool {
    match dead.record("mqtt", topic, reason, payload) {
        Ok(()) => {
            tracing::warn!(message = "mqtt message dead-lettered", %topic, %reason);
            true
        }
        Err(error) => {
            // Not acked: the broker resends it, and the record is tried again.
            tracing::error!(message = "cannot write the dead-letter log", %error);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_filter_and_validation() {
        let s = MqttSettings::default();
        assert_eq!(s.filter(), "$share/kickstand/kickstand/+/telemetry");
        let direct = MqttSettings {
            share_group: String::new(),
            ..MqttSettings::default()
        };
        assert_eq!(direct.filter(), "kickstand/+/telemetry");
        assert!(s.validate().is_ok());
        let bad = MqttSettings {
            topic: "$share/g/t".into(),
            ..MqttSettings::default()
        };
        assert!(bad.validate().is_err());
        let secret = MqttSettings {
            password: Some("hunter2".into()),
            ..MqttSettings::default()
        };
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn dead_letters_are_json_lines_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let dead = DeadLetters::open(dir.path()).unwrap();
        dead.record("mqtt", "t/1", "not JSON", b"\xff{oops")
            .unwrap();
        dead.record("mqtt", "t/2", "item 0: lat out of range", b"{}")
            .unwrap();
        let text = std::fs::read_to_string(dead.path()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["reason"], "not JSON");
        assert_eq!(lines[0]["payload"], "\u{fffd}{oops");
        assert_eq!(lines[1]["topic"], "t/2");
    }
}
