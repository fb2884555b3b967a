//! The `[messenger]` section of `kickstand.toml`: the channels, how many messages each process
//! sends at once, the default retry policy, the claim lease and the optional Redis server of the
//! shared rate limit. These structs only describe; [`crate::channel`] turns a channel's settings
//! into something that sends, reading its secrets then.

use kickstand_webhooks::retry::RetryPolicy;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[messenger]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MessengerConfig {
    /// The channels messages are sent through (`[[messenger.channels]]`). A message names one.
    pub channels: Vec<ChannelConfig>,
    /// How many messages of one channel a process sends at once, unless the channel says
    /// otherwise. A slow channel fills only its own slots, so it never holds up the others.
    pub concurrency: usize,
    /// How often (milliseconds) a process looks for due messages when nothing woke it earlier.
    /// New messages and retries scheduled by this process wake it at once; this bounds how
    /// late it notices work queued by another process.
    pub poll_interval_ms: u64,
    /// How long (milliseconds) a process's claim on a message lasts. A process that dies while
    /// sending leaves its claims behind; another process takes them over once they expire, so
    /// the message is sent again (delivery is at least once). Must exceed every channel's
    /// `timeout_ms`.
    pub lease_ms: u64,
    /// The retry policy of channels that do not set their own.
    pub retry: RetrySettings,
    /// A Redis server (`redis://…`) that holds the rate limits, so that they hold across every
    /// messenger process. Without it each process limits on its own (right for `kickstand run`,
    /// which is one process). Never logged (it may hold a password).
    pub redis_url: Option<String>,
    /// The prefix of the messenger's Redis keys.
    pub redis_prefix: String,
    /// How long (seconds) the first answer to an `Idempotency-Key` is kept and replayed.
    pub idempotency_ttl_secs: u64,
}

impl Default for MessengerConfig {
    fn default() -> Self {
        MessengerConfig {
            channels: Vec::new(),
            concurrency: 8,
            poll_interval_ms: 500,
            lease_ms: 60_000,
            retry: RetrySettings::default(),
            redis_url: None,
            redis_prefix: "kickstand:messenger".into(),
            idempotency_ttl_secs: 24 * 3600,
        }
    }
}

/// The kinds of channel.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// A JSON POST signed with HMAC-SHA256 (`Webhook-Signature`, as Kickstand's webhooks).
    Webhook,
    /// A Slack-compatible incoming webhook: `{"text": …}`.
    Slack,
    /// Email through an SMTP server.
    Smtp,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Smtp => "smtp",
        }
    }
}

/// How an SMTP channel protects its connection.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text: only for a server on the same machine or network (default port 25).
    None,
    /// Plain connection upgraded with STARTTLS, which is required (default port 587).
    #[default]
    Starttls,
    /// TLS from the first byte, "implicit TLS" (default port 465).
    Tls,
}

/// One `[[messenger.channels]]` entry. Which fields apply depends on `kind`; a field of another
/// kind is refused at start. Secrets are never written inline: each is read from an
/// environment variable (`…_env`) or a file (`…_file`, its content with trailing line breaks
/// removed), at start.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The name messages use: 1–64 of `A-Z a-z 0-9 _ - .`.
    pub name: String,
    /// `webhook`, `slack` or `smtp`.
    pub kind: ChannelKind,
    /// webhook, slack: the environment variable holding the URL to POST to (URLs of Slack
    /// webhooks are credentials).
    pub url_env: Option<String>,
    /// webhook, slack: a file holding the URL.
    pub url_file: Option<String>,
    /// webhook: the environment variable holding the signing secret.
    pub secret_env: Option<String>,
    /// webhook: a file holding the signing secret.
    pub secret_file: Option<String>,
    /// smtp: the server's host name (also the name its TLS certificate must carry).
    pub host: Option<String>,
    /// smtp: the server's port; by default 25, 587 or 465 by `tls`.
    pub port: Option<u16>,
    /// smtp: `none`, `starttls` (default) or `tls`.
    pub tls: Option<SmtpTls>,
    /// smtp: the user name to log in with; no login without it.
    pub username: Option<String>,
    /// smtp: the environment variable holding the password.
    pub password_env: Option<String>,
    /// smtp: a file holding the password.
    pub password_file: Option<String>,
    /// smtp: the sender, `Name <address>` or `address`.
    pub from: Option<String>,
    /// How long one attempt may take (milliseconds), connection included; default 10,000.
    pub timeout_ms: Option<u64>,
    /// Messages of this channel one process sends at once; default `messenger.concurrency`.
    pub concurrency: Option<usize>,
    /// The most messages per second, across every messenger process; absent: no limit. A
    /// message held back waits for its turn; it is not failed.
    pub rate_per_sec: Option<f64>,
    /// How many messages may go at once after a quiet spell (the bucket's size); default 1.
    pub burst: Option<u32>,
    /// This channel's retry policy; default `messenger.retry`.
    pub retry: Option<RetrySettings>,
}

impl ChannelConfig {
    /// A channel of `kind` named `name` with every optional setting absent.
    pub fn new(name: &str, kind: ChannelKind) -> ChannelConfig {
        ChannelConfig {
            name: name.into(),
            kind,
            url_env: None,
            url_file: None,
            secret_env: None,
            secret_file: None,
            host: None,
            port: None,
            tls: None,
            username: None,
            password_env: None,
            password_file: None,
            from: None,
            timeout_ms: None,
            concurrency: None,
            rate_per_sec: None,
            burst: None,
            retry: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(10_000))
    }
}

/// When to try a failed message again: exponential backoff, optionally with full jitter
/// (a wait uniform in `[0, min(max_delay, base · factor^(n-1))]` after failed attempt `n`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// The cap of the first wait (milliseconds).
    pub base_ms: u64,
    /// How much the cap grows per attempt (2 doubles it); at least 1.
    pub factor: f64,
    /// The largest cap (milliseconds).
    pub max_delay_ms: u64,
    /// Attempts in all, the first included, before the message is dead-lettered; at least 1.
    pub max_attempts: u32,
    /// Full jitter (default). Off, every wait is its cap: a fixed schedule, for tests and for
    /// receivers that expect one.
    pub jitter: bool,
}

impl Default for RetrySettings {
    /// 1 s doubling up to 1 h, 8 attempts, with jitter.
    fn default() -> Self {
        RetrySettings {
            base_ms: 1_000,
            factor: 2.0,
            max_delay_ms: 3_600_000,
            max_attempts: 8,
            jitter: true,
        }
    }
}

impl RetrySettings {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(self.base_ms),
            factor: self.factor,
            max_delay: Duration::from_millis(self.max_delay_ms),
            max_attempts: self.max_attempts,
        }
    }

    /// Refuses settings that cannot work.
    pub fn check(&self) -> Result<(), String> {
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(format!(
                "retry.factor must be at least 1, not {}",
                self.factor
            ));
        }
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if self.max_delay_ms < self.base_ms {
            return Err("retry.max_delay_ms must be at least retry.base_ms".into());
        }
        Ok(())
    }
}
