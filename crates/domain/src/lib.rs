//! # kickstand-domain
//!
//! The vocabulary of Kickstand and the rules that hold for it, with no I/O.
//!
//! # Layout
//!
//! - [`fix`]: a vehicle's position report ([`Fix`], [`Point`]) at *stored precision*, and the
//!   rules a fix must satisfy ([`FixError`]).
//! - [`input`]: turning request bodies (one JSON object, a JSON array, NDJSON) into fixes, with
//!   a per-item error naming the field for every item that is refused.
//! - [`bucket`]: how fixes are grouped into UTC time buckets.
//! - [`codec`]: the compact columnar encoding of a bucket's points.
//! - [`geo`]: distances, bounding boxes, the spatial grid cell, line simplification.
//! - [`timefmt`]: timestamps in and out (RFC 3339 or epoch milliseconds in, RFC 3339 out).
//! - [`wire`]: the binary message of a batch of fixes between processes (scale-out transport),
//!   validated again on decoding.
//!
//! **Architecture Invariant:** nothing here touches the network, the disk or the clock; the
//! current time is always a parameter. Everything is deterministic and unit-testable.

pub mod bucket;
pub mod codec;
pub mod fix;
pub mod geo;
pub mod input;
pub mod timefmt;
pub mod wire;

pub use bucket::BucketSpan;
pub use fix::{Fix, FixError, Point, VehicleId, VehicleState};
