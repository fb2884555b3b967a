//! `kickstand export` on a real data directory written by a real server.

mod common;

use common::{Server, client, fix, now_ms};
use serde_json::Value;
use std::process::Command;

fn export(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kickstand"))
        .arg("export")
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn exports_one_vehicle_or_the_fleet_as_ndjson_and_geojson() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    // Two vehicles, 3 hours apart per fix, so the export crosses buckets.
    let t0 = now_ms() - 10 * 3_600_000;
    let batch: Vec<Value> = (0..6)
        .flat_map(|i| {
            let ts = t0 + i * 1_800_000;
            [
                fix("a", ts, 10.0 + i as f64 * 0.001, 20.0),
                fix("b", ts, -10.0, -20.0),
            ]
        })
        .collect();
    let r = c
        .post(s.url("/api/v1/telemetry"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // A running server holds the store: export refuses with a clear message.
    let busy = export(dir.path(), &["--vehicle", "a"]);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("is a server running"),
        "{busy:?}"
    );
    s.stop();

    let from = t0.to_string();
    let to = (t0 + 3 * 3_600_000).to_string();
    let out = export(
        dir.path(),
        &["--vehicle", "a", "--from", &from, "--to", &to],
    );
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|l| l["vehicle_id"] == "a"));
    assert_eq!(lines[1]["lat"], 10.001);
    let ts: Vec<&str> = lines.iter().map(|l| l["ts"].as_str().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]));

    let file = dir.path().join("fleet.geojson");
    let out = export(
        dir.path(),
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--format",
            "geojson",
            "-o",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let fc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(fc["type"], "FeatureCollection");
    let features = fc["features"].as_array().unwrap();
    let points: usize = features
        .iter()
        .map(|f| f["geometry"]["coordinates"].as_array().unwrap().len())
        .sum();
    assert_eq!(points, 12, "both vehicles, every fix, once");
    assert!(
        features
            .iter()
            .any(|f| f["properties"]["vehicle_id"] == "b")
    );

    let bad = export(dir.path(), &["--from", "yesterday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--from"));
}
