//! The ingest side: [`RabbitTransport`] publishes each submission to the shard queues of its
//! vehicles and resolves once the broker has confirmed every message.
//!
//! **Coalescing:** submissions go to one batcher task, which takes everything that has arrived
//! since its last publish, regroups it by shard and publishes one message per shard (up to
//! `max_fixes_per_message`). Under load, many small submissions (single-fix MQTT messages, small
//! HTTP batches) share messages and confirms; idle, a submission is published at once. Each
//! submission resolves when every message that carries one of its fixes is confirmed.
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

struct Inner {
    cfg: RabbitConfig,
    /// The live channel, or `None` while (re)connecting.
    link: parking_lot::RwLock<Option<Arc<ConfirmedChannel>>>,
    /// The unconfirmed window, in fixes.
    window: Arc<Semaphore>,
    closed: AtomicBool,
    stop: tokio::sync::watch::Sender<bool>,
    /// To the batcher.
    queue: tokio::sync::mpsc::UnboundedSender<Pending>,
}

/// A submission waiting for the batcher.
struct Pending {
    fixes: Vec<Fix>,
    reply: oneshot::Sender<Result<SubmitOutcome, SubmitError>>,
    /// Room in the unconfirmed window, held until the reply.
    _permit: OwnedSemaphorePermit,
}

/// The RabbitMQ transport of an ingest process.
pub struct RabbitTransport {
    inner: Arc<Inner>,
}

/// Most fixes one flush of the batcher takes.
const FLUSH_MAX_FIXES: usize = 65_536;

/// Flushes smaller than this wait up to `publish_linger_ms` for more submissions.
const LINGER_BELOW_FIXES: usize = 1_000;

impl RabbitTransport {
    /// Starts the connection and batcher tasks on the current tokio runtime. Returns at once;
    /// `submit` answers 503 until the first connection is up ([`RabbitTransport::wait_connected`]
    /// waits for it).
    pub fn start(cfg: RabbitConfig) -> RabbitTransport {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (queue, pending) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            window: Arc::new(Semaphore::new(cfg.max_unconfirmed_fixes)),
            cfg,
            link: parking_lot::RwLock::new(None),
            closed: AtomicBool::new(false),
            stop,
            queue,
        });
        tokio::spawn(supervise(inner.clone(), stopped));
        tokio::spawn(batcher(inner.clone(), pending));
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
}

/// Publishes what has arrived, by shard, and answers each submission once its messages are
/// confirmed.
async fn batcher(inner: Arc<Inner>, mut pending: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
    let shards = inner.cfg.shards;
    let timeout = Duration::from_millis(inner.cfg.confirm_timeout_ms);
    let mut parts: Vec<Vec<Fix>> = (0..shards).map(|_| Vec::new()).collect();
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        let mut total = batch[0].fixes.len();
        // A small flush waits up to `publish_linger_ms` for more: a trickle of single fixes
        // (MQTT) would otherwise become one broker message per fix and shard.
        let linger_until =
            tokio::time::Instant::now() + Duration::from_millis(inner.cfg.publish_linger_ms);
        while total < FLUSH_MAX_FIXES {
            let next = match pending.try_recv() {
                Ok(p) => Some(p),
                Err(_) if total < LINGER_BELOW_FIXES => {
                    tokio::time::timeout_at(linger_until, pending.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            let Some(p) = next else { break };
            total += p.fixes.len();
            batch.push(p);
        }
        let Some(link) = inner.link.read().clone() else {
            for p in batch {
                let _ = p.reply.send(Err(SubmitError::Unavailable(
                    "the message broker is unreachable; retry later".into(),
                )));
            }
            continue;
        };
        // Which messages carry each submission's fixes: by shard, then by chunk.
        let mut sizes = Vec::with_capacity(batch.len());
        let mut shards_of: Vec<Vec<usize>> = Vec::with_capacity(batch.len());
        for p in &mut batch {
            sizes.push(p.fixes.len());
            let mut mine = Vec::new();
            for fix in p.fixes.drain(..) {
                let s = shard_of(&fix, shards);
                if !mine.contains(&s) {
                    mine.push(s);
                }
                parts[s].push(fix);
            }
            shards_of.push(mine);
        }
        let mut confirms: Vec<Vec<oneshot::Receiver<bool>>> =
            (0..shards).map(|_| Vec::new()).collect();
        let mut failed = None;
        'publish: for (shard, part) in parts.iter_mut().enumerate() {
            for chunk in part.chunks(inner.cfg.max_fixes_per_message) {
                let mut body = Vec::with_capacity(chunk.len() * 40 + 8);
                wire::encode(chunk, &mut body);
                match link
                    .publish(&inner.cfg.shard_queue(shard), body, None)
                    .await
                {
                    Ok(rx) => confirms[shard].push(rx),
                    Err(e) => {
                        failed = Some(e);
                        break 'publish;
                    }
                }
            }
            part.clear();
        }
        for part in &mut parts {
            part.clear();
        }
        if let Some(e) = failed {
            for p in batch {
                let _ = p.reply.send(Err(SubmitError::Storage(e.clone())));
            }
            continue;
        }
        tokio::spawn(async move {
            // One verdict per shard's messages of this flush.
            let mut verdict: Vec<Option<SubmitError>> = Vec::with_capacity(shards);
            let deadline = tokio::time::Instant::now() + timeout;
            for rxs in confirms {
                let mut v = None;
                for rx in rxs {
                    match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(true)) => {}
                        Ok(_) => {
                            v = Some(SubmitError::Storage(
                                "the broker did not take the fixes (connection lost or nacked)"
                                    .into(),
                            ));
                        }
                        Err(_) => {
                            v = Some(SubmitError::Storage(
                                "the broker did not confirm in time".into(),
                            ));
                        }
                    }
                }
                verdict.push(v);
            }
            for ((p, n), mine) in batch.into_iter().zip(sizes).zip(shards_of) {
                let err = mine.iter().find_map(|s| verdict[*s].clone());
                let _ = p.reply.send(match err {
                    Some(e) => Err(e),
                    None => Ok(SubmitOutcome {
                        accepted: n,
                        duplicates: 0,
                    }),
                });
            }
        });
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
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Box::pin(async { Err(SubmitError::ShuttingDown) });
        }
        if inner.link.read().is_none() {
            return Box::pin(async {
                Err(SubmitError::Unavailable(
                    "the message broker is unreachable; retry later".into(),
                ))
            });
        }
        let want = fixes.len().min(inner.cfg.max_unconfirmed_fixes) as u32;
        let Ok(permit) = inner.window.clone().try_acquire_many_owned(want) else {
            metrics::counter!(crate::metrics::INGEST_BACKPRESSURE_TOTAL).increment(1);
            return Box::pin(async { Err(SubmitError::Full) });
        };
        let (reply, answer) = oneshot::channel();
        let sent = inner.queue.send(Pending {
            fixes,
            reply,
            _permit: permit,
        });
        Box::pin(async move {
            if sent.is_err() {
                return Err(SubmitError::ShuttingDown);
            }
            answer.await.map_err(|_| SubmitError::ShuttingDown)?
        })
    }

    fn queue_depth(&self) -> usize {
        self.inner.cfg.max_unconfirmed_fixes - self.inner.window.available_permits()
    }

    fn capacity(&self) -> usize {
        self.inner.cfg.max_unconfirmed_fixes
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let _ = self.inner.stop.send(true);
    }
}
