//! The scheduler's records in the ops database (component `scheduler`): jobs, their runs,
//! rules, the rule history, cool-downs and the rules' event cursor.
//!
//! **Invariant:** a run row is unique by `(job_id, scheduled_for)` and a rule history row by
//! `(rule_id, event_id)`: whichever process inserts it first is the one that acts.

use crate::action::Action;
use crate::schedule::ScheduleSpec;
use kickstand_service::{Db, DbError, Migration, Row, Value, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const COMPONENT: &str = "scheduler";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "jobs, runs, rules, rule history, cool-downs, cursor",
    sqlite: "
        CREATE TABLE scheduler_jobs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            schedule TEXT NOT NULL,
            action TEXT NOT NULL,
            action_kind TEXT NOT NULL,
            overlap TEXT NOT NULL,
            missed TEXT NOT NULL,
            missed_deadline_ms INTEGER NOT NULL,
            paused INTEGER NOT NULL,
            anchor INTEGER NOT NULL,
            next_run_at INTEGER,
            created_by TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL);
        CREATE INDEX scheduler_jobs_due ON scheduler_jobs (next_run_at) WHERE paused = 0;
        CREATE TABLE scheduler_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            scheduled_for INTEGER NOT NULL,
            trigger TEXT NOT NULL,
            instance TEXT NOT NULL,
            started_at INTEGER NOT NULL,
            finished_at INTEGER,
            outcome TEXT NOT NULL,
            answer TEXT,
            script_run_id TEXT,
            error TEXT,
            lease_until INTEGER NOT NULL,
            takeovers INTEGER NOT NULL DEFAULT 0,
            UNIQUE (job_id, scheduled_for));
        CREATE INDEX scheduler_runs_open ON scheduler_runs (lease_until) WHERE finished_at IS NULL;
        CREATE TABLE scheduler_rules (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            kinds TEXT NOT NULL,
            zone_id TEXT,
            vehicle_pattern TEXT,
            action TEXT NOT NULL,
            cooldown_secs INTEGER NOT NULL,
            paused INTEGER NOT NULL,
            created_by TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL);
        CREATE TABLE scheduler_rule_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rule_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            event_seq INTEGER NOT NULL,
            event_kind TEXT NOT NULL,
            vehicle_id TEXT NOT NULL,
            at INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            answer TEXT,
            error TEXT,
            UNIQUE (rule_id, event_id));
        CREATE TABLE scheduler_cooldowns (
            rule_id TEXT NOT NULL,
            vehicle_id TEXT NOT NULL,
            last_fired_ts INTEGER NOT NULL,
            PRIMARY KEY (rule_id, vehicle_id));
        CREATE TABLE scheduler_state (
            key TEXT PRIMARY KEY,
            value INTEGER NOT NULL);",
    postgres: "
        CREATE TABLE scheduler_jobs (
            id text PRIMARY KEY,
            name text NOT NULL,
            schedule text NOT NULL,
            action text NOT NULL,
            action_kind text NOT NULL,
            overlap text NOT NULL,
            missed text NOT NULL,
            missed_deadline_ms bigint NOT NULL,
            paused bigint NOT NULL,
            anchor bigint NOT NULL,
            next_run_at bigint,
            created_by text NOT NULL,
            created_at bigint NOT NULL,
            updated_at bigint NOT NULL);
        CREATE INDEX scheduler_jobs_due ON scheduler_jobs (next_run_at) WHERE paused = 0;
        CREATE TABLE scheduler_runs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id text NOT NULL,
            scheduled_for bigint NOT NULL,
            trigger text NOT NULL,
            instance text NOT NULL,
            started_at bigint NOT NULL,
            finished_at bigint,
            outcome text NOT NULL,
            answer text,
            script_run_id text,
            error text,
            lease_until bigint NOT NULL,
            takeovers bigint NOT NULL DEFAULT 0,
            UNIQUE (job_id, scheduled_for));
        CREATE INDEX scheduler_runs_open ON scheduler_runs (lease_until) WHERE finished_at IS NULL;
        CREATE TABLE scheduler_rules (
            id text PRIMARY KEY,
            name text NOT NULL,
            kinds text NOT NULL,
            zone_id text,
            vehicle_pattern text,
            action text NOT NULL,
            cooldown_secs bigint NOT NULL,
            paused bigint NOT NULL,
            created_by text NOT NULL,
            created_at bigint NOT NULL,
            updated_at bigint NOT NULL);
        CREATE TABLE scheduler_rule_history (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            rule_id text NOT NULL,
            event_id text NOT NULL,
            event_seq bigint NOT NULL,
            event_kind text NOT NULL,
            vehicle_id text NOT NULL,
            at bigint NOT NULL,
            outcome text NOT NULL,
            answer text,
            error text,
            UNIQUE (rule_id, event_id));
        CREATE TABLE scheduler_cooldowns (
            rule_id text NOT NULL,
            vehicle_id text NOT NULL,
            last_fired_ts bigint NOT NULL,
            PRIMARY KEY (rule_id, vehicle_id));
        CREATE TABLE scheduler_state (
            key text PRIMARY KEY,
            value bigint NOT NULL);",
}];

