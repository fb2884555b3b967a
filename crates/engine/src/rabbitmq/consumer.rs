//! The worker side: consumes the shard queues, writes history, moves the latest state, acks.
//!
//! One connection per worker process; per shard queue one channel with a bounded prefetch and
//! one consumer. The queues are single-active-consumer: every worker subscribes to every shard,
//! the broker delivers each shard to one of them, and when that worker dies (its connection
//! drops) the broker hands the shard, with its unacked messages, to the next. A worker takes
//! over a shard with a **new history writer** (a writer caches what it has seen of its vehicles,
//! and another worker wrote them meanwhile).
//!
//! Per shard, a task takes what has arrived (up to `group_max_fixes`), decodes it, appends it
//! in one durable write, applies it to the latest state, and acks the group with one `multiple`
//! ack. Storage failures are retried with backoff and nothing is acked meanwhile (the queue holds
//! the backlog: backpressure); a message that does not decode goes to the dead-letter queue with
//! the reason in its headers, confirmed before it is acked.
//!
//! **Rebalancing:** every `rebalance_interval_secs` a worker counts the consumers of the shard
//! queues (one per live worker) and, when it has been active on more than its fair share of
//! shards recently, releases the surplus: it finishes the group in hand, closes the shard's
//! channel (unacked prefetched messages go back to the queue in order) and subscribes again,
//! behind the waiting workers.

use super::{
    AmqpResult, Backoff, Broken, ConfirmedChannel, RabbitConfig, amqp_err, connect,
    declare_topology,
};
use crate::history::{HistoryStore, HistoryWriter};
use crate::state::StateStore;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicQosArguments, Channel, ConsumerMessage,
    QueueDeclareArguments,
};
use amqprs::connection::Connection;
use amqprs::{FieldTable, FieldValue};
use kickstand_domain::{Fix, wire};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

/// What a worker process needs.
pub struct WorkerPorts {
    pub history: Arc<dyn HistoryStore>,
    pub state: Arc<dyn StateStore>,
    pub group_max_fixes: usize,
}

/// Per-shard flags shared between the shard task and the rebalancer.
struct ShardFlags {
    /// When this worker last received a delivery of the shard (ms since the epoch; 0 never).
    last_delivery_ms: AtomicI64,
    /// Set by the rebalancer: finish the group in hand, then give the shard up.
    release: AtomicBool,
}

