//! The embedded fleet store: one SQLite file (`fleet.db` in the data directory) in WAL mode,
//! with an event journal beside it (`fleet.events/`, see [`journal`](super::journal)).
//!
//! Durability: an event is on disk, in the journal, before the fixes that caused it are acked,
//! even across a power cut (its sync may run while the fixes are written, in which case history
//! drops them at recovery unless the journal record survived: ADR 0024); the writer thread
//! moves journalled events into `fleet.db` in large batches off the ack path, and queries wait
//! until it has caught up with every append made before them. Geofence writes go straight to
//! `fleet.db` with `synchronous = FULL`. Events are kept in blocks of up to 64 per row (see
//! [`blocks`](super::blocks)), each stored once by its identity in `event_ids`.
//!
//! One connection writes (workers, the API's geofence changes) and one reads (queries), so a
//! long query never waits for a write and the reverse. Schema versions are kept in
//! `PRAGMA user_version` and applied in order at open.

use super::blocks::{self, BlockEvent, Builder};
use super::journal::Journal;
use super::vindex::{self, VehicleIndex};
use super::{EventQuery, FleetError, FleetResult, FleetStore, Geofence, StagedEvents, StoredEvent};
use crossbeam_channel::{Receiver, Sender};
use kickstand_domain::event::{Event, EventKind};
use kickstand_domain::zone::{Area, ZoneKind};
use kickstand_domain::{VehicleId, VehicleState};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

/// The migrations, in order; `PRAGMA user_version` is the number applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: geofences and events.
    "CREATE TABLE geofences (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        max_speed_kmh REAL,
        geometry TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters VALUES ('geofences_version', 0);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        vehicle_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        ts INTEGER NOT NULL,
        zone_id TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        recorded_at INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    -- What an event id is derived from, so a repeated event is refused; led by ts, so inserts
    -- land at the right edge of the index instead of on random pages (as a hash id would).
    CREATE UNIQUE INDEX events_identity ON events (ts, vehicle_id, kind, zone_id);
    CREATE INDEX events_by_vehicle ON events (vehicle_id, seq);
    CREATE INDEX events_by_kind ON events (kind, seq);
    CREATE INDEX events_trip_ends ON events (vehicle_id, ts) WHERE kind = 'state_changed' AND from_state = 'on_trip';",
    // 2: the by-vehicle access path moves to the LSM index beside the file (`vindex`): a
    // B-tree on a random key dirtied a page per event.
    "DROP INDEX events_by_vehicle;",
    // 3: events become durable in the journal first; the number of the last journal record
    // whose events are in this file.
    "INSERT INTO counters VALUES ('journal_indexed', 0);",
    // 4: events in blocks (`blocks`), deduplicated by a compact identity table, trip ends kept
    // per vehicle; `open` moves the rows of `events` into blocks and drops it.
    "CREATE TABLE event_blocks (
        first_seq INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL,
        min_ts INTEGER NOT NULL,
        max_ts INTEGER NOT NULL,
        kinds INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    -- Retention finds the blocks it must drop or cut without reading every block.
    CREATE INDEX event_blocks_min_ts ON event_blocks (min_ts);
    CREATE TABLE event_ids (ts INTEGER NOT NULL, h INTEGER NOT NULL, PRIMARY KEY (ts, h)) WITHOUT ROWID;
    CREATE TABLE trip_ends (vehicle_id TEXT PRIMARY KEY, ts INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counters VALUES ('event_seq', COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0));",
];

/// Events journalled and not yet in `fleet.db` above which appends wait (backpressure).
const MAX_BACKLOG: usize = 100_000;
/// Events the writer thread puts into `fleet.db` in one transaction, at most.
const MAX_BATCH: usize = 20_000;
/// How long the writer thread gathers records before a transaction (unless a query is waiting
/// or a full batch is ready): every commit rewrites the pages it touched into the WAL and
/// sweeps the page cache, so fewer, larger transactions cost less per event.
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a query waits for the writer thread to catch up with the appends made before it.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct SqliteFleetStore {
    /// The writer thread's queue; `None` once the store is being dropped.
    jobs: Option<Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    checkpointer: Option<(Sender<()>, JoinHandle<()>)>,
    read: Mutex<Connection>,
    index: Arc<VehicleIndex>,
    journal: Arc<Journal>,
    /// The journal as it was found at open: every record up to `.0` was in `fleet.db`, and
    /// `.1` (sorted) were intact after it. History asks while it recovers.
    opened: (u64, Vec<u64>),
}

/// An event ready to insert: serialised by the caller's thread, so the one writer thread only
/// runs SQLite.
struct Row {
    /// The event's identity beside its `ts` ([`blocks::identity`] of its id).
    h: i64,
    vehicle_id: VehicleId,
    kind: EventKind,
    ts: i64,
    zone_id: String,
    /// A `state_changed` away from `on_trip` ([`super::ends_trip`]).
    ends_trip: bool,
    /// Where its JSON is in the record's `text`.
    body: Range<usize>,
}

