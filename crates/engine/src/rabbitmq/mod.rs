//! The scale-out transport on RabbitMQ (amqprs, ADR 0008; topology in ADR 0009).
//!
//! - [`publisher::RabbitTransport`] is the [`crate::transport::Transport`] of an ingest process:
//!   each submission is split by vehicle hash into S shard queues, encoded ([`kickstand_domain::wire`]),
//!   published as persistent messages, and resolves only once the broker has **confirmed** every
//!   message, so a device is acked only for what the broker holds on disk.
//! - [`consumer::run`] is a worker process: one channel and consumer per shard queue,
//!   single-active-consumer so one worker at a time owns a shard (per-vehicle order), a bounded
//!   prefetch, and a manual ack sent only after the history append is durable and the latest state
//!   was moved. Messages that do not decode go to the dead-letter queue with the reason; the
//!   broker dead-letters a message delivered `delivery_limit` times (a worker that keeps dying on
//!   it).
//!
//! Both own their reconnect loop (backoff 50 ms → 2 s) and declare the topology on every
//! connect, so a broker restart or a new vhost needs nothing by hand.

pub mod consumer;
pub mod publisher;

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{BasicPublishArguments, Channel, QueueDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{
    Ack, BasicProperties, Cancel, Close, CloseChannel, FieldTable, FieldValue, Nack, Return,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// `[transport]`: how fixes travel from ingest to the workers.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    pub kind: TransportKind,
    pub rabbitmq: RabbitConfig,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// Bounded channels inside one process (`kickstand run`).
    #[default]
    InProcess,
    /// Durable shard queues on RabbitMQ (`kickstand serve --role …`).
    Rabbitmq,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Replicated, with a delivery limit: a message that keeps killing its worker is
    /// dead-lettered after `delivery_limit` deliveries.
    Quorum,
    /// Single-node queues; no delivery limit (RabbitMQ does not count deliveries of classic
    /// queues).
    Classic,
}

/// `[transport.rabbitmq]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitConfig {
    /// `amqp://user:password@host:port/vhost` (vhost percent-encoded; `%2f` is `/`).
    pub url: String,
    /// Queue names start with this: `<prefix>.shard.<n>` and `<prefix>.dead`.
    pub queue_prefix: String,
    /// Shard queues. Every process of a deployment must agree; changing it needs drained queues.
    pub shards: usize,
    pub queue_type: QueueType,
    /// Messages a worker may hold unacked per shard.
    pub prefetch: u16,
    /// Most fixes in one message; a larger submission is split.
    pub max_fixes_per_message: usize,
    /// Fixes an ingest process may have taken and not yet seen confirmed; beyond it ingest
    /// answers 503 (backpressure from a slow or blocked broker).
    pub max_unconfirmed_fixes: usize,
    /// How long ingest waits for the broker's confirm before answering 503.
    pub confirm_timeout_ms: u64,
    /// Deliveries after which the broker dead-letters a message (quorum queues).
    pub delivery_limit: u32,
    /// Seconds between the checks that hand shards over to a newly started worker.
    pub rebalance_interval_secs: u64,
    /// How long a worker waits for more deliveries when its group is small (under 4,096
    /// fixes), so that a trickle of small messages becomes few durable writes. Adds at most this
    /// to the time until history and the latest state show a fix; devices were acked already.
    pub group_linger_ms: u64,
    /// How long ingest's publisher waits for more submissions while what it has is small
    /// (under 1,000 fixes), so single fixes share broker messages. Adds at most this to a
    /// device's ack; 0 publishes at once.
    pub publish_linger_ms: u64,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue_prefix: "kickstand".into(),
            shards: 16,
            queue_type: QueueType::Quorum,
            prefetch: 1024,
            max_fixes_per_message: 1_000,
            max_unconfirmed_fixes: 500_000,
            confirm_timeout_ms: 10_000,
            delivery_limit: 20,
            rebalance_interval_secs: 2,
            group_linger_ms: 100,
            publish_linger_ms: 5,
        }
    }
}

