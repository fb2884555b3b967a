//! One typed settings struct, layered: compiled-in defaults, then an optional TOML file, then
//! `KICKSTAND_*` environment variables (`__` separates nesting: `KICKSTAND_ENGINE__WORKERS=4`),
//! then command-line flags. Validated before anything starts.

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use kickstand_domain::watch::{EventConfig, QualityConfig};
use kickstand_engine::EngineConfig;
use kickstand_engine::fleet::FleetConfig;
use kickstand_engine::history::{HistoryConfig, HistoryKind};
use kickstand_engine::rabbitmq::{TransportConfig, TransportKind};
use kickstand_engine::state::{StateConfig, StateKind};
use kickstand_feeds::gbfs::GbfsConfig;
use kickstand_feeds::mds::MdsConfig;
use kickstand_http::{HttpConfig, MapConfig};
use kickstand_webhooks::WebhookConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory that holds all of Kickstand's data (history, write-ahead log).
    pub data_dir: PathBuf,
    pub log: LogSettings,
    pub engine: EngineConfig,
    pub history: HistoryConfig,
    pub http: HttpConfig,
    pub map: MapConfig,
    pub auth: AuthSettings,
    pub mqtt: crate::mqtt::MqttSettings,
    /// How fixes travel from ingest to the workers (`kickstand serve`: RabbitMQ).
    pub transport: TransportConfig,
    /// Where the latest state lives (`kickstand serve`: Redis, shared by every process).
    pub state: StateConfig,
    /// Filters that keep bad GPS fixes out of the latest state and the events.
    pub quality: QualityConfig,
    /// Fleet events: thresholds, and whether the workers compute them at all.
    pub events: EventConfig,
    /// The OsmAnd / Traccar Client protocol (always on `/osmand` of the API).
    pub osmand: OsmandSettings,
    /// The public GBFS 3.0 feed (`/gbfs/3.0/`): operator details and vehicle types.
    pub gbfs: GbfsConfig,
    /// The MDS 2.0 Provider API (`/mds/`).
    pub mds: MdsConfig,
    /// Delivery of fleet events to webhook subscriptions (`/api/v1/webhooks`).
    pub webhooks: WebhookConfig,
    /// Where geofences, fleet events and webhook subscriptions are kept (`kickstand serve`:
    /// PostgreSQL, shared by every process).
    pub fleet: FleetConfig,
    /// Where the operations services keep their records (`kickstand serve`: PostgreSQL).
    pub ops: crate::ops::OpsSettings,
    /// The messenger (`/api/v1/messages`, `/api/v1/templates`): channels, retries, rate limits.
    pub messenger: kickstand_messenger::MessengerConfig,
    /// The script runner (`/api/v1/scripts`): the scripts directory, limits, scripts' variables.
    pub runner: kickstand_runner::RunnerConfig,
    /// The scheduler and rules (`/api/v1/jobs`, `/api/v1/rules`).
    #[serde(skip_serializing)]
    pub scheduler: kickstand_scheduler::SchedulerConfig,
    /// The gateway of `kickstand serve --role gateway`: listener rules and target groups.
    pub gateway: kickstand_gateway::GatewayConfig,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OsmandSettings {
    /// Also serve the protocol on its own port, on every path, as Traccar expects
    /// (`"0.0.0.0:5055"` by convention). Off by default.
    pub listen: Option<SocketAddr>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Require API keys (`Authorization: Bearer`). Off is for local development only and is
    /// refused unless the listen address is loopback.
    pub enabled: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings { enabled: true }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A `tracing` filter, e.g. `info` or `kickstand_engine=debug,info`.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            // The storage engine's own info lines (table flushes) are noise to an operator.
            level: "info,fjall=warn,lsm_tree=warn".into(),
            format: "text".into(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            data_dir: PathBuf::from("kickstand-data"),
            log: LogSettings::default(),
            engine: EngineConfig::default(),
            history: HistoryConfig::default(),
            http: HttpConfig::default(),
            map: MapConfig::default(),
            auth: AuthSettings::default(),
            mqtt: crate::mqtt::MqttSettings::default(),
            transport: TransportConfig::default(),
            state: StateConfig::default(),
            quality: QualityConfig::default(),
            events: EventConfig::default(),
            osmand: OsmandSettings::default(),
            gbfs: GbfsConfig::default(),
            mds: MdsConfig::default(),
            webhooks: WebhookConfig::default(),
            fleet: FleetConfig::default(),
            ops: crate::ops::OpsSettings::default(),
            messenger: kickstand_messenger::MessengerConfig::default(),
            runner: kickstand_runner::RunnerConfig::default(),
            scheduler: kickstand_scheduler::SchedulerConfig::default(),
            gateway: kickstand_gateway::GatewayConfig::default(),
        }
    }
}

