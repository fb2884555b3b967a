//! A worker: owns one shard of the vehicles, takes batches off its queue in groups, writes each
//! group to history with one durable append (group commit), moves the latest state forward, and
//! answers every batch of the group.
//!
//! Workers are OS threads, not async tasks: a group commit ends in `fdatasync`, which must never
//! stall the async runtime that serves HTTP.

use crate::history::HistoryWriter;
use crate::state::StateStore;
use crate::transport::{ShardBatch, SubmitError, SubmitOutcome};
use crate::watcher::ShardWatcher;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

/// How long an idle worker waits before letting its writer do time-based upkeep.
const TICK: Duration = Duration::from_millis(200);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs until the queue is closed and drained, then closes the writer (final checkpoint).
///
/// With a `watcher`, each group is first checked: bad fixes are flagged (stored in history
/// with the flag, kept out of the latest state), and the events of the good ones are durable
/// no later than the fixes, so a crash in between makes the retry compute the same events,
/// which the store keeps once. When both stores can (the embedded ones), the events' journal
/// sync runs while the fixes are written and history's record names the journal record, so
/// recovery drops the fixes unless their events survived (ADR 0024); otherwise the events are
/// stored first.
pub fn run(
    rx: Receiver<ShardBatch>,
    mut writer: Box<dyn HistoryWriter>,
    state: Arc<dyn StateStore>,
    max_group_fixes: usize,
    mut watcher: Option<ShardWatcher>,
) {
    let mut group: Vec<ShardBatch> = Vec::new();
    let mut fixes = Vec::new();
    let mut is_new = Vec::new();
    let mut sizes = Vec::new();
    let mut events = Vec::new();
    let mut good = Vec::new();
    loop {
        if let Some(w) = watcher.as_mut() {
            w.tick(now_ms());
        }
        let first = match rx.recv_timeout(TICK) {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) => {
                if let Err(error) = writer.tick() {
                    tracing::error!(message = "history upkeep failed", %error);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut total = first.fixes.len();
        group.push(first);
        while total < max_group_fixes {
            match rx.try_recv() {
                Ok(b) => {
                    total += b.fixes.len();
                    group.push(b);
                }
                Err(_) => break,
            }
        }
        fixes.clear();
        sizes.clear();
        for b in &mut group {
            metrics::histogram!(crate::metrics::WORKER_LAG_SECONDS)
                .record(b.enqueued.elapsed().as_secs_f64());
            sizes.push(b.fixes.len());
            fixes.append(&mut b.fixes);
        }
        metrics::histogram!(crate::metrics::GROUP_FIXES).record(fixes.len() as f64);
        let mut flagged = 0;
        let mut staged = None;
        if let Some(w) = watcher.as_mut() {
            events.clear();
            let now = now_ms();
            flagged = w.process(&mut fixes, now, &mut events);
            if !events.is_empty() {
                let stored = if writer.links_events() {
                    w.store()
                        .stage_events(&events, now)
                        .map(|s| staged = Some(s))
                } else {
                    w.store().append_events(&events, now)
                };
                if let Err(error) = stored {
                    tracing::error!(message = "storing events failed", %error);
                    w.forget(&fixes);
                    for b in group.drain(..) {
                        let _ = b.reply.send(Err(SubmitError::Storage(error.to_string())));
                    }
                    continue;
                }
            }
        }
        is_new.clear();
        let mut appended = match staged.as_ref().and_then(|s| s.record) {
            Some(record) => writer.append_linked(&fixes, &mut is_new, record),
            None => writer.append(&fixes, &mut is_new),
        };
        // Staged events are always waited for (that hands the record on); the group is acked
        // only if both hold.
        if let Some(s) = staged.take()
            && let Err(error) = s.durable()
        {
            if appended.is_ok() {
                // The fixes are on disk and their events may not be: no more writes until
                // restart, whose recovery drops them (the group is not acked).
                writer.refuse();
                appended = Err(crate::history::HistoryError::Engine(error.to_string()));
            }
        } else if !events.is_empty() {
            crate::watcher::count_events(&events);
        }
        if appended.is_err()
            && let Some(w) = watcher.as_mut()
        {
            w.forget(&fixes);
        }
        match appended {
            Ok(()) => {
                // Duplicates are never newer than the state held, so applying every fix is
                // the same as applying the new ones. Flagged fixes never become the state.
                let latest: &[_] = if flagged == 0 {
                    &fixes
                } else {
                    for (f, new) in fixes.iter().zip(&is_new) {
                        if *new && !f.point.quality.is_good() {
                            crate::watcher::count_flags(f.point.quality);
                        }
                    }
                    good.clear();
                    good.extend(fixes.iter().filter(|f| f.point.quality.is_good()).cloned());
                    &good
                };
                if let Err(error) = state.apply(latest) {
                    // Only shared stores fail; the fixes are durable and the store is rebuilt
                    // from history when it comes back empty.
                    tracing::warn!(message = "latest state not updated", %error);
                }
                // Counted before anyone is answered: a client that reads the metrics after its
                // ack finds its fixes in them.
                let accepted_all = is_new.iter().filter(|n| **n).count() as u64;
                metrics::counter!(crate::metrics::INGEST_ACCEPTED_TOTAL).increment(accepted_all);
                metrics::counter!(crate::metrics::INGEST_DUPLICATES_TOTAL)
                    .increment(is_new.len() as u64 - accepted_all);
                let mut at = 0;
                for (b, size) in group.drain(..).zip(&sizes) {
                    let accepted = is_new[at..at + size].iter().filter(|n| **n).count();
                    at += size;
                    let _ = b.reply.send(Ok(SubmitOutcome {
                        accepted,
                        duplicates: size - accepted,
                    }));
                }
            }
            Err(error) => {
                tracing::error!(message = "history append failed", %error);
                for b in group.drain(..) {
                    let _ = b.reply.send(Err(SubmitError::Storage(error.to_string())));
                }
            }
        }
    }
    if let Err(error) = writer.close() {
        tracing::error!(message = "final checkpoint failed; the WAL will be replayed at start", %error);
    }
}
