//! `kickstand serve --role ingest,worker,api`: the same code as `kickstand run`, split into
//! processes that share RabbitMQ (transport), Redis (latest state) and PostgreSQL or MongoDB
//! (history). See docs/scale-out.md.
//!
//! Every serve process answers HTTP on `listen` (health, metrics, and the API when it can reach
//! the state and history stores). The roles decide what else it does:
//!
//! - `ingest`: HTTP and MQTT ingest publish to RabbitMQ and answer the device once the broker
//!   confirmed. Without it, ingest requests are refused with 503.
//! - `worker`: consumes the shard queues, runs the quality filters and the event rules, writes
//!   events, history and the latest state, acks; runs upkeep (history, event retention),
//!   rebuilds an emptied Redis from history, and runs a webhook dispatcher (one of them
//!   delivers: see [`kickstand_webhooks::dispatch`]).
//! - `api`: the query API, the live stream and the map (stateless: everything comes from Redis,
//!   the history store and the fleet store).
//!
//! Every process opens the fleet store (`[fleet]`: geofences, events, webhook subscriptions),
//! so the geofence, event, webhook, GBFS and MDS routes answer on any of them. Ingest processes
//! also serve the OsmAnd port (`[osmand] listen`).
//!
//! The operations roles (see [`crate::ops`]) run alone or beside the tracking roles:
//!
//! - `messenger`, `runner`, `scheduler`: the services of `/api/v1/messages` and
//!   `/api/v1/templates`, `/api/v1/scripts`, `/api/v1/jobs` and `/api/v1/rules`, on the ops
//!   records in PostgreSQL (`[ops] store = "postgres"`); schedulers share a leader lease in Redis
//!   (`[scheduler] redis_url`) and follow fleet events from the fleet store for the rules.
//! - `gateway`: the path-routing gateway on `[gateway] listen`, in front of all of them.
//!
//! A process with only operations roles starts no tracking engine: its `listen` answers
//! `/healthz`, `/readyz`, `/metrics` and its services' routes.

use crate::server::{
    app_state, metrics_handle, open_fleet, open_keys, serve_http, shutdown_signal,
    start_osmand_port, start_webhooks,
};
use crate::settings::Settings;
use anyhow::Context;
use kickstand_engine::Engine;
use kickstand_engine::fleet::FleetStoreKind;
use kickstand_engine::rabbitmq::TransportKind;
use kickstand_engine::rabbitmq::consumer::{self, WorkerPorts};
use kickstand_engine::rabbitmq::publisher::RabbitTransport;
use kickstand_engine::state::redis::RedisState;
use kickstand_engine::state::{MemoryState, StateKind, StateStore};
use kickstand_engine::transport::{SubmitError, SubmitFuture, Transport};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    Ingest,
    Worker,
    Api,
    Messenger,
    Runner,
    Scheduler,
    Gateway,
}

impl Role {
    /// One of the roles of the tracking engine (the others are operations services).
    fn is_tracking(self) -> bool {
        matches!(self, Role::Ingest | Role::Worker | Role::Api)
    }
}

/// The operations roles of a process.
fn ops_roles(roles: &BTreeSet<Role>) -> crate::ops::Which {
    crate::ops::Which {
        messenger: roles.contains(&Role::Messenger),
        runner: roles.contains(&Role::Runner),
        scheduler: roles.contains(&Role::Scheduler),
    }
}

/// The transport of a process without the ingest role.
struct NoIngest;

impl Transport for NoIngest {
    fn submit(&self, _: Vec<kickstand_domain::Fix>) -> SubmitFuture {
        Box::pin(async {
            Err(SubmitError::Unavailable(
                "this process does not run the ingest role; send fixes to an ingest node".into(),
            ))
        })
    }
    fn queue_depth(&self) -> usize {
        0
    }
    /// Never "nearly full": readiness of a node without ingest does not depend on it.
    fn capacity(&self) -> usize {
        usize::MAX
    }
    fn close(&self) {}
}

