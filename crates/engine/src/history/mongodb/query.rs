//! The filters, sorts and pipelines of the MongoDB store's reads, retention and compaction, as
//! pure functions (no I/O).

use super::document::{BARRIER_ID, bucket_start, date, field};
use ::mongodb::bson::{Bson, Document, doc};
use kickstand_domain::{BucketSpan, VehicleId};

/// The start of the bucket that holds `ts`, as a lower bound: the lowest `i64` when that bucket
/// would start before it.
pub(super) fn floor_start(span: BucketSpan, ts: i64) -> i64 {
    bucket_start(span, ts).unwrap_or(i64::MIN)
}

/// A `find`: filter, sort and projection.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Find {
    pub filter: Document,
    pub sort: Option<Document>,
    pub projection: Option<Document>,
}

/// Buckets layout: the documents of `vehicle` that may hold fixes with `from <= ts <= to`, in
/// bucket order (index `vehicle_start`); `first_ts`/`last_ts` skip chunks outside the range.
pub(super) fn track_chunks(vehicle: &VehicleId, from: i64, to: i64, span: BucketSpan) -> Find {
    Find {
        filter: doc! {
            field::VEHICLE_ID: vehicle.as_str(),
            field::START: { "$gte": date(floor_start(span, from)), "$lte": date(floor_start(span, to)) },
            field::FIRST_TS: { "$lte": date(to) },
            field::LAST_TS: { "$gte": date(from) },
        },
        sort: Some(doc! { field::START: 1 }),
        projection: None,
    }
}

/// Timeseries layout: the measurements of `vehicle` with `from <= ts <= to`, in `ts` order.
pub(super) fn track_fixes(vehicle: &VehicleId, from: i64, to: i64) -> Find {
    Find {
        filter: doc! {
            field::VEHICLE_ID: vehicle.as_str(),
            field::TS: { "$gte": date(from), "$lte": date(to) },
        },
        sort: Some(doc! { field::TS: 1 }),
        projection: None,
    }
}

/// Buckets layout: every document that may hold fixes with `from <= ts <= to`, in order of
/// bucket start and then vehicle (index `start_vehicle`), so the documents of one bucket of one
/// vehicle come together.
pub(super) fn scan_chunks(from: i64, to: i64, span: BucketSpan) -> Find {
    Find {
        filter: doc! {
            field::START: { "$gte": date(floor_start(span, from)), "$lte": date(floor_start(span, to)) },
            field::FIRST_TS: { "$lte": date(to) },
            field::LAST_TS: { "$gte": date(from) },
        },
        sort: Some(doc! { field::START: 1, field::VEHICLE_ID: 1 }),
        projection: None,
    }
}

/// Timeseries layout: the first measurement with `from <= ts <= to` (only its `ts`), to find
/// the next bucket that holds anything, so a scan skips empty spans in one query.
pub(super) fn first_fix_between(from: i64, to: i64) -> Find {
    Find {
        filter: doc! { field::TS: { "$gte": date(from), "$lte": date(to) } },
        sort: Some(doc! { field::TS: 1 }),
        projection: Some(doc! { field::TS: 1, "_id": 0 }),
    }
}

/// Timeseries layout: the measurements of one bucket's window `lo..=hi`, by vehicle and then
/// `ts` (index `vehicle_id_1_ts_1`).
pub(super) fn scan_window_fixes(lo: i64, hi: i64) -> Find {
    Find {
        filter: doc! { field::TS: { "$gte": date(lo), "$lte": date(hi) } },
        sort: Some(doc! { field::VEHICLE_ID: 1, field::TS: 1 }),
        projection: None,
    }
}

/// Buckets layout: the start of the newest bucket of `vehicle` (a covered query on
/// `vehicle_start`; take the first result).
pub(super) fn newest_bucket(vehicle: &VehicleId) -> Find {
    Find {
        filter: doc! { field::VEHICLE_ID: vehicle.as_str() },
        sort: Some(doc! { field::START: -1 }),
        projection: Some(doc! { field::START: 1, "_id": 0 }),
    }
}

/// Buckets layout: every document of one bucket of one vehicle.
pub(super) fn bucket_chunks(vehicle: &VehicleId, start: i64) -> Document {
    doc! { field::VEHICLE_ID: vehicle.as_str(), field::START: date(start) }
}

