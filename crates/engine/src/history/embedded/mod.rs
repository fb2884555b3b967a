//! The embedded history store: Kickstand's own write-ahead log in front of a fjall LSM engine
//! (see docs/adr/0002-embedded-history-engine.md for why fjall, with the measurements).
//!
//! Write path, per shard writer:
//! 1. `append` drops duplicates (a fast check against the vehicle's newest `ts`, a full check
//!    only for fixes that are not newer), writes the new fixes as one binary WAL record and
//!    `fdatasync`s it: one sync per group of requests (group commit). Only then are the fixes
//!    visible in the shard's memtable and reported new.
//!    A group whose events were staged in the fleet store's journal (`append_linked`) starts
//!    its record with the journal record's number; the two syncs run at once, and recovery
//!    drops such a record unless the journal record is durable (the group was never acked).
//! 2. When the memtable holds `checkpoint_fixes` fixes, or `checkpoint_interval_ms` passed, the
//!    writer (at its next append or tick, so never before a linked record's events are durable)
//!    starts a new WAL segment and hands the frozen memtable to the flusher thread, which
//!    encodes one columnar chunk per `(vehicle, bucket)`, writes chunks, index entries, the
//!    latest fix per vehicle and the checkpointed segment number in one atomic batch, persists
//!    it, and only then deletes the old segments.
//! 3. Once a bucket has closed (`bucket end + compact_grace_secs`), `maintain` merges its
//!    chunks into one.
//!
//! Reads merge the engine with the memtables, so a fix is visible from the moment it is acked.
//!
//! **Architecture Invariant:** the writer thread never waits for the engine except when two
//! checkpoints are outstanding (then it waits, and the transport's queue fills: backpressure).

mod keys;
pub mod wal;

use super::{BucketFixes, HistoryError, HistoryStats, HistoryStore, HistoryWriter};
use crate::{FastMap, FastSet};
use crossbeam_channel::{Receiver, Sender};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use kickstand_domain::{BucketSpan, Fix, Point, VehicleId, codec};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Settings of the embedded store (`[history.embedded]`).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Fixes a shard keeps in its memtable (and WAL) before it checkpoints them into the
    /// engine. Bounds memory: a shard holds at most about four times this many fixes (the
    /// active and the frozen memtable, and a writer lets the active one reach twice this while a
    /// checkpoint is outstanding).
    pub checkpoint_fixes: usize,
    /// Longest time in milliseconds between checkpoints, so the WAL stays short and restarts
    /// stay quick.
    pub checkpoint_interval_ms: u64,
    /// Seconds after a bucket ends before its chunks are merged into one; late fixes that
    /// arrive after that still land in the bucket, as an extra chunk merged on the next pass.
    pub compact_grace_secs: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            checkpoint_fixes: 1_000_000,
            checkpoint_interval_ms: 10_000,
            compact_grace_secs: 600,
        }
    }
}

fn engine_err(e: fjall::Error) -> HistoryError {
    HistoryError::Engine(e.to_string())
}

/// Fixes held in memory by one shard for one vehicle, in arrival order (not necessarily sorted).
struct VehicleMem {
    points: Vec<Point>,
    /// Set when the table is frozen: these points include the newest fix ever acked for the
    /// vehicle, so the checkpoint writes it as the vehicle's latest without reading the old one.
    holds_newest: bool,
    /// True while every point arrived in `ts` order (the usual case): lookups binary-search.
    in_order: bool,
    /// The timestamps of `points`, built the first time a late fix of an out-of-order vehicle
    /// needs the duplicate check, so a device back-filling a buffer is not quadratic.
    ts_index: Option<FastSet<i64>>,
}

impl Default for VehicleMem {
    fn default() -> Self {
        VehicleMem {
            points: Vec::new(),
            holds_newest: false,
            in_order: true,
            ts_index: None,
        }
    }
}

impl VehicleMem {
    fn push(&mut self, p: Point) {
        if self.points.last().is_some_and(|last| p.ts < last.ts) {
            self.in_order = false;
        }
        if let Some(ix) = &mut self.ts_index {
            ix.insert(p.ts);
        }
        self.points.push(p);
    }

    fn contains(&self, ts: i64) -> bool {
        if self.in_order {
            self.points.binary_search_by_key(&ts, |p| p.ts).is_ok()
        } else if let Some(ix) = &self.ts_index {
            ix.contains(&ts)
        } else {
            self.points.iter().any(|p| p.ts == ts)
        }
    }

    /// Builds the timestamp index when lookups would otherwise scan many points.
    fn index_if_needed(&mut self) {
        if !self.in_order && self.ts_index.is_none() && self.points.len() > 32 {
            self.ts_index = Some(self.points.iter().map(|p| p.ts).collect());
        }
    }
}

/// Fixes held in memory by one shard, per vehicle.
type MemTable = FastMap<VehicleId, VehicleMem>;

