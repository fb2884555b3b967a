//! `kickstand ops …`: the operations services from a terminal, over the HTTP API (or the
//! gateway) with an API key — send a message, run a script and follow its output, manage the
//! scheduled jobs. Nothing here touches a data directory.

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use std::io::Write;

#[derive(clap::Args)]
pub struct OpsArgs {
    /// The Kickstand API or gateway.
    #[arg(
        long,
        env = "KICKSTAND_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An API key with the `operate` scope.
    #[arg(long, env = "KICKSTAND_API_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    #[command(subcommand)]
    command: OpsCommand,
}

#[derive(clap::Subcommand)]
enum OpsCommand {
    /// Messages: send one.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Scripts: run one and follow its output, or list them.
    #[command(subcommand)]
    Script(ScriptCommand),
    /// Scheduled jobs: add, list, pause, resume.
    #[command(subcommand)]
    Job(JobCommand),
}

#[derive(clap::Subcommand)]
enum MessageCommand {
    /// Send a message through a channel, from a template or inline text.
    Send(SendArgs),
}

#[derive(clap::Args)]
struct SendArgs {
    /// The channel (see `GET /api/v1/channels`).
    #[arg(long)]
    channel: String,
    /// The recipient (email addresses, comma-separated; passed on by webhooks).
    #[arg(long)]
    to: Option<String>,
    /// A stored template.
    #[arg(long, conflicts_with_all = ["subject", "body"])]
    template: Option<String>,
    /// The template's version [default: the latest].
    #[arg(long, requires = "template")]
    template_version: Option<i64>,
    /// An inline subject.
    #[arg(long)]
    subject: Option<String>,
    /// An inline body.
    #[arg(long)]
    body: Option<String>,
    /// A template variable, `name=value` (repeatable; a value that is JSON is sent as JSON).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Send later: RFC 3339.
    #[arg(long)]
    at: Option<String>,
    /// An idempotency key: sending again with it replays the first answer.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(clap::Subcommand)]
enum ScriptCommand {
    /// Run a registered script; its output is streamed here and the command exits with the
    /// script's status.
    Run(ScriptRunArgs),
    /// The registered scripts and their arguments.
    List,
}

#[derive(clap::Args)]
struct ScriptRunArgs {
    /// The script's name.
    name: String,
    /// An argument, `name=value` (repeatable).
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    args: Vec<String>,
    /// Start the run and print its id without following it.
    #[arg(long)]
    detach: bool,
    /// An idempotency key: starting again with it returns the same run.
    #[arg(long)]
    idempotency_key: Option<String>,
}

// Parsed once per command line: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
enum JobCommand {
    /// Add a job: one schedule (`--cron`, `--every` or `--at`) and one action (`--script`,
    /// `--task` or `--message-channel`).
    Add(JobAddArgs),
    /// The jobs, with their next run.
    List,
    /// Pause a job (its ticks are skipped until it is resumed).
    Pause { id: String },
    /// Resume a paused job.
    Resume { id: String },
}

#[derive(clap::Args)]
struct JobAddArgs {
    /// What the job is for.
    #[arg(long)]
    name: String,
    /// A cron expression with seconds: `sec min hour day month weekday`.
    #[arg(long, group = "schedule")]
    cron: Option<String>,
    /// The time zone of `--cron` (IANA name) [default: UTC].
    #[arg(long, requires = "cron")]
    tz: Option<String>,
    /// A fixed interval (`30s`, `5m`, `1h`).
    #[arg(long, group = "schedule")]
    every: Option<String>,
    /// One run at this RFC 3339 time.
    #[arg(long, group = "schedule")]
    at: Option<String>,
    /// Run this registered script.
    #[arg(long, group = "action")]
    script: Option<String>,
    /// A script argument, `name=value` (repeatable).
    #[arg(long = "arg", value_name = "NAME=VALUE", requires = "script")]
    args: Vec<String>,
    /// Run a built-in task: retention, stale_sweep or fleet_report.
    #[arg(long, group = "action")]
    task: Option<String>,
    /// Send a message through this channel.
    #[arg(long, group = "action", requires = "message_template")]
    message_channel: Option<String>,
    /// The message's recipient.
    #[arg(long, requires = "message_channel")]
    message_to: Option<String>,
    /// The message's template.
    #[arg(long, requires = "message_channel")]
    message_template: Option<String>,
    /// A template variable of the message, `name=value` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", requires = "message_channel")]
    vars: Vec<String>,
    /// A tick while the previous run goes on: allow, forbid or replace.
    #[arg(long)]
    overlap: Option<String>,
    /// Ticks missed while no scheduler ran: skip or run_once.
    #[arg(long)]
    missed: Option<String>,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
}

pub fn run(args: OpsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let api = Api::new(&args.url, args.key)?;
        match args.command {
            OpsCommand::Message(MessageCommand::Send(a)) => send_message(&api, a).await,
            OpsCommand::Script(ScriptCommand::Run(a)) => run_script(&api, a).await,
            OpsCommand::Script(ScriptCommand::List) => {
                let v = api
                    .json(reqwest::Method::GET, "/api/v1/scripts", None, None)
                    .await?;
                print_json(&v)
            }
            OpsCommand::Job(JobCommand::Add(a)) => add_job(&api, a).await,
            OpsCommand::Job(JobCommand::List) => list_jobs(&api).await,
            OpsCommand::Job(JobCommand::Pause { id }) => {
                let v = api
                    .json(
                        reqwest::Method::POST,
                        &format!("/api/v1/jobs/{}/pause", path(&id)),
                        None,
                        None,
                    )
                    .await?;
                print_json(&v)
            }
            OpsCommand::Job(JobCommand::Resume { id }) => {
                let v = api
                    .json(
                        reqwest::Method::POST,
                        &format!("/api/v1/jobs/{}/resume", path(&id)),
                        None,
                        None,
                    )
                    .await?;
                print_json(&v)
            }
        }
    })
}

