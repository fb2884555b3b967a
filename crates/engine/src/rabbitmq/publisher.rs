//! The ingest side: [`RabbitTransport`] publishes each submission to the shard queues of its
//! vehicles and resolves once the broker has confirmed every message.
//!
//! A background task owns the connection: it connects, declares the topology, opens one
//! confirm-mode channel, and on any loss fails every unconfirmed submission (ingest answers
//! 503; the client's retry is idempotent downstream), then reconnects with backoff. While it is
//! disconnected, `submit` fails at once with [`SubmitError::Unavailable`] (503 with `Retry-After`).

use super::{
    AmqpResult, Backoff, Broken, ConfirmedChannel, RabbitConfig, connect, declare_topology,
};
use crate::transport::{SubmitError, SubmitFuture, SubmitOutcome, Transport, shard_of};
use kickstand_domain::{Fix, wire};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

struct Inner {
    cfg: RabbitConfig,
    /// The live channel, or `None` while (re)connecting.
    link: parking_lot::RwLock<Option<Arc<ConfirmedChannel>>>,
    /// The unconfirmed window, in messages.
    window: Arc<Semaphore>,
    closed: AtomicBool,
    stop: tokio::sync::watch::Sender<bool>,
}

/// The RabbitMQ transport of an ingest process.
pub struct RabbitTransport {
    inner: Arc<Inner>,
}

impl RabbitTransport {
    /// Starts the connection task on the current tokio runtime. Returns at once; `submit` answers
    /// 503 until the first connection is up ([`RabbitTransport::wait_connected`] waits for it).
    pub fn start(cfg: RabbitConfig) -> RabbitTransport {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            window: Arc::new(Semaphore::new(cfg.max_unconfirmed)),
            cfg,
            link: parking_lot::RwLock::new(None),
            closed: AtomicBool::new(false),
            stop,
        });
        tokio::spawn(supervise(inner.clone(), stopped));
        RabbitTransport { inner }
    }

    /// Waits up to `timeout` for the broker connection; false when it is not up by then.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.inner.link.read().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn is_connected(&self) -> bool {
        self.inner.link.read().is_some()
    }
}

async fn open_link(
    cfg: &RabbitConfig,
    broken: &Broken,
) -> AmqpResult<(amqprs::connection::Connection, ConfirmedChannel)> {
    let name = format!("kickstand-ingest-{}", std::process::id());
    let conn = connect(cfg, &name, broken).await?;
    let link = ConfirmedChannel::open(&conn, broken).await?;
    declare_topology(cfg, &link.channel).await?;
    Ok((conn, link))
}

async fn supervise(inner: Arc<Inner>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = Backoff::new();
    let mut logged_down = false;
    while !*stopped.borrow() {
        let broken = Broken::default();
        match open_link(&inner.cfg, &broken).await {
            Ok((conn, link)) => {
                backoff.reset();
                logged_down = false;
                tracing::info!(message = "connected to RabbitMQ", url = %inner.cfg.redacted_url(), shards = inner.cfg.shards);
                let link = Arc::new(link);
                *inner.link.write() = Some(link.clone());
                tokio::select! {
                    () = broken.wait() => {
                        tracing::warn!(message = "lost the RabbitMQ connection; reconnecting");
                    }
                    _ = stopped.changed() => {}
                }
                inner.link.write().take();
                link.fail_all();
                let _ = conn.close().await;
            }
            Err(error) => {
                if !logged_down {
                    tracing::error!(message = "RabbitMQ unavailable; ingest answers 503 until it is back", %error);
                    logged_down = true;
                } else {
                    tracing::debug!(message = "RabbitMQ still unavailable", %error);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next()) => {}
            _ = stopped.changed() => {}
        }
    }
}

impl Transport for RabbitTransport {
    fn submit(&self, fixes: Vec<Fix>) -> SubmitFuture {
        let inner = self.inner.clone();
        if inner.closed.load(Ordering::Acquire) {
            return Box::pin(async { Err(SubmitError::ShuttingDown) });
        }
        let Some(link) = inner.link.read().clone() else {
            return Box::pin(async {
                Err(SubmitError::Unavailable(
                    "the message broker is unreachable; retry later".into(),
                ))
            });
        };
        let cfg = &inner.cfg;
        let n = fixes.len();
        let mut parts: Vec<Vec<Fix>> = (0..cfg.shards).map(|_| Vec::new()).collect();
        for fix in fixes {
            parts[shard_of(&fix, cfg.shards)].push(fix);
        }
        let mut messages = Vec::new();
        for (shard, part) in parts.iter().enumerate() {
            for chunk in part.chunks(cfg.max_fixes_per_message) {
                let mut body = Vec::new();
                wire::encode(chunk, &mut body);
                messages.push((shard, body));
            }
        }
        let Ok(permit) = inner
            .window
            .clone()
            .try_acquire_many_owned(messages.len().min(cfg.max_unconfirmed) as u32)
        else {
            metrics::counter!(crate::metrics::INGEST_BACKPRESSURE_TOTAL).increment(1);
            return Box::pin(async { Err(SubmitError::Full) });
        };
        Box::pin(async move {
            let _permit = permit;
            let timeout = Duration::from_millis(inner.cfg.confirm_timeout_ms);
            let mut confirms = Vec::with_capacity(messages.len());
            for (shard, body) in messages {
                let rx = link
                    .publish(&inner.cfg.shard_queue(shard), body, None)
                    .await
                    .map_err(SubmitError::Storage)?;
                confirms.push(rx);
            }
            let all = async {
                for rx in confirms {
                    if rx.await != Ok(true) {
                        return false;
                    }
                }
                true
            };
            match tokio::time::timeout(timeout, all).await {
                Ok(true) => Ok(SubmitOutcome {
                    accepted: n,
                    duplicates: 0,
                }),
                Ok(false) => Err(SubmitError::Storage(
                    "the broker did not take the fixes (connection lost or nacked)".into(),
                )),
                Err(_) => Err(SubmitError::Storage(
                    "the broker did not confirm in time".into(),
                )),
            }
        })
    }

    fn queue_depth(&self) -> usize {
        self.inner.cfg.max_unconfirmed - self.inner.window.available_permits()
    }

    fn capacity(&self) -> usize {
        self.inner.cfg.max_unconfirmed
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let _ = self.inner.stop.send(true);
    }
}
