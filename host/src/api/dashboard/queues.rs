//! Queues: each with its jobs by state, concurrency and oldest wait, and
//! the operator's pause and resume.

use super::layout::{Action, Chrome, Done, Viewer, ago, error_page, page};
use crate::api::error::AppError;
use crate::api::state::AppState;
use crate::queue::{JobState};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use super::overview::QueueRow;

#[derive(Template)]
#[template(path = "queues.html")]
struct QueuesPage {
    chrome: Chrome,
    states: Vec<&'static str>,
    queues: Vec<QueueRow>,
    concurrency: Vec<(String, usize)>,
}

pub(super) async fn queues(State(state): State<AppState>, viewer: Viewer, Query(done): Query<Done>) -> Response {
    let result = async {
        let now = state.service.now();
        let views = state.service.queues(viewer.caller()).await?;
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

pub(super) async fn queue_action(State(state): State<AppState>, Path((name, action)): Path<(String, String)>, form: Action) -> Response {
    let result = async {
        let paused = match action.as_str() {
            "pause" => true,
            "resume" => false,
            other => return Err(AppError::NotFound(format!("a queue has no action {other:?} (pause, resume)"))),
        };
        state.service.set_paused(form.viewer.caller(), &name, paused).await?;
        Ok(Redirect::to(if paused { "/ui/queues?done=paused" } else { "/ui/queues?done=resumed" }).into_response())
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&form.viewer), e))
}
