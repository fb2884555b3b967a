//! The documents the MongoDB store keeps, built and read by pure functions: no I/O, so every
//! one is unit-tested without a server.
//!
//! Every number is stored as a BSON integer or date at stored precision (never a float), so a
//! point reads back exactly as written; the GeoJSON `loc` of `vehicle_last` is the one float,
//! and it is only an index key, never read back. Decoding never panics: a document with a
//! missing or wrong-typed field is [`HistoryError::Corrupt`].

use super::config::MongoLayout;
use crate::history::HistoryError;
use ::mongodb::bson::{Binary, Bson, DateTime, Document, doc, spec::BinarySubtype};
use kickstand_domain::{BucketSpan, Point, Quality, VehicleId, VehicleState, codec};

/// Buckets layout: chunk and compacted bucket documents.
pub(super) const CHUNKS: &str = "chunks";
/// Timeseries layout: the time-series collection, one measurement per fix.
pub(super) const FIXES: &str = "fixes";
/// Each vehicle's newest fix, keyed by vehicle id.
pub(super) const VEHICLE_LAST: &str = "vehicle_last";
/// The layout document and the barrier counter.
pub(super) const META: &str = "meta";

/// Field names of the documents in `chunks`.
pub(super) mod field {
    pub const VEHICLE_ID: &str = "vehicle_id";
    pub const START: &str = "start";
    pub const OPEN: &str = "open";
    pub const COMPACTED: &str = "compacted";
    pub const COUNT: &str = "count";
    pub const FIRST_TS: &str = "first_ts";
    pub const LAST_TS: &str = "last_ts";
    pub const BBOX: &str = "bbox";
    pub const POINTS: &str = "p";
    pub const PACKED: &str = "packed";
    pub const TS: &str = "ts";
    pub const LOC: &str = "loc";
}

/// Points per packed document written by compaction. The codec spends well under 100 bytes on
/// a point even in its worst case, so a packed document stays far below the 16 MiB limit.
pub(super) const PACKED_MAX_POINTS: usize = 65_536;

/// The `_id` of the layout document in `meta`.
pub(super) const META_ID: &str = "layout";
/// The `_id` of the barrier counter in `meta` (see `writer`).
pub(super) const BARRIER_ID: &str = "barrier";
/// Version of the document layout described here; a database written by a newer one is refused.
pub(super) const FORMAT: i32 = 1;

pub(super) fn date(ms: i64) -> Bson {
    Bson::DateTime(DateTime::from_millis(ms))
}

fn corrupt(what: impl Into<String>) -> HistoryError {
    HistoryError::Corrupt(what.into())
}

/// The start of the bucket that holds `ts`, or `None` when it lies before `i64::MIN` (only a
/// timestamp in the first span of the `i64` range, which no validated fix has).
pub(super) fn bucket_start(span: BucketSpan, ts: i64) -> Option<i64> {
    ts.checked_sub(ts.rem_euclid(span.ms()))
}

/// The field names of a point inside a document: short in chunk arrays, where every name is
/// repeated for every point, readable in time-series measurements and `vehicle_last`, where
/// MongoDB keeps a name once per bucket or the document is one per vehicle.
pub(super) struct PointKeys {
    pub ts: &'static str,
    pub lat: &'static str,
    pub lon: &'static str,
    pub speed: &'static str,
    pub heading: &'static str,
    pub battery: &'static str,
    pub accuracy: &'static str,
    pub altitude: &'static str,
    pub odometer: &'static str,
    pub state: &'static str,
    pub locked: &'static str,
    /// Quality flags (an Int32 of the bits), written only for a flagged fix.
    pub quality: &'static str,
    /// States as their MDS name (`"on_trip"`) instead of their one-byte code.
    pub state_as_text: bool,
}

/// Keys of the points in a chunk's `p` array.
pub(super) const CHUNK_KEYS: PointKeys = PointKeys {
    ts: "t",
    lat: "a",
    lon: "o",
    speed: "s",
    heading: "h",
    battery: "b",
    accuracy: "c",
    altitude: "z",
    odometer: "d",
    state: "st",
    locked: "l",
    quality: "q",
    state_as_text: false,
};

/// Keys of a time-series measurement and of a `vehicle_last` document.
pub(super) const FIX_KEYS: PointKeys = PointKeys {
    ts: "ts",
    lat: "lat_e6",
    lon: "lon_e6",
    speed: "speed_dkmh",
    heading: "heading_ddeg",
    battery: "battery_dpct",
    accuracy: "accuracy_dm",
    altitude: "altitude_dm",
    odometer: "odometer_m",
    state: "state",
    locked: "locked",
    quality: "quality",
    state_as_text: true,
};

/// Writes `p` into `doc`; absent optional fields are left out. `u16` values are `Int32`, the
/// `u32` accuracy is `Int64`, and the `u64` odometer is `Int64` holding the same 64 bits.
pub(super) fn put_point(doc: &mut Document, p: &Point, k: &PointKeys) {
    doc.insert(k.ts, date(p.ts));
    doc.insert(k.lat, p.lat_e6);
    doc.insert(k.lon, p.lon_e6);
    if let Some(v) = p.speed_dkmh {
        doc.insert(k.speed, i32::from(v));
    }
    if let Some(v) = p.heading_ddeg {
        doc.insert(k.heading, i32::from(v));
    }
    if let Some(v) = p.battery_dpct {
        doc.insert(k.battery, i32::from(v));
    }
    if let Some(v) = p.accuracy_dm {
        doc.insert(k.accuracy, i64::from(v));
    }
    if let Some(v) = p.altitude_dm {
        doc.insert(k.altitude, v);
    }
    if let Some(v) = p.odometer_m {
        doc.insert(k.odometer, v as i64);
    }
    if let Some(s) = p.state {
        if k.state_as_text {
            doc.insert(k.state, s.as_str());
        } else {
            doc.insert(k.state, i32::from(s.code()));
        }
    }
    if let Some(v) = p.locked {
        doc.insert(k.locked, v);
    }
    if !p.quality.is_good() {
        doc.insert(k.quality, i32::from(p.quality.0));
    }
}

pub(super) fn point_document(p: &Point, k: &PointKeys) -> Document {
    let mut doc = Document::new();
    put_point(&mut doc, p, k);
    doc
}

/// The names of the optional fields that `p` lacks, for a `$unset`.
pub(super) fn absent_fields(p: &Point, k: &PointKeys) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |present: bool, name| {
        if !present {
            out.push(name);
        }
    };
    check(p.speed_dkmh.is_some(), k.speed);
    check(p.heading_ddeg.is_some(), k.heading);
    check(p.battery_dpct.is_some(), k.battery);
    check(p.accuracy_dm.is_some(), k.accuracy);
    check(p.altitude_dm.is_some(), k.altitude);
    check(p.odometer_m.is_some(), k.odometer);
    check(p.state.is_some(), k.state);
    check(p.locked.is_some(), k.locked);
    out
}