/// The API, with the key.
struct Api {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(url: &str, key: Option<String>) -> anyhow::Result<Api> {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--url must be an http:// or https:// URL"
        );
        Ok(Api {
            base: url.trim_end_matches('/').to_owned(),
            key,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()?,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        r
    }

    /// Sends a request, answers its JSON; a non-2xx answer is an error with the problem's text.
    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut r = self
            .request(method, path)
            .timeout(std::time::Duration::from_secs(60));
        if let Some(b) = body {
            r = r.json(b);
        }
        if let Some(k) = idempotency_key {
            r = r.header("Idempotency-Key", k);
        }
        let resp = r
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{}", problem_text(status, &text));
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the answer is not JSON")
    }
}

/// `HTTP 403: Forbidden: the key … lacks …` from a problem+json body (or the raw body).
fn problem_text(status: reqwest::StatusCode, body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(p) if p.get("title").is_some() => {
            let mut s = format!(
                "HTTP {}: {}",
                status.as_u16(),
                p["title"].as_str().unwrap_or("")
            );
            if let Some(d) = p.get("detail").and_then(Value::as_str) {
                s.push_str(": ");
                s.push_str(d);
            }
            if let Some(f) = p.get("field").and_then(Value::as_str) {
                s.push_str(&format!(" (field {f})"));
            }
            s
        }
        _ => format!("HTTP {}: {}", status.as_u16(), body.trim()),
    }
}

/// A path segment, percent-encoded.
fn path(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `name=value` pairs; a value that parses as JSON (numbers, booleans, quoted strings,
/// objects) is sent as such, anything else as a string.
fn pairs(items: &[String], what: &str) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("{what} {item:?} must be name=value");
        };
        anyhow::ensure!(!k.is_empty(), "{what} {item:?} has no name");
        let value = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.into()));
        out.insert(k.to_owned(), value);
    }
    Ok(out)
}

/// Script arguments: always strings (the runner converts them by the manifest's types), so
/// `--arg note=true` and `--arg code=007` arrive as written.
fn string_pairs(items: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--arg {item:?} must be name=value");
        };
        anyhow::ensure!(!k.is_empty(), "--arg {item:?} has no name");
        out.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Ok(out)
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

