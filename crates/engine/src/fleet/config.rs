//! Which fleet store to run, and opening it (`[fleet]` in the config file).

use super::postgres::PgFleetStore;
use super::sqlite::SqliteFleetStore;
use super::{FleetError, FleetResult, FleetStore};
use crate::history::postgres::PostgresConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where geofences, fleet events and webhook subscriptions are kept.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FleetStoreKind {
    /// `fleet.db` and `webhooks.db` (SQLite) in the data directory: one process (the default).
    #[default]
    Embedded,
    /// Tables in a PostgreSQL schema shared by every process of a scale-out deployment.
    Postgres,
}

/// `[fleet]`: the store of geofences, events and webhook subscriptions.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    pub store: FleetStoreKind,
    /// Used when `store` is `postgres`.
    pub postgres: FleetPostgresConfig,
}

/// `[fleet.postgres]`: where the fleet store's schema is. Only the connection keys: the
/// history's partition and compaction keys (`[history.postgres]`) are refused here rather than
/// silently ignored.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetPostgresConfig {
    /// Connection URL. Never logged (it may hold a password).
    pub url: String,
    /// Schema of the fleet and webhook tables; created at start-up when missing.
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// PEM file of the certificate authorities to trust when the URL says `sslmode=require`.
    pub ca_file: Option<PathBuf>,
}

impl Default for FleetPostgresConfig {
    fn default() -> Self {
        let d = PostgresConfig::default();
        FleetPostgresConfig {
            url: d.url,
            schema: d.schema,
            pool_size: d.pool_size,
            ca_file: d.ca_file,
        }
    }
}

impl std::fmt::Debug for FleetPostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetPostgresConfig")
            .field("url", &"<redacted>")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl FleetPostgresConfig {
    /// The connection settings in the form the PostgreSQL stores take.
    pub fn connection(&self) -> PostgresConfig {
        PostgresConfig {
            url: self.url.clone(),
            schema: self.schema.clone(),
            pool_size: self.pool_size,
            ca_file: self.ca_file.clone(),
            ..PostgresConfig::default()
        }
    }
}

impl FleetConfig {
    /// Settings checks that need no connection.
    pub fn validate(&self) -> Result<(), String> {
        if self.store == FleetStoreKind::Postgres {
            if self.postgres.url.trim().is_empty() {
                return Err("fleet.postgres.url must be set when fleet.store is postgres".into());
            }
            if self.postgres.pool_size == 0 {
                return Err("fleet.postgres.pool_size must be positive".into());
            }
            let schema = &self.postgres.schema;
            if schema.is_empty()
                || schema.len() > 63
                || schema.starts_with(|c: char| c.is_ascii_digit())
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                // The webhook store, which shares the schema, takes only these names.
                return Err(format!(
                    "fleet.postgres.schema {schema:?} must be 1 to 63 ASCII letters, digits or _, \
                     not starting with a digit"
                ));
            }
        }
        Ok(())
    }
}

/// Opens the configured fleet store: `data_dir/fleet.db`, or the PostgreSQL schema (created and
/// migrated when needed). Blocks: call it outside an async task.
pub fn open(config: &FleetConfig, data_dir: &Path) -> FleetResult<Arc<dyn FleetStore>> {
    Ok(match config.store {
        FleetStoreKind::Embedded => {
            let path = data_dir.join("fleet.db");
            Arc::new(SqliteFleetStore::open(&path).map_err(|e| {
                FleetError(format!(
                    "cannot open the fleet store {}: {e}",
                    path.display()
                ))
            })?)
        }
        FleetStoreKind::Postgres => Arc::new(PgFleetStore::open(&config.postgres.connection())?),
    })
}
