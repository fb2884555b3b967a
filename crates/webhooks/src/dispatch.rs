//! The dispatcher: reads the event feed and delivers each subscription's matching events in
//! order, with retries, logging every attempt.
//!
//! # Shape
//!
//! One supervisor task per process polls the feed's head every `poll_interval_ms` (or when
//! [`DispatcherHandle::notify`] wakes it) and starts a *lane* task for every enabled
//! subscription whose cursor is behind the head and that has no lane yet. A lane reads events
//! after its cursor a page (`page_size`) at a time, delivers the matching ones one by one, and
//! ends when it has caught up, or when its subscription is disabled or deleted. So:
//!
//! - **Order per subscription**: a lane does not take the next event before the current one is
//!   delivered or given up, and there is at most one lane per subscription.
//! - **No head-of-line blocking across subscriptions**: a lane waiting for a retry is only a
//!   sleeping task; it holds no delivery slot. At most `max_in_flight` requests run at once
//!   (a semaphore), each bounded by `timeout_ms`, so a slow receiver holds one slot for at most
//!   that long.
//! - **The pipeline is never touched**: the dispatcher only reads the feed (on the blocking
//!   pool), so a dead receiver cannot slow ingest or event computation; it only falls behind.
//! - **At-least-once**: the cursor moves in the transaction that logs the event `delivered` or
//!   `gave_up` (see [`crate::store`]), so after a crash or shutdown the event in flight is sent
//!   again; receivers dedupe on `Webhook-Id`. The retry state (attempt count, next attempt
//!   time) is stored too, so a restart does not reset a failing event's schedule.
//!
//! # Leadership
//!
//! Several processes may share one store (PostgreSQL), and each may run a dispatcher, but only
//! one delivers: before each round the supervisor asks [`WebhookStore::try_lead`]. A *standby*
//! (another process leads, or the store cannot be reached) starts no lane and asks again every
//! `leader_retry_ms`. A leader that loses the leadership stops its lanes at once (requests in
//! flight are dropped; the next leader sends those events again) and becomes a standby. Each
//! change is logged at info, and the gauge [`LEADER`] says whether this process leads. At
//! shutdown the dispatcher resigns, so a standby takes over without waiting. A SQLite store
//! always leads.
//!
//! **Architecture Invariant:** the dispatcher never writes to the feed and never waits on the
//! pipeline; all its store and feed calls run on `spawn_blocking`.

use crate::config::WebhookConfig;
use crate::retry::{Jitter, RetryPolicy};
use crate::send::Sender;
use crate::store::{AfterAttempt, Attempt, DisableRules, Outcome, Subscription, WebhookStore};
use kickstand_domain::event::Event;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Counter of delivery attempts, labelled `outcome` = `delivered`, `failed` or `gave_up`.
pub const DELIVERIES_TOTAL: &str = "kickstand_webhook_deliveries_total";
/// Counter of subscriptions disabled automatically.
pub const DISABLED_TOTAL: &str = "kickstand_webhook_disabled_total";
/// Gauge: 1 while this process's dispatcher leads (delivers), 0 while it is a standby.
pub const LEADER: &str = "kickstand_webhooks_leader";

/// Where events come from: the engine's event store, which numbers events with an increasing
/// `seq`. Implementations should be quick; they are called on the blocking pool.
pub trait EventFeed: Send + Sync {
    /// Up to `limit` events with a seq above `seq`, in seq order.
    fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<(u64, Event)>, String>;
    /// The seq of the newest event (0 when there is none).
    fn head(&self) -> Result<u64, String>;
}

/// The JSON body of every delivery.
#[derive(Serialize)]
pub struct Envelope<'a, T: Serialize> {
    /// The event id, also sent as `Webhook-Id`; the same on every attempt.
    pub id: &'a str,
    /// The event kind (`ping` for test deliveries).
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// RFC 3339 time of the event.
    pub created_at: String,
    pub data: &'a T,
}

/// The body delivered for `event`.
pub fn event_body(event: &Event) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        id: &event.id,
        kind: event.kind.as_str(),
        created_at: kickstand_domain::timefmt::format_ms(event.ts),
        data: event,
    })
    .expect("an event serializes")
}

