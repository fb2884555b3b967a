//! `kickstand history copy`: moves a history between stores (the embedded store, PostgreSQL,
//! MongoDB, either way), bucket by bucket in time order, with a progress bar. Resumable: the
//! start of the first bucket not yet wholly copied is written to a progress file after every
//! write, and a copy started again with the same source and target continues from there.
//! Appends are idempotent, so the part of a bucket copied twice is stored once.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kickstand_domain::timefmt::{format_ms, parse_query_time};
use kickstand_domain::{BucketSpan, Fix};
use kickstand_engine::history::embedded::EmbeddedConfig;
use kickstand_engine::history::mongodb::{MongoConfig, MongoHistory, MongoLayout};
use kickstand_engine::history::postgres::{PostgresConfig, PostgresHistory};
use kickstand_engine::history::{HistoryStore, HistoryWriter};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct HistoryArgs {
    #[command(subcommand)]
    command: HistoryCommand,
}

#[derive(clap::Subcommand)]
enum HistoryCommand {
    /// Copy a history from one store to another (resumable).
    Copy(CopyArgs),
}

#[derive(clap::Args)]
struct CopyArgs {
    /// Source store: `embedded:DATA_DIR` (or a path), `postgres://…[?schema=S]`, or
    /// `mongodb://…/DATABASE[?layout=buckets|timeseries]`.
    #[arg(long)]
    from: String,
    /// Target store, in the same forms.
    #[arg(long)]
    to: String,
    /// Copy fixes from this time on (RFC 3339 or epoch ms) [default: the oldest].
    #[arg(long)]
    since: Option<String>,
    /// Copy fixes up to this time, inclusive [default: now plus a day].
    #[arg(long)]
    until: Option<String>,
    /// Bucket length in seconds of both stores [default: engine.bucket_secs of the settings].
    #[arg(long)]
    bucket_secs: Option<u64>,
    /// TOML settings file, for the bucket length.
    #[arg(long, env = "KICKSTAND_CONFIG")]
    config: Option<PathBuf>,
    /// Progress file [default: kickstand-copy-<hash of source and target>.json here].
    #[arg(long)]
    progress: Option<PathBuf>,
    /// Ignore an existing progress file and copy from the start.
    #[arg(long)]
    restart: bool,
    /// Fixes per write to the target.
    #[arg(long, default_value_t = 50_000)]
    batch: usize,
    /// Stop after this many buckets (vehicle × span) have been read; run again to continue.
    /// For moving a large history in maintenance windows.
    #[arg(long)]
    max_buckets: Option<u64>,
}

pub fn run(args: HistoryArgs) -> anyhow::Result<()> {
    match args.command {
        HistoryCommand::Copy(a) => copy(a),
    }
}

/// Where a store is, parsed from its URL.
#[derive(Debug)]
enum Location {
    Embedded(PathBuf),
    Postgres(PostgresConfig),
    Mongo(MongoConfig),
}

/// Splits `key=value` out of a URL's query string, returning the URL without it.
fn take_param(url: &str, key: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == key => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, value)
}

fn parse_location(url: &str) -> anyhow::Result<Location> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (url, schema) = take_param(url, "schema");
        return Ok(Location::Postgres(PostgresConfig {
            url,
            schema: schema.unwrap_or_else(|| PostgresConfig::default().schema),
            ..PostgresConfig::default()
        }));
    }
    if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") {
        let (url, layout) = take_param(url, "layout");
        let layout = match layout.as_deref() {
            None | Some("buckets") => MongoLayout::Buckets,
            Some("timeseries") => MongoLayout::Timeseries,
            Some(other) => anyhow::bail!("layout must be buckets or timeseries, not {other:?}"),
        };
        // mongodb://host:port/DATABASE?options
        let after_scheme = url.split_once("://").map_or("", |(_, r)| r);
        let path = after_scheme.split('?').next().unwrap_or("");
        let database = path
            .split_once('/')
            .map(|(_, db)| db)
            .filter(|db| !db.is_empty())
            .unwrap_or("kickstand")
            .to_owned();
        return Ok(Location::Mongo(MongoConfig {
            url,
            database,
            layout,
            ..MongoConfig::default()
        }));
    }
    let path = url
        .strip_prefix("embedded:")
        .or_else(|| url.strip_prefix("file:"))
        .unwrap_or(url);
    anyhow::ensure!(
        !path.is_empty() && !path.contains("://"),
        "{url:?} is not a store: use embedded:DATA_DIR, postgres://… or mongodb://…"
    );
    Ok(Location::Embedded(PathBuf::from(path)))
}

