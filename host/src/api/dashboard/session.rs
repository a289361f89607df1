//! Dashboard sessions: a login with an API key (the operator's or a
//! tenant's) becomes a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie; the key itself never reaches the browser
//! again. Each session carries its own CSRF token, which every form of
//! the dashboard sends back and every action checks in constant time.
//!
//! Sessions live in this host's memory: they end when the host stops,
//! after [`SESSION_TTL`], or at logout, and a host behind a load balancer
//! wants sticky sessions (or a login per host). At most [`MAX_SESSIONS`]
//! are held; past that the oldest goes.

use crate::tenant::Caller;
use axum::http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie that carries the session id.
pub const COOKIE: &str = "kiln_session";
/// How long a session lasts from its login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions a host holds at once.
pub const MAX_SESSIONS: usize = 10_000;
/// Bytes of randomness in a session id and in a CSRF token.
const TOKEN_BYTES: usize = 32;

/// A logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// Sent back by every form; see [`Session::csrf_matches`].
    pub csrf: String,
    expires: Instant,
}

impl Session {
    /// Whether a form's token is this session's, compared in constant time.
    pub fn csrf_matches(&self, sent: &str) -> bool {
        use subtle::ConstantTimeEq;
        sent.len() == self.csrf.len() && bool::from(sent.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// Every session of this host, by the hash of its id (the ids themselves
/// are not kept, so a heap dump holds no usable cookie).
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    by_id_hash: Arc<Mutex<HashMap<[u8; 32], Session>>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random source answers");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn id_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// A new session for `caller`; returns its id (the cookie's value).
    pub fn open(&self, caller: Caller) -> (String, Session) {
        let id = random_token();
        let session = Session { caller, csrf: random_token(), expires: Instant::now() + SESSION_TTL };
        let mut all = self.by_id_hash.lock().expect("poisoned");
        if all.len() >= MAX_SESSIONS {
            let now = Instant::now();
            all.retain(|_, s| s.expires > now);
        }
        if all.len() >= MAX_SESSIONS {
            if let Some(oldest) = all.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                all.remove(&oldest);
            }
        }
        all.insert(id_hash(&id), session.clone());
        (id, session)
    }

    /// The live session a request's cookie names.
    pub fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie_value(headers, COOKIE)?;
        let hash = id_hash(id);
        let mut all = self.by_id_hash.lock().expect("poisoned");
        match all.get(&hash) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                all.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Ends the session a request's cookie names.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie_value(headers, COOKIE) {
            self.by_id_hash.lock().expect("poisoned").remove(&id_hash(id));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id_hash.lock().unwrap().len()
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value that gives the browser session `id`. `Secure`
/// is added when the request came over HTTPS through a proxy that says so.
pub fn set_cookie(id: &str, request: &HeaderMap) -> HeaderValue {
    let secure = request.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let value = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&value).expect("a hex id makes a valid header")
}

/// The `Set-Cookie` value that ends the browser's session.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_str(&format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")).expect("valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends_at_logout() {
        let sessions = Sessions::default();
        let (id, opened) = sessions.open(Caller::Tenant("acme".into()));
        assert_eq!(id.len(), 64);
        let found = sessions.of(&with_cookie(&format!("theme=dark; {COOKIE}={id}; x=1"))).expect("found");
        assert_eq!(found.caller, Caller::Tenant("acme".into()));
        assert!(found.csrf_matches(&opened.csrf));
        assert!(!found.csrf_matches(&opened.csrf[1..]));
        assert!(!found.csrf_matches(&"0".repeat(64)) || opened.csrf == "0".repeat(64));
        assert!(sessions.of(&with_cookie(&format!("{COOKIE}={}", &id[1..]))).is_none(), "a wrong id is no session");
        assert!(sessions.of(&HeaderMap::new()).is_none());
        sessions.close(&with_cookie(&format!("{COOKIE}={id}")));
        assert!(sessions.of(&with_cookie(&format!("{COOKIE}={id}"))).is_none());
    }

    #[test]
    fn ids_and_tokens_differ_and_the_count_is_bounded() {
        let sessions = Sessions::default();
        let (a, sa) = sessions.open(Caller::Admin);
        let (b, sb) = sessions.open(Caller::Admin);
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        for _ in 0..MAX_SESSIONS + 5 {
            sessions.open(Caller::Admin);
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let set = set_cookie("ab", &HeaderMap::new());
        let text = set.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict") && !text.contains("Secure"), "{text}");
        let mut proxied = HeaderMap::new();
        proxied.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(set_cookie("ab", &proxied).to_str().unwrap().ends_with("; Secure"));
        assert!(clear_cookie().to_str().unwrap().contains("Max-Age=0"));
    }
}
