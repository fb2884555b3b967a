//! [`SqliteWebhookStore`]: the webhook state in one SQLite file, for a single process.
//!
//! The connection sits behind a mutex, so the store is `Send + Sync` and every transaction is
//! serialised; SQLite runs in WAL mode with `synchronous = NORMAL`, so a commit does not wait
//! for fsync (a power cut may lose the last commits, which at-least-once delivery turns into
//! duplicates, never into lost events). Its process always leads: no other process dispatches
//! from the same file.

use super::{
    AfterAttempt, Attempt, Delivery, DisableRules, Effects, NewSubscription, Outcome, Pending,
    StoreError, Subscription, SubscriptionPatch, WebhookStore, apply_patch, kinds_from_strings,
    kinds_to_strings, new_subscription, seq_from_sql, seq_to_sql,
};
use kickstand_domain::event::EventKind;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;

/// The migrations, in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    kinds TEXT NOT NULL,
    zones TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    disabled_reason TEXT,
    created_at INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    failing_since INTEGER,
    cursor INTEGER NOT NULL
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    at INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'failed', 'gave_up'))
);
CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_by_time ON deliveries (at);
CREATE TABLE pending (
    subscription_id TEXT PRIMARY KEY REFERENCES subscriptions(id) ON DELETE CASCADE,
    event_seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL
);
"#];

const SUB_COLUMNS: &str = "id, url, secret, kinds, zones, enabled, disabled_reason, created_at, \
    consecutive_failures, failing_since, cursor";

/// The webhook state in one SQLite file.
pub struct SqliteWebhookStore {
    /// One connection: SQLite serialises writers anyway, and every call is short.
    conn: Mutex<Connection>,
}

impl SqliteWebhookStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteWebhookStore, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.pragma_update(None, "synchronous", "normal")?;
        conn.pragma_update(None, "foreign_keys", "on")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(SqliteWebhookStore {
            conn: Mutex::new(conn),
        })
    }
}

impl WebhookStore for SqliteWebhookStore {
    fn create(
        &self,
        new: NewSubscription,
        cursor: u64,
        now_ms: i64,
    ) -> Result<Subscription, StoreError> {
        let sub = new_subscription(new, cursor, now_ms)?;
        self.conn.lock().execute(
            &format!("INSERT INTO subscriptions ({SUB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, 1, NULL, ?6, 0, NULL, ?7)"),
            params![
                sub.id,
                sub.url,
                sub.secret,
                kinds_json(&sub.kinds),
                zones_json(&sub.zones),
                sub.created_at,
                seq_to_sql(sub.cursor),
            ],
        )?;
        Ok(sub)
    }

    fn list(&self) -> Result<Vec<Subscription>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], sub_from_row)?;
        rows.map(|r| r?).collect()
    }

    fn get(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        get(&self.conn.lock(), id)
    }

    fn update(
        &self,
        id: &str,
        patch: SubscriptionPatch,
    ) -> Result<Option<Subscription>, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let Some(mut sub) = get(&tx, id)? else {
            return Ok(None);
        };
        if apply_patch(&mut sub, patch) {
            tx.execute("DELETE FROM pending WHERE subscription_id = ?1", [id])?;
        }
        tx.execute(
            "UPDATE subscriptions SET url = ?2, kinds = ?3, zones = ?4, enabled = ?5, \
             disabled_reason = ?6, consecutive_failures = ?7, failing_since = ?8 WHERE id = ?1",
            params![
                id,
                sub.url,
                kinds_json(&sub.kinds),
                zones_json(&sub.zones),
                sub.enabled,
                sub.disabled_reason,
                sub.consecutive_failures,
                sub.failing_since,
            ],
        )?;
        tx.commit()?;
        Ok(Some(sub))
    }

    fn delete(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM subscriptions WHERE id = ?1", [id])?
            > 0)
    }

    fn deliveries(
        &self,
        subscription_id: &str,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, subscription_id, event_id, event_seq, attempt, status_code, error, \
             duration_ms, at, outcome FROM deliveries WHERE subscription_id = ?1 AND id < ?2 \
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![
                subscription_id,
                before.unwrap_or(i64::MAX),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            delivery_from_row,
        )?;
        rows.map(|r| r?).collect()
    }

    fn pending(&self, subscription_id: &str) -> Result<Option<Pending>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT event_seq, event_id, attempts, next_attempt_at FROM pending \
             WHERE subscription_id = ?1",
        )?;
        Ok(stmt
            .query_row([subscription_id], |r| {
                Ok(Pending {
                    event_seq: seq_from_sql(r.get(0)?),
                    event_id: r.get(1)?,
                    attempts: r.get(2)?,
                    next_attempt_at: r.get(3)?,
                })
            })
            .optional()?)
    }

    fn advance(&self, subscription_id: &str, seq: u64) -> Result<(), StoreError> {
        self.conn.lock().execute(
            "UPDATE subscriptions SET cursor = max(cursor, ?2) WHERE id = ?1",
            params![subscription_id, seq_to_sql(seq)],
        )?;
        Ok(())
    }

    fn record_attempt(&self, a: &Attempt, rules: DisableRules) -> Result<AfterAttempt, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let Some(sub) = get(&tx, &a.subscription_id)? else {
            return Ok(AfterAttempt::Gone);
        };
        insert_delivery(&tx, a)?;
        let id = a.subscription_id.as_str();
        let effects = Effects::of(&sub, a, rules);
        // `max(cursor, 0)` leaves the cursor where it is.
        let cursor = if effects.advance {
            seq_to_sql(a.event_seq)
        } else {
            0
        };
        tx.execute(
            "UPDATE subscriptions SET consecutive_failures = ?2, failing_since = ?3, \
             cursor = max(cursor, ?4) WHERE id = ?1",
            params![id, effects.failures, effects.failing_since, cursor],
        )?;
        match &effects.retry {
            None => {
                tx.execute("DELETE FROM pending WHERE subscription_id = ?1", [id])?;
            }
            Some(p) => {
                tx.execute(
                    "INSERT INTO pending (subscription_id, event_seq, event_id, attempts, \
                     next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (subscription_id) DO UPDATE SET event_seq = ?2, \
                     event_id = ?3, attempts = ?4, next_attempt_at = ?5",
                    params![
                        id,
                        seq_to_sql(p.event_seq),
                        p.event_id,
                        p.attempts,
                        p.next_attempt_at
                    ],
                )?;
            }
        }
        if let Some(reason) = &effects.disable {
            tx.execute(
                "UPDATE subscriptions SET enabled = 0, disabled_reason = ?2 WHERE id = ?1",
                params![id, reason],
            )?;
        }
        tx.commit()?;
        Ok(effects.after(sub.enabled))
    }

    fn record_test(&self, a: &Attempt) -> Result<bool, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        if get(&tx, &a.subscription_id)?.is_none() {
            return Ok(false);
        }
        insert_delivery(&tx, a)?;
        tx.commit()?;
        Ok(true)
    }

    fn prune_deliveries(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM deliveries WHERE at < ?1", [before_ms])?)
    }

    /// Always: a SQLite file belongs to one process.
    fn try_lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn resign(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew(version));
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}

