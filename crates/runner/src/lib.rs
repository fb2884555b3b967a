//! Kickstand's script runner (`/api/v1/scripts`, role `runner`): only scripts registered in a
//! scripts directory with a manifest run; each run executes the file directly with an
//! argument vector (never through a shell), a cleared environment plus declared variables, a
//! fresh working directory and a process group of its own; its output is captured bounded,
//! secret values masked, and streamed to the API while it runs; every start, refusal, cancel
//! and end is in an audit log. See docs/runner.md and ADR 0019.
//!
//! # Layout
//!
//! - [`config`]: [`RunnerConfig`], the `[runner]` section.
//! - [`manifest`]: a script's manifest, checked whole, and the binding of a request's
//!   arguments to argv and environment.
//! - [`registry`]: the scripts of the directory, reloaded whole on change.
//! - [`process`]: one script process, its process group, timeout and cancel.
//! - [`output`]: the bounded, masked transcript of a run, followed while it runs.
//! - [`store`]: runs and the audit log in the ops database (component `runner`).
//! - [`runner`]: the [`Runner`] service: start, runs, limits, background tasks, shutdown.
//! - [`api`]: the HTTP handlers ([`Runner::router`]).
//!
//! **Architecture Invariant:** no code path hands a script's arguments to a shell, and no
//! secret argument value is written to the database, a log line or an API answer.

pub mod api;
pub mod config;
pub mod error;
pub mod manifest;
pub mod output;
pub mod process;
pub mod registry;
pub mod runner;
pub mod store;

pub use config::{EnvValue, RunnerConfig};
pub use error::{RunnerError, StartError};
pub use runner::{Runner, Started};
pub use store::{RunRecord, Status};
