//! `GET /tenants`: each tenant's share and limits, what it has running and
//! waiting, and how long its due jobs have waited on its limits
//! (throttled time, as this host's claims saw it). The operator sees
//! every tenant; a tenant sees itself.

use super::views::ErrorBody;
use super::error::AppError;
use super::state::AppState;
use crate::queue::Limit;
use crate::tenant::Caller;
use axum::Json;
use axum::extract::{Extension, State};

#[utoipa::path(get, path = "/tenants", tag = "tenants",
    responses((status = 200, description = "Each tenant's limits, use and throttled time", body = serde_json::Value), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<serde_json::Value>, AppError> {
    let shown: Vec<(&String, &crate::tenant::TenantSettings)> =
        state.tenants.iter().filter(|(name, _)| caller.tenant().is_none_or(|own| own == name.as_str())).collect();
    let names: Vec<&str> = shown.iter().map(|(name, _)| name.as_str()).collect();
    let uses = state.service.tenants_use(&names).await?;
    let tenants: Vec<serde_json::Value> = shown
        .iter()
        .zip(uses)
        .map(|((name, t), used)| {
            let throttled = |limit: Limit| used.throttled_seconds.iter().find(|(l, _)| *l == limit).map_or(0.0, |(_, s)| *s);
            serde_json::json!({
                "name": name,
                "weight": t.weight.get(),
                "max_running": t.max_running.map(|m| m.get()),
                "max_waiting": t.max_waiting.map(|m| m.get()),
                "max_plugin_versions": t.max_plugin_versions.map(|m| m.get()),
                "rate": t.rate.map(|r| r.to_string()),
                "running": used.running,
                "waiting": used.waiting,
                "throttled_seconds": {
                    "max_running": throttled(Limit::MaxRunning),
                    "rate": throttled(Limit::Rate),
                    "max_per_key": throttled(Limit::MaxPerKey),
                    "kind_rate": throttled(Limit::KindRate),
                },
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "tenants": tenants })))
}