fn missing(what: &str, key: &str) -> HistoryError {
    corrupt(format!("{what}: field {key} is missing"))
}

fn wrong(what: &str, key: &str, want: &str) -> HistoryError {
    corrupt(format!("{what}: field {key} is not {want}"))
}

fn req<'a>(doc: &'a Document, key: &str, what: &str) -> Result<&'a Bson, HistoryError> {
    doc.get(key).ok_or_else(|| missing(what, key))
}

pub(super) fn req_date(doc: &Document, key: &str, what: &str) -> Result<i64, HistoryError> {
    match req(doc, key, what)? {
        Bson::DateTime(d) => Ok(d.timestamp_millis()),
        _ => Err(wrong(what, key, "a date")),
    }
}

fn req_i32(doc: &Document, key: &str, what: &str) -> Result<i32, HistoryError> {
    match req(doc, key, what)? {
        Bson::Int32(v) => Ok(*v),
        _ => Err(wrong(what, key, "a 32-bit integer")),
    }
}

fn req_i64(doc: &Document, key: &str, what: &str) -> Result<i64, HistoryError> {
    match req(doc, key, what)? {
        Bson::Int64(v) => Ok(*v),
        _ => Err(wrong(what, key, "a 64-bit integer")),
    }
}

fn req_str<'a>(doc: &'a Document, key: &str, what: &str) -> Result<&'a str, HistoryError> {
    match req(doc, key, what)? {
        Bson::String(v) => Ok(v),
        _ => Err(wrong(what, key, "a string")),
    }
}

fn req_bool(doc: &Document, key: &str, what: &str) -> Result<bool, HistoryError> {
    match req(doc, key, what)? {
        Bson::Boolean(v) => Ok(*v),
        _ => Err(wrong(what, key, "a boolean")),
    }
}

pub(super) fn req_vehicle(
    doc: &Document,
    key: &str,
    what: &str,
) -> Result<VehicleId, HistoryError> {
    let id = req_str(doc, key, what)?;
    VehicleId::new(id).map_err(|reason| corrupt(format!("{what}: vehicle id {id:?} {reason}")))
}

/// An optional field: absent or `null` is `None`; a value `conv` refuses is corrupt.
fn opt<T>(
    doc: &Document,
    key: &str,
    what: &str,
    want: &str,
    conv: impl Fn(&Bson) -> Option<T>,
) -> Result<Option<T>, HistoryError> {
    match doc.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(b) => conv(b).map(Some).ok_or_else(|| wrong(what, key, want)),
    }
}

fn as_u16(b: &Bson) -> Option<u16> {
    match b {
        Bson::Int32(v) => u16::try_from(*v).ok(),
        _ => None,
    }
}

/// Reads a point written by [`put_point`] with the same keys. Unknown fields are ignored.
pub(super) fn read_point(doc: &Document, k: &PointKeys, what: &str) -> Result<Point, HistoryError> {
    Ok(Point {
        ts: req_date(doc, k.ts, what)?,
        lat_e6: req_i32(doc, k.lat, what)?,
        lon_e6: req_i32(doc, k.lon, what)?,
        speed_dkmh: opt(doc, k.speed, what, "a u16 as Int32", as_u16)?,
        heading_ddeg: opt(doc, k.heading, what, "a u16 as Int32", as_u16)?,
        battery_dpct: opt(doc, k.battery, what, "a u16 as Int32", as_u16)?,
        accuracy_dm: opt(doc, k.accuracy, what, "a u32 as Int64", |b| match b {
            Bson::Int64(v) => u32::try_from(*v).ok(),
            _ => None,
        })?,
        altitude_dm: opt(doc, k.altitude, what, "an Int32", |b| match b {
            Bson::Int32(v) => Some(*v),
            _ => None,
        })?,
        odometer_m: opt(doc, k.odometer, what, "an Int64", |b| match b {
            Bson::Int64(v) => Some(*v as u64),
            _ => None,
        })?,
        state: opt(doc, k.state, what, "a vehicle state", |b| match b {
            Bson::String(s) if k.state_as_text => VehicleState::parse(s),
            Bson::Int32(c) if !k.state_as_text => {
                u8::try_from(*c).ok().and_then(VehicleState::from_code)
            }
            _ => None,
        })?,
        locked: opt(doc, k.locked, what, "a boolean", |b| match b {
            Bson::Boolean(v) => Some(*v),
            _ => None,
        })?,
        quality: opt(doc, k.quality, what, "quality bits 1..=255", |b| match b {
            Bson::Int32(v) => u8::try_from(*v).ok().filter(|q| *q != 0),
            _ => None,
        })?
        .map_or(Quality::default(), Quality),
    })
}

/// A filter and an update, for `update_one` with `upsert: true`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Upsert {
    pub filter: Document,
    pub update: Document,
}

/// A bounding box in millionths of a degree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BBox {
    pub min_lat_e6: i32,
    pub min_lon_e6: i32,
    pub max_lat_e6: i32,
    pub max_lon_e6: i32,
}

impl BBox {
    /// The box around `points`; `None` when there are none.
    pub fn of(points: &[Point]) -> Option<BBox> {
        let first = points.first()?;
        let mut b = BBox {
            min_lat_e6: first.lat_e6,
            min_lon_e6: first.lon_e6,
            max_lat_e6: first.lat_e6,
            max_lon_e6: first.lon_e6,
        };
        for p in &points[1..] {
            b.min_lat_e6 = b.min_lat_e6.min(p.lat_e6);
            b.min_lon_e6 = b.min_lon_e6.min(p.lon_e6);
            b.max_lat_e6 = b.max_lat_e6.max(p.lat_e6);
            b.max_lon_e6 = b.max_lon_e6.max(p.lon_e6);
        }
        Some(b)
    }

    fn document(&self) -> Document {
        doc! {
            "min_lat_e6": self.min_lat_e6,
            "min_lon_e6": self.min_lon_e6,
            "max_lat_e6": self.max_lat_e6,
            "max_lon_e6": self.max_lon_e6,
        }
    }
}

fn ts_range(points: &[Point]) -> (i64, i64) {
    let first = points.iter().map(|p| p.ts).min().unwrap_or(0);
    let last = points.iter().map(|p| p.ts).max().unwrap_or(0);
    (first, last)
}

