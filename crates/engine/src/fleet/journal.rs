//! The embedded fleet store's event journal: where an event becomes durable.
//!
//! Workers append the events of a group here, one record per group, and a record is durable
//! before the group's fixes are acked; the store's writer thread then moves them into
//! `fleet.db` in large batches, beside the ack path instead of on it (BENCHMARKS.md, "Fleet
//! intelligence: the event journal"). The journal is a directory of segments in the history
//! WAL's framing (`len | crc32 | payload`, see [`wal`]); each record carries a number that
//! grows by one per record, and `fleet.db` keeps the number of the last record it holds in the
//! same transaction as the rows. At open every record after that number is indexed again
//! (inserting an event twice stores it once), so a crash between the journal and the database
//! loses nothing.
//!
//! Record payload: `record: u64 LE | recorded_at: i64 LE | count: u32 LE`, then per event
//! `len: u32 LE | the event's JSON`.
//!
//! Syncing: a worker [`stage`](Journal::stage)s its record (written, not synced) and asks the
//! journal's sync thread for it, writes the group's fixes to history (its own `fdatasync`) while
//! the journal's runs, then [`wait_durable`](Journal::wait_durable)s: the two syncs of a group
//! overlap instead of following each other, and one journal sync covers the records of every
//! worker written before it (ADR 0024). History marks such a group's record with the journal
//! record's number and drops it at recovery unless that record is durable.
//!
//! **Architecture Invariant:** records are written in the order of their numbers (one lock),
//! `fdatasync`s run outside the lock (a segment being left is synced under it), and a record is
//! only handed to the writer thread after a sync that started after it was written returned,
//! so a sync covers every record written before it.

use crate::history::embedded::wal;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A segment is closed and a new one started once it holds this many bytes.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// One record read back at open.
pub(crate) struct Recovered {
    pub record: u64,
    pub recorded_at: i64,
    pub bodies: Vec<String>,
}

struct Tail {
    file: Arc<File>,
    seg: u64,
    len: u64,
    /// The next record's number.
    next: u64,
    /// Segments that are not deleted yet with the number of their first record, oldest first;
    /// the last is the one being written.
    segments: VecDeque<(u64, u64)>,
    /// A write failed part way: what follows it in the segment could not be read back, so the
    /// journal takes nothing more until the process restarts (replay stops at the torn record,
    /// which was never acked).
    poisoned: bool,
}

/// How far the writer thread has come, for backpressure and for queries that must see every
/// event appended before them.
#[derive(Default)]
struct Progress {
    /// Events appended and not yet in `fleet.db`.
    backlog: usize,
    /// The number of the last record in `fleet.db` (every record up to it is there).
    indexed: u64,
}

/// What the sync thread has done and been asked for.
#[derive(Default)]
struct SyncState {
    /// The highest record someone waits to see durable.
    wanted: u64,
    /// Every record up to this one is durable.
    synced: u64,
    /// A sync failed: nothing written after the last good sync can be trusted to be on disk.
    failed: Option<String>,
    /// The journal is being dropped: the sync thread ends once nothing is wanted.
    closed: bool,
}

/// The sync thread's side of the journal.
struct Syncs {
    state: Mutex<SyncState>,
    /// Signals the sync thread that a record is wanted (or the journal closes).
    work: Condvar,
    /// Signals waiters that `synced` moved or a sync failed.
    done: Condvar,
}

pub(crate) struct Journal {
    dir: PathBuf,
    tail: Arc<Mutex<Tail>>,
    progress: Mutex<Progress>,
    moved: Condvar,
    /// Events appended and not yet indexed above which appends wait (backpressure).
    max_backlog: usize,
    syncs: Arc<Syncs>,
    syncer: Option<JoinHandle<()>>,
}

