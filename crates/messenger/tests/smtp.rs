//! Email through a real SMTP server on localhost (`tests/smtp/server.py`, aiosmtpd), started
//! by the test on a free port: the mail arrives with its content, a 550 bounce is a failure
//! with the server's own text and is not retried, a 451 is retried.

mod common;

use common::*;
use kickstand_messenger::{ChannelConfig, ChannelKind, Messenger, RetrySettings, SmtpTls};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct SmtpServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_smtp() -> Option<SmtpServer> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/smtp/server.py");
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("KICKSTAND_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("python3 with aiosmtpd is required (pip install aiosmtpd)");
        }
        eprintln!("aiosmtpd is not installed: skipping");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--dir"])
        .arg(dir.path())
        .arg("--watch-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    Some(SmtpServer { child, port, dir })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_arrives_bounces_fail_and_451_is_retried() {
    let Some(server) = start_smtp() else { return };
    let store = Store::sqlite().await;
    let mut c = ChannelConfig::new("mail", ChannelKind::Smtp);
    c.host = Some("127.0.0.1".into());
    c.port = Some(server.port);
    c.tls = Some(SmtpTls::None);
    c.from = Some("Kickstand Ops <ops@example.com>".into());
    c.timeout_ms = Some(5_000);
    c.retry = Some(RetrySettings {
        base_ms: 100,
        factor: 2.0,
        max_delay_ms: 10_000,
        max_attempts: 3,
        jitter: false,
    });
    let m = Messenger::start(config(vec![c]), store.db.clone())
        .await
        .unwrap();
    let base = serve(&m).await;
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{base}/api/v1/templates/swap"))
        .json(&json!({"subject": "Swap {{ v }}", "body": "Swap the battery of {{ v }} at {{ where }}.",
                      "html": "<p>Swap <b>{{ v }}</b> at {{ where }}</p>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut ids = Vec::new();
    for to in [
        "crew@example.com",
        "bounce@example.com",
        "later@example.com",
    ] {
        let r: Value = http
            .post(format!("{base}/api/v1/messages"))
            .json(&json!({"channel": "mail", "to": to, "template": "swap",
                          "vars": {"v": "sc-42", "where": "Main St & 5th"}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["id"].as_str().unwrap().to_owned());
    }
    // Delivered: the server's 250 is recorded, the mail is on its disk.
    let sent = wait_status(&http, &base, &ids[0], "sent").await;
    assert_eq!(sent["attempts"][0]["code"], 250);
    assert!(
        sent["attempts"][0]["answer"]
            .as_str()
            .unwrap()
            .contains("accepted"),
        "{sent}"
    );
    let files: Vec<_> = std::fs::read_dir(server.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    assert_eq!(files.len(), 1);
    let mail = std::fs::read_to_string(&files[0]).unwrap();
    assert!(mail.contains("X-Test-Rcpt-To: crew@example.com"), "{mail}");
    assert!(mail.contains("Subject: Swap sc-42"), "{mail}");
    assert!(
        mail.contains("From: \"Kickstand Ops\" <ops@example.com>"),
        "{mail}"
    );
    assert!(
        mail.contains("Swap the battery of sc-42 at Main St & 5th."),
        "{mail}"
    );
    assert!(mail.contains("<b>sc-42</b> at Main St &amp; 5th"), "{mail}");
    assert!(
        mail.contains(&format!("Message-ID: <{}@example.com>", ids[0])),
        "{mail}"
    );
    // The bounce is a failure, with the server's reply, and is not retried.
    let bounced = wait_status(&http, &base, &ids[1], "dead").await;
    let a = &bounced["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["code"], 550);
    assert!(
        a[0]["answer"]
            .as_str()
            .unwrap()
            .contains("mailbox unavailable"),
        "{bounced}"
    );
    // 451 is temporary: retried up to max_attempts, then dead.
    let later = wait_status(&http, &base, &ids[2], "dead").await;
    let a = later["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|x| x["code"] == 451), "{later}");
    assert_eq!(a[0]["outcome"], "retry");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_message_needs_a_valid_recipient() {
    let store = Store::sqlite().await;
    let mut c = ChannelConfig::new("mail", ChannelKind::Smtp);
    c.host = Some("127.0.0.1".into());
    c.tls = Some(SmtpTls::None);
    c.from = Some("ops@example.com".into());
    c.timeout_ms = Some(1_000);
    let m = Messenger::start(config(vec![c]), store.db.clone())
        .await
        .unwrap();
    let base = serve(&m).await;
    let http = reqwest::Client::new();
    for to in [None, Some("not an address"), Some("")] {
        let r = http
            .post(format!("{base}/api/v1/messages"))
            .json(&json!({"channel": "mail", "to": to, "subject": "s", "body": "b"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["field"], "to");
    }
    m.shutdown().await;
}
