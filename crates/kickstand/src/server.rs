//! `kickstand run`: the engine and the HTTP API in one process, with graceful shutdown.
//!
//! Shape after mini-redis: [`serve`] takes a bound listener and a shutdown future, so tests and
//! the benchmark bind `127.0.0.1:0` and the binary passes SIGTERM/Ctrl-C.

use crate::settings::{LogSettings, Settings};
use anyhow::Context;
use kickstand_engine::Engine;
use kickstand_engine::fleet::zones::Zones;
use kickstand_engine::fleet::{FleetStoreKind, config as fleet_config};
use kickstand_engine::history::HistoryKind;
use kickstand_engine::watcher::FleetWatch;
use kickstand_http::auth::{KeyStore, Scope};
use kickstand_http::events::StoreFeed;
use kickstand_http::feeds::FeedSettings;
use kickstand_http::{AppState, router_with};
use kickstand_webhooks::{
    Dispatcher, EventFeed, PgWebhookStore, Sender, SqliteWebhookStore, WebhookService, WebhookStore,
};
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Prints a line for the person who started the server. A closed stdout (a supervisor that
/// stopped reading) must not take the server down, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub fn init_tracing(log: &LogSettings) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level).context("log.level")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Installs the Prometheus recorder once per process.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|error| tracing::warn!(message = "metrics recorder not installed", %error))
                .ok()
                .inspect(|_| kickstand_engine::metrics::describe())
        })
        .clone()
}

/// Serves the API on `listener` until `shutdown` resolves, then drains the engine.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let engine = state.engine.clone();
    serve_http(listener, state, Vec::new(), shutdown).await?;
    tracing::info!(message = "HTTP server stopped; draining the pipeline");
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    Ok(())
}

/// Serves the API on `listener` until `shutdown` resolves and the requests in flight are
/// answered; leaves the engine running.
/// `ops` are the routes of the operations services of the process (see [`crate::ops`]).
pub async fn serve_http(
    listener: TcpListener,
    state: AppState,
    ops: Vec<utoipa_axum::router::OpenApiRouter>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let closing = state.closing.clone();
    let app = router_with(state, ops);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = closing.send(true);
        })
        .await
        .context("HTTP server failed")
}

/// The handlers' state of a server with these settings: the engine, keys, feeds, and the
/// webhook service when there is one.
pub fn app_state(
    engine: Arc<Engine>,
    settings: &Settings,
    keys: Option<Arc<KeyStore>>,
    webhooks: Option<Arc<WebhookService>>,
) -> AppState {
    AppState::new(
        engine,
        settings.http.clone(),
        settings.map.clone(),
        keys,
        metrics_handle(),
    )
    .with_feeds(FeedSettings {
        gbfs: settings.gbfs.clone(),
        mds: settings.mds.clone(),
        public_url: None,
    })
    .with_webhooks(webhooks)
}

/// The webhook subscriptions (`[fleet] store`: `webhooks.db` in the data directory, or the
/// `webhook_*` tables in the `[fleet.postgres]` schema) and, with `dispatch`, their dispatcher,
/// which follows the fleet's events until `dispatch` turns true. Every process that shares a
/// PostgreSQL store may dispatch: an advisory lock makes one of them deliver. Returns the
/// service and the dispatcher's task, which ends once it has resigned the leadership: await it
/// before the runtime goes.
pub async fn start_webhooks(
    settings: &Settings,
    fleet: &FleetWatch,
    dispatch: Option<watch::Receiver<bool>>,
) -> anyhow::Result<(Arc<WebhookService>, Option<JoinHandle<()>>)> {
    let store: Arc<dyn WebhookStore> = {
        let (cfg, dir) = (settings.fleet.clone(), settings.data_dir.clone());
        // Both stores block while they open (the PostgreSQL one runs a runtime of its own).
        tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<dyn WebhookStore>> {
            Ok(match cfg.store {
                FleetStoreKind::Embedded => {
                    let path = dir.join("webhooks.db");
                    Arc::new(SqliteWebhookStore::open(&path).with_context(|| {
                        format!("cannot open the webhook store {}", path.display())
                    })?)
                }
                FleetStoreKind::Postgres => {
                    let pg = cfg.postgres.connection();
                    let tls = kickstand_engine::history::postgres::tls_if_required(
                        &pg,
                        "fleet.postgres",
                    )?;
                    Arc::new(
                        PgWebhookStore::open(&pg.url, &pg.schema, tls)
                            .context("cannot open the webhook store in PostgreSQL")?,
                    )
                }
            })
        })
        .await??
    };
    let feed: Arc<dyn EventFeed> = Arc::new(StoreFeed(fleet.store.clone()));
    let sender = Sender::new(&settings.webhooks).context("cannot set up the webhook client")?;
    let (dispatcher, task) = match dispatch {
        Some(mut stop) => {
            let (handle, task) = Dispatcher::spawn(
                store.clone(),
                feed.clone(),
                sender.clone(),
                &settings.webhooks,
                async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                },
            );
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let service = Arc::new(WebhookService {
        store,
        feed,
        sender,
        config: settings.webhooks.clone(),
        dispatcher,
    });
    Ok((service, task))
}

