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

use super::{FleetError, FleetResult};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use std::path::Path;

/// The highest sequence number in `by_vehicle_h` (the first layout's `indexed` counted for
/// `by_vehicle`, which is deleted when found).
const INDEXED: &[u8] = b"indexed_h";

pub(crate) struct VehicleIndex {
    db: Database,
    by_vehicle: Keyspace,
    last_state: Keyspace,
    meta: Keyspace,
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

fn vehicle_hash(vehicle: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vehicle.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn key(vehicle: &str, seq: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&vehicle_hash(vehicle).to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

impl VehicleIndex {
    pub fn open(dir: &Path) -> FleetResult<VehicleIndex> {
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
        // A small memtable: inserts come at random keys, and a skip list that fits the caches
        // takes them faster; flushing 8 MiB runs is cheap background work.
        let by_vehicle = db
            .keyspace("by_vehicle_h", || {
                KeyspaceCreateOptions::default().max_memtable_size(8 * 1024 * 1024)
            })
            .map_err(err)?;
        Ok(VehicleIndex {
            by_vehicle,
            last_state: open("last_state")?,
            meta: open("meta")?,
            db,
        })
    }

    /// The highest sequence number indexed.
    pub fn indexed(&self) -> FleetResult<u64> {
        Ok(match self.meta.get(INDEXED).map_err(err)? {
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        })
    }

    /// Adds entries (in sequence order) and moves `indexed` to the last one, atomically.
    pub fn add(&self, entries: &[Entry<'_>]) -> FleetResult<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut batch = self.db.batch();
        // In key order: each insert searches the memtable near the previous one, in cache.
        let mut keys: Vec<[u8; 16]> = entries.iter().map(|e| key(e.vehicle_id, e.seq)).collect();
        keys.sort_unstable();
        for k in keys {
            batch.insert(&self.by_vehicle, k, []);
        }
        for e in entries {
            if e.is_state {
                batch.insert(&self.last_state, e.vehicle_id, e.seq.to_be_bytes());
            }
        }
        batch.insert(&self.meta, INDEXED, last.seq.to_be_bytes());
        batch.commit().map_err(err)
    }

    /// Sequence numbers of `vehicle`'s events above `after`, in order, at most `limit`.
    pub fn seqs(&self, vehicle: &str, after: u64, limit: usize) -> FleetResult<Vec<u64>> {
        let from = key(vehicle, after.saturating_add(1));
        let to = key(vehicle, u64::MAX);
        let mut out = Vec::new();
        for item in self.by_vehicle.range(from..=to) {
            if out.len() >= limit {
                break;
            }
            let k = item.key().map_err(err)?;
            if let Some(seq) = seq_of(&k) {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// The sequence number of `vehicle`'s newest `state_changed` or `stale` event.
    pub fn last_state(&self, vehicle: &str) -> FleetResult<Option<u64>> {
        Ok(self
            .last_state
            .get(vehicle)
            .map_err(err)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Removes the entries of events below `min_seq` (dropped by retention).
    pub fn drop_below(&self, min_seq: u64) -> FleetResult<usize> {
        let mut batch = self.db.batch();
        let mut n = 0;
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
}