/// Wakes the dispatcher (new events were stored, a subscription was re-enabled).
#[derive(Clone, Default)]
pub struct DispatcherHandle {
    wake: Arc<Notify>,
}

impl DispatcherHandle {
    /// Makes the dispatcher look at the feed now rather than at its next poll.
    pub fn notify(&self) {
        self.wake.notify_one();
    }
}

/// Starts and runs the dispatcher.
pub struct Dispatcher;

/// What the supervisor and its lanes share.
struct Ctx {
    store: Arc<dyn WebhookStore>,
    feed: Arc<dyn EventFeed>,
    sender: Sender,
    policy: RetryPolicy,
    rules: DisableRules,
    page_size: usize,
    /// Delivery slots (`max_in_flight`).
    slots: Semaphore,
}

/// How often the supervisor looks.
#[derive(Clone, Copy)]
struct Intervals {
    /// Between two rounds while leading (`poll_interval_ms`).
    poll: Duration,
    /// Between two tries for the leadership while a standby (`leader_retry_ms`).
    standby: Duration,
}

impl Dispatcher {
    /// Spawns the dispatcher. It delivers while `store` says it leads (see the module
    /// documentation) and runs until `shutdown` completes; then it stops its lanes (dropping
    /// requests in flight: those events are sent again after the restart), resigns the
    /// leadership and ends.
    pub fn spawn(
        store: Arc<dyn WebhookStore>,
        feed: Arc<dyn EventFeed>,
        sender: Sender,
        config: &WebhookConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (DispatcherHandle, JoinHandle<()>) {
        // Only the supervisor watches this; lanes watch the halt of their term, which the
        // supervisor raises at shutdown and when the leadership is lost.
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let ctx = Arc::new(Ctx {
            store,
            feed,
            sender,
            policy: config.retry_policy(),
            rules: DisableRules {
                after_failures: config.disable_after_failures,
                after_ms: i64::try_from(config.disable_after_secs.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
            },
            page_size: config.page_size.max(1),
            slots: Semaphore::new(config.max_in_flight.max(1)),
        });
        let handle = DispatcherHandle::default();
        let intervals = Intervals {
            poll: Duration::from_millis(config.poll_interval_ms.max(1)),
            standby: Duration::from_millis(config.leader_retry_ms.max(1)),
        };
        let task = tokio::spawn(supervise(ctx, handle.clone(), intervals, stop));
        (handle, task)
    }
}

/// How long delivery log rows are kept.
const LOG_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

/// Checks the leadership, starts lanes while leading, prunes the log; until `shutdown` is
/// `true`.
async fn supervise(
    ctx: Arc<Ctx>,
    handle: DispatcherHandle,
    intervals: Intervals,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut lanes = Lanes::default();
    let mut last_prune = 0i64;
    // `None` until the first answer, so that the first one is logged whatever it is.
    let mut leading: Option<bool> = None;
    metrics::gauge!(LEADER).set(0.0);
    loop {
        let c = ctx.clone();
        let leads = match blocking(move || c.store.try_lead()).await {
            Ok(leads) => leads,
            Err(error) => {
                tracing::warn!(message = "webhook dispatcher cannot tell whether it leads; on standby", %error);
                false
            }
        };
        if leading != Some(leads) {
            metrics::gauge!(LEADER).set(if leads { 1.0 } else { 0.0 });
            if leads {
                tracing::info!(message = "webhook dispatcher leads: this process delivers");
            } else {
                tracing::info!(
                    message = "webhook dispatcher on standby: another process delivers, or the store cannot be reached",
                    retry_ms = u64::try_from(intervals.standby.as_millis()).unwrap_or(u64::MAX)
                );
                lanes.halt().await;
            }
            leading = Some(leads);
        }
        if !leads {
            tokio::select! {
                _ = tokio::time::sleep(intervals.standby) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            continue;
        }
        lanes.reap();
        let c = ctx.clone();
        let looked = blocking(move || {
            let head = c.feed.head().map_err(|e| format!("event feed: {e}"))?;
            let subs = c.store.list().map_err(|e| e.to_string())?;
            Ok::<_, String>((head, subs))
        })
        .await;
        match looked {
            Ok((head, subs)) => {
                for sub in subs {
                    if sub.enabled && sub.cursor < head {
                        lanes.start(&ctx, sub.id);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(message = "webhook dispatcher cannot look for work", %error)
            }
        }
        let now = now_ms();
        if now - last_prune > 3600 * 1000 {
            last_prune = now;
            let c = ctx.clone();
            match blocking(move || c.store.prune_deliveries(now - LOG_RETENTION_MS)).await {
                Ok(n) if n > 0 => tracing::info!(message = "pruned webhook delivery log", rows = n),
                Ok(_) => {}
                Err(error) => tracing::warn!(message = "cannot prune webhook delivery log", %error),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(intervals.poll) => {}
            _ = handle.wake.notified() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    lanes.halt().await;
    let c = ctx.clone();
    if let Err(error) = blocking(move || c.store.resign()).await {
        tracing::warn!(message = "webhook dispatcher cannot resign the leadership", %error);
    }
    metrics::gauge!(LEADER).set(0.0);
}

/// The running lanes, at most one per subscription, and the halt of their term.
struct Lanes {
    tasks: JoinSet<()>,
    /// The subscription of each task.
    of: HashMap<tokio::task::Id, String>,
    /// Subscriptions with a lane.
    busy: HashSet<String>,
    /// Raised to stop every lane of this term (shutdown or the leadership lost); replaced by
    /// a fresh one once they have ended.
    halt: watch::Sender<bool>,
}

impl Default for Lanes {
    fn default() -> Lanes {
        Lanes {
            tasks: JoinSet::new(),
            of: HashMap::new(),
            busy: HashSet::new(),
            halt: watch::channel(false).0,
        }
    }
}

impl Lanes {
    /// Starts a lane for `sub` unless it has one.
    fn start(&mut self, ctx: &Arc<Ctx>, sub: String) {
        if self.busy.contains(&sub) {
            return;
        }
        self.busy.insert(sub.clone());
        let h = self
            .tasks
            .spawn(lane(ctx.clone(), sub.clone(), self.halt.subscribe()));
        self.of.insert(h.id(), sub);
    }

    /// Forgets the lanes that have ended.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => {
                    tracing::error!(message = "webhook lane failed", error = %e);
                    e.id()
                }
            };
            if let Some(sub) = self.of.remove(&id) {
                self.busy.remove(&sub);
            }
        }
    }

    /// Stops every lane and waits for them to end.
    async fn halt(&mut self) {
        let _ = self.halt.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.of.clear();
        self.busy.clear();
        self.halt = watch::channel(false).0;
    }
}

/// Delivers one subscription's events until it has caught up.
async fn lane(ctx: Arc<Ctx>, sub_id: String, halt: watch::Receiver<bool>) {
    let mut rng = Jitter::from_entropy();
    loop {
        if *halt.borrow() {
            return;
        }
        let c = ctx.clone();
        let id = sub_id.clone();
        let page = blocking(move || {
            let Some(sub) = c.store.get(&id).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            if !sub.enabled {
                return Ok(None);
            }
            let events = c
                .feed
                .events_after(sub.cursor, c.page_size)
                .map_err(|e| format!("event feed: {e}"))?;
            Ok::<_, String>(Some((sub, events)))
        })
        .await;
        let (sub, events) = match page {
            Ok(Some((sub, events))) if !events.is_empty() => (sub, events),
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(message = "webhook lane cannot read", subscription = %sub_id, %error);
                return;
            }
        };
        let last = events.last().map_or(sub.cursor, |(seq, _)| *seq);
        for (seq, event) in &events {
            if sub.matches(event) && !deliver(&ctx, &halt, &sub, *seq, event, &mut rng).await {
                return;
            }
        }
        // Past the non-matching events at the end of the page.
        let c = ctx.clone();
        let id = sub_id.clone();
        if let Err(error) = blocking(move || c.store.advance(&id, last)).await {
            tracing::warn!(message = "webhook lane cannot move its cursor", subscription = %sub.id, %error);
            return;
        }
    }
}

/// Delivers one event, retrying per the policy. `true` when the event is done (delivered or
/// given up) and the lane goes on; `false` when the lane must stop (halted, the subscription
/// disabled or deleted, a storage error).
async fn deliver(
    ctx: &Arc<Ctx>,
    halt: &watch::Receiver<bool>,
    sub: &Subscription,
    seq: u64,
    event: &Event,
    rng: &mut Jitter,
) -> bool {
    let mut stop = halt.clone();
    let c = ctx.clone();
    let id = sub.id.clone();
    let pending = match blocking(move || c.store.pending(&id)).await {
        Ok(p) => p.filter(|p| p.event_seq == seq),
        Err(error) => {
            tracing::warn!(message = "webhook lane cannot read its retry state", subscription = %sub.id, %error);
            return false;
        }
    };
    let (mut attempt, mut next_at) =
        pending.map_or((0, None), |p| (p.attempts, Some(p.next_attempt_at)));
    let body = event_body(event);
    loop {
        if let Some(at) = next_at {
            let wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return false,
            }
        }
        // The subscription may have been changed, disabled or deleted meanwhile.
        let c = ctx.clone();
        let id = sub.id.clone();
        let current = match blocking(move || c.store.get(&id)).await {
            Ok(Some(s)) if s.enabled => s,
            Ok(_) => return false,
            Err(error) => {
                tracing::warn!(message = "webhook lane cannot read its subscription", subscription = %sub.id, %error);
                return false;
            }
        };
        attempt += 1;
        let at = now_ms();
        let result = {
            let _slot = tokio::select! {
                slot = ctx.slots.acquire() => slot.expect("the semaphore is never closed"),
                _ = stop.wait_for(|s| *s) => return false,
            };
            tokio::select! {
                r = ctx.sender.post(&current.url, &current.secret, &event.id, body.clone(), unix_secs()) => r,
                _ = stop.wait_for(|s| *s) => return false,
            }
        };
        let gone = result.status == Some(410);
        let outcome = if result.delivered() {
            Outcome::Delivered
        } else if gone || !ctx.policy.retries_after(attempt) {
            Outcome::GaveUp
        } else {
            Outcome::Failed
        };
        next_at = (outcome == Outcome::Failed).then(|| {
            now_ms() + i64::try_from(ctx.policy.delay(attempt, rng).as_millis()).unwrap_or(i64::MAX)
        });
        metrics::counter!(DELIVERIES_TOTAL, "outcome" => outcome.as_str()).increment(1);
        let record = Attempt {
            subscription_id: current.id.clone(),
            event_id: event.id.clone(),
            event_seq: seq,
            attempt,
            status_code: result.status,
            error: result.error.clone(),
            duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
            at,
            outcome,
            next_attempt_at: next_at,
            disable: gone.then(|| "the receiver answered 410 Gone".to_owned()),
        };
        let c = ctx.clone();
        let rules = ctx.rules;
        match blocking(move || c.store.record_attempt(&record, rules)).await {
            Ok(AfterAttempt::Active) => {}
            Ok(AfterAttempt::Gone | AfterAttempt::Inactive) => return false,
            Ok(AfterAttempt::Disabled(reason)) => {
                metrics::counter!(DISABLED_TOTAL).increment(1);
                tracing::warn!(message = "webhook subscription disabled", subscription = %current.id, url = %current.url, %reason);
                return false;
            }
            Err(error) => {
                tracing::warn!(message = "webhook lane cannot record an attempt", subscription = %current.id, %error);
                return false;
            }
        }
        match outcome {
            Outcome::Delivered => return true,
            Outcome::GaveUp => {
                tracing::warn!(message = "webhook event given up", subscription = %current.id, event = %event.id, attempts = attempt, error = result.error.as_deref().unwrap_or(""));
                return true;
            }
            Outcome::Failed => {
                tracing::debug!(message = "webhook attempt failed", subscription = %current.id, event = %event.id, attempt, error = result.error.as_deref().unwrap_or(""));
            }
        }
    }
}

/// Runs `f` on the blocking pool; a panic there is re-raised here.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
