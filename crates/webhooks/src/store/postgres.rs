//! [`PgWebhookStore`]: the webhook state in a PostgreSQL schema, shared by every API process of
//! a scale-out deployment (`kickstand serve`), and the election of the one process that
//! dispatches.
//!
//! # Layout
//!
//! Tables in the schema given to [`PgWebhookStore::open`] (created when missing):
//! `webhook_subscriptions`, `webhook_deliveries` (the log; ids from an identity column, so they
//! increase like SQLite's) and `webhook_pending` (the retry each subscription waits for). Their
//! columns mirror the SQLite store's; kinds and zones are `text[]`. Versioned migrations are
//! compiled in and recorded in `kickstand_webhook_migrations` (version, name, checksum); each
//! runs in its own transaction under `pg_advisory_xact_lock`, so processes that start together
//! migrate once. A database migrated by a newer build, or with a migration whose text differs
//! from ours, is refused.
//!
//! # Transactions
//!
//! What the SQLite store does in one transaction is one transaction here too. `update` and
//! `record_attempt` read the subscription `FOR UPDATE`, so two processes changing one
//! subscription take turns, and the effects of an attempt (`Effects`) are computed
//! from the row as it is when they are written.
//!
//! # Leadership
//!
//! [`WebhookStore::try_lead`] takes a session-level `pg_try_advisory_lock` on a dedicated
//! connection (not one of the pool's, named `kickstand-webhooks-leader:<schema>` in
//! `pg_stat_activity`) and holds it while that session lives; each later call checks the
//! session with a query bounded by 5 s. When the session breaks or does not answer, the
//! leadership is lost: `try_lead` says `false`, the dispatcher stops delivering, and its next
//! try competes for the lock on a new session like any standby's. The server ends a dead
//! session (TCP keepalives of 10 s + 3 × 5 s on it) and so releases the lock to a standby. The old leader stops within 5 s of losing its connection, well
//! before the server gives the lock away, so the two rarely overlap; when they do (a leader that
//! stalls longer than that), receivers see duplicates, which at-least-once delivery allows. The
//! URL must reach PostgreSQL itself or a pooler in session mode: a transaction-mode pooler
//! cannot hold a session lock.
//!
//! The port is synchronous, so the store owns a small tokio runtime for the client and
//! `block_on`s it; callers are `spawn_blocking` threads (never an async task).
//!
//! **Architecture Invariant:** neither the URL (it may hold a password) nor a subscription's
//! secret is logged or put in an error.

use super::{
    AfterAttempt, Attempt, Delivery, DisableRules, Effects, NewSubscription, Outcome, Pending,
    StoreError, Subscription, SubscriptionPatch, WebhookStore, apply_patch, kinds_from_strings,
    kinds_to_strings, new_subscription, seq_from_sql, seq_to_sql,
};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Pooled connections for the API's and the dispatcher's queries (the leader's session is one
/// more).
const POOL_SIZE: usize = 8;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the leader's session has to answer a check before the leadership counts as lost.
const LEADER_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A versioned migration, compiled in.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// The migrations, in order. Never edit one that has shipped: add the next.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "webhooks",
    sql: r#"
CREATE TABLE webhook_subscriptions (
    id text PRIMARY KEY,
    url text NOT NULL,
    secret text NOT NULL,
    kinds text[] NOT NULL,
    zones text[] NOT NULL,
    enabled boolean NOT NULL,
    disabled_reason text,
    created_at bigint NOT NULL,
    consecutive_failures bigint NOT NULL DEFAULT 0,
    failing_since bigint,
    cursor bigint NOT NULL
);
CREATE TABLE webhook_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id text NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_id text NOT NULL,
    event_seq bigint NOT NULL,
    attempt bigint NOT NULL,
    status_code integer,
    error text,
    duration_ms bigint NOT NULL,
    at bigint NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('delivered', 'failed', 'gave_up'))
);
CREATE INDEX webhook_deliveries_by_subscription ON webhook_deliveries (subscription_id, id);
CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (at);
CREATE TABLE webhook_pending (
    subscription_id text PRIMARY KEY REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_seq bigint NOT NULL,
    event_id text NOT NULL,
    attempts bigint NOT NULL,
    next_attempt_at bigint NOT NULL
);
"#,
}];

const SUB_COLUMNS: &str = "id, url, secret, kinds, zones, enabled, disabled_reason, created_at, \
    consecutive_failures, failing_since, cursor";