/// Timeseries layout: the newest measurement of `vehicle` (take the first result).
pub(super) fn newest_fix(vehicle: &VehicleId) -> Find {
    Find {
        filter: doc! { field::VEHICLE_ID: vehicle.as_str() },
        sort: Some(doc! { field::TS: -1 }),
        projection: None,
    }
}

/// Timeseries layout: which of the timestamps `ts` of `vehicle` are stored (only `ts` comes back).
pub(super) fn stored_fixes_at(vehicle: &VehicleId, ts: &[i64]) -> Find {
    let dates: Vec<Bson> = ts.iter().map(|t| date(*t)).collect();
    Find {
        filter: doc! { field::VEHICLE_ID: vehicle.as_str(), field::TS: { "$in": dates } },
        sort: None,
        projection: Some(doc! { field::TS: 1, "_id": 0 }),
    }
}

/// Retention: the first bucket start that is kept. A bucket ends at or before `cutoff` exactly
/// when it starts before the bucket that holds `cutoff`.
pub(super) fn first_kept_start(cutoff: i64, span: BucketSpan) -> i64 {
    floor_start(span, cutoff)
}

/// Buckets layout, retention: the documents of every bucket that ends at or before `cutoff`,
/// and the pipeline that counts those buckets (distinct vehicle and start).
pub(super) fn expired_chunks(cutoff: i64, span: BucketSpan) -> (Document, Vec<Document>) {
    let filter = doc! { field::START: { "$lt": date(first_kept_start(cutoff, span)) } };
    let count = vec![
        doc! { "$match": filter.clone() },
        doc! { "$group": { "_id": { "v": "$vehicle_id", "s": "$start" } } },
        doc! { "$count": "buckets" },
    ];
    (filter, count)
}

/// Timeseries layout, retention: the measurements of every bucket that ends at or before
/// `cutoff`, and the pipeline that counts those buckets (`$dateTrunc` bins count from
/// 2000-01-01, a whole number of days after the epoch, so for a span that divides a day they
/// are exactly our buckets).
pub(super) fn expired_fixes(cutoff: i64, span: BucketSpan) -> (Document, Vec<Document>) {
    let filter = doc! { field::TS: { "$lt": date(first_kept_start(cutoff, span)) } };
    let count = vec![
        doc! { "$match": filter.clone() },
        doc! { "$group": { "_id": {
            "v": "$vehicle_id",
            "s": { "$dateTrunc": { "date": "$ts", "unit": "second", "binSize": span.ms() / 1000 } },
        } } },
        doc! { "$count": "buckets" },
    ];
    (filter, count)
}

/// The last bucket start that is closed at `now`: a bucket is compacted once
/// `start + span + grace <= now`.
pub(super) fn last_closed_start(now: i64, span: BucketSpan, grace_ms: i64) -> i64 {
    now.saturating_sub(span.ms().saturating_add(grace_ms))
}

/// Buckets layout, compaction: the raw chunks of closed buckets (index `raw_start`), only their
/// vehicle and start.
pub(super) fn raw_closed_chunks(now: i64, span: BucketSpan, grace_ms: i64) -> Find {
    Find {
        filter: doc! {
            field::COMPACTED: false,
            field::START: { "$lte": date(last_closed_start(now, span, grace_ms)) },
        },
        sort: Some(doc! { field::START: 1 }),
        projection: Some(doc! { field::VEHICLE_ID: 1, field::START: 1, "_id": 0 }),
    }
}

/// Buckets layout, compaction step 1: seal the open chunks of one bucket, so that no append
/// changes them any more (an append's filter asks for `open: true`; a late fix makes a new
/// chunk instead, merged on the next pass).
pub(super) fn seal_bucket(vehicle: &VehicleId, start: i64) -> (Document, Document) {
    let mut filter = bucket_chunks(vehicle, start);
    filter.insert(field::OPEN, true);
    (filter, doc! { "$set": { field::OPEN: false } })
}

/// Buckets layout, compaction step 2: the sealed documents of one bucket, which no append
/// changes.
pub(super) fn sealed_chunks(vehicle: &VehicleId, start: i64) -> Document {
    let mut filter = bucket_chunks(vehicle, start);
    filter.insert(field::OPEN, false);
    filter
}

/// Deletes exactly the documents with these ids.
pub(super) fn ids_in(ids: &[Bson]) -> Document {
    doc! { "_id": { "$in": ids.to_vec() } }
}