impl Row {
    fn of(e: &Event, body: Range<usize>) -> Row {
        Row {
            h: blocks::identity(&e.id),
            vehicle_id: e.vehicle_id.clone(),
            kind: e.kind,
            ts: e.ts,
            zone_id: e.zone_id.clone().unwrap_or_default(),
            ends_trip: super::ends_trip(e),
            body,
        }
    }
}

/// The events of one journal record: their JSON back to back in one buffer (one allocation
/// per record, not one per event).
struct Record {
    text: String,
    rows: Vec<Row>,
    recorded_at: i64,
}

/// Serialises `events` into one buffer; returns it with each event's range in it.
fn serialise(events: &[Event]) -> FleetResult<(String, Vec<Range<usize>>)> {
    let mut text = Vec::with_capacity(events.len() * 320);
    let mut ranges = Vec::with_capacity(events.len());
    for e in events {
        let start = text.len();
        serde_json::to_writer(&mut text, e).map_err(err)?;
        ranges.push(start..text.len());
    }
    let text = String::from_utf8(text).map_err(err)?;
    Ok((text, ranges))
}

/// Work for the writer thread.
enum Job {
    /// Journal record `record`, durable: stored in journal order with every other record
    /// waiting, in one transaction.
    Events { record: u64, events: Record },
    /// A query waits for the events appended before it: store what is ready now.
    Wake,
    /// Any other write, alone in its own transaction.
    Run(WriteFn),
}

type WriteFn = Box<dyn FnOnce(&mut Connection) + Send>;

/// WAL frames (pages) above which the writer checkpoints itself (`RESTART`) before its next
/// transaction: the background `PASSIVE` checkpoints copy pages back but cannot restart a WAL
/// that never stops growing.
const WAL_RESTART_FRAMES: i64 = 16_384;
/// How often the background checkpointer copies WAL pages back to the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

fn err(e: impl std::fmt::Display) -> FleetError {
    FleetError(e.to_string())
}

fn open_conn(path: &Path) -> FleetResult<Connection> {
    let c = Connection::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err)?;
    c.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    c.pragma_update(None, "synchronous", "FULL").map_err(err)?;
    c.pragma_update(None, "foreign_keys", "ON").map_err(err)?;
    // 64 MiB of page cache per connection: the vehicle index is touched all over by a fleet.
    c.pragma_update(None, "cache_size", -65_536).map_err(err)?;
    Ok(c)
}