/// The sync thread: syncs the segment being written whenever a record is wanted, covering
/// every record written before the sync started (of every worker).
fn sync_loop(tail: Arc<Mutex<Tail>>, syncs: Arc<Syncs>) {
    loop {
        {
            let mut s = syncs.state.lock();
            while s.wanted <= s.synced && !s.closed {
                syncs.work.wait(&mut s);
            }
            if s.wanted <= s.synced || s.failed.is_some() {
                return;
            }
        }
        // Records up to `target` are in this file or in segments synced when they were left.
        let (file, target) = {
            let t = tail.lock();
            (t.file.clone(), t.next - 1)
        };
        let started = Instant::now();
        let result = file.sync_data();
        metrics::histogram!(crate::metrics::EVENT_JOURNAL_SYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let failed = result.is_err();
        {
            let mut s = syncs.state.lock();
            match result {
                Ok(()) => s.synced = s.synced.max(target),
                Err(error) => s.failed = Some(error.to_string()),
            }
        }
        syncs.done.notify_all();
        if failed {
            // After a failed sync the kernel may have dropped the pages; nothing written
            // later can be trusted to be on disk either.
            tail.lock().poisoned = true;
            return;
        }
    }
}

fn read_record(payload: &[u8]) -> Option<Recovered> {
    let record = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let recorded_at = i64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    let count = u32::from_le_bytes(payload.get(16..20)?.try_into().ok()?) as usize;
    let mut pos = 20;
    let mut bodies = Vec::with_capacity(count.min(payload.len() / 4));
    for _ in 0..count {
        let len = u32::from_le_bytes(payload.get(pos..pos + 4)?.try_into().ok()?) as usize;
        pos += 4;
        let body = std::str::from_utf8(payload.get(pos..pos + len)?).ok()?;
        pos += len;
        bodies.push(body.to_owned());
    }
    (pos == payload.len()).then_some(Recovered {
        record,
        recorded_at,
        bodies,
    })
}

impl Journal {
    /// Opens the journal in `dir` (creating it), returns it with every intact record numbered
    /// above `indexed`, in order. Appends go to a new segment.
    pub fn open(
        dir: &Path,
        indexed: u64,
        max_backlog: usize,
    ) -> io::Result<(Journal, Vec<Recovered>)> {
        std::fs::create_dir_all(dir)?;
        let mut pending = Vec::new();
        let mut last = indexed;
        let mut segments = VecDeque::new();
        for seg in wal::list_segments(dir)? {
            let mut bytes = Vec::new();
            File::open(wal::segment_path(dir, seg))?.read_to_end(&mut bytes)?;
            let mut first = None;
            let mut unreadable = false;
            let torn = wal::read_records(&bytes, |payload| {
                let Some(r) = read_record(payload) else {
                    unreadable = true;
                    return false;
                };
                first.get_or_insert(r.record);
                last = last.max(r.record);
                if r.record > indexed {
                    pending.push(r);
                }
                true
            });
            if torn || unreadable {
                // Only a record whose sync never returned can be torn, and it was never acked;
                // anything after it in the segment was written after it and was not either.
                tracing::warn!(
                    message = "event journal segment ends in a torn or unreadable record; the records before it are kept",
                    segment = seg,
                    unreadable,
                );
            }
            segments.push_back((seg, first.unwrap_or(last + 1)));
        }
        // Records of one segment are numbered in order, and segments in order; sort anyway so
        // a replay never depends on it.
        pending.sort_by_key(|r| r.record);
        let seg = segments.back().map_or(1, |(s, _)| s + 1);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(wal::segment_path(dir, seg))?;
        wal::sync_dir(dir)?;
        segments.push_back((seg, last + 1));
        let tail = Arc::new(Mutex::new(Tail {
            file: Arc::new(file),
            seg,
            len: 0,
            next: last + 1,
            segments,
            poisoned: false,
        }));
        let syncs = Arc::new(Syncs {
            state: Mutex::new(SyncState {
                wanted: last,
                synced: last,
                ..SyncState::default()
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let syncer = {
            let (tail, syncs) = (tail.clone(), syncs.clone());
            std::thread::Builder::new()
                .name("event-journal-sync".into())
                .spawn(move || sync_loop(tail, syncs))?
        };
        let journal = Journal {
            dir: dir.to_owned(),
            tail,
            progress: Mutex::new(Progress {
                backlog: 0,
                indexed,
            }),
            moved: Condvar::new(),
            max_backlog,
            syncs,
            syncer: Some(syncer),
        };
        Ok((journal, pending))
    }

    /// Writes one record of `bodies` without waiting for it to reach the disk, and asks the
    /// sync thread for it; returns its number, for [`wait_durable`](Journal::wait_durable).
    /// Waits first while the writer thread is more than `max_backlog` events behind.
    pub fn stage<B: AsRef<str>>(&self, recorded_at: i64, bodies: &[B]) -> io::Result<u64> {
        {
            let mut p = self.progress.lock();
            let deadline = Instant::now() + Duration::from_secs(30);
            while p.backlog >= self.max_backlog {
                if self.moved.wait_until(&mut p, deadline).timed_out() {
                    return Err(io::Error::other(
                        "the fleet store's writer is more than 30 s behind the event journal",
                    ));
                }
            }
            p.backlog += bodies.len();
        }
        let result = self.write(recorded_at, bodies);
        match result {
            Ok(record) => {
                let mut s = self.syncs.state.lock();
                s.wanted = s.wanted.max(record);
                drop(s);
                self.syncs.work.notify_one();
            }
            Err(_) => self.abandoned(bodies.len()),
        }
        result
    }

    /// Waits until record `record` (staged by this process) is on disk. An error means it may
    /// not be: the journal takes nothing more until the process restarts. Either way the
    /// caller hands the record to the writer thread (its events may be on disk; storing them is
    /// harmless because the group is not acked and its retry makes the same events), so later
    /// records do not wait for it.
    pub fn wait_durable(&self, record: u64) -> io::Result<()> {
        let mut s = self.syncs.state.lock();
        while s.synced < record {
            if let Some(error) = &s.failed {
                return Err(io::Error::other(format!(
                    "syncing the event journal failed: {error}"
                )));
            }
            self.syncs.done.wait(&mut s);
        }
        Ok(())
    }

    fn write<B: AsRef<str>>(&self, recorded_at: i64, bodies: &[B]) -> io::Result<u64> {
        let len: usize = bodies.iter().map(|b| b.as_ref().len() + 4).sum();
        let mut buf = Vec::with_capacity(28 + len);
        wal::begin_record(&mut buf);
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(&recorded_at.to_le_bytes());
        buf.extend_from_slice(&(bodies.len() as u32).to_le_bytes());
        for b in bodies {
            let b = b.as_ref();
            buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
            buf.extend_from_slice(b.as_bytes());
        }
        let record = {
            let mut t = self.tail.lock();
            if t.poisoned {
                return Err(io::Error::other(
                    "an earlier write to the event journal failed; restart the process",
                ));
            }
            if t.len >= SEGMENT_BYTES {
                // The sync thread only syncs the segment being written: what this one holds
                // is synced now, before it is left.
                if let Err(error) = t.file.sync_data() {
                    t.poisoned = true;
                    // Records staged into it and not synced yet are not durable either.
                    self.syncs.state.lock().failed = Some(error.to_string());
                    self.syncs.done.notify_all();
                    return Err(error);
                }
                let seg = t.seg + 1;
                let file = OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .open(wal::segment_path(&self.dir, seg))?;
                wal::sync_dir(&self.dir)?;
                let first = t.next;
                t.segments.push_back((seg, first));
                t.file = Arc::new(file);
                t.seg = seg;
                t.len = 0;
            }
            let record = t.next;
            buf[8..16].copy_from_slice(&record.to_le_bytes());
            wal::seal(&mut buf);
            if let Err(error) = (&*t.file).write_all(&buf) {
                t.poisoned = true;
                return Err(error);
            }
            t.next += 1;
            t.len += buf.len() as u64;
            record
        };
        Ok(record)
    }

    /// The number of the last record appended (0 when none ever was).
    pub fn head(&self) -> u64 {
        self.tail.lock().next - 1
    }

    /// The writer thread has put every record up to `record` into `fleet.db`, `events` events
    /// in all since the last call: wakes waiting appends and queries, deletes segments that
    /// hold nothing newer.
    pub fn indexed(&self, record: u64, events: usize) {
        {
            let mut p = self.progress.lock();
            p.indexed = p.indexed.max(record);
            p.backlog = p.backlog.saturating_sub(events);
        }
        self.moved.notify_all();
        let mut done = Vec::new();
        {
            let mut t = self.tail.lock();
            // A segment can go when the next one starts at or before the record after `record`.
            while t.segments.len() > 1 && t.segments[1].1 <= record + 1 {
                done.extend(t.segments.pop_front().map(|(s, _)| s));
            }
        }
        for seg in done {
            if let Err(error) = std::fs::remove_file(wal::segment_path(&self.dir, seg)) {
                tracing::warn!(message = "removing an indexed event journal segment failed", segment = seg, %error);
            }
        }
    }

    /// Events of a record that was never written: no longer counted as backlog.
    fn abandoned(&self, events: usize) {
        let mut p = self.progress.lock();
        p.backlog = p.backlog.saturating_sub(events);
        drop(p);
        self.moved.notify_all();
    }

    /// Whether every record staged so far is in `fleet.db`.
    pub fn caught_up(&self) -> bool {
        let head = self.head();
        self.progress.lock().indexed >= head
    }

    /// Waits (at most `limit`) until every record appended before the call is in `fleet.db`.
    /// Returns `false` when the limit passed first.
    pub fn settle(&self, limit: Duration) -> bool {
        let target = self.head();
        let deadline = Instant::now() + limit;
        let mut p = self.progress.lock();
        while p.indexed < target {
            if self.moved.wait_until(&mut p, deadline).timed_out() {
                return p.indexed >= target;
            }
        }
        true
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.syncs.state.lock().closed = true;
        self.syncs.work.notify_one();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
impl Journal {
    /// Stages a record and waits until it is durable.
    pub(crate) fn append(&self, recorded_at: i64, bodies: &[String]) -> io::Result<u64> {
        let record = self.stage(recorded_at, bodies)?;
        self.wait_durable(record)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(n: usize, tag: &str) -> Vec<String> {
        (0..n).map(|i| format!("{{\"{tag}\":{i}}}")).collect()
    }

    #[test]
    fn records_come_back_after_the_indexed_one_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (j, pending) = Journal::open(dir.path(), 0, 1_000).unwrap();
        assert!(pending.is_empty());
        assert_eq!(j.append(10, &bodies(2, "a")).unwrap(), 1);
        assert_eq!(j.append(20, &bodies(3, "b")).unwrap(), 2);
        assert_eq!(j.append(30, &[]).unwrap(), 3);
        assert_eq!(j.head(), 3);
        drop(j);
        let (j, pending) = Journal::open(dir.path(), 1, 1_000).unwrap();
        let got: Vec<_> = pending
            .iter()
            .map(|r| (r.record, r.recorded_at, r.bodies.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(2, 20, bodies(3, "b")), (3, 30, Vec::new())],
            "record 1 was indexed"
        );
        // Numbers go on after the highest record found.
        assert_eq!(j.append(40, &bodies(1, "c")).unwrap(), 4);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_what_came_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 0, 1_000).unwrap();
        j.append(1, &bodies(2, "x")).unwrap();
        drop(j);
        let seg = wal::list_segments(dir.path()).unwrap()[0];
        let mut f = OpenOptions::new()
            .append(true)
            .open(wal::segment_path(dir.path(), seg))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        let (_, pending) = Journal::open(dir.path(), 0, 1_000).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].bodies, bodies(2, "x"));
    }

    #[test]
    fn indexed_segments_are_deleted_and_appends_wait_for_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 0, 5).unwrap();
        let j = Arc::new(j);
        j.append(1, &bodies(3, "a")).unwrap();
        j.append(1, &bodies(2, "b")).unwrap();
        // Five events behind: the next append waits until the writer moves.
        let waiting = {
            let j = j.clone();
            std::thread::spawn(move || j.append(2, &bodies(1, "c")).unwrap())
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !waiting.is_finished(),
            "the append must wait for the backlog"
        );
        assert!(!j.settle(Duration::from_millis(10)));
        j.indexed(2, 5);
        assert_eq!(waiting.join().unwrap(), 3);
        j.indexed(3, 1);
        assert!(j.settle(Duration::from_millis(10)));
        drop(j);
        // The next open starts a new segment; once its records are indexed the old one goes.
        let (j, pending) = Journal::open(dir.path(), 3, 5).unwrap();
        assert!(pending.is_empty());
        assert_eq!(wal::list_segments(dir.path()).unwrap().len(), 2);
        j.indexed(3, 0);
        assert_eq!(wal::list_segments(dir.path()).unwrap().len(), 1);
    }

    /// Workers stage records and wait for them while the sync thread syncs: every record
    /// staged comes back at the next open, in order, once its wait returned.
    #[test]
    fn staged_records_of_many_threads_are_durable_once_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 0, 100_000).unwrap();
        let j = Arc::new(j);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            let record = j.stage(i, &bodies(2, &format!("t{t}-{i}"))).unwrap();
                            j.wait_durable(record).unwrap();
                            record
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut records: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        records.sort_unstable();
        assert_eq!(records, (1..=200).collect::<Vec<_>>());
        // Staged and not waited for: written, and made durable by the sync thread anyway.
        let last = j.stage(99, &bodies(1, "last")).unwrap();
        drop(j);
        let (_, pending) = Journal::open(dir.path(), 0, 100_000).unwrap();
        let numbers: Vec<u64> = pending.iter().map(|r| r.record).collect();
        assert_eq!(numbers, (1..=last).collect::<Vec<_>>());
        assert!(
            pending
                .iter()
                .all(|r| r.bodies.len() == 2 || r.record == last)
        );
    }

    #[test]
    fn garbage_segments_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            wal::segment_path(dir.path(), 1),
            b"\x05\0\0\0garbage-and-more",
        )
        .unwrap();
        let (j, pending) = Journal::open(dir.path(), 0, 10).unwrap();
        assert!(pending.is_empty());
        assert_eq!(j.append(1, &bodies(1, "ok")).unwrap(), 1);
    }
}