/// The in-memory side of one shard, shared between its writer and the readers.
#[derive(Default)]
struct ShardMem {
    /// Fixes acked since the last checkpoint began.
    active: MemTable,
    /// Number of points in `active`.
    active_count: usize,
    /// The memtable being checkpointed by the flusher; readers still see it until it is in
    /// the engine.
    frozen: Option<Arc<MemTable>>,
}

struct Keyspaces {
    chunks: Keyspace,
    by_time: Keyspace,
    dirty: Keyspace,
    latest: Keyspace,
    meta: Keyspace,
}

struct Inner {
    db: Database,
    ks: Keyspaces,
    span: BucketSpan,
    config: EmbeddedConfig,
    /// Where shard WAL directories live.
    wal_dir: PathBuf,
    /// Next chunk sequence number.
    next_seq: AtomicU64,
    /// Memtables of live writers, by shard.
    mems: RwLock<HashMap<usize, Arc<RwLock<ShardMem>>>>,
    /// Serialises engine batches that read-modify-write shared keys (latest, dirty, seq).
    commit_lock: Mutex<()>,
    /// `bucket_start → vehicle → dirty` for the buckets known to have a time-index entry (and
    /// whether they are already marked dirty), so a checkpoint neither looks them up nor writes
    /// the same index keys again; only recent buckets are kept.
    indexed: Mutex<BTreeMap<i64, FastMap<VehicleId, bool>>>,
    /// Set when a checkpoint failed: writers refuse to ack more until restart.
    poisoned: AtomicBool,
    /// Work for the flusher thread. Each shard has at most one checkpoint outstanding, so
    /// the bound (256 jobs) is never reached with fewer shards than that.
    flush_tx: Sender<FlushJob>,
}

struct FlushJob {
    shard: usize,
    /// Segments up to and including this one are covered by `frozen`.
    upto_segment: u64,
    frozen: Arc<MemTable>,
    done: Option<Sender<Result<(), String>>>,
}

/// The embedded history store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedHistory {
    inner: Arc<Inner>,
}

impl EmbeddedHistory {
    /// Opens (or creates) the store in `dir`, replays any WAL left by a crash into the engine,
    /// and starts the flusher thread. Refuses a WAL with records linked to the fleet store's
    /// event journal (left by a crash of a server computing events): only
    /// [`open_with_events`](EmbeddedHistory::open_with_events) can tell which to keep.
    pub fn open(
        dir: &Path,
        span: BucketSpan,
        config: EmbeddedConfig,
    ) -> Result<Self, HistoryError> {
        Self::open_inner(dir, span, config, None)
    }

    /// [`open`](EmbeddedHistory::open), keeping a WAL record linked to event journal record
    /// `r` only if `events_durable(r)` (the fleet store's
    /// [`event_record_durable`](crate::fleet::FleetStore::event_record_durable)).
    pub fn open_with_events(
        dir: &Path,
        span: BucketSpan,
        config: EmbeddedConfig,
        events_durable: &dyn Fn(u64) -> bool,
    ) -> Result<Self, HistoryError> {
        Self::open_inner(dir, span, config, Some(events_durable))
    }

    fn open_inner(
        dir: &Path,
        span: BucketSpan,
        config: EmbeddedConfig,
        events_durable: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Self, HistoryError> {
        std::fs::create_dir_all(dir)?;
        // Durability comes from our own WAL and an explicit persist per checkpoint; the
        // engine's journal only needs to hold what is not yet flushed to tables, so it is kept
        // to fjall's minimum instead of 512 MiB.
        let db = Database::builder(dir.join("engine"))
            .max_journaling_size(64 * 1024 * 1024)
            .open()
            .map_err(engine_err)?;
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(engine_err)
        };
        // Chunk keys repeat the vehicle id and bucket start: LZ4 on every level halves their
        // cost, while the bit-packed values pass through it unchanged.
        let chunk_options = || {
            KeyspaceCreateOptions::default().data_block_compression_policy(
                fjall::config::CompressionPolicy::all(fjall::CompressionType::Lz4),
            )
        };
        let ks = Keyspaces {
            chunks: db.keyspace("chunks", chunk_options).map_err(engine_err)?,
            by_time: open("by_time")?,
            dirty: open("dirty")?,
            latest: open("latest")?,
            meta: open("meta")?,
        };
        let next_seq = match ks.meta.get(keys::SEQ_KEY).map_err(engine_err)? {
            Some(v) => u64::from_le_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| HistoryError::Corrupt("meta seq".into()))?,
            ),
            None => 1,
        };
        // The bucket span is part of the key layout: a store written with one span cannot be
        // read with another.
        match ks.meta.get(keys::SPAN_KEY).map_err(engine_err)? {
            Some(v) if v.as_ref() != span.ms().to_le_bytes() => {
                let stored = <[u8; 8]>::try_from(v.as_ref())
                    .map(i64::from_le_bytes)
                    .unwrap_or(-1);
                return Err(HistoryError::Config(format!(
                    "this history was written with buckets of {} s, not {} s; set bucket_secs back",
                    stored / 1000,
                    span.ms() / 1000
                )));
            }
            Some(_) => {}
            None => {
                ks.meta
                    .insert(keys::SPAN_KEY, span.ms().to_le_bytes())
                    .map_err(engine_err)?;
                db.persist(PersistMode::SyncAll).map_err(engine_err)?;
            }
        }
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&wal_dir)?;
        let (flush_tx, flush_rx) = crossbeam_channel::bounded(256);
        let inner = Arc::new(Inner {
            db,
            ks,
            span,
            config,
            wal_dir,
            next_seq: AtomicU64::new(next_seq),
            mems: RwLock::default(),
            commit_lock: Mutex::new(()),
            indexed: Mutex::default(),
            poisoned: AtomicBool::new(false),
            flush_tx,
        });
        inner.recover(events_durable)?;
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("history-flusher".into())
            .spawn(move || flusher(weak, flush_rx))?;
        Ok(EmbeddedHistory { inner })
    }
}

