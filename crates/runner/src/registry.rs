//! The registered scripts: every `*.toml` manifest of the scripts directory, loaded whole or
//! listed as invalid with its reason, and a fingerprint of the directory that tells when to
//! load it again. A reload builds a new [`Registry`] and swaps it in at once, so a run sees
//! either the old or the new set, never half of one.

use crate::config::RunnerConfig;
use crate::manifest::Script;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// The scripts of one load of the directory.
#[derive(Debug, Default)]
pub struct Registry {
    pub scripts: BTreeMap<String, Arc<Script>>,
    /// Manifest file name → why it was refused.
    pub invalid: BTreeMap<String, String>,
    /// Why the directory itself could not be read, if it could not.
    pub dir_error: Option<String>,
}

/// What changes when a manifest or a script changes: each entry's name, size, mtime and mode.
pub type Fingerprint = Vec<(String, u64, i64, i64, u32)>;

impl Registry {
    /// Loads every manifest of `config.scripts_dir`.
    pub fn load(config: &RunnerConfig) -> Registry {
        let mut reg = Registry::default();
        let dir = match std::fs::canonicalize(&config.scripts_dir) {
            Ok(d) => d,
            Err(e) => {
                reg.dir_error = Some(format!(
                    "the scripts directory {} cannot be read: {e}",
                    config.scripts_dir.display()
                ));
                return reg;
            }
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                reg.dir_error = Some(format!(
                    "the scripts directory {} cannot be read: {e}",
                    dir.display()
                ));
                return reg;
            }
        };
        let mut manifests: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        manifests.sort();
        for path in manifests {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            match Script::load(&dir, &path, config) {
                Ok(script) => {
                    reg.scripts.insert(script.name.clone(), Arc::new(script));
                }
                Err(error) => {
                    tracing::warn!(message = "script manifest refused", manifest = %path.display(), %error);
                    reg.invalid.insert(file, error);
                }
            }
        }
        reg
    }

    /// The reason a script of that name is not registered, when its manifest was refused.
    pub fn why_invalid(&self, name: &str) -> Option<&str> {
        self.invalid
            .get(&format!("{name}.toml"))
            .map(String::as_str)
    }
}

/// The directory's fingerprint; empty when it cannot be read.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Fingerprint = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            // Follow symlinks: a changed target is a change.
            let m = std::fs::metadata(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.mode(),
            ))
        })
        .collect();
    out.sort();
    out
}
