//! [`Client`] on amqprs 2, written the way amqprs's documentation suggests.
//!
//! Publisher confirms: amqprs has no per-message confirm future. After `confirm_select` the
//! broker's `basic.ack`/`basic.nack` frames arrive at the channel's `ChannelCallback`
//! (`publish_ack`, `publish_nack`) with a delivery tag and a `multiple` flag, and the application
//! keeps its own map from delivery tag (1, 2, 3, … per channel) to message. [`ConfirmTracker`] is
//! that bookkeeping: it timestamps each confirm in the callback and returns permits to the
//! semaphore that bounds the unconfirmed window.
//!
//! Consumers: `basic_consume_rx` returns a tokio `UnboundedReceiver` of deliveries (bounded in
//! practice by the prefetch); each is acked with `channel.basic_ack(..).await`.
//!
//! amqprs runs entirely as tasks on the caller's tokio runtime (no extra OS threads).
//! `basic_publish` takes the body as an owned `Vec<u8>`, so publishing from a shared buffer costs
//! one copy per message before the call (lapin takes `&[u8]`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amqprs::callbacks::{ChannelCallback, DefaultChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicGetArguments, BasicPublishArguments,
    BasicQosArguments, BasicRejectArguments, Channel, ConfirmSelectArguments,
    QueueDeclareArguments, QueueDeleteArguments, QueuePurgeArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{
    Ack, BasicProperties, Cancel, CloseChannel, DELIVERY_MODE_PERSISTENT, FieldTable, FieldValue,
    Nack, Return,
};
use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use tokio::sync::{Semaphore, watch};

use crate::client::{
    Broker, Client, ConsumeJob, ConsumeOutcome, Progress, PublishJob, PublishOutcome, QueueArgs,
    Tally,
};
use crate::workload::check_body;

/// How long to wait for the last confirms once publishing has stopped.
const CONFIRM_WAIT: Duration = Duration::from_secs(60);

/// amqprs connections and the channel used for administration.
pub(crate) struct Amqprs {
    /// Publishing, declarations, purges, deletes and basic.get.
    publish_conn: Connection,
    /// Consumers only.
    consume_conn: Connection,
    /// A long-lived channel on `publish_conn` for administrative calls.
    admin: Channel,
}

fn queue_arguments(args: &QueueArgs) -> Result<FieldTable> {
    let name = |s: &str| s.try_into().map_err(|e| anyhow!("field name {s}: {e:?}"));
    let text = |s: &str| s.try_into().map_err(|e| anyhow!("field value {s}: {e:?}"));
    let mut table = FieldTable::new();
    if args.single_active_consumer {
        table.insert(name("x-single-active-consumer")?, FieldValue::t(true));
    }
    if let Some(dlq) = &args.dead_letter_to {
        table.insert(name("x-dead-letter-exchange")?, FieldValue::S(text("")?));
        table.insert(
            name("x-dead-letter-routing-key")?,
            FieldValue::S(text(dlq)?),
        );
    }
    Ok(table)
}

async fn open_channel(conn: &Connection) -> Result<Channel> {
    let channel = conn.open_channel(None).await?;
    channel.register_callback(DefaultChannelCallback).await?;
    Ok(channel)
}

impl Client for Amqprs {
    const NAME: &'static str = "amqprs";

    async fn connect(broker: &Broker) -> Result<Self> {
        let open = |name: &str| {
            let mut args = OpenConnectionArguments::new(
                &broker.host,
                broker.port,
                &broker.user,
                &broker.password,
            );
            args.connection_name(name);
            async move {
                let conn = Connection::open(&args).await.with_context(|| {
                    format!(
                        "amqprs: connect ({})",
                        args.get_connection_name().unwrap_or("?")
                    )
                })?;
                conn.register_callback(DefaultConnectionCallback).await?;
                anyhow::Ok(conn)
            }
        };
        let publish_conn = open(&format!("amqpcmp-{}-amqprs-publish", std::process::id())).await?;
        let consume_conn = open(&format!("amqpcmp-{}-amqprs-consume", std::process::id())).await?;
        let admin = open_channel(&publish_conn).await?;
        Ok(Amqprs {
            publish_conn,
            consume_conn,
            admin,
        })
    }

    async fn declare_queue(&self, name: &str, args: &QueueArgs) -> Result<()> {
        let mut declare = QueueDeclareArguments::durable_client_named(name);
        declare.arguments(queue_arguments(args)?);
        self.admin
            .queue_declare(declare)
            .await
            .with_context(|| format!("amqprs: declare {name}"))?;
        Ok(())
    }

    async fn message_count(&self, name: &str) -> Result<u32> {
        let declare = QueueDeclareArguments::new(name)
            .passive(true)
            .durable(true)
            .finish();
        let (_, count, _) = self
            .admin
            .queue_declare(declare)
            .await?
            .context("amqprs: no declare-ok")?;
        Ok(count)
    }

