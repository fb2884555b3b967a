//! [`MongoHistory`]: the connection, the set-up of collections and indexes, the reads, retention
//! and compaction. Every query and document comes from `document`, `query` and `schema`; this
//! file only sends them.
//!
//! The port is synchronous and its callers are OS threads (workers, `spawn_blocking`), so the
//! store owns a small tokio runtime for the driver and `block_on`s it. Callbacks of `scan` and
//! `for_each_latest` run outside the runtime: the cursor is pulled one document at a time.

use super::config::{MongoConfig, MongoLayout};
use super::document::{self as d, CHUNKS, FIXES, META, META_ID, VEHICLE_LAST, field};
use super::query::{self as q, Find};
use super::schema::{self, IndexAction, IndexSpec};
use super::writer::MongoWriter;
use crate::history::{BucketFixes, HistoryError, HistoryStats, HistoryStore, HistoryWriter};
use ::mongodb::bson::{Bson, Document, doc};
use ::mongodb::error::{Error, ErrorKind, WriteFailure};
use ::mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, ReadPreference, SelectionCriteria,
    WriteConcern,
};
use ::mongodb::{Client, Collection, Cursor, Database};
use futures_util::{StreamExt, TryStreamExt, stream};
use kickstand_domain::{BucketSpan, Point, VehicleId};
use std::collections::BTreeSet;
use std::sync::Arc;

/// `NamespaceNotFound`: the collection does not exist.
const NAMESPACE_NOT_FOUND: i32 = 26;
/// `NamespaceExists`: the collection was created meanwhile (by another process).
const NAMESPACE_EXISTS: i32 = 48;
/// `DuplicateKey`.
const DUPLICATE_KEY: i32 = 11000;

pub(super) fn mongo_err(e: Error) -> HistoryError {
    HistoryError::Engine(format!("mongodb: {e}"))
}

/// The server error code of a failed command or single write, if it has one.
fn error_code(e: &Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// Whether a write failed only because a document with its unique key exists.
pub(super) fn is_duplicate_key(e: &Error) -> bool {
    match &*e.kind {
        ErrorKind::InsertMany(many) => {
            many.write_concern_error.is_none()
                && many
                    .write_errors
                    .as_ref()
                    .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w.code == DUPLICATE_KEY))
        }
        _ => error_code(e) == Some(DUPLICATE_KEY),
    }
}

/// What the store and its writers share.
pub(super) struct Shared {
    /// Runs the driver. `Some` until drop, which shuts it down without blocking (the store may
    /// be dropped on any thread, an async one included).
    rt: Option<tokio::runtime::Runtime>,
    /// For commands (`buildInfo`, `collMod`, `listIndexes`) and `drop_database`.
    db: Database,
    /// Buckets layout: chunk and compacted documents. Like every handle here, it carries the
    /// configured write concern and reads from the primary.
    pub chunks: Collection<Document>,
    /// Timeseries layout: measurements.
    pub fixes: Collection<Document>,
    /// Each vehicle's newest fix: `for_each_latest` and `near`.
    pub last: Collection<Document>,
    /// The layout document and the barrier counter.
    pub meta: Collection<Document>,
    /// Bucket length; checked against the layout document at open.
    pub span: BucketSpan,
    pub config: MongoConfig,
    /// The server's `(major, minor)` version, read at open.
    pub version: (u32, u32),
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Shared {
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives until the store is dropped")
    }