fn get(conn: &Connection, id: &str) -> Result<Option<Subscription>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = ?1"
    ))?;
    stmt.query_row([id], sub_from_row).optional()?.transpose()
}

fn insert_delivery(conn: &Connection, a: &Attempt) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO deliveries (subscription_id, event_id, event_seq, attempt, status_code, \
         error, duration_ms, at, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        a.subscription_id,
        a.event_id,
        seq_to_sql(a.event_seq),
        a.attempt,
        a.status_code,
        a.error,
        i64::try_from(a.duration_ms).unwrap_or(i64::MAX),
        a.at,
        a.outcome.as_str(),
    ])?;
    Ok(())
}

/// The outer result is SQLite's; the inner one says whether the row made sense.
fn sub_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Subscription, StoreError>> {
    let kinds: String = r.get(3)?;
    let zones: String = r.get(4)?;
    let id: String = r.get(0)?;
    let parsed = (|| {
        let kinds: Vec<String> = serde_json::from_str(&kinds)
            .map_err(|e| StoreError::Corrupt(format!("subscription {id}: {e}")))?;
        let kinds = kinds_from_strings(&id, &kinds)?;
        let zones: Vec<String> = serde_json::from_str(&zones)
            .map_err(|e| StoreError::Corrupt(format!("subscription {id}: {e}")))?;
        Ok::<_, StoreError>((kinds, zones))
    })();
    let (kinds, zones) = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(Subscription {
        id,
        url: r.get(1)?,
        secret: r.get(2)?,
        kinds,
        zones,
        enabled: r.get(5)?,
        disabled_reason: r.get(6)?,
        created_at: r.get(7)?,
        consecutive_failures: r.get(8)?,
        failing_since: r.get(9)?,
        cursor: seq_from_sql(r.get(10)?),
    }))
}

fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Delivery, StoreError>> {
    let outcome: String = r.get(9)?;
    let Some(outcome) = Outcome::parse(&outcome) else {
        return Ok(Err(StoreError::Corrupt(format!("outcome {outcome:?}"))));
    };
    let duration: i64 = r.get(7)?;
    Ok(Ok(Delivery {
        id: r.get(0)?,
        subscription_id: r.get(1)?,
        event_id: r.get(2)?,
        event_seq: seq_from_sql(r.get(3)?),
        attempt: r.get(4)?,
        status_code: r.get(5)?,
        error: r.get(6)?,
        duration_ms: u64::try_from(duration).unwrap_or(0),
        at: r.get(8)?,
        outcome,
    }))
}

fn kinds_json(kinds: &[EventKind]) -> String {
    serde_json::to_string(&kinds_to_strings(kinds)).expect("a list of strings serializes")
}

fn zones_json(zones: &[String]) -> String {
    serde_json::to_string(zones).expect("a list of strings serializes")
}
