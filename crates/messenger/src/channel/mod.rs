//! Channels: each turns one rendered message into one real send and reports what the other end
//! said. A channel is built from its `[[messenger.channels]]` settings at start, when its
//! secrets are read from the environment or from files.
//!
//! What an answer means is decided here, the same way for every channel:
//! - delivered: HTTP 2xx, or the SMTP server accepted the message (2xx reply);
//! - permanent failure (dead-lettered at once): HTTP 400, 401, 403, 404, 410, 422 and the
//!   other 4xx except 408, 425 and 429; a 3xx (redirects are not followed); an SMTP 5xx
//!   reply (a bounce);
//! - temporary failure (retried): HTTP 408, 425, 429 and 5xx, an SMTP 4xx reply, a timeout, a
//!   connection that failed.
//!
//! **Invariant:** every text a channel reports (errors, answers) has passed through
//! [`Redactor::scrub`], which removes the channel's secrets.

pub mod http;
pub mod smtp;

use crate::config::{ChannelConfig, ChannelKind, RetrySettings, SmtpTls};
use serde::Serialize;
use std::time::Duration;

/// How much of a channel's answer is kept with an attempt, in bytes.
pub const ANSWER_BYTES: usize = 512;

/// A secret read at start. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a secret came from, as shown in listings: `env NAME` or `file PATH`.
fn source_of(env: &Option<String>, file: &Option<String>) -> Option<String> {
    match (env, file) {
        (Some(e), _) => Some(format!("env {e}")),
        (None, Some(f)) => Some(format!("file {f}")),
        (None, None) => None,
    }
}

/// Reads a secret from the environment variable or the file named; errors never show it.
fn read_secret(
    channel: &str,
    what: &str,
    env: &Option<String>,
    file: &Option<String>,
) -> Result<Option<Secret>, String> {
    match (env, file) {
        (Some(_), Some(_)) => Err(format!(
            "channel {channel}: give {what}_env or {what}_file, not both"
        )),
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(Secret(v.trim().to_owned()))),
            Ok(_) => Err(format!(
                "channel {channel}: the environment variable {var} ({what}) is empty"
            )),
            Err(_) => Err(format!(
                "channel {channel}: the environment variable {var} ({what}) is not set"
            )),
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(Secret(
                v.trim_end_matches(['\r', '\n']).trim().to_owned(),
            ))),
            Ok(_) => Err(format!(
                "channel {channel}: the file {path} ({what}) is empty"
            )),
            Err(e) => Err(format!(
                "channel {channel}: cannot read {what} from {path}: {}",
                e.kind()
            )),
        },
        (None, None) => Ok(None),
    }
}

/// Removes a channel's secrets from text that may echo them (an error naming a URL, a
/// receiver's answer repeating the request).
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<Secret>,
}

impl Redactor {
    fn add(&mut self, s: &Secret) {
        if !s.0.is_empty() {
            self.secrets.push(s.clone());
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(&s.0) {
                out = out.replace(&s.0, "[redacted]");
            }
        }
        out
    }
}

/// What an attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The channel took the message.
    Sent,
    /// It failed in a way that may pass: try again later.
    Retry,
    /// It failed in a way that will not pass: dead-letter now.
    Permanent,
}

impl Verdict {
    /// What an HTTP status means (see the module documentation).
    pub fn of_http(status: u16) -> Verdict {
        match status {
            200..=299 => Verdict::Sent,
            408 | 425 | 429 | 500..=599 => Verdict::Retry,
            _ => Verdict::Permanent,
        }
    }
}

/// The channel's answer to one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub verdict: Verdict,
    /// The HTTP status or the SMTP reply code; none when no answer came.
    pub code: Option<u16>,
    /// The start of the HTTP body, or the SMTP reply text (at most [`ANSWER_BYTES`]).
    pub answer: Option<String>,
    /// What went wrong, when something did.
    pub error: Option<String>,
}

/// A message ready to go: what every channel needs.
#[derive(Clone, Debug)]
pub struct Outgoing<'a> {
    pub id: &'a str,
    pub channel: &'a str,
    pub to: Option<&'a str>,
    pub subject: &'a str,
    pub body: &'a str,
    pub html: Option<&'a str>,
    pub vars: &'a serde_json::Value,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// A channel as configured, with its secrets, ready to send.
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    /// At most this many sends of this channel at once in this process.
    pub concurrency: usize,
    pub retry: RetrySettings,
    pub rate_per_sec: Option<f64>,
    pub burst: u32,
    pub timeout: Duration,
    /// What `GET /api/v1/channels` shows: the settings with secrets replaced by their source.
    pub public: serde_json::Value,
    pub redactor: Redactor,
    sender: Sender,
}

