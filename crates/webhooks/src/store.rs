//! The port of the webhook state: [`WebhookStore`], the subscriptions, their retry state and
//! their delivery log, with two implementations:
//!
//! - [`SqliteWebhookStore`] ([`sqlite`]): one SQLite file, for the single-process mode
//!   (`kickstand run`). Its process always leads.
//! - `PgWebhookStore` (`postgres`, cargo feature `postgres`): tables in a PostgreSQL schema,
//!   shared by the API processes of the scale-out mode (`kickstand serve`); a session advisory
//!   lock elects the one process that dispatches.
//!
//! Every method is synchronous and short: async callers run them on
//! `tokio::task::spawn_blocking`. The rules of what an attempt changes (failure counts,
//! disabling, the retry to wait for) and what a patch changes are computed here, once, by
//! `Effects` and `apply_patch` (crate-private); an implementation only stores their result,
//! in one transaction.
//!
//! **Architecture Invariant:** a subscription's `cursor` moves past an event only in the same
//! transaction that logs the event as `delivered` or `gave_up` (or past events its filter does
//! not match). That is what makes delivery at-least-once across restarts.
//!
//! **Architecture Invariant:** at most one dispatcher per shared store delivers at a time:
//! [`WebhookStore::try_lead`] says whether this one may. Two processes that both lead for a
//! moment (a leader cut off from the database, before it notices) only cause duplicates, which
//! at-least-once delivery allows; the cursor never moves back.
//!
//! Sequence numbers are stored as signed 64-bit integers; seqs above `i64::MAX` are not
//! supported.

#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;

#[cfg(feature = "postgres")]
pub use postgres::PgWebhookStore;
pub use sqlite::SqliteWebhookStore;

use kickstand_domain::event::{Event, EventKind};

/// The webhook state, shared by the HTTP API and the dispatcher. Implementations are
/// synchronous (callers are `spawn_blocking` threads) and safe to call from several threads at
/// once.
pub trait WebhookStore: Send + Sync {
    /// Creates a subscription that starts after event `cursor` (the feed's head: a new
    /// subscription gets no old events).
    fn create(
        &self,
        new: NewSubscription,
        cursor: u64,
        now_ms: i64,
    ) -> Result<Subscription, StoreError>;

    /// Every subscription, oldest first.
    fn list(&self) -> Result<Vec<Subscription>, StoreError>;

    fn get(&self, id: &str) -> Result<Option<Subscription>, StoreError>;

    /// Applies `patch` (see [`SubscriptionPatch`]) in one transaction; `None` when there is no
    /// such subscription.
    fn update(
        &self,
        id: &str,
        patch: SubscriptionPatch,
    ) -> Result<Option<Subscription>, StoreError>;

    /// Deletes a subscription with its log and retry state; `false` when there was none.
    fn delete(&self, id: &str) -> Result<bool, StoreError>;

    /// The newest `limit` log rows of a subscription with an id below `before` (all when
    /// `None`), newest first.
    fn deliveries(
        &self,
        subscription_id: &str,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// The retry the subscription waits for, if any.
    fn pending(&self, subscription_id: &str) -> Result<Option<Pending>, StoreError>;

    /// Moves the cursor forward to `seq` (never back): the events up to it were handled.
    fn advance(&self, subscription_id: &str, seq: u64) -> Result<(), StoreError>;

    /// Logs an attempt and applies its consequences in one transaction: a delivered or
    /// given-up event moves the cursor and clears the pending retry, a failed one becomes the
    /// pending retry; the failure count and `failing_since` follow, and `rules` (or
    /// `a.disable`) may disable the subscription.
    fn record_attempt(&self, a: &Attempt, rules: DisableRules) -> Result<AfterAttempt, StoreError>;

    /// Logs a test ping (`event_seq` 0): no cursor, retry or failure count changes. `false`
    /// (and nothing logged) when there is no such subscription.
    fn record_test(&self, a: &Attempt) -> Result<bool, StoreError>;

    /// Deletes log rows older than `before_ms`; returns how many.
    fn prune_deliveries(&self, before_ms: i64) -> Result<usize, StoreError>;

    /// Whether this store's dispatcher may deliver now: takes the leadership when no one holds
    /// it, or checks that it still holds it. `false` while another process leads. A store that
    /// no other process shares always leads. Call it from one dispatcher per store.
    fn try_lead(&self) -> Result<bool, StoreError>;

    /// Gives the leadership up (at shutdown), so that another process takes over at once
    /// rather than when this one's connection ends.
    fn resign(&self) -> Result<(), StoreError>;
}

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

