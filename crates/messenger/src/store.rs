//! The messenger's tables in the ops database (component `messenger`), and every statement the
//! messenger runs on them. The same SQL serves SQLite and PostgreSQL (`BIGINT` is an integer
//! on both) except the claim, which on PostgreSQL skips rows another process has locked.
//!
//! Messages move through `scheduled` / `queued` → `sending` (claimed by one process until
//! `claim_until`) → `sent`, back to `queued` (a retry, later), or `dead`. A claim that expired
//! is taken over by the next process that claims, so a crashed process loses nothing.

use kickstand_service::{Db, DbError, Dialect, Migration, Row, params};

pub const COMPONENT: &str = "messenger";

pub const MIGRATIONS: &[Migration] = &[Migration::same(
    1,
    "templates, messages, attempts, idempotency keys",
    "CREATE TABLE messenger_templates (
        name TEXT NOT NULL,
        version BIGINT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        html TEXT,
        variables TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (name, version));
    CREATE TABLE messenger_messages (
        id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        recipient TEXT,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        html TEXT,
        vars TEXT NOT NULL,
        template_name TEXT,
        template_version BIGINT,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        round_attempts BIGINT NOT NULL,
        due_at BIGINT NOT NULL,
        claimed_by TEXT,
        claim_until BIGINT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        last_error TEXT);
    CREATE INDEX messenger_messages_due ON messenger_messages (channel, status, due_at);
    CREATE INDEX messenger_messages_status ON messenger_messages (status, id);
    CREATE TABLE messenger_attempts (
        message_id TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        started_at BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        code BIGINT,
        answer TEXT,
        error TEXT,
        next_attempt_at BIGINT,
        PRIMARY KEY (message_id, attempt));
    CREATE TABLE messenger_idempotency (
        owner TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        status BIGINT,
        response TEXT,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (owner, idem_key));
    CREATE INDEX messenger_idempotency_age ON messenger_idempotency (created_at);",
)];

/// A stored template version.
#[derive(Clone, Debug)]
pub struct TemplateRow {
    pub name: String,
    pub version: i64,
    pub subject: String,
    pub body: String,
    pub html: Option<String>,
    pub variables: Vec<String>,
    pub created_at: i64,
    pub created_by: String,
}

const TEMPLATE_COLS: &str = "name, version, subject, body, html, variables, created_at, created_by";

fn template_row(r: &Row) -> Result<TemplateRow, DbError> {
    Ok(TemplateRow {
        name: r.text(0)?.to_owned(),
        version: r.int(1)?,
        subject: r.text(2)?.to_owned(),
        body: r.text(3)?.to_owned(),
        html: r.opt_text(4)?.map(str::to_owned),
        variables: serde_json::from_str(r.text(5)?).unwrap_or_default(),
        created_at: r.int(6)?,
        created_by: r.text(7)?.to_owned(),
    })
}