/// Waits (at most 10 s) for a stopped dispatcher to resign, so the next leader takes over at
/// once and no store call of it is cut off by the runtime's end.
pub async fn dispatcher_stopped(task: Option<JoinHandle<()>>) {
    if let Some(task) = task
        && tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .is_err()
    {
        tracing::warn!(message = "the webhook dispatcher did not stop within 10 s");
    }
}

/// Serves the OsmAnd / Traccar Client protocol on `[osmand] listen`, on every path, until
/// `stop` turns true. Does nothing when the port is not configured.
pub async fn start_osmand_port(
    settings: &Settings,
    app: AppState,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(osmand) = settings.osmand.listen else {
        return Ok(());
    };
    let listener = TcpListener::bind(osmand)
        .await
        .with_context(|| format!("cannot listen for OsmAnd devices on {osmand}"))?;
    tracing::info!(message = "osmand protocol port open", addr = %listener.local_addr()?);
    tokio::spawn(async move {
        let router = kickstand_http::osmand::protocol_router(app);
        let done = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(done)
            .await
        {
            tracing::error!(message = "osmand port failed", %error);
        }
    });
    Ok(())
}

/// Opens the API keys of `settings.data_dir` (or none when authentication is off) and prints the
/// line that tells the person who started the server where it runs. The first start on a new
/// data directory creates an admin key and prints a URL that carries it, the way notebook servers
/// do; later starts print the plain URL.
pub fn open_keys(
    settings: &Settings,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Option<Arc<KeyStore>>> {
    let data = settings.data_dir.display();
    if settings.auth.enabled {
        let store = KeyStore::open(KeyStore::path_in(&settings.data_dir))?;
        if store.is_empty() {
            let (_, token) = store.create("admin (first run)", &[Scope::Admin])?;
            say!("Kickstand is running: http://{addr}/?token={token}  (data in {data})");
            say!("This admin key is shown once; create more with `kickstand key create`.");
        } else {
            say!(
                "Kickstand is running: http://{addr}/  (data in {data}; open it with ?token=<an API key>)"
            );
        }
        Ok(Some(Arc::new(store)))
    } else {
        say!("Kickstand is running: http://{addr}/  (data in {data}; authentication is OFF)");
        tracing::warn!(
            message =
                "authentication is off: anyone who can reach the port can read and write the fleet"
        );
        Ok(None)
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!(message = "shutdown requested");
}

/// What `kickstand run` adds on top of the settings.
pub struct RunOptions {
    /// Simulated scooters to run in-process (0: none).
    pub demo: usize,
}

/// Feeds the engine a simulated fleet, one report per scooter per second, until the engine
/// shuts down. Goes through the same transport as HTTP ingest.
async fn demo_fleet(engine: Arc<Engine>, vehicles: usize) {
    let mut fleet = crate::sim::Fleet::new(vehicles, crate::sim::SEOUL, 1);
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let fixes = fleet.tick(1.0, now);
        match engine.transport.submit(fixes).await {
            Ok(_) => {}
            Err(kickstand_engine::transport::SubmitError::ShuttingDown) => return,
            Err(error) => tracing::debug!(message = "demo tick skipped", %error),
        }
    }
}

/// The fleet store (`[fleet] store`: `fleet.db` in the data directory, or PostgreSQL), the
/// geofence index, and the quality and event settings the workers run.
pub async fn open_fleet(settings: &Settings) -> anyhow::Result<Arc<FleetWatch>> {
    let (cfg, dir) = (settings.fleet.clone(), settings.data_dir.clone());
    let (quality, events) = (settings.quality.clone(), settings.events.clone());
    // The stores block while they open and load (the PostgreSQL one runs a runtime of its own).
    tokio::task::spawn_blocking(move || {
        let store = fleet_config::open(&cfg, &dir).with_context(|| match cfg.store {
            FleetStoreKind::Embedded => "cannot open the fleet store".to_owned(),
            FleetStoreKind::Postgres => "cannot open the fleet store in PostgreSQL".to_owned(),
        })?;
        let zones = Arc::new(Zones::load(store.clone()).context("cannot load the geofences")?);
        Ok(Arc::new(FleetWatch {
            quality,
            events,
            zones,
            store,
        }))
    })
    .await?
}

/// The key of the GBFS public-id rotation: `gbfs.rotation_secret`, or one made at the first
/// start and kept in `gbfs-rotation.key` in the data directory (so ids stay stable across
/// restarts and nobody without the file can map them back to fleet ids).
pub fn gbfs_rotation_secret(settings: &Settings) -> anyhow::Result<String> {
    if !settings.gbfs.rotation_secret.is_empty() {
        return Ok(settings.gbfs.rotation_secret.clone());
    }
    let path = settings.data_dir.join("gbfs-rotation.key");
    if let Ok(text) = std::fs::read_to_string(&path)
        && text.trim().len() >= 32
    {
        return Ok(text.trim().to_owned());
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &key).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(key)
}

pub fn run_blocking(mut settings: Settings, options: RunOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data directory {}", settings.data_dir.display()))?;
        settings.gbfs.rotation_secret = gbfs_rotation_secret(&settings)?;
        let fleet = open_fleet(&settings).await?;
        let engine = {
            let dir = settings.data_dir.clone();
            let cfg = settings.engine.clone();
            let history = settings.history.clone();
            let fleet = fleet.clone();
            tokio::task::spawn_blocking(move || Engine::open_watching(&dir, cfg, &history, Some(fleet)))
                .await?
                .with_context(|| match settings.history.kind {
                    HistoryKind::Embedded => format!("cannot open the data directory {}", settings.data_dir.display()),
                    kind => format!("cannot open the {kind:?} history store"),
                })?
        };
        let engine = Arc::new(engine);
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(message = "kickstand is running", %addr, data_dir = %settings.data_dir.display(), workers = settings.engine.worker_count());
        let keys = open_keys(&settings, addr)?;
        if options.demo > 0 {
            tracing::info!(message = "demo fleet started", vehicles = options.demo);
            tokio::spawn(demo_fleet(engine.clone(), options.demo));
        }
        let (stop_mqtt, stopped) = tokio::sync::watch::channel(false);
        let (webhooks, dispatcher) = start_webhooks(&settings, &fleet, Some(stopped.clone())).await?;
        if settings.mqtt.enabled {
            let dead = Arc::new(crate::mqtt::DeadLetters::open(&settings.data_dir)?);
            tracing::info!(message = "mqtt ingest started", host = %settings.mqtt.host, port = settings.mqtt.port, topic = %settings.mqtt.topic, dead_letters = %dead.path().display());
            tokio::spawn(crate::mqtt::run(settings.mqtt.clone(), engine.transport.clone(), dead, stopped.clone()));
        }
        let osmand = app_state(engine.clone(), &settings, keys.clone(), None);
        start_osmand_port(&settings, osmand, stopped.clone()).await?;
        // The operations services, on the process's own address and an in-memory key.
        let access = crate::ops::own_access(addr, &keys)?;
        let db = crate::ops::open_db(&settings).await?;
        let ops = crate::ops::OpsServices::start(
            &settings,
            crate::ops::Which { messenger: true, runner: true, scheduler: true },
            db,
            Some(fleet.store.clone()),
            Some(&access),
        )
        .await?;
        // Unacked MQTT messages at shutdown are sent again by the broker on the next start.
        let state = app_state(engine.clone(), &settings, keys, Some(webhooks));
        let result = serve_http(listener, state, ops.routes(), shutdown_signal()).await;
        ops.shutdown().await;
        let _ = stop_mqtt.send(true);
        dispatcher_stopped(dispatcher).await;
        tracing::info!(message = "HTTP server stopped; draining the pipeline");
        tokio::task::spawn_blocking(move || engine.shutdown()).await?;
        result
    })
}
