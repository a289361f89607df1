//! The HTTP server under the API: accepts connections up to a cap, gives
//! each a header-read timeout (which also closes idle keep-alive
//! connections) and each request body a deadline, and closes them
//! gracefully at shutdown. A client that opens sockets and sends nothing,
//! or trickles its headers or its body, holds a connection for seconds,
//! not for ever.

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// `[http]` in kiln.toml: what one client may hold of the API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Connections open at once; one over it is closed as soon as it is
    /// accepted (and logged), so the host never runs out of descriptors.
    pub max_connections: usize,
    /// A connection must send a request's headers within this long of
    /// opening or of its previous response, or it is closed.
    pub header_timeout_ms: u64,
    /// A request's body must have arrived within this long of its headers,
    /// or the request gets 408. (Handling it may take longer: a deploy
    /// compiles under its own budget.)
    pub body_timeout_ms: u64,
    /// Host names (besides `localhost` and IP addresses) this API answers
    /// to; a request naming another `Host` is refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

/// The most `max_connections` may be: each connection is a descriptor, and
/// the store, the plugins and the compiler need some too.
pub const MAX_CONNECTIONS_CEILING: usize = 100_000;

impl Default for HttpLimits {
    fn default() -> Self {
        Self { max_connections: 512, header_timeout_ms: 10_000, body_timeout_ms: 60_000, allowed_hosts: Vec::new() }
    }
}

impl HttpLimits {
    /// Why these limits cannot be used, naming the key.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS_CEILING {
            return Some(("http.max_connections", format!("must be between 1 and {MAX_CONNECTIONS_CEILING}")));
        }
        for (key, value) in [("http.header_timeout_ms", self.header_timeout_ms), ("http.body_timeout_ms", self.body_timeout_ms)] {
            if value == 0 || value > 3_600_000 {
                return Some((key, "must be between 1 and 3600000 (an hour)".into()));
            }
        }
        if let Some(bad) = self.allowed_hosts.iter().find(|h| h.is_empty() || h.contains(['/', ' ', '*'])) {
            return Some(("http.allowed_hosts", format!("{bad:?} is not a host name (no scheme, path, spaces or wildcards)")));
        }
        None
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves;
/// then lets open requests finish (for up to the request timeout) and
/// closes every connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let body_timeout = Duration::from_millis(limits.body_timeout_ms);
    let app = app.layer(axum::middleware::from_fn(move |request: Request, next: Next| {
        next.run(request.map(|body| axum::body::Body::new(DeadlineBody::new(body, body_timeout))))
    }));
    let service = TowerToHyperService::new(app);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closed) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused_since_log = 0u64;
    let mut last_refusal_log = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            Some(_) = connections.join_next() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors (or another transient failure): wait
                // for connections to close instead of spinning on accept.
                tracing::warn!("accepting a connection failed: {e}; pausing accepts for 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refused_since_log += 1;
            if last_refusal_log.elapsed() >= Duration::from_secs(10) {
                tracing::warn!(max_connections = limits.max_connections, refused = refused_since_log, last_peer = %peer,
                    "connection refused: the API holds its maximum of open connections");
                refused_since_log = 0;
                last_refusal_log = tokio::time::Instant::now();
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let mut closed = closed.clone();
        let header_timeout = Duration::from_millis(limits.header_timeout_ms);
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = closed.wait_for(|closed| *closed) => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(connections = open, "API closing: letting open requests finish");
    }
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(body_timeout, drained).await.is_err() {
        tracing::warn!(connections = connections.len(), "API closing: connections still open after the body timeout; dropping them");
        connections.abort_all();
    }
    Ok(())
}

/// A request body that fails once its deadline passes: a client that
/// trickles a body holds its connection that long at most.
struct DeadlineBody {
    inner: axum::body::Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(inner: axum::body::Body, timeout: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(timeout)), timeout }
    }
}

/// Why a body read failed: its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not complete within {} ms", .0.as_millis())]
pub struct BodyTimedOut(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let timeout = self.timeout;
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The deadline's message, if `error` (or what caused it) is a body that
/// timed out.
pub fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(timed_out) = e.downcast_ref::<BodyTimedOut>() {
            return Some(timed_out.to_string());
        }
        cause = e.source();
    }
    None
}