    /// Runs `f` on the store's runtime. Callers are plain threads, never async tasks.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt().block_on(f)
    }

    fn chunks_or_fixes(&self) -> &Collection<Document> {
        match self.config.layout {
            MongoLayout::Buckets => &self.chunks,
            MongoLayout::Timeseries => &self.fixes,
        }
    }

    /// Every stored point of one bucket of one vehicle, all chunks together (unsorted).
    pub async fn bucket_points(
        &self,
        vehicle: &VehicleId,
        start: i64,
    ) -> Result<Vec<Point>, HistoryError> {
        let docs =
            collect(find(&self.chunks, plain(q::bucket_chunks(vehicle, start)), false).await?)
                .await?;
        let mut out = Vec::new();
        for doc in &docs {
            out.extend(d::read_chunk(doc, self.span)?.points);
        }
        Ok(out)
    }

    /// The newest stored fix of `vehicle`, read from the fix documents themselves (never from
    /// `vehicle_last`, which may lag behind them after a crash).
    pub async fn newest_stored(&self, vehicle: &VehicleId) -> Result<Option<Point>, HistoryError> {
        match self.config.layout {
            MongoLayout::Buckets => {
                let Some(doc) = find_one(&self.chunks, q::newest_bucket(vehicle)).await? else {
                    return Ok(None);
                };
                let start = d::req_date(&doc, field::START, "chunk")?;
                let points = self.bucket_points(vehicle, start).await?;
                Ok(points.into_iter().max_by_key(|p| p.ts))
            }
            MongoLayout::Timeseries => match find_one(&self.fixes, q::newest_fix(vehicle)).await? {
                Some(doc) => Ok(Some(d::read_fix(&doc)?.1)),
                None => Ok(None),
            },
        }
    }

    /// Which of `ts` (all in bucket `start`) are stored for `vehicle`.
    pub async fn stored_among(
        &self,
        vehicle: &VehicleId,
        start: i64,
        ts: &[i64],
    ) -> Result<Vec<i64>, HistoryError> {
        match self.config.layout {
            MongoLayout::Buckets => {
                let wanted: crate::FastSet<i64> = ts.iter().copied().collect();
                let points = self.bucket_points(vehicle, start).await?;
                Ok(points
                    .into_iter()
                    .map(|p| p.ts)
                    .filter(|t| wanted.contains(t))
                    .collect())
            }
            MongoLayout::Timeseries => {
                let mut unique = ts.to_vec();
                unique.sort_unstable();
                unique.dedup();
                let docs =
                    collect(find(&self.fixes, q::stored_fixes_at(vehicle, &unique), false).await?)
                        .await?;
                docs.iter()
                    .map(|doc| d::req_date(doc, field::TS, "fix"))
                    .collect()
            }
        }
    }

    /// Moves `vehicle_last` to `p` when it is newer than the stored one.
    pub async fn upsert_last(&self, vehicle: &VehicleId, p: &Point) -> Result<(), HistoryError> {
        let up = d::vehicle_last_upsert(vehicle, p);
        match self
            .last
            .update_one(up.filter, up.update)
            .upsert(true)
            .await
        {
            Ok(_) => Ok(()),
            // The stored one is as new or newer.
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(mongo_err(e)),
        }
    }

    /// A majority-acknowledged write (see `query::barrier`).
    pub async fn barrier(&self) -> Result<(), HistoryError> {
        let (filter, update) = q::barrier();
        self.meta
            .update_one(filter, update)
            .upsert(true)
            .await
            .map_err(mongo_err)?;
        Ok(())
    }

    /// Reads the server version, checks or records the layout, and creates what is missing.
    async fn prepare(&self, retain_days: u32) -> Result<(u32, u32), HistoryError> {
        let info = self
            .db
            .run_command(doc! { "buildInfo": 1 })
            .await
            .map_err(mongo_err)?;
        let version = schema::server_version(&info)
            .ok_or_else(|| HistoryError::Engine("mongodb: buildInfo has no version".into()))?;
        let layout = self.config.layout;
        schema::check_server(version, layout)?;
        // The layout document first: a database of another layout or span is refused before
        // anything in it is touched.
        let meta_filter = doc! { "_id": META_ID };
        match self
            .meta
            .find_one(meta_filter.clone())
            .await
            .map_err(mongo_err)?
        {
            Some(doc) => d::check_meta(&doc, self.span, layout)?,
            None => match self
                .meta
                .insert_one(d::meta_document(self.span, layout))
                .await
            {
                Ok(_) => {}
                Err(e) if is_duplicate_key(&e) => {
                    // Another process opened the empty database at the same moment.
                    let doc = self
                        .meta
                        .find_one(meta_filter)
                        .await
                        .map_err(mongo_err)?
                        .ok_or_else(|| HistoryError::Engine("mongodb: meta vanished".into()))?;
                    d::check_meta(&doc, self.span, layout)?;
                }
                Err(e) => return Err(mongo_err(e)),
            },
        }
        match layout {
            MongoLayout::Buckets => {
                self.ensure_collection(CHUNKS).await?;
                self.ensure_indexes(
                    &self.chunks,
                    CHUNKS,
                    &schema::chunk_indexes(self.span, retain_days),
                    &[schema::CHUNK_TTL_INDEX],
                )
                .await?;
            }
            MongoLayout::Timeseries => {
                self.ensure_timeseries(retain_days).await?;
                self.ensure_indexes(&self.fixes, FIXES, &schema::fix_indexes(), &[])
                    .await?;
            }
        }
        self.ensure_collection(VEHICLE_LAST).await?;
        self.ensure_indexes(
            &self.last,
            VEHICLE_LAST,
            &schema::vehicle_last_indexes(),
            &[],
        )
        .await?;
        Ok(version)
    }

    async fn ensure_collection(&self, name: &str) -> Result<(), HistoryError> {
        match self.db.create_collection(name).await {
            Ok(()) => Ok(()),
            Err(e) if error_code(&e) == Some(NAMESPACE_EXISTS) => Ok(()),
            Err(e) => Err(mongo_err(e)),
        }
    }

    async fn timeseries_spec(&self) -> Result<Option<Document>, HistoryError> {
        let cursor = self
            .db
            .run_cursor_command(doc! { "listCollections": 1, "filter": { "name": FIXES } })
            .await
            .map_err(mongo_err)?;
        Ok(collect(cursor).await?.into_iter().next())
    }

    /// Creates the time-series collection, or checks the existing one and brings its expiry to
    /// `retain_days`.
    async fn ensure_timeseries(&self, retain_days: u32) -> Result<(), HistoryError> {
        let spec = match self.timeseries_spec().await? {
            Some(spec) => spec,
            None => {
                let created = self
                    .db
                    .create_collection(FIXES)
                    .with_options(schema::timeseries_collection(self.span, retain_days))
                    .await;
                match created {
                    Ok(()) => return Ok(()),
                    Err(e) if error_code(&e) == Some(NAMESPACE_EXISTS) => self
                        .timeseries_spec()
                        .await?
                        .ok_or_else(|| HistoryError::Engine("mongodb: fixes vanished".into()))?,
                    Err(e) => return Err(mongo_err(e)),
                }
            }
        };
        let current = schema::check_timeseries_collection(&spec, self.span)?;
        let wanted = schema::timeseries_expiry(self.span, retain_days);
        if current != wanted {
            self.db
                .run_command(schema::set_timeseries_expiry(FIXES, wanted))
                .await
                .map_err(mongo_err)?;
        }
        Ok(())
    }

    async fn ensure_indexes(
        &self,
        coll: &Collection<Document>,
        name: &str,
        wanted: &[IndexSpec],
        managed: &[&str],
    ) -> Result<(), HistoryError> {
        let existing = match self
            .db
            .run_cursor_command(doc! { "listIndexes": name })
            .await
        {
            Ok(cursor) => collect(cursor)
                .await?
                .iter()
                .map(schema::parse_index)
                .collect::<Result<Vec<_>, _>>()?,
            Err(e) if error_code(&e) == Some(NAMESPACE_NOT_FOUND) => Vec::new(),
            Err(e) => return Err(mongo_err(e)),
        };
        for action in schema::plan_indexes(name, &existing, wanted, managed)? {
            tracing::info!(
                message = "updating a MongoDB history index",
                collection = name,
                ?action
            );
            match action {
                IndexAction::Create(spec) => {
                    coll.create_index(spec.model()).await.map_err(mongo_err)?;
                }
                IndexAction::SetExpiry { name: index, secs } => {
                    self.db
                        .run_command(schema::set_index_expiry(name, &index, secs))
                        .await
                        .map_err(mongo_err)?;
                }
                IndexAction::Drop(index) => {
                    coll.drop_index(index).await.map_err(mongo_err)?;
                }
            }
        }
        Ok(())
    }

    /// Compacts one closed bucket: seal its open chunks, read the sealed documents, write the
    /// merged document, delete the inputs (see [`d::Compaction`] for the order). Returns
    /// whether it merged anything.
    async fn compact_bucket(&self, vehicle: &VehicleId, start: i64) -> Result<bool, HistoryError> {
        let (filter, update) = q::seal_bucket(vehicle, start);
        self.chunks
            .update_many(filter, update)
            .await
            .map_err(mongo_err)?;
        let docs =
            collect(find(&self.chunks, plain(q::sealed_chunks(vehicle, start)), false).await?)
                .await?;
        let chunks = docs
            .iter()
            .map(|doc| d::read_chunk(doc, self.span))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(plan) = d::plan_compaction(vehicle, start, &chunks) else {
            return Ok(false);
        };
        for doc in &plan.insert {
            match self.chunks.insert_one(doc).await {
                Ok(_) => {}
                Err(e) if is_duplicate_key(&e) => {
                    // The same chunks were merged before (by a pass that died before its
                    // deletes, or by another process): the stored document must hold exactly
                    // these points, or the inputs stay.
                    let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
                    let Some(existing) = self
                        .chunks
                        .find_one(doc! { "_id": id.clone() })
                        .await
                        .map_err(mongo_err)?
                    else {
                        return Ok(false);
                    };
                    let have = d::read_chunk(&existing, self.span)?;
                    let want = d::read_chunk(doc, self.span)?;
                    if have.points != want.points {
                        return Err(HistoryError::Corrupt(format!(
                            "compacted document {id} exists with other points; left the chunks \
                             of bucket {start} of {vehicle} alone"
                        )));
                    }
                }
                Err(e) => return Err(mongo_err(e)),
            }
        }
        for ids in [&plan.delete_first, &plan.delete_last] {
            if !ids.is_empty() {
                self.chunks
                    .delete_many(q::ids_in(ids))
                    .await
                    .map_err(mongo_err)?;
            }
        }
        Ok(true)
    }

    /// Counts with a `$count` pipeline (no result: zero).
    async fn count(
        &self,
        coll: &Collection<Document>,
        pipeline: Vec<Document>,
    ) -> Result<u64, HistoryError> {
        let cursor = coll
            .aggregate(pipeline)
            .allow_disk_use(true)
            .await
            .map_err(mongo_err)?;
        Ok(collect(cursor)
            .await?
            .first()
            .and_then(|doc| doc.get("buckets"))
            .and_then(schema::whole_number)
            .map_or(0, |n| n.max(0) as u64))
    }

    /// `storageSize + totalIndexSize` of one collection, and its time-series bucket count.
    async fn coll_stats(
        &self,
        coll: &Collection<Document>,
    ) -> Result<(u64, Option<u64>), HistoryError> {
        let cursor = coll
            .aggregate([doc! { "$collStats": { "storageStats": {} } }])
            .await
            .map_err(mongo_err)?;
        let docs = collect(cursor).await?;
        Ok(docs.first().map_or((0, None), schema::storage_stats))
    }
}

