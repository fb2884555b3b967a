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
//! **Fleet watch:** with [`WorkerPorts::fleet`], a shard task that takes its shard over also
//! makes a [`ShardWatcher`] for it, seeded with the latest state of the shard's vehicles (so one
//! that never reports again still becomes `stale`). Each group then goes, as in the in-process
//! worker ([`crate::worker`]): quality filters and events → events appended (durable before the
//! fixes) → history append → only good fixes applied to the latest state → ack. A failure at any
//! step makes the watch forget the group's vehicles, so the retry computes the same events again
//! (deterministic ids: the store keeps them once). The stale sweep runs after each group and on
//! the idle wake-ups, on a blocking thread.
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
use crate::state::StateResult;
use crate::state::StateStore;
use crate::transport::shard_of;
use crate::watcher::{FleetWatch, ShardWatcher};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicQosArguments, Channel, ConsumerMessage,
    QueueDeclareArguments,
};
use amqprs::connection::Connection;
use amqprs::{FieldTable, FieldValue};
use kickstand_domain::{Fix, wire};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

/// What a worker process needs.
pub struct WorkerPorts {
    pub history: Arc<dyn HistoryStore>,
    pub state: Arc<dyn StateStore>,
    pub group_max_fixes: usize,
    /// The quality filters and event rules, and the fleet store the events go to. `None`
    /// stores every fix unchecked and makes no event.
    pub fleet: Option<Arc<FleetWatch>>,
}

/// What every shard task of a worker process shares.
struct Worker {
    ports: WorkerPorts,
    seeds: Seeds,
}

/// What a shard task holds while it owns its shard. Made at the first delivery after each
/// (re)subscription and dropped when the shard is given up: another worker wrote the shard's
/// vehicles meanwhile.
#[derive(Default)]
struct Owned {
    /// When the first delivery after the (re)subscription arrived: every write of the shard's
    /// previous owner was done by then, so a scan of the latest state that starts later sees
    /// them all.
    since: Option<Instant>,
    /// The shard's history writer (it caches what it has seen of its vehicles).
    writer: Option<Box<dyn HistoryWriter>>,
    /// The fleet watch of the shard's vehicles, when the worker runs one.
    watcher: Option<ShardWatcher>,
}

/// The seeds of the fleet watches: the vehicles of each shard, from one scan of the latest
/// state that serves every shard taken over before it started. A worker takes its shards over
/// at about the same time (at start, or when another worker dies), and a scan reads the whole
/// fleet (about 165 ms per 100,000 vehicles from Redis), so one scan replaces up to `shards`.
#[derive(Default)]
struct Seeds {
    /// The newest scan. Locked while a scan runs, so takeovers at the same time wait for it
    /// instead of scanning again.
    last: Mutex<Option<Scan>>,
}

struct Scan {
    started: Instant,
    /// The vehicles of each shard, taken out by the shard that uses them.
    shards: Vec<Vec<Fix>>,
}

/// How long a scan's parts that no shard took are kept for a takeover that started before it.
const SEEDS_KEPT: Duration = Duration::from_secs(10);

impl Seeds {
    /// The vehicles of `shard` and their latest points, from a scan that started at or after
    /// `since`.
    fn take(
        &self,
        state: &dyn StateStore,
        shard: usize,
        shards: usize,
        since: Instant,
    ) -> StateResult<Vec<Fix>> {
        let mut last = self.last.lock();
        if let Some(scan) = last.as_mut()
            && scan.started >= since
            && let Some(part) = scan.shards.get_mut(shard)
        {
            return Ok(std::mem::take(part));
        }
        *last = None;
        let started = Instant::now();
        let mut parts: Vec<Vec<Fix>> = (0..shards).map(|_| Vec::new()).collect();
        state.for_each_vehicle(&mut |vehicle_id, point| {
            let fix = Fix { vehicle_id, point };
            parts[shard_of(&fix, shards)].push(fix);
        })?;
        let part = std::mem::take(&mut parts[shard]);
        tracing::debug!(
            message = "latest state scanned for the fleet watches",
            vehicles = parts.iter().map(Vec::len).sum::<usize>() + part.len(),
            elapsed_ms = started.elapsed().as_millis() as u64
        );
        *last = Some(Scan {
            started,
            shards: parts,
        });
        Ok(part)
    }