/// A URL with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn open(
    loc: &Location,
    span: BucketSpan,
    must_exist: bool,
) -> anyhow::Result<Box<dyn HistoryStore>> {
    Ok(match loc {
        Location::Embedded(dir) => {
            let path = dir.join("history");
            anyhow::ensure!(
                !must_exist || path.exists(),
                "no history in {}",
                dir.display()
            );
            Box::new(
                kickstand_engine::history::open_embedded_offline(
                    dir,
                    span,
                    EmbeddedConfig::default(),
                )
                .with_context(|| {
                    format!(
                        "cannot open {} (is a server running on it?)",
                        path.display()
                    )
                })?,
            )
        }
        Location::Postgres(c) => Box::new(PostgresHistory::open(c, span)?),
        Location::Mongo(c) => Box::new(MongoHistory::open(c, span, 0)?),
    })
}

#[derive(Serialize, Deserialize)]
struct Progress {
    /// Identifies the copy (a hash of source, target and range), so a progress file is never
    /// applied to another copy.
    copy: String,
    /// Start of the first bucket not yet wholly copied.
    next_bucket: i64,
    /// Fixes read from the source so far (across runs).
    fixes: u64,
    done: bool,
}

fn copy_id(from: &str, to: &str, since: i64, until: i64) -> String {
    let h = kickstand_domain::fnv1a64(format!("{from}\n{to}\n{since}\n{until}").as_bytes());
    format!("{h:016x}")
}

