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
//! - [`event`]: fleet events ([`event::Event`]) with deterministic ids.
//! - [`geo`]: distances, bounding boxes, the spatial grid cell, line simplification.
//! - [`zone`]: geofence areas (GeoJSON Polygon / MultiPolygon, validated) and the zone index
//!   that finds the zones containing a point.
//! - [`osmand`]: the OsmAnd / Traccar Client protocol mapped onto fixes.
//! - [`timefmt`]: timestamps in and out (RFC 3339 or epoch milliseconds in, RFC 3339 out).
//! - [`watch`]: the quality filters and the event state machine of one vehicle.
//! - [`wire`]: the binary message of a batch of fixes between processes (scale-out transport),
//!   validated again on decoding.
//!
//! **Architecture Invariant:** nothing here touches the network, the disk or the clock; the
//! current time is always a parameter. Everything is deterministic and unit-testable.

pub mod bucket;
pub mod codec;
pub mod event;
pub mod fix;
pub mod geo;
pub mod input;
pub mod osmand;
pub mod timefmt;
pub mod watch;
pub mod wire;
pub mod zone;

pub use bucket::BucketSpan;
pub use fix::{Fix, FixError, Fnv1a64, Point, Quality, VehicleId, VehicleState, fnv1a64};