const DELIVERY_COLUMNS: &str = "id, subscription_id, event_id, event_seq, attempt, status_code, \
    error, duration_ms, at, outcome";

/// The webhook state in a PostgreSQL schema.
pub struct PgWebhookStore {
    /// The dedicated session that holds (or tries for) the dispatch lock. Declared before the
    /// runtime, so it is dropped first.
    leader: Mutex<LeaderSession>,
    /// Connections for every other query.
    pool: deadpool_postgres::Pool,
    /// The settings of the leader's session: the pool's, with keepalives.
    leader_pg: tokio_postgres::Config,
    /// Set when the caller gave a TLS configuration.
    tls: Option<MakeRustlsConnect>,
    /// Where the tables are (validated: letters, digits and `_`).
    schema: String,
    /// The advisory-lock key of leadership in this schema.
    leader_key: i64,
    /// Runs the client's connections; `block_on` by every call. Dropped last.
    rt: OwnedRuntime,
}

/// The leader's session, when there is one.
#[derive(Default)]
struct LeaderSession {
    client: Option<Client>,
    /// Whether `client`'s session holds the lock.
    leading: bool,
}

impl PgWebhookStore {
    /// Connects to `url`, creates `schema` when missing and brings the tables up to date.
    ///
    /// `schema` is 1 to 63 ASCII letters, digits or `_`, not starting with a digit. With `tls`
    /// the connections use rustls with that configuration, and TLS is required unless the URL
    /// says `sslmode=disable`; without it they are plain, and a URL that says
    /// `sslmode=require` is refused.
    pub fn open(
        url: &str,
        schema: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<PgWebhookStore, StoreError> {
        check_schema(schema)?;
        // The parse error names the option at fault, never the URL's text.
        let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Config(format!(
                "the webhook store's PostgreSQL URL is invalid: {e}"
            ))
        })?;
        let tls = match (pg.get_ssl_mode(), tls) {
            (SslMode::Require, None) => {
                return Err(StoreError::Config(
                    "the webhook store's PostgreSQL URL asks for sslmode=require, but no TLS \
                     configuration was given"
                        .into(),
                ));
            }
            (SslMode::Disable, _) | (_, None) => None,
            (_, Some(config)) => {
                // A TLS configuration means TLS: no silent fallback to plain text.
                pg.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new((*config).clone()))
            }
        };
        pg.application_name("kickstand-webhooks");
        pg.options(format!("-c search_path={}", quote_ident(schema)));
        pg.connect_timeout(CONNECT_TIMEOUT);
        let mut leader_pg = pg.clone();
        // Named after the schema, so `pg_stat_activity` shows whose leader a session is (the
        // server cuts names at 63 bytes).
        leader_pg
            .application_name(format!("kickstand-webhooks-leader:{schema}"))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("webhooks-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Config(format!("cannot start the PostgreSQL client: {e}")))?;
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(t) => {
                deadpool_postgres::Manager::from_config(pg.clone(), t.clone(), manager_config)
            }
            None => deadpool_postgres::Manager::from_config(pg.clone(), NoTls, manager_config),
        };
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Config(format!("PostgreSQL connection pool: {e}")))?;
        let store = PgWebhookStore {
            leader: Mutex::new(LeaderSession::default()),
            pool,
            leader_pg,
            tls,
            schema: schema.to_owned(),
            leader_key: lock_key(schema, "webhooks/leader"),
            rt: OwnedRuntime(Some(rt)),
        };
        store.run(async {
            let mut client = store.pooled().await?;
            migrate(&mut client, &store.schema).await
        })?;
        Ok(store)
    }

    /// The schema the tables are in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drops the schema and everything in it, the webhook tables and anything else (tests use
    /// it to clean up after themselves).
    pub fn drop_schema(&self) -> Result<(), StoreError> {
        self.run(async {
            let client = self.pooled().await?;
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    quote_ident(&self.schema)
                ))
                .await
                .map_err(pg_err)
        })
    }

    fn run<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.rt.block_on(f)
    }

    async fn pooled(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Postgres(format!("connection pool: {e}")))
    }

    /// A new session for the leader's lock, outside the pool.
    async fn connect_leader(&self) -> Result<Client, StoreError> {
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) =
                    self.leader_pg.connect(tls.clone()).await.map_err(pg_err)?;
                tokio::spawn(watch_leader_connection(connection));
                client
            }
            None => {
                let (client, connection) = self.leader_pg.connect(NoTls).await.map_err(pg_err)?;
                tokio::spawn(watch_leader_connection(connection));
                client
            }
        };
        // The server ends the session of a leader that went silent (and so frees the lock)
        // after about 25 s, rather than after the system's default of hours.
        client
            .batch_execute(
                "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                 SET tcp_keepalives_count = 3",
            )
            .await
            .map_err(pg_err)?;
        Ok(client)
    }
}