/// What happens to a tick while the job's previous run is still running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start the new run anyway.
    Allow,
    /// Skip the tick (recorded as `skipped_overlap`).
    #[default]
    Forbid,
    /// Cancel the previous run, then start the new one.
    Replace,
}

/// What happens to ticks missed while no scheduler ran (or ran late).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Drop them; the job runs at its next tick.
    #[default]
    Skip,
    /// One catch-up run for the latest missed tick, if that tick is within `missed_deadline`.
    RunOnce,
}

fn enum_text<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("a unit enum serializes to a string")
}

fn enum_parse<T: for<'de> Deserialize<'de>>(text: &str, i: usize) -> Result<T, DbError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|e| DbError::Decode(i, e.to_string()))
}

fn json_parse<T: for<'de> Deserialize<'de>>(text: &str, i: usize) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Decode(i, e.to_string()))
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub schedule: ScheduleSpec,
    pub action: Action,
    pub overlap: Overlap,
    pub missed: Missed,
    pub missed_deadline_ms: i64,
    pub paused: bool,
    /// Where an interval's ticks are counted from (the creation time, or the last change of
    /// the schedule).
    pub anchor: i64,
    /// The next tick; `None` when there is none (a one-off job that ran).
    pub next_run_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const JOB_COLUMNS: &str = "id, name, schedule, action, overlap, missed, missed_deadline_ms, \
    paused, anchor, next_run_at, created_by, created_at, updated_at";

impl Job {
    pub fn from_row(r: &Row) -> Result<Job, DbError> {
        Ok(Job {
            id: r.text(0)?.to_owned(),
            name: r.text(1)?.to_owned(),
            schedule: json_parse(r.text(2)?, 2)?,
            action: json_parse(r.text(3)?, 3)?,
            overlap: enum_parse(r.text(4)?, 4)?,
            missed: enum_parse(r.text(5)?, 5)?,
            missed_deadline_ms: r.int(6)?,
            paused: r.bool(7)?,
            anchor: r.int(8)?,
            next_run_at: r.opt_int(9)?,
            created_by: r.text(10)?.to_owned(),
            created_at: r.int(11)?,
            updated_at: r.int(12)?,
        })
    }

    fn values(&self) -> Vec<Value> {
        params![
            &self.id,
            &self.name,
            serde_json::to_string(&self.schedule).expect("a schedule serializes"),
            serde_json::to_string(&self.action).expect("an action serializes"),
            enum_text(&self.overlap),
            enum_text(&self.missed),
            self.missed_deadline_ms,
            self.paused,
            self.anchor,
            self.next_run_at,
            &self.created_by,
            self.created_at,
            self.updated_at,
            self.action.kind()
        ]
    }
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub id: i64,
    pub job_id: String,
    pub scheduled_for: i64,
    /// `schedule`, `catch_up` or `manual`.
    pub trigger: String,
    /// The scheduler process that ran it (the last one, after a takeover).
    pub instance: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// `running`, `succeeded`, `failed`, `timed_out`, `cancelled`, `replaced`,
    /// `skipped_overlap`.
    pub outcome: String,
    pub answer: Option<String>,
    pub script_run_id: Option<String>,
    pub error: Option<String>,
    pub lease_until: i64,
    pub takeovers: i64,
}

