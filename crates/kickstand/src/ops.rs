//! The operations services in a process: the messenger, the script runner, the scheduler with
//! its rules (issue 7), all on one ops database, and the gateway in front of them.
//!
//! `kickstand run` starts the three services in the same process as the tracking engine and
//! mounts their routes beside the API (`/api/v1/messages`, `/api/v1/scripts`, `/api/v1/jobs`,
//! `/api/v1/rules`, …), so the URLs are the ones a gateway routes in scale-out. Its scheduler
//! and scripts call the process's own address with a key that lives only in memory.
//! `kickstand serve --role messenger,runner,scheduler,gateway` starts each where asked; the
//! records then live in PostgreSQL (`[ops] store = "postgres"`) and the scheduler's leadership in
//! Redis.

use crate::settings::Settings;
use anyhow::Context;
use kickstand_engine::fleet::FleetStore;
use kickstand_http::auth::{KeyStore, Scope};
use kickstand_messenger::{Messenger, MessengerConfig};
use kickstand_runner::{EnvValue, Runner, RunnerConfig};
use kickstand_scheduler::{Scheduler, SchedulerConfig};
use kickstand_service::Db;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;

/// Where the ops records (messages, deliveries, templates, scripts' runs and audit, jobs, runs,
/// rules) are kept: `[ops]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsSettings {
    /// `embedded`: `ops.db` (SQLite) in the data directory, for one process. `postgres`: shared
    /// by every process of a scale-out deployment.
    pub store: OpsStoreKind,
    /// The PostgreSQL URL; empty means the one of `[fleet.postgres]` (with its TLS settings).
    pub postgres_url: String,
    /// The PostgreSQL schema of the ops tables (created when missing).
    pub postgres_schema: String,
}

impl Default for OpsSettings {
    fn default() -> Self {
        OpsSettings {
            store: OpsStoreKind::Embedded,
            postgres_url: String::new(),
            postgres_schema: "kickstand_ops".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpsStoreKind {
    Embedded,
    Postgres,
}

/// Opens the ops database of `settings`.
pub async fn open_db(settings: &Settings) -> anyhow::Result<Db> {
    match settings.ops.store {
        OpsStoreKind::Embedded => {
            let path = settings.data_dir.join("ops.db");
            Db::open_sqlite(&path)
                .with_context(|| format!("cannot open the ops database {}", path.display()))
        }
        OpsStoreKind::Postgres => {
            let mut pg = settings.fleet.postgres.connection();
            if !settings.ops.postgres_url.is_empty() {
                pg.url = settings.ops.postgres_url.clone();
            }
            anyhow::ensure!(
                !pg.url.is_empty(),
                "[ops] store = \"postgres\" needs [ops] postgres_url (or [fleet.postgres] url)"
            );
            let tls = kickstand_engine::history::postgres::tls_if_required(&pg, "ops")?;
            Db::open_postgres(&pg.url, &settings.ops.postgres_schema, tls)
                .await
                .context("cannot open the ops database in PostgreSQL")
        }
    }
}

/// Which services a process runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Which {
    pub messenger: bool,
    pub runner: bool,
    pub scheduler: bool,
}

/// The services started in this process.
#[derive(Default)]
pub struct OpsServices {
    pub messenger: Option<Arc<Messenger>>,
    pub runner: Option<Arc<Runner>>,
    pub scheduler: Option<Arc<Scheduler>>,
}

/// How the services of one process reach the API: `kickstand run` passes its own address and
/// a key made for this process (see [`own_access`]).
pub struct ApiAccess {
    pub url: String,
    pub key: Option<String>,
}

/// The address and an in-memory key of this process, for its scheduler and its scripts.
/// `None` keys when authentication is off.
pub fn own_access(
    addr: std::net::SocketAddr,
    keys: &Option<Arc<KeyStore>>,
) -> anyhow::Result<ApiAccess> {
    let key = match keys {
        Some(k) => Some(
            k.create_internal("kickstand (this process's services)", &[Scope::Admin])
                .context("cannot make the process's own key")?
                .1,
        ),
        None => None,
    };
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    Ok(ApiAccess {
        url: format!("http://{host}"),
        key,
    })
}

impl OpsServices {
    /// Starts the services of `which` on `db`. `access`, when given, is how the scheduler's
    /// actions and the scripts reach the API unless the settings say otherwise.
    pub async fn start(
        settings: &Settings,
        which: Which,
        db: Db,
        events: Option<Arc<dyn FleetStore>>,
        access: Option<&ApiAccess>,
    ) -> anyhow::Result<OpsServices> {
        let mut out = OpsServices::default();
        if which.messenger {
            let config: MessengerConfig = settings.messenger.clone();
            out.messenger = Some(
                Messenger::start(config, db.clone())
                    .await
                    .context("cannot start the messenger")?,
            );
        }
        if which.runner {
            let mut config: RunnerConfig = settings.runner.clone();
            if config.work_dir.is_none() {
                config.work_dir = Some(settings.data_dir.join("runs"));
            }
            if let Some(a) = access {
                config
                    .env
                    .entry("KICKSTAND_API_URL".into())
                    .or_insert_with(|| EnvValue::literal(&a.url));
                if let Some(key) = &a.key {
                    config
                        .env
                        .entry("KICKSTAND_API_KEY".into())
                        .or_insert_with(|| EnvValue::literal(key));
                }
            }
            out.runner = Some(
                Runner::start(config, db.clone())
                    .await
                    .context("cannot start the script runner")?,
            );
        }
        if which.scheduler {
            let mut config: SchedulerConfig = settings.scheduler.clone();
            if let Some(a) = access {
                let configured = settings.scheduler.api_key_env.is_some()
                    || settings.scheduler.api_key_file.is_some();
                if !configured {
                    config.api_url = a.url.clone();
                    config.api_key = a.key.clone();
                }
            }
            out.scheduler = Some(
                Scheduler::start(config, db.clone(), events)
                    .await
                    .context("cannot start the scheduler")?,
            );
        }
        Ok(out)
    }

    /// The routes of the services started, each with its state.
    pub fn routes(&self) -> Vec<OpenApiRouter> {
        let mut out = Vec::new();
        if let Some(m) = &self.messenger {
            out.push(m.router());
        }
        if let Some(r) = &self.runner {
            out.push(r.router());
        }
        if let Some(s) = &self.scheduler {
            out.push(s.router());
        }
        out
    }

    /// Stops the services: the scheduler first (no new actions), then the runner and the
    /// messenger.
    pub async fn shutdown(&self) {
        if let Some(s) = &self.scheduler {
            s.shutdown().await;
        }
        if let Some(r) = &self.runner {
            r.shutdown().await;
        }
        if let Some(m) = &self.messenger {
            m.shutdown().await;
        }
    }
}
