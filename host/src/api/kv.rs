//! The kv routes, for operators: list, read, write and delete the keys of
//! a plugin's stores (`GET /plugins/{name}/kv`, `GET|PUT|DELETE
//! /plugins/{name}/kv/{key}`), with the same bounds a plugin has.

use super::{AppError, AppState};
use crate::capability::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES, PAGE_KEYS};
use crate::queue::{KvChange, KvWrite};
use axum::Json;
use axum::extract::{Extension, FromRequestParts, Path, Query, State};
use crate::tenant::Caller;
use axum::http::request::Parts;
use base64::Engine as _;
use super::ErrorBody;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Default: `default`.
    store: Option<String>,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    offset: u64,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    store: Option<String>,
}

/// `PUT /plugins/{name}/kv/{key}` body: the value as text, or as base64.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    value: Option<String>,
    value_base64: Option<String>,
}

/// The plugin's namespace (its kind) and the store, both checked: a
/// plugin this host serves to the caller, a store it has.
fn target(state: &AppState, caller: &Caller, plugin: &str, store: Option<String>) -> Result<(String, String), AppError> {
    let kind = caller.kind(plugin);
    if state.registry.get(&kind).is_none() {
        return Err(AppError::NotFound(format!("no plugin {plugin:?} is loaded on this host")));
    }
    let store = store.unwrap_or_else(|| crate::capability::DEFAULT_KV_STORE.to_string());
    let stores = &state.registry.policy().capabilities.policy.kv_stores;
    if !stores.contains(&store) {
        return Err(AppError::NotFound(format!("no kv store {store:?} on this host (stores: {})", stores.join(", "))));
    }
    Ok((kind, store))
}

fn check_key(key: &str) -> Result<(), AppError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(AppError::BadRequest(format!("key is {} bytes, over the most of {MAX_KEY_BYTES}", key.len())));
    }
    Ok(())
}

/// One key of one plugin's store, from the path and `?store=`, checked:
/// a plugin this host serves, a store it has, a key within the bound.
pub struct KeyAt {
    plugin: String,
    namespace: String,
    store: String,
    key: String,
}

impl FromRequestParts<AppState> for KeyAt {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Path((plugin, key)) =
            Path::<(String, String)>::from_request_parts(parts, state).await.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let Query(q) = Query::<KeyQuery>::from_request_parts(parts, state).await.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let caller = parts.extensions.get::<Caller>().cloned().unwrap_or(Caller::Admin);
        let (namespace, store) = target(state, &caller, &plugin, q.store)?;
        check_key(&key)?;
        Ok(Self { plugin, namespace, store, key })
    }
}

/// A value as JSON: `value` when it is UTF-8 text, `value_base64` otherwise.
fn value_json(key: &str, value: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::json!({ "key": key, "value": text, "bytes": value.len() }),
        Err(_) => serde_json::json!({
            "key": key,
            "value_base64": base64::engine::general_purpose::STANDARD.encode(value),
            "bytes": value.len(),
        }),
    }
}