impl RabbitConfig {
    pub fn validate(&self) -> Result<(), String> {
        OpenConnectionArguments::try_from(self.url.as_str())
            .map_err(|e| format!("url is not an AMQP URI ({e})"))?;
        if !(1..=1024).contains(&self.shards) {
            return Err("shards must be between 1 and 1024".into());
        }
        if self.queue_prefix.is_empty() || self.queue_prefix.len() > 200 {
            return Err("queue_prefix must be 1 to 200 characters".into());
        }
        if self.prefetch == 0 || self.max_fixes_per_message == 0 || self.max_unconfirmed_fixes == 0
        {
            return Err(
                "prefetch, max_fixes_per_message and max_unconfirmed_fixes must be positive".into(),
            );
        }
        if self.delivery_limit == 0 {
            return Err("delivery_limit must be positive".into());
        }
        Ok(())
    }

    pub fn shard_queue(&self, shard: usize) -> String {
        format!("{}.shard.{shard}", self.queue_prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue_prefix)
    }

    /// The connection arguments of `url`.
    pub fn connection_args(&self) -> AmqpResult<OpenConnectionArguments> {
        let mut args = OpenConnectionArguments::try_from(self.url.as_str())
            .map_err(|e| format!("bad RabbitMQ URL: {e}"))?;
        // amqprs takes the vhost verbatim; the AMQP URI spec percent-encodes it (`%2f` is `/`).
        args.virtual_host(&vhost_of(&self.url));
        Ok(args)
    }

    /// The URL without its password, for messages.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The vhost of an AMQP URI, percent-decoded; `/` when the URI names none.
fn vhost_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = match rest.split_once('/') {
        Some((_, p)) => p.split(['?', '#']).next().unwrap_or(""),
        None => return "/".into(),
    };
    if path.is_empty() {
        return "/".into();
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Errors of the RabbitMQ transport, as text: they end up in logs and 503 bodies.
pub type AmqpResult<T> = Result<T, String>;

fn amqp_err(what: &str) -> impl Fn(amqprs::error::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Wakes the reconnect loop when the broker closes the connection or a channel.
#[derive(Clone, Default)]
pub(crate) struct Broken(Arc<Notify>);

impl Broken {
    fn fire(&self) {
        self.0.notify_one();
    }
    pub(crate) async fn wait(&self) {
        self.0.notified().await;
    }
}

struct ConnCallback(Broken);

#[async_trait::async_trait]
impl ConnectionCallback for ConnCallback {
    async fn close(&mut self, _: &Connection, close: Close) -> Result<(), amqprs::error::Error> {
        tracing::warn!(message = "RabbitMQ closed the connection", %close);
        self.0.fire();
        Ok(())
    }
    async fn blocked(&mut self, _: &Connection, reason: String) {
        tracing::warn!(message = "RabbitMQ blocked publishing (resource alarm)", %reason);
    }
    async fn unblocked(&mut self, _: &Connection) {
        tracing::info!(message = "RabbitMQ unblocked publishing");
    }
    async fn secret_updated(&mut self, _: &Connection) {}
}

/// Opens a connection named `name`; `broken` fires when it closes.
pub(crate) async fn connect(
    cfg: &RabbitConfig,
    name: &str,
    broken: &Broken,
) -> AmqpResult<Connection> {
    let mut args = cfg.connection_args()?;
    args.connection_name(name).heartbeat(10);
    let conn = tokio::time::timeout(Duration::from_secs(5), Connection::open(&args))
        .await
        .map_err(|_| format!("connecting to {} timed out", cfg.redacted_url()))?
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.redacted_url()))?;
    conn.register_callback(ConnCallback(broken.clone()))
        .await
        .map_err(amqp_err("register connection callback"))?;
    // A lost socket does not always produce a close frame.
    let watch = conn.clone();
    let b = broken.clone();
    tokio::spawn(async move {
        watch.listen_network_io_failure().await;
        b.fire();
    });
    Ok(conn)
}

/// Declares the shard queues and the dead-letter queue (idempotent; a queue declared earlier
/// with other arguments is an error that names the setting).
pub(crate) async fn declare_topology(cfg: &RabbitConfig, channel: &Channel) -> AmqpResult<()> {
    let name = |s: &str| s.try_into().expect("static field names are valid");
    let dead = cfg.dead_letter_queue();
    let mut dlq_args = FieldTable::new();
    if cfg.queue_type == QueueType::Quorum {
        dlq_args.insert(
            name("x-queue-type"),
            FieldValue::S("quorum".try_into().expect("valid")),
        );
    }
    let mut declare = QueueDeclareArguments::durable_client_named(&dead);
    declare.arguments(dlq_args);
    channel
        .queue_declare(declare)
        .await
        .map_err(|e| format!("declaring {dead}: {e} (declared earlier with other settings?)"))?;
    for shard in 0..cfg.shards {
        let queue = cfg.shard_queue(shard);
        let mut args = FieldTable::new();
        args.insert(name("x-single-active-consumer"), FieldValue::t(true));
        args.insert(
            name("x-dead-letter-exchange"),
            FieldValue::S("".try_into().expect("valid")),
        );
        args.insert(
            name("x-dead-letter-routing-key"),
            FieldValue::S(
                dead.as_str()
                    .try_into()
                    .map_err(|_| "queue name too long")?,
            ),
        );
        if cfg.queue_type == QueueType::Quorum {
            args.insert(
                name("x-queue-type"),
                FieldValue::S("quorum".try_into().expect("valid")),
            );
            args.insert(
                name("x-delivery-limit"),
                FieldValue::l(i64::from(cfg.delivery_limit)),
            );
        }
        let mut declare = QueueDeclareArguments::durable_client_named(&queue);
        declare.arguments(args);
        channel.queue_declare(declare).await.map_err(|e| {
            format!(
                "declaring {queue}: {e} (declared earlier with another queue_type or \
                 delivery_limit? queues must be drained and deleted to change them)"
            )
        })?;
    }
    Ok(())
}

/// Deletes every queue of the deployment (shards, dead letters, presence), messages included.
/// For tests and for `queue_prefix` changes; never called by the server.
pub async fn delete_topology(cfg: &RabbitConfig) -> AmqpResult<()> {
    let broken = Broken::default();
    let conn = connect(cfg, "kickstand-admin", &broken).await?;
    let channel = conn
        .open_channel(None)
        .await
        .map_err(amqp_err("open channel"))?;
    let mut queues: Vec<String> = (0..cfg.shards).map(|s| cfg.shard_queue(s)).collect();
    queues.push(cfg.dead_letter_queue());
    queues.push(format!("{}.workers", cfg.queue_prefix));
    for q in queues {
        channel
            .queue_delete(amqprs::channel::QueueDeleteArguments::new(&q))
            .await
            .map_err(amqp_err("delete queue"))?;
    }
    let _ = conn.close().await;
    Ok(())
}

/// Delivery-tag bookkeeping of a channel in confirm mode: the n-th published message has tag n,
/// and the broker's `basic.ack`/`basic.nack` (possibly `multiple`) settle them.
#[derive(Default)]
pub(crate) struct Confirms {
    state: parking_lot::Mutex<ConfirmState>,
}

#[derive(Default)]
struct ConfirmState {
    /// Tag of `pending[0]`; tags start at 1 after `confirm.select`.
    first_tag: u64,
    pending: VecDeque<Option<oneshot::Sender<bool>>>,
}

impl Confirms {
    pub(crate) fn new() -> Confirms {
        Confirms {
            state: parking_lot::Mutex::new(ConfirmState {
                first_tag: 1,
                pending: VecDeque::new(),
            }),
        }
    }

