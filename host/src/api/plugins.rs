//! The plugin routes: list the live versions, deploy a new one, roll back,
//! remove. Validation and the swap are the registry's; compiling runs on
//! the blocking pool, off the API's threads.

use super::error::AppError;
use super::state::AppState;
use super::views::ErrorBody;
use crate::plugin::{Registry, VersionInfo};
use crate::queue::{LoopState, to_rfc3339};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use crate::tenant::Caller;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `PUT /plugins/{name}` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The `plugin.toml` text; its `name` must be the one in the path.
    pub manifest: String,
    /// The component, base64 (standard alphabet, padded).
    pub wasm_base64: String,
    /// The `plugin.sig` text, for a signed plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    #[serde(default)]
    pub force: bool,
}

fn version_json(v: &VersionInfo) -> serde_json::Value {
    serde_json::json!({
        "version": v.version,
        "version_id": v.version_id,
        "wasm_sha256": v.wasm_sha256,
        "activated_at": to_rfc3339(v.activated_at),
        "source": v.source,
        "signed_by": v.signed_by,
        "active": v.active,
    })
}

fn loop_json(l: &LoopState) -> serde_json::Value {
    serde_json::json!({
        "passes": l.passes,
        "checkpoint": l.checkpoint.as_deref().map(super::views::bytes_value),
        "held_by": l.owner,
        "lease_expires_at": l.lease_expires_at.map(to_rfc3339),
        "updated_at": to_rfc3339(l.updated_at),
    })
}

/// `GET /plugins`: every live plugin, its trigger, its archived versions
/// (newest first, the serving one marked) and, for loops, where the loop is.
/// What a plugin asked for and what it was granted (config keys, never values).
fn capabilities_json(g: &crate::capability::Grants) -> serde_json::Value {
    let origins = |o: &[crate::capability::HttpOrigin]| o.iter().map(ToString::to_string).collect::<Vec<_>>();
    serde_json::json!({
        "asked": { "http": origins(&g.asked.http), "kv": g.asked.kv, "config": g.asked.config, "enqueue": g.asked.enqueue },
        "granted": { "http": origins(&g.http), "kv": g.kv, "config": g.config_keys, "enqueue": g.enqueue },
    })
}

#[utoipa::path(get, path = "/plugins", tag = "plugins",
    responses((status = 200, description = "Live plugins, their versions, capabilities and loop state", body = serde_json::Value), (status = 401, description = "No or a wrong API key", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<serde_json::Value>, AppError> {
    let loops = state.service.loops(&caller).await?;
    let registry = state.registry.clone();
    let plugins = tokio::task::spawn_blocking(move || {
        registry
            .snapshot()
            .values()
            .filter(|p| caller.owns(&p.kind))
            .map(|p| {
                let m = &p.manifest;
                let budget = m.budget();
                serde_json::json!({
                    "name": caller.name_of(&p.kind),
                    "tenant": crate::names::tenant_of(&p.kind),
                    "signed_by": p.signed_by,
                    "version": m.version,
                    "version_id": p.version_id,
                    "description": m.description,
                    "trigger": m.trigger.name(),
                    "trigger_detail": m.trigger.describe(),
                    "max_attempts": m.retry.max_attempts,
                    "limits": {
                        "fuel": budget.fuel,
                        "memory_bytes": budget.memory_bytes,
                        "timeout_ms": budget.timeout.as_millis() as u64,
                        "output_bytes": budget.max_output_bytes,
                    },
                    "capabilities": capabilities_json(p.component.grants()),
                    "versions": registry.versions(&p.kind).iter().map(version_json).collect::<Vec<_>>(),
                    "loop": loops.iter().find(|l| l.name == p.kind).map(loop_json),
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(serde_json::json!({ "plugins": plugins })))
}

async fn blocking<T: Send + 'static>(
    registry: &Arc<Registry>,
    f: impl FnOnce(&Registry) -> Result<T, crate::plugin::DeployError> + Send + 'static,
) -> Result<T, AppError> {
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || f(&registry)).await.map_err(|e| AppError::Internal(e.to_string()))?.map_err(AppError::from)
}

fn deployed_json(d: &crate::plugin::Deployed, caller: &Caller) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": caller.name_of(&d.name),
        "tenant": crate::names::tenant_of(&d.name),
        "version": d.version,
        "version_id": d.version_id,
        "previous": d.previous,
        "changed": d.changed,
    }))
}

/// `PUT /plugins/{name}`: validates and compiles the version, swaps it in,
/// writes it into the plugins directory. A refused version changes nothing.
#[utoipa::path(put, path = "/plugins/{name}", tag = "plugins", params(("name" = String, Path, description = "The manifest's name")), request_body = DeployRequest,
    responses((status = 200, description = "Deployed (or already serving those bytes)", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 413, description = "Over a size limit", body = ErrorBody), (status = 429, description = "Over a quota, named", body = ErrorBody)))]
