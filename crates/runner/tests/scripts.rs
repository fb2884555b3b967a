//! The shipped scripts (`scripts/` at the repository root), run by a real runner against a
//! small real HTTP server that answers the documented shapes of the Kickstand API.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kickstand_runner::{EnvValue, Runner, RunnerConfig, Status};
use kickstand_service::{Caller, Db};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "test-key-123";

#[derive(Clone, Default)]
struct Api {
    /// Every request: method, path and query.
    seen: Arc<Mutex<Vec<String>>>,
    /// The bodies of drop-before requests.
    dropped: Arc<Mutex<Vec<Value>>>,
    /// Answer every request with 500.
    broken: bool,
}

fn problem(status: StatusCode, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        json!({"type": "about:blank", "title": "x", "status": status.as_u16(), "detail": detail})
            .to_string(),
    )
        .into_response()
}

/// The refusal to answer with, if the request is refused.
fn check(api: &Api, headers: &HeaderMap, what: String) -> Option<Response> {
    api.seen.lock().push(what);
    if api.broken {
        return Some(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the store is on fire",
        ));
    }
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {KEY}"))
    {
        return Some(problem(StatusCode::UNAUTHORIZED, "no key"));
    }
    None
}

async fn vehicles(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = check(&api, &headers, format!("vehicles {:?}", q.get("cursor"))) {
        return r;
    }
    assert_eq!(q["bbox"], "-180,-90,180,90");
    assert_eq!(q["battery_lt"], "15");
    // Two pages.
    match q.get("cursor").map(String::as_str) {
        None => Json(json!({"vehicles": [
            {"vehicle_id": "S1", "ts": "2024-05-01T10:00:00.000Z", "lat": 52.5, "lon": 13.4, "battery_pct": 12.5, "state": "available"},
            {"vehicle_id": "S2", "ts": "2024-05-01T10:00:00.000Z", "lat": 52.6, "lon": 13.5, "battery_pct": 3.0},
        ], "next_cursor": "S2"}))
        .into_response(),
        Some("S2") => Json(json!({"vehicles": [
            {"vehicle_id": "S3", "ts": "2024-05-01T10:00:00.000Z", "lat": 52.7, "lon": 13.6, "battery_pct": 7.0, "state": "non_operational"},
        ], "next_cursor": null}))
        .into_response(),
        Some(other) => panic!("unexpected cursor {other}"),
    }
}

async fn trips(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let hour = q["end_time"].clone();
    if let Some(r) = check(&api, &headers, format!("trips {hour} {:?}", q.get("page"))) {
        return r;
    }
    assert!(
        headers[header::ACCEPT]
            .to_str()
            .unwrap()
            .starts_with("application/vnd.mds+json;version=2.0")
    );
    let trip = |id: &str, start: i64| {
        json!({"trip_id": id, "device_id": "d-1", "start_time": start, "end_time": start + 600_000,
               "duration": 600, "distance": 1234, "start_location": {"lat": 52.5, "lng": 13.4},
               "end_location": {"lat": 52.51, "lng": 13.41}})
    };
    let body = match (hour.as_str(), q.get("page").map(String::as_str)) {
        // 2024-05-01T05:00Z = 1714539600000.
        ("2024-05-01T05", None) => {
            json!({"version": "2.0", "trips": [trip("t-a", 1_714_539_600_000)]})
        }
        ("2024-05-01T13", None) => {
            json!({"version": "2.0", "trips": [trip("t-b", 1_714_568_400_000)],
            "links": {"next": "/mds/trips?end_time=2024-05-01T13&page=1"}})
        }
        ("2024-05-01T13", Some("1")) => {
            json!({"version": "2.0", "trips": [trip("t-c", 1_714_569_000_000)]})
        }
        _ => json!({"version": "2.0", "trips": []}),
    };
    (
        [(header::CONTENT_TYPE, "application/vnd.mds+json;version=2.0")],
        body.to_string(),
    )
        .into_response()
}