    /// Drops a scan older than [`SEEDS_KEPT`] (unless one is running).
    fn expire(&self) {
        if let Some(mut last) = self.last.try_lock()
            && last
                .as_ref()
                .is_some_and(|s| s.started.elapsed() > SEEDS_KEPT)
        {
            *last = None;
        }
    }
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
/// How long a shard task waits for a delivery before it wakes up anyway: to honour a release
/// on an idle shard, and to run the stale sweep of its fleet watch.
const IDLE_WAKE: Duration = Duration::from_millis(500);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs a worker until `stop` turns true: then each shard finishes (and acks) the group in hand
/// and the connection closes; unacked prefetched messages return to their queues.
pub async fn run(cfg: RabbitConfig, ports: WorkerPorts, mut stop: watch::Receiver<bool>) {
    let ports = Arc::new(Worker {
        ports,
        seeds: Seeds::default(),
    });
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
    ports: &Arc<Worker>,
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
    ports: Arc<Worker>,
    dlq: Arc<ConfirmedChannel>,
    flags: Arc<Vec<ShardFlags>>,
    mut halt: watch::Receiver<bool>,
) -> AmqpResult<()> {
    let (mut channel, mut rx) = subscribe(&cfg, &conn, shard).await?;
    // Filled at the first delivery after each (re)subscription: see the module docs.
    let mut owned = Owned::default();
    loop {
        if flags[shard].release.swap(false, Ordering::Relaxed) {
            // Give the shard up: close the channel (prefetched, unacked messages return to the
            // queue in order and go to the next waiting worker), subscribe again behind it.
            owned = Owned::default();
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
            // Wake up now and then to honour a release on an idle shard, and to sweep it.
            () = tokio::time::sleep(IDLE_WAKE) => {
                ports.seeds.expire();
                if let Some(mut w) = owned.watcher.take() {
                    let swept = tokio::task::spawn_blocking(move || {
                        w.tick(now_ms());
                        w
                    });
                    owned.watcher = Some(swept.await.map_err(|e| format!("the sweep task failed: {e}"))?);
                }
                continue;
            }
        };
        let Some(first) = first else {
            return Err(format!("the consumer of shard {shard} was closed"));
        };
        owned.since.get_or_insert_with(Instant::now);
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
        while fixes.len() < ports.ports.group_max_fixes {
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
            owned = write(shard, cfg.shards, &ports, owned, fixes, &mut halt).await?;
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

/// Stores `fixes` on a blocking thread ([`Owned::store`]), retrying storage failures with
/// backoff until they succeed or the worker is halted (then the group stays unacked).
async fn write(
    shard: usize,
    shards: usize,
    ports: &Arc<Worker>,
    mut owned: Owned,
    fixes: Vec<Fix>,
    halt: &mut watch::Receiver<bool>,
) -> AmqpResult<Owned> {
    let fixes = Arc::new(fixes);
    let mut backoff = Duration::from_millis(100);
    loop {
        let ports2 = ports.clone();
        let batch = fixes.clone();
        let mut o = std::mem::take(&mut owned);
        let started = std::time::Instant::now();
        let (o, result) = tokio::task::spawn_blocking(move || {
            let result = o.store(shard, shards, &ports2, &batch);
            (o, result)
        })
        .await
        .map_err(|e| format!("the write task failed: {e}"))?;
        owned = o;
        match result {
            Ok(()) => {
                metrics::histogram!(crate::metrics::GROUP_FIXES).record(fixes.len() as f64);
                metrics::histogram!(crate::metrics::WORKER_LAG_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                return Ok(owned);
            }
            Err(error) => {
                tracing::error!(message = "storage failed; retrying the group (not acked)", shard, %error, retry_in_ms = backoff.as_millis() as u64);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = halt.changed() => return Err("halted during a storage retry".into()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Owned {
    /// Stores one group, in the order that makes a retry safe: the fleet watch flags bad fixes
    /// and computes events; the events are appended (durable before the fixes); the fixes are
    /// appended to history (durable); the good ones move the latest state. On a failure the
    /// watch forgets the group's vehicles and a failed writer is dropped, so the retry starts
    /// afresh and computes the same events, which the store keeps once.
    fn store(
        &mut self,
        shard: usize,
        shards: usize,
        worker: &Worker,
        fixes: &[Fix],
    ) -> Result<(), String> {
        let ports = &worker.ports;
        if self.writer.is_none() {
            let w = ports
                .history
                .writer(shard)
                .map_err(|e| format!("cannot open a history writer: {e}"))?;
            self.writer = Some(w);
        }
        if self.watcher.is_none()
            && let Some(fleet) = &ports.fleet
        {
            let since = *self.since.get_or_insert_with(Instant::now);
            let seed = worker
                .seeds
                .take(ports.state.as_ref(), shard, shards, since)
                .map_err(|e| format!("cannot seed the fleet watch: {e}"))?;
            self.watcher = Some(seeded_watcher(fleet, &ports.state, shard, seed));
        }
        let now = now_ms();
        let mut events = Vec::new();
        let mut flagged = 0;
        // The watch flags fixes in place: a copy, so a retry checks the fixes as delivered.
        let checked: Option<Vec<Fix>> = match self.watcher.as_mut() {
            Some(w) => {
                let mut batch = fixes.to_vec();
                flagged = w.process(&mut batch, now, &mut events);
                if !events.is_empty()
                    && let Err(e) = w.store().append_events(&events, now)
                {
                    w.forget(&batch);
                    return Err(format!("storing events failed: {e}"));
                }
                Some(batch)
            }
            None => None,
        };
        let batch = checked.as_deref().unwrap_or(fixes);
        let mut is_new = Vec::with_capacity(batch.len());
        let writer = self.writer.as_mut().expect("opened above");
        if let Err(e) = writer.append(batch, &mut is_new) {
            // A failed writer may refuse further writes; a new one is made for the retry.
            self.writer = None;
            self.forget(batch);
            return Err(format!("history append failed: {e}"));
        }
        let accepted = is_new.iter().filter(|n| **n).count() as u64;
        metrics::counter!(crate::metrics::INGEST_ACCEPTED_TOTAL).increment(accepted);
        metrics::counter!(crate::metrics::INGEST_DUPLICATES_TOTAL)
            .increment(batch.len() as u64 - accepted);
        let applied = if flagged == 0 {
            ports.state.apply(batch)
        } else {
            // Flags are counted once, for the fixes stored now (not for duplicates).
            for (f, new) in batch.iter().zip(&is_new) {
                if *new && !f.point.quality.is_good() {
                    crate::watcher::count_flags(f.point.quality);
                }
            }
            let good: Vec<Fix> = batch
                .iter()
                .filter(|f| f.point.quality.is_good())
                .cloned()
                .collect();
            ports.state.apply(&good)
        };
        if let Err(e) = applied {
            self.forget(batch);
            return Err(e.to_string());
        }
        crate::watcher::count_events(&events);
        if let Some(w) = self.watcher.as_mut() {
            // A busy shard never idles: its stale sweep runs here (at most every few seconds).
            w.tick(now_ms());
        }
        Ok(())
    }

    /// Makes the watch forget the vehicles of a group that failed to store.
    fn forget(&mut self, fixes: &[Fix]) {
        if let Some(w) = self.watcher.as_mut() {
            w.forget(fixes);
        }
    }
}

/// A fleet watch for the vehicles of `shard`, seeded with their latest points (`seed`, from
/// [`Seeds::take`]), so that a vehicle that never reports again still becomes `stale`.
fn seeded_watcher(
    fleet: &Arc<FleetWatch>,
    state: &Arc<dyn StateStore>,
    shard: usize,
    seed: Vec<Fix>,
) -> ShardWatcher {
    let vehicles = seed.len();
    // The seed places each vehicle in the geofences of the zone set in force, so that set must
    // be as fresh as the one `process` will use (a worker that was idle has not looked since).
    fleet.zones.refresh();
    let mut watcher = ShardWatcher::new(fleet.clone(), state.clone());
    watcher.seed(seed);
    tracing::debug!(message = "fleet watch seeded", shard, vehicles);
    watcher
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{FleetSummary, MemoryState, StateFilter, VehicleView};
    use kickstand_domain::geo::BBox;
    use kickstand_domain::{Point, VehicleId};
    use std::sync::atomic::AtomicUsize;

    /// The memory store, counting its scans.
    #[derive(Default)]
    struct Counted {
        inner: MemoryState,
        scans: AtomicUsize,
    }

    impl StateStore for Counted {
        fn apply(&self, fixes: &[Fix]) -> StateResult<()> {
            StateStore::apply(&self.inner, fixes)
        }
        fn get(&self, id: &VehicleId) -> StateResult<Option<Point>> {
            StateStore::get(&self.inner, id)
        }
        fn near(
            &self,
            lat: f64,
            lon: f64,
            radius_m: f64,
            filter: StateFilter,
            limit: usize,
        ) -> StateResult<Vec<(VehicleView, f64)>> {
            StateStore::near(&self.inner, lat, lon, radius_m, filter, limit)
        }
        fn within(
            &self,
            bbox: BBox,
            filter: StateFilter,
            after: Option<&VehicleId>,
            limit: usize,
        ) -> StateResult<Vec<VehicleView>> {
            StateStore::within(&self.inner, bbox, filter, after, limit)
        }
        fn summary(&self, stale_before_ms: i64) -> StateResult<FleetSummary> {
            StateStore::summary(&self.inner, stale_before_ms)
        }
        fn changes_since(
            &self,
            bbox: &BBox,
            since: u64,
            out: &mut Vec<VehicleView>,
        ) -> StateResult<u64> {
            StateStore::changes_since(&self.inner, bbox, since, out)
        }
        fn len(&self) -> StateResult<usize> {
            StateStore::len(&self.inner)
        }
        fn for_each_vehicle(&self, visit: &mut dyn FnMut(VehicleId, Point)) -> StateResult<()> {
            self.scans.fetch_add(1, Ordering::Relaxed);
            StateStore::for_each_vehicle(&self.inner, visit)
        }
    }

    fn fix(id: &str, ts: i64) -> Fix {
        Fix {
            vehicle_id: VehicleId::new(id).unwrap(),
            point: Point {
                ts,
                lat_e6: 1,
                lon_e6: 1,
                ..Point::default()
            },
        }
    }

    /// The vehicles of `part`, by id, with their `ts`.
    fn ids(part: &[Fix]) -> Vec<(String, i64)> {
        let mut v: Vec<_> = part
            .iter()
            .map(|f| (f.vehicle_id.as_str().to_owned(), f.point.ts))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn one_scan_seeds_every_shard_taken_over_before_it_started() {
        let shards = 4;
        let state = Counted::default();
        let fleet: Vec<Fix> = (0..40).map(|i| fix(&format!("v{i}"), 1)).collect();
        state.apply(&fleet).unwrap();
        let of = |shard: usize| -> Vec<(String, i64)> {
            ids(&fleet
                .iter()
                .filter(|f| shard_of(f, shards) == shard)
                .cloned()
                .collect::<Vec<_>>())
        };
        let seeds = Seeds::default();
        let asked = Instant::now();
        for shard in 0..shards {
            let part = seeds.take(&state, shard, shards, asked).unwrap();
            assert_eq!(ids(&part), of(shard), "shard {shard}");
        }
        assert_eq!(state.scans.load(Ordering::Relaxed), 1);

        // A shard taken over after the scan started is seeded by a new scan, which sees what
        // the previous owner wrote meanwhile.
        let moved = fleet
            .iter()
            .find(|f| shard_of(f, shards) == 2)
            .unwrap()
            .vehicle_id
            .clone();
        state.apply(&[fix(moved.as_str(), 2)]).unwrap();
        let part = seeds.take(&state, 2, shards, Instant::now()).unwrap();
        assert_eq!(state.scans.load(Ordering::Relaxed), 2);
        assert!(ids(&part).contains(&(moved.as_str().to_owned(), 2)));
        // The shards the new scan did not hand out are kept for a while, then dropped.
        seeds.expire();
        assert!(seeds.last.lock().is_some());
        seeds.last.lock().as_mut().unwrap().started -= SEEDS_KEPT + Duration::from_secs(1);
        seeds.expire();
        assert!(seeds.last.lock().is_none());
    }
}
