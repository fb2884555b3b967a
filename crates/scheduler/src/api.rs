//! The HTTP API: `/api/v1/jobs…` and `/api/v1/rules…`, with OpenAPI annotations.
//!
//! Bodies are JSON with no unknown fields; a bad body or field is a 400 problem+json whose
//! `field` names what is wrong. Database failures are logged and answered with a bare 500.

use crate::Scheduler;
use crate::action::Action;
use crate::jobs;
use crate::render;
use crate::schedule::{Schedule, ScheduleSpec};
use crate::store::{Job, Missed, Overlap, Rule, Run};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kickstand_domain::event::EventKind;
use kickstand_domain::timefmt::format_ms;
use kickstand_service::{Caller, DbError, Problem, now_ms};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value as Json;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type Svc = State<Arc<Scheduler>>;

/// The job and rule routes (state: the scheduler).
pub fn router() -> OpenApiRouter<Arc<Scheduler>> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job, replace_job, patch_job, delete_job))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(run_job))
        .routes(routes!(job_runs))
        .routes(routes!(create_rule, list_rules))
        .routes(routes!(get_rule, replace_rule, patch_rule, delete_rule))
        .routes(routes!(pause_rule))
        .routes(routes!(resume_rule))
        .routes(routes!(rule_history))
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Parses a JSON body, naming the field at fault.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    kickstand_service::problem::parse_json(body)
}

fn random_id(prefix: &str) -> Result<String, Problem> {
    let mut b = [0u8; 10];
    getrandom::fill(&mut b).map_err(|e| Problem::internal("no randomness", &e))?;
    Ok(format!(
        "{prefix}_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

fn check_name(name: &str) -> Result<(), Problem> {
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Problem::invalid(
            "name",
            "a name is 1-200 characters without control characters",
        ));
    }
    Ok(())
}

fn check_action(action: &Action) -> Result<(), Problem> {
    action.check().map_err(|(f, d)| Problem::invalid(f, d))
}

fn parse_deadline(text: Option<&str>) -> Result<i64, Problem> {
    match text {
        None => Ok(3_600_000),
        Some(t) => {
            let d = humantime::parse_duration(t).map_err(|e| {
                Problem::invalid(
                    "missed_deadline",
                    format!("{t:?} is not a duration like 10m: {e}"),
                )
            })?;
            if d > Duration::from_secs(366 * 86_400) {
                return Err(Problem::invalid("missed_deadline", "at most 366 days"));
            }
            Ok(d.as_millis() as i64)
        }
    }
}

fn not_found(what: &str, id: &str) -> Problem {
    Problem::not_found(format!("no {what} {id}"))
}

/// A limit query parameter: 1-500, default 100.
fn page_limit(limit: Option<usize>) -> Result<usize, Problem> {
    match limit {
        None => Ok(100),
        Some(l) if (1..=500).contains(&l) => Ok(l),
        Some(_) => Err(Problem::invalid("limit", "limit is 1 to 500")),
    }
}

// ---- Jobs ----

/// A new job, or a job's replacement (`PUT`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    /// What the job is for.
    pub name: String,
    /// When it runs.
    pub schedule: ScheduleSpec,
    /// What it does.
    pub action: Action,
    /// A tick while the previous run is still going: `allow`, `forbid` (default) or `replace`.
    #[serde(default)]
    pub overlap: Overlap,
    /// Ticks missed while no scheduler ran: `skip` (default) or `run_once`.
    #[serde(default)]
    pub missed: Missed,
    /// With `run_once`: the latest missed tick runs only if it is at most this old (default
    /// `1h`).
    pub missed_deadline: Option<String>,
    /// Created paused.
    #[serde(default)]
    pub paused: bool,
}

/// A change to a job; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobPatch {
    pub name: Option<String>,
    pub schedule: Option<ScheduleSpec>,
    pub action: Option<Action>,
    pub overlap: Option<Overlap>,
    pub missed: Option<Missed>,
    pub missed_deadline: Option<String>,
    pub paused: Option<bool>,
}

