//! The live stream of a real server: updates for the box and nothing outside it; a client that
//! never reads slows nothing down and costs bounded memory.

mod common;

use common::{Server, client, fix, now_ms};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Reads SSE events until `want` of them arrived (or 10 s passed).
async fn events(
    resp: &mut reqwest::Response,
    buf: &mut String,
    want: usize,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < want && Instant::now() < deadline {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut kind = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if !kind.is_empty() {
                out.push((kind, serde_json::from_str(&data).unwrap()));
            }
        }
        if out.len() >= want {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(std::str::from_utf8(&c).unwrap()),
            _ => break,
        }
    }
    out
}

fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["vehicle_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn updates_arrive_for_the_box_and_not_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let t = now_ms() - 60_000;
    let post = |batch: Vec<Value>| {
        let c = c.clone();
        let url = s.url("/api/v1/telemetry");
        async move { assert_eq!(c.post(url).json(&batch).send().await.unwrap().status(), 202) }
    };
    post(vec![
        fix("inside-1", t, 37.55, 126.95),
        fix("inside-2", t, 37.56, 126.96),
        // Three hours earlier, so driving into the box later is 90 km/h, not a GPS jump
        // (which would be flagged and kept out of the latest state).
        fix("outside", t - 3 * 3_600_000, 35.1, 129.0),
    ])
    .await;
    let mut resp = c
        .get(s.url("/api/v1/stream?bbox=126.9,37.5,127.0,37.6&interval_ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    let first = events(&mut resp, &mut buf, 1).await;
    assert_eq!(first[0].0, "snapshot");
    assert_eq!(ids(&first[0].1), vec!["inside-1", "inside-2"]);
    // inside-1 moves three times within one interval and outside moves too: one update with
    // inside-1 once, at its newest position.
    post(vec![
        fix("inside-1", t + 1000, 37.551, 126.95),
        fix("inside-1", t + 2000, 37.552, 126.95),
        fix("inside-1", t + 3000, 37.553, 126.95),
        fix("outside", t - 3 * 3_600_000 + 1000, 35.101, 129.0),
    ])
    .await;
    let next = events(&mut resp, &mut buf, 1).await;
    assert_eq!(next[0].0, "update");
    assert_eq!(ids(&next[0].1), vec!["inside-1"]);
    assert_eq!(next[0].1["vehicles"][0]["lat"], 37.553);
    // A vehicle that drives into the box appears.
    post(vec![fix("outside", t + 5000, 37.58, 126.99)]).await;
    let next = events(&mut resp, &mut buf, 1).await;
    assert_eq!(ids(&next[0].1), vec!["outside"]);
    // Bad parameters are refused.
    let r = c
        .get(s.url("/api/v1/stream?bbox=1,2,3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(s.url("/api/v1/stream?interval_ms=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_client_that_never_reads_slows_nothing_and_costs_bounded_memory() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // No checkpoint during the test: its buffers would blur the memory comparison.
    let s = Server::start_with(
        dir.path(),
        &[(
            "KICKSTAND_HISTORY__EMBEDDED__CHECKPOINT_INTERVAL_MS",
            "600000",
        )],
    );
    let c = client();
    let t = now_ms() - 600_000;
    let vehicles = 5_000;
    let body = |round: i64| -> Vec<Value> {
        (0..vehicles)
            .map(|i| {
                fix(
                    &format!("v{i}"),
                    t + round * 1000,
                    37.5 + (i % 100) as f64 * 1e-3,
                    127.0 + (i / 100) as f64 * 1e-3,
                )
            })
            .collect()
    };
    // Warm up so the whole fleet exists, then time ingest with no stream open.
    let timed = |from: i64, rounds: i64| {
        let c = c.clone();
        let url = s.url("/api/v1/telemetry");
        async move {
            let started = Instant::now();
            for r in from..from + rounds {
                let resp = c.post(&url).json(&body(r)).send().await.unwrap();
                assert_eq!(resp.status(), 202);
            }
            started.elapsed()
        }
    };
    timed(0, 5).await;
    let rss0 = rss_kib(s.child.id());
    let baseline = timed(5, 20).await;
    let rss1 = rss_kib(s.child.id());
    // Ten stuck clients on the whole world at 50 ms: they ask for everything and read nothing.
    let mut stuck = Vec::new();
    for _ in 0..10 {
        let mut sock = std::net::TcpStream::connect(s.addr).unwrap();
        sock.write_all(b"GET /api/v1/stream?interval_ms=50 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stuck.push(sock);
    }
    let with_stuck = timed(25, 20).await;
    let rss2 = rss_kib(s.child.id());
    let more = timed(45, 20).await;
    let rss3 = rss_kib(s.child.id());

    eprintln!(
        "ingest of 20 rounds: {baseline:?} alone, {with_stuck:?} and {more:?} with stuck clients; RSS {rss0} → {rss1} (alone) → {rss2} → {rss3} KiB"
    );
    assert!(
        with_stuck < baseline * 3 + Duration::from_secs(2),
        "ingest slowed down: {baseline:?} → {with_stuck:?}"
    );
    assert!(
        more < baseline * 3 + Duration::from_secs(2),
        "ingest slowed down: {baseline:?} → {more:?}"
    );
    // A queue per client would hold every update it did not read: 40 rounds × 10 clients × about
    // 1 MB per update of 5,000 vehicles, some 400 MB. Pulling the state instead leaves each
    // stuck client with at most a couple of pending events (a few MB) whatever the rounds, on
    // top of what ingest itself grows (the memtables, as in the rounds without them).
    let alone = rss1.saturating_sub(rss0);
    let with_them = rss3.saturating_sub(rss1);
    assert!(
        with_them < 2 * alone + 48 * 1024,
        "stuck clients make memory grow: {alone} KiB for 20 rounds alone, {with_them} KiB for 40 rounds with them"
    );
    // And the server still answers.
    let r = c.get(s.url("/api/v1/vehicles/v1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(stuck);
}
