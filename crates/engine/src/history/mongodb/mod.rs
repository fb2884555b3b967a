//! The MongoDB history store (`[history] kind = "mongodb"`): a shared history in a MongoDB
//! database, written through the official `mongodb` driver (see docs/mongodb.md for the
//! documents, the indexes, the chunk cap and the crash reasoning).
//!
//! Two layouts, chosen by [`MongoConfig::layout`] and recorded in the database:
//!
//! - [`MongoLayout::Buckets`]: collection `chunks`, time-bucketed documents (one vehicle, one
//!   span) with `count`, `first_ts`, `last_ts` and `bbox`. Fixes are appended to a small open
//!   *chunk* of at most [`MongoConfig::chunk_max_points`] points with one `$push` upsert, so no
//!   append rewrites a large document; `maintain` merges the chunks of a closed bucket into one
//!   packed document (the codec of ADR 0003).
//! - [`MongoLayout::Timeseries`]: collection `fixes`, a native time-series collection with
//!   timeField `ts` and metaField `vehicle_id`, one measurement per fix.
//!
//! Both keep `vehicle_last` (each vehicle's newest fix as a GeoJSON point, 2dsphere-indexed)
//! for `for_each_latest` and [`MongoHistory::near`], and `meta` (span and layout).
//!
//! Code map:
//! - [`config`]: [`MongoConfig`] and [`MongoLayout`].
//! - `document`: every stored document and update, built and decoded by pure functions.
//! - `query`: the filters, sorts and pipelines of reads, retention and compaction (pure).
//! - `schema`: collection options, index models and the plans that reconcile them (pure).
//! - `store`: [`MongoHistory`], the reads, retention and compaction.
//! - `writer`: the shard writer and its duplicate check.
//!
//! **Architecture Invariant:** the stored fix documents are the only truth about what is
//! stored. `vehicle_last` is written after them and read only as a hint; a writer derives a
//! vehicle's newest stored `ts` from the fix documents themselves, so a process that died at any
//! point inside an append is replayed without loss and without duplicates.
//!
//! **Architecture Invariant:** nothing here calls `block_on` from inside an async task, and no
//! caller's callback runs inside the store's runtime.

pub mod config;
mod document;
mod query;
mod schema;
#[cfg(test)]
pub(crate) mod server_tests;
mod store;
mod writer;

pub use config::{MongoConfig, MongoLayout};
pub use store::MongoHistory;
