//! Starts the real `kickstand` binary on a random port and talks to it over real HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

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

    /// [`Server::start_secure`] with extra environment; returns the server and the admin key
    /// it printed (a new data directory).
    pub fn start_secure_with(data: &Path, env: &[(&str, &str)]) -> (Server, String) {
        let (server, line) = Server::start_args(data, &[], env);
        let token = line
            .split("?token=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no admin key in {line:?}"))
            .to_owned();
        (server, token)
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
        Server::spawn(cmd, data, "run")
    }

    /// Starts `cmd`, reads the first line it prints (the one with the address), and returns the
    /// server and that line.
    fn spawn(mut cmd: Command, data: &Path, what: &str) -> (Server, String) {
        let mut child = cmd.spawn().expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?} (did `{what}` start?)"))
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

    /// Starts `kickstand serve --role <roles>` on `data` with authentication off and `env`,
    /// and waits until it listens.
    pub fn serve(data: &Path, roles: &str, env: &[(String, String)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kickstand"));
        cmd.args([
            "serve",
            "--role",
            roles,
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "off",
        ])
        .arg("--data")
        .arg(data)
        .env("KICKSTAND_LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd, data, &format!("serve --role {roles}")).0
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

/// GETs `url` and parses the body as JSON, whatever the status.
pub async fn get_json(c: &reqwest::Client, url: &str) -> serde_json::Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// GETs `url` with `key` as the bearer token and parses the body as JSON, whatever the status.
pub async fn get_json_with_key(c: &reqwest::Client, url: &str, key: &str) -> serde_json::Value {
    c.get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
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

/// A TCP proxy to `upstream` that can be cut (every connection closed, new ones refused).
pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if !o.load(Ordering::SeqCst) {
                    drop(down); // refused
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, open, conns }
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// One scale-out deployment of its own on the shared test servers: RabbitMQ queues under a
/// unique prefix, Redis keys under a unique prefix (in database `redis_db`), a PostgreSQL schema
/// of its own (history, fleet store and webhook store). `None` (after a printed notice) when a service is not configured.
pub struct Deployment {
    pub env: Vec<(String, String)>,
    pub rabbit: kickstand_engine::rabbitmq::RabbitConfig,
    pub redis_url: String,
    pub redis_prefix: String,
    pub pg_url: String,
    pub schema: String,
}

impl Deployment {
    pub fn new(redis_db: u8) -> Option<Deployment> {
        use kickstand_engine::testing::{service_url, unique_name};
        let rabbit_url = service_url("RABBITMQ")?;
        let redis = service_url("REDIS")?;
        let pg_url = service_url("POSTGRES")?;
        let name = unique_name("ks_scale");
        let redis_url = format!("{}/{redis_db}", redis.trim_end_matches('/'));
        let rabbit = kickstand_engine::rabbitmq::RabbitConfig {
            url: rabbit_url.clone(),
            queue_prefix: name.clone(),
            // Short enough for a test to see shards handed over.
            rebalance_interval_secs: 1,
            ..Default::default()
        };
        let env = vec![
            ("KICKSTAND_TRANSPORT__KIND", "rabbitmq".to_owned()),
            ("KICKSTAND_TRANSPORT__RABBITMQ__URL", rabbit_url),
            ("KICKSTAND_TRANSPORT__RABBITMQ__QUEUE_PREFIX", name.clone()),
            (
                "KICKSTAND_TRANSPORT__RABBITMQ__REBALANCE_INTERVAL_SECS",
                "1".to_owned(),
            ),
            ("KICKSTAND_STATE__KIND", "redis".to_owned()),
            ("KICKSTAND_STATE__REDIS__URL", redis_url.clone()),
            ("KICKSTAND_STATE__REDIS__KEY_PREFIX", name.clone()),
            ("KICKSTAND_HISTORY__KIND", "postgres".to_owned()),
            ("KICKSTAND_HISTORY__POSTGRES__URL", pg_url.clone()),
            ("KICKSTAND_HISTORY__POSTGRES__SCHEMA", name.clone()),
            // Geofences, events and webhooks in the same schema (tables fleet_*, webhook_*).
            ("KICKSTAND_FLEET__STORE", "postgres".to_owned()),
            ("KICKSTAND_FLEET__POSTGRES__URL", pg_url.clone()),
            ("KICKSTAND_FLEET__POSTGRES__SCHEMA", name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Some(Deployment {
            env,
            rabbit,
            redis_url,
            redis_prefix: name.clone(),
            pg_url,
            schema: name,
        })
    }

    /// The same deployment with one setting changed or added.
    pub fn with(&self, key: &str, value: &str) -> Vec<(String, String)> {
        let mut env: Vec<_> = self.env.iter().filter(|(k, _)| k != key).cloned().collect();
        env.push((key.to_owned(), value.to_owned()));
        env
    }

    /// Removes the queues, the Redis keys and the schema.
    pub async fn clean_up(self) {
        kickstand_engine::rabbitmq::delete_topology(&self.rabbit)
            .await
            .unwrap();
        let url = self.redis_url.clone();
        let prefix = self.redis_prefix.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{{{prefix}}}:*"))
                .query(&mut conn)
                .unwrap();
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
            }
        })
        .await
        .unwrap();
        drop_pg_schema(self.pg_url, self.schema).await;
    }
}