async fn send_message(api: &Api, a: SendArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.template.is_some() || a.body.is_some(),
        "give --template, or --body (and --subject)"
    );
    let mut body = json!({ "channel": a.channel });
    let obj = body.as_object_mut().expect("an object");
    for (k, v) in [
        ("to", a.to),
        ("template", a.template),
        ("subject", a.subject),
        ("body", a.body),
        ("send_at", a.at),
    ] {
        if let Some(v) = v {
            obj.insert(k.into(), Value::String(v));
        }
    }
    if let Some(v) = a.template_version {
        obj.insert("template_version".into(), json!(v));
    }
    if !a.vars.is_empty() {
        obj.insert("vars".into(), Value::Object(pairs(&a.vars, "--var")?));
    }
    let v = api
        .json(
            reqwest::Method::POST,
            "/api/v1/messages",
            Some(&body),
            a.idempotency_key.as_deref(),
        )
        .await?;
    print_json(&v)
}

async fn run_script(api: &Api, a: ScriptRunArgs) -> anyhow::Result<()> {
    let body = json!({ "args": string_pairs(&a.args)? });
    let started = api
        .json(
            reqwest::Method::POST,
            &format!("/api/v1/scripts/{}/runs", path(&a.name)),
            Some(&body),
            a.idempotency_key.as_deref(),
        )
        .await?;
    let id = started["run_id"]
        .as_str()
        .context("the runner's answer has no run_id")?
        .to_owned();
    eprintln!("run {id} of {} started", a.name);
    if a.detach {
        return print_json(&started);
    }
    let resp = api
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/scripts/runs/{}/output", path(&id)),
        )
        .header("Accept", "text/event-stream")
        .send()
        .await
        .with_context(|| format!("cannot reach {}", api.base))?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!(
            "{}",
            problem_text(status, &resp.text().await.unwrap_or_default())
        );
    }
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut end: Option<Value> = None;
    'read: while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("the output stream broke")?);
        while let Some(at) = find_event_end(&buf) {
            let event: Vec<u8> = buf.drain(..at.end).collect();
            let (name, data) = parse_event(&event[..at.start]);
            match name.as_str() {
                "stdout" | "stderr" => {
                    let text: String = serde_json::from_str(&data).unwrap_or(data);
                    if name == "stdout" {
                        let mut o = std::io::stdout().lock();
                        o.write_all(text.as_bytes())?;
                        o.flush()?;
                    } else {
                        let mut e = std::io::stderr().lock();
                        e.write_all(text.as_bytes())?;
                        e.flush()?;
                    }
                }
                "end" => {
                    end = serde_json::from_str(&data).ok();
                    break 'read;
                }
                _ => {}
            }
        }
    }
    let run = match end {
        Some(r) => r,
        None => {
            api.json(
                reqwest::Method::GET,
                &format!("/api/v1/scripts/runs/{}", path(&id)),
                None,
                None,
            )
            .await?
        }
    };
    let status = run["status"].as_str().unwrap_or("unknown");
    eprintln!(
        "run {id}: {status}{}",
        run["exit_code"]
            .as_i64()
            .map(|c| format!(", exit code {c}"))
            .unwrap_or_default()
    );
    match status {
        "succeeded" => Ok(()),
        _ => {
            let code = run["exit_code"].as_i64().filter(|c| (1..=255).contains(c));
            std::process::exit(code.unwrap_or(1) as i32);
        }
    }
}

/// Where the first complete server-sent event in `buf` ends: its text, and the text with the
/// blank line after it.
fn find_event_end(buf: &[u8]) -> Option<std::ops::Range<usize>> {
    for (i, w) in buf.windows(2).enumerate() {
        if w == b"\n\n" {
            return Some(i..i + 2);
        }
    }
    None
}

/// The `event:` name and the `data:` lines (joined with newlines) of one event.
fn parse_event(raw: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(raw);
    let (mut name, mut data) = (String::from("message"), Vec::new());
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
        }
    }
    (name, data.join("\n"))
}

