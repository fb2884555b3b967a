//! Kickstand's scheduler and rules (`/api/v1/jobs`, `/api/v1/rules`).
//!
//! Jobs run on a schedule (cron with seconds in a time zone, a fixed interval, or once) and
//! rules run on fleet events; both perform an [`action::Action`] — start a script, send a
//! message, run a built-in task — as one HTTP request to the ops API with an
//! `Idempotency-Key`, so a retry never acts twice.
//!
//! # Layout
//!
//! - [`config`]: the `[scheduler]` section.
//! - [`schedule`]: when a job runs (pure computation).
//! - [`action`]: what a job or rule does, and the HTTP client that does it.
//! - [`store`]: the records in the ops database (jobs, runs, rules, history).
//! - [`lease`]: leadership — a Redis lease in scale-out, always this process otherwise.
//! - [`jobs`]: the tick loop and runs; [`rules`]: following events; [`render`]: placeholders.
//! - [`api`]: the HTTP routes.
//!
//! **Architecture Invariant:** each tick of a job has at most one run row (unique by job and
//! tick) and only the process that inserted it performs it; only the leader ticks and follows
//! events. The scheduler does no work of its own: every effect is a request to the ops API.

pub mod action;
pub mod api;
pub mod config;
pub mod jobs;
pub mod lease;
pub mod render;
pub mod rules;
pub mod schedule;
pub mod store;

pub use config::SchedulerConfig;

use action::ActionClient;
use kickstand_engine::fleet::FleetStore;
use kickstand_service::Db;
use lease::Leadership;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};

/// The scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler settings: {0}")]
    Config(String),
    #[error("the ops database: {0}")]
    Db(#[from] kickstand_service::DbError),
    #[error("the scheduler's Redis lease: {0}")]
    Redis(String),
}

/// How long shutdown waits for runs in flight before leaving them to be taken over.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The scheduler service: its records, its client, its background loops.
pub struct Scheduler {
    pub(crate) config: SchedulerConfig,
    pub(crate) store: store::Store,
    pub(crate) client: ActionClient,
    /// This process's name in run records (unique: a random suffix).
    pub(crate) instance: String,
    pub(crate) leadership: Leadership,
    /// Where the rules read events; `None`: no rules are followed.
    pub(crate) events: Option<Arc<dyn FleetStore>>,
    /// Runs performed by this process, by (job, tick), to stop one on `replace`.
    pub(crate) inflight: Mutex<HashMap<(String, i64), AbortHandle>>,
    /// Finished runs for the batch writer.
    pub(crate) finished: mpsc::Sender<jobs::Finished>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Scheduler {
    /// Migrates the records, takes part in leadership and starts the tick and rules loops on
    /// the current runtime.
    pub async fn start(
        config: SchedulerConfig,
        db: Db,
        events: Option<Arc<dyn FleetStore>>,
    ) -> Result<Arc<Scheduler>, SchedulerError> {
        config.validate()?;
        let key = config.resolve_api_key()?;
        let client = ActionClient::new(
            &config.api_url,
            key,
            config.action_timeout,
            config.action_attempts,
        )
        .map_err(|e| SchedulerError::Config(format!("HTTP client: {e}")))?;
        let store = store::Store::open(db).await?;
        if let Some(ev) = &events {
            rules::init_cursor(&store, ev).await.map_err(|e| {
                SchedulerError::Config(format!("rules: cannot read the event head: {e}"))
            })?;
        }
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix).map_err(|e| SchedulerError::Config(e.to_string()))?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let base = config.instance.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "scheduler".into()),
                std::process::id()
            )
        });
        let instance = format!("{base}-{suffix}");
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let leadership = match &config.redis_url {
            None => Leadership::local(),
            Some(url) => {
                let mut lease = lease::RedisLease::connect(
                    url,
                    format!("{}:scheduler:leader", config.redis_prefix),
                    instance.clone(),
                    config.lease_ttl,
                    config.lease_renew,
                )
                .await
                .map_err(|e| SchedulerError::Redis(e.to_string()))?;
                lease.step().await;
                let leadership = lease.leadership();
                tasks.push(tokio::spawn(lease.run(stop_rx.clone())));
                leadership
            }
        };
        let (finished, finished_rx) = mpsc::channel(10_000);
        let writer = tokio::spawn(jobs::finish_writer(store.clone(), finished_rx));
        let s = Arc::new(Scheduler {
            config,
            store,
            client,
            instance,
            leadership,
            events,
            inflight: Mutex::new(HashMap::new()),
            finished,
            stop,
            tasks: Mutex::new(Vec::new()),
            writer: Mutex::new(Some(writer)),
        });
        tasks.push(tokio::spawn(jobs::tick_loop(s.clone(), stop_rx.clone())));
        tasks.push(tokio::spawn(rules::rules_loop(s.clone(), stop_rx)));
        *s.tasks.lock() = tasks;
        tracing::info!(message = "scheduler started", instance = %s.instance);
        Ok(s)
    }

    /// Whether this process leads (ticks jobs and follows events) now.
    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    /// This process's name in run records.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Stops ticking and following events, releases the lease, waits up to 5 s for the runs
    /// in flight; those still going then are left to their claim, which another scheduler
    /// takes over when it expires (`lease_ttl`).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.inflight.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (_, h) in self.inflight.lock().drain() {
            h.abort();
        }
        // Let the writer drain what is queued (it ends when every sender is gone; ours lives
        // in `self`, so give it a moment instead).
        for _ in 0..50 {
            if self.finished.capacity() == self.finished.max_capacity() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(w) = self.writer.lock().take() {
            w.abort();
        }
        tracing::info!(message = "scheduler stopped", instance = %self.instance);
    }
}

impl Scheduler {
    /// The `/api/v1/jobs…` and `/api/v1/rules…` routes, with this scheduler as their state.
    pub fn router<S: Clone + Send + Sync + 'static>(
        self: &Arc<Self>,
    ) -> utoipa_axum::router::OpenApiRouter<S> {
        api::router().with_state(self.clone())
    }
}