/// The upsert that appends `points` (1 to `cap` of them, all of bucket `start`) to an open
/// chunk of the bucket that still has room for all of them, or creates a new chunk when none
/// has. One document is changed atomically, so a crash leaves the points wholly there or
/// wholly absent. The filter's equality fields become the new chunk's fields on insert.
pub(super) fn chunk_append(
    vehicle: &VehicleId,
    start: i64,
    points: &[Point],
    cap: usize,
) -> Upsert {
    debug_assert!(!points.is_empty() && points.len() <= cap);
    let n = points.len();
    let (first, last) = ts_range(points);
    let bbox = BBox::of(points).unwrap_or(BBox {
        min_lat_e6: 0,
        min_lon_e6: 0,
        max_lat_e6: 0,
        max_lon_e6: 0,
    });
    let each: Vec<Bson> = points
        .iter()
        .map(|p| Bson::Document(point_document(p, &CHUNK_KEYS)))
        .collect();
    Upsert {
        filter: doc! {
            field::VEHICLE_ID: vehicle.as_str(),
            field::START: date(start),
            field::OPEN: true,
            field::COMPACTED: false,
            field::COUNT: { "$lte": cap.saturating_sub(n) as i64 },
        },
        update: doc! {
            "$push": { field::POINTS: { "$each": each } },
            "$inc": { field::COUNT: n as i64 },
            "$min": {
                field::FIRST_TS: date(first),
                "bbox.min_lat_e6": bbox.min_lat_e6,
                "bbox.min_lon_e6": bbox.min_lon_e6,
            },
            "$max": {
                field::LAST_TS: date(last),
                "bbox.max_lat_e6": bbox.max_lat_e6,
                "bbox.max_lon_e6": bbox.max_lon_e6,
            },
        },
    }
}

/// The documents that replace the chunks of bucket `start` once it is compacted: `points`
/// (sorted by `ts`, no two alike) packed with the columnar codec, `PACKED_MAX_POINTS` a
/// document. The `_id`s derive from the vehicle, the bucket and `inputs` (a hash of the ids of
/// the chunks merged), so two compactions of the same chunks write the same documents.
pub(super) fn compacted_documents(
    vehicle: &VehicleId,
    start: i64,
    points: &[Point],
    inputs: u64,
) -> Vec<Document> {
    points
        .chunks(PACKED_MAX_POINTS)
        .enumerate()
        .map(|(part, run)| {
            let mut bytes = Vec::new();
            codec::encode(run, &mut bytes);
            let (first, last) = ts_range(run);
            let bbox = BBox::of(run).expect("chunks() yields non-empty runs");
            doc! {
                "_id": format!("{vehicle}/{start}/{inputs:016x}/{part}"),
                field::VEHICLE_ID: vehicle.as_str(),
                field::START: date(start),
                field::OPEN: false,
                field::COMPACTED: true,
                field::COUNT: run.len() as i64,
                field::FIRST_TS: date(first),
                field::LAST_TS: date(last),
                field::BBOX: bbox.document(),
                field::PACKED: Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes }),
            }
        })
        .collect()
}

/// One document of `chunks`, decoded.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StoredChunk {
    pub id: Bson,
    pub vehicle_id: VehicleId,
    pub start: i64,
    pub open: bool,
    pub compacted: bool,
    /// In stored order: `ts` order for a compacted document, arrival order for a chunk.
    pub points: Vec<Point>,
}

/// Decodes a document of `chunks`, checking that `count` matches the points and that every
/// point lies in the bucket.
pub(super) fn read_chunk(doc: &Document, span: BucketSpan) -> Result<StoredChunk, HistoryError> {
    const WHAT: &str = "chunk";
    let id = req(doc, "_id", WHAT)?.clone();
    let vehicle_id = req_vehicle(doc, field::VEHICLE_ID, WHAT)?;
    let start = req_date(doc, field::START, WHAT)?;
    if bucket_start(span, start) != Some(start) {
        return Err(corrupt(format!(
            "chunk {id}: start {start} is not the start of a bucket of {} ms",
            span.ms()
        )));
    }
    let open = req_bool(doc, field::OPEN, WHAT)?;
    let compacted = req_bool(doc, field::COMPACTED, WHAT)?;
    let count = req_i64(doc, field::COUNT, WHAT)?;
    let mut points = Vec::new();
    match doc.get(field::PACKED) {
        None => {}
        Some(Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes,
        })) => codec::decode(bytes, &mut points)
            .map_err(|e| corrupt(format!("chunk {id}: packed points: {e}")))?,
        Some(_) => return Err(wrong(WHAT, field::PACKED, "generic binary data")),
    }
    match doc.get(field::POINTS) {
        None => {}
        Some(Bson::Array(items)) => {
            points.reserve(items.len());
            for item in items {
                let Bson::Document(d) = item else {
                    return Err(wrong(WHAT, "p.$", "a document"));
                };
                points.push(read_point(d, &CHUNK_KEYS, "chunk point")?);
            }
        }
        Some(_) => return Err(wrong(WHAT, field::POINTS, "an array")),
    }
    if i64::try_from(points.len()).ok() != Some(count) {
        return Err(corrupt(format!(
            "chunk {id}: count is {count} but it holds {} points",
            points.len()
        )));
    }
    if let Some(p) = points
        .iter()
        .find(|p| bucket_start(span, p.ts) != Some(start))
    {
        return Err(corrupt(format!(
            "chunk {id}: point at {} lies outside bucket {start}",
            p.ts
        )));
    }
    Ok(StoredChunk {
        id,
        vehicle_id,
        start,
        open,
        compacted,
        points,
    })
}

/// What compacting one bucket does, in this order: insert `insert`, delete `delete_first` (the
/// old compacted documents), then delete `delete_last` (the raw chunks). Raw chunks go last so
/// that a crash in between leaves a raw chunk behind, which makes the next pass redo the merge;
/// until then reads see some points twice and drop the copies.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Compaction {
    pub insert: Vec<Document>,
    pub delete_first: Vec<Bson>,
    pub delete_last: Vec<Bson>,
    /// The merged points, in `ts` order.
    pub points: Vec<Point>,
}

