//! What the scheduler's tests share: a real HTTP receiver that answers like the ops API
//! (scripts, messages, tasks) and records every call, the two stores, and a real server for
//! the scheduler's own routes.

#![allow(dead_code)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use kickstand_scheduler::{Scheduler, SchedulerConfig};
use kickstand_service::Db;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub key: Option<String>,
    pub auth: Option<String>,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<Call>>,
    /// First answer per idempotency key (replayed for a repeated key, as the services do).
    answers: Mutex<HashMap<String, Value>>,
    /// Script runs: id → (started, how long it runs, cancelled).
    scripts: Mutex<HashMap<String, (Instant, Duration, bool)>>,
    next: Mutex<u64>,
}

impl Recorder {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    pub fn calls_to(&self, prefix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.starts_with(prefix))
            .collect()
    }

    fn record(
        &self,
        method: &'static str,
        path: String,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<String> {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.calls.lock().push(Call {
            method,
            path,
            key: key.clone(),
            auth: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            at: Instant::now(),
        });
        key
    }

    fn id(&self, prefix: &str) -> String {
        let mut n = self.next.lock();
        *n += 1;
        format!("{prefix}{n}")
    }
}

type Rec = State<Arc<Recorder>>;

async fn message(State(r): Rec, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let key = r.record("POST", "/api/v1/messages".into(), &headers, &body);
    let mut answers = r.answers.lock();
    let answer = match key {
        Some(k) => answers
            .entry(k)
            .or_insert_with(|| json!({"id": r.id("msg_"), "status": "queued"}))
            .clone(),
        None => json!({"id": r.id("msg_"), "status": "queued"}),
    };
    (StatusCode::ACCEPTED, axum::Json(answer))
}

async fn script_run(
    State(r): Rec,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let key = r.record(
        "POST",
        format!("/api/v1/scripts/{name}/runs"),
        &headers,
        &body,
    );
    let args: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ms = args["args"]["sleep_ms"].as_u64().unwrap_or(0);
    let mut answers = r.answers.lock();
    if let Some(k) = &key
        && let Some(a) = answers.get(k)
    {
        return (StatusCode::CREATED, axum::Json(a.clone()));
    }
    let id = r.id("run_");
    r.scripts.lock().insert(
        id.clone(),
        (Instant::now(), Duration::from_millis(ms), false),
    );
    let answer = json!({"run_id": id});
    if let Some(k) = key {
        answers.insert(k, answer.clone());
    }
    (StatusCode::CREATED, axum::Json(answer))
}

async fn script_status(
    State(r): Rec,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> impl IntoResponse {
    r.record("GET", format!("/api/v1/scripts/runs/{id}"), &headers, b"");
    let scripts = r.scripts.lock();
    let Some((started, runs, cancelled)) = scripts.get(&id) else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"status": 404})));
    };
    let status = if *cancelled {
        "cancelled"
    } else if started.elapsed() < *runs {
        "running"
    } else {
        "succeeded"
    };
    (
        StatusCode::OK,
        axum::Json(json!({"id": id, "status": status, "exit_code": 0})),
    )
}

async fn script_cancel(
    State(r): Rec,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> impl IntoResponse {
    r.record(
        "POST",
        format!("/api/v1/scripts/runs/{id}/cancel"),
        &headers,
        b"",
    );
    if let Some(s) = r.scripts.lock().get_mut(&id) {
        s.2 = true;
    }
    (
        StatusCode::OK,
        axum::Json(json!({"id": id, "status": "cancelled"})),
    )
}

async fn task(
    State(r): Rec,
    Path(task): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    r.record("POST", format!("/api/v1/tasks/{task}"), &headers, &body);
    (
        StatusCode::OK,
        axum::Json(json!({"task": task, "ok": true})),
    )
}

/// Starts the receiver on the current runtime; answers its base URL.
pub async fn receiver() -> (String, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let app = Router::new()
        .route("/api/v1/messages", post(message))
        .route("/api/v1/scripts/{name}/runs", post(script_run))
        .route("/api/v1/scripts/runs/{id}", get(script_status))
        .route("/api/v1/scripts/runs/{id}/cancel", post(script_cancel))
        .route("/api/v1/tasks/{task}", post(task))
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), rec)
}

/// Serves the scheduler's routes on a real socket; answers the base URL.
pub async fn serve(s: &Arc<Scheduler>) -> String {
    let (router, _doc) = s.router::<()>().split_for_parts();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

pub fn config(api_url: &str) -> SchedulerConfig {
    SchedulerConfig {
        api_url: api_url.to_owned(),
        api_key: Some("test-internal-key".into()),
        tick_resolution: Duration::from_millis(50),
        rules_poll: Duration::from_millis(100),
        script_poll: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(2),
        lease_renew: Duration::from_millis(500),
        missed_grace: Duration::from_secs(2),
        ..SchedulerConfig::default()
    }
}

pub fn service_url(name: &str) -> Option<String> {
    let var = format!("KICKSTAND_TEST_{name}_URL");
    match std::env::var(&var) {
        Ok(url) => Some(url),
        Err(_) if std::env::var("KICKSTAND_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{var} is not set and services are required")
        }
        Err(_) => {
            eprintln!("{var} is not set: skipping this scheduler test");
            None
        }
    }
}

/// Which ops database a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// A database of `kind` (a fresh file, or a fresh schema); `None` when PostgreSQL is not
/// configured. Drop the answer's guard at the end (drops the schema).
pub async fn open(kind: Store, dir: &std::path::Path) -> Option<(Db, Option<String>)> {
    match kind {
        Store::Sqlite => Some((Db::open_sqlite(&dir.join("ops.db")).unwrap(), None)),
        Store::Postgres => {
            let url = service_url("POSTGRES")?;
            // Tests of one binary run at once: a counter keeps their schemas apart.
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let schema = format!(
                "sched_test_{}_{}_{}",
                std::process::id(),
                kickstand_service::now_ms() % 1_000_000_007,
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            Some((
                Db::open_postgres(&url, &schema, None).await.unwrap(),
                Some(schema),
            ))
        }
    }
}

/// Another handle on the same database.
pub async fn reopen(kind: Store, dir: &std::path::Path, schema: &Option<String>) -> Db {
    match kind {
        Store::Sqlite => Db::open_sqlite(&dir.join("ops.db")).unwrap(),
        Store::Postgres => {
            let url = service_url("POSTGRES").unwrap();
            Db::open_postgres(&url, schema.as_deref().unwrap(), None)
                .await
                .unwrap()
        }
    }
}

pub async fn drop_schema(db: &Db, schema: &Option<String>) {
    if let Some(s) = schema {
        db.execute(&format!("DROP SCHEMA \"{s}\" CASCADE"), vec![])
            .await
            .unwrap();
    }
}

/// Waits until `f` holds (checking every 50 ms), at most `secs`.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