/// A `find` without sort or projection.
fn plain(filter: Document) -> Find {
    Find {
        filter,
        sort: None,
        projection: None,
    }
}

async fn find(
    coll: &Collection<Document>,
    f: Find,
    allow_disk_use: bool,
) -> Result<Cursor<Document>, HistoryError> {
    let mut action = coll.find(f.filter);
    if let Some(sort) = f.sort {
        action = action.sort(sort);
    }
    if let Some(projection) = f.projection {
        action = action.projection(projection);
    }
    if allow_disk_use {
        action = action.allow_disk_use(true);
    }
    action.await.map_err(mongo_err)
}

async fn find_one(coll: &Collection<Document>, f: Find) -> Result<Option<Document>, HistoryError> {
    let mut action = coll.find_one(f.filter);
    if let Some(sort) = f.sort {
        action = action.sort(sort);
    }
    if let Some(projection) = f.projection {
        action = action.projection(projection);
    }
    action.await.map_err(mongo_err)
}

async fn collect(cursor: Cursor<Document>) -> Result<Vec<Document>, HistoryError> {
    cursor.try_collect().await.map_err(mongo_err)
}

/// A cursor pulled one document at a time with `block_on`, so that whatever the caller does
/// with each document happens outside the runtime (a callback may block, or use another
/// runtime).
struct Pull<'a> {
    shared: &'a Shared,
    cursor: Option<Cursor<Document>>,
}

