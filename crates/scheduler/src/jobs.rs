//! Ticking jobs and performing their runs.
//!
//! The leader's tick loop reads the due jobs every `tick_resolution`, decides per job which
//! tick runs (missed-run policy) and what happens to a previous run still going (overlap
//! policy), then, in one transaction per pass, moves each job's next tick (compare-and-set)
//! and inserts its run row (unique by job and tick). Only the runs whose row this pass
//! inserted are started, each as a task that performs the action with the idempotency key
//! `job-{job_id}-{scheduled_for}`, heartbeats its claim, and (for a script) polls the script
//! run until it ends. Finished runs are written in batches.

use crate::Scheduler;
use crate::action::{Action, Outcome};
use crate::schedule::Schedule;
use crate::store::{Job, Missed, Overlap, Run};
use kickstand_service::{Value, now_ms, params};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How many due jobs one query reads.
const DUE_PAGE: usize = 2_000;
/// The most ticks walked to find the latest missed tick of a cron schedule.
const CATCH_UP_WALK: usize = 100_000;

/// A run's end, for the batch writer.
pub struct Finished {
    pub job_id: String,
    pub scheduled_for: i64,
    pub outcome: &'static str,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub at: i64,
}

/// What the tick pass decided for one job.
struct Decision {
    job: Job,
    tick: i64,
    /// The run to start: `(scheduled_for, trigger, outcome)`; `None` when the tick is skipped.
    run: Option<(i64, &'static str, &'static str)>,
    next: Option<i64>,
    replace: Vec<Run>,
}

/// The tick loop: runs until `stop`.
pub async fn tick_loop(s: Arc<Scheduler>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last_orphan_scan = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(s.config.tick_resolution) => {}
            _ = stop.changed() => return,
        }
        if !s.leadership.is_leader() {
            continue;
        }
        if let Err(error) = tick_pass(&s, &stop).await {
            tracing::warn!(message = "scheduler tick failed; retried at the next tick", %error);
        }
        let now = now_ms();
        if now - last_orphan_scan >= s.config.lease_renew.as_millis() as i64 {
            last_orphan_scan = now;
            if let Err(error) = adopt_orphans(&s).await {
                tracing::warn!(message = "scheduler: looking for orphaned runs failed", %error);
            }
        }
    }
}

/// One pass over the due jobs.
pub async fn tick_pass(
    s: &Arc<Scheduler>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), kickstand_service::DbError> {
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let now = now_ms();
        let due = s.store.due_jobs(now, DUE_PAGE).await?;
        if due.is_empty() {
            return Ok(());
        }
        let full = due.len() == DUE_PAGE;
        // The runs still going, to apply the overlap policies.
        let live = if due.iter().any(|j| j.overlap != Overlap::Allow) {
            live_runs(s, now).await?
        } else {
            HashMap::new()
        };
        let grace = s.config.missed_grace.as_millis() as i64;
        let mut decisions = Vec::with_capacity(due.len());
        for job in due {
            let tick = job.next_run_at.expect("due jobs have a next tick");
            let schedule = match Schedule::parse(&job.schedule, job.anchor) {
                Ok(sch) => sch,
                Err(e) => {
                    tracing::error!(message = "stored job has an unusable schedule; paused", job = %job.id, error = %e);
                    s.store.set_job_paused(&job.id, true, now).await?;
                    continue;
                }
            };
            let (latest, next) = schedule.catch_up(tick, now, CATCH_UP_WALK);
            let late = now - latest;
            let run = if late <= grace {
                Some((latest, "schedule"))
            } else if job.missed == Missed::RunOnce && late <= job.missed_deadline_ms {
                Some((latest, "catch_up"))
            } else {
                None
            };
            let running = live.get(&job.id).cloned().unwrap_or_default();
            let (run, replace) = match (run, job.overlap) {
                (None, _) => (None, vec![]),
                (Some((t, trig)), Overlap::Forbid) if !running.is_empty() => {
                    (Some((t, trig, "skipped_overlap")), vec![])
                }
                (Some((t, trig)), Overlap::Replace) => (Some((t, trig, "running")), running),
                (Some((t, trig)), _) => (Some((t, trig, "running")), vec![]),
            };
            decisions.push(Decision {
                job,
                tick,
                run,
                next,
                replace,
            });
        }
        // One transaction: advance every job (compare-and-set) and insert its run row.
        let lease_until = now + s.config.lease_ttl.as_millis() as i64;
        let mut statements = Vec::with_capacity(decisions.len() * 2);
        for d in &decisions {
            statements.push((
                "UPDATE scheduler_jobs SET next_run_at = $3 WHERE id = $1 AND next_run_at = $2"
                    .to_owned(),
                params![&d.job.id, d.tick, d.next],
            ));
            if let Some((at, trigger, outcome)) = d.run {
                let finished: Value = (outcome != "running").then_some(now).into();
                statements.push((
                    "INSERT INTO scheduler_runs (job_id, scheduled_for, trigger, instance, \
                     started_at, finished_at, outcome, lease_until) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
                     WHERE EXISTS (SELECT 1 FROM scheduler_jobs WHERE id = $1 \
                     AND next_run_at IS NOT DISTINCT FROM $9) \
                     ON CONFLICT (job_id, scheduled_for) DO NOTHING"
                        .to_owned(),
                    vec![
                        d.job.id.clone().into(),
                        at.into(),
                        trigger.into(),
                        s.instance.clone().into(),
                        now.into(),
                        finished,
                        outcome.into(),
                        lease_until.into(),
                        Value::from(d.next),
                    ],
                ));
            }
        }
        let changed = s.store.db.batch(statements).await?;
        let mut i = 0;
        for d in decisions {
            let advanced = changed[i] > 0;
            i += 1;
            let inserted = if d.run.is_some() {
                i += 1;
                changed[i - 1] > 0
            } else {
                false
            };
            if !advanced || !inserted {
                continue;
            }
            let (at, _, outcome) = d.run.expect("checked above");
            if outcome != "running" {
                continue;
            }
            for old in d.replace {
                replace_run(s, &old, now).await;
            }
            start(s, d.job.id.clone(), d.job.action.clone(), at, None);
        }
        if !full {
            return Ok(());
        }
    }
}

