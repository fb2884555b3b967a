//! The operations roles of `kickstand serve` as separate processes on real PostgreSQL and
//! Redis: two schedulers share a job that ticks every second, each tick acts exactly once, and
//! when one scheduler is killed the other carries on; a gateway in front of them routes by path,
//! answers the rest with a fixed response, and stops sending to the killed one.
//!
//! Needs KICKSTAND_TEST_POSTGRES_URL and KICKSTAND_TEST_REDIS_URL.

mod common;

use common::{Server, client, now_ms};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) if std::env::var("KICKSTAND_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{var} is not set and services are required")
        }
        Err(_) => {
            eprintln!("{var} is not set: skipping the scale-out operations test");
            None
        }
    }
}

/// The API the schedulers act on: records each built-in task call by idempotency key and
/// arrival time.
async fn task_receiver() -> (String, Arc<Mutex<Vec<(String, Instant)>>>) {
    let calls: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/api/v1/tasks/{task}",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let c = c.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                c.lock().unwrap().push((key, Instant::now()));
                axum::Json(json!({"task": "fleet_report", "outcome": {}}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), calls)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_tick_each_second_once_and_survive_a_kill_behind_a_gateway() {
    let (Some(pg), Some(redis)) = (
        service_url("KICKSTAND_TEST_POSTGRES_URL"),
        service_url("KICKSTAND_TEST_REDIS_URL"),
    ) else {
        return;
    };
    let (api, calls) = task_receiver().await;
    let tag = format!("{}_{}", std::process::id(), now_ms());
    let schema = format!("ops_scaleout_{tag}");
    let env: Vec<(String, String)> = [
        ("KICKSTAND_OPS__STORE", "postgres"),
        ("KICKSTAND_OPS__POSTGRES_URL", pg.as_str()),
        ("KICKSTAND_OPS__POSTGRES_SCHEMA", schema.as_str()),
        ("KICKSTAND_SCHEDULER__REDIS_URL", redis.as_str()),
        (
            "KICKSTAND_SCHEDULER__REDIS_PREFIX",
            &format!("kickstand-test-{tag}"),
        ),
        ("KICKSTAND_SCHEDULER__API_URL", api.as_str()),
        ("KICKSTAND_SCHEDULER__API_KEY_ENV", "TEST_OPS_KEY"),
        ("TEST_OPS_KEY", "ks_test_key_for_actions"),
        ("KICKSTAND_SCHEDULER__LEASE_TTL", "3s"),
        ("KICKSTAND_SCHEDULER__LEASE_RENEW", "500ms"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = Server::serve(dirs[0].path(), "scheduler", &env);
    let b = Server::serve(dirs[1].path(), "scheduler", &env);

    // A gateway in front of both: jobs to the schedulers, anything else a fixed answer.
    let gw_port = free_port();
    let gw_dir = tempfile::tempdir().unwrap();
    let gw_config = gw_dir.path().join("gateway.toml");
    std::fs::write(
        &gw_config,
        format!(
            r#"
[gateway]
listen = "127.0.0.1:{gw_port}"
default_action.fixed_response = {{ status_code = 404, content_type = "text/plain", body = "nothing here" }}

[[gateway.rules]]
priority = 10
conditions.path = ["/api/v1/jobs", "/api/v1/jobs/*"]
action.forward.target_group = "schedulers"

[[gateway.target_groups]]
name = "schedulers"
targets = ["{a}", "{b}"]
request_timeout_ms = 5000
health_check = {{ path = "/readyz", interval_ms = 300, timeout_ms = 200, healthy_threshold = 2, unhealthy_threshold = 2 }}
"#,
            a = a.addr,
            b = b.addr
        ),
    )
    .unwrap();
    let gw_env = vec![(
        "KICKSTAND_CONFIG".to_owned(),
        gw_config.to_str().unwrap().to_owned(),
    )];
    let gateway = Server::serve(gw_dir.path(), "gateway", &gw_env);
    let gw = format!("http://127.0.0.1:{gw_port}");
    let c = client();
    // The gateway listens once it has started (its health checks begin at once).
    let started = Instant::now();
    loop {
        if let Ok(r) = c.get(format!("{gw}/nothing")).send().await {
            assert_eq!(r.status(), 404);
            assert_eq!(r.text().await.unwrap(), "nothing here");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One job, created through the gateway, ticking every second.
    let r = c
        .post(format!("{gw}/api/v1/jobs"))
        .json(&json!({
            "name": "report every second",
            "schedule": {"every": "1s"},
            "action": {"task": "fleet_report"},
            "overlap": "allow"
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let job: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    // Both schedulers see it (one database), through the gateway's round robin.
    for _ in 0..4 {
        let r = c
            .get(format!("{gw}/api/v1/jobs/{job_id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    tokio::time::sleep(Duration::from_secs(8)).await;
    let before_kill = calls.lock().unwrap().len();
    assert!(
        (6..=10).contains(&before_kill),
        "about one call a second, not {before_kill}"
    );
    // Kill the leader: the process whose id is in the instance name of the latest run.
    let runs: Value = c
        .get(format!("{gw}/api/v1/jobs/{job_id}/runs?limit=5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let leader = runs["runs"][0]["instance"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let a_pid = format!("-{}-", a.child.id());
    let (victim, survivor) = if leader.contains(&a_pid) {
        (a, b)
    } else {
        (b, a)
    };
    assert!(
        leader.contains(&format!("-{}-", victim.child.id())),
        "the latest run's instance {leader:?} names neither process"
    );
    victim.kill9();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let all = calls.lock().unwrap().clone();
    // Ticks went on after the kill, within the lease's 3 s.
    let after: Vec<_> = all.iter().filter(|(_, t)| *t > killed_at).collect();
    assert!(
        after.len() >= 3,
        "the surviving scheduler did not carry on: {} calls after the kill",
        after.len()
    );
    let first_after = after.iter().map(|(_, t)| *t - killed_at).min().unwrap();
    assert!(
        first_after < Duration::from_secs(5),
        "took {first_after:?} to tick again"
    );
    // Each tick acted once. A key arrives twice only when the killed scheduler had the tick's
    // call in flight: the survivor takes the orphaned run over and sends it again with the same
    // key (delivery is at least once; the receiver answers the first result).
    let mut by_key: HashMap<&str, Vec<Instant>> = HashMap::new();
    for (k, t) in &all {
        assert!(!k.is_empty(), "every action carries an idempotency key");
        by_key.entry(k).or_default().push(*t);
    }
    let dup: Vec<_> = by_key.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(dup.len() <= 1, "ticks acted on twice: {dup:?}");
    for (key, at) in &dup {
        assert!(
            at.len() == 2 && at[0] < killed_at && at[1] > killed_at,
            "{key} was sent again other than by the takeover of the killed scheduler's run: {at:?}"
        );
    }
    // The run history agrees: one run per tick, none twice.
    let runs: Value = c
        .get(format!("{gw}/api/v1/jobs/{job_id}/runs?limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let runs = runs["runs"].as_array().cloned().unwrap_or_default();
    let mut ticks: Vec<&str> = runs
        .iter()
        .filter_map(|r| r["scheduled_for"].as_str())
        .collect();
    let n = ticks.len();
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "a tick recorded twice");
    assert!(
        n >= by_key.len(),
        "{n} runs recorded for {} ticks acted on",
        by_key.len()
    );

    // The gateway took the dead scheduler out: requests keep succeeding.
    for _ in 0..6 {
        let r = c.get(format!("{gw}/api/v1/jobs")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    gateway.stop();
    survivor.stop();
    // Clean up the schema.
    let db = kickstand_service::Db::open_postgres(&pg, "public", None)
        .await
        .unwrap();
    db.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), Vec::new())
        .await
        .unwrap();
}
