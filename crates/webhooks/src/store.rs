//! The subscriptions, their retry state and their delivery log, in one SQLite file.
//!
//! Every method is synchronous and short: async callers run them on
//! `tokio::task::spawn_blocking`. The connection sits behind a mutex, so the store is
//! `Send + Sync`; SQLite runs in WAL mode with `synchronous = NORMAL`, so a commit does not wait
//! for fsync (a power cut may lose the last commits, which at-least-once delivery turns into
//! duplicates, never into lost events).
//!
//! **Architecture Invariant:** a subscription's `cursor` moves past an event only in the same
//! transaction that logs the event as `delivered` or `gave_up` (or past events its filter does
//! not match). That is what makes delivery at-least-once across restarts.
//!
//! Sequence numbers are stored as SQLite integers (i64); seqs above `i64::MAX` are not supported.

use kickstand_domain::event::{Event, EventKind};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;

/// A webhook subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscription {
    /// `wh_` and 24 hex digits.
    pub id: String,
    /// Where deliveries are POSTed (`http://` or `https://`).
    pub url: String,
    /// The signing key (`whsec_…`). Shown to the API client once, at creation.
    pub secret: String,
    /// The kinds delivered; empty: all.
    pub kinds: Vec<EventKind>,
    /// The zones delivered; empty: all. An event without a zone does not match a non-empty list.
    pub zones: Vec<String>,
    /// Whether the dispatcher delivers to it.
    pub enabled: bool,
    /// Why it was disabled automatically (none when enabled or disabled by hand).
    pub disabled_reason: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Events given up in a row since the last delivered one.
    pub consecutive_failures: u32,
    /// Epoch ms of the first failed attempt since the last delivered event.
    pub failing_since: Option<i64>,
    /// The seq of the last event handled (delivered, given up or not matching).
    pub cursor: u64,
}

impl Subscription {
    /// Whether `event` passes the subscription's filters.
    pub fn matches(&self, event: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && (self.zones.is_empty()
                || event
                    .zone_id
                    .as_ref()
                    .is_some_and(|z| self.zones.iter().any(|f| f == z)))
    }
}

/// What a new subscription is made of.
#[derive(Clone, Debug, Default)]
pub struct NewSubscription {
    pub url: String,
    pub kinds: Vec<EventKind>,
    pub zones: Vec<String>,
    /// A secret chosen by the client; a random `whsec_…` one when `None`.
    pub secret: Option<String>,
}

/// A change to a subscription; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct SubscriptionPatch {
    pub url: Option<String>,
    pub kinds: Option<Vec<EventKind>>,
    pub zones: Option<Vec<String>>,
    /// `true` on a disabled subscription re-enables it: its failure count, reason and pending
    /// retry are cleared, and it resumes after its cursor.
    pub enabled: Option<bool>,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// Failed; another attempt follows.
    Failed,
    /// Failed, and it was the last attempt for this event.
    GaveUp,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::GaveUp => "gave_up",
        }
    }

    fn parse(text: &str) -> Option<Outcome> {
        [Outcome::Delivered, Outcome::Failed, Outcome::GaveUp]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// One row of the delivery log.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// Increasing; the paging cursor.
    pub id: i64,
    pub subscription_id: String,
    pub event_id: String,
    /// 0 for test pings.
    pub event_seq: u64,
    /// 1-based.
    pub attempt: u32,
    /// The receiver's status; none when no answer came (connection error, timeout).
    pub status_code: Option<u16>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Epoch ms of the attempt's start.
    pub at: i64,
    pub outcome: Outcome,
}

/// An attempt to record.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub subscription_id: String,
    pub event_id: String,
    pub event_seq: u64,
    pub attempt: u32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub at: i64,
    pub outcome: Outcome,
    /// `Failed` only: epoch ms of the next attempt.
    pub next_attempt_at: Option<i64>,
    /// Disable the subscription now, for this reason (e.g. the receiver answered 410 Gone).
    pub disable: Option<String>,
}

