//! The `kickstand` binary: `run` (everything in one process), `export`, `bench`.
//!
//! Thin by design: it parses flags, loads [`settings::Settings`], and wires the engine to the
//! HTTP API. Everything with behaviour lives in the library crates.

mod alloc;
mod bench;
mod bench_events;
mod bench_history;
mod bench_mqtt;
mod bench_scaleout;
mod client;
mod export;
mod history_cmd;
mod keys;
mod mqtt;
mod ops;
mod ops_cli;
mod serve;
mod server;
mod settings;
mod sim;
mod simulate;

use clap::{Parser, Subcommand};
use figment::Figment;
use figment::providers::Serialized;
use std::net::SocketAddr;
use std::path::PathBuf;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[derive(Parser)]
#[command(
    name = "kickstand",
    version,
    about = "Self-hostable tracking and operations for shared e-scooter fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole service in one process on embedded defaults.
    Run(RunArgs),
    /// Run some roles (ingest, worker, api; messenger, runner, scheduler, gateway) as one
    /// process of a scale-out deployment on RabbitMQ, Redis and PostgreSQL (see
    /// docs/scale-out.md and docs/operations.md).
    Serve(ServeArgs),
    /// Export history as NDJSON or GeoJSON (the server must not be running on the directory).
    Export(export::ExportArgs),
    /// History stores: copy a history between the embedded store, PostgreSQL and MongoDB.
    History(history_cmd::HistoryArgs),
    /// Start an engine on a temporary directory, load it over real HTTP, print figures as JSON.
    Bench(bench::BenchArgs),
    /// Drive a running Kickstand with a simulated fleet over HTTP.
    Sim(simulate::SimArgs),
    /// Manage API keys: create, list, revoke.
    Key(keys::KeyArgs),
    /// Operations over the HTTP API: send messages, run scripts, manage scheduled jobs.
    Ops(ops_cli::OpsArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./kickstand-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// TOML settings file (see kickstand.example.toml).
    #[arg(long, env = "KICKSTAND_CONFIG")]
    config: Option<PathBuf>,
    /// Worker threads (0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Run N simulated scooters in-process, so the map shows a living fleet at once.
    #[arg(long, value_name = "N")]
    demo: Option<usize>,
    /// API keys: `on` (default) or `off` (loopback addresses only, for local development).
    #[arg(long, value_name = "on|off")]
    auth: Option<OnOff>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The roles of this process, comma-separated: ingest, worker, api (tracking); messenger,
    /// runner, scheduler, gateway (operations).
    #[arg(long, value_delimiter = ',', required = true)]
    role: Vec<serve::Role>,
    /// Address to listen on (health, metrics, the API) [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (API keys, MQTT dead letters) [default: ./kickstand-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// TOML settings file (see kickstand.example.toml).
    #[arg(long, env = "KICKSTAND_CONFIG")]
    config: Option<PathBuf>,
    /// API keys: `on` (default) or `off` (loopback addresses only).
    #[arg(long, value_name = "on|off")]
    auth: Option<OnOff>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let mut flags = Figment::new();
            if let Some(l) = args.listen {
                flags = flags.merge(Serialized::default("listen", l.to_string()));
            }
            if let Some(d) = args.data {
                flags = flags.merge(Serialized::default("data_dir", d));
            }
            if let Some(w) = args.workers {
                flags = flags.merge(Serialized::default("engine.workers", w));
            }
            if let Some(a) = args.auth {
                flags = flags.merge(Serialized::default("auth.enabled", matches!(a, OnOff::On)));
            }
            let settings = settings::Settings::load(args.config.as_deref(), flags)?;
            server::init_tracing(&settings.log)?;
            server::run_blocking(
                settings,
                server::RunOptions {
                    demo: args.demo.unwrap_or(0),
                },
            )
        }
        Command::Serve(args) => {
            let mut flags = Figment::new();
            if let Some(l) = args.listen {
                flags = flags.merge(Serialized::default("listen", l.to_string()));
            }
            if let Some(d) = args.data {
                flags = flags.merge(Serialized::default("data_dir", d));
            }
            if let Some(a) = args.auth {
                flags = flags.merge(Serialized::default("auth.enabled", matches!(a, OnOff::On)));
            }
            let settings = settings::Settings::load(args.config.as_deref(), flags)?;
            server::init_tracing(&settings.log)?;
            serve::run_blocking(settings, args.role.into_iter().collect())
        }
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
        Command::History(args) => history_cmd::run(args),
        Command::Key(args) => keys::run(args),
        Command::Ops(args) => ops_cli::run(args),
        Command::Sim(args) => {
            server::init_tracing(&settings::LogSettings {
                level: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                ..settings::LogSettings::default()
            })?;
            simulate::run(args)
        }
    }
}
