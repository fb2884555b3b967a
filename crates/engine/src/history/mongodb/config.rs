//! Settings of the MongoDB store (`[history.mongodb]`). The `///` comments are the user docs.

use crate::history::HistoryError;
use serde::{Deserialize, Serialize};

/// The largest accepted [`MongoConfig::chunk_max_points`]: a chunk of that many points with
/// every optional field stays far below MongoDB's 16 MiB document limit (about 400 KiB).
pub const MAX_CHUNK_POINTS: usize = 4096;

/// How fixes are laid out in the database. Fixed when the database is first opened: a database
/// written with one layout is refused under the other.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MongoLayout {
    /// Collection `chunks`: one document per vehicle and bucket once compacted, appended to as
    /// small capped chunks while the bucket is open. Works on MongoDB 4.4 and later.
    #[default]
    Buckets,
    /// Collection `fixes`: a native time-series collection, one measurement per fix. Needs
    /// MongoDB 6.3 or later (7.0 or later for `drop_before`).
    Timeseries,
}

impl MongoLayout {
    /// The name stored in the `meta` document and used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            MongoLayout::Buckets => "buckets",
            MongoLayout::Timeseries => "timeseries",
        }
    }
}

/// Settings of the MongoDB store (`[history.mongodb]`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    /// Connection string, e.g. `mongodb://kickstand:secret@db1,db2,db3/?replicaSet=rs0`. Never
    /// logged (it may hold a password). Reads and duplicate checks always go to the primary,
    /// whatever `readPreference` says, because the duplicate check must see every acked write.
    pub url: String,
    /// Database that holds the collections; created on first use.
    pub database: String,
    /// `buckets` (the default) or `timeseries`; see docs/mongodb.md.
    pub layout: MongoLayout,
    /// Buckets layout: the most points one open chunk document holds. An append rewrites at
    /// most one chunk per vehicle and bucket, so this caps the bytes MongoDB rewrites per
    /// append (about 15 KiB at 160 points when every optional field is present; see
    /// docs/mongodb.md for the measurement). 1 to 4096.
    pub chunk_max_points: usize,
    /// Buckets layout: seconds after a bucket ends before `maintain` merges its chunks into one
    /// packed document. Late fixes that arrive after that land in a new chunk, merged on the
    /// next pass.
    pub compact_grace_secs: u64,
    /// Write concern `j`: an append returns only once its writes are in the on-disk journal
    /// (of a majority of members when `write_majority` is on). Turning it off trades the
    /// guarantee that an acked fix survives a power loss for latency.
    pub journal: bool,
    /// Write concern `w: "majority"` (on, the default) or `w: 1` (off). With `w: 1`, an acked fix
    /// can be rolled back when the primary fails before a secondary has copied it.
    pub write_majority: bool,
    /// Write operations one append runs at once (one per vehicle and bucket in the buckets
    /// layout, one per vehicle for `vehicle_last`). Bounded so one large group commit does not
    /// take every pooled connection.
    pub concurrency: usize,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            url: "mongodb://127.0.0.1:27017".into(),
            database: "kickstand".into(),
            layout: MongoLayout::Buckets,
            chunk_max_points: 160,
            compact_grace_secs: 600,
            journal: true,
            write_majority: true,
            concurrency: 16,
        }
    }
}

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("url", &"<redacted>")
            .field("database", &self.database)
            .field("layout", &self.layout)
            .field("chunk_max_points", &self.chunk_max_points)
            .field("compact_grace_secs", &self.compact_grace_secs)
            .field("journal", &self.journal)
            .field("write_majority", &self.write_majority)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl MongoConfig {
    /// Checks what can be checked without a server.
    pub fn validate(&self) -> Result<(), HistoryError> {
        let name = &self.database;
        if name.is_empty() || name.len() > 63 {
            return Err(HistoryError::Config(
                "history.mongodb.database must be 1 to 63 bytes long".into(),
            ));
        }
        if let Some(c) = name.chars().find(|c| {
            matches!(
                c,
                '/' | '\\' | '.' | ' ' | '"' | '$' | '*' | '<' | '>' | ':' | '|' | '?' | '\0'
            )
        }) {
            return Err(HistoryError::Config(format!(
                "history.mongodb.database must not contain {c:?}"
            )));
        }
        if !(1..=MAX_CHUNK_POINTS).contains(&self.chunk_max_points) {
            return Err(HistoryError::Config(format!(
                "history.mongodb.chunk_max_points must be between 1 and {MAX_CHUNK_POINTS}"
            )));
        }
        if self.concurrency == 0 {
            return Err(HistoryError::Config(
                "history.mongodb.concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_url_is_never_printed() {
        let config = MongoConfig {
            url: "mongodb://user:hunter2@db/".into(),
            ..MongoConfig::default()
        };
        config.validate().unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.layout, MongoLayout::Buckets);
        assert!(config.journal && config.write_majority);
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let check = |edit: fn(&mut MongoConfig), field: &str| {
            let mut config = MongoConfig::default();
            edit(&mut config);
            match config.validate() {
                Err(HistoryError::Config(msg)) => assert!(msg.contains(field), "{msg}"),
                other => panic!("{field}: {other:?}"),
            }
        };
        check(|c| c.database = String::new(), "database");
        check(|c| c.database = "a.b".into(), "database");
        check(|c| c.database = "a b".into(), "database");
        check(|c| c.database = "x".repeat(64), "database");
        check(|c| c.chunk_max_points = 0, "chunk_max_points");
        check(
            |c| c.chunk_max_points = MAX_CHUNK_POINTS + 1,
            "chunk_max_points",
        );
        check(|c| c.concurrency = 0, "concurrency");
    }

    #[test]
    fn layouts_parse_in_lowercase_and_unknown_fields_are_refused() {
        use serde::de::value::{Error, MapDeserializer};
        let parse = |key: &'static str, value: &'static str| {
            MongoConfig::deserialize(MapDeserializer::<_, Error>::new([(key, value)].into_iter()))
        };
        let layout = |text| parse("layout", text).map(|c| c.layout);
        assert_eq!(layout("timeseries").unwrap(), MongoLayout::Timeseries);
        assert_eq!(layout("buckets").unwrap(), MongoLayout::Buckets);
        assert!(layout("Buckets").is_err());
        assert!(parse("layuot", "buckets").is_err());
        assert_eq!(parse("database", "fleet").unwrap().database, "fleet");
    }
}
