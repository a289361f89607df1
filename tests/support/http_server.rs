//! A real HTTP server on a thread of its own, for what a plugin's
//! requests reach: it records what it was sent and answers as a test
//! needs (fine, a mail API, a failure, too much, nothing at all).

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A real HTTP server on a thread of its own: `/ok`, `/send` (records the
/// request), `/fail` (500), `/big` (17 MiB), `/hang` (never answers).
pub struct TestServer {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    pub fn start() -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let record_mail = seen.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new()
                    .route("/ok", axum::routing::get(|| async { "fine" }))
                    .route(
                        "/send",
                        axum::routing::post(move |method: http::Method, uri: http::Uri, headers: HeaderMap, body: Bytes| {
                            let record = record.clone();
                            async move {
                                record.lock().unwrap().push(Seen { method: method.to_string(), path: uri.path().to_string(), headers, body: body.to_vec() });
                                axum::Json(json!({"queued": true}))
                            }
                        }),
                    )
                    .route(
                        "/mail",
                        axum::routing::post({
                            let record = record_mail.clone();
                            move |method: http::Method, uri: http::Uri, headers: HeaderMap, body: Bytes| {
                                let record = record.clone();
                                async move { mail_api(&record, Seen { method: method.to_string(), path: uri.path().to_string(), headers, body: body.to_vec() }).await }
                            }
                        }),
                    )
                    .route("/fail", axum::routing::get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "down") }))
                    .route("/big", axum::routing::get(|| async { vec![b'x'; 17 << 20] }))
                    .route(
                        "/hang",
                        axum::routing::get(|| async {
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                            "late"
                        }),
                    );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Self { port: rx.recv().unwrap(), seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// `POST /mail`, a mail API as `send-email` expects one: records the
/// request; a mail whose subject is `fail` gets a 500 whose body quotes the
/// request's Authorization header back (as careless APIs do), one whose
/// subject is `hang` no answer at all, any other a 200 with an id.
async fn mail_api(record: &Mutex<Vec<Seen>>, seen: Seen) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let subject = serde_json::from_slice::<Value>(&seen.body).ok().and_then(|m| m["subject"].as_str().map(str::to_string)).unwrap_or_default();
    let authorization = seen.headers.get("authorization").map(|v| v.to_str().unwrap_or("?").to_string()).unwrap_or_default();
    record.lock().unwrap().push(seen);
    match subject.as_str() {
        "fail" => (http::StatusCode::INTERNAL_SERVER_ERROR, format!("mail store down (you sent authorization: {authorization})")).into_response(),
        "hang" => {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            "late".into_response()
        }
        _ => axum::Json(json!({"id": 7})).into_response(),
    }
}

