//! Fleet intelligence through a real `kickstand run`: geofences over HTTP, quality filters,
//! events computed by the workers, the events API and stream, restart, OsmAnd devices.

mod common;

use common::{Server, client, fix, get_json, now_ms};
use serde_json::{Value, json};

/// A square ring around (lat, lon) of half-size `d` degrees, as GeoJSON positions.
fn square(lat: f64, lon: f64, d: f64) -> Value {
    json!([[
        [lon - d, lat - d],
        [lon + d, lat - d],
        [lon + d, lat + d],
        [lon - d, lat + d],
        [lon - d, lat - d]
    ]])
}

fn polygon(lat: f64, lon: f64, d: f64) -> Value {
    json!({"type": "Polygon", "coordinates": square(lat, lon, d)})
}

const LAT: f64 = 52.52;
const LON: f64 = 13.40;

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn send(c: &reqwest::Client, s: &Server, fixes: Value) {
    let (status, body) = post(c, s.url("/api/v1/telemetry"), &fixes).await;
    assert_eq!(status, 202, "{body}");
}

/// Every event of a vehicle, read page by page with a small limit.
async fn events_of(c: &reqwest::Client, s: &Server, vehicle: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = s.url(&format!(
            "/api/v1/events?vehicle_id={vehicle}&limit=2{cursor}"
        ));
        let page = get_json(c, &url).await;
        all.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return all,
        }
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let k = e["kind"].as_str().unwrap();
            match e["zone_id"].as_str() {
                Some(z) => format!("{k}:{z}"),
                None => k.to_owned(),
            }
        })
        .collect()
}