impl WebhookStore for PgWebhookStore {
    fn create(
        &self,
        new: NewSubscription,
        cursor: u64,
        now_ms: i64,
    ) -> Result<Subscription, StoreError> {
        let sub = new_subscription(new, cursor, now_ms)?;
        self.run(async {
            let client = self.pooled().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "INSERT INTO webhook_subscriptions ({SUB_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, true, NULL, $6, 0, NULL, $7)"
                ))
                .await
                .map_err(pg_err)?;
            client
                .execute(
                    &stmt,
                    &[
                        &sub.id,
                        &sub.url,
                        &sub.secret,
                        &kinds_to_strings(&sub.kinds),
                        &sub.zones,
                        &sub.created_at,
                        &seq_to_sql(sub.cursor),
                    ],
                )
                .await
                .map_err(pg_err)
        })?;
        Ok(sub)
    }

    fn list(&self) -> Result<Vec<Subscription>, StoreError> {
        self.run(async {
            let client = self.pooled().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {SUB_COLUMNS} FROM webhook_subscriptions ORDER BY created_at, id"
                ))
                .await
                .map_err(pg_err)?;
            let rows = client.query(&stmt, &[]).await.map_err(pg_err)?;
            rows.iter().map(sub_from_row).collect()
        })
    }

    fn get(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        self.run(async {
            let client = self.pooled().await?;
            get(&client, id, "").await
        })
    }

    fn update(
        &self,
        id: &str,
        patch: SubscriptionPatch,
    ) -> Result<Option<Subscription>, StoreError> {
        self.run(async {
            let mut client = self.pooled().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let Some(mut sub) = get(&tx, id, " FOR UPDATE").await? else {
                return Ok(None);
            };
            if apply_patch(&mut sub, patch) {
                tx.execute(
                    "DELETE FROM webhook_pending WHERE subscription_id = $1",
                    &[&id],
                )
                .await
                .map_err(pg_err)?;
            }
            tx.execute(
                "UPDATE webhook_subscriptions SET url = $2, kinds = $3, zones = $4, \
                 enabled = $5, disabled_reason = $6, consecutive_failures = $7, \
                 failing_since = $8 WHERE id = $1",
                &[
                    &id,
                    &sub.url,
                    &kinds_to_strings(&sub.kinds),
                    &sub.zones,
                    &sub.enabled,
                    &sub.disabled_reason,
                    &i64::from(sub.consecutive_failures),
                    &sub.failing_since,
                ],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(Some(sub))
        })
    }

    fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.run(async {
            let client = self.pooled().await?;
            let n = client
                .execute("DELETE FROM webhook_subscriptions WHERE id = $1", &[&id])
                .await
                .map_err(pg_err)?;
            Ok(n > 0)
        })
    }

    fn deliveries(
        &self,
        subscription_id: &str,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.run(async {
            let client = self.pooled().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
                     WHERE subscription_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
                ))
                .await
                .map_err(pg_err)?;
            let rows = client
                .query(
                    &stmt,
                    &[
                        &subscription_id,
                        &before.unwrap_or(i64::MAX),
                        &i64::try_from(limit).unwrap_or(i64::MAX),
                    ],
                )
                .await
                .map_err(pg_err)?;
            rows.iter().map(delivery_from_row).collect()
        })
    }

    fn pending(&self, subscription_id: &str) -> Result<Option<Pending>, StoreError> {
        self.run(async {
            let client = self.pooled().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT event_seq, event_id, attempts, next_attempt_at FROM webhook_pending \
                     WHERE subscription_id = $1",
                )
                .await
                .map_err(pg_err)?;
            let row = client
                .query_opt(&stmt, &[&subscription_id])
                .await
                .map_err(pg_err)?;
            row.map(|r| {
                Ok(Pending {
                    event_seq: seq_from_sql(r.try_get(0).map_err(pg_err)?),
                    event_id: r.try_get(1).map_err(pg_err)?,
                    attempts: count(r.try_get(2).map_err(pg_err)?, "attempts")?,
                    next_attempt_at: r.try_get(3).map_err(pg_err)?,
                })
            })
            .transpose()
        })
    }

    fn advance(&self, subscription_id: &str, seq: u64) -> Result<(), StoreError> {
        self.run(async {
            let client = self.pooled().await?;
            let stmt = client
                .prepare_cached(
                    "UPDATE webhook_subscriptions SET cursor = greatest(cursor, $2) WHERE id = $1",
                )
                .await
                .map_err(pg_err)?;
            client
                .execute(&stmt, &[&subscription_id, &seq_to_sql(seq)])
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    fn record_attempt(&self, a: &Attempt, rules: DisableRules) -> Result<AfterAttempt, StoreError> {
        self.run(async {
            let mut client = self.pooled().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let Some(sub) = get(&tx, &a.subscription_id, " FOR UPDATE").await? else {
                return Ok(AfterAttempt::Gone);
            };
            insert_delivery(&tx, a).await?;
            let id = a.subscription_id.as_str();
            let effects = Effects::of(&sub, a, rules);
            // `greatest(cursor, 0)` leaves the cursor where it is.
            let cursor = if effects.advance {
                seq_to_sql(a.event_seq)
            } else {
                0
            };
            let stmt = tx
                .prepare_cached(
                    "UPDATE webhook_subscriptions SET consecutive_failures = $2, \
                     failing_since = $3, cursor = greatest(cursor, $4) WHERE id = $1",
                )
                .await
                .map_err(pg_err)?;
            tx.execute(
                &stmt,
                &[
                    &id,
                    &i64::from(effects.failures),
                    &effects.failing_since,
                    &cursor,
                ],
            )
            .await
            .map_err(pg_err)?;
            match &effects.retry {
                None => {
                    let stmt = tx
                        .prepare_cached("DELETE FROM webhook_pending WHERE subscription_id = $1")
                        .await
                        .map_err(pg_err)?;
                    tx.execute(&stmt, &[&id]).await.map_err(pg_err)?;
                }
                Some(p) => {
                    let stmt = tx
                        .prepare_cached(
                            "INSERT INTO webhook_pending (subscription_id, event_seq, event_id, \
                             attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (subscription_id) DO UPDATE SET \
                             event_seq = excluded.event_seq, event_id = excluded.event_id, \
                             attempts = excluded.attempts, \
                             next_attempt_at = excluded.next_attempt_at",
                        )
                        .await
                        .map_err(pg_err)?;
                    tx.execute(
                        &stmt,
                        &[
                            &id,
                            &seq_to_sql(p.event_seq),
                            &p.event_id,
                            &i64::from(p.attempts),
                            &p.next_attempt_at,
                        ],
                    )
                    .await
                    .map_err(pg_err)?;
                }
            }
            if let Some(reason) = &effects.disable {
                tx.execute(
                    "UPDATE webhook_subscriptions SET enabled = false, disabled_reason = $2 \
                     WHERE id = $1",
                    &[&id, reason],
                )
                .await
                .map_err(pg_err)?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(effects.after(sub.enabled))
        })
    }

    fn record_test(&self, a: &Attempt) -> Result<bool, StoreError> {
        self.run(async {
            let mut client = self.pooled().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            // Keeps the subscription from being deleted until the row is in.
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM webhook_subscriptions WHERE id = $1 FOR KEY SHARE",
                    &[&a.subscription_id],
                )
                .await
                .map_err(pg_err)?;
            if exists.is_none() {
                return Ok(false);
            }
            insert_delivery(&tx, a).await?;
            tx.commit().await.map_err(pg_err)?;
            Ok(true)
        })
    }

    fn prune_deliveries(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.run(async {
            let client = self.pooled().await?;
            let n = client
                .execute(
                    "DELETE FROM webhook_deliveries WHERE at < $1",
                    &[&before_ms],
                )
                .await
                .map_err(pg_err)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn try_lead(&self) -> Result<bool, StoreError> {
        let mut session = self.leader.lock();
        if session.leading {
            let client = session.client.as_ref().expect("a leader has its session");
            match self.run(check_session(client)) {
                Ok(()) => return Ok(true),
                Err(error) => {
                    // Lost, for this round at least: the dispatcher stops its lanes, and the
                    // next call competes for the lock again with a new session.
                    tracing::warn!(
                        message = "the webhook dispatcher lost its PostgreSQL session, and with it the leadership",
                        schema = %self.schema,
                        %error
                    );
                    *session = LeaderSession::default();
                    return Ok(false);
                }
            }
        }
        if session.client.as_ref().is_some_and(Client::is_closed) {
            session.client = None;
        }
        let client = match session.client.take() {
            Some(client) => client,
            None => self.run(async {
                tokio::time::timeout(CONNECT_TIMEOUT, self.connect_leader())
                    .await
                    .map_err(|_| {
                        StoreError::Postgres("connecting the leader's session timed out".into())
                    })?
            })?,
        };
        // On an error the session is dropped: a lock it may have taken goes with it.
        let leading = self.run(async {
            let row = tokio::time::timeout(
                LEADER_CHECK_TIMEOUT,
                client.query_one("SELECT pg_try_advisory_lock($1)", &[&self.leader_key]),
            )
            .await
            .map_err(|_| StoreError::Postgres("taking the leader's lock timed out".into()))?
            .map_err(pg_err)?;
            row.try_get::<_, bool>(0).map_err(pg_err)
        })?;
        *session = LeaderSession {
            client: Some(client),
            leading,
        };
        Ok(leading)
    }

    fn resign(&self) -> Result<(), StoreError> {
        let mut session = self.leader.lock();
        let was = std::mem::take(&mut *session);
        if let (Some(client), true) = (&was.client, was.leading) {
            // Ending the session would release the lock too; unlocking first makes it
            // immediate, whatever the connection's state.
            self.run(async {
                tokio::time::timeout(
                    LEADER_CHECK_TIMEOUT,
                    client.execute("SELECT pg_advisory_unlock($1)", &[&self.leader_key]),
                )
                .await
                .map_err(|_| StoreError::Postgres("releasing the leader's lock timed out".into()))?
                .map_err(pg_err)
                .map(drop)
            })?;
        }
        Ok(())
    }
}

/// Checks that the leader's session still answers (and so still holds its lock).
async fn check_session(client: &Client) -> Result<(), StoreError> {
    if client.is_closed() {
        return Err(StoreError::Postgres("the session is closed".into()));
    }
    tokio::time::timeout(LEADER_CHECK_TIMEOUT, client.simple_query("SELECT 1"))
        .await
        .map_err(|_| {
            StoreError::Postgres(format!(
                "the session did not answer within {} s",
                LEADER_CHECK_TIMEOUT.as_secs()
            ))
        })?
        .map_err(pg_err)
        .map(drop)
}

async fn watch_leader_connection<F>(connection: F)
where
    F: Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(message = "the webhook leader's PostgreSQL connection closed", error = %pg_err(e));
    }
}

/// A subscription, locked as `lock` says (`""` or `" FOR UPDATE"`).
async fn get(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
    lock: &str,
) -> Result<Option<Subscription>, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {SUB_COLUMNS} FROM webhook_subscriptions WHERE id = $1{lock}"
        ))
        .await
        .map_err(pg_err)?;
    let row = client.query_opt(&stmt, &[&id]).await.map_err(pg_err)?;
    row.as_ref().map(sub_from_row).transpose()
}

