//! The dashboard `kiln serve` serves at `/`: server-rendered pages
//! (askama templates compiled into the binary, its CSS and a few lines of
//! script built in too, nothing fetched from elsewhere) over the same
//! calls the JSON API makes. It shows and acts within the logged-in
//! caller's reach: a tenant sees its own jobs and plugins only, and
//! another tenant's job is "not found", as in the API.
//!
//! One file per page, sharing one layout (`layout`): the overview
//! (queues by state, runs and queue delay over the last hour), jobs (by
//! state, kind, queue, or an id, and the dead letters' bulk form), a job
//! (payload, result, every attempt, its logs, its actions), queues (pause,
//! resume), plugins (versions, roll back), schedules (last and next tick)
//! and loops (checkpoint, holder); `login` signs in and out.
//!
//! Login takes an API key and keeps a session id in an `HttpOnly`,
//! `SameSite=Strict` cookie ([`session`]); every form carries the
//! session's CSRF token, and the browser guard's origin check holds for
//! forms as for the API. A host with no keys is open, as its API is: the
//! login page opens an operator's session without asking.

pub mod chart;
mod job;
mod jobs;
mod layout;
mod login;
mod loops;
mod overview;
pub mod paths;
mod plugins;
mod queues;
mod schedules;
pub mod session;

pub use job::PAGE_LOG_BYTES;
pub use jobs::JOBS_PER_PAGE;
pub use layout::MAX_FORM_BYTES;

use crate::api::state::AppState;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview::overview))
        .route("/login", get(login::login_page).post(login::login))
        .route("/logout", post(login::logout))
        .route("/ui/jobs", get(jobs::jobs))
        .route("/ui/jobs/bulk", post(jobs::bulk))
        .route("/ui/jobs/{id}", get(job::job))
        .route("/ui/jobs/{id}/{action}", post(job::job_action))
        .route("/ui/queues", get(queues::queues))
        .route("/ui/queues/{name}/{action}", post(queues::queue_action))
        .route("/ui/plugins", get(plugins::plugins))
        .route("/ui/plugins/{name}/rollback", post(plugins::rollback))
        .route("/ui/schedules", get(schedules::schedules))
        .route("/ui/loops", get(loops::loops))
        .route("/ui/assets/kiln.css", get(|| asset("text/css; charset=utf-8", include_str!("assets/kiln.css"))))
        .route("/ui/assets/kiln.js", get(|| asset("text/javascript; charset=utf-8", include_str!("assets/kiln.js"))))
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=3600")], body).into_response()
}


#[cfg(test)]
mod tests {
    use super::layout::{notice, shorten};

    #[test]
    fn only_the_dashboards_own_words_are_shown_as_notices() {
        assert_eq!(notice("bulk-retried:3").as_deref(), Some("Retried 3 dead jobs."));
        assert!(notice("retried").is_some());
        for foreign in ["<script>", "bulk-retried:x", "retried:1", "Hello, you won"] {
            assert_eq!(notice(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn long_text_is_cut_on_a_character() {
        assert_eq!(shorten("héllo wörld", 5), "héllo…");
        assert_eq!(shorten("short", 10), "short");
    }
}
