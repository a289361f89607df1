//! The dashboard `kiln serve` serves at `/`: server-rendered pages
//! (askama templates compiled into the binary, its CSS and a few lines of
//! script built in too, nothing fetched from elsewhere) over the same
//! calls the JSON API makes. It shows and acts within the logged-in
//! caller's reach: a tenant sees its own jobs and plugins only, and
//! another tenant's job is "not found", as in the API.
//!
//! Pages: the overview (queues by state, runs and queue delay over the
//! last hour), jobs (by state, kind, queue, or an id), a job (payload,
//! result, every attempt, its logs), dead letters (retry or discard, one
//! or in bulk), queues (pause, resume), plugins (versions, roll back),
//! schedules (last and next tick) and loops (checkpoint, holder).
//!
//! Login takes an API key and keeps a session id in an `HttpOnly`,
//! `SameSite=Strict` cookie ([`session`]); every form carries the
//! session's CSRF token, and the browser guard's origin check holds for
//! forms as for the API. A host with no keys is open, as its API is: the
//! login page opens an operator's session without asking.

pub mod chart;
pub mod session;

use super::{AppError, AppState, BulkAction, DeadJobsQuery, JobView, AttemptView, LogLineView, MAX_PAGE, MAX_PAGE_BYTES};
use crate::queue::{JobState, ListFilter, Millis, to_rfc3339};
use crate::tenant::Caller;
use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use session::Session;

/// Paths the dashboard serves: the API's bearer check leaves them to the session.
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path == "/login" || path == "/logout" || path.starts_with("/ui/")
}

/// Jobs a page of the jobs list shows.
pub const JOBS_PER_PAGE: usize = 50;
/// Log bytes a job's page shows (the rest through `GET /jobs/{id}/logs`).
pub const PAGE_LOG_BYTES: u64 = 1 << 20;
/// Largest form a dashboard action takes (a bulk form lists its ids).
pub const MAX_FORM_BYTES: usize = 256 << 10;
/// Longest API key the login form takes.
const MAX_KEY_BYTES: usize = 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/bulk", post(bulk))
        .route("/ui/jobs/{id}", get(job))
        .route("/ui/jobs/{id}/{action}", post(job_action))
        .route("/ui/queues", get(queues))
        .route("/ui/queues/{name}/{action}", post(queue_action))
        .route("/ui/plugins", get(plugins))
        .route("/ui/plugins/{name}/rollback", post(rollback))
        .route("/ui/schedules", get(schedules))
        .route("/ui/loops", get(loops))
        .route("/ui/assets/kiln.css", get(|| asset("text/css; charset=utf-8", include_str!("assets/kiln.css"))))
        .route("/ui/assets/kiln.js", get(|| asset("text/javascript; charset=utf-8", include_str!("assets/kiln.js"))))
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=3600")], body).into_response()
}

/// A page's answer: HTML, with headers that keep it out of frames and caches.
fn page(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = (status, Html(html)).into_response();
            let h = response.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert("x-frame-options", HeaderValue::from_static("DENY"));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"),
            );
            h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
            response
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("the page did not render: {e}")).into_response(),
    }
}

/// What every page shows around its content.
#[derive(Debug)]
pub struct Chrome {
    /// `operator` or the tenant's name.
    pub who: String,
    pub is_operator: bool,
    pub csrf: String,
    /// The nav entry of this page.
    pub active: &'static str,
    /// What the last action did (`?done=`), in words the dashboard chose.
    pub notice: Option<String>,
}

/// The logged-in browser a page is for. Without a session: to the login page.
#[derive(Debug)]
pub struct Viewer {
    session: Session,
}

impl Viewer {
    fn caller(&self) -> &Caller {
        &self.session.caller
    }