pub const RUN_COLUMNS: &str = "id, job_id, scheduled_for, trigger, instance, started_at, \
    finished_at, outcome, answer, script_run_id, error, lease_until, takeovers";

impl Run {
    pub fn from_row(r: &Row) -> Result<Run, DbError> {
        Ok(Run {
            id: r.int(0)?,
            job_id: r.text(1)?.to_owned(),
            scheduled_for: r.int(2)?,
            trigger: r.text(3)?.to_owned(),
            instance: r.text(4)?.to_owned(),
            started_at: r.int(5)?,
            finished_at: r.opt_int(6)?,
            outcome: r.text(7)?.to_owned(),
            answer: r.opt_text(8)?.map(str::to_owned),
            script_run_id: r.opt_text(9)?.map(str::to_owned),
            error: r.opt_text(10)?.map(str::to_owned),
            lease_until: r.int(11)?,
            takeovers: r.int(12)?,
        })
    }
}

/// A rule as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: String,
    pub name: String,
    /// Event kinds (`battery_low`, …); at least one.
    pub kinds: Vec<String>,
    pub zone_id: Option<String>,
    pub vehicle_pattern: Option<String>,
    pub action: Action,
    pub cooldown_secs: i64,
    pub paused: bool,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const RULE_COLUMNS: &str = "id, name, kinds, zone_id, vehicle_pattern, action, \
    cooldown_secs, paused, created_by, created_at, updated_at";

impl Rule {
    pub fn from_row(r: &Row) -> Result<Rule, DbError> {
        Ok(Rule {
            id: r.text(0)?.to_owned(),
            name: r.text(1)?.to_owned(),
            kinds: json_parse(r.text(2)?, 2)?,
            zone_id: r.opt_text(3)?.map(str::to_owned),
            vehicle_pattern: r.opt_text(4)?.map(str::to_owned),
            action: json_parse(r.text(5)?, 5)?,
            cooldown_secs: r.int(6)?,
            paused: r.bool(7)?,
            created_by: r.text(8)?.to_owned(),
            created_at: r.int(9)?,
            updated_at: r.int(10)?,
        })
    }

    fn values(&self) -> Vec<Value> {
        params![
            &self.id,
            &self.name,
            serde_json::to_string(&self.kinds).expect("strings serialize"),
            self.zone_id.clone(),
            self.vehicle_pattern.clone(),
            serde_json::to_string(&self.action).expect("an action serializes"),
            self.cooldown_secs,
            self.paused,
            &self.created_by,
            self.created_at,
            self.updated_at
        ]
    }
}

/// The scheduler's queries.
#[derive(Clone)]
pub struct Store {
    pub db: Db,
}

impl Store {
    pub async fn open(db: Db) -> Result<Store, DbError> {
        db.migrate(COMPONENT, MIGRATIONS).await?;
        Ok(Store { db })
    }