impl<'a> Pull<'a> {
    fn new(shared: &'a Shared, cursor: Cursor<Document>) -> Pull<'a> {
        Pull {
            shared,
            cursor: Some(cursor),
        }
    }

    fn next(&mut self) -> Result<Option<Document>, HistoryError> {
        match self.cursor.as_mut() {
            Some(cursor) => self.shared.block_on(cursor.try_next()).map_err(mongo_err),
            None => Ok(None),
        }
    }
}

impl Drop for Pull<'_> {
    fn drop(&mut self) {
        // A cursor dropped before its end asks the server to kill it from the runtime.
        if let Some(cursor) = self.cursor.take() {
            let _guard = self.shared.rt().enter();
            drop(cursor);
        }
    }
}

fn sort_dedup(points: &mut Vec<Point>) {
    points.sort_by_key(|p| p.ts);
    points.dedup_by_key(|p| p.ts);
}

/// The MongoDB history store. Cheap to clone; writers share its connection pool and runtime.
#[derive(Clone)]
pub struct MongoHistory {
    shared: Arc<Shared>,
}

impl MongoHistory {
    /// Connects, creates collections and indexes (idempotent; for timeseries checks server >=
    /// 6.3 and refuses with a clear [`HistoryError::Config`] otherwise), records the bucket span
    /// in a meta document and refuses to open a database written with another span or layout.
    /// `retain_days` sets the TTL (0 keeps forever); changing it changes the TTL in place.
    pub fn open(
        config: &MongoConfig,
        span: BucketSpan,
        retain_days: u32,
    ) -> Result<MongoHistory, HistoryError> {
        config.validate()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("history-mongodb")
            .enable_all()
            .build()?;
        let client = rt.block_on(async {
            let mut options = ClientOptions::parse(&config.url).await.map_err(|e| {
                HistoryError::Config(format!(
                    "history.mongodb.url is not a usable connection string: {e}"
                ))
            })?;
            if options.app_name.is_none() {
                options.app_name = Some("kickstand".into());
            }
            Client::with_options(options).map_err(mongo_err)
        })?;
        let db = client.database(&config.database);
        let write_concern = WriteConcern::builder()
            .w(if config.write_majority {
                Acknowledgment::Majority
            } else {
                Acknowledgment::Nodes(1)
            })
            .journal(config.journal)
            .build();
        // Every read goes to the primary: the duplicate check must see every acked write.
        let options = CollectionOptions::builder()
            .write_concern(write_concern)
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .build();
        let coll = |name: &str| db.collection_with_options::<Document>(name, options.clone());
        let mut shared = Shared {
            chunks: coll(CHUNKS),
            fixes: coll(FIXES),
            last: coll(VEHICLE_LAST),
            meta: coll(META),
            db,
            rt: Some(rt),
            span,
            config: config.clone(),
            version: (0, 0),
        };
        shared.version = shared.block_on(shared.prepare(retain_days))?;
        tracing::info!(
            message = "opened the MongoDB history",
            database = %config.database,
            layout = config.layout.as_str(),
            server = %format!("{}.{}", shared.version.0, shared.version.1),
        );
        Ok(MongoHistory {
            shared: Arc::new(shared),
        })
    }

