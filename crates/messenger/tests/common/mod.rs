//! What the messenger's tests share: real stores (a SQLite file, a PostgreSQL schema of the
//! test's own), a real HTTP receiver that answers as told and records what it got, the
//! messenger's API served on a real socket, and channel settings with secrets in files.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kickstand_messenger::{ChannelConfig, ChannelKind, Messenger, MessengerConfig, RetrySettings};
use kickstand_service::Db;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;

/// A store for one test; `drop_schema` cleans a PostgreSQL one up.
pub struct Store {
    pub db: Db,
    pub schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    pub async fn sqlite() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(&dir.path().join("ops.db")).unwrap();
        Store {
            db,
            schema: None,
            _dir: Some(dir),
        }
    }

    /// `None` (after a notice) when PostgreSQL is not configured and not required.
    pub async fn postgres() -> Option<Store> {
        let url = service_url("POSTGRES")?;
        let schema = unique("msg");
        let db = Db::open_postgres(&url, &schema, None).await.unwrap();
        Some(Store {
            db,
            schema: Some(schema),
            _dir: None,
        })
    }

    /// Another connection to the same PostgreSQL schema (a second process's view).
    pub async fn same_postgres(&self) -> Db {
        Db::open_postgres(
            &service_url("POSTGRES").unwrap(),
            self.schema.as_ref().unwrap(),
            None,
        )
        .await
        .unwrap()
    }

    pub async fn cleanup(self) {
        if let Some(s) = &self.schema {
            self.db
                .execute(&format!("DROP SCHEMA \"{s}\" CASCADE"), vec![])
                .await
                .unwrap();
        }
    }
}

/// `KICKSTAND_TEST_<NAME>_URL`; when unset, a notice and `None`, or a panic under
/// `KICKSTAND_REQUIRE_SERVICES=1`.
pub fn service_url(name: &str) -> Option<String> {
    match std::env::var(format!("KICKSTAND_TEST_{name}_URL")) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KICKSTAND_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("KICKSTAND_TEST_{name}_URL is not set and services are required");
            }
            eprintln!("KICKSTAND_TEST_{name}_URL is not set: skipping");
            None
        }
    }
}

pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP receiver on 127.0.0.1: answers with `plan[i]` for the i-th request (the last
/// entry for every later one) and records each request.
pub struct Receiver {
    pub url: String,
    pub hits: Arc<Mutex<Vec<Hit>>>,
}

struct ReceiverState {
    plan: Vec<u16>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

async fn receive(
    State(s): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let n = {
        let mut hits = s.hits.lock();
        hits.push(Hit {
            at: Instant::now(),
            headers,
            body,
        });
        hits.len()
    };
    let status = s.plan[(n - 1).min(s.plan.len() - 1)];
    (
        StatusCode::from_u16(status).unwrap(),
        format!("receiver says {status} to request {n}"),
    )
}

impl Receiver {
    pub async fn start(plan: Vec<u16>) -> Receiver {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/hook/{*rest}", axum::routing::post(receive))
            .with_state(Arc::new(ReceiverState {
                plan,
                hits: hits.clone(),
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/hook/s3cr3t-token-in-path"),
            hits,
        }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }
}

/// Files holding secrets, kept for the test's life.
pub struct Secrets {
    pub dir: tempfile::TempDir,
}

impl Secrets {
    pub fn new() -> Secrets {
        Secrets {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `value` to a file; returns its path.
    pub fn file(&self, name: &str, value: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p.display().to_string()
    }
}

pub const SIGNING_SECRET: &str = "whsec_messenger_test_signing_secret";

/// A webhook channel to `url`, its URL and secret in files, with a fixed (jitter-free) retry
/// schedule of `base_ms` doubling and `attempts` attempts.
pub fn webhook_channel(
    secrets: &Secrets,
    name: &str,
    url: &str,
    base_ms: u64,
    attempts: u32,
) -> ChannelConfig {
    let mut c = ChannelConfig::new(name, ChannelKind::Webhook);
    c.url_file = Some(secrets.file(&format!("{name}.url"), url));
    c.secret_file = Some(secrets.file(&format!("{name}.secret"), SIGNING_SECRET));
    c.timeout_ms = Some(2_000);
    c.retry = Some(RetrySettings {
        base_ms,
        factor: 2.0,
        max_delay_ms: 60_000,
        max_attempts: attempts,
        jitter: false,
    });
    c
}

pub fn config(channels: Vec<ChannelConfig>) -> MessengerConfig {
    MessengerConfig {
        channels,
        poll_interval_ms: 50,
        lease_ms: 30_000,
        ..MessengerConfig::default()
    }
}

/// The messenger's API on a real socket; returns its base URL.
pub async fn serve(m: &Arc<Messenger>) -> String {
    let (router, _api) = m.router().split_for_parts();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Polls `GET /api/v1/messages/{id}` until its status is `want` (or 20 s pass).
pub async fn wait_status(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    want: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v: serde_json::Value = http
            .get(format!("{base}/api/v1/messages/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "message never became {want}: {v:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