    fn chrome(&self, active: &'static str, done: Option<&str>) -> Chrome {
        Chrome {
            who: self.caller().tenant().map_or_else(|| "operator".to_string(), str::to_string),
            is_operator: *self.caller() == Caller::Admin,
            csrf: self.session.csrf.clone(),
            active,
            notice: done.and_then(notice),
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match state.sessions.of(&parts.headers) {
            Some(session) => Ok(Viewer { session }),
            None => Err(Redirect::to("/login").into_response()),
        }
    }
}

/// A form posted by a logged-in browser, its CSRF token checked.
#[derive(Debug)]
pub struct Action {
    viewer: Viewer,
    fields: Vec<(String, String)>,
}

impl Action {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

async fn form_body(request: Request) -> Result<Bytes, Response> {
    axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES)
        .await
        .map_err(|_| error_page(None, AppError::PayloadTooLarge(format!("a dashboard form is at most {MAX_FORM_BYTES} bytes"))))
}

impl FromRequest<AppState> for Action {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let body = form_body(Request::from_parts(parts, body)).await?;
        let fields = form_fields(&body);
        let sent = fields.iter().find(|(k, _)| k == "csrf").map_or("", |(_, v)| v.as_str());
        if !viewer.session.csrf_matches(sent) {
            return Err(error_page(Some(&viewer), AppError::Forbidden("the form's CSRF token is missing or not this session's: reload the page and try again".into())));
        }
        Ok(Action { viewer, fields })
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Option<Chrome>,
    status: u16,
    message: String,
}

fn error_page(viewer: Option<&Viewer>, e: AppError) -> Response {
    let status = e.status();
    page(status, &ErrorPage { chrome: viewer.map(|v| v.chrome("", None)), status: status.as_u16(), message: e.to_string() })
}

/// The words for `?done=`: only these are shown, so a link cannot put its own text on the page.
fn notice(done: &str) -> Option<String> {
    let (what, n) = done.split_once(':').unwrap_or((done, ""));
    let n: Option<u64> = n.parse().ok();
    Some(match (what, n) {
        ("retried", None) => "Retried: the job is due now.".into(),
        ("discarded", None) => "Discarded: the job is deleted.".into(),
        ("cancelled", None) => "Cancel asked: a waiting job is cancelled, a running one is told to stop.".into(),
        ("paused", None) => "Queue paused.".into(),
        ("resumed", None) => "Queue resumed.".into(),
        ("rolled-back", None) => "Rolled back: the previous version serves.".into(),
        ("bulk-retried", Some(n)) => format!("Retried {n} dead jobs."),
        ("bulk-discarded", Some(n)) => format!("Discarded {n} dead jobs."),
        ("bulk-skipped", Some(n)) => format!("{n} jobs were left as they were (they changed meanwhile, or their unique key is taken)."),
        _ => return None,
    })
}

fn ago(now: Millis, at: Millis) -> String {
    let secs = (now - at).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

// ---- login ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.sessions.of(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    if state.access.is_open() {
        return signed_in(&state, Caller::Admin, &headers);
    }
    page(StatusCode::OK, &LoginPage { error: None })
}

fn signed_in(state: &AppState, caller: Caller, request: &HeaderMap) -> Response {
    let (id, _) = state.sessions.open(caller);
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session::set_cookie(&id, request));
    response
}

async fn login(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers().clone();
    let body = match form_body(request).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let fields = form_fields(&body);
    let key = fields.iter().find(|(k, _)| k == "key").map_or("", |(_, v)| v.trim());
    let refuse = |why: &str| {
        state.access.note_refusal(&http::Method::POST, "/login", None, why);
        page(StatusCode::UNAUTHORIZED, &LoginPage { error: Some(format!("Not signed in: {why}.")) })
    };
    if key.is_empty() {
        return refuse("no key was given");
    }
    if key.len() > MAX_KEY_BYTES {
        return refuse(&format!("the key is over {MAX_KEY_BYTES} bytes, so it is none this host knows"));
    }
    match state.access.identify(key) {
        Some(caller) => {
            tracing::info!(tenant = caller.tenant().unwrap_or("-"), "dashboard login");
            signed_in(&state, caller, &headers)
        }
        None => refuse("the key is not one this host knows"),
    }
}

