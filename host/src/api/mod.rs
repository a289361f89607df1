//! The HTTP API: jobs, queues, plugins and their kv stores, health and metrics. Calls into the
//! worker and the store; holds no logic of its own.
//!
//! Every handler acts as the [`Caller`] the request's key belongs to: a
//! tenant names its own plugins (`echo` is its `acme/echo`), sees only its
//! own jobs and plugins, and gets 404 for anything else, so ids leak
//! nothing. The operator sees everything and writes a tenant's kinds as
//! `acme/echo`.

pub mod auth;
pub mod browser_guard;
pub mod dashboard;
mod error;
mod kv;
mod plugins;
pub mod server;
mod tenants;
mod views;

pub use error::AppError;
pub use server::HttpLimits;
pub use plugins::DeployRequest;
pub use views::{AttemptView, EnqueuedAnswer, EnqueuedView, ErrorBody, JobRequests, JobDetailView, JobPage, JobRequest, JobView, ListQuery, LogLineView, LogPage, LogQuery, bytes_value};

use crate::queue::{JobState, ListFilter, from_rfc3339};
use crate::worker::{Dispatcher, EnqueueRequest};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use crate::plugin::Registry;
use crate::tenant::Caller;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

/// Largest request body: a batch of jobs; each payload is also held to
/// the dispatcher's per-job limit.
pub const MAX_BODY_BYTES: usize = 32 << 20;
/// Largest page of `GET /jobs`.
pub const MAX_PAGE: usize = 1000;
/// Stored bytes (payloads, results, errors) a page of `GET /jobs` holds
/// before it ends early, whatever its `limit`.
pub const MAX_PAGE_BYTES: u64 = crate::queue::DEFAULT_PAGE_BYTES;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub dispatcher: Dispatcher,
    pub registry: Arc<Registry>,
    /// `Some(reason)` while the host is not ready (start-up plugins still
    /// running, shutting down).
    pub not_ready: watch::Receiver<Option<String>>,
    /// Connections, timeouts and the host names the API answers to.
    pub http: HttpLimits,
    /// Who may call it.
    pub access: auth::Access,
    /// The tenants kiln.toml names, for `GET /tenants`.
    pub tenants: Arc<std::collections::BTreeMap<String, crate::tenant::TenantSettings>>,
    /// The dashboard's logged-in browsers.
    pub sessions: dashboard::session::Sessions,
}

/// What the document says besides its paths: who it is for, how to
/// authenticate, what its tags group. The paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Kiln", description = "Kiln's HTTP API: jobs, queues, plugins and their kv stores, tenants, the host's health. \
        With API keys configured every call but /healthz, /readyz and /openapi.json needs `Authorization: Bearer KEY`."),
    modifiers(&BearerKeys),
    tags(
        (name = "jobs", description = "Enqueue, list, read, retry, cancel and delete jobs; their attempts and logs"),
        (name = "queues", description = "Queues by state; pause and resume"),
        (name = "plugins", description = "Deploy, roll back and remove plugins"),
        (name = "kv", description = "A plugin's key-value stores"),
        (name = "tenants", description = "Tenants' limits and use"),
        (name = "host", description = "Health, readiness and metrics"),
    )
)]
struct ApiDoc;

/// The bearer API key, required by every operation that does not say otherwise.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        openapi.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

/// Every route with its handler, and the OpenAPI document built from the
/// same annotations: a route is in the document because it is served.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(enqueue, list_jobs, delete_many))
        .routes(routes!(get_job, delete_job))
        .routes(routes!(job_logs))
        .routes(routes!(retry_many))
        .routes(routes!(retry_job))
        .routes(routes!(cancel_job))
        .routes(routes!(list_queues))
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(tenants::list))
        .routes(routes!(plugins::list))
        .routes(routes!(plugins::deploy, plugins::remove))
        .routes(routes!(plugins::rollback))
        .routes(routes!(plugins::delete_version))
        .routes(routes!(kv::list))
        .routes(routes!(kv::get, kv::set, kv::delete))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .split_for_parts()
}

