//! Versioned schema migrations and the day partitions of `history_chunks`.
//!
//! Migrations are SQL files compiled into the binary, applied in order at start-up, each in its
//! own transaction together with its row in `kickstand_migrations` (version, name, checksum).
//! A session advisory lock serialises processes that start at once. A store migrated by a newer
//! binary (an unknown version) or whose applied migration text differs from ours is refused.

use super::{PgError, pg_err};
use crate::history::HistoryError;
use kickstand_domain::timefmt;
use tokio_postgres::Client;

pub(super) const DAY_MS: i64 = 86_400_000;

pub(super) struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "history",
    sql: include_str!("migrations/0001_history.sql"),
}];

/// An advisory-lock key for `purpose` in `schema`: advisory locks are per database, and tests
/// run many schemas in one database, so the schema is part of the key.
pub(crate) fn lock_key(schema: &str, purpose: &str) -> i64 {
    let mut h = kickstand_domain::Fnv1a64::default();
    for piece in [schema.as_bytes(), &[0], purpose.as_bytes()] {
        std::hash::Hasher::write(&mut h, piece);
    }
    std::hash::Hasher::finish(&h) as i64
}

pub(crate) fn checksum(sql: &str) -> i64 {
    i64::from(crc32fast::hash(sql.as_bytes()))
}

/// Creates the schema if needed and applies every migration not yet applied.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<(), HistoryError> {
    let key = lock_key(schema, "migrate");
    // The schema must exist before search_path can resolve into it.
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(schema)
        ))
        .await
        .or_else(ignore_duplicate)
        .map_err(pg_err)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(pg_err)?;
    let result = apply(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await;
    result?;
    unlock.map_err(pg_err)?;
    Ok(())
}

async fn apply(client: &mut Client) -> Result<(), HistoryError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS kickstand_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   bigint NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg_err)?;
    let applied = client
        .query(
            "SELECT version, name, checksum FROM kickstand_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(pg_err)?;
    for row in &applied {
        let version: i32 = row.get(0);
        let name: String = row.get(1);
        let sum: i64 = row.get(2);
        match MIGRATIONS.iter().find(|m| m.version == version) {
            None => {
                return Err(HistoryError::Config(format!(
                    "the history database has schema version {version} ({name}), which this \
                     binary does not know: it was migrated by a newer Kickstand"
                )));
            }
            Some(m) if checksum(m.sql) != sum => {
                return Err(HistoryError::Config(format!(
                    "migration {version} ({name}) applied to the history database differs from \
                     this binary's; refusing to run on a schema it did not create"
                )));
            }
            Some(_) => {}
        }
    }
    for m in MIGRATIONS {
        if applied.iter().any(|r| r.get::<_, i32>(0) == m.version) {
            continue;
        }
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.batch_execute(m.sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO kickstand_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        tracing::info!(
            message = "history schema migrated",
            version = m.version,
            name = m.name
        );
    }
    Ok(())
}

/// `CREATE SCHEMA IF NOT EXISTS` can still fail with a duplicate when two processes race.
pub(crate) fn ignore_duplicate(e: PgError) -> Result<(), PgError> {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_SCHEMA => Ok(()),
        _ => Err(e),
    }
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The start of the day (UTC) that holds `ms`.
pub(super) fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// `history_chunks_p20261125` for the day starting at `day`.
pub(super) fn partition_name(day: i64) -> String {
    let date = timefmt::format_ms(day);
    format!("history_chunks_p{}", date[..10].replace('-', ""))
}

/// The day a partition name stands for, or `None` for a name that is not ours.
pub(super) fn partition_day(name: &str) -> Option<i64> {
    let d = name.strip_prefix("history_chunks_p")?;
    if d.len() != 8 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    timefmt::parse_rfc3339_ms(&format!("{}-{}-{}T00:00:00Z", &d[..4], &d[4..6], &d[6..]))
}

/// Creates the partitions of `days` that do not exist yet. The advisory lock keeps two
/// processes from racing on the same `CREATE TABLE`.
pub(super) async fn create_partitions(
    client: &mut Client,
    schema: &str,
    days: &[i64],
) -> Result<(), HistoryError> {
    if days.is_empty() {
        return Ok(());
    }
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key(schema, "partitions")],
    )
    .await
    .map_err(pg_err)?;
    for &day in days {
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF history_chunks FOR VALUES FROM ({}) TO ({})",
            partition_name(day),
            day,
            day + DAY_MS
        ))
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(())
}

/// The partitions of `history_chunks` that exist, by day.
pub(super) async fn list_partitions(client: &Client) -> Result<Vec<(i64, String)>, HistoryError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'history_chunks'::regclass",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let mut out: Vec<(i64, String)> = rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            partition_day(&name).map(|d| (d, name))
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_and_refuse_others() {
        let day = 1_795_564_800_000; // 2026-11-25
        assert_eq!(partition_name(day), "history_chunks_p20261125");
        assert_eq!(partition_day("history_chunks_p20261125"), Some(day));
        assert_eq!(day_of(day + DAY_MS - 1), day);
        assert_eq!(day_of(day - 1), day - DAY_MS);
        assert_eq!(partition_day("history_chunks_p2026112"), None);
        assert_eq!(partition_day("history_chunks_default"), None);
        assert_eq!(partition_day("other_p20261125"), None);
    }

    #[test]
    fn lock_keys_differ_by_schema_and_purpose() {
        assert_ne!(lock_key("a", "migrate"), lock_key("b", "migrate"));
        assert_ne!(lock_key("a", "migrate"), lock_key("a", "partitions"));
        assert_ne!(lock_key("ab", "c"), lock_key("a", "bc"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("kick"), "\"kick\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
