//! Which history backend to run, and opening it (`[history]` in the config file).

use super::embedded::{EmbeddedConfig, EmbeddedHistory};
use super::mongodb::{MongoConfig, MongoHistory};
use super::postgres::{PostgresConfig, PostgresHistory};
use super::{HistoryError, HistoryStore};
use crate::fleet::FleetStore;
use kickstand_domain::BucketSpan;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The history backends.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HistoryKind {
    /// Files in the data directory: one process, nothing to install (the default).
    #[default]
    Embedded,
    /// A shared PostgreSQL database, for several worker processes.
    Postgres,
    /// A shared MongoDB database (docs/mongodb.md; its I/O is not exercised by this
    /// repository's CI).
    Mongodb,
}

/// `[history]`: the backend and the settings of each.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    pub kind: HistoryKind,
    pub embedded: EmbeddedConfig,
    pub postgres: PostgresConfig,
    pub mongodb: MongoConfig,
}

/// Opens the embedded history in `data_dir/history` for a tool that runs while no server does
/// (export, `kickstand history`), together with the embedded fleet store beside it when there is
/// one, so a write-ahead log left by a crash is recovered as the server would recover it
/// ([`EmbeddedHistory::open_with_events`]).
pub fn open_embedded_offline(
    data_dir: &Path,
    span: BucketSpan,
    config: EmbeddedConfig,
) -> Result<EmbeddedHistory, HistoryError> {
    let dir = data_dir.join("history");
    let fleet_db = data_dir.join("fleet.db");
    if !fleet_db.exists() {
        return EmbeddedHistory::open(&dir, span, config);
    }
    let fleet = crate::fleet::sqlite::SqliteFleetStore::open(&fleet_db).map_err(|e| {
        HistoryError::Config(format!(
            "cannot open the fleet store {} to recover history: {e}",
            fleet_db.display()
        ))
    })?;
    EmbeddedHistory::open_with_events(&dir, span, config, &|r| fleet.event_record_durable(r))
}

/// Opens the configured backend. The embedded store lives in `data_dir/history`;
/// `retain_days` sets MongoDB's TTL indexes (the others drop buckets in upkeep). `fleet`, the
/// fleet store the workers' events go to, tells the embedded store which write-ahead log
/// records to keep ([`EmbeddedHistory::open_with_events`]).
pub fn open(
    config: &HistoryConfig,
    data_dir: &Path,
    span: BucketSpan,
    retain_days: u32,
    fleet: Option<&dyn FleetStore>,
) -> Result<Arc<dyn HistoryStore>, HistoryError> {
    Ok(match config.kind {
        HistoryKind::Embedded => {
            let (dir, cfg) = (data_dir.join("history"), config.embedded.clone());
            Arc::new(match fleet {
                Some(f) => EmbeddedHistory::open_with_events(&dir, span, cfg, &|r| {
                    f.event_record_durable(r)
                })?,
                None => EmbeddedHistory::open(&dir, span, cfg)?,
            })
        }
        HistoryKind::Postgres => Arc::new(PostgresHistory::open(&config.postgres, span)?),
        HistoryKind::Mongodb => Arc::new(MongoHistory::open(&config.mongodb, span, retain_days)?),
    })
}