async fn export(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = check(&api, &headers, format!("export {} {}", q["from"], q["to"])) {
        return r;
    }
    let lines = (0..3)
        .map(|i| format!("{{\"vehicle_id\":\"S{i}\",\"ts\":\"2020-01-01T00:00:0{i}.000Z\",\"lat\":1.0,\"lon\":2.0}}\n"))
        .collect::<String>();
    ([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response()
}

async fn drop_before(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check(&api, &headers, "drop".into()) {
        return r;
    }
    api.dropped.lock().push(body);
    Json(json!({"buckets_dropped": 2})).into_response()
}

async fn serve(api: Api) -> String {
    let app = axum::Router::new()
        .route("/api/v1/vehicles", get(vehicles))
        .route("/mds/trips", get(trips))
        .route("/api/v1/history/export", get(export))
        .route("/api/v1/history/drop-before", post(drop_before))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn runner(api_url: &str, dir: &std::path::Path) -> Arc<Runner> {
    let mut config = RunnerConfig {
        scripts_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts"),
        work_dir: Some(dir.join("work")),
        reload_interval_secs: 0,
        instance: Some("scripts-test".into()),
        ..RunnerConfig::default()
    };
    config
        .env
        .insert("KICKSTAND_API_URL".into(), EnvValue::literal(api_url));
    config
        .env
        .insert("KICKSTAND_API_KEY".into(), EnvValue::literal(KEY));
    let db = Db::open_sqlite(&dir.join("ops.db")).unwrap();
    let r = Runner::start(config, db).await.unwrap();
    let reg = r.registry();
    assert!(reg.invalid.is_empty(), "{:?}", reg.invalid);
    assert_eq!(
        reg.scripts.keys().collect::<Vec<_>>(),
        ["archive-history", "export-trips", "low-battery"]
    );
    r
}

async fn run(r: &Arc<Runner>, script: &str, args: Value) -> kickstand_runner::RunRecord {
    let started = r
        .start_run(
            script,
            args.as_object().unwrap(),
            &Caller::anonymous(),
            None,
        )
        .await
        .unwrap();
    for _ in 0..600 {
        let rec = r.run(&started.run.id).await.unwrap().unwrap();
        if rec.status.is_final() {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{script} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_battery_pages_and_sorts() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::default();
    let r = runner(&serve(api.clone()).await, dir.path()).await;
    let rec = run(&r, "low-battery", json!({"below": 15})).await;
    assert_eq!(rec.status, Status::Succeeded, "{:?}", rec.stderr);
    assert_eq!(
        rec.stdout.as_deref().unwrap(),
        "vehicle_id,battery_pct,lat,lon,state,ts\n\
         S2,3.0,52.6,13.5,,2024-05-01T10:00:00.000Z\n\
         S3,7.0,52.7,13.6,non_operational,2024-05-01T10:00:00.000Z\n\
         S1,12.5,52.5,13.4,available,2024-05-01T10:00:00.000Z\n"
    );
    assert_eq!(rec.stderr.as_deref().unwrap(), "3 vehicle(s) below 15%\n");
    assert_eq!(api.seen.lock().len(), 2);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_trips_asks_every_hour_and_writes_a_csv() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::default();
    let r = runner(&serve(api.clone()).await, dir.path()).await;
    let out = dir.path().join("exports");
    let rec = run(
        &r,
        "export-trips",
        json!({"date": "2024-05-01", "out": out.to_str().unwrap()}),
    )
    .await;
    assert_eq!(rec.status, Status::Succeeded, "{:?}", rec.stderr);
    let csv = std::fs::read_to_string(out.join("trips-2024-05-01.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert_eq!(
        lines[1],
        "t-a,d-1,2024-05-01T05:00:00.000Z,2024-05-01T05:10:00.000Z,600,1234,52.5,13.4,52.51,13.41"
    );
    assert!(lines[3].starts_with("t-c,"));
    // 24 hours, plus the second page of one.
    assert_eq!(api.seen.lock().len(), 25);
    // A day not over yet is refused by the script itself.
    let rec = run(&r, "export-trips", json!({"date": "2999-01-01"})).await;
    assert_eq!(rec.status, Status::Failed);
    assert!(rec.stderr.unwrap().contains("not over yet"));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_history_writes_and_syncs_before_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::default();
    let r = runner(&serve(api.clone()).await, dir.path()).await;
    let archive = dir.path().join("archive");
    // Dry run: nothing written, nothing dropped.
    let rec = run(
        &r,
        "archive-history",
        json!({"older_than_days": 30, "archive_dir": archive.to_str().unwrap(), "dry_run": true}),
    )
    .await;
    assert_eq!(rec.status, Status::Succeeded, "{:?}", rec.stderr);
    assert!(rec.stdout.unwrap().contains("dry run: 3 fix(es)"));
    assert!(api.dropped.lock().is_empty());
    assert!(!archive.exists());
    let rec = run(
        &r,
        "archive-history",
        json!({"older_than_days": 30, "archive_dir": archive.to_str().unwrap()}),
    )
    .await;
    assert_eq!(rec.status, Status::Succeeded, "{:?}", rec.stderr);
    let files: Vec<_> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut text = String::new();
    flate2_free_gunzip(&files[0], &mut text);
    assert_eq!(text.lines().count(), 3);
    let dropped = api.dropped.lock().clone();
    assert_eq!(dropped.len(), 1);
    let before = dropped[0]["before"].as_str().unwrap();
    assert!(before.ends_with("T00:00:00.000Z"), "{before}");
    // The export ended 1 ms before the cut-off.
    let seen = api.seen.lock().clone();
    let export = seen.iter().rfind(|s| s.starts_with("export")).unwrap();
    assert!(export.ends_with("T23:59:59.999Z"), "{export}");
    assert!(rec.stdout.unwrap().contains("2 bucket(s) dropped"));
    r.shutdown().await;
}

/// Reads a gzip file with the system's gzip (no compression crate for one test).
fn flate2_free_gunzip(path: &std::path::Path, out: &mut String) {
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdout.take().unwrap().read_to_string(out).unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_fail_the_run_with_the_servers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api {
        broken: true,
        ..Api::default()
    };
    let r = runner(&serve(api.clone()).await, dir.path()).await;
    let archive = dir.path().join("archive");
    for (script, args) in [
        ("low-battery", json!({})),
        ("export-trips", json!({"date": "2024-05-01"})),
        (
            "archive-history",
            json!({"archive_dir": archive.to_str().unwrap()}),
        ),
    ] {
        let rec = run(&r, script, args).await;
        assert_eq!(rec.status, Status::Failed, "{script}");
        assert_eq!(rec.exit_code, Some(1), "{script}");
        let err = rec.stderr.unwrap();
        assert!(
            err.contains("answered 500: the store is on fire"),
            "{script}: {err}"
        );
    }
    // Nothing was left behind in the archive directory, and nothing dropped.
    let left: Vec<_> = std::fs::read_dir(&archive)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(api.dropped.lock().is_empty());
    // An unreachable API is an error too.
    let r2 = runner("http://127.0.0.1:9", &dir.path().join("second")).await;
    let rec = run(&r2, "low-battery", json!({})).await;
    assert_eq!(rec.status, Status::Failed);
    assert!(rec.stderr.unwrap().contains("failed"));
    r.shutdown().await;
    r2.shutdown().await;
}
