//! The PostgreSQL fleet store: geofences and fleet events shared by every process of a
//! scale-out deployment (`kickstand serve`), where several worker processes append events and
//! several API processes read and follow them.
//!
//! It behaves exactly as the embedded store ([`super::sqlite`]): the same tables (prefixed
//! `fleet_`, in the configured schema, `migrations/0001_fleet.sql`), the same identity of an
//! event (`UNIQUE (ts, vehicle_id, kind, zone_id)`, so a repeated event is refused), the same
//! answers. It takes the history store's [`PostgresConfig`] and, like that store, owns a small
//! tokio runtime and `block_on`s the client, because the port is synchronous: callers are worker
//! threads or `spawn_blocking` threads, never async tasks.
//!
//! Migrations are versioned in `kickstand_fleet_migrations` (version, name, checksum) and
//! applied at open, each in its own transaction under a transaction-scoped advisory lock, so
//! processes that start at once apply each one once. A database migrated by a newer build (an
//! unknown version) or whose applied migration text differs from ours is refused.
//!
//! **Architecture Invariant:** every insert into `fleet_events` goes through
//! [`FleetStore::append_events`] here, which serialises appenders on an advisory lock; an
//! insert that skipped the lock could commit a sequence number below one a follower has
//! already passed.

use super::{EventQuery, FleetError, FleetResult, FleetStore, Geofence, StoredEvent};
use crate::history::HistoryError;
use crate::history::postgres::schema::{checksum, ignore_duplicate, lock_key, quote_ident};
use crate::history::postgres::{
    OwnedRuntime, PgError, PostgresConfig, build_pool, pg_err, tls_config,
};
use kickstand_domain::event::Event;
use kickstand_domain::zone::{Area, ZoneKind};
use kickstand_domain::{VehicleId, VehicleState};
use std::str::FromStr;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// One migration: applied in order of `version`, recorded with the checksum of its text.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// The migrations this build knows, in order.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "fleet",
    sql: include_str!("migrations/0001_fleet.sql"),
}];

/// The PostgreSQL fleet store.
pub struct PgFleetStore {
    /// Connections for every call; a call holds one only while it runs.
    pool: deadpool_postgres::Pool,
    /// The schema that holds the tables (for `drop_schema` and the lock keys).
    schema: String,
    /// The advisory-lock key appenders serialise on (see `append_events`). Per schema, because
    /// advisory locks are per database and tests run many schemas in one database.
    append_key: i64,
    /// The runtime the pool's connections live on. Declared last, so it is dropped after the
    /// pool.
    rt: OwnedRuntime,
}

/// A client error as a fleet error, with the server's code and detail when there are any.
fn pg(e: PgError) -> FleetError {
    match pg_err(e) {
        HistoryError::Engine(text) => FleetError(text),
        other => FleetError(other.to_string()),
    }
}

fn err(e: impl std::fmt::Display) -> FleetError {
    FleetError(e.to_string())
}