/// A job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// `job_` and 20 hex digits.
    pub id: String,
    pub name: String,
    pub schedule: ScheduleSpec,
    pub action: Action,
    pub overlap: Overlap,
    pub missed: Missed,
    /// As a duration (`1h`).
    pub missed_deadline: String,
    pub paused: bool,
    /// RFC 3339 time of the next tick; absent when there is none.
    pub next_run_at: Option<String>,
    /// Who created it (the API key's name and id).
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Job> for JobView {
    fn from(j: Job) -> JobView {
        JobView {
            id: j.id,
            name: j.name,
            schedule: j.schedule,
            action: j.action,
            overlap: j.overlap,
            missed: j.missed,
            missed_deadline: humantime::format_duration(Duration::from_millis(
                j.missed_deadline_ms.max(0) as u64,
            ))
            .to_string(),
            paused: j.paused,
            next_run_at: j.next_run_at.map(format_ms),
            created_by: j.created_by,
            created_at: format_ms(j.created_at),
            updated_at: format_ms(j.updated_at),
        }
    }
}

/// A page of jobs, by id.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and paging of the job list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    /// Only paused (`true`) or active (`false`) jobs.
    pub paused: Option<bool>,
    /// Only jobs whose action is of this kind: `script`, `message` or `task`.
    pub kind: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1-500, default 100.
    pub limit: Option<usize>,
}

/// A run of a job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub id: i64,
    pub job_id: String,
    /// RFC 3339 time of the tick this run is for.
    pub scheduled_for: String,
    /// The tick in epoch ms (the idempotency key is `job-{job_id}-{this}`).
    pub scheduled_for_ms: i64,
    /// `schedule`, `catch_up` or `manual`.
    pub trigger: String,
    /// The scheduler process that ran it.
    pub instance: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// `running`, `succeeded`, `failed`, `timed_out`, `cancelled`, `replaced` or
    /// `skipped_overlap`.
    pub outcome: String,
    /// The action's answer (the message id, the script run and its end).
    #[schema(value_type = Object)]
    pub answer: Option<Json>,
    /// The script run's id, for script actions.
    pub script_run_id: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
}

impl From<Run> for RunView {
    fn from(r: Run) -> RunView {
        RunView {
            id: r.id,
            job_id: r.job_id,
            scheduled_for: format_ms(r.scheduled_for),
            scheduled_for_ms: r.scheduled_for,
            trigger: r.trigger,
            instance: r.instance,
            started_at: format_ms(r.started_at),
            finished_at: r.finished_at.map(format_ms),
            outcome: r.outcome,
            answer: r
                .answer
                .map(|a| serde_json::from_str(&a).unwrap_or(Json::String(a))),
            script_run_id: r.script_run_id,
            error: r.error,
        }
    }
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Paging of runs and history.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1-500, default 100.
    pub limit: Option<usize>,
}

/// Checks a job and computes its next tick from `now`.
fn build_job(
    id: String,
    input: JobInput,
    caller: &Caller,
    created_at: i64,
    now: i64,
) -> Result<Job, Problem> {
    check_name(&input.name)?;
    let schedule =
        Schedule::parse(&input.schedule, now).map_err(|e| Problem::invalid(e.field, e.detail))?;
    check_action(&input.action)?;
    let missed_deadline_ms = parse_deadline(input.missed_deadline.as_deref())?;
    let next = schedule.next_after(now);
    if next.is_none() {
        return Err(Problem::invalid("schedule.at", "this time has passed"));
    }
    Ok(Job {
        id,
        name: input.name,
        schedule: input.schedule,
        action: input.action,
        overlap: input.overlap,
        missed: input.missed,
        missed_deadline_ms,
        paused: input.paused,
        anchor: now,
        next_run_at: next,
        created_by: caller.audit_name(),
        created_at,
        updated_at: now,
    })
}

/// `POST /api/v1/jobs`
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    summary = "Create a job",
    description = "A job performs its action at each tick of its schedule: `{\"cron\": \"0 0 6 * * *\", \
        \"time_zone\": \"Europe/Berlin\"}` (six fields, seconds first), `{\"every\": \"30s\"}` or \
        `{\"at\": \"2026-06-01T06:00:00Z\"}`.",
    request_body(content = JobInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = JobView, content_type = "application/json"),
        (status = 400, description = "The body is not JSON or a field is invalid; `field` names it.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_job(State(s): Svc, caller: Caller, body: Bytes) -> Result<Response, Problem> {
    let input: JobInput = parse_body(&body)?;
    let now = now_ms();
    let job = build_job(random_id("job")?, input, &caller, now, now)?;
    s.store.insert_job(&job).await?;
    Ok(json(StatusCode::CREATED, &JobView::from(job)))
}