/// The runs not finished whose claim holds, by job.
async fn live_runs(
    s: &Scheduler,
    now: i64,
) -> Result<HashMap<String, Vec<Run>>, kickstand_service::DbError> {
    let rows = s
        .store
        .db
        .query(
            &format!(
                "SELECT {} FROM scheduler_runs WHERE finished_at IS NULL AND lease_until > $1",
                crate::store::RUN_COLUMNS
            ),
            params![now],
        )
        .await?;
    let mut out: HashMap<String, Vec<Run>> = HashMap::new();
    for r in rows {
        let run = Run::from_row(&r)?;
        out.entry(run.job_id.clone()).or_default().push(run);
    }
    Ok(out)
}

/// Ends a previous run for `replace`: marks it `replaced`, stops its task here, cancels its
/// script run.
pub async fn replace_run(s: &Scheduler, old: &Run, now: i64) {
    if let Some(handle) = s
        .inflight
        .lock()
        .remove(&(old.job_id.clone(), old.scheduled_for))
    {
        handle.abort();
    }
    if let Err(error) = s
        .store
        .finish_run(
            old.id,
            "replaced",
            None,
            Some("replaced by a newer run"),
            now,
        )
        .await
    {
        tracing::warn!(message = "could not mark a replaced run", %error);
    }
    if let Some(script) = &old.script_run_id
        && let Err(error) = s.client.cancel_script(script).await
    {
        tracing::warn!(message = "could not cancel the replaced script run", script_run = %script, %error);
    }
}

/// Starts performing a run whose row exists (claimed by this process); `resume` is a script
/// run already started (a takeover).
pub fn start(
    s: &Arc<Scheduler>,
    job_id: String,
    action: Action,
    scheduled_for: i64,
    resume: Option<String>,
) {
    let me = s.clone();
    let key = (job_id.clone(), scheduled_for);
    let mut inflight = s.inflight.lock();
    let task = tokio::spawn(async move {
        perform(&me, &job_id, &action, scheduled_for, resume).await;
        me.inflight.lock().remove(&(job_id, scheduled_for));
    });
    inflight.insert(key, task.abort_handle());
}

