//! Webhook delivery against real local HTTP receivers that fail on purpose, and the HTTP API
//! through its router. Retry delays are milliseconds, so the whole file runs in seconds.
//!
//! The last part runs dispatchers of several "processes" on one PostgreSQL schema
//! (`KICKSTAND_TEST_POSTGRES_URL`; skipped with a notice when unset, a failure instead under
//! `KICKSTAND_REQUIRE_SERVICES=1`).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use kickstand_domain::VehicleId;
use kickstand_domain::event::{Event, EventKind};
use kickstand_webhooks::api::{self, WebhookService};
use kickstand_webhooks::dispatch::{Dispatcher, DispatcherHandle, EventFeed};
use kickstand_webhooks::store::{
    NewSubscription, Outcome, SqliteWebhookStore, Subscription, WebhookStore,
};
use kickstand_webhooks::{RetryPolicy, Sender, WebhookConfig, signing};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// An in-memory event feed.

#[derive(Default)]
struct MemFeed {
    events: Mutex<Vec<(u64, Event)>>,
}

impl MemFeed {
    fn push(&self, event: Event) -> u64 {
        let mut events = self.events.lock();
        let seq = events.len() as u64 + 1;
        events.push((seq, event));
        seq
    }
}

impl EventFeed for MemFeed {
    fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<(u64, Event)>, String> {
        let events = self.events.lock();
        Ok(events
            .iter()
            .filter(|(s, _)| *s > seq)
            .take(limit)
            .cloned()
            .collect())
    }

    fn head(&self) -> Result<u64, String> {
        Ok(self.events.lock().len() as u64)
    }
}

fn event(n: i64, kind: EventKind, zone: Option<&str>) -> Event {
    let v = VehicleId::new(&format!("s-{}", n % 7)).unwrap();
    Event::new(
        v,
        kind,
        1_795_600_000_000 + n,
        37_566_500,
        126_978_000,
        zone,
    )
}

// ---------------------------------------------------------------------------------------------
// A real HTTP receiver that records every request and answers as told.

#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 to everything.
    Ok,
    /// 500 to the first `n` attempts of each event, then 200.
    FailFirst(usize),
    /// Always this status.
    Always(u16),
    /// Sleeps this long, then 200.
    Sleep(Duration),
}

#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    user_agent: String,
    body: Bytes,
    answered: u16,
}

#[derive(Clone)]
struct Receiver {
    behaviour: Behaviour,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn got(&self) -> Vec<Received> {
        self.log.lock().clone()
    }

    /// The ids answered 2xx, in arrival order.
    fn delivered_ids(&self) -> Vec<String> {
        self.log
            .lock()
            .iter()
            .filter(|r| r.answered < 300)
            .map(|r| r.id.clone())
            .collect()
    }
}

