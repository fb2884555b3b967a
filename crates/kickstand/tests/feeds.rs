//! The standard feeds of a real `kickstand run` with a live demo fleet: every GBFS 3.0 file
//! against the official JSON Schemas, every MDS 2.0 endpoint against the official OpenAPI
//! models, and the GBFS privacy rules (no vehicle on a trip, a new public id after each trip).

mod common;

#[path = "../../feeds/tests/conformance/mds.rs"]
mod mds_conformance;

use common::{Server, client, fix, get_json, now_ms};
use mds_conformance::{Mds, assert_valid};
use serde_json::{Value, json};
use std::path::Path;

fn gbfs_validator(file: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../conformance/gbfs-v3.0")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the GBFS schema compiles")
}

async fn send(c: &reqwest::Client, s: &Server, fixes: Value) {
    let r = c
        .post(s.url("/api/v1/telemetry"))
        .json(&fixes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// The public id of the one listed vehicle at `lat`, if listed.
fn listed_at(status: &Value, lat: f64) -> Option<String> {
    status["data"]["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| (v["lat"].as_f64().unwrap() - lat).abs() < 1e-9)
        .map(|v| v["vehicle_id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn gbfs_files_validate_on_a_live_demo_fleet_and_hide_vehicles_on_trips() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &[]);
    let c = client();
    // A demo-like fleet through the real ingest: states, batteries, positions.
    let now = now_ms();
    let states = [
        "available",
        "on_trip",
        "reserved",
        "non_operational",
        "available",
    ];
    let fleet: Vec<Value> = (0..200)
        .map(|i| {
            let mut f = fix(
                &format!("KS-{i:04}"),
                now - 5_000,
                37.55 + i as f64 * 1e-4,
                126.97,
            );
            f["state"] = json!(states[i % states.len()]);
            f["battery_pct"] = json!(20 + (i % 80));
            f
        })
        .collect();
    send(&c, &s, json!(fleet)).await;
    let zone = json!({"id": "old-town", "name": "Old town", "kind": "slow_zone", "max_speed_kmh": 12,
        "geometry": {"type": "Polygon", "coordinates": [[[126.96, 37.55], [126.98, 37.55], [126.98, 37.57], [126.96, 37.57], [126.96, 37.55]]]}});
    let r = c
        .post(s.url("/api/v1/geofences"))
        .json(&zone)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    for file in [
        "gbfs.json",
        "manifest.json",
        "system_information.json",
        "vehicle_types.json",
        "vehicle_status.json",
        "geofencing_zones.json",
    ] {
        let r = c
            .get(s.url(&format!("/gbfs/3.0/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{file}");
        assert!(
            r.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("max-age")
        );
        let body: Value = r.json().await.unwrap();
        let v = gbfs_validator(file);
        let errors: Vec<String> = v
            .iter_errors(&body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:#?}\n{body:#}");
        assert_eq!(body["version"], "3.0");
    }
    let discovery = get_json(&c, &s.url("/gbfs/3.0/gbfs.json")).await;
    let urls: Vec<&str> = discovery["data"]["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["url"].as_str().unwrap())
        .collect();
    assert!(
        urls.contains(&s.url("/gbfs/3.0/vehicle_status.json").as_str()),
        "{urls:?}"
    );
    let zones = get_json(&c, &s.url("/gbfs/3.0/geofencing_zones.json")).await;
    assert_eq!(
        zones["data"]["geofencing_zones"]["features"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Only available and disabled vehicles are listed, never with their fleet id.
    let status = get_json(&c, &s.url("/gbfs/3.0/vehicle_status.json")).await;
    let listed = status["data"]["vehicles"].as_array().unwrap();
    assert_eq!(listed.len(), 120, "available (80) and non_operational (40)");
    assert!(!status.to_string().contains("KS-"));

    // A trip: listed before, hidden during, listed after under a new public id.
    let lat = 37.6;
    let mut a = fix("rider-1", now - 4_000, lat, 126.9);
    a["state"] = json!("available");
    a["battery_pct"] = json!(90);
    send(&c, &s, json!([a])).await;
    let before = listed_at(
        &get_json(&c, &s.url("/gbfs/3.0/vehicle_status.json")).await,
        lat,
    )
    .expect("listed");
    let mut b = fix("rider-1", now - 3_000, lat + 0.001, 126.9);
    b["state"] = json!("on_trip");
    b["battery_pct"] = json!(89);
    send(&c, &s, json!([b])).await;
    let during = get_json(&c, &s.url("/gbfs/3.0/vehicle_status.json")).await;
    assert!(listed_at(&during, lat + 0.001).is_none());
    assert!(!during.to_string().contains(&before));
    let mut e = fix("rider-1", now - 2_000, lat, 126.9);
    e["state"] = json!("available");
    e["battery_pct"] = json!(88);
    send(&c, &s, json!([e])).await;
    let after = listed_at(
        &get_json(&c, &s.url("/gbfs/3.0/vehicle_status.json")).await,
        lat,
    )
    .expect("listed again");
    assert_ne!(before, after, "the public id rotates after a trip");

    let r = c
        .get(s.url("/gbfs/3.0/station_status.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop();
}

#[tokio::test]
async fn mds_endpoints_validate_against_the_official_models() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &[]);
    let c = client();
    // A trip in the previous hour: parked, ridden for 30 minutes, parked again.
    let hour_ms = 3_600_000;
    let hour = (now_ms() / hour_ms - 1) * hour_ms;
    let at = |min: i64, lat: f64, state: &str| {
        let mut f = fix("mds-1", hour + min * 60_000, lat, 13.4);
        f["state"] = json!(state);
        f["battery_pct"] = json!(80 - min / 10);
        f
    };
    let mut fixes = vec![at(5, 52.50, "available")];
    for m in 0..=30 {
        fixes.push(at(10 + m, 52.50 + m as f64 * 0.002, "on_trip"));
    }
    fixes.push(at(45, 52.56, "available"));
    send(&c, &s, json!(fixes)).await;
    send(&c, &s, json!([fix("mds-2", hour + 6 * 60_000, 52.0, 13.0)])).await;

    let h = kickstand_domain::timefmt::format_ms(hour);
    let h = &h[..13]; // YYYY-MM-DDTHH
    let mds = Mds::load();
    let check = |path: &str, schema: &str| {
        let url = s.url(path);
        let schema = mds.endpoint(schema);
        let c = c.clone();
        async move {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            assert_eq!(
                r.headers()["content-type"],
                "application/vnd.mds+json;version=2.0"
            );
            let body: Value = r.json().await.unwrap();
            assert_valid(&schema, &body, &url);
            body
        }
    };
    let vehicles = check("/mds/vehicles", "/vehicles").await;
    assert_eq!(vehicles["vehicles"].as_array().unwrap().len(), 2);
    let device = vehicles["vehicles"][0]["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    check(&format!("/mds/vehicles/{device}"), "/vehicles/{device_id}").await;
    let status = check("/mds/vehicles/status", "/vehicles/status").await;
    assert_eq!(status["vehicles_status"].as_array().unwrap().len(), 2);
    check(
        &format!("/mds/vehicles/status/{device}"),
        "/vehicles/status/{device_id}",
    )
    .await;
    let trips = check(&format!("/mds/trips?end_time={h}"), "/trips").await;
    let trips = trips["trips"].as_array().unwrap();
    assert_eq!(trips.len(), 1, "{trips:?}");
    let trip = &trips[0];
    assert_eq!(trip["duration"].as_i64(), Some(30 * 60));
    // 30 steps of 0.002° of latitude: about 6.67 km.
    let d = trip["distance"].as_i64().unwrap();
    assert!((6600..6750).contains(&d), "{d}");
    assert_eq!(trip["route"]["features"].as_array().unwrap().len(), 31);
    let telemetry = check(&format!("/mds/telemetry?telemetry_time={h}"), "/telemetry").await;
    assert_eq!(telemetry["telemetry"].as_array().unwrap().len(), 34);
    let events = check(
        &format!("/mds/events/historical?event_time={h}"),
        "/events/historical",
    )
    .await;
    let types: Vec<Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_types"].clone())
        .collect();
    assert!(types.contains(&json!(["trip_start"])), "{types:?}");
    assert!(types.contains(&json!(["trip_end"])), "{types:?}");
    check(
        &format!(
            "/mds/events/recent?start_time={hour}&end_time={}",
            hour + hour_ms
        ),
        "/events/recent",
    )
    .await;

    // Errors: MDS error bodies with the MDS content type.
    for bad in [
        "/mds/trips",
        "/mds/trips?end_time=2024-13-01T00",
        "/mds/telemetry?telemetry_time=yesterday",
        "/mds/events/recent?start_time=1",
        "/mds/vehicles/not-a-uuid",
    ] {
        let r = c.get(s.url(bad)).send().await.unwrap();
        assert!(matches!(r.status().as_u16(), 400 | 404), "{bad}");
        assert_eq!(
            r.headers()["content-type"],
            "application/vnd.mds+json;version=2.0",
            "{bad}"
        );
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    s.stop();
}
