//! The local services the bundled examples talk to when a host's config
//! names no real ones: a mail API for `send-email` (`POST /mail`, behind a
//! bearer token) and an endless feed for `poller` (`GET /feed?after=N`).
//! They let the README's first screen do real HTTP with nothing but Kiln
//! running. They listen on a loopback port of their own (never the API's,
//! so no plugin reaches the admin API through them), and the host grants
//! them only to the components it ships ([`ExampleGrant`]).

use crate::capability::{ExampleGrant, HostCapabilities, HttpOrigin};
use axum::Json;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The config keys the examples read, and what they default to here.
pub const MAIL_API_URL: &str = "mail_api_url";
pub const MAIL_API_KEY: &str = "mail_api_key";
pub const FEED_URL: &str = "feed_url";

/// Mails the sink keeps for `GET /mail`, newest last.
pub const KEPT_MAILS: usize = 100;
/// The largest mail request the sink reads.
pub const MAX_MAIL_BYTES: usize = 64 * 1024;
/// The most items one feed page has.
pub const MAX_FEED_PAGE: u64 = 100;

/// One mail, as `send-email` posts it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    #[serde(default)]
    pub body: String,
}

#[derive(Serialize)]
struct Accepted {
    id: u64,
}

#[derive(Default)]
struct Outbox {
    sent: u64,
    kept: VecDeque<(u64, Mail)>,
}

#[derive(Clone)]
struct Shared {
    /// What `Authorization: Bearer` must carry.
    token: Arc<str>,
    outbox: Arc<Mutex<Outbox>>,
}

/// The running services; they stop when this is dropped.
pub struct ExampleServices {
    address: std::net::SocketAddr,
    token: String,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ExampleServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExampleServices").field("address", &self.address).finish_non_exhaustive()
    }
}

impl Drop for ExampleServices {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ExampleServices {
    /// Binds 127.0.0.1 on a free port and serves there. Must be called on
    /// a tokio runtime.
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        // A key like any API key: random, and the host's alone.
        let token = crate::tenant::new_key()?;
        let shared = Shared { token: token.as_str().into(), outbox: Arc::default() };
        let app = axum::Router::new()
            .route("/mail", post(send_mail).get(list_mail))
            .route("/feed", get(feed))
            .layer(DefaultBodyLimit::max(MAX_MAIL_BYTES))
            .with_state(shared);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("the example services stopped: {e}");
            }
        });
        Ok(Self { address, token, task })
    }

    pub fn origin(&self) -> HttpOrigin {
        format!("http://{}", self.address).parse().expect("a loopback address is an origin")
    }

    /// Lends the services to the examples `host` ships: their origin for
    /// the components `shipped` (hex sha256s), and the config keys the
    /// examples read, unless the host's own config sets them.
    pub fn lend(&self, host: &mut HostCapabilities, shipped: std::collections::BTreeSet<String>) {
        host.examples = Some(ExampleGrant { origin: self.origin(), components: shipped });
        let base = format!("http://{}", self.address);
        host.config.set_default(MAIL_API_URL, format!("{base}/mail"), false);
        host.config.set_default(MAIL_API_KEY, self.token.clone(), true);
        host.config.set_default(FEED_URL, format!("{base}/feed"), false);
    }
}

type Refusal = (StatusCode, String);

async fn send_mail(State(shared): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Result<(StatusCode, Json<Accepted>), Refusal> {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == &*shared.token);
    if !authorized {
        return Err((StatusCode::UNAUTHORIZED, "no valid `Authorization: Bearer` token".into()));
    }
    let mail: Mail = serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, format!("not a mail: {e}")))?;
    let mut outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
    outbox.sent += 1;
    let id = outbox.sent;
    tracing::info!(id, to = ?mail.to, subject = ?mail.subject, body_bytes = mail.body.len(), "example mail API: accepted a mail");
    if outbox.kept.len() == KEPT_MAILS {
        outbox.kept.pop_front();
    }
    outbox.kept.push_back((id, mail));
    Ok((StatusCode::ACCEPTED, Json(Accepted { id })))
}

