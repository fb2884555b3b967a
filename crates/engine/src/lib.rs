//! # kickstand-engine
//!
//! The tracking engine: fixes in, durable history and latest state out.
//!
//! # Layout
//!
//! - [`transport`]: the port between ingest and the workers ([`transport::Transport`]) and its
//!   embedded default, bounded in-process channels sharded by vehicle.
//! - [`worker`]: one thread per shard; group commit to history, then the latest state.
//! - [`state`]: the latest-state port ([`state::StateStore`]) and its in-memory default with a
//!   spatial grid.
//! - [`history`]: the history port ([`history::HistoryStore`]) and the embedded store: a
//!   write-ahead log in front of the fjall LSM engine, time-bucketed columnar chunks.
//! - [`rabbitmq`]: the scale-out transport: ingest publishes to durable shard queues with
//!   publisher confirms, workers consume them (single active consumer per shard).
//! - [`fleet`]: the fleet store port ([`fleet::FleetStore`]: geofences and events) and its
//!   embedded SQLite default; the compiled zone index the workers test fixes against.
//! - [`watcher`]: a worker's quality filters and event state machines, one per vehicle.
//! - [`engine`]: wiring, start-up (restore) and shutdown (drain and flush).
//! - [`metrics`]: metric names.
//!
//! **Architecture Invariant:** nothing here speaks HTTP or reads configuration files; the
//! engine is driven through [`engine::Engine`] and its ports.

pub mod engine;
pub mod fleet;
pub mod history;
pub mod metrics;
pub mod rabbitmq;
pub mod state;
#[doc(hidden)]
pub mod testing;
pub mod transport;
pub mod watcher;
pub mod worker;

pub use engine::{Engine, EngineConfig, EngineError};

/// The maps on the hot path (per-vehicle lookups for every fix) use foldhash, several times
/// faster than SipHash on short ids and still seeded per process.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
