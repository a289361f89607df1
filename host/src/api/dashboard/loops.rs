//! Loops: each of the caller's continuous plugins with its passes, its
//! checkpoint, and the host that holds it until when.

use super::layout::{Chrome, Viewer, ago, error_page, page, shorten};
use crate::api::error::AppError;
use crate::api::state::AppState;
use crate::api::views::{bytes_value};
use crate::queue::{to_rfc3339};
use askama::Template;
use axum::extract::{State};
use axum::http::{StatusCode};
use axum::response::{Response};

struct LoopRow {
    name: String,
    passes: u64,
    checkpoint: String,
    held_by: String,
    lease_expires: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "loops.html")]
struct LoopsPage {
    chrome: Chrome,
    loops: Vec<LoopRow>,
}

pub(super) async fn loops(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let caller = viewer.caller();
        let now = state.service.now();
        let loops = state
            .service
            .loops(caller)
            .await?
            .into_iter()
            .map(|l| LoopRow {
                name: caller.name_of(&l.name).to_string(),
                passes: l.passes,
                checkpoint: l.checkpoint.as_deref().map(|c| shorten(&bytes_value(c).to_string(), 400)).unwrap_or_default(),
                held_by: l.owner.unwrap_or_else(|| "nobody".into()),
                lease_expires: l.lease_expires_at.map(to_rfc3339).unwrap_or_default(),
                updated: ago(now, l.updated_at),
            })
            .collect();
        Ok::<_, AppError>(page(StatusCode::OK, &LoopsPage { chrome: viewer.chrome("loops", None), loops }))
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&viewer), e))
}