async fn logout(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers().clone();
    let action = match Action::from_request(request, &state).await {
        Ok(action) => action,
        Err(refused) => return refused,
    };
    drop(action);
    state.sessions.close(&headers);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session::clear_cookie());
    response
}

// ---- overview ----

struct QueueRow {
    name: String,
    paused: bool,
    counts: Vec<(&'static str, u64)>,
    runs_last_hour: u64,
    failures_last_hour: u64,
    oldest_waiting: Option<String>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    states: Vec<&'static str>,
    queues: Vec<QueueRow>,
    throughput_svg: String,
    delay_svg: String,
    runs_last_hour: u64,
    failures_last_hour: u64,
    delay_avg_ms: String,
}

#[derive(Debug, serde::Deserialize)]
struct Done {
    done: Option<String>,
}

async fn overview(State(state): State<AppState>, viewer: Viewer, Query(done): Query<Done>) -> Response {
    match overview_page(&state, &viewer, done.done.as_deref()).await {
        Ok(page) => page,
        Err(e) => error_page(Some(&viewer), e),
    }
}

async fn overview_page(state: &AppState, viewer: &Viewer, done: Option<&str>) -> Result<Response, AppError> {
    let caller = viewer.caller();
    let now = state.dispatcher.clock().now();
    let since = now - now.rem_euclid(crate::worker::run_minutes::MINUTE_MS) - (chart::MINUTES as Millis - 1) * crate::worker::run_minutes::MINUTE_MS;
    let rows = state.dispatcher.store().minutes(since).await?;
    let mine = |r: &crate::queue::MinuteRuns| caller.owns(&r.kind);
    let all = chart::minutes(&rows, now, mine);
    let views = super::queue_views(state, caller).await?;
    let queues = views
        .into_iter()
        .map(|q| {
            let of_queue = chart::minutes(&rows, now, |r| mine(r) && r.queue == q.name);
            QueueRow {
                counts: q.jobs.iter().map(|(s, n)| (s.as_str(), *n)).collect(),
                runs_last_hour: of_queue.iter().map(|m| m.runs).sum(),
                failures_last_hour: of_queue.iter().map(|m| m.failures).sum(),
                oldest_waiting: q.oldest_waiting_ms.map(|ms| ago(now, now - ms).trim_end_matches(" ago").to_string()),
                name: q.name,
                paused: q.paused,
            }
        })
        .collect();
    let runs: u64 = all.iter().map(|m| m.runs).sum();
    let delay_sum: i64 = all.iter().map(|m| m.delay_ms_sum).sum();
    Ok(page(
        StatusCode::OK,
        &OverviewPage {
            chrome: viewer.chrome("overview", done),
            states: JobState::ALL.iter().map(|s| s.as_str()).collect(),
            queues,
            throughput_svg: chart::throughput(&all),
            delay_svg: chart::queue_delay(&all),
            runs_last_hour: runs,
            failures_last_hour: all.iter().map(|m| m.failures).sum(),
            delay_avg_ms: if runs == 0 { "–".into() } else { format!("{:.1} ms", delay_sum as f64 / runs as f64) },
        },
    ))
}

// ---- jobs ----

#[derive(Debug, Default, serde::Deserialize)]
struct JobsQuery {
    state: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    id: Option<String>,
    before: Option<i64>,
    done: Option<String>,
}

struct JobRow {
    id: i64,
    kind: String,
    queue: String,
    state: String,
    attempt: u32,
    max_attempts: u32,
    created: String,
    last_error: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    states: Vec<&'static str>,
    kinds: Vec<String>,
    queues: Vec<String>,
    state: String,
    kind: String,
    queue: String,
    jobs: Vec<JobRow>,
    older: Option<String>,
    dead: bool,
}

fn blank_is_none(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

async fn jobs(State(state): State<AppState>, viewer: Viewer, query: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
        if let Some(id) = blank_is_none(q.id.clone()) {
            super::job_id(&id)?;
            return Ok(Redirect::to(&format!("/ui/jobs/{id}")).into_response());
        }
        jobs_page(&state, &viewer, q).await
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&viewer), e))
}