/// Plans the merge of the sealed documents of one bucket. `None` when there is nothing to
/// merge (no raw chunk among them).
pub(super) fn plan_compaction(
    vehicle: &VehicleId,
    start: i64,
    docs: &[StoredChunk],
) -> Option<Compaction> {
    if docs.iter().all(|c| c.compacted) {
        return None;
    }
    // Compacted documents first (they hold the oldest data), then raw chunks by id (ObjectIds
    // grow with time), so that of two stored copies of one `ts` the first written is kept.
    let mut order: Vec<&StoredChunk> = docs.iter().collect();
    order.sort_by_cached_key(|c| (!c.compacted, c.id.to_string()));
    let mut points: Vec<Point> = order
        .iter()
        .flat_map(|c| c.points.iter().copied())
        .collect();
    points.sort_by_key(|p| p.ts);
    points.dedup_by_key(|p| p.ts);
    let mut ids: Vec<String> = docs.iter().map(|c| c.id.to_string()).collect();
    ids.sort_unstable();
    let mut hash = kickstand_domain::Fnv1a64::default();
    for id in &ids {
        std::hash::Hasher::write(&mut hash, id.as_bytes());
        std::hash::Hasher::write(&mut hash, b"\n");
    }
    let hash = std::hash::Hasher::finish(&hash);
    let insert = compacted_documents(vehicle, start, &points, hash);
    // Never delete what is being written (only a hash collision could make them meet).
    let kept = |c: &&&StoredChunk| !insert.iter().any(|d| d.get("_id") == Some(&c.id));
    let (compacted, raw): (Vec<&StoredChunk>, Vec<&StoredChunk>) =
        order.iter().filter(kept).partition(|c| c.compacted);
    Some(Compaction {
        insert,
        delete_first: compacted.iter().map(|c| c.id.clone()).collect(),
        delete_last: raw.iter().map(|c| c.id.clone()).collect(),
        points,
    })
}

/// A time-series measurement: `ts`, the metaField `vehicle_id` (the only field that names the
/// series; everything that changes from fix to fix is a measurement field) and the point.
pub(super) fn fix_document(vehicle: &VehicleId, p: &Point) -> Document {
    let mut doc = doc! { field::TS: date(p.ts), field::VEHICLE_ID: vehicle.as_str() };
    put_point(&mut doc, p, &FIX_KEYS);
    doc
}

/// The measurements of `fixes`, sorted by vehicle and then `ts`, so that an unordered
/// `insert_many` fills each vehicle's time-series buckets in order.
pub(super) fn fix_documents<'a>(
    fixes: impl IntoIterator<Item = (&'a VehicleId, &'a Point)>,
) -> Vec<Document> {
    let mut sorted: Vec<(&VehicleId, &Point)> = fixes.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0).then(a.1.ts.cmp(&b.1.ts)));
    sorted
        .into_iter()
        .map(|(v, p)| fix_document(v, p))
        .collect()
}

/// Decodes a time-series measurement.
pub(super) fn read_fix(doc: &Document) -> Result<(VehicleId, Point), HistoryError> {
    let vehicle = req_vehicle(doc, field::VEHICLE_ID, "fix")?;
    Ok((vehicle, read_point(doc, &FIX_KEYS, "fix")?))
}

/// A GeoJSON point `[lon, lat]` in degrees, or `None` when the point lies outside the ranges a
/// 2dsphere index accepts (a validated fix never does).
pub(super) fn geo_point(p: &Point) -> Option<Document> {
    let ok = (-90_000_000..=90_000_000).contains(&p.lat_e6)
        && (-180_000_000..=180_000_000).contains(&p.lon_e6);
    ok.then(|| doc! { "type": "Point", "coordinates": [p.lon(), p.lat()] })
}

/// The upsert that makes `p` the newest fix of `vehicle` in `vehicle_last`, only when it is
/// newer than the stored one. When the stored one is as new or newer, the filter matches
/// nothing and the upsert's insert fails with a duplicate key (E11000) on `_id`: that failure
/// means "already newer" and is not an error. Optional fields the new fix lacks are unset.
pub(super) fn vehicle_last_upsert(vehicle: &VehicleId, p: &Point) -> Upsert {
    let mut set = point_document(p, &FIX_KEYS);
    let mut unset = Document::new();
    for name in absent_fields(p, &FIX_KEYS) {
        unset.insert(name, "");
    }
    match geo_point(p) {
        Some(loc) => {
            set.insert(field::LOC, loc);
        }
        None => {
            unset.insert(field::LOC, "");
        }
    }
    let mut update = doc! { "$set": set };
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    Upsert {
        filter: doc! { "_id": vehicle.as_str(), field::TS: { "$lt": date(p.ts) } },
        update,
    }
}

/// Decodes a `vehicle_last` document (also as returned by `$geoNear`, with its extra field).
pub(super) fn read_vehicle_last(doc: &Document) -> Result<(VehicleId, Point), HistoryError> {
    let vehicle = req_vehicle(doc, "_id", "vehicle_last")?;
    Ok((vehicle, read_point(doc, &FIX_KEYS, "vehicle_last")?))
}

/// The layout document: what a database was written with.
pub(super) fn meta_document(span: BucketSpan, layout: MongoLayout) -> Document {
    doc! {
        "_id": META_ID,
        "layout": layout.as_str(),
        "span_ms": span.ms(),
        "format": FORMAT,
    }
}

