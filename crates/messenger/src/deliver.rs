//! The delivery loop of one messenger process.
//!
//! One task, the claimer, takes due messages from the store channel by channel: for each
//! channel, as many as that channel has free slots in this process (`concurrency`), claimed
//! until `now + lease_ms`. Each claimed message is sent by a task of its own that holds one of
//! its channel's slots, so a slow channel fills only its own slots and never holds up another.
//!
//! A send first takes a rate-limit slot ([`crate::limit`]); a message whose turn is more than
//! [`MAX_RATE_SLEEP`] away goes back to the queue for then. After the send, the attempt and the
//! message's new state are recorded in one transaction: `sent`, `queued` again with the next
//! retry time (`RetryPolicy`, per channel), or `dead` (a permanent failure, or the last
//! attempt).
//!
//! The claimer wakes when a message is queued by this process, when a send ends, when a retry
//! this process scheduled comes due, and at least every `poll_interval_ms` (for work queued by
//! other processes).

use crate::channel::{Channel, Outgoing, Verdict};
use crate::limit::{Limiter, Slot};
use crate::store::{self, AttemptRow, MessageRow, Outcome};
use kickstand_service::{Db, now_ms};
use kickstand_webhooks::retry::Jitter;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

/// The longest a send waits for its rate-limit slot while holding its claim.
pub const MAX_RATE_SLEEP: Duration = Duration::from_secs(1);

/// A channel with its slots in this process.
pub struct Lane {
    pub channel: Channel,
    /// `channel.concurrency` permits; a send holds one.
    pub slots: Arc<Semaphore>,
}

/// What the claimer and the sends share.
pub struct Deliverer {
    pub db: Db,
    /// By name.
    pub lanes: BTreeMap<String, Arc<Lane>>,
    pub limiter: Limiter,
    /// This process's claim owner id.
    pub owner: String,
    pub lease_ms: u64,
    pub poll_interval: Duration,
    pub idempotency_ttl_ms: i64,
    /// Wakes the claimer.
    pub wake: Arc<Notify>,
    pub jitter: Mutex<Jitter>,
}

impl Deliverer {
    /// The claimer, until `stop` turns true. Sends in flight are not waited for here (see
    /// `Messenger::shutdown`).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_purge = 0;
        while !*stop.borrow() {
            let now = now_ms();
            for lane in self.lanes.values() {
                let free = lane.slots.available_permits();
                if free == 0 {
                    continue;
                }
                let until = now + self.lease_ms as i64;
                match store::claim(&self.db, &lane.channel.name, &self.owner, now, until, free)
                    .await
                {
                    Ok(claimed) => {
                        for msg in claimed {
                            let Ok(permit) = lane.slots.clone().try_acquire_owned() else {
                                // Cannot happen (only this task takes permits); the claim
                                // expires and the message is taken again.
                                break;
                            };
                            tokio::spawn(self.clone().send(lane.clone(), msg, permit));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(
                            message = "messenger: claiming due messages failed",
                            channel = %lane.channel.name,
                            %error
                        );
                    }
                }
            }
            if now - last_purge > 3_600_000 {
                last_purge = now;
                if let Err(error) = store::purge_keys(&self.db, now - self.idempotency_ttl_ms).await
                {
                    tracing::warn!(message = "messenger: purging idempotency keys failed", %error);
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Wakes the claimer at `at` (ms since the epoch).
    pub fn wake_at(&self, at: i64) {
        let wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
        let wake = self.wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            wake.notify_one();
        });
    }

    async fn send(self: Arc<Self>, lane: Arc<Lane>, msg: MessageRow, permit: OwnedSemaphorePermit) {
        let ch = &lane.channel;
        if let Some(rate) = ch.rate_per_sec {
            match self
                .limiter
                .acquire(&ch.name, rate, ch.burst, MAX_RATE_SLEEP)
                .await
            {
                Ok(Slot::After(wait)) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                Ok(Slot::Later(wait)) => {
                    let due = now_ms() + wait.as_millis() as i64;
                    self.put_back(&msg, due).await;
                    drop(permit);
                    self.wake_at(due);
                    return;
                }
                Err(error) => {
                    tracing::warn!(message = "messenger: rate limit unavailable; message delayed", channel = %ch.name, %error);
                    let due = now_ms() + 1_000;
                    self.put_back(&msg, due).await;
                    drop(permit);
                    self.wake_at(due);
                    return;
                }
            }
        }
        let vars: serde_json::Value =
            serde_json::from_str(&msg.vars).unwrap_or(serde_json::Value::Null);
        let started_at = now_ms();
        let clock = std::time::Instant::now();
        let answer = ch
            .send(&Outgoing {
                id: &msg.id,
                channel: &msg.channel,
                to: msg.to.as_deref(),
                subject: &msg.subject,
                body: &msg.body,
                html: msg.html.as_deref(),
                vars: &vars,
                created_at: msg.created_at,
            })
            .await;
        let duration_ms = clock.elapsed().as_millis() as i64;
        let attempt = msg.attempts + 1;
        let round = msg.round_attempts + 1;
        let policy = ch.retry.policy();
        let (status, next) = match answer.verdict {
            Verdict::Sent => ("sent", None),
            Verdict::Permanent => ("dead", None),
            Verdict::Retry if policy.retries_after(round as u32) => {
                let wait = if ch.retry.jitter {
                    policy.delay(round as u32, &mut self.jitter.lock())
                } else {
                    policy.cap(round as u32)
                };
                ("queued", Some(now_ms() + wait.as_millis() as i64))
            }
            Verdict::Retry => ("dead", None),
        };
        let outcome = match (answer.verdict, status) {
            (Verdict::Sent, _) => "sent",
            (_, "queued") => "retry",
            _ => "failed",
        };
        let last_error = answer.error.clone();
        let recorded = store::record(
            &self.db,
            &Outcome {
                id: &msg.id,
                owner: &self.owner,
                attempt: AttemptRow {
                    attempt,
                    started_at,
                    duration_ms,
                    outcome: outcome.into(),
                    code: answer.code.map(i64::from),
                    answer: answer.answer,
                    error: answer.error,
                    next_attempt_at: next,
                },
                status,
                round_attempts: round,
                due_at: next.unwrap_or(msg.due_at),
                last_error: last_error.as_deref(),
            },
        )
        .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                message = "messenger: the claim expired before the attempt was recorded; another process owns the message",
                id = %msg.id
            ),
            Err(error) => tracing::error!(
                message = "messenger: recording an attempt failed; the message will be sent again when its claim expires",
                id = %msg.id,
                %error
            ),
        }
        match status {
            "sent" => {
                tracing::debug!(message = "messenger: sent", id = %msg.id, channel = %ch.name, attempt)
            }
            "queued" => tracing::info!(
                message = "messenger: attempt failed, will retry",
                id = %msg.id,
                channel = %ch.name,
                attempt,
                code = ?answer.code,
                error = last_error.as_deref().unwrap_or("")
            ),
            _ => tracing::warn!(
                message = "messenger: message dead-lettered",
                id = %msg.id,
                channel = %ch.name,
                attempt,
                code = ?answer.code,
                error = last_error.as_deref().unwrap_or("")
            ),
        }
        drop(permit);
        if let Some(at) = next {
            self.wake_at(at);
        }
        self.wake.notify_one();
    }

    async fn put_back(&self, msg: &MessageRow, due: i64) {
        if let Err(error) = store::release(&self.db, &msg.id, &self.owner, due).await {
            tracing::warn!(message = "messenger: putting a message back failed; it is taken again when its claim expires", id = %msg.id, %error);
        }
    }
}
