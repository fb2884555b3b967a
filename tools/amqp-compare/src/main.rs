//! amqp-compare: measures the Rust AMQP 0-9-1 clients lapin and amqprs on Kickstand's
//! scale-out workload (batches of GPS fixes from ingest to workers through RabbitMQ). See
//! README.md for the method and the results.
//!
//! # Layout
//!
//! - `workload`: the JSON messages (deterministic, generated before any timing).
//! - `measure`: process and broker CPU time, percentiles.
//! - `client`: the [`client::Client`] trait every library implements, with the job and outcome
//!   types.
//! - `lapin_client`, `amqprs_client`: one implementation per library, each in that library's
//!   own idiom.
//! - `recovery`: the `recovery` mode, which cuts the connection and watches each client carry on
//!   (or not).
//! - this file: configuration, the phases of one suite, the repetitions and the report.
//!
//! **Invariant:** the program touches only queues it declared itself (`amqpcmp-<pid>-…` on the
//! default vhost) and deletes them before exiting; it never reconfigures or restarts the broker.
//! The `recovery` mode force-closes only its own connections (`rabbitmqctl close_connection`).

mod amqprs_client;
mod client;
mod lapin_client;
mod measure;
mod recovery;
mod workload;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::amqprs_client::Amqprs;
use crate::client::{Broker, Client, ConsumeJob, PublishJob, QueueArgs};
use crate::lapin_client::Lapin;
use crate::measure::{BrokerProcess, Meter, percentile};

/// Settings of one run. Defaults keep each measurement to at most a few seconds on 2 cores; environment
/// variables (see README.md) scale them for a smoke run.
struct Settings {
    /// Where RabbitMQ listens and how to log in (`KS_AMQP_HOST`, `KS_AMQP_PORT`,
    /// `KS_AMQP_USER`, `KS_AMQP_PASSWORD`).
    broker: Broker,
    /// Repetitions of the whole suite for each client (`KS_REPS`, default 3).
    reps: usize,
    /// Run only the clients whose name contains this text (`KS_ONLY`).
    only: Option<String>,
    /// Durable queues per workload (16).
    queues: usize,
    /// Fixes in one batch message (1,000, about 121 KB of JSON).
    fixes_per_batch: usize,
    /// Batch messages published with one outstanding confirm.
    batch_n1_count: usize,
    /// Batch messages published with 64 outstanding confirms; they become the consume backlog.
    batch_n64_count: usize,
    /// Batch messages put into the single-active-consumer queues as their backlog.
    sac_backlog_count: usize,
    /// Single-fix messages published with 256 outstanding confirms.
    small_count: usize,
    /// Publishing stops after this long even if the count is not reached.
    publish_cap: Duration,
    /// Draining gives up after this long.
    consume_cap: Duration,
    /// basic.qos prefetch count of each consumer.
    prefetch: u16,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let var = |k: &str| std::env::var(k).ok();
        let scale: f64 = match var("KS_SCALE") {
            Some(s) => s.parse().context("KS_SCALE must be a number")?,
            None => 1.0,
        };
        let scaled = |n: usize| ((n as f64 * scale).round() as usize).max(16);
        Ok(Settings {
            broker: Broker {
                host: var("KS_AMQP_HOST").unwrap_or_else(|| "127.0.0.1".into()),
                port: match var("KS_AMQP_PORT") {
                    Some(p) => p.parse().context("KS_AMQP_PORT must be a port number")?,
                    None => 5672,
                },
                user: var("KS_AMQP_USER").unwrap_or_else(|| "guest".into()),
                password: var("KS_AMQP_PASSWORD").unwrap_or_else(|| "guest".into()),
            },
            reps: match var("KS_REPS") {
                Some(r) => r.parse().context("KS_REPS must be a count")?,
                None => 3,
            },
            only: var("KS_ONLY"),
            queues: 16,
            fixes_per_batch: 1_000,
            batch_n1_count: scaled(1_600),
            batch_n64_count: scaled(6_400),
            sac_backlog_count: scaled(3_200),
            small_count: scaled(60_000),
            publish_cap: Duration::from_secs(8),
            consume_cap: Duration::from_secs(30),
            prefetch: 64,
        })
    }

    fn runs(&self, client: &str) -> bool {
        self.only.as_deref().is_none_or(|o| client.contains(o))
    }
}