#[tokio::test]
async fn geofences_are_validated_and_take_effect_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let url = s.url("/api/v1/geofences");
    let bad = [
        (json!("nope"), "body"),
        (json!({"kind": "no_parking"}), "geometry"),
        (
            json!({"kind": "parking_lot", "geometry": polygon(LAT, LON, 0.01)}),
            "kind",
        ),
        (
            json!({"kind": "slow_zone", "geometry": polygon(LAT, LON, 0.01)}),
            "max_speed_kmh",
        ),
        (
            json!({"kind": "no_ride", "max_speed_kmh": 5, "geometry": polygon(LAT, LON, 0.01)}),
            "max_speed_kmh",
        ),
        (
            json!({"kind": "no_ride", "geometry": {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.1]]]}}),
            "geometry",
        ),
        (
            json!({"kind": "no_ride", "geometry": {"type": "Polygon", "coordinates": [[[13.0, 91.0], [13.1, 52.0], [13.1, 52.1], [13.0, 91.0]]]}}),
            "geometry",
        ),
        (
            json!({"kind": "no_ride", "geometry": {"type": "Point", "coordinates": [13.0, 52.0]}}),
            "geometry",
        ),
        (
            json!({"kind": "no_ride", "id": "bad id!", "geometry": polygon(LAT, LON, 0.01)}),
            "id",
        ),
        (
            json!({"kind": "no_ride", "colour": "red", "geometry": polygon(LAT, LON, 0.01)}),
            "body",
        ),
    ];
    for (body, field) in bad {
        let r = c.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["field"], field, "{body}: {p}");
    }
    // Not JSON at all.
    let r = c.post(&url).body("{{{").send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Create, conflict, read, list, replace, delete.
    let (status, created) = post(
        &c,
        url.clone(),
        &json!({"id": "np-1", "name": "Station square", "kind": "no_parking", "geometry": polygon(LAT, LON, 0.001)}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["geometry"]["type"], "Polygon");
    let ring = created["geometry"]["coordinates"][0].as_array().unwrap();
    let want = polygon(LAT, LON, 0.001);
    for (got, want) in ring.iter().zip(want["coordinates"][0].as_array().unwrap()) {
        for k in 0..2 {
            assert!((got[k].as_f64().unwrap() - want[k].as_f64().unwrap()).abs() < 1e-9);
        }
    }
    let (status, _) = post(
        &c,
        url.clone(),
        &json!({"id": "np-1", "kind": "no_parking", "geometry": polygon(LAT, LON, 0.001)}),
    )
    .await;
    assert_eq!(status, 409);
    // A GeoJSON Feature works too, with a generated id.
    let feature = json!({"type": "Feature", "properties": {"name": "Park", "kind": "slow_zone", "max_speed_kmh": 10},
        "geometry": {"type": "MultiPolygon", "coordinates": [square(LAT + 0.01, LON, 0.001), square(LAT - 0.01, LON, 0.001)]}});
    let (status, slow) = post(&c, url.clone(), &feature).await;
    assert_eq!(status, 201, "{slow}");
    assert!(slow["id"].as_str().unwrap().starts_with("gf_"));
    assert_eq!(slow["geometry"]["type"], "MultiPolygon");
    let listed = get_json(&c, &url).await;
    assert_eq!(listed["geofences"].as_array().unwrap().len(), 2);
    assert_eq!(
        get_json(&c, &s.url("/api/v1/geofences/np-1")).await["name"],
        "Station square"
    );
    let r = c.get(s.url("/api/v1/geofences/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // A vehicle parks in the zone: the event comes from the zone just created.
    let t = now_ms() - 60_000;
    let mut f = fix("s-park", t, LAT, LON);
    f["state"] = json!("available");
    send(&c, &s, json!([f])).await;
    let ev = kinds(&events_of(&c, &s, "s-park").await);
    assert!(ev.contains(&"geofence_entered:np-1".to_owned()), "{ev:?}");
    assert!(
        ev.contains(&"parked_in_no_parking:np-1".to_owned()),
        "{ev:?}"
    );

    // Replaced with a zone elsewhere: the next fix leaves it.
    let r = c
        .put(s.url("/api/v1/geofences/np-1"))
        .json(&json!({"kind": "no_parking", "geometry": polygon(LAT + 1.0, LON, 0.001)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut f = fix("s-park", t + 1000, LAT, LON);
    f["state"] = json!("available");
    send(&c, &s, json!([f])).await;
    let ev = kinds(&events_of(&c, &s, "s-park").await);
    assert_eq!(ev.last().unwrap(), "geofence_exited:np-1", "{ev:?}");

    let r = c
        .delete(s.url("/api/v1/geofences/np-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .delete(s.url("/api/v1/geofences/np-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop();
}

#[tokio::test]
async fn events_follow_a_ride_and_bad_fixes_are_flagged_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    let zones = [
        json!({"id": "area", "kind": "operating_area", "geometry": polygon(LAT, LON, 0.02)}),
        json!({"id": "slow", "kind": "slow_zone", "max_speed_kmh": 10, "geometry": polygon(LAT, LON + 0.005, 0.002)}),
    ];
    for z in &zones {
        assert_eq!(post(&c, s.url("/api/v1/geofences"), z).await.0, 201);
    }
    let t = now_ms() - 3_600_000;
    let at = |dt: i64, lat: f64, lon: f64, state: &str, speed: f64, battery: f64| {
        let mut f = fix("s-1", t + dt, lat, lon);
        f["state"] = json!(state);
        f["speed_kmh"] = json!(speed);
        f["battery_pct"] = json!(battery);
        f
    };
    let ride = vec![
        at(0, LAT, LON, "available", 0.0, 50.0),
        at(60_000, LAT, LON + 0.005, "on_trip", 20.0, 49.0), // into the slow zone, too fast
        // 1,000 km away a second later: a GPS jump, flagged and ignored.
        at(61_000, LAT + 9.0, LON, "on_trip", 20.0, 49.0),
        at(660_000, LAT + 0.03, LON, "on_trip", 15.0, 12.0), // out of the area, battery low
        at(720_000, LAT + 0.03, LON, "available", 0.0, 12.0),
    ];
    send(&c, &s, json!(ride)).await;
    // The same fixes again (a device retry): no new event.
    let (status, body) = post(&c, s.url("/api/v1/telemetry"), &json!(ride)).await;
    assert_eq!(
        (status, body["duplicates"].as_u64()),
        (202, Some(5)),
        "{body}"
    );

    let events = events_of(&c, &s, "s-1").await;
    let want = [
        "state_changed",
        "geofence_entered:area",
        "state_changed",
        "geofence_entered:slow",
        "speeding_in_slow_zone:slow",
        "geofence_exited:area",
        "geofence_exited:slow",
        "left_operating_area",
        "battery_low",
        "state_changed",
    ];
    assert_eq!(kinds(&events), want);
    let speeding = &events[4];
    assert_eq!(
        (
            speeding["speed_kmh"].as_f64(),
            speeding["max_speed_kmh"].as_f64()
        ),
        (Some(20.0), Some(10.0))
    );
    assert_eq!(events[2]["from_state"], "available");
    assert_eq!(events[2]["to_state"], "on_trip");

    // Filters: kind list, time range, zone; bad parameters.
    let low = get_json(&c, &s.url("/api/v1/events?kind=battery_low,stale")).await;
    assert_eq!(low["events"].as_array().unwrap().len(), 1);
    let from = kickstand_domain::timefmt::format_ms(t + 100_000);
    let late = get_json(
        &c,
        &s.url(&format!("/api/v1/events?vehicle_id=s-1&from={from}")),
    )
    .await;
    assert_eq!(late["events"].as_array().unwrap().len(), 5);
    let slow = get_json(&c, &s.url("/api/v1/events?zone_id=slow")).await;
    assert_eq!(slow["events"].as_array().unwrap().len(), 3);
    for bad in [
        "kind=nope",
        "from=yesterday",
        "limit=0",
        "cursor=x",
        "vehicle_id=a%20b",
        "colour=red",
    ] {
        let r = c
            .get(s.url(&format!("/api/v1/events?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    // The jump is in history with its flag, and never became the latest state.
    let v = get_json(&c, &s.url("/api/v1/vehicles/s-1")).await;
    assert!(
        (v["lat"].as_f64().unwrap() - (LAT + 0.03)).abs() < 1e-6,
        "{v}"
    );
    let from = kickstand_domain::timefmt::format_ms(t - 1);
    let track = get_json(
        &c,
        &s.url(&format!("/api/v1/vehicles/s-1/track?from={from}")),
    )
    .await;
    let fixes = track["fixes"].as_array().unwrap();
    assert_eq!(fixes.len(), 5);
    assert_eq!(fixes[2]["quality"], json!(["jump"]));
    assert!(fixes.iter().filter(|f| f.get("quality").is_some()).count() == 1);
    let metrics = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kickstand_quality_flagged_fixes_total{reason=\"jump\"} 1"),
        "{metrics}"
    );

    // After a restart the events are there, the flag too, and replaying makes no new event.
    s.stop();
    let s = Server::start(dir.path());
    let (status, _) = post(&c, s.url("/api/v1/telemetry"), &json!(ride)).await;
    assert_eq!(status, 202);
    assert_eq!(kinds(&events_of(&c, &s, "s-1").await), want);
    let v = get_json(&c, &s.url("/api/v1/vehicles/s-1")).await;
    assert!(
        (v["lat"].as_f64().unwrap() - (LAT + 0.03)).abs() < 1e-6,
        "{v}"
    );
    // The next real fix continues from there: battery back up.
    send(
        &c,
        &s,
        json!([at(780_000, LAT + 0.03, LON, "available", 0.0, 25.0)]),
    )
    .await;
    assert_eq!(
        kinds(&events_of(&c, &s, "s-1").await).last().unwrap(),
        "battery_recovered"
    );
    s.stop();
}

#[tokio::test]
async fn silent_vehicles_become_stale_and_the_stream_carries_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &[("KICKSTAND_EVENTS__STALE_AFTER_SECS", "2")]);
    let c = client();
    let mut stream = c
        .get(s.url("/api/v1/stream?events=stale,reporting_again&interval_ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    send(&c, &s, json!([fix("s-quiet", now_ms(), LAT, LON)])).await;
    // Read the stream until the stale event arrives (within the threshold plus a sweep).
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while !seen.contains("event: event") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("a stale event within 15 s")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = seen
        .split("event: event\ndata: ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    let e: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (e["kind"].as_str(), e["vehicle_id"].as_str()),
        (Some("stale"), Some("s-quiet"))
    );
    send(&c, &s, json!([fix("s-quiet", now_ms(), LAT, LON)])).await;
    let ev = kinds(&events_of(&c, &s, "s-quiet").await);
    assert_eq!(ev, ["stale", "reporting_again"]);
    let r = c
        .get(s.url("/api/v1/stream?events=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.stop();
}

#[tokio::test]
async fn osmand_devices_report_by_query_form_and_traccar_json() {
    let dir = tempfile::tempdir().unwrap();
    // A free port for the protocol's own listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let s = Server::start_with(dir.path(), &[("KICKSTAND_OSMAND__LISTEN", &listen)]);
    let c = client();
    let ts = now_ms() / 1000 - 30;
    // Query string on GET, as OsmAnd sends it: speed in knots.
    let r = c
        .get(s.url(&format!(
            "/osmand?id=tr-1&lat={LAT}&lon={LON}&timestamp={ts}&speed=10&bearing=90&batt=80&accuracy=5"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = get_json(&c, &s.url("/api/v1/vehicles/tr-1")).await;
    assert_eq!(v["speed_kmh"].as_f64(), Some(18.5));
    assert_eq!(v["battery_pct"].as_f64(), Some(80.0));
    assert_eq!(v["heading_deg"].as_f64(), Some(90.0));
    // A form body on the protocol port, at `/`.
    let r = c
        .post(format!("http://{listen}/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "id=tr-2&location={LAT}%2C{LON}&timestamp={}",
            ts * 1000
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get_json(&c, &s.url("/api/v1/vehicles/tr-2")).await["lat"].as_f64(),
        Some(LAT)
    );
    // Traccar Client 9+ JSON: speed in m/s, battery 0-1.
    let traccar = json!({"device_id": "tr-3", "location": {
        "timestamp": kickstand_domain::timefmt::format_ms(ts * 1000),
        "coords": {"latitude": LAT, "longitude": LON, "speed": 5.0, "heading": 180.0, "accuracy": 4.0, "altitude": 40.0},
        "is_moving": true, "odometer": 1234.0, "battery": {"level": 0.5, "is_charging": false}}});
    let r = c
        .post(s.url("/osmand"))
        .json(&traccar)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = get_json(&c, &s.url("/api/v1/vehicles/tr-3")).await;
    assert_eq!(
        (
            v["speed_kmh"].as_f64(),
            v["battery_pct"].as_f64(),
            v["odometer_m"].as_u64()
        ),
        (Some(18.0), Some(50.0), Some(1234))
    );
    // Garbage: 400 with the parameter named; nothing stored.
    for bad in [
        "id=tr-4&lat=abc&lon=13",
        "lat=52&lon=13",
        "id=tr-4&lat=91&lon=13",
        "id=tr-4&lat=52&lon=13&timestamp=soon",
    ] {
        let r = c
            .get(s.url(&format!("/osmand?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let p: Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains(':'), "{p}");
    }
    let r = c
        .post(s.url("/osmand"))
        .header("content-type", "application/json")
        .body("[1,2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c.get(s.url("/api/v1/vehicles/tr-4")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    s.stop();
}

#[tokio::test]
async fn osmand_devices_authenticate_with_a_key_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let (s, line) = Server::start_secure(dir.path());
    let key = line
        .split("?token=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let c = client();
    let ts = now_ms() / 1000;
    let q = format!("id=tr-9&lat={LAT}&lon={LON}&timestamp={ts}");
    let r = c.get(s.url(&format!("/osmand?{q}"))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(s.url(&format!("/osmand?{q}&access_token=wrong")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(s.url(&format!("/osmand?access_token={key}&{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Geofence writes need the operate scope: a read key is refused.
    let r = c
        .post(s.url("/api/v1/geofences"))
        .json(&json!({"kind": "no_ride", "geometry": polygon(LAT, LON, 0.01)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(s.url("/api/v1/geofences"))
        .bearer_auth(&key)
        .json(&json!({"kind": "no_ride", "geometry": polygon(LAT, LON, 0.01)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    s.stop();
}

/// A ride that makes many events: states and batteries that cross the thresholds.
fn eventful_ride(t: i64) -> Vec<Value> {
    (0..40)
        .map(|i| {
            let mut f = fix("k-1", t + i * 10_000, LAT + i as f64 * 1e-4, LON);
            f["state"] = json!(if i % 4 < 2 { "available" } else { "on_trip" });
            f["battery_pct"] = json!(if i % 6 < 3 { 10.0 } else { 30.0 });
            f
        })
        .collect()
}

async fn event_keys(c: &reqwest::Client, s: &Server) -> Vec<(String, String)> {
    events_of(c, s, "k-1")
        .await
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["ts"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_kill_9_mid_stream_loses_no_event_and_repeats_none() {
    let t = now_ms() - 3_600_000;
    let ride = eventful_ride(t);
    let c = client();
    // What one clean pass makes.
    let clean_dir = tempfile::tempdir().unwrap();
    let clean = Server::start(clean_dir.path());
    for f in &ride {
        send(&c, &clean, json!([f])).await;
    }
    let want = event_keys(&c, &clean).await;
    assert!(want.len() >= 20, "{want:?}");
    clean.stop();

    // Killed after half the fixes were acked, one request possibly in flight.
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    for f in &ride[..20] {
        send(&c, &s, json!([f])).await;
    }
    let in_flight = {
        let c = c.clone();
        let url = s.url("/api/v1/telemetry");
        let f = ride[20].clone();
        tokio::spawn(async move { c.post(url).json(&json!([f])).send().await })
    };
    s.kill9();
    let _ = in_flight.await;
    // The device retries everything it was not sure of; here, everything.
    let s = Server::start(dir.path());
    for f in &ride {
        send(&c, &s, json!([f])).await;
    }
    assert_eq!(event_keys(&c, &s).await, want);
    s.stop();
}

#[tokio::test]
async fn run_can_keep_geofences_events_and_webhooks_in_postgres() {
    let Some(url) = kickstand_engine::testing::service_url("POSTGRES") else {
        return;
    };
    let schema = kickstand_engine::testing::unique_name("ks_run_fleet");
    let env = [
        ("KICKSTAND_FLEET__STORE", "postgres"),
        ("KICKSTAND_FLEET__POSTGRES__URL", url.as_str()),
        ("KICKSTAND_FLEET__POSTGRES__SCHEMA", schema.as_str()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &env);
    let c = client();
    let zone = json!({"id": "np", "kind": "no_parking", "geometry": polygon(LAT, LON, 0.001)});
    assert_eq!(post(&c, s.url("/api/v1/geofences"), &zone).await.0, 201);
    let hook = json!({"url": "http://127.0.0.1:9/hook"});
    assert_eq!(post(&c, s.url("/api/v1/webhooks"), &hook).await.0, 201);
    send(&c, &s, json!([fix("pg-1", now_ms() - 1_000, LAT, LON)])).await;
    let events = kinds(&events_of(&c, &s, "pg-1").await);
    assert!(
        events.contains(&"geofence_entered:np".to_owned()),
        "{events:?}"
    );
    s.stop();
    // Nothing of it is in the data directory; a restart finds it all in PostgreSQL.
    assert!(!dir.path().join("fleet.db").exists());
    assert!(!dir.path().join("webhooks.db").exists());
    let s = Server::start_with(dir.path(), &env);
    assert_eq!(kinds(&events_of(&c, &s, "pg-1").await), events);
    let zones = get_json(&c, &s.url("/api/v1/geofences")).await;
    assert_eq!(zones["geofences"][0]["id"], "np", "{zones}");
    let hooks = get_json(&c, &s.url("/api/v1/webhooks")).await;
    assert_eq!(
        hooks.to_string().matches("127.0.0.1:9/hook").count(),
        1,
        "{hooks}"
    );
    s.stop();
    common::drop_pg_schema(url, schema).await;
}