/// Refuses to open a database written with another layout, span or a newer format.
pub(super) fn check_meta(
    doc: &Document,
    span: BucketSpan,
    layout: MongoLayout,
) -> Result<(), HistoryError> {
    const WHAT: &str = "meta";
    let format = req_i32(doc, "format", WHAT)?;
    if format > FORMAT {
        return Err(HistoryError::Config(format!(
            "this MongoDB history was written in format {format} by a newer Kickstand; this \
             one reads format {FORMAT}"
        )));
    }
    let stored_layout = req_str(doc, "layout", WHAT)?;
    if stored_layout != layout.as_str() {
        return Err(HistoryError::Config(format!(
            "this MongoDB history was written with layout {stored_layout:?}, not {:?}; set \
             history.mongodb.layout back or use another database",
            layout.as_str()
        )));
    }
    let stored_span = req_i64(doc, "span_ms", WHAT)?;
    if stored_span != span.ms() {
        return Err(HistoryError::Config(format!(
            "this MongoDB history was written with buckets of {} s, not {} s; set bucket_secs \
             back or use another database",
            stored_span / 1000,
            span.ms() / 1000
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::mongodb::bson::oid::ObjectId;

    const H: i64 = 3_600_000;
    /// 2026-11-25T00:00:00Z.
    const T0: i64 = 1_795_564_800_000;

    fn vid(id: &str) -> VehicleId {
        VehicleId::new(id).unwrap()
    }

    fn full(ts: i64) -> Point {
        Point {
            ts,
            lat_e6: 37_566_500,
            lon_e6: 126_978_000,
            speed_dkmh: Some(123),
            heading_ddeg: Some(3600),
            battery_dpct: Some(1000),
            accuracy_dm: Some(50),
            altitude_dm: Some(-125),
            odometer_m: Some(1_234_567),
            state: Some(VehicleState::OnTrip),
            locked: Some(false),
            quality: Default::default(),
        }
    }

    fn bare(ts: i64) -> Point {
        Point {
            ts,
            lat_e6: -33_868_800,
            lon_e6: 151_209_300,
            ..Point::default()
        }
    }

    /// Every field at the ends of its type, and every state.
    fn extremes() -> Vec<Point> {
        let mut out = vec![
            Point {
                ts: i64::MIN,
                lat_e6: i32::MIN,
                lon_e6: i32::MIN,
                speed_dkmh: Some(0),
                heading_ddeg: Some(0),
                battery_dpct: Some(0),
                accuracy_dm: Some(0),
                altitude_dm: Some(i32::MIN),
                odometer_m: Some(0),
                state: Some(VehicleState::Available),
                locked: Some(true),
                quality: Default::default(),
            },
            Point {
                ts: i64::MAX,
                lat_e6: i32::MAX,
                lon_e6: i32::MAX,
                speed_dkmh: Some(u16::MAX),
                heading_ddeg: Some(u16::MAX),
                battery_dpct: Some(u16::MAX),
                accuracy_dm: Some(u32::MAX),
                altitude_dm: Some(i32::MAX),
                odometer_m: Some(u64::MAX),
                state: Some(VehicleState::Removed),
                locked: Some(false),
                quality: Default::default(),
            },
            bare(0),
            bare(-1),
        ];
        for (i, s) in VehicleState::ALL.into_iter().enumerate() {
            out.push(Point {
                state: Some(s),
                odometer_m: Some(1 << 63),
                ..bare(i as i64 + 1)
            });
        }
        out
    }

    #[test]
    fn points_round_trip_exactly_with_either_keys() {
        for keys in [&CHUNK_KEYS, &FIX_KEYS] {
            for p in extremes().into_iter().chain([full(T0), bare(T0)]) {
                let doc = point_document(&p, keys);
                assert_eq!(read_point(&doc, keys, "t").unwrap(), p);
                // Through BSON bytes too: the types survive the wire.
                let mut bytes = Vec::new();
                doc.to_writer(&mut bytes).unwrap();
                let back = Document::from_reader(bytes.as_slice()).unwrap();
                assert_eq!(read_point(&back, keys, "t").unwrap(), p);
            }
        }
    }

    #[test]
    fn point_fields_are_integers_of_fixed_types_and_absent_ones_are_left_out() {
        let doc = point_document(&full(T0), &FIX_KEYS);
        assert_eq!(
            doc,
            doc! {
                "ts": date(T0),
                "lat_e6": 37_566_500,
                "lon_e6": 126_978_000,
                "speed_dkmh": 123,
                "heading_ddeg": 3600,
                "battery_dpct": 1000,
                "accuracy_dm": 50_i64,
                "altitude_dm": -125,
                "odometer_m": 1_234_567_i64,
                "state": "on_trip",
                "locked": false,
            }
        );
        let doc = point_document(&full(T0), &CHUNK_KEYS);
        assert_eq!(doc.get("st"), Some(&Bson::Int32(3)));
        assert_eq!(
            point_document(&bare(T0), &CHUNK_KEYS),
            doc! { "t": date(T0), "a": -33_868_800, "o": 151_209_300 }
        );
        assert_eq!(
            absent_fields(&bare(T0), &FIX_KEYS),
            vec![
                "speed_dkmh",
                "heading_ddeg",
                "battery_dpct",
                "accuracy_dm",
                "altitude_dm",
                "odometer_m",
                "state",
                "locked"
            ]
        );
        assert!(absent_fields(&full(T0), &FIX_KEYS).is_empty());
    }

    /// Garbage in a stored point is `Corrupt`, naming the field, never a panic.
    #[test]
    fn garbage_points_are_corrupt() {
        let good = point_document(&full(T0), &FIX_KEYS);
        let cases: Vec<(&str, Option<Bson>)> = vec![
            ("ts", None),
            ("ts", Some(Bson::Int64(T0))),
            ("lat_e6", None),
            ("lat_e6", Some(Bson::Double(37.5))),
            ("lon_e6", Some(Bson::Int64(1))),
            ("speed_dkmh", Some(Bson::Int32(-1))),
            ("speed_dkmh", Some(Bson::Int32(65_536))),
            ("heading_ddeg", Some(Bson::String("n".into()))),
            ("battery_dpct", Some(Bson::Double(50.0))),
            ("accuracy_dm", Some(Bson::Int32(5))),
            ("accuracy_dm", Some(Bson::Int64(-1))),
            ("accuracy_dm", Some(Bson::Int64(1 << 33))),
            ("altitude_dm", Some(Bson::Int64(5))),
            ("odometer_m", Some(Bson::Int32(5))),
            ("state", Some(Bson::String("flying".into()))),
            ("state", Some(Bson::Int32(3))),
            ("locked", Some(Bson::Int32(1))),
        ];
        for (key, value) in cases {
            let mut doc = good.clone();
            match &value {
                Some(v) => doc.insert(key, v.clone()),
                None => doc.remove(key),
            };
            match read_point(&doc, &FIX_KEYS, "fix") {
                Err(HistoryError::Corrupt(msg)) => assert!(msg.contains(key), "{key}: {msg}"),
                other => panic!("{key} = {value:?}: {other:?}"),
            }
        }
        // Chunk points keep states as codes: a name or an unknown code is corrupt.
        for bad in [
            Bson::String("on_trip".into()),
            Bson::Int32(0),
            Bson::Int32(7),
        ] {
            let mut doc = point_document(&full(T0), &CHUNK_KEYS);
            doc.insert("st", bad);
            assert!(matches!(
                read_point(&doc, &CHUNK_KEYS, "p"),
                Err(HistoryError::Corrupt(_))
            ));
        }
        // Null is an absent optional field, not garbage.
        let mut doc = good.clone();
        doc.insert("speed_dkmh", Bson::Null);
        assert_eq!(read_point(&doc, &FIX_KEYS, "fix").unwrap().speed_dkmh, None);
    }

    #[test]
    fn an_append_pushes_counts_and_widens_the_bounds_of_an_open_chunk_with_room() {
        let points = [full(T0 + 5_000), bare(T0 + 1_000), full(T0 + 9_000)];
        let up = chunk_append(&vid("v1"), T0, &points, 160);
        assert_eq!(
            up.filter,
            doc! {
                "vehicle_id": "v1",
                "start": date(T0),
                "open": true,
                "compacted": false,
                "count": { "$lte": 157_i64 },
            }
        );
        let each: Vec<Bson> = points
            .iter()
            .map(|p| Bson::Document(point_document(p, &CHUNK_KEYS)))
            .collect();
        assert_eq!(
            up.update,
            doc! {
                "$push": { "p": { "$each": each } },
                "$inc": { "count": 3_i64 },
                "$min": {
                    "first_ts": date(T0 + 1_000),
                    "bbox.min_lat_e6": -33_868_800,
                    "bbox.min_lon_e6": 126_978_000,
                },
                "$max": {
                    "last_ts": date(T0 + 9_000),
                    "bbox.max_lat_e6": 37_566_500,
                    "bbox.max_lon_e6": 151_209_300,
                },
            }
        );
        // A full-cap piece only ever matches an empty chunk, so it always makes a new one.
        let full_piece: Vec<Point> = (0..4).map(|i| bare(T0 + i)).collect();
        let up = chunk_append(&vid("v1"), T0, &full_piece, 4);
        assert_eq!(
            up.filter.get_document("count").unwrap(),
            &doc! { "$lte": 0_i64 }
        );
    }

    /// The document the server builds from the upsert of a new chunk: the filter's equality
    /// fields plus the update applied to them. Mirrors MongoDB's upsert rules for exactly the
    /// operators `chunk_append` uses, so the decoder is tested on what the server will store.
    fn upserted(up: &Upsert) -> Document {
        let mut doc = Document::new();
        doc.insert("_id", ObjectId::new());
        for (k, v) in &up.filter {
            if !matches!(v, Bson::Document(d) if d.keys().any(|k| k.starts_with('$'))) {
                doc.insert(k, v.clone());
            }
        }
        let u = &up.update;
        let each = u.get_document("$push").unwrap().get_document("p").unwrap();
        doc.insert("p", each.get_array("$each").unwrap().clone());
        doc.insert(
            "count",
            u.get_document("$inc")
                .unwrap()
                .get("count")
                .unwrap()
                .clone(),
        );
        let mut bbox = Document::new();
        for op in ["$min", "$max"] {
            for (k, v) in u.get_document(op).unwrap() {
                match k.strip_prefix("bbox.") {
                    Some(sub) => bbox.insert(sub, v.clone()),
                    None => doc.insert(k, v.clone()),
                };
            }
        }
        doc.insert("bbox", bbox);
        doc
    }

    fn bson_len(doc: &Document) -> usize {
        let mut bytes = Vec::new();
        doc.to_writer(&mut bytes).unwrap();
        bytes.len()
    }

    /// A moving scooter reporting once a second: the fields most devices send.
    fn moving(i: i64) -> Point {
        Point {
            ts: T0 + i * 1000,
            lat_e6: 37_566_500 + (i * 37 % 400) as i32,
            lon_e6: 126_978_000 + (i * 53 % 600) as i32,
            speed_dkmh: Some(150 + (i % 30) as u16),
            heading_ddeg: Some((i * 7 % 3600) as u16),
            battery_dpct: Some(800 - (i / 60) as u16),
            state: Some(VehicleState::OnTrip),
            locked: Some(false),
            ..Point::default()
        }
    }

    /// The measurement behind `MongoConfig::chunk_max_points` (docs/mongodb.md quotes its
    /// output; run with `--nocapture` to see it). The cap bounds what one append makes MongoDB
    /// rewrite: one chunk of at most `cap` points. It is chosen so that a full chunk of
    /// worst-case points (every optional field) stays within 16 KiB.
    #[test]
    fn the_chunk_cap_keeps_a_full_chunk_within_16_kib() {
        let cap = super::super::MongoConfig::default().chunk_max_points;
        let chunk =
            |points: &[Point]| upserted(&chunk_append(&vid("scooter-000123"), T0, points, cap));
        type Make = fn(i64) -> Point;
        let kinds: [(&str, Make); 3] = [
            ("bare (ts, lat, lon), parked", |i| bare(T0 + i * 1000)),
            ("moving scooter", moving),
            ("every field, moving", |i| Point {
                accuracy_dm: Some(30 + (i % 20) as u32),
                altitude_dm: Some(350 + (i % 40) as i32),
                odometer_m: Some(1_234_567 + i as u64 * 4),
                ..moving(i)
            }),
        ];
        let mut worst_full_chunk = 0;
        for (name, make) in kinds {
            let points: Vec<Point> = (0..3600).map(make).collect();
            let one = bson_len(&chunk(&points[..1]));
            let full_chunk = bson_len(&chunk(&points[..cap]));
            let per_point = (full_chunk - one) as f64 / (cap - 1) as f64;
            let update =
                bson_len(&chunk_append(&vid("scooter-000123"), T0, &points[..1], cap).update);
            let packed = bson_len(&compacted_documents(&vid("scooter-000123"), T0, &points, 0)[0]);
            // One fix per append for an hour: bytes MongoDB rewrites, capped and uncapped.
            let mut capped = 0u64;
            let mut uncapped = 0u64;
            for n in 1..=3600usize {
                let in_chunk = (n - 1) % cap + 1;
                capped += (one as f64 + (in_chunk - 1) as f64 * per_point) as u64;
                uncapped += (one as f64 + (n - 1) as f64 * per_point) as u64;
            }
            eprintln!(
                "{name}: chunk of 1 point {one} B, of {cap} points {full_chunk} B \
                 ({per_point:.1} B/point); $push update of 1 point {update} B; \
                 compacted hour of 3600 points {packed} B ({:.2} B/point); \
                 rewritten per vehicle-hour at 1 Hz, 1 fix/append: capped {:.1} MB, \
                 uncapped {:.1} MB",
                packed as f64 / 3600.0,
                capped as f64 / 1e6,
                uncapped as f64 / 1e6,
            );
            worst_full_chunk = worst_full_chunk.max(full_chunk);
        }
        assert!(
            worst_full_chunk <= 16 * 1024,
            "a full chunk of {cap} worst-case points is {worst_full_chunk} B"
        );
    }

    #[test]
    fn a_new_chunk_reads_back_exactly_in_arrival_order() {
        let points = [full(T0 + 5_000), bare(T0 + 1_000), full(T0 + H - 1)];
        let doc = upserted(&chunk_append(&vid("v1"), T0, &points, 160));
        assert_eq!(doc.get_i64("count").unwrap(), 3);
        assert_eq!(
            doc.get_datetime("first_ts").unwrap().timestamp_millis(),
            T0 + 1_000
        );
        assert_eq!(
            doc.get_datetime("last_ts").unwrap().timestamp_millis(),
            T0 + H - 1
        );
        let chunk = read_chunk(&doc, BucketSpan::HOUR).unwrap();
        assert_eq!(chunk.vehicle_id, vid("v1"));
        assert_eq!(chunk.start, T0);
        assert!(chunk.open && !chunk.compacted);
        assert_eq!(chunk.points, points);
    }

    #[test]
    fn a_compacted_bucket_holds_count_bounds_and_packed_points_that_round_trip() {
        let mut points: Vec<Point> = (0..3600).map(|i| full(T0 + i * 1000)).collect();
        points[7] = bare(T0 + 7000);
        points[8].lat_e6 = 37_000_000;
        points[9].lon_e6 = 127_500_000;
        let docs = compacted_documents(&vid("v1"), T0, &points, 0xabc);
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(
            d.get_str("_id").unwrap(),
            format!("v1/{T0}/0000000000000abc/0")
        );
        assert_eq!(d.get_str("vehicle_id").unwrap(), "v1");
        assert_eq!(d.get_datetime("start").unwrap().timestamp_millis(), T0);
        assert!(!d.get_bool("open").unwrap());
        assert!(d.get_bool("compacted").unwrap());
        assert_eq!(d.get_i64("count").unwrap(), 3600);
        assert_eq!(d.get_datetime("first_ts").unwrap().timestamp_millis(), T0);
        assert_eq!(
            d.get_datetime("last_ts").unwrap().timestamp_millis(),
            T0 + 3_599_000
        );
        assert_eq!(
            d.get_document("bbox").unwrap(),
            &doc! {
                "min_lat_e6": -33_868_800,
                "min_lon_e6": 126_978_000,
                "max_lat_e6": 37_566_500,
                "max_lon_e6": 151_209_300,
            }
        );
        assert!(d.get("p").is_none());
        let back = read_chunk(d, BucketSpan::HOUR).unwrap();
        assert_eq!(back.points, points);
        assert!(back.compacted && !back.open);
    }

    #[test]
    fn extreme_and_bare_points_round_trip_through_a_compacted_document() {
        let span = BucketSpan::from_secs(86_400).unwrap();
        // One bucket's worth of extremes: timestamps inside one day, values at their ends.
        let mut points: Vec<Point> = extremes()
            .into_iter()
            .enumerate()
            .map(|(i, p)| Point {
                ts: i as i64 * 7,
                ..p
            })
            .collect();
        points.sort_by_key(|p| p.ts);
        let d = &compacted_documents(&vid("x"), 0, &points, 1)[0];
        assert_eq!(read_chunk(d, span).unwrap().points, points);
        // The dates at the ends of i64 are BSON dates too.
        let far = [bare(i64::MAX)];
        let start = span.start_of(i64::MAX);
        let d = &compacted_documents(&vid("x"), start, &far, 1)[0];
        assert_eq!(read_chunk(d, span).unwrap().points, far);
    }

    #[test]
    fn large_buckets_are_packed_in_parts() {
        let n = PACKED_MAX_POINTS + 10;
        let points: Vec<Point> = (0..n as i64).map(|i| bare(T0 + i)).collect();
        let docs = compacted_documents(&vid("v"), T0, &points, 9);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].get_i64("count").unwrap(), 10);
        assert!(docs[1].get_str("_id").unwrap().ends_with("/1"));
        let mut back = Vec::new();
        for d in &docs {
            back.extend(read_chunk(d, BucketSpan::HOUR).unwrap().points);
        }
        assert_eq!(back, points);
    }

    #[test]
    fn garbage_chunks_are_corrupt() {
        let good = compacted_documents(&vid("v1"), T0, &[full(T0), full(T0 + 1)], 1).remove(0);
        let raw = upserted(&chunk_append(&vid("v1"), T0, &[full(T0)], 10));
        let edits: Vec<(Document, &str, Option<Bson>)> = vec![
            (good.clone(), "_id", None),
            (good.clone(), "vehicle_id", None),
            (
                good.clone(),
                "vehicle_id",
                Some(Bson::String("no spaces".into())),
            ),
            (good.clone(), "vehicle_id", Some(Bson::Int32(1))),
            (good.clone(), "start", Some(Bson::Int64(T0))),
            (good.clone(), "start", Some(date(T0 + 1))),
            (good.clone(), "open", None),
            (good.clone(), "compacted", Some(Bson::Int32(1))),
            (good.clone(), "count", None),
            (good.clone(), "count", Some(Bson::Int64(3))),
            (good.clone(), "count", Some(Bson::Int32(2))),
            (good.clone(), "packed", Some(Bson::String("xx".into()))),
            (
                good.clone(),
                "packed",
                Some(Bson::Binary(Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: vec![2, 5, 1],
                })),
            ),
            (
                good.clone(),
                "packed",
                Some(Bson::Binary(Binary {
                    subtype: BinarySubtype::Uuid,
                    bytes: vec![0; 16],
                })),
            ),
            (good.clone(), "start", Some(date(T0 + H))),
            (good.clone(), "start", Some(date(i64::MIN))),
            (
                raw.clone(),
                "p",
                Some(Bson::Array(vec![Bson::Document(point_document(
                    &bare(i64::MIN),
                    &CHUNK_KEYS,
                ))])),
            ),
            (raw.clone(), "p", Some(Bson::Document(Document::new()))),
            (raw.clone(), "p", Some(Bson::Array(vec![Bson::Int32(1)]))),
            (
                raw.clone(),
                "p",
                Some(Bson::Array(vec![Bson::Document(doc! { "t": date(T0) })])),
            ),
        ];
        for (mut doc, key, value) in edits {
            match &value {
                Some(v) => doc.insert(key, v.clone()),
                None => doc.remove(key),
            };
            match read_chunk(&doc, BucketSpan::HOUR) {
                Err(HistoryError::Corrupt(_)) => {}
                other => panic!("{key} = {value:?}: {other:?}"),
            }
        }
        // Random bytes in `packed` never panic.
        for seed in 0..500u64 {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let bytes: Vec<u8> = (0..(seed % 40))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut doc = good.clone();
            doc.insert(
                "packed",
                Bson::Binary(Binary {
                    subtype: BinarySubtype::Generic,
                    bytes,
                }),
            );
            let _ = read_chunk(&doc, BucketSpan::HOUR);
        }
    }

    fn stored(id: Bson, compacted: bool, points: Vec<Point>) -> StoredChunk {
        StoredChunk {
            id,
            vehicle_id: vid("v1"),
            start: T0,
            open: false,
            compacted,
            points,
        }
    }

    #[test]
    fn compaction_merges_sorts_and_drops_repeats_keeping_the_first_written() {
        let old = stored(
            Bson::String("v1/old".into()),
            true,
            vec![bare(T0 + 1), bare(T0 + 3)],
        );
        let oid_a = ObjectId::parse_str("650000000000000000000001").unwrap();
        let oid_b = ObjectId::parse_str("650000000000000000000002").unwrap();
        let mut changed = full(T0 + 3);
        changed.battery_dpct = Some(1);
        let a = stored(Bson::ObjectId(oid_a), false, vec![full(T0 + 5), changed]);
        let b = stored(Bson::ObjectId(oid_b), false, vec![full(T0 + 2)]);
        let plan = plan_compaction(&vid("v1"), T0, &[b.clone(), old.clone(), a.clone()]).unwrap();
        assert_eq!(
            plan.points,
            vec![bare(T0 + 1), full(T0 + 2), bare(T0 + 3), full(T0 + 5)]
        );
        assert_eq!(plan.delete_first, vec![old.id.clone()]);
        assert_eq!(plan.delete_last, vec![a.id.clone(), b.id.clone()]);
        assert_eq!(plan.insert.len(), 1);
        let merged = read_chunk(&plan.insert[0], BucketSpan::HOUR).unwrap();
        assert_eq!(merged.points, plan.points);
        // The same inputs in any order give the same documents; other inputs other ids.
        let again = plan_compaction(&vid("v1"), T0, &[a.clone(), b.clone(), old.clone()]).unwrap();
        assert_eq!(again.insert, plan.insert);
        let fewer = plan_compaction(&vid("v1"), T0, &[a.clone(), old.clone()]).unwrap();
        assert_ne!(fewer.insert[0].get("_id"), plan.insert[0].get("_id"));
    }

    #[test]
    fn a_bucket_without_raw_chunks_needs_no_compaction() {
        assert_eq!(plan_compaction(&vid("v1"), T0, &[]), None);
        let c = stored(Bson::String("c".into()), true, vec![bare(T0)]);
        assert_eq!(plan_compaction(&vid("v1"), T0, &[c]), None);
        // A single raw chunk is packed.
        let r = stored(
            Bson::ObjectId(ObjectId::new()),
            false,
            vec![bare(T0 + 9), bare(T0)],
        );
        let plan = plan_compaction(&vid("v1"), T0, &[r]).unwrap();
        assert_eq!(plan.points, vec![bare(T0), bare(T0 + 9)]);
        assert!(plan.delete_first.is_empty());
        assert_eq!(plan.delete_last.len(), 1);
    }

    #[test]
    fn measurements_carry_only_the_vehicle_as_meta_and_sort_by_vehicle_then_ts() {
        let d = fix_document(&vid("v9"), &full(T0));
        let mut want = doc! { "ts": date(T0), "vehicle_id": "v9" };
        want.extend(point_document(&full(T0), &FIX_KEYS));
        assert_eq!(d, want);
        assert_eq!(d.keys().next().map(String::as_str), Some("ts"));
        let (v, p) = read_fix(&d).unwrap();
        assert_eq!((v, p), (vid("v9"), full(T0)));
        let (a, b) = (vid("a"), vid("b"));
        let (p1, p2, p3) = (bare(T0 + 2), bare(T0 + 1), bare(T0));
        let docs = fix_documents([(&b, &p3), (&a, &p1), (&a, &p2)]);
        let order: Vec<(String, i64)> = docs
            .iter()
            .map(|d| {
                let (v, p) = read_fix(d).unwrap();
                (v.as_str().to_owned(), p.ts)
            })
            .collect();
        assert_eq!(
            order,
            vec![("a".into(), T0 + 1), ("a".into(), T0 + 2), ("b".into(), T0)]
        );
        assert!(matches!(
            read_fix(&doc! { "ts": date(T0), "lat_e6": 1, "lon_e6": 1 }),
            Err(HistoryError::Corrupt(_))
        ));
    }

    #[test]
    fn vehicle_last_is_upserted_only_when_newer_as_a_lon_lat_geojson_point() {
        let up = vehicle_last_upsert(&vid("v1"), &full(T0));
        assert_eq!(up.filter, doc! { "_id": "v1", "ts": { "$lt": date(T0) } });
        let set = up.update.get_document("$set").unwrap();
        assert_eq!(
            set.get_document("loc").unwrap(),
            &doc! { "type": "Point", "coordinates": [126.978, 37.5665] }
        );
        assert!(up.update.get("$unset").is_none());
        let mut stored = set.clone();
        stored.insert("_id", "v1");
        assert_eq!(read_vehicle_last(&stored).unwrap(), (vid("v1"), full(T0)));
        // A fix without optional fields clears those of the previous one.
        let up = vehicle_last_upsert(&vid("v1"), &bare(T0 + 1));
        let unset = up.update.get_document("$unset").unwrap();
        assert_eq!(unset.len(), 8);
        assert!(unset.contains_key("battery_dpct") && unset.contains_key("state"));
        assert!(!unset.contains_key("loc"));
        // Outside what a 2dsphere index takes: no `loc`, and an old one is removed.
        let odd = Point {
            lat_e6: 90_000_001,
            ..bare(T0)
        };
        let up = vehicle_last_upsert(&vid("v1"), &odd);
        assert!(!up.update.get_document("$set").unwrap().contains_key("loc"));
        assert!(
            up.update
                .get_document("$unset")
                .unwrap()
                .contains_key("loc")
        );
        assert!(
            geo_point(&Point {
                lat_e6: 90_000_000,
                lon_e6: -180_000_000,
                ..bare(0)
            })
            .is_some()
        );
        assert!(
            geo_point(&Point {
                lon_e6: 180_000_001,
                ..bare(0)
            })
            .is_none()
        );
        assert!(matches!(
            read_vehicle_last(&doc! { "_id": 5, "ts": date(0), "lat_e6": 0, "lon_e6": 0 }),
            Err(HistoryError::Corrupt(_))
        ));
    }

    #[test]
    fn meta_refuses_another_span_layout_or_a_newer_format() {
        let span = BucketSpan::HOUR;
        let meta = meta_document(span, MongoLayout::Buckets);
        assert_eq!(
            meta,
            doc! { "_id": "layout", "layout": "buckets", "span_ms": 3_600_000_i64, "format": 1 }
        );
        check_meta(&meta, span, MongoLayout::Buckets).unwrap();
        let config_err = |r: Result<(), HistoryError>, needle: &str| match r {
            Err(HistoryError::Config(msg)) => assert!(msg.contains(needle), "{msg}"),
            other => panic!("{other:?}"),
        };
        config_err(check_meta(&meta, span, MongoLayout::Timeseries), "layout");
        let day = BucketSpan::from_secs(86_400).unwrap();
        config_err(
            check_meta(&meta, day, MongoLayout::Buckets),
            "3600 s, not 86400 s",
        );
        let mut newer = meta.clone();
        newer.insert("format", FORMAT + 1);
        config_err(check_meta(&newer, span, MongoLayout::Buckets), "newer");
        for key in ["layout", "span_ms", "format"] {
            let mut broken = meta.clone();
            broken.remove(key);
            assert!(matches!(
                check_meta(&broken, span, MongoLayout::Buckets),
                Err(HistoryError::Corrupt(_))
            ));
            let mut broken = meta.clone();
            broken.insert(key, 1.5);
            assert!(matches!(
                check_meta(&broken, span, MongoLayout::Buckets),
                Err(HistoryError::Corrupt(_))
            ));
        }
    }
}
