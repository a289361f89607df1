//! Schedules: each of the caller's scheduled plugins with its cron line or
//! interval, its last tick (and whether it still runs) and its next.

use super::layout::{Chrome, Viewer, ago, error_page, page};
use crate::api::error::AppError;
use crate::api::state::AppState;
use crate::queue::{to_rfc3339};
use askama::Template;
use axum::extract::{State};
use axum::http::{StatusCode};
use axum::response::{Response};

struct ScheduleRow {
    name: String,
    when: String,
    last_tick: String,
    next_tick: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    chrome: Chrome,
    schedules: Vec<ScheduleRow>,
}

pub(super) async fn schedules(State(state): State<AppState>, viewer: Viewer) -> Response {
    let result = async {
        let caller = viewer.caller();
        let now = state.service.now();
        let snapshot = state.registry.snapshot();
        let mut schedules = Vec::new();
        for p in snapshot.values().filter(|p| caller.owns(&p.kind)) {
            let crate::plugin::Trigger::Schedule(s) = &p.manifest.trigger else { continue };
            let st = state.service.schedule_state(caller, &p.kind).await?;
            schedules.push(ScheduleRow {
                name: caller.name_of(&p.kind).to_string(),
                when: s.when.to_string(),
                last_tick: st.last_tick.map(|t| format!("{} ({})", to_rfc3339(t), ago(now, t))).unwrap_or_else(|| "never".into()),
                next_tick: s.when.next_after(now).map(to_rfc3339).unwrap_or_else(|| "none".into()),
                active: st.active,
            });
        }
        Ok::<_, AppError>(page(StatusCode::OK, &SchedulesPage { chrome: viewer.chrome("schedules", None), schedules }))
    }
    .await;
    result.unwrap_or_else(|e| error_page(Some(&viewer), e))
}