impl PgFleetStore {
    /// Connects (TLS when the URL says `sslmode=require`), creates the schema if needed and
    /// applies pending migrations. Fails when the database was migrated by a newer build.
    pub fn open(cfg: &PostgresConfig) -> FleetResult<PgFleetStore> {
        if cfg.schema.is_empty() || cfg.schema.len() > 63 {
            return Err(FleetError(
                "the PostgreSQL schema of the fleet store must be 1 to 63 characters".into(),
            ));
        }
        let mut pg = tokio_postgres::Config::from_str(&cfg.url).map_err(|e| {
            FleetError(format!(
                "the PostgreSQL URL of the fleet store is not valid: {e}"
            ))
        })?;
        pg.application_name("kickstand");
        pg.options(format!("-c search_path={}", quote_ident(&cfg.schema)));
        pg.connect_timeout(std::time::Duration::from_secs(10));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres-fleet")
            .enable_all()
            .build()
            .map_err(err)?;
        let tls = match pg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => {
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                    tls_config(cfg, "fleet.postgres").map_err(err)?,
                ))
            }
            _ => None,
        };
        let pool = build_pool(&pg, tls.as_ref(), cfg.pool_size).map_err(err)?;
        let store = PgFleetStore {
            pool,
            schema: cfg.schema.clone(),
            append_key: lock_key(&cfg.schema, "fleet_events"),
            rt: OwnedRuntime(Some(rt)),
        };
        store.rt.block_on(store.migrate())?;
        Ok(store)
    }

    /// Drops the schema and everything in it, the history store's tables too when they share
    /// it (tests use it to clean up).
    pub fn drop_schema(&self) -> FleetResult<()> {
        self.rt.block_on(async {
            let c = self.client().await?;
            c.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(&self.schema)
            ))
            .await
            .map_err(pg)
        })
    }

    /// Runs `sql` as it is (tests use it to tamper with the migrations table).
    #[cfg(test)]
    pub(crate) fn batch_execute(&self, sql: &str) -> FleetResult<()> {
        self.rt.block_on(async {
            let c = self.client().await?;
            c.batch_execute(sql).await.map_err(pg)
        })
    }

    async fn client(&self) -> FleetResult<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| FleetError(format!("postgres pool: {e}")))
    }

    /// Creates the schema if needed and applies every migration not applied yet, each in a
    /// transaction that holds the migration lock, so a process that starts at the same time
    /// waits and then finds it applied.
    async fn migrate(&self) -> FleetResult<()> {
        let mut client = self.client().await?;
        // The schema must exist before search_path can resolve into it.
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&self.schema)
            ))
            .await
            .or_else(ignore_duplicate)
            .map_err(pg)?;
        let key = lock_key(&self.schema, "fleet_migrate");
        loop {
            let tx = client.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
                .await
                .map_err(pg)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS kickstand_fleet_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   bigint NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await
            .map_err(pg)?;
            let applied = tx
                .query(
                    "SELECT version, name, checksum FROM kickstand_fleet_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(pg)?;
            let mut versions = Vec::with_capacity(applied.len());
            for row in &applied {
                let version: i32 = row.try_get(0).map_err(pg)?;
                let name: String = row.try_get(1).map_err(pg)?;
                let sum: i64 = row.try_get(2).map_err(pg)?;
                match MIGRATIONS.iter().find(|m| m.version == version) {
                    None => {
                        return Err(FleetError(format!(
                            "the fleet database has schema version {version} ({name}), which \
                             this build does not know (it knows up to {}): it was migrated by a \
                             newer Kickstand",
                            MIGRATIONS.len()
                        )));
                    }
                    Some(m) if checksum(m.sql) != sum => {
                        return Err(FleetError(format!(
                            "migration {version} ({name}) applied to the fleet database differs \
                             from this build's; refusing to run on a schema it did not create"
                        )));
                    }
                    Some(_) => versions.push(version),
                }
            }
            let Some(m) = MIGRATIONS.iter().find(|m| !versions.contains(&m.version)) else {
                return tx.commit().await.map_err(pg);
            };
            tx.batch_execute(m.sql).await.map_err(|e| {
                FleetError(format!(
                    "fleet migration {} ({}): {}",
                    m.version,
                    m.name,
                    pg(e).0
                ))
            })?;
            tx.execute(
                "INSERT INTO kickstand_fleet_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &checksum(m.sql)],
            )
            .await
            .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            tracing::info!(
                message = "fleet schema migrated",
                version = m.version,
                name = m.name
            );
        }
    }
}

const GEOFENCE_COLUMNS: &str =
    "id, name, kind, max_speed_kmh, geometry::text, created_at, updated_at";

const BUMP_GEOFENCES_VERSION: &str =
    "UPDATE fleet_counters SET value = value + 1 WHERE name = 'geofences_version'";

