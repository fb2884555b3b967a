//! Script manifests: the TOML file that registers a script (`<name>.toml` beside the
//! executable), checked whole before the script can run, and the binding of a request's
//! arguments to the argument vector and environment of one run.
//!
//! A manifest is either valid as a whole or refused with one clear reason; nothing here runs
//! a process or touches the database.

use crate::config::RunnerConfig;
use crate::error::StartError;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The largest manifest file read.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// The longest string argument when the manifest sets no `max_len`.
const DEFAULT_MAX_LEN: usize = 4096;
/// Names the API uses below `/api/v1/scripts/`, so no script can have them.
const RESERVED_NAMES: [&str; 3] = ["runs", "reload", "audit"];
/// The prefix of the variables that carry secret arguments.
pub const SECRET_ENV_PREFIX: &str = "KICKSTAND_SECRET_";
/// What a secret argument's value is replaced with in records, answers and output.
pub const REDACTED: &str = "***";

/// A manifest as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    name: String,
    #[serde(default)]
    description: String,
    command: String,
    #[serde(default)]
    args: Vec<ArgFile>,
    timeout_secs: Option<u64>,
    max_concurrent: Option<usize>,
    output_limit_bytes: Option<usize>,
    scope: Option<String>,
    #[serde(default)]
    argv: ArgvStyle,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    set_env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "type")]
    kind: ArgType,
    #[serde(default)]
    required: bool,
    default: Option<toml::Value>,
    #[serde(default)]
    values: Vec<String>,
    pattern: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    max_len: Option<usize>,
    #[serde(default)]
    secret: bool,
}

/// An argument's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArgType {
    String,
    Int,
    Float,
    Bool,
    Enum,
}

/// How arguments become the argument vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArgvStyle {
    /// `--name=value` for each argument given or defaulted, in manifest order (one argv
    /// element each, so a value starting with `-` cannot be taken for an option).
    #[default]
    Flags,
    /// The values alone, in manifest order; every argument must be required or defaulted.
    Positional,
}

/// A registered script, checked.
#[derive(Debug)]
pub struct Script {
    pub name: String,
    pub description: String,
    /// The manifest's `command`, as written.
    pub command: String,
    /// The executable, resolved inside the scripts directory.
    pub exe: PathBuf,
    pub args: Vec<ArgSpec>,
    pub timeout: Duration,
    pub max_concurrent: usize,
    pub output_limit: usize,
    pub scope: String,
    pub argv_style: ArgvStyle,
    /// Variables taken from `[runner.env]`.
    pub env: Vec<String>,
    /// Variables with fixed values from the manifest.
    pub set_env: BTreeMap<String, String>,
}

/// One argument of a script's schema.
#[derive(Debug)]
pub struct ArgSpec {
    pub name: String,
    pub description: String,
    pub kind: ArgType,
    pub required: bool,
    pub default: Option<ArgValue>,
    pub values: Vec<String>,
    pub pattern: Option<(String, Regex)>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_len: usize,
    pub secret: bool,
}

/// A checked argument value.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl ArgValue {
    /// The value as one argv element.
    pub fn to_arg(&self) -> String {
        match self {
            ArgValue::Str(s) => s.clone(),
            ArgValue::Int(i) => i.to_string(),
            ArgValue::Float(f) => f.to_string(),
            ArgValue::Bool(b) => b.to_string(),
        }
    }

    pub fn to_json(&self) -> Json {
        match self {
            ArgValue::Str(s) => Json::from(s.as_str()),
            ArgValue::Int(i) => Json::from(*i),
            ArgValue::Float(f) => Json::from(*f),
            ArgValue::Bool(b) => Json::from(*b),
        }
    }
}

/// What one run gets from its arguments.
#[derive(Debug, Default)]
pub struct BoundArgs {
    /// The argument vector after the executable.
    pub argv: Vec<String>,
    /// `KICKSTAND_SECRET_<NAME>` variables for the secret arguments.
    pub secret_env: Vec<(String, String)>,
    /// The arguments as recorded: secrets replaced by `***`.
    pub redacted: Map<String, Json>,
    /// The secret values, masked in the captured output.
    pub secrets: Vec<String>,
    /// SHA-256 over the script name and the recorded arguments: what an idempotency key is
    /// compared with (secret values are never stored, not even hashed, so they are not
    /// compared).
    pub digest: String,
}

