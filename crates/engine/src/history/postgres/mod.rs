//! The PostgreSQL history store: a shared history that several worker processes write at once
//! (see docs/adr/0006-postgresql-history-backend.md for the client crate and the layout).
//!
//! Layout (`migrations/0001_history.sql`): `history_chunks` holds one row per chunk of one
//! vehicle's fixes in one bucket, keyed `(vehicle_id, bucket_start, first_ts)`, the points in the
//! columnar codec of the embedded store, partitioned by day on `bucket_start`;
//! `history_latest` holds each vehicle's newest fix; `history_dirty` marks buckets to compact.
//!
//! Write path, per shard writer (one dedicated connection):
//! 1. Duplicates are dropped as in the embedded store: a fix newer than the vehicle's newest
//!    stored `ts` is new; an older one is checked against the stored chunks of its bucket (one
//!    query for all such fixes of a group). A vehicle the writer has not seen yet gets its newest
//!    `ts` from `history_latest`.
//! 2. One transaction per group commit inserts one new chunk per `(vehicle, bucket)` with a
//!    multi-row `INSERT … SELECT FROM unnest(…)`, moves `history_latest` forward (only when
//!    newer), and marks dirty buckets. `append` returns after `COMMIT`, which PostgreSQL makes
//!    durable (`synchronous_commit` left on). Chunks and latest commit together, so a writer
//!    that dies between or inside two groups leaves each group wholly present or wholly absent,
//!    and the latest `ts` a new writer reads is exactly what is stored.
//! 3. `maintain` creates partitions ahead and merges the chunks of closed buckets into one row
//!    per vehicle; `drop_before` drops whole day partitions, and deletes the buckets of a
//!    partly expired day.
//!
//! The port is synchronous (workers are OS threads), so the store owns a small tokio runtime
//! for the client and `block_on`s it; callers are worker threads or `spawn_blocking` threads.
//!
//! **Architecture Invariant:** a writer trusts its cache of newest `ts` only for vehicles that
//! no other writer writes while it lives (the engine routes a vehicle to one shard); after any
//! failed transaction it forgets the cache, because the outcome of a failed `COMMIT` is unknown.

pub(crate) mod schema;
#[cfg(test)]
mod tests;

use super::{BucketFixes, HistoryError, HistoryStats, HistoryStore, HistoryWriter};
use crate::{FastMap, FastSet};
use futures_util::{StreamExt, TryStreamExt, pin_mut};
use kickstand_domain::{BucketSpan, Fix, Point, VehicleId, codec};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

pub(crate) type PgError = tokio_postgres::Error;

pub(crate) fn pg_err(e: PgError) -> HistoryError {
    // `Display` of a server error carries only the message; the code and detail help operators.
    match e.as_db_error() {
        Some(db) => HistoryError::Engine(format!(
            "postgres: {} ({}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!(": {d}")).unwrap_or_default()
        )),
        None => {
            // The source carries the reason (a refused certificate, a reset connection).
            let mut text = format!("postgres: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            HistoryError::Engine(text)
        }
    }
}

/// Settings of the PostgreSQL store (`[history.postgres]`). TLS is on when the URL says
/// `sslmode=require` (then the certificate is verified); otherwise connections are plain.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL, e.g. `postgres://kickstand:secret@db.internal:5432/kickstand`. Never
    /// logged (it may hold a password).
    pub url: String,
    /// Schema that holds the tables; created at start-up when missing.
    pub schema: String,
    /// Connections for queries (track, scan, upkeep). Each worker has one more of its own.
    pub pool_size: usize,
    /// Day partitions created ahead of today by upkeep (today's and yesterday's always exist).
    pub partitions_ahead_days: u32,
    /// Seconds after a bucket ends before its chunks are merged into one row per vehicle.
    pub compact_grace_secs: u64,
    /// PEM file of the certificate authorities to trust when the URL asks for TLS
    /// (`sslmode=require`: the server's certificate and name are verified). Unset: the Mozilla
    /// root certificates compiled in (webpki-roots).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            schema: "kickstand".into(),
            pool_size: 8,
            partitions_ahead_days: 3,
            compact_grace_secs: 600,
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("partitions_ahead_days", &self.partitions_ahead_days)
            .field("compact_grace_secs", &self.compact_grace_secs)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The store's runtime, shut down in the background when the store is dropped: the last
/// reference to a store may go away on an async task (the server's), where the blocking
/// shutdown of a dropped `Runtime` panics.
pub(crate) struct OwnedRuntime(pub(crate) Option<tokio::runtime::Runtime>);

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

struct Shared {
    rt: OwnedRuntime,
    pg: tokio_postgres::Config,
    /// Set when the URL says `sslmode=require`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pool: deadpool_postgres::Pool,
    schema: String,
    span: BucketSpan,
    config: PostgresConfig,
    /// Day partitions known to exist. Cleared when an insert finds one missing (another
    /// process's retention may have dropped it).
    partitions: Mutex<FastSet<i64>>,
}

/// The PostgreSQL history store.
pub struct PostgresHistory {
    shared: Arc<Shared>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn corrupt(e: codec::CodecError) -> HistoryError {
    HistoryError::Corrupt(e.to_string())
}

fn params<'a>(
    p: &'a [&'a (dyn ToSql + Sync)],
) -> impl ExactSizeIterator<Item = &'a dyn ToSql> + 'a {
    p.iter().map(|p| *p as &dyn ToSql)
}