pub fn run_blocking(settings: Settings, roles: BTreeSet<Role>) -> anyhow::Result<()> {
    anyhow::ensure!(
        !roles.is_empty(),
        "give at least one --role (ingest, worker, api, messenger, runner, scheduler, gateway)"
    );
    let which = ops_roles(&roles);
    if which.messenger || which.runner || which.scheduler {
        anyhow::ensure!(
            settings.ops.store == crate::ops::OpsStoreKind::Postgres,
            "the operations roles of `kickstand serve` share their records: set [ops] store = \
             \"postgres\" (KICKSTAND_OPS__STORE=postgres) and [ops] postgres_url or [fleet.postgres]"
        );
        if which.scheduler && settings.scheduler.redis_url.is_none() {
            tracing::warn!(
                message = "[scheduler] redis_url is not set: this scheduler leads alone; with several scheduler processes set it, so one of them ticks"
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if !roles.iter().any(|r| r.is_tracking()) {
        return rt.block_on(serve_ops(settings, roles));
    }
    anyhow::ensure!(
        settings.transport.kind == TransportKind::Rabbitmq,
        "`kickstand serve` runs on RabbitMQ: set [transport] kind = \"rabbitmq\" \
         (KICKSTAND_TRANSPORT__KIND=rabbitmq); for one process on embedded defaults use `kickstand run`"
    );
    let all = roles.iter().filter(|r| r.is_tracking()).count() == 3;
    anyhow::ensure!(
        settings.history.kind != kickstand_engine::history::HistoryKind::Embedded || all,
        "processes with only some of the roles share one history: set [history] kind = \"postgres\" \
         (or \"mongodb\"); the embedded store is one process's files"
    );
    anyhow::ensure!(
        settings.fleet.store == FleetStoreKind::Postgres || all,
        "processes with only some of the roles share geofences, events and webhook subscriptions: \
         set [fleet] store = \"postgres\" (KICKSTAND_FLEET__STORE=postgres) and [fleet.postgres]; \
         the embedded store is one process's files"
    );
    anyhow::ensure!(
        settings.state.kind == StateKind::Redis || all,
        "processes with only some of the roles share the latest state through Redis: set [state] \
         kind = \"redis\" (KICKSTAND_STATE__KIND=redis)"
    );
    rt.block_on(serve(settings, roles))
}

/// Starts the gateway of `[gateway]` when the process has the role; it serves until `stop`.
async fn start_gateway(
    settings: &Settings,
    roles: &BTreeSet<Role>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !roles.contains(&Role::Gateway) {
        return Ok(None);
    }
    let gateway = kickstand_gateway::Gateway::start(settings.gateway.clone())
        .await
        .context("cannot start the gateway")?;
    let listener = TcpListener::bind(settings.gateway.listen)
        .await
        .with_context(|| format!("the gateway cannot listen on {}", settings.gateway.listen))?;
    tracing::info!(message = "gateway listening", addr = %listener.local_addr()?, rules = settings.gateway.rules.len(), target_groups = settings.gateway.target_groups.len());
    Ok(Some(tokio::spawn(async move {
        gateway
            .serve(listener, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    })))
}

/// A process with only operations roles: no tracking engine.
async fn serve_ops(settings: Settings, roles: BTreeSet<Role>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.data_dir.display()
        )
    })?;
    let which = ops_roles(&roles);
    let events = if which.scheduler {
        let (cfg, dir) = (settings.fleet.clone(), settings.data_dir.clone());
        Some(
            tokio::task::spawn_blocking(move || kickstand_engine::fleet::config::open(&cfg, &dir))
                .await?
                .context("cannot open the fleet store (the rules follow its events)")?,
        )
    } else {
        None
    };
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let keys = open_keys(&settings, addr)?;
    let ops = if which.messenger || which.runner || which.scheduler {
        let db = crate::ops::open_db(&settings).await?;
        crate::ops::OpsServices::start(&settings, which, db, events, None).await?
    } else {
        crate::ops::OpsServices::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gateway = start_gateway(&settings, &roles, stop_rx).await?;
    let names: Vec<String> = roles
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect();
    tracing::info!(message = "kickstand serve is running", %addr, roles = %names.join(","));
    let app = kickstand_http::operations_router(keys, metrics_handle(), ops.routes());
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed");
    let _ = stop_tx.send(true);
    ops.shutdown().await;
    if let Some(g) = gateway {
        let _ = tokio::time::timeout(Duration::from_secs(35), g).await;
    }
    tracing::info!(message = "kickstand serve stopped");
    result
}

async fn serve(mut settings: Settings, roles: BTreeSet<Role>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.data_dir.display()
        )
    })?;
    let span = settings.engine.span()?;
    // The fleet store first: the embedded history asks it which write-ahead log records to keep.
    let fleet = open_fleet(&settings).await?;
    let history = {
        let (cfg, dir, retain) = (
            settings.history.clone(),
            settings.data_dir.clone(),
            settings.engine.retain_days,
        );
        let store = fleet.store.clone();
        tokio::task::spawn_blocking(move || {
            kickstand_engine::history::open(&cfg, &dir, span, retain, Some(store.as_ref()))
        })
        .await?
        .with_context(|| format!("cannot open the {:?} history store", settings.history.kind))?
    };
    let state: Arc<dyn StateStore> = match settings.state.kind {
        StateKind::Memory => Arc::new(MemoryState::default()),
        StateKind::Redis => {
            let cfg = settings.state.redis.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || RedisState::open(&cfg))
                    .await?
                    .context("cannot open the Redis latest-state store")?,
            )
        }
    };
    let ingest = roles.contains(&Role::Ingest);
    let worker = roles.contains(&Role::Worker);
    let rabbit = if ingest {
        let t = Arc::new(RabbitTransport::start(settings.transport.rabbitmq.clone()));
        if !t.wait_connected(Duration::from_secs(5)).await {
            tracing::warn!(message = "RabbitMQ is not reachable yet; ingest answers 503 until it is", url = %settings.transport.rabbitmq.redacted_url());
        }
        Some(t)
    } else {
        None
    };
    let transport: Arc<dyn Transport> = match &rabbit {
        Some(t) => t.clone(),
        None => Arc::new(NoIngest),
    };
    let engine = {
        let (state, history, cfg) = (state.clone(), history.clone(), settings.engine.clone());
        let (transport, fleet) = (transport.clone(), fleet.clone());
        tokio::task::spawn_blocking(move || {
            Engine::assemble(transport, state, history, cfg, Some(fleet), worker)
        })
        .await?
        .context("cannot start the engine")?
    };
    let engine = Arc::new(engine);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let consumer = worker.then(|| {
        tokio::spawn(consumer::run(
            settings.transport.rabbitmq.clone(),
            WorkerPorts {
                history: history.clone(),
                state: state.clone(),
                group_max_fixes: settings.engine.group_max_fixes,
                fleet: Some(fleet.clone()),
            },
            stop_rx.clone(),
        ))
    });
    let mqtt = if ingest && settings.mqtt.enabled {
        let dead = Arc::new(crate::mqtt::DeadLetters::open(&settings.data_dir)?);
        tracing::info!(message = "mqtt ingest started", host = %settings.mqtt.host, port = settings.mqtt.port, topic = %settings.mqtt.topic);
        Some(tokio::spawn(crate::mqtt::run(
            settings.mqtt.clone(),
            transport.clone(),
            dead,
            stop_rx.clone(),
        )))
    } else {
        None
    };
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let names: Vec<String> = roles
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect();
    tracing::info!(message = "kickstand serve is running", %addr, roles = %names.join(","), history = ?settings.history.kind, state = ?settings.state.kind, fleet = ?settings.fleet.store);
    let keys = open_keys(&settings, addr)?;
    if settings.gbfs.rotation_secret.is_empty() {
        tracing::warn!(
            message = "gbfs.rotation_secret is not set: this process keeps its own key in its data directory, so API processes on other machines publish different GBFS vehicle ids; set one key for the deployment"
        );
    }
    settings.gbfs.rotation_secret = crate::server::gbfs_rotation_secret(&settings)?;
    let _ = metrics_handle();
    // Worker processes dispatch webhooks (one of them delivers at a time); the others serve
    // the subscriptions' routes.
    let (webhooks, dispatcher) =
        start_webhooks(&settings, &fleet, worker.then(|| stop_rx.clone())).await?;
    if ingest {
        let osmand = app_state(engine.clone(), &settings, keys.clone(), None);
        start_osmand_port(&settings, osmand, stop_rx.clone()).await?;
    }
    let which = ops_roles(&roles);
    let ops = if which.messenger || which.runner || which.scheduler {
        let db = crate::ops::open_db(&settings).await?;
        crate::ops::OpsServices::start(&settings, which, db, Some(fleet.store.clone()), None)
            .await?
    } else {
        crate::ops::OpsServices::default()
    };
    let gateway = start_gateway(&settings, &roles, stop_rx.clone()).await?;
    let state = app_state(engine.clone(), &settings, keys, Some(webhooks));
    let result = serve_http(listener, state, ops.routes(), shutdown_signal()).await;
    ops.shutdown().await;
    // Ingest stops first (nothing new is confirmed to devices), then the workers finish the
    // groups in hand and ack them; unacked messages stay in RabbitMQ for the next worker.
    let _ = stop_tx.send(true);
    if let Some(m) = mqtt {
        let _ = tokio::time::timeout(Duration::from_secs(10), m).await;
    }
    if let Some(c) = consumer {
        let _ = tokio::time::timeout(Duration::from_secs(35), c).await;
    }
    crate::server::dispatcher_stopped(dispatcher).await;
    if let Some(g) = gateway {
        let _ = tokio::time::timeout(Duration::from_secs(35), g).await;
    }
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    tracing::info!(message = "kickstand serve stopped");
    result
}