/// Groups smaller than this wait up to `group_linger_ms` for more deliveries.
const LINGER_BELOW_FIXES: usize = 4_096;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs a worker until `stop` turns true: then each shard finishes (and acks) the group in hand
/// and the connection closes; unacked prefetched messages return to their queues.
pub async fn run(cfg: RabbitConfig, ports: WorkerPorts, mut stop: watch::Receiver<bool>) {
    let ports = Arc::new(ports);
    let mut backoff = Backoff::new();
    let mut logged_down = false;
    while !*stop.borrow() {
        let broken = Broken::default();
        match session(&cfg, &ports, &broken, &mut stop).await {
            Ok(()) => {
                backoff.reset();
                logged_down = false;
            }
            Err(error) => {
                if logged_down {
                    tracing::debug!(message = "RabbitMQ still unavailable", %error);
                } else {
                    tracing::error!(message = "worker lost RabbitMQ; reconnecting", %error);
                    logged_down = true;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next()) => {}
            _ = stop.changed() => {}
        }
    }
    tracing::info!(message = "worker stopped");
}

/// One connection's life. Returns `Ok` when asked to stop, `Err` when the connection failed.
async fn session(
    cfg: &RabbitConfig,
    ports: &Arc<WorkerPorts>,
    broken: &Broken,
    stop: &mut watch::Receiver<bool>,
) -> AmqpResult<()> {
    let name = format!("kickstand-worker-{}", std::process::id());
    let conn = connect(cfg, &name, broken).await?;
    let dlq = Arc::new(ConfirmedChannel::open(&conn, broken).await?);
    declare_topology(cfg, &dlq.channel).await?;
    // Presence: every live worker holds one consumer on this queue, which never carries a
    // message. (The shard queues cannot be asked: single-active-consumer queues count only
    // the active consumer.)
    let presence = conn
        .open_channel(None)
        .await
        .map_err(amqp_err("open channel"))?;
    let workers_queue = format!("{}.workers", cfg.queue_prefix);
    presence
        .queue_declare(QueueDeclareArguments::new(&workers_queue))
        .await
        .map_err(amqp_err("declare the presence queue"))?;
    let mut presence_args = BasicConsumeArguments::new(
        &workers_queue,
        &format!("kickstand-worker-{}", std::process::id()),
    );
    presence_args.auto_ack(true);
    let (_, _presence_rx) = presence
        .basic_consume_rx(presence_args)
        .await
        .map_err(amqp_err("join the presence queue"))?;
    tracing::info!(message = "worker connected to RabbitMQ", url = %cfg.redacted_url(), shards = cfg.shards);
    let (halt_tx, halt) = watch::channel(false);
    let flags: Arc<Vec<ShardFlags>> = Arc::new(
        (0..cfg.shards)
            .map(|_| ShardFlags {
                last_delivery_ms: AtomicI64::new(0),
                release: AtomicBool::new(false),
            })
            .collect(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for shard in 0..cfg.shards {
        tasks.spawn(shard_task(
            cfg.clone(),
            shard,
            conn.clone(),
            ports.clone(),
            dlq.clone(),
            flags.clone(),
            halt.clone(),
        ));
    }
    let mut rebalance =
        tokio::time::interval(Duration::from_secs(cfg.rebalance_interval_secs.max(1)));
    rebalance.tick().await;
    let result = loop {
        tokio::select! {
            () = broken.wait() => break Err("the connection was closed".to_owned()),
            _ = stop.changed() => break Ok(()),
            done = tasks.join_next() => match done {
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(e)) => break Err(format!("a shard task failed: {e}")),
                Some(Ok(Ok(()))) | None => break Err("a shard consumer ended".to_owned()),
            },
            _ = rebalance.tick() => {
                if let Err(error) = rebalance_once(cfg, &dlq.channel, &flags).await {
                    tracing::debug!(message = "rebalance check failed", %error);
                }
            }
        }
    };
    // Shards finish the group in hand (acked) and stop taking deliveries; on a failed
    // connection there is nothing to finish and the tasks end at once.
    let _ = halt_tx.send(true);
    if result.is_ok() {
        let drain = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(30), drain).await;
    }
    tasks.abort_all();
    dlq.fail_all();
    let _ = conn.close().await;
    result
}

/// Releases the shards beyond this worker's fair share.
async fn rebalance_once(
    cfg: &RabbitConfig,
    channel: &Channel,
    flags: &[ShardFlags],
) -> AmqpResult<()> {
    let declare = QueueDeclareArguments::new(&format!("{}.workers", cfg.queue_prefix))
        .passive(true)
        .finish();
    let (_, _, consumers) = channel
        .queue_declare(declare)
        .await
        .map_err(amqp_err("count consumers"))?
        .ok_or("no declare-ok")?;
    let workers = (consumers as usize).max(1);
    let fair = cfg.shards.div_ceil(workers);
    let recent = now_ms() - 2_000 * cfg.rebalance_interval_secs.max(1) as i64;
    let active: Vec<usize> = (0..flags.len())
        .filter(|&s| flags[s].last_delivery_ms.load(Ordering::Relaxed) > recent)
        .collect();
    tracing::debug!(
        message = "rebalance check",
        workers,
        fair,
        active = active.len()
    );
    if workers > 1 && active.len() > fair {
        let surplus = &active[fair..];
        tracing::info!(
            message = "releasing shards to other workers",
            workers,
            held = active.len(),
            releasing = surplus.len()
        );
        for &s in surplus {
            flags[s].release.store(true, Ordering::Relaxed);
        }
    }
    Ok(())
}

async fn subscribe(
    cfg: &RabbitConfig,
    conn: &Connection,
    shard: usize,
) -> AmqpResult<(Channel, UnboundedReceiver<ConsumerMessage>)> {
    let channel = conn
        .open_channel(None)
        .await
        .map_err(amqp_err("open channel"))?;
    channel
        .basic_qos(BasicQosArguments::new(0, cfg.prefetch, false))
        .await
        .map_err(amqp_err("basic.qos"))?;
    let tag = format!("kickstand-worker-{}-{shard}", std::process::id());
    let (_, rx) = channel
        .basic_consume_rx(BasicConsumeArguments::new(&cfg.shard_queue(shard), &tag))
        .await
        .map_err(amqp_err("basic.consume"))?;
    Ok((channel, rx))
}

async fn shard_task(
    cfg: RabbitConfig,
    shard: usize,
    conn: Connection,
    ports: Arc<WorkerPorts>,
    dlq: Arc<ConfirmedChannel>,
    flags: Arc<Vec<ShardFlags>>,
    mut halt: watch::Receiver<bool>,
) -> AmqpResult<()> {
    let (mut channel, mut rx) = subscribe(&cfg, &conn, shard).await?;
    // Created at the first delivery after each (re)subscription: see the module docs.
    let mut writer: Option<Box<dyn HistoryWriter>> = None;
    loop {
        if flags[shard].release.swap(false, Ordering::Relaxed) {
            // Give the shard up: close the channel (prefetched, unacked messages return to the
            // queue in order and go to the next waiting worker), subscribe again behind it.
            drop(writer.take());
            let _ = channel.close().await;
            flags[shard].last_delivery_ms.store(0, Ordering::Relaxed);
            (channel, rx) = subscribe(&cfg, &conn, shard).await?;
            continue;
        }
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = halt.changed() => {
                // Closed here, not by amqprs's drop guard on a task the exiting runtime cancels.
                let _ = channel.close().await;
                return Ok(());
            }
            // Wake up now and then to honour a release on an idle shard.
            () = tokio::time::sleep(Duration::from_millis(500)) => continue,
        };
        let Some(first) = first else {
            return Err(format!("the consumer of shard {shard} was closed"));
        };
        flags[shard]
            .last_delivery_ms
            .store(now_ms(), Ordering::Relaxed);
        let mut last_tag = 0u64;
        let mut fixes: Vec<Fix> = Vec::new();
        let mut poison: Vec<(u64, Vec<u8>, String)> = Vec::new();
        let mut take = |m: ConsumerMessage, fixes: &mut Vec<Fix>| -> AmqpResult<()> {
            let tag = m
                .deliver
                .as_ref()
                .ok_or("a delivery without its frame")?
                .delivery_tag();
            // Tags rise on a channel; one `multiple` ack up to the last settles the group.
            last_tag = last_tag.max(tag);
            let body = m.content.unwrap_or_default();
            if let Err(e) = wire::decode(&body, fixes) {
                poison.push((tag, body, e.to_string()));
            }
            Ok(())
        };
        take(first, &mut fixes)?;
        // Group commit: take what has arrived, and wait up to `group_linger_ms` for more while
        // the group is small. One durable write per group is what the history store pays for
        // (a transaction and an fsync); devices are not kept waiting, they were acked when the
        // broker confirmed.
        let linger_until = tokio::time::Instant::now() + Duration::from_millis(cfg.group_linger_ms);
        while fixes.len() < ports.group_max_fixes {
            match rx.try_recv() {
                Ok(m) => take(m, &mut fixes)?,
                Err(_) if fixes.len() < LINGER_BELOW_FIXES => {
                    match tokio::time::timeout_at(linger_until, rx.recv()).await {
                        Ok(Some(m)) => take(m, &mut fixes)?,
                        Ok(None) | Err(_) => break,
                    }
                }
                Err(_) => break,
            }
        }
        for (tag, body, reason) in poison {
            dead_letter(&cfg, &dlq, shard, body, &reason).await?;
            tracing::warn!(message = "poison message dead-lettered", shard, delivery_tag = tag, %reason);
            metrics::counter!(crate::metrics::DEAD_LETTERS_TOTAL, "source" => "rabbitmq")
                .increment(1);
        }
        if !fixes.is_empty() {
            writer = Some(write(shard, &ports, writer, fixes, &mut halt).await?);
        }
        channel
            .basic_ack(BasicAckArguments::new(last_tag, true))
            .await
            .map_err(amqp_err("basic.ack"))?;
    }
}