pub fn check_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(format!(
            "{name:?} is not a variable name (letters, digits and _, not starting with a digit)"
        ));
    }
    if name == "PATH" || name.starts_with(SECRET_ENV_PREFIX) || name.starts_with("KICKSTAND_RUN_") {
        return Err(format!("{name} is set by the runner itself"));
    }
    Ok(())
}

fn check_script_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(format!(
            "name {name:?} must be 1 to 64 characters of a-z, 0-9, - and _, starting with a letter or digit"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("name {name:?} is reserved by the API"));
    }
    Ok(())
}

fn check_arg_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "argument name {name:?} must be 1 to 64 characters of a-z, 0-9 and _, starting with a letter"
        ))
    }
}

/// Resolves `command` inside `dir` (already canonical): relative, no `..`, no symlink out of
/// the directory, a regular executable file.
pub fn resolve_command(dir: &Path, command: &str) -> Result<PathBuf, String> {
    let rel = Path::new(command);
    if command.is_empty()
        || command.contains('\0')
        || rel.is_absolute()
        || !rel.components().all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "command {command:?} must be a relative path inside the scripts directory, without . or .."
        ));
    }
    let exe = std::fs::canonicalize(dir.join(rel))
        .map_err(|e| format!("command {command:?} cannot be found: {e}"))?;
    if !exe.starts_with(dir) {
        return Err(format!(
            "command {command:?} resolves outside the scripts directory (a symlink)"
        ));
    }
    let meta =
        std::fs::metadata(&exe).map_err(|e| format!("command {command:?} cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("command {command:?} is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("command {command:?} is not executable"));
    }
    Ok(exe)
}

