//! The [`Runner`] service: the registry of scripts, the runs of this process, their
//! concurrency limits, and the background tasks (directory reload, heartbeat, cancel requests
//! from other processes).
//!
//! A run is refused (429) when the script's `max_concurrent` or the process's
//! `max_concurrent_runs` is reached: nothing is queued, so a caller (the scheduler) decides
//! what to do with a busy script. Limits are per process.

use crate::config::RunnerConfig;
use crate::error::{RunnerError, StartError};
use crate::manifest::{BoundArgs, Script};
use crate::output::{LiveOutput, Stream, Transcript};
use crate::process::{self, Launch};
use crate::registry::{self, Fingerprint, Registry};
use crate::store::{Audit, Ending, RunRecord, Status, Store};
use kickstand_service::{Caller, Db, now_ms};
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often this process refreshes the heartbeat of its runs and looks for cancel requests.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A run whose heartbeat is older than this belongs to a runner that died: it is failed.
const LOST_AFTER_MS: i64 = 60_000;

/// The script runner.
pub struct Runner {
    config: RunnerConfig,
    store: Store,
    /// Swapped whole on reload.
    registry: RwLock<Arc<Registry>>,
    /// The scripts directory as last seen, to notice changes.
    fingerprint: Mutex<Fingerprint>,
    /// The runs of this process, by id, while they last.
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
    /// Runs in progress, in total and per script (the concurrency limits).
    slots: Arc<Mutex<Slots>>,
    /// This process's name in run records.
    instance: String,
    /// Where working directories are made.
    work_root: PathBuf,
    /// Cancelled by `shutdown`: stops the background tasks and refuses new runs.
    stopping: CancellationToken,
    /// The run tasks and background tasks, awaited by `shutdown`.
    tasks: TaskTracker,
    /// Held from the key lookup to the insert of a start with an idempotency key, so two
    /// requests with one key in this process cannot both miss the key and race for the
    /// concurrency slot (the loser would get 429 instead of the run). Across processes the
    /// unique key in the store decides.
    keyed_starts: tokio::sync::Mutex<()>,
}

/// A run of this process.
pub struct LiveRun {
    pub output: Arc<LiveOutput>,
    cancel: CancellationToken,
    /// Why it was cancelled (who asked, or shutdown).
    cancel_reason: Mutex<Option<String>>,
}

#[derive(Default)]
struct Slots {
    total: usize,
    per_script: HashMap<String, usize>,
}

/// A taken concurrency slot, given back when dropped.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    script: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.total -= 1;
        if let Some(n) = s.per_script.get_mut(&self.script) {
            *n -= 1;
            if *n == 0 {
                s.per_script.remove(&self.script);
            }
        }
    }
}

/// A run accepted by [`Runner::start_run`].
#[derive(Debug)]
pub struct Started {
    pub run: RunRecord,
    /// The run existed already under the same idempotency key.
    pub replayed: bool,
}

impl Runner {
    /// Checks the settings, migrates the store, fails the runs this instance left running when
    /// it last stopped, loads the scripts and starts the background tasks on the current
    /// runtime.
    pub async fn start(config: RunnerConfig, db: Db) -> Result<Arc<Runner>, RunnerError> {
        config.validate()?;
        let instance = config.instance.clone().unwrap_or_else(hostname);
        let store = Store::open(db).await?;
        let failed = store.fail_abandoned(&instance, "runner restarted").await?;
        if failed > 0 {
            tracing::warn!(
                message = "runs left running by the previous runner process marked failed",
                runs = failed
            );
        }
        let work_root = config.work_root();
        std::fs::create_dir_all(&work_root).map_err(|e| {
            RunnerError::Io(format!(
                "the runner's work directory {}: {e}",
                work_root.display()
            ))
        })?;
        let loader = config.clone();
        let registry = tokio::task::spawn_blocking(move || {
            (
                Registry::load(&loader),
                registry::fingerprint(&loader.scripts_dir),
            )
        })
        .await
        .map_err(|e| RunnerError::Io(format!("loading the scripts failed: {e}")))?;
        log_registry(&registry.0);
        let runner = Arc::new(Runner {
            config,
            store,
            registry: RwLock::new(Arc::new(registry.0)),
            fingerprint: Mutex::new(registry.1),
            live: Mutex::new(HashMap::new()),
            slots: Arc::new(Mutex::new(Slots::default())),
            instance,
            work_root,
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
            keyed_starts: tokio::sync::Mutex::new(()),
        });
        runner.tasks.spawn(heartbeat_loop(
            Arc::downgrade(&runner),
            runner.stopping.clone(),
        ));
        if runner.config.reload_interval_secs > 0 {
            runner.tasks.spawn(reload_loop(
                Arc::downgrade(&runner),
                runner.stopping.clone(),
                Duration::from_secs(runner.config.reload_interval_secs),
            ));
        }
        Ok(runner)
    }