enum Sender {
    Http(http::HttpSender),
    Smtp(smtp::SmtpSender),
}

impl Channel {
    /// Checks the settings of one channel and reads its secrets.
    pub fn build(
        c: &ChannelConfig,
        default_concurrency: usize,
        default_retry: &RetrySettings,
    ) -> Result<Channel, String> {
        let name = &c.name;
        if !valid_name(name) {
            return Err(format!(
                "channel name {name:?} must be 1 to 64 of A-Z a-z 0-9 _ - ."
            ));
        }
        let refuse = |field: &str, set: bool| {
            if set {
                Err(format!(
                    "channel {name}: {field} does not apply to a {} channel",
                    c.kind.as_str()
                ))
            } else {
                Ok(())
            }
        };
        let retry = c.retry.unwrap_or(*default_retry);
        retry.check().map_err(|e| format!("channel {name}: {e}"))?;
        if let Some(r) = c.rate_per_sec
            && !(r.is_finite() && r > 0.0 && r <= 1_000_000.0)
        {
            return Err(format!(
                "channel {name}: rate_per_sec must be above 0 and at most 1000000"
            ));
        }
        let burst = c.burst.unwrap_or(1);
        if burst == 0 {
            return Err(format!("channel {name}: burst must be at least 1"));
        }
        let concurrency = c.concurrency.unwrap_or(default_concurrency);
        if concurrency == 0 || concurrency > 1024 {
            return Err(format!(
                "channel {name}: concurrency must be from 1 to 1024"
            ));
        }
        let timeout = c.timeout();
        if timeout.is_zero() {
            return Err(format!("channel {name}: timeout_ms must be above 0"));
        }
        let mut redactor = Redactor::default();
        let mut public = serde_json::json!({
            "name": name,
            "kind": c.kind,
            "concurrency": concurrency,
            "timeout_ms": timeout.as_millis() as u64,
            "rate_per_sec": c.rate_per_sec,
            "burst": burst,
            "retry": retry,
        });
        let sender = match c.kind {
            ChannelKind::Webhook | ChannelKind::Slack => {
                refuse("host", c.host.is_some())?;
                refuse("port", c.port.is_some())?;
                refuse("tls", c.tls.is_some())?;
                refuse("username", c.username.is_some())?;
                refuse(
                    "password_env/password_file",
                    c.password_env.is_some() || c.password_file.is_some(),
                )?;
                refuse("from", c.from.is_some())?;
                let url = read_secret(name, "url", &c.url_env, &c.url_file)?
                    .ok_or_else(|| format!("channel {name}: give url_env or url_file"))?;
                redactor.add(&url);
                public["url"] = source_of(&c.url_env, &c.url_file).into();
                let secret = if c.kind == ChannelKind::Webhook {
                    let s = read_secret(name, "secret", &c.secret_env, &c.secret_file)?
                        .ok_or_else(|| {
                            format!("channel {name}: give secret_env or secret_file (the signing secret)")
                        })?;
                    redactor.add(&s);
                    public["secret"] = source_of(&c.secret_env, &c.secret_file).into();
                    Some(s)
                } else {
                    refuse(
                        "secret_env/secret_file",
                        c.secret_env.is_some() || c.secret_file.is_some(),
                    )?;
                    None
                };
                Sender::Http(http::HttpSender::new(name, url, secret, timeout)?)
            }
            ChannelKind::Smtp => {
                refuse(
                    "url_env/url_file",
                    c.url_env.is_some() || c.url_file.is_some(),
                )?;
                refuse(
                    "secret_env/secret_file",
                    c.secret_env.is_some() || c.secret_file.is_some(),
                )?;
                let host = c
                    .host
                    .clone()
                    .filter(|h| !h.trim().is_empty())
                    .ok_or_else(|| format!("channel {name}: give host"))?;
                let tls = c.tls.unwrap_or_default();
                let port = c.port.unwrap_or(match tls {
                    SmtpTls::None => 25,
                    SmtpTls::Starttls => 587,
                    SmtpTls::Tls => 465,
                });
                let password = read_secret(name, "password", &c.password_env, &c.password_file)?;
                if password.is_some() != c.username.is_some() {
                    return Err(format!(
                        "channel {name}: give both username and password_env/password_file, or neither"
                    ));
                }
                if let Some(p) = &password {
                    redactor.add(p);
                }
                let from = c
                    .from
                    .clone()
                    .ok_or_else(|| format!("channel {name}: give from (the sender address)"))?;
                public["host"] = host.clone().into();
                public["port"] = port.into();
                public["tls"] = serde_json::to_value(tls).expect("an enum serializes");
                public["from"] = from.clone().into();
                public["username"] = c.username.clone().into();
                public["password"] = source_of(&c.password_env, &c.password_file).into();
                Sender::Smtp(smtp::SmtpSender::new(smtp::SmtpSettings {
                    channel: name,
                    host: &host,
                    port,
                    tls,
                    username: c.username.as_deref(),
                    password,
                    from: &from,
                    timeout,
                })?)
            }
        };
        Ok(Channel {
            name: name.clone(),
            kind: c.kind,
            concurrency,
            retry,
            rate_per_sec: c.rate_per_sec,
            burst,
            timeout,
            public,
            redactor,
            sender,
        })
    }

