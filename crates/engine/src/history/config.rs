//! Which history backend to run, and opening it (`[history]` in the config file).

use super::embedded::{EmbeddedConfig, EmbeddedHistory};
use super::mongodb::{MongoConfig, MongoHistory};
use super::postgres::{PostgresConfig, PostgresHistory};
use super::{HistoryError, HistoryStore};
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

/// Opens the configured backend. The embedded store lives in `data_dir/history`;
/// `retain_days` sets MongoDB's TTL indexes (the others drop buckets in upkeep).
pub fn open(
    config: &HistoryConfig,
    data_dir: &Path,
    span: BucketSpan,
    retain_days: u32,
) -> Result<Arc<dyn HistoryStore>, HistoryError> {
    Ok(match config.kind {
        HistoryKind::Embedded => Arc::new(EmbeddedHistory::open(
            &data_dir.join("history"),
            span,
            config.embedded.clone(),
        )?),
        HistoryKind::Postgres => Arc::new(PostgresHistory::open(&config.postgres, span)?),
        HistoryKind::Mongodb => Arc::new(MongoHistory::open(&config.mongodb, span, retain_days)?),
    })
}