/// Stores a batch in one statement, serialised with every other appender of the schema.
///
/// Why the lock: `seq` comes from a sequence, and sequence values are taken when a row is
/// inserted, not when it commits. Two appenders in different processes could take 10 and 11,
/// commit 11 first, and a follower that reads "after 9" in between would see 11, move its
/// cursor there, and never see 10. Holding `pg_advisory_xact_lock` from before the first
/// `seq` is taken until the transaction ends makes seq order commit order: PostgreSQL makes a
/// transaction visible before it releases its locks, so the next appender takes its values
/// only after every smaller value is visible (or rolled back, which leaves a gap that no
/// follower waits for). That is the contract of [`FleetStore`]: "everything after `seq`"
/// never misses an event committed before the call.
///
/// The alternative, letting appenders run in parallel and having followers read only below
/// the oldest running transaction (`pg_snapshot_xmin` against each row's `xmin`), delays every
/// follower by the slowest transaction in the whole database and puts transaction ids in the
/// read path; a `LOCK TABLE … IN EXCLUSIVE MODE` would serialise the same way but also make
/// retention wait. The price of the advisory lock is that the appends of all workers commit
/// one at a time (the lock is held through the commit's WAL flush); each is a whole group of
/// a worker's events in one round trip (this statement, in its own implicit transaction), so
/// the limit is on batches per second, not events. The key is per schema ([`lock_key`]).
///
/// The lock is taken in a materialised CTE that the `WHERE EXISTS` gates on: the gate is an
/// init plan, evaluated before the first row reaches the projection that takes `nextval`.
/// Rows are inserted in the batch's order (`WITH ORDINALITY`), so seq order within a batch is
/// the caller's order, as in the embedded store; `ON CONFLICT DO NOTHING` refuses an event
/// already stored, also one repeated within the batch.
const APPEND_EVENTS: &str = "WITH serialised AS MATERIALIZED (SELECT pg_advisory_xact_lock($10::int8))
     INSERT INTO fleet_events (id, vehicle_id, kind, ts, zone_id, from_state, to_state, recorded_at, body)
     SELECT e.id, e.vehicle_id, e.kind, e.ts, e.zone_id, e.from_state, e.to_state, $9::int8, e.body
     FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[])
          WITH ORDINALITY AS e (id, vehicle_id, kind, ts, zone_id, from_state, to_state, body, n)
     WHERE EXISTS (SELECT FROM serialised)
     ORDER BY e.n
     ON CONFLICT (ts, vehicle_id, kind, zone_id) DO NOTHING";

/// The newest `state_changed` or `stale` event of each vehicle, in the order the vehicles were
/// given (a vehicle given twice is answered twice, one without any is left out), as the
/// embedded store answers. One statement: per vehicle, a backward scan of `(vehicle_id, seq)`
/// that stops at the first match, the query the embedded store runs once per vehicle.
const LAST_STATE_EVENTS: &str = "SELECT e.seq, e.body
     FROM unnest($1::text[]) WITH ORDINALITY AS v (vehicle_id, n)
     CROSS JOIN LATERAL (
         SELECT seq, body FROM fleet_events
         WHERE vehicle_id = v.vehicle_id AND kind IN ('state_changed', 'stale')
         ORDER BY seq DESC LIMIT 1
     ) e
     ORDER BY v.n";

fn geofence_from_row(r: &Row) -> FleetResult<Geofence> {
    let id: String = r.try_get(0).map_err(pg)?;
    let kind: String = r.try_get(2).map_err(pg)?;
    let geometry: String = r.try_get(4).map_err(pg)?;
    let area = serde_json::from_str::<serde_json::Value>(&geometry)
        .ok()
        .and_then(|v| Area::from_geojson(&v).ok());
    let (Some(kind), Some(area)) = (ZoneKind::parse(&kind), area) else {
        return Err(FleetError(format!(
            "geofence {id} is stored with an unreadable kind or geometry"
        )));
    };
    Ok(Geofence {
        id,
        name: r.try_get(1).map_err(pg)?,
        kind,
        max_speed_kmh: r.try_get(3).map_err(pg)?,
        area,
        created_at: r.try_get(5).map_err(pg)?,
        updated_at: r.try_get(6).map_err(pg)?,
    })
}

/// An event from its `seq` and `body` columns.
fn event_from(seq: i64, body: &str) -> FleetResult<Event> {
    serde_json::from_str(body).map_err(|e| err(format!("event {seq} is unreadable: {e}")))
}

