//! One job: its payload and result, every attempt, the log lines of its
//! attempts, and its actions (retry, discard, cancel).

use super::layout::{Action, Chrome, Done, Viewer, error_page, page};
use crate::api::error::AppError;
use crate::api::state::AppState;
use crate::api::views::{AttemptView, JobView, LogLineView};
use crate::queue::{JobState};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

/// Log bytes a job's page shows (the rest through `GET /jobs/{id}/logs`).
pub const PAGE_LOG_BYTES: u64 = 1 << 20;

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

pub(super) async fn job(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>, Query(done): Query<Done>, uri: http::Uri) -> Response {
    let result = async {
        let job = crate::api::jobs::owned_job(&state, viewer.caller(), &id, &http::Method::GET, uri.path()).await?;
        let records = state.service.attempts(&job).await?;
        let logs = state.service.logs(&job, None, PAGE_LOG_BYTES).await?;
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

pub(super) async fn job_action(State(state): State<AppState>, Path((id, action)): Path<(String, String)>, uri: http::Uri, form: Action) -> Response {
    let viewer = &form.viewer;
    let result = async {
        let job = crate::api::jobs::owned_job(&state, viewer.caller(), &id, &http::Method::POST, uri.path()).await?;
        let to = match action.as_str() {
            "retry" => {
                state.service.retry(viewer.caller(), job.id).await?;
                format!("/ui/jobs/{}?done=retried", job.id)
            }
            "discard" => {
                state.service.delete(viewer.caller(), job.id).await?;
                "/ui/jobs?state=dead&done=discarded".to_string()
            }
            "cancel" => {
                state.service.cancel(viewer.caller(), job.id).await?;
                format!("/ui/jobs/{}?done=cancelled", job.id)
            }
            other => return Err(AppError::NotFound(format!("a job has no action {other:?} (retry, discard, cancel)"))),
        };
        Ok::<_, AppError>(Redirect::to(&to).into_response())
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(viewer), e))
}