async fn jobs_page(state: &AppState, viewer: &Viewer, q: JobsQuery) -> Result<Response, AppError> {
    let caller = viewer.caller();
    let job_state = blank_is_none(q.state.clone()).map(|s| s.parse::<JobState>()).transpose().map_err(AppError::BadRequest)?;
    let kind = blank_is_none(q.kind.clone());
    let queue = blank_is_none(q.queue.clone());
    let filter = ListFilter {
        state: job_state,
        kind: kind.as_deref().map(|k| caller.kind(k)),
        queue: queue.clone(),
        tenant: caller.tenant().map(str::to_string),
        after_id: q.before,
        newest_first: true,
        limit: JOBS_PER_PAGE,
        max_bytes: MAX_PAGE_BYTES,
    };
    let list = state.dispatcher.store().list(filter).await?;
    let link = |before: i64| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("state", job_state.map(|s| s.as_str())), ("kind", kind.as_deref()), ("queue", queue.as_deref())] {
            if let Some(v) = v {
                query.append_pair(k, v);
            }
        }
        query.append_pair("before", &before.to_string());
        format!("/ui/jobs?{}", query.finish())
    };
    let older = if list.more { list.jobs.last().map(|j| link(j.id)) } else { None };
    let jobs = list
        .jobs
        .iter()
        .map(|j| JobRow {
            id: j.id,
            kind: caller.name_of(&j.kind).to_string(),
            queue: j.queue.clone(),
            state: j.state.as_str().to_string(),
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            created: to_rfc3339(j.created_at),
            last_error: j.errors.last().map(|e| shorten(&e.message, 140)).unwrap_or_default(),
        })
        .collect();
    let mut kinds: Vec<String> = state.registry.snapshot().keys().filter(|k| caller.owns(k)).map(|k| caller.name_of(k).to_string()).collect();
    kinds.sort();
    Ok(page(
        StatusCode::OK,
        &JobsPage {
            chrome: viewer.chrome(if job_state == Some(JobState::Dead) { "dead" } else { "jobs" }, q.done.as_deref()),
            states: JobState::ALL.iter().map(|s| s.as_str()).collect(),
            kinds,
            queues: state.dispatcher.config().queues.iter().map(|q| q.name.clone()).collect(),
            state: job_state.map(|s| s.as_str().to_string()).unwrap_or_default(),
            kind: kind.unwrap_or_default(),
            queue: queue.unwrap_or_default(),
            jobs,
            older,
            dead: job_state == Some(JobState::Dead),
        },
    ))
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

struct LogRow {
    attempt: u32,
    at: String,
    level: String,
    source: String,
    message: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    job: JobView,
    payload: String,
    result: String,
    attempts: Vec<AttemptView>,
    logs: Vec<LogRow>,
    logs_more: bool,
    can_retry: bool,
    can_cancel: bool,
}