fn save(path: &Path, p: &Progress) -> anyhow::Result<()> {
    // Write and rename, so a kill never leaves half a progress file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(p)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn copy(args: CopyArgs) -> anyhow::Result<()> {
    let settings =
        crate::settings::Settings::load(args.config.as_deref(), figment::Figment::new())?;
    let span = match args.bucket_secs {
        Some(secs) => BucketSpan::from_secs(secs)
            .context("--bucket-secs must be a positive number of seconds that divides a day")?,
        None => settings.engine.span()?,
    };
    anyhow::ensure!(args.batch > 0, "--batch must be positive");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let time = |name: &str, v: &Option<String>| -> anyhow::Result<Option<i64>> {
        v.as_deref()
            .map(|s| {
                parse_query_time(s).with_context(|| {
                    format!("--{name} must be RFC 3339 or epoch milliseconds, not {s:?}")
                })
            })
            .transpose()
    };
    let since = time("since", &args.since)?.unwrap_or(0);
    let until = time("until", &args.until)?.unwrap_or(now + 86_400_000);
    anyhow::ensure!(since <= until, "--since must not be after --until");
    let from = parse_location(&args.from)?;
    let to = parse_location(&args.to)?;
    if let (Location::Embedded(a), Location::Embedded(b)) = (&from, &to) {
        let same =
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
        anyhow::ensure!(!same, "source and target are the same store");
    }

    // The range as given (a default `until` moves with the clock; it must not make a resumed
    // copy look like another one).
    let id = copy_id(
        &args.from,
        &args.to,
        since,
        time("until", &args.until)?.unwrap_or(i64::MAX),
    );
    let progress_path = args
        .progress
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("kickstand-copy-{id}.json")));
    let mut progress = Progress {
        copy: id.clone(),
        next_bucket: span.start_of(since),
        fixes: 0,
        done: false,
    };
    if progress_path.exists() && !args.restart {
        let saved: Progress = serde_json::from_slice(&std::fs::read(&progress_path)?)
            .with_context(|| format!("{} is not a progress file", progress_path.display()))?;
        anyhow::ensure!(
            saved.copy == id,
            "{} belongs to another copy (other source, target or range); pass --restart or \
             another --progress",
            progress_path.display()
        );
        if saved.done {
            eprintln!(
                "this copy is already complete ({} fixes); --restart copies again",
                saved.fixes
            );
            return Ok(());
        }
        eprintln!(
            "resuming from {} ({} fixes read before)",
            format_ms(saved.next_bucket),
            saved.fixes
        );
        progress = saved;
    }

    eprintln!("copying {} → {}", redact(&args.from), redact(&args.to));
    let source = open(&from, span, true).context("cannot open the source")?;
    let target = open(&to, span, false).context("cannot open the target")?;
    let start = progress.next_bucket.max(since);

    // The first bucket to copy, for the progress bar's scale.
    let mut first = None;
    source.scan(start, until, &mut |b| {
        first = Some(b.bucket_start);
        false
    })?;
    let Some(first) = first else {
        progress.done = true;
        save(&progress_path, &progress)?;
        eprintln!("nothing (more) to copy");
        return Ok(());
    };
    let last = until.min(now);
    let bar = ProgressBar::new(last.saturating_sub(first).max(1) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}")
            .expect("a valid template"),
    );

    let mut writer: Box<dyn HistoryWriter> = target.writer(0)?;
    let mut group: Vec<Fix> = Vec::with_capacity(args.batch);
    let mut is_new = Vec::new();
    let (mut written, mut duplicates, mut buckets) = (0u64, 0u64, 0u64);
    let mut current_bucket = first;
    let mut failure: Option<anyhow::Error> = None;
    let mut stopped_early = false;
    let mut flush = |group: &mut Vec<Fix>,
                     writer: &mut Box<dyn HistoryWriter>,
                     progress: &mut Progress,
                     next_bucket: i64|
     -> anyhow::Result<()> {
        if !group.is_empty() {
            is_new.clear();
            writer.append(group, &mut is_new)?;
            let new = is_new.iter().filter(|n| **n).count() as u64;
            written += new;
            duplicates += group.len() as u64 - new;
            progress.fixes += group.len() as u64;
            group.clear();
        }
        // Every bucket before next_bucket is wholly in the target now.
        progress.next_bucket = progress.next_bucket.max(next_bucket);
        save(&progress_path, progress)
    };
    source.scan(start, until, &mut |b| {
        if b.bucket_start != current_bucket {
            if let Some(max) = args.max_buckets
                && buckets >= max
            {
                // Stop at a bucket boundary: everything before it is copied.
                if let Err(e) = flush(&mut group, &mut writer, &mut progress, b.bucket_start) {
                    failure = Some(e);
                }
                stopped_early = true;
                return false;
            }
            if group.len() >= args.batch
                && let Err(e) = flush(&mut group, &mut writer, &mut progress, b.bucket_start)
            {
                failure = Some(e);
                return false;
            }
            current_bucket = b.bucket_start;
        }
        buckets += 1;
        group.extend(b.points.iter().map(|p| Fix {
            vehicle_id: b.vehicle_id.clone(),
            point: *p,
        }));
        // A huge bucket is written in pieces; progress moves at bucket boundaries only.
        if group.len() >= args.batch
            && let Err(e) = flush(&mut group, &mut writer, &mut progress, current_bucket)
        {
            failure = Some(e);
            return false;
        }
        bar.set_position(b.bucket_start.saturating_sub(first).max(0) as u64);
        bar.set_message(format!(
            "{} · {} fixes",
            &format_ms(b.bucket_start)[..16],
            progress.fixes + group.len() as u64
        ));
        true
    })?;
    if let Some(e) = failure {
        bar.abandon();
        return Err(e.context("writing to the target failed; run the same command to resume"));
    }
    if !stopped_early {
        let end = span.start_of(until) + span.ms();
        flush(&mut group, &mut writer, &mut progress, end)?;
        progress.done = true;
        save(&progress_path, &progress)?;
    }
    writer.close()?;
    bar.finish_and_clear();
    eprintln!(
        "{}: {buckets} buckets, {written} fixes written, {duplicates} already there; progress in {}",
        if stopped_early {
            "stopped at --max-buckets (run again to continue)"
        } else {
            "copy complete"
        },
        progress_path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_strip_our_parameters() {
        match parse_location("postgres://u:p@db:5432/fleet?schema=hist&sslmode=disable").unwrap() {
            Location::Postgres(c) => {
                assert_eq!(c.url, "postgres://u:p@db:5432/fleet?sslmode=disable");
                assert_eq!(c.schema, "hist");
            }
            other => panic!("{other:?}"),
        }
        match parse_location("postgresql://db/fleet").unwrap() {
            Location::Postgres(c) => assert_eq!(c.schema, "kickstand"),
            other => panic!("{other:?}"),
        }
        match parse_location("mongodb://h1,h2/fleet?layout=timeseries&replicaSet=rs").unwrap() {
            Location::Mongo(c) => {
                assert_eq!(c.url, "mongodb://h1,h2/fleet?replicaSet=rs");
                assert_eq!(c.database, "fleet");
                assert_eq!(c.layout, MongoLayout::Timeseries);
            }
            other => panic!("{other:?}"),
        }
        match parse_location("mongodb://h1").unwrap() {
            Location::Mongo(c) => assert_eq!(c.database, "kickstand"),
            other => panic!("{other:?}"),
        }
        assert!(parse_location("mongodb://h/db?layout=rows").is_err());
        match parse_location("embedded:/var/lib/kickstand").unwrap() {
            Location::Embedded(p) => assert_eq!(p, PathBuf::from("/var/lib/kickstand")),
            other => panic!("{other:?}"),
        }
        match parse_location("./data").unwrap() {
            Location::Embedded(p) => assert_eq!(p, PathBuf::from("./data")),
            other => panic!("{other:?}"),
        }
        assert!(parse_location("redis://localhost").is_err());
        assert!(parse_location("").is_err());
    }

    #[test]
    fn passwords_are_redacted_in_messages() {
        assert_eq!(
            redact("postgres://kick:s3cret@db/x"),
            "postgres://kick:***@db/x"
        );
        assert_eq!(redact("postgres://kick@db/x"), "postgres://kick@db/x");
        assert_eq!(redact("embedded:./d"), "embedded:./d");
    }

    #[test]
    fn copy_ids_differ_by_source_target_and_range() {
        let a = copy_id("a", "b", 0, 1);
        assert_ne!(a, copy_id("b", "a", 0, 1));
        assert_ne!(a, copy_id("a", "b", 0, 2));
        assert_eq!(a, copy_id("a", "b", 0, 1));
    }
}
