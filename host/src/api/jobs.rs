//! `/jobs`: enqueue (one or an array), list a page, read one with its
//! attempts and logs, retry, cancel and delete it, and retry or delete dead
//! jobs in bulk. Translates requests into the worker's `JobService` calls,
//! which decide what the caller may do.

use super::views::{AttemptView, EnqueuedAnswer, EnqueuedView, ErrorBody, JobDetailView, JobPage, JobRequest, JobRequests, JobView, ListQuery, LogLineView, LogPage, LogQuery};
use super::error::AppError;
use super::request::{MAX_PAGE, MAX_PAGE_BYTES, body_bytes};
use super::state::AppState;
use crate::queue::{Job, JobState, ListFilter, from_rfc3339};
use crate::tenant::Caller;
use crate::worker::EnqueueRequest;
use crate::worker::service::jobs::BulkAction;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;



/// One job object of a `POST /jobs` body, in the caller's names.
fn parse_request(value: serde_json::Value, index: usize, traceparent: Option<&str>) -> Result<EnqueueRequest, AppError> {
    let request: JobRequest = serde_json::from_value(value).map_err(|e| AppError::BadRequest(format!("job {index}: {e}")))?;
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
        kind: request.kind,
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
pub(super) async fn enqueue(
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
            (items.into_iter().enumerate().map(|(i, v)| parse_request(v, i, traceparent)).collect::<Result<Vec<_>, _>>()?, true)
        }
        object @ serde_json::Value::Object(_) => (vec![parse_request(object, 0, traceparent)?], false),
        _ => return Err(AppError::BadRequest("request body must be a job object or an array of job objects".into())),
    };
    if requests.is_empty() {
        return Err(AppError::BadRequest("request body is an empty array".into()));
    }
    let inserted = state.service.enqueue(&caller, requests).await?;
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
pub(super) async fn list_jobs(
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
    let query = ListFilter { state: job_state, kind: q.kind, queue: q.queue, tenant: None, after_id: cursor, newest_first, limit, max_bytes: MAX_PAGE_BYTES };
    let page = state.service.list(&caller, query).await?;
    let next = if page.more { page.jobs.last().map(|j| j.id) } else { None };
    let (next_after, next_before) = if newest_first { (None, next) } else { (next, None) };
    Ok(Json(JobPage { jobs: page.jobs.iter().map(|j| JobView::of(j, &caller)).collect(), next_after, next_before }))
}

/// A job id as a path names it: digits only (`+1`, ` 1`, `01x` are not ids).
pub(crate) fn job_id(id: &str) -> Result<i64, AppError> {
    let bad = || AppError::BadRequest(format!("job id {id:?} is not a job id (a positive whole number)"));
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    id.parse().map_err(|_| bad())
}

