//! `/queues`: each queue this host serves with its jobs by state, and
//! pausing and resuming one (the operator's: a queue holds every tenant's
//! jobs).

use super::views::ErrorBody;
use super::error::AppError;
use super::request::path_of;
use super::state::AppState;
use crate::tenant::Caller;
use axum::Json;
use axum::extract::{Extension, Path, State};

/// `GET /queues`: each queue served here, whether it is paused, its jobs by
/// state (every state, zeros included), and how long its oldest due job
/// has waited (`null` when none is due). A tenant sees its own jobs'
/// counts, and no waiting time (that is every tenant's).
#[utoipa::path(get, path = "/queues", tag = "queues",
    responses((status = 200, description = "Each queue: concurrency, paused, jobs by state, oldest_waiting_ms", body = serde_json::Value), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
pub(super) async fn list_queues(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<serde_json::Value>, AppError> {
    let queues: Vec<serde_json::Value> = state
        .service
        .queues(&caller)
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

#[utoipa::path(post, path = "/queues/{name}/pause", tag = "queues", params(("name" = String, Path, description = "A queue this host serves")),
    responses((status = 200, description = "Paused", body = serde_json::Value), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 403, description = "The operator's only", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub(super) async fn pause_queue(state: State<AppState>, caller: Extension<Caller>, name: QueueName) -> Result<Json<serde_json::Value>, AppError> {
    set_paused(state, caller, name, true).await
}

#[utoipa::path(post, path = "/queues/{name}/resume", tag = "queues", params(("name" = String, Path, description = "A queue this host serves")),
    responses((status = 200, description = "Resumed", body = serde_json::Value), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 403, description = "The operator's only", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub(super) async fn resume_queue(state: State<AppState>, caller: Extension<Caller>, name: QueueName) -> Result<Json<serde_json::Value>, AppError> {
    set_paused(state, caller, name, false).await
}

/// A queue's name from the path, as axum reads it.
type QueueName = Result<Path<String>, axum::extract::rejection::PathRejection>;

/// Pauses or resumes the queue; answers `{"name", "paused"}`.
async fn set_paused(State(state): State<AppState>, Extension(caller): Extension<Caller>, name: QueueName, paused: bool) -> Result<Json<serde_json::Value>, AppError> {
    let name = path_of(name)?;
    state.service.set_paused(&caller, &name, paused).await?;
    Ok(Json(serde_json::json!({ "name": name, "paused": paused })))
}