/// The OpenAPI document of the whole API, as `GET /openapi.json` serves it.
pub fn openapi_json() -> String {
    routes().1.to_pretty_json().expect("the OpenAPI document serialises")
}

/// The API's routes, without a socket (tests can call it directly).
pub fn app(state: AppState) -> Router {
    let (router, document) = routes();
    let document: Arc<str> = document.to_pretty_json().expect("the OpenAPI document serialises").into();
    router
        .merge(dashboard::routes())
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], document.to_string()) }
            }),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.access.clone(), auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(
            browser_guard::AllowedHosts::new(&state.http.allowed_hosts),
            browser_guard::guard,
        ))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, under the
/// state's connection limits.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let limits = state.http.clone();
    server::serve(listener, app(state), &limits, shutdown).await
}

async fn no_route(uri: http::Uri) -> AppError {
    AppError::NotFound(format!("no route {}", uri.path()))
}

async fn wrong_method(method: http::Method, uri: http::Uri) -> AppError {
    AppError::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}

/// A path's parameters, or a JSON error saying why they could not be read
/// (axum's own rejection is plain text, which no client of this API expects).
fn path_of<T>(path: Result<Path<T>, axum::extract::rejection::PathRejection>) -> Result<T, AppError> {
    path.map(|Path(p)| p).map_err(|e| AppError::BadRequest(e.body_text()))
}

/// A request body, or the error that says why it could not be read.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, AppError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(format!("request body is over the limit of {MAX_BODY_BYTES} bytes")),
        _ => match server::body_timed_out(&e) {
            Some(timed_out) => AppError::RequestTimeout(timed_out),
            None => AppError::BadRequest(format!("cannot read the request body: {}", e.body_text())),
        },
    })
}

fn parse_request(value: serde_json::Value, index: usize, caller: &Caller, traceparent: Option<&str>) -> Result<EnqueueRequest, AppError> {
    let request: JobRequest = serde_json::from_value(value)
        .map_err(|e| AppError::BadRequest(format!("job {index}: {e}")))?;
    let payload = match request.payload {
        None => Vec::new(),
        Some(value) => serde_json::to_vec(&value).expect("a JSON value serialises"),
    };
    let scheduled_at = request
        .scheduled_at
        .as_deref()
        .map(from_rfc3339)
        .transpose()
        .map_err(|e| AppError::BadRequest(format!("job {index}: scheduled_at: {e}")))?;
    Ok(EnqueueRequest {
        kind: caller.kind(&request.kind),
        payload,
        queue: request.queue,
        priority: request.priority,
        unique_key: request.unique_key,
        scheduled_at,
        max_attempts: request.max_attempts,
        concurrency_key: request.concurrency_key,
        traceparent: traceparent.map(str::to_string),
    })
}

/// `POST /jobs`: one job object, or an array of them.
#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body = JobRequests,
    params(("traceparent" = Option<String>, Header, description = "W3C trace context: the jobs' attempts are traced as children of this span (an invalid one is ignored)")),
    responses((status = 201, description = "Enqueued (each says whether it was created)", body = EnqueuedAnswer),
              (status = 200, description = "None created: each already held its unique_key", body = EnqueuedAnswer), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 413, description = "Over a size limit", body = ErrorBody), (status = 429, description = "Over a quota, named", body = ErrorBody)))]
async fn enqueue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::response::Response, AppError> {
    let body = body_bytes(body)?;
    // W3C trace context: one that is not valid is ignored, never refused.
    let traceparent = headers
        .get(crate::telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.len() <= crate::telemetry::MAX_TRACEPARENT_BYTES);
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| AppError::BadRequest(format!("request body is not JSON: {e}")))?;
    let (requests, many) = match value {
        serde_json::Value::Array(items) => {
            (items.into_iter().enumerate().map(|(i, v)| parse_request(v, i, &caller, traceparent)).collect::<Result<Vec<_>, _>>()?, true)
        }
        object @ serde_json::Value::Object(_) => (vec![parse_request(object, 0, &caller, traceparent)?], false),
        _ => return Err(AppError::BadRequest("request body must be a job object or an array of job objects".into())),
    };
    if requests.is_empty() {
        return Err(AppError::BadRequest("request body is an empty array".into()));
    }
    let inserted = state.dispatcher.enqueue(requests).await.map_err(|e| scoped_enqueue_error(e, &caller))?;
    let created = inserted.iter().any(|i| i.created);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut views: Vec<EnqueuedView> = inserted.iter().map(|i| EnqueuedView { job: JobView::of(&i.job, &caller), created: i.created }).collect();
    let answer = if many { EnqueuedAnswer::Many(views) } else { EnqueuedAnswer::One(views.remove(0)) };
    Ok((status, Json(answer)).into_response())
}