impl Script {
    /// Reads and checks the manifest at `path` in the (canonical) scripts directory `dir`;
    /// the error is one line.
    pub fn load(dir: &Path, path: &Path, config: &RunnerConfig) -> Result<Script, String> {
        Script::load_checked(dir, path, config).map_err(|e| {
            e.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
    }

    fn load_checked(dir: &Path, path: &Path, config: &RunnerConfig) -> Result<Script, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(format!("larger than {MAX_MANIFEST_BYTES} bytes"));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let text = std::str::from_utf8(&bytes).map_err(|_| "not UTF-8 text".to_string())?;
        let file: ManifestFile = toml::from_str(text).map_err(|e| {
            // toml's own text spans several lines (with a caret); one line suits a log.
            let message = match e.message().trim() {
                "" => "invalid TOML".to_string(),
                m => m.replace('\n', " "),
            };
            match e.span() {
                Some(span) => {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                    format!("line {line}: {message}")
                }
                None => message,
            }
        })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        check_script_name(&file.name)?;
        if file.name != stem {
            return Err(format!(
                "name {:?} must be the manifest's file name ({stem}.toml)",
                file.name
            ));
        }
        let exe = resolve_command(dir, &file.command)?;
        let timeout_secs = file.timeout_secs.unwrap_or(config.default_timeout_secs);
        if timeout_secs == 0 || timeout_secs > config.max_timeout_secs {
            return Err(format!(
                "timeout_secs must be from 1 to {} (runner.max_timeout_secs)",
                config.max_timeout_secs
            ));
        }
        let output_limit = file
            .output_limit_bytes
            .unwrap_or(config.default_output_limit_bytes);
        if output_limit == 0 || output_limit > config.max_output_limit_bytes {
            return Err(format!(
                "output_limit_bytes must be from 1 to {} (runner.max_output_limit_bytes)",
                config.max_output_limit_bytes
            ));
        }
        let max_concurrent = file.max_concurrent.unwrap_or(1);
        if max_concurrent == 0 {
            return Err("max_concurrent must be at least 1".into());
        }
        let scope = file.scope.unwrap_or_else(|| "operate".into());
        if !["ingest", "read", "operate", "admin"].contains(&scope.as_str()) {
            return Err(format!(
                "scope {scope:?} must be one of ingest, read, operate, admin"
            ));
        }
        for name in &file.env {
            check_env_name(name).map_err(|e| format!("env: {e}"))?;
            if !config.env.contains_key(name) {
                return Err(format!(
                    "env: {name} is declared, but [runner.env] gives it no value"
                ));
            }
        }
        for name in file.set_env.keys() {
            check_env_name(name).map_err(|e| format!("set_env: {e}"))?;
            if file.env.contains(name) {
                return Err(format!("set_env: {name} is also in env"));
            }
        }
        if file.set_env.values().any(|v| v.contains('\0')) {
            return Err("set_env: a value holds a NUL byte".into());
        }
        let mut args = Vec::with_capacity(file.args.len());
        for a in file.args {
            let name = a.name.clone();
            let spec = ArgSpec::check(a, file.argv).map_err(|e| format!("args.{name}: {e}"))?;
            if args.iter().any(|s: &ArgSpec| s.name == spec.name) {
                return Err(format!("args.{name}: declared twice"));
            }
            args.push(spec);
        }
        Ok(Script {
            name: file.name,
            description: file.description,
            command: file.command,
            exe,
            args,
            timeout: Duration::from_secs(timeout_secs),
            max_concurrent,
            output_limit,
            scope,
            argv_style: file.argv,
            env: file.env,
            set_env: file.set_env,
        })
    }

    /// Checks a request's arguments against the schema and builds what the run gets.
    /// Errors name the argument as `args.<name>`.
    pub fn bind(&self, given: &Map<String, Json>) -> Result<BoundArgs, StartError> {
        if let Some(unknown) = given
            .keys()
            .find(|k| !self.args.iter().any(|a| &a.name == *k))
        {
            return Err(StartError::InvalidArg(
                format!("args.{unknown}"),
                format!("{} has no argument {unknown:?}", self.name),
            ));
        }
        let mut out = BoundArgs::default();
        for spec in &self.args {
            let field = format!("args.{}", spec.name);
            let value = match given.get(&spec.name).filter(|v| !v.is_null()) {
                Some(v) => Some(
                    spec.parse_json(v)
                        .map_err(|e| StartError::InvalidArg(field.clone(), e))?,
                ),
                None => spec.default.clone(),
            };
            let Some(value) = value else {
                if spec.required {
                    return Err(StartError::InvalidArg(
                        field,
                        format!("{} is required", spec.name),
                    ));
                }
                continue;
            };
            if spec.secret {
                let text = value.to_arg();
                out.redacted.insert(spec.name.clone(), REDACTED.into());
                out.secret_env.push((
                    format!("{SECRET_ENV_PREFIX}{}", spec.name.to_ascii_uppercase()),
                    text.clone(),
                ));
                if !text.is_empty() {
                    out.secrets.push(text);
                }
                continue;
            }
            out.redacted.insert(spec.name.clone(), value.to_json());
            match self.argv_style {
                ArgvStyle::Flags => out.argv.push(format!("--{}={}", spec.name, value.to_arg())),
                ArgvStyle::Positional => out.argv.push(value.to_arg()),
            }
        }
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update([0]);
        h.update(
            serde_json::to_vec(&out.redacted).expect("a JSON map serializes (keys are sorted)"),
        );
        out.digest = h
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Ok(out)
    }
}

impl ArgSpec {
    fn check(a: ArgFile, style: ArgvStyle) -> Result<ArgSpec, String> {
        check_arg_name(&a.name)?;
        let numeric = matches!(a.kind, ArgType::Int | ArgType::Float);
        if (a.min.is_some() || a.max.is_some()) && !numeric {
            return Err("min and max apply to int and float arguments".into());
        }
        if let (Some(min), Some(max)) = (a.min, a.max)
            && min > max
        {
            return Err("min is above max".into());
        }
        if a.pattern.is_some() && a.kind != ArgType::String {
            return Err("pattern applies to string arguments".into());
        }
        if a.max_len.is_some() && a.kind != ArgType::String {
            return Err("max_len applies to string arguments".into());
        }
        match a.kind {
            ArgType::Enum if a.values.is_empty() => {
                return Err("an enum argument needs its values".into());
            }
            ArgType::Enum | ArgType::String => {}
            _ if !a.values.is_empty() => {
                return Err("values apply to string and enum arguments".into());
            }
            _ => {}
        }
        if a.secret && a.default.is_some() {
            return Err(
                "a secret argument cannot have a default (it would be in the manifest)".into(),
            );
        }
        if a.required && a.default.is_some() {
            return Err("a required argument cannot have a default".into());
        }
        if style == ArgvStyle::Positional && !a.secret && !a.required && a.default.is_none() {
            return Err(
                "with argv = \"positional\" every argument must be required or have a default"
                    .into(),
            );
        }
        let pattern = match a.pattern {
            Some(p) => {
                let re = Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| format!("pattern {p:?} is not a regular expression: {e}"))?;
                Some((p, re))
            }
            None => None,
        };
        let mut spec = ArgSpec {
            name: a.name,
            description: a.description,
            kind: a.kind,
            required: a.required,
            default: None,
            values: a.values,
            pattern,
            min: a.min,
            max: a.max,
            max_len: a.max_len.unwrap_or(DEFAULT_MAX_LEN),
            secret: a.secret,
        };
        if let Some(d) = a.default {
            let json = serde_json::to_value(&d).map_err(|e| format!("default: {e}"))?;
            spec.default = Some(
                spec.parse_json(&json)
                    .map_err(|e| format!("default: {e}"))?,
            );
        }
        Ok(spec)
    }