/// Environment variables with the prefix that are not settings (test switches, the config path).
const NOT_SETTINGS: [&str; 3] = ["test_", "require_services", "config"];

impl Settings {
    /// Loads defaults ← `file` ← environment ← `overrides` (flags given on the command line).
    pub fn load(file: Option<&Path>, overrides: Figment) -> anyhow::Result<Settings> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            anyhow::ensure!(
                path.exists(),
                "config file {} does not exist",
                path.display()
            );
            fig = fig.merge(Toml::file(path));
        }
        let env = Env::prefixed("KICKSTAND_")
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                !NOT_SETTINGS.iter().any(|p| k.starts_with(p))
            })
            .split("__");
        let settings: Settings = fig
            .merge(env)
            .merge(overrides)
            .extract()
            .context("invalid settings")?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.engine.span().context("engine.bucket_secs")?;
        anyhow::ensure!(
            self.engine.queue_fixes > 0,
            "engine.queue_fixes must be positive"
        );
        anyhow::ensure!(
            self.engine.group_max_fixes > 0,
            "engine.group_max_fixes must be positive"
        );
        if self.history.kind == HistoryKind::Postgres {
            anyhow::ensure!(
                !self.history.postgres.url.trim().is_empty(),
                "history.postgres.url must be set when history.kind is postgres"
            );
            anyhow::ensure!(
                self.history.postgres.pool_size > 0,
                "history.postgres.pool_size must be positive"
            );
        }
        if self.history.kind == HistoryKind::Mongodb {
            self.history.mongodb.validate().context("history.mongodb")?;
        }
        anyhow::ensure!(
            self.http.body_limit_bytes >= 1024,
            "http.body_limit_bytes must be at least 1024"
        );
        self.mqtt.validate()?;
        if self.transport.kind == TransportKind::Rabbitmq {
            self.transport
                .rabbitmq
                .validate()
                .map_err(|e| anyhow::anyhow!("transport.rabbitmq: {e}"))?;
        }
        if self.state.kind == StateKind::Redis {
            anyhow::ensure!(
                !self.state.redis.url.trim().is_empty() && self.state.redis.pool_size > 0,
                "state.redis: url must be set and pool_size positive"
            );
        }
        self.quality.validate().map_err(anyhow::Error::msg)?;
        self.gbfs.validate().context("gbfs")?;
        self.mds.validate().context("mds")?;
        self.webhooks
            .validate()
            .map_err(|e| anyhow::anyhow!("webhooks: {e}"))?;
        self.events.validate().map_err(anyhow::Error::msg)?;
        self.fleet.validate().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            matches!(self.log.format.as_str(), "text" | "json"),
            "log.format must be text or json"
        );
        anyhow::ensure!(
            self.auth.enabled || self.listen.ip().is_loopback(),
            "authentication may be off only on a loopback address, not {}: anyone who can reach \
             the port could read and write the fleet",
            self.listen
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` under figment's global jail lock, so no other test's environment variables
    /// (set inside its own jail) can leak into a load that reads the environment.
    // figment's `Jail` dictates the closure's error type, a large `figment::Error`.
    #[allow(clippy::result_large_err)]
    fn jailed(f: impl FnOnce(&mut figment::Jail)) {
        figment::Jail::expect_with(|jail| {
            f(jail);
            Ok(())
        });
    }

    #[test]
    fn the_example_config_parses_and_matches_the_defaults_it_documents() {
        jailed(|_| {
            let example =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kickstand.example.toml");
            let s = Settings::load(Some(&example), Figment::new()).unwrap();
            let d = Settings::default();
            assert_eq!(s.listen, d.listen);
            assert_eq!(s.engine.bucket_secs, d.engine.bucket_secs);
            assert_eq!(s.http.body_limit_bytes, d.http.body_limit_bytes);
            assert_eq!(s.quality, d.quality);
            assert_eq!(s.events, d.events);
            assert_eq!(s.gbfs, d.gbfs);
            assert_eq!(s.mds, d.mds);
            assert_eq!(s.webhooks, d.webhooks);
            assert_eq!(s.osmand.listen, d.osmand.listen);
            assert_eq!(s.fleet.store, d.fleet.store);
            assert_eq!(s.fleet.postgres.url, d.fleet.postgres.url);
            assert_eq!(s.fleet.postgres.schema, d.fleet.postgres.schema);
            assert_eq!(s.fleet.postgres.pool_size, d.fleet.postgres.pool_size);
            assert_eq!(s.fleet.postgres.ca_file, d.fleet.postgres.ca_file);
            assert_eq!(s.ops.store, d.ops.store);
            assert_eq!(s.ops.postgres_schema, d.ops.postgres_schema);
            assert_eq!(s.messenger, d.messenger);
            assert_eq!(
                serde_json::to_value(&s.runner).unwrap(),
                serde_json::to_value(&d.runner).unwrap()
            );
            assert_eq!(s.scheduler.lease_ttl, d.scheduler.lease_ttl);
            assert_eq!(s.scheduler.tick_resolution, d.scheduler.tick_resolution);
            assert_eq!(s.scheduler.api_url, d.scheduler.api_url);
            assert_eq!(s.gateway, d.gateway);
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        jailed(|_| {
            let dir = tempfile::tempdir().unwrap();
            let bad = dir.path().join("bad.toml");
            std::fs::write(&bad, "[engine]\nworkerz = 3\n").unwrap();
            assert!(Settings::load(Some(&bad), Figment::new()).is_err());
            std::fs::write(&bad, "[engine]\nbucket_secs = 7\n").unwrap();
            assert!(Settings::load(Some(&bad), Figment::new()).is_err());
        });
    }

    #[test]
    fn test_switches_in_the_environment_are_not_settings() {
        jailed(|jail| {
            jail.set_env("KICKSTAND_REQUIRE_SERVICES", "1");
            jail.set_env("KICKSTAND_TEST_REDIS_URL", "redis://127.0.0.1:6379");
            jail.set_env("KICKSTAND_ENGINE__WORKERS", "3");
            let s = Settings::load(None, Figment::new()).unwrap();
            assert_eq!(s.engine.workers, 3);
            jail.set_env("KICKSTAND_ENGINE__WORKERZ", "3");
            assert!(Settings::load(None, Figment::new()).is_err());
        });
    }

    #[test]
    fn the_fleet_store_is_chosen_from_the_environment_and_checked() {
        use kickstand_engine::fleet::FleetStoreKind;
        jailed(|jail| {
            assert_eq!(
                Settings::load(None, Figment::new()).unwrap().fleet.store,
                FleetStoreKind::Embedded
            );
            jail.set_env("KICKSTAND_FLEET__STORE", "postgres");
            jail.set_env("KICKSTAND_FLEET__POSTGRES__SCHEMA", "fleet_1");
            let s = Settings::load(None, Figment::new()).unwrap();
            assert_eq!(s.fleet.store, FleetStoreKind::Postgres);
            assert_eq!(s.fleet.postgres.schema, "fleet_1");
            // The webhook tables share the schema, and take no other names.
            jail.set_env("KICKSTAND_FLEET__POSTGRES__SCHEMA", "fleet-1");
            let e = Settings::load(None, Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("fleet.postgres.schema"), "{e:#}");
            jail.set_env("KICKSTAND_FLEET__POSTGRES__SCHEMA", "kickstand");
            jail.set_env("KICKSTAND_FLEET__POSTGRES__URL", " ");
            let e = Settings::load(None, Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("fleet.postgres.url"), "{e:#}");
            jail.set_env("KICKSTAND_FLEET__STORE", "sqlite");
            assert!(Settings::load(None, Figment::new()).is_err());
            jail.set_env("KICKSTAND_FLEET__STORE", "postgres");
            jail.set_env("KICKSTAND_FLEET__POSTGRES__URL", "postgres://db/kickstand");
            assert!(Settings::load(None, Figment::new()).is_ok());
            // A history-only key under [fleet.postgres] is a mistake, not something to ignore.
            jail.set_env("KICKSTAND_FLEET__POSTGRES__PARTITIONS_AHEAD_DAYS", "5");
            let e = Settings::load(None, Figment::new()).unwrap_err();
            assert!(format!("{e:#}").contains("partitions_ahead_days"), "{e:#}");
        });
    }

    #[test]
    fn flags_override_the_file() {
        jailed(|_| {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("k.toml");
            std::fs::write(&f, "listen = \"127.0.0.1:9000\"\n[engine]\nworkers = 3\n").unwrap();
            let flags = Figment::from(Serialized::default("listen", "127.0.0.1:9001"));
            let s = Settings::load(Some(&f), flags).unwrap();
            assert_eq!(s.listen.port(), 9001);
            assert_eq!(s.engine.workers, 3);
        });
    }
}
