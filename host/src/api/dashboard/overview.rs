//! The overview at `/`: the caller's queues by state, with runs and
//! failures of the last hour and how long the oldest due job has waited,
//! and charts of runs and queue delay per minute.

use super::layout::{Chrome, Done, Viewer, ago, error_page, page};
use crate::api::error::AppError;
use crate::api::state::AppState;
use crate::queue::{JobState, Millis};
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{StatusCode};
use axum::response::{Response};
use super::chart;

pub(super) struct QueueRow {
    pub(super) name: String,
    pub(super) paused: bool,
    pub(super) counts: Vec<(&'static str, u64)>,
    pub(super) runs_last_hour: u64,
    pub(super) failures_last_hour: u64,
    pub(super) oldest_waiting: Option<String>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    states: Vec<&'static str>,
    queues: Vec<QueueRow>,
    throughput_svg: String,
    delay_svg: String,
    runs_last_hour: u64,
    failures_last_hour: u64,
    delay_avg_ms: String,
}

pub(super) async fn overview(State(state): State<AppState>, viewer: Viewer, Query(done): Query<Done>) -> Response {
    match overview_page(&state, &viewer, done.done.as_deref()).await {
        Ok(page) => page,
        Err(e) => error_page(Some(&viewer), e),
    }
}

async fn overview_page(state: &AppState, viewer: &Viewer, done: Option<&str>) -> Result<Response, AppError> {
    let caller = viewer.caller();
    let now = state.service.now();
    let since = now - now.rem_euclid(crate::worker::run_minutes::MINUTE_MS) - (chart::MINUTES as Millis - 1) * crate::worker::run_minutes::MINUTE_MS;
    // The caller's own kinds only: the service leaves out the rest.
    let rows = state.service.minutes(caller, since).await?;
    let all = chart::minutes(&rows, now, |_| true);
    let views = state.service.queues(caller).await?;
    let queues = views
        .into_iter()
        .map(|q| {
            let of_queue = chart::minutes(&rows, now, |r| r.queue == q.name);
            QueueRow {
                counts: q.jobs.iter().map(|(s, n)| (s.as_str(), *n)).collect(),
                runs_last_hour: of_queue.iter().map(|m| m.runs).sum(),
                failures_last_hour: of_queue.iter().map(|m| m.failures).sum(),
                oldest_waiting: q.oldest_waiting_ms.map(|ms| ago(now, now - ms).trim_end_matches(" ago").to_string()),
                name: q.name,
                paused: q.paused,
            }
        })
        .collect();
    let runs: u64 = all.iter().map(|m| m.runs).sum();
    let delay_sum: i64 = all.iter().map(|m| m.delay_ms_sum).sum();
    Ok(page(
        StatusCode::OK,
        &OverviewPage {
            chrome: viewer.chrome("overview", done),
            states: JobState::ALL.iter().map(|s| s.as_str()).collect(),
            queues,
            throughput_svg: chart::throughput(&all),
            delay_svg: chart::queue_delay(&all),
            runs_last_hour: runs,
            failures_last_hour: all.iter().map(|m| m.failures).sum(),
            delay_avg_ms: if runs == 0 { "–".into() } else { format!("{:.1} ms", delay_sum as f64 / runs as f64) },
        },
    ))
}
