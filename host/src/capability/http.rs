//! Outbound HTTP (`wasi:http/outgoing-handler@0.2.x`, served by
//! `wasmtime-wasi-http`): what a grant of it is, and the hooks that hold
//! each request to it. A grant is a list of origins,
//! `scheme://host[:port|:*]`, written the same in a manifest and in the
//! host's `allow_http`. A request outside it is denied before any
//! connection (`http-request-denied` to the guest, a line in the run's
//! log); a name that resolves inside the host's network is denied unless
//! the grant names that address; every timeout is bounded by the run's
//! deadline; the response body is capped; the bytes each way are counted.

use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode as P2ErrorCode;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks, WasiHttpView, default_send_request};

/// The longest origin accepted in a grant (a DNS name is at most 253).
const MAX_ORIGIN_BYTES: usize = 300;

/// One origin a plugin may reach: `https://api.example.com`,
/// `http://127.0.0.1:8025`, `http://127.0.0.1:*` (any port). No path, no
/// wildcard host: a grant names the hosts it trusts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpOrigin {
    scheme: Scheme,
    /// Lower-case; an IPv6 address keeps its brackets.
    host: String,
    port: Port,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Port {
    Any,
    Only(u16),
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl HttpOrigin {
    /// The origins both `self` and `other` let through: the narrower of
    /// the two ports, or nothing when scheme, host or port differ.
    pub fn intersect(&self, other: &HttpOrigin) -> Option<HttpOrigin> {
        if self.scheme != other.scheme || self.host != other.host {
            return None;
        }
        let port = match (self.port, other.port) {
            (Port::Any, p) | (p, Port::Any) => p,
            (Port::Only(a), Port::Only(b)) if a == b => Port::Only(a),
            _ => return None,
        };
        Some(HttpOrigin { scheme: self.scheme, host: self.host.clone(), port })
    }

    /// Whether a request to `scheme://host:port` is inside this origin
    /// (`host` as the URL writes it; compared without case).
    pub fn admits(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let Ok(scheme) = parse_scheme(scheme) else { return false };
        let port = port.unwrap_or(scheme.default_port());
        scheme == self.scheme
            && host.eq_ignore_ascii_case(&self.host)
            && match self.port {
                Port::Any => true,
                Port::Only(p) => p == port,
            }
    }
}

fn parse_scheme(scheme: &str) -> Result<Scheme, String> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Ok(Scheme::Http),
        "https" => Ok(Scheme::Https),
        other => Err(format!("scheme {other:?} is not http or https")),
    }
}

impl TryFrom<String> for HttpOrigin {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl std::str::FromStr for HttpOrigin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("{text:?} is not an origin (scheme://host[:port|:*]): {why}"));
        if text.len() > MAX_ORIGIN_BYTES {
            return Err(format!("an origin of {} bytes is longer than the most of {MAX_ORIGIN_BYTES}", text.len()));
        }
        if text.trim() == "*" {
            return bad("a bare `*` would grant the whole network; name the hosts");
        }
        let Some((scheme, rest)) = text.split_once("://") else { return bad("no `://`") };
        let scheme = match parse_scheme(scheme) {
            Ok(s) => s,
            Err(why) => return bad(&why),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return bad("an origin has no path, query, fragment or user");
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else { return bad("an IPv6 address without its `]`") };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("not an IPv6 address between the brackets");
            }
            let port = if after.is_empty() { Some("") } else { after.strip_prefix(':') };
            (format!("[{}]", addr.to_ascii_lowercase()), port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
                None => (rest.to_ascii_lowercase(), Some("")),
            }
        };
        let Some(port) = port else { return bad("something other than `:port` after the IPv6 address") };
        let port = match port {
            "" => Port::Only(scheme.default_port()),
            "*" => Port::Any,
            digits => match digits.parse::<u16>() {
                Ok(p) if p > 0 => Port::Only(p),
                _ => return bad("the port is not 1-65535 or `*`"),
            },
        };
        if host.is_empty() {
            return bad("no host");
        }
        if host.contains('*') {
            return bad("a wildcard host; name each host");
        }
        if !host.starts_with('[')
            && !host.split('.').all(|label| !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return bad("the host is not a DNS name or an IP address");
        }
        Ok(HttpOrigin { scheme, host, port })
    }
}

