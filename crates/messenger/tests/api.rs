//! The HTTP API on a real socket: templates and their versions, strict variables, garbage
//! bodies, idempotency keys, and that no secret reaches an answer or the log.

mod common;

use common::*;
use kickstand_messenger::{ChannelConfig, ChannelKind, Messenger, store};
use serde_json::{Value, json};
use sha2::Digest;
use std::io::Write;
use std::sync::Arc;

/// The log of this test binary, captured (every test here shares it).
static LOG: std::sync::OnceLock<Arc<parking_lot::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

struct Capture(Arc<parking_lot::Mutex<Vec<u8>>>);
impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_log() -> Arc<parking_lot::Mutex<Vec<u8>>> {
    LOG.get_or_init(|| {
        let buf = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let b = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Capture(b.clone()))
            .init();
        buf
    })
    .clone()
}

async fn setup(plan: Vec<u16>) -> (Arc<Messenger>, String, Receiver, Secrets, Store) {
    capture_log();
    let store = Store::sqlite().await;
    let secrets = Secrets::new();
    let rx = Receiver::start(plan).await;
    let m = Messenger::start(
        config(vec![webhook_channel(&secrets, "crew", &rx.url, 100, 3)]),
        store.db.clone(),
    )
    .await
    .unwrap();
    let base = serve(&m).await;
    (m, base, rx, secrets, store)
}

