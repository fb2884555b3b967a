//! The shard writer of the MongoDB store: the duplicate check, the writes, and the order that
//! keeps an append idempotent when the process dies at any point inside it.
//!
//! One append, in order:
//! 1. For each vehicle this writer has not seen, read its newest stored `ts` from the fix
//!    documents themselves (never from `vehicle_last`).
//! 2. A fix newer than its vehicle's newest stored `ts` cannot be stored: it is new without a
//!    lookup (nearly every fix). Older ones are looked up, one query per vehicle and bucket.
//! 3. Decide in order: new unless stored or repeated earlier in this append.
//! 4. Write the new fixes. Buckets layout: one `$push` upsert per vehicle, bucket and piece of
//!    at most `chunk_max_points` points; each changes one document atomically. Timeseries
//!    layout: one unordered `insert_many`, sorted by vehicle. Every write carries the
//!    configured write concern (`w: "majority"`, `j: true` by default), so it is durable when
//!    acknowledged.
//! 5. Only then move `vehicle_last` forward (only when newer). It is a hint: its failure is
//!    logged, not returned, because the fixes are already durable.
//!
//! **Why a crash cannot lose or duplicate:** each fix is inside exactly one document write, so
//! after a crash it is either stored or not. The replayed append (the device was never acked
//! and sends again) starts from step 1 in a new writer, which reads what is stored: the stored
//! fixes are reported as duplicates and written no second time, the others are written. No
//! step trusts anything but the fix documents, so it does not matter which writes of the dead
//! append landed, or whether `vehicle_last` did. A `vehicle_last` left behind is repaired by
//! the first append of the vehicle after the restart (step 1 loads the newest stored fix, and
//! step 5 upserts it too).
//!
//! **Why a duplicate report is durable:** after a write whose outcome is unknown (a failed
//! append, or a new writer, whose predecessor may have died inside one), a fix found stored may
//! sit on the primary without being majority-committed yet. If the append then writes nothing
//! itself, it first makes one majority-acknowledged write (`query::barrier`): replication is in
//! oplog order, so that write's acknowledgement covers every earlier write on the primary.

use super::document::Upsert;
use super::store::{Shared, mongo_err};
use super::{config::MongoLayout, document as d};
use crate::history::{HistoryError, HistoryWriter};
use crate::{FastMap, FastSet};
use futures_util::{StreamExt, TryStreamExt, stream};
use kickstand_domain::{Fix, Point, VehicleId};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(super) struct MongoWriter {
    shared: Arc<Shared>,
    /// For logs.
    shard: usize,
    /// The newest stored `ts` of each vehicle this writer has seen (`None`: nothing stored).
    /// Loaded from the fix documents the first time; exact afterwards because the engine routes
    /// a vehicle to one writer. Cleared after a failed append, whose outcome is unknown.
    newest: FastMap<VehicleId, Option<i64>>,
    /// True while a write's outcome is unknown (see the module doc): reporting a fix as already
    /// stored then needs a majority-acknowledged write first.
    uncertain: bool,
}

impl MongoWriter {
    pub fn new(shared: Arc<Shared>, shard: usize) -> MongoWriter {
        MongoWriter {
            shared,
            shard,
            newest: FastMap::default(),
            uncertain: true,
        }
    }
}

impl HistoryWriter for MongoWriter {
    fn append(&mut self, fixes: &[Fix], is_new: &mut Vec<bool>) -> Result<(), HistoryError> {
        if fixes.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        match shared.block_on(append(
            &shared,
            &mut self.newest,
            &mut self.uncertain,
            self.shard,
            fixes,
        )) {
            Ok(flags) => {
                is_new.extend(flags);
                Ok(())
            }
            Err(e) => {
                // Some writes may have landed: forget what this writer believed, and read the
                // stored documents again on the next append.
                self.newest.clear();
                self.uncertain = true;
                Err(e)
            }
        }
    }

