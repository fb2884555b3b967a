//! API keys with scopes (`ingest`, `read`, `operate`, `admin`), sent as `Authorization: Bearer`.
//!
//! Keys live in `keys.json` in the data directory. Only a SHA-256 hash of each token is stored;
//! the token itself is shown once, when the key is created (tokens are 256 random bits, so a
//! fast hash is enough: there is nothing to brute-force). A running server notices keys created
//! or revoked by `kickstand key …` within a second. `admin` holds every scope.
//!
//! **Architecture Invariant:** apart from `/healthz`, `/readyz` and the static pages (the map
//! shell and the API description, which hold no fleet data), every route needs a key with its
//! group's scope: a missing or unknown key gets 401, a key without the scope 403.

use crate::problem::Problem;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send telemetry.
    Ingest,
    /// Read vehicles, tracks, the fleet summary, the live stream and metrics.
    Read,
    /// Run operations (jobs, scripts, messages), when those services exist.
    Operate,
    /// Everything, including managing keys.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }
}

/// A stored key: never the token, only its hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// A short public handle, for listing and revoking.
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the token.
    pub hash: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl KeyRecord {
    pub fn allows(&self, scope: Scope) -> bool {
        self.revoked_at.is_none()
            && (self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key file {0} is not valid: {1}")]
    Corrupt(PathBuf, String),
    #[error("no key with id {0}")]
    NotFound(String),
    #[error("the system's random source failed: {0}")]
    Random(String),
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyRecord>,
}

struct Loaded {
    by_hash: HashMap<String, KeyRecord>,
    /// Modification time of the file when it was read.
    mtime: Option<SystemTime>,
    checked: Instant,
}

/// The keys of one data directory.
pub struct KeyStore {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    /// Keys that live only in this process's memory (see [`KeyStore::create_internal`]).
    internal: RwLock<HashMap<String, KeyRecord>>,
}

fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(hex(&buf))
}

fn now_rfc3339() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    kickstand_domain::timefmt::format_ms(ms)
}

impl KeyStore {
    /// The key file of a data directory.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("keys.json")
    }

    /// Opens the key file (which need not exist yet).
    pub fn open(path: PathBuf) -> Result<KeyStore, KeyError> {
        let store = KeyStore {
            path,
            loaded: RwLock::new(Loaded {
                by_hash: HashMap::new(),
                mtime: None,
                checked: Instant::now(),
            }),
            internal: RwLock::new(HashMap::new()),
        };
        store.reload()?;
        Ok(store)
    }

    fn read_file(&self) -> Result<(KeyFile, Option<SystemTime>), KeyError> {
        let io = |source| KeyError::Io {
            path: self.path.clone(),
            source,
        };
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let mtime = std::fs::metadata(&self.path)
                    .and_then(|m| m.modified())
                    .ok();
                let file: KeyFile = serde_json::from_slice(&bytes)
                    .map_err(|e| KeyError::Corrupt(self.path.clone(), e.to_string()))?;
                Ok((file, mtime))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((KeyFile::default(), None)),
            Err(e) => Err(io(e)),
        }
    }

    fn reload(&self) -> Result<(), KeyError> {
        let (file, mtime) = self.read_file()?;
        let mut l = self.loaded.write();
        l.by_hash = file.keys.into_iter().map(|k| (k.hash.clone(), k)).collect();
        l.mtime = mtime;
        l.checked = Instant::now();
        Ok(())
    }

    /// Writes the file atomically: a temporary file, fsync, rename, fsync of the directory.
    fn write_file(&self, file: &KeyFile) -> Result<(), KeyError> {
        use std::io::Write;
        let io = |source| KeyError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        let bytes = serde_json::to_vec_pretty(file).expect("keys serialise");
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        self.reload()
    }

    /// Creates a key; returns it and its token (shown once, never stored).
    pub fn create(&self, name: &str, scopes: &[Scope]) -> Result<(KeyRecord, String), KeyError> {
        let token = format!("ks_{}", random_hex(32)?);
        let record = KeyRecord {
            id: random_hex(4)?,
            name: name.to_owned(),
            scopes: scopes.to_vec(),
            hash: hash(&token),
            created_at: now_rfc3339(),
            revoked_at: None,
        };
        let (mut file, _) = self.read_file()?;
        file.keys.push(record.clone());
        self.write_file(&file)?;
        Ok((record, token))
    }

    /// Creates a key that exists only in this process's memory and dies with it: what the
    /// process's own services use to call its API (the scheduler of `kickstand run` calling the
    /// messenger and the script runner over HTTP). Never written to the key file, never listed.
    pub fn create_internal(
        &self,
        name: &str,
        scopes: &[Scope],
    ) -> Result<(KeyRecord, String), KeyError> {
        let token = format!("ks_{}", random_hex(32)?);
        let record = KeyRecord {
            id: format!("internal-{}", random_hex(4)?),
            name: name.to_owned(),
            scopes: scopes.to_vec(),
            hash: hash(&token),
            created_at: now_rfc3339(),
            revoked_at: None,
        };
        self.internal
            .write()
            .insert(record.hash.clone(), record.clone());
        Ok((record, token))
    }

    pub fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        Ok(self.read_file()?.0.keys)
    }

    pub fn revoke(&self, id: &str) -> Result<KeyRecord, KeyError> {
        let (mut file, _) = self.read_file()?;
        let key = file
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        if key.revoked_at.is_none() {
            key.revoked_at = Some(now_rfc3339());
        }
        let key = key.clone();
        self.write_file(&file)?;
        Ok(key)
    }

    /// The key a token belongs to, if any (revoked keys included; see [`KeyRecord::allows`]).
    pub fn verify(&self, token: &str) -> Option<KeyRecord> {
        let stale = self.loaded.read().checked.elapsed() > Duration::from_secs(1);
        if stale {
            let mtime = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if mtime != self.loaded.read().mtime
                && let Err(error) = self.reload()
            {
                tracing::error!(message = "cannot reload the key file; keeping the keys loaded before", %error);
            }
            self.loaded.write().checked = Instant::now();
        }
        let h = hash(token);
        if let Some(k) = self.internal.read().get(&h) {
            return Some(k.clone());
        }
        self.loaded.read().by_hash.get(&h).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.loaded.read().by_hash.is_empty()
    }
}

