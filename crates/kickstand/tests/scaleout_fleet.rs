//! Fleet intelligence in scale-out mode: one `serve --role ingest,api` process and two
//! `serve --role worker` processes of the real binary on the real RabbitMQ, Redis and
//! PostgreSQL (history, fleet store and webhook store in one schema of the test's own).
//! Geofences made through the API node change what the workers compute; events are stored once
//! whichever worker holds a vehicle's shard (shards move between the workers while the fixes
//! flow); a flagged fix never becomes the latest state; a webhook receiver gets every event
//! once although both workers run a dispatcher; GBFS public ids rotate after a trip.

mod common;

use common::{Deployment, Server, client, fix, get_json, now_ms};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LAT: f64 = 52.52;
const LON: f64 = 13.40;
/// Vehicles: enough to spread over the 16 shards, so both workers hold some.
const VEHICLES: usize = 24;

fn polygon(lat0: f64, lat1: f64, lon0: f64, lon1: f64) -> Value {
    json!({"type": "Polygon", "coordinates": [[
        [lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]
    ]]})
}

fn lat_of(v: usize) -> f64 {
    LAT + v as f64 * 1e-4
}

/// One fix of vehicle `v` with a state, a battery (GBFS lists no scooter without one) and a
/// speed.
fn at(v: usize, ts: i64, lat: f64, lon: f64, state: &str) -> Value {
    let mut f = fix(&format!("v-{v}"), ts, lat, lon);
    f["state"] = json!(state);
    f["battery_pct"] = json!(80.0);
    f["speed_kmh"] = json!(0.0);
    f
}

/// Polls `check` every 100 ms until it is true or `secs` pass.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every stored event, read page by page through the API node.
async fn all_events(c: &reqwest::Client, s: &Server) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get_json(c, &s.url(&format!("/api/v1/events?limit=50{cursor}"))).await;
        let events = page["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events in {page}"));
        all.extend(events.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return all,
        }
    }
}