impl fmt::Display for HttpOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        match self.port {
            Port::Any => write!(f, ":*"),
            Port::Only(p) if p == self.scheme.default_port() => Ok(()),
            Port::Only(p) => write!(f, ":{p}"),
        }
    }
}

/// The largest response body one request may bring in.
pub const MAX_RESPONSE_BODY_BYTES: u64 = 16 << 20;
/// The most requests one run may send.
pub const MAX_REQUESTS_PER_RUN: u64 = 1_000;
/// How long a connect, a first byte or a pause between bytes may take
/// when the guest sets no timeout of its own; the run's deadline bounds
/// every one of them anyway.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What one run sent and received over HTTP.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
}

/// One run's `wasi:http` hooks: every request checked against the grant
/// before any connection, its timeouts bounded by the run's deadline, its
/// address checked, its bodies counted and the response's capped.
pub(crate) struct HttpScope {
    /// The plugin version's grants (their `http` origins are what it may reach).
    grants: Arc<super::Grants>,
    deadline: Instant,
    pub(crate) stats: Arc<HttpStats>,
    /// Why requests were denied, for the run's log and error.
    pub(crate) denials: Arc<Mutex<Vec<String>>>,
    /// The run's W3C trace context, sent as every request's `traceparent`.
    traceparent: Option<http::HeaderValue>,
}

impl fmt::Debug for HttpScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpScope").field("origins", &self.grants.http).finish_non_exhaustive()
    }
}

impl HttpScope {
    pub(crate) fn new(grants: Arc<super::Grants>, deadline: Instant, traceparent: Option<String>) -> Self {
        let traceparent = traceparent.and_then(|t| http::HeaderValue::try_from(t).ok());
        Self { grants, deadline, stats: Arc::default(), denials: Arc::default(), traceparent }
    }

    fn grant_text(&self) -> String {
        if self.grants.http.is_empty() {
            "nothing".to_string()
        } else {
            self.grants.http.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        }
    }

    fn deny(&self, why: String, request: http::Request<WasiBody>) -> Box<dyn Future<Output = Result<SentRequest, HttpError>> + Send> {
        self.denials.lock().expect("denials poisoned").push(why);
        Box::new(async move { Err(refuse(request).await) })
    }
}

type SentRequest = (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>);

/// The denial a guest sees. The request's body is taken first (at most
/// [`DENIED_BODY_BYTES`] of it): a guest client that sends the body while
/// it waits for the answer then sees `http-request-denied`, not a broken
/// body stream.
async fn refuse(request: http::Request<WasiBody>) -> HttpError {
    let _ = http_body_util::Limited::new(request.into_body(), DENIED_BODY_BYTES).collect().await;
    HttpError::HttpRequestDenied
}

/// How much of a denied request's body is read (and dropped).
const DENIED_BODY_BYTES: usize = 1 << 20;

