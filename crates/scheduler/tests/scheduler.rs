//! The scheduler against real things: its HTTP API on a real socket, a real receiver for its
//! actions, SQLite files and PostgreSQL schemas, the embedded fleet store for rules.

mod support;

use kickstand_domain::VehicleId;
use kickstand_domain::event::{Event, EventKind};
use kickstand_engine::fleet::FleetStore;
use kickstand_engine::fleet::sqlite::SqliteFleetStore;
use kickstand_scheduler::Scheduler;
use kickstand_service::{now_ms, params};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::{Store, config, eventually, open, receiver, serve};

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let v = r.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(ct, "application/problem+json", "{v}");
    }
    (status, v)
}

async fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, Value) {
    send(reqwest::Method::GET, url, None).await
}

async fn api_contract(kind: Store) {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, schema)) = open(kind, dir.path()).await else {
        return;
    };
    let (api, _rec) = receiver().await;
    let s = Scheduler::start(config(&api), db.clone(), None)
        .await
        .unwrap();
    let base = serve(&s).await;
    let jobs = format!("{base}/api/v1/jobs");

    // Garbage and invalid bodies: 400 problem+json naming the field, nothing stored.
    for (body, field) in [
        ("", "body"),
        ("not json", "body"),
        ("[]", "body"),
        ("{\"name\": 1}", "name"),
        (
            r#"{"name":"x","schedule":{"cron":"* * * * *"},"action":{"task":"retention"}}"#,
            "schedule.cron",
        ),
        (
            r#"{"name":"x","schedule":{"cron":"0 * * * * *","time_zone":"Nowhere/City"},"action":{"task":"retention"}}"#,
            "schedule.time_zone",
        ),
        (
            r#"{"name":"x","schedule":{"every":"fast"},"action":{"task":"retention"}}"#,
            "schedule.every",
        ),
        (
            r#"{"name":"x","schedule":{"at":"2001-01-01T00:00:00Z"},"action":{"task":"retention"}}"#,
            "schedule.at",
        ),
        (
            r#"{"name":"x","schedule":{},"action":{"task":"retention"}}"#,
            "schedule",
        ),
        (
            r#"{"name":"x","schedule":{"every":"1s"},"action":{"task":"reboot"}}"#,
            "action.task",
        ),
        (
            r#"{"name":"x","schedule":{"every":"1s"},"action":{"script":{"name":"../etc"}}}"#,
            "action.script.name",
        ),
        (
            r#"{"name":"x","schedule":{"every":"1s"},"action":{"message":{"channel":"ops"}}}"#,
            "action.message.template",
        ),
        (
            r#"{"name":"x","schedule":{"every":"1s"},"action":{"message":{"template":"t"}}}"#,
            "action.message.channel",
        ),
        (
            r#"{"name":"x","schedule":{"every":"1s"},"action":{"task":"retention"},"overlap":"sometimes"}"#,
            "overlap",
        ),
        (
            r#"{"name":"x","schedule":{"every":"1s"},"action":{"task":"retention"},"extra":1}"#,
            "body",
        ),
        (
            r#"{"name":"x","schedule":{"every":"1s"},"action":{"task":"retention"},"missed_deadline":"soon"}"#,
            "missed_deadline",
        ),
    ] {
        let (status, p) = post(&jobs, body.to_owned()).await;
        assert_eq!(status, 400, "{body} → {p}");
        let got = p["field"].as_str().unwrap_or("");
        assert!(
            got == field || got.starts_with(field) || field == "body",
            "{body}: field {got}, want {field}: {p}"
        );
    }
    let (_, page) = get(&jobs).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 0);

    // Create, read, list with filters and pages, patch, pause, resume, delete.
    let (status, job) = post(
        &jobs,
        json!({"name": "morning report", "schedule": {"cron": "0 0 6 * * *", "time_zone": "Europe/Berlin"},
               "action": {"task": "fleet_report"}, "paused": true}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert!(
        job["next_run_at"].as_str().unwrap().ends_with(":00:00Z")
            || job["next_run_at"].as_str().unwrap().contains("T0")
    );
    assert_eq!(job["created_by"], "anonymous");
    for i in 0..3 {
        let (status, _) = post(
            &jobs,
            json!({"name": format!("msg {i}"), "schedule": {"every": "1h"},
                   "action": {"message": {"channel": "crew", "to": "ops@example.com", "template": "t"}}})
            .to_string(),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (_, page) = get(&format!("{jobs}?limit=2")).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = get(&format!("{jobs}?limit=2&cursor={cursor}")).await;
    assert_eq!(page2["jobs"].as_array().unwrap().len(), 2);
    let (_, msgs) = get(&format!("{jobs}?kind=message")).await;
    assert_eq!(msgs["jobs"].as_array().unwrap().len(), 3);
    let (_, paused) = get(&format!("{jobs}?paused=true")).await;
    assert_eq!(paused["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(get(&format!("{jobs}?kind=nope")).await.0, 400);
    assert_eq!(get(&format!("{jobs}?limit=0")).await.0, 400);
    assert_eq!(get(&format!("{jobs}?limit=abc")).await.0, 400);

    let (status, got) = get(&format!("{jobs}/{id}")).await;
    assert_eq!(
        (status, got["name"].as_str()),
        (200, Some("morning report"))
    );
    let (status, patched) = send(
        reqwest::Method::PATCH,
        &format!("{jobs}/{id}"),
        Some(json!({"overlap": "replace", "schedule": {"every": "10m"}})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["overlap"], "replace");
    assert_eq!(patched["schedule"], json!({"every": "10m"}));
    let (status, p) = send(
        reqwest::Method::PATCH,
        &format!("{jobs}/{id}"),
        Some(json!({"schedule": {"every": "-1s"}})),
    )
    .await;
    assert_eq!((status, p["field"].as_str()), (400, Some("schedule.every")));
    let (status, resumed) = post(&format!("{jobs}/{id}/resume"), "").await;
    assert_eq!((status, resumed["paused"].as_bool()), (200, Some(false)));
    let (status, paused) = post(&format!("{jobs}/{id}/pause"), "").await;
    assert_eq!((status, paused["paused"].as_bool()), (200, Some(true)));
    let (status, replaced) = send(
        reqwest::Method::PUT,
        &format!("{jobs}/{id}"),
        Some(json!({"name": "n2", "schedule": {"every": "5m"}, "action": {"task": "retention"}})),
    )
    .await;
    assert_eq!(
        (
            status,
            replaced["name"].as_str(),
            replaced["overlap"].as_str()
        ),
        (200, Some("n2"), Some("forbid"))
    );
    assert_eq!(get(&format!("{jobs}/job_nope")).await.0, 404);
    assert_eq!(post(&format!("{jobs}/job_nope/run"), "").await.0, 404);
    assert_eq!(get(&format!("{jobs}/{id}/runs?cursor=x")).await.0, 400);

    // Run now: a manual run performs the action with the job's idempotency key.
    let (status, run) = post(&format!("{jobs}/{id}/run"), "").await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["trigger"], "manual");
    let tick = run["scheduled_for_ms"].as_i64().unwrap();
    let runs_url = format!("{jobs}/{id}/runs");
    let mut done = Value::Null;
    for _ in 0..100 {
        let (_, page) = get(&runs_url).await;
        done = page["runs"][0].clone();
        if done["outcome"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["answer"]["task"], "retention");
    let calls = _rec.calls_to("/api/v1/tasks/retention");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].key.as_deref(),
        Some(format!("job-{id}-{tick}").as_str())
    );
    assert_eq!(calls[0].auth.as_deref(), Some("Bearer test-internal-key"));

    assert_eq!(
        send(reqwest::Method::DELETE, &format!("{jobs}/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        send(reqwest::Method::DELETE, &format!("{jobs}/{id}"), None)
            .await
            .0,
        404
    );

    // Rules: garbage, then CRUD.
    let rules = format!("{base}/api/v1/rules");
    for (body, field) in [
        ("{", "body"),
        (
            r#"{"name":"r","kinds":[],"action":{"task":"retention"}}"#,
            "kinds",
        ),
        (
            r#"{"name":"r","kinds":["battery_dead"],"action":{"task":"retention"}}"#,
            "kinds[0]",
        ),
        (
            r#"{"name":"r","kinds":["battery_low"],"action":{"script":{"name":"x","args":{"a":"{{ secrets.key }}"}}}}"#,
            "action",
        ),
        (
            r#"{"name":"r","kinds":["battery_low"],"action":{"task":"retention"},"cooldown_secs":-1}"#,
            "cooldown_secs",
        ),
    ] {
        let (status, p) = post(&rules, body.to_owned()).await;
        assert_eq!(status, 400, "{body} → {p}");
        assert_eq!(p["field"].as_str(), Some(field), "{body} → {p}");
    }
    let (status, rule) = post(
        &rules,
        json!({"name": "low battery", "kinds": ["battery_low"], "vehicle": "s-*", "cooldown_secs": 60,
               "action": {"message": {"channel": "crew", "to": "swap@example.com", "template": "low",
                                      "vars": {"vehicle": "{{ event.vehicle_id }}"}}}})
        .to_string(),
    )
    .await;
    assert_eq!(status, 201, "{rule}");
    let rid = rule["id"].as_str().unwrap();
    assert_eq!(rule["fired"], 0);
    assert_eq!(get(&format!("{rules}/{rid}")).await.0, 200);
    assert_eq!(get(&rules).await.1["rules"].as_array().unwrap().len(), 1);
    let (status, r) = post(&format!("{rules}/{rid}/pause"), "").await;
    assert_eq!((status, r["paused"].as_bool()), (200, Some(true)));
    let (status, r) = send(
        reqwest::Method::PATCH,
        &format!("{rules}/{rid}"),
        Some(json!({"cooldown_secs": 5, "paused": false})),
    )
    .await;
    assert_eq!(
        (status, r["cooldown_secs"].as_i64(), r["paused"].as_bool()),
        (200, Some(5), Some(false))
    );
    let (status, _) = send(
        reqwest::Method::PATCH,
        &format!("{rules}/{rid}"),
        Some(json!({"kinds": ["nope"]})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(get(&format!("{rules}/{rid}/history")).await.0, 200);
    assert_eq!(
        send(reqwest::Method::DELETE, &format!("{rules}/{rid}"), None)
            .await
            .0,
        204
    );
    assert_eq!(get(&format!("{rules}/{rid}")).await.0, 404);

    s.shutdown().await;
    support::drop_schema(&db, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_sqlite() {
    api_contract(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_postgres() {
    api_contract(Store::Postgres).await;
}

/// Three script jobs every second whose script runs 2.5 s: `allow` overlaps, `forbid` skips
/// ticks while its run goes on, `replace` cancels the previous run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_policies() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = open(Store::Sqlite, dir.path()).await.unwrap();
    let (api, rec) = receiver().await;
    let s = Scheduler::start(config(&api), db, None).await.unwrap();
    let base = serve(&s).await;
    let mut ids = Vec::new();
    for policy in ["allow", "forbid", "replace"] {
        let (status, job) = post(
            &format!("{base}/api/v1/jobs"),
            json!({"name": policy, "schedule": {"every": "1s"}, "overlap": policy,
                   "action": {"script": {"name": format!("slow_{policy}"), "args": {"sleep_ms": 2500}}}})
            .to_string(),
        )
        .await;
        assert_eq!(status, 201, "{job}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(4_600)).await;
    s.shutdown().await;
    let outcomes = |i: usize| {
        let id = ids[i].clone();
        let base = base.clone();
        async move {
            let (_, page) = get(&format!("{base}/api/v1/jobs/{id}/runs")).await;
            page["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["outcome"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let started = |name: &str| rec.calls_to(&format!("/api/v1/scripts/{name}/runs")).len();
    // allow: a run per tick (4), several at once.
    let allow = outcomes(0).await;
    assert!(started("slow_allow") >= 4, "{allow:?}");
    assert!(!allow.iter().any(|o| o == "skipped_overlap"));
    // forbid: the first run blocks the next ticks.
    let forbid = outcomes(1).await;
    assert!(started("slow_forbid") <= 2, "{forbid:?}");
    assert!(
        forbid.iter().filter(|o| *o == "skipped_overlap").count() >= 2,
        "{forbid:?}"
    );
    // replace: each tick cancels the previous run.
    let replace = outcomes(2).await;
    assert!(started("slow_replace") >= 4, "{replace:?}");
    assert!(
        replace.iter().filter(|o| *o == "replaced").count() >= 3,
        "{replace:?}"
    );
    assert!(
        rec.calls_to("/api/v1/scripts/runs/")
            .iter()
            .any(|c| c.path.ends_with("/cancel"))
    );
    // Every start carried its own tick's key.
    let keys: std::collections::HashSet<_> = rec
        .calls()
        .into_iter()
        .filter(|c| c.path.contains("/slow_"))
        .map(|c| c.key.unwrap())
        .collect();
    assert_eq!(
        keys.len(),
        started("slow_allow") + started("slow_forbid") + started("slow_replace")
    );
}

/// After downtime: `skip` drops missed ticks, `run_once` runs one catch-up run when the latest
/// missed tick is within its deadline, never a burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_runs_skip_or_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = open(Store::Sqlite, dir.path()).await.unwrap();
    let (api, rec) = receiver().await;
    let s = Scheduler::start(config(&api), db.clone(), None)
        .await
        .unwrap();
    let base = serve(&s).await;
    let mut ids = Vec::new();
    for (name, missed, deadline) in [
        ("skip", "skip", "1h"),
        ("once", "run_once", "1m"),
        ("late", "run_once", "3s"),
    ] {
        let (status, job) = post(
            &format!("{base}/api/v1/jobs"),
            json!({"name": name, "schedule": {"every": "10s"}, "missed": missed, "missed_deadline": deadline,
                   "action": {"message": {"channel": "crew", "to": name, "template": "t"}}})
            .to_string(),
        )
        .await;
        assert_eq!(status, 201);
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    s.shutdown().await;
    // The scheduler was down for 37 s: four ticks of each job passed, the latest 7 s ago.
    let now = now_ms();
    for id in &ids {
        db.execute(
            "UPDATE scheduler_jobs SET next_run_at = $1, anchor = $1 WHERE id = $2",
            params![now - 37_000, id],
        )
        .await
        .unwrap();
    }
    let s = Scheduler::start(config(&api), db.clone(), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let to = |name: &str| {
        rec.calls_to("/api/v1/messages")
            .into_iter()
            .filter(|c| c.body["to"] == name)
            .count()
    };
    assert_eq!(to("skip"), 0);
    assert_eq!(to("once"), 1, "one catch-up run, not four");
    assert_eq!(
        to("late"),
        0,
        "the latest missed tick is older than the deadline"
    );
    let row = db
        .query_opt(
            "SELECT trigger, scheduled_for FROM scheduler_runs WHERE job_id = $1",
            params![&ids[1]],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.text(0).unwrap(), "catch_up");
    assert_eq!(row.int(1).unwrap(), now - 7_000);
    // Every job's next tick is in the future again.
    for id in &ids {
        let next = db
            .query_opt(
                "SELECT next_run_at FROM scheduler_jobs WHERE id = $1",
                params![id],
            )
            .await
            .unwrap()
            .unwrap()
            .int(0)
            .unwrap();
        assert_eq!(next, now + 3_000);
    }
    s.shutdown().await;
}

fn battery_low(vehicle: &str, ts: i64, pct_tenths: u16) -> Event {
    let mut e = Event::new(
        VehicleId::new(vehicle).unwrap(),
        EventKind::BatteryLow,
        ts,
        52_520_000,
        13_405_000,
        None,
    );
    e.battery_dpct = Some(pct_tenths);
    e
}

async fn rule_contract(kind: Store) {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, schema)) = open(kind, dir.path()).await else {
        return;
    };
    let fleet: Arc<dyn FleetStore> =
        Arc::new(SqliteFleetStore::open(&dir.path().join("fleet.db")).unwrap());
    // An event from before the scheduler's first start is not acted on.
    let t0 = now_ms() - 600_000;
    fleet
        .append_events(&[battery_low("s-old", t0 - 1, 50)], t0)
        .unwrap();
    let (api, rec) = receiver().await;
    let s = Scheduler::start(config(&api), db.clone(), Some(fleet.clone()))
        .await
        .unwrap();
    let base = serve(&s).await;
    let (status, rule) = post(
        &format!("{base}/api/v1/rules"),
        json!({"name": "swap crew", "kinds": ["battery_low"], "cooldown_secs": 600, "vehicle": "s-*",
               "action": {"message": {"channel": "crew", "to": "swap@example.com", "template": "battery_low",
                          "vars": {"vehicle": "{{ event.vehicle_id }}", "pct": "{{ event.battery_pct }}",
                                   "text": "{{ event.vehicle_id }} at {{ event.battery_pct }}%"}}}})
        .to_string(),
    )
    .await;
    assert_eq!(status, 201, "{rule}");
    let rid = rule["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Three battery_low events of s-1 within the cool-down, one of s-2, one of a vehicle the
    // pattern excludes, one of another kind.
    let evs = vec![
        battery_low("s-1", t0, 150),
        battery_low("s-1", t0 + 60_000, 140),
        battery_low("s-1", t0 + 120_000, 130),
        battery_low("s-2", t0 + 130_000, 120),
        battery_low("t-9", t0 + 140_000, 110),
        Event::new(
            VehicleId::new("s-3").unwrap(),
            EventKind::Stale,
            t0 + 150_000,
            0,
            0,
            None,
        ),
    ];
    fleet.append_events(&evs, now_ms()).unwrap();
    eventually(10, "two messages", || {
        rec.calls_to("/api/v1/messages").len() >= 2
    })
    .await;
    let check_view = || async {
        let (_, view) = get(&format!("{base}/api/v1/rules/{rid}")).await;
        view
    };
    let mut view = Value::Null;
    for _ in 0..100 {
        view = check_view().await;
        if view["fired"] == 2 && view["suppressed"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (view["fired"].as_i64(), view["suppressed"].as_i64()),
        (Some(2), Some(2)),
        "{view}"
    );
    let calls = rec.calls_to("/api/v1/messages");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        calls[0].body["vars"],
        json!({"vehicle": "s-1", "pct": 15.0, "text": "s-1 at 15%"})
    );
    assert_eq!(calls[1].body["vars"]["vehicle"], "s-2");
    assert_eq!(
        calls[0].key.as_deref(),
        Some(format!("rule-{rid}-{}", evs[0].id).as_str())
    );
    let (_, history) = get(&format!("{base}/api/v1/rules/{rid}/history")).await;
    let outcomes: Vec<_> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["fired", "suppressed", "suppressed", "fired"]);
    // A restart continues after the stored cursor: nothing is acted on twice.
    s.shutdown().await;
    let s = Scheduler::start(
        config(&api),
        support::reopen(kind, dir.path(), &schema).await,
        Some(fleet.clone()),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rec.calls_to("/api/v1/messages").len(), 2);
    // After the cool-down s-1 fires again.
    fleet
        .append_events(&[battery_low("s-1", t0 + 700_000, 100)], now_ms())
        .unwrap();
    eventually(10, "a third message", || {
        rec.calls_to("/api/v1/messages").len() == 3
    })
    .await;
    s.shutdown().await;
    support::drop_schema(&db, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_sqlite() {
    rule_contract(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_postgres() {
    rule_contract(Store::Postgres).await;
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = open(Store::Sqlite, dir.path()).await.unwrap();
    let s = Scheduler::start(config("http://127.0.0.1:9"), db, None)
        .await
        .unwrap();
    let (_router, doc) = s.router::<()>().split_for_parts();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    for p in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/pause",
        "/api/v1/jobs/{id}/resume",
        "/api/v1/jobs/{id}/run",
        "/api/v1/jobs/{id}/runs",
        "/api/v1/rules",
        "/api/v1/rules/{id}",
        "/api/v1/rules/{id}/pause",
        "/api/v1/rules/{id}/resume",
        "/api/v1/rules/{id}/history",
    ] {
        assert!(paths.iter().any(|x| *x == p), "{p} missing from {paths:?}");
    }
    s.shutdown().await;
}
