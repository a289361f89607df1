//! The kv routes, for operators: list, read, write and delete the keys of
//! a plugin's stores (`GET /plugins/{name}/kv`, `GET|PUT|DELETE
//! /plugins/{name}/kv/{key}`), with the same bounds a plugin has (held
//! by the worker's `JobService`).

use super::error::AppError;
use super::state::AppState;
use crate::capability::kv::PAGE_KEYS;
use crate::worker::JobService;
use crate::worker::service::kv::KvStore;
use axum::Json;
use axum::extract::{Extension, FromRequestParts, Path, Query, State};
use crate::tenant::Caller;
use axum::http::request::Parts;
use base64::Engine as _;
use super::views::ErrorBody;
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

/// One key of one plugin's store, from the path and `?store=`, checked:
/// a plugin this host serves, a store it has, a key within the bound.
pub struct KeyAt {
    plugin: String,
    at: KvStore,
    key: String,
}

impl FromRequestParts<AppState> for KeyAt {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Path((plugin, key)) =
            Path::<(String, String)>::from_request_parts(parts, state).await.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let Query(q) = Query::<KeyQuery>::from_request_parts(parts, state).await.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let caller = parts.extensions.get::<Caller>().cloned().unwrap_or(Caller::Admin);
        let at = state.service.kv_store(&caller, &plugin, q.store)?;
        JobService::check_kv_key(&key)?;
        Ok(Self { plugin, at, key })
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
    let plugin = super::request::path_of(plugin)?;
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let at = state.service.kv_store(&caller, &plugin, q.store)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > PAGE_KEYS {
        return Err(AppError::BadRequest(format!("limit must be between 1 and {PAGE_KEYS}")));
    }
    let page = state.service.kv_page(&at, &q.prefix, q.offset, limit).await?;
    let entries: Vec<serde_json::Value> = page.entries.iter().map(|(key, value)| value_json(key, value)).collect();
    let (store, next_offset, bytes) = (at.store, page.next_offset, page.store_bytes);
    Ok(Json(serde_json::json!({ "plugin": plugin, "store": store, "entries": entries, "next_offset": next_offset, "store_bytes": bytes })))
}

/// `GET /plugins/{name}/kv/{key}?store=`.
#[utoipa::path(get, path = "/plugins/{name}/kv/{key}", tag = "kv", params(("name" = String, Path, description = "A live plugin"), ("key" = String, Path, description = "The key"), KeyQuery),
    responses((status = 200, description = "The key's value", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    KeyAt { plugin, at, key }: KeyAt,
) -> Result<Json<serde_json::Value>, AppError> {
    match state.service.kv_get(&at, &key).await? {
        Some(value) => Ok(Json(value_json(&key, &value))),
        None => Err(AppError::NotFound(format!("no key {key:?} in store {:?} of plugin {plugin:?}", at.store))),
    }
}

/// `PUT /plugins/{name}/kv/{key}?store=` with `{"value": TEXT}` or
/// `{"value_base64": B64}`; held to the value bound and the store's quota.
#[utoipa::path(put, path = "/plugins/{name}/kv/{key}", tag = "kv", params(("name" = String, Path, description = "A live plugin"), ("key" = String, Path, description = "The key"), KeyQuery), request_body = SetRequest,
    responses((status = 200, description = "Set", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody), (status = 413, description = "Over a size limit", body = ErrorBody)))]
pub async fn set(
    State(state): State<AppState>,
    KeyAt { at, key, .. }: KeyAt,
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
    let answer = value_json(&key, &value);
    state.service.kv_set(&at, &key, value).await?;
    Ok(Json(answer))
}

/// `DELETE /plugins/{name}/kv/{key}?store=`.
#[utoipa::path(delete, path = "/plugins/{name}/kv/{key}", tag = "kv", params(("name" = String, Path, description = "A live plugin"), ("key" = String, Path, description = "The key"), KeyQuery),
    responses((status = 200, description = "`deleted`: whether it was there", body = serde_json::Value), (status = 400, description = "Bad input, named", body = ErrorBody), (status = 401, description = "No or a wrong API key", body = ErrorBody), (status = 404, description = "Not found (or another tenant's)", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    KeyAt { at, key, .. }: KeyAt,
) -> Result<Json<serde_json::Value>, AppError> {
    let existed = state.service.kv_delete(&at, &key).await?;
    Ok(Json(serde_json::json!({ "key": key, "store": at.store, "deleted": existed })))
}
