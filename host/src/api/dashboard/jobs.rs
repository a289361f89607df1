//! Jobs: the caller's jobs newest first, filtered by state, kind and
//! queue (or straight to one by id), a page at a time; and the dead
//! letters' form, which retries or discards the checked jobs, or every
//! dead job of the filter, in bulk.

use super::layout::{Action, Chrome, Viewer, blank_is_none, error_page, page, shorten};
use crate::api::error::AppError;
use crate::api::request::{MAX_PAGE, MAX_PAGE_BYTES};
use crate::api::state::AppState;
use crate::queue::{JobState, ListFilter, to_rfc3339};
use crate::worker::service::jobs::BulkAction;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

/// Jobs a page of the jobs list shows.
pub const JOBS_PER_PAGE: usize = 50;

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct JobsQuery {
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

pub(super) async fn jobs(State(state): State<AppState>, viewer: Viewer, query: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
        if let Some(id) = blank_is_none(q.id.clone()) {
            crate::api::jobs::job_id(&id)?;
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
    let query = ListFilter {
        state: job_state,
        tenant: None,
        kind: kind.clone(),
        queue: queue.clone(),
        after_id: q.before,
        newest_first: true,
        limit: JOBS_PER_PAGE,
        max_bytes: MAX_PAGE_BYTES,
    };
    let list = state.service.list(caller, query).await?;
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
            queues: state.service.queue_names(),
            state: job_state.map(|s| s.as_str().to_string()).unwrap_or_default(),
            kind: kind.unwrap_or_default(),
            queue: queue.unwrap_or_default(),
            jobs,
            older,
            dead: job_state == Some(JobState::Dead),
        },
    ))
}

/// The dead-letter form: `do` retries or discards the checked `id`s, or
/// every dead job of the filter's kind and queue (up to the API's bulk
/// limit a click).
pub(super) async fn bulk(State(state): State<AppState>, form: Action) -> Response {
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
                let bulk = state.service.on_dead_jobs(caller, form.field("kind"), form.field("queue"), action).await?;
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
                    let job = crate::api::jobs::owned_job(&state, caller, id, &http::Method::POST, "/ui/jobs/bulk").await?;
                    if job.state != JobState::Dead {
                        skipped += 1;
                        continue;
                    }
                    let acted = match action {
                        BulkAction::Retry => state.service.retry(caller, job.id).await,
                        BulkAction::Delete => state.service.delete(caller, job.id).await,
                    }
                    .map_err(AppError::from);
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