async fn job(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>, Query(done): Query<Done>, uri: http::Uri) -> Response {
    let result = async {
        let job = super::owned_job(&state, viewer.caller(), &id, &http::Method::GET, uri.path()).await?;
        let records = state.dispatcher.store().attempts(job.id).await?;
        let logs = state.dispatcher.store().attempt_logs(job.id, None, PAGE_LOG_BYTES).await?;
        let view = JobView::of(&job, viewer.caller());
        let pretty = |v: &serde_json::Value| if v.is_null() { String::new() } else { serde_json::to_string_pretty(v).unwrap_or_default() };
        Ok::<_, AppError>(page(
            StatusCode::OK,
            &JobPage {
                chrome: viewer.chrome("jobs", done.done.as_deref()),
                payload: pretty(&view.payload),
                result: pretty(&view.result),
                attempts: AttemptView::all(&job, &records),
                logs: logs
                    .lines
                    .into_iter()
                    .map(|(n, l)| {
                        let l = LogLineView::of(n, l);
                        LogRow { attempt: l.attempt, at: l.at, level: l.level, source: l.source, message: l.message }
                    })
                    .collect(),
                logs_more: logs.more,
                can_retry: matches!(job.state, JobState::Dead | JobState::Cancelled),
                can_cancel: matches!(job.state, JobState::Available | JobState::Scheduled | JobState::Retryable | JobState::Running),
                job: view,
            },
        ))
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&viewer), e))
}

async fn job_action(State(state): State<AppState>, Path((id, action)): Path<(String, String)>, uri: http::Uri, form: Action) -> Response {
    let viewer = &form.viewer;
    let result = async {
        let job = super::owned_job(&state, viewer.caller(), &id, &http::Method::POST, uri.path()).await?;
        let to = match action.as_str() {
            "retry" => {
                super::retry_one(&state, job.id).await?;
                format!("/ui/jobs/{}?done=retried", job.id)
            }
            "discard" => {
                super::delete_one(&state, job.id).await?;
                "/ui/jobs?state=dead&done=discarded".to_string()
            }
            "cancel" => {
                super::cancel_one(&state, job.id).await?;
                format!("/ui/jobs/{}?done=cancelled", job.id)
            }
            other => return Err(AppError::NotFound(format!("a job has no action {other:?} (retry, discard, cancel)"))),
        };
        Ok::<_, AppError>(Redirect::to(&to).into_response())
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(viewer), e))
}

/// The dead-letter form: `do` retries or discards the checked `id`s, or
/// every dead job of the filter's kind and queue (up to the API's bulk
/// limit a click).
async fn bulk(State(state): State<AppState>, form: Action) -> Response {
    let result = async {
        let caller = form.viewer.caller();
        let (action, scope) = match form.field("do") {
            Some("retry-selected") => (BulkAction::Retry, "selected"),
            Some("discard-selected") => (BulkAction::Delete, "selected"),
            Some("retry-all") => (BulkAction::Retry, "all"),
            Some("discard-all") => (BulkAction::Delete, "all"),
            other => return Err(AppError::BadRequest(format!("`do` must be retry-selected, discard-selected, retry-all or discard-all, not {other:?}"))),
        };
        let (done, skipped) = match scope {
            "all" => {
                let q = DeadJobsQuery { state: "dead".into(), kind: form.field("kind").map(str::to_string), queue: form.field("queue").map(str::to_string) };
                let bulk = super::on_dead_jobs_of(&state, caller, &q, action).await?;
                (bulk.done, bulk.skipped)
            }
            _ => {
                let ids: Vec<&str> = form.fields.iter().filter(|(k, _)| k == "id").map(|(_, v)| v.as_str()).collect();
                if ids.is_empty() {
                    return Err(AppError::BadRequest("no job was checked".into()));
                }
                if ids.len() > MAX_PAGE {
                    return Err(AppError::BadRequest(format!("at most {MAX_PAGE} jobs a click")));
                }
                let (mut done, mut skipped) = (0, 0);
                for id in ids {
                    let job = super::owned_job(&state, caller, id, &http::Method::POST, "/ui/jobs/bulk").await?;
                    if job.state != JobState::Dead {
                        skipped += 1;
                        continue;
                    }
                    let acted = match action {
                        BulkAction::Retry => super::retry_one(&state, job.id).await,
                        BulkAction::Delete => super::delete_one(&state, job.id).await,
                    };
                    match acted {
                        Ok(_) => done += 1,
                        Err(AppError::Conflict(_) | AppError::NotFound(_)) => skipped += 1,
                        Err(e) => return Err(e),
                    }
                }
                (done, skipped)
            }
        };
        let verb = match action {
            BulkAction::Retry => "bulk-retried",
            BulkAction::Delete => "bulk-discarded",
        };
        let done = if skipped > 0 && done == 0 { format!("bulk-skipped:{skipped}") } else { format!("{verb}:{done}") };
        Ok(Redirect::to(&format!("/ui/jobs?state=dead&done={done}")).into_response())
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&form.viewer), e))
}

