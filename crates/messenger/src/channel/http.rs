//! The two HTTP channels: the generic webhook (a JSON POST signed with
//! `kickstand_webhooks::signing`) and the Slack-compatible incoming webhook (`{"text": …}`).

use super::{ANSWER_BYTES, Answer, Outgoing, Secret, Verdict, bounded};
use kickstand_webhooks::signing::{self, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("kickstand-messenger/", env!("CARGO_PKG_VERSION"));

/// One HTTP channel's client, URL and (webhook) signing secret.
pub struct HttpSender {
    /// Follows no redirects (a 3xx is a failure) and times out after the channel's timeout.
    client: reqwest::Client,
    url: Secret,
    secret: Option<Secret>,
    timeout: Duration,
}

/// The body of a generic webhook request.
#[derive(Serialize)]
struct WebhookBody<'a> {
    id: &'a str,
    channel: &'a str,
    to: Option<&'a str>,
    subject: &'a str,
    body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a str>,
    vars: &'a serde_json::Value,
    created_at: String,
}

impl HttpSender {
    pub fn new(
        channel: &str,
        url: Secret,
        secret: Option<Secret>,
        timeout: Duration,
    ) -> Result<HttpSender, String> {
        let parsed = reqwest::Url::parse(url.expose())
            .map_err(|e| format!("channel {channel}: the URL is not valid: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("channel {channel}: the URL must be http or https"));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| format!("channel {channel}: HTTP client: {e}"))?;
        Ok(HttpSender {
            client,
            url,
            secret,
            timeout,
        })
    }

    pub async fn send_webhook(&self, msg: &Outgoing<'_>) -> Answer {
        let body = serde_json::to_vec(&WebhookBody {
            id: msg.id,
            channel: msg.channel,
            to: msg.to,
            subject: msg.subject,
            body: msg.body,
            html: msg.html,
            vars: msg.vars,
            created_at: kickstand_domain::timefmt::format_ms(msg.created_at),
        })
        .expect("a message serializes");
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut req = self
            .client
            .post(self.url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, msg.id)
            .header(TIMESTAMP_HEADER, ts.to_string());
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signing::sign(secret.expose(), ts, &body));
        }
        self.finish(req.body(body)).await
    }

    pub async fn send_slack(&self, msg: &Outgoing<'_>) -> Answer {
        let text = if msg.subject.is_empty() {
            msg.body.to_owned()
        } else {
            format!("*{}*\n{}", msg.subject, msg.body)
        };
        let body =
            serde_json::to_vec(&serde_json::json!({ "text": text })).expect("a message serializes");
        let req = self
            .client
            .post(self.url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.finish(req).await
    }

    async fn finish(&self, req: reqwest::RequestBuilder) -> Answer {
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Answer {
                    verdict: Verdict::Retry,
                    code: None,
                    answer: None,
                    error: Some(describe(e, self.timeout)),
                };
            }
        };
        let status = resp.status().as_u16();
        // Read the start of the answer: for the log, and so that a short answer lets the
        // connection be reused. A longer body is cut.
        let mut head = Vec::new();
        let mut error = None;
        while head.len() < ANSWER_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => head.extend_from_slice(&c),
                Ok(None) => break,
                Err(e) => {
                    error = Some(describe(e, self.timeout));
                    break;
                }
            }
        }
        let text = String::from_utf8_lossy(&head);
        let verdict = Verdict::of_http(status);
        if verdict != Verdict::Sent && error.is_none() {
            error = Some(format!("HTTP {status}"));
        }
        Answer {
            verdict,
            code: Some(status),
            answer: Some(bounded(text.trim(), ANSWER_BYTES)),
            error,
        }
    }
}

/// An HTTP error without the URL (a secret), with its causes.
fn describe(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
