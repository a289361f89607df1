//! Keeps web pages from driving the API through a visitor's browser. A
//! host may run without API keys (on loopback, see `auth`), so three
//! checks close the browser's ways in:
//!
//! - `Host` must be `localhost`, an IP address or a name in
//!   `http.allowed_hosts`: a DNS-rebinding page reaches a loopback host
//!   under its own domain name, and is refused (421).
//! - An `Origin`, which browsers send on every cross-origin request and on
//!   every POST, must be the API's own (`Host`): a page elsewhere is
//!   refused (403), whatever it sends.
//! - A request body must be `application/json` (415): the only bodies a
//!   page may send cross-origin without the browser asking first are
//!   form and text types. The dashboard's own forms (POSTs to its paths)
//!   are the exception, held by their CSRF token and the origin check.
//!
//! No CORS headers are ever sent, so a browser's preflight fails.

use super::error::AppError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The names, besides `localhost` and IP addresses, this API answers to.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Arc<Vec<String>>);

impl AllowedHosts {
    pub fn new(names: &[String]) -> Self {
        Self(Arc::new(names.iter().map(|n| n.to_ascii_lowercase()).collect()))
    }

    fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok() || self.0.iter().any(|a| *a == host)
    }
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`).
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(host, port)| if port.bytes().all(|b| b.is_ascii_digit()) { host } else { authority })
}

fn header_text<'a>(headers: &'a HeaderMap, name: header::HeaderName) -> Result<Option<&'a str>, AppError> {
    headers
        .get(&name)
        .map(|v| v.to_str().map_err(|_| AppError::BadRequest(format!("the {name} header is not text"))))
        .transpose()
}

/// The checks above, for one request.
pub fn check(allowed: &AllowedHosts, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), AppError> {
    let form_path = super::dashboard::paths::is_dashboard_path(path) && *method == Method::POST;
    let host = header_text(headers, header::HOST)?;
    if let Some(host) = host {
        if !allowed.allows(host_part(host)) {
            return Err(AppError::MisdirectedRequest(format!(
                "this API does not answer to Host {host:?}: it answers to localhost, IP addresses{}; \
                 add the name to http.allowed_hosts in kiln.toml to serve it",
                if allowed.0.is_empty() { String::new() } else { format!(" and {}", allowed.0.join(", ")) }
            )));
        }
    }
    if let Some(origin) = header_text(headers, header::ORIGIN)? {
        let own = host.is_some_and(|host| origin.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)));
        if !own {
            return Err(AppError::Forbidden(format!(
                "cross-origin request from {origin:?} refused: the API serves no web pages of other origins"
            )));
        }
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || header_text(headers, header::CONTENT_LENGTH)?.is_some_and(|length| length.trim() != "0");
    // The dashboard's forms are form bodies: its session cookie is
    // SameSite=Strict, each form carries the session's CSRF token, and the
    // Origin check above holds for them too.
    if has_body && matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) && !form_path {
        let kind = header_text(headers, header::CONTENT_TYPE)?.unwrap_or("");
        let essence = kind.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            let sent = if kind.is_empty() { "no Content-Type".to_string() } else { format!("Content-Type {kind:?}") };
            return Err(AppError::UnsupportedMediaType(format!("request bodies must be Content-Type application/json; got {sent}")));
        }
    }
    Ok(())
}

/// The middleware form of [`check`].
pub async fn guard(State(allowed): State<AllowedHosts>, request: Request, next: Next) -> Response {
    match check(&allowed, request.method(), request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            tracing::warn!(method = %request.method(), path = %request.uri().path(), "request refused: {refused}");
            refused.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn host_names_other_than_local_and_allowed_are_refused() {
        let allowed = AllowedHosts::new(&["Kiln.internal".into()]);
        for ok in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "10.0.0.7", "kiln.internal:80"] {
            assert!(check(&allowed, &Method::GET, "/jobs", &headers(&[(header::HOST, ok)])).is_ok(), "{ok}");
        }
        for bad in ["evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io:8080", "kiln.internal.evil"] {
            let e = check(&allowed, &Method::GET, "/jobs", &headers(&[(header::HOST, bad)])).unwrap_err();
            assert!(matches!(e, AppError::MisdirectedRequest(_)), "{bad}: {e}");
        }
        assert!(check(&allowed, &Method::GET, "/jobs", &HeaderMap::new()).is_ok(), "no Host: not a browser");
    }

    #[test]
    fn only_the_apis_own_origin_passes() {
        let allowed = AllowedHosts::default();
        let with = |origin: &str| headers(&[(header::HOST, "127.0.0.1:8080"), (header::ORIGIN, origin)]);
        assert!(check(&allowed, &Method::POST, "/jobs", &with("http://127.0.0.1:8080")).is_ok());
        for bad in ["http://evil.example", "http://127.0.0.1:9999", "null", "http://1.2.3.4"] {
            assert!(matches!(check(&allowed, &Method::POST, "/jobs", &with(bad)), Err(AppError::Forbidden(_))), "{bad}");
        }
    }

    #[test]
    fn bodies_must_be_json() {
        let allowed = AllowedHosts::default();
        let body = |kind: Option<&str>| {
            let mut h = headers(&[(header::CONTENT_LENGTH, "2")]);
            if let Some(kind) = kind {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_str(kind).unwrap());
            }
            h
        };
        assert!(check(&allowed, &Method::POST, "/jobs", &body(Some("application/json"))).is_ok());
        assert!(check(&allowed, &Method::PUT, "/jobs", &body(Some("Application/JSON; charset=utf-8"))).is_ok());
        for bad in [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x"), None] {
            assert!(matches!(check(&allowed, &Method::POST, "/jobs", &body(bad)), Err(AppError::UnsupportedMediaType(_))), "{bad:?}");
        }
        assert!(check(&allowed, &Method::POST, "/jobs", &headers(&[(header::CONTENT_LENGTH, "0")])).is_ok(), "no body, nothing to type");
        assert!(check(&allowed, &Method::GET, "/jobs", &body(Some("text/plain"))).is_ok());
        // The dashboard's forms, and only they, may post form bodies.
        let form = Some("application/x-www-form-urlencoded");
        assert!(check(&allowed, &Method::POST, "/ui/jobs/bulk", &body(form)).is_ok());
        assert!(check(&allowed, &Method::POST, "/login", &body(form)).is_ok());
        assert!(matches!(check(&allowed, &Method::PUT, "/ui/jobs/bulk", &body(form)), Err(AppError::UnsupportedMediaType(_))));
    }
}