async fn insert_delivery(
    tx: &deadpool_postgres::Transaction<'_>,
    a: &Attempt,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO webhook_deliveries (subscription_id, event_id, event_seq, attempt, \
             status_code, error, duration_ms, at, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await
        .map_err(pg_err)?;
    let params: [&(dyn ToSql + Sync); 9] = [
        &a.subscription_id,
        &a.event_id,
        &seq_to_sql(a.event_seq),
        &i64::from(a.attempt),
        &a.status_code.map(i32::from),
        &a.error,
        &i64::try_from(a.duration_ms).unwrap_or(i64::MAX),
        &a.at,
        &a.outcome.as_str(),
    ];
    tx.execute(&stmt, &params).await.map_err(pg_err)?;
    Ok(())
}

fn sub_from_row(r: &Row) -> Result<Subscription, StoreError> {
    let id: String = r.try_get(0).map_err(pg_err)?;
    let kinds: Vec<String> = r.try_get(3).map_err(pg_err)?;
    Ok(Subscription {
        kinds: kinds_from_strings(&id, &kinds)?,
        url: r.try_get(1).map_err(pg_err)?,
        secret: r.try_get(2).map_err(pg_err)?,
        zones: r.try_get(4).map_err(pg_err)?,
        enabled: r.try_get(5).map_err(pg_err)?,
        disabled_reason: r.try_get(6).map_err(pg_err)?,
        created_at: r.try_get(7).map_err(pg_err)?,
        consecutive_failures: count(r.try_get(8).map_err(pg_err)?, "consecutive_failures")?,
        failing_since: r.try_get(9).map_err(pg_err)?,
        cursor: seq_from_sql(r.try_get(10).map_err(pg_err)?),
        id,
    })
}

fn delivery_from_row(r: &Row) -> Result<Delivery, StoreError> {
    let outcome: &str = r.try_get(9).map_err(pg_err)?;
    let Some(outcome) = Outcome::parse(outcome) else {
        return Err(StoreError::Corrupt(format!("outcome {outcome:?}")));
    };
    let status: Option<i32> = r.try_get(5).map_err(pg_err)?;
    let duration: i64 = r.try_get(7).map_err(pg_err)?;
    Ok(Delivery {
        id: r.try_get(0).map_err(pg_err)?,
        subscription_id: r.try_get(1).map_err(pg_err)?,
        event_id: r.try_get(2).map_err(pg_err)?,
        event_seq: seq_from_sql(r.try_get(3).map_err(pg_err)?),
        attempt: count(r.try_get(4).map_err(pg_err)?, "attempt")?,
        status_code: status
            .map(|s| u16::try_from(s).map_err(|_| StoreError::Corrupt(format!("status code {s}"))))
            .transpose()?,
        error: r.try_get(6).map_err(pg_err)?,
        duration_ms: u64::try_from(duration).unwrap_or(0),
        at: r.try_get(8).map_err(pg_err)?,
        outcome,
    })
}

/// A count stored as `bigint`.
fn count(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v}")))
}

