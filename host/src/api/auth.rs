//! Authentication: with API keys configured (`[admin] api_keys`,
//! `[tenants.NAME] api_keys`), every call but the health probes must carry
//! one (`Authorization: Bearer KEY`), or it is refused with 401 before any
//! handler runs; the handler gets the [`Caller`] the key belongs to. Keys
//! are checked against their hashes in constant time, every configured
//! hash each time; refusals are logged with the route (and the tenant,
//! for a tenant reaching for what is not its own), at most one line a
//! second (with how many were not logged), so a client hammering with bad
//! keys cannot fill the host's log.

use super::error::AppError;
use crate::tenant::{Caller, KeyRing};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Routes a load balancer or supervisor probes without a key.
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

/// Who may call the API.
#[derive(Debug, Clone, Default)]
pub struct Access {
    keys: KeyRing,
    refusals: Arc<RefusalLog>,
}

#[derive(Debug, Default)]
struct RefusalLog {
    /// When a refusal was last logged, in ms since the epoch.
    last_logged_ms: AtomicI64,
    /// Refusals since then that were not.
    unlogged: AtomicU64,
}

impl Access {
    pub fn new(keys: KeyRing) -> Self {
        Self { keys, refusals: Arc::default() }
    }

    /// No keys configured: whoever reaches the socket may do everything.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Who `key` belongs to, if anyone (the dashboard's login).
    pub fn identify(&self, key: &str) -> Option<Caller> {
        self.keys.identify(key)
    }

    /// Logs a refused call (rate-limited, see the module).
    pub fn note_refusal(&self, method: &http::Method, path: &str, tenant: Option<&str>, why: &str) {
        let now = crate::queue::Clock::now(&crate::queue::SystemClock);
        let last = self.refusals.last_logged_ms.load(Ordering::Relaxed);
        if now - last >= 1000 && self.refusals.last_logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let unlogged = self.refusals.unlogged.swap(0, Ordering::Relaxed);
            let tenant = tenant.unwrap_or("-");
            tracing::warn!(%method, route = %path, %tenant, unlogged_since_last = unlogged, "API call refused: {why}");
        } else {
            self.refusals.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The key a request carries, if it carries one as a bearer token.
fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// The check above, as a middleware.
pub async fn authenticate(State(access): State<Access>, mut request: Request, next: Next) -> Response {
    if access.is_open() || OPEN_PATHS.contains(&request.uri().path()) {
        request.extensions_mut().insert(Caller::Admin);
        return next.run(request).await;
    }
    // The dashboard's pages check their own session cookie, never a bearer key.
    if super::dashboard::paths::is_dashboard_path(request.uri().path()) {
        return next.run(request).await;
    }
    let why = match bearer(&request).map(|key| access.keys.identify(key)) {
        Some(Some(caller)) => {
            request.extensions_mut().insert(caller);
            return next.run(request).await;
        }
        Some(None) => "the key is not one this host knows",
        None if request.headers().contains_key(header::AUTHORIZATION) => "the Authorization header is not `Bearer KEY`",
        None => "no API key (send `Authorization: Bearer KEY`; the CLI reads KILN_API_KEY)",
    };
    access.note_refusal(request.method(), request.uri().path(), None, why);
    let mut response = AppError::Unauthorized(format!("unauthorized: {why}")).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"kiln\""));
    response
}