/// The vehicles whose newest fix lies within `radius_m` metres of a point, nearest first, each
/// with its distance in `distance_m`.
pub(super) fn near_pipeline(
    lat_e6: i32,
    lon_e6: i32,
    radius_m: f64,
    limit: usize,
) -> Vec<Document> {
    vec![
        doc! { "$geoNear": {
            "near": { "type": "Point", "coordinates": [f64::from(lon_e6) / 1e6, f64::from(lat_e6) / 1e6] },
            "distanceField": "distance_m",
            "maxDistance": radius_m,
            "spherical": true,
            "key": field::LOC,
        } },
        doc! { "$limit": i64::try_from(limit).unwrap_or(i64::MAX) },
    ]
}

/// The write a writer makes when it must report fixes as already stored without writing
/// anything itself, after an append whose outcome it does not know (see `writer`): a write
/// acknowledged by a majority proves every earlier write on that primary is majority-committed.
pub(super) fn barrier() -> (Document, Document) {
    (doc! { "_id": BARRIER_ID }, doc! { "$inc": { "n": 1_i64 } })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const T0: i64 = 1_795_564_800_000;

    fn vid(id: &str) -> VehicleId {
        VehicleId::new(id).unwrap()
    }

    #[test]
    fn a_track_reads_the_buckets_of_its_range_in_order() {
        let q = track_chunks(&vid("v1"), T0 + 10, T0 + 2 * H + 5, BucketSpan::HOUR);
        assert_eq!(
            q.filter,
            doc! {
                "vehicle_id": "v1",
                "start": { "$gte": date(T0), "$lte": date(T0 + 2 * H) },
                "first_ts": { "$lte": date(T0 + 2 * H + 5) },
                "last_ts": { "$gte": date(T0 + 10) },
            }
        );
        assert_eq!(q.sort, Some(doc! { "start": 1 }));
        let q = track_fixes(&vid("v1"), T0, T0 + H);
        assert_eq!(
            q.filter,
            doc! { "vehicle_id": "v1", "ts": { "$gte": date(T0), "$lte": date(T0 + H) } }
        );
        assert_eq!(q.sort, Some(doc! { "ts": 1 }));
    }

    #[test]
    fn ranges_at_the_ends_of_time_do_not_overflow() {
        let span = BucketSpan::HOUR;
        assert_eq!(floor_start(span, i64::MIN), i64::MIN);
        assert_eq!(floor_start(span, i64::MAX), span.start_of(i64::MAX));
        assert_eq!(floor_start(span, -1), -H);
        let q = scan_chunks(i64::MIN, i64::MAX, span);
        assert_eq!(
            q.filter.get_document("start").unwrap(),
            &doc! { "$gte": date(i64::MIN), "$lte": date(span.start_of(i64::MAX)) }
        );
        let q = track_chunks(&vid("v"), i64::MIN, i64::MAX, span);
        assert_eq!(
            q.filter.get_document("last_ts").unwrap(),
            &doc! { "$gte": date(i64::MIN) }
        );
        assert_eq!(
            expired_chunks(i64::MIN, span).0,
            doc! { "start": { "$lt": date(i64::MIN) } }
        );
    }

    #[test]
    fn a_scan_is_in_bucket_then_vehicle_order() {
        let q = scan_chunks(T0 - 1, T0 + H, BucketSpan::HOUR);
        assert_eq!(
            q.filter,
            doc! {
                "start": { "$gte": date(T0 - H), "$lte": date(T0 + H) },
                "first_ts": { "$lte": date(T0 + H) },
                "last_ts": { "$gte": date(T0 - 1) },
            }
        );
        assert_eq!(q.sort, Some(doc! { "start": 1, "vehicle_id": 1 }));
        let q = first_fix_between(T0, T0 + H);
        assert_eq!(
            q.filter,
            doc! { "ts": { "$gte": date(T0), "$lte": date(T0 + H) } }
        );
        assert_eq!(q.sort, Some(doc! { "ts": 1 }));
        assert_eq!(q.projection, Some(doc! { "ts": 1, "_id": 0 }));
        let q = scan_window_fixes(T0, T0 + H - 1);
        assert_eq!(
            q.filter,
            doc! { "ts": { "$gte": date(T0), "$lte": date(T0 + H - 1) } }
        );
        assert_eq!(q.sort, Some(doc! { "vehicle_id": 1, "ts": 1 }));
    }

    #[test]
    fn the_newest_stored_fix_comes_from_the_fix_documents() {
        let q = newest_bucket(&vid("v1"));
        assert_eq!(q.filter, doc! { "vehicle_id": "v1" });
        assert_eq!(q.sort, Some(doc! { "start": -1 }));
        assert_eq!(q.projection, Some(doc! { "start": 1, "_id": 0 }));
        assert_eq!(
            bucket_chunks(&vid("v1"), T0),
            doc! { "vehicle_id": "v1", "start": date(T0) }
        );
        let q = newest_fix(&vid("v1"));
        assert_eq!(q.filter, doc! { "vehicle_id": "v1" });
        assert_eq!(q.sort, Some(doc! { "ts": -1 }));
        let q = stored_fixes_at(&vid("v1"), &[T0, T0 + 7]);
        assert_eq!(
            q.filter,
            doc! { "vehicle_id": "v1", "ts": { "$in": [date(T0), date(T0 + 7)] } }
        );
        assert_eq!(q.projection, Some(doc! { "ts": 1, "_id": 0 }));
    }

    #[test]
    fn retention_takes_whole_buckets_that_end_at_or_before_the_cutoff() {
        let span = BucketSpan::HOUR;
        // A cutoff inside a bucket keeps that bucket; one on a boundary drops the one before.
        assert_eq!(first_kept_start(T0 + H + 1, span), T0 + H);
        assert_eq!(first_kept_start(T0 + H, span), T0 + H);
        assert_eq!(first_kept_start(T0 + H - 1, span), T0);
        let (filter, count) = expired_chunks(T0 + H + 1, span);
        assert_eq!(filter, doc! { "start": { "$lt": date(T0 + H) } });
        assert_eq!(
            count,
            vec![
                doc! { "$match": { "start": { "$lt": date(T0 + H) } } },
                doc! { "$group": { "_id": { "v": "$vehicle_id", "s": "$start" } } },
                doc! { "$count": "buckets" },
            ]
        );
        let (filter, count) = expired_fixes(T0 + H + 1, span);
        assert_eq!(filter, doc! { "ts": { "$lt": date(T0 + H) } });
        assert_eq!(
            count[1],
            doc! { "$group": { "_id": {
                "v": "$vehicle_id",
                "s": { "$dateTrunc": { "date": "$ts", "unit": "second", "binSize": 3600_i64 } },
            } } }
        );
        // 2000-01-01 lies a whole number of days after the epoch.
        assert_eq!(946_684_800 % 86_400, 0);
    }

    #[test]
    fn compaction_finds_closed_raw_chunks_and_seals_before_reading() {
        let span = BucketSpan::HOUR;
        assert_eq!(last_closed_start(T0 + 2 * H, span, 0), T0 + H);
        assert_eq!(last_closed_start(T0 + H - 1, span, 0), T0 - 1);
        assert_eq!(last_closed_start(i64::MIN, span, 600_000), i64::MIN);
        let q = raw_closed_chunks(T0 + 2 * H + 600_000, span, 600_000);
        assert_eq!(
            q.filter,
            doc! { "compacted": false, "start": { "$lte": date(T0 + H) } }
        );
        assert_eq!(
            q.projection,
            Some(doc! { "vehicle_id": 1, "start": 1, "_id": 0 })
        );
        let (filter, update) = seal_bucket(&vid("v1"), T0);
        assert_eq!(
            filter,
            doc! { "vehicle_id": "v1", "start": date(T0), "open": true }
        );
        assert_eq!(update, doc! { "$set": { "open": false } });
        assert_eq!(
            sealed_chunks(&vid("v1"), T0),
            doc! { "vehicle_id": "v1", "start": date(T0), "open": false }
        );
        assert_eq!(
            ids_in(&[Bson::Int32(1), Bson::String("x".into())]),
            doc! { "_id": { "$in": [1, "x"] } }
        );
    }

    #[test]
    fn near_is_a_spherical_geo_near_on_loc_in_lon_lat_order() {
        assert_eq!(
            near_pipeline(37_566_500, 126_978_000, 250.0, 10),
            vec![
                doc! { "$geoNear": {
                    "near": { "type": "Point", "coordinates": [126.978, 37.5665] },
                    "distanceField": "distance_m",
                    "maxDistance": 250.0,
                    "spherical": true,
                    "key": "loc",
                } },
                doc! { "$limit": 10_i64 },
            ]
        );
        assert_eq!(
            barrier(),
            (doc! { "_id": "barrier" }, doc! { "$inc": { "n": 1_i64 } })
        );
    }
}
