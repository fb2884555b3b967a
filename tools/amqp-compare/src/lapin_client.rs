//! [`Client`] on lapin 4, written the way lapin's documentation and examples suggest.
//!
//! Publisher confirms: `basic_publish(..).await` returns a `PublisherConfirm` future per message.
//! A collector task polls all outstanding confirm futures (a `FuturesUnordered`) and timestamps
//! each as it resolves, so latency is measured when the confirm arrives, not when we get round to
//! looking. A semaphore of N permits bounds the unconfirmed window.
//!
//! Consumers: `basic_consume` returns a `Stream` of deliveries; each is acked with
//! `delivery.ack(..).await`.
//!
//! lapin runs one `lapin-io-loop` OS thread per connection in addition to tasks on the tokio
//! runtime; its CPU time is included in the process figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, PublisherConfirm,
};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::client::{
    Broker, Client, ConsumeJob, ConsumeOutcome, Progress, PublishJob, PublishOutcome, QueueArgs,
    Tally,
};
use crate::workload::check_body;

/// How long to wait for the last confirms once publishing has stopped.
const CONFIRM_WAIT: Duration = Duration::from_secs(60);

/// lapin connections and the channel used for administration.
pub(crate) struct Lapin {
    /// Publishing, declarations, purges, deletes and basic.get.
    publish_conn: Connection,
    /// Consumers only.
    consume_conn: Connection,
    /// A long-lived channel on `publish_conn` for administrative calls.
    admin: Channel,
}

fn queue_arguments(args: &QueueArgs) -> FieldTable {
    let mut table = FieldTable::default();
    if args.single_active_consumer {
        table.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    if let Some(dlq) = &args.dead_letter_to {
        table.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        table.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(dlq.as_str())),
        );
    }
    table
}

impl Client for Lapin {
    const NAME: &'static str = "lapin";

    async fn connect(broker: &Broker) -> Result<Self> {
        let uri = format!(
            "amqp://{}:{}@{}:{}/%2f",
            broker.user, broker.password, broker.host, broker.port
        );
        let props = |name: &str| {
            ConnectionProperties::default().with_connection_name(LongString::from(name))
        };
        let publish_conn = Connection::connect(
            &uri,
            props(&format!("amqpcmp-{}-lapin-publish", std::process::id())),
        )
        .await
        .context("lapin: connect (publish)")?;
        let consume_conn = Connection::connect(
            &uri,
            props(&format!("amqpcmp-{}-lapin-consume", std::process::id())),
        )
        .await
        .context("lapin: connect (consume)")?;
        let admin = publish_conn.create_channel().await?;
        Ok(Lapin {
            publish_conn,
            consume_conn,
            admin,
        })
    }

    async fn declare_queue(&self, name: &str, args: &QueueArgs) -> Result<()> {
        self.admin
            .queue_declare(
                name.into(),
                QueueDeclareOptions::durable(),
                queue_arguments(args),
            )
            .await
            .with_context(|| format!("lapin: declare {name}"))?;
        Ok(())
    }

    async fn message_count(&self, name: &str) -> Result<u32> {
        let options = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .admin
            .queue_declare(name.into(), options, FieldTable::default())
            .await?;
        Ok(q.message_count())
    }

    async fn purge_queue(&self, name: &str) -> Result<u32> {
        Ok(self
            .admin
            .queue_purge(name.into(), QueuePurgeOptions::default())
            .await?)
    }

    async fn delete_queue(&self, name: &str) -> Result<u32> {
        Ok(self
            .admin
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await?)
    }

