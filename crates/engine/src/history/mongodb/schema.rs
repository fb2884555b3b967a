//! Collections, their options and indexes, the server versions each layout needs, and the plans
//! that bring an existing database to what is wanted. Pure: `store` runs the plans.

use super::config::MongoLayout;
use super::document::field;
use crate::history::HistoryError;
use ::mongodb::IndexModel;
use ::mongodb::bson::{Bson, Document, doc};
use ::mongodb::options::{CreateCollectionOptions, IndexOptions, TimeseriesOptions};
use kickstand_domain::BucketSpan;
use std::time::Duration;

/// The oldest server the driver speaks to, and all the buckets layout needs.
pub(super) const MIN_SERVER: (u32, u32) = (4, 4);
/// `bucketMaxSpanSeconds` and `bucketRoundingSeconds`.
pub(super) const MIN_TIMESERIES: (u32, u32) = (6, 3);
/// Deletes from a time-series collection by time (before 7.0 only by metaField).
pub(super) const MIN_TIMESERIES_DELETE: (u32, u32) = (7, 0);

/// The name of the TTL index of `chunks`, dropped again when retention is turned off.
pub(super) const CHUNK_TTL_INDEX: &str = "expire_start";

/// An index as Kickstand wants it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct IndexSpec {
    pub name: &'static str,
    pub keys: Document,
    pub expire_after_secs: Option<i64>,
    pub partial: Option<Document>,
}

impl IndexSpec {
    fn new(name: &'static str, keys: Document) -> IndexSpec {
        IndexSpec {
            name,
            keys,
            expire_after_secs: None,
            partial: None,
        }
    }

    /// The driver's model for `createIndexes`.
    pub fn model(&self) -> IndexModel {
        let options = IndexOptions::builder()
            .name(self.name.to_owned())
            .expire_after(
                self.expire_after_secs
                    .map(|s| Duration::from_secs(s.max(0) as u64)),
            )
            .partial_filter_expression(self.partial.clone())
            .build();
        IndexModel::builder()
            .keys(self.keys.clone())
            .options(options)
            .build()
    }
}

/// Seconds after which a `chunks` document expires, from its `start`: the bucket ends one
/// span after it starts and is kept `retain_days` after it ends. `None` keeps forever.
pub(super) fn chunk_expiry(span: BucketSpan, retain_days: u32) -> Option<i64> {
    (retain_days > 0).then(|| i64::from(retain_days) * 86_400 + span.ms() / 1000)
}

/// The time-series collection's `expireAfterSeconds`. MongoDB removes one of its buckets once
/// its newest measurement is that old, and a bucket of ours may be several of MongoDB's (at
/// most 1,000 measurements each); one span more than the retention means none of them goes
/// before our bucket has ended `retain_days` ago, and all are gone one span later. `None` keeps
/// forever.
pub(super) fn timeseries_expiry(span: BucketSpan, retain_days: u32) -> Option<i64> {
    chunk_expiry(span, retain_days)
}

/// Indexes of `chunks`:
/// - `vehicle_start` serves tracks, the newest bucket of a vehicle and one bucket's chunks;
/// - `start_vehicle` serves fleet-wide scans (bucket order, then vehicle) and retention;
/// - `raw_start` (partial: raw chunks only, so it stays small) finds buckets to compact;
/// - `expire_start`, when retention is on, is the TTL index.
pub(super) fn chunk_indexes(span: BucketSpan, retain_days: u32) -> Vec<IndexSpec> {
    let mut out = vec![
        IndexSpec::new(
            "vehicle_start",
            doc! { field::VEHICLE_ID: 1, field::START: 1 },
        ),
        IndexSpec::new(
            "start_vehicle",
            doc! { field::START: 1, field::VEHICLE_ID: 1 },
        ),
        IndexSpec {
            partial: Some(doc! { field::COMPACTED: false }),
            ..IndexSpec::new("raw_start", doc! { field::START: 1, field::COMPACTED: 1 })
        },
    ];
    if let Some(secs) = chunk_expiry(span, retain_days) {
        out.push(IndexSpec {
            expire_after_secs: Some(secs),
            ..IndexSpec::new(CHUNK_TTL_INDEX, doc! { field::START: 1 })
        });
    }
    out
}

