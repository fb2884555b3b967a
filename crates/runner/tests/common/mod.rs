//! The test harness: a runner on a real store (a SQLite file, or PostgreSQL in a schema of its
//! own), its router served on a real socket, and scripts written to a temporary directory.

#![allow(dead_code)]

use kickstand_runner::{EnvValue, Runner, RunnerConfig};
use kickstand_service::{Caller, Db};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct Harness {
    pub runner: Arc<Runner>,
    pub base: String,
    pub http: reqwest::Client,
    pub scripts: PathBuf,
    /// Where the test scripts write what they saw.
    pub out: PathBuf,
    pub db: Db,
    pub config: RunnerConfig,
    _dirs: Vec<tempfile::TempDir>,
    pg_schema: Option<String>,
}

pub enum Store {
    Sqlite,
    Postgres,
}

fn postgres_url() -> Option<String> {
    match std::env::var("KICKSTAND_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("KICKSTAND_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("KICKSTAND_TEST_POSTGRES_URL is not set and services are required")
        }
        Err(_) => {
            eprintln!(
                "KICKSTAND_TEST_POSTGRES_URL is not set: skipping the PostgreSQL runner test"
            );
            None
        }
    }
}

/// Opens the store; `None` when PostgreSQL is asked for and not configured.
pub async fn open_store(store: Store, dir: &Path) -> Option<(Db, Option<String>)> {
    match store {
        Store::Sqlite => Some((Db::open_sqlite(&dir.join("ops.db")).unwrap(), None)),
        Store::Postgres => {
            let url = postgres_url()?;
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let schema = format!(
                "runner_test_{}_{}_{}",
                std::process::id(),
                kickstand_service::now_ms(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            Some((
                Db::open_postgres(&url, &schema, None).await.unwrap(),
                Some(schema),
            ))
        }
    }
}

pub fn write_script(dir: &Path, file: &str, body: &str) {
    let p = dir.join(file);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A runner over `scripts_dir` (the test fills it before), served on a real socket. The
/// `x-test-scopes` header (comma-separated) stands for the API-key guard.
pub async fn start(store: Store, fill: impl FnOnce(&Path, &Path)) -> Option<Harness> {
    start_with(store, fill, |_| {}).await
}

pub async fn start_with(
    store: Store,
    fill: impl FnOnce(&Path, &Path),
    tune: impl FnOnce(&mut RunnerConfig),
) -> Option<Harness> {
    let root = tempfile::tempdir().unwrap();
    let scripts = root.path().join("scripts");
    let out = root.path().join("out");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let (db, pg_schema) = open_store(store, root.path()).await?;
    fill(&scripts, &out);
    let mut config = RunnerConfig {
        scripts_dir: scripts.clone(),
        work_dir: Some(root.path().join("work")),
        reload_interval_secs: 1,
        kill_grace_secs: 1,
        instance: Some(format!("test-{}", kickstand_service::now_ms())),
        ..RunnerConfig::default()
    };
    config.env.insert(
        "KICKSTAND_API_URL".into(),
        EnvValue::literal("http://127.0.0.1:9"),
    );
    tune(&mut config);
    let runner = Runner::start(config.clone(), db.clone()).await.unwrap();
    let base = serve(&runner).await;
    Some(Harness {
        runner,
        base,
        http: reqwest::Client::new(),
        scripts,
        out,
        db,
        config,
        _dirs: vec![root],
        pg_schema,
    })
}

pub async fn serve(runner: &Arc<Runner>) -> String {
    let (router, _doc) = runner.router().split_for_parts();
    let app = router.layer(axum::middleware::from_fn(
        |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
            if let Some(scopes) = req
                .headers()
                .get("x-test-scopes")
                .and_then(|v| v.to_str().ok())
            {
                let caller = Caller {
                    key_id: Some("k_test".into()),
                    name: "tester".into(),
                    scopes: scopes.split(',').map(str::to_owned).collect(),
                };
                req.extensions_mut().insert(caller);
            }
            next.run(req).await
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Starts a run; returns the status and the JSON answer.
    pub async fn start_run(&self, script: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(&format!("/api/v1/scripts/{script}/runs")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// Waits until the run has ended; returns it.
    pub async fn wait_run(&self, id: &str) -> Value {
        for _ in 0..600 {
            let (_, run) = self.get(&format!("/api/v1/scripts/runs/{id}")).await;
            let status = run["status"].as_str().unwrap().to_owned();
            if status != "queued" && status != "running" {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {id} did not end");
    }

    pub async fn finish(self) {
        self.runner.shutdown().await;
        if let Some(schema) = &self.pg_schema {
            self.db
                .execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), vec![])
                .await
                .unwrap();
        }
    }
}