/// Stores the next version of a template; returns its number. Two writers racing for the
/// same number: the loser tries the next one.
pub async fn put_template(db: &Db, t: &TemplateRow) -> Result<i64, DbError> {
    let vars = serde_json::to_string(&t.variables).expect("strings serialize");
    for _ in 0..5 {
        let next = db
            .query_opt(
                "SELECT COALESCE(MAX(version), 0) FROM messenger_templates WHERE name = $1",
                params![&t.name],
            )
            .await?
            .map_or(Ok(0), |r| r.int(0))?
            + 1;
        match db
            .execute(
                "INSERT INTO messenger_templates (name, version, subject, body, html, variables, created_at, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                params![
                    &t.name,
                    next,
                    &t.subject,
                    &t.body,
                    t.html.as_deref(),
                    vars.as_str(),
                    t.created_at,
                    &t.created_by
                ],
            )
            .await
        {
            Ok(_) => return Ok(next),
            Err(DbError::Unique(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DbError::Sql(format!(
        "template {}: too many concurrent new versions",
        t.name
    )))
}

/// One version, or the latest when `version` is `None`.
pub async fn get_template(
    db: &Db,
    name: &str,
    version: Option<i64>,
) -> Result<Option<TemplateRow>, DbError> {
    let row = match version {
        Some(v) => {
            db.query_opt(
                &format!(
                    "SELECT {TEMPLATE_COLS} FROM messenger_templates WHERE name = $1 AND version = $2"
                ),
                params![name, v],
            )
            .await?
        }
        None => {
            db.query_opt(
                &format!(
                    "SELECT {TEMPLATE_COLS} FROM messenger_templates WHERE name = $1 ORDER BY version DESC LIMIT 1"
                ),
                params![name],
            )
            .await?
        }
    };
    row.as_ref().map(template_row).transpose()
}

/// Every version of a template: (version, created_at, created_by), oldest first.
pub async fn template_versions(db: &Db, name: &str) -> Result<Vec<(i64, i64, String)>, DbError> {
    db.query(
        "SELECT version, created_at, created_by FROM messenger_templates WHERE name = $1 ORDER BY version",
        params![name],
    )
    .await?
    .iter()
    .map(|r| Ok((r.int(0)?, r.int(1)?, r.text(2)?.to_owned())))
    .collect()
}

/// The latest version of every template, by name.
pub async fn list_templates(db: &Db) -> Result<Vec<TemplateRow>, DbError> {
    db.query(
        &format!(
            "SELECT {TEMPLATE_COLS} FROM messenger_templates t
             WHERE version = (SELECT MAX(version) FROM messenger_templates u WHERE u.name = t.name)
             ORDER BY name"
        ),
        params![],
    )
    .await?
    .iter()
    .map(template_row)
    .collect()
}

/// A message as stored.
#[derive(Clone, Debug)]
pub struct MessageRow {
    pub id: String,
    pub channel: String,
    pub to: Option<String>,
    pub subject: String,
    pub body: String,
    pub html: Option<String>,
    /// JSON text.
    pub vars: String,
    pub template_name: Option<String>,
    pub template_version: Option<i64>,
    pub status: String,
    pub attempts: i64,
    pub round_attempts: i64,
    pub due_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub created_by: String,
    pub last_error: Option<String>,
}

const MESSAGE_COLS: &str = "id, channel, recipient, subject, body, html, vars, template_name, \
    template_version, status, attempts, round_attempts, due_at, created_at, updated_at, \
    created_by, last_error";

fn message_row(r: &Row) -> Result<MessageRow, DbError> {
    Ok(MessageRow {
        id: r.text(0)?.to_owned(),
        channel: r.text(1)?.to_owned(),
        to: r.opt_text(2)?.map(str::to_owned),
        subject: r.text(3)?.to_owned(),
        body: r.text(4)?.to_owned(),
        html: r.opt_text(5)?.map(str::to_owned),
        vars: r.text(6)?.to_owned(),
        template_name: r.opt_text(7)?.map(str::to_owned),
        template_version: r.opt_int(8)?,
        status: r.text(9)?.to_owned(),
        attempts: r.int(10)?,
        round_attempts: r.int(11)?,
        due_at: r.int(12)?,
        created_at: r.int(13)?,
        updated_at: r.int(14)?,
        created_by: r.text(15)?.to_owned(),
        last_error: r.opt_text(16)?.map(str::to_owned),
    })
}

/// The statement that stores a new message (for [`Db::batch`], beside its idempotency answer).
pub fn insert_message(m: &MessageRow) -> (String, Vec<kickstand_service::Value>) {
    (
        format!(
            "INSERT INTO {} ({MESSAGE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            "messenger_messages"
        ),
        params![
            &m.id,
            &m.channel,
            m.to.as_deref(),
            &m.subject,
            &m.body,
            m.html.as_deref(),
            &m.vars,
            m.template_name.as_deref(),
            m.template_version,
            &m.status,
            m.attempts,
            m.round_attempts,
            m.due_at,
            m.created_at,
            m.updated_at,
            &m.created_by,
            m.last_error.as_deref()
        ],
    )
}

pub async fn get_message(db: &Db, id: &str) -> Result<Option<MessageRow>, DbError> {
    db.query_opt(
        &format!("SELECT {MESSAGE_COLS} FROM messenger_messages WHERE id = $1"),
        params![id],
    )
    .await?
    .as_ref()
    .map(message_row)
    .transpose()
}

/// A page of messages, newest first, with ids below `before`.
pub async fn list_messages(
    db: &Db,
    status: Option<&str>,
    channel: Option<&str>,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<MessageRow>, DbError> {
    let mut sql = format!("SELECT {MESSAGE_COLS} FROM messenger_messages WHERE 1 = 1");
    let mut p = Vec::new();
    for (col, op, v) in [
        ("status", "=", status),
        ("channel", "=", channel),
        ("id", "<", before),
    ] {
        if let Some(v) = v {
            p.push(kickstand_service::Value::from(v));
            sql.push_str(&format!(" AND {col} {op} ${}", p.len()));
        }
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
    db.query(&sql, p).await?.iter().map(message_row).collect()
}

/// One recorded attempt.
#[derive(Clone, Debug)]
pub struct AttemptRow {
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub outcome: String,
    pub code: Option<i64>,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub next_attempt_at: Option<i64>,
}

pub async fn attempts(db: &Db, id: &str) -> Result<Vec<AttemptRow>, DbError> {
    db.query(
        "SELECT attempt, started_at, duration_ms, outcome, code, answer, error, next_attempt_at
         FROM messenger_attempts WHERE message_id = $1 ORDER BY attempt",
        params![id],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(AttemptRow {
            attempt: r.int(0)?,
            started_at: r.int(1)?,
            duration_ms: r.int(2)?,
            outcome: r.text(3)?.to_owned(),
            code: r.opt_int(4)?,
            answer: r.opt_text(5)?.map(str::to_owned),
            error: r.opt_text(6)?.map(str::to_owned),
            next_attempt_at: r.opt_int(7)?,
        })
    })
    .collect()
}

/// Claims up to `limit` due messages of `channel` for `owner` until `until`: waiting ones
/// whose time has come, and ones whose previous claim expired.
pub async fn claim(
    db: &Db,
    channel: &str,
    owner: &str,
    now: i64,
    until: i64,
    limit: usize,
) -> Result<Vec<MessageRow>, DbError> {
    let lock = match db.dialect() {
        Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let sql = format!(
        "UPDATE messenger_messages SET status = 'sending', claimed_by = $1, claim_until = $2, updated_at = $3
         WHERE id IN (
            SELECT id FROM messenger_messages
            WHERE channel = $4 AND (
                (status IN ('queued', 'scheduled') AND due_at <= $3)
                OR (status = 'sending' AND claim_until < $3))
            ORDER BY due_at LIMIT {limit} {lock})
         RETURNING {MESSAGE_COLS}"
    );
    db.query(&sql, params![owner, until, now, channel])
        .await?
        .iter()
        .map(message_row)
        .collect()
}

/// Gives a claimed message back, to be sent at `due_at` (held back by the rate limit, or
/// this process is stopping). Its attempts are unchanged.
pub async fn release(db: &Db, id: &str, owner: &str, due_at: i64) -> Result<(), DbError> {
    db.execute(
        "UPDATE messenger_messages SET status = 'queued', claimed_by = NULL, claim_until = NULL, due_at = $3, updated_at = $4
         WHERE id = $1 AND claimed_by = $2 AND status = 'sending'",
        params![id, owner, due_at, kickstand_service::now_ms()],
    )
    .await
    .map(|_| ())
}

/// What to record after an attempt.
pub struct Outcome<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub attempt: AttemptRow,
    /// `sent`, `queued` (retry at `due_at`) or `dead`.
    pub status: &'static str,
    pub round_attempts: i64,
    pub due_at: i64,
    pub last_error: Option<&'a str>,
}

/// Records an attempt and the message's new state in one transaction. Returns false when the
/// claim had been lost (another process took the message over): the attempt is recorded, the
/// message is left to the new owner.
pub async fn record(db: &Db, o: &Outcome<'_>) -> Result<bool, DbError> {
    let a = &o.attempt;
    let now = kickstand_service::now_ms();
    let changed = db
        .batch(vec![
            (
                "INSERT INTO messenger_attempts (message_id, attempt, started_at, duration_ms, outcome, code, answer, error, next_attempt_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (message_id, attempt) DO NOTHING"
                    .to_owned(),
                params![
                    o.id,
                    a.attempt,
                    a.started_at,
                    a.duration_ms,
                    a.outcome.as_str(),
                    a.code,
                    a.answer.as_deref(),
                    a.error.as_deref(),
                    a.next_attempt_at
                ],
            ),
            (
                "UPDATE messenger_messages SET status = $3, attempts = $4, round_attempts = $5, due_at = $6,
                    last_error = $7, claimed_by = NULL, claim_until = NULL, updated_at = $8
                 WHERE id = $1 AND claimed_by = $2 AND status = 'sending'"
                    .to_owned(),
                params![
                    o.id,
                    o.owner,
                    o.status,
                    a.attempt,
                    o.round_attempts,
                    o.due_at,
                    o.last_error,
                    now
                ],
            ),
        ])
        .await?;
    Ok(changed[1] == 1)
}

/// Puts a dead message back in the queue with a fresh round of attempts. `None`: no such
/// message; `Some(false)`: it is not dead.
pub async fn requeue_dead(db: &Db, id: &str, now: i64) -> Result<Option<bool>, DbError> {
    let n = db
        .execute(
            "UPDATE messenger_messages SET status = 'queued', round_attempts = 0, due_at = $2, updated_at = $2
             WHERE id = $1 AND status = 'dead'",
            params![id, now],
        )
        .await?;
    if n == 1 {
        return Ok(Some(true));
    }
    Ok(get_message(db, id).await?.map(|_| false))
}

/// What an idempotency key holds.
pub enum KeyState {
    /// This request holds the key now: go on, then [`finish_key_sql`] or [`drop_key`].
    Acquired,
    /// The key was used with another body.
    Mismatch,
    /// The first request with this key is still being handled.
    InFlight,
    /// The first request's answer: status and JSON body.
    Done(u16, String),
}

/// A key held this long without an answer belongs to a request that died; it is taken over.
pub const IN_FLIGHT_TIMEOUT_MS: i64 = 60_000;

pub async fn begin_key(
    db: &Db,
    owner: &str,
    key: &str,
    hash: &str,
    now: i64,
) -> Result<KeyState, DbError> {
    for _ in 0..3 {
        let got = db
            .query(
                "INSERT INTO messenger_idempotency (owner, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (owner, idem_key) DO NOTHING RETURNING idem_key",
                params![owner, key, hash, now],
            )
            .await?;
        if !got.is_empty() {
            return Ok(KeyState::Acquired);
        }
        let Some(row) = db
            .query_opt(
                "SELECT request_hash, status, response, created_at FROM messenger_idempotency WHERE owner = $1 AND idem_key = $2",
                params![owner, key],
            )
            .await?
        else {
            // Deleted in between (the first request failed): try again.
            continue;
        };
        if row.text(0)? != hash {
            return Ok(KeyState::Mismatch);
        }
        match row.opt_int(1)? {
            Some(status) => {
                return Ok(KeyState::Done(
                    u16::try_from(status).unwrap_or(500),
                    row.opt_text(2)?.unwrap_or_default().to_owned(),
                ));
            }
            None => {
                let created = row.int(3)?;
                if now - created < IN_FLIGHT_TIMEOUT_MS {
                    return Ok(KeyState::InFlight);
                }
                let taken = db
                    .execute(
                        "UPDATE messenger_idempotency SET created_at = $4
                         WHERE owner = $1 AND idem_key = $2 AND created_at = $3 AND status IS NULL",
                        params![owner, key, created, now],
                    )
                    .await?;
                if taken == 1 {
                    return Ok(KeyState::Acquired);
                }
            }
        }
    }
    Ok(KeyState::InFlight)
}

/// The statement that stores a key's answer (run in the same transaction as what it answers).
pub fn finish_key_sql(
    owner: &str,
    key: &str,
    status: u16,
    body: &str,
) -> (String, Vec<kickstand_service::Value>) {
    (
        "UPDATE messenger_idempotency SET status = $3, response = $4 WHERE owner = $1 AND idem_key = $2"
            .to_owned(),
        params![owner, key, i64::from(status), body],
    )
}

/// Forgets a key whose request failed on our side, so that the client may try again.
pub async fn drop_key(db: &Db, owner: &str, key: &str) -> Result<(), DbError> {
    db.execute(
        "DELETE FROM messenger_idempotency WHERE owner = $1 AND idem_key = $2",
        params![owner, key],
    )
    .await
    .map(|_| ())
}

/// Deletes the answers of keys older than `before`.
pub async fn purge_keys(db: &Db, before: i64) -> Result<u64, DbError> {
    db.execute(
        "DELETE FROM messenger_idempotency WHERE created_at < $1",
        params![before],
    )
    .await
}
