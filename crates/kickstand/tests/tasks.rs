//! Built-in tasks and history housekeeping over HTTP, against the real binary: what the
//! scheduler's built-in jobs and the shipped `archive-history` script call.

mod common;

use common::{Server, client, fix, now_ms};
use serde_json::{Value, json};

const HOUR: i64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_export_streams_ndjson_and_drop_before_removes_whole_old_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = client();
    let now = now_ms();
    let old = now - 72 * HOUR;
    let mut fixes = Vec::new();
    for i in 0..50 {
        fixes.push(fix("old-1", old + i * 1000, 37.5, 127.0));
        fixes.push(fix("new-1", now - 60_000 + i * 1000, 37.5, 127.0));
    }
    let r = c
        .post(server.url("/api/v1/telemetry"))
        .json(&fixes)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let export = |from: i64, to: i64| {
        let c = c.clone();
        let url = server.url(&format!("/api/v1/history/export?from={from}&to={to}"));
        async move {
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], "application/x-ndjson");
            let text = r.text().await.unwrap();
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let all = export(old - HOUR, now).await;
    assert_eq!(all.len(), 100, "every fix, one a line");
    assert_eq!(
        all.iter().filter(|f| f["vehicle_id"] == "old-1").count(),
        50
    );
    // Only the range asked for.
    let first_ten = export(old, old + 9_000).await;
    assert_eq!(first_ten.len(), 10);

    // Garbage is refused with a reason, and nothing is dropped.
    for (body, field) in [
        (json!({"before": "yesterday"}), "before"),
        (json!({"before": now + HOUR}), ""),
        (json!({"after": "2020-01-01T00:00:00Z"}), ""),
    ] {
        let r = c
            .post(server.url("/api/v1/history/drop-before"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.unwrap();
        if !field.is_empty() {
            assert_eq!(p["field"], field);
        }
    }
    let future = c
        .post(server.url("/api/v1/history/drop-before"))
        .json(&json!({"before": kickstand_domain::timefmt::format_ms(now + HOUR)}))
        .send()
        .await
        .unwrap();
    assert_eq!(future.status(), 400, "the future cannot be dropped");
    assert_eq!(export(old - HOUR, now).await.len(), 100);

    // Dropping before a day ago takes the old bucket and keeps the recent one. Fixes reach
    // the buckets when the history flusher writes them (within seconds of the ack); until then
    // there is nothing to drop.
    let cutoff = kickstand_domain::timefmt::format_ms(now - 24 * HOUR);
    let started = std::time::Instant::now();
    loop {
        let r = c
            .post(server.url("/api/v1/history/drop-before"))
            .json(&json!({ "before": cutoff }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        if body["buckets_dropped"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the old bucket was never dropped: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let left = export(old - HOUR, now).await;
    assert_eq!(left.len(), 50);
    assert!(left.iter().all(|f| f["vehicle_id"] == "new-1"));

    let bad = c
        .get(server.url("/api/v1/history/export?from=soon&to=later"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_tasks_answer_what_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = client();
    let now = now_ms();
    let fixes: Vec<Value> = (0..5)
        .map(|i| {
            json!({"vehicle_id": format!("s-{i}"), "ts": now - 1000, "lat": 37.5, "lon": 127.0,
                   "battery_pct": 50, "state": "available"})
        })
        .collect();
    c.post(server.url("/api/v1/telemetry"))
        .json(&fixes)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    let run = |task: &'static str| {
        let c = c.clone();
        let url = server.url(&format!("/api/v1/tasks/{task}"));
        async move { c.post(url).send().await.unwrap() }
    };
    let r = run("fleet_report").await;
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["task"], "fleet_report");
    assert_eq!(report["outcome"]["vehicles"], 5);
    assert!(report["outcome"]["events_last_24h"].is_object(), "{report}");

    let r = run("retention").await;
    assert_eq!(r.status(), 200);
    let retention: Value = r.json().await.unwrap();
    assert_eq!(retention["outcome"]["retain_days"], 0, "{retention}");

    let r = run("stale_sweep").await;
    assert_eq!(r.status(), 200);
    let sweep: Value = r.json().await.unwrap();
    assert_eq!(sweep["outcome"]["vehicles"], 5);
    assert_eq!(sweep["outcome"]["stale"], 0);

    let r = run("format_disk").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_history_needs_admin_and_tasks_need_operate() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_secure(dir.path());
    let keys =
        kickstand_http::auth::KeyStore::open(kickstand_http::auth::KeyStore::path_in(dir.path()))
            .unwrap();
    use kickstand_http::auth::Scope;
    let (_, operate) = keys.create("crew", &[Scope::Operate]).unwrap();
    let (_, read) = keys.create("viewer", &[Scope::Read]).unwrap();
    // The server notices new keys within a second.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let c = client();
    let drop = |token: String| {
        let c = c.clone();
        let url = server.url("/api/v1/history/drop-before");
        async move {
            c.post(url)
                .bearer_auth(token)
                .json(&json!({"before": "2000-01-01T00:00:00Z"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(drop(operate.clone()).await, 403);
    assert_eq!(drop(read.clone()).await, 403);
    let task = c
        .post(server.url("/api/v1/tasks/fleet_report"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(task.status(), 403);
    let task = c
        .post(server.url("/api/v1/tasks/fleet_report"))
        .bearer_auth(&operate)
        .send()
        .await
        .unwrap();
    assert_eq!(task.status(), 200);
    let export = c
        .get(server.url("/api/v1/history/export?from=0&to=1"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    let anonymous = c
        .get(server.url("/api/v1/history/export?from=0&to=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    server.stop();
}