/// `kind` or `kind:zone` of each event, per vehicle, in stored order.
fn by_vehicle(events: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        let k = e["kind"].as_str().unwrap();
        let key = match e["zone_id"].as_str() {
            Some(z) => format!("{k}:{z}"),
            None => k.to_owned(),
        };
        out.entry(e["vehicle_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(key);
    }
    out
}

/// The sum of a counter over the `/metrics` of `servers`.
async fn counter(c: &reqwest::Client, servers: &[&Server], series: &str) -> f64 {
    let mut sum = 0.0;
    for s in servers {
        let text = c
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    sum
}

/// One webhook delivery as the receiver saw it.
struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// A webhook receiver on a free local port that keeps every delivery and answers 204.
async fn receiver() -> (u16, Arc<Mutex<Vec<Delivery>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let h = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                keep.lock().unwrap().push(Delivery {
                    id: h("webhook-id"),
                    timestamp: h("webhook-timestamp"),
                    signature: h("webhook-signature"),
                    body: body.to_vec(),
                });
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_webhooks_and_feeds_work_across_processes_and_each_event_happens_once() {
    let Some(d) = Deployment::new(0) else { return };
    let mut env = d.with(
        "KICKSTAND_GBFS__ROTATION_SECRET",
        "0123456789abcdef0123456789abcdef",
    );
    // Quick hand-over of the dispatch leadership, should the first leader stop.
    env.push(("KICKSTAND_WEBHOOKS__LEADER_RETRY_MS".into(), "500".into()));
    let tmp = tempfile::tempdir().unwrap();
    let front = Server::serve(&tmp.path().join("front"), "ingest,api", &env);
    let w1 = Server::serve(&tmp.path().join("w1"), "worker", &env);
    let w2 = Server::serve(&tmp.path().join("w2"), "worker", &env);
    let c = client();

    // A webhook subscription, made on the API node (which does not dispatch), for every event.
    let (port, deliveries) = receiver().await;
    let r = c
        .post(front.url("/api/v1/webhooks"))
        .json(&json!({"url": format!("http://127.0.0.1:{port}/hook")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let secret = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    // The operating area and a no-parking zone inside it, made on the API node.
    for zone in [
        json!({"id": "area", "kind": "operating_area",
               "geometry": polygon(LAT - 0.01, LAT + 0.01, LON - 0.01, LON + 0.01)}),
        json!({"id": "np", "kind": "no_parking",
               "geometry": polygon(LAT - 0.003, LAT + 0.005, LON - 0.003, LON + 0.003)}),
    ] {
        let r = c
            .post(front.url("/api/v1/geofences"))
            .json(&zone)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let zones = get_json(&c, &front.url("/gbfs/3.0/geofencing_zones.json")).await;
    assert_eq!(
        zones["data"]["geofencing_zones"]["features"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{zones}"
    );
    // Workers look at the geofence version at most once a second.
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let mut stream = c
        .get(front.url("/api/v1/stream?events=all&interval_ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    // Each vehicle rides: in the area, parked in the no-parking zone, out of the area; then
    // its GPS reports 0°/0° (flagged). One submission per step, with pauses, so shards move
    // between the workers (rebalancing every second) while the rides go on.
    let t0 = now_ms() - 300_000;
    let steps: [(i64, f64, &str); 4] = [
        (0, LON - 0.005, "available"),
        (60_000, LON, "available"),
        (120_000, LON + 0.012, "available"),
        (180_000, 0.0, "available"),
    ];
    for (dt, lon, state) in steps {
        let body: Vec<Value> = (0..VEHICLES)
            .map(|v| {
                let lat = if lon == 0.0 { 0.0 } else { lat_of(v) };
                at(v, t0 + dt, lat, lon, state)
            })
            .collect();
        let r = c
            .post(front.url("/api/v1/telemetry"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let want: Vec<String> = [
        "state_changed",
        "geofence_entered:area",
        "geofence_entered:np",
        "parked_in_no_parking:np",
        "geofence_exited:area",
        "geofence_exited:np",
        "left_operating_area",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let total = VEHICLES * want.len();
    let started = Instant::now();
    loop {
        let events = all_events(&c, &front).await;
        if events.len() >= total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {total} events stored: {:?}",
            events.len(),
            by_vehicle(&events)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a duplicate the time to show up, then check each event is there once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = all_events(&c, &front).await;
    assert_eq!(events.len(), total);
    let per_vehicle = by_vehicle(&events);
    assert_eq!(per_vehicle.len(), VEHICLES);
    for (v, kinds) in &per_vehicle {
        assert_eq!(kinds, &want, "{v}");
    }
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), total);

    // The 0°/0° fix is in history with its flag, and never became the latest state.
    for v in 0..VEHICLES {
        let latest = get_json(&c, &front.url(&format!("/api/v1/vehicles/v-{v}"))).await;
        assert!(
            (latest["lat"].as_f64().unwrap() - lat_of(v)).abs() < 1e-6
                && (latest["lon"].as_f64().unwrap() - (LON + 0.012)).abs() < 1e-6,
            "v-{v}: {latest}"
        );
    }
    let track = get_json(
        &c,
        &front.url(&format!(
            "/api/v1/vehicles/v-3/track?from={}&to={}",
            t0 - 1,
            now_ms()
        )),
    )
    .await;
    let fixes = track["fixes"].as_array().unwrap();
    assert_eq!(fixes.len(), 4, "{track}");
    assert_eq!(fixes[3]["quality"], json!(["zero_coordinates"]));
    // Counted once, by whichever worker stored the fix.
    let workers = [&w1, &w2];
    let flagged = counter(
        &c,
        &workers,
        "kickstand_quality_flagged_fixes_total{reason=\"zero_coordinates\"}",
    )
    .await;
    assert_eq!(flagged, VEHICLES as f64);

    // The live stream on the API node carried the events.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.matches("event: event").count() < total {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {total} events in the stream",
                    seen.matches("event: event").count()
                )
            })
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream);

    // GBFS from the API node: every vehicle, by a public id. Then v-0 takes a trip: its public
    // id changes (the trip end comes from the shared event store), the others' stay.
    let status = get_json(&c, &front.url("/gbfs/3.0/vehicle_status.json")).await;
    let listed = |status: &Value| -> BTreeMap<String, String> {
        status["data"]["vehicles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let lat = v["lat"].as_f64().unwrap();
                let id = v["vehicle_id"].as_str().unwrap().to_owned();
                (format!("{lat:.4}"), id)
            })
            .collect()
    };
    let before = listed(&status);
    assert_eq!(before.len(), VEHICLES, "{status}");
    assert!(!status.to_string().contains("v-0"));
    let trip = json!([
        at(0, t0 + 200_000, LAT, LON + 0.012, "on_trip"),
        at(0, t0 + 220_000, LAT, LON + 0.012, "available"),
    ]);
    let r = c
        .post(front.url("/api/v1/telemetry"))
        .json(&trip)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let total = total + 2;
    eventually(20, "the trip's events are stored", || async {
        all_events(&c, &front).await.len() >= total
    })
    .await;
    let after = listed(&get_json(&c, &front.url("/gbfs/3.0/vehicle_status.json")).await);
    assert_eq!(after.len(), VEHICLES);
    let changed: Vec<&String> = before
        .iter()
        .filter(|(lat, id)| after.get(*lat) != Some(id))
        .map(|(lat, _)| lat)
        .collect();
    assert_eq!(changed, [&format!("{LAT:.4}")], "only v-0's id rotates");

    // The receiver got every event once, signed, although both workers run a dispatcher.
    eventually(20, "every event is delivered", || async {
        deliveries.lock().unwrap().len() >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let events = all_events(&c, &front).await;
    assert_eq!(events.len(), total);
    {
        let got = deliveries.lock().unwrap();
        let delivered: BTreeSet<&str> = got.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(got.len(), total, "a duplicate delivery");
        let stored: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(delivered, stored);
        let now = (now_ms() / 1000) as u64;
        for d in got.iter() {
            kickstand_webhooks::verify(&secret, &d.timestamp, &d.signature, &d.body, now, 300)
                .unwrap_or_else(|e| panic!("{}: {e:?}", d.id));
        }
    }
    let counted = counter(
        &c,
        &workers,
        "kickstand_events_total{kind=\"left_operating_area\"}",
    )
    .await;
    assert_eq!(counted, VEHICLES as f64);

    for s in [front, w1, w2] {
        s.stop();
    }
    d.clean_up().await;
}

/// The shard of a vehicle id among the default 16.
fn shard(id: &str) -> u64 {
    kickstand_domain::VehicleId::new(id).unwrap().stable_hash() % 16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_takes_a_shard_over_finds_its_silent_vehicles_stale() {
    let Some(d) = Deployment::new(0) else { return };
    let env = d.with("KICKSTAND_EVENTS__STALE_AFTER_SECS", "5");
    let tmp = tempfile::tempdir().unwrap();
    let front = Server::serve(&tmp.path().join("front"), "ingest,api", &env);
    let w1 = Server::serve(&tmp.path().join("w1"), "worker", &env);
    let c = client();
    // A vehicle that reports once, and one of the same shard that keeps reporting.
    let quiet = "quiet";
    let busy = (0..)
        .map(|i| format!("busy-{i}"))
        .find(|id| shard(id) == shard(quiet))
        .unwrap();
    let send = |id: String, ts: i64| {
        let c = c.clone();
        let url = front.url("/api/v1/telemetry");
        async move {
            let r = c
                .post(url)
                .json(&fix(&id, ts, LAT, LON))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    };
    let t0 = now_ms();
    send(quiet.to_owned(), t0).await;
    eventually(10, "the quiet vehicle is stored", || async {
        c.get(front.url("/api/v1/vehicles/quiet"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    // Its worker stops before the vehicle is stale; another one takes the shard over with the
    // next fix of any vehicle in it, seeded with what Redis holds.
    w1.stop();
    assert!(now_ms() < t0 + 5_000, "too slow to test the hand-over");
    assert!(all_events(&c, &front).await.is_empty());
    let w2 = Server::serve(&tmp.path().join("w2"), "worker", &env);
    send(busy.clone(), now_ms()).await;
    eventually(15, "the quiet vehicle is stale", || async {
        let events = all_events(&c, &front).await;
        events.iter().any(|e| e["vehicle_id"] == quiet)
    })
    .await;
    send(quiet.to_owned(), now_ms()).await;
    eventually(10, "the quiet vehicle reports again", || async {
        let events = all_events(&c, &front).await;
        events.iter().any(|e| e["kind"] == "reporting_again")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // (`busy` becomes stale too, 5 s after its fix, maybe before this reads.)
    let events: Vec<Value> = all_events(&c, &front)
        .await
        .into_iter()
        .filter(|e| e["vehicle_id"] == quiet)
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["stale", "reporting_again"]);
    assert_eq!(
        events[0]["ts"].as_str(),
        Some(kickstand_domain::timefmt::format_ms(t0 + 5_000).as_str())
    );
    for s in [front, w2] {
        s.stop();
    }
    d.clean_up().await;
}

#[test]
fn serve_with_some_of_the_roles_refuses_an_embedded_fleet_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kickstand"))
        .args(["serve", "--role", "worker", "--listen", "127.0.0.1:0"])
        .arg("--data")
        .arg(dir.path())
        .env("KICKSTAND_TRANSPORT__KIND", "rabbitmq")
        .env("KICKSTAND_STATE__KIND", "redis")
        .env("KICKSTAND_HISTORY__KIND", "postgres")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[fleet] store = \"postgres\""), "{stderr}");
}
