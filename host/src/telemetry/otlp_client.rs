//! The HTTP client the OTLP exporter sends through: `ureq`, blocking, on
//! the exporter's own batching thread (which is why a blocking client
//! fits: that thread has no async runtime and needs none).

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use std::time::Duration;

/// How long one export may take, connect to last byte.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a collector's answer that is read: OTLP answers are small
/// (a partial-success count and a message).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

#[derive(Debug)]
pub(super) struct UreqClient {
    agent: ureq::Agent,
}

impl UreqClient {
    pub(super) fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(EXPORT_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        Self { agent }
    }
}

#[async_trait::async_trait]
impl HttpClient for UreqClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = request.map(|body| body.to_vec());
        let response = self.agent.run(request)?;
        let (parts, mut body) = response.into_parts();
        let answer = body.with_config().limit(MAX_ANSWER_BYTES).read_to_vec()?;
        Ok(Response::from_parts(parts, Bytes::from(answer)))
    }
}
