//! What every page shares: the HTML answer with its headers, the chrome
//! around each page (who is logged in, the nav, the notice of the last
//! action), the logged-in viewer and its CSRF-checked forms, the error
//! page, and the small formatting helpers.

use super::session::Session;
use crate::api::error::AppError;
use crate::api::state::AppState;
use crate::queue::Millis;
use crate::tenant::Caller;
use askama::Template;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{Html, IntoResponse, Redirect, Response};

/// Largest form a dashboard action takes (a bulk form lists its ids).
pub const MAX_FORM_BYTES: usize = 256 << 10;

/// A page's answer: HTML, with headers that keep it out of frames and caches.
pub(super) fn page(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = (status, Html(html)).into_response();
            let h = response.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert("x-frame-options", HeaderValue::from_static("DENY"));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"),
            );
            h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
            response
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("the page did not render: {e}")).into_response(),
    }
}

/// What every page shows around its content.
#[derive(Debug)]
pub struct Chrome {
    /// `operator` or the tenant's name.
    pub who: String,
    pub is_operator: bool,
    pub csrf: String,
    /// The nav entry of this page.
    pub active: &'static str,
    /// What the last action did (`?done=`), in words the dashboard chose.
    pub notice: Option<String>,
}

/// The logged-in browser a page is for. Without a session: to the login page.
#[derive(Debug)]
pub struct Viewer {
    pub(super) session: Session,
}

impl Viewer {
    pub(super) fn caller(&self) -> &Caller {
        &self.session.caller
    }

    pub(super) fn chrome(&self, active: &'static str, done: Option<&str>) -> Chrome {
        Chrome {
            who: self.caller().tenant().map_or_else(|| "operator".to_string(), str::to_string),
            is_operator: *self.caller() == Caller::Admin,
            csrf: self.session.csrf.clone(),
            active,
            notice: done.and_then(notice),
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match state.sessions.of(&parts.headers) {
            Some(session) => Ok(Viewer { session }),
            None => Err(Redirect::to("/login").into_response()),
        }
    }
}

/// A form posted by a logged-in browser, its CSRF token checked.
#[derive(Debug)]
pub struct Action {
    pub(super) viewer: Viewer,
    pub(super) fields: Vec<(String, String)>,
}

impl Action {
    pub(super) fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

pub(super) fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

pub(super) async fn form_body(request: Request) -> Result<Bytes, Response> {
    axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES)
        .await
        .map_err(|_| error_page(None, AppError::PayloadTooLarge(format!("a dashboard form is at most {MAX_FORM_BYTES} bytes"))))
}

impl FromRequest<AppState> for Action {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let body = form_body(Request::from_parts(parts, body)).await?;
        let fields = form_fields(&body);
        let sent = fields.iter().find(|(k, _)| k == "csrf").map_or("", |(_, v)| v.as_str());
        if !viewer.session.csrf_matches(sent) {
            return Err(error_page(Some(&viewer), AppError::Forbidden("the form's CSRF token is missing or not this session's: reload the page and try again".into())));
        }
        Ok(Action { viewer, fields })
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Option<Chrome>,
    status: u16,
    message: String,
}

pub(super) fn error_page(viewer: Option<&Viewer>, e: AppError) -> Response {
    let status = e.status();
    page(status, &ErrorPage { chrome: viewer.map(|v| v.chrome("", None)), status: status.as_u16(), message: e.to_string() })
}

/// The words for `?done=`: only these are shown, so a link cannot put its own text on the page.
pub(super) fn notice(done: &str) -> Option<String> {
    let (what, n) = done.split_once(':').unwrap_or((done, ""));
    let n: Option<u64> = n.parse().ok();
    Some(match (what, n) {
        ("retried", None) => "Retried: the job is due now.".into(),
        ("discarded", None) => "Discarded: the job is deleted.".into(),
        ("cancelled", None) => "Cancel asked: a waiting job is cancelled, a running one is told to stop.".into(),
        ("paused", None) => "Queue paused.".into(),
        ("resumed", None) => "Queue resumed.".into(),
        ("rolled-back", None) => "Rolled back: the previous version serves.".into(),
        ("bulk-retried", Some(n)) => format!("Retried {n} dead jobs."),
        ("bulk-discarded", Some(n)) => format!("Discarded {n} dead jobs."),
        ("bulk-skipped", Some(n)) => format!("{n} jobs were left as they were (they changed meanwhile, or their unique key is taken)."),
        _ => return None,
    })
}

pub(super) fn ago(now: Millis, at: Millis) -> String {
    let secs = (now - at).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

pub(super) fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}


/// `?done=`: what the last action did, for the notice.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Done {
    pub(super) done: Option<String>,
}

/// A form field or query value, trimmed; empty is none.
pub(super) fn blank_is_none(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
