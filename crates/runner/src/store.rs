//! The runner's records in the ops database (component `runner`): one row per run in
//! `runner_runs` and the audit log in `runner_audit`. The same SQL serves SQLite and
//! PostgreSQL; booleans are 0/1 integers.
//!
//! Secret argument values never reach this module: callers pass the redacted arguments.

use kickstand_service::{Db, DbError, Migration, Row, Value, params};
use serde_json::{Map, Value as Json};

pub const COMPONENT: &str = "runner";

const RUNS: &str = "CREATE TABLE runner_runs (
    id TEXT PRIMARY KEY,
    script TEXT NOT NULL,
    status TEXT NOT NULL,
    args TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    started_by TEXT NOT NULL,
    instance TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    heartbeat_at BIGINT NOT NULL,
    exit_code BIGINT,
    signal BIGINT,
    error TEXT,
    stdout TEXT,
    stderr TEXT,
    output_bytes BIGINT NOT NULL DEFAULT 0,
    truncated BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runner_runs_by_time ON runner_runs (created_at, id);
CREATE INDEX runner_runs_active ON runner_runs (status, instance);";

pub const MIGRATIONS: &[Migration] = &[
    Migration::same(1, "runs", RUNS),
    Migration {
        version: 2,
        name: "audit",
        sqlite: "CREATE TABLE runner_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at BIGINT NOT NULL,
            who TEXT NOT NULL,
            action TEXT NOT NULL,
            script TEXT NOT NULL,
            run_id TEXT,
            args TEXT,
            outcome TEXT NOT NULL)",
        postgres: "CREATE TABLE runner_audit (
            id BIGSERIAL PRIMARY KEY,
            at BIGINT NOT NULL,
            who TEXT NOT NULL,
            action TEXT NOT NULL,
            script TEXT NOT NULL,
            run_id TEXT,
            args TEXT,
            outcome TEXT NOT NULL)",
    },
];

/// A run's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// One run as stored.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub id: String,
    pub script: String,
    pub status: Status,
    /// The arguments with secrets redacted.
    pub args: Map<String, Json>,
    pub started_by: String,
    pub instance: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub error: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub output_bytes: i64,
    pub truncated: bool,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct Ending {
    pub status: Status,
    pub finished_at: i64,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub output_bytes: i64,
    pub truncated: bool,
}

const COLUMNS: &str = "id, script, status, args, started_by, instance, created_at, started_at, \
    finished_at, exit_code, signal, error, output_bytes, truncated";

fn decode(row: &Row, with_output: bool) -> Result<RunRecord, DbError> {
    let status = row.text(2)?;
    let args: Map<String, Json> =
        serde_json::from_str(row.text(3)?).map_err(|e| DbError::Decode(3, format!("args: {e}")))?;
    Ok(RunRecord {
        id: row.text(0)?.to_owned(),
        script: row.text(1)?.to_owned(),
        status: Status::parse(status)
            .ok_or_else(|| DbError::Decode(2, format!("unknown status {status:?}")))?,
        args,
        started_by: row.text(4)?.to_owned(),
        instance: row.text(5)?.to_owned(),
        created_at: row.int(6)?,
        started_at: row.opt_int(7)?,
        finished_at: row.opt_int(8)?,
        exit_code: row.opt_int(9)?,
        signal: row.opt_int(10)?,
        error: row.opt_text(11)?.map(str::to_owned),
        output_bytes: row.int(12)?,
        truncated: row.bool(13)?,
        stdout: if with_output {
            row.opt_text(14)?.map(str::to_owned)
        } else {
            None
        },
        stderr: if with_output {
            row.opt_text(15)?.map(str::to_owned)
        } else {
            None
        },
    })
}

/// The runner's queries.
#[derive(Clone)]
pub struct Store {
    pub db: Db,
}

/// A run found by its idempotency key.
pub struct KeyedRun {
    pub id: String,
    pub script: String,
    pub digest: String,
}