    /// Vehicles whose latest fix lies within `radius_m` of a point, nearest first
    /// (`vehicle_last`, `$geoNear`).
    pub fn near(
        &self,
        lat_e6: i32,
        lon_e6: i32,
        radius_m: f64,
        limit: usize,
    ) -> Result<Vec<(VehicleId, Point)>, HistoryError> {
        if !(radius_m.is_finite() && radius_m >= 0.0) {
            return Err(HistoryError::Config(format!(
                "a search radius must be a finite number of metres, not {radius_m}"
            )));
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let s = &*self.shared;
        s.block_on(async {
            let cursor = s
                .last
                .aggregate(q::near_pipeline(lat_e6, lon_e6, radius_m, limit))
                .await
                .map_err(mongo_err)?;
            collect(cursor)
                .await?
                .iter()
                .map(d::read_vehicle_last)
                .collect()
        })
    }

    /// Drops the whole database (tests use it to clean up).
    pub fn drop_database(&self) -> Result<(), HistoryError> {
        let s = &*self.shared;
        s.block_on(async { s.db.drop().await }).map_err(mongo_err)
    }
}

#[cfg(test)]
impl MongoHistory {
    /// For tests that write documents directly, as a process that died mid-append left them.
    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl HistoryStore for MongoHistory {
    fn writer(&self, shard: usize) -> Result<Box<dyn HistoryWriter>, HistoryError> {
        Ok(Box::new(MongoWriter::new(self.shared.clone(), shard)))
    }

    fn track(&self, vehicle: &VehicleId, from: i64, to: i64) -> Result<Vec<Point>, HistoryError> {
        if from > to {
            return Ok(Vec::new());
        }
        let s = &*self.shared;
        s.block_on(async {
            let mut out = Vec::new();
            match s.config.layout {
                MongoLayout::Buckets => {
                    let q = q::track_chunks(vehicle, from, to, s.span);
                    for doc in collect(find(&s.chunks, q, false).await?).await? {
                        out.extend(d::read_chunk(&doc, s.span)?.points);
                    }
                }
                MongoLayout::Timeseries => {
                    let q = q::track_fixes(vehicle, from, to);
                    for doc in collect(find(&s.fixes, q, false).await?).await? {
                        out.push(d::read_fix(&doc)?.1);
                    }
                }
            }
            out.retain(|p| p.ts >= from && p.ts <= to);
            sort_dedup(&mut out);
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
        let s = &*self.shared;
        let span = s.span;
        let mut emit = |vehicle_id: VehicleId, bucket_start: i64, mut points: Vec<Point>| {
            points.retain(|p| p.ts >= from && p.ts <= to);
            sort_dedup(&mut points);
            points.is_empty()
                || visit(BucketFixes {
                    vehicle_id,
                    bucket_start,
                    points,
                })
        };
        match s.config.layout {
            MongoLayout::Buckets => {
                let cursor = s.block_on(find(&s.chunks, q::scan_chunks(from, to, span), true))?;
                let mut pull = Pull::new(s, cursor);
                // The documents of one bucket of one vehicle come together.
                let mut current: Option<(i64, VehicleId, Vec<Point>)> = None;
                while let Some(doc) = pull.next()? {
                    let chunk = d::read_chunk(&doc, span)?;
                    if let Some((_, _, points)) = current
                        .as_mut()
                        .filter(|(start, v, _)| *start == chunk.start && *v == chunk.vehicle_id)
                    {
                        points.extend(chunk.points);
                        continue;
                    }
                    if let Some((start, v, points)) =
                        current.replace((chunk.start, chunk.vehicle_id, chunk.points))
                        && !emit(v, start, points)
                    {
                        return Ok(());
                    }
                }
                if let Some((start, v, points)) = current {
                    emit(v, start, points);
                }
            }
            MongoLayout::Timeseries => {
                // One bucket window at a time, each found with one query, so empty spans cost
                // nothing.
                let mut at = from;
                while at <= to {
                    let Some(first) =
                        s.block_on(find_one(&s.fixes, q::first_fix_between(at, to)))?
                    else {
                        break;
                    };
                    let ts = d::req_date(&first, field::TS, "fix")?;
                    let start = d::bucket_start(span, ts).ok_or_else(|| {
                        HistoryError::Corrupt(format!("fix at {ts} lies before every bucket"))
                    })?;
                    let end = start.saturating_add(span.ms() - 1);
                    let window = q::scan_window_fixes(start.max(from), end.min(to));
                    let mut pull = Pull::new(s, s.block_on(find(&s.fixes, window, true))?);
                    let mut current: Option<(VehicleId, Vec<Point>)> = None;
                    while let Some(doc) = pull.next()? {
                        let (vehicle, point) = d::read_fix(&doc)?;
                        if let Some((_, points)) = current.as_mut().filter(|(v, _)| *v == vehicle) {
                            points.push(point);
                            continue;
                        }
                        if let Some((v, points)) = current.replace((vehicle, vec![point]))
                            && !emit(v, start, points)
                        {
                            return Ok(());
                        }
                    }
                    if let Some((v, points)) = current
                        && !emit(v, start, points)
                    {
                        return Ok(());
                    }
                    let Some(next) = end.checked_add(1) else {
                        break;
                    };
                    at = next;
                }
            }
        }
        Ok(())
    }

    fn for_each_latest(&self, visit: &mut dyn FnMut(VehicleId, Point)) -> Result<(), HistoryError> {
        let s = &*self.shared;
        let all = Find {
            filter: Document::new(),
            sort: Some(doc! { "_id": 1 }),
            projection: None,
        };
        let mut pull = Pull::new(s, s.block_on(find(&s.last, all, false))?);
        while let Some(doc) = pull.next()? {
            let (vehicle, point) = d::read_vehicle_last(&doc)?;
            visit(vehicle, point);
        }
        Ok(())
    }

    fn drop_before(&self, cutoff_ms: i64) -> Result<u64, HistoryError> {
        let s = &*self.shared;
        let (filter, count) = match s.config.layout {
            MongoLayout::Buckets => q::expired_chunks(cutoff_ms, s.span),
            MongoLayout::Timeseries => {
                if s.version < schema::MIN_TIMESERIES_DELETE {
                    let (major, minor) = schema::MIN_TIMESERIES_DELETE;
                    return Err(HistoryError::Config(format!(
                        "dropping old fixes from a time-series collection needs MongoDB \
                         {major}.{minor} or later (the server is {}.{}); retention on this server \
                         relies on the collection's expireAfterSeconds alone",
                        s.version.0, s.version.1
                    )));
                }
                q::expired_fixes(cutoff_ms, s.span)
            }
        };
        let coll = s.chunks_or_fixes();
        s.block_on(async {
            let buckets = s.count(coll, count).await?;
            if buckets > 0 {
                coll.delete_many(filter).await.map_err(mongo_err)?;
            }
            Ok(buckets)
        })
    }

    fn maintain(&self, now_ms: i64) -> Result<u64, HistoryError> {
        let s = &*self.shared;
        if s.config.layout == MongoLayout::Timeseries {
            return Ok(0);
        }
        let grace_ms =
            i64::try_from(s.config.compact_grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        s.block_on(async {
            let raw = q::raw_closed_chunks(now_ms, s.span, grace_ms);
            let mut buckets = BTreeSet::new();
            for doc in collect(find(&s.chunks, raw, true).await?).await? {
                let start = d::req_date(&doc, field::START, "chunk")?;
                let vehicle = d::req_vehicle(&doc, field::VEHICLE_ID, "chunk")?;
                buckets.insert((start, vehicle));
            }
            // Buckets are independent: several at once, each run to its end.
            let results: Vec<Result<bool, HistoryError>> = stream::iter(&buckets)
                .map(|(start, vehicle)| s.compact_bucket(vehicle, *start))
                .buffer_unordered(s.config.concurrency)
                .collect()
                .await;
            let mut compacted = 0;
            for merged in results {
                compacted += u64::from(merged?);
            }
            Ok(compacted)
        })
    }

    fn stats(&self) -> Result<HistoryStats, HistoryError> {
        let s = &*self.shared;
        s.block_on(async {
            let mut stats = HistoryStats::default();
            let (bytes, ts_buckets) = s.coll_stats(s.chunks_or_fixes()).await?;
            stats.disk_bytes += bytes;
            for coll in [&s.last, &s.meta] {
                stats.disk_bytes += s.coll_stats(coll).await?.0;
            }
            stats.buckets = match s.config.layout {
                // One document per bucket once compacted; open buckets count once per chunk.
                MongoLayout::Buckets => s
                    .chunks
                    .estimated_document_count()
                    .await
                    .map_err(mongo_err)?,
                // MongoDB's own buckets, which are aligned to ours and never longer.
                MongoLayout::Timeseries => ts_buckets.unwrap_or(0),
            };
            Ok(stats)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one part of the I/O path that runs without a server: the runtime, the connection
    /// string, server selection failing, and dropping a half-opened store.
    #[test]
    fn a_bad_url_or_an_unreachable_server_is_a_clear_error() {
        let config = |url: &str| MongoConfig {
            url: url.into(),
            ..MongoConfig::default()
        };
        match MongoHistory::open(&config("postgres://nope"), BucketSpan::HOUR, 0) {
            Err(HistoryError::Config(msg)) => assert!(msg.contains("history.mongodb.url"), "{msg}"),
            other => panic!("{:?}", other.err()),
        }
        let unreachable = config("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300");
        match MongoHistory::open(&unreachable, BucketSpan::HOUR, 0) {
            Err(HistoryError::Engine(msg)) => assert!(msg.starts_with("mongodb:"), "{msg}"),
            other => panic!("{:?}", other.err()),
        }
        let bad = MongoConfig {
            chunk_max_points: 0,
            ..config("mongodb://127.0.0.1:9")
        };
        assert!(matches!(
            MongoHistory::open(&bad, BucketSpan::HOUR, 0),
            Err(HistoryError::Config(_))
        ));
    }
}