    /// A JSON value as this argument. Numbers and booleans may also come as strings (from a
    /// command line or a schedule).
    pub fn parse_json(&self, v: &Json) -> Result<ArgValue, String> {
        let name = &self.name;
        let value = match (self.kind, v) {
            (ArgType::String | ArgType::Enum, Json::String(s)) => ArgValue::Str(s.clone()),
            (ArgType::Int, Json::Number(n)) => ArgValue::Int(
                n.as_i64()
                    .ok_or_else(|| format!("{name} must be a whole number"))?,
            ),
            (ArgType::Int, Json::String(s)) => ArgValue::Int(
                s.trim()
                    .parse()
                    .map_err(|_| format!("{name} must be a whole number"))?,
            ),
            (ArgType::Float, Json::Number(n)) => ArgValue::Float(
                n.as_f64()
                    .ok_or_else(|| format!("{name} must be a number"))?,
            ),
            (ArgType::Float, Json::String(s)) => ArgValue::Float(
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| format!("{name} must be a number"))?,
            ),
            (ArgType::Bool, Json::Bool(b)) => ArgValue::Bool(*b),
            (ArgType::Bool, Json::String(s)) if s == "true" || s == "false" => {
                ArgValue::Bool(s == "true")
            }
            (kind, _) => {
                let what = match kind {
                    ArgType::String | ArgType::Enum => "a string",
                    ArgType::Int => "a whole number",
                    ArgType::Float => "a number",
                    ArgType::Bool => "true or false",
                };
                return Err(format!("{name} must be {what}"));
            }
        };
        match &value {
            ArgValue::Str(s) => {
                if s.contains('\0') {
                    return Err(format!("{name} must not contain a NUL character"));
                }
                if s.len() > self.max_len {
                    return Err(format!("{name} is longer than {} bytes", self.max_len));
                }
                if !self.values.is_empty() && !self.values.contains(s) {
                    return Err(format!("{name} must be one of {}", self.values.join(", ")));
                }
                if let Some((src, re)) = &self.pattern
                    && !re.is_match(s)
                {
                    return Err(format!("{name} must match the pattern {src}"));
                }
            }
            ArgValue::Int(i) => self.check_range(*i as f64)?,
            ArgValue::Float(f) => self.check_range(*f)?,
            ArgValue::Bool(_) => {}
        }
        Ok(value)
    }

    fn check_range(&self, v: f64) -> Result<(), String> {
        if let Some(min) = self.min
            && v < min
        {
            return Err(format!("{} must be at least {min}", self.name));
        }
        if let Some(max) = self.max
            && v > max
        {
            return Err(format!("{} must be at most {max}", self.name));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