    async fn purge_queue(&self, name: &str) -> Result<u32> {
        Ok(self
            .admin
            .queue_purge(QueuePurgeArguments::new(name))
            .await?
            .unwrap_or(0))
    }

    async fn delete_queue(&self, name: &str) -> Result<u32> {
        Ok(self
            .admin
            .queue_delete(QueueDeleteArguments::new(name))
            .await?
            .unwrap_or(0))
    }

    async fn publish(&self, job: &PublishJob<'_>) -> Result<PublishOutcome> {
        let channel = self.publish_conn.open_channel(None).await?;
        let window = Arc::new(Semaphore::new(job.max_outstanding));
        let tracker = Arc::new(ConfirmTracker::new(Arc::clone(&window)));
        channel
            .register_callback(ConfirmCallback(Arc::clone(&tracker)))
            .await?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await?;
        let properties = BasicProperties::default()
            .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
            .with_content_type("application/json")
            .finish();

        let mark = job.meter.mark();
        let start = Instant::now();
        let mut outcome = PublishOutcome::default();
        for i in 0..job.count {
            if start.elapsed() >= job.time_cap {
                break;
            }
            window.acquire().await?.forget();
            tracker.record_publish(Instant::now());
            let payload = job.payloads[i % job.payloads.len()].clone();
            outcome.bytes += payload.len() as u64;
            channel
                .basic_publish(
                    properties.clone(),
                    payload,
                    BasicPublishArguments::new("", &job.queues[i % job.queues.len()]),
                )
                .await?;
            outcome.published += 1;
        }
        // Every permit is back once every message is confirmed.
        let all = u32::try_from(job.max_outstanding).context("window too large")?;
        tokio::time::timeout(CONFIRM_WAIT, window.acquire_many(all))
            .await
            .context("amqprs: timed out waiting for publisher confirms")??
            .forget();
        outcome.cpu = job.meter.since(&mark);
        let state = tracker.take();
        outcome.elapsed = state.last.map_or(Duration::ZERO, |t| t - start);
        outcome.latencies = state.latencies;
        outcome.nacked = state.nacked;
        channel.close().await?;
        Ok(outcome)
    }

    async fn consume(&self, job: &ConsumeJob<'_>) -> Result<ConsumeOutcome> {
        // Channels and QoS first, outside the timed section.
        let mut channels = Vec::new();
        for (qi, _) in job.queues.iter().enumerate() {
            for ci in 0..job.consumers_per_queue {
                let channel = open_channel(&self.consume_conn).await?;
                channel
                    .basic_qos(BasicQosArguments::new(0, job.prefetch, false))
                    .await?;
                channels.push((qi, ci, channel));
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let progress = Arc::new(Progress::default());

        let mark = job.meter.mark();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (qi, ci, channel) in channels {
            let args = BasicConsumeArguments::new(&job.queues[qi], &format!("amqpcmp-{qi}-{ci}"));
            let (_tag, rx) = channel.basic_consume_rx(args).await?;
            let task = tokio::spawn(consume_loop(
                channel,
                rx,
                stop_rx.clone(),
                Arc::clone(&progress),
                job.expected,
            ));
            tasks.push((qi, task));
        }
        let finished = progress.wait_for(job.expected, job.time_cap).await;
        let elapsed = start.elapsed();
        let cpu = job.meter.since(&mark);
        if !finished {
            eprintln!("  amqprs: consume hit the time cap");
        }
        // Receivers only fail if every sender is gone; we hold the sender.
        let _ = stop_tx.send(true);

        let mut outcome = ConsumeOutcome {
            elapsed,
            cpu,
            per_consumer: vec![Vec::new(); job.queues.len()],
            ..ConsumeOutcome::default()
        };
        for (qi, task) in tasks {
            let (channel, tally) = task.await??;
            channel.close().await?;
            outcome.acked += tally.acked;
            outcome.bytes += tally.bytes;
            outcome.bad_bodies += tally.bad;
            outcome.per_consumer[qi].push(tally.acked);
        }
        Ok(outcome)
    }

    async fn get_and_reject(&self, queue: &str) -> Result<bool> {
        let Some((get_ok, _, _)) = self.admin.basic_get(BasicGetArguments::new(queue)).await?
        else {
            return Ok(false);
        };
        self.admin
            .basic_reject(BasicRejectArguments::new(get_ok.delivery_tag(), false))
            .await?;
        Ok(true)
    }

    async fn close(self) -> Result<()> {
        self.admin.close().await?;
        self.publish_conn.close().await?;
        self.consume_conn.close().await?;
        Ok(())
    }
}

async fn consume_loop(
    channel: Channel,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<amqprs::channel::ConsumerMessage>,
    mut stop: watch::Receiver<bool>,
    progress: Arc<Progress>,
    expected: u64,
) -> Result<(Channel, Tally)> {
    let mut tally = Tally::default();
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                let deliver = message.deliver.context("amqprs: delivery without deliver frame")?;
                let body = message.content.context("amqprs: delivery without body")?;
                match check_body(&body) {
                    Some(len) => tally.bytes += len as u64,
                    None => tally.bad += 1,
                }
                channel
                    .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
                    .await?;
                tally.acked += 1;
                progress.record(expected);
            }
            _ = stop.changed() => break,
        }
    }
    Ok((channel, tally))
}