async fn add_job(api: &Api, a: JobAddArgs) -> anyhow::Result<()> {
    let schedule = match (&a.cron, &a.every, &a.at) {
        (Some(c), None, None) => {
            let mut s = json!({ "cron": c });
            if let Some(tz) = &a.tz {
                s["time_zone"] = json!(tz);
            }
            s
        }
        (None, Some(e), None) => json!({ "every": e }),
        (None, None, Some(at)) => json!({ "at": at }),
        _ => bail!("give one schedule: --cron, --every or --at"),
    };
    let action = match (&a.script, &a.task, &a.message_channel) {
        (Some(s), None, None) => json!({ "script": { "name": s, "args": string_pairs(&a.args)? } }),
        (None, Some(t), None) => json!({ "task": t }),
        (None, None, Some(c)) => {
            let mut m = json!({ "channel": c, "template": a.message_template });
            if let Some(to) = &a.message_to {
                m["to"] = json!(to);
            }
            if !a.vars.is_empty() {
                m["vars"] = Value::Object(pairs(&a.vars, "--var")?);
            }
            json!({ "message": m })
        }
        _ => bail!("give one action: --script, --task or --message-channel"),
    };
    let mut body = json!({ "name": a.name, "schedule": schedule, "action": action });
    if let Some(o) = a.overlap {
        body["overlap"] = json!(o);
    }
    if let Some(m) = a.missed {
        body["missed"] = json!(m);
    }
    if a.paused {
        body["paused"] = json!(true);
    }
    let v = api
        .json(reqwest::Method::POST, "/api/v1/jobs", Some(&body), None)
        .await?;
    print_json(&v)
}

async fn list_jobs(api: &Api) -> anyhow::Result<()> {
    let mut cursor: Option<String> = None;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<26} {:<8} {:<26} {:<28} NAME",
        "ID", "STATE", "NEXT RUN", "SCHEDULE"
    )?;
    loop {
        let p = match &cursor {
            Some(c) => format!("/api/v1/jobs?cursor={}", path(c)),
            None => "/api/v1/jobs".to_owned(),
        };
        let page = api.json(reqwest::Method::GET, &p, None, None).await?;
        for j in page["jobs"].as_array().into_iter().flatten() {
            let s = &j["schedule"];
            let schedule = if let Some(c) = s["cron"].as_str() {
                format!("cron {c} {}", s["time_zone"].as_str().unwrap_or("UTC"))
            } else if let Some(e) = s["every"].as_str() {
                format!("every {e}")
            } else {
                format!("at {}", s["at"].as_str().unwrap_or("?"))
            };
            writeln!(
                out,
                "{:<26} {:<8} {:<26} {:<28} {}",
                j["id"].as_str().unwrap_or(""),
                if j["paused"].as_bool() == Some(true) {
                    "paused"
                } else {
                    "active"
                },
                j["next_run_at"].as_str().unwrap_or("-"),
                schedule,
                j["name"].as_str().unwrap_or("")
            )?;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_take_json_values_and_refuse_garbage() {
        let m = pairs(
            &[
                "n=3".into(),
                "ok=true".into(),
                "name=Ana Lima".into(),
                "x=".into(),
            ],
            "--var",
        )
        .unwrap();
        assert_eq!(m["n"], json!(3));
        assert_eq!(m["ok"], json!(true));
        assert_eq!(m["name"], json!("Ana Lima"));
        assert_eq!(m["x"], json!(""));
        assert!(pairs(&["novalue".into()], "--var").is_err());
        assert!(pairs(&["=v".into()], "--var").is_err());
        let s = string_pairs(&["code=007".into(), "cmd=; rm -rf /".into()]).unwrap();
        assert_eq!(s["code"], json!("007"));
        assert_eq!(s["cmd"], json!("; rm -rf /"));
    }

    #[test]
    fn server_sent_events_are_split_and_read() {
        let raw =
            b"event: stdout\ndata: \"a\\nb\"\n\nevent: end\ndata: {\"status\":\"succeeded\"}\n\n";
        let first = find_event_end(raw).unwrap();
        assert_eq!(
            parse_event(&raw[..first.start]),
            ("stdout".into(), "\"a\\nb\"".into())
        );
        let rest = &raw[first.end..];
        let second = find_event_end(rest).unwrap();
        let (name, data) = parse_event(&rest[..second.start]);
        assert_eq!(name, "end");
        assert_eq!(
            serde_json::from_str::<Value>(&data).unwrap()["status"],
            "succeeded"
        );
        assert!(find_event_end(b"event: stdout\ndata: x\n").is_none());
    }

    #[test]
    fn problems_are_told_plainly() {
        let t = problem_text(
            reqwest::StatusCode::FORBIDDEN,
            r#"{"type":"about:blank","title":"Forbidden","status":403,"detail":"the key lacks operate"}"#,
        );
        assert_eq!(t, "HTTP 403: Forbidden: the key lacks operate");
        assert_eq!(
            problem_text(reqwest::StatusCode::BAD_GATEWAY, "upstream gone"),
            "HTTP 502: upstream gone"
        );
    }
}