    /// Registers the next published message; call in publish order.
    pub(crate) fn record(&self) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.state.lock().pending.push_back(Some(tx));
        rx
    }

    /// Settles `tag` (and every earlier one when `multiple`) as confirmed (`ok`) or nacked.
    pub(crate) fn settle(&self, tag: u64, multiple: bool, ok: bool) {
        let mut s = self.state.lock();
        let from = if multiple { s.first_tag } else { tag };
        for t in from.max(s.first_tag)..=tag {
            let i = (t - s.first_tag) as usize;
            let Some(slot) = s.pending.get_mut(i) else {
                break;
            };
            if let Some(tx) = slot.take() {
                let _ = tx.send(ok);
            }
        }
        while let Some(None) = s.pending.front() {
            s.pending.pop_front();
            s.first_tag += 1;
        }
    }

    /// The channel is gone: every message not yet confirmed is reported lost.
    pub(crate) fn fail_all(&self) {
        let mut s = self.state.lock();
        for tx in s.pending.drain(..).flatten() {
            let _ = tx.send(false);
        }
    }
}

pub(crate) struct ConfirmCallback {
    pub(crate) confirms: Arc<Confirms>,
    pub(crate) broken: Broken,
}

#[async_trait::async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        tracing::warn!(message = "RabbitMQ closed a publishing channel", %close);
        self.confirms.fail_all();
        self.broken.fire();
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        // (sic) amqprs spells the accessor `mutiple`.
        self.confirms
            .settle(ack.delivery_tag(), ack.mutiple(), true);
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.confirms
            .settle(nack.delivery_tag(), nack.multiple(), false);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// A channel in confirm mode with its bookkeeping: publishes are serialised so that tags