async fn perform(
    s: &Arc<Scheduler>,
    job_id: &str,
    action: &Action,
    scheduled_for: i64,
    resume: Option<String>,
) {
    let idempotency_key = format!("job-{job_id}-{scheduled_for}");
    let heartbeat = {
        let s = s.clone();
        let job_id = job_id.to_owned();
        tokio::spawn(async move {
            let every = s.config.lease_ttl / 3;
            loop {
                tokio::time::sleep(every).await;
                let until = now_ms() + s.config.lease_ttl.as_millis() as i64;
                if let Err(error) = s
                    .store
                    .db
                    .execute(
                        "UPDATE scheduler_runs SET lease_until = $3 WHERE job_id = $1 \
                         AND scheduled_for = $2 AND finished_at IS NULL",
                        params![&job_id, scheduled_for, until],
                    )
                    .await
                {
                    tracing::warn!(message = "run heartbeat failed", %error);
                }
            }
        })
    };
    let run_id = match resume {
        Some(id) => Some(id),
        None => match s.client.perform(action, &idempotency_key).await {
            Outcome::Done(answer) => {
                finish(
                    s,
                    job_id,
                    scheduled_for,
                    "succeeded",
                    Some(answer.to_string()),
                    None,
                );
                None
            }
            Outcome::Failed(error) => {
                finish(s, job_id, scheduled_for, "failed", None, Some(error));
                None
            }
            Outcome::Started { run_id, answer } => {
                if let Err(error) = s
                    .store
                    .db
                    .execute(
                        "UPDATE scheduler_runs SET script_run_id = $3, answer = $4 \
                         WHERE job_id = $1 AND scheduled_for = $2",
                        params![job_id, scheduled_for, &run_id, answer.to_string()],
                    )
                    .await
                {
                    tracing::warn!(message = "could not record the script run id", %error);
                }
                Some(run_id)
            }
        },
    };
    if let Some(run_id) = run_id {
        // Poll the script run until it ends.
        let mut failures = 0;
        loop {
            match s.client.script_status(&run_id).await {
                Ok(st) if st.finished() => {
                    let outcome = match st.status.as_str() {
                        "succeeded" => "succeeded",
                        "timed_out" => "timed_out",
                        "cancelled" => "cancelled",
                        _ => "failed",
                    };
                    finish(
                        s,
                        job_id,
                        scheduled_for,
                        outcome,
                        Some(st.answer.to_string()),
                        None,
                    );
                    break;
                }
                Ok(_) => failures = 0,
                Err(error) => {
                    failures += 1;
                    if failures >= 10 {
                        finish(s, job_id, scheduled_for, "failed", None, Some(error));
                        break;
                    }
                }
            }
            tokio::time::sleep(s.config.script_poll).await;
        }
    }
    heartbeat.abort();
}

fn finish(
    s: &Scheduler,
    job_id: &str,
    scheduled_for: i64,
    outcome: &'static str,
    answer: Option<String>,
    error: Option<String>,
) {
    let f = Finished {
        job_id: job_id.to_owned(),
        scheduled_for,
        outcome,
        answer,
        error,
        at: now_ms(),
    };
    if let Err(mpsc::error::TrySendError::Full(f) | mpsc::error::TrySendError::Closed(f)) =
        s.finished.try_send(f)
    {
        // The writer is behind (or gone at shutdown): write this one directly.
        let store = s.store.clone();
        tokio::spawn(async move { write_finished(&store, vec![f]).await });
    }
}

/// Writes finished runs in batches until the channel closes.
pub async fn finish_writer(store: crate::store::Store, mut rx: mpsc::Receiver<Finished>) {
    let mut buf = Vec::new();
    while rx.recv_many(&mut buf, 1_000).await > 0 {
        write_finished(&store, std::mem::take(&mut buf)).await;
    }
}

async fn write_finished(store: &crate::store::Store, done: Vec<Finished>) {
    let statements = done
        .into_iter()
        .map(|f| {
            (
                "UPDATE scheduler_runs SET outcome = $3, answer = COALESCE($4, answer), \
                 error = $5, finished_at = $6 WHERE job_id = $1 AND scheduled_for = $2 \
                 AND finished_at IS NULL"
                    .to_owned(),
                params![
                    f.job_id,
                    f.scheduled_for,
                    f.outcome,
                    f.answer,
                    f.error,
                    f.at
                ],
            )
        })
        .collect();
    for attempt in 0..5 {
        match store.db.batch(Vec::clone(&statements)).await {
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(message = "could not record finished runs", %error, attempt);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Takes over the runs whose scheduler died (claim expired): re-performs each with its
/// idempotency key (the receiver answers the first result), or resumes polling its script run.
/// After 3 takeovers a run is marked failed.
pub async fn adopt_orphans(s: &Arc<Scheduler>) -> Result<(), kickstand_service::DbError> {
    let now = now_ms();
    let orphans = s.store.orphaned_runs(now, 100).await?;
    let mine: HashSet<(String, i64)> = s.inflight.lock().keys().cloned().collect();
    for run in orphans {
        if mine.contains(&(run.job_id.clone(), run.scheduled_for)) {
            continue;
        }
        if run.takeovers >= 3 {
            s.store
                .finish_run(
                    run.id,
                    "failed",
                    None,
                    Some("its scheduler died three times"),
                    now,
                )
                .await?;
            continue;
        }
        let lease_until = now + s.config.lease_ttl.as_millis() as i64;
        if !s.store.take_over(&run, &s.instance, lease_until).await? {
            continue;
        }
        let Some(job) = s.store.job(&run.job_id).await? else {
            s.store
                .finish_run(run.id, "cancelled", None, Some("the job was deleted"), now)
                .await?;
            continue;
        };
        tracing::info!(message = "taking over an orphaned run", job = %run.job_id, scheduled_for = run.scheduled_for, from = %run.instance);
        start(s, job.id, job.action, run.scheduled_for, run.script_run_id);
    }
    Ok(())
}
