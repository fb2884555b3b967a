//! The embedded fleet store's by-vehicle access path: an LSM index (fjall) beside `fleet.db`.
//!
//! Events arrive in time order but for vehicles in random order, so a B-tree index on
//! `(vehicle_id, seq)` dirties one random page per event: with a fleet reporting at 1 Hz that
//! page-sized write to SQLite's WAL (and back at the checkpoint) was most of what events cost
//! (BENCHMARKS.md, "Fleet intelligence"). An LSM tree takes the same keys as sequential
//! appends. The index is **derived data**: `fleet.db` stays the record, the index remembers
//! the highest sequence number it holds (`indexed`, in the same atomic batch as the keys),
//! and on open it re-reads whatever `fleet.db` has beyond that. So it needs no fsync of its
//! own, and deleting the directory only costs a rebuild.
//!
//! Keys: `by_vehicle_h` holds `fnv1a64(vehicle_id), seq` (both u64 big-endian), so a prefix
//! scan lists one vehicle's events in sequence order; fixed 16-byte keys that differ early keep
//! the memtable's comparisons cheap (the first layout, `vehicle_id 0x00 seq`, spent most of the
//! writer's index time comparing long shared prefixes). Two vehicles whose ids hash alike share
//! a prefix, so [`VehicleIndex::seqs`] may list another vehicle's events: callers check the
//! vehicle of what they read. `last_state` maps a vehicle id to the sequence number of its
//! newest `state_changed` or `stale` event.
//!
//! By-vehicle keys do not go through fjall's memtable: inserting them one by one into its skip
//! list, at random positions, was the largest single cost of storing events (BENCHMARKS.md,
//! "Fleet intelligence: events off the skip list, zone memos"). They gather in a buffer instead and
//! are written, sorted, as a new table ([`Keyspace::start_ingestion`]) every
//! [`INGEST_EVERY`] keys; readers look at the tables and the buffer under one lock. `indexed`
//! on disk moves with each ingestion, so after a crash the buffered keys are read again from
//! `fleet.db` (at most `INGEST_EVERY` events).

use super::{FleetError, FleetResult};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use parking_lot::Mutex;
use std::path::Path;

/// By-vehicle keys buffered before they are written as one sorted table.
const INGEST_EVERY: usize = 131_072;

/// The highest sequence number in `by_vehicle_h` (the first layout's `indexed` counted for
/// `by_vehicle`, which is deleted when found).
const INDEXED: &[u8] = b"indexed_h";

pub(crate) struct VehicleIndex {
    db: Database,
    by_vehicle: Keyspace,
    last_state: Keyspace,
    meta: Keyspace,
    recent: Mutex<Recent>,
    ingest_every: usize,
}

/// By-vehicle keys not written to a table yet, in sequence order; every one of them is newer
/// than every key in the tables.
#[derive(Default)]
struct Recent {
    keys: Vec<[u8; 16]>,
    /// `last_state` entries not written yet: each vehicle's newest.
    states: std::collections::HashMap<Box<str>, u64>,
    /// The sequence number of the newest key added (buffered or not).
    last: u64,
}

/// One stored event, as the index needs it.
pub(crate) struct Entry<'a> {
    pub seq: u64,
    pub vehicle_id: &'a str,
    /// `state_changed` or `stale`.
    pub is_state: bool,
}

fn err(e: fjall::Error) -> FleetError {
    FleetError(format!("vehicle index: {e}"))
}