/// When failures disable a subscription.
#[derive(Clone, Copy, Debug)]
pub struct DisableRules {
    /// Events given up in a row; 0: never.
    pub after_failures: u32,
    /// Ms of failing without a delivery; 0: never.
    pub after_ms: i64,
}

/// The subscription's state after an attempt was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterAttempt {
    /// Still enabled.
    Active,
    /// Disabled by this attempt, for this reason.
    Disabled(String),
    /// Recorded, but the subscription had been disabled meanwhile (by hand or otherwise).
    Inactive,
    /// Deleted meanwhile; nothing was recorded.
    Gone,
}

/// The retry a subscription is waiting for: its oldest unhandled matching event failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub event_seq: u64,
    pub event_id: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Epoch ms.
    pub next_attempt_at: i64,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("webhook store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("webhook store: the operating system gave no random bytes: {0}")]
    Random(getrandom::Error),
    #[error("webhook store: corrupt row: {0}")]
    Corrupt(String),
    #[error("webhook store: schema version {0} is newer than this program knows")]
    TooNew(i64),
}

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

/// The webhook store.
pub struct WebhookStore {
    /// One connection: SQLite serialises writers anyway, and every call is short.
    conn: Mutex<Connection>,
}

impl WebhookStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<WebhookStore, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.pragma_update(None, "synchronous", "normal")?;
        conn.pragma_update(None, "foreign_keys", "on")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(WebhookStore {
            conn: Mutex::new(conn),
        })
    }

    /// Creates a subscription that starts after event `cursor` (the feed's head: a new
    /// subscription gets no old events).
    pub fn create(
        &self,
        new: NewSubscription,
        cursor: u64,
        now_ms: i64,
    ) -> Result<Subscription, StoreError> {
        let sub = Subscription {
            id: format!("wh_{}", random_hex(12)?),
            url: new.url,
            secret: match new.secret {
                Some(s) => s,
                None => format!("whsec_{}", random_hex(24)?),
            },
            kinds: new.kinds,
            zones: new.zones,
            enabled: true,
            disabled_reason: None,
            created_at: now_ms,
            consecutive_failures: 0,
            failing_since: None,
            cursor,
        };
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

    /// Every subscription, oldest first.
    pub fn list(&self) -> Result<Vec<Subscription>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], sub_from_row)?;
        rows.map(|r| r?).collect()
    }

    pub fn get(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        get(&self.conn.lock(), id)
    }

    /// Applies `patch`; `None` when there is no such subscription.
    pub fn update(
        &self,
        id: &str,
        patch: SubscriptionPatch,
    ) -> Result<Option<Subscription>, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let Some(mut sub) = get(&tx, id)? else {
            return Ok(None);
        };
        if let Some(url) = patch.url {
            sub.url = url;
        }
        if let Some(kinds) = patch.kinds {
            sub.kinds = kinds;
        }
        if let Some(zones) = patch.zones {
            sub.zones = zones;
        }
        match patch.enabled {
            Some(true) if !sub.enabled => {
                sub.enabled = true;
                sub.disabled_reason = None;
                sub.consecutive_failures = 0;
                sub.failing_since = None;
                tx.execute("DELETE FROM pending WHERE subscription_id = ?1", [id])?;
            }
            Some(false) => sub.enabled = false,
            _ => {}
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

    /// Deletes a subscription with its log and retry state; `false` when there was none.
    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM subscriptions WHERE id = ?1", [id])?
            > 0)
    }

    /// The newest `limit` log rows of a subscription with an id below `before` (all when
    /// `None`), newest first.
    pub fn deliveries(
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

    /// The retry the subscription waits for, if any.
    pub fn pending(&self, subscription_id: &str) -> Result<Option<Pending>, StoreError> {
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

    /// Moves the cursor forward to `seq` (never back): the events up to it were handled.
    pub fn advance(&self, subscription_id: &str, seq: u64) -> Result<(), StoreError> {
        self.conn.lock().execute(
            "UPDATE subscriptions SET cursor = max(cursor, ?2) WHERE id = ?1",
            params![subscription_id, seq_to_sql(seq)],
        )?;
        Ok(())
    }

    /// Logs an attempt and applies its consequences in one transaction: the cursor, the retry
    /// state, the failure count, and disabling by `rules`.
    pub fn record_attempt(
        &self,
        a: &Attempt,
        rules: DisableRules,
    ) -> Result<AfterAttempt, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let Some(sub) = get(&tx, &a.subscription_id)? else {
            return Ok(AfterAttempt::Gone);
        };
        insert_delivery(&tx, a)?;
        let id = a.subscription_id.as_str();
        let seq = seq_to_sql(a.event_seq);
        let mut disable = a.disable.clone();
        match a.outcome {
            Outcome::Delivered => {
                tx.execute(
                    "UPDATE subscriptions SET consecutive_failures = 0, failing_since = NULL, \
                     cursor = max(cursor, ?2) WHERE id = ?1",
                    params![id, seq],
                )?;
                tx.execute("DELETE FROM pending WHERE subscription_id = ?1", [id])?;
            }
            Outcome::Failed | Outcome::GaveUp => {
                let since = sub.failing_since.unwrap_or(a.at);
                let failures = sub.consecutive_failures + u32::from(a.outcome == Outcome::GaveUp);
                if a.outcome == Outcome::GaveUp {
                    tx.execute(
                        "UPDATE subscriptions SET consecutive_failures = ?2, failing_since = ?3, \
                         cursor = max(cursor, ?4) WHERE id = ?1",
                        params![id, failures, since, seq],
                    )?;
                    tx.execute("DELETE FROM pending WHERE subscription_id = ?1", [id])?;
                    if rules.after_failures > 0 && failures >= rules.after_failures {
                        disable.get_or_insert(format!(
                            "{failures} events in a row were given up after every attempt failed"
                        ));
                    }
                } else {
                    tx.execute(
                        "UPDATE subscriptions SET failing_since = ?2 WHERE id = ?1",
                        params![id, since],
                    )?;
                    tx.execute(
                        "INSERT INTO pending (subscription_id, event_seq, event_id, attempts, \
                         next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                         ON CONFLICT (subscription_id) DO UPDATE SET event_seq = ?2, \
                         event_id = ?3, attempts = ?4, next_attempt_at = ?5",
                        params![
                            id,
                            seq,
                            a.event_id,
                            a.attempt,
                            a.next_attempt_at.unwrap_or(a.at)
                        ],
                    )?;
                }
                if rules.after_ms > 0 && a.at - since >= rules.after_ms {
                    disable.get_or_insert(format!(
                        "every attempt failed for {} s",
                        (a.at - since) / 1000
                    ));
                }
            }
        }
        let after = if let Some(reason) = disable {
            tx.execute(
                "UPDATE subscriptions SET enabled = 0, disabled_reason = ?2 WHERE id = ?1",
                params![id, reason],
            )?;
            AfterAttempt::Disabled(reason)
        } else if !sub.enabled {
            AfterAttempt::Inactive
        } else {
            AfterAttempt::Active
        };
        tx.commit()?;
        Ok(after)
    }

    /// Logs a test ping (`event_seq` 0): no cursor, retry or failure count changes.
    pub fn record_test(&self, a: &Attempt) -> Result<bool, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        if get(&tx, &a.subscription_id)?.is_none() {
            return Ok(false);
        }
        insert_delivery(&tx, a)?;
        tx.commit()?;
        Ok(true)
    }

    /// Deletes log rows older than `before_ms`; returns how many.
    pub fn prune_deliveries(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .lock()
            .execute("DELETE FROM deliveries WHERE at < ?1", [before_ms])?)
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
        let kinds: Vec<String> = serde_json::from_str(&kinds).map_err(|e| e.to_string())?;
        let kinds = kinds
            .iter()
            .map(|k| EventKind::parse(k).ok_or_else(|| format!("unknown kind {k:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let zones: Vec<String> = serde_json::from_str(&zones).map_err(|e| e.to_string())?;
        Ok::<_, String>((kinds, zones))
    })();
    let (kinds, zones) = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(Err(StoreError::Corrupt(format!("subscription {id}: {e}")))),
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
    serde_json::to_string(&kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>())
        .expect("a list of strings serializes")
}

