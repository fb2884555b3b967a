//! The engine: the transport, the workers, the latest state and the history store wired
//! together, with start-up (restore) and shutdown (drain and flush).

use crate::history::{HistoryConfig, HistoryError, HistoryStore};
use crate::state::{MemoryState, StateStore};
use crate::transport::{InProcessTransport, Transport, shard_of};
use crate::watcher::{FleetWatch, ShardWatcher};
use kickstand_domain::BucketSpan;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Settings of the tracking engine (`[engine]` in the config file; the history backend is
/// `[history]`, [`HistoryConfig`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Fixes that may wait between ingest and the workers before ingest answers 503.
    pub queue_fixes: usize,
    /// Most fixes one worker writes in one group commit.
    pub group_max_fixes: usize,
    /// Length of a history bucket in seconds (must divide a day). Default one hour.
    pub bucket_secs: u64,
    /// Days of history to keep; 0 keeps everything. Whole buckets are dropped.
    pub retain_days: u32,
    /// Seconds between upkeep passes (bucket compaction, retention).
    pub maintenance_interval_secs: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 0,
            queue_fixes: 1_000_000,
            group_max_fixes: 65_536,
            bucket_secs: 3600,
            retain_days: 0,
            maintenance_interval_secs: 60,
        }
    }
}

