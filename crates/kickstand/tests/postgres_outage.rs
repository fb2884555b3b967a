//! `kickstand run` on PostgreSQL: the database goes away under a running server (a TCP proxy in
//! front of the real server is cut): ingest answers 503 with Retry-After, loses nothing it
//! acked, and recovers by itself when the database is back. A server with a demo fleet stops
//! cleanly (the store's runtime may be dropped on an async task). Two servers started at once
//! on a new schema share it (migrations and partitions are created under advisory locks).

mod common;

use common::{Proxy, Server, client, fix, now_ms};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_while_postgres_is_down_and_recovers_without_loss() {
    let Some(url) = kickstand_engine::testing::service_url("POSTGRES") else {
        return;
    };
    // postgres://user@host:port/db → the same through the proxy.
    let rest = url.split_once("://").unwrap().1;
    let (auth_host, db) = rest.split_once('/').unwrap();
    let (auth, host) = auth_host.rsplit_once('@').unwrap_or(("", auth_host));
    let proxy = Proxy::start(host.to_owned()).await;
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    let via = format!("postgres://{auth}127.0.0.1:{}/{db}", proxy.port);
    let schema = kickstand_engine::testing::unique_name("outage");
    let dir = tempfile::tempdir().unwrap();
    let mut env = common::pg_env(&via, &schema).to_vec();
    env.push(("KICKSTAND_ENGINE__WORKERS", "1"));
    let s = Server::start_with(dir.path(), &env);
    let c = client();
    let t0 = now_ms() - 60_000;
    let post = |i: i64| {
        let c = c.clone();
        let url = s.url("/api/v1/telemetry");
        async move {
            c.post(url)
                .json(&vec![fix("v1", t0 + i * 100, 37.0, 127.0)])
                .send()
                .await
                .unwrap()
        }
    };
    let mut acked = Vec::new();
    for i in 0..5 {
        assert_eq!(post(i).await.status(), 202);
        acked.push(i);
    }

    proxy.cut();
    let r = post(5).await;
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    assert!(r.headers().contains_key("retry-after"));
    // A device keeps retrying with the same fix; it stays 503 while the database is away.
    assert_eq!(post(5).await.status(), 503);

    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if post(5).await.status() == 202 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "ingest did not recover after the database came back"
    );
    acked.push(5);
    for i in 6..10 {
        assert_eq!(post(i).await.status(), 202);
        acked.push(i);
    }
    let v: Value = c
        .get(s.url(&format!(
            "/api/v1/vehicles/v1/track?from={t0}&to={}",
            t0 + 10_000
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["count"], acked.len(), "each acked fix once: {v}");
    s.stop();

    common::drop_pg_schema(url, schema).await;
}

#[test]
fn a_server_on_postgres_with_a_demo_fleet_stops_cleanly() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let Some(url) = kickstand_engine::testing::service_url("POSTGRES") else {
        return;
    };
    let schema = kickstand_engine::testing::unique_name("stop");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kickstand"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "off",
            "--demo",
            "30",
            "--data",
        ])
        .arg(dir.path())
        .envs(common::pg_env(&url, &schema))
        .env("KICKSTAND_LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("http://"), "{line}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(common::drop_pg_schema(url, schema));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_started_at_once_share_one_new_schema() {
    let Some(url) = kickstand_engine::testing::service_url("POSTGRES") else {
        return;
    };
    let schema = kickstand_engine::testing::unique_name("shared");
    let env = common::pg_env(&url, &schema);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Both migrate the empty schema at the same moment.
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| Server::start_with(d1.path(), &env));
        let b = scope.spawn(|| Server::start_with(d2.path(), &env));
        (a.join().unwrap(), b.join().unwrap())
    });
    let c = client();
    let t0 = now_ms() - 3 * 86_400_000; // a day whose partition neither created ahead
    for (s, id) in [(&a, "from-a"), (&b, "from-b")] {
        let batch: Vec<Value> = (0..20)
            .map(|i| fix(id, t0 + i * 1000, 37.0, 127.0))
            .collect();
        let r = c
            .post(s.url("/api/v1/telemetry"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Each server reads what the other wrote: one shared history.
    for (s, id) in [(&a, "from-b"), (&b, "from-a")] {
        let v: Value = c
            .get(s.url(&format!(
                "/api/v1/vehicles/{id}/track?from={t0}&to={}",
                t0 + 60_000
            )))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["count"], 20, "{id}: {v}");
    }
    a.stop();
    b.stop();
    common::drop_pg_schema(url, schema).await;
}
