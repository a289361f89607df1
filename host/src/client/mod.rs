//! A small blocking HTTP client for the API, used by the CLI's `enqueue`,
//! `jobs`, `queues` and `plugin` commands, and what they print from it.

pub mod render;

use anyhow::{Context as _, bail};

/// Where the CLI finds the API unless told otherwise.
pub const DEFAULT_API: &str = "http://127.0.0.1:8080";

/// The environment variable the CLI reads its API key from.
pub const API_KEY_VAR: &str = "KILN_API_KEY";

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
    /// `Authorization` for every call, from `KILN_API_KEY`.
    authorization: Option<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("base", &self.base).field("with_key", &self.authorization.is_some()).finish()
    }
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Error statuses carry a JSON body we want to show, not a bare error.
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        let authorization = std::env::var(API_KEY_VAR).ok().filter(|k| !k.is_empty()).map(|k| format!("Bearer {k}"));
        Self { base: base.trim_end_matches('/').to_string(), agent, authorization }
    }

    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let response = self.authorized(self.agent.get(&url)).call().with_context(|| format!("cannot reach the Kiln API at {url}"))?;
        Self::answer(response, &url)
    }

    pub fn post(&self, path: &str, body: Option<&serde_json::Value>) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let request = self.authorized(self.agent.post(&url));
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.send_empty(),
        }
        .with_context(|| format!("cannot reach the Kiln API at {url}"))?;
        Self::answer(response, &url)
    }

    pub fn put(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let response = self.authorized(self.agent.put(&url)).send_json(body).with_context(|| format!("cannot reach the Kiln API at {url}"))?;
        Self::answer(response, &url)
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let response = self.authorized(self.agent.delete(&url)).call().with_context(|| format!("cannot reach the Kiln API at {url}"))?;
        Self::answer(response, &url)
    }

    fn answer(mut response: http::Response<ureq::Body>, url: &str) -> anyhow::Result<serde_json::Value> {
        let status = response.status();
        let body: serde_json::Value =
            response.body_mut().read_json().with_context(|| format!("{url} answered {status} without JSON"))?;
        if !status.is_success() {
            let message = body.get("error").and_then(|e| e.as_str()).unwrap_or("no message");
            bail!("{status}: {message}");
        }
        Ok(body)
    }
}
