//! Kickstand's messenger: operators' messages to field crews and riders, sent through
//! channels defined in the configuration (a signed generic webhook, a Slack-compatible incoming
//! webhook, SMTP email), rendered from stored, versioned templates, sent now or at a time,
//! retried with backoff and jitter, dead-lettered when they cannot be delivered, and held to a
//! per-channel rate that every messenger process shares.
//!
//! # Layout
//!
//! - [`config`]: `MessengerConfig`, the `[messenger]` section, and its channels.
//! - [`template`]: MiniJinja templates, checked when stored, rendered with strict undefined
//!   variables.
//! - [`channel`]: one module per channel kind; each sends one message and reports the
//!   channel's real answer (HTTP status and body, SMTP reply) and whether it may be retried.
//! - [`store`]: the messenger's tables in the ops database (`kickstand_service::Db`): templates,
//!   messages with their claims, attempts, idempotency keys.
//! - [`limit`]: the per-channel rate limit (GCRA), in Redis when configured, else in process.
//! - [`deliver`]: the background delivery loop: claim due messages, send, record, retry or
//!   dead-letter.
//! - [`api`]: the HTTP API (`/api/v1/templates`, `/api/v1/channels`, `/api/v1/messages`).
//! - [`service`]: `Messenger`, which ties the parts together: `start`, `router`, `send`,
//!   `shutdown`.
//!
//! **Invariant:** a secret (an SMTP password, a webhook URL or signing secret) is read from the
//! environment or a file at start and lives only in the channel that uses it. It never reaches
//! a log line, a stored attempt, a problem answer or an API response: every text recorded from
//! a channel passes through the channel's redaction first.

pub mod api;
pub mod channel;
pub mod config;
pub mod deliver;
pub mod limit;
pub mod service;
pub mod store;
pub mod template;

pub use api::{SendAnswer, SendRequest};
pub use config::{ChannelConfig, ChannelKind, MessengerConfig, RetrySettings, SmtpTls};
pub use service::{Messenger, MessengerError};
