//! `kiln-sdk`: write a Kiln job plugin as a plain Rust function.
//!
//! ```ignore
//! use kiln_sdk::{Job, JobResult};
//!
//! fn run(job: Job) -> JobResult {
//!     kiln_sdk::info(&format!("attempt {}", job.attempt));
//!     Ok(job.payload)
//! }
//!
//! kiln_sdk::export_job!(run);
//! ```
//!
//! Build the plugin crate (`crate-type = ["cdylib"]`) with
//! `cargo build --release --target wasm32-wasip2`; the `.wasm` it produces is
//! a component for the `kiln:worker/job` world. The generated WIT bindings
//! stay inside this crate: plugin code sees only [`Job`], [`JobError`], the
//! [`context`] functions and the capabilities ([`config`], [`enqueue`], [`kv`]).
//!
//! A capability works only when the plugin's manifest asks for it in
//! `[capabilities]` and the host allows it; a plugin that calls one it is
//! not granted is refused when it is loaded, naming the manifest key.

extern crate self as kiln_sdk;

use std::time::Duration;

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        // `job` plus every capability; the built component imports only
        // the capabilities its code calls.
        world: "kiln:worker/plugin",
        // The WASI interfaces it imports (wasi:config) are generated here too.
        generate_all,
        pub_export_macro: true,
        default_bindings_module: "kiln_sdk::__bindings",
        runtime_path: "kiln_sdk::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

use __bindings::kiln::worker::context as host;
use __bindings::kiln::worker::types as wit;

/// One job as the host hands it to the plugin.
#[derive(Debug, Clone)]
pub struct Job {
    /// Unique id, stable across attempts.
    pub id: String,
    /// The job's kind (the plugin's name).
    pub kind: String,
    /// 1 on the first attempt.
    pub attempt: u32,
    /// The attempt after which a failing job is dead-lettered.
    pub max_attempts: u32,
    /// The input, JSON by convention.
    pub payload: Vec<u8>,
    /// The previous run's `ok` value, for scheduled and continuous plugins.
    pub checkpoint: Option<Vec<u8>>,
}

impl Job {
    /// Parses the payload as JSON; a payload that does not parse is
    /// [`JobError::InvalidInput`] naming where it went wrong.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| JobError::invalid_input(format!("payload is not the expected JSON: {e}")))
    }

    /// Parses the checkpoint as JSON; `None` on the first run.
    pub fn checkpoint_json<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, JobError> {
        self.checkpoint
            .as_deref()
            .map(serde_json::from_slice)
            .transpose()
            .map_err(|e| JobError::fatal(format!("checkpoint is not the expected JSON: {e}")))
    }
}

/// A failure the host acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Transient: run again later (after `delay`, or the retry policy's backoff).
    Retry { message: String, delay: Option<Duration> },
    /// The input is bad: never retried.
    InvalidInput(String),
    /// Cannot succeed: never retried.
    Fatal(String),
}

impl JobError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry { message: message.into(), delay: None }
    }
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        Self::Retry { message: message.into(), delay: Some(delay) }
    }
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::Fatal(message.into())
    }
}

/// What a job function returns: the result bytes or a [`JobError`].
pub type JobResult = Result<Vec<u8>, JobError>;

/// Serialises `value` as the JSON result of a job.
pub fn ok_json<T: serde::Serialize>(value: &T) -> JobResult {
    serde_json::to_vec(value).map_err(|e| JobError::fatal(format!("cannot encode result: {e}")))
}

/// The host's side of the current run: cancellation, deadline, logs, progress.
pub mod context {
    use super::host;
    use std::time::Duration;

    pub use host::LogLevel;

    /// True once the host wants this run to stop; return soon when it is.
    pub fn cancelled() -> bool {
        host::cancelled()
    }

    /// Time left before the run's wall-clock deadline.
    pub fn time_left() -> Duration {
        Duration::from_millis(host::time_left_ms())
    }