/// The pre-generated message bodies, shared by both clients.
struct Payloads {
    /// Distinct 1,000-fix batches, cycled through.
    batches: Vec<Vec<u8>>,
    /// Distinct single-fix messages, cycled through.
    singles: Vec<Vec<u8>>,
}

/// The queues one client uses; every name starts with `amqpcmp-<pid>-<client>-`.
struct QueueSet {
    /// 16 plain durable queues.
    classic: Vec<String>,
    /// 16 durable queues with `x-single-active-consumer: true`.
    sac: Vec<String>,
    /// A durable queue that dead-letters to `dead`, for the feature check.
    dlx_work: String,
    /// Where `dlx_work` dead-letters to.
    dead: String,
}

impl QueueSet {
    fn new(client: &str, queues: usize) -> QueueSet {
        let prefix = format!("amqpcmp-{}-{client}", std::process::id());
        QueueSet {
            classic: (0..queues).map(|i| format!("{prefix}-q{i:02}")).collect(),
            sac: (0..queues).map(|i| format!("{prefix}-sac{i:02}")).collect(),
            dlx_work: format!("{prefix}-dlx-work"),
            dead: format!("{prefix}-dlx-dead"),
        }
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        self.classic
            .iter()
            .chain(&self.sac)
            .chain([&self.dlx_work, &self.dead])
    }
}

/// One measured phase of one repetition for one client.
struct Row {
    client: &'static str,
    rep: usize,
    phase: Phase,
    /// Messages published (and confirmed) or consumed (and acked).
    msgs: u64,
    /// Fixes carried by those messages.
    fixes: u64,
    /// Body bytes carried by those messages.
    bytes: u64,
    /// Wall-clock time of the phase's hot path.
    elapsed: Duration,
    /// CPU time of this process over the phase (all threads).
    client_cpu: Duration,
    /// CPU time of the broker over the phase, when the broker process was found.
    broker_cpu: Option<Duration>,
    /// Publish-to-confirm latency percentiles (publish phases only).
    p50: Option<Duration>,
    p99: Option<Duration>,
    /// Anything that needs saying (nacks, leftovers, time caps).
    note: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    BatchN1,
    BatchN64,
    SmallN256,
    Consume,
    ConsumeSac,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::BatchN1,
        Phase::BatchN64,
        Phase::SmallN256,
        Phase::Consume,
        Phase::ConsumeSac,
    ];

    fn title(self) -> &'static str {
        match self {
            Phase::BatchN1 => {
                "1a. Publish 1,000-fix batches (~121 KB), persistent, confirms, N = 1"
            }
            Phase::BatchN64 => {
                "1b. Publish 1,000-fix batches (~121 KB), persistent, confirms, N = 64"
            }
            Phase::SmallN256 => "2. Publish single fixes (~120 B), persistent, confirms, N = 256",
            Phase::Consume => {
                "3a. Drain the 1b backlog: 16 queues x 1 consumer, prefetch 64, manual ack"
            }
            Phase::ConsumeSac => {
                "3b. Drain a backlog from 16 single-active-consumer queues x 2 consumers (1 active), prefetch 64, manual ack"
            }
        }
    }

    fn short(self) -> &'static str {
        match self {
            Phase::BatchN1 => "publish batch N=1",
            Phase::BatchN64 => "publish batch N=64",
            Phase::SmallN256 => "publish single fix N=256",
            Phase::Consume => "consume 16 x 1",
            Phase::ConsumeSac => "consume 16 SAC x 2",
        }
    }

    fn is_publish(self) -> bool {
        matches!(self, Phase::BatchN1 | Phase::BatchN64 | Phase::SmallN256)
    }
}

