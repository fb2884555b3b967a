//! The SMTP channel: lettre on tokio with rustls (ring), plain, STARTTLS or implicit TLS, with
//! an optional login. A new connection per message: messages are few and a pool would have to
//! notice dead connections.

use super::{ANSWER_BYTES, Answer, Outgoing, Secret, Verdict, bounded};
use crate::config::SmtpTls;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

pub struct SmtpSettings<'a> {
    pub channel: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<&'a str>,
    pub password: Option<Secret>,
    pub from: &'a str,
    pub timeout: Duration,
}

/// One SMTP channel's transport and sender.
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

/// `to` as one or more addresses, separated by commas.
pub fn parse_recipients(to: &str) -> Result<Mailboxes, String> {
    let boxes: Mailboxes = to
        .parse()
        .map_err(|e| format!("`to` is not a list of email addresses: {e}"))?;
    if boxes.iter().next().is_none() {
        return Err("`to` holds no email address".into());
    }
    Ok(boxes)
}

impl SmtpSender {
    pub fn new(s: SmtpSettings<'_>) -> Result<SmtpSender, String> {
        let channel = s.channel;
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|e| format!("channel {channel}: from is not an email address: {e}"))?;
        let params = || {
            TlsParameters::new(s.host.to_owned())
                .map_err(|e| format!("channel {channel}: TLS settings: {e}"))
        };
        let tls = match s.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(params()?),
            SmtpTls::Tls => Tls::Wrapper(params()?),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host)
            .port(s.port)
            .tls(tls)
            .timeout(Some(s.timeout));
        if let (Some(user), Some(password)) = (s.username, &s.password) {
            b = b.credentials(Credentials::new(
                user.to_owned(),
                password.expose().to_owned(),
            ));
        }
        Ok(SmtpSender {
            transport: b.build(),
            from,
            timeout: s.timeout,
        })
    }

    pub async fn send(&self, msg: &Outgoing<'_>) -> Answer {
        let email = match self.build(msg) {
            Ok(m) => m,
            Err(e) => {
                return Answer {
                    verdict: Verdict::Permanent,
                    code: None,
                    answer: None,
                    error: Some(e),
                };
            }
        };
        // lettre applies the timeout per command; this bounds the whole conversation.
        let sent = tokio::time::timeout(self.timeout * 3, self.transport.send(email)).await;
        match sent {
            Err(_) => Answer {
                verdict: Verdict::Retry,
                code: None,
                answer: None,
                error: Some(format!(
                    "the SMTP conversation took more than {} ms",
                    (self.timeout * 3).as_millis()
                )),
            },
            Ok(Ok(resp)) => {
                let code = resp.code().to_string().parse().ok();
                let text: Vec<&str> = resp.message().collect();
                Answer {
                    verdict: Verdict::Sent,
                    code,
                    answer: Some(bounded(
                        &format!("{} {}", resp.code(), text.join(" ")),
                        ANSWER_BYTES,
                    )),
                    error: None,
                }
            }
            Ok(Err(e)) => {
                let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
                let verdict = if e.is_permanent() {
                    Verdict::Permanent
                } else {
                    // Transient replies (4xx), timeouts, connection and TLS failures.
                    Verdict::Retry
                };
                let text = e.to_string();
                Answer {
                    verdict,
                    code,
                    answer: code.map(|_| bounded(&text, ANSWER_BYTES)),
                    error: Some(bounded(&text, ANSWER_BYTES)),
                }
            }
        }
    }

    fn build(&self, msg: &Outgoing<'_>) -> Result<Message, String> {
        let to = parse_recipients(msg.to.unwrap_or_default())?;
        let host = self.from.email.domain().to_owned();
        let builder = Message::builder()
            .from(self.from.clone())
            .mailbox(lettre::message::header::To::from(to))
            .subject(msg.subject)
            .message_id(Some(format!("<{}@{host}>", msg.id)));
        let built = match msg.html {
            None => builder
                .header(ContentType::TEXT_PLAIN)
                .body(msg.body.to_owned()),
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                msg.body.to_owned(),
                html.to_owned(),
            )),
        };
        built.map_err(|e| format!("the message cannot be built: {e}"))
    }
}