/// Indexes of the time-series collection: `vehicle_id_1_ts_1` (the name MongoDB 6.3+ gives the
/// meta-and-time index it creates itself) serves tracks, the duplicate check and the scan's
/// sort; `ts_1` serves fleet-wide time scans and retention. Expiry is a collection option.
pub(super) fn fix_indexes() -> Vec<IndexSpec> {
    vec![
        IndexSpec::new(
            "vehicle_id_1_ts_1",
            doc! { field::VEHICLE_ID: 1, field::TS: 1 },
        ),
        IndexSpec::new("ts_1", doc! { field::TS: 1 }),
    ]
}

/// Indexes of `vehicle_last`: the 2dsphere index of `near`.
pub(super) fn vehicle_last_indexes() -> Vec<IndexSpec> {
    vec![IndexSpec::new(
        "loc_2dsphere",
        doc! { field::LOC: "2dsphere" },
    )]
}

/// The time-series options: timeField `ts`, metaField `vehicle_id` and MongoDB's buckets exactly
/// as long as ours and aligned with them (no `granularity`, which the two settings replace).
pub(super) fn timeseries_options(span: BucketSpan) -> TimeseriesOptions {
    let secs = Duration::from_secs((span.ms() / 1000) as u64);
    TimeseriesOptions::builder()
        .time_field(field::TS.to_owned())
        .meta_field(Some(field::VEHICLE_ID.to_owned()))
        .bucket_max_span(Some(secs))
        .bucket_rounding(Some(secs))
        .build()
}

/// The options the time-series collection is created with.
pub(super) fn timeseries_collection(span: BucketSpan, retain_days: u32) -> CreateCollectionOptions {
    CreateCollectionOptions::builder()
        .timeseries(Some(timeseries_options(span)))
        .expire_after_seconds(
            timeseries_expiry(span, retain_days).map(|s| Duration::from_secs(s as u64)),
        )
        .build()
}

/// An index as `listIndexes` reports it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ExistingIndex {
    pub name: String,
    pub keys: Document,
    pub expire_after_secs: Option<i64>,
    pub partial: bool,
}

/// A number as the server reports it (any numeric BSON type), when it is a whole number.
pub(super) fn whole_number(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Some(*v as i64),
        _ => None,
    }
}

/// Reads one document of `listIndexes`.
pub(super) fn parse_index(doc: &Document) -> Result<ExistingIndex, HistoryError> {
    let bad = |what: &str| HistoryError::Corrupt(format!("listIndexes: {what}"));
    let name = doc
        .get_str("name")
        .map_err(|_| bad("an index without a name"))?;
    let keys = doc
        .get_document("key")
        .map_err(|_| bad("an index without keys"))?;
    let expire_after_secs = match doc.get("expireAfterSeconds") {
        None => None,
        Some(b) => Some(whole_number(b).ok_or_else(|| bad("expireAfterSeconds is not a number"))?),
    };
    Ok(ExistingIndex {
        name: name.to_owned(),
        keys: keys.clone(),
        expire_after_secs,
        partial: doc.contains_key("partialFilterExpression"),
    })
}

/// Whether two key patterns index the same fields in the same order the same way (`1` and
/// `1.0` alike, as a shell would have written them).
pub(super) fn same_keys(a: &Document, b: &Document) -> bool {
    fn kind(v: &Bson) -> Option<Result<i64, &str>> {
        match v {
            Bson::String(s) => Some(Err(s.as_str())),
            Bson::Int32(n) if *n != 0 => Some(Ok(i64::from(n.signum()))),
            Bson::Int64(n) if *n != 0 => Some(Ok(n.signum())),
            Bson::Double(n) if *n != 0.0 && n.is_finite() => {
                Some(Ok(if *n > 0.0 { 1 } else { -1 }))
            }
            _ => None,
        }
    }
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && kind(va).is_some() && kind(va) == kind(vb))
}

/// One step that brings a collection's indexes to what is wanted.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum IndexAction {
    Create(IndexSpec),
    /// `collMod` of a TTL index whose retention changed.
    SetExpiry {
        name: String,
        secs: i64,
    },
    /// Drop an index Kickstand manages that is no longer wanted (the TTL index when retention
    /// is turned off).
    Drop(String),
}

