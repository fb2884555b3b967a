//! The `[gateway]` settings, as written in kickstand.toml. Every field's `///` comment is its
//! user documentation. This module only describes the settings; [`crate::rules`] checks them
//! and compiles them into the routing table.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Settings of the gateway (`[gateway]`): where it listens, its listener rules in priority
/// order, the default action, and the target groups the rules forward to.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The address the gateway listens on for plain HTTP/1.1.
    pub listen: SocketAddr,
    /// Connections served at once. When the limit is reached the gateway stops accepting until
    /// one closes (the kernel's backlog holds the rest), so memory stays bounded.
    pub max_connections: usize,
    /// Milliseconds the gateway waits at shutdown for the requests in flight (a streaming
    /// response may never end) before it closes their connections.
    pub drain_timeout_ms: u64,
    /// Milliseconds a client has to send the headers of a request, counted from when the
    /// connection opens or, on a keep-alive connection, from when it waits for the next request.
    /// A slow or idle client is disconnected after it, so it cannot hold a connection slot.
    pub client_header_timeout_ms: u64,
    /// The listener rules. Each has a unique `priority`; the rule with the lowest number whose
    /// conditions all match handles the request.
    pub rules: Vec<RuleConfig>,
    /// What to do with a request that no rule matches (ALB's default rule, evaluated last).
    /// Without one such a request gets a 404 problem answer.
    pub default_action: Option<ActionConfig>,
    /// The target groups that `forward` actions name.
    pub target_groups: Vec<TargetGroupConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_connections: 10_000,
            drain_timeout_ms: 30_000,
            client_header_timeout_ms: 30_000,
            rules: Vec::new(),
            default_action: None,
            target_groups: Vec::new(),
        }
    }
}

/// One listener rule (`[[gateway.rules]]`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique among the rules; lower numbers are evaluated first.
    pub priority: u32,
    /// The conditions of the rule; all of them must match. At least one must be given (the
    /// rule that matches everything is `default_action`).
    pub conditions: ConditionsConfig,
    /// What to do with a request that matches.
    pub action: ActionConfig,
}

/// The conditions of a rule. Every condition that is given must match; within a condition the
/// values are alternatives (any one may match).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConditionsConfig {
    /// Path patterns, matched case-sensitively against the path of the URL (without the query
    /// string, as sent, not percent-decoded). `*` matches any run of characters, `?` exactly
    /// one. Example: `["/api/v1/messages", "/api/v1/messages/*"]`.
    pub path: Vec<String>,
    /// Host patterns, matched case-insensitively against the `Host` header without its port.
    /// Example: `["ops.example.com", "*.ops.example.com"]`.
    pub host: Vec<String>,
    /// Request methods, upper case, matched exactly. Example: `["GET", "HEAD"]`.
    pub method: Vec<String>,
    /// Header conditions; each must match.
    pub header: Vec<HeaderConditionConfig>,
    /// Query string conditions: key/value patterns, any one of which must match one parameter
    /// of the query string (percent-decoded, case-insensitive).
    pub query: Vec<QueryConditionConfig>,
    /// Source address blocks in CIDR notation, IPv4 or IPv6, matched against the address of
    /// the connection (not `X-Forwarded-For`). Example: `["10.0.0.0/8", "fd00::/8"]`.
    pub source_ip: Vec<String>,
}

/// A header condition: the header `name` has a value that matches one of `values`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderConditionConfig {
    /// The header's name (case-insensitive).
    pub name: String,
    /// Value patterns, case-insensitive, with `*` and `?`.
    pub values: Vec<String>,
}

/// One key/value pair of a query condition.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConditionConfig {
    /// The parameter's name pattern; without it any parameter whose value matches will do.
    #[serde(default)]
    pub key: Option<String>,
    /// The parameter's value pattern.
    pub value: String,
}