/// What a route group requires.
#[derive(Clone)]
pub struct Guard {
    /// `None`: authentication is off (`--auth off`, loopback only).
    pub keys: Option<Arc<KeyStore>>,
    pub scope: Scope,
    /// Take the key from `access_token` in the query on every path (the OsmAnd port, where
    /// every path is a report), not only on the paths of clients that cannot send headers.
    pub query_token: bool,
}

fn unauthorized(detail: &str) -> Response {
    let mut resp = Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The token of a request: `Authorization: Bearer …`, or `access_token=` in the query of the
/// live stream (browsers' EventSource cannot send headers) and of OsmAnd reports (devices
/// cannot either).
fn token_of(req: &Request, query_token: bool) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (kind, token) = v.split_once(' ')?;
        return kind
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    // The live stream (EventSource) and OsmAnd devices, whose protocol port serves `/`.
    if query_token || matches!(req.uri().path(), "/api/v1/stream" | "/osmand") {
        return req
            .uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("access_token=").map(str::to_owned));
    }
    None
}

/// The middleware of a route group. A request it lets through carries its caller
/// ([`kickstand_service::Caller`]) in its extensions, for finer scopes and audit records.
pub async fn require(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    let Some(keys) = &guard.keys else {
        req.extensions_mut()
            .insert(kickstand_service::Caller::anonymous());
        return next.run(req).await;
    };
    let Some(token) = token_of(&req, guard.query_token) else {
        return unauthorized("this route needs an API key: send Authorization: Bearer <key>");
    };
    match keys.verify(&token) {
        None => unauthorized("the API key is not known"),
        Some(k) if k.revoked_at.is_some() => unauthorized("the API key was revoked"),
        Some(k) if !k.allows(guard.scope) => Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "the key {:?} lacks the {} scope this route needs",
                k.name,
                guard.scope.as_str()
            ),
        )
        .into_response(),
        Some(k) => {
            req.extensions_mut().insert(kickstand_service::Caller {
                key_id: Some(k.id),
                name: k.name,
                scopes: k.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            });
            next.run(req).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_and_checked_by_scope() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(KeyStore::path_in(dir.path())).unwrap();
        assert!(store.is_empty());
        let (rec, token) = store.create("gateway", &[Scope::Ingest]).unwrap();
        assert!(token.starts_with("ks_") && token.len() == 67);
        let text = std::fs::read_to_string(KeyStore::path_in(dir.path())).unwrap();
        assert!(!text.contains(&token), "the token itself is never stored");
        let k = store.verify(&token).unwrap();
        assert!(k.allows(Scope::Ingest) && !k.allows(Scope::Read));
        assert!(store.verify("ks_wrong").is_none());
        let (_, admin) = store.create("root", &[Scope::Admin]).unwrap();
        assert!(store.verify(&admin).unwrap().allows(Scope::Read));
        store.revoke(&rec.id).unwrap();
        assert!(!store.verify(&token).unwrap().allows(Scope::Ingest));
        assert!(matches!(store.revoke("nope"), Err(KeyError::NotFound(_))));
        // Another process's changes are seen after the reload interval.
        let other = KeyStore::open(KeyStore::path_in(dir.path())).unwrap();
        let (_, late) = other.create("late", &[Scope::Read]).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(store.verify(&late).is_some());
    }
}
