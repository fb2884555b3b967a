//! The `[scheduler]` section of kickstand.toml.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the scheduler and rules (`[scheduler]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// The base URL of the ops API that actions are sent to (`/api/v1/scripts/…`,
    /// `/api/v1/messages`, `/api/v1/tasks/…` are appended). In `kickstand run` the binary
    /// passes the process's own address.
    pub api_url: String,
    /// The name of an environment variable holding the API key that actions send as
    /// `Authorization: Bearer`.
    pub api_key_env: Option<String>,
    /// A file holding that API key (its first line). Used when `api_key_env` is not set.
    pub api_key_file: Option<PathBuf>,
    /// The key itself, set by the binary (an internal key in `kickstand run`); never read from
    /// the file or the environment of the config loader, never logged.
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Redis for the leader lease when several scheduler processes share the ops database
    /// (`redis://host:6379/0`). Absent: this process is always the leader (`kickstand run`).
    pub redis_url: Option<String>,
    /// The prefix of the Redis keys (the lease is `<prefix>:scheduler:leader`).
    pub redis_prefix: String,
    /// How long the leader lease lasts without renewal, and how long a run's claim lasts
    /// without a heartbeat: a dead scheduler's lease and runs are taken over after this.
    #[serde(with = "humantime_serde_compat")]
    pub lease_ttl: Duration,
    /// How often the leader renews its lease (and followers try to take it); well under
    /// `lease_ttl`.
    #[serde(with = "humantime_serde_compat")]
    pub lease_renew: Duration,
    /// How often the leader looks for due jobs: the scheduler's resolution.
    #[serde(with = "humantime_serde_compat")]
    pub tick_resolution: Duration,
    /// A tick started later than this after its time counts as missed (the job's missed-run
    /// policy decides whether it runs).
    #[serde(with = "humantime_serde_compat")]
    pub missed_grace: Duration,
    /// How often the leader reads new fleet events for the rules.
    #[serde(with = "humantime_serde_compat")]
    pub rules_poll: Duration,
    /// How often a script run's status is polled while it runs.
    #[serde(with = "humantime_serde_compat")]
    pub script_poll: Duration,
    /// How long one action request may take before it is retried (with the same
    /// idempotency key).
    #[serde(with = "humantime_serde_compat")]
    pub action_timeout: Duration,
    /// Attempts per action request (transport errors and 5xx answers are retried).
    pub action_attempts: u32,
    /// This process's name in run records; default: the host name and process id.
    pub instance: Option<String>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            api_url: "http://127.0.0.1:8080".into(),
            api_key_env: None,
            api_key_file: None,
            api_key: None,
            redis_url: None,
            redis_prefix: "kickstand".into(),
            lease_ttl: Duration::from_secs(10),
            lease_renew: Duration::from_secs(2),
            tick_resolution: Duration::from_millis(100),
            missed_grace: Duration::from_secs(5),
            rules_poll: Duration::from_millis(500),
            script_poll: Duration::from_secs(1),
            action_timeout: Duration::from_secs(30),
            action_attempts: 3,
            instance: None,
        }
    }
}

impl SchedulerConfig {
    /// The API key for actions: `api_key`, else the variable `api_key_env` names, else the
    /// first line of `api_key_file`; `None` when none is configured.
    pub fn resolve_api_key(&self) -> Result<Option<String>, crate::SchedulerError> {
        if let Some(k) = &self.api_key {
            return Ok(Some(k.clone()));
        }
        if let Some(var) = &self.api_key_env {
            return match std::env::var(var) {
                Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_owned())),
                _ => Err(crate::SchedulerError::Config(format!(
                    "scheduler.api_key_env names {var}, which is not set"
                ))),
            };
        }
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                crate::SchedulerError::Config(format!(
                    "scheduler.api_key_file {}: {e}",
                    path.display()
                ))
            })?;
            let key = text.lines().next().unwrap_or("").trim().to_owned();
            if key.is_empty() {
                return Err(crate::SchedulerError::Config(format!(
                    "scheduler.api_key_file {} is empty",
                    path.display()
                )));
            }
            return Ok(Some(key));
        }
        Ok(None)
    }

    /// Checks the settings that cannot be checked by their types.
    pub fn validate(&self) -> Result<(), crate::SchedulerError> {
        let bad = |m: &str| Err(crate::SchedulerError::Config(m.to_owned()));
        let url = reqwest::Url::parse(&self.api_url);
        if !matches!(url.as_ref().map(|u| u.scheme()), Ok("http" | "https")) {
            return bad("scheduler.api_url must be an http:// or https:// URL");
        }
        if self.lease_renew.is_zero() || self.lease_renew * 2 > self.lease_ttl {
            return bad("scheduler.lease_renew must be above zero and at most half of lease_ttl");
        }
        if self.tick_resolution < Duration::from_millis(10)
            || self.tick_resolution > Duration::from_secs(10)
        {
            return bad("scheduler.tick_resolution must be between 10ms and 10s");
        }
        if self.action_attempts == 0 {
            return bad("scheduler.action_attempts must be at least 1");
        }
        Ok(())
    }
}

/// Durations written as `"10s"`, `"250ms"`, `"1m 30s"` (humantime).
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_a_section_parses() {
        SchedulerConfig::default().validate().unwrap();
        let c: SchedulerConfig = serde_json::from_value(serde_json::json!({
            "api_url": "http://127.0.0.1:9000",
            "lease_ttl": "4s",
            "lease_renew": "1s",
            "redis_url": "redis://127.0.0.1:6379"
        }))
        .unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(4));
        c.validate().unwrap();
        assert!(serde_json::from_value::<SchedulerConfig>(serde_json::json!({"nope": 1})).is_err());
        let c = SchedulerConfig {
            lease_renew: Duration::from_secs(8),
            ..SchedulerConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
