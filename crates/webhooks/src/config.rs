//! The `[webhooks]` settings. Every field's `///` comment is its user documentation.

use crate::retry::RetryPolicy;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Settings of webhook delivery (`[webhooks]`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Milliseconds a receiver has to answer one delivery (connecting, sending, and the response
    /// headers) before the attempt counts as failed.
    pub timeout_ms: u64,
    /// Attempts per event, the first one included, before the event is given up (logged as
    /// `gave_up`) and the subscription moves on to its next event.
    pub max_attempts: u32,
    /// The largest wait before the second attempt, in milliseconds. Each later wait's cap is
    /// `backoff_factor` times the one before, up to `max_delay_ms`; the wait itself is random
    /// between 0 and the cap ("full jitter").
    pub base_delay_ms: u64,
    /// How much the cap of the wait grows per failed attempt.
    pub backoff_factor: f64,
    /// The largest wait between two attempts, in milliseconds.
    pub max_delay_ms: u64,
    /// A subscription is disabled after this many events in a row were given up. 0: never for
    /// this reason.
    pub disable_after_failures: u32,
    /// A subscription is disabled when its receiver has failed every attempt for this many
    /// seconds (since the last delivered event). 0: never for this reason.
    pub disable_after_secs: u64,
    /// Deliveries in flight at once, across all subscriptions. Subscriptions waiting for a
    /// retry do not hold one.
    pub max_in_flight: usize,
    /// Milliseconds between two looks at the event feed for new events (the engine can also
    /// wake the dispatcher at once).
    pub poll_interval_ms: u64,
    /// Events read from the feed at once per subscription; bounds the dispatcher's memory.
    pub page_size: usize,
    /// Milliseconds between two tries for the leadership while another process dispatches
    /// (several processes sharing a PostgreSQL webhook store: one delivers, the others stand
    /// by). Also how long after the leader stops a standby may take to start delivering.
    pub leader_retry_ms: u64,
    /// Whether receivers may be on loopback, private, link-local or other non-public addresses.
    /// On by default: a self-hosted fleet often posts to its own internal services. Turn it off
    /// when people who should not reach the internal network can create subscriptions: every
    /// address a receiver's name resolves to is then checked at each delivery.
    pub allow_private_targets: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            timeout_ms: 10_000,
            max_attempts: 8,
            base_delay_ms: 1_000,
            backoff_factor: 2.0,
            max_delay_ms: 3_600_000,
            disable_after_failures: 5,
            disable_after_secs: 24 * 3600,
            max_in_flight: 16,
            poll_interval_ms: 200,
            page_size: 256,
            leader_retry_ms: 2_000,
            allow_private_targets: true,
        }
    }
}

/// A setting out of range.
#[derive(Debug, thiserror::Error)]
#[error("webhooks.{field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: &'static str,
}

impl WebhookConfig {
    /// The retry schedule these settings describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(self.base_delay_ms),
            factor: self.backoff_factor,
            max_delay: Duration::from_millis(self.max_delay_ms),
            max_attempts: self.max_attempts,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks the ranges; call at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason| Err(ConfigError { field, reason });
        if self.timeout_ms == 0 {
            return bad("timeout_ms", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if !(self.backoff_factor >= 1.0 && self.backoff_factor.is_finite()) {
            return bad("backoff_factor", "must be a number of at least 1");
        }
        if self.max_delay_ms < self.base_delay_ms {
            return bad("max_delay_ms", "must be at least base_delay_ms");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "must be at least 1");
        }
        if self.poll_interval_ms == 0 {
            return bad("poll_interval_ms", "must be at least 1");
        }
        if self.page_size == 0 {
            return bad("page_size", "must be at least 1");
        }
        if self.leader_retry_ms == 0 {
            return bad("leader_retry_ms", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_an_empty_section_gives_them() {
        let c: WebhookConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, WebhookConfig::default());
        c.validate().unwrap();
        assert_eq!(c.retry_policy(), RetryPolicy::default());
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_refused() {
        assert!(serde_json::from_str::<WebhookConfig>(r#"{"timeout":1}"#).is_err());
        let c = WebhookConfig {
            max_in_flight: 0,
            ..WebhookConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "max_in_flight");
    }
}