    pub async fn insert_job(&self, job: &Job) -> Result<(), DbError> {
        self.db
            .execute(
                &format!(
                    "INSERT INTO scheduler_jobs ({JOB_COLUMNS}, action_kind) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                ),
                job.values(),
            )
            .await
            .map(drop)
    }

    /// Inserts many jobs in one transaction (bulk loads, the benchmark).
    pub async fn insert_jobs(&self, jobs: &[Job]) -> Result<(), DbError> {
        let sql = format!(
            "INSERT INTO scheduler_jobs ({JOB_COLUMNS}, action_kind) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        );
        self.db
            .batch(jobs.iter().map(|j| (sql.clone(), j.values())).collect())
            .await
            .map(drop)
    }

    /// Replaces every field of a stored job; `false` when there is none.
    pub async fn update_job(&self, job: &Job) -> Result<bool, DbError> {
        let n = self
            .db
            .execute(
                "UPDATE scheduler_jobs SET name = $2, schedule = $3, action = $4, overlap = $5, \
                 missed = $6, missed_deadline_ms = $7, paused = $8, anchor = $9, \
                 next_run_at = $10, created_by = $11, created_at = $12, updated_at = $13, \
                 action_kind = $14 WHERE id = $1",
                job.values(),
            )
            .await?;
        Ok(n > 0)
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>, DbError> {
        self.db
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM scheduler_jobs WHERE id = $1"),
                params![id],
            )
            .await?
            .map(|r| Job::from_row(&r))
            .transpose()
    }

    /// A page of jobs by id, after `cursor`, with optional filters.
    pub async fn list_jobs(
        &self,
        cursor: &str,
        paused: Option<bool>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>, DbError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM scheduler_jobs WHERE id > $1 \
                     AND ($2 < 0 OR paused = $2) AND ($3 = '' OR action_kind = $3) \
                     ORDER BY id LIMIT $4"
                ),
                params![
                    cursor,
                    paused.map_or(-1, i64::from),
                    kind.unwrap_or(""),
                    limit as i64
                ],
            )
            .await?;
        rows.iter().map(Job::from_row).collect()
    }

    /// Deletes a job and its runs; `false` when there was none.
    pub async fn delete_job(&self, id: &str) -> Result<bool, DbError> {
        let n = self
            .db
            .batch(vec![
                (
                    "DELETE FROM scheduler_runs WHERE job_id = $1".into(),
                    params![id],
                ),
                (
                    "DELETE FROM scheduler_jobs WHERE id = $1".into(),
                    params![id],
                ),
            ])
            .await?;
        Ok(n[1] > 0)
    }

    pub async fn set_job_paused(&self, id: &str, paused: bool, now: i64) -> Result<bool, DbError> {
        let n = self
            .db
            .execute(
                "UPDATE scheduler_jobs SET paused = $2, updated_at = $3 WHERE id = $1",
                params![id, paused, now],
            )
            .await?;
        Ok(n > 0)
    }