impl PostgresHistory {
    /// Connects, applies migrations, checks the bucket span and creates the partitions around
    /// today.
    pub fn open(
        config: &PostgresConfig,
        span: BucketSpan,
    ) -> Result<PostgresHistory, HistoryError> {
        let mut pg = tokio_postgres::Config::from_str(&config.url).map_err(|e| {
            HistoryError::Config(format!("history.postgres.url is not a valid URL: {e}"))
        })?;
        anyhow_free_check(config)?;
        pg.application_name("kickstand");
        pg.options(format!(
            "-c search_path={}",
            schema::quote_ident(&config.schema)
        ));
        pg.connect_timeout(std::time::Duration::from_secs(10));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres")
            .enable_all()
            .build()?;
        let tls = match pg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => Some(tls_connector(config)?),
            _ => None,
        };
        let pool = build_pool(&pg, tls.as_ref(), config.pool_size)?;
        let shared = Arc::new(Shared {
            rt: OwnedRuntime(Some(rt)),
            pg,
            tls,
            pool,
            schema: config.schema.clone(),
            span,
            config: config.clone(),
            partitions: Mutex::new(FastSet::default()),
        });
        let s = shared.clone();
        shared.rt.block_on(async move {
            let mut client = s.connect().await?;
            schema::migrate(&mut client, &s.schema).await?;
            check_span(&client, span).await?;
            s.ensure_ahead(&mut client, now_ms()).await
        })?;
        Ok(PostgresHistory { shared })
    }

    /// Drops the schema and everything in it (tests use it to clean up).
    pub fn drop_schema(&self) -> Result<(), HistoryError> {
        let s = self.shared.clone();
        self.shared.rt.block_on(async move {
            let client = s.connect().await?;
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    schema::quote_ident(&s.schema)
                ))
                .await
                .map_err(pg_err)
        })
    }

    /// Runs `EXPLAIN` on the queries that `track` and `scan` send, with the
    /// given arguments, and returns the plans (tests assert that they use the indexes).
    pub fn explain_queries(
        &self,
        vehicle: &VehicleId,
        from: i64,
        to: i64,
    ) -> Result<(String, String), HistoryError> {
        let s = self.shared.clone();
        let v = vehicle.as_str().to_owned();
        self.shared.rt.block_on(async move {
            let client = s.pooled().await?;
            let b0 = s.span.start_of(from);
            let text = |rows: Vec<tokio_postgres::Row>| -> String {
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let track = client
                .query(&format!("EXPLAIN {TRACK_SQL}"), &[&v, &b0, &to, &from])
                .await
                .map_err(pg_err)?;
            let scan = client
                .query(&format!("EXPLAIN {SCAN_SQL}"), &[&b0, &to])
                .await
                .map_err(pg_err)?;
            Ok((text(track), text(scan)))
        })
    }

    /// Rewrites the tables compactly (`VACUUM FULL`), so space held by merged chunks is given
    /// back now. For measurement and offline upkeep: it locks the tables while it runs.
    pub fn vacuum_full(&self) -> Result<(), HistoryError> {
        let s = self.shared.clone();
        self.shared.rt.block_on(async move {
            let client = s.pooled().await?;
            client
                .batch_execute(
                    "VACUUM (FULL, ANALYZE) history_chunks, history_latest, history_dirty",
                )
                .await
                .map_err(pg_err)
        })
    }

    /// Updates the planner's statistics (after a bulk load; autovacuum does it otherwise).
    pub fn analyze(&self) -> Result<(), HistoryError> {
        let s = self.shared.clone();
        self.shared.rt.block_on(async move {
            let client = s.pooled().await?;
            client
                .batch_execute("ANALYZE history_chunks; ANALYZE history_latest")
                .await
                .map_err(pg_err)
        })
    }
}

/// The TLS connector for `sslmode=require`: rustls (on ring, the one TLS stack of the binary),
/// trusting `ca_file` or the compiled-in Mozilla roots.
pub(crate) fn tls_connector(
    config: &PostgresConfig,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, HistoryError> {
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
        config,
        "history.postgres",
    )?))
}