/// Plans the index changes of `collection`: create what is missing, change the expiry of a TTL
/// index when retention changed, drop a managed index no longer wanted. An index that already
/// exists under another name with the same keys counts as present. An index with one of our
/// names and other keys is refused rather than dropped: someone else made it.
pub(super) fn plan_indexes(
    collection: &str,
    existing: &[ExistingIndex],
    wanted: &[IndexSpec],
    managed: &[&str],
) -> Result<Vec<IndexAction>, HistoryError> {
    let mut plan = Vec::new();
    for w in wanted {
        if let Some(e) = existing.iter().find(|e| e.name == w.name) {
            if !same_keys(&e.keys, &w.keys) || e.partial != w.partial.is_some() {
                return Err(HistoryError::Config(format!(
                    "index {collection}.{} exists with keys {} but Kickstand needs {}; drop it",
                    w.name, e.keys, w.keys
                )));
            }
            match (e.expire_after_secs, w.expire_after_secs) {
                (Some(have), Some(want)) if have != want => plan.push(IndexAction::SetExpiry {
                    name: w.name.to_owned(),
                    secs: want,
                }),
                (have, want) if have.is_some() != want.is_some() => {
                    return Err(HistoryError::Config(format!(
                        "index {collection}.{} exists {} a TTL; drop it",
                        w.name,
                        if have.is_some() { "with" } else { "without" }
                    )));
                }
                _ => {}
            }
        } else if !existing.iter().any(|e| {
            same_keys(&e.keys, &w.keys)
                && e.partial == w.partial.is_some()
                && e.expire_after_secs == w.expire_after_secs
        }) {
            plan.push(IndexAction::Create(w.clone()));
        }
    }
    for name in managed {
        if !wanted.iter().any(|w| w.name == *name) && existing.iter().any(|e| e.name == *name) {
            plan.push(IndexAction::Drop((*name).to_owned()));
        }
    }
    Ok(plan)
}

/// `collMod` that changes the expiry of a TTL index.
pub(super) fn set_index_expiry(collection: &str, name: &str, secs: i64) -> Document {
    doc! { "collMod": collection, "index": { "name": name, "expireAfterSeconds": secs } }
}

/// `collMod` that changes (or, with `None`, turns off) a time-series collection's expiry.
pub(super) fn set_timeseries_expiry(collection: &str, secs: Option<i64>) -> Document {
    let value = match secs {
        Some(s) => Bson::Int64(s),
        None => Bson::String("off".into()),
    };
    doc! { "collMod": collection, "expireAfterSeconds": value }
}

/// Checks the `listCollections` entry of an existing time-series collection against what this
/// store writes, and returns its current `expireAfterSeconds`.
pub(super) fn check_timeseries_collection(
    spec: &Document,
    span: BucketSpan,
) -> Result<Option<i64>, HistoryError> {
    let name = spec.get_str("name").unwrap_or("?");
    let refuse = |why: String| {
        HistoryError::Config(format!(
            "collection {name} exists but {why}; it was not made by Kickstand's timeseries layout"
        ))
    };
    if spec.get_str("type").ok() != Some("timeseries") {
        return Err(refuse("is not a time-series collection".into()));
    }
    let options = spec
        .get_document("options")
        .map_err(|_| refuse("has no options".into()))?;
    let ts = options
        .get_document("timeseries")
        .map_err(|_| refuse("has no time-series options".into()))?;
    if ts.get_str("timeField").ok() != Some(field::TS) {
        return Err(refuse(format!("its timeField is not {:?}", field::TS)));
    }
    if ts.get_str("metaField").ok() != Some(field::VEHICLE_ID) {
        return Err(refuse(format!(
            "its metaField is not {:?}",
            field::VEHICLE_ID
        )));
    }
    let max_span = ts.get("bucketMaxSpanSeconds").and_then(whole_number);
    if max_span != Some(span.ms() / 1000) {
        return Err(refuse(format!(
            "its bucketMaxSpanSeconds is {max_span:?}, not {}",
            span.ms() / 1000
        )));
    }
    Ok(options.get("expireAfterSeconds").and_then(whole_number))
}

