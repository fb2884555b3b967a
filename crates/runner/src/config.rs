//! The `[runner]` section of kickstand.toml: where the scripts are, where runs work, the
//! default limits and the values of the environment variables scripts may declare.

use crate::error::RunnerError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The script runner's settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    /// The directory of registered scripts: one `<name>.toml` manifest per script beside its
    /// executable. Only scripts with a valid manifest here can run.
    pub scripts_dir: PathBuf,
    /// Where each run gets its fresh working directory (`<work_dir>/<run id>`), removed when the
    /// run ends unless `keep_work_dirs` is set. Default: `kickstand-runner` in the system's
    /// temporary directory; `kickstand run` puts it in its data directory.
    pub work_dir: Option<PathBuf>,
    /// Keep each run's working directory after it ends (for debugging a script).
    pub keep_work_dirs: bool,
    /// How often the scripts directory is checked for changed manifests, in seconds; 0 turns
    /// the check off (then only `POST /api/v1/scripts/reload` reloads).
    pub reload_interval_secs: u64,
    /// The most runs of all scripts at once in this process; more are refused with 429.
    pub max_concurrent_runs: usize,
    /// A script's timeout when its manifest gives none, in seconds.
    pub default_timeout_secs: u64,
    /// The longest timeout a manifest may ask for, in seconds.
    pub max_timeout_secs: u64,
    /// A script's output limit (stdout and stderr together) when its manifest gives none.
    pub default_output_limit_bytes: usize,
    /// The largest output limit a manifest may ask for.
    pub max_output_limit_bytes: usize,
    /// After SIGTERM (timeout, cancel, shutdown), how long the process group has before
    /// SIGKILL, in seconds.
    pub kill_grace_secs: u64,
    /// The `PATH` a script sees: a fixed list, never the runner's own.
    pub path: String,
    /// Values of environment variables that manifests may declare (`env = ["NAME"]`), e.g.
    /// `KICKSTAND_API_URL` and `KICKSTAND_API_KEY`. A script receives only those it declares.
    pub env: BTreeMap<String, EnvValue>,
    /// This process's name in run records, so a restarted runner finds the runs it left
    /// `running`. Default: the host name.
    pub instance: Option<String>,
}

/// Where the value of a script environment variable comes from: exactly one of the three.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvValue {
    /// The value itself (fine for a URL; use `from_env` or `from_file` for a secret).
    pub value: Option<String>,
    /// The name of a variable of the runner's own environment that holds the value, read when
    /// a run starts.
    pub from_env: Option<String>,
    /// A file whose content (without a trailing newline) is the value, read when a run starts,
    /// so a rotated key is picked up.
    pub from_file: Option<PathBuf>,
}

impl Default for RunnerConfig {
    fn default() -> RunnerConfig {
        RunnerConfig {
            scripts_dir: PathBuf::from("scripts"),
            work_dir: None,
            keep_work_dirs: false,
            reload_interval_secs: 2,
            max_concurrent_runs: 8,
            default_timeout_secs: 300,
            max_timeout_secs: 24 * 3600,
            default_output_limit_bytes: 1 << 20,
            max_output_limit_bytes: 64 << 20,
            kill_grace_secs: 5,
            path: "/usr/local/bin:/usr/bin:/bin".into(),
            env: BTreeMap::new(),
            instance: None,
        }
    }
}

impl EnvValue {
    /// A literal value.
    pub fn literal(value: impl Into<String>) -> EnvValue {
        EnvValue {
            value: Some(value.into()),
            ..EnvValue::default()
        }
    }

    /// Reads the value now. The error names the variable and the source, never the value.
    pub fn resolve(&self, name: &str) -> Result<String, RunnerError> {
        match (&self.value, &self.from_env, &self.from_file) {
            (Some(v), None, None) => Ok(v.clone()),
            (None, Some(var), None) => std::env::var(var).map_err(|_| {
                RunnerError::Config(format!(
                    "runner.env.{name}: the runner's environment has no variable {var}"
                ))
            }),
            (None, None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    RunnerError::Config(format!(
                        "runner.env.{name}: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned())
            }
            _ => Err(RunnerError::Config(format!(
                "runner.env.{name}: give exactly one of value, from_env and from_file"
            ))),
        }
    }
}

impl RunnerConfig {
    /// Checks the settings (and that every `env` value can be read now).
    pub fn validate(&self) -> Result<(), RunnerError> {
        let bad = |what: &str| Err(RunnerError::Config(format!("runner.{what}")));
        if self.max_concurrent_runs == 0 {
            return bad("max_concurrent_runs must be at least 1");
        }
        if self.default_timeout_secs == 0 || self.default_timeout_secs > self.max_timeout_secs {
            return bad("default_timeout_secs must be from 1 to max_timeout_secs");
        }
        if self.default_output_limit_bytes == 0
            || self.default_output_limit_bytes > self.max_output_limit_bytes
        {
            return bad("default_output_limit_bytes must be from 1 to max_output_limit_bytes");
        }
        if self.path.is_empty() || self.path.contains('\0') {
            return bad("path must be a non-empty list of directories");
        }
        for (name, value) in &self.env {
            crate::manifest::check_env_name(name)
                .map_err(|e| RunnerError::Config(format!("runner.env.{name}: {e}")))?;
            value.resolve(name)?;
        }
        Ok(())
    }

    /// The working directories' parent.
    pub fn work_root(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("kickstand-runner"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_a_documented_section_parses() {
        RunnerConfig::default().validate().unwrap();
        let c: RunnerConfig = toml::from_str(
            r#"
            scripts_dir = "/srv/scripts"
            max_concurrent_runs = 2
            [env.KICKSTAND_API_URL]
            value = "http://127.0.0.1:8080"
            [env.KICKSTAND_API_KEY]
            from_env = "PATH"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.max_concurrent_runs, 2);
        assert_eq!(c.default_timeout_secs, 300);
    }

    #[test]
    fn unknown_fields_and_ambiguous_env_values_are_refused() {
        assert!(toml::from_str::<RunnerConfig>("scripts = \"x\"").is_err());
        let c: RunnerConfig =
            toml::from_str("[env.A]\nvalue = \"x\"\nfrom_env = \"HOME\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");
        let c: RunnerConfig =
            toml::from_str("[env.A]\nfrom_file = \"/nonexistent/key\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cannot read /nonexistent/key"), "{e}");
    }
}