    async fn publish(&self, job: &PublishJob<'_>) -> Result<PublishOutcome> {
        let channel = self.publish_conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"));
        let routing: Vec<ShortString> = job.queues.iter().map(|q| q.as_str().into()).collect();
        let window = Arc::new(Semaphore::new(job.max_outstanding));
        let (tx, rx) = mpsc::unbounded_channel();
        let collector = tokio::spawn(collect_confirms(rx, Arc::clone(&window)));

        let mark = job.meter.mark();
        let start = Instant::now();
        let mut outcome = PublishOutcome::default();
        for i in 0..job.count {
            if start.elapsed() >= job.time_cap {
                break;
            }
            window.acquire().await?.forget();
            let payload = &job.payloads[i % job.payloads.len()];
            let sent = Instant::now();
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    routing[i % routing.len()].clone(),
                    BasicPublishOptions::default(),
                    payload,
                    properties.clone(),
                )
                .await?;
            tx.send((sent, confirm))
                .map_err(|_| anyhow::anyhow!("lapin: confirm collector stopped early"))?;
            outcome.published += 1;
            outcome.bytes += payload.len() as u64;
        }
        drop(tx);
        let collected = tokio::time::timeout(CONFIRM_WAIT, collector)
            .await
            .context("lapin: timed out waiting for publisher confirms")???;
        outcome.cpu = job.meter.since(&mark);
        outcome.elapsed = collected.last.map_or(Duration::ZERO, |t| t - start);
        outcome.latencies = collected.latencies;
        outcome.nacked = collected.nacked;
        channel.close(200, ShortString::from("OK")).await?;
        Ok(outcome)
    }

    async fn consume(&self, job: &ConsumeJob<'_>) -> Result<ConsumeOutcome> {
        // Channels and QoS first, outside the timed section.
        let mut channels = Vec::new();
        for (qi, _) in job.queues.iter().enumerate() {
            for ci in 0..job.consumers_per_queue {
                let channel = self.consume_conn.create_channel().await?;
                channel
                    .basic_qos(job.prefetch, BasicQosOptions::default())
                    .await?;
                channels.push((qi, ci, channel));
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let progress = Arc::new(Progress::default());

        let mark = job.meter.mark();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (qi, ci, channel) in &channels {
            let consumer = channel
                .basic_consume(
                    job.queues[*qi].as_str().into(),
                    format!("amqpcmp-{qi}-{ci}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let task = tokio::spawn(consume_loop(
                consumer,
                stop_rx.clone(),
                Arc::clone(&progress),
                job.expected,
            ));
            tasks.push((*qi, task));
        }
        let finished = progress.wait_for(job.expected, job.time_cap).await;
        let elapsed = start.elapsed();
        let cpu = job.meter.since(&mark);
        if !finished {
            eprintln!("  lapin: consume hit the time cap");
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
            let tally = task.await??;
            outcome.acked += tally.acked;
            outcome.bytes += tally.bytes;
            outcome.bad_bodies += tally.bad;
            outcome.per_consumer[qi].push(tally.acked);
        }
        for (_, _, channel) in channels {
            channel.close(200, ShortString::from("OK")).await?;
        }
        Ok(outcome)
    }

    async fn get_and_reject(&self, queue: &str) -> Result<bool> {
        let Some(message) = self
            .admin
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        else {
            return Ok(false);
        };
        message
            .delivery
            .reject(BasicRejectOptions { requeue: false })
            .await?;
        Ok(true)
    }

    async fn close(self) -> Result<()> {
        self.admin.close(200, ShortString::from("OK")).await?;
        self.publish_conn
            .close(200, ShortString::from("OK"))
            .await?;
        self.consume_conn
            .close(200, ShortString::from("OK"))
            .await?;
        Ok(())
    }
}

/// What the confirm collector saw.
struct Collected {
    /// Publish-to-confirm latency of every confirmed message, in arrival order.
    latencies: Vec<Duration>,
    /// Messages the broker nacked.
    nacked: u64,
    /// When the last confirm arrived.
    last: Option<Instant>,
}

/// Awaits every confirm future sent on `rx` concurrently, timestamps it when it resolves and
/// returns one permit to `window` per confirm. Ends when `rx` is closed and all have resolved.
async fn collect_confirms(
    mut rx: mpsc::UnboundedReceiver<(Instant, PublisherConfirm)>,
    window: Arc<Semaphore>,
) -> Result<Collected> {
    let mut pending = FuturesUnordered::new();
    let mut out = Collected {
        latencies: Vec::new(),
        nacked: 0,
        last: None,
    };
    let mut open = true;
    loop {
        tokio::select! {
            next = rx.recv(), if open => match next {
                Some((sent, confirm)) => pending.push(async move { (sent, confirm.await) }),
                None => open = false,
            },
            Some((sent, confirmation)) = pending.next(), if !pending.is_empty() => {
                let now = Instant::now();
                let confirmation = confirmation?;
                if confirmation.is_nack() {
                    out.nacked += 1;
                } else if !confirmation.is_ack() {
                    bail!("lapin: confirmation not requested; is the channel in confirm mode?");
                }
                out.latencies.push(now - sent);
                out.last = Some(now);
                window.add_permits(1);
            },
            else => break,
        }
    }
    Ok(out)
}

async fn consume_loop(
    mut consumer: Consumer,
    mut stop: watch::Receiver<bool>,
    progress: Arc<Progress>,
    expected: u64,
) -> Result<Tally> {
    let mut tally = Tally::default();
    loop {
        tokio::select! {
            delivery = consumer.next() => {
                let Some(delivery) = delivery else { break };
                let delivery = delivery?;
                match check_body(&delivery.data) {
                    Some(len) => tally.bytes += len as u64,
                    None => tally.bad += 1,
                }
                delivery.ack(BasicAckOptions::default()).await?;
                tally.acked += 1;
                progress.record(expected);
            }
            _ = stop.changed() => break,
        }
    }
    Ok(tally)
}