    /// Stops the background tasks, cancels every run of this process (SIGTERM to its group,
    /// SIGKILL after `kill_grace_secs`; recorded `cancelled`, "runner shutting down") and
    /// waits until each is recorded and its processes are gone.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        let live: Vec<_> = self.live.lock().values().cloned().collect();
        for run in live {
            run.cancel_with("runner shutting down".into());
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The scripts as last loaded.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Loads the scripts directory again and swaps the new set in.
    pub async fn reload(&self) -> Arc<Registry> {
        let config = self.config.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            (
                Registry::load(&config),
                registry::fingerprint(&config.scripts_dir),
            )
        })
        .await;
        match loaded {
            Ok((reg, fp)) => {
                log_registry(&reg);
                let reg = Arc::new(reg);
                *self.registry.write() = reg.clone();
                *self.fingerprint.lock() = fp;
                reg
            }
            Err(error) => {
                tracing::error!(message = "reloading the scripts failed", %error);
                self.registry()
            }
        }
    }

    /// The script `name`, or why it cannot be used.
    pub fn script(&self, name: &str) -> Result<Arc<Script>, StartError> {
        let reg = self.registry();
        if let Some(s) = reg.scripts.get(name) {
            return Ok(s.clone());
        }
        match reg.why_invalid(name) {
            Some(why) => Err(StartError::InvalidScript(name.into(), why.into())),
            None => Err(StartError::UnknownScript(name.into())),
        }
    }

    /// Starts a run of `name` for `caller`: checks the scope, the arguments and the limits,
    /// records it and starts the process in the background. With an idempotency key, a second
    /// call with the same script and arguments returns the first run (`replayed`) instead.
    pub async fn start_run(
        self: &Arc<Self>,
        name: &str,
        args: &Map<String, Json>,
        caller: &Caller,
        idempotency_key: Option<&str>,
    ) -> Result<Started, StartError> {
        if self.stopping.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        if let Some(key) = idempotency_key
            && (key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(StartError::BadKey(
                "the Idempotency-Key must be 1 to 255 printable ASCII characters without spaces"
                    .into(),
            ));
        }
        let script = self.script(name)?;
        let who = caller.audit_name();
        if !caller.allows(&script.scope) {
            self.audit_quietly(Audit {
                who: &who,
                action: "start",
                script: name,
                run_id: None,
                args: None,
                outcome: "refused: missing scope",
            })
            .await;
            return Err(StartError::Forbidden {
                script: name.into(),
                scope: script.scope.clone(),
            });
        }
        let bound = script.bind(args)?;
        let _keyed = match idempotency_key {
            Some(_) => Some(self.keyed_starts.lock().await),
            None => None,
        };
        loop {
            if let Some(key) = idempotency_key
                && let Some(found) = self.replay(key, &script, &bound).await?
            {
                return Ok(found);
            }
            let Some(slot) = self.take_slot(&script) else {
                self.audit_quietly(Audit {
                    who: &who,
                    action: "start",
                    script: name,
                    run_id: None,
                    args: Some(&bound.redacted),
                    outcome: "refused: concurrency limit",
                })
                .await;
                return Err(StartError::Busy(format!(
                    "{name} is already running {} time(s), or the runner is at its limit of runs; retry later",
                    script.max_concurrent
                )));
            };
            let run = RunRecord {
                id: new_run_id(),
                script: script.name.clone(),
                status: Status::Queued,
                args: bound.redacted.clone(),
                started_by: who.clone(),
                instance: self.instance.clone(),
                created_at: now_ms(),
                started_at: None,
                finished_at: None,
                exit_code: None,
                signal: None,
                error: None,
                stdout: None,
                stderr: None,
                output_bytes: 0,
                truncated: false,
            };
            match self
                .store
                .insert(&run, &bound.digest, idempotency_key)
                .await
            {
                Ok(()) => {}
                // Another request with the same key won the race: answer with its run.
                Err(kickstand_service::DbError::Unique(_)) if idempotency_key.is_some() => {
                    drop(slot);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            self.audit_quietly(Audit {
                who: &who,
                action: "start",
                script: name,
                run_id: Some(&run.id),
                args: Some(&run.args),
                outcome: "accepted",
            })
            .await;
            let live = Arc::new(LiveRun {
                output: Arc::new(LiveOutput::new(Transcript::new(
                    script.output_limit,
                    &bound.secrets,
                ))),
                cancel: CancellationToken::new(),
                cancel_reason: Mutex::new(None),
            });
            self.live.lock().insert(run.id.clone(), live.clone());
            let this = self.clone();
            let record = run.clone();
            self.tasks.spawn(async move {
                this.execute(script, bound, record, live, slot).await;
            });
            return Ok(Started {
                run,
                replayed: false,
            });
        }
    }

    async fn replay(
        &self,
        key: &str,
        script: &Script,
        bound: &BoundArgs,
    ) -> Result<Option<Started>, StartError> {
        let Some(found) = self.store.by_key(key).await? else {
            return Ok(None);
        };
        if found.script != script.name {
            return Err(StartError::KeyReused(format!(
                "a run of another script ({})",
                found.script
            )));
        }
        if found.digest != bound.digest {
            return Err(StartError::KeyReused(format!(
                "run {} with other arguments",
                found.id
            )));
        }
        let run = self
            .store
            .get(&found.id)
            .await?
            .ok_or_else(|| StartError::KeyReused(format!("run {}, since removed", found.id)))?;
        Ok(Some(Started {
            run,
            replayed: true,
        }))
    }

    fn take_slot(&self, script: &Script) -> Option<Slot> {
        let mut s = self.slots.lock();
        let mine = s.per_script.get(&script.name).copied().unwrap_or(0);
        if s.total >= self.config.max_concurrent_runs || mine >= script.max_concurrent {
            return None;
        }
        s.total += 1;
        *s.per_script.entry(script.name.clone()).or_default() += 1;
        Some(Slot {
            slots: self.slots.clone(),
            script: script.name.clone(),
        })
    }

    /// The live output of a run of this process.
    pub fn live_output(&self, id: &str) -> Option<Arc<LiveOutput>> {
        self.live.lock().get(id).map(|r| r.output.clone())
    }

    /// A run's record; for a run of this process still going, with its output so far.
    pub async fn run(&self, id: &str) -> Result<Option<RunRecord>, kickstand_service::DbError> {
        let Some(mut run) = self.store.get(id).await? else {
            return Ok(None);
        };
        if !run.status.is_final()
            && let Some(out) = self.live_output(id)
        {
            let t = out.transcript.lock();
            run.stdout = Some(t.text(Stream::Stdout));
            run.stderr = Some(t.text(Stream::Stderr));
            run.output_bytes = t.seen() as i64;
            run.truncated = t.truncated();
        }
        Ok(Some(run))
    }

    /// Cancels a run: at once when this process runs it, otherwise by a request the owning
    /// process sees within its heartbeat. `Ok(None)`: no such run; `Err(status)`: it had ended.
    pub async fn cancel(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<Option<Result<RunRecord, Status>>, kickstand_service::DbError> {
        let Some(run) = self.store.get(id).await? else {
            return Ok(None);
        };
        if run.status.is_final() {
            return Ok(Some(Err(run.status)));
        }
        let who = caller.audit_name();
        let live = self.live.lock().get(id).cloned();
        match live {
            Some(live) => live.cancel_with(format!("cancelled by {who}")),
            None => {
                if !self.store.request_cancel(id).await? {
                    let status = self.store.get(id).await?.map_or(run.status, |r| r.status);
                    return Ok(Some(Err(status)));
                }
            }
        }
        self.audit_quietly(Audit {
            who: &who,
            action: "cancel",
            script: &run.script,
            run_id: Some(id),
            args: None,
            outcome: "requested",
        })
        .await;
        Ok(Some(Ok(run)))
    }

    async fn audit_quietly(&self, audit: Audit<'_>) {
        if let Err(error) = self.store.audit(audit).await {
            tracing::error!(message = "writing the runner's audit log failed", %error);
        }
    }

    /// The whole life of one run after it was recorded.
    async fn execute(
        self: Arc<Self>,
        script: Arc<Script>,
        bound: BoundArgs,
        run: RunRecord,
        live: Arc<LiveRun>,
        slot: Slot,
    ) {
        let work_dir = self.work_root.join(&run.id);
        let outcome = match self.prepare(&script, &bound, &run, &work_dir) {
            Ok(launch) => {
                let started = now_ms();
                if let Err(error) = self.store.mark_running(&run.id, started).await {
                    tracing::error!(message = "recording a run as running failed", run = %run.id, %error);
                }
                tracing::info!(message = "script run started", run = %run.id, script = %script.name, by = %run.started_by);
                let res =
                    process::run(launch, live.output.clone(), live.cancel.clone(), |_| {}).await;
                (res, started)
            }
            Err(e) => (Err(e), now_ms()),
        };
        let finished_at = now_ms();
        let (status, exit_code, signal, error) = match outcome.0 {
            Ok(exit) => {
                let code = exit.code().map(i64::from);
                let signal = exit.signal().map(i64::from);
                match exit.ending {
                    process::Ending::Exited if code == Some(0) => {
                        (Status::Succeeded, code, signal, None)
                    }
                    process::Ending::Exited => {
                        let why = match (code, signal) {
                            (Some(c), _) => format!("exited with code {c}"),
                            (None, Some(s)) => format!("killed by signal {s}"),
                            _ => "ended abnormally".into(),
                        };
                        (Status::Failed, code, signal, Some(why))
                    }
                    process::Ending::TimedOut => (
                        Status::TimedOut,
                        code,
                        signal,
                        Some(format!("timed out after {} s", script.timeout.as_secs())),
                    ),
                    process::Ending::Cancelled => (
                        Status::Cancelled,
                        code,
                        signal,
                        Some(
                            live.cancel_reason
                                .lock()
                                .clone()
                                .unwrap_or_else(|| "cancelled".into()),
                        ),
                    ),
                }
            }
            Err(e) => {
                // The message never holds an argument or environment value.
                (
                    Status::Failed,
                    None,
                    None,
                    Some(format!("could not start: {e}")),
                )
            }
        };
        let ending = {
            let t = live.output.transcript.lock();
            Ending {
                status,
                finished_at,
                exit_code,
                signal,
                error,
                stdout: t.text(Stream::Stdout),
                stderr: t.text(Stream::Stderr),
                output_bytes: t.seen() as i64,
                truncated: t.truncated(),
            }
        };
        tracing::info!(
            message = "script run ended",
            run = %run.id,
            script = %script.name,
            status = status.as_str(),
            duration_ms = finished_at - outcome.1,
        );
        // The process is gone: its slot is free before the run reads as ended, so a client that
        // waits for the end and starts again is never refused for this run.
        drop(slot);
        let mut stored = false;
        for attempt in 0..5u32 {
            let audit = Audit {
                who: &run.started_by,
                action: "finish",
                script: &script.name,
                run_id: Some(&run.id),
                args: Some(&run.args),
                outcome: status.as_str(),
            };
            match self.store.finish(&run.id, &ending, audit).await {
                Ok(()) => {
                    stored = true;
                    break;
                }
                Err(error) => {
                    tracing::error!(message = "recording a run's end failed", run = %run.id, attempt, %error);
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        if !self.config.keep_work_dirs
            && let Err(error) = tokio::fs::remove_dir_all(&work_dir).await
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(message = "removing a run's work directory failed", dir = %work_dir.display(), %error);
        }
        let end = match self.store.get(&run.id).await {
            Ok(Some(r)) if stored => crate::api::RunView::from_record(&r, false),
            _ => {
                let mut r = run.clone();
                r.status = status;
                r.finished_at = Some(finished_at);
                r.exit_code = ending.exit_code;
                r.signal = ending.signal;
                r.error = ending.error.clone();
                crate::api::RunView::from_record(&r, false)
            }
        };
        live.output
            .close(serde_json::to_string(&end).expect("a run serializes"));
        self.live.lock().remove(&run.id);
    }

    /// The working directory and what to start; an error becomes a failed run.
    fn prepare(
        &self,
        script: &Script,
        bound: &BoundArgs,
        run: &RunRecord,
        work_dir: &std::path::Path,
    ) -> std::io::Result<Launch> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(work_dir)?;
        // Checked again now: the file may have changed since the manifest was loaded.
        let dir = std::fs::canonicalize(&self.config.scripts_dir)?;
        let exe = crate::manifest::resolve_command(&dir, &script.command)
            .map_err(std::io::Error::other)?;
        let mut env: Vec<(String, String)> = Vec::new();
        for name in &script.env {
            let value = self
                .config
                .env
                .get(name)
                .ok_or_else(|| std::io::Error::other(format!("runner.env has no {name}")))?
                .resolve(name)
                .map_err(std::io::Error::other)?;
            env.push((name.clone(), value));
        }
        for (k, v) in &script.set_env {
            env.push((k.clone(), v.clone()));
        }
        let dir_text = work_dir.to_string_lossy().into_owned();
        env.push(("HOME".into(), dir_text.clone()));
        env.push(("TMPDIR".into(), dir_text));
        env.push(("LANG".into(), "C.UTF-8".into()));
        env.push(("KICKSTAND_RUN_ID".into(), run.id.clone()));
        env.push(("KICKSTAND_RUN_SCRIPT".into(), script.name.clone()));
        env.extend(bound.secret_env.iter().cloned());
        Ok(Launch {
            exe,
            argv: bound.argv.clone(),
            env,
            path_env: self.config.path.clone(),
            work_dir: work_dir.to_owned(),
            timeout: script.timeout,
            grace: Duration::from_secs(self.config.kill_grace_secs),
        })
    }
}

impl LiveRun {
    fn cancel_with(&self, reason: String) {
        self.cancel_reason.lock().get_or_insert(reason);
        self.cancel.cancel();
    }
}

fn log_registry(reg: &Registry) {
    if let Some(error) = &reg.dir_error {
        tracing::warn!(message = "no scripts loaded", %error);
    }
    tracing::info!(
        message = "scripts loaded",
        valid = reg.scripts.len(),
        invalid = reg.invalid.len()
    );
}

async fn heartbeat_loop(runner: std::sync::Weak<Runner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(runner) = runner.upgrade() else {
            return;
        };
        let now = now_ms();
        let store = &runner.store;
        if let Err(error) = store.heartbeat(&runner.instance, now).await {
            tracing::warn!(message = "runner heartbeat failed", %error);
            continue;
        }
        match store.cancel_requests(&runner.instance).await {
            Ok(ids) => {
                for id in ids {
                    if let Some(live) = runner.live.lock().get(&id) {
                        live.cancel_with("cancelled on request".into());
                    }
                }
            }
            Err(error) => tracing::warn!(message = "reading cancel requests failed", %error),
        }
        match store.fail_silent(now - LOST_AFTER_MS).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                message = "runs of a lost runner process marked failed",
                runs = n
            ),
            Err(error) => tracing::warn!(message = "checking for lost runs failed", %error),
        }
    }
}

async fn reload_loop(runner: std::sync::Weak<Runner>, stop: CancellationToken, every: Duration) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(runner) = runner.upgrade() else {
            return;
        };
        let dir = runner.config.scripts_dir.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || registry::fingerprint(&dir)).await else {
            continue;
        };
        if *runner.fingerprint.lock() != now {
            tracing::info!(message = "the scripts directory changed; reloading");
            runner.reload().await;
        }
    }
}

/// `run_` and 24 random hex digits.
fn new_run_id() -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("the system's random source works");
    let mut id = String::from("run_");
    for x in b {
        id.push_str(&format!("{x:02x}"));
    }
    id
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "runner".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
