//! `kickstand key create|list|revoke`: API keys in a data directory's `keys.json`. A running
//! server sees the change within a second.

use crate::settings::Settings;
use figment::Figment;
use figment::providers::Serialized;
use kickstand_http::auth::{KeyStore, Scope};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct KeyArgs {
    /// Data directory [default: ./kickstand-data].
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// TOML settings file.
    #[arg(long, env = "KICKSTAND_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    action: KeyAction,
}

#[derive(clap::Subcommand)]
enum KeyAction {
    /// Create a key and print its token (shown this once).
    Create {
        /// A name to recognise the key by (a device fleet, a dashboard, a person).
        #[arg(long)]
        name: String,
        /// Scopes: ingest, read, operate, admin (repeat or separate with commas).
        #[arg(long = "scope", value_enum, value_delimiter = ',', required = true)]
        scopes: Vec<Scope>,
    },
    /// List keys (never their tokens).
    List,
    /// Revoke a key by its id.
    Revoke { id: String },
}

pub fn run(args: KeyArgs) -> anyhow::Result<()> {
    let mut flags = Figment::new();
    if let Some(d) = &args.data {
        flags = flags.merge(Serialized::default("data_dir", d));
    }
    let settings = Settings::load(args.config.as_deref(), flags)?;
    let store = KeyStore::open(KeyStore::path_in(&settings.data_dir))?;
    match args.action {
        KeyAction::Create { name, scopes } => {
            let (key, token) = store.create(&name, &scopes)?;
            eprintln!(
                "created key {} ({name}) with scopes {}; the token is shown once:",
                key.id,
                scopes_text(&key.scopes)
            );
            println!("{token}");
        }
        KeyAction::List => {
            println!(
                "{:<10} {:<24} {:<22} {:<26} revoked",
                "id", "name", "scopes", "created"
            );
            for k in store.list()? {
                println!(
                    "{:<10} {:<24} {:<22} {:<26} {}",
                    k.id,
                    k.name,
                    scopes_text(&k.scopes),
                    k.created_at,
                    k.revoked_at.as_deref().unwrap_or("-")
                );
            }
        }
        KeyAction::Revoke { id } => {
            let key = store.revoke(&id)?;
            eprintln!("revoked key {} ({})", key.id, key.name);
        }
    }
    Ok(())
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
