//! The transport port: how validated fixes travel from ingest to the workers that own their
//! vehicles, and how the answer travels back.
//!
//! [`InProcessTransport`] is the embedded default: one bounded channel per worker, vehicles
//! sharded by a stable hash of their id so one vehicle's fixes are handled in order by one
//! worker. Capacity is counted in fixes (a semaphore), not in messages; when it is exhausted,
//! `submit` fails at once with [`SubmitError::Full`] and ingest answers 503 with `Retry-After`:
//! the queue never grows without bound and a request never waits for room.

use kickstand_domain::Fix;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// What became of the fixes of one submission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmitOutcome {
    /// New fixes, now durable.
    pub accepted: usize,
    /// Fixes that were already stored.
    pub duplicates: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("the pipeline is full")]
    Full,
    #[error("the pipeline is shutting down")]
    ShuttingDown,
    /// Storage failed; the submission may be retried (appends are idempotent).
    #[error("storage failed: {0}")]
    Storage(String),
    /// The transport cannot take fixes now, for the reason given (the message broker is
    /// unreachable; this process does not ingest). Said to the client as it is.
    #[error("{0}")]
    Unavailable(String),
}

pub type SubmitFuture = Pin<Box<dyn Future<Output = Result<SubmitOutcome, SubmitError>> + Send>>;

/// The transport port.
pub trait Transport: Send + Sync + 'static {
    /// Hands `fixes` to their workers. Resolves once every fix is durable (or refused).
    fn submit(&self, fixes: Vec<Fix>) -> SubmitFuture;
    /// Fixes waiting for a worker.
    fn queue_depth(&self) -> usize;
    /// Most fixes that may wait.
    fn capacity(&self) -> usize;
    /// Stops accepting; workers drain what is queued and then stop.
    fn close(&self);
}

/// A piece of a submission for one worker.
pub struct ShardBatch {
    pub fixes: Vec<Fix>,
    pub reply: oneshot::Sender<Result<SubmitOutcome, SubmitError>>,
    pub enqueued: Instant,
    /// Capacity held until the batch is done.
    pub permit: OwnedSemaphorePermit,
}

/// The embedded transport.
pub struct InProcessTransport {
    senders: parking_lot::RwLock<Option<Vec<crossbeam_channel::Sender<ShardBatch>>>>,
    capacity: Arc<Semaphore>,
    capacity_fixes: usize,
}

/// Which of `shards` workers owns a vehicle.
pub fn shard_of(fix: &Fix, shards: usize) -> usize {
    (fix.vehicle_id.stable_hash() % shards as u64) as usize
}

impl InProcessTransport {
    /// A transport for `workers` workers holding at most `capacity_fixes` queued fixes. Returns
    /// the receivers, one per worker.
    pub fn new(
        workers: usize,
        capacity_fixes: usize,
    ) -> (
        InProcessTransport,
        Vec<crossbeam_channel::Receiver<ShardBatch>>,
    ) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| crossbeam_channel::bounded(4096))
            .unzip();
        (
            InProcessTransport {
                senders: parking_lot::RwLock::new(Some(senders)),
                capacity: Arc::new(Semaphore::new(capacity_fixes)),
                capacity_fixes,
            },
            receivers,
        )
    }
}

impl Transport for InProcessTransport {
    fn submit(&self, fixes: Vec<Fix>) -> SubmitFuture {
        let guard = self.senders.read();
        let Some(senders) = guard.as_ref() else {
            return Box::pin(async { Err(SubmitError::ShuttingDown) });
        };
        let n = senders.len();
        let mut parts: Vec<Vec<Fix>> = (0..n).map(|_| Vec::new()).collect();
        if n == 1 {
            parts[0] = fixes;
        } else {
            for fix in fixes {
                parts[shard_of(&fix, n)].push(fix);
            }
        }
        let mut replies = Vec::with_capacity(n);
        for (shard, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            let want = part.len().min(self.capacity_fixes) as u32;
            let Ok(permit) = self.capacity.clone().try_acquire_many_owned(want) else {
                metrics::counter!(crate::metrics::INGEST_BACKPRESSURE_TOTAL).increment(1);
                // Parts already queued are still written; the client's retry is then partly
                // duplicates, which the store recognises.
                return Box::pin(async { Err(SubmitError::Full) });
            };
            let (tx, rx) = oneshot::channel();
            let batch = ShardBatch {
                fixes: part,
                reply: tx,
                enqueued: Instant::now(),
                permit,
            };
            if senders[shard].try_send(batch).is_err() {
                metrics::counter!(crate::metrics::INGEST_BACKPRESSURE_TOTAL).increment(1);
                return Box::pin(async { Err(SubmitError::Full) });
            }
            replies.push(rx);
        }
        Box::pin(async move {
            let mut total = SubmitOutcome::default();
            for rx in replies {
                let outcome = rx.await.map_err(|_| SubmitError::ShuttingDown)??;
                total.accepted += outcome.accepted;
                total.duplicates += outcome.duplicates;
            }
            Ok(total)
        })
    }

    fn queue_depth(&self) -> usize {
        self.capacity_fixes - self.capacity.available_permits()
    }

    fn capacity(&self) -> usize {
        self.capacity_fixes
    }

    fn close(&self) {
        self.senders.write().take();
    }
}
