//! The contract of [`WebhookStore`], run against every implementation: each check is a
//! function over a [`Backend`], called once for SQLite and once for PostgreSQL (skipped with a
//! notice when `KICKSTAND_TEST_POSTGRES_URL` is unset, a failure instead under
//! `KICKSTAND_REQUIRE_SERVICES=1`).

use super::*;
use kickstand_domain::VehicleId;

/// Opens stores on one place (a file, a schema), again and again.
pub(super) trait Backend {
    fn open(&self) -> Box<dyn WebhookStore>;
}

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Backend for Sqlite {
    fn open(&self) -> Box<dyn WebhookStore> {
        Box::new(SqliteWebhookStore::open(self.dir.path().join("webhooks.sqlite")).unwrap())
    }
}

/// A fresh schema of the test database, dropped at the end.
#[cfg(feature = "postgres")]
pub(super) struct Postgres {
    pub url: String,
    pub schema: String,
}

#[cfg(feature = "postgres")]
impl Postgres {
    /// `None` (after a notice) when PostgreSQL is not configured or does not answer, unless
    /// services are required.
    pub fn new() -> Option<Postgres> {
        let url = postgres_url()?;
        let schema = unique_name("whtest");
        match PgWebhookStore::open(&url, &schema, None) {
            Ok(_) => Some(Postgres { url, schema }),
            Err(e) => {
                assert!(
                    !services_required(),
                    "PostgreSQL is unreachable and KICKSTAND_REQUIRE_SERVICES=1: {e}"
                );
                eprintln!("skipped: PostgreSQL is unreachable: {e}");
                None
            }
        }
    }

    pub fn open_pg(&self) -> PgWebhookStore {
        PgWebhookStore::open(&self.url, &self.schema, None).unwrap()
    }
}

#[cfg(feature = "postgres")]
impl Backend for Postgres {
    fn open(&self) -> Box<dyn WebhookStore> {
        Box::new(self.open_pg())
    }
}

/// Drops the schema over a plain connection, so that a test that left it unopenable (a
/// foreign migration) still cleans up.
#[cfg(feature = "postgres")]
impl Drop for Postgres {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok((client, connection)) =
                tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await
            else {
                return;
            };
            tokio::spawn(connection);
            let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
            if let Err(e) = client.batch_execute(&sql).await {
                eprintln!("cannot drop test schema {}: {e}", self.schema);
            }
        });
    }
}

#[cfg(feature = "postgres")]
fn services_required() -> bool {
    std::env::var("KICKSTAND_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// `KICKSTAND_TEST_POSTGRES_URL`, or `None` after a notice (a panic when services are
/// required).
#[cfg(feature = "postgres")]
fn postgres_url() -> Option<String> {
    const VAR: &str = "KICKSTAND_TEST_POSTGRES_URL";
    match std::env::var(VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                !services_required(),
                "{VAR} is not set, and KICKSTAND_REQUIRE_SERVICES=1 requires the service"
            );
            eprintln!("skipped: {VAR} is not set (see DEVELOPERS.md)");
            None
        }
    }
}

/// A name no other test (in this process or another) uses.
#[cfg(feature = "postgres")]
fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{nanos:x}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `#[test]` per backend for each contract check.
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $check() {
                    super::$check(&super::Sqlite::new());
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[test]
                fn $check() {
                    if let Some(backend) = super::Postgres::new() {
                        super::$check(&backend);
                    }
                }
            )*
        }
    };
}

contract!(
    crud_round_trip_and_reopen,
    attempts_move_the_cursor_only_when_done_and_disable_by_rule,
    failing_for_too_long_disables_and_keeps_the_event,
    advance_never_moves_back_and_pings_change_no_state,
    pruning_deletes_old_log_rows_only,
);

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

fn crud_round_trip_and_reopen(b: &dyn Backend) {
    let s = b.open();
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
    let b_sub = s
        .create(
            NewSubscription {
                secret: Some("mine".into()),
                ..new_sub("http://b.invalid/")
            },
            0,
            2000,
        )
        .unwrap();
    assert_eq!(b_sub.secret, "mine");
    assert_eq!(s.list().unwrap(), vec![a.clone(), b_sub.clone()]);
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
    let s = b.open();
    assert_eq!(s.get(&a.id).unwrap().unwrap(), patched);
    assert_eq!(s.get("wh_none").unwrap(), None);
    assert!(s.delete(&b_sub.id).unwrap());
    assert!(!s.delete(&b_sub.id).unwrap());
    assert_eq!(s.list().unwrap().len(), 1);
}

