//! The history port: every accepted fix, kept for good in time buckets.
//!
//! A [`HistoryStore`] is shared by readers (queries, exports) and hands each worker its own
//! [`HistoryWriter`]. Writers are per shard so one vehicle is only ever written by one writer at
//! a time, which is what makes the per-vehicle duplicate check cheap.
//!
//! **Contract** (every backend; the conformance tests in `tests.rs` hold each one to it):
//! - `append` returns only when every fix it calls new is durable (survives `kill -9`).
//! - Idempotent by `(vehicle_id, ts)`: appending a fix that is already stored reports it as a
//!   duplicate and stores nothing.
//! - A late fix lands in the bucket of its own `ts`; reads return fixes in `ts` order.
//! - Retention removes whole buckets, never part of one.

mod config;
pub mod embedded;
pub mod mongodb;
pub mod postgres;
#[cfg(test)]
mod tests;

pub use config::{HistoryConfig, HistoryKind, open, open_embedded_offline};

use kickstand_domain::{Fix, Point, VehicleId};

/// Errors from a history backend. Details are for logs; callers answer 503 and the device
/// retries, which is safe because appends are idempotent.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("history engine failed: {0}")]
    Engine(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the history writer has failed earlier and refuses further writes until restart")]
    Poisoned,
    #[error("{0}")]
    Config(String),
}

/// One vehicle's fixes within one bucket, as returned by the fleet-wide scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketFixes {
    pub vehicle_id: VehicleId,
    pub bucket_start: i64,
    /// In `ts` order.
    pub points: Vec<Point>,
}

/// Sizes, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct HistoryStats {
    /// Bytes the store occupies on disk (history engine and write-ahead log).
    pub disk_bytes: u64,
    /// Buckets known to the time index.
    pub buckets: u64,
}

/// The shared, read side of a history backend and the factory of its writers.
pub trait HistoryStore: Send + Sync + 'static {
    /// A writer for shard `shard` of `shards`. The caller guarantees that all fixes of one
    /// vehicle go to the writer of one shard while it lives.
    fn writer(&self, shard: usize) -> Result<Box<dyn HistoryWriter>, HistoryError>;

    /// The fixes of `vehicle` with `from <= ts <= to`, in `ts` order.
    fn track(&self, vehicle: &VehicleId, from: i64, to: i64) -> Result<Vec<Point>, HistoryError>;

    /// Fleet-wide scan of the buckets that overlap `from..=to`, in order of bucket start, then
    /// vehicle id; each bucket's points are cut to `from..=to`. `visit` returns `false` to stop.
    fn scan(
        &self,
        from: i64,
        to: i64,
        visit: &mut dyn FnMut(BucketFixes) -> bool,
    ) -> Result<(), HistoryError>;

    /// The newest stored fix of every vehicle: what the latest-state store is rebuilt from.
    fn for_each_latest(&self, visit: &mut dyn FnMut(VehicleId, Point)) -> Result<(), HistoryError>;

    /// Drops every bucket that ends at or before `cutoff_ms`. Returns how many were dropped.
    fn drop_before(&self, cutoff_ms: i64) -> Result<u64, HistoryError>;

    /// Background upkeep (merging the chunks of closed buckets). `now_ms` decides which buckets
    /// are closed. Returns the number of buckets compacted.
    fn maintain(&self, now_ms: i64) -> Result<u64, HistoryError>;

    fn stats(&self) -> Result<HistoryStats, HistoryError>;

    /// False once the store has failed in a way that makes it refuse writes until restart.
    fn is_healthy(&self) -> bool {
        true
    }
}

/// The write side of one shard.
pub trait HistoryWriter: Send {
    /// Appends `fixes` durably. For each fix, in order, pushes to `is_new` whether it was stored
    /// (`true`) or was already there (`false`). A fix repeated within `fixes` counts once.
    fn append(&mut self, fixes: &[Fix], is_new: &mut Vec<bool>) -> Result<(), HistoryError>;

    /// Whether [`append_linked`](HistoryWriter::append_linked) keeps its promise: the record
    /// names the event journal record, and the store drops it at recovery unless that record
    /// is durable (ADR 0024). Writers that cannot make events wait for durability first.
    fn links_events(&self) -> bool {
        false
    }

    /// `append` for a group whose events are in event journal record `events_record`, which
    /// may become durable only after this returns. If it then does not, the caller must call
    /// [`refuse`](HistoryWriter::refuse) before anything else. Only called when
    /// [`links_events`](HistoryWriter::links_events).
    fn append_linked(
        &mut self,
        fixes: &[Fix],
        is_new: &mut Vec<bool>,
        events_record: u64,
    ) -> Result<(), HistoryError> {
        let _ = events_record;
        self.append(fixes, is_new)
    }

    /// The events of the last linked append did not become durable: refuse every write until
    /// the process restarts, so the record is dropped by recovery and never checkpointed.
    fn refuse(&mut self) {}

    /// Time passes: lets the writer checkpoint when it is due. Called when the worker is idle.
    fn tick(&mut self) -> Result<(), HistoryError>;

    /// Checkpoints everything and waits until it is in the history engine. Called at shutdown.
    fn close(self: Box<Self>) -> Result<(), HistoryError>;
}