    /// Writes a log line, tagged by the host with the job.
    pub fn log(level: LogLevel, message: &str) {
        host::log(level, message)
    }

    /// Reports progress, 0 to 100 (larger values are clamped by the host).
    pub fn progress(percent: u8, note: Option<&str>) {
        host::progress(percent, note)
    }
}

/// Configuration and secrets (`wasi:config/store`): the values the host
/// holds for the keys named in `[capabilities] config` of plugin.toml.
/// Secrets read here are the host's to keep out of logs: a log line, error
/// or result that contains one is stored with `[redacted]` in its place.
pub mod config {
    use super::__bindings::wasi::config::store;

    /// The value of `key`; `None` when the manifest does not name it or
    /// the host holds no value for it.
    pub fn get(key: &str) -> Option<String> {
        store::get(key).ok().flatten()
    }

    /// The value of `key`, or a fatal error naming it (for settings a job
    /// cannot run without).
    pub fn require(key: &str) -> Result<String, super::JobError> {
        get(key).ok_or_else(|| super::JobError::fatal(format!("config key `{key}` has no value: name it in `[capabilities] config` of plugin.toml and give it a value in the host's [config] or [secrets]")))
    }

    /// Every key this plugin may read that the host holds, with its value.
    pub fn all() -> Vec<(String, String)> {
        store::get_all().unwrap_or_default()
    }
}

/// Enqueueing follow-up jobs (`kiln:worker/enqueue`): only kinds named in
/// `[capabilities] enqueue` of plugin.toml. Nothing is inserted until this
/// run completes `ok`; then every job it enqueued goes in with the
/// completion, naming this job as its parent. A run that fails enqueues
/// nothing, so a retry does not enqueue twice.
pub mod enqueue {
    use super::__bindings::kiln::worker::enqueue as host;
    use std::time::Duration;

    /// One job to enqueue; [`Child::new`], then the builder methods.
    #[derive(Debug, Clone)]
    pub struct Child {
        request: host::JobRequest,
    }

    /// Why the host refused a child.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum EnqueueError {
        /// The manifest does not grant the kind.
        Denied(String),
        /// A field is out of bounds.
        Invalid(String),
        /// The run has enqueued as much as one run may.
        LimitReached(String),
    }

    impl std::fmt::Display for EnqueueError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                EnqueueError::Denied(m) => write!(f, "enqueue denied: {m}"),
                EnqueueError::Invalid(m) => write!(f, "enqueue refused: {m}"),
                EnqueueError::LimitReached(m) => write!(f, "enqueue limit reached: {m}"),
            }
        }
    }

    impl std::error::Error for EnqueueError {}

    impl From<EnqueueError> for super::JobError {
        fn from(e: EnqueueError) -> Self {
            super::JobError::fatal(e.to_string())
        }
    }

    impl Child {
        /// A job of `kind` with `payload` (serialised as JSON).
        pub fn new<T: serde::Serialize>(kind: &str, payload: &T) -> Self {
            let payload = serde_json::to_vec(payload).unwrap_or_default();
            Self {
                request: host::JobRequest {
                    kind: kind.to_string(),
                    payload,
                    queue: None,
                    priority: None,
                    delay_ms: None,
                    scheduled_at_ms: None,
                    unique_key: None,
                },
            }
        }

        /// A job of `kind` whose payload is `payload` as it stands (the
        /// host takes JSON, or nothing).
        pub fn from_bytes(kind: &str, payload: Vec<u8>) -> Self {
            let mut child = Self::new(kind, &());
            child.request.payload = payload;
            child
        }

        pub fn queue(mut self, queue: &str) -> Self {
            self.request.queue = Some(queue.to_string());
            self
        }

        pub fn priority(mut self, priority: i32) -> Self {
            self.request.priority = Some(priority);
            self
        }

        /// Run no earlier than `delay` after this run completes.
        pub fn delay(mut self, delay: Duration) -> Self {
            self.request.delay_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            self
        }

        /// Run no earlier than this time (milliseconds since the Unix epoch).
        pub fn at_ms(mut self, at: i64) -> Self {
            self.request.scheduled_at_ms = Some(at);
            self
        }

        /// A job with this key already waiting or done makes this one a no-op.
        pub fn unique_key(mut self, key: &str) -> Self {
            self.request.unique_key = Some(key.to_string());
            self
        }

        /// Asks the host to enqueue it with this run's completion; returns
        /// how many this run has enqueued so far.
        pub fn send(self) -> Result<u32, EnqueueError> {
            host::enqueue(&self.request).map_err(|e| match e {
                host::EnqueueError::Denied(m) => EnqueueError::Denied(m),
                host::EnqueueError::Invalid(m) => EnqueueError::Invalid(m),
                host::EnqueueError::LimitReached(m) => EnqueueError::LimitReached(m),
            })
        }
    }

    /// Enqueues a job of `kind` with `payload`, due when this run completes.
    pub fn job<T: serde::Serialize>(kind: &str, payload: &T) -> Result<u32, EnqueueError> {
        Child::new(kind, payload).send()
    }
}