async fn problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_versioned_checked_and_strict() {
    let (m, base, rx, _s, _st) = setup(vec![200]).await;
    let http = reqwest::Client::new();
    let put = |body: Value| {
        http.put(format!("{base}/api/v1/templates/low_battery"))
            .json(&body)
            .send()
    };
    let r = put(json!({"subject": "Low: {{ v }}", "body": "{{ v }} at {{ pct }}%"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v1: Value = r.json().await.unwrap();
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["variables"], json!(["pct", "v"]));
    let r = put(json!({"subject": "Battery {{ v }}", "body": "{{ v }}: {{ pct }}% in {{ zone }}"}))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 2);
    // A syntax error is a 400 naming the part and the line; nothing is stored.
    let p = problem(
        put(json!({"subject": "ok", "body": "line 1\nline 2 {% if %}"}))
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(p["field"], "body");
    assert!(p["detail"].as_str().unwrap().contains("line 2"), "{p}");
    let detail: Value = http
        .get(format!("{base}/api/v1/templates/low_battery"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["latest"]["version"], 2);
    assert_eq!(detail["versions"].as_array().unwrap().len(), 2);
    let one: Value = http
        .get(format!("{base}/api/v1/templates/low_battery/versions/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["subject"], "Low: {{ v }}");
    let list: Value = http
        .get(format!("{base}/api/v1/templates"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["templates"].as_array().unwrap().len(), 1);
    for (url, status) in [
        ("/api/v1/templates/nope", 404),
        ("/api/v1/templates/low_battery/versions/9", 404),
        ("/api/v1/templates/low_battery/versions/x", 400),
    ] {
        problem(
            http.get(format!("{base}{url}")).send().await.unwrap(),
            status,
        )
        .await;
    }
    // A variable the template uses and the message lacks is a 400, not an empty string.
    let send = |body: Value| {
        http.post(format!("{base}/api/v1/messages"))
            .json(&body)
            .send()
    };
    let p = problem(
        send(
            json!({"channel": "crew", "template": "low_battery", "vars": {"v": "sc-1", "pct": 5}}),
        )
        .await
        .unwrap(),
        400,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("undefined"), "{p}");
    // Version 1 does not use `zone`.
    let r = send(
        json!({"channel": "crew", "template": "low_battery", "template_version": 1,
                        "vars": {"v": "sc-1", "pct": 5}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let msg = wait_status(&http, &base, &id, "sent").await;
    assert_eq!(msg["subject"], "Low: sc-1");
    assert_eq!(msg["template_version"], 1);
    assert_eq!(rx.hits().len(), 1);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_a_problem_and_nothing_is_queued() {
    let (m, base, rx, _s, _st) = setup(vec![200]).await;
    let http = reqwest::Client::new();
    let bodies: Vec<(&[u8], &str)> = vec![
        (b"", ""),
        (b"   ", ""),
        (b"{", ""),
        (b"null", ""),
        (b"[1,2]", ""),
        (b"\xff\xfe\x00garbage", ""),
        (br#"{"channel": 5}"#, "channel"),
        (
            br#"{"channel": "crew", "subject": "s", "body": "b", "extra": 1}"#,
            "",
        ),
        (
            br#"{"channel": "nope", "subject": "s", "body": "b"}"#,
            "channel",
        ),
        (br#"{"channel": "crew"}"#, "template"),
        (
            br#"{"channel": "crew", "subject": "s", "body": "b", "template": "t"}"#,
            "template",
        ),
        (br#"{"channel": "crew", "template": "missing"}"#, "template"),
        (
            br#"{"channel": "crew", "subject": "s", "body": "b", "vars": [1]}"#,
            "vars",
        ),
        (
            br#"{"channel": "crew", "subject": "s", "body": "b", "send_at": "tomorrow"}"#,
            "send_at",
        ),
        (
            br#"{"channel": "crew", "subject": "s", "body": "b", "send_at": true}"#,
            "send_at",
        ),
        (
            br#"{"channel": "crew", "subject": "{{ }}", "body": "b"}"#,
            "subject",
        ),
        (
            br#"{"channel": "crew", "subject": "s", "body": "{{ x }}"}"#,
            "body",
        ),
    ];
    for (body, field) in bodies {
        let r = http
            .post(format!("{base}/api/v1/messages"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let p = problem(r, 400).await;
        if !field.is_empty() {
            assert_eq!(p["field"], field, "{}: {p}", String::from_utf8_lossy(body));
        }
    }
    for (url, body) in [
        ("/api/v1/templates/ok", &b"{\"subject\": 1}"[..]),
        ("/api/v1/templates/ok", b"not json"),
        (
            "/api/v1/templates/bad%20name",
            b"{\"subject\": \"s\", \"body\": \"b\"}",
        ),
    ] {
        let r = http
            .put(format!("{base}{url}"))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        problem(r, 400).await;
    }
    for q in ["status=lost", "limit=0", "limit=x", "cursor=zzz", "bogus=1"] {
        let r = http
            .get(format!("{base}/api/v1/messages?{q}"))
            .send()
            .await
            .unwrap();
        problem(r, 400).await;
    }
    let r = http
        .post(format!("{base}/api/v1/messages"))
        .header("idempotency-key", "has space")
        .json(&json!({"channel": "crew", "subject": "s", "body": "b"}))
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
    let page: Value = http
        .get(format!("{base}/api/v1/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(page["messages"].as_array().unwrap().is_empty());
    assert!(rx.hits().is_empty());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_refuses_another_body_and_conflicts_in_flight() {
    let (m, base, rx, _s, store) = setup(vec![200]).await;
    let http = reqwest::Client::new();
    let body = json!({"channel": "crew", "subject": "s", "body": "b"});
    let send = |key: &'static str, body: &Value| {
        http.post(format!("{base}/api/v1/messages"))
            .header("idempotency-key", key)
            .json(body)
            .send()
    };
    let first = send("k-1", &body).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = send("k-1", &body).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = json!({"channel": "crew", "subject": "s", "body": "other"});
    problem(send("k-1", &other).await.unwrap(), 422).await;
    // A request still being handled holds its key: a second one is a 409.
    let raw = br#"{"channel":"crew","subject":"s","body":"b2"}"#;
    let hash: String = sha2::Sha256::digest(raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = kickstand_service::now_ms();
    assert!(matches!(
        store::begin_key(&store.db, "", "k-2", &hash, now)
            .await
            .unwrap(),
        store::KeyState::Acquired
    ));
    let raw_send = || {
        http.post(format!("{base}/api/v1/messages"))
            .header("idempotency-key", "k-2")
            .header("content-type", "application/json")
            .body(raw.to_vec())
            .send()
    };
    problem(raw_send().await.unwrap(), 409).await;
    problem(send("k-2", &other).await.unwrap(), 422).await;
    // Once the first request let go of it (it failed), the key is free again.
    store::drop_key(&store.db, "", "k-2").await.unwrap();
    let r = raw_send().await.unwrap();
    assert_eq!(r.status(), 202);
    let r = raw_send().await.unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    // A refused request does not keep its key.
    let bad = json!({"channel": "nope", "subject": "s", "body": "b"});
    problem(send("k-4", &bad).await.unwrap(), 400).await;
    assert_eq!(send("k-4", &body).await.unwrap().status(), 202);
    // Three messages were accepted in all, each sent once.
    let page: Value = http
        .get(format!("{base}/api/v1/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    for msg in page["messages"].as_array().unwrap() {
        wait_status(&http, &base, msg["id"].as_str().unwrap(), "sent").await;
    }
    assert_eq!(rx.hits().len(), 3);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_answers_or_the_log() {
    let log = capture_log();
    let store = Store::sqlite().await;
    let secrets = Secrets::new();
    let rx = Receiver::start(vec![500, 200]).await;
    // Nothing listens here: the connection error must not name the URL.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!(
        "http://{}/hook/s3cr3t-token-in-path",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let mut smtp = ChannelConfig::new("mail", ChannelKind::Smtp);
    smtp.host = Some("127.0.0.1".into());
    smtp.port = Some(1);
    smtp.tls = Some(kickstand_messenger::SmtpTls::None);
    smtp.from = Some("ops@example.com".into());
    smtp.username = Some("ops".into());
    smtp.password_file = Some(secrets.file("smtp.pw", "smtp-pa55word-value"));
    smtp.timeout_ms = Some(1_000);
    smtp.retry = webhook_channel(&secrets, "x", "http://x", 100, 2).retry;
    let m = Messenger::start(
        config(vec![
            webhook_channel(&secrets, "crew", &rx.url, 100, 3),
            webhook_channel(&secrets, "down", &closed_url, 100, 2),
            smtp,
        ]),
        store.db.clone(),
    )
    .await
    .unwrap();
    let base = serve(&m).await;
    let http = reqwest::Client::new();
    let mut answers = String::new();
    let channels = http
        .get(format!("{base}/api/v1/channels"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&channels).unwrap();
    assert_eq!(list["channels"].as_array().unwrap().len(), 3);
    assert!(
        list["channels"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("file "),
        "{list}"
    );
    answers.push_str(&channels);
    for (ch, to) in [
        ("crew", None),
        ("down", None),
        ("mail", Some("crew@example.com")),
    ] {
        let r: Value = http
            .post(format!("{base}/api/v1/messages"))
            .json(&json!({"channel": ch, "to": to, "subject": "s", "body": "b"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["id"].as_str().unwrap();
        let want = if ch == "crew" { "sent" } else { "dead" };
        let v = wait_status(&http, &base, id, want).await;
        answers.push_str(&v.to_string());
    }
    for q in ["", "?status=dead"] {
        answers.push_str(
            &http
                .get(format!("{base}/api/v1/messages{q}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    m.shutdown().await;
    let log = String::from_utf8_lossy(&log.lock()).into_owned();
    assert!(log.contains("dead-lettered"), "the log was captured: {log}");
    assert!(
        answers.contains("Connection refused") || answers.contains("connect"),
        "{answers}"
    );
    for secret in [
        "s3cr3t-token-in-path",
        SIGNING_SECRET,
        "smtp-pa55word-value",
    ] {
        assert!(
            !answers.contains(secret),
            "{secret} in an answer: {answers}"
        );
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
}