/// `GET /jobs?state=S&kind=K&queue=Q&after=ID&limit=N` (oldest first), or
/// `...&order=newest&before=ID` (newest first).
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, description = "A page of jobs", body = JobPage), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
async fn list_jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobPage>, AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let job_state = q.state.as_deref().map(str::parse::<JobState>).transpose().map_err(AppError::BadRequest)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(AppError::BadRequest(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let newest_first = match q.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => return Err(AppError::BadRequest(format!("order must be `oldest` or `newest`, not {other:?}"))),
    };
    let cursor = match (newest_first, q.after, q.before) {
        (false, after, None) => after,
        (true, None, before) => before,
        (false, _, Some(_)) => return Err(AppError::BadRequest("`before` pages with order=newest; oldest first pages with `after`".into())),
        (true, Some(_), _) => return Err(AppError::BadRequest("`after` pages oldest first; with order=newest page with `before`".into())),
    };
    // However large the jobs, a page holds about MAX_PAGE_BYTES of them
    // (plus one): the rest is on the next page.
    let filter = ListFilter {
        state: job_state,
        kind: q.kind.map(|k| caller.kind(&k)),
        queue: q.queue,
        tenant: caller.tenant().map(str::to_string),
        after_id: cursor,
        newest_first,
        limit,
        max_bytes: MAX_PAGE_BYTES,
    };
    let page = state.dispatcher.store().list(filter).await?;
    let next = if page.more { page.jobs.last().map(|j| j.id) } else { None };
    let (next_after, next_before) = if newest_first { (None, next) } else { (next, None) };
    Ok(Json(JobPage { jobs: page.jobs.iter().map(|j| JobView::of(j, &caller)).collect(), next_after, next_before }))
}

/// An enqueue error in the caller's words: a tenant is told of its own
/// kinds only, by its own names.
fn scoped_enqueue_error(e: crate::worker::EnqueueError, caller: &Caller) -> AppError {
    use crate::worker::EnqueueError;
    match (e, caller) {
        (EnqueueError::UnknownKind { kind, known }, Caller::Tenant(_)) => {
            let known: Vec<&str> = known.split(", ").filter(|k| caller.owns(k)).map(|k| caller.name_of(k)).collect();
            EnqueueError::UnknownKind { kind: caller.name_of(&kind).to_string(), known: known.join(", ") }.into()
        }
        (EnqueueError::NotEnqueued { kind, trigger }, Caller::Tenant(_)) => {
            EnqueueError::NotEnqueued { kind: caller.name_of(&kind).to_string(), trigger }.into()
        }
        (e, _) => e.into(),
    }
}

/// A job id as a path names it: digits only (`+1`, ` 1`, `01x` are not ids).
fn job_id(id: &str) -> Result<i64, AppError> {
    let bad = || AppError::BadRequest(format!("job id {id:?} is not a job id (a positive whole number)"));
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    id.parse().map_err(|_| bad())
}

/// The job a `/jobs/{id}` path names, if the caller owns it: another
/// tenant's job is not found, as one that does not exist. A job's kind,
/// so its tenant, never changes: what is checked here still holds when
/// the handler acts on it.
struct OwnedJob {
    job: crate::queue::Job,
    caller: Caller,
}