/// The job a `/jobs/{id}` path names, if the caller owns it: another
/// tenant's job is not found, as one that does not exist (and the refusal
/// is logged).
pub(super) struct OwnedJob {
    pub(super) job: Job,
    pub(super) caller: Caller,
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
pub(crate) async fn owned_job(state: &AppState, caller: &Caller, id: &str, method: &http::Method, path: &str) -> Result<Job, AppError> {
    let id = job_id(id)?;
    state.service.job(caller, id).await.map_err(|e| state.refused(e, caller, method, path))
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "The job")),
    responses((status = 200, description = "The job, its progress and every attempt", body = JobDetailView), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub(super) async fn get_job(State(state): State<AppState>, OwnedJob { job, caller }: OwnedJob) -> Result<Json<JobDetailView>, AppError> {
    let records = state.service.attempts(&job).await?;
    Ok(Json(JobDetailView { attempts: AttemptView::all(&job, &records), job: JobView::of(&job, &caller) }))
}

/// `GET /jobs/{id}/logs[?attempt=N]`: the log lines kept of its attempts.
#[utoipa::path(get, path = "/jobs/{id}/logs", tag = "jobs", params(("id" = i64, Path, description = "The job"), LogQuery),
    responses((status = 200, description = "The log lines of its attempts", body = LogPage), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub(super) async fn job_logs(
    State(state): State<AppState>,
    OwnedJob { job, .. }: OwnedJob,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<LogPage>, AppError> {
    let Query(query) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let logs = state.service.logs(&job, query.attempt, MAX_PAGE_BYTES).await?;
    Ok(Json(LogPage { lines: logs.lines.into_iter().map(|(n, l)| LogLineView::of(n, l)).collect(), more: logs.more }))
}

#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path, description = "A dead or cancelled job")),
    responses((status = 200, description = "The job, due now", body = JobView), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
pub(super) async fn retry_job(State(state): State<AppState>, OwnedJob { job, caller }: OwnedJob) -> Result<Json<JobView>, AppError> {
    let job = state.service.retry(&caller, job.id).await?;
    Ok(Json(JobView::of(&job, &caller)))
}

/// `DELETE /jobs/{id}`: deletes a dead or cancelled job; answers it as it was.
#[utoipa::path(delete, path = "/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "A dead or cancelled job")),
    responses((status = 200, description = "The job as it was", body = JobView), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
pub(super) async fn delete_job(State(state): State<AppState>, OwnedJob { job, caller }: OwnedJob) -> Result<Json<JobView>, AppError> {
    let job = state.service.delete(&caller, job.id).await?;
    Ok(Json(JobView::of(&job, &caller)))
}

#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path, description = "The job")),
    responses((status = 200, description = "Cancelled, or (running) asked to stop", body = JobView), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
pub(super) async fn cancel_job(State(state): State<AppState>, OwnedJob { job, caller }: OwnedJob) -> Result<Json<JobView>, AppError> {
    let job = state.service.cancel(&caller, job.id).await?;
    Ok(Json(JobView::of(&job, &caller)))
}

/// Which dead jobs a bulk call acts on.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeadJobsQuery {
    pub(super) state: String,
    pub(super) kind: Option<String>,
    pub(super) queue: Option<String>,
}

/// Applies `action` to every dead job the query names (see `JobService::on_dead_jobs`).
pub(super) async fn on_dead_jobs(state: &AppState, caller: &Caller, q: &DeadJobsQuery, action: BulkAction) -> Result<crate::worker::service::jobs::Bulk, AppError> {
    if q.state != "dead" {
        let verb = match action {
            BulkAction::Retry => "retry",
            BulkAction::Delete => "delete",
        };
        return Err(AppError::BadRequest(format!("bulk {verb} takes state=dead, not {:?}", q.state)));
    }
    Ok(state.service.on_dead_jobs(caller, q.kind.as_deref(), q.queue.as_deref(), action).await?)
}

/// `POST /jobs/retry?state=dead[&kind=K][&queue=Q]`: retries every dead job
/// (of a kind, a queue), up to MAX_BULK a call: `{"retried", "skipped",
/// "more"}`. A job whose unique key another job took meanwhile is left
/// dead and counted in `skipped`.
#[utoipa::path(post, path = "/jobs/retry", tag = "jobs", params(DeadJobsQuery),
    responses((status = 200, description = "`retried`, `skipped`, `more`", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
pub(super) async fn retry_many(state: State<AppState>, caller: Extension<Caller>, query: DeadJobsRequest) -> Result<Json<serde_json::Value>, AppError> {
    bulk_answer(state, caller, query, BulkAction::Retry, "retried").await
}

/// `DELETE /jobs?state=dead[&kind=K][&queue=Q]`: deletes every dead job (of
/// a kind, a queue), up to MAX_BULK a call: `{"deleted", "skipped",
/// "more"}`. A schedule's newest tick is kept and counted in `skipped`.
#[utoipa::path(delete, path = "/jobs", tag = "jobs", params(DeadJobsQuery),
    responses((status = 200, description = "`deleted`, `skipped`, `more`", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
pub(super) async fn delete_many(state: State<AppState>, caller: Extension<Caller>, query: DeadJobsRequest) -> Result<Json<serde_json::Value>, AppError> {
    bulk_answer(state, caller, query, BulkAction::Delete, "deleted").await
}

/// The query of a bulk call, as axum reads it.
type DeadJobsRequest = Result<Query<DeadJobsQuery>, QueryRejection>;

/// A bulk call's answer: `{VERB: done, "skipped", "more"}`.
async fn bulk_answer(State(state): State<AppState>, Extension(caller): Extension<Caller>, query: DeadJobsRequest, action: BulkAction, verb: &str) -> Result<Json<serde_json::Value>, AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let bulk = on_dead_jobs(&state, &caller, &q, action).await?;
    Ok(Json(serde_json::json!({ verb: bulk.done, "skipped": bulk.skipped, "more": bulk.more })))
}
