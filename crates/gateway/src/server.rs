//! [`Gateway`]: the checked configuration, the pooled client to the targets, the health
//! checkers, and the accept loop in mini-redis's `run(listener, shutdown)` shape.

use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::proxy::{self, ConnInfo};
use crate::rules::Routes;
use crate::target::TargetGroup;
use crate::{health, metrics};
use axum::body::Body;
use hyper::service::service_fn;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// How long idle connections to targets stay in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a connect to a target may take (ALB's connection timeout) before the client
/// gets 504; a shorter request timeout applies first.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway: routes requests by the listener rules to target groups.
pub struct Gateway {
    /// The compiled rules.
    routes: Routes,
    /// Every target group, for the health view.
    groups: Vec<Arc<TargetGroup>>,
    /// One pooled HTTP/1.1 client for all targets; keep-alive connections are reused per
    /// target.
    client: Client<HttpConnector, Body>,
    /// Connections served at once; acquired before `accept`, so a full gateway stops
    /// accepting instead of growing.
    connections: Arc<Semaphore>,
    /// How long a client has to send a request's headers, idle keep-alive time included.
    header_timeout: Duration,
    /// How long `serve` waits at shutdown for requests in flight (a streaming response can
    /// last forever) before it drops them.
    drain_timeout: Duration,
    /// Tells the health checkers to stop.
    stop: watch::Sender<bool>,
    /// The health checker tasks, awaited by `shutdown`.
    checkers: Mutex<Vec<JoinHandle<()>>>,
}

/// The health of one target, as the health checks last found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetHealth {
    /// The target group's name.
    pub group: String,
    /// The target's `host:port`.
    pub target: String,
    /// Whether it is in service.
    pub healthy: bool,
}

impl Gateway {
    /// Checks `config`, builds the routing table and starts one health checker per target
    /// group on the current tokio runtime.
    pub async fn start(config: GatewayConfig) -> Result<Arc<Gateway>, GatewayError> {
        if config.max_connections == 0 {
            return Err(GatewayError::config(
                "gateway.max_connections",
                "must be above 0",
            ));
        }
        if config.client_header_timeout_ms == 0 {
            return Err(GatewayError::config(
                "gateway.client_header_timeout_ms",
                "must be above 0",
            ));
        }
        let mut by_name = HashMap::new();
        let mut groups = Vec::new();
        for (i, gc) in config.target_groups.iter().enumerate() {
            let at = format!("gateway.target_groups[{i}]");
            let group = Arc::new(TargetGroup::new(gc, &at)?);
            if by_name
                .insert(group.name.clone(), Arc::clone(&group))
                .is_some()
            {
                return Err(GatewayError::config(
                    format!("{at}.name"),
                    format!("{:?} is used by another target group", gc.name),
                ));
            }
            groups.push(group);
        }
        let routes = Routes::new(&config, &by_name)?;

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);

        let (stop, _) = watch::channel(false);
        let mut checkers = Vec::new();
        for group in &groups {
            for t in &group.targets {
                ::metrics::gauge!(metrics::TARGET_HEALTHY, "group" => group.name.clone(), "target" => t.authority().to_owned()).set(1.0);
            }
            if group.health.enabled && !group.targets.is_empty() {
                checkers.push(tokio::spawn(health::run(
                    Arc::clone(group),
                    client.clone(),
                    stop.subscribe(),
                )));
            }
        }
        Ok(Arc::new(Gateway {
            routes,
            groups,
            client,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            header_timeout: Duration::from_millis(config.client_header_timeout_ms),
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
            stop,
            checkers: Mutex::new(checkers),
        }))
    }

    /// Serves connections from `listener` until `shutdown` completes, then stops accepting
    /// and waits up to `drain_timeout_ms` for the requests in flight.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let local_port = listener.local_addr().map_or(0, |a| a.port());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        // The connection tasks, so the ones still open after the drain timeout can be ended.
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while conns.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = Arc::clone(&self.connections).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // Usually out of file descriptors: wait for some to close.
                        tracing::warn!(message = "gateway accept failed", %error);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let conn_info = ConnInfo { peer, local_port };
            let gateway = Arc::clone(&self);
            let service = service_fn(move |req| {
                let gateway = Arc::clone(&gateway);
                async move {
                    Ok::<_, Infallible>(
                        proxy::handle(&gateway.routes, &gateway.client, req, conn_info).await,
                    )
                }
            });
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            conns.spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(message = "gateway connection ended with an error", %error);
                }
                drop(permit);
            });
        }
        drop(listener);
        if tokio::time::timeout(self.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                message = "gateway connections still open after the drain timeout; dropping them",
                drain_timeout_ms = self.drain_timeout.as_millis() as u64,
            );
            conns.abort_all();
        }
        while conns.join_next().await.is_some() {}
    }

    /// Stops the health checkers. Serving stops with `serve`'s shutdown future.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let handles = std::mem::take(&mut *self.checkers.lock());
        for handle in handles {
            let _ = handle.await;
        }
    }

    /// The health of every target, group by group in configuration order.
    pub fn target_health(&self) -> Vec<TargetHealth> {
        self.groups
            .iter()
            .flat_map(|g| {
                g.targets.iter().map(|t| TargetHealth {
                    group: g.name.clone(),
                    target: t.authority().to_owned(),
                    healthy: t.is_healthy(),
                })
            })
            .collect()
    }
}
