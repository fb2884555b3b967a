//! `kickstand export`: history out of a data directory as NDJSON (one fix a line) or GeoJSON
//! (a FeatureCollection with one LineString per vehicle and bucket), with a progress bar.
//! Opens the store directly, so the server must not be running on the same directory.

use crate::settings::Settings;
use anyhow::Context;
use figment::Figment;
use figment::providers::Serialized;
use indicatif::{ProgressBar, ProgressStyle};
use kickstand_domain::VehicleId;
use kickstand_domain::timefmt::parse_query_time;
use kickstand_engine::history::{BucketFixes, HistoryKind, HistoryStore};
use kickstand_http::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Data directory [default: ./kickstand-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// TOML settings file, for the bucket length.
    #[arg(long, env = "KICKSTAND_CONFIG")]
    config: Option<PathBuf>,
    /// Export one vehicle; all vehicles when absent.
    #[arg(long)]
    vehicle: Option<String>,
    /// Start of the range (RFC 3339 or epoch ms) [default: 24 hours before --to].
    #[arg(long)]
    from: Option<String>,
    /// End of the range, inclusive (RFC 3339 or epoch ms) [default: now].
    #[arg(long)]
    to: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "ndjson")]
    format: Format,
    /// Output file [default: standard output].
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Ndjson,
    Geojson,
}

fn time_arg(name: &str, v: Option<&str>) -> anyhow::Result<Option<i64>> {
    v.map(|s| {
        parse_query_time(s)
            .with_context(|| format!("--{name} must be RFC 3339 or epoch milliseconds, not {s:?}"))
    })
    .transpose()
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let mut flags = Figment::new();
    if let Some(d) = &args.data {
        flags = flags.merge(Serialized::default("data_dir", d));
    }
    let settings = Settings::load(args.config.as_deref(), flags)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let to = time_arg("to", args.to.as_deref())?.unwrap_or(now);
    let from = time_arg("from", args.from.as_deref())?.unwrap_or(to.saturating_sub(86_400_000));
    anyhow::ensure!(from <= to, "--from must not be after --to");
    let history: Arc<dyn HistoryStore> = match settings.history.kind {
        HistoryKind::Embedded => {
            let dir = settings.data_dir.join("history");
            anyhow::ensure!(
                dir.exists(),
                "no history in {}",
                settings.data_dir.display()
            );
            Arc::new(
                kickstand_engine::history::open_embedded_offline(
                    &settings.data_dir,
                    settings.engine.span()?,
                    settings.history.embedded.clone(),
                )
                .with_context(|| {
                    format!("cannot open {} (is a server running on it?)", dir.display())
                })?,
            )
        }
        // A shared database is read while the servers run.
        _ => kickstand_engine::history::open(
            &settings.history,
            &settings.data_dir,
            settings.engine.span()?,
            settings.engine.retain_days,
            None,
        )
        .context("cannot open the history store")?,
    };

    let sink: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, sink);
    let bar = ProgressBar::new(to.saturating_sub(from).max(1) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}")
            .expect("a valid template"),
    );
    let mut fixes = 0u64;
    let mut first = true;
    let mut line: Vec<u8> = Vec::with_capacity(4096);
    let mut io_error = None;
    if matches!(args.format, Format::Geojson) {
        out.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[")?;
    }
    let mut emit = |b: BucketFixes| -> bool {
        line.clear();
        match args.format {
            Format::Ndjson => {
                for p in &b.points {
                    json::vehicle(&mut line, &b.vehicle_id, p, None);
                    line.push(b'\n');
                }
            }
            Format::Geojson => {
                if !first {
                    line.push(b',');
                }
                line.extend_from_slice(&json::track(
                    json::TrackFormat::GeoJson,
                    &b.vehicle_id,
                    (from, to),
                    &b.points,
                ));
            }
        }
        first = false;
        fixes += b.points.len() as u64;
        bar.set_position(
            b.bucket_start
                .saturating_sub(from)
                .clamp(0, to.saturating_sub(from)) as u64,
        );
        bar.set_message(format!("{fixes} fixes"));
        if let Err(e) = out.write_all(&line) {
            io_error = Some(e);
            return false;
        }
        true
    };
    match &args.vehicle {
        Some(v) => {
            let id = VehicleId::new(v).map_err(|r| anyhow::anyhow!("--vehicle {r}"))?;
            let span = settings.engine.span()?;
            // A day at a time, so a long range neither holds everything in memory nor sits
            // without progress.
            let mut start = from;
            while start <= to {
                let end = start.saturating_add(86_400_000 - 1).min(to);
                let points = history.track(&id, start, end)?;
                for run in points.chunk_by(|a, b| span.start_of(a.ts) == span.start_of(b.ts)) {
                    let b = BucketFixes {
                        vehicle_id: id.clone(),
                        bucket_start: span.start_of(run[0].ts),
                        points: run.to_vec(),
                    };
                    if !emit(b) {
                        break;
                    }
                }
                if end == to {
                    break;
                }
                start = end + 1;
            }
        }
        None => history.scan(from, to, &mut emit)?,
    }
    if let Some(e) = io_error {
        return Err(e).context("writing the export failed");
    }
    if matches!(args.format, Format::Geojson) {
        out.write_all(b"]}\n")?;
    }
    out.flush()?;
    bar.finish_with_message(format!("{fixes} fixes exported"));
    eprintln!("exported {fixes} fixes");
    Ok(())
}
