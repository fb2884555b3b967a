//! The HTTP API of a real `kickstand run` process: ingest, queries, bad input, restart.

mod common;

use common::{Server, client, fix, now_ms};
use serde_json::{Value, json};

/// Posts over a raw socket, ignoring a broken pipe (the server may answer and close before
/// reading all of a body it refuses), and returns the response text.
fn raw_post(addr: std::net::SocketAddr, framing: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /api/v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}Connection: close\r\n\r\n"
    );
    let _ = sock
        .write_all(head.as_bytes())
        .and_then(|()| sock.write_all(body));
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

async fn post_json(c: &reqwest::Client, s: &Server, body: &Value) -> (u16, Value) {
    let r = c
        .post(s.url("/api/v1/telemetry"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn get(c: &reqwest::Client, s: &Server, path: &str) -> (u16, Value) {
    let r = c.get(s.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let v: Value = r.json().await.unwrap();
    if status >= 400 {
        assert_eq!(ct.as_deref(), Some("application/problem+json"), "{path}");
    }
    (status, v)
}

#[tokio::test]
async fn ingest_then_query_everything() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let t = now_ms() - 60_000;
    let mut batch: Vec<Value> = (0..30)
        .map(|i| {
            let mut f = fix("scooter-1", t + i * 1000, 37.5 + i as f64 * 1e-4, 127.0);
            f["battery_pct"] = json!(80.0 - i as f64);
            f["state"] = json!("on_trip");
            f
        })
        .collect();
    batch.push(fix("scooter-2", t, 37.5005, 127.0005));
    // Two days old, as RFC 3339 (older than the quality filter's 7 days would be flagged).
    let two_days_ago = kickstand_domain::timefmt::format_ms(t - 2 * 86_400_000);
    batch.push(json!({"vehicle_id": "scooter-3", "ts": two_days_ago, "lat": 37.51, "lon": 127.01, "state": "available", "battery_pct": 12}));
    let (status, body) = post_json(&c, &s, &json!(batch)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"accepted": 32, "duplicates": 0, "rejected": []})
    );

    // The same batch again: all duplicates, nothing stored twice.
    let (status, body) = post_json(&c, &s, &json!(batch)).await;
    assert_eq!(status, 202);
    assert_eq!(body["duplicates"], 32);
    assert_eq!(body["accepted"], 0);

    let (status, v) = get(&c, &s, "/api/v1/vehicles/scooter-1").await;
    assert_eq!(status, 200);
    assert_eq!(v["lat"], json!(37.5029));
    assert_eq!(v["battery_pct"], json!(51));
    assert_eq!(v["state"], "on_trip");

    let (_, v) = get(&c, &s, "/api/v1/vehicles?near=37.5,127.0&radius_m=100").await;
    let ids: Vec<&str> = v["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["vehicle_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["scooter-2"], "scooter-1 is now 322 m north");
    let (_, v) = get(&c, &s, "/api/v1/vehicles?near=37.5,127.0&radius_m=2000").await;
    let d: Vec<f64> = v["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["distance_m"].as_f64().unwrap())
        .collect();
    assert_eq!(d.len(), 3);
    assert!(
        d.windows(2).all(|w| w[0] <= w[1]),
        "sorted by distance: {d:?}"
    );

    let (_, v) = get(
        &c,
        &s,
        "/api/v1/vehicles?bbox=126.9,37.4,127.1,37.6&battery_lt=20",
    )
    .await;
    assert_eq!(v["vehicles"].as_array().unwrap().len(), 1);
    assert_eq!(v["vehicles"][0]["vehicle_id"], "scooter-3");
    let (_, v) = get(
        &c,
        &s,
        "/api/v1/vehicles?bbox=126.9,37.4,127.1,37.6&state=available",
    )
    .await;
    assert_eq!(v["vehicles"].as_array().unwrap().len(), 1);

    // bbox pages with a cursor.
    let (_, p1) = get(
        &c,
        &s,
        "/api/v1/vehicles?bbox=126.9,37.4,127.1,37.6&limit=2",
    )
    .await;
    assert_eq!(p1["vehicles"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap().to_owned();
    let (_, p2) = get(
        &c,
        &s,
        &format!("/api/v1/vehicles?bbox=126.9,37.4,127.1,37.6&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(p2["vehicles"].as_array().unwrap().len(), 1);
    assert_eq!(p2["next_cursor"], Value::Null);

    let path = format!(
        "/api/v1/vehicles/scooter-1/track?from={}&to={}",
        t,
        t + 29_000
    );
    let (_, v) = get(&c, &s, &path).await;
    assert_eq!(v["count"], 30);
    let ts: Vec<&str> = v["fixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ts"].as_str().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]));
    let (_, v) = get(&c, &s, &format!("{path}&format=geojson")).await;
    assert_eq!(v["type"], "Feature");
    assert_eq!(v["geometry"]["type"], "LineString");
    assert_eq!(v["geometry"]["coordinates"].as_array().unwrap().len(), 30);
    assert_eq!(v["properties"]["times"].as_array().unwrap().len(), 30);
    // A straight line simplifies to its two ends.
    let (_, v) = get(&c, &s, &format!("{path}&format=geojson&simplify_m=1")).await;
    assert_eq!(
        v["geometry"]["coordinates"],
        json!([[127, 37.5], [127, 37.5029]])
    );

    let (_, v) = get(&c, &s, "/api/v1/fleet/summary").await;
    assert_eq!(v["vehicles"], 3);
    assert_eq!(v["by_state"]["on_trip"], 1);
    assert_eq!(v["by_state"]["available"], 1);
    assert_eq!(v["by_state"]["unknown"], 1);
    assert_eq!(v["stale"], 1, "scooter-3 last reported two days ago");

    let (status, v) = get(&c, &s, "/api/v1/vehicles/nobody").await;
    assert_eq!(status, 404);
    assert_eq!(v["status"], 404);

    // Health and metrics.
    assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/readyz")).send().await.unwrap().status(), 200);
    let metrics = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kickstand_ingest_accepted_fixes_total 32"),
        "{metrics}"
    );
    assert!(metrics.contains("kickstand_ingest_duplicate_fixes_total 32"));
    assert!(
        metrics.contains("kickstand_ingest_rejected_fixes_total"),
        "{metrics}"
    );
    for name in [
        "kickstand_store_wal_sync_seconds",
        "kickstand_pipeline_worker_lag_seconds",
        "kickstand_store_disk_bytes",
        "kickstand_store_buckets",
        "kickstand_pipeline_queue_depth_fixes",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }

    // A clean restart keeps every vehicle and its history.
    s.stop();
    let s = Server::start(dir.path());
    let (status, v) = get(&c, &s, "/api/v1/vehicles/scooter-1").await;
    assert_eq!(status, 200);
    assert_eq!(v["lat"], json!(37.5029));
    let (_, v) = get(&c, &s, &path).await;
    assert_eq!(v["count"], 30);
    let (_, v) = get(&c, &s, "/api/v1/fleet/summary").await;
    assert_eq!(v["vehicles"], 3);
}

#[tokio::test]
async fn ndjson_and_single_objects_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let t = now_ms() - 10_000;
    let nd = format!(
        "{}\n\n{}\n{{oops\n",
        fix("a", t, 1.0, 1.0),
        fix("a", t + 1000, 1.0, 1.0)
    );
    let r = c
        .post(s.url("/api/v1/telemetry"))
        .header("content-type", "application/x-ndjson")
        .body(nd)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected"][0]["index"], 3);
    let (status, v) = post_json(&c, &s, &fix("b", t, 2.0, 2.0)).await;
    assert_eq!((status, v["accepted"].clone()), (202, json!(1)));
}

/// Every kind of garbage gets its documented status and a problem+json naming the field, and
/// the server keeps serving.
#[tokio::test]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let t = now_ms();
    let send = |ct: &'static str, body: Vec<u8>| {
        let c = c.clone();
        let url = s.url("/api/v1/telemetry");
        async move {
            let r = c
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let v: Value = r.json().await.unwrap();
            (status, ctype, v)
        }
    };
    let json = "application/json";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (json, b"{\"vehicle_id\":".to_vec(), 400, "not valid JSON"),
        (json, b"".to_vec(), 400, "empty"),
        (json, b"[]".to_vec(), 400, "no fixes"),
        (json, b"\"hello\"".to_vec(), 400, "object or an array"),
        (json, b"\xff\xfe\x00".to_vec(), 400, "UTF-8"),
        (
            "text/plain",
            fix("a", t, 1.0, 1.0).to_string().into_bytes(),
            415,
            "Content-Type",
        ),
        (
            "application/x-www-form-urlencoded",
            b"a=b".to_vec(),
            415,
            "Content-Type",
        ),
    ];
    for (ct, body, want, detail) in cases {
        let (status, ctype, v) = send(ct, body.clone()).await;
        assert_eq!(status, want, "{:?} → {v}", String::from_utf8_lossy(&body));
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(v["status"], want);
        assert!(v["detail"].as_str().unwrap().contains(detail), "{v}");
    }
    // Items that are each wrong in one field: all refused → 422 naming every field.
    let items = json!([
        {"vehicle_id": "v", "ts": t, "lat": 91, "lon": 0},
        {"vehicle_id": "v", "ts": t, "lat": 0, "lon": -181},
        {"vehicle_id": "v", "ts": t + 3_600_000, "lat": 0, "lon": 0},
        {"vehicle_id": "", "ts": t, "lat": 0, "lon": 0},
        {"vehicle_id": "v", "ts": t, "lat": 0, "lon": 0, "battery_pct": 101},
        {"vehicle_id": "v", "ts": t, "lat": 0, "lon": 0, "speed_kmh": 300},
        {"vehicle_id": "v", "ts": t, "lat": 0, "lon": 0, "heading_deg": -1},
        {"vehicle_id": "v", "ts": t, "lat": 0, "lon": 0, "wheels": 2},
        {"vehicle_id": "v", "ts": "last tuesday", "lat": 0, "lon": 0},
        {"vehicle_id": "v", "ts": t, "lat": "NaN", "lon": 0},
        {"vehicle_id": "v", "ts": t, "lon": 0},
        {"vehicle_id": "v", "ts": t, "lat": 0, "lon": 0, "state": "flying"},
        [1, 2],
    ]);
    let (status, ctype, v) = send(json, items.to_string().into_bytes()).await;
    assert_eq!(
        (status, ctype.as_str()),
        (422, "application/problem+json"),
        "{v}"
    );
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec![
            "lat",
            "lon",
            "ts",
            "vehicle_id",
            "battery_pct",
            "speed_kmh",
            "heading_deg",
            "wheels",
            "ts",
            "lat",
            "lat",
            "state",
            ""
        ]
    );
    // NaN and infinities cannot be written in JSON; a number too large for f64 is malformed.
    let (status, _, _) = send(
        json,
        format!("{{\"vehicle_id\":\"v\",\"ts\":{t},\"lat\":1e999,\"lon\":0}}").into_bytes(),
    )
    .await;
    assert_eq!(status, 422);
    // A huge body: 413, whether announced by Content-Length or sent chunked.
    let announced = raw_post(
        s.addr,
        "Content-Length: 9437184\r\n",
        &vec![b' '; 9 * 1024 * 1024],
    );
    assert!(announced.starts_with("HTTP/1.1 413"), "{announced}");
    assert!(announced.contains("application/problem+json"));
    let mut chunked = Vec::new();
    for _ in 0..9 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 1 << 20));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let streamed = raw_post(s.addr, "Transfer-Encoding: chunked\r\n", &chunked);
    assert!(streamed.starts_with("HTTP/1.1 413"), "{streamed}");
    // Good fixes among bad ones are kept.
    let mixed = json!([fix("keep-1", t - 1000, 1.0, 1.0), {"vehicle_id": "x", "ts": t, "lat": 100, "lon": 0}, fix("keep-2", t - 1000, 1.0, 1.0)]);
    let (status, _, v) = send(json, mixed.to_string().into_bytes()).await;
    assert_eq!(status, 202);
    assert_eq!(v["accepted"], 2);
    assert_eq!(
        v["rejected"],
        json!([{"index": 1, "field": "lat", "reason": "must be between -90 and 90"}])
    );
    // Bad queries.
    for (path, field) in [
        ("/api/v1/vehicles?near=91,0", "near"),
        ("/api/v1/vehicles?near=1,1&radius_m=abc", "radius_m"),
        ("/api/v1/vehicles?bbox=1,2,3", "bbox"),
        ("/api/v1/vehicles?bbox=0,0,1,1&state=flying", "state"),
        ("/api/v1/vehicles?bbox=0,0,1,1&limit=0", "limit"),
        ("/api/v1/vehicles/keep-1/track?from=yesterday", "from"),
        ("/api/v1/vehicles/keep-1/track?format=kml", "format"),
        ("/api/v1/vehicles/keep-1/track?simplify_m=-1", "simplify_m"),
        ("/api/v1/vehicles/bad%20id", "vehicle_id"),
    ] {
        let (status, v) = get(&c, &s, path).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["field"], field, "{path}: {v}");
    }
    let (status, _) = get(&c, &s, "/api/v1/vehicles").await;
    assert_eq!(status, 400);
    // Still serving, and the kept fixes are there.
    let (status, _) = get(&c, &s, "/api/v1/vehicles/keep-2").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_full_pipeline_answers_503_with_retry_after_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Room for 10 queued fixes only, one worker.
    let s = Server::start_with(
        dir.path(),
        &[
            ("KICKSTAND_ENGINE__QUEUE_FIXES", "10"),
            ("KICKSTAND_ENGINE__WORKERS", "1"),
        ],
    );
    let c = client();
    let t = now_ms() - 100_000;
    let mut tasks = Vec::new();
    for r in 0..64 {
        let c = c.clone();
        let url = s.url("/api/v1/telemetry");
        tasks.push(tokio::spawn(async move {
            let batch: Vec<Value> = (0..10)
                .map(|i| fix(&format!("v{r}-{i}"), t, 1.0, 1.0))
                .collect();
            let mut refused = 0;
            loop {
                let resp = c.post(&url).json(&batch).send().await.unwrap();
                match resp.status().as_u16() {
                    202 => return refused,
                    503 => {
                        assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
                        assert_eq!(
                            resp.headers().get("content-type").unwrap(),
                            "application/problem+json"
                        );
                        refused += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    assert!(
        refused > 0,
        "64 concurrent requests into room for one must meet backpressure"
    );
    let (status, v) = get(&c, &s, "/api/v1/fleet/summary").await;
    assert_eq!(status, 200);
    assert_eq!(v["vehicles"], 640, "every retried fix arrived exactly once");
    let m = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("kickstand_ingest_accepted_fixes_total 640"),
        "{m}"
    );
}

#[tokio::test]
async fn ingest_requests_in_flight_are_bounded() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &[
            ("KICKSTAND_HTTP__MAX_INFLIGHT_INGEST", "1"),
            ("KICKSTAND_HTTP__BODY_TIMEOUT_SECS", "2"),
        ],
    );
    let c = client();
    // A slow client: headers and half a chunked body, then silence. It holds the only slot.
    let mut slow = std::net::TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"POST /api/v1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[{\"ve\r\n")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = c
        .post(s.url("/api/v1/telemetry"))
        .json(&fix("a", now_ms(), 1.0, 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    let v: Value = r.json().await.unwrap();
    assert!(v["detail"].as_str().unwrap().contains("in flight"), "{v}");
    // Queries are not held up by it, and the slot comes back when the body times out.
    assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut slow, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let r = c
        .post(s.url("/api/v1/telemetry"))
        .json(&fix("a", now_ms(), 1.0, 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}