impl axum::extract::FromRequestParts<AppState> for OwnedJob {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &AppState) -> Result<Self, AppError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state).await.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let caller = parts.extensions.get::<Caller>().cloned().unwrap_or(Caller::Admin);
        let job = owned_job(state, &caller, &id, &parts.method, parts.uri.path()).await?;
        Ok(Self { job, caller })
    }
}

/// The job `id` names, if `caller` owns it (another tenant's answers as
/// one that does not exist, and the refusal is logged).
async fn owned_job(state: &AppState, caller: &Caller, id: &str, method: &http::Method, path: &str) -> Result<crate::queue::Job, AppError> {
    let id = job_id(id)?;
    let not_found = || AppError::NotFound(format!("job {id} not found"));
    let job = state.dispatcher.store().get(id).await?.ok_or_else(not_found)?;
    if !caller.owns(&job.kind) {
        state.access.note_refusal(method, path, caller.tenant(), "another tenant's job (answered 404)");
        return Err(not_found());
    }
    Ok(job)
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "The job")),
    responses((status = 200, description = "The job, its progress and every attempt", body = JobDetailView), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
async fn get_job(State(state): State<AppState>, OwnedJob { job, caller }: OwnedJob) -> Result<Json<JobDetailView>, AppError> {
    let records = state.dispatcher.store().attempts(job.id).await?;
    Ok(Json(JobDetailView { attempts: AttemptView::all(&job, &records), job: JobView::of(&job, &caller) }))
}

/// `GET /jobs/{id}/logs[?attempt=N]`: the log lines kept of its attempts.
#[utoipa::path(get, path = "/jobs/{id}/logs", tag = "jobs", params(("id" = i64, Path, description = "The job"), LogQuery),
    responses((status = 200, description = "The log lines of its attempts", body = LogPage), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
async fn job_logs(
    State(state): State<AppState>,
    OwnedJob { job, .. }: OwnedJob,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<LogPage>, AppError> {
    let Query(query) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    if let Some(n) = query.attempt {
        if n == 0 || n > job.attempt {
            return Err(AppError::NotFound(format!("job {} has no attempt {n} (it has had {})", job.id, job.attempt)));
        }
    }
    let logs = state.dispatcher.store().attempt_logs(job.id, query.attempt, MAX_PAGE_BYTES).await?;
    Ok(Json(LogPage { lines: logs.lines.into_iter().map(|(n, l)| LogLineView::of(n, l)).collect(), more: logs.more }))
}

#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path, description = "A dead or cancelled job")),
    responses((status = 200, description = "The job, due now", body = JobView), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
async fn retry_job(State(state): State<AppState>, OwnedJob { job, caller }: OwnedJob) -> Result<Json<JobView>, AppError> {
    let job = retry_one(&state, job.id).await?;
    Ok(Json(JobView::of(&job, &caller)))
}

/// Retries a dead or cancelled job now (the API's and the dashboard's retry).
async fn retry_one(state: &AppState, id: crate::queue::JobId) -> Result<crate::queue::Job, AppError> {
    let job = state.dispatcher.store().retry_by_hand(id).await?;
    state.dispatcher.wake(&job.queue);
    tracing::info!(kind = %job.kind, job = job.id, attempt = job.attempt, max_attempts = job.max_attempts, "job retried by hand");
    Ok(job)
}

/// Deletes a dead or cancelled job (the API's and the dashboard's discard).
async fn delete_one(state: &AppState, id: crate::queue::JobId) -> Result<crate::queue::Job, AppError> {
    let job = state.dispatcher.store().delete_by_hand(id).await?;
    tracing::info!(kind = %job.kind, job = job.id, state = job.state.as_str(), "job deleted by hand");
    Ok(job)
}

/// Cancels a job, or asks its run to stop.
async fn cancel_one(state: &AppState, id: crate::queue::JobId) -> Result<crate::queue::Job, AppError> {
    let job = state.dispatcher.cancel(id).await?;
    match job.state {
        JobState::Cancelled => tracing::info!(kind = %job.kind, job = job.id, "job cancelled by hand"),
        _ => tracing::info!(kind = %job.kind, job = job.id, "cancel requested by hand; the running job is asked to stop"),
    }
    Ok(job)
}

/// The most jobs one bulk call (`POST /jobs/retry`, `DELETE /jobs`) acts
/// on; `more` says to call again.
pub const MAX_BULK: usize = 10_000;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeadJobsQuery {
    state: String,
    kind: Option<String>,
    queue: Option<String>,
}

/// What a bulk call did: jobs acted on, jobs left as they were (another
/// job took the unique key, a schedule's newest tick, a job that changed
/// meanwhile), whether dead jobs are left for another call, and the queues
/// touched.
struct Bulk {
    done: usize,
    skipped: usize,
    more: bool,
    queues: std::collections::BTreeSet<String>,
}

/// What a bulk call does to each dead job.
#[derive(Debug, Clone, Copy)]
enum BulkAction {
    Retry,
    Delete,
}

/// Applies `action` to every dead job the query names, up to MAX_BULK, a
/// page at a time.
async fn on_dead_jobs(
    state: &AppState,
    caller: &Caller,
    query: Result<Query<DeadJobsQuery>, QueryRejection>,
    action: BulkAction,
) -> Result<(DeadJobsQuery, Bulk), AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let bulk = on_dead_jobs_of(state, caller, &q, action).await?;
    Ok((q, bulk))
}

/// [`on_dead_jobs`] for a query already read (the dashboard's bulk forms).
async fn on_dead_jobs_of(state: &AppState, caller: &Caller, q: &DeadJobsQuery, action: BulkAction) -> Result<Bulk, AppError> {
    let verb = match action {
        BulkAction::Retry => "retry",
        BulkAction::Delete => "delete",
    };
    use crate::queue::StoreError;
    if q.state != "dead" {
        return Err(AppError::BadRequest(format!("bulk {verb} takes state=dead, not {:?}", q.state)));
    }
    let store = state.dispatcher.store();
    let mut bulk = Bulk { done: 0, skipped: 0, more: true, queues: Default::default() };
    let mut after = None;
    while bulk.more && bulk.done + bulk.skipped < MAX_BULK {
        let filter = ListFilter {
            state: Some(JobState::Dead),
            kind: q.kind.as_deref().map(|k| caller.kind(k)),
            queue: q.queue.clone(),
            tenant: caller.tenant().map(str::to_string),
            after_id: after,
            limit: MAX_PAGE.min(MAX_BULK - bulk.done - bulk.skipped),
            ..ListFilter::default()
        };
        let page = store.list(filter).await?;
        bulk.more = page.more;
        after = page.jobs.last().map(|j| j.id);
        for job in &page.jobs {
            let done = match action {
                BulkAction::Retry => store.retry_by_hand(job.id).await,
                BulkAction::Delete => store.delete_by_hand(job.id).await,
            };
            match done {
                Ok(job) => {
                    bulk.done += 1;
                    bulk.queues.insert(job.queue);
                }
                Err(StoreError::UniqueConflict { .. } | StoreError::InvalidState { .. } | StoreError::Kept { .. } | StoreError::NotFound(_)) => {
                    bulk.skipped += 1
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if matches!(action, BulkAction::Retry) {
        for queue in &bulk.queues {
            state.dispatcher.wake(queue);
        }
    }
    Ok(bulk)
}

/// `POST /jobs/retry?state=dead[&kind=K][&queue=Q]`: retries every dead job
/// (of a kind, a queue), up to MAX_BULK a call: `{"retried", "skipped",
/// "more"}`. A job whose unique key another job took meanwhile is left
/// dead and counted in `skipped`.
#[utoipa::path(post, path = "/jobs/retry", tag = "jobs", params(DeadJobsQuery),
    responses((status = 200, description = "`retried`, `skipped`, `more`", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
async fn retry_many(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<DeadJobsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let (q, bulk) = on_dead_jobs(&state, &caller, query, BulkAction::Retry).await?;
    tracing::info!(retried = bulk.done, skipped = bulk.skipped, kind = q.kind.as_deref().unwrap_or("any"), "dead jobs retried by hand");
    Ok(Json(serde_json::json!({ "retried": bulk.done, "skipped": bulk.skipped, "more": bulk.more })))
}

/// `DELETE /jobs?state=dead[&kind=K][&queue=Q]`: deletes every dead job (of
/// a kind, a queue), up to MAX_BULK a call: `{"deleted", "skipped",
/// "more"}`. A schedule's newest tick is kept and counted in `skipped`.
#[utoipa::path(delete, path = "/jobs", tag = "jobs", params(DeadJobsQuery),
    responses((status = 200, description = "`deleted`, `skipped`, `more`", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
async fn delete_many(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<DeadJobsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let (q, bulk) = on_dead_jobs(&state, &caller, query, BulkAction::Delete).await?;
    tracing::info!(deleted = bulk.done, skipped = bulk.skipped, kind = q.kind.as_deref().unwrap_or("any"), "dead jobs deleted by hand");
    Ok(Json(serde_json::json!({ "deleted": bulk.done, "skipped": bulk.skipped, "more": bulk.more })))
}

/// `DELETE /jobs/{id}`: deletes a dead or cancelled job; answers it as it was.
#[utoipa::path(delete, path = "/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "A dead or cancelled job")),
    responses((status = 200, description = "The job as it was", body = JobView), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
async fn delete_job(State(state): State<AppState>, OwnedJob { job, caller }: OwnedJob) -> Result<Json<JobView>, AppError> {
    let job = delete_one(&state, job.id).await?;
    Ok(Json(JobView::of(&job, &caller)))
}

#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path, description = "The job")),
    responses((status = 200, description = "Cancelled, or (running) asked to stop", body = JobView), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
async fn cancel_job(State(state): State<AppState>, OwnedJob { job, caller }: OwnedJob) -> Result<Json<JobView>, AppError> {
    let job = cancel_one(&state, job.id).await?;
    Ok(Json(JobView::of(&job, &caller)))
}

/// `GET /queues`: each queue served here, whether it is paused, its jobs by
/// state (every state, zeros included), and how long its oldest due job
/// has waited (`null` when none is due). A tenant sees its own jobs'
/// counts, and no waiting time (that is every tenant's).
#[utoipa::path(get, path = "/queues", tag = "queues",
    responses((status = 200, description = "Each queue: concurrency, paused, jobs by state, oldest_waiting_ms", body = serde_json::Value), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
async fn list_queues(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<serde_json::Value>, AppError> {
    let queues: Vec<serde_json::Value> = queue_views(&state, &caller)
        .await?
        .into_iter()
        .map(|q| {
            let by_state: serde_json::Map<String, serde_json::Value> = q.jobs.iter().map(|(s, n)| (s.as_str().to_string(), (*n).into())).collect();
            let mut queue = serde_json::json!({
                "name": q.name,
                "concurrency": q.concurrency,
                "light_concurrency": q.light_concurrency,
                "paused": q.paused,
                "jobs": by_state,
            });
            if caller == Caller::Admin {
                queue["oldest_waiting_ms"] = q.oldest_waiting_ms.into();
            }
            queue
        })
        .collect();
    Ok(Json(serde_json::json!({ "queues": queues })))
}

/// A queue this host serves, as `GET /queues` and the dashboard show it.
struct QueueView {
    name: String,
    concurrency: usize,
    light_concurrency: usize,
    paused: bool,
    /// Every state, zeros included, counting the caller's jobs only.
    jobs: Vec<(JobState, u64)>,
    /// How long its oldest due job has waited; the operator's only (it is
    /// every tenant's), `None` for a tenant or when none is due.
    oldest_waiting_ms: Option<i64>,
}

async fn queue_views(state: &AppState, caller: &Caller) -> Result<Vec<QueueView>, AppError> {
    let store = state.dispatcher.store();
    let known = store.queues().await?;
    let counts = store.counts().await?;
    let now = state.dispatcher.clock().now();
    let mut queues = Vec::with_capacity(state.dispatcher.config().queues.len());
    for q in &state.dispatcher.config().queues {
        let jobs = JobState::ALL
            .iter()
            .map(|s| {
                let n: u64 = counts
                    .iter()
                    .filter(|c| c.queue == q.name && c.state == *s && (caller.tenant().is_none() || c.tenant.as_deref() == caller.tenant()))
                    .map(|c| c.count)
                    .sum();
                (*s, n)
            })
            .collect();
        let oldest_waiting_ms = match caller {
            Caller::Admin => store.next_due(&q.name).await?.filter(|at| *at <= now).map(|at| now - at),
            Caller::Tenant(_) => None,
        };
        queues.push(QueueView {
            name: q.name.clone(),
            concurrency: q.concurrency,
            light_concurrency: q.light_concurrency,
            paused: known.iter().any(|k| k.name == q.name && k.paused),
            jobs,
            oldest_waiting_ms,
        });
    }
    Ok(queues)
}

fn served_queue(state: &AppState, name: &str) -> Result<(), AppError> {
    if state.dispatcher.config().queues.iter().any(|q| q.name == name) {
        Ok(())
    } else {
        Err(AppError::NotFound(format!("queue {name:?} is not served by this host")))
    }
}

/// Queues hold every tenant's jobs: pausing one is the operator's.
fn operator_only(caller: &Caller, what: &str) -> Result<(), AppError> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Tenant(_) => Err(AppError::Forbidden(format!("{what} is the operator's: it covers every tenant (use an admin key)"))),
    }
}

#[utoipa::path(post, path = "/queues/{name}/pause", tag = "queues", params(("name" = String, Path, description = "A queue this host serves")),
    responses((status = 200, description = "Paused", body = serde_json::Value), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 403, description = "The operator's only", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
async fn pause_queue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let name = path_of(name)?;
    set_paused(&state, &caller, &name, true).await?;
    Ok(Json(serde_json::json!({ "name": name, "paused": true })))
}

#[utoipa::path(post, path = "/queues/{name}/resume", tag = "queues", params(("name" = String, Path, description = "A queue this host serves")),
    responses((status = 200, description = "Resumed", body = serde_json::Value), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 403, description = "The operator's only", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
async fn resume_queue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let name = path_of(name)?;
    set_paused(&state, &caller, &name, false).await?;
    Ok(Json(serde_json::json!({ "name": name, "paused": false })))
}

/// Pauses or resumes a queue this host serves (the operator's only).
async fn set_paused(state: &AppState, caller: &Caller, name: &str, paused: bool) -> Result<(), AppError> {
    operator_only(caller, if paused { "pausing a queue" } else { "resuming a queue" })?;
    served_queue(state, name)?;
    if paused {
        state.dispatcher.store().pause_queue(name).await?;
        tracing::info!(queue = %name, "queue paused");
    } else {
        state.dispatcher.store().resume_queue(name).await?;
        state.dispatcher.wake(name);
        tracing::info!(queue = %name, "queue resumed");
    }
    Ok(())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "host", security(()),
    responses((status = 200, description = "The process is up", body = serde_json::Value)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: start-up plugins have run, the host accepts work, and the
/// store answers.
#[utoipa::path(get, path = "/readyz", tag = "host", security(()),
    responses((status = 200, description = "Ready for work", body = serde_json::Value), (status = 503, description = "Not ready, or the store is unreachable", body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    if let Some(reason) = state.not_ready.borrow().clone() {
        return Err(AppError::Unavailable(format!("not ready: {reason}")));
    }
    if !state.dispatcher.is_accepting() {
        return Err(AppError::Unavailable("not ready: shutting down".into()));
    }
    state
        .dispatcher
        .store()
        .queues()
        .await
        .map_err(|e| AppError::Unavailable(format!("the job store does not answer: {e}")))?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

#[utoipa::path(get, path = "/metrics", tag = "host",
    responses((status = 200, description = "Prometheus/OpenMetrics text", content_type = "application/openmetrics-text", body = String), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 403, description = "The operator's only", body = ErrorBody)))]
async fn metrics(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<impl IntoResponse, AppError> {
    operator_only(&caller, "/metrics")?;
    let counts = state.dispatcher.store().counts().await?;
    let text = state.dispatcher.metrics().render(&counts);
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text))
}