/// Whether an address is one a grant must name to reach: loopback,
/// private, link-local, shared (CGNAT), unspecified, multicast, or an IPv6
/// unique-local or IPv4-mapped one of those.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [first, second, ..] = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || first == 0
                || (first == 100 && (64..128).contains(&second))
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => {
                let first = a.segments()[0];
                a.is_loopback() || a.is_unspecified() || a.is_multicast() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

impl HttpOrigin {
    /// Whether the grant names its host as an address (or `localhost`):
    /// then an internal address is what it means to reach.
    fn names_address(&self) -> bool {
        self.host == "localhost" || self.host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok()
    }
}

impl WasiHttpHooks for HttpScope {
    // A plugin's failed request is the plugin's business: the guest gets
    // the error code, the host's own log stays quiet about it.
    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> P2ErrorCode {
        tracing::debug!(target: "kiln::plugin", "outbound HTTP: {err}");
        P2ErrorCode::HttpProtocolError
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> P2ErrorCode {
        tracing::debug!(target: "kiln::plugin", "outbound HTTP connect: {err}");
        P2ErrorCode::ConnectionRefused
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> P2ErrorCode {
        tracing::debug!(target: "kiln::plugin", "outbound HTTP TLS: {err}");
        P2ErrorCode::TlsProtocolError
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<SentRequest, HttpError>> + Send> {
        let uri = request.uri().clone();
        let (scheme, host, port) = (uri.scheme_str().unwrap_or("https"), uri.host().unwrap_or(""), uri.port_u16());
        // The plugin chose the path: only its start goes into the log and the error.
        let path = uri.path();
        let path = &path[..path.floor_char_boundary(200)];
        let shown = format!("{} {}://{}{}", request.method(), scheme, uri.authority().map_or("", |a| a.as_str()), path);
        let Some(origin) = self.grants.http.iter().find(|o| o.admits(scheme, host, port)).cloned() else {
            let why = format!("{shown} is not in the plugin's grant (`[capabilities] http` allowed here: {})", self.grant_text());
            return self.deny(why, request);
        };
        // The host's trace context replaces any the plugin set: a plugin
        // cannot graft its requests onto another trace, nor drop them
        // from this one. (`tracestate` is the plugin's own business.)
        if let Some(traceparent) = &self.traceparent {
            request.headers_mut().insert(crate::telemetry::TRACEPARENT, traceparent.clone());
        }
        let sent = self.stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if sent > MAX_REQUESTS_PER_RUN {
            return self.deny(format!("{shown}: this run has sent {MAX_REQUESTS_PER_RUN} requests, the most one run may"), request);
        }
        // Every wait is bounded by what is left of the run.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let bound = |asked: Option<Duration>| Some(asked.unwrap_or(DEFAULT_TIMEOUT).min(left));
        let options = RequestOptions {
            connect_timeout: bound(options.and_then(|o| o.connect_timeout)),
            first_byte_timeout: bound(options.and_then(|o| o.first_byte_timeout)),
            between_bytes_timeout: bound(options.and_then(|o| o.between_bytes_timeout)),
        };
        let (stats, denials) = (self.stats.clone(), self.denials.clone());
        let (host, port) = (host.trim_start_matches('[').trim_end_matches(']').to_string(), port.unwrap_or(if scheme == "http" { 80 } else { 443 }));
        let plain_http = scheme.eq_ignore_ascii_case("http");
        Box::new(async move {
            // Resolve here and check every answer: a name the grant allows
            // may not lead inside the host's network unless the grant
            // names that address itself.
            let addresses: Vec<std::net::SocketAddr> = match tokio::time::timeout(left, tokio::net::lookup_host((host.as_str(), port))).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(_)) => return Err(HttpError::DnsError { rcode: None, info_code: None }),
                Err(_) => return Err(HttpError::ConnectionTimeout),
            };
            let Some(first) = addresses.first().copied() else { return Err(HttpError::DnsError { rcode: None, info_code: None }) };
            if !origin.names_address() && addresses.iter().any(|a| is_internal(a.ip())) {
                let why = format!("{shown}: {host} resolves to {}, an internal address the grant {origin} does not name", first.ip());
                denials.lock().expect("denials poisoned").push(why);
                return Err(refuse(request).await);
            }
            // Plain HTTP connects to the address just checked (the Host
            // header keeps the name); HTTPS connects by name, and TLS
            // holds the server to it.
            if plain_http {
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                if let Ok(pinned) = http::Uri::builder().scheme("http").authority(first.to_string()).path_and_query(path).build() {
                    *request.uri_mut() = pinned;
                }
            }
            let request = request.map(|body| Metered { inner: Some(body), counted: stats.clone(), sent: true, limit: None, seen: 0 }.boxed_unsync());
            let (response, io) = default_send_request(request, Some(options)).await?;
            let response = response.map(|body| {
                Metered { inner: Some(body.boxed_unsync()), counted: stats, sent: false, limit: Some(MAX_RESPONSE_BODY_BYTES), seen: 0 }.boxed_unsync()
            });
            Ok((response, Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>))
        })
    }
}

/// A body whose bytes are counted into the run's stats, and cut off with
/// an error past `limit`.
struct Metered {
    /// `None` once it is being drained (see `Drop`).
    inner: Option<WasiBody>,
    counted: Arc<HttpStats>,
    sent: bool,
    limit: Option<u64>,
    seen: u64,
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                self.seen += n;
                let counter = if self.sent { &self.counted.bytes_sent } else { &self.counted.bytes_received };
                counter.fetch_add(n, Ordering::Relaxed);
                if self.limit.is_some_and(|limit| self.seen > limit) {
                    return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(self.limit))));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

impl Drop for Metered {
    /// A request body the client let go of before its end (the server
    /// answered first): the rest is read and dropped, at most
    /// [`DENIED_BODY_BYTES`], so the guest's writes and `finish` succeed
    /// and it sees the answer, not a broken stream.
    fn drop(&mut self) {
        if !self.sent {
            return;
        }
        if let Some(body) = self.inner.take().filter(|b| !http_body::Body::is_end_stream(b)) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = http_body_util::Limited::new(body, DENIED_BODY_BYTES).collect().await;
                });
            }
        }
    }
}

