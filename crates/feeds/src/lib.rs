//! # kickstand-feeds
//!
//! The standard feeds cities and rider apps consume, built from fleet data as plain values:
//! GBFS 3.0 ([`gbfs`]) and the MDS 2.0 Provider API ([`mds`]). No I/O: the HTTP crate gathers
//! the inputs and serves the output.

pub mod gbfs;
pub mod mds;
