//! `GET /tenants`: each tenant's share and limits, what it has running and
//! waiting, and how long its due jobs have waited on its limits
//! (throttled time, as this host's claims saw it). The operator sees
//! every tenant; a tenant sees itself.

use super::ErrorBody;
use super::{AppError, AppState};
use crate::queue::{JobState, Limit};
use crate::tenant::Caller;
use axum::Json;
use axum::extract::{Extension, State};

#[utoipa::path(get, path = "/tenants", tag = "tenants",
    responses((status = 200, description = "Each tenant's limits, use and throttled time", body = serde_json::Value), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<serde_json::Value>, AppError> {
    let counts = state.dispatcher.store().counts().await?;
    let metrics = state.dispatcher.metrics();
    let tenants: Vec<serde_json::Value> = state
        .tenants
        .iter()
        .filter(|(name, _)| caller.tenant().is_none_or(|own| own == name.as_str()))
        .map(|(name, t)| {
            let count = |states: &[JobState]| -> u64 {
                counts.iter().filter(|c| c.tenant.as_deref() == Some(name) && states.contains(&c.state)).map(|c| c.count).sum()
            };
            serde_json::json!({
                "name": name,
                "weight": t.weight.get(),
                "max_running": t.max_running.map(|m| m.get()),
                "max_waiting": t.max_waiting.map(|m| m.get()),
                "max_plugin_versions": t.max_plugin_versions.map(|m| m.get()),
                "rate": t.rate.map(|r| r.to_string()),
                "running": count(&[JobState::Running]),
                "waiting": count(&[JobState::Available, JobState::Scheduled, JobState::Retryable]),
                "throttled_seconds": {
                    "max_running": metrics.throttled_seconds(Some(name), Limit::MaxRunning),
                    "rate": metrics.throttled_seconds(Some(name), Limit::Rate),
                    "max_per_key": metrics.throttled_seconds(Some(name), Limit::MaxPerKey),
                    "kind_rate": metrics.throttled_seconds(Some(name), Limit::KindRate),
                },
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "tenants": tenants })))
}