/// Key-value state (`wasi:keyvalue`): the stores named in `[capabilities]
/// kv` of plugin.toml, this plugin's own (another plugin's `default` is
/// another store). A run reads what is committed plus its own writes; its
/// writes are kept only if it completes `ok`, in the same transaction that
/// completes its job, so a failed or retried run changes nothing.
pub mod kv {
    use super::__bindings::wasi::keyvalue::{atomics, batch, store};

    pub use store::Error as KvError;

    /// An open store.
    #[derive(Debug)]
    pub struct Store(store::Bucket);

    /// Opens a store the manifest names.
    pub fn open(name: &str) -> Result<Store, KvError> {
        store::open(name).map(Store)
    }

    impl From<KvError> for super::JobError {
        fn from(e: KvError) -> Self {
            match e {
                KvError::NoSuchStore => super::JobError::fatal("kv: no such store on this host"),
                KvError::AccessDenied => super::JobError::fatal("kv: the manifest does not name this store"),
                KvError::Other(m) => super::JobError::retry(format!("kv: {m}")),
            }
        }
    }

    impl Store {
        pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
            self.0.get(key)
        }

        /// The value of `key` as JSON; `None` when there is none or it does not parse.
        pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, KvError> {
            Ok(self.get(key)?.and_then(|v| serde_json::from_slice(&v).ok()))
        }

        pub fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
            self.0.set(key, value)
        }

        pub fn set_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), KvError> {
            self.set(key, &serde_json::to_vec(value).unwrap_or_default())
        }

        pub fn delete(&self, key: &str) -> Result<(), KvError> {
            self.0.delete(key)
        }

        pub fn exists(&self, key: &str) -> Result<bool, KvError> {
            self.0.exists(key)
        }

        /// Every key, page by page.
        pub fn keys(&self) -> Result<Vec<String>, KvError> {
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = self.0.list_keys(cursor)?;
                keys.extend(page.keys);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => return Ok(keys),
                }
            }
        }

        /// Adds `delta` to the number `key` holds (0 when none) and returns the sum.
        pub fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
            atomics::increment(&self.0, key, delta)
        }

        pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
            batch::get_many(&self.0, keys)
        }

        pub fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), KvError> {
            batch::set_many(&self.0, pairs)
        }

        pub fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
            batch::delete_many(&self.0, keys)
        }
    }
}

/// Outbound HTTP (`wasi:http`, through `wstd`), with the `http` feature:
/// only to the origins named in `[capabilities] http` of plugin.toml that
/// the host allows. A request outside them fails with
/// [`HttpError::Denied`] before any connection. The run's deadline bounds
/// every wait; a response body over the host's cap is an error.
#[cfg(feature = "http")]
pub mod http {
    use wstd::http::error::ErrorCode;
    use wstd::http::{Body, Client, Request};