/// What a rule does with a request. Exactly one of the three kinds, written as a table named
/// after it: `[gateway.rules.action.forward]`, `…action.redirect]` or `…action.fixed_response]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ActionConfig {
    /// Send the request to a target of a target group.
    Forward(ForwardConfig),
    /// Answer with a redirect to a URL made from the request's own parts.
    Redirect(RedirectConfig),
    /// Answer with a fixed status and body.
    FixedResponse(FixedResponseConfig),
}

/// A forward action: one target group, or several with weights.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// The one target group that gets every request.
    pub target_group: Option<String>,
    /// Several target groups; each request goes to one of them, chosen at random in proportion
    /// to the weights. Give either this or `target_group`.
    pub target_groups: Vec<WeightedGroupConfig>,
}

/// A target group of a weighted forward action.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedGroupConfig {
    /// The target group's name.
    pub name: String,
    /// Its share of the requests, 0 to 999 (0: none). At least one weight must be above 0.
    pub weight: u32,
}

/// A redirect action. Each part defaults to the request's own (`#{protocol}`, `#{host}`,
/// `#{port}`, `#{path}`, `#{query}`), and each may use those placeholders; at least one part
/// must differ so the redirect cannot loop.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// `HTTP`, `HTTPS` or `#{protocol}`.
    pub protocol: String,
    /// The host name; may use the placeholders.
    pub host: String,
    /// The port, 1 to 65535, or `#{port}`. The default port of the protocol is left out of the
    /// URL.
    pub port: String,
    /// The path, starting with `/`; may use the placeholders.
    pub path: String,
    /// The query string without the leading `?`; may use the placeholders. Empty: none.
    pub query: String,
    /// 301 (permanent) or 302 (found).
    pub status_code: u16,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            protocol: "#{protocol}".into(),
            host: "#{host}".into(),
            port: "#{port}".into(),
            path: "/#{path}".into(),
            query: "#{query}".into(),
            status_code: 301,
        }
    }
}

/// A fixed-response action.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixedResponseConfig {
    /// The status code: 2XX, 4XX or 5XX.
    pub status_code: u16,
    /// The `Content-Type` of the body.
    pub content_type: String,
    /// The body, at most 1024 bytes (ALB's limit).
    pub body: String,
}

impl Default for FixedResponseConfig {
    fn default() -> Self {
        FixedResponseConfig {
            status_code: 200,
            content_type: "text/plain; charset=utf-8".into(),
            body: String::new(),
        }
    }
}

/// A target group (`[[gateway.target_groups]]`): the processes that serve one kind of request.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroupConfig {
    /// The name that forward actions use; unique.
    pub name: String,
    /// The targets as `host:port` (a name or an IP address; `http://` in front is allowed).
    /// An empty list is allowed: requests to the group get 503.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Milliseconds a target has to answer with its response headers before the client gets
    /// 504 (ALB's idle timeout, 60 s by default). Also the longest silence allowed inside a
    /// response body: a target that stops sending for longer has its response cut. A stream
    /// that keeps sending (server-sent events) lasts as long as it likes.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// The active health check of every target of the group.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
}

fn default_request_timeout_ms() -> u64 {
    60_000
}

/// Active health checks (ALB's defaults).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Whether the targets are checked at all. Off: every target is always healthy.
    pub enabled: bool,
    /// The path of the `GET` request sent to each target.
    pub path: String,
    /// Milliseconds between two checks of one target.
    pub interval_ms: u64,
    /// Milliseconds a target has to answer a check; no answer in time is a failure. Must be
    /// less than `interval_ms`.
    pub timeout_ms: u64,
    /// Consecutive successful checks that return an unhealthy target to service (1 to 10).
    pub healthy_threshold: u32,
    /// Consecutive failed checks that take a target out of service (1 to 10).
    pub unhealthy_threshold: u32,
    /// The status codes that count as healthy: a code, a range or a comma-separated list,
    /// like `"200"`, `"200-299"` or `"200,204,301-302"`.
    pub success_codes: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enabled: true,
            path: "/".into(),
            interval_ms: 30_000,
            timeout_ms: 5_000,
            healthy_threshold: 5,
            unhealthy_threshold: 2,
            success_codes: "200".into(),
        }
    }
}