/// Publishes a poison message to the dead-letter queue with the reason and waits for the
/// broker's confirm.
async fn dead_letter(
    cfg: &RabbitConfig,
    dlq: &ConfirmedChannel,
    shard: usize,
    body: Vec<u8>,
    reason: &str,
) -> AmqpResult<()> {
    let mut headers = FieldTable::new();
    let text = |s: &str| FieldValue::S(s.try_into().unwrap_or_default());
    let reason: String = reason.chars().take(1_000).collect();
    headers.insert(
        "x-kickstand-reason".try_into().expect("valid"),
        text(&reason),
    );
    headers.insert(
        "x-kickstand-queue".try_into().expect("valid"),
        text(&cfg.shard_queue(shard)),
    );
    headers.insert(
        "x-kickstand-dead-lettered-at".try_into().expect("valid"),
        FieldValue::l(now_ms()),
    );
    let rx = dlq
        .publish(&cfg.dead_letter_queue(), body, Some(headers))
        .await?;
    match tokio::time::timeout(Duration::from_millis(cfg.confirm_timeout_ms), rx).await {
        Ok(Ok(true)) => Ok(()),
        _ => Err("the dead-letter queue did not confirm".into()),
    }
}

/// Appends and applies `fixes` on a blocking thread, retrying storage failures with backoff
/// until they succeed or the worker is halted (then the group stays unacked).
async fn write(
    shard: usize,
    ports: &Arc<WorkerPorts>,
    mut writer: Option<Box<dyn HistoryWriter>>,
    fixes: Vec<Fix>,
    halt: &mut watch::Receiver<bool>,
) -> AmqpResult<Box<dyn HistoryWriter>> {
    let fixes = Arc::new(fixes);
    let mut backoff = Duration::from_millis(100);
    loop {
        let ports2 = ports.clone();
        let batch = fixes.clone();
        let w = writer.take();
        let started = std::time::Instant::now();
        let (w, result) = tokio::task::spawn_blocking(move || {
            let mut w = match w {
                Some(w) => w,
                None => match ports2.history.writer(shard) {
                    Ok(w) => w,
                    Err(e) => return (None, Err(format!("cannot open a history writer: {e}"))),
                },
            };
            let mut is_new = Vec::with_capacity(batch.len());
            if let Err(e) = w.append(&batch, &mut is_new) {
                // A failed writer may refuse further writes; a new one is made for the retry.
                return (None, Err(format!("history append failed: {e}")));
            }
            let accepted = is_new.iter().filter(|n| **n).count() as u64;
            metrics::counter!(crate::metrics::INGEST_ACCEPTED_TOTAL).increment(accepted);
            metrics::counter!(crate::metrics::INGEST_DUPLICATES_TOTAL)
                .increment(batch.len() as u64 - accepted);
            if let Err(e) = ports2.state.apply(&batch) {
                return (Some(w), Err(e.to_string()));
            }
            (Some(w), Ok(()))
        })
        .await
        .map_err(|e| format!("the write task failed: {e}"))?;
        match (w, result) {
            (Some(w), Ok(())) => {
                metrics::histogram!(crate::metrics::GROUP_FIXES).record(fixes.len() as f64);
                metrics::histogram!(crate::metrics::WORKER_LAG_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                return Ok(w);
            }
            (w, Err(error)) => {
                tracing::error!(message = "storage failed; retrying the group (not acked)", shard, %error, retry_in_ms = backoff.as_millis() as u64);
                writer = w;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = halt.changed() => return Err("halted during a storage retry".into()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            (None, Ok(())) => unreachable!("a successful write returns its writer"),
        }
    }
}