// ---- queues ----

#[derive(Template)]
#[template(path = "queues.html")]
struct QueuesPage {
    chrome: Chrome,
    states: Vec<&'static str>,
    queues: Vec<QueueRow>,
    concurrency: Vec<(String, usize)>,
}

async fn queues(State(state): State<AppState>, viewer: Viewer, Query(done): Query<Done>) -> Response {
    let result = async {
        let now = state.dispatcher.clock().now();
        let views = super::queue_views(&state, viewer.caller()).await?;
        let concurrency = views.iter().map(|q| (q.name.clone(), q.concurrency)).collect();
        let queues = views
            .into_iter()
            .map(|q| QueueRow {
                counts: q.jobs.iter().map(|(s, n)| (s.as_str(), *n)).collect(),
                runs_last_hour: 0,
                failures_last_hour: 0,
                oldest_waiting: q.oldest_waiting_ms.map(|ms| ago(now, now - ms).trim_end_matches(" ago").to_string()),
                name: q.name,
                paused: q.paused,
            })
            .collect();
        Ok::<_, AppError>(page(
            StatusCode::OK,
            &QueuesPage { chrome: viewer.chrome("queues", done.done.as_deref()), states: JobState::ALL.iter().map(|s| s.as_str()).collect(), queues, concurrency },
        ))
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&viewer), e))
}

async fn queue_action(State(state): State<AppState>, Path((name, action)): Path<(String, String)>, form: Action) -> Response {
    let result = async {
        let paused = match action.as_str() {
            "pause" => true,
            "resume" => false,
            other => return Err(AppError::NotFound(format!("a queue has no action {other:?} (pause, resume)"))),
        };
        super::set_paused(&state, form.viewer.caller(), &name, paused).await?;
        Ok(Redirect::to(if paused { "/ui/queues?done=paused" } else { "/ui/queues?done=resumed" }).into_response())
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&form.viewer), e))
}

// ---- plugins, schedules, loops ----

struct VersionRow {
    version: String,
    version_id: String,
    activated: String,
    source: String,
    signed_by: String,
    active: bool,
}

struct PluginRow {
    name: String,
    version: String,
    trigger: String,
    description: String,
    versions: Vec<VersionRow>,
}

#[derive(Template)]
#[template(path = "plugins.html")]
struct PluginsPage {
    chrome: Chrome,
    plugins: Vec<PluginRow>,
}

async fn plugins(State(state): State<AppState>, viewer: Viewer, Query(done): Query<Done>) -> Response {
    let caller = viewer.caller().clone();
    let registry = state.registry.clone();
    let rows = tokio::task::spawn_blocking(move || {
        registry
            .snapshot()
            .values()
            .filter(|p| caller.owns(&p.kind))
            .map(|p| PluginRow {
                name: caller.name_of(&p.kind).to_string(),
                version: p.manifest.version.clone(),
                trigger: p.manifest.trigger.describe(),
                description: p.manifest.description.clone(),
                versions: registry
                    .versions(&p.kind)
                    .into_iter()
                    .map(|v| VersionRow {
                        version: v.version,
                        version_id: v.version_id,
                        activated: to_rfc3339(v.activated_at),
                        source: crate::plugin::trigger::as_written(&v.source),
                        signed_by: v.signed_by.unwrap_or_default(),
                        active: v.active,
                    })
                    .collect(),
            })
            .collect::<Vec<_>>()
    })
    .await;
    match rows {
        Ok(plugins) => page(StatusCode::OK, &PluginsPage { chrome: viewer.chrome("plugins", done.done.as_deref()), plugins }),
        Err(e) => error_page(Some(&viewer), AppError::Internal(e.to_string())),
    }
}

