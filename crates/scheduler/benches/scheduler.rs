//! Tick precision with 10,000 jobs: half every second (`every: "1s"`), half cron with
//! seconds (`* * * * * *` in Europe/Berlin), all performing a built-in task against a local
//! receiver that does nothing but note when each call arrived. Lateness is arrival time minus
//! the tick the call is for (from its idempotency key), so it includes the scheduler's tick
//! resolution, its database writes and the HTTP request.
//!
//! `cargo bench -p kickstand-scheduler --bench scheduler` (embedded SQLite ops database, one
//! process). Environment: `BENCH_JOBS` (10000), `BENCH_SECS` (20), `BENCH_PERIOD` (1): with
//! `BENCH_PERIOD=60` every job runs once a minute instead, spread over the seconds of the minute
//! (half `every: "60s"` anchored at a second of their own, half cron `S * * * * *`), the shape of
//! a real deployment's jobs; run it for more than a minute (`BENCH_SECS=75`).

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use kickstand_scheduler::action::{Action, BuiltinTask};
use kickstand_scheduler::schedule::{Schedule, ScheduleSpec};
use kickstand_scheduler::store::{Job, Missed, Overlap, Store};
use kickstand_scheduler::{Scheduler, SchedulerConfig};
use kickstand_service::{Db, now_ms};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Lateness = Arc<Mutex<Vec<(i64, i64)>>>;

async fn noop(State(l): State<Lateness>, headers: HeaderMap) -> &'static str {
    let now = now_ms();
    if let Some(tick) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|k| k.rsplit('-').next())
        .and_then(|t| t.parse::<i64>().ok())
    {
        l.lock().unwrap().push((tick, now - tick));
    }
    "{}"
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let period: i64 = std::env::var("BENCH_PERIOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    assert!(period == 1 || period == 60, "BENCH_PERIOD is 1 or 60");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let lateness: Lateness = Arc::default();
        let app = Router::new()
            .route("/api/v1/tasks/{task}", post(noop))
            .with_state(lateness.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(&dir.path().join("ops.db")).unwrap();
        let store = Store::open(db.clone()).await.unwrap();
        let start = now_ms() + 2_000;
        let anchor = start - start % 1000;
        let mut batch = Vec::with_capacity(jobs);
        for i in 0..jobs {
            let second = (i as i64 / 2) % period;
            let job_anchor = anchor + second * 1000;
            let spec = match (i % 2 == 0, period) {
                (true, 1) => ScheduleSpec { every: Some("1s".into()), ..ScheduleSpec::default() },
                (true, _) => ScheduleSpec { every: Some("60s".into()), ..ScheduleSpec::default() },
                (false, 1) => ScheduleSpec {
                    cron: Some("* * * * * *".into()),
                    time_zone: Some("Europe/Berlin".into()),
                    ..ScheduleSpec::default()
                },
                (false, _) => ScheduleSpec {
                    cron: Some(format!("{second} * * * * *")),
                    time_zone: Some("Europe/Berlin".into()),
                    ..ScheduleSpec::default()
                },
            };
            let next = Schedule::parse(&spec, job_anchor).unwrap().next_from(anchor + 1000);
            batch.push(Job {
                id: format!("job_{i:08}"),
                name: format!("bench {i}"),
                schedule: spec,
                action: Action::Task(BuiltinTask::StaleSweep),
                overlap: Overlap::Allow,
                missed: Missed::Skip,
                missed_deadline_ms: 60_000,
                paused: false,
                anchor: job_anchor,
                next_run_at: next,
                created_by: "bench".into(),
                created_at: anchor,
                updated_at: anchor,
            });
        }
        store.insert_jobs(&batch).await.unwrap();
        let config = SchedulerConfig {
            api_url: format!("http://{addr}"),
            missed_grace: Duration::from_secs(30),
            ..SchedulerConfig::default()
        };
        let s = Scheduler::start(config, db, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(secs + 2)).await;
        s.shutdown().await;
        let got = lateness.lock().unwrap().clone();
        let first = got.iter().map(|(t, _)| *t).min().unwrap_or(0);
        let last = got.iter().map(|(t, _)| *t).max().unwrap_or(0);
        let ticks = (last - first) / 1000 + 1;
        let mut all: Vec<i64> = got.iter().map(|(_, l)| *l).collect();
        all.sort_unstable();
        // Steady state: without the first two seconds of ticks.
        let mut steady: Vec<i64> = got.iter().filter(|(t, _)| *t >= first + 2_000).map(|(_, l)| *l).collect();
        steady.sort_unstable();
        if period == 1 {
            println!("scheduler bench: {jobs} jobs ({} every 1s, {} cron * * * * * *), {secs} s, tick resolution 100 ms, SQLite ops database",
                jobs.div_ceil(2), jobs / 2);
        } else {
            println!("scheduler bench: {jobs} jobs once a minute ({} every 60s, {} cron S * * * * *, spread over the minute), {secs} s, tick resolution 100 ms, SQLite ops database",
                jobs.div_ceil(2), jobs / 2);
        }
        let expected = jobs as f64 / period as f64;
        println!("  runs performed: {} over {ticks} seconds of ticks ({:.0} runs/s; expected {expected:.0}/s)",
            all.len(), all.len() as f64 / ticks.max(1) as f64);
        println!("  lateness all:    p50 {} ms  p99 {} ms  max {} ms", pct(&all, 0.5), pct(&all, 0.99), all.last().copied().unwrap_or(0));
        println!("  lateness steady: p50 {} ms  p99 {} ms  max {} ms", pct(&steady, 0.5), pct(&steady, 0.99), steady.last().copied().unwrap_or(0));
        let skipped = (jobs as i64 * ticks) / period - all.len() as i64;
        println!("  ticks not run (skipped or not yet performed): {skipped}");
    });
}
