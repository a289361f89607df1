//! Signing in with an API key (kept as a session in an `HttpOnly`,
//! `SameSite=Strict` cookie) and out. A host with no keys is open: the
//! login page opens an operator's session without asking.

use super::layout::{Action, page};
use crate::api::state::AppState;
use crate::tenant::Caller;
use askama::Template;
use axum::extract::{State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use super::layout::{form_body, form_fields};
use super::session;
use axum::extract::FromRequest;
use axum::extract::Request;

/// Longest API key the login form takes.
const MAX_KEY_BYTES: usize = 1024;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

pub(super) async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.sessions.of(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    if state.access.is_open() {
        return signed_in(&state, Caller::Admin, &headers);
    }
    page(StatusCode::OK, &LoginPage { error: None })
}

fn signed_in(state: &AppState, caller: Caller, request: &HeaderMap) -> Response {
    let (id, _) = state.sessions.open(caller);
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session::set_cookie(&id, request));
    response
}

pub(super) async fn login(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers().clone();
    let body = match form_body(request).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let fields = form_fields(&body);
    let key = fields.iter().find(|(k, _)| k == "key").map_or("", |(_, v)| v.trim());
    let refuse = |why: &str| {
        state.access.note_refusal(&http::Method::POST, "/login", None, why);
        page(StatusCode::UNAUTHORIZED, &LoginPage { error: Some(format!("Not signed in: {why}.")) })
    };
    if key.is_empty() {
        return refuse("no key was given");
    }
    if key.len() > MAX_KEY_BYTES {
        return refuse(&format!("the key is over {MAX_KEY_BYTES} bytes, so it is none this host knows"));
    }
    match state.access.identify(key) {
        Some(caller) => {
            tracing::info!(tenant = caller.tenant().unwrap_or("-"), "dashboard login");
            signed_in(&state, caller, &headers)
        }
        None => refuse("the key is not one this host knows"),
    }
}

pub(super) async fn logout(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers().clone();
    let action = match Action::from_request(request, &state).await {
        Ok(action) => action,
        Err(refused) => return refused,
    };
    drop(action);
    state.sessions.close(&headers);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session::clear_cookie());
    response
}