async fn receive(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let id = h("webhook-id");
    let answered = match rx.behaviour {
        Behaviour::Ok => 200,
        Behaviour::Always(s) => s,
        Behaviour::FailFirst(n) => {
            let seen = rx.log.lock().iter().filter(|r| r.id == id).count();
            if seen < n { 500 } else { 200 }
        }
        Behaviour::Sleep(d) => {
            tokio::time::sleep(d).await;
            200
        }
    };
    rx.log.lock().push(Received {
        at: Instant::now(),
        id,
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        content_type: h("content-type"),
        user_agent: h("user-agent"),
        body,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

/// Starts a receiver on 127.0.0.1:0; returns it and its URL.
async fn receiver(behaviour: Behaviour) -> (Receiver, String) {
    let rx = Receiver {
        behaviour,
        log: Arc::default(),
    };
    let app = Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rx, format!("http://{addr}/hook"))
}

// ---------------------------------------------------------------------------------------------
// Set-up.

fn fast_config() -> WebhookConfig {
    WebhookConfig {
        timeout_ms: 2_000,
        max_attempts: 5,
        base_delay_ms: 100,
        backoff_factor: 2.0,
        max_delay_ms: 1_000,
        disable_after_failures: 3,
        disable_after_secs: 0,
        max_in_flight: 16,
        poll_interval_ms: 20,
        page_size: 16,
        leader_retry_ms: 50,
        allow_private_targets: true,
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<dyn WebhookStore>,
    feed: Arc<MemFeed>,
    config: WebhookConfig,
}

impl Rig {
    fn new(config: WebhookConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhooks.sqlite");
        Rig {
            store: Arc::new(SqliteWebhookStore::open(&path).unwrap()),
            _dir: dir,
            path,
            feed: Arc::default(),
            config,
        }
    }

    fn subscribe(&self, url: &str, kinds: Vec<EventKind>, zones: Vec<&str>) -> Subscription {
        let head = self.feed.head().unwrap();
        self.store
            .create(
                NewSubscription {
                    url: url.into(),
                    kinds,
                    zones: zones.into_iter().map(String::from).collect(),
                    secret: None,
                },
                head,
                0,
            )
            .unwrap()
    }

    /// Starts a dispatcher; dropping the returned sender stops it.
    fn start(
        &self,
    ) -> (
        DispatcherHandle,
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sender = Sender::new(&self.config).unwrap();
        let feed: Arc<dyn EventFeed> = self.feed.clone();
        let (handle, task) =
            Dispatcher::spawn(self.store.clone(), feed, sender, &self.config, async move {
                let _ = stop_rx.await;
            });
        (handle, task, stop_tx)
    }

    fn sub(&self, id: &str) -> Subscription {
        self.store.get(id).unwrap().unwrap()
    }
}

/// Waits (up to `secs`) for `done`.
async fn until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// Delivery.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_gets_every_event_in_order_signed_with_retries_per_policy() {
    let rig = Rig::new(fast_config());
    let (rx, url) = receiver(Behaviour::FailFirst(2)).await;
    let sub = rig.subscribe(&url, vec![], vec![]);
    let events: Vec<Event> = (0..4)
        .map(|n| event(n, EventKind::BatteryLow, None))
        .collect();
    for e in &events {
        rig.feed.push(e.clone());
    }
    let (handle, task, stop) = rig.start();
    handle.notify();
    until(20, "4 deliveries", || rx.delivered_ids().len() == 4).await;
    // The receiver answers before the dispatcher records that answer: wait for the record.
    until(5, "the last delivery recorded", || {
        rig.sub(&sub.id).cursor == 4
    })
    .await;

    // Every event, in order, each once delivered.
    let want: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(rx.delivered_ids(), want);
    let got = rx.got();
    assert_eq!(got.len(), 12, "3 attempts per event");
    // Order per subscription: no attempt of an event before the previous one was delivered.
    let firsts: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    let mut expected = Vec::new();
    for id in &want {
        expected.extend([id.as_str(); 3]);
    }
    assert_eq!(firsts, expected);

    // Signed over "timestamp.body" with the subscription's secret, with the documented headers.
    for r in &got {
        signing::verify(
            &sub.secret,
            &r.timestamp,
            &r.signature,
            &r.body,
            now_secs(),
            signing::DEFAULT_TOLERANCE_SECS,
        )
        .unwrap();
        assert!(
            signing::verify(
                "whsec_other",
                &r.timestamp,
                &r.signature,
                &r.body,
                now_secs(),
                300
            )
            .is_err()
        );
        assert_eq!(r.content_type, "application/json");
        assert!(r.user_agent.starts_with("kickstand-webhooks/"));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["id"], r.id.as_str());
        assert_eq!(body["type"], "battery_low");
        assert_eq!(body["data"]["id"], r.id.as_str());
        assert_eq!(body["data"]["kind"], "battery_low");
        assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    }

    // The spacing follows the policy: the wait after attempt n is within [0, cap(n)] (plus the
    // time it takes to send), and the caps grow exponentially (100 ms, 200 ms).
    let policy = RetryPolicy {
        base: Duration::from_millis(100),
        factor: 2.0,
        max_delay: Duration::from_secs(1),
        max_attempts: 5,
    };
    let slack = Duration::from_millis(60);
    for chunk in got.chunks(3) {
        for n in 1..3 {
            let gap = chunk[n].at - chunk[n - 1].at;
            assert!(
                gap <= policy.cap(n as u32) + slack,
                "wait after attempt {n} was {gap:?}, cap {:?}",
                policy.cap(n as u32)
            );
        }
    }

    // The delivery log: 500, 500, 200 for each event, with outcomes.
    let log = rig.store.deliveries(&sub.id, 100, None).unwrap();
    assert_eq!(log.len(), 12);
    let first: Vec<_> = log
        .iter()
        .rev()
        .take(3)
        .map(|d| (d.event_id.as_str(), d.attempt, d.status_code, d.outcome))
        .collect();
    assert_eq!(
        first,
        [
            (want[0].as_str(), 1, Some(500), Outcome::Failed),
            (want[0].as_str(), 2, Some(500), Outcome::Failed),
            (want[0].as_str(), 3, Some(200), Outcome::Delivered),
        ]
    );
    assert!(log[0].error.is_none() && log[1].error.as_deref().unwrap().starts_with("HTTP 500"));
    let s = rig.sub(&sub.id);
    assert_eq!((s.cursor, s.consecutive_failures, s.enabled), (4, 0, true));
    assert_eq!(rig.store.pending(&sub.id).unwrap(), None);

    drop(stop);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_slow_receivers_are_disabled_while_a_fast_one_keeps_receiving() {
    let config = WebhookConfig {
        timeout_ms: 600,
        max_attempts: 2,
        base_delay_ms: 20,
        disable_after_failures: 2,
        ..fast_config()
    };
    let rig = Rig::new(config);
    let (slow, slow_url) = receiver(Behaviour::Sleep(Duration::from_secs(5))).await;
    let (dead, dead_url) = receiver(Behaviour::Always(503)).await;
    let (fast, fast_url) = receiver(Behaviour::Ok).await;
    let s_slow = rig.subscribe(&slow_url, vec![], vec![]);
    let s_dead = rig.subscribe(&dead_url, vec![], vec![]);
    let s_fast = rig.subscribe(&fast_url, vec![], vec![]);
    let (handle, task, stop) = rig.start();

    let start = Instant::now();
    for n in 0..5 {
        rig.feed.push(event(n, EventKind::Stale, None));
    }
    handle.notify();
    until(5, "the fast receiver", || fast.delivered_ids().len() == 5).await;
    let fast_took = start.elapsed();
    // The slow receiver's first attempt has not even timed out yet.
    assert!(
        rig.store
            .deliveries(&s_slow.id, 1, None)
            .unwrap()
            .is_empty(),
        "the fast receiver waited for the slow one ({fast_took:?})"
    );
    assert!(
        fast_took < Duration::from_millis(600),
        "the fast receiver waited {fast_took:?}"
    );

    until(10, "both failing subscriptions disabled", || {
        !rig.sub(&s_slow.id).enabled && !rig.sub(&s_dead.id).enabled
    })
    .await;
    for (id, status) in [(&s_slow.id, None), (&s_dead.id, Some(503))] {
        let s = rig.sub(id);
        assert_eq!(s.consecutive_failures, 2);
        assert!(
            s.disabled_reason
                .as_deref()
                .unwrap()
                .contains("2 events in a row")
        );
        // Two events given up after two attempts each; the cursor is after the second.
        assert_eq!(s.cursor, 2);
        let log = rig.store.deliveries(id, 100, None).unwrap();
        let outcomes: Vec<_> = log.iter().rev().map(|d| d.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Failed,
                Outcome::GaveUp,
                Outcome::Failed,
                Outcome::GaveUp
            ]
        );
        assert!(log.iter().all(|d| d.status_code == status));
        if status.is_none() {
            assert!(
                log[0].error.as_deref().unwrap().contains("timed out"),
                "{:?}",
                log[0].error
            );
        }
    }
    assert_eq!(dead.got().len(), 4);
    // No more attempts once disabled.
    let attempts = slow.got().len() + dead.got().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(slow.got().len() + dead.got().len(), attempts);
    assert_eq!(rig.sub(&s_fast.id).cursor, 5);

    // Re-enabling resumes where it stopped.
    rig.store
        .update(
            &s_dead.id,
            kickstand_webhooks::store::SubscriptionPatch {
                url: Some(fast_url.clone()),
                enabled: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
    handle.notify();
    until(5, "the re-enabled subscription", || {
        rig.sub(&s_dead.id).cursor == 5
    })
    .await;
    assert_eq!(fast.delivered_ids().len(), 5 + 3);

    drop(stop);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_and_zone_filters_and_new_subscriptions_start_at_the_head() {
    let rig = Rig::new(fast_config());
    rig.feed.push(event(100, EventKind::BatteryLow, None)); // before any subscription
    let (all, all_url) = receiver(Behaviour::Ok).await;
    let (kinds, kinds_url) = receiver(Behaviour::Ok).await;
    let (zones, zones_url) = receiver(Behaviour::Ok).await;
    let (both, both_url) = receiver(Behaviour::Ok).await;
    let subs = [
        rig.subscribe(&all_url, vec![], vec![]),
        rig.subscribe(
            &kinds_url,
            vec![EventKind::GeofenceEntered, EventKind::BatteryLow],
            vec![],
        ),
        rig.subscribe(&zones_url, vec![], vec!["z1", "z2"]),
        rig.subscribe(&both_url, vec![EventKind::GeofenceEntered], vec!["z2"]),
    ];
    let evs = [
        event(1, EventKind::GeofenceEntered, Some("z1")),
        event(2, EventKind::GeofenceExited, Some("z2")),
        event(3, EventKind::BatteryLow, None),
        event(4, EventKind::GeofenceEntered, Some("z2")),
        event(5, EventKind::Stale, None),
        event(6, EventKind::GeofenceEntered, Some("z3")),
    ];
    for e in &evs {
        rig.feed.push(e.clone());
    }
    let (_handle, task, stop) = rig.start();
    until(5, "every cursor at the head", || {
        subs.iter().all(|s| rig.sub(&s.id).cursor == 7)
    })
    .await;
    let ids = |idx: &[usize]| -> Vec<String> { idx.iter().map(|&i| evs[i].id.clone()).collect() };
    assert_eq!(all.delivered_ids(), ids(&[0, 1, 2, 3, 4, 5]));
    assert_eq!(kinds.delivered_ids(), ids(&[0, 2, 3, 5]));
    assert_eq!(zones.delivered_ids(), ids(&[0, 1, 3]));
    assert_eq!(both.delivered_ids(), ids(&[3]));
    drop(stop);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_survives_a_restart_without_losing_events() {
    let config = WebhookConfig {
        page_size: 8,
        ..fast_config()
    };
    let mut rig = Rig::new(config);
    let (rx, url) = receiver(Behaviour::Sleep(Duration::from_millis(5))).await;
    let sub = rig.subscribe(&url, vec![], vec![]);
    let events: Vec<Event> = (0..60)
        .map(|n| event(n, EventKind::StateChanged, None))
        .collect();
    for e in &events {
        rig.feed.push(e.clone());
    }
    let (_h, task, stop) = rig.start();
    until(10, "some deliveries", || rx.got().len() >= 15).await;
    drop(stop);
    task.await.unwrap();
    let stopped_at = rig.sub(&sub.id).cursor;
    assert!((10..60).contains(&stopped_at), "cursor {stopped_at}");

    // A new process: the store reopened from the same file.
    rig.store = Arc::new(SqliteWebhookStore::open(&rig.path).unwrap());
    assert_eq!(rig.sub(&sub.id).cursor, stopped_at);
    let (_h, task, stop) = rig.start();
    until(10, "the rest", || rig.sub(&sub.id).cursor == 60).await;
    drop(stop);
    task.await.unwrap();

    let got = rx.delivered_ids();
    let mut deduped = got.clone();
    deduped.dedup();
    let want: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(deduped, want, "every event, in order");
    assert!(
        got.len() - want.len() <= 1,
        "at most the in-flight one twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_to_a_local_receiver() {
    let rig = Rig::new(WebhookConfig {
        page_size: 256,
        ..fast_config()
    });
    let (rx, url) = receiver(Behaviour::Ok).await;
    let subs: Vec<_> = (0..4)
        .map(|_| rig.subscribe(&url, vec![], vec![]))
        .collect();
    let n = 500;
    for i in 0..n {
        rig.feed.push(event(i, EventKind::StateChanged, None));
    }
    let start = Instant::now();
    let (_h, task, stop) = rig.start();
    until(60, "every delivery", || rx.got().len() == 4 * n as usize).await;
    let took = start.elapsed();
    eprintln!(
        "{} deliveries to a local receiver over 4 subscriptions in {took:?}: {:.0}/s",
        4 * n,
        (4 * n) as f64 / took.as_secs_f64()
    );
    until(5, "the cursors", || {
        subs.iter().all(|s| rig.sub(&s.id).cursor == n as u64)
    })
    .await;
    drop(stop);
    task.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The HTTP API through its router.

fn api_app(rig: &Rig) -> (Router, Arc<WebhookService>) {
    let feed: Arc<dyn EventFeed> = rig.feed.clone();
    let svc = Arc::new(WebhookService {
        store: rig.store.clone(),
        feed,
        sender: Sender::new(&rig.config).unwrap(),
        config: rig.config.clone(),
        dispatcher: None,
    });
    let (router, _doc) = api::router::<Arc<WebhookService>>().split_for_parts();
    (router.with_state(svc.clone()), svc)
}

async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, ct, json)
}

#[tokio::test]
async fn api_crud_and_the_secret_shown_once() {
    let rig = Rig::new(fast_config());
    rig.feed.push(event(1, EventKind::Stale, None));
    let (app, _svc) = api_app(&rig);
    let (st, ct, created) = call(
        &app,
        "POST",
        "/api/v1/webhooks",
        r#"{"url":"https://hooks.example.com/k","kinds":["battery_low","stale"],"zones":["z1"]}"#,
    )
    .await;
    assert_eq!((st, ct.as_str()), (StatusCode::CREATED, "application/json"));
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["kinds"], json!(["battery_low", "stale"]));
    assert_eq!(created["cursor"], 1, "starts at the head");

    let (st, _, got) = call(&app, "GET", &format!("/api/v1/webhooks/{id}"), "").await;
    assert_eq!(st, StatusCode::OK);
    assert!(got.get("secret").is_none(), "never shown again");
    let (_, _, list) = call(&app, "GET", "/api/v1/webhooks", "").await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert!(list["webhooks"][0].get("secret").is_none());

    let (st, _, patched) = call(
        &app,
        "PATCH",
        &format!("/api/v1/webhooks/{id}"),
        r#"{"enabled":false,"kinds":[]}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (patched["enabled"].clone(), patched["kinds"].clone()),
        (json!(false), json!([]))
    );

    let (st, _, _) = call(&app, "DELETE", &format!("/api/v1/webhooks/{id}"), "").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, ct, p) = call(&app, "GET", &format!("/api/v1/webhooks/{id}"), "").await;
    assert_eq!(
        (st, ct.as_str()),
        (StatusCode::NOT_FOUND, "application/problem+json")
    );
    assert_eq!(p["status"], 404);
    let (st, _, _) = call(&app, "DELETE", &format!("/api/v1/webhooks/{id}"), "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn api_refuses_garbage_with_problem_json_naming_the_field() {
    let rig = Rig::new(WebhookConfig {
        allow_private_targets: false,
        ..fast_config()
    });
    let (app, _svc) = api_app(&rig);
    let cases: &[(&str, Option<&str>, &str)] = &[
        (r#"{"url":"not a url"}"#, Some("url"), "not a URL"),
        (r#"{"url":"ftp://example.com/x"}"#, Some("url"), "scheme"),
        (
            r#"{"url":"http://127.0.0.1:9/x"}"#,
            Some("url"),
            "not a public address",
        ),
        (
            r#"{"url":"https://example.com/","kinds":["battery_low","teleported"]}"#,
            Some("kinds[1]"),
            "unknown event kind \"teleported\"",
        ),
        (
            r#"{"url":"https://example.com/","kinds":"stale"}"#,
            Some("kinds"),
            "invalid type",
        ),
        (
            r#"{"url":"https://example.com/","zones":[""]}"#,
            Some("zones[0]"),
            "zone id",
        ),
        (
            r#"{"url":"https://example.com/","secret":"short"}"#,
            Some("secret"),
            "16 to 256",
        ),
        (
            r#"{"url":"https://example.com/","colour":"red"}"#,
            Some("colour"),
            "unknown field",
        ),
        (r#"{"kinds":[]}"#, None, "missing field `url`"),
        ("url=https://example.com/", None, "not valid JSON"),
        (
            r#"{"url":"https://example.com/"} trailing"#,
            None,
            "not valid JSON",
        ),
        ("", None, "empty"),
    ];
    for (body, field, detail) in cases {
        let (st, ct, p) = call(&app, "POST", "/api/v1/webhooks", body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(ct, "application/problem+json", "{body}");
        assert_eq!(p["status"], 400);
        assert_eq!(p["type"], "about:blank");
        assert!(p["title"].is_string());
        assert!(
            p["detail"].as_str().unwrap().contains(detail),
            "{body}: {}",
            p["detail"]
        );
        assert_eq!(p.get("field").and_then(Value::as_str), *field, "{body}");
    }
    assert!(rig.store.list().unwrap().is_empty());

    let (st, _, p) = call(
        &app,
        "PATCH",
        "/api/v1/webhooks/wh_none",
        r#"{"enabled":"yes"}"#,
    )
    .await;
    assert_eq!(
        (st, p["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("enabled"))
    );
    let (st, _, _) = call(
        &app,
        "PATCH",
        "/api/v1/webhooks/wh_none",
        r#"{"enabled":true}"#,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_test_ping_and_delivery_log_pages() {
    let rig = Rig::new(fast_config());
    let (app, _svc) = api_app(&rig);
    let (rx, url) = receiver(Behaviour::FailFirst(1)).await;
    let body = json!({"url": url, "secret": "0123456789abcdef-secret"}).to_string();
    let (st, _, created) = call(&app, "POST", "/api/v1/webhooks", &body).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(created["secret"], "0123456789abcdef-secret");
    let id = created["id"].as_str().unwrap().to_owned();

    let mut results = Vec::new();
    for _ in 0..3 {
        let (st, _, r) = call(&app, "POST", &format!("/api/v1/webhooks/{id}/test"), "").await;
        assert_eq!(st, StatusCode::OK);
        results.push((r["delivered"].clone(), r["status_code"].clone()));
    }
    // Each ping has its own id, so the receiver's "fail the first attempt" fails each once.
    assert_eq!(results[0], (json!(false), json!(500)));
    let got = rx.got();
    assert_eq!(got.len(), 3);
    for r in &got {
        signing::verify(
            "0123456789abcdef-secret",
            &r.timestamp,
            &r.signature,
            &r.body,
            now_secs(),
            300,
        )
        .unwrap();
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "ping");
        assert_eq!(body["data"]["subscription_id"], id.as_str());
    }

    let (st, _, page) = call(
        &app,
        "GET",
        &format!("/api/v1/webhooks/{id}/deliveries?limit=2"),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let rows = page["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["event_id"], got[2].id.as_str(), "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, _, page2) = call(
        &app,
        "GET",
        &format!("/api/v1/webhooks/{id}/deliveries?limit=2&cursor={cursor}"),
        "",
    )
    .await;
    let rows2 = page2["deliveries"].as_array().unwrap();
    assert_eq!(rows2.len(), 1);
    assert_eq!(rows2[0]["event_id"], got[0].id.as_str());
    assert_eq!(rows2[0]["status_code"], 500);
    assert_eq!(rows2[0]["outcome"], "failed");
    assert!(page2["next_cursor"].is_null());
    // Pings change no delivery state.
    assert_eq!(rig.store.get(&id).unwrap().unwrap().consecutive_failures, 0);

    for q in ["limit=0", "limit=x", "cursor=abc", "colour=red"] {
        let (st, ct, _) = call(
            &app,
            "GET",
            &format!("/api/v1/webhooks/{id}/deliveries?{q}"),
            "",
        )
        .await;
        assert_eq!(
            (st, ct.as_str()),
            (StatusCode::BAD_REQUEST, "application/problem+json"),
            "{q}"
        );
    }
    let (st, _, _) = call(&app, "GET", "/api/v1/webhooks/wh_none/deliveries", "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _, _) = call(&app, "POST", "/api/v1/webhooks/wh_none/test", "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[test]
fn the_openapi_document_lists_every_route() {
    let (_router, doc) = api::router::<Arc<WebhookService>>().split_for_parts();
    let paths: HashMap<String, Vec<String>> = doc
        .paths
        .paths
        .iter()
        .map(|(p, item)| {
            let v = serde_json::to_value(item).unwrap();
            let mut methods: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            methods.sort();
            (p.clone(), methods)
        })
        .collect();
    assert_eq!(paths["/api/v1/webhooks"], ["get", "post"]);
    assert_eq!(paths["/api/v1/webhooks/{id}"], ["delete", "get", "patch"]);
    assert_eq!(paths["/api/v1/webhooks/{id}/deliveries"], ["get"]);
    assert_eq!(paths["/api/v1/webhooks/{id}/test"], ["post"]);
}

// ---------------------------------------------------------------------------------------------
// Several processes on one PostgreSQL store: one dispatches, the others stand by.

/// A fresh schema of the test database, dropped at the end; `None` (after a notice) when
/// PostgreSQL is not configured, unless services are required.
#[cfg(feature = "postgres")]
struct PgSchema {
    url: String,
    schema: String,
}

#[cfg(feature = "postgres")]
impl PgSchema {
    fn fresh() -> Option<PgSchema> {
        const VAR: &str = "KICKSTAND_TEST_POSTGRES_URL";
        let required = std::env::var("KICKSTAND_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        let url = match std::env::var(VAR) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                assert!(
                    !required,
                    "{VAR} is not set, and KICKSTAND_REQUIRE_SERVICES=1 requires the service"
                );
                eprintln!("skipped: {VAR} is not set (see DEVELOPERS.md)");
                return None;
            }
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!("whe2e_{}_{nanos:x}", std::process::id());
        match kickstand_webhooks::PgWebhookStore::open(&url, &schema, None) {
            Ok(_) => Some(PgSchema { url, schema }),
            Err(e) => {
                assert!(!required, "PostgreSQL is unreachable: {e}");
                eprintln!("skipped: PostgreSQL is unreachable: {e}");
                None
            }
        }
    }

    /// A store on the schema, as another process would open it. Call it off the runtime.
    fn open(&self) -> Arc<dyn WebhookStore> {
        Arc::new(kickstand_webhooks::PgWebhookStore::open(&self.url, &self.schema, None).unwrap())
    }
}

/// On a thread of its own: the store blocks on a runtime, which an async test's thread (where
/// this may run, even while unwinding) must not.
#[cfg(feature = "postgres")]
impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(s) = kickstand_webhooks::PgWebhookStore::open(&url, &schema, None) {
                let _ = s.drop_schema();
            }
        })
        .join();
    }
}

/// Runs a store call on the blocking pool: the PostgreSQL store blocks on a runtime of its own.
#[cfg(feature = "postgres")]
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// One "process": its own store on the shared schema, its dispatcher, and the stop switch.
#[cfg(feature = "postgres")]
struct Process {
    store: Arc<dyn WebhookStore>,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

#[cfg(feature = "postgres")]
async fn start_process(pg: &Arc<PgSchema>, feed: &Arc<MemFeed>, config: &WebhookConfig) -> Process {
    let pg = pg.clone();
    let store = off_runtime(move || pg.open()).await;
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let feed: Arc<dyn EventFeed> = feed.clone();
    let (_handle, task) = Dispatcher::spawn(
        store.clone(),
        feed,
        Sender::new(config).unwrap(),
        config,
        async move {
            let _ = stop_rx.await;
        },
    );
    Process { store, task, stop }
}

/// Runs `query` on a connection of its own; the first column of the rows, as `i32`.
#[cfg(feature = "postgres")]
async fn sql_ints(url: &str, query: &str) -> Vec<i32> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client.query(query, &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The cursors of `subs`, read through `store`.
#[cfg(feature = "postgres")]
async fn cursors(store: &Arc<dyn WebhookStore>, subs: &[Subscription]) -> Vec<u64> {
    let store = store.clone();
    let ids: Vec<String> = subs.iter().map(|s| s.id.clone()).collect();
    off_runtime(move || {
        ids.iter()
            .map(|id| store.get(id).unwrap().unwrap().cursor)
            .collect()
    })
    .await
}

/// Pushes events `range` to the feed (and `events`) in small bursts.
#[cfg(feature = "postgres")]
async fn push_events(feed: &MemFeed, events: &mut Vec<Event>, range: std::ops::Range<i64>) {
    for n in range {
        let e = event(n, EventKind::StateChanged, None);
        feed.push(e.clone());
        events.push(e);
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

/// Waits until both receivers have `n` events delivered and both cursors are at `n`.
#[cfg(feature = "postgres")]
async fn caught_up(
    n: usize,
    receivers: [&Receiver; 2],
    store: &Arc<dyn WebhookStore>,
    subs: &[Subscription],
) {
    until(10, &format!("{n} events at both receivers"), || {
        receivers.iter().all(|r| r.delivered_ids().len() >= n)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while cursors(store, subs).await != [n as u64; 2] {
        assert!(Instant::now() < deadline, "the cursors did not reach {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_store_deliver_each_event_once_across_failover() {
    let Some(pg) = off_runtime(PgSchema::fresh).await else {
        return;
    };
    let pg = Arc::new(pg);
    let config = fast_config();
    let feed: Arc<MemFeed> = Arc::default();
    let (rx, url) = receiver(Behaviour::Ok).await;
    let (flaky, flaky_url) = receiver(Behaviour::FailFirst(1)).await;

    // The first process subscribes both receivers and leads (it is alone).
    let a = start_process(&pg, &feed, &config).await;
    let store = a.store.clone();
    let subs = off_runtime(move || {
        [url, flaky_url].map(|url| {
            store
                .create(
                    NewSubscription {
                        url,
                        ..NewSubscription::default()
                    },
                    0,
                    0,
                )
                .unwrap()
        })
    })
    .await;
    let mut events = vec![event(0, EventKind::BatteryLow, None)];
    feed.push(events[0].clone());
    until(5, "the first event", || rx.delivered_ids().len() == 1).await;
    // The first process's leader session (the only one so far).
    let leader_pid = sql_ints(
        &pg.url,
        &format!(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = 'kickstand-webhooks-leader:{}'",
            pg.schema
        ),
    )
    .await;
    assert_eq!(leader_pid.len(), 1, "one leader session: {leader_pid:?}");

    // A second process starts: it stands by while the first delivers.
    let b = start_process(&pg, &feed, &config).await;
    push_events(&feed, &mut events, 1..30).await;
    caught_up(30, [&rx, &flaky], &b.store, &subs).await;

    // The first process's session is killed (a database failover, an admin): it stops
    // delivering, and one of the two leads again (which one is a race).
    let killed = sql_ints(
        &pg.url,
        &format!(
            "SELECT CASE WHEN pg_terminate_backend({}) THEN 1 ELSE 0 END",
            leader_pid[0]
        ),
    )
    .await;
    assert_eq!(killed, [1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    push_events(&feed, &mut events, 30..60).await;
    caught_up(60, [&rx, &flaky], &b.store, &subs).await;

    // The first process stops (and resigns if it led): the second delivers the rest.
    drop(a.stop);
    a.task.await.unwrap();
    push_events(&feed, &mut events, 60..90).await;
    caught_up(90, [&rx, &flaky], &b.store, &subs).await;
    // Give a second dispatcher time to send duplicates, if it were delivering too.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let want: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    for (receiver, attempts) in [(&rx, 1), (&flaky, 2)] {
        assert_eq!(receiver.delivered_ids(), want, "each event once, in order");
        let mut per_id: HashMap<String, usize> = HashMap::new();
        for r in receiver.got() {
            *per_id.entry(r.id).or_default() += 1;
        }
        assert!(
            per_id.values().all(|&n| n == attempts),
            "each Webhook-Id {attempts} time(s): {per_id:?}"
        );
    }
    let store = b.store.clone();
    let id = subs[1].id.clone();
    let log = off_runtime(move || store.deliveries(&id, 500, None).unwrap()).await;
    assert_eq!(
        log.len(),
        180,
        "one failed and one delivered attempt per event"
    );

    drop(b.stop);
    b.task.await.unwrap();
}