    /// A response, read whole.
    #[derive(Debug, Clone)]
    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Response {
        /// The body as JSON.
        pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
            serde_json::from_slice(&self.body).map_err(|e| HttpError::Failed(format!("the response is not the expected JSON: {e}")))
        }
    }

    /// Why a request got no response.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum HttpError {
        /// The host refused it: the origin is not granted, or the name
        /// leads inside the host's network.
        Denied,
        /// Anything else: a bad URL, a refused connection, a timeout, a
        /// body over the cap.
        Failed(String),
    }

    impl std::fmt::Display for HttpError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                HttpError::Denied => write!(f, "the host denied the request (not in `[capabilities] http`, or not allowed here)"),
                HttpError::Failed(m) => write!(f, "HTTP request failed: {m}"),
            }
        }
    }

    impl std::error::Error for HttpError {}

    impl From<HttpError> for super::JobError {
        fn from(e: HttpError) -> Self {
            match e {
                HttpError::Denied => super::JobError::fatal(e.to_string()),
                HttpError::Failed(_) => super::JobError::retry(e.to_string()),
            }
        }
    }

    /// Sends `method url` with `headers` and `body`, and reads the response.
    pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Response, HttpError> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Body::from(body)).map_err(|e| HttpError::Failed(format!("bad request: {e}")))?;
        wstd::runtime::block_on(async move {
            let mut response = Client::new().send(request).await.map_err(|e| match e.downcast_ref::<ErrorCode>() {
                Some(ErrorCode::HttpRequestDenied) => HttpError::Denied,
                Some(code) => HttpError::Failed(format!("{code:?}")),
                None => HttpError::Failed(format!("{e:#}")),
            })?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let body = response.body_mut().contents().await.map_err(|e| HttpError::Failed(format!("{e:#}")))?.to_vec();
            Ok(Response { status, headers, body })
        })
    }

    pub fn get(url: &str) -> Result<Response, HttpError> {
        send("GET", url, &[], Vec::new())
    }

    /// POSTs `body` as JSON.
    pub fn post_json<T: serde::Serialize>(url: &str, body: &T, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        send("POST", url, &all, serde_json::to_vec(body).unwrap_or_default())
    }
}

/// Logs at debug level (hidden by the host's default log filter).
pub fn debug(message: &str) {
    context::log(context::LogLevel::Debug, message)
}

/// Logs at info level.
pub fn info(message: &str) {
    context::log(context::LogLevel::Info, message)
}

/// Logs at warn level.
pub fn warn(message: &str) {
    context::log(context::LogLevel::Warn, message)
}

#[doc(hidden)]
pub fn __run(job: wit::Job, handler: fn(Job) -> JobResult) -> Result<Vec<u8>, wit::JobError> {
    let job = Job {
        id: job.id,
        kind: job.kind,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload: job.payload,
        checkpoint: job.checkpoint,
    };
    handler(job).map_err(|e| match e {
        JobError::Retry { message, delay } => wit::JobError::Retry(wit::RetryRequest {
            message,
            delay_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }),
        JobError::InvalidInput(m) => wit::JobError::InvalidInput(m),
        JobError::Fatal(m) => wit::JobError::Fatal(m),
    })
}

/// Exports `fn(Job) -> JobResult` as the plugin's `run`.
#[macro_export]
macro_rules! export_job {
    ($handler:path) => {
        struct __KilnJob;
        impl $crate::__bindings::Guest for __KilnJob {
            fn run(
                job: $crate::__bindings::kiln::worker::types::Job,
            ) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                $crate::__bindings::kiln::worker::types::JobError,
            > {
                $crate::__run(job, $handler)
            }
        }
        $crate::__bindings::export!(__KilnJob with_types_in $crate::__bindings);
    };
}