pub async fn deploy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let name = super::request::path_of(name)?;
    let body = super::request::body_bytes(body)?;
    let request: DeployRequest = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("request body is not a deploy request ({{\"manifest\", \"wasm_base64\"}}): {e}")))?;
    let wasm = base64::engine::general_purpose::STANDARD
        .decode(request.wasm_base64.trim())
        .map_err(|e| AppError::BadRequest(format!("wasm_base64 is not base64: {e}")))?;
    let kind = caller.kind(&name);
    let deployed = blocking(&state.registry, move |r| r.deploy_upload(&kind, &request.manifest, &wasm, request.signature.as_deref())).await?;
    Ok(deployed_json(&deployed, &caller))
}

/// `POST /plugins/{name}/rollback`: the previous archived version serves again.
#[utoipa::path(post, path = "/plugins/{name}/rollback", tag = "plugins", params(("name" = String, Path, description = "A live plugin")),
    responses((status = 200, description = "Serving the version before", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let name = super::request::path_of(name)?;
    let deployed = rollback_one(&state, &caller, &name).await?;
    Ok(deployed_json(&deployed, &caller))
}

/// Serves the version of the caller's plugin `name` before the one serving now.
pub(super) async fn rollback_one(state: &AppState, caller: &Caller, name: &str) -> Result<crate::plugin::Deployed, AppError> {
    let kind = caller.kind(name);
    if state.registry.get(&kind).is_none() {
        return Err(AppError::NotFound(format!("no plugin {name:?} is loaded")));
    }
    blocking(&state.registry, move |r| r.rollback(&kind)).await
}

/// `DELETE /plugins/{name}[?force=true]`: refused while jobs of the kind
/// are pending, unless forced (they then fail as "no plugin loaded" when
/// claimed, and can be retried by hand after a redeploy).
#[utoipa::path(delete, path = "/plugins/{name}", tag = "plugins", params(("name" = String, Path, description = "A live plugin"), RemoveQuery),
    responses((status = 200, description = "Removed", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let name = super::request::path_of(name)?;
    let Query(query) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let kind = caller.kind(&name);
    if state.registry.get(&kind).is_none() {
        return Err(AppError::NotFound(format!("no plugin {name:?} is loaded")));
    }
    let pending = state.service.pending_jobs(&caller, &kind).await?;
    if pending > 0 && !query.force {
        return Err(AppError::Conflict(format!(
            "plugin {name:?} still has {pending} pending jobs (waiting or running); let them finish, cancel them, or remove with force"
        )));
    }
    let removed = blocking(&state.registry, move |r| r.remove(&kind)).await?;
    Ok(Json(serde_json::json!({ "name": name, "version": removed.manifest.version, "removed": true, "pending_jobs": pending })))
}

/// `DELETE /plugins/{name}/versions/{version_id}`: deletes an archived
/// version that does not serve now (404 for one the caller's plugin does
/// not have, 409 for the serving one).
#[utoipa::path(delete, path = "/plugins/{name}/versions/{version_id}", tag = "plugins",
    params(("name" = String, Path, description = "A plugin"), ("version_id" = String, Path, description = "An archived version")),
    responses((status = 200, description = "Deleted", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
pub async fn delete_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let (name, version_id) = super::request::path_of(path)?;
    let kind = caller.kind(&name);
    let deleted = blocking(&state.registry, move |r| r.delete_version(&kind, &version_id)).await?;
    Ok(Json(serde_json::json!({ "name": name, "version": deleted.version, "version_id": deleted.version_id, "deleted": true })))
}