fn flusher(inner: std::sync::Weak<Inner>, rx: Receiver<FlushJob>) {
    while let Ok(job) = rx.recv() {
        let Some(inner) = inner.upgrade() else { return };
        let result = inner.checkpoint(job.shard, job.upto_segment, &job.frozen);
        match &result {
            Ok(()) => {
                if let Some(mem) = inner.mems.read().get(&job.shard) {
                    mem.write().frozen = None;
                }
                if let Err(error) = inner.drop_segments(job.shard, job.upto_segment) {
                    tracing::warn!(message = "could not delete checkpointed WAL segments", %error);
                }
            }
            Err(error) => {
                tracing::error!(message = "checkpoint failed; refusing writes until restart", %error, shard = job.shard);
                inner.poisoned.store(true, Ordering::SeqCst);
            }
        }
        if let Some(done) = job.done {
            let _ = done.send(result.map_err(|e| e.to_string()));
        }
    }
}

impl Inner {
    fn shard_dir(&self, shard: usize) -> PathBuf {
        self.wal_dir.join(format!("shard-{shard}"))
    }

    /// Replays every WAL segment newer than its shard's checkpoint into the engine, without the
    /// records whose events never became durable (`events_durable`; none may be linked without
    /// it).
    fn recover(&self, events_durable: Option<&dyn Fn(u64) -> bool>) -> Result<(), HistoryError> {
        let linked = std::cell::Cell::new(false);
        let keep = |record: u64| match events_durable {
            Some(durable) => durable(record),
            None => {
                linked.set(true);
                true
            }
        };
        for entry in std::fs::read_dir(&self.wal_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(shard) = name
                .to_str()
                .and_then(|n| n.strip_prefix("shard-"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            let done = self.checkpointed_segment(shard)?;
            let mut mem = MemTable::default();
            let mut last = done;
            let mut fixes = 0usize;
            let segments = wal::list_segments(&dir)?;
            for &seq in &segments {
                if seq <= done {
                    continue;
                }
                let replay = wal::replay(&dir, seq, &keep)?;
                if linked.get() {
                    return Err(HistoryError::Config(format!(
                        "the write-ahead log in {} holds fixes whose events went to the fleet \
                         store's journal (a server computing events stopped without closing); \
                         open it together with the fleet store (start `kickstand run` once) \
                         so only the fixes whose events are durable are kept",
                        dir.display()
                    )));
                }
                if !replay.dropped.is_empty() {
                    // Their groups were never acked: the devices send them again.
                    tracing::warn!(
                        message = "dropped write-ahead log records whose events never reached the event journal",
                        shard,
                        segment = seq,
                        records = replay.dropped.len(),
                    );
                }
                if replay.torn_tail {
                    if Some(&seq) == segments.last() {
                        tracing::warn!(
                            message = "the newest WAL segment ends in a torn record, which was never acked; ignoring it",
                            shard,
                            segment = seq
                        );
                    } else {
                        tracing::error!(message = "a WAL segment that is not the newest has a corrupt record: the fixes after it in that segment are lost; keep the file for inspection", shard, segment = seq, path = %wal::segment_path(&dir, seq).display());
                    }
                }
                fixes += replay.fixes.len();
                for fix in replay.fixes {
                    mem.entry(fix.vehicle_id).or_default().push(fix.point);
                }
                last = seq;
            }
            if last > done {
                tracing::info!(
                    message = "replayed write-ahead log",
                    shard,
                    fixes,
                    upto_segment = last
                );
                self.checkpoint(shard, last, &mem)?;
            }
            self.drop_segments(shard, last)?;
        }
        Ok(())
    }

    fn checkpointed_segment(&self, shard: usize) -> Result<u64, HistoryError> {
        Ok(
            match self
                .ks
                .meta
                .get(keys::ckpt_key(shard))
                .map_err(engine_err)?
            {
                Some(v) => u64::from_le_bytes(
                    v.as_ref()
                        .try_into()
                        .map_err(|_| HistoryError::Corrupt("meta ckpt".into()))?,
                ),
                None => 0,
            },
        )
    }

    fn drop_segments(&self, shard: usize, upto: u64) -> Result<(), HistoryError> {
        let dir = self.shard_dir(shard);
        let mut removed = false;
        for seq in wal::list_segments(&dir)? {
            if seq <= upto {
                match std::fs::remove_file(wal::segment_path(&dir, seq)) {
                    Ok(()) => removed = true,
                    // The flusher and a closing writer may both clean up.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if removed {
            wal::sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Writes a memtable into the engine as one atomic, persisted batch.
    fn checkpoint(
        &self,
        shard: usize,
        upto_segment: u64,
        mem: &MemTable,
    ) -> Result<(), HistoryError> {
        let started = Instant::now();
        let _guard = self.commit_lock.lock();
        let mut batch = self.db.batch();
        let mut encoded = Vec::new();
        let mut points = Vec::new();
        let mut fixes = 0usize;
        let mut indexed = self.indexed.lock();
        for (vehicle, vm) in mem {
            if vm.points.is_empty() {
                continue;
            }
            let id = vehicle.as_str();
            points.clear();
            points.extend_from_slice(&vm.points);
            points.sort_unstable_by_key(|p| p.ts);
            points.dedup_by_key(|p| p.ts);
            fixes += points.len();
            for run in points.chunk_by(|a, b| self.span.start_of(a.ts) == self.span.start_of(b.ts))
            {
                let start = self.span.start_of(run[0].ts);
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                encoded.clear();
                codec::encode(run, &mut encoded);
                batch.insert(
                    &self.ks.chunks,
                    keys::chunk_key(id, start, seq),
                    encoded.as_slice(),
                );
                let known = indexed.entry(start).or_default();
                match known.get_mut(vehicle) {
                    // Indexed and already marked for compaction: nothing to write.
                    Some(true) => {}
                    Some(dirty) => {
                        *dirty = true;
                        batch.insert(&self.ks.dirty, keys::time_key(start, id), []);
                    }
                    None => {
                        let tkey = keys::time_key(start, id);
                        let exists = self.ks.by_time.contains_key(&tkey).map_err(engine_err)?;
                        if exists {
                            batch.insert(&self.ks.dirty, tkey, []);
                        } else {
                            batch.insert(&self.ks.by_time, tkey, []);
                        }
                        known.insert(vehicle.clone(), exists);
                    }
                }
            }
            let newest = *points.last().expect("non-empty");
            let is_latest = vm.holds_newest || self.latest_of(id)?.is_none_or(|s| s.ts < newest.ts);
            if is_latest {
                encoded.clear();
                codec::encode(&[newest], &mut encoded);
                batch.insert(&self.ks.latest, id, encoded.as_slice());
            }
        }
        batch.insert(
            &self.ks.meta,
            keys::SEQ_KEY,
            self.next_seq.load(Ordering::Relaxed).to_le_bytes(),
        );
        batch.insert(
            &self.ks.meta,
            keys::ckpt_key(shard),
            upto_segment.to_le_bytes(),
        );
        // Keep the index cache to the buckets still receiving fixes.
        if let Some(&newest_start) = indexed.keys().next_back() {
            let keep_from = newest_start - 3 * self.span.ms();
            indexed.retain(|&start, _| start >= keep_from);
        }
        drop(indexed);
        batch.commit().map_err(engine_err)?;
        self.db.persist(PersistMode::SyncAll).map_err(engine_err)?;
        metrics::histogram!(crate::metrics::CHECKPOINT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(
            message = "checkpoint",
            shard,
            fixes,
            elapsed_ms = started.elapsed().as_millis() as u64
        );
        Ok(())
    }

    fn latest_of(&self, id: &str) -> Result<Option<Point>, HistoryError> {
        let Some(v) = self.ks.latest.get(id).map_err(engine_err)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(1);
        codec::decode(&v, &mut out).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
        Ok(out.pop())
    }

    /// Every stored point of one bucket (all its chunks), sorted by ts.
    fn stored_bucket(
        &self,
        id: &str,
        start: i64,
        out: &mut Vec<Point>,
    ) -> Result<(), HistoryError> {
        for item in self.ks.chunks.prefix(keys::bucket_prefix(id, start)) {
            let (_, value) = item.into_inner().map_err(engine_err)?;
            codec::decode(&value, out).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
        }
        Ok(())
    }

    /// Memtable points of `vehicle` with `from <= ts <= to`, from every shard.
    fn mem_points(&self, vehicle: &VehicleId, from: i64, to: i64, out: &mut Vec<Point>) {
        let mems: Vec<_> = self.mems.read().values().cloned().collect();
        for mem in mems {
            let mem = mem.read();
            let tables = std::iter::once(&mem.active).chain(mem.frozen.as_deref());
            for table in tables {
                if let Some(vm) = table.get(vehicle) {
                    out.extend(vm.points.iter().filter(|p| p.ts >= from && p.ts <= to));
                }
            }
        }
    }
}

fn sort_dedup(points: &mut Vec<Point>) {
    points.sort_by_key(|p| p.ts);
    points.dedup_by_key(|p| p.ts);
}

impl EmbeddedHistory {
    /// Flushes the engine's memtables and runs a full LSM compaction, so space held by merged
    /// chunks and dropped buckets is reclaimed now rather than in the background. For
    /// measurement and offline upkeep; blocks until done.
    pub fn settle(&self) -> Result<(), HistoryError> {
        let ks = &self.inner.ks;
        for k in [&ks.chunks, &ks.by_time, &ks.dirty, &ks.latest, &ks.meta] {
            k.rotate_memtable_and_wait().map_err(engine_err)?;
            k.major_compact().map_err(engine_err)?;
        }
        self.inner
            .db
            .persist(PersistMode::SyncAll)
            .map_err(engine_err)?;
        Ok(())
    }
}

impl HistoryStore for EmbeddedHistory {
    fn writer(&self, shard: usize) -> Result<Box<dyn HistoryWriter>, HistoryError> {
        let inner = &self.inner;
        let dir = inner.shard_dir(shard);
        std::fs::create_dir_all(&dir)?;
        wal::sync_dir(&inner.wal_dir)?;
        let last = wal::list_segments(&dir)?.last().copied().unwrap_or(0);
        let seq = last.max(inner.checkpointed_segment(shard)?) + 1;
        let segment = wal::Segment::create(&dir, seq)?;
        let mem = Arc::new(RwLock::new(ShardMem::default()));
        inner.mems.write().insert(shard, mem.clone());
        Ok(Box::new(ShardWriter {
            inner: inner.clone(),
            shard,
            dir,
            segment,
            mem,
            newest: FastMap::default(),
            record: Vec::with_capacity(1 << 20),
            fresh: Vec::new(),
            fresh_set: None,
            last_checkpoint: Instant::now(),
            stored_cache: HashMap::new(),
        }))
    }

    fn track(&self, vehicle: &VehicleId, from: i64, to: i64) -> Result<Vec<Point>, HistoryError> {
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        // Memtables first, then the engine: a checkpoint that moves points between the two
        // in the meantime can only show a point twice (removed below), never lose it.
        self.inner.mem_points(vehicle, from, to, &mut out);
        let id = vehicle.as_str();
        let span = self.inner.span;
        let lo = keys::bucket_prefix(id, span.start_of(from));
        let mut hi = keys::bucket_prefix(id, span.start_of(to));
        hi.extend_from_slice(&[0xff; 8]);
        for item in self.inner.ks.chunks.range(lo..=hi) {
            let (_, value) = item.into_inner().map_err(engine_err)?;
            codec::decode(&value, &mut out).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
        }
        out.retain(|p| p.ts >= from && p.ts <= to);
        sort_dedup(&mut out);
        Ok(out)
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
        let inner = &self.inner;
        let span = inner.span;
        // Memtable points in range, keyed like the time index so the two merge in order.
        let mut pending: BTreeMap<(i64, VehicleId), Vec<Point>> = BTreeMap::new();
        {
            let mems: Vec<_> = inner.mems.read().values().cloned().collect();
            for mem in mems {
                let mem = mem.read();
                for table in std::iter::once(&mem.active).chain(mem.frozen.as_deref()) {
                    for (vehicle, vm) in table {
                        for p in vm.points.iter().filter(|p| p.ts >= from && p.ts <= to) {
                            pending
                                .entry((span.start_of(p.ts), vehicle.clone()))
                                .or_default()
                                .push(*p);
                        }
                    }
                }
            }
        }
        let lo = keys::ts_bytes(span.start_of(from)).to_vec();
        let hi = keys::ts_bytes(span.start_of(to).saturating_add(1)).to_vec();
        let mut emit = |key: (i64, VehicleId), mut points: Vec<Point>| -> bool {
            points.retain(|p| p.ts >= from && p.ts <= to);
            sort_dedup(&mut points);
            if points.is_empty() {
                return true;
            }
            visit(BucketFixes {
                vehicle_id: key.1,
                bucket_start: key.0,
                points,
            })
        };
        for item in inner.ks.by_time.range(lo..hi) {
            let key = item.key().map_err(engine_err)?;
            let (start, id) = keys::parse_time_key(&key)
                .ok_or_else(|| HistoryError::Corrupt("time index key".into()))?;
            let vehicle =
                VehicleId::new(id).map_err(|_| HistoryError::Corrupt("time index id".into()))?;
            // Memtable-only buckets that sort before this one go first.
            while let Some(entry) = pending.first_entry() {
                if *entry.key() >= (start, vehicle.clone()) {
                    break;
                }
                let (k, pts) = entry.remove_entry();
                if !emit(k, pts) {
                    return Ok(());
                }
            }
            let mut points = pending
                .remove(&(start, vehicle.clone()))
                .unwrap_or_default();
            inner.stored_bucket(id, start, &mut points)?;
            if !emit((start, vehicle), points) {
                return Ok(());
            }
        }
        for (k, pts) in pending {
            if !emit(k, pts) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn for_each_latest(&self, visit: &mut dyn FnMut(VehicleId, Point)) -> Result<(), HistoryError> {
        let mut out = Vec::with_capacity(1);
        for item in self.inner.ks.latest.iter() {
            let (key, value) = item.into_inner().map_err(engine_err)?;
            let id = std::str::from_utf8(&key)
                .ok()
                .and_then(|s| VehicleId::new(s).ok())
                .ok_or_else(|| HistoryError::Corrupt("latest key".into()))?;
            out.clear();
            codec::decode(&value, &mut out).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
            if let Some(p) = out.pop() {
                visit(id, p);
            }
        }
        Ok(())
    }

    fn drop_before(&self, cutoff_ms: i64) -> Result<u64, HistoryError> {
        let inner = &self.inner;
        let span = inner.span;
        // Buckets that end at or before the cutoff start at or before cutoff - span.
        let last_start = cutoff_ms.saturating_sub(span.ms());
        let hi = keys::ts_bytes(last_start.saturating_add(1)).to_vec();
        let victims: Vec<Vec<u8>> = inner
            .ks
            .by_time
            .range(..hi)
            .map(|g| g.key().map(|k| k.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(engine_err)?;
        let mut dropped = 0;
        for keys_chunk in victims.chunks(1024) {
            let _guard = inner.commit_lock.lock();
            let mut batch = inner.db.batch();
            for tkey in keys_chunk {
                let (start, id) = keys::parse_time_key(tkey)
                    .ok_or_else(|| HistoryError::Corrupt("time index key".into()))?;
                for item in inner.ks.chunks.prefix(keys::bucket_prefix(id, start)) {
                    batch.remove(&inner.ks.chunks, item.key().map_err(engine_err)?);
                }
                batch.remove(&inner.ks.by_time, tkey.as_slice());
                batch.remove(&inner.ks.dirty, tkey.as_slice());
                dropped += 1;
            }
            batch.commit().map_err(engine_err)?;
            inner.db.persist(PersistMode::SyncAll).map_err(engine_err)?;
        }
        Ok(dropped)
    }

    fn maintain(&self, now_ms: i64) -> Result<u64, HistoryError> {
        let inner = &self.inner;
        let span = inner.span;
        let grace = inner.config.compact_grace_secs as i64 * 1000;
        // A bucket is closed once now >= start + span + grace.
        let closed_below = now_ms.saturating_sub(span.ms() + grace);
        let hi = keys::ts_bytes(closed_below.saturating_add(1)).to_vec();
        let dirty: Vec<Vec<u8>> = inner
            .ks
            .dirty
            .range(..hi)
            .map(|g| g.key().map(|k| k.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(engine_err)?;
        let mut compacted = 0;
        let mut points = Vec::new();
        let mut encoded = Vec::new();
        for tkey in dirty {
            let (start, id) = keys::parse_time_key(&tkey)
                .ok_or_else(|| HistoryError::Corrupt("dirty key".into()))?;
            let _guard = inner.commit_lock.lock();
            let mut batch = inner.db.batch();
            points.clear();
            for item in inner.ks.chunks.prefix(keys::bucket_prefix(id, start)) {
                let (key, value) = item.into_inner().map_err(engine_err)?;
                codec::decode(&value, &mut points)
                    .map_err(|e| HistoryError::Corrupt(e.to_string()))?;
                batch.remove(&inner.ks.chunks, key);
            }
            sort_dedup(&mut points);
            encoded.clear();
            codec::encode(&points, &mut encoded);
            batch.insert(
                &inner.ks.chunks,
                keys::chunk_key(id, start, 0),
                encoded.as_slice(),
            );
            batch.remove(&inner.ks.dirty, tkey.as_slice());
            batch.commit().map_err(engine_err)?;
            // The next chunk of this bucket (a late fix) must mark it dirty again.
            if let (Some(vehicles), Ok(v)) =
                (inner.indexed.lock().get_mut(&start), VehicleId::new(id))
                && let Some(dirty) = vehicles.get_mut(&v)
            {
                *dirty = false;
            }
            compacted += 1;
        }
        if compacted > 0 {
            inner.db.persist(PersistMode::SyncAll).map_err(engine_err)?;
        }
        Ok(compacted)
    }

    fn is_healthy(&self) -> bool {
        !self.inner.poisoned.load(Ordering::SeqCst)
    }

    fn stats(&self) -> Result<HistoryStats, HistoryError> {
        let engine = self.inner.db.disk_space().map_err(engine_err)?;
        let mut wal_bytes = 0;
        for shard in std::fs::read_dir(&self.inner.wal_dir)? {
            let shard = shard?;
            if shard.file_type()?.is_dir() {
                for seg in std::fs::read_dir(shard.path())? {
                    wal_bytes += seg?.metadata()?.len();
                }
            }
        }
        Ok(HistoryStats {
            disk_bytes: engine + wal_bytes,
            buckets: self.inner.ks.by_time.approximate_len() as u64,
        })
    }
}

/// The writer of one shard. Owned by one worker thread.
struct ShardWriter {
    inner: Arc<Inner>,
    shard: usize,
    dir: PathBuf,
    /// The WAL segment being appended to.
    segment: wal::Segment,
    mem: Arc<RwLock<ShardMem>>,
    /// The newest `ts` known stored per vehicle of this shard: a fix newer than it cannot be
    /// a duplicate, which spares the full check for nearly every fix.
    newest: FastMap<VehicleId, i64>,
    /// The WAL record being built (reused, so appends do not allocate).
    record: Vec<u8>,
    /// Indices into the current append's fixes of the new ones.
    fresh: Vec<usize>,
    /// The new fixes of the current append as `(vehicle, ts)`, built only once a fix needs the
    /// full duplicate check (rare), so repeated batches are not quadratic.
    fresh_set: Option<FastSet<(VehicleId, i64)>>,
    last_checkpoint: Instant,
    /// Stored timestamps of buckets loaded for the full duplicate check, per append.
    stored_cache: HashMap<(VehicleId, i64), HashSet<i64>>,
}

impl ShardWriter {
    /// The newest known ts of `vehicle`, loading it from the engine the first time.
    fn newest_of(&mut self, vehicle: &VehicleId) -> Result<Option<i64>, HistoryError> {
        if let Some(ts) = self.newest.get(vehicle) {
            return Ok(Some(*ts));
        }
        let stored = self.inner.latest_of(vehicle.as_str())?.map(|p| p.ts);
        if let Some(ts) = stored {
            self.newest.insert(vehicle.clone(), ts);
        }
        Ok(stored)
    }

    /// The full duplicate check: is `(vehicle, ts)` in the memtables, the engine, or among the
    /// new fixes of this append so far?
    fn is_stored(&mut self, fixes: &[Fix], fix: &Fix) -> Result<bool, HistoryError> {
        let (vehicle, ts) = (&fix.vehicle_id, fix.point.ts);
        let fresh = &self.fresh;
        let set = self.fresh_set.get_or_insert_with(|| {
            fresh
                .iter()
                .map(|&i| (fixes[i].vehicle_id.clone(), fixes[i].point.ts))
                .collect()
        });
        if set.contains(&(vehicle.clone(), ts)) {
            return Ok(true);
        }
        {
            let mut mem = self.mem.write();
            if let Some(vm) = mem.active.get_mut(vehicle) {
                vm.index_if_needed();
                if vm.contains(ts) {
                    return Ok(true);
                }
            }
            if let Some(frozen) = &mem.frozen
                && frozen.get(vehicle).is_some_and(|vm| vm.contains(ts))
            {
                return Ok(true);
            }
        }
        let start = self.inner.span.start_of(ts);
        let key = (vehicle.clone(), start);
        if !self.stored_cache.contains_key(&key) {
            let mut pts = Vec::new();
            self.inner
                .stored_bucket(vehicle.as_str(), start, &mut pts)?;
            self.stored_cache
                .insert(key.clone(), pts.iter().map(|p| p.ts).collect());
        }
        Ok(self.stored_cache[&key].contains(&ts))
    }

    fn rotate_and_checkpoint(&mut self, wait: bool) -> Result<(), HistoryError> {
        // A poisoned writer's memtable may hold a record recovery must drop (`refuse`).
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return Err(HistoryError::Poisoned);
        }
        // One outstanding checkpoint per shard; a second must wait for the first.
        let outstanding = self.mem.read().frozen.is_some();
        if outstanding {
            if !wait && self.mem.read().active_count < 2 * self.inner.config.checkpoint_fixes {
                return Ok(());
            }
            let started = Instant::now();
            while self.mem.read().frozen.is_some() {
                if self.inner.poisoned.load(Ordering::SeqCst) {
                    return Err(HistoryError::Poisoned);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            metrics::histogram!(crate::metrics::CHECKPOINT_STALL_SECONDS)
                .record(started.elapsed().as_secs_f64());
        }
        let old = self.segment.seq;
        let frozen = {
            let mut mem = self.mem.write();
            if mem.active_count == 0 {
                self.last_checkpoint = Instant::now();
                return Ok(());
            }
            let mut table = std::mem::take(&mut mem.active);
            for (vehicle, vm) in &mut table {
                let max = vm.points.iter().map(|p| p.ts).max();
                vm.holds_newest = max.is_some() && max == self.newest.get(vehicle).copied();
            }
            let table = Arc::new(table);
            mem.active_count = 0;
            mem.frozen = Some(table.clone());
            table
        };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let handed_over = wal::Segment::create(&self.dir, old + 1)
            .map_err(HistoryError::from)
            .and_then(|segment| {
                self.segment = segment;
                self.inner
                    .flush_tx
                    .send(FlushJob {
                        shard: self.shard,
                        upto_segment: old,
                        frozen,
                        done: wait.then_some(done_tx),
                    })
                    .map_err(|_| HistoryError::Engine("flusher thread is gone".into()))
            });
        if let Err(e) = handed_over {
            // The frozen table will never be checkpointed: stop acking (the WAL keeps it safe
            // for the next start) rather than wait for it forever.
            self.inner.poisoned.store(true, Ordering::SeqCst);
            return Err(e);
        }
        if wait {
            done_rx
                .recv()
                .map_err(|_| HistoryError::Engine("flusher thread is gone".into()))?
                .map_err(HistoryError::Engine)?;
        }
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        let mem = self.mem.read();
        mem.active_count >= self.inner.config.checkpoint_fixes
            || (mem.active_count > 0
                && self.last_checkpoint.elapsed()
                    >= Duration::from_millis(self.inner.config.checkpoint_interval_ms))
    }
}

impl ShardWriter {
    fn append_record(
        &mut self,
        fixes: &[Fix],
        is_new: &mut Vec<bool>,
        link: Option<u64>,
    ) -> Result<(), HistoryError> {
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return Err(HistoryError::Poisoned);
        }
        // Checkpoint what earlier appends wrote before this one, never this one's fixes: a
        // linked record's events are durable only once the caller says so after we return.
        if self.checkpoint_due() {
            self.rotate_and_checkpoint(false)?;
        }
        self.fresh.clear();
        self.fresh_set = None;
        self.stored_cache.clear();
        wal::begin_record(&mut self.record);
        if let Some(record) = link {
            wal::put_link(&mut self.record, record);
        }
        let base = is_new.len();
        for (i, fix) in fixes.iter().enumerate() {
            let newest = self.newest_of(&fix.vehicle_id)?;
            let new = match newest {
                Some(n) if fix.point.ts <= n => !self.is_stored(fixes, fix)?,
                _ => true,
            };
            if new {
                wal::put_fix(&mut self.record, fix);
                self.fresh.push(i);
                if let Some(set) = &mut self.fresh_set {
                    set.insert((fix.vehicle_id.clone(), fix.point.ts));
                }
                match self.newest.get_mut(&fix.vehicle_id) {
                    Some(n) => *n = (*n).max(fix.point.ts),
                    None => {
                        self.newest.insert(fix.vehicle_id.clone(), fix.point.ts);
                    }
                }
            }
            is_new.push(new);
        }
        if !self.fresh.is_empty() {
            let started = Instant::now();
            if let Err(e) = self.segment.append_durable(&mut self.record) {
                // What reached the file is unknown: refuse to go on rather than ack on top of it.
                self.inner.poisoned.store(true, Ordering::SeqCst);
                is_new.truncate(base);
                return Err(e.into());
            }
            metrics::histogram!(crate::metrics::WAL_SYNC_SECONDS)
                .record(started.elapsed().as_secs_f64());
            let mut mem = self.mem.write();
            for &i in &self.fresh {
                let fix = &fixes[i];
                match mem.active.get_mut(&fix.vehicle_id) {
                    Some(vm) => vm.push(fix.point),
                    None => {
                        let mut vm = VehicleMem::default();
                        vm.push(fix.point);
                        mem.active.insert(fix.vehicle_id.clone(), vm);
                    }
                }
            }
            mem.active_count += self.fresh.len();
        }
        Ok(())
    }
}

impl HistoryWriter for ShardWriter {
    fn append(&mut self, fixes: &[Fix], is_new: &mut Vec<bool>) -> Result<(), HistoryError> {
        self.append_record(fixes, is_new, None)
    }

    fn links_events(&self) -> bool {
        true
    }

    fn append_linked(
        &mut self,
        fixes: &[Fix],
        is_new: &mut Vec<bool>,
        events_record: u64,
    ) -> Result<(), HistoryError> {
        self.append_record(fixes, is_new, Some(events_record))
    }

    fn refuse(&mut self) {
        self.inner.poisoned.store(true, Ordering::SeqCst);
    }

    fn tick(&mut self) -> Result<(), HistoryError> {
        if self.checkpoint_due() {
            self.rotate_and_checkpoint(false)?;
        }
        Ok(())
    }

    fn close(mut self: Box<Self>) -> Result<(), HistoryError> {
        self.rotate_and_checkpoint(true)?;
        // Nothing is left in the memtable; the empty segment just created can go.
        let seq = self.segment.seq;
        self.inner.drop_segments(self.shard, seq)?;
        self.inner.mems.write().remove(&self.shard);
        Ok(())
    }
}