/// Everything a suite needs besides the client.
struct SuiteInputs<'a> {
    settings: &'a Settings,
    payloads: &'a Payloads,
    meter: &'a Meter,
}

/// Publishes with confirms and turns the outcome into a row.
async fn publish_phase<C: Client>(
    c: &C,
    rep: usize,
    phase: Phase,
    job: PublishJob<'_>,
    fixes_per_msg: u64,
) -> Result<Row> {
    let mut out = c.publish(&job).await?;
    out.latencies.sort_unstable();
    let mut note = String::new();
    if out.nacked > 0 {
        write!(note, "{} nacked; ", out.nacked)?;
    }
    if (out.published as usize) < job.count {
        write!(note, "time cap hit at {} of {}; ", out.published, job.count)?;
    }
    Ok(Row {
        client: C::NAME,
        rep,
        phase,
        msgs: out.published,
        fixes: out.published * fixes_per_msg,
        bytes: out.bytes,
        elapsed: out.elapsed,
        client_cpu: out.cpu.client,
        broker_cpu: out.cpu.broker,
        p50: percentile(&out.latencies, 0.50),
        p99: percentile(&out.latencies, 0.99),
        note,
    })
}

/// Drains `queues` and turns the outcome into a row; checks that nothing is left behind.
async fn consume_phase<C: Client>(
    c: &C,
    cx: &SuiteInputs<'_>,
    rep: usize,
    phase: Phase,
    queues: &[String],
    consumers_per_queue: usize,
    expected: u64,
) -> Result<Row> {
    let s = cx.settings;
    let job = ConsumeJob {
        queues,
        consumers_per_queue,
        prefetch: s.prefetch,
        expected,
        time_cap: s.consume_cap,
        meter: cx.meter,
    };
    let out = c.consume(&job).await?;

    let mut note = String::new();
    if out.acked != expected {
        write!(note, "acked {} of {expected}; ", out.acked)?;
    }
    if out.bad_bodies > 0 {
        write!(note, "{} bad bodies; ", out.bad_bodies)?;
    }
    let mut left = 0;
    for q in queues {
        left += c.message_count(q).await?;
        c.purge_queue(q).await?;
    }
    if left > 0 {
        write!(note, "{left} left in queues; ")?;
    }
    if consumers_per_queue > 1 {
        let single_active = out
            .per_consumer
            .iter()
            .filter(|counts| counts.iter().filter(|&&n| n > 0).count() == 1)
            .count();
        write!(
            note,
            "{single_active}/{} queues had exactly one active consumer; ",
            queues.len()
        )?;
    }
    Ok(Row {
        client: C::NAME,
        rep,
        phase,
        msgs: out.acked,
        fixes: out.acked * s.fixes_per_batch as u64,
        bytes: out.bytes,
        elapsed: out.elapsed,
        client_cpu: out.cpu.client,
        broker_cpu: out.cpu.broker,
        p50: None,
        p99: None,
        note,
    })
}