/// `GET /api/v1/jobs`
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    summary = "List jobs",
    params(JobListQuery),
    responses(
        (status = 200, description = "A page of jobs, by id.", body = JobPage, content_type = "application/json"),
        (status = 400, description = "A bad parameter.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_jobs(
    State(s): Svc,
    query: Result<Query<JobListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::invalid("query", e.body_text()))?;
    if let Some(k) = &q.kind
        && !matches!(k.as_str(), "script" | "message" | "task")
    {
        return Err(Problem::invalid("kind", "kind is script, message or task"));
    }
    let limit = page_limit(q.limit)?;
    let jobs = s
        .store
        .list_jobs(
            q.cursor.as_deref().unwrap_or(""),
            q.paused,
            q.kind.as_deref(),
            limit,
        )
        .await?;
    let next_cursor = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| j.id.clone()))
        .flatten();
    Ok(json(
        StatusCode::OK,
        &JobPage {
            jobs: jobs.into_iter().map(JobView::from).collect(),
            next_cursor,
        },
    ))
}

async fn load_job(s: &Scheduler, id: &str) -> Result<Job, Problem> {
    s.store.job(id).await?.ok_or_else(|| not_found("job", id))
}

/// `GET /api/v1/jobs/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    summary = "A job",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The job.", body = JobView, content_type = "application/json"),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_job(State(s): Svc, Path(id): Path<String>) -> Result<Response, Problem> {
    Ok(json(
        StatusCode::OK,
        &JobView::from(load_job(&s, &id).await?),
    ))
}