    /// Checks `to` for this channel when a message is accepted: an SMTP channel needs one or
    /// more addresses.
    pub fn check_recipient(&self, to: Option<&str>) -> Result<(), String> {
        match (&self.sender, to) {
            (Sender::Smtp(_), None) => {
                Err("an smtp channel needs `to`: one or more email addresses".into())
            }
            (Sender::Smtp(_), Some(to)) => smtp::parse_recipients(to).map(|_| ()),
            (Sender::Http(_), Some(to)) if to.len() > 1024 => {
                Err("`to` must be at most 1024 characters".into())
            }
            _ => Ok(()),
        }
    }

    /// Sends one message; never fails, the failure is in the answer. Every text in the
    /// answer has been scrubbed of this channel's secrets.
    pub async fn send(&self, msg: &Outgoing<'_>) -> Answer {
        let answer = match &self.sender {
            Sender::Http(h) => match self.kind {
                ChannelKind::Slack => h.send_slack(msg).await,
                _ => h.send_webhook(msg).await,
            },
            Sender::Smtp(s) => s.send(msg).await,
        };
        Answer {
            answer: answer.answer.map(|a| self.redactor.scrub(&a)),
            error: answer.error.map(|e| self.redactor.scrub(&e)),
            ..answer
        }
    }
}

/// Names of channels and templates: 1–64 of `A-Z a-z 0-9 _ - .`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_verdicts() {
        for s in [200, 201, 204, 299] {
            assert_eq!(Verdict::of_http(s), Verdict::Sent, "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422, 301, 302, 413] {
            assert_eq!(Verdict::of_http(s), Verdict::Permanent, "{s}");
        }
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert_eq!(Verdict::of_http(s), Verdict::Retry, "{s}");
        }
    }

    #[test]
    fn settings_of_another_kind_and_inline_less_secrets_are_refused() {
        let d = RetrySettings::default();
        let mut c = ChannelConfig::new("ops", ChannelKind::Slack);
        let e = Channel::build(&c, 4, &d).err().unwrap();
        assert!(e.contains("url_env or url_file"), "{e}");
        c.host = Some("mail".into());
        let e = Channel::build(&c, 4, &d).err().unwrap();
        assert!(e.contains("host does not apply"), "{e}");
        let mut c = ChannelConfig::new("ops", ChannelKind::Webhook);
        c.url_env = Some("KICKSTAND_TEST_SURELY_UNSET_VAR".into());
        let e = Channel::build(&c, 4, &d).err().unwrap();
        assert!(
            e.contains("KICKSTAND_TEST_SURELY_UNSET_VAR") && e.contains("not set"),
            "{e}"
        );
        let c = ChannelConfig::new("bad name", ChannelKind::Webhook);
        assert!(Channel::build(&c, 4, &d).is_err());
    }

    #[test]
    fn secrets_are_read_from_files_and_scrubbed() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "http://127.0.0.1:9/hook/s3cr3t-path\n").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "whsec_topsecretvalue").unwrap();
        let mut c = ChannelConfig::new("crew", ChannelKind::Webhook);
        c.url_file = Some(url.display().to_string());
        c.secret_file = Some(secret.display().to_string());
        let ch = Channel::build(&c, 4, &RetrySettings::default()).unwrap();
        let shown = ch.public.to_string();
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("topsecret"),
            "{shown}"
        );
        assert!(shown.contains("file "), "{shown}");
        assert_eq!(
            ch.redactor
                .scrub("POST http://127.0.0.1:9/hook/s3cr3t-path failed (whsec_topsecretvalue)"),
            "POST [redacted] failed ([redacted])"
        );
        assert_eq!(bounded("héllo", 2), "h…");
    }
}