    /// Jobs due at `now` (not paused, next tick at or before it), earliest first.
    pub async fn due_jobs(&self, now: i64, limit: usize) -> Result<Vec<Job>, DbError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM scheduler_jobs WHERE paused = 0 \
                     AND next_run_at IS NOT NULL AND next_run_at <= $1 \
                     ORDER BY next_run_at LIMIT $2"
                ),
                params![now, limit as i64],
            )
            .await?;
        rows.iter().map(Job::from_row).collect()
    }

    /// The earliest next tick of an active job.
    pub async fn earliest_due(&self) -> Result<Option<i64>, DbError> {
        let row = self
            .db
            .query_opt(
                "SELECT MIN(next_run_at) FROM scheduler_jobs WHERE paused = 0",
                params![],
            )
            .await?;
        Ok(row.and_then(|r| r.opt_int(0).ok().flatten()))
    }

    /// Moves a job's next tick from `from` to `to`; `false` when another process moved it
    /// first (it claimed that tick).
    pub async fn advance(&self, id: &str, from: i64, to: Option<i64>) -> Result<bool, DbError> {
        let n = self
            .db
            .execute(
                "UPDATE scheduler_jobs SET next_run_at = $3 WHERE id = $1 AND next_run_at = $2",
                params![id, from, to],
            )
            .await?;
        Ok(n > 0)
    }

    /// Inserts a run for `(job, scheduled_for)`; `None` when that tick already has one.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_run(
        &self,
        job_id: &str,
        scheduled_for: i64,
        trigger: &str,
        instance: &str,
        now: i64,
        outcome: &str,
        lease_until: i64,
    ) -> Result<Option<i64>, DbError> {
        let finished = (outcome != "running").then_some(now);
        let row = self
            .db
            .query_opt(
                "INSERT INTO scheduler_runs (job_id, scheduled_for, trigger, instance, \
                 started_at, finished_at, outcome, lease_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (job_id, scheduled_for) DO NOTHING RETURNING id",
                params![
                    job_id,
                    scheduled_for,
                    trigger,
                    instance,
                    now,
                    finished,
                    outcome,
                    lease_until
                ],
            )
            .await?;
        row.map(|r| r.int(0)).transpose()
    }

    /// The job's runs not finished whose claim has not expired.
    pub async fn live_runs(&self, job_id: &str, now: i64) -> Result<Vec<Run>, DbError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM scheduler_runs WHERE job_id = $1 \
                     AND finished_at IS NULL AND lease_until > $2 ORDER BY id"
                ),
                params![job_id, now],
            )
            .await?;
        rows.iter().map(Run::from_row).collect()
    }

    /// Runs not finished whose claim expired (their scheduler died).
    pub async fn orphaned_runs(&self, now: i64, limit: usize) -> Result<Vec<Run>, DbError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM scheduler_runs WHERE finished_at IS NULL \
                     AND lease_until <= $1 ORDER BY id LIMIT $2"
                ),
                params![now, limit as i64],
            )
            .await?;
        rows.iter().map(Run::from_row).collect()
    }

    /// Takes over an orphaned run (compare-and-set on its expired claim).
    pub async fn take_over(
        &self,
        run: &Run,
        instance: &str,
        lease_until: i64,
    ) -> Result<bool, DbError> {
        let n = self
            .db
            .execute(
                "UPDATE scheduler_runs SET instance = $3, lease_until = $4, \
                 takeovers = takeovers + 1 WHERE id = $1 AND lease_until = $2 \
                 AND finished_at IS NULL",
                params![run.id, run.lease_until, instance, lease_until],
            )
            .await?;
        Ok(n > 0)
    }

    /// Extends the claim of a running run (the heartbeat).
    pub async fn heartbeat(&self, run_id: i64, lease_until: i64) -> Result<(), DbError> {
        self.db
            .execute(
                "UPDATE scheduler_runs SET lease_until = $2 WHERE id = $1 AND finished_at IS NULL",
                params![run_id, lease_until],
            )
            .await
            .map(drop)
    }

    pub async fn set_script_run(
        &self,
        run_id: i64,
        script_run_id: &str,
        answer: &str,
    ) -> Result<(), DbError> {
        self.db
            .execute(
                "UPDATE scheduler_runs SET script_run_id = $2, answer = $3 WHERE id = $1",
                params![run_id, script_run_id, answer],
            )
            .await
            .map(drop)
    }

    /// Records how a run ended (unless it ended already, e.g. as `replaced`).
    pub async fn finish_run(
        &self,
        run_id: i64,
        outcome: &str,
        answer: Option<&str>,
        error: Option<&str>,
        now: i64,
    ) -> Result<(), DbError> {
        self.db
            .execute(
                "UPDATE scheduler_runs SET outcome = $2, answer = COALESCE($3, answer), \
                 error = $4, finished_at = $5 WHERE id = $1 AND finished_at IS NULL",
                params![run_id, outcome, answer, error, now],
            )
            .await
            .map(drop)
    }

    pub async fn run(&self, run_id: i64) -> Result<Option<Run>, DbError> {
        self.db
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM scheduler_runs WHERE id = $1"),
                params![run_id],
            )
            .await?
            .map(|r| Run::from_row(&r))
            .transpose()
    }

    /// A page of a job's runs, newest first, before run id `before`.
    pub async fn runs(&self, job_id: &str, before: i64, limit: usize) -> Result<Vec<Run>, DbError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM scheduler_runs WHERE job_id = $1 AND id < $2 \
                     ORDER BY id DESC LIMIT $3"
                ),
                params![job_id, before, limit as i64],
            )
            .await?;
        rows.iter().map(Run::from_row).collect()
    }

    pub async fn insert_rule(&self, rule: &Rule) -> Result<(), DbError> {
        self.db
            .execute(
                &format!(
                    "INSERT INTO scheduler_rules ({RULE_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ),
                rule.values(),
            )
            .await
            .map(drop)
    }

    pub async fn update_rule(&self, rule: &Rule) -> Result<bool, DbError> {
        let n = self
            .db
            .execute(
                "UPDATE scheduler_rules SET name = $2, kinds = $3, zone_id = $4, \
                 vehicle_pattern = $5, action = $6, cooldown_secs = $7, paused = $8, \
                 created_by = $9, created_at = $10, updated_at = $11 WHERE id = $1",
                rule.values(),
            )
            .await?;
        Ok(n > 0)
    }

    pub async fn rule(&self, id: &str) -> Result<Option<Rule>, DbError> {
        self.db
            .query_opt(
                &format!("SELECT {RULE_COLUMNS} FROM scheduler_rules WHERE id = $1"),
                params![id],
            )
            .await?
            .map(|r| Rule::from_row(&r))
            .transpose()
    }

    pub async fn list_rules(&self, cursor: &str, limit: usize) -> Result<Vec<Rule>, DbError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {RULE_COLUMNS} FROM scheduler_rules WHERE id > $1 ORDER BY id LIMIT $2"
                ),
                params![cursor, limit as i64],
            )
            .await?;
        rows.iter().map(Rule::from_row).collect()
    }

    pub async fn active_rules(&self) -> Result<Vec<Rule>, DbError> {
        let rows = self
            .db
            .query(
                &format!("SELECT {RULE_COLUMNS} FROM scheduler_rules WHERE paused = 0 ORDER BY id"),
                params![],
            )
            .await?;
        rows.iter().map(Rule::from_row).collect()
    }

    pub async fn delete_rule(&self, id: &str) -> Result<bool, DbError> {
        let n = self
            .db
            .batch(vec![
                (
                    "DELETE FROM scheduler_rule_history WHERE rule_id = $1".into(),
                    params![id],
                ),
                (
                    "DELETE FROM scheduler_cooldowns WHERE rule_id = $1".into(),
                    params![id],
                ),
                (
                    "DELETE FROM scheduler_rules WHERE id = $1".into(),
                    params![id],
                ),
            ])
            .await?;
        Ok(n[2] > 0)
    }

    pub async fn set_rule_paused(&self, id: &str, paused: bool, now: i64) -> Result<bool, DbError> {
        let n = self
            .db
            .execute(
                "UPDATE scheduler_rules SET paused = $2, updated_at = $3 WHERE id = $1",
                params![id, paused, now],
            )
            .await?;
        Ok(n > 0)
    }

    /// `(fired, suppressed, failed)` counts of a rule.
    pub async fn rule_counts(&self, id: &str) -> Result<(i64, i64, i64), DbError> {
        let rows = self
            .db
            .query(
                "SELECT outcome, COUNT(*) FROM scheduler_rule_history WHERE rule_id = $1 GROUP BY outcome",
                params![id],
            )
            .await?;
        let mut c = (0, 0, 0);
        for r in rows {
            let n = r.int(1)?;
            match r.text(0)? {
                "fired" => c.0 = n,
                "suppressed" => c.1 = n,
                "failed" => c.2 = n,
                _ => {}
            }
        }
        Ok(c)
    }

    /// A page of a rule's history, newest first, before id `before`.
    pub async fn rule_history(
        &self,
        id: &str,
        before: i64,
        limit: usize,
    ) -> Result<Vec<Row>, DbError> {
        self.db
            .query(
                "SELECT id, event_id, event_seq, event_kind, vehicle_id, at, outcome, answer, error \
                 FROM scheduler_rule_history WHERE rule_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                params![id, before, limit as i64],
            )
            .await
    }

    pub async fn state(&self, key: &str) -> Result<Option<i64>, DbError> {
        self.db
            .query_opt(
                "SELECT value FROM scheduler_state WHERE key = $1",
                params![key],
            )
            .await?
            .map(|r| r.int(0))
            .transpose()
    }

    pub async fn set_state(&self, key: &str, value: i64) -> Result<(), DbError> {
        self.db
            .execute(
                "INSERT INTO scheduler_state (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .await
            .map(drop)
    }
}