impl Store {
    pub async fn open(db: Db) -> Result<Store, DbError> {
        db.migrate(COMPONENT, MIGRATIONS).await?;
        Ok(Store { db })
    }

    /// Records a new queued run; `DbError::Unique` when the idempotency key is taken.
    pub async fn insert(
        &self,
        run: &RunRecord,
        digest: &str,
        key: Option<&str>,
    ) -> Result<(), DbError> {
        self.db
            .execute(
                "INSERT INTO runner_runs (id, script, status, args, args_digest, idempotency_key, \
                 started_by, instance, created_at, heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                params![
                    run.id.as_str(),
                    run.script.as_str(),
                    run.status.as_str(),
                    Json::Object(run.args.clone()).to_string(),
                    digest,
                    key,
                    run.started_by.as_str(),
                    run.instance.as_str(),
                    run.created_at
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn by_key(&self, key: &str) -> Result<Option<KeyedRun>, DbError> {
        let row = self
            .db
            .query_opt(
                "SELECT id, script, args_digest FROM runner_runs WHERE idempotency_key = $1",
                params![key],
            )
            .await?;
        row.map(|r| {
            Ok(KeyedRun {
                id: r.text(0)?.to_owned(),
                script: r.text(1)?.to_owned(),
                digest: r.text(2)?.to_owned(),
            })
        })
        .transpose()
    }

    pub async fn mark_running(&self, id: &str, at: i64) -> Result<(), DbError> {
        self.db
            .execute(
                "UPDATE runner_runs SET status = 'running', started_at = $2, heartbeat_at = $2 \
                 WHERE id = $1 AND status = 'queued'",
                params![id, at],
            )
            .await?;
        Ok(())
    }

    /// Records how a run ended (only a run not ended yet); the audit row in the same
    /// transaction.
    pub async fn finish(&self, id: &str, end: &Ending, audit: Audit<'_>) -> Result<(), DbError> {
        self.db
            .batch(vec![
                (
                    "UPDATE runner_runs SET status = $2, finished_at = $3, exit_code = $4, \
                     signal = $5, error = $6, stdout = $7, stderr = $8, output_bytes = $9, \
                     truncated = $10 WHERE id = $1 AND status IN ('queued', 'running')"
                        .into(),
                    params![
                        id,
                        end.status.as_str(),
                        end.finished_at,
                        end.exit_code,
                        end.signal,
                        end.error.as_deref(),
                        end.stdout.as_str(),
                        end.stderr.as_str(),
                        end.output_bytes,
                        end.truncated
                    ],
                ),
                audit.statement(),
            ])
            .await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<RunRecord>, DbError> {
        let sql = format!("SELECT {COLUMNS}, stdout, stderr FROM runner_runs WHERE id = $1");
        self.db
            .query_opt(&sql, params![id])
            .await?
            .map(|r| decode(&r, true))
            .transpose()
    }

    /// Runs newest first, after `cursor` (`created_at:id` of the last run of the previous
    /// page), without their output.
    pub async fn list(
        &self,
        script: Option<&str>,
        status: Option<Status>,
        cursor: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, DbError> {
        let mut sql = format!("SELECT {COLUMNS} FROM runner_runs WHERE 1 = 1");
        let mut p: Vec<Value> = Vec::new();
        if let Some(s) = script {
            p.push(s.into());
            sql.push_str(&format!(" AND script = ${}", p.len()));
        }
        if let Some(s) = status {
            p.push(s.as_str().into());
            sql.push_str(&format!(" AND status = ${}", p.len()));
        }
        if let Some((at, id)) = cursor {
            p.push(at.into());
            p.push(id.into());
            let (a, b) = (p.len() - 1, p.len());
            sql.push_str(&format!(
                " AND (created_at < ${a} OR (created_at = ${a} AND id < ${b}))"
            ));
        }
        p.push((limit as i64).into());
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${}",
            p.len()
        ));
        self.db
            .query(&sql, p)
            .await?
            .iter()
            .map(|r| decode(r, false))
            .collect()
    }

    /// Marks the runs `instance` left queued or running as failed; returns how many.
    pub async fn fail_abandoned(&self, instance: &str, reason: &str) -> Result<u64, DbError> {
        self.db
            .execute(
                "UPDATE runner_runs SET status = 'failed', error = $2, finished_at = $3 \
                 WHERE instance = $1 AND status IN ('queued', 'running')",
                params![instance, reason, kickstand_service::now_ms()],
            )
            .await
    }

    /// Marks runs of other instances whose heartbeat is older than `before` as failed.
    pub async fn fail_silent(&self, before: i64) -> Result<u64, DbError> {
        self.db
            .execute(
                "UPDATE runner_runs SET status = 'failed', \
                 error = 'runner lost (no heartbeat)', finished_at = $2 \
                 WHERE status IN ('queued', 'running') AND heartbeat_at < $1",
                params![before, kickstand_service::now_ms()],
            )
            .await
    }

    /// Refreshes the heartbeat of `instance`'s active runs.
    pub async fn heartbeat(&self, instance: &str, at: i64) -> Result<(), DbError> {
        self.db
            .execute(
                "UPDATE runner_runs SET heartbeat_at = $2 \
                 WHERE instance = $1 AND status IN ('queued', 'running')",
                params![instance, at],
            )
            .await?;
        Ok(())
    }

    /// Asks for a run to be cancelled (by whichever process runs it); false when it has ended.
    pub async fn request_cancel(&self, id: &str) -> Result<bool, DbError> {
        Ok(self
            .db
            .execute(
                "UPDATE runner_runs SET cancel_requested = 1 \
                 WHERE id = $1 AND status IN ('queued', 'running')",
                params![id],
            )
            .await?
            > 0)
    }

    /// The active runs of `instance` someone asked to cancel.
    pub async fn cancel_requests(&self, instance: &str) -> Result<Vec<String>, DbError> {
        self.db
            .query(
                "SELECT id FROM runner_runs WHERE instance = $1 AND cancel_requested = 1 \
                 AND status IN ('queued', 'running')",
                params![instance],
            )
            .await?
            .iter()
            .map(|r| r.text(0).map(str::to_owned))
            .collect()
    }

    pub async fn audit(&self, audit: Audit<'_>) -> Result<(), DbError> {
        let (sql, p) = audit.statement();
        self.db.execute(&sql, p).await?;
        Ok(())
    }

    /// The audit log, newest first, before the entry `before` (an id).
    pub async fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, DbError> {
        let rows = self
            .db
            .query(
                "SELECT id, at, who, action, script, run_id, args, outcome FROM runner_audit \
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
                params![before.unwrap_or(i64::MAX), limit as i64],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.int(0)?,
                    at: r.int(1)?,
                    who: r.text(2)?.to_owned(),
                    action: r.text(3)?.to_owned(),
                    script: r.text(4)?.to_owned(),
                    run_id: r.opt_text(5)?.map(str::to_owned),
                    args: r.opt_text(6)?.and_then(|a| serde_json::from_str(a).ok()),
                    outcome: r.text(7)?.to_owned(),
                })
            })
            .collect()
    }
}

/// An audit record to write: who did what to which script, with the redacted arguments.
pub struct Audit<'a> {
    pub who: &'a str,
    pub action: &'a str,
    pub script: &'a str,
    pub run_id: Option<&'a str>,
    pub args: Option<&'a Map<String, Json>>,
    pub outcome: &'a str,
}

impl Audit<'_> {
    fn statement(&self) -> (String, Vec<Value>) {
        (
            "INSERT INTO runner_audit (at, who, action, script, run_id, args, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
                .into(),
            params![
                kickstand_service::now_ms(),
                self.who,
                self.action,
                self.script,
                self.run_id,
                self.args.map(|a| Json::Object(a.clone()).to_string()),
                self.outcome
            ],
        )
    }
}

/// One audit record as read.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub who: String,
    pub action: String,
    pub script: String,
    pub run_id: Option<String>,
    pub args: Option<Json>,
    pub outcome: String,
}
