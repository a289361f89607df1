//! The host's own routes: liveness (`/healthz`), readiness (`/readyz`)
//! and its Prometheus metrics (`/metrics`, the operator's).

use super::views::ErrorBody;
use super::error::AppError;
use super::state::AppState;
use crate::tenant::Caller;
use axum::Json;
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::IntoResponse;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "host", security(()),
    responses((status = 200, description = "The process is up", body = serde_json::Value)))]
pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: start-up plugins have run, the host accepts work, and the
/// store answers.
#[utoipa::path(get, path = "/readyz", tag = "host", security(()),
    responses((status = 200, description = "Ready for work", body = serde_json::Value), (status = 503, description = "Not ready, or the store is unreachable", body = ErrorBody)))]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    if let Some(reason) = state.not_ready.borrow().clone() {
        return Err(AppError::Unavailable(format!("not ready: {reason}")));
    }
    if let Some(reason) = state.service.not_ready().await {
        return Err(AppError::Unavailable(reason));
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

#[utoipa::path(get, path = "/metrics", tag = "host",
    responses((status = 200, description = "Prometheus/OpenMetrics text", content_type = "application/openmetrics-text", body = String), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 403, description = "The operator's only", body = ErrorBody)))]
pub(super) async fn metrics(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<impl IntoResponse, AppError> {
    let text = state.service.metrics_text(&caller).await?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text))
}
