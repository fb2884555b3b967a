//! `Messenger`: the service as the binary sees it. `start` checks the configuration, reads the
//! channels' secrets, migrates the store and starts the delivery loop; `router` is the HTTP
//! API; `send` is the same as `POST /api/v1/messages`, for callers in the same process;
//! `shutdown` stops claiming and waits for the sends in flight.

use crate::api::{Accepted, SendRequest};
use crate::channel::Channel;
use crate::config::MessengerConfig;
use crate::deliver::{Deliverer, Lane};
use crate::limit::Limiter;
use crate::store;
use kickstand_service::{Caller, Db, DbError, Problem};
use kickstand_webhooks::retry::Jitter;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use utoipa_axum::router::OpenApiRouter;

/// Why the messenger could not start.
#[derive(Debug, thiserror::Error)]
pub enum MessengerError {
    /// The `[messenger]` settings are unusable (the message names the setting, never a secret).
    #[error("messenger settings: {0}")]
    Config(String),
    #[error("messenger store: {0}")]
    Db(#[from] DbError),
    #[error("messenger: {0}")]
    Limit(#[from] crate::limit::LimitError),
}

/// The running messenger of one process.
pub struct Messenger {
    pub(crate) db: Db,
    pub(crate) deliverer: Arc<Deliverer>,
    /// Turns true at shutdown: the claimer stops.
    stop: watch::Sender<bool>,
    claimer: Mutex<Option<JoinHandle<()>>>,
}

/// How long `shutdown` waits for sends in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl Messenger {
    /// Checks `config`, reads the channels' secrets, migrates the `messenger` tables of `db`,
    /// connects to Redis when `redis_url` is set, and starts the delivery loop on the current
    /// tokio runtime.
    pub async fn start(config: MessengerConfig, db: Db) -> Result<Arc<Messenger>, MessengerError> {
        let bad = MessengerError::Config;
        config.retry.check().map_err(bad)?;
        if config.concurrency == 0 || config.concurrency > 1024 {
            return Err(bad("concurrency must be from 1 to 1024".into()));
        }
        if config.poll_interval_ms == 0 {
            return Err(bad("poll_interval_ms must be above 0".into()));
        }
        let mut lanes = BTreeMap::new();
        for c in &config.channels {
            let channel = Channel::build(c, config.concurrency, &config.retry).map_err(bad)?;
            if channel.timeout.as_millis() as u64 * 3 >= config.lease_ms {
                return Err(bad(format!(
                    "lease_ms ({}) must be more than three times channel {}'s timeout_ms ({})",
                    config.lease_ms,
                    channel.name,
                    channel.timeout.as_millis()
                )));
            }
            let slots = Arc::new(Semaphore::new(channel.concurrency));
            let name = channel.name.clone();
            if lanes
                .insert(name.clone(), Arc::new(Lane { channel, slots }))
                .is_some()
            {
                return Err(bad(format!("two channels are named {name}")));
            }
        }
        db.migrate(store::COMPONENT, store::MIGRATIONS).await?;
        let limiter = match &config.redis_url {
            Some(url) => Limiter::redis(url, &config.redis_prefix).await?,
            None => Limiter::local(),
        };
        let mut rng = Jitter::from_entropy();
        let owner = format!("{:016x}", rng.next_u64());
        let deliverer = Arc::new(Deliverer {
            db: db.clone(),
            lanes,
            limiter,
            owner,
            lease_ms: config.lease_ms,
            poll_interval: Duration::from_millis(config.poll_interval_ms),
            idempotency_ttl_ms: (config.idempotency_ttl_secs as i64).saturating_mul(1000),
            wake: Arc::new(Notify::new()),
            jitter: Mutex::new(rng),
        });
        let (stop, stop_rx) = watch::channel(false);
        let claimer = tokio::spawn(deliverer.clone().run(stop_rx));
        tracing::info!(
            message = "messenger started",
            channels = deliverer.lanes.len(),
            shared_rate_limit = config.redis_url.is_some()
        );
        Ok(Arc::new(Messenger {
            db,
            deliverer,
            stop,
            claimer: Mutex::new(Some(claimer)),
        }))
    }

    /// The HTTP API, with this messenger as its state.
    pub fn router(self: &Arc<Self>) -> OpenApiRouter {
        crate::api::router().with_state(self.clone())
    }

    /// Accepts a message as `POST /api/v1/messages` does: checks it, renders it and queues
    /// it. With `idempotency_key`, the first accepted answer for that key (and the same
    /// request) is returned again instead of queuing a second message.
    pub async fn send(
        &self,
        request: SendRequest,
        idempotency_key: Option<&str>,
        caller: &Caller,
    ) -> Result<Accepted, Problem> {
        let hash = crate::api::hash(&serde_json::to_vec(&request).expect("a request serializes"));
        crate::api::accept(self, request, idempotency_key, &hash, caller).await
    }

    /// Stops claiming messages and waits (up to 30 s) for the sends in flight to be recorded.
    /// A send cut off by the wait is taken again by a process once its claim expires.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let claimer = self.claimer.lock().take();
        if let Some(c) = claimer {
            let _ = c.await;
        }
        let all = async {
            for lane in self.deliverer.lanes.values() {
                let n = lane.channel.concurrency as u32;
                if let Ok(p) = lane.slots.acquire_many(n).await {
                    p.forget();
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!(
                message = "messenger: sends still in flight at shutdown; their claims will expire"
            );
        }
        tracing::info!(message = "messenger stopped");
    }

    /// Wakes the delivery loop (a message was queued).
    pub(crate) fn wake(&self) {
        self.deliverer.wake.notify_one();
    }
}