/// Links `wasi:http/types` and `wasi:http/outgoing-handler`.
pub(crate) fn add_to_linker<T: WasiHttpView + 'static>(linker: &mut wasmtime::component::Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> HttpOrigin {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn origins_parse_and_print_as_written() {
        for text in ["https://api.example.com", "http://127.0.0.1:*", "http://127.0.0.1:8025", "http://[::1]:8080", "https://[::1]"] {
            assert_eq!(origin(text).to_string(), text);
        }
        assert_eq!(origin("HTTPS://API.Example.com:443/").to_string(), "https://api.example.com", "case, default port and a trailing / fold");
    }

    #[test]
    fn malformed_origins_say_what_is_wrong() {
        for (text, why) in [
            ("*", "bare `*`"),
            ("api.example.com", "no `://`"),
            ("ftp://example.com", "not http or https"),
            ("https://example.com/v1/send", "no path"),
            ("https://user@example.com", "no path, query, fragment or user"),
            ("https://*.example.com", "wildcard host"),
            ("https://example.com:99999", "port is not 1-65535"),
            ("https://example.com:0", "port is not 1-65535"),
            ("https://", "no host"),
            ("https://exa mple.com", "not a DNS name"),
            ("http://[::1", "without its `]`"),
            ("http://[::1]x", "after the IPv6 address"),
        ] {
            let e = text.parse::<HttpOrigin>().unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert!("https://".to_string().repeat(100).parse::<HttpOrigin>().unwrap_err().contains("longer than the most"));
    }

    #[test]
    fn the_intersection_is_the_narrower_grant() {
        let any = origin("http://127.0.0.1:*");
        let one = origin("http://127.0.0.1:8025");
        assert_eq!(any.intersect(&one), Some(one.clone()));
        assert_eq!(one.intersect(&any), Some(one.clone()));
        assert_eq!(any.intersect(&any), Some(any.clone()));
        assert_eq!(one.intersect(&origin("http://127.0.0.1:8026")), None);
        assert_eq!(one.intersect(&origin("https://127.0.0.1:8025")), None, "the scheme counts");
        assert_eq!(one.intersect(&origin("http://localhost:8025")), None, "hosts are compared as named");
    }

    #[test]
    fn a_request_is_admitted_by_scheme_host_and_port() {
        let api = origin("https://api.example.com");
        assert!(api.admits("https", "API.example.com", None));
        assert!(api.admits("https", "api.example.com", Some(443)));
        assert!(!api.admits("https", "api.example.com", Some(8443)));
        assert!(!api.admits("http", "api.example.com", None));
        assert!(!api.admits("https", "api.example.com.evil.test", None));
        assert!(origin("http://127.0.0.1:*").admits("http", "127.0.0.1", Some(9)));
    }
}