/// A row of `seq, recorded_at, body`.
fn stored_from_row(r: &Row) -> FleetResult<StoredEvent> {
    let seq: i64 = r.try_get(0).map_err(pg)?;
    let recorded_at: i64 = r.try_get(1).map_err(pg)?;
    let body: &str = r.try_get(2).map_err(pg)?;
    Ok(StoredEvent {
        seq: seq as u64,
        recorded_at,
        event: event_from(seq, body)?,
    })
}

impl FleetStore for PgFleetStore {
    fn put_geofence(&self, g: &Geofence) -> FleetResult<()> {
        let geometry = g.area.to_geojson().to_string();
        self.rt.block_on(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO fleet_geofences
                       (id, name, kind, max_speed_kmh, geometry, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = excluded.kind,
                       max_speed_kmh = excluded.max_speed_kmh, geometry = excluded.geometry,
                       updated_at = excluded.updated_at",
                )
                .await
                .map_err(pg)?;
            tx.execute(
                &upsert,
                &[
                    &g.id,
                    &g.name,
                    &g.kind.as_str(),
                    &g.max_speed_kmh,
                    &geometry,
                    &g.created_at,
                    &g.updated_at,
                ],
            )
            .await
            .map_err(pg)?;
            tx.execute(BUMP_GEOFENCES_VERSION, &[]).await.map_err(pg)?;
            tx.commit().await.map_err(pg)
        })
    }

    fn delete_geofence(&self, id: &str) -> FleetResult<bool> {
        self.rt.block_on(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let n = tx
                .execute("DELETE FROM fleet_geofences WHERE id = $1", &[&id])
                .await
                .map_err(pg)?;
            if n > 0 {
                tx.execute(BUMP_GEOFENCES_VERSION, &[]).await.map_err(pg)?;
            }
            tx.commit().await.map_err(pg)?;
            Ok(n > 0)
        })
    }

    fn geofence(&self, id: &str) -> FleetResult<Option<Geofence>> {
        self.rt.block_on(async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(&format!(
                    "SELECT {GEOFENCE_COLUMNS} FROM fleet_geofences WHERE id = $1"
                ))
                .await
                .map_err(pg)?;
            let row = c.query_opt(&stmt, &[&id]).await.map_err(pg)?;
            row.as_ref().map(geofence_from_row).transpose()
        })
    }

    fn geofences(&self) -> FleetResult<Vec<Geofence>> {
        self.rt.block_on(async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(&format!(
                    "SELECT {GEOFENCE_COLUMNS} FROM fleet_geofences ORDER BY id"
                ))
                .await
                .map_err(pg)?;
            let rows = c.query(&stmt, &[]).await.map_err(pg)?;
            rows.iter().map(geofence_from_row).collect()
        })
    }

    fn geofences_version(&self) -> FleetResult<u64> {
        self.rt.block_on(async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached("SELECT value FROM fleet_counters WHERE name = 'geofences_version'")
                .await
                .map_err(pg)?;
            let row = c.query_one(&stmt, &[]).await.map_err(pg)?;
            Ok(row.try_get::<_, i64>(0).map_err(pg)? as u64)
        })
    }

    /// One statement per batch, serialised with every other appender: see `APPEND_EVENTS` for
    /// how the sequence contract holds across processes.
    fn append_events(&self, events: &[Event], recorded_at: i64) -> FleetResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        let (mut ids, mut vehicles, mut kinds, mut ts, mut zones) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut from_states, mut to_states, mut bodies) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in events {
            ids.push(e.id.as_str());
            vehicles.push(e.vehicle_id.as_str());
            kinds.push(e.kind.as_str());
            ts.push(e.ts);
            zones.push(e.zone_id.as_deref().unwrap_or(""));
            from_states.push(e.from_state.map(VehicleState::as_str));
            to_states.push(e.to_state.map(VehicleState::as_str));
            bodies.push(serde_json::to_string(e).map_err(err)?);
        }
        self.rt.block_on(async {
            let c = self.client().await?;
            let stmt = c.prepare_cached(APPEND_EVENTS).await.map_err(pg)?;
            c.execute(
                &stmt,
                &[
                    &ids,
                    &vehicles,
                    &kinds,
                    &ts,
                    &zones,
                    &from_states,
                    &to_states,
                    &bodies,
                    &recorded_at,
                    &self.append_key,
                ],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }

    fn events(&self, q: &EventQuery) -> FleetResult<Vec<StoredEvent>> {
        let mut sql =
            String::from("SELECT seq, recorded_at, body FROM fleet_events WHERE seq > $1");
        let after = i64::try_from(q.after_seq).unwrap_or(i64::MAX);
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(after)];
        let mut arg = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(v) = &q.vehicle_id {
            arg(
                &mut sql,
                " AND vehicle_id = ?",
                Box::new(v.as_str().to_owned()),
            );
        }
        if let Some(z) = &q.zone_id {
            arg(&mut sql, " AND zone_id = ?", Box::new(z.clone()));
        }
        if let Some(from) = q.from {
            arg(&mut sql, " AND ts >= ?", Box::new(from));
        }
        if let Some(to) = q.to {
            arg(&mut sql, " AND ts < ?", Box::new(to));
        }
        if !q.kinds.is_empty() {
            let kinds: Vec<&'static str> = q.kinds.iter().map(|k| k.as_str()).collect();
            arg(&mut sql, " AND kind = ANY(?::text[])", Box::new(kinds));
        }
        let limit = i64::try_from(q.limit.max(1)).unwrap_or(i64::MAX);
        arg(&mut sql, " ORDER BY seq LIMIT ?::int8", Box::new(limit));
        self.rt.block_on(async {
            let c = self.client().await?;
            let stmt = c.prepare_cached(&sql).await.map_err(pg)?;
            let params: Vec<&(dyn ToSql + Sync)> = args
                .iter()
                .map(|a| a.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = c.query(&stmt, &params).await.map_err(pg)?;
            rows.iter().map(stored_from_row).collect()
        })
    }

    fn event_head(&self) -> FleetResult<u64> {
        self.rt.block_on(async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM fleet_events")
                .await
                .map_err(pg)?;
            let row = c.query_one(&stmt, &[]).await.map_err(pg)?;
            Ok(row.try_get::<_, i64>(0).map_err(pg)? as u64)
        })
    }

    fn drop_events_before(&self, ts: i64) -> FleetResult<usize> {
        self.rt.block_on(async {
            let c = self.client().await?;
            let n = c
                .execute("DELETE FROM fleet_events WHERE ts < $1", &[&ts])
                .await
                .map_err(pg)?;
            Ok(n as usize)
        })
    }

    fn last_trip_ends(&self) -> FleetResult<Vec<(VehicleId, i64)>> {
        self.rt.block_on(async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT vehicle_id, MAX(ts) FROM fleet_events
                     WHERE kind = 'state_changed' AND from_state = 'on_trip'
                     GROUP BY vehicle_id ORDER BY vehicle_id",
                )
                .await
                .map_err(pg)?;
            let rows = c.query(&stmt, &[]).await.map_err(pg)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: &str = r.try_get(0).map_err(pg)?;
                let ts: i64 = r.try_get(1).map_err(pg)?;
                if let Ok(id) = VehicleId::new(id) {
                    out.push((id, ts));
                }
            }
            Ok(out)
        })
    }

    fn last_state_events(&self, vehicles: &[VehicleId]) -> FleetResult<Vec<Event>> {
        if vehicles.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = vehicles.iter().map(VehicleId::as_str).collect();
        self.rt.block_on(async {
            let c = self.client().await?;
            let stmt = c.prepare_cached(LAST_STATE_EVENTS).await.map_err(pg)?;
            let rows = c.query(&stmt, &[&ids]).await.map_err(pg)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let seq: i64 = r.try_get(0).map_err(pg)?;
                let body: &str = r.try_get(1).map_err(pg)?;
                out.push(event_from(seq, body)?);
            }
            Ok(out)
        })
    }
}
