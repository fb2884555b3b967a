//! Metric names, in one place (`kickstand_<area>_<what>_<unit>`). Values are recorded through
//! the `metrics` facade; the binary installs the Prometheus recorder that `/metrics` renders.

/// Fixes accepted (new and durable).
pub const INGEST_ACCEPTED_TOTAL: &str = "kickstand_ingest_accepted_fixes_total";
/// Fixes that were already stored (client retries, redeliveries).
pub const INGEST_DUPLICATES_TOTAL: &str = "kickstand_ingest_duplicate_fixes_total";
/// Items refused by validation.
pub const INGEST_REJECTED_TOTAL: &str = "kickstand_ingest_rejected_fixes_total";
/// Requests refused with 503 because the pipeline was full.
pub const INGEST_BACKPRESSURE_TOTAL: &str = "kickstand_ingest_backpressure_total";
/// Fixes queued between ingest and the workers.
pub const QUEUE_DEPTH_FIXES: &str = "kickstand_pipeline_queue_depth_fixes";
/// Time a batch waited in a worker's queue before its group was written (worker lag).
pub const WORKER_LAG_SECONDS: &str = "kickstand_pipeline_worker_lag_seconds";
/// Fixes per group commit.
pub const GROUP_FIXES: &str = "kickstand_pipeline_group_fixes";
/// Duration of one WAL write + fdatasync (store write latency).
pub const WAL_SYNC_SECONDS: &str = "kickstand_store_wal_sync_seconds";
/// Duration of one checkpoint into the history engine.
pub const CHECKPOINT_SECONDS: &str = "kickstand_store_checkpoint_seconds";
/// Time a writer waited for an earlier checkpoint (backpressure from the engine).
pub const CHECKPOINT_STALL_SECONDS: &str = "kickstand_store_checkpoint_stall_seconds";
/// Buckets in the history time index.
pub const STORE_BUCKETS: &str = "kickstand_store_buckets";
/// Bytes the history store occupies on disk.
pub const STORE_DISK_BYTES: &str = "kickstand_store_disk_bytes";
/// Vehicles in the latest-state store.
pub const STATE_VEHICLES: &str = "kickstand_state_vehicles";
/// HTTP requests by route and status.
pub const HTTP_REQUESTS_TOTAL: &str = "kickstand_http_requests_total";