fn attempts_move_the_cursor_only_when_done_and_disable_by_rule(b: &dyn Backend) {
    let s = b.open();
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
    // A second failure of the same event replaces the pending retry.
    s.record_attempt(&attempt(&sub.id, 1, 2, Outcome::Failed, 150), rules)
        .unwrap();
    assert_eq!(s.pending(&sub.id).unwrap().unwrap().attempts, 2);
    assert_eq!(s.get(&sub.id).unwrap().unwrap().failing_since, Some(100));
    s.record_attempt(&attempt(&sub.id, 1, 3, Outcome::GaveUp, 200), rules)
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
    // An attempt that was in flight when the subscription was disabled is still logged.
    let r = s
        .record_attempt(&attempt(&sub.id, 5, 1, Outcome::Failed, 550), rules)
        .unwrap();
    assert_eq!(r, AfterAttempt::Inactive);
    // Re-enabling clears the failures and the pending retry, and resumes after the cursor.
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
    assert_eq!((got.cursor, got.failing_since), (4, None));
    assert_eq!(s.pending(&sub.id).unwrap(), None);
    assert_eq!(s.get(&sub.id).unwrap().unwrap(), got);
    let log = s.deliveries(&sub.id, 10, None).unwrap();
    assert_eq!(
        log.iter().map(|d| d.outcome).collect::<Vec<_>>(),
        [
            Outcome::Failed,
            Outcome::GaveUp,
            Outcome::GaveUp,
            Outcome::Delivered,
            Outcome::GaveUp,
            Outcome::Failed,
            Outcome::Failed
        ]
    );
    assert_eq!(
        (
            log[3].event_id.as_str(),
            log[3].event_seq,
            log[3].attempt,
            log[3].status_code,
            log[3].duration_ms,
            log[3].at,
            log[3].subscription_id.as_str()
        ),
        ("e2", 2, 1, Some(204), 3, 300, sub.id.as_str())
    );
    assert!(log.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let page = s.deliveries(&sub.id, 2, Some(log[1].id)).unwrap();
    assert_eq!(page, log[2..4].to_vec());
    assert!(s.deliveries("wh_none", 10, None).unwrap().is_empty());
}

fn failing_for_too_long_disables_and_keeps_the_event(b: &dyn Backend) {
    let s = b.open();
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
    assert_eq!(
        r,
        AfterAttempt::Disabled("every attempt failed for 1 s".into())
    );
    let got = s.get(&sub.id).unwrap().unwrap();
    assert_eq!(got.cursor, 0);
    assert_eq!(
        got.disabled_reason.as_deref(),
        Some("every attempt failed for 1 s")
    );
    assert!(s.delete(&sub.id).unwrap());
    let r = s
        .record_attempt(&attempt(&sub.id, 1, 3, Outcome::Failed, 2000), rules)
        .unwrap();
    assert_eq!(r, AfterAttempt::Gone);
    assert_eq!(s.pending(&sub.id).unwrap(), None);
}

fn advance_never_moves_back_and_pings_change_no_state(b: &dyn Backend) {
    let s = b.open();
    let sub = s.create(new_sub("http://x.invalid/"), 5, 0).unwrap();
    s.advance(&sub.id, 9).unwrap();
    s.advance(&sub.id, 3).unwrap();
    s.advance("wh_none", 3).unwrap();
    assert_eq!(s.get(&sub.id).unwrap().unwrap().cursor, 9);
    let mut ping = attempt(&sub.id, 0, 1, Outcome::Failed, 10);
    ping.event_id = "ping_1".into();
    ping.next_attempt_at = None;
    ping.status_code = None;
    ping.error = Some("connection refused".into());
    assert!(s.record_test(&ping).unwrap());
    let got = s.get(&sub.id).unwrap().unwrap();
    assert_eq!(
        (got.cursor, got.consecutive_failures, got.failing_since),
        (9, 0, None)
    );
    assert_eq!(s.pending(&sub.id).unwrap(), None);
    let log = s.deliveries(&sub.id, 10, None).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (
            log[0].event_id.as_str(),
            log[0].status_code,
            log[0].error.as_deref()
        ),
        ("ping_1", None, Some("connection refused"))
    );
    ping.subscription_id = "wh_none".into();
    assert!(!s.record_test(&ping).unwrap());
    // A store shared by no other process leads; one that is shared may not, but then another
    // store on the same place does (the PostgreSQL tests check that).
    if s.try_lead().unwrap() {
        assert!(
            s.try_lead().unwrap(),
            "leadership is kept while it is checked"
        );
        s.resign().unwrap();
    }
}

fn pruning_deletes_old_log_rows_only(b: &dyn Backend) {
    let s = b.open();
    let sub = s.create(new_sub("http://x.invalid/"), 0, 0).unwrap();
    let rules = DisableRules {
        after_failures: 0,
        after_ms: 0,
    };
    for (seq, at) in [(1, 100), (2, 200), (3, 300)] {
        s.record_attempt(&attempt(&sub.id, seq, 1, Outcome::Delivered, at), rules)
            .unwrap();
    }
    assert_eq!(s.prune_deliveries(250).unwrap(), 2);
    assert_eq!(s.prune_deliveries(250).unwrap(), 0);
    let log = s.deliveries(&sub.id, 10, None).unwrap();
    assert_eq!(log.iter().map(|d| d.at).collect::<Vec<_>>(), [300]);
}

#[test]
fn sqlite_always_leads() {
    let b = Sqlite::new();
    let s = b.open();
    let other = b.open();
    assert!(s.try_lead().unwrap() && other.try_lead().unwrap());
    s.resign().unwrap();
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