/// match the order of [`Confirms::record`].
pub(crate) struct ConfirmedChannel {
    pub(crate) channel: Channel,
    confirms: Arc<Confirms>,
    lock: tokio::sync::Mutex<()>,
}

impl ConfirmedChannel {
    pub(crate) async fn open(conn: &Connection, broken: &Broken) -> AmqpResult<ConfirmedChannel> {
        let channel = conn
            .open_channel(None)
            .await
            .map_err(amqp_err("open channel"))?;
        let confirms = Arc::new(Confirms::new());
        channel
            .register_callback(ConfirmCallback {
                confirms: confirms.clone(),
                broken: broken.clone(),
            })
            .await
            .map_err(amqp_err("register channel callback"))?;
        channel
            .confirm_select(amqprs::channel::ConfirmSelectArguments::default())
            .await
            .map_err(amqp_err("confirm.select"))?;
        Ok(ConfirmedChannel {
            channel,
            confirms,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Publishes a persistent message to `queue` (through the default exchange); the receiver
    /// says whether the broker confirmed it.
    pub(crate) async fn publish(
        &self,
        queue: &str,
        body: Vec<u8>,
        headers: Option<FieldTable>,
    ) -> AmqpResult<oneshot::Receiver<bool>> {
        let mut props = BasicProperties::default();
        props
            .with_delivery_mode(amqprs::DELIVERY_MODE_PERSISTENT)
            .with_content_type("application/x-kickstand-fixes");
        if let Some(h) = headers {
            props.with_headers(h);
        }
        let _serial = self.lock.lock().await;
        let rx = self.confirms.record();
        self.channel
            .basic_publish(props, body, BasicPublishArguments::new("", queue))
            .await
            .map_err(amqp_err("publish"))?;
        Ok(rx)
    }

    pub(crate) fn fail_all(&self) {
        self.confirms.fail_all();
    }
}

/// Reconnect backoff: 50 ms doubling to 2 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff(Duration::from_millis(50))
    }
    pub(crate) fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }
    pub(crate) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_settle_single_multiple_and_out_of_order() {
        let c = Confirms::new();
        let mut rx: Vec<_> = (0..5).map(|_| c.record()).collect();
        c.settle(2, false, true);
        assert_eq!(rx[1].try_recv(), Ok(true));
        assert!(rx[0].try_recv().is_err(), "tag 1 still pending");
        c.settle(3, true, true);
        assert_eq!(rx[0].try_recv(), Ok(true));
        assert_eq!(rx[2].try_recv(), Ok(true));
        c.settle(4, false, false);
        assert_eq!(rx[3].try_recv(), Ok(false), "nacked");
        c.settle(9, true, true); // unknown tags are ignored beyond the last
        assert_eq!(rx[4].try_recv(), Ok(true));
        let mut more = c.record();
        c.fail_all();
        assert_eq!(more.try_recv(), Ok(false));
        assert_eq!(c.state.lock().first_tag, 6);
    }

    #[test]
    fn urls_are_redacted_and_checked() {
        let mut cfg = RabbitConfig {
            url: "amqp://user:s3cret@host:5672/%2f".into(),
            ..RabbitConfig::default()
        };
        assert_eq!(cfg.redacted_url(), "amqp://user:***@host:5672/%2f");
        assert!(cfg.validate().is_ok());
        cfg.url = "http://nope".into();
        assert!(cfg.validate().is_err());
        cfg = RabbitConfig {
            shards: 0,
            ..RabbitConfig::default()
        };
        assert!(cfg.validate().is_err());
        assert_eq!(cfg.shard_queue(3), "kickstand.shard.3");
        assert_eq!(vhost_of("amqp://u:p@h:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://u:p@h:5672/fleet%2Dprod"), "fleet-prod");
        assert_eq!(vhost_of("amqp://u:p@h:5672/plain?heartbeat=5"), "plain");
        assert_eq!(vhost_of("amqp://h:5672"), "/");
        assert_eq!(vhost_of("amqp://h/"), "/");
        assert_eq!(vhost_of("amqp://h/%zz"), "%zz");
    }
}
