//! What the measurement asks of an AMQP client, independent of the library: the [`Client`]
//! trait, the jobs it is given and the outcomes it reports.
//!
//! Each library gets its own implementation (`lapin_client`, `amqprs_client`) written the way
//! its documentation suggests, so the comparison includes the cost of the library's idioms (for
//! example how publisher confirms are surfaced). Timing of the hot path happens inside the
//! implementations, between the first publish/consume and the last confirm/ack; CPU time is
//! read around each call by the caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;

use crate::measure::{CpuUsage, Meter};
use tokio::sync::Notify;

/// Where the broker is and how to log in.
#[derive(Clone, Debug)]
pub(crate) struct Broker {
    /// Host name or address; loopback here.
    pub host: String,
    /// AMQP port (5672).
    pub port: u16,
    /// User name (guest).
    pub user: String,
    /// Password (guest).
    pub password: String,
}

/// The queue arguments a declaration carries. Both are plain `x-` arguments in the declare
/// frame, so any client that can send a field table supports them.
#[derive(Clone, Debug, Default)]
pub(crate) struct QueueArgs {
    /// Declare with `x-single-active-consumer: true`.
    pub single_active_consumer: bool,
    /// Declare with `x-dead-letter-exchange: ""` (the default exchange) and
    /// `x-dead-letter-routing-key` set to this queue name.
    pub dead_letter_to: Option<String>,
}

/// Publish `count` persistent messages with publisher confirms, keeping at most
/// `max_outstanding` unconfirmed, and wait for every confirm.
pub(crate) struct PublishJob<'a> {
    /// Message `i` goes through the default exchange to `queues[i % queues.len()]`.
    pub queues: &'a [String],
    /// Message `i` carries `payloads[i % payloads.len()]`.
    pub payloads: &'a [Vec<u8>],
    /// How many messages to publish.
    pub count: usize,
    /// The window of unconfirmed messages (N).
    pub max_outstanding: usize,
    /// Stop publishing new messages after this long (outstanding confirms are still awaited), so
    /// a slow client cannot stretch the run. The outcome reports how many were published.
    pub time_cap: Duration,
    /// Reads CPU time at the start and end of the timed section.
    pub meter: &'a Meter,
}

/// What a publish job did.
#[derive(Debug, Default)]
pub(crate) struct PublishOutcome {
    /// Messages published (and confirmed or nacked).
    pub published: u64,
    /// Messages the broker nacked.
    pub nacked: u64,
    /// Payload bytes published.
    pub bytes: u64,
    /// From just before the first publish to the arrival of the last confirm.
    pub elapsed: Duration,
    /// CPU time over the same section (read once every confirm is in).
    pub cpu: CpuUsage,
    /// Publish-to-confirm latency of every confirmed message, in no particular order.
    pub latencies: Vec<Duration>,
}

/// Drain a backlog: consume from every queue with manual acks until `expected` messages have
/// been acked in total.
pub(crate) struct ConsumeJob<'a> {
    /// The queues to consume from.
    pub queues: &'a [String],
    /// Consumers per queue, each on its own channel. With single-active-consumer queues only the
    /// first gets deliveries; the others stand by.
    pub consumers_per_queue: usize,
    /// basic.qos prefetch count of each consumer's channel.
    pub prefetch: u16,
    /// Total messages in the backlog.
    pub expected: u64,
    /// Give up after this long; the outcome then reports fewer acks than expected.
    pub time_cap: Duration,
    /// Reads CPU time at the start and end of the timed section.
    pub meter: &'a Meter,
}

/// What a consume job did.
#[derive(Debug, Default)]
pub(crate) struct ConsumeOutcome {
    /// Deliveries acked.
    pub acked: u64,
    /// Body bytes of the acked deliveries.
    pub bytes: u64,
    /// Deliveries whose body failed the JSON shape check (should be 0).
    pub bad_bodies: u64,
    /// From just before the first basic.consume to the last ack being handed to the client.
    pub elapsed: Duration,
    /// CPU time over the same section.
    pub cpu: CpuUsage,
    /// Deliveries acked by each consumer, `[queue][consumer]`.
    pub per_consumer: Vec<Vec<u64>>,
}

/// One AMQP client library, connected to the broker with one connection for publishing and
/// administration and one for consuming (RabbitMQ's advice: keep publishers and consumers on
/// separate connections so flow control on one does not stall the other).
pub(crate) trait Client: Sized {
    /// The name shown in the results.
    const NAME: &'static str;

    async fn connect(broker: &Broker) -> Result<Self>;

    /// Declares a durable, non-exclusive, non-auto-delete classic queue.
    async fn declare_queue(&self, name: &str, args: &QueueArgs) -> Result<()>;

    /// Ready messages in the queue (passive declare).
    async fn message_count(&self, name: &str) -> Result<u32>;

    async fn purge_queue(&self, name: &str) -> Result<u32>;

    async fn delete_queue(&self, name: &str) -> Result<u32>;

    async fn publish(&self, job: &PublishJob<'_>) -> Result<PublishOutcome>;

    async fn consume(&self, job: &ConsumeJob<'_>) -> Result<ConsumeOutcome>;

    /// basic.get one message from `queue` and reject it without requeue. Returns whether there
    /// was a message.
    async fn get_and_reject(&self, queue: &str) -> Result<bool>;

    async fn close(self) -> Result<()>;
}

/// Acks counted across all consumers of a consume job.
#[derive(Default)]
pub(crate) struct Progress {
    /// Deliveries acked so far.
    acked: AtomicU64,
    /// Signalled when `acked` reaches the target.
    done: Notify,
}

impl Progress {
    pub(crate) fn record(&self, expected: u64) {
        if self.acked.fetch_add(1, Ordering::AcqRel) + 1 == expected {
            self.done.notify_one();
        }
    }

    /// Waits until `expected` acks are counted; `false` if `cap` elapsed first.
    pub(crate) async fn wait_for(&self, expected: u64, cap: Duration) -> bool {
        let wait = async {
            while self.acked.load(Ordering::Acquire) < expected {
                self.done.notified().await;
            }
        };
        tokio::time::timeout(cap, wait).await.is_ok()
    }
}

/// One consumer's counts.
#[derive(Default)]
pub(crate) struct Tally {
    /// Deliveries acked.
    pub acked: u64,
    /// Body bytes acked.
    pub bytes: u64,
    /// Bodies that failed the shape check.
    pub bad: u64,
}
