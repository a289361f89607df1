//! A small blocking HTTP client for the API, used by the CLI's `enqueue`,
//! `jobs`, `queues` and `plugin` commands, and what they print from it.

pub mod render;

use anyhow::{Context as _, bail};

/// Where the CLI finds the API unless told otherwise.
pub const DEFAULT_API: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Error statuses carry a JSON body we want to show, not a bare error.
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Self { base: base.trim_end_matches('/').to_string(), agent }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let response = self.agent.get(&url).call().with_context(|| format!("cannot reach the Kiln API at {url}"))?;
        Self::answer(response, &url)
    }

    pub fn post(&self, path: &str, body: Option<&serde_json::Value>) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let request = self.agent.post(&url);
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.send_empty(),
        }
        .with_context(|| format!("cannot reach the Kiln API at {url}"))?;
        Self::answer(response, &url)
    }

    pub fn put(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let response = self.agent.put(&url).send_json(body).with_context(|| format!("cannot reach the Kiln API at {url}"))?;
        Self::answer(response, &url)
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let response = self.agent.delete(&url).call().with_context(|| format!("cannot reach the Kiln API at {url}"))?;
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