impl SqliteFleetStore {
    /// Opens (creating it if needed) the store in `path` and applies pending migrations.
    pub fn open(path: &Path) -> FleetResult<SqliteFleetStore> {
        let mut write = open_conn(path)?;
        let version: i64 = write
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version as usize > MIGRATIONS.len() {
            return Err(FleetError(format!(
                "{} has schema version {version}, newer than this build knows ({}); use a newer kickstand",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = write.transaction().map_err(err)?;
            tx.execute_batch(sql)
                .map_err(|e| err(format!("migration {}: {e}", i + 1)))?;
            if i + 1 == 4 {
                into_blocks(&tx).map_err(|e| err(format!("migration 4: {e}")))?;
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        // Checkpoints leave the commit path: the writer thread only appends to the WAL, a
        // background connection copies pages back (see `checkpoint_loop`).
        write
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(err)?;
        let index = Arc::new(VehicleIndex::open(&path.with_extension("vindex"))?);
        catch_up(&write, &index)?;
        let indexed = write
            .query_row(
                "SELECT value FROM counters WHERE name = 'journal_indexed'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(err)? as u64;
        let journal_dir = path.with_extension("events");
        let (journal, pending) = Journal::open(&journal_dir, indexed, MAX_BACKLOG)
            .map_err(|e| err(format!("{}: {e}", journal_dir.display())))?;
        let opened = (indexed, pending.iter().map(|r| r.record).collect());
        let indexed = replay(&mut write, &index, pending)?.unwrap_or(indexed);
        journal.indexed(indexed, 0);
        let journal = Arc::new(journal);
        let wal_frames = Arc::new(AtomicI64::new(0));
        let (jobs, rx) = crossbeam_channel::unbounded();
        let frames = wal_frames.clone();
        let ix = index.clone();
        let jr = journal.clone();
        let writer = std::thread::Builder::new()
            .name("fleet-store-writer".into())
            .spawn(move || write_loop(write, rx, frames, ix, jr, indexed))
            .map_err(err)?;
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let checkpoint_conn = open_conn(path)?;
        let checkpointer = std::thread::Builder::new()
            .name("fleet-store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stopped, wal_frames))
            .map_err(err)?;
        let read = open_conn(path)?;
        Ok(SqliteFleetStore {
            jobs: Some(jobs),
            writer: Some(writer),
            checkpointer: Some((stop, checkpointer)),
            read: Mutex::new(read),
            index,
            journal,
            opened,
        })
    }

    /// Waits until every event appended before the call is in `fleet.db` (bounded; a writer
    /// that far behind is reported, and the query answers with what is there).
    fn settle(&self) {
        if !self.journal.caught_up()
            && let Some(jobs) = &self.jobs
        {
            let _ = jobs.send(Job::Wake);
            self.wake_writer();
        }
        if !self.journal.settle(SETTLE_LIMIT) {
            tracing::warn!(
                message = "the fleet store's writer is behind the event journal; answering with the events indexed so far",
                limit_s = SETTLE_LIMIT.as_secs(),
            );
        }
    }

    /// Wakes the writer thread for a job that must not wait for the next batch (a query, a
    /// write). Events do not wake it while it gathers a batch: it takes them every
    /// `COMMIT_EVERY`.
    fn wake_writer(&self) {
        if let Some(w) = &self.writer {
            w.thread().unpark();
        }
    }

    /// Runs `f` on the writer thread, in a transaction, and waits for its answer.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> FleetResult<T> + Send + 'static,
    ) -> FleetResult<T> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let job = Job::Run(Box::new(move |c: &mut Connection| {
            let result = c.transaction().map_err(err).and_then(|tx| {
                let value = f(&tx)?;
                tx.commit().map_err(err)?;
                Ok(value)
            });
            let _ = reply.send(result);
        }));
        self.submit(job, answer)
    }

    fn submit<T>(&self, job: Job, answer: Receiver<FleetResult<T>>) -> FleetResult<T> {
        let gone = || FleetError("the fleet store's writer has stopped".into());
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        self.wake_writer();
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for SqliteFleetStore {
    fn drop(&mut self) {
        drop(self.jobs.take());
        self.wake_writer();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some((stop, c)) = self.checkpointer.take() {
            let _ = stop.send(());
            let _ = c.join();
        }
    }
}

/// The writer thread: puts journal records into `fleet.db` in the journal's order, as many
/// as are waiting (up to `MAX_BATCH` events) in one transaction, together with the number of
/// the last one; runs the other writes between batches.
fn write_loop(
    mut c: Connection,
    rx: Receiver<Job>,
    wal_frames: Arc<AtomicI64>,
    index: Arc<VehicleIndex>,
    journal: Arc<Journal>,
    mut indexed: u64,
) {
    // Set when indexing stored events failed: the index is brought up to date from the file
    // before the next batch (it is derived data, see `vindex`).
    let mut index_behind = false;
    // Records that arrived before one with a lower number (workers sync in parallel).
    let mut waiting: BTreeMap<u64, Record> = BTreeMap::new();
    let mut others: Vec<WriteFn> = Vec::new();
    let mut open = true;
    let mut failures = 0u32;
    let mut last_commit = Instant::now();
    // Events waiting, whether ready or behind a gap.
    let mut queued = 0;
    while open || ready(&waiting, indexed) {
        // Gather until a transaction is due: a query waits, a full batch is there, or
        // `COMMIT_EVERY` passed since the last one. Block only while nothing is due.
        let mut urgent = false;
        loop {
            let due = ready(&waiting, indexed)
                && (urgent
                    || !open
                    || queued >= MAX_BATCH
                    || last_commit.elapsed() >= COMMIT_EVERY);
            if due || !others.is_empty() {
                break;
            }
            let job = if ready(&waiting, indexed) {
                // Parked rather than blocked on the queue: every worker's group would wake a
                // thread blocked on it (a context switch per group), where one wake-up per
                // batch is enough. Queries, writes and closing unpark it (`wake_writer`).
                match rx.try_recv() {
                    Ok(job) => job,
                    Err(crossbeam_channel::TryRecvError::Empty) => {
                        let deadline = last_commit + COMMIT_EVERY;
                        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                            std::thread::park_timeout(wait);
                        }
                        continue;
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        open = false;
                        continue;
                    }
                }
            } else {
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            };
            match job {
                Job::Events { record, events } => {
                    queued += events.rows.len();
                    waiting.insert(record, events);
                }
                Job::Run(f) => others.push(f),
                Job::Wake => urgent = true,
            }
        }
        if wal_frames.load(Ordering::Relaxed) > WAL_RESTART_FRAMES {
            // Readers are brief, so this waits little; the background checkpoints have copied
            // most pages back already.
            if let Err(error) = c.execute_batch("PRAGMA wal_checkpoint(RESTART)") {
                tracing::warn!(message = "fleet store checkpoint failed", %error);
            }
            wal_frames.store(0, Ordering::Relaxed);
        }
        if index_behind {
            match catch_up(&c, &index) {
                Ok(()) => index_behind = false,
                Err(error) => tracing::warn!(message = "vehicle index still behind", %error),
            }
        }
        // The records that follow the last one stored without a gap.
        let mut batch = Vec::new();
        let mut last = indexed;
        let mut events = 0;
        while events < MAX_BATCH
            && let Some(entry) = waiting.first_entry()
            && *entry.key() == last + 1
        {
            let (record, r) = entry.remove_entry();
            last = record;
            events += r.rows.len();
            batch.push(r);
        }
        queued -= events;
        if !batch.is_empty() {
            match insert_events(&mut c, &batch, last) {
                Ok(stored) => {
                    failures = 0;
                    if !index_behind && let Err(error) = index.add(&stored) {
                        tracing::warn!(message = "indexing events by vehicle failed; catching up", %error);
                        index_behind = true;
                    }
                    drop(stored);
                    indexed = last;
                    last_commit = Instant::now();
                    journal.indexed(last, events);
                }
                Err(error) => {
                    // The events are durable in the journal: keep them and try again, while
                    // appends wait once the backlog is full (backpressure, not loss).
                    failures += 1;
                    tracing::error!(message = "storing journalled events failed; retrying", %error, failures);
                    for (i, r) in batch.into_iter().enumerate() {
                        waiting.insert(indexed + 1 + i as u64, r);
                    }
                    queued += events;
                    std::thread::sleep(std::time::Duration::from_millis(
                        (50 * u64::from(failures)).min(2_000),
                    ));
                }
            }
        }
        for f in others.drain(..) {
            f(&mut c);
        }
    }
    if !waiting.is_empty() {
        tracing::warn!(
            message =
                "event journal records left with a gap before them; the next start replays them",
            records = waiting.len()
        );
    }
    if let Err(error) = c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::debug!(message = "final fleet store checkpoint failed", %error);
    }
}

/// Whether the record after `indexed` is waiting.
fn ready(waiting: &BTreeMap<u64, Record>, indexed: u64) -> bool {
    waiting
        .first_key_value()
        .is_some_and(|(k, _)| *k == indexed + 1)
}

/// Inserts the records in one transaction with `last`, the number of the last of them: each
/// event not stored yet (by its identity in `event_ids`) gets the next sequence number and goes
/// into a block. Returns the events that were new, for the vehicle index.
fn insert_events<'a>(
    c: &mut Connection,
    batch: &'a [Record],
    last: u64,
) -> FleetResult<Vec<vindex::Entry<'a>>> {
    let tx = c.transaction().map_err(err)?;
    let mut stored = Vec::new();
    {
        let mut seq: u64 = tx
            .prepare_cached("SELECT value FROM counters WHERE name = 'event_seq'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map_err(err)? as u64;
        let mut new_id = tx
            .prepare_cached("INSERT INTO event_ids (ts, h) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .map_err(err)?;
        let mut trip_end = tx.prepare_cached(TRIP_END).map_err(err)?;
        let mut block = Builder::default();
        for Record {
            text,
            rows,
            recorded_at,
        } in batch
        {
            for r in rows {
                if new_id.execute(params![r.ts, r.h]).map_err(err)? == 0 {
                    continue;
                }
                seq += 1;
                block.push(&BlockEvent {
                    seq,
                    ts: r.ts,
                    recorded_at: *recorded_at,
                    kind: r.kind,
                    vehicle: r.vehicle_id.as_str(),
                    zone: &r.zone_id,
                    body: &text[r.body.clone()],
                });
                if block.is_full() {
                    put_block(&tx, &mut block)?;
                }
                if r.ends_trip {
                    trip_end
                        .execute(params![r.vehicle_id.as_str(), r.ts])
                        .map_err(err)?;
                }
                stored.push(vindex::Entry {
                    seq,
                    vehicle_id: r.vehicle_id.as_str(),
                    is_state: is_state_kind(r.kind),
                });
            }
        }
        put_block(&tx, &mut block)?;
        let mut counter = tx
            .prepare_cached("UPDATE counters SET value = ?2 WHERE name = ?1")
            .map_err(err)?;
        counter
            .execute(params!["event_seq", seq as i64])
            .map_err(err)?;
        counter
            .execute(params!["journal_indexed", last as i64])
            .map_err(err)?;
    }
    tx.commit().map_err(err)?;
    Ok(stored)
}

/// Keeps the newest trip end of each vehicle.
const TRIP_END: &str = "INSERT INTO trip_ends (vehicle_id, ts) VALUES (?1, ?2)
     ON CONFLICT (vehicle_id) DO UPDATE SET ts = max(ts, excluded.ts)";

/// Writes the block being filled (nothing when it is empty) and empties it.
fn put_block(c: &Connection, b: &mut Builder) -> FleetResult<()> {
    if b.count == 0 {
        return Ok(());
    }
    c.prepare_cached(
        "INSERT INTO event_blocks (first_seq, last_seq, min_ts, max_ts, kinds, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .map_err(err)?
    .execute(params![
        b.first_seq as i64,
        b.last_seq as i64,
        b.min_ts,
        b.max_ts,
        b.kinds,
        b.data
    ])
    .map_err(err)?;
    b.clear();
    Ok(())
}

/// Migration 4: the rows of `events` into blocks (same sequence numbers), their identities and
/// trip ends into their tables; then `events` goes.
fn into_blocks(tx: &rusqlite::Transaction<'_>) -> FleetResult<()> {
    let mut block = Builder::default();
    let mut rows = tx
        .prepare(
            "SELECT seq, id, vehicle_id, kind, ts, zone_id, from_state, to_state, recorded_at, body
             FROM events ORDER BY seq",
        )
        .map_err(err)?;
    let mut rows = rows.query([]).map_err(err)?;
    let mut new_id = tx
        .prepare("INSERT INTO event_ids (ts, h) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
        .map_err(err)?;
    let mut trip_end = tx.prepare(TRIP_END).map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        let row = || -> rusqlite::Result<_> {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, String>(9)?,
            ))
        };
        let (seq, id, vehicle, kind, ts, zone, from, to, recorded_at, body) = row().map_err(err)?;
        let Some(kind) = EventKind::parse(&kind) else {
            continue;
        };
        new_id
            .execute(params![ts, blocks::identity(&id)])
            .map_err(err)?;
        if kind == EventKind::StateChanged
            && from.as_deref() == Some(VehicleState::OnTrip.as_str())
            && to.as_deref() != Some(VehicleState::OnTrip.as_str())
        {
            trip_end.execute(params![vehicle, ts]).map_err(err)?;
        }
        block.push(&BlockEvent {
            seq: seq as u64,
            ts,
            recorded_at,
            kind,
            vehicle: &vehicle,
            zone: &zone,
            body: &body,
        });
        if block.is_full() {
            put_block(tx, &mut block)?;
        }
    }
    put_block(tx, &mut block)?;
    drop((rows, new_id, trip_end));
    tx.execute_batch("DROP TABLE events;").map_err(err)
}

/// Puts the journal records found at open into `fleet.db` (and the vehicle index); returns
/// the number of the last one, if there were any.
fn replay(
    c: &mut Connection,
    index: &VehicleIndex,
    pending: Vec<super::journal::Recovered>,
) -> FleetResult<Option<u64>> {
    let Some(last) = pending.last().map(|r| r.record) else {
        return Ok(None);
    };
    let mut events = 0;
    let mut batch = Vec::new();
    let mut batch_events = 0;
    let mut batch_last = 0;
    let total = pending.len();
    for r in pending {
        let mut rows = Vec::with_capacity(r.bodies.len());
        let mut text = String::with_capacity(r.bodies.iter().map(String::len).sum());
        for body in r.bodies {
            match serde_json::from_str::<Event>(&body) {
                Ok(e) => {
                    let start = text.len();
                    text.push_str(&body);
                    rows.push(Row::of(&e, start..text.len()));
                }
                // Written by this store from an `Event`: unreadable only if the format changed
                // incompatibly, which a migration would have to handle.
                Err(e) => {
                    return Err(err(format!(
                        "event journal record {} holds an unreadable event: {e}",
                        r.record
                    )));
                }
            }
        }
        events += rows.len();
        batch_events += rows.len();
        batch_last = r.record;
        batch.push(Record {
            text,
            rows,
            recorded_at: r.recorded_at,
        });
        if batch_events >= MAX_BATCH {
            let stored = insert_events(c, &batch, batch_last)?;
            index.add(&stored)?;
            drop(stored);
            batch.clear();
            batch_events = 0;
        }
    }
    if !batch.is_empty() {
        let stored = insert_events(c, &batch, batch_last)?;
        index.add(&stored)?;
    }
    tracing::info!(
        message = "event journal replayed into the fleet store",
        records = total,
        events
    );
    Ok(Some(last))
}

fn is_state_kind(kind: EventKind) -> bool {
    matches!(kind, EventKind::StateChanged | EventKind::Stale)
}

/// The blocks that hold events above `?1`, in order: from the block that holds `?1` on, by the
/// primary key (blocks never overlap), not by a scan of every block.
const AFTER_SEQ: &str = "SELECT data FROM event_blocks
     WHERE first_seq >= COALESCE((SELECT MAX(first_seq) FROM event_blocks WHERE first_seq <= ?1), 0)
       AND last_seq > ?1
     ORDER BY first_seq";

/// Indexes the events the vehicle index does not hold yet (all of them for a new index).
fn catch_up(c: &Connection, index: &VehicleIndex) -> FleetResult<()> {
    let after = index.indexed()?;
    let mut stmt = c.prepare_cached(AFTER_SEQ).map_err(err)?;
    let mut rows = stmt.query([after as i64]).map_err(err)?;
    let mut datas = Vec::new();
    while let Some(r) = rows.next().map_err(err)? {
        datas.push(r.get::<_, Vec<u8>>(0).map_err(err)?);
        if datas.len() >= 256 {
            index_blocks(index, &datas, after)?;
            datas.clear();
        }
    }
    index_blocks(index, &datas, after)
}

fn index_blocks(index: &VehicleIndex, datas: &[Vec<u8>], after: u64) -> FleetResult<()> {
    let mut entries = Vec::new();
    for data in datas {
        for e in decode(data)? {
            if e.seq > after {
                entries.push(vindex::Entry {
                    seq: e.seq,
                    vehicle_id: e.vehicle,
                    is_state: is_state_kind(e.kind),
                });
            }
        }
    }
    index.add(&entries)
}

fn decode(data: &[u8]) -> FleetResult<Vec<BlockEvent<'_>>> {
    blocks::decode(data).ok_or_else(|| err("an event block in fleet.db is unreadable"))
}

fn stored_of(e: &BlockEvent<'_>) -> FleetResult<StoredEvent> {
    let event: Event = serde_json::from_str(e.body)
        .map_err(|x| err(format!("event {} is unreadable: {x}", e.seq)))?;
    Ok(StoredEvent {
        seq: e.seq,
        recorded_at: e.recorded_at,
        event,
    })
}

/// Copies WAL pages back to the database file every `CHECKPOINT_EVERY` (`PASSIVE`: never waits
/// for the writer or readers), and publishes how long the WAL is.
fn checkpoint_loop(c: Connection, stop: Receiver<()>, wal_frames: Arc<AtomicI64>) {
    loop {
        match stop.recv_timeout(CHECKPOINT_EVERY) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        match c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(frames) => wal_frames.store(frames, Ordering::Relaxed),
            Err(error) => tracing::debug!(message = "fleet store checkpoint failed", %error),
        }
    }
}

fn geofence_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Geofence, bool)> {
    let kind: String = r.get(2)?;
    let geometry: String = r.get(4)?;
    let area = serde_json::from_str::<serde_json::Value>(&geometry)
        .ok()
        .and_then(|v| Area::from_geojson(&v).ok());
    let kind = ZoneKind::parse(&kind);
    let ok = area.is_some() && kind.is_some();
    Ok((
        Geofence {
            id: r.get(0)?,
            name: r.get(1)?,
            kind: kind.unwrap_or(ZoneKind::OperatingArea),
            max_speed_kmh: r.get(3)?,
            area: area.unwrap_or(Area {
                polygons: Vec::new(),
                single: true,
            }),
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
        },
        ok,
    ))
}

fn checked(row: (Geofence, bool)) -> FleetResult<Geofence> {
    match row {
        (g, true) => Ok(g),
        (g, false) => Err(FleetError(format!(
            "geofence {} is stored with an unreadable kind or geometry",
            g.id
        ))),
    }
}

const GEOFENCE_COLUMNS: &str = "id, name, kind, max_speed_kmh, geometry, created_at, updated_at";

impl FleetStore for SqliteFleetStore {
    fn put_geofence(&self, g: &Geofence) -> FleetResult<()> {
        let g = g.clone();
        let geometry = g.area.to_geojson().to_string();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO geofences (id, name, kind, max_speed_kmh, geometry, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = excluded.kind,
                   max_speed_kmh = excluded.max_speed_kmh, geometry = excluded.geometry,
                   updated_at = excluded.updated_at",
                params![
                    g.id,
                    g.name,
                    g.kind.as_str(),
                    g.max_speed_kmh,
                    geometry,
                    g.created_at,
                    g.updated_at
                ],
            )
            .map_err(err)?;
            tx.execute(
                "UPDATE counters SET value = value + 1 WHERE name = 'geofences_version'",
                [],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    fn delete_geofence(&self, id: &str) -> FleetResult<bool> {
        let id = id.to_owned();
        self.write(move |tx| {
            let n = tx
                .execute("DELETE FROM geofences WHERE id = ?1", [&id])
                .map_err(err)?;
            if n > 0 {
                tx.execute(
                    "UPDATE counters SET value = value + 1 WHERE name = 'geofences_version'",
                    [],
                )
                .map_err(err)?;
            }
            Ok(n > 0)
        })
    }

    fn geofence(&self, id: &str) -> FleetResult<Option<Geofence>> {
        let c = self.read.lock();
        let row = c
            .query_row(
                &format!("SELECT {GEOFENCE_COLUMNS} FROM geofences WHERE id = ?1"),
                [id],
                geofence_from_row,
            )
            .optional()
            .map_err(err)?;
        row.map(checked).transpose()
    }

    fn geofences(&self) -> FleetResult<Vec<Geofence>> {
        let c = self.read.lock();
        let mut stmt = c
            .prepare_cached(&format!(
                "SELECT {GEOFENCE_COLUMNS} FROM geofences ORDER BY id"
            ))
            .map_err(err)?;
        let rows = stmt.query_map([], geofence_from_row).map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(checked(row.map_err(err)?)?);
        }
        Ok(out)
    }

    fn geofences_version(&self) -> FleetResult<u64> {
        let c = self.read.lock();
        c.query_row(
            "SELECT value FROM counters WHERE name = 'geofences_version'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|v| v as u64)
        .map_err(err)
    }

    fn append_events(&self, events: &[Event], recorded_at: i64) -> FleetResult<()> {
        self.stage_events(events, recorded_at)?.durable()
    }

    /// Writes the journal record and asks for its sync; the rows for `fleet.db` are made while
    /// the sync runs, and go to the writer thread once it returned (or failed: the events may
    /// be on disk, storing them is harmless since the group is not acked and its retry makes
    /// the same events, and later records must not wait for this one).
    fn stage_events(&self, events: &[Event], recorded_at: i64) -> FleetResult<StagedEvents> {
        if events.is_empty() {
            return Ok(StagedEvents::durable_now());
        }
        let (text, ranges) = serialise(events)?;
        let bodies: Vec<&str> = ranges.iter().map(|r| &text[r.clone()]).collect();
        let record = self
            .journal
            .stage(recorded_at, &bodies)
            .map_err(|error| err(format!("the event journal failed: {error}")))?;
        drop(bodies);
        let rows = events
            .iter()
            .zip(ranges)
            .map(|(e, body)| Row::of(e, body))
            .collect();
        let job = Job::Events {
            record,
            events: Record {
                text,
                rows,
                recorded_at,
            },
        };
        let (journal, jobs) = (self.journal.clone(), self.jobs.clone());
        Ok(StagedEvents::in_record(record, move || {
            let synced = journal.wait_durable(record);
            if jobs.is_none_or(|jobs| jobs.send(job).is_err()) {
                return Err(FleetError("the fleet store's writer has stopped".into()));
            }
            synced.map_err(err)
        }))
    }

    fn event_record_durable(&self, record: u64) -> bool {
        record <= self.opened.0 || self.opened.1.binary_search(&record).is_ok()
    }

    fn events(&self, q: &EventQuery) -> FleetResult<Vec<StoredEvent>> {
        self.settle();
        let Some(vehicle) = &q.vehicle_id else {
            return self.query_events(q, None);
        };
        // One vehicle: its sequence numbers from the index, a page at a time, then the rows
        // (filtered by the rest of the query) from the file.
        let limit = q.limit.max(1);
        let mut out = Vec::new();
        let mut after = q.after_seq;
        loop {
            let seqs = self.index.seqs(vehicle.as_str(), after, PAGE)?;
            let Some(&last) = seqs.last() else {
                return Ok(out);
            };
            let page = EventQuery {
                limit: limit - out.len(),
                ..q.clone()
            };
            out.extend(self.query_events(&page, Some(&seqs))?);
            if out.len() >= limit || seqs.len() < PAGE {
                return Ok(out);
            }
            after = last;
        }
    }

    fn event_head(&self) -> FleetResult<u64> {
        self.settle();
        let c = self.read.lock();
        c.query_row(
            "SELECT value FROM counters WHERE name = 'event_seq'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|v| v as u64)
        .map_err(err)
    }

    fn drop_events_before(&self, ts: i64) -> FleetResult<usize> {
        let index = self.index.clone();
        self.write(move |tx| {
            // Blocks wholly older go; a block that straddles the cutoff keeps its newer events.
            let mut dropped = 0;
            let old: Vec<(i64, i64, Vec<u8>)> = {
                let mut stmt = tx
                    .prepare("SELECT first_seq, max_ts, data FROM event_blocks WHERE min_ts < ?1")
                    .map_err(err)?;
                stmt.query_map([ts], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(err)?
                    .collect::<Result<_, _>>()
                    .map_err(err)?
            };
            for (first_seq, max_ts, data) in old {
                let events = decode(&data)?;
                tx.execute("DELETE FROM event_blocks WHERE first_seq = ?1", [first_seq])
                    .map_err(err)?;
                if max_ts < ts {
                    dropped += events.len();
                    continue;
                }
                let mut kept = Builder::default();
                for e in &events {
                    if e.ts < ts {
                        dropped += 1;
                    } else {
                        kept.push(e);
                    }
                }
                put_block(tx, &mut kept)?;
            }
            tx.execute("DELETE FROM event_ids WHERE ts < ?1", [ts])
                .map_err(err)?;
            tx.execute("DELETE FROM trip_ends WHERE ts < ?1", [ts])
                .map_err(err)?;
            if dropped > 0 {
                let min: Option<i64> = tx
                    .query_row("SELECT MIN(first_seq) FROM event_blocks", [], |r| r.get(0))
                    .map_err(err)?;
                // Everything below the oldest kept event goes (all of it when none is left:
                // sequence numbers never go back).
                index.drop_below(min.map_or(u64::MAX, |m| m as u64))?;
            }
            Ok(dropped)
        })
    }

    fn last_trip_ends(&self) -> FleetResult<Vec<(VehicleId, i64)>> {
        self.settle();
        let c = self.read.lock();
        let mut stmt = c
            .prepare_cached("SELECT vehicle_id, ts FROM trip_ends")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, ts) = row.map_err(err)?;
            if let Ok(id) = VehicleId::new(&id) {
                out.push((id, ts));
            }
        }
        Ok(out)
    }

    fn last_state_events(&self, vehicles: &[VehicleId]) -> FleetResult<Vec<Event>> {
        self.settle();
        let mut seqs = Vec::with_capacity(vehicles.len());
        for v in vehicles {
            if let Some(seq) = self.index.last_state(v.as_str())? {
                seqs.push(seq);
            }
        }
        let c = self.read.lock();
        let mut out = Vec::new();
        let mut finder = BlockFinder::default();
        for seq in seqs {
            if let Some(e) = finder.find(&c, seq)? {
                out.push(e.event);
            }
        }
        Ok(out)
    }
}

/// Finds events by sequence number, keeping the last block read (a vehicle's events are often
/// near each other).
#[derive(Default)]
struct BlockFinder {
    first: u64,
    last: u64,
    data: Vec<u8>,
}

impl BlockFinder {
    fn find(&mut self, c: &Connection, seq: u64) -> FleetResult<Option<StoredEvent>> {
        if !self.load(c, seq)? {
            return Ok(None);
        }
        let events = decode(&self.data)?;
        match events.binary_search_by_key(&seq, |e| e.seq) {
            Ok(i) => stored_of(&events[i]).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Makes `data` the block that would hold `seq`; `false` when none does.
    fn load(&mut self, c: &Connection, seq: u64) -> FleetResult<bool> {
        if self.data.is_empty() || seq < self.first || seq > self.last {
            let row: Option<(i64, i64, Vec<u8>)> = c
                .prepare_cached(
                    "SELECT first_seq, last_seq, data FROM event_blocks
                     WHERE first_seq <= ?1 ORDER BY first_seq DESC LIMIT 1",
                )
                .map_err(err)?
                .query_row([seq as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(err)?;
            let Some((first, last, data)) = row else {
                return Ok(false);
            };
            (self.first, self.last, self.data) = (first as u64, last as u64, data);
        }
        Ok(seq <= self.last)
    }
}

/// Sequence numbers read from the vehicle index per query.
const PAGE: usize = 512;

impl SqliteFleetStore {
    /// Events matching `q` (its vehicle aside), limited to the sequence numbers `only` when
    /// given.
    fn query_events(&self, q: &EventQuery, only: Option<&[u64]>) -> FleetResult<Vec<StoredEvent>> {
        let limit = q.limit.max(1);
        let matches = |e: &BlockEvent<'_>| {
            e.seq > q.after_seq
                && q.vehicle_id
                    .as_ref()
                    .is_none_or(|v| v.as_str() == e.vehicle)
                && q.zone_id.as_deref().is_none_or(|z| z == e.zone)
                && q.from.is_none_or(|from| e.ts >= from)
                && q.to.is_none_or(|to| e.ts < to)
                && (q.kinds.is_empty() || q.kinds.contains(&e.kind))
        };
        let c = self.read.lock();
        let mut out = Vec::new();
        if let Some(seqs) = only {
            let mut finder = BlockFinder::default();
            for &seq in seqs {
                if out.len() >= limit {
                    break;
                }
                // Read the block once for all the sequence numbers in it.
                if !finder.load(&c, seq)? {
                    continue;
                }
                let events = decode(&finder.data)?;
                if let Ok(i) = events.binary_search_by_key(&seq, |e| e.seq)
                    && matches(&events[i])
                {
                    out.push(stored_of(&events[i])?);
                }
            }
            return Ok(out);
        }
        // Blocks by sequence number, skipping those whose times or kinds cannot match.
        let mask: i64 = q
            .kinds
            .iter()
            .map(|k| blocks::kind_bit(*k))
            .fold(0, |a, b| a | b);
        let mut stmt = c
            .prepare_cached(
                "SELECT data FROM event_blocks
                 WHERE first_seq >= COALESCE((SELECT MAX(first_seq) FROM event_blocks WHERE first_seq <= ?1), 0)
                   AND last_seq > ?1 AND max_ts >= ?2 AND min_ts < ?3 AND (?4 = 0 OR kinds & ?4 != 0)
                 ORDER BY first_seq",
            )
            .map_err(err)?;
        let mut rows = stmt
            .query(params![
                q.after_seq as i64,
                q.from.unwrap_or(i64::MIN),
                q.to.unwrap_or(i64::MAX),
                mask
            ])
            .map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let data = r.get_ref(0).map_err(err)?.as_blob().map_err(err)?;
            for e in decode(data)? {
                if matches(&e) {
                    out.push(stored_of(&e)?);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl SqliteFleetStore {
    /// Events of `kind` stored, for tests and diagnostics.
    pub fn count_events(&self, kind: EventKind) -> FleetResult<u64> {
        self.settle();
        let c = self.read.lock();
        let mut stmt = c
            .prepare_cached("SELECT data FROM event_blocks WHERE kinds & ?1 != 0")
            .map_err(err)?;
        let mut rows = stmt.query([blocks::kind_bit(kind)]).map_err(err)?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(err)? {
            let data = r.get_ref(0).map_err(err)?.as_blob().map_err(err)?;
            n += decode(data)?.iter().filter(|e| e.kind == kind).count() as u64;
        }
        Ok(n)
    }
}