    pub(crate) fn parse(text: &str) -> Option<Outcome> {
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

/// A storage failure. No variant carries a connection URL or a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("webhook store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL error: the server's message, code and detail, or the client's reason.
    #[error("webhook store: postgres: {0}")]
    Postgres(String),
    /// Settings that cannot work (a URL that does not parse, TLS asked for without a TLS
    /// configuration, a bad schema name).
    #[error("webhook store: {0}")]
    Config(String),
    #[error("webhook store: the operating system gave no random bytes: {0}")]
    Random(getrandom::Error),
    #[error("webhook store: corrupt row: {0}")]
    Corrupt(String),
    #[error("webhook store: schema version {0} is newer than this program knows")]
    TooNew(i64),
    /// A migration recorded in the database differs from this program's.
    #[error("webhook store: {0}")]
    Foreign(String),
}

/// Builds a new subscription: a random id, the client's secret or a random one.
pub(crate) fn new_subscription(
    new: NewSubscription,
    cursor: u64,
    now_ms: i64,
) -> Result<Subscription, StoreError> {
    Ok(Subscription {
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
    })
}

/// Applies `patch` to `sub`; `true` when the subscription was re-enabled, which also clears
/// its pending retry.
pub(crate) fn apply_patch(sub: &mut Subscription, patch: SubscriptionPatch) -> bool {
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
            true
        }
        Some(false) => {
            sub.enabled = false;
            false
        }
        _ => false,
    }
}

/// What recording an attempt changes on its subscription; every store writes exactly this,
/// in the transaction that logs the attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Effects {
    /// The new `consecutive_failures`.
    pub failures: u32,
    /// The new `failing_since`.
    pub failing_since: Option<i64>,
    /// The event is done (delivered or given up): the cursor moves to it (never back).
    pub advance: bool,
    /// The retry to wait for (a failed attempt); `None`: no pending retry any more.
    pub retry: Option<Pending>,
    /// Disable the subscription, for this reason.
    pub disable: Option<String>,
}

impl Effects {
    /// The effects of attempt `a` on `sub` (as read in the recording transaction).
    pub fn of(sub: &Subscription, a: &Attempt, rules: DisableRules) -> Effects {
        let mut disable = a.disable.clone();
        if a.outcome == Outcome::Delivered {
            return Effects {
                failures: 0,
                failing_since: None,
                advance: true,
                retry: None,
                disable,
            };
        }
        let since = sub.failing_since.unwrap_or(a.at);
        let gave_up = a.outcome == Outcome::GaveUp;
        let failures = sub.consecutive_failures + u32::from(gave_up);
        if gave_up && rules.after_failures > 0 && failures >= rules.after_failures {
            disable.get_or_insert(format!(
                "{failures} events in a row were given up after every attempt failed"
            ));
        }
        if rules.after_ms > 0 && a.at - since >= rules.after_ms {
            disable.get_or_insert(format!(
                "every attempt failed for {} s",
                (a.at - since) / 1000
            ));
        }
        Effects {
            failures,
            failing_since: Some(since),
            advance: gave_up,
            retry: (!gave_up).then(|| Pending {
                event_seq: a.event_seq,
                event_id: a.event_id.clone(),
                attempts: a.attempt,
                next_attempt_at: a.next_attempt_at.unwrap_or(a.at),
            }),
            disable,
        }
    }

    /// What the caller is told, given whether the subscription was enabled before.
    pub fn after(&self, was_enabled: bool) -> AfterAttempt {
        match &self.disable {
            Some(reason) => AfterAttempt::Disabled(reason.clone()),
            None if !was_enabled => AfterAttempt::Inactive,
            None => AfterAttempt::Active,
        }
    }
}

pub(crate) fn kinds_to_strings(kinds: &[EventKind]) -> Vec<&'static str> {
    kinds.iter().map(|k| k.as_str()).collect()
}

pub(crate) fn kinds_from_strings(id: &str, kinds: &[String]) -> Result<Vec<EventKind>, StoreError> {
    kinds
        .iter()
        .map(|k| {
            EventKind::parse(k).ok_or_else(|| {
                StoreError::Corrupt(format!("subscription {id}: unknown kind {k:?}"))
            })
        })
        .collect()
}

pub(crate) fn seq_to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(crate) fn seq_from_sql(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

pub(crate) fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(StoreError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
