//! Kickstand's gateway: an HTTP reverse proxy with listener rules in the manner of an AWS
//! Application Load Balancer, in front of the operations services in `kickstand serve`
//! (`--role gateway`). `kickstand run` needs none: there every service is mounted under its
//! path prefix in one process, so the same URLs work in both modes.
//!
//! # Layout
//!
//! - [`config`]: the `[gateway]` settings as written in kickstand.toml.
//! - [`pattern`]: ALB wildcard patterns (`*`, `?`), case-sensitive or not.
//! - `rules`: the settings checked and compiled into a routing table; the rule for a request.
//! - `target`: target groups, target health and the round-robin choice.
//! - `health`: one active health checker task per target group.
//! - `proxy`: one request: forward (streamed, with `X-Forwarded-*`), redirect or fixed
//!   response; target failures as 502/503/504 problem+json.
//! - `idle`: the idle timeout of a response body that is being streamed.
//! - `server`: [`Gateway`]: `start(config)`, `serve(listener, shutdown)`, `shutdown()`.
//! - [`metrics`]: the metric names.
//!
//! Architecture Invariant: the gateway holds no state but target health; it has no database
//! and never buffers a whole body.

pub mod config;
mod error;
mod health;
mod idle;
pub mod metrics;
pub mod pattern;
mod proxy;
mod rules;
mod server;
mod target;

pub use config::{
    ActionConfig, ConditionsConfig, FixedResponseConfig, ForwardConfig, GatewayConfig,
    HeaderConditionConfig, HealthCheckConfig, QueryConditionConfig, RedirectConfig, RuleConfig,
    TargetGroupConfig, WeightedGroupConfig,
};
pub use error::GatewayError;
pub use server::{Gateway, TargetHealth};