/// Creates the schema when missing and applies the migrations not yet applied, each in a
/// transaction of its own under the migration lock.
async fn migrate(client: &mut deadpool_postgres::Object, schema: &str) -> Result<(), StoreError> {
    let key = lock_key(schema, "webhooks/migrate");
    loop {
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
            .await
            .map_err(pg_err)?;
        // Checked first, so a role without CREATE on the database can use a schema made for it.
        let exists = tx
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
            .await
            .map_err(pg_err)?;
        if exists.is_none() {
            tx.batch_execute(&format!("CREATE SCHEMA {}", quote_ident(schema)))
                .await
                .map_err(pg_err)?;
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS kickstand_webhook_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   bigint NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg_err)?;
        let applied = tx
            .query(
                "SELECT version, name, checksum FROM kickstand_webhook_migrations \
                 ORDER BY version",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let mut versions = Vec::with_capacity(applied.len());
        for row in &applied {
            let version: i32 = row.try_get(0).map_err(pg_err)?;
            let name: String = row.try_get(1).map_err(pg_err)?;
            let sum: i64 = row.try_get(2).map_err(pg_err)?;
            match MIGRATIONS.iter().find(|m| m.version == version) {
                None => return Err(StoreError::TooNew(i64::from(version))),
                Some(m) if checksum(m.sql) != sum => {
                    return Err(StoreError::Foreign(format!(
                        "migration {version} ({name}) recorded in schema {schema} differs from \
                         this program's; refusing to run on tables it did not create"
                    )));
                }
                Some(_) => versions.push(version),
            }
        }
        let Some(m) = MIGRATIONS.iter().find(|m| !versions.contains(&m.version)) else {
            tx.commit().await.map_err(pg_err)?;
            return Ok(());
        };
        tx.batch_execute(m.sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO kickstand_webhook_migrations (version, name, checksum) \
             VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        tracing::info!(
            message = "webhook tables migrated",
            schema,
            version = m.version,
            name = m.name
        );
    }
}

/// The first 8 bytes of the SHA-256 of a migration's text.
fn checksum(sql: &str) -> i64 {
    let digest = Sha256::digest(sql.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

/// An advisory-lock key for `purpose` in `schema`: advisory locks are per database, and one
/// database may hold many schemas (tests run each in its own), so the schema is part of the
/// key. FNV-1a.
fn lock_key(schema: &str, purpose: &str) -> i64 {
    let mut h = kickstand_domain::Fnv1a64::default();
    for piece in [schema.as_bytes(), &[0], purpose.as_bytes()] {
        std::hash::Hasher::write(&mut h, piece);
    }
    std::hash::Hasher::finish(&h) as i64
}

fn check_schema(schema: &str) -> Result<(), StoreError> {
    let mut bytes = schema.bytes();
    let ok = (1..=63).contains(&schema.len())
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "the webhook store's schema {schema:?} must be 1 to 63 ASCII letters, digits or _, \
             not starting with a digit"
        )))
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    // `Display` of a server error carries only the message; the code and detail help operators.
    match e.as_db_error() {
        Some(db) => StoreError::Postgres(format!(
            "{} ({}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!(": {d}")).unwrap_or_default()
        )),
        None => {
            // The source carries the reason (a refused certificate, a reset connection).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            StoreError::Postgres(text)
        }
    }
}

/// The store's runtime, shut down in the background when the store is dropped: the last
/// reference to a store may go away on an async task (the server's), where the blocking
/// shutdown of a dropped `Runtime` panics.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for OwnedRuntime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .expect("the runtime lives until the store is dropped")
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Postgres;
    use super::*;
    use std::time::Instant;

    /// Runs `sql` on a pooled connection of `store`.
    fn exec(store: &PgWebhookStore, sql: &str) {
        store
            .run(async {
                let c = store.pooled().await?;
                c.batch_execute(sql).await.map_err(pg_err)
            })
            .unwrap();
    }

    /// Asks `store` for the leadership until it has it, for up to `secs`; how long it took.
    fn lead_within(store: &PgWebhookStore, secs: u64) -> Duration {
        let start = Instant::now();
        while !store.try_lead().unwrap_or(false) {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "no leadership within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    #[test]
    fn exactly_one_store_leads_and_another_takes_over_when_it_goes() {
        let Some(pg) = Postgres::new() else {
            return;
        };
        let a = pg.open_pg();
        let b = pg.open_pg();
        let c = pg.open_pg();
        assert!(a.try_lead().unwrap());
        assert!(!b.try_lead().unwrap());
        assert!(!c.try_lead().unwrap());
        assert!(a.try_lead().unwrap(), "the leader keeps leading");
        assert!(!b.try_lead().unwrap(), "the standby stays one");
        // Another schema in the same database has a leader of its own.
        let other = Postgres::new().expect("PostgreSQL answered a moment ago");
        assert!(other.open_pg().try_lead().unwrap());

        // The leader goes away (its process ends): one of the others takes over.
        drop(a);
        let start = Instant::now();
        let (new, standby) = loop {
            if b.try_lead().unwrap() {
                break (&b, &c);
            }
            if c.try_lead().unwrap() {
                break (&c, &b);
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no one took over");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!standby.try_lead().unwrap());
        assert!(new.try_lead().unwrap());

        // Resigning hands over at once.
        new.resign().unwrap();
        assert!(standby.try_lead().unwrap());
        assert!(!new.try_lead().unwrap());
    }

    #[test]
    fn a_leader_whose_session_breaks_stops_leading_and_a_standby_takes_over() {
        let Some(pg) = Postgres::new() else {
            return;
        };
        let a = pg.open_pg();
        let b = pg.open_pg();
        assert!(a.try_lead().unwrap());
        assert!(!b.try_lead().unwrap());
        // Kill the leader's session on the server, as a failover or an admin would.
        let session = a.leader.lock();
        let client = session.client.as_ref().expect("the leader has a session");
        let pid: i32 = a
            .run(async {
                let row = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .map_err(pg_err)?;
                row.try_get(0).map_err(pg_err)
            })
            .unwrap();
        drop(session);
        exec(&b, &format!("SELECT pg_terminate_backend({pid})"));
        // The old leader knows at once that it no longer leads; the standby gets the lock.
        assert!(!a.try_lead().unwrap());
        let took = lead_within(&b, 5);
        eprintln!("the standby took over {took:?} after the leader's session was killed");
        assert!(!a.try_lead().unwrap());
        assert!(b.try_lead().unwrap());
        // The old leader's pooled connections were not touched: it still serves the API.
        a.list().unwrap();
    }

    #[test]
    fn processes_starting_together_migrate_once_and_newer_or_foreign_schemas_are_refused() {
        let Some(pg) = Postgres::new() else {
            return;
        };
        // A schema nobody has opened yet, opened by four "processes" at once.
        let fresh = Postgres {
            url: pg.url.clone(),
            schema: format!("{}_fresh", pg.schema),
        };
        let opened: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| PgWebhookStore::open(&fresh.url, &fresh.schema, None)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for store in &opened {
            assert!(store.as_ref().is_ok(), "{:?}", store.as_ref().err());
        }
        let s = opened.into_iter().next().unwrap().unwrap();
        let rows: i64 = s
            .run(async {
                let c = s.pooled().await?;
                let row = c
                    .query_one("SELECT count(*) FROM kickstand_webhook_migrations", &[])
                    .await
                    .map_err(pg_err)?;
                row.try_get(0).map_err(pg_err)
            })
            .unwrap();
        assert_eq!(rows, MIGRATIONS.len() as i64);
        s.create(NewSubscription::default(), 0, 0).unwrap();
        drop(s);
        drop(fresh);

        let s = pg.open_pg();
        exec(
            &s,
            "INSERT INTO kickstand_webhook_migrations (version, name, checksum)              VALUES (99, 'from the future', 0)",
        );
        let Err(e) = PgWebhookStore::open(&pg.url, &pg.schema, None) else {
            panic!("a newer database was opened")
        };
        assert!(matches!(e, StoreError::TooNew(99)), "{e}");
        exec(
            &s,
            "DELETE FROM kickstand_webhook_migrations WHERE version = 99;              UPDATE kickstand_webhook_migrations SET checksum = 1 WHERE version = 1",
        );
        let Err(e) = PgWebhookStore::open(&pg.url, &pg.schema, None) else {
            panic!("a foreign schema was opened")
        };
        assert!(matches!(e, StoreError::Foreign(_)), "{e}");
    }

    #[test]
    fn concurrent_attempts_on_one_subscription_take_turns() {
        let Some(pg) = Postgres::new() else {
            return;
        };
        let a = pg.open_pg();
        let b = pg.open_pg();
        let sub = a.create(NewSubscription::default(), 0, 0).unwrap();
        let rules = DisableRules {
            after_failures: 0,
            after_ms: 0,
        };
        // Two processes giving up events of one subscription at once: every increment of the
        // failure count survives, because each reads the row under its lock.
        std::thread::scope(|scope| {
            for (store, base) in [(&a, 0u64), (&b, 1000)] {
                let id = sub.id.clone();
                scope.spawn(move || {
                    for n in 0..50 {
                        let seq = base + n + 1;
                        let attempt = Attempt {
                            subscription_id: id.clone(),
                            event_id: format!("e{seq}"),
                            event_seq: seq,
                            attempt: 1,
                            status_code: Some(500),
                            error: None,
                            duration_ms: 1,
                            at: 1,
                            outcome: Outcome::GaveUp,
                            next_attempt_at: None,
                            disable: None,
                        };
                        store.record_attempt(&attempt, rules).unwrap();
                    }
                });
            }
        });
        let got = a.get(&sub.id).unwrap().unwrap();
        assert_eq!((got.consecutive_failures, got.cursor), (100, 1050));
        assert_eq!(b.deliveries(&sub.id, 500, None).unwrap().len(), 100);
    }

    #[test]
    fn schema_names_are_checked_and_keys_differ() {
        for good in ["kickstand", "_x", "a1_b", &"s".repeat(63)] {
            check_schema(good).unwrap();
        }
        for bad in ["", "1a", "a-b", "a b", "a\"b", &"s".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad:?}");
        }
        assert_ne!(
            lock_key("a", "webhooks/leader"),
            lock_key("b", "webhooks/leader")
        );
        assert_ne!(
            lock_key("a", "webhooks/leader"),
            lock_key("a", "webhooks/migrate")
        );
    }

    #[test]
    fn tls_asked_for_without_a_configuration_is_refused_before_connecting() {
        // Port 9 (discard): nothing is contacted, the settings are refused first.
        let Err(e) = PgWebhookStore::open(
            "postgres://u:hunter2@127.0.0.1:9/db?sslmode=require",
            "s",
            None,
        ) else {
            panic!("opened")
        };
        let text = e.to_string();
        assert!(text.contains("sslmode=require"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let Err(e) = PgWebhookStore::open("postgres://u:hunter2@127.0.0.1:9/db", "a b", None)
        else {
            panic!("opened")
        };
        assert!(matches!(e, StoreError::Config(_)), "{e}");
    }
}