/// Confirm bookkeeping for one publishing channel.
pub(crate) struct ConfirmTracker {
    /// Messages published but not yet confirmed, and what has been measured.
    state: Mutex<ConfirmState>,
    /// The unconfirmed window; one permit is returned per settled message.
    window: Arc<Semaphore>,
}

#[derive(Default)]
struct ConfirmState {
    /// The delivery tag of `sent[0]`. Tags start at 1 after confirm.select.
    first_tag: u64,
    /// Publish time of each message from `first_tag` on; `None` once settled (confirms can
    /// arrive out of order when messages go to different queues).
    sent: VecDeque<Option<Instant>>,
    /// Publish-to-confirm latency of every settled message.
    latencies: Vec<Duration>,
    /// Messages the broker nacked.
    nacked: u64,
    /// When the last confirm arrived.
    last: Option<Instant>,
}

impl ConfirmState {
    /// Settles `tag` (and every earlier tag when `multiple`); returns how many became settled.
    fn settle(&mut self, tag: u64, multiple: bool, nack: bool, now: Instant) -> usize {
        let from = if multiple { self.first_tag } else { tag };
        let mut settled = 0;
        for t in from.max(self.first_tag)..=tag {
            let Some(slot) = self.sent.get_mut((t - self.first_tag) as usize) else {
                break;
            };
            if let Some(sent) = slot.take() {
                self.latencies.push(now - sent);
                settled += 1;
                if nack {
                    self.nacked += 1;
                }
            }
        }
        while let Some(None) = self.sent.front() {
            self.sent.pop_front();
            self.first_tag += 1;
        }
        if settled > 0 {
            self.last = Some(now);
        }
        settled
    }
}

impl ConfirmTracker {
    pub(crate) fn new(window: Arc<Semaphore>) -> ConfirmTracker {
        ConfirmTracker {
            state: Mutex::new(ConfirmState {
                first_tag: 1,
                ..ConfirmState::default()
            }),
            window,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ConfirmState> {
        // A poisoned lock means a panic in `settle`, which is already fatal for the run.
        self.state.lock().expect("confirm state lock poisoned")
    }

    /// Called just before each `basic_publish`, in publish order, so that the n-th recorded time
    /// belongs to delivery tag n.
    pub(crate) fn record_publish(&self, at: Instant) {
        self.lock().sent.push_back(Some(at));
    }

    fn settle(&self, tag: u64, multiple: bool, nack: bool) {
        let now = Instant::now();
        let settled = self.lock().settle(tag, multiple, nack, now);
        self.window.add_permits(settled);
    }

    fn take(&self) -> ConfirmState {
        std::mem::take(&mut *self.lock())
    }
}

/// Routes a publishing channel's asynchronous events to its [`ConfirmTracker`].
pub(crate) struct ConfirmCallback(pub(crate) Arc<ConfirmTracker>);

#[async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(
        &mut self,
        channel: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        eprintln!("  amqprs: broker closed channel {channel}: {close}");
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
        self.0.settle(ack.delivery_tag(), ack.mutiple(), false);
    }

    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.0.settle(nack.delivery_tag(), nack.multiple(), true);
    }

    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(n: usize) -> (ConfirmState, Instant) {
        let t = Instant::now();
        let state = ConfirmState {
            first_tag: 1,
            sent: (0..n).map(|_| Some(t)).collect(),
            ..ConfirmState::default()
        };
        (state, t)
    }

    #[test]
    fn multiple_ack_settles_every_earlier_tag() {
        let (mut s, t) = state_with(5);
        assert_eq!(s.settle(3, true, false, t), 3);
        assert_eq!(s.first_tag, 4);
        assert_eq!(s.sent.len(), 2);
        assert_eq!(s.settle(5, true, false, t), 2);
        assert!(s.sent.is_empty());
        assert_eq!(s.latencies.len(), 5);
    }

    #[test]
    fn out_of_order_single_acks_are_counted_once() {
        let (mut s, t) = state_with(3);
        assert_eq!(s.settle(2, false, false, t), 1);
        assert_eq!(s.first_tag, 1, "tag 1 is still pending");
        assert_eq!(s.settle(2, false, false, t), 0, "duplicate");
        assert_eq!(s.settle(1, false, true, t), 1);
        assert_eq!(s.first_tag, 3);
        assert_eq!(s.nacked, 1);
        assert_eq!(s.settle(3, true, false, t), 1);
        assert!(s.sent.is_empty());
    }

    #[test]
    fn unknown_tags_are_ignored() {
        let (mut s, t) = state_with(1);
        assert_eq!(s.settle(7, false, false, t), 0);
        assert_eq!(s.settle(1, false, false, t), 1);
        assert_eq!(s.settle(1, false, false, t), 0);
    }
}