/// One repetition of every phase for one client. Queues are empty on entry and on exit.
async fn run_suite<C: Client>(
    c: &C,
    cx: &SuiteInputs<'_>,
    names: &QueueSet,
    rep: usize,
) -> Result<Vec<Row>> {
    let s = cx.settings;
    let fixes = s.fixes_per_batch as u64;
    let mut rows = Vec::new();

    eprintln!("[{} rep {rep}] publish batches N=1", C::NAME);
    let row = publish_phase(
        c,
        rep,
        Phase::BatchN1,
        PublishJob {
            queues: &names.classic,
            payloads: &cx.payloads.batches,
            count: s.batch_n1_count,
            max_outstanding: 1,
            time_cap: s.publish_cap,
            meter: cx.meter,
        },
        fixes,
    )
    .await?;
    rows.push(row);
    for q in &names.classic {
        c.purge_queue(q).await?;
    }

    eprintln!("[{} rep {rep}] publish batches N=64", C::NAME);
    let mut row = publish_phase(
        c,
        rep,
        Phase::BatchN64,
        PublishJob {
            queues: &names.classic,
            payloads: &cx.payloads.batches,
            count: s.batch_n64_count,
            max_outstanding: 64,
            time_cap: s.publish_cap,
            meter: cx.meter,
        },
        fixes,
    )
    .await?;
    let mut queued = 0u64;
    for q in &names.classic {
        queued += u64::from(c.message_count(q).await?);
    }
    if queued != row.msgs {
        write!(row.note, "{queued} queued after {} confirmed; ", row.msgs)?;
    }
    let backlog = queued;
    rows.push(row);

    eprintln!("[{} rep {rep}] consume {backlog} from 16 queues", C::NAME);
    rows.push(consume_phase(c, cx, rep, Phase::Consume, &names.classic, 1, backlog).await?);

    eprintln!(
        "[{} rep {rep}] fill the single-active-consumer queues",
        C::NAME
    );
    let fill = c
        .publish(&PublishJob {
            queues: &names.sac,
            payloads: &cx.payloads.batches,
            count: s.sac_backlog_count,
            max_outstanding: 64,
            time_cap: s.publish_cap,
            meter: cx.meter,
        })
        .await?;
    let mut sac_backlog = 0u64;
    for q in &names.sac {
        sac_backlog += u64::from(c.message_count(q).await?);
    }
    eprintln!(
        "[{} rep {rep}] consume {sac_backlog} from 16 SAC queues ({} published)",
        C::NAME,
        fill.published
    );
    rows.push(consume_phase(c, cx, rep, Phase::ConsumeSac, &names.sac, 2, sac_backlog).await?);

    eprintln!("[{} rep {rep}] publish single fixes N=256", C::NAME);
    let row = publish_phase(
        c,
        rep,
        Phase::SmallN256,
        PublishJob {
            queues: &names.classic,
            payloads: &cx.payloads.singles,
            count: s.small_count,
            max_outstanding: 256,
            time_cap: s.publish_cap,
            meter: cx.meter,
        },
        1,
    )
    .await?;
    rows.push(row);
    for q in &names.classic {
        c.purge_queue(q).await?;
    }
    Ok(rows)
}

/// Declares the client's queues (16 classic, 16 single-active-consumer, and the dead-letter
/// pair), each starting empty.
async fn declare<C: Client>(c: &C, names: &QueueSet) -> Result<()> {
    for q in &names.classic {
        c.declare_queue(q, &QueueArgs::default()).await?;
    }
    let sac = QueueArgs {
        single_active_consumer: true,
        ..QueueArgs::default()
    };
    for q in &names.sac {
        c.declare_queue(q, &sac).await?;
    }
    c.declare_queue(&names.dead, &QueueArgs::default()).await?;
    let dlx = QueueArgs {
        dead_letter_to: Some(names.dead.clone()),
        ..QueueArgs::default()
    };
    c.declare_queue(&names.dlx_work, &dlx).await?;
    Ok(())
}