/// `GET /plugins/{name}/kv?store=&prefix=&offset=&limit=`: keys in byte
/// order with their values, a page at a time.
#[utoipa::path(get, path = "/plugins/{name}/kv", tag = "kv", params(("name" = String, Path, description = "A live plugin"), ListQuery),
    responses((status = 200, description = "Keys in byte order with their values, next_offset, store_bytes", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    plugin: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let plugin = super::path_of(plugin)?;
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let (namespace, store) = target(&state, &caller, &plugin, q.store)?;
    check_key(&q.prefix)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > PAGE_KEYS {
        return Err(AppError::BadRequest(format!("limit must be between 1 and {PAGE_KEYS}")));
    }
    let kv = state.dispatcher.store();
    let keys = kv.kv_keys(&namespace, &store, &q.prefix, q.offset, limit).await?;
    let mut entries = Vec::with_capacity(keys.len());
    for key in &keys {
        // A key deleted between the two reads is left out.
        if let Some(value) = kv.kv_get(&namespace, &store, key).await? {
            entries.push(value_json(key, &value));
        }
    }
    let next_offset = (keys.len() == limit).then_some(q.offset + limit as u64);
    let bytes = kv.kv_usage(&namespace, &store).await?;
    Ok(Json(serde_json::json!({ "plugin": plugin, "store": store, "entries": entries, "next_offset": next_offset, "store_bytes": bytes })))
}

/// `GET /plugins/{name}/kv/{key}?store=`.
#[utoipa::path(get, path = "/plugins/{name}/kv/{key}", tag = "kv", params(("name" = String, Path, description = "A live plugin"), ("key" = String, Path, description = "The key"), KeyQuery),
    responses((status = 200, description = "The key's value", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    KeyAt { plugin, namespace, store, key }: KeyAt,
) -> Result<Json<serde_json::Value>, AppError> {
    match state.dispatcher.store().kv_get(&namespace, &store, &key).await? {
        Some(value) => Ok(Json(value_json(&key, &value))),
        None => Err(AppError::NotFound(format!("no key {key:?} in store {store:?} of plugin {plugin:?}"))),
    }
}

/// `PUT /plugins/{name}/kv/{key}?store=` with `{"value": TEXT}` or
/// `{"value_base64": B64}`; held to the value bound and the store's quota.
#[utoipa::path(put, path = "/plugins/{name}/kv/{key}", tag = "kv", params(("name" = String, Path, description = "A live plugin"), ("key" = String, Path, description = "The key"), KeyQuery), request_body = SetRequest,
    responses((status = 200, description = "Set", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 413, description = "Over a size limit", body = ErrorBody)))]
pub async fn set(
    State(state): State<AppState>,
    KeyAt { plugin, namespace, store, key }: KeyAt,
    body: Result<Json<SetRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let Json(body) = body.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let value = match (body.value, body.value_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| AppError::BadRequest(format!("value_base64 is not base64: {e}")))?,
        _ => return Err(AppError::BadRequest("give `value` (text) or `value_base64`, one of them".into())),
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(AppError::PayloadTooLarge(format!("value is {} bytes, over the most of {MAX_VALUE_BYTES}", value.len())));
    }
    let kv = state.dispatcher.store();
    // The plugin's own quota: a tenant's may be narrower than the host's.
    let grants = state.registry.get(&namespace).map(|p| p.component.grants().clone());
    let quota = grants.as_ref().map_or(0, |g| g.kv_quota_bytes);
    let adding = (key.len() + value.len()) as u64;
    let after = kv.kv_usage(&namespace, &store).await? + adding;
    if after > quota {
        return Err(AppError::PayloadTooLarge(format!("store {store:?} would hold {after} bytes, over its quota of {quota} bytes")));
    }
    if let Some(total) = grants.and_then(|g| g.kv_total) {
        if let Some(why) = total.refusal(kv.kv_usage_under(&total.prefix()).await? + adding) {
            return Err(AppError::PayloadTooLarge(why));
        }
    }
    let answer = value_json(&key, &value);
    kv.write_kv(vec![KvWrite { namespace, store, key, change: KvChange::Set(value) }]).await?;
    tracing::info!(plugin = %plugin, key = %answer["key"], "kv key set by hand");
    Ok(Json(answer))
}

/// `DELETE /plugins/{name}/kv/{key}?store=`.
#[utoipa::path(delete, path = "/plugins/{name}/kv/{key}", tag = "kv", params(("name" = String, Path, description = "A live plugin"), ("key" = String, Path, description = "The key"), KeyQuery),
    responses((status = 200, description = "`deleted`: whether it was there", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    KeyAt { plugin, namespace, store, key }: KeyAt,
) -> Result<Json<serde_json::Value>, AppError> {
    let kv = state.dispatcher.store();
    let existed = kv.kv_get(&namespace, &store, &key).await?.is_some();
    if existed {
        kv.write_kv(vec![KvWrite { namespace, store: store.clone(), key: key.clone(), change: KvChange::Delete }]).await?;
        tracing::info!(plugin = %plugin, key = %key, "kv key deleted by hand");
    }
    Ok(Json(serde_json::json!({ "key": key, "store": store, "deleted": existed })))
}
