//! The gateway's metric names. The binary installs the Prometheus recorder; this crate only
//! records.

/// Requests answered, by `rule` (its priority, `default`, or `none` when nothing matched) and
/// `status` (the code sent to the client, gateway errors included).
pub const REQUESTS: &str = "kickstand_gateway_requests_total";

/// Seconds from a request's arrival to its response headers, by `rule`.
pub const REQUEST_SECONDS: &str = "kickstand_gateway_request_duration_seconds";

/// 1 when a target is in service, 0 when its health checks took it out; by `group` and
/// `target`.
pub const TARGET_HEALTHY: &str = "kickstand_gateway_target_healthy";

/// Health checks made, by `group`, `target` and `result` (`ok` or `failed`).
pub const HEALTH_CHECKS: &str = "kickstand_gateway_health_checks_total";