/// The rustls client configuration of a PostgreSQL client with these settings: rustls on ring
/// (the one TLS stack of the binary), trusting the certificate authorities of `ca_file`, or the
/// compiled-in Mozilla roots when it is unset. `section` names the settings in errors
/// (`history.postgres`, `fleet.postgres`).
pub fn tls_config(
    config: &PostgresConfig,
    section: &str,
) -> Result<rustls::ClientConfig, HistoryError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    HistoryError::Config(format!("{section}.ca_file {}: {e}", path.display()))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(HistoryError::Config(format!(
                    "{section}.ca_file {} holds no usable certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HistoryError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The TLS configuration that clients of `config.url` other than this crate's (the webhook
/// store) take: [`tls_config`] when the URL says `sslmode=require`, as this crate's stores
/// decide; `None` (plain connections) otherwise.
pub fn tls_if_required(
    config: &PostgresConfig,
    section: &str,
) -> Result<Option<Arc<rustls::ClientConfig>>, HistoryError> {
    let pg = tokio_postgres::Config::from_str(&config.url)
        .map_err(|e| HistoryError::Config(format!("{section}.url is not a valid URL: {e}")))?;
    Ok(match pg.get_ssl_mode() {
        tokio_postgres::config::SslMode::Require => Some(Arc::new(tls_config(config, section)?)),
        _ => None,
    })
}

/// The connection pool for queries: `size` connections at most (at least one), TLS when
/// `tls` is set.
pub(crate) fn build_pool(
    pg: &tokio_postgres::Config,
    tls: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
    size: usize,
) -> Result<deadpool_postgres::Pool, HistoryError> {
    let manager_config = deadpool_postgres::ManagerConfig {
        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
    };
    let manager = match tls {
        Some(t) => deadpool_postgres::Manager::from_config(pg.clone(), t.clone(), manager_config),
        None => deadpool_postgres::Manager::from_config(pg.clone(), NoTls, manager_config),
    };
    deadpool_postgres::Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(30)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .build()
        .map_err(|e| HistoryError::Config(format!("postgres pool: {e}")))
}

/// Settings checks that need no connection.
fn anyhow_free_check(config: &PostgresConfig) -> Result<(), HistoryError> {
    if config.schema.is_empty() || config.schema.len() > 63 {
        return Err(HistoryError::Config(
            "history.postgres.schema must be 1 to 63 characters".into(),
        ));
    }
    Ok(())
}

async fn check_span(client: &Client, span: BucketSpan) -> Result<(), HistoryError> {
    let want = span.ms().to_string();
    let row = client
        .query_opt(
            "INSERT INTO history_meta (key, value) VALUES ('bucket_ms', $1) \
             ON CONFLICT (key) DO NOTHING RETURNING value",
            &[&want],
        )
        .await
        .map_err(pg_err)?;
    if row.is_some() {
        return Ok(());
    }
    let have: String = client
        .query_one(
            "SELECT value FROM history_meta WHERE key = 'bucket_ms'",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    if have != want {
        return Err(HistoryError::Config(format!(
            "the history database was written with buckets of {have} ms, not {want} ms; a \
             store's bucket span cannot change (copy it with `kickstand history copy`)"
        )));
    }
    Ok(())
}

const TRACK_SQL: &str = "SELECT points FROM history_chunks \
     WHERE vehicle_id = $1 AND bucket_start >= $2 AND bucket_start <= $3 \
     AND first_ts <= $3 AND last_ts >= $4";

const SCAN_SQL: &str = "SELECT vehicle_id, bucket_start, points FROM history_chunks \
     WHERE bucket_start >= $1 AND bucket_start <= $2 ORDER BY bucket_start, vehicle_id";

impl Shared {
    async fn connect(&self) -> Result<Client, HistoryError> {
        fn watch<F: std::future::Future<Output = Result<(), PgError>> + Send + 'static>(c: F) {
            tokio::spawn(async move {
                if let Err(error) = c.await {
                    tracing::warn!(message = "postgres connection closed", %error);
                }
            });
        }
        Ok(match &self.tls {
            Some(tls) => {
                let (client, connection) = self.pg.connect(tls.clone()).await.map_err(pg_err)?;
                watch(connection);
                client
            }
            None => {
                let (client, connection) = self.pg.connect(NoTls).await.map_err(pg_err)?;
                watch(connection);
                client
            }
        })
    }

    async fn pooled(&self) -> Result<deadpool_postgres::Object, HistoryError> {
        self.pool
            .get()
            .await
            .map_err(|e| HistoryError::Engine(format!("postgres pool: {e}")))
    }

    /// Creates the partitions of the given days that this process does not know to exist.
    async fn ensure_partitions(
        &self,
        client: &mut Client,
        days: impl IntoIterator<Item = i64>,
    ) -> Result<(), HistoryError> {
        let missing: Vec<i64> = {
            let known = self.partitions.lock();
            let mut m: Vec<i64> = days.into_iter().filter(|d| !known.contains(d)).collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if missing.is_empty() {
            return Ok(());
        }
        schema::create_partitions(client, &self.schema, &missing).await?;
        self.partitions.lock().extend(missing);
        Ok(())
    }

    /// Yesterday, today and `partitions_ahead_days` days ahead.
    async fn ensure_ahead(&self, client: &mut Client, now: i64) -> Result<(), HistoryError> {
        let today = schema::day_of(now);
        let ahead = i64::from(self.config.partitions_ahead_days);
        self.ensure_partitions(client, (-1..=ahead).map(|d| today + d * schema::DAY_MS))
            .await
    }
}

/// The rows of a fleet scan, grouped into buckets and sent to `tx` in order.
async fn scan_rows(
    s: &Shared,
    from: i64,
    to: i64,
    tx: &tokio::sync::mpsc::Sender<Result<BucketFixes, HistoryError>>,
) -> Result<(), HistoryError> {
    let client = s.pooled().await?;
    let b0 = s.span.start_of(from);
    let rows = client
        .query_raw(SCAN_SQL, params(&[&b0, &to]))
        .await
        .map_err(pg_err)?;
    pin_mut!(rows);
    let mut current: Option<BucketFixes> = None;
    let send = |mut done: BucketFixes| async move {
        merge_cut(&mut done.points, from, to);
        // An empty bucket (all points outside the range) is not visited; a closed
        // receiver (the visitor stopped) ends the scan.
        done.points.is_empty() || tx.send(Ok(done)).await.is_ok()
    };
    while let Some(row) = rows.next().await {
        let row = row.map_err(pg_err)?;
        let id: &str = row.get(0);
        let bucket: i64 = row.get(1);
        let same = current
            .as_ref()
            .is_some_and(|c| c.bucket_start == bucket && c.vehicle_id.as_str() == id);
        if !same {
            if let Some(done) = current.take()
                && !send(done).await
            {
                return Ok(());
            }
            current = Some(BucketFixes {
                vehicle_id: VehicleId::new(id)
                    .map_err(|e| HistoryError::Corrupt(format!("stored vehicle id {id:?}: {e}")))?,
                bucket_start: bucket,
                points: Vec::new(),
            });
        }
        let c = current.as_mut().expect("set above");
        codec::decode(row.get::<_, &[u8]>(2), &mut c.points).map_err(corrupt)?;
    }
    if let Some(done) = current.take() {
        send(done).await;
    }
    Ok(())
}

/// Merges decoded chunks of one vehicle: sorted by `ts`, cut to `from..=to`.
fn merge_cut(points: &mut Vec<Point>, from: i64, to: i64) {
    points.retain(|p| p.ts >= from && p.ts <= to);
    points.sort_unstable_by_key(|p| p.ts);
}

impl HistoryStore for PostgresHistory {
    fn writer(&self, _shard: usize) -> Result<Box<dyn HistoryWriter>, HistoryError> {
        let s = self.shared.clone();
        let client = self.shared.rt.block_on(async move { s.connect().await })?;
        Ok(Box::new(PgWriter {
            shared: self.shared.clone(),
            client: Some(client),
            newest: FastMap::default(),
            marked: FastSet::default(),
        }))
    }

    fn track(&self, vehicle: &VehicleId, from: i64, to: i64) -> Result<Vec<Point>, HistoryError> {
        if from > to {
            return Ok(Vec::new());
        }
        let s = self.shared.clone();
        let v = vehicle.as_str().to_owned();
        self.shared.rt.block_on(async move {
            let client = s.pooled().await?;
            let b0 = s.span.start_of(from);
            let rows = client
                .query(TRACK_SQL, &[&v, &b0, &to, &from])
                .await
                .map_err(pg_err)?;
            let mut out = Vec::new();
            for r in &rows {
                codec::decode(r.get::<_, &[u8]>(0), &mut out).map_err(corrupt)?;
            }
            merge_cut(&mut out, from, to);
            Ok(out)
        })
    }

    fn scan(
        &self,
        from: i64,
        to: i64,
        visit: &mut dyn FnMut(BucketFixes) -> bool,
    ) -> Result<(), HistoryError> {
        if from > to {
            return Ok(());
        }
        // The query runs on the store's runtime and hands finished buckets over a bounded
        // channel; the visitor runs on this thread, outside the runtime, so it may block or
        // use another store (as `kickstand history copy` does). Rows stream in, so a scan of
        // a month is never in memory at once; the channel's bound is the backpressure.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<BucketFixes, HistoryError>>(16);
        let s = self.shared.clone();
        self.shared.rt.spawn(async move {
            let result = scan_rows(&s, from, to, &tx).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        while let Some(item) = rx.blocking_recv() {
            if !visit(item?) {
                break; // dropping the receiver stops the query task
            }
        }
        Ok(())
    }

    fn for_each_latest(&self, visit: &mut dyn FnMut(VehicleId, Point)) -> Result<(), HistoryError> {
        let s = self.shared.clone();
        self.shared.rt.block_on(async move {
            let client = s.pooled().await?;
            let rows = client
                .query_raw("SELECT vehicle_id, point FROM history_latest", params(&[]))
                .await
                .map_err(pg_err)?;
            pin_mut!(rows);
            let mut one = Vec::with_capacity(1);
            while let Some(row) = rows.try_next().await.map_err(pg_err)? {
                let id: &str = row.get(0);
                one.clear();
                codec::decode(row.get::<_, &[u8]>(1), &mut one).map_err(corrupt)?;
                let (Some(p), Ok(v)) = (one.first(), VehicleId::new(id)) else {
                    return Err(HistoryError::Corrupt(format!(
                        "latest fix of {id:?} is not one point"
                    )));
                };
                visit(v, *p);
            }
            Ok(())
        })
    }

    fn drop_before(&self, cutoff_ms: i64) -> Result<u64, HistoryError> {
        let s = self.shared.clone();
        self.shared.rt.block_on(async move {
            let mut client = s.pooled().await?;
            // Buckets that end at or before the cutoff start at or before this.
            let last_start = cutoff_ms - s.span.ms();
            let mut dropped = 0u64;
            for (day, name) in schema::list_partitions(&client).await? {
                if day + schema::DAY_MS > cutoff_ms {
                    continue;
                }
                // Every bucket of the day has ended: drop the partition whole.
                let tx = client.transaction().await.map_err(pg_err)?;
                let n: i64 = tx
                    .query_one(
                        &format!(
                            "SELECT count(*) FROM (SELECT DISTINCT vehicle_id, bucket_start \
                             FROM {name}) b"
                        ),
                        &[],
                    )
                    .await
                    .map_err(pg_err)?
                    .get(0);
                tx.batch_execute(&format!("DROP TABLE {name}"))
                    .await
                    .map_err(pg_err)?;
                tx.commit().await.map_err(pg_err)?;
                s.partitions.lock().remove(&day);
                dropped += n as u64;
                tracing::info!(message = "history partition dropped", partition = %name, buckets = n);
            }
            // The partly expired day, if any: delete its expired buckets.
            let n: i64 = client
                .query_one(
                    "WITH d AS (DELETE FROM history_chunks WHERE bucket_start <= $1 \
                     RETURNING vehicle_id, bucket_start) \
                     SELECT count(*) FROM (SELECT DISTINCT vehicle_id, bucket_start FROM d) b",
                    &[&last_start],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            client
                .execute(
                    "DELETE FROM history_dirty WHERE bucket_start <= $1",
                    &[&last_start],
                )
                .await
                .map_err(pg_err)?;
            Ok(dropped + n as u64)
        })
    }

    fn maintain(&self, now_ms: i64) -> Result<u64, HistoryError> {
        let s = self.shared.clone();
        self.shared.rt.block_on(async move {
            let mut client = s.pooled().await?;
            s.ensure_ahead(&mut client, now_ms).await?;
            // One process compacts at a time; the others skip this pass.
            let key = schema::lock_key(&s.schema, "maintain");
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(pg_err)?
                .get(0);
            if !got {
                return Ok(0);
            }
            let result = compact_closed(&mut client, &s, now_ms).await;
            let unlock = client
                .execute("SELECT pg_advisory_unlock($1)", &[&key])
                .await;
            let n = result?;
            unlock.map_err(pg_err)?;
            Ok(n)
        })
    }

    fn stats(&self) -> Result<HistoryStats, HistoryError> {
        let s = self.shared.clone();
        self.shared.rt.block_on(async move {
            let client = s.pooled().await?;
            let row = client
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint, \
                            coalesce(sum(c.reltuples) FILTER (WHERE t.parentrelid IS NOT NULL \
                                AND c.reltuples > 0), 0)::bigint \
                     FROM pg_partition_tree('history_chunks') t \
                     JOIN pg_class c ON c.oid = t.relid",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            let other: i64 = client
                .query_one(
                    "SELECT (pg_total_relation_size('history_latest') \
                           + pg_total_relation_size('history_dirty') \
                           + pg_total_relation_size('history_meta'))::bigint",
                    &[],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            Ok(HistoryStats {
                disk_bytes: (row.get::<_, i64>(0) + other) as u64,
                // Chunk rows as the planner estimates them (a count would read every
                // partition); after compaction one row is one bucket.
                buckets: row.get::<_, i64>(1) as u64,
            })
        })
    }

    // `is_healthy` stays true: a database that is down fails each append with an error (503 +
    // Retry-After to the device) and the writer reconnects on the next one; nothing is
    // poisoned.
}

/// Merges the chunks of every closed, dirty bucket into one row per vehicle. Pages through a
/// bucket's vehicles so a bucket of a large fleet is never in memory at once. Deletes exactly
/// the dirty markers it read, so a late chunk written meanwhile keeps its own marker.
async fn compact_closed(client: &mut Client, s: &Shared, now: i64) -> Result<u64, HistoryError> {
    let grace = i64::try_from(s.config.compact_grace_secs).unwrap_or(i64::MAX / 2_000) * 1000;
    let closed_before = now - grace - s.span.ms();
    let markers = client
        .query(
            "SELECT bucket_start, array_agg(id) FROM history_dirty \
             WHERE bucket_start <= $1 GROUP BY bucket_start ORDER BY bucket_start",
            &[&closed_before],
        )
        .await
        .map_err(pg_err)?;
    let mut compacted = 0u64;
    for m in markers {
        let bucket: i64 = m.get(0);
        let ids: Vec<i64> = m.get(1);
        let mut after = String::new();
        loop {
            let tx = client.transaction().await.map_err(pg_err)?;
            let vehicles: Vec<String> = tx
                .query(
                    "SELECT vehicle_id FROM history_chunks WHERE bucket_start = $1 \
                     AND vehicle_id > $2 GROUP BY vehicle_id HAVING count(*) > 1 \
                     ORDER BY vehicle_id LIMIT 500",
                    &[&bucket, &after],
                )
                .await
                .map_err(pg_err)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let Some(last) = vehicles.last().cloned() else {
                tx.execute("DELETE FROM history_dirty WHERE id = ANY($1)", &[&ids])
                    .await
                    .map_err(pg_err)?;
                tx.commit().await.map_err(pg_err)?;
                break;
            };
            let rows = tx
                .query(
                    "DELETE FROM history_chunks WHERE bucket_start = $1 \
                     AND vehicle_id = ANY($2) RETURNING vehicle_id, points",
                    &[&bucket, &vehicles],
                )
                .await
                .map_err(pg_err)?;
            let mut by_vehicle: std::collections::BTreeMap<&str, Vec<Point>> = Default::default();
            for r in &rows {
                let points = by_vehicle.entry(r.get(0)).or_default();
                codec::decode(r.get::<_, &[u8]>(1), points).map_err(corrupt)?;
            }
            let mut chunks = ChunkRows::default();
            for (id, points) in &mut by_vehicle {
                points.sort_unstable_by_key(|p| p.ts);
                points.dedup_by_key(|p| p.ts);
                chunks.push(id, bucket, points);
            }
            chunks.insert(&tx).await.map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            compacted += by_vehicle.len() as u64;
            after = last;
        }
    }
    Ok(compacted)
}

/// Chunk rows as column arrays for one `INSERT … SELECT FROM unnest(…)`.
#[derive(Default)]
struct ChunkRows {
    vehicle: Vec<String>,
    bucket: Vec<i64>,
    first: Vec<i64>,
    last: Vec<i64>,
    count: Vec<i32>,
    min_lat: Vec<i32>,
    min_lon: Vec<i32>,
    max_lat: Vec<i32>,
    max_lon: Vec<i32>,
    points: Vec<Vec<u8>>,
}

impl ChunkRows {
    /// Adds a chunk of `points` (non-empty, in strictly increasing `ts` order).
    fn push(&mut self, vehicle: &str, bucket: i64, points: &[Point]) {
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            return;
        };
        let mut bbox = [i32::MAX, i32::MAX, i32::MIN, i32::MIN];
        for p in points {
            bbox[0] = bbox[0].min(p.lat_e6);
            bbox[1] = bbox[1].min(p.lon_e6);
            bbox[2] = bbox[2].max(p.lat_e6);
            bbox[3] = bbox[3].max(p.lon_e6);
        }
        let mut enc = Vec::with_capacity(16 + points.len() * 8);
        codec::encode(points, &mut enc);
        self.vehicle.push(vehicle.to_owned());
        self.bucket.push(bucket);
        self.first.push(first.ts);
        self.last.push(last.ts);
        self.count.push(points.len() as i32);
        self.min_lat.push(bbox[0]);
        self.min_lon.push(bbox[1]);
        self.max_lat.push(bbox[2]);
        self.max_lon.push(bbox[3]);
        self.points.push(enc);
    }

    fn is_empty(&self) -> bool {
        self.vehicle.is_empty()
    }

    async fn insert(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<u64, PgError> {
        if self.is_empty() {
            return Ok(0);
        }
        tx.execute(
            "INSERT INTO history_chunks (vehicle_id, bucket_start, first_ts, last_ts, count, \
             min_lat_e6, min_lon_e6, max_lat_e6, max_lon_e6, points) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int4[], \
             $6::int4[], $7::int4[], $8::int4[], $9::int4[], $10::bytea[])",
            &[
                &self.vehicle,
                &self.bucket,
                &self.first,
                &self.last,
                &self.count,
                &self.min_lat,
                &self.min_lon,
                &self.max_lat,
                &self.max_lon,
                &self.points,
            ],
        )
        .await
    }
}

/// The writer of one shard: one connection of its own.
struct PgWriter {
    shared: Arc<Shared>,
    client: Option<Client>,
    /// Newest stored `ts` per vehicle this writer has seen (stored or read from
    /// `history_latest`); `i64::MIN` for a vehicle with no history.
    newest: FastMap<VehicleId, i64>,
    /// Open buckets this writer has already marked dirty.
    marked: FastSet<i64>,
}

impl HistoryWriter for PgWriter {
    fn append(&mut self, fixes: &[Fix], is_new: &mut Vec<bool>) -> Result<(), HistoryError> {
        let base = is_new.len();
        is_new.resize(base + fixes.len(), false);
        if fixes.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let result = shared
            .rt
            .block_on(self.append_async(fixes, &mut is_new[base..]));
        if result.is_err() {
            // The outcome of a failed transaction is unknown: relearn what is stored.
            is_new.truncate(base);
            self.newest.clear();
            self.marked.clear();
            if self.client.as_ref().is_some_and(|c| c.is_closed()) {
                self.client = None;
            }
        }
        result
    }

    fn tick(&mut self) -> Result<(), HistoryError> {
        // Nothing is buffered; keep the idle connection checked so a dead one is replaced
        // before the next group commit needs it.
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<(), HistoryError> {
        Ok(())
    }
}

impl PgWriter {
    async fn append_async(
        &mut self,
        fixes: &[Fix],
        is_new: &mut [bool],
    ) -> Result<(), HistoryError> {
        let s = self.shared.clone();
        if self.client.is_none() {
            self.client = Some(s.connect().await?);
        }
        let client = self.client.as_mut().expect("connected above");

        // Fixes in (vehicle, ts) order; a repeat within the group is a duplicate.
        let mut order: Vec<u32> = (0..fixes.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (fa, fb) = (&fixes[a as usize], &fixes[b as usize]);
            fa.vehicle_id
                .as_str()
                .cmp(fb.vehicle_id.as_str())
                .then(fa.point.ts.cmp(&fb.point.ts))
        });

        // Vehicles this writer has not seen: their newest stored ts.
        let mut unknown: Vec<&VehicleId> = Vec::new();
        for &i in &order {
            let v = &fixes[i as usize].vehicle_id;
            if !self.newest.contains_key(v) && unknown.last() != Some(&v) {
                unknown.push(v);
            }
        }
        if !unknown.is_empty() {
            let ids: Vec<&str> = unknown.iter().map(|v| v.as_str()).collect();
            let rows = client
                .query(
                    "SELECT vehicle_id, ts FROM history_latest WHERE vehicle_id = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(pg_err)?;
            let stored: FastMap<&str, i64> = rows
                .iter()
                .map(|r| (r.get::<_, &str>(0), r.get(1)))
                .collect();
            for v in unknown {
                let ts = stored.get(v.as_str()).copied().unwrap_or(i64::MIN);
                self.newest.insert(v.clone(), ts);
            }
        }

        // Classify: newer than stored → new; not newer → late, checked against the chunks.
        let mut late: Vec<u32> = Vec::new();
        let mut prev: Option<(&str, i64)> = None;
        for &i in &order {
            let f = &fixes[i as usize];
            let key = (f.vehicle_id.as_str(), f.point.ts);
            if prev == Some(key) {
                continue; // repeated within the group
            }
            prev = Some(key);
            if f.point.ts > self.newest[&f.vehicle_id] {
                is_new[i as usize] = true;
            } else {
                late.push(i);
            }
        }
        if !late.is_empty() {
            let mut keys: Vec<(&str, i64)> = late
                .iter()
                .map(|&i| {
                    let f = &fixes[i as usize];
                    (f.vehicle_id.as_str(), s.span.start_of(f.point.ts))
                })
                .collect();
            keys.sort_unstable();
            keys.dedup();
            let (kv, kb): (Vec<&str>, Vec<i64>) = keys.iter().copied().unzip();
            let rows = client
                .query(
                    "SELECT c.vehicle_id, c.points FROM history_chunks c \
                     JOIN unnest($1::text[], $2::int8[]) AS k(v, b) \
                       ON c.vehicle_id = k.v AND c.bucket_start = k.b \
                     WHERE c.bucket_start = ANY($2)",
                    &[&kv, &kb],
                )
                .await
                .map_err(pg_err)?;
            let mut stored: FastSet<(String, i64)> = FastSet::default();
            let mut points = Vec::new();
            for r in &rows {
                points.clear();
                codec::decode(r.get::<_, &[u8]>(1), &mut points).map_err(corrupt)?;
                let id: &str = r.get(0);
                stored.extend(points.iter().map(|p| (id.to_owned(), p.ts)));
            }
            for &i in &late {
                let f = &fixes[i as usize];
                if !stored.contains(&(f.vehicle_id.as_str().to_owned(), f.point.ts)) {
                    is_new[i as usize] = true;
                }
            }
        }

        // One chunk per (vehicle, bucket) of the new fixes; the newest per vehicle.
        let now = now_ms();
        let mut chunks = ChunkRows::default();
        let (mut lv, mut lt, mut lp) =
            (Vec::<&str>::new(), Vec::<i64>::new(), Vec::<Vec<u8>>::new());
        let mut advanced: Vec<u32> = Vec::new();
        let mut days: Vec<i64> = Vec::new();
        let mut dirty: Vec<i64> = Vec::new();
        let mut run: Vec<Point> = Vec::new();
        let mut run_key: Option<(&str, i64)> = None;
        let flush = |run: &mut Vec<Point>, key: Option<(&str, i64)>, chunks: &mut ChunkRows| {
            if let Some((v, b)) = key
                && !run.is_empty()
            {
                chunks.push(v, b, run);
                run.clear();
            }
        };
        for (n, &i) in order.iter().enumerate() {
            if !is_new[i as usize] {
                continue;
            }
            let f = &fixes[i as usize];
            let key = (f.vehicle_id.as_str(), s.span.start_of(f.point.ts));
            if run_key != Some(key) {
                flush(&mut run, run_key, &mut chunks);
                run_key = Some(key);
                days.push(schema::day_of(key.1));
                let closed = key.1 + s.span.ms() <= now;
                if closed || !self.marked.contains(&key.1) {
                    dirty.push(key.1);
                }
            }
            run.push(f.point);
            // The last new fix of a vehicle in (vehicle, ts) order is its newest.
            let next_same_vehicle = order[n + 1..]
                .iter()
                .find(|&&j| is_new[j as usize])
                .is_some_and(|&j| fixes[j as usize].vehicle_id == f.vehicle_id);
            if !next_same_vehicle && f.point.ts > self.newest[&f.vehicle_id] {
                let mut enc = Vec::with_capacity(24);
                codec::encode(&[f.point], &mut enc);
                lv.push(key.0);
                lt.push(f.point.ts);
                lp.push(enc);
                advanced.push(i);
            }
        }
        flush(&mut run, run_key, &mut chunks);
        if chunks.is_empty() {
            return Ok(());
        }
        days.sort_unstable();
        days.dedup();
        dirty.sort_unstable();
        dirty.dedup();
        s.ensure_partitions(client, days).await?;

        let tx = client.transaction().await.map_err(pg_err)?;
        // Vehicles with a stored latest row are updated (a join, cheaper than an upsert);
        // vehicles new to this writer's knowledge are upserted. Both only move forward.
        let (mut uv, mut ut, mut up) = (Vec::new(), Vec::new(), Vec::new());
        let (mut iv, mut it, mut ip) = (Vec::new(), Vec::new(), Vec::new());
        for (((v, t), p), &i) in lv.iter().zip(&lt).zip(&lp).zip(&advanced) {
            let known = self.newest[&fixes[i as usize].vehicle_id] != i64::MIN;
            let (vs, ts, ps) = if known {
                (&mut uv, &mut ut, &mut up)
            } else {
                (&mut iv, &mut it, &mut ip)
            };
            vs.push(*v);
            ts.push(*t);
            ps.push(p.as_slice());
        }
        let update = async {
            if uv.is_empty() {
                return Ok(0);
            }
            tx.execute(
                "UPDATE history_latest l SET ts = n.ts, point = n.point \
                 FROM unnest($1::text[], $2::int8[], $3::bytea[]) AS n(vehicle_id, ts, point) \
                 WHERE l.vehicle_id = n.vehicle_id AND l.ts < n.ts",
                &[&uv, &ut, &up],
            )
            .await
        };
        let insert = async {
            if iv.is_empty() {
                return Ok(0);
            }
            tx.execute(
                "INSERT INTO history_latest (vehicle_id, ts, point) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[]) \
                 ON CONFLICT (vehicle_id) DO UPDATE SET ts = excluded.ts, point = excluded.point \
                 WHERE history_latest.ts < excluded.ts",
                &[&iv, &it, &ip],
            )
            .await
        };
        let marks = async {
            if dirty.is_empty() {
                return Ok(0);
            }
            tx.execute(
                "INSERT INTO history_dirty (bucket_start) SELECT unnest($1::int8[])",
                &[&dirty],
            )
            .await
        };
        // Pipelined on the one connection: three statements, one round trip's wait.
        let inserted = futures_util::try_join!(chunks.insert(&tx), update, insert, marks);
        if let Err(e) = inserted {
            if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION) {
                // "no partition of relation found": dropped by retention elsewhere.
                s.partitions.lock().clear();
            }
            return Err(pg_err(e));
        }
        tx.commit().await.map_err(pg_err)?;

        // Stored: move the cache forward.
        for i in advanced {
            let f = &fixes[i as usize];
            self.newest.insert(f.vehicle_id.clone(), f.point.ts);
        }
        for b in dirty {
            if b + s.span.ms() > now {
                self.marked.insert(b);
            }
        }
        // Forget marks of buckets long closed.
        if self.marked.len() > 64 {
            self.marked.retain(|b| b + s.span.ms() > now);
        }
        Ok(())
    }
}