fn zones_json(zones: &[String]) -> String {
    serde_json::to_string(zones).expect("a list of strings serializes")
}

fn seq_to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_from_sql(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

pub(crate) fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(StoreError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kickstand_domain::VehicleId;

    fn store() -> (tempfile::TempDir, WebhookStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = WebhookStore::open(dir.path().join("webhooks.sqlite")).unwrap();
        (dir, s)
    }

    fn new_sub(url: &str) -> NewSubscription {
        NewSubscription {
            url: url.into(),
            ..NewSubscription::default()
        }
    }

    fn attempt(sub: &str, seq: u64, n: u32, outcome: Outcome, at: i64) -> Attempt {
        Attempt {
            subscription_id: sub.into(),
            event_id: format!("e{seq}"),
            event_seq: seq,
            attempt: n,
            status_code: Some(500),
            error: None,
            duration_ms: 3,
            at,
            outcome,
            next_attempt_at: Some(at + 10),
            disable: None,
        }
    }

    #[test]
    fn crud_round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sqlite");
        let s = WebhookStore::open(&path).unwrap();
        let a = s
            .create(
                NewSubscription {
                    url: "http://a.invalid/hook".into(),
                    kinds: vec![EventKind::BatteryLow],
                    zones: vec!["z1".into()],
                    secret: None,
                },
                7,
                1000,
            )
            .unwrap();
        assert!(a.id.starts_with("wh_") && a.id.len() == 27);
        assert!(a.secret.starts_with("whsec_") && a.secret.len() == 54);
        let b = s
            .create(
                NewSubscription {
                    secret: Some("mine".into()),
                    ..new_sub("http://b.invalid/")
                },
                0,
                2000,
            )
            .unwrap();
        assert_eq!(b.secret, "mine");
        assert_eq!(s.list().unwrap(), vec![a.clone(), b.clone()]);
        let patched = s
            .update(
                &a.id,
                SubscriptionPatch {
                    kinds: Some(vec![]),
                    enabled: Some(false),
                    ..SubscriptionPatch::default()
                },
            )
            .unwrap()
            .unwrap();
        assert!(patched.kinds.is_empty() && !patched.enabled);
        assert!(
            s.update("wh_none", SubscriptionPatch::default())
                .unwrap()
                .is_none()
        );
        drop(s);
        let s = WebhookStore::open(&path).unwrap();
        assert_eq!(s.get(&a.id).unwrap().unwrap(), patched);
        assert!(s.delete(&b.id).unwrap());
        assert!(!s.delete(&b.id).unwrap());
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn attempts_move_the_cursor_only_when_done_and_disable_by_rule() {
        let (_dir, s) = store();
        let sub = s.create(new_sub("http://x.invalid/"), 0, 0).unwrap();
        let rules = DisableRules {
            after_failures: 2,
            after_ms: 0,
        };
        let r = s
            .record_attempt(&attempt(&sub.id, 1, 1, Outcome::Failed, 100), rules)
            .unwrap();
        assert_eq!(r, AfterAttempt::Active);
        let got = s.get(&sub.id).unwrap().unwrap();
        assert_eq!((got.cursor, got.failing_since), (0, Some(100)));
        assert_eq!(
            s.pending(&sub.id).unwrap(),
            Some(Pending {
                event_seq: 1,
                event_id: "e1".into(),
                attempts: 1,
                next_attempt_at: 110
            })
        );
        s.record_attempt(&attempt(&sub.id, 1, 2, Outcome::GaveUp, 200), rules)
            .unwrap();
        let got = s.get(&sub.id).unwrap().unwrap();
        assert_eq!((got.cursor, got.consecutive_failures), (1, 1));
        assert_eq!(s.pending(&sub.id).unwrap(), None);
        let mut ok = attempt(&sub.id, 2, 1, Outcome::Delivered, 300);
        ok.status_code = Some(204);
        s.record_attempt(&ok, rules).unwrap();
        let got = s.get(&sub.id).unwrap().unwrap();
        assert_eq!(
            (got.cursor, got.consecutive_failures, got.failing_since),
            (2, 0, None)
        );
        s.record_attempt(&attempt(&sub.id, 3, 1, Outcome::GaveUp, 400), rules)
            .unwrap();
        let r = s
            .record_attempt(&attempt(&sub.id, 4, 1, Outcome::GaveUp, 500), rules)
            .unwrap();
        assert!(matches!(r, AfterAttempt::Disabled(ref why) if why.contains("2 events")));
        let got = s.get(&sub.id).unwrap().unwrap();
        assert!(!got.enabled && got.cursor == 4);
        // Re-enabling clears the failures and resumes after the cursor.
        let got = s
            .update(
                &sub.id,
                SubscriptionPatch {
                    enabled: Some(true),
                    ..SubscriptionPatch::default()
                },
            )
            .unwrap()
            .unwrap();
        assert!(got.enabled && got.disabled_reason.is_none() && got.consecutive_failures == 0);
        assert_eq!(got.cursor, 4);
        let log = s.deliveries(&sub.id, 10, None).unwrap();
        assert_eq!(
            log.iter().map(|d| d.outcome).collect::<Vec<_>>(),
            [
                Outcome::GaveUp,
                Outcome::GaveUp,
                Outcome::Delivered,
                Outcome::GaveUp,
                Outcome::Failed
            ]
        );
        let page = s.deliveries(&sub.id, 2, Some(log[1].id)).unwrap();
        assert_eq!(page, log[2..4].to_vec());
    }

    #[test]
    fn failing_for_too_long_disables_and_keeps_the_event() {
        let (_dir, s) = store();
        let sub = s.create(new_sub("http://x.invalid/"), 0, 0).unwrap();
        let rules = DisableRules {
            after_failures: 0,
            after_ms: 1000,
        };
        s.record_attempt(&attempt(&sub.id, 1, 1, Outcome::Failed, 0), rules)
            .unwrap();
        let r = s
            .record_attempt(&attempt(&sub.id, 1, 2, Outcome::Failed, 1000), rules)
            .unwrap();
        assert!(matches!(r, AfterAttempt::Disabled(_)));
        assert_eq!(s.get(&sub.id).unwrap().unwrap().cursor, 0);
        assert!(s.delete(&sub.id).unwrap());
        let r = s
            .record_attempt(&attempt(&sub.id, 1, 3, Outcome::Failed, 2000), rules)
            .unwrap();
        assert_eq!(r, AfterAttempt::Gone);
    }

    #[test]
    fn filters() {
        let v = VehicleId::new("s-1").unwrap();
        let ev = |kind, zone: Option<&str>| Event::new(v.clone(), kind, 1, 0, 0, zone);
        let mut sub = Subscription {
            id: "wh".into(),
            url: String::new(),
            secret: String::new(),
            kinds: vec![],
            zones: vec![],
            enabled: true,
            disabled_reason: None,
            created_at: 0,
            consecutive_failures: 0,
            failing_since: None,
            cursor: 0,
        };
        assert!(sub.matches(&ev(EventKind::Stale, None)));
        sub.kinds = vec![EventKind::GeofenceEntered];
        assert!(!sub.matches(&ev(EventKind::Stale, None)));
        assert!(sub.matches(&ev(EventKind::GeofenceEntered, Some("z"))));
        sub.zones = vec!["z".into()];
        assert!(sub.matches(&ev(EventKind::GeofenceEntered, Some("z"))));
        assert!(!sub.matches(&ev(EventKind::GeofenceEntered, Some("y"))));
        assert!(!sub.matches(&ev(EventKind::GeofenceEntered, None)));
    }
}
