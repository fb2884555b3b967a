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
/// Duration of one `fdatasync` of the event journal (one covers the records of every worker
/// written before it).
pub const EVENT_JOURNAL_SYNC_SECONDS: &str = "kickstand_event_journal_sync_seconds";
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

/// MQTT messages handled, by `result`: `stored` (every fix durable, then acked to the broker)
/// or `dead_letter` (malformed, recorded with the reason, then acked).
pub const MQTT_MESSAGES_TOTAL: &str = "kickstand_mqtt_messages_total";
/// Items recorded in the dead-letter log, by `source`.
pub const DEAD_LETTERS_TOTAL: &str = "kickstand_dead_letters_total";

/// Fixes that failed a quality filter, by `reason` (kept in history with the flag, never
/// the latest state or an event).
pub const FIXES_FLAGGED_TOTAL: &str = "kickstand_quality_flagged_fixes_total";
/// Fleet events stored, by `kind`.
pub const EVENTS_TOTAL: &str = "kickstand_events_total";
/// Geofences loaded in the zone index.
pub const GEOFENCES: &str = "kickstand_geofences";

/// Describes every metric and sets the counters to zero, so `/metrics` shows each series (with
/// its help text) from the start rather than after its first event.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        MQTT_MESSAGES_TOTAL,
        Unit::Count,
        "MQTT messages handled, by result (stored, dead_letter)."
    );
    describe_counter!(
        FIXES_FLAGGED_TOTAL,
        Unit::Count,
        "Fixes that failed a quality filter, by reason; kept in history with the flag."
    );
    describe_counter!(EVENTS_TOTAL, Unit::Count, "Fleet events stored, by kind.");
    describe_gauge!(GEOFENCES, Unit::Count, "Geofences in the zone index.");
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        Unit::Count,
        "Malformed inputs recorded in the dead-letter log, by source."
    );
    describe_counter!(
        INGEST_ACCEPTED_TOTAL,
        Unit::Count,
        "Fixes accepted (new and durable)."
    );
    describe_counter!(
        INGEST_DUPLICATES_TOTAL,
        Unit::Count,
        "Fixes that were already stored."
    );
    describe_counter!(
        INGEST_REJECTED_TOTAL,
        Unit::Count,
        "Items refused by validation."
    );
    describe_counter!(
        INGEST_BACKPRESSURE_TOTAL,
        Unit::Count,
        "Submissions refused with 503 because the pipeline was full."
    );
    describe_gauge!(
        QUEUE_DEPTH_FIXES,
        Unit::Count,
        "Fixes queued between ingest and the workers."
    );
    describe_histogram!(
        WORKER_LAG_SECONDS,
        Unit::Seconds,
        "Time a batch waited in a worker queue."
    );
    describe_histogram!(GROUP_FIXES, Unit::Count, "Fixes per group commit.");
    describe_histogram!(
        EVENT_JOURNAL_SYNC_SECONDS,
        Unit::Seconds,
        "Duration of one fdatasync of the event journal (covering every record written before it)."
    );
    describe_histogram!(
        WAL_SYNC_SECONDS,
        Unit::Seconds,
        "Duration of one WAL write and fdatasync."
    );
    describe_histogram!(
        CHECKPOINT_SECONDS,
        Unit::Seconds,
        "Duration of one checkpoint into the history engine."
    );
    describe_histogram!(
        CHECKPOINT_STALL_SECONDS,
        Unit::Seconds,
        "Time a writer waited for an earlier checkpoint."
    );
    describe_gauge!(
        STORE_BUCKETS,
        Unit::Count,
        "Buckets in the history time index (approximate)."
    );
    describe_gauge!(
        STORE_DISK_BYTES,
        Unit::Bytes,
        "Bytes the history store occupies on disk."
    );
    describe_gauge!(
        STATE_VEHICLES,
        Unit::Count,
        "Vehicles in the latest-state store."
    );
    for name in [
        INGEST_ACCEPTED_TOTAL,
        INGEST_DUPLICATES_TOTAL,
        INGEST_REJECTED_TOTAL,
        INGEST_BACKPRESSURE_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
}