#[derive(Serialize)]
struct KeptMail {
    id: u64,
    #[serde(flatten)]
    mail: Mail,
}

/// The last [`KEPT_MAILS`] mails, to see what `send-email` sent.
async fn list_mail(State(shared): State<Shared>) -> Json<Vec<KeptMail>> {
    let outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
    Json(outbox.kept.iter().map(|(id, mail)| KeptMail { id: *id, mail: mail.clone() }).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    #[serde(default)]
    after: u64,
    limit: Option<u64>,
}

#[derive(Serialize)]
struct FeedItem {
    id: u64,
    title: String,
}

#[derive(Serialize)]
struct FeedPage {
    items: Vec<FeedItem>,
    /// The cursor to ask for next: the last item's id.
    next: u64,
}

/// Items `after+1 ..`, as many as `limit` (default 10, at most
/// [`MAX_FEED_PAGE`]): an endless feed, the same on every host.
async fn feed(Query(q): Query<FeedQuery>) -> Result<Json<FeedPage>, Refusal> {
    let limit = q.limit.unwrap_or(10);
    if !(1..=MAX_FEED_PAGE).contains(&limit) {
        return Err((StatusCode::BAD_REQUEST, format!("limit must be 1..={MAX_FEED_PAGE}")));
    }
    let Some(last) = q.after.checked_add(limit) else {
        return Err((StatusCode::BAD_REQUEST, "after is past the end of the feed".into()));
    };
    let items = (q.after + 1..=last).map(|id| FeedItem { id, title: format!("item {id}") }).collect();
    Ok(Json(FeedPage { items, next: last }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_mail_api_takes_a_mail_only_with_the_token_and_the_feed_pages_on() {
        let services = ExampleServices::start().unwrap();
        let mut host = HostCapabilities::default();
        services.lend(&mut host, ["ab".to_string()].into());
        let mail_url = host.config.plain(MAIL_API_URL).unwrap().to_string();
        assert!(host.config.is_secret(MAIL_API_KEY) && !host.config.is_secret(MAIL_API_URL));
        let token = services.token.clone();
        let feed_url = format!("http://{}/feed?after=5&limit=3", services.address);
        let (unauthorized, accepted, listed, page, bad) = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mail = serde_json::json!({"to": "ada@example.com", "subject": "Welcome"});
            let unauthorized = agent.post(&mail_url).header("authorization", "Bearer wrong").send_json(&mail).unwrap().status();
            let accepted = agent.post(&mail_url).header("authorization", &format!("Bearer {token}")).send_json(&mail).unwrap();
            let listed = agent.get(&mail_url).call().unwrap().body_mut().read_to_string().unwrap();
            let page = agent.get(&feed_url).call().unwrap().body_mut().read_to_string().unwrap();
            let bad = agent.get(&format!("{feed_url}0000")).call().unwrap().status();
            let huge = serde_json::json!({"to": "ada@example.com", "subject": "big", "body": "x".repeat(MAX_MAIL_BYTES)});
            let too_big = agent.post(&mail_url).header("authorization", &format!("Bearer {token}")).send_json(&huge).unwrap().status();
            assert_eq!(too_big.as_u16(), 413, "a mail over the most is refused unread");
            (unauthorized, accepted.status(), listed, page, bad)
        })
        .await
        .unwrap();
        assert_eq!((unauthorized.as_u16(), accepted.as_u16()), (401, 202));
        assert_eq!(listed, r#"[{"id":1,"to":"ada@example.com","subject":"Welcome","body":""}]"#, "only the authorized mail was kept");
        assert_eq!(page, r#"{"items":[{"id":6,"title":"item 6"},{"id":7,"title":"item 7"},{"id":8,"title":"item 8"}],"next":8}"#);
        assert_eq!(bad.as_u16(), 400, "a page over the most is refused");
    }
}
