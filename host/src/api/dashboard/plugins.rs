//! Plugins: each live plugin of the caller's with its versions (the
//! serving one marked, where each came from, who signed it), and rolling
//! one back to the version before.

use super::layout::{Action, Chrome, Done, Viewer, error_page, page};
use crate::api::error::AppError;
use crate::api::state::AppState;
use crate::queue::{to_rfc3339};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

struct VersionRow {
    version: String,
    version_id: String,
    activated: String,
    source: String,
    signed_by: String,
    active: bool,
}

struct PluginRow {
    name: String,
    version: String,
    trigger: String,
    description: String,
    versions: Vec<VersionRow>,
}

#[derive(Template)]
#[template(path = "plugins.html")]
struct PluginsPage {
    chrome: Chrome,
    plugins: Vec<PluginRow>,
}

pub(super) async fn plugins(State(state): State<AppState>, viewer: Viewer, Query(done): Query<Done>) -> Response {
    let caller = viewer.caller().clone();
    let registry = state.registry.clone();
    let rows = tokio::task::spawn_blocking(move || {
        registry
            .snapshot()
            .values()
            .filter(|p| caller.owns(&p.kind))
            .map(|p| PluginRow {
                name: caller.name_of(&p.kind).to_string(),
                version: p.manifest.version.clone(),
                trigger: p.manifest.trigger.describe(),
                description: p.manifest.description.clone(),
                versions: registry
                    .versions(&p.kind)
                    .into_iter()
                    .map(|v| VersionRow {
                        version: v.version,
                        version_id: v.version_id,
                        activated: to_rfc3339(v.activated_at),
                        source: crate::plugin::trigger::as_written(&v.source),
                        signed_by: v.signed_by.unwrap_or_default(),
                        active: v.active,
                    })
                    .collect(),
            })
            .collect::<Vec<_>>()
    })
    .await;
    match rows {
        Ok(plugins) => page(StatusCode::OK, &PluginsPage { chrome: viewer.chrome("plugins", done.done.as_deref()), plugins }),
        Err(e) => error_page(Some(&viewer), AppError::Internal(e.to_string())),
    }
}

pub(super) async fn rollback(State(state): State<AppState>, Path(name): Path<String>, form: Action) -> Response {
    match crate::api::plugins::rollback_one(&state, form.viewer.caller(), &name).await {
        Ok(_) => Redirect::to("/ui/plugins?done=rolled-back").into_response(),
        Err(e) => error_page(Some(&form.viewer), e),
    }
}