fn key(vehicle: &str, seq: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&kickstand_domain::fnv1a64(vehicle.as_bytes()).to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

impl VehicleIndex {
    pub fn open(dir: &Path) -> FleetResult<VehicleIndex> {
        VehicleIndex::open_with(dir, INGEST_EVERY)
    }

    fn open_with(dir: &Path, ingest_every: usize) -> FleetResult<VehicleIndex> {
        let db = Database::builder(dir)
            .max_journaling_size(64 * 1024 * 1024)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => FleetError(format!(
                    "{} is in use by another process: the embedded fleet store belongs to one \
                     process (use [fleet] store = \"postgres\" to share one)",
                    dir.display()
                )),
                e => err(e),
            })?;
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(err)
        };
        if db.keyspace_exists("by_vehicle") {
            let old = open("by_vehicle")?;
            db.delete_keyspace(old).map_err(err)?;
        }
        // Its keys arrive as ingested tables (`ingest`); only retention's removals go through
        // the memtable.
        let by_vehicle = open("by_vehicle_h")?;
        let meta = open("meta")?;
        let stored = match meta.get(INDEXED).map_err(err)? {
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        Ok(VehicleIndex {
            by_vehicle,
            last_state: open("last_state")?,
            meta,
            db,
            recent: Mutex::new(Recent {
                last: stored,
                ..Recent::default()
            }),
            ingest_every,
        })
    }

    /// The highest sequence number indexed (buffered keys included).
    pub fn indexed(&self) -> FleetResult<u64> {
        Ok(self.recent.lock().last)
    }

    /// Adds entries (in sequence order, after [`VehicleIndex::indexed`]).
    pub fn add(&self, entries: &[Entry<'_>]) -> FleetResult<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut recent = self.recent.lock();
        recent
            .keys
            .extend(entries.iter().map(|e| key(e.vehicle_id, e.seq)));
        for e in entries.iter().filter(|e| e.is_state) {
            match recent.states.get_mut(e.vehicle_id) {
                Some(seq) => *seq = e.seq,
                None => {
                    recent.states.insert(e.vehicle_id.into(), e.seq);
                }
            }
        }
        recent.last = last.seq;
        if recent.keys.len() >= self.ingest_every {
            // A failure keeps the keys buffered; the next add tries again.
            self.ingest(&mut recent)?;
        }
        Ok(())
    }

    /// Writes the buffered keys as sorted tables (an ingested table shadows older values of
    /// its keys, as `last_state` needs), then moves `indexed` on disk.
    fn ingest(&self, recent: &mut Recent) -> FleetResult<()> {
        if recent.keys.is_empty() && recent.states.is_empty() {
            return Ok(());
        }
        recent.keys.sort_unstable();
        recent.keys.dedup();
        let mut ingestion = self.by_vehicle.start_ingestion().map_err(err)?;
        for k in &recent.keys {
            ingestion.write(*k, []).map_err(err)?;
        }
        ingestion.finish().map_err(err)?;
        let mut states: Vec<(&str, u64)> = recent.states.iter().map(|(v, s)| (&**v, *s)).collect();
        states.sort_unstable();
        let mut ingestion = self.last_state.start_ingestion().map_err(err)?;
        for (vehicle, seq) in states {
            ingestion.write(vehicle, seq.to_be_bytes()).map_err(err)?;
        }
        ingestion.finish().map_err(err)?;
        recent.states.clear();
        // Keys ingested again after a crash before this line are written twice, harmlessly.
        self.meta
            .insert(INDEXED, recent.last.to_be_bytes())
            .map_err(err)?;
        recent.keys.clear();
        Ok(())
    }

    /// Sequence numbers of `vehicle`'s events above `after`, in order, at most `limit`.
    pub fn seqs(&self, vehicle: &str, after: u64, limit: usize) -> FleetResult<Vec<u64>> {
        let from = key(vehicle, after.saturating_add(1));
        let to = key(vehicle, u64::MAX);
        // Held throughout, so no key moves from the buffer to a table while it is read.
        let recent = self.recent.lock();
        let mut out = Vec::new();
        for item in self.by_vehicle.range(from..=to) {
            if out.len() >= limit {
                return Ok(out);
            }
            let k = item.key().map_err(err)?;
            if let Some(seq) = seq_of(&k) {
                out.push(seq);
            }
        }
        // The buffer is newer than every table and in sequence order.
        out.extend(
            recent
                .keys
                .iter()
                .filter(|k| **k >= from && **k <= to)
                .filter_map(|k| seq_of(k))
                .take(limit - out.len()),
        );
        Ok(out)
    }

    /// The sequence number of `vehicle`'s newest `state_changed` or `stale` event.
    pub fn last_state(&self, vehicle: &str) -> FleetResult<Option<u64>> {
        let recent = self.recent.lock();
        if let Some(seq) = recent.states.get(vehicle) {
            return Ok(Some(*seq));
        }
        Ok(self
            .last_state
            .get(vehicle)
            .map_err(err)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Removes the entries of events below `min_seq` (dropped by retention).
    pub fn drop_below(&self, min_seq: u64) -> FleetResult<usize> {
        let mut recent = self.recent.lock();
        let before = recent.keys.len();
        recent
            .keys
            .retain(|k| seq_of(k).is_some_and(|s| s >= min_seq));
        let mut n = before - recent.keys.len();
        recent.states.retain(|_, seq| *seq >= min_seq);
        let mut batch = self.db.batch();
        for item in self.by_vehicle.iter() {
            let k = item.key().map_err(err)?;
            if seq_of(&k).is_some_and(|s| s < min_seq) {
                batch.remove(&self.by_vehicle, k.to_vec());
                n += 1;
            }
        }
        for item in self.last_state.iter() {
            let (k, v) = item.into_inner().map_err(err)?;
            let seq = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if seq < min_seq {
                batch.remove(&self.last_state, k.to_vec());
            }
        }
        batch.commit().map_err(err)?;
        Ok(n)
    }
}

impl Drop for VehicleIndex {
    /// Writes the buffer, so the next open need not read those events again.
    fn drop(&mut self) {
        let mut recent = std::mem::take(&mut *self.recent.lock());
        if let Err(error) = self.ingest(&mut recent) {
            tracing::warn!(message = "vehicle index not written at close; rebuilt at the next open", %error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_vehicle_then_seq_and_prefixes_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let ix = VehicleIndex::open(dir.path()).unwrap();
        ix.add(&[
            Entry {
                seq: 1,
                vehicle_id: "A",
                is_state: true,
            },
            Entry {
                seq: 2,
                vehicle_id: "AB",
                is_state: false,
            },
            Entry {
                seq: 300,
                vehicle_id: "A",
                is_state: false,
            },
            Entry {
                seq: 70_000,
                vehicle_id: "A",
                is_state: true,
            },
        ])
        .unwrap();
        assert_eq!(ix.seqs("A", 0, 10).unwrap(), vec![1, 300, 70_000]);
        assert_eq!(ix.seqs("A", 1, 10).unwrap(), vec![300, 70_000]);
        assert_eq!(ix.seqs("A", 0, 2).unwrap(), vec![1, 300]);
        assert_eq!(ix.seqs("AB", 0, 10).unwrap(), vec![2]);
        assert_eq!(ix.seqs("B", 0, 10).unwrap(), Vec::<u64>::new());
        assert_eq!(ix.last_state("A").unwrap(), Some(70_000));
        assert_eq!(ix.last_state("AB").unwrap(), None);
        assert_eq!(ix.indexed().unwrap(), 70_000);
        assert_eq!(ix.drop_below(300).unwrap(), 2);
        assert_eq!(ix.seqs("A", 0, 10).unwrap(), vec![300, 70_000]);
        assert_eq!(ix.seqs("AB", 0, 10).unwrap(), Vec::<u64>::new());
        assert_eq!(ix.last_state("A").unwrap(), Some(70_000));
    }

    /// Keys written as a table once 5 are buffered, and the rest buffered, answer like one index, across
    /// retention and a reopen.
    #[test]
    fn ingested_tables_and_the_buffer_read_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |seq: u64| Entry {
            seq,
            vehicle_id: if seq.is_multiple_of(3) { "B" } else { "A" },
            is_state: seq.is_multiple_of(5),
        };
        {
            let ix = VehicleIndex::open_with(dir.path(), 5).unwrap();
            for chunk in (1..=10).collect::<Vec<u64>>().chunks(3) {
                let entries: Vec<_> = chunk.iter().map(|s| entry(*s)).collect();
                ix.add(&entries).unwrap();
            }
            // One table (keys 1-6), keys 7-10 buffered.
            assert_eq!(ix.recent.lock().keys.len(), 4);
            assert_eq!(ix.indexed().unwrap(), 10);
            assert_eq!(ix.seqs("A", 0, 100).unwrap(), vec![1, 2, 4, 5, 7, 8, 10]);
            assert_eq!(ix.seqs("A", 5, 2).unwrap(), vec![7, 8]);
            assert_eq!(ix.seqs("A", 8, 100).unwrap(), vec![10]);
            assert_eq!(ix.seqs("B", 0, 100).unwrap(), vec![3, 6, 9]);
            assert_eq!(ix.last_state("A").unwrap(), Some(10));
            assert_eq!(ix.drop_below(4).unwrap(), 3);
            assert_eq!(ix.seqs("A", 0, 100).unwrap(), vec![4, 5, 7, 8, 10]);
            ix.add(&[entry(11)]).unwrap();
        }
        // Closing wrote the buffer.
        let ix = VehicleIndex::open_with(dir.path(), 4).unwrap();
        assert_eq!(ix.indexed().unwrap(), 11);
        assert!(ix.recent.lock().keys.is_empty());
        assert_eq!(ix.seqs("A", 0, 100).unwrap(), vec![4, 5, 7, 8, 10, 11]);
        assert_eq!(ix.seqs("B", 0, 100).unwrap(), vec![6, 9]);
    }
}