async fn rollback(State(state): State<AppState>, Path(name): Path<String>, form: Action) -> Response {
    match super::plugins::rollback_one(&state, form.viewer.caller(), &name).await {
        Ok(_) => Redirect::to("/ui/plugins?done=rolled-back").into_response(),
        Err(e) => error_page(Some(&form.viewer), e),
    }
}

struct ScheduleRow {
    name: String,
    when: String,
    last_tick: String,
    next_tick: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    chrome: Chrome,
    schedules: Vec<ScheduleRow>,
}

async fn schedules(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let caller = viewer.caller();
        let now = state.dispatcher.clock().now();
        let snapshot = state.registry.snapshot();
        let mut schedules = Vec::new();
        for p in snapshot.values().filter(|p| caller.owns(&p.kind)) {
            let crate::plugin::Trigger::Schedule(s) = &p.manifest.trigger else { continue };
            let st = state.dispatcher.store().schedule_state(&p.kind).await?;
            schedules.push(ScheduleRow {
                name: caller.name_of(&p.kind).to_string(),
                when: s.when.to_string(),
                last_tick: st.last_tick.map(|t| format!("{} ({})", to_rfc3339(t), ago(now, t))).unwrap_or_else(|| "never".into()),
                next_tick: s.when.next_after(now).map(to_rfc3339).unwrap_or_else(|| "none".into()),
                active: st.active,
            });
        }
        Ok::<_, AppError>(page(StatusCode::OK, &SchedulesPage { chrome: viewer.chrome("schedules", None), schedules }))
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&viewer), e))
}

struct LoopRow {
    name: String,
    passes: u64,
    checkpoint: String,
    held_by: String,
    lease_expires: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "loops.html")]
struct LoopsPage {
    chrome: Chrome,
    loops: Vec<LoopRow>,
}

async fn loops(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let caller = viewer.caller();
        let now = state.dispatcher.clock().now();
        let loops = state
            .dispatcher
            .store()
            .loops()
            .await?
            .into_iter()
            .filter(|l| caller.owns(&l.name))
            .map(|l| LoopRow {
                name: caller.name_of(&l.name).to_string(),
                passes: l.passes,
                checkpoint: l.checkpoint.as_deref().map(|c| shorten(&super::bytes_value(c).to_string(), 400)).unwrap_or_default(),
                held_by: l.owner.unwrap_or_else(|| "nobody".into()),
                lease_expires: l.lease_expires_at.map(to_rfc3339).unwrap_or_default(),
                updated: ago(now, l.updated_at),
            })
            .collect();
        Ok::<_, AppError>(page(StatusCode::OK, &LoopsPage { chrome: viewer.chrome("loops", None), loops }))
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&viewer), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_dashboards_own_words_are_shown_as_notices() {
        assert_eq!(notice("bulk-retried:3").as_deref(), Some("Retried 3 dead jobs."));
        assert!(notice("retried").is_some());
        for foreign in ["<script>", "bulk-retried:x", "retried:1", "Hello, you won"] {
            assert_eq!(notice(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn dashboard_paths_are_told_from_the_apis() {
        for path in ["/", "/login", "/logout", "/ui/jobs", "/ui/assets/kiln.css"] {
            assert!(is_dashboard_path(path), "{path}");
        }
        for path in ["/jobs", "/ui", "/uix/jobs", "/metrics", "/openapi.json"] {
            assert!(!is_dashboard_path(path), "{path}");
        }
    }

    #[test]
    fn long_text_is_cut_on_a_character() {
        assert_eq!(shorten("héllo wörld", 5), "héllo…");
        assert_eq!(shorten("short", 10), "short");
    }
}
