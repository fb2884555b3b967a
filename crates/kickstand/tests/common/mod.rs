//! Starts the real `kickstand` binary on a random port and talks to it over real HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
    pub data: PathBuf,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl Server {
    /// Starts `kickstand run` on `data` with authentication off (loopback) and extra env, and
    /// waits until it listens.
    pub fn start_with(data: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_args(data, &["--auth", "off"], env).0
    }

    /// Starts `kickstand run` with API keys on; returns the server and the first line it printed
    /// (which carries the admin key on a new data directory).
    pub fn start_secure(data: &Path) -> (Server, String) {
        Server::start_args(data, &[], &[])
    }

    fn start_args(data: &Path, args: &[&str], env: &[(&str, &str)]) -> (Server, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kickstand"));
        cmd.args(["run", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .env("KICKSTAND_LOG__LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        (
            Server {
                addr,
                child,
                data: data.to_path_buf(),
            },
            line,
        )
    }

    pub fn start(data: &Path) -> Server {
        Server::start_with(data, &[])
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn fix(id: &str, ts: i64, lat: f64, lon: f64) -> serde_json::Value {
    serde_json::json!({"vehicle_id": id, "ts": ts, "lat": lat, "lon": lon})
}

/// The environment that points a server's history at PostgreSQL schema `schema`.
pub fn pg_env<'a>(url: &'a str, schema: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("KICKSTAND_HISTORY__KIND", "postgres"),
        ("KICKSTAND_HISTORY__POSTGRES__URL", url),
        ("KICKSTAND_HISTORY__POSTGRES__SCHEMA", schema),
    ]
}

/// Drops a PostgreSQL schema a test made. The store runs its own runtime, so this runs on a
/// blocking thread.
pub async fn drop_pg_schema(url: String, schema: String) {
    use kickstand_engine::history::postgres::{PostgresConfig, PostgresHistory};
    tokio::task::spawn_blocking(move || {
        let config = PostgresConfig {
            url,
            schema,
            ..PostgresConfig::default()
        };
        PostgresHistory::open(&config, kickstand_domain::BucketSpan::HOUR)
            .unwrap()
            .drop_schema()
            .unwrap();
    })
    .await
    .unwrap();
}