    fn tick(&mut self) -> Result<(), HistoryError> {
        // Nothing is buffered: every append is in MongoDB when it returns.
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<(), HistoryError> {
        Ok(())
    }
}

async fn append(
    s: &Shared,
    newest: &mut FastMap<VehicleId, Option<i64>>,
    uncertain: &mut bool,
    shard: usize,
    fixes: &[Fix],
) -> Result<Vec<bool>, HistoryError> {
    let concurrency = s.config.concurrency;

    // 1. The newest stored fix of vehicles not seen yet, from the fix documents.
    let mut cold: Vec<&VehicleId> = Vec::new();
    {
        let mut seen: FastSet<&VehicleId> = FastSet::default();
        for f in fixes {
            if !newest.contains_key(&f.vehicle_id) && seen.insert(&f.vehicle_id) {
                cold.push(&f.vehicle_id);
            }
        }
    }
    let loaded: Vec<(&VehicleId, Option<Point>)> = stream::iter(cold)
        .map(|v| async move { Ok::<_, HistoryError>((v, s.newest_stored(v).await?)) })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    // Vehicles just loaded: their stored newest fix is upserted into `vehicle_last` below, which
    // repairs it if a dead process wrote the fixes but not `vehicle_last`.
    let mut repair: FastMap<&VehicleId, Point> = FastMap::default();
    for (v, p) in loaded {
        newest.insert(v.clone(), p.map(|p| p.ts));
        if let Some(p) = p {
            repair.insert(v, p);
        }
    }
    let before = |v: &VehicleId| newest.get(v).copied().flatten();

    // 2. Look up the fixes that are not newer than what is stored.
    let mut maybe: BTreeMap<(&VehicleId, i64), Vec<i64>> = BTreeMap::new();
    for f in fixes {
        if before(&f.vehicle_id).is_some_and(|n| f.point.ts <= n) {
            maybe
                .entry((&f.vehicle_id, s.span.start_of(f.point.ts)))
                .or_default()
                .push(f.point.ts);
        }
    }
    let found: Vec<(&VehicleId, Vec<i64>)> = stream::iter(maybe)
        .map(|((v, start), ts)| async move {
            Ok::<_, HistoryError>((v, s.stored_among(v, start, &ts).await?))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let stored: FastSet<(&VehicleId, i64)> = found
        .into_iter()
        .flat_map(|(v, ts)| ts.into_iter().map(move |t| (v, t)))
        .collect();

    // 3. Decide, in order.
    let mut taken: FastSet<(&VehicleId, i64)> = FastSet::default();
    let mut flags = Vec::with_capacity(fixes.len());
    let mut fresh: Vec<&Fix> = Vec::new();
    for f in fixes {
        let key = (&f.vehicle_id, f.point.ts);
        let new = !stored.contains(&key) && taken.insert(key);
        if new {
            fresh.push(f);
        }
        flags.push(new);
    }

    // 4. Write the new fixes.
    if !fresh.is_empty() {
        match s.config.layout {
            MongoLayout::Buckets => write_chunks(s, &fresh).await?,
            MongoLayout::Timeseries => {
                let docs = d::fix_documents(fresh.iter().map(|f| (&f.vehicle_id, &f.point)));
                s.fixes
                    .insert_many(docs)
                    .ordered(false)
                    .await
                    .map_err(mongo_err)?;
            }
        }
    } else if *uncertain {
        // Everything was reported as stored and nothing written.
        s.barrier().await?;
    }
    // A majority-acknowledged write has now followed every earlier write of this writer.
    *uncertain = false;

    // The vehicles whose newest fix this append moved forward.
    let mut latest: FastMap<&VehicleId, Point> = FastMap::default();
    for f in &fresh {
        let was = before(&f.vehicle_id);
        if was.is_none_or(|n| f.point.ts > n)
            && latest.get(&f.vehicle_id).is_none_or(|p| f.point.ts > p.ts)
        {
            latest.insert(&f.vehicle_id, f.point);
        }
    }
    for (v, ts) in latest.iter().map(|(v, p)| (*v, p.ts)) {
        newest.insert(v.clone(), Some(ts));
    }
    for (v, p) in repair {
        latest.entry(v).or_insert(p);
    }
    // A fix flagged by a quality filter never becomes a vehicle's latest.
    latest.retain(|_, p| p.quality.is_good());

    // 5. `vehicle_last`, after the fixes.
    let failed: Vec<(&VehicleId, HistoryError)> = stream::iter(latest)
        .map(|(v, p)| async move { s.upsert_last(v, &p).await.err().map(|e| (v, e)) })
        .buffer_unordered(concurrency)
        .filter_map(std::future::ready)
        .collect()
        .await;
    for (v, error) in failed {
        tracing::warn!(
            message = "could not move vehicle_last forward; the fixes are stored and it is repaired on the vehicle's next append",
            %error,
            vehicle = %v,
            shard
        );
        newest.remove(v);
    }
    Ok(flags)
}

/// Buckets layout: appends the new fixes to open chunks, one upsert per vehicle, bucket and
/// piece of at most `chunk_max_points`, up to `concurrency` at once. Every write runs to its
/// end before an error is reported, so none is left in flight.
async fn write_chunks(s: &Shared, fresh: &[&Fix]) -> Result<(), HistoryError> {
    let cap = s.config.chunk_max_points;
    let mut groups: BTreeMap<(&VehicleId, i64), Vec<Point>> = BTreeMap::new();
    for f in fresh {
        groups
            .entry((&f.vehicle_id, s.span.start_of(f.point.ts)))
            .or_default()
            .push(f.point);
    }
    let results: Vec<Result<(), HistoryError>> = stream::iter(groups)
        .map(|((v, start), mut points)| async move {
            points.sort_by_key(|p| p.ts);
            for piece in points.chunks(cap) {
                let Upsert { filter, update } = d::chunk_append(v, start, piece, cap);
                s.chunks
                    .update_one(filter, update)
                    .upsert(true)
                    .await
                    .map_err(mongo_err)?;
            }
            Ok(())
        })
        .buffer_unordered(s.config.concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}
