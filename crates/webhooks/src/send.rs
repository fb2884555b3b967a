//! One signed HTTP POST to a receiver, and what came of it. No retries, no storage: the
//! dispatcher and the test ping decide what an answer means.

use crate::config::WebhookConfig;
use crate::signing::{self, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("kickstand-webhooks/", env!("CARGO_PKG_VERSION"));

/// How much of a failing receiver's answer is kept in the delivery log.
const ERROR_BODY_BYTES: usize = 512;

/// Sends deliveries. Cheap to clone (the HTTP client's connection pool is shared).
#[derive(Clone)]
pub struct Sender {
    /// Follows no redirects (a 3xx is a failed attempt), times out after `timeout_ms`, and,
    /// unless private targets are allowed, resolves names only to public addresses.
    client: reqwest::Client,
    /// Whether literal private IPs in URLs are allowed (names are checked by the resolver).
    allow_private: bool,
}

/// The HTTP client could not be built (no TLS roots, say).
#[derive(Debug, thiserror::Error)]
#[error("webhook HTTP client: {0}")]
pub struct SendError(#[from] reqwest::Error);

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendResult {
    /// The receiver's status; none when no answer came.
    pub status: Option<u16>,
    /// Why the attempt failed (connection error, timeout, a non-2xx answer and the start of its
    /// body); none on success.
    pub error: Option<String>,
    pub duration: Duration,
}

impl SendResult {
    /// A 2xx answer.
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

impl Sender {
    pub fn new(config: &WebhookConfig) -> Result<Sender, SendError> {
        let mut b = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(config.timeout())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .pool_max_idle_per_host(4);
        if !config.allow_private_targets {
            b = b.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Sender {
            client: b.build()?,
            allow_private: config.allow_private_targets,
        })
    }

    /// POSTs `body` to `url`, signed with `secret` at `timestamp` (unix seconds), with
    /// `Webhook-Id: webhook_id`.
    pub async fn post(
        &self,
        url: &str,
        secret: &str,
        webhook_id: &str,
        body: Vec<u8>,
        timestamp: u64,
    ) -> SendResult {
        let start = Instant::now();
        let fail = |error: String| SendResult {
            status: None,
            error: Some(error),
            duration: start.elapsed(),
        };
        if let Err(e) = check_url(url, self.allow_private) {
            return fail(e);
        }
        let signature = signing::sign(secret, timestamp, &body);
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, webhook_id)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return fail(describe(&e)),
        };
        let status = resp.status().as_u16();
        // Read a little of the answer: on success so that the connection can be reused, on
        // failure for the log. A longer body is cut (and the connection dropped).
        let mut head = Vec::new();
        while head.len() < ERROR_BODY_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => head.extend_from_slice(&c),
                _ => break,
            }
        }
        let mut result = SendResult {
            status: Some(status),
            error: None,
            duration: start.elapsed(),
        };
        if !result.delivered() {
            head.truncate(ERROR_BODY_BYTES);
            let text = String::from_utf8_lossy(&head);
            result.error = Some(format!("HTTP {status}: {}", text.trim()).trim().to_owned());
        }
        result
    }
}

/// Checks a receiver URL: `http` or `https`, a host, no credentials, and (unless
/// `allow_private`) not a literal non-public IP address.
pub fn check_url(url: &str, allow_private: bool) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not {:?}",
            parsed.scheme()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "credentials in the URL are not accepted (they would be shown in listings); \
             authenticate the sender by its signature"
                .into(),
        );
    }
    let Some(host) = parsed.host_str() else {
        return Err("the URL has no host".into());
    };
    let ip: Option<IpAddr> = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok();
    if let Some(ip) = ip
        && !allow_private
        && !is_public(ip)
    {
        return Err(format!(
            "{ip} is not a public address (webhooks.allow_private_targets is off)"
        ));
    }
    Ok(parsed)
}

/// Whether `ip` is a globally routable address (not loopback, private, link-local, shared,
/// documentation, multicast or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// Resolves names to their public addresses only, so a name cannot point a webhook at the
/// internal network (checked at every connection, which also defeats DNS rebinding).
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A short description of a transport error, with its cause chain.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut text = what.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://hooks.example.com/x?y=1", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/", true).is_ok());
        assert!(check_url("http://127.0.0.1:8080/", false).is_err());
        assert!(check_url("http://[::1]/", false).is_err());
        assert!(check_url("http://10.1.2.3/", false).is_err());
        assert!(check_url("ftp://example.com/", true).is_err());
        assert!(check_url("example.com/hook", true).is_err());
        assert!(check_url("https://user:pw@example.com/", true).is_err());
    }

    #[test]
    fn public_addresses() {
        for ip in ["8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn private_targets_can_be_refused() {
        let config = WebhookConfig {
            allow_private_targets: false,
            ..WebhookConfig::default()
        };
        let sender = Sender::new(&config).unwrap();
        // A literal address is refused before connecting, a name after resolving.
        for url in ["http://127.0.0.1:9/", "http://localhost:9/"] {
            let r = sender.post(url, "s", "id", b"{}".to_vec(), 0).await;
            assert_eq!(r.status, None, "{url}");
            assert!(!r.delivered());
        }
    }
}