/// A client's result of [`dead_letter_check`]: its name and whether the message arrived.
type DeadLetterCheck = (&'static str, bool);

/// Functional check of dead-letter arguments: a message rejected without requeue on the work
/// queue must arrive in the dead-letter queue.
async fn dead_letter_check<C: Client>(
    c: &C,
    cx: &SuiteInputs<'_>,
    names: &QueueSet,
) -> Result<bool> {
    c.publish(&PublishJob {
        queues: std::slice::from_ref(&names.dlx_work),
        payloads: &cx.payloads.singles,
        count: 1,
        max_outstanding: 1,
        time_cap: Duration::from_secs(5),
        meter: cx.meter,
    })
    .await?;
    if !c.get_and_reject(&names.dlx_work).await? {
        bail!(
            "{}: the published message was not in the work queue",
            C::NAME
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if c.message_count(&names.dead).await? == 1 {
            c.purge_queue(&names.dead).await?;
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(false)
}

/// Deletes every queue of the set, reporting (not failing on) errors.
async fn delete_all<C: Client>(c: &C, names: &QueueSet) {
    for q in names.all() {
        if let Err(error) = c.delete_queue(q).await {
            eprintln!("could not delete {q}: {error:#} (delete it by hand)");
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    match std::env::args().nth(1).as_deref() {
        None | Some("throughput") => {}
        Some("recovery") => {
            print!("{}", recovery::run(&settings.broker).await?);
            return Ok(());
        }
        Some(other) => bail!("unknown mode {other:?}; use `throughput` (default) or `recovery`"),
    }
    let meter = Meter {
        broker: BrokerProcess::find(),
    };
    match &meter.broker {
        Some(b) => eprintln!("broker process: pid {} (beam.smp)", b.pid()),
        None => eprintln!("broker process not found; broker CPU will not be reported"),
    }
    let payloads = Payloads {
        batches: workload::batch_messages(32, settings.fixes_per_batch, 1),
        singles: workload::single_fix_messages(1_024, 2),
    };
    let mean = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() / v.len();
    eprintln!(
        "batch message: {} bytes on average; single fix: {} bytes on average",
        mean(&payloads.batches),
        mean(&payloads.singles)
    );
    let cx = SuiteInputs {
        settings: &settings,
        payloads: &payloads,
        meter: &meter,
    };

    let lapin = match settings.runs(Lapin::NAME) {
        true => Some(Lapin::connect(&settings.broker).await?),
        false => None,
    };
    let amqprs = match settings.runs(Amqprs::NAME) {
        true => Some(Amqprs::connect(&settings.broker).await?),
        false => None,
    };
    let lapin_names = QueueSet::new(Lapin::NAME, settings.queues);
    let amqprs_names = QueueSet::new(Amqprs::NAME, settings.queues);

    let started = Instant::now();
    let result: Result<(Vec<Row>, Vec<DeadLetterCheck>)> = async {
        let mut dlx = Vec::new();
        if let Some(c) = &lapin {
            declare(c, &lapin_names).await?;
            dlx.push((Lapin::NAME, dead_letter_check(c, &cx, &lapin_names).await?));
        }
        if let Some(c) = &amqprs {
            declare(c, &amqprs_names).await?;
            dlx.push((
                Amqprs::NAME,
                dead_letter_check(c, &cx, &amqprs_names).await?,
            ));
        }
        let mut rows = Vec::new();
        for rep in 1..=settings.reps {
            // Alternate which client goes first, so neither always meets a broker that is
            // still flushing the other's work.
            let lapin_first = rep % 2 == 1;
            for turn in 0..2 {
                if (turn == 0) == lapin_first {
                    if let Some(c) = &lapin {
                        rows.extend(run_suite(c, &cx, &lapin_names, rep).await?);
                    }
                } else if let Some(c) = &amqprs {
                    rows.extend(run_suite(c, &cx, &amqprs_names, rep).await?);
                }
            }
        }
        Ok((rows, dlx))
    }
    .await;

    if let Some(c) = &lapin {
        delete_all(c, &lapin_names).await;
    }
    if let Some(c) = &amqprs {
        delete_all(c, &amqprs_names).await;
    }
    if let Some(c) = lapin {
        c.close().await?;
    }
    if let Some(c) = amqprs {
        c.close().await?;
    }
    let (rows, dlx) = result?;
    eprintln!("measured in {:.0?}", started.elapsed());
    print!("{}", report(&rows, &dlx, meter.broker.is_some()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// report

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

fn us_per_msg(cpu: Duration, msgs: u64) -> f64 {
    if msgs == 0 {
        0.0
    } else {
        cpu.as_secs_f64() * 1e6 / msgs as f64
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Formats a number with thousands separators and no decimals.
fn int(x: f64) -> String {
    let s = format!("{:.0}", x);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

fn report(rows: &[Row], dlx: &[DeadLetterCheck], have_broker: bool) -> String {
    let mut o = String::new();
    let broker_col = |r: &Row| match r.broker_cpu {
        Some(b) if have_broker => format!("{:.0}", us_per_msg(b, r.msgs)),
        _ => "–".into(),
    };
    for phase in Phase::ALL {
        let _ = writeln!(o, "\n### {}\n", phase.title());
        let _ = writeln!(
            o,
            "| client | rep | msgs | msgs/s | fixes/s | MB/s | confirm p50 ms | confirm p99 ms | client CPU µs/msg | client CPU % of 1 core | broker CPU µs/msg | notes |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut sorted: Vec<&Row> = rows.iter().filter(|r| r.phase == phase).collect();
        sorted.sort_by_key(|r| (r.client, r.rep));
        for r in sorted {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {:.1} | {} | {} | {:.0} | {:.0} | {} | {} |",
                r.client,
                r.rep,
                int(r.msgs as f64),
                int(per_sec(r.msgs, r.elapsed)),
                int(per_sec(r.fixes, r.elapsed)),
                per_sec(r.bytes, r.elapsed) / 1e6,
                ms(r.p50),
                ms(r.p99),
                us_per_msg(r.client_cpu, r.msgs),
                100.0 * r.client_cpu.as_secs_f64() / r.elapsed.as_secs_f64().max(1e-9),
                broker_col(r),
                r.note.trim_end_matches("; "),
            );
        }
    }

    let _ = writeln!(o, "\n### Summary (median of the repetitions)\n");
    let _ = writeln!(
        o,
        "| phase | client | msgs/s | fixes/s | confirm p50 ms | confirm p99 ms | client CPU µs/msg | broker CPU µs/msg |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    let mut clients: Vec<&str> = rows.iter().map(|r| r.client).collect();
    clients.sort_unstable();
    clients.dedup();
    for phase in Phase::ALL {
        for &client in &clients {
            let rs: Vec<&Row> = rows
                .iter()
                .filter(|r| r.phase == phase && r.client == client)
                .collect();
            let med = |f: &dyn Fn(&Row) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let lat = |q: fn(&Row) -> Option<Duration>| {
                if phase.is_publish() {
                    format!(
                        "{:.1}",
                        med(&|r| q(r).map_or(0.0, |d| d.as_secs_f64() * 1e3))
                    )
                } else {
                    "–".into()
                }
            };
            let broker = if have_broker {
                format!(
                    "{:.0}",
                    med(&|r| r.broker_cpu.map_or(0.0, |b| us_per_msg(b, r.msgs)))
                )
            } else {
                "–".into()
            };
            let _ = writeln!(
                o,
                "| {} | {client} | {} | {} | {} | {} | {:.0} | {broker} |",
                phase.short(),
                int(med(&|r| per_sec(r.msgs, r.elapsed))),
                int(med(&|r| per_sec(r.fixes, r.elapsed))),
                lat(|r| r.p50),
                lat(|r| r.p99),
                med(&|r| us_per_msg(r.client_cpu, r.msgs)),
            );
        }
    }
    if !dlx.is_empty() {
        let _ = writeln!(o, "\n### Queue-argument checks\n");
        for (client, ok) in dlx {
            let _ = writeln!(
                o,
                "- {client}: a message rejected (requeue=false) on a queue declared with `x-dead-letter-exchange`/`x-dead-letter-routing-key` {} the dead-letter queue.",
                if *ok {
                    "arrived in"
                } else {
                    "did NOT arrive in"
                }
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_groups_thousands() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.4), "999");
        assert_eq!(int(1_234.0), "1,234");
        assert_eq!(int(1_234_567.0), "1,234,567");
        assert_eq!(int(-12_345.0), "-12,345");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn queue_names_carry_pid_and_client() {
        let set = QueueSet::new("lapin", 16);
        let prefix = format!("amqpcmp-{}-lapin-", std::process::id());
        assert_eq!(set.all().count(), 34);
        assert!(set.all().all(|q| q.starts_with(&prefix)));
        assert_eq!(set.classic[3], format!("{prefix}q03"));
    }
}
