//! Two scheduler processes (each its own tokio runtime and database handle) on one
//! PostgreSQL schema and one Redis: every tick of a job runs exactly once, and when the
//! leader dies without releasing its lease the other takes over after the lease expires.

mod support;

use kickstand_scheduler::{Scheduler, SchedulerConfig};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use support::{Store, config, receiver};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn two_schedulers_run_each_tick_once_and_survive_a_killed_leader() {
    let Some(_pg) = support::service_url("POSTGRES") else {
        return;
    };
    let Some(redis) = support::service_url("REDIS") else {
        return;
    };
    let io = runtime();
    let (api, rec) = io.block_on(receiver());
    let dir = tempfile::tempdir().unwrap();
    let (db, schema) = io
        .block_on(support::open(Store::Postgres, dir.path()))
        .unwrap();
    let prefix = format!(
        "kickstand-test-{}-{}",
        std::process::id(),
        kickstand_service::now_ms()
    );
    let cfg = |name: &str| SchedulerConfig {
        redis_url: Some(redis.clone()),
        redis_prefix: prefix.clone(),
        instance: Some(name.into()),
        ..config(&api)
    };
    let start = |name: &str| {
        let rt = runtime();
        let db = rt.block_on(support::reopen(Store::Postgres, dir.path(), &schema));
        let s = rt.block_on(Scheduler::start(cfg(name), db, None)).unwrap();
        (rt, s)
    };
    let (rt_a, a) = start("a");
    let (rt_b, b) = start("b");
    assert!(a.is_leader() ^ b.is_leader(), "exactly one leader");
    // A job every second, created through a's API.
    let base = rt_a.block_on(support::serve(&a));
    let job: serde_json::Value = rt_a.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/jobs"))
            .json(&serde_json::json!({"name": "tick", "schedule": {"every": "1s"}, "action": {"task": "stale_sweep"}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let id = job["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(8));

    let ticks = |rec: &support::Recorder| {
        let mut by_tick: BTreeMap<i64, usize> = BTreeMap::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for c in rec.calls_to("/api/v1/tasks/stale_sweep") {
            let key = c.key.unwrap();
            let tick: i64 = key.rsplit('-').next().unwrap().parse().unwrap();
            *by_tick.entry(tick).or_default() += 1;
            *by_key.entry(key).or_default() += 1;
        }
        (by_tick, by_key)
    };
    let (by_tick, by_key) = ticks(&rec);
    assert!((7..=9).contains(&by_tick.len()), "{by_tick:?}");
    assert!(by_key.values().all(|n| *n == 1), "{by_key:?}");
    assert!(by_tick.values().all(|n| *n == 1), "{by_tick:?}");
    let ts: Vec<i64> = by_tick.keys().copied().collect();
    assert!(
        ts.windows(2).all(|w| w[1] - w[0] == 1_000),
        "consecutive ticks: {ts:?}"
    );
    // Which process ran them is recorded.
    let leader_name = if a.is_leader() { "a" } else { "b" };
    let instances: Vec<String> = io.block_on(async {
        db.query(
            "SELECT DISTINCT instance FROM scheduler_runs WHERE job_id = $1",
            vec![id.clone().into()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.text(0).unwrap().to_owned())
        .collect()
    });
    assert_eq!(instances.len(), 1);
    assert!(instances[0].starts_with(leader_name), "{instances:?}");

    // Kill the leader: its runtime is dropped with no shutdown, the lease stays in Redis
    // until it expires (2 s).
    let (survivor, survivor_rt) = if a.is_leader() {
        drop(a);
        drop(rt_a);
        (b, rt_b)
    } else {
        drop(b);
        drop(rt_b);
        (a, rt_a)
    };
    let before = by_tick.len();
    std::thread::sleep(Duration::from_secs(7));
    assert!(survivor.is_leader());
    let (by_tick, by_key) = ticks(&rec);
    assert!(by_key.values().all(|n| *n == 1), "{by_key:?}");
    assert!(by_tick.values().all(|n| *n == 1), "{by_tick:?}");
    let after = by_tick.len() - before;
    // Lease ttl 2 s + one renew period: at most ~3 ticks lost, the rest run.
    assert!(
        (3..=8).contains(&after),
        "{after} ticks after the kill: {by_tick:?}"
    );
    survivor_rt.block_on(survivor.shutdown());
    io.block_on(support::drop_schema(&db, &schema));
    drop(survivor_rt);
}

/// A scheduler killed while its run's script is still going: the run does not block the job
/// (`forbid`) for longer than the claim; the next leader adopts the run (polls the script it
/// had started, without starting it again) and the job's next ticks run.
#[test]
fn a_run_orphaned_by_a_killed_scheduler_is_adopted() {
    let Some(_pg) = support::service_url("POSTGRES") else {
        return;
    };
    let Some(redis) = support::service_url("REDIS") else {
        return;
    };
    let io = runtime();
    let (api, rec) = io.block_on(receiver());
    let dir = tempfile::tempdir().unwrap();
    let (db, schema) = io
        .block_on(support::open(Store::Postgres, dir.path()))
        .unwrap();
    let prefix = format!(
        "kickstand-test-orphan-{}-{}",
        std::process::id(),
        kickstand_service::now_ms()
    );
    let cfg = |name: &str| SchedulerConfig {
        redis_url: Some(redis.clone()),
        redis_prefix: prefix.clone(),
        instance: Some(name.into()),
        ..config(&api)
    };
    let rt_a = runtime();
    let a = rt_a
        .block_on(async {
            Scheduler::start(
                cfg("a"),
                support::reopen(Store::Postgres, dir.path(), &schema).await,
                None,
            )
            .await
        })
        .unwrap();
    assert!(a.is_leader());
    let base = rt_a.block_on(support::serve(&a));
    let job: serde_json::Value = rt_a.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/jobs"))
            .json(&serde_json::json!({"name": "long", "schedule": {"every": "1s"}, "overlap": "forbid",
                "action": {"script": {"name": "long", "args": {"sleep_ms": 4000}}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let id = job["id"].as_str().unwrap().to_owned();
    // Wait for the first script start, then kill a.
    let t0 = std::time::Instant::now();
    while rec.calls_to("/api/v1/scripts/long/runs").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(a);
    drop(rt_a);
    let rt_b = runtime();
    let b = rt_b
        .block_on(async {
            Scheduler::start(
                cfg("b"),
                support::reopen(Store::Postgres, dir.path(), &schema).await,
                None,
            )
            .await
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(9));
    let runs = io.block_on(async {
        db.query(
            "SELECT scheduled_for, instance, outcome, takeovers, script_run_id FROM scheduler_runs \
             WHERE job_id = $1 ORDER BY scheduled_for",
            vec![id.clone().into()],
        )
        .await
        .unwrap()
    });
    let first = &runs[0];
    assert!(
        first.text(1).unwrap().starts_with("b-"),
        "adopted by b: {runs:?}"
    );
    assert_eq!(first.text(2).unwrap(), "succeeded", "{runs:?}");
    assert_eq!(first.int(3).unwrap(), 1);
    // The adopted script was polled, not started again: one start per key.
    let starts = rec.calls_to("/api/v1/scripts/long/runs");
    let mut keys: Vec<_> = starts.iter().map(|c| c.key.clone().unwrap()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), starts.len(), "{keys:?}");
    // And the job went on: b started a run of its own after the orphan's claim expired.
    assert!(
        runs.iter().any(|r| r.text(1).unwrap().starts_with("b-")
            && r.int(3).unwrap() == 0
            && r.text(2).unwrap() != "skipped_overlap"),
        "{runs:?}"
    );
    rt_b.block_on(b.shutdown());
    io.block_on(support::drop_schema(&db, &schema));
}