/// The server's `(major, minor)` version from `buildInfo`.
pub(super) fn server_version(build_info: &Document) -> Option<(u32, u32)> {
    if let Ok(parts) = build_info.get_array("versionArray") {
        let num = |i: usize| {
            parts
                .get(i)
                .and_then(whole_number)
                .and_then(|n| u32::try_from(n).ok())
        };
        if let (Some(major), Some(minor)) = (num(0), num(1)) {
            return Some((major, minor));
        }
    }
    let text = build_info.get_str("version").ok()?;
    let mut it = text.split(['.', '-']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// From one `$collStats` result with `storageStats`: the bytes on disk (`storageSize` plus
/// `totalIndexSize`) and, for a time-series collection, MongoDB's bucket count.
pub(super) fn storage_stats(doc: &Document) -> (u64, Option<u64>) {
    let Ok(stats) = doc.get_document("storageStats") else {
        return (0, None);
    };
    let size = |key: &str| {
        stats
            .get(key)
            .and_then(whole_number)
            .map_or(0, |n| n.max(0) as u64)
    };
    let buckets = stats
        .get_document("timeseries")
        .ok()
        .and_then(|t| t.get("bucketCount"))
        .and_then(whole_number)
        .map(|n| n.max(0) as u64);
    (size("storageSize") + size("totalIndexSize"), buckets)
}

/// Refuses a server too old for `layout`.
pub(super) fn check_server(version: (u32, u32), layout: MongoLayout) -> Result<(), HistoryError> {
    let need = match layout {
        MongoLayout::Buckets => MIN_SERVER,
        MongoLayout::Timeseries => MIN_TIMESERIES,
    };
    if version < need {
        return Err(HistoryError::Config(format!(
            "the MongoDB history's {} layout needs MongoDB {}.{} or later; the server is {}.{}",
            layout.as_str(),
            need.0,
            need.1,
            version.0,
            version.1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(name: &str, keys: Document, ttl: Option<i64>, partial: bool) -> ExistingIndex {
        ExistingIndex {
            name: name.into(),
            keys,
            expire_after_secs: ttl,
            partial,
        }
    }

    #[test]
    fn chunk_indexes_have_their_keys_names_and_ttl() {
        let span = BucketSpan::HOUR;
        let models: Vec<Document> = chunk_indexes(span, 30)
            .iter()
            .map(|s| ::mongodb::bson::to_document(&s.model()).unwrap())
            .collect();
        assert_eq!(
            models,
            vec![
                doc! { "key": { "vehicle_id": 1, "start": 1 }, "name": "vehicle_start" },
                doc! { "key": { "start": 1, "vehicle_id": 1 }, "name": "start_vehicle" },
                doc! {
                    "key": { "start": 1, "compacted": 1 },
                    "name": "raw_start",
                    "partialFilterExpression": { "compacted": false },
                },
                doc! {
                    "key": { "start": 1 },
                    "expireAfterSeconds": 30 * 86_400 + 3600,
                    "name": "expire_start",
                },
            ]
        );
        // Retention off: no TTL index.
        let names: Vec<&str> = chunk_indexes(span, 0).iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["vehicle_start", "start_vehicle", "raw_start"]);
        assert_eq!(chunk_expiry(span, 0), None);
        assert_eq!(
            chunk_expiry(BucketSpan::from_secs(86_400).unwrap(), 1),
            Some(172_800)
        );
    }

    #[test]
    fn timeseries_and_vehicle_last_indexes() {
        let models: Vec<Document> = fix_indexes()
            .iter()
            .chain(&vehicle_last_indexes())
            .map(|s| ::mongodb::bson::to_document(&s.model()).unwrap())
            .collect();
        assert_eq!(
            models,
            vec![
                doc! { "key": { "vehicle_id": 1, "ts": 1 }, "name": "vehicle_id_1_ts_1" },
                doc! { "key": { "ts": 1 }, "name": "ts_1" },
                doc! { "key": { "loc": "2dsphere" }, "name": "loc_2dsphere" },
            ]
        );
    }

    #[test]
    fn the_timeseries_collection_has_ts_vehicle_meta_span_buckets_and_expiry() {
        let span = BucketSpan::HOUR;
        let options = ::mongodb::bson::to_document(&timeseries_collection(span, 7)).unwrap();
        assert_eq!(
            options,
            doc! {
                "timeseries": {
                    "timeField": "ts",
                    "metaField": "vehicle_id",
                    "bucketMaxSpanSeconds": 3600,
                    "bucketRoundingSeconds": 3600,
                },
                "expireAfterSeconds": 7 * 86_400 + 3600,
            }
        );
        let forever = ::mongodb::bson::to_document(&timeseries_collection(span, 0)).unwrap();
        assert!(!forever.contains_key("expireAfterSeconds"));
        assert!(
            !forever
                .get_document("timeseries")
                .unwrap()
                .contains_key("granularity")
        );
    }

    #[test]
    fn an_empty_collection_gets_every_index() {
        let wanted = chunk_indexes(BucketSpan::HOUR, 30);
        let plan = plan_indexes("chunks", &[], &wanted, &[CHUNK_TTL_INDEX]).unwrap();
        assert_eq!(
            plan,
            wanted
                .into_iter()
                .map(IndexAction::Create)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn existing_indexes_are_kept_changed_or_dropped() {
        let wanted = chunk_indexes(BucketSpan::HOUR, 30);
        let mut have = vec![
            existing("_id_", doc! { "_id": 1 }, None, false),
            existing(
                "vehicle_start",
                doc! { "vehicle_id": 1, "start": 1 },
                None,
                false,
            ),
            // Made by hand in the shell, with another name and doubles: counts as present.
            existing(
                "by_time",
                doc! { "start": 1.0, "vehicle_id": 1.0 },
                None,
                false,
            ),
            existing("raw_start", doc! { "start": 1, "compacted": 1 }, None, true),
            existing("expire_start", doc! { "start": 1 }, Some(86_400), false),
        ];
        let plan = plan_indexes("chunks", &have, &wanted, &[CHUNK_TTL_INDEX]).unwrap();
        assert_eq!(
            plan,
            vec![IndexAction::SetExpiry {
                name: "expire_start".into(),
                secs: 30 * 86_400 + 3600
            }]
        );
        // Retention turned off: the TTL index goes.
        let wanted_off = chunk_indexes(BucketSpan::HOUR, 0);
        let plan = plan_indexes("chunks", &have, &wanted_off, &[CHUNK_TTL_INDEX]).unwrap();
        assert_eq!(plan, vec![IndexAction::Drop("expire_start".into())]);
        // Up to date: nothing to do.
        have[4].expire_after_secs = Some(30 * 86_400 + 3600);
        assert!(
            plan_indexes("chunks", &have, &wanted, &[CHUNK_TTL_INDEX])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_index_mongodb_made_itself_is_not_made_again() {
        let have = vec![existing(
            "vehicle_id_1_ts_1",
            doc! { "vehicle_id": 1, "ts": 1 },
            None,
            false,
        )];
        let plan = plan_indexes("fixes", &have, &fix_indexes(), &[]).unwrap();
        assert_eq!(plan, vec![IndexAction::Create(fix_indexes()[1].clone())]);
    }

    #[test]
    fn a_foreign_index_under_our_name_is_refused() {
        let wanted = chunk_indexes(BucketSpan::HOUR, 30);
        for bad in [
            existing("vehicle_start", doc! { "vehicle_id": 1 }, None, false),
            existing(
                "vehicle_start",
                doc! { "vehicle_id": 1, "start": -1 },
                None,
                false,
            ),
            existing(
                "raw_start",
                doc! { "start": 1, "compacted": 1 },
                None,
                false,
            ),
            existing("expire_start", doc! { "start": 1 }, None, false),
            existing(
                "vehicle_start",
                doc! { "vehicle_id": 1, "start": 1 },
                Some(5),
                false,
            ),
        ] {
            match plan_indexes(
                "chunks",
                std::slice::from_ref(&bad),
                &wanted,
                &[CHUNK_TTL_INDEX],
            ) {
                Err(HistoryError::Config(msg)) => assert!(msg.contains(&bad.name), "{msg}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn key_patterns_compare_by_field_order_and_direction() {
        assert!(same_keys(
            &doc! { "a": 1, "b": -1 },
            &doc! { "a": 1.0, "b": -1_i64 }
        ));
        assert!(!same_keys(
            &doc! { "a": 1, "b": 1 },
            &doc! { "b": 1, "a": 1 }
        ));
        assert!(!same_keys(&doc! { "a": 1 }, &doc! { "a": -1 }));
        assert!(!same_keys(&doc! { "a": 1 }, &doc! { "a": 1, "b": 1 }));
        assert!(same_keys(
            &doc! { "loc": "2dsphere" },
            &doc! { "loc": "2dsphere" }
        ));
        assert!(!same_keys(
            &doc! { "loc": "2dsphere" },
            &doc! { "loc": "2d" }
        ));
        assert!(!same_keys(&doc! { "a": true }, &doc! { "a": true }));
    }

    #[test]
    fn list_indexes_entries_parse_and_garbage_is_corrupt() {
        let e = parse_index(&doc! {
            "v": 2, "key": { "start": 1 }, "name": "expire_start", "expireAfterSeconds": 90.0,
        })
        .unwrap();
        assert_eq!(
            e,
            existing("expire_start", doc! { "start": 1 }, Some(90), false)
        );
        let e = parse_index(&doc! {
            "v": 2, "key": { "start": 1 }, "name": "p", "partialFilterExpression": { "compacted": false },
        })
        .unwrap();
        assert!(e.partial);
        for bad in [
            doc! { "key": { "a": 1 } },
            doc! { "name": "x" },
            doc! { "name": "x", "key": 1 },
            doc! { "name": "x", "key": { "a": 1 }, "expireAfterSeconds": "soon" },
        ] {
            assert!(matches!(parse_index(&bad), Err(HistoryError::Corrupt(_))));
        }
    }

    #[test]
    fn expiry_changes_are_coll_mods() {
        assert_eq!(
            set_index_expiry("chunks", "expire_start", 99),
            doc! { "collMod": "chunks", "index": { "name": "expire_start", "expireAfterSeconds": 99_i64 } }
        );
        assert_eq!(
            set_timeseries_expiry("fixes", Some(86_400)),
            doc! { "collMod": "fixes", "expireAfterSeconds": 86_400_i64 }
        );
        assert_eq!(
            set_timeseries_expiry("fixes", None),
            doc! { "collMod": "fixes", "expireAfterSeconds": "off" }
        );
    }

    #[test]
    fn an_existing_timeseries_collection_is_checked() {
        let span = BucketSpan::HOUR;
        let good = doc! {
            "name": "fixes",
            "type": "timeseries",
            "options": {
                "timeseries": {
                    "timeField": "ts", "metaField": "vehicle_id",
                    "bucketMaxSpanSeconds": 3600, "bucketRoundingSeconds": 3600,
                },
                "expireAfterSeconds": 86_400_i64,
            },
        };
        assert_eq!(
            check_timeseries_collection(&good, span).unwrap(),
            Some(86_400)
        );
        let mut forever = good.clone();
        forever
            .get_document_mut("options")
            .unwrap()
            .remove("expireAfterSeconds");
        assert_eq!(check_timeseries_collection(&forever, span).unwrap(), None);
        let edit = |path: &[&str], value: Bson| {
            let mut d = good.clone();
            let mut at = &mut d;
            for p in &path[..path.len() - 1] {
                at = at.get_document_mut(*p).unwrap();
            }
            at.insert(path[path.len() - 1], value);
            d
        };
        for bad in [
            edit(&["type"], "collection".into()),
            edit(&["options", "timeseries", "timeField"], "t".into()),
            edit(&["options", "timeseries", "metaField"], "meta".into()),
            edit(
                &["options", "timeseries", "bucketMaxSpanSeconds"],
                86_400.into(),
            ),
            edit(&["options"], Bson::Null),
        ] {
            assert!(matches!(
                check_timeseries_collection(&bad, span),
                Err(HistoryError::Config(_))
            ));
        }
    }

    #[test]
    fn coll_stats_sizes_are_summed_whatever_their_number_type() {
        let doc = doc! { "storageStats": {
            "storageSize": 8192_i64, "totalIndexSize": 4096.0,
            "timeseries": { "bucketCount": 12 },
        } };
        assert_eq!(storage_stats(&doc), (12_288, Some(12)));
        let plain = doc! { "storageStats": { "storageSize": 100, "totalIndexSize": 20 } };
        assert_eq!(storage_stats(&plain), (120, None));
        assert_eq!(storage_stats(&doc! { "ns": "x" }), (0, None));
    }

    #[test]
    fn server_versions_are_read_and_checked_per_layout() {
        let info = doc! { "version": "6.2.1", "versionArray": [6, 2, 1, 0] };
        assert_eq!(server_version(&info), Some((6, 2)));
        assert_eq!(
            server_version(&doc! { "version": "7.0.12-rc1" }),
            Some((7, 0))
        );
        assert_eq!(server_version(&doc! { "version": "x" }), None);
        assert_eq!(server_version(&doc! {}), None);
        check_server((6, 2), MongoLayout::Buckets).unwrap();
        check_server((6, 3), MongoLayout::Timeseries).unwrap();
        check_server((8, 0), MongoLayout::Timeseries).unwrap();
        match check_server((6, 2), MongoLayout::Timeseries) {
            Err(HistoryError::Config(msg)) => assert!(msg.contains("6.3"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(check_server((4, 2), MongoLayout::Buckets).is_err());
        assert!(MIN_TIMESERIES_DELETE > MIN_TIMESERIES);
    }
}