/// `PUT /api/v1/jobs/{id}`
#[utoipa::path(
    put,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    summary = "Replace a job",
    description = "Replaces every field; the schedule starts again from now.",
    params(("id" = String, Path, description = "The job id.")),
    request_body(content = JobInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The job.", body = JobView, content_type = "application/json"),
        (status = 400, description = "A field is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replace_job(
    State(s): Svc,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let input: JobInput = parse_body(&body)?;
    let old = load_job(&s, &id).await?;
    let mut job = build_job(id.clone(), input, &caller, old.created_at, now_ms())?;
    job.created_by = old.created_by;
    if !s.store.update_job(&job).await? {
        return Err(not_found("job", &id));
    }
    Ok(json(StatusCode::OK, &JobView::from(job)))
}

/// `PATCH /api/v1/jobs/{id}`
#[utoipa::path(
    patch,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    summary = "Change a job",
    description = "Changes the fields given; a new schedule starts from now.",
    params(("id" = String, Path, description = "The job id.")),
    request_body(content = JobPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The job.", body = JobView, content_type = "application/json"),
        (status = 400, description = "A field is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn patch_job(
    State(s): Svc,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let patch: JobPatch = parse_body(&body)?;
    let mut job = load_job(&s, &id).await?;
    let now = now_ms();
    if let Some(name) = patch.name {
        check_name(&name)?;
        job.name = name;
    }
    if let Some(spec) = patch.schedule {
        let schedule =
            Schedule::parse(&spec, now).map_err(|e| Problem::invalid(e.field, e.detail))?;
        job.next_run_at = Some(
            schedule
                .next_after(now)
                .ok_or_else(|| Problem::invalid("schedule.at", "this time has passed"))?,
        );
        job.schedule = spec;
        job.anchor = now;
    }
    if let Some(action) = patch.action {
        check_action(&action)?;
        job.action = action;
    }
    if let Some(o) = patch.overlap {
        job.overlap = o;
    }
    if let Some(m) = patch.missed {
        job.missed = m;
    }
    if patch.missed_deadline.is_some() {
        job.missed_deadline_ms = parse_deadline(patch.missed_deadline.as_deref())?;
    }
    if let Some(p) = patch.paused {
        if job.paused && !p {
            resume_next(&mut job, now);
        }
        job.paused = p;
    }
    job.updated_at = now;
    if !s.store.update_job(&job).await? {
        return Err(not_found("job", &id));
    }
    Ok(json(StatusCode::OK, &JobView::from(job)))
}

/// A resumed job continues from its next tick after now: ticks that passed while it was
/// paused are not caught up.
fn resume_next(job: &mut Job, now: i64) {
    if let Ok(schedule) = Schedule::parse(&job.schedule, job.anchor)
        && job.next_run_at.is_some_and(|t| t < now)
    {
        job.next_run_at = schedule.next_from(now);
    }
}

/// `DELETE /api/v1/jobs/{id}`
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    summary = "Delete a job and its run history",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_job(State(s): Svc, Path(id): Path<String>) -> Result<Response, Problem> {
    if !s.store.delete_job(&id).await? {
        return Err(not_found("job", &id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/jobs/{id}/pause`
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/pause",
    tag = "jobs",
    summary = "Pause a job",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The job.", body = JobView, content_type = "application/json"),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn pause_job(State(s): Svc, Path(id): Path<String>) -> Result<Response, Problem> {
    if !s.store.set_job_paused(&id, true, now_ms()).await? {
        return Err(not_found("job", &id));
    }
    Ok(json(
        StatusCode::OK,
        &JobView::from(load_job(&s, &id).await?),
    ))
}

/// `POST /api/v1/jobs/{id}/resume`
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/resume",
    tag = "jobs",
    summary = "Resume a job",
    description = "It runs again from its next tick after now.",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The job.", body = JobView, content_type = "application/json"),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn resume_job(State(s): Svc, Path(id): Path<String>) -> Result<Response, Problem> {
    let mut job = load_job(&s, &id).await?;
    let now = now_ms();
    if job.paused {
        resume_next(&mut job, now);
        job.paused = false;
        job.updated_at = now;
        s.store.update_job(&job).await?;
    }
    Ok(json(StatusCode::OK, &JobView::from(job)))
}

/// `POST /api/v1/jobs/{id}/run`
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/run",
    tag = "jobs",
    summary = "Run a job now",
    description = "Starts a run now (trigger `manual`), under the job's overlap policy: with \
        `forbid` a run still going makes this a 409; with `replace` that run is cancelled.",
    params(("id" = String, Path, description = "The job id.")),
    responses(
        (status = 202, description = "Started.", body = RunView, content_type = "application/json"),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A run is still going and the job forbids overlap.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn run_job(State(s): Svc, Path(id): Path<String>) -> Result<Response, Problem> {
    let job = load_job(&s, &id).await?;
    let now = now_ms();
    let live = s.store.live_runs(&id, now).await?;
    match job.overlap {
        Overlap::Forbid if !live.is_empty() => {
            return Err(Problem::conflict(
                "a run of this job is still going and its overlap policy is forbid",
            ));
        }
        Overlap::Replace => {
            for old in &live {
                jobs::replace_run(&s, old, now).await;
            }
        }
        _ => {}
    }
    let lease_until = now + s.config.lease_ttl.as_millis() as i64;
    let mut at = now;
    let run_id = loop {
        match s
            .store
            .claim_run(&id, at, "manual", &s.instance, now, "running", lease_until)
            .await?
        {
            Some(run_id) => break run_id,
            // A tick at this very millisecond: take the next one.
            None => at += 1,
        }
    };
    jobs::start(&s, job.id, job.action, at, None);
    let run = s
        .store
        .run(run_id)
        .await?
        .ok_or_else(|| Problem::internal("the run vanished", &"no row"))?;
    Ok(json(StatusCode::ACCEPTED, &RunView::from(run)))
}

fn parse_cursor(cursor: Option<&str>) -> Result<i64, Problem> {
    match cursor {
        None => Ok(i64::MAX),
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| Problem::invalid("cursor", "not a cursor from a previous page")),
    }
}

/// `GET /api/v1/jobs/{id}/runs`
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/runs",
    tag = "jobs",
    summary = "A job's runs",
    params(("id" = String, Path, description = "The job id."), PageQuery),
    responses(
        (status = 200, description = "A page of runs, newest first.", body = RunPage, content_type = "application/json"),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_runs(
    State(s): Svc,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::invalid("query", e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let before = parse_cursor(q.cursor.as_deref())?;
    load_job(&s, &id).await?;
    let runs = s.store.runs(&id, before, limit).await?;
    let next_cursor = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(json(
        StatusCode::OK,
        &RunPage {
            runs: runs.into_iter().map(RunView::from).collect(),
            next_cursor,
        },
    ))
}

// ---- Rules ----

/// A new rule, or a rule's replacement (`PUT`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    pub name: String,
    /// The event kinds it reacts to (`battery_low`, `left_operating_area`, …); at least one.
    pub kinds: Vec<String>,
    /// Only events of this zone.
    pub zone_id: Option<String>,
    /// Only vehicles whose id matches this pattern (`*` matches any characters).
    pub vehicle: Option<String>,
    /// What it does; strings may hold `{{ event.FIELD }}` placeholders.
    pub action: Action,
    /// After firing for a vehicle, events of that vehicle within this many seconds (by event
    /// time) are suppressed (counted, not acted on). Default 0.
    #[serde(default)]
    pub cooldown_secs: u32,
    #[serde(default)]
    pub paused: bool,
}

/// A change to a rule; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulePatch {
    pub name: Option<String>,
    pub kinds: Option<Vec<String>>,
    pub zone_id: Option<String>,
    pub vehicle: Option<String>,
    pub action: Option<Action>,
    pub cooldown_secs: Option<u32>,
    pub paused: Option<bool>,
}

/// A rule with its counts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleView {
    /// `rule_` and 20 hex digits.
    pub id: String,
    pub name: String,
    pub kinds: Vec<String>,
    pub zone_id: Option<String>,
    pub vehicle: Option<String>,
    pub action: Action,
    pub cooldown_secs: i64,
    pub paused: bool,
    /// Events it acted on.
    pub fired: i64,
    /// Events it did not act on because of the cool-down.
    pub suppressed: i64,
    /// Events whose action failed.
    pub failed: i64,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

async fn rule_view(s: &Scheduler, r: Rule) -> Result<RuleView, DbError> {
    let (fired, suppressed, failed) = s.store.rule_counts(&r.id).await?;
    Ok(RuleView {
        id: r.id,
        name: r.name,
        kinds: r.kinds,
        zone_id: r.zone_id,
        vehicle: r.vehicle_pattern,
        action: r.action,
        cooldown_secs: r.cooldown_secs,
        paused: r.paused,
        fired,
        suppressed,
        failed,
        created_by: r.created_by,
        created_at: format_ms(r.created_at),
        updated_at: format_ms(r.updated_at),
    })
}

/// A page of rules, by id.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RulePage {
    pub rules: Vec<RuleView>,
    pub next_cursor: Option<String>,
}

/// One firing or suppression.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleHistoryEntry {
    pub id: i64,
    pub event_id: String,
    pub event_seq: i64,
    pub event_kind: String,
    pub vehicle_id: String,
    pub at: String,
    /// `fired`, `suppressed`, `failed`, or `firing` (in progress).
    pub outcome: String,
    #[schema(value_type = Object)]
    pub answer: Option<Json>,
    pub error: Option<String>,
}

/// A page of a rule's history, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleHistoryPage {
    pub history: Vec<RuleHistoryEntry>,
    pub next_cursor: Option<String>,
}

fn check_rule(rule: &Rule) -> Result<(), Problem> {
    check_name(&rule.name)?;
    if rule.kinds.is_empty() {
        return Err(Problem::invalid("kinds", "give at least one event kind"));
    }
    for (i, k) in rule.kinds.iter().enumerate() {
        if EventKind::parse(k).is_none() {
            return Err(Problem::invalid(
                format!("kinds[{i}]"),
                format!(
                    "{k:?} is not an event kind; one of {}",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ),
            ));
        }
    }
    if let Some(p) = &rule.vehicle_pattern
        && (p.is_empty() || p.len() > 64)
    {
        return Err(Problem::invalid(
            "vehicle",
            "a vehicle pattern is 1-64 characters",
        ));
    }
    if let Some(z) = &rule.zone_id
        && (z.is_empty() || z.len() > 64)
    {
        return Err(Problem::invalid("zone_id", "a zone id is 1-64 characters"));
    }
    check_action(&rule.action)?;
    let value = serde_json::to_value(&rule.action).expect("an action serializes");
    render::check(&value).map_err(|d| Problem::invalid("action", d))?;
    Ok(())
}

fn build_rule(
    id: String,
    input: RuleInput,
    caller: &Caller,
    created_at: i64,
    now: i64,
) -> Result<Rule, Problem> {
    let rule = Rule {
        id,
        name: input.name,
        kinds: input.kinds,
        zone_id: input.zone_id,
        vehicle_pattern: input.vehicle,
        action: input.action,
        cooldown_secs: i64::from(input.cooldown_secs),
        paused: input.paused,
        created_by: caller.audit_name(),
        created_at,
        updated_at: now,
    };
    check_rule(&rule)?;
    Ok(rule)
}

async fn load_rule(s: &Scheduler, id: &str) -> Result<Rule, Problem> {
    s.store.rule(id).await?.ok_or_else(|| not_found("rule", id))
}

/// `POST /api/v1/rules`
#[utoipa::path(
    post,
    path = "/api/v1/rules",
    tag = "rules",
    summary = "Create a rule",
    description = "When a fleet event of one of `kinds` (and `zone_id`, and a vehicle matching \
        `vehicle`) is stored, the rule performs its action once, with `{{ event.FIELD }}` \
        placeholders filled from the event; then that vehicle's events are suppressed for \
        `cooldown_secs`. Events stored before the rule existed are not acted on.",
    request_body(content = RuleInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = RuleView, content_type = "application/json"),
        (status = 400, description = "A field is invalid; `field` names it.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_rule(State(s): Svc, caller: Caller, body: Bytes) -> Result<Response, Problem> {
    let input: RuleInput = parse_body(&body)?;
    let now = now_ms();
    let rule = build_rule(random_id("rule")?, input, &caller, now, now)?;
    s.store.insert_rule(&rule).await?;
    Ok(json(StatusCode::CREATED, &rule_view(&s, rule).await?))
}

/// `GET /api/v1/rules`
#[utoipa::path(
    get,
    path = "/api/v1/rules",
    tag = "rules",
    summary = "List rules",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of rules, by id.", body = RulePage, content_type = "application/json"),
    )
)]
async fn list_rules(
    State(s): Svc,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::invalid("query", e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let rules = s
        .store
        .list_rules(q.cursor.as_deref().unwrap_or(""), limit)
        .await?;
    let next_cursor = (rules.len() == limit)
        .then(|| rules.last().map(|r| r.id.clone()))
        .flatten();
    let mut views = Vec::with_capacity(rules.len());
    for r in rules {
        views.push(rule_view(&s, r).await?);
    }
    Ok(json(
        StatusCode::OK,
        &RulePage {
            rules: views,
            next_cursor,
        },
    ))
}

/// `GET /api/v1/rules/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/rules/{id}",
    tag = "rules",
    summary = "A rule",
    params(("id" = String, Path, description = "The rule id.")),
    responses(
        (status = 200, description = "The rule.", body = RuleView, content_type = "application/json"),
        (status = 404, description = "No such rule.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_rule(State(s): Svc, Path(id): Path<String>) -> Result<Response, Problem> {
    let rule = load_rule(&s, &id).await?;
    Ok(json(StatusCode::OK, &rule_view(&s, rule).await?))
}

/// `PUT /api/v1/rules/{id}`
#[utoipa::path(
    put,
    path = "/api/v1/rules/{id}",
    tag = "rules",
    summary = "Replace a rule",
    params(("id" = String, Path, description = "The rule id.")),
    request_body(content = RuleInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The rule.", body = RuleView, content_type = "application/json"),
        (status = 400, description = "A field is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replace_rule(
    State(s): Svc,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let input: RuleInput = parse_body(&body)?;
    let old = load_rule(&s, &id).await?;
    let mut rule = build_rule(id.clone(), input, &caller, old.created_at, now_ms())?;
    rule.created_by = old.created_by;
    if !s.store.update_rule(&rule).await? {
        return Err(not_found("rule", &id));
    }
    Ok(json(StatusCode::OK, &rule_view(&s, rule).await?))
}

/// `PATCH /api/v1/rules/{id}`
#[utoipa::path(
    patch,
    path = "/api/v1/rules/{id}",
    tag = "rules",
    summary = "Change a rule",
    params(("id" = String, Path, description = "The rule id.")),
    request_body(content = RulePatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The rule.", body = RuleView, content_type = "application/json"),
        (status = 400, description = "A field is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn patch_rule(
    State(s): Svc,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let patch: RulePatch = parse_body(&body)?;
    let mut rule = load_rule(&s, &id).await?;
    if let Some(v) = patch.name {
        rule.name = v;
    }
    if let Some(v) = patch.kinds {
        rule.kinds = v;
    }
    if let Some(v) = patch.zone_id {
        rule.zone_id = Some(v);
    }
    if let Some(v) = patch.vehicle {
        rule.vehicle_pattern = Some(v);
    }
    if let Some(v) = patch.action {
        rule.action = v;
    }
    if let Some(v) = patch.cooldown_secs {
        rule.cooldown_secs = i64::from(v);
    }
    if let Some(v) = patch.paused {
        rule.paused = v;
    }
    rule.updated_at = now_ms();
    check_rule(&rule)?;
    if !s.store.update_rule(&rule).await? {
        return Err(not_found("rule", &id));
    }
    Ok(json(StatusCode::OK, &rule_view(&s, rule).await?))
}

/// `DELETE /api/v1/rules/{id}`
#[utoipa::path(
    delete,
    path = "/api/v1/rules/{id}",
    tag = "rules",
    summary = "Delete a rule and its history",
    params(("id" = String, Path, description = "The rule id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such rule.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_rule(State(s): Svc, Path(id): Path<String>) -> Result<Response, Problem> {
    if !s.store.delete_rule(&id).await? {
        return Err(not_found("rule", &id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/rules/{id}/pause`
#[utoipa::path(
    post,
    path = "/api/v1/rules/{id}/pause",
    tag = "rules",
    summary = "Pause a rule",
    description = "Events stored while it is paused are not acted on later.",
    params(("id" = String, Path, description = "The rule id.")),
    responses(
        (status = 200, description = "The rule.", body = RuleView, content_type = "application/json"),
        (status = 404, description = "No such rule.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn pause_rule(State(s): Svc, Path(id): Path<String>) -> Result<Response, Problem> {
    set_rule_paused(&s, &id, true).await
}

/// Pauses or resumes rule `id` and answers with it.
async fn set_rule_paused(s: &Scheduler, id: &str, paused: bool) -> Result<Response, Problem> {
    if !s.store.set_rule_paused(id, paused, now_ms()).await? {
        return Err(not_found("rule", id));
    }
    let rule = load_rule(s, id).await?;
    Ok(json(StatusCode::OK, &rule_view(s, rule).await?))
}

/// `POST /api/v1/rules/{id}/resume`
#[utoipa::path(
    post,
    path = "/api/v1/rules/{id}/resume",
    tag = "rules",
    summary = "Resume a rule",
    params(("id" = String, Path, description = "The rule id.")),
    responses(
        (status = 200, description = "The rule.", body = RuleView, content_type = "application/json"),
        (status = 404, description = "No such rule.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn resume_rule(State(s): Svc, Path(id): Path<String>) -> Result<Response, Problem> {
    set_rule_paused(&s, &id, false).await
}

/// `GET /api/v1/rules/{id}/history`
#[utoipa::path(
    get,
    path = "/api/v1/rules/{id}/history",
    tag = "rules",
    summary = "A rule's firings and suppressions",
    params(("id" = String, Path, description = "The rule id."), PageQuery),
    responses(
        (status = 200, description = "A page of history, newest first.", body = RuleHistoryPage, content_type = "application/json"),
        (status = 404, description = "No such rule.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn rule_history(
    State(s): Svc,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::invalid("query", e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let before = parse_cursor(q.cursor.as_deref())?;
    load_rule(&s, &id).await?;
    let rows = s.store.rule_history(&id, before, limit).await?;
    let mut history = Vec::with_capacity(rows.len());
    for r in &rows {
        history.push(RuleHistoryEntry {
            id: r.int(0)?,
            event_id: r.text(1)?.to_owned(),
            event_seq: r.int(2)?,
            event_kind: r.text(3)?.to_owned(),
            vehicle_id: r.text(4)?.to_owned(),
            at: format_ms(r.int(5)?),
            outcome: r.text(6)?.to_owned(),
            answer: r
                .opt_text(7)?
                .map(|a| serde_json::from_str(a).unwrap_or(Json::String(a.to_owned()))),
            error: r.opt_text(8)?.map(str::to_owned),
        });
    }
    let next_cursor = (history.len() == limit)
        .then(|| history.last().map(|h| h.id.to_string()))
        .flatten();
    Ok(json(
        StatusCode::OK,
        &RuleHistoryPage {
            history,
            next_cursor,
        },
    ))
}