impl EngineConfig {
    pub fn span(&self) -> Result<BucketSpan, EngineError> {
        BucketSpan::from_secs(self.bucket_secs).ok_or(EngineError::Config(
            "bucket_secs must be a positive number of seconds that divides a day",
        ))
    }

    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.workers
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine settings: {0}")]
    Config(&'static str),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("the latest-state store failed: {0}")]
    State(String),
    #[error("could not start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A running engine.
pub struct Engine {
    pub transport: Arc<dyn Transport>,
    pub state: Arc<dyn StateStore>,
    pub history: Arc<dyn HistoryStore>,
    pub config: EngineConfig,
    /// Geofences, events and quality filters, when the engine runs them.
    pub fleet: Option<Arc<FleetWatch>>,
    /// Worker threads, joined at shutdown.
    workers: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    /// Dropping it stops the upkeep thread.
    stop_upkeep: parking_lot::Mutex<Option<crossbeam_channel::Sender<()>>>,
    upkeep: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Engine {
    /// Starts the engine on embedded defaults with its data in `data_dir`.
    pub fn start_embedded(data_dir: &Path, config: EngineConfig) -> Result<Engine, EngineError> {
        Engine::open(data_dir, config, &HistoryConfig::default())
    }

    /// Starts the engine on the configured history backend (the embedded one keeps its files
    /// in `data_dir`) and the in-memory latest state.
    pub fn open(
        data_dir: &Path,
        config: EngineConfig,
        history: &HistoryConfig,
    ) -> Result<Engine, EngineError> {
        Engine::open_watching(data_dir, config, history, None)
    }

    /// [`Engine::open`], with the workers running the quality filters and events of `fleet`.
    pub fn open_watching(
        data_dir: &Path,
        config: EngineConfig,
        history: &HistoryConfig,
        fleet: Option<Arc<FleetWatch>>,
    ) -> Result<Engine, EngineError> {
        let history = crate::history::open(
            history,
            data_dir,
            config.span()?,
            config.retain_days,
            fleet
                .as_ref()
                .map(|f| f.store.as_ref() as &dyn crate::fleet::FleetStore),
        )?;
        Engine::start_watching(history, Arc::new(MemoryState::default()), config, fleet)
    }

    /// Starts the engine on the given ports: restores the latest state from history, then
    /// starts the workers and the upkeep thread.
    pub fn start(
        history: Arc<dyn HistoryStore>,
        state: Arc<dyn StateStore>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        Engine::start_watching(history, state, config, None)
    }

    /// [`Engine::start`], with the workers also running the quality filters and computing
    /// events (`fleet`).
    pub fn start_watching(
        history: Arc<dyn HistoryStore>,
        state: Arc<dyn StateStore>,
        config: EngineConfig,
        fleet: Option<Arc<FleetWatch>>,
    ) -> Result<Engine, EngineError> {
        config.span()?;
        let n = config.worker_count();
        // Each worker starts watching the vehicles of its shard, so that one that never
        // reports again still becomes stale: the seeds come from the same pass over the
        // newest fixes that restores the latest state.
        let mut seeds: Vec<Vec<kickstand_domain::Fix>> = (0..n).map(|_| Vec::new()).collect();
        let watching = fleet.is_some();
        restore_state_seeding(history.as_ref(), state.as_ref(), &mut |fix| {
            if watching {
                seeds[shard_of(fix, n)].push(fix.clone());
            }
        })?;
        let (transport, receivers) = InProcessTransport::new(n, config.queue_fixes);
        let mut workers = Vec::with_capacity(n);
        for ((shard, rx), seed) in receivers.into_iter().enumerate().zip(seeds) {
            let writer = history.writer(shard)?;
            let state = state.clone();
            let max_group = config.group_max_fixes;
            let watcher = fleet.as_ref().map(|f| {
                let mut w = ShardWatcher::new(f.clone(), state.clone());
                w.seed(seed);
                w
            });
            workers.push(
                std::thread::Builder::new()
                    .name(format!("worker-{shard}"))
                    .spawn(move || crate::worker::run(rx, writer, state, max_group, watcher))?,
            );
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let upkeep = {
            let history = history.clone();
            let events = fleet.as_ref().map(|f| f.store.clone());
            let interval = Duration::from_secs(config.maintenance_interval_secs.max(1));
            let retain_ms = i64::from(config.retain_days) * 86_400_000;
            std::thread::Builder::new()
                .name("upkeep".into())
                .spawn(move || {
                    loop {
                        match stop_rx.recv_timeout(interval) {
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        upkeep_pass(history.as_ref(), retain_ms);
                        if let Some(store) = &events {
                            event_retention(store.as_ref(), retain_ms);
                        }
                    }
                })?
        };
        Ok(Engine {
            transport: Arc::new(transport),
            state,
            history,
            config,
            fleet,
            workers: parking_lot::Mutex::new(workers),
            stop_upkeep: parking_lot::Mutex::new(Some(stop_tx)),
            upkeep: parking_lot::Mutex::new(Some(upkeep)),
        })
    }

    /// The engine of a scale-out process (`kickstand serve`): the given transport (RabbitMQ),
    /// state (Redis), history (PostgreSQL) and fleet (geofences and events, for the API; the
    /// consumer runs the watch), and no in-process workers — the RabbitMQ consumer is the
    /// worker. With `keeper` (the worker role) it also runs upkeep (history, and event
    /// retention) and keeps a shared state store primed: whenever the store says it is empty
    /// (new, restarted or flushed), it is rebuilt from history within a second or so. An
    /// in-memory state is restored here, as in [`Engine::start`].
    pub fn assemble(
        transport: Arc<dyn Transport>,
        state: Arc<dyn StateStore>,
        history: Arc<dyn HistoryStore>,
        config: EngineConfig,
        fleet: Option<Arc<FleetWatch>>,
        keeper: bool,
    ) -> Result<Engine, EngineError> {
        config.span()?;
        if state.is_primed().map_err(|e| EngineError::State(e.0))? && state.len().unwrap_or(0) == 0
        {
            restore_state(history.as_ref(), state.as_ref())?;
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let upkeep = if keeper {
            let history = history.clone();
            let state = state.clone();
            let events = fleet.as_ref().map(|f| f.store.clone());
            let interval = Duration::from_secs(config.maintenance_interval_secs.max(1));
            let retain_ms = i64::from(config.retain_days) * 86_400_000;
            Some(
                std::thread::Builder::new()
                    .name("upkeep".into())
                    .spawn(move || {
                        let mut last_upkeep = Instant::now();
                        loop {
                            match stop_rx.recv_timeout(Duration::from_secs(1)) {
                                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                                _ => return,
                            }
                            keep_primed(history.as_ref(), state.as_ref());
                            if last_upkeep.elapsed() >= interval {
                                upkeep_pass(history.as_ref(), retain_ms);
                                if let Some(store) = &events {
                                    event_retention(store.as_ref(), retain_ms);
                                }
                                last_upkeep = Instant::now();
                            }
                        }
                    })?,
            )
        } else {
            None
        };
        Ok(Engine {
            transport,
            state,
            history,
            config,
            fleet,
            workers: parking_lot::Mutex::new(Vec::new()),
            stop_upkeep: parking_lot::Mutex::new(Some(stop_tx)),
            upkeep: parking_lot::Mutex::new(upkeep),
        })
    }

    /// Stops accepting, lets the workers drain their queues and checkpoint, and waits for them.
    /// Blocks until done; idempotent.
    pub fn shutdown(&self) {
        self.transport.close();
        let workers: Vec<_> = self.workers.lock().drain(..).collect();
        for w in workers {
            let _ = w.join();
        }
        self.stop_upkeep.lock().take();
        if let Some(u) = self.upkeep.lock().take() {
            let _ = u.join();
        }
        tracing::info!(message = "engine stopped; history flushed");
    }
}

/// Fills `state` with the newest fix of every vehicle in `history`. Never moves a vehicle back
/// in time (the store keeps the newer of what it holds and what is applied), so it is safe
/// while workers write.
pub fn restore_state(
    history: &dyn HistoryStore,
    state: &dyn StateStore,
) -> Result<usize, EngineError> {
    restore_state_seeding(history, state, &mut |_| {})
}

/// [`restore_state`], also handing every vehicle's newest fix (flagged or not) to `seed`.
fn restore_state_seeding(
    history: &dyn HistoryStore,
    state: &dyn StateStore,
    seed: &mut dyn FnMut(&kickstand_domain::Fix),
) -> Result<usize, EngineError> {
    let started = Instant::now();
    let mut restored = 0usize;
    let mut batch = Vec::with_capacity(4096);
    let mut failed = None;
    history.for_each_latest(&mut |vehicle_id, point| {
        let fix = kickstand_domain::Fix { vehicle_id, point };
        seed(&fix);
        // A flagged fix never becomes the latest state, even when it is the newest stored.
        if !fix.point.quality.is_good() {
            return;
        }
        batch.push(fix);
        if batch.len() == 4096 {
            if let Err(e) = state.apply(&batch)
                && failed.is_none()
            {
                failed = Some(e);
            }
            restored += batch.len();
            batch.clear();
        }
    })?;
    restored += batch.len();
    if let Some(e) = failed {
        return Err(EngineError::State(e.0));
    }
    state.apply(&batch).map_err(|e| EngineError::State(e.0))?;
    tracing::info!(
        message = "latest state restored from history",
        vehicles = restored,
        elapsed_ms = started.elapsed().as_millis() as u64
    );
    Ok(restored)
}

/// Rebuilds a shared state store that lost its contents (see [`StateStore::is_primed`]).
fn keep_primed(history: &dyn HistoryStore, state: &dyn StateStore) {
    match state.is_primed() {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                message = "the latest-state store is empty (new, restarted or flushed); rebuilding it from history"
            );
            match restore_state(history, state)
                .and_then(|_| state.mark_primed().map_err(|e| EngineError::State(e.0)))
            {
                Ok(()) => {}
                Err(error) => {
                    tracing::error!(message = "rebuilding the latest state failed; retrying", %error)
                }
            }
        }
        Err(error) => tracing::debug!(message = "latest-state store unavailable", %error),
    }
}

/// Drops the events older than the retention period (none when `retain_ms` is 0).
fn event_retention(store: &dyn crate::fleet::FleetStore, retain_ms: i64) {
    if retain_ms <= 0 {
        return;
    }
    match store.drop_events_before(now_ms() - retain_ms) {
        Ok(0) => {}
        Ok(n) => tracing::info!(message = "retention dropped events", events = n),
        Err(error) => tracing::error!(message = "event retention failed", %error),
    }
}

/// One upkeep pass: compaction and retention. (The size gauges are read fresh at each
/// `/metrics` scrape, not here.)
pub fn upkeep_pass(history: &dyn HistoryStore, retain_ms: i64) {
    let now = now_ms();
    match history.maintain(now) {
        Ok(n) if n > 0 => tracing::debug!(message = "compacted buckets", buckets = n),
        Ok(_) => {}
        Err(error) => tracing::error!(message = "bucket compaction failed", %error),
    }
    if retain_ms > 0 {
        match history.drop_before(now - retain_ms) {
            Ok(n) if n > 0 => tracing::info!(message = "retention dropped buckets", buckets = n),
            Ok(_) => {}
            Err(error) => tracing::error!(message = "retention failed", %error),
        }
    }
}
