//! Traces of job runs: OpenTelemetry spans for an enqueue and for each
//! attempt of a job, exported with OTLP over HTTP when an endpoint is set,
//! and the W3C `traceparent` that ties a job to its caller's trace, to its
//! children and to the requests its plugin sends.
//!
//! A trace follows a job: `POST /jobs` with a caller's `traceparent` makes
//! a `send QUEUE` span (PRODUCER) under the caller's span; the job keeps
//! that span's `traceparent` in the store; every attempt is a `process
//! QUEUE` span (CONSUMER) under it, from the claim to the outcome, with the
//! kind, attempt, outcome, fuel, memory and duration; the plugin's outbound
//! HTTP requests carry the attempt's span as their `traceparent`, and jobs
//! the run enqueues keep it too. Names and attributes follow OpenTelemetry's
//! messaging conventions (`messaging.*`), with Kiln's own under `kiln.job.*`.
//!
//! With no endpoint nothing is made or sent: a caller's valid `traceparent`
//! is still kept with the job and passed on to its plugin's requests as it
//! came, so the caller's own tracing sees them as its children.

mod otlp_client;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The W3C trace-context header: `00-TRACEID-SPANID-FLAGS`.
pub const TRACEPARENT: &str = "traceparent";

/// The longest `traceparent` the host reads: version `00` is 55 bytes; a
/// later version may add fields, which this host ignores (as the W3C
/// recommendation says), but no header longer than this is parsed at all.
pub const MAX_TRACEPARENT_BYTES: usize = 512;

/// `[telemetry]` in `kiln.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Where traces go, as OTLP over HTTP (protobuf): the collector's base
    /// URL (`http://collector:4318`), to which `/v1/traces` is added.
    /// Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else no traces are exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME` wins when set).
    pub service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: "kiln".to_string() }
    }
}

impl TelemetrySettings {
    /// What is wrong with the settings, if anything: `(key, problem)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(endpoint) = &self.otlp_endpoint {
            match endpoint.parse::<http::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
                Ok(_) => return Some(("telemetry.otlp_endpoint", format!("{endpoint:?} is not an http:// or https:// URL with a host"))),
                Err(e) => return Some(("telemetry.otlp_endpoint", format!("{endpoint:?} is not a URL: {e}"))),
            }
        }
        if self.service_name.is_empty() || self.service_name.len() > 256 {
            return Some(("telemetry.service_name", format!("is {} bytes; a service name is 1 to 256", self.service_name.len())));
        }
        None
    }

    /// The traces endpoint these settings (or the environment) name.
    fn traces_endpoint(&self) -> Option<String> {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        match &self.otlp_endpoint {
            Some(base) => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
            None => from_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| from_env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))),
        }
    }
}

/// The host's tracer: makes spans and exports them when an endpoint is
/// set; without one, only carries trace context. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracing {
    exporting: Option<(SdkTracerProvider, SdkTracer)>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").field("exporting", &self.exporting.is_some()).finish()
    }
}

/// How long shutting down waits for the last spans to be sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl Tracing {
    /// Traces exported where `settings` (or the environment) say, as host
    /// `host`; a tracer that only carries context when neither names an
    /// endpoint.
    pub fn start(settings: &TelemetrySettings, host: &str) -> anyhow::Result<Self> {
        let Some(endpoint) = settings.traces_endpoint() else { return Ok(Self::default()) };
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_http_client(otlp_client::UreqClient::new())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot make the OTLP trace exporter for {endpoint}: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(KeyValue::new("service.instance.id", host.to_string()));
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(settings.service_name.clone());
        }
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
        let tracer = provider.tracer("kiln");
        tracing::info!(%endpoint, "exporting traces with OTLP");
        Ok(Self { exporting: Some((provider, tracer)) })
    }

    /// Whether spans are made and exported.
    pub fn is_exporting(&self) -> bool {
        self.exporting.is_some()
    }

    /// Sends what is still batched and stops exporting; waits at most a
    /// few seconds for a collector that does not answer.
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.exporting {
            if let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!("the last spans may not have been exported: {e}");
            }
        }
    }

    /// An enqueue of `count` jobs into `queue`, under the caller's
    /// `traceparent` (ignored when it is not valid W3C trace context):
    /// what the jobs keep as theirs. Exporting, a `send` span whose
    /// context that is (a new trace when the caller sent none); not, the
    /// caller's own context, or nothing.
    pub fn enqueued(&self, caller: Option<&str>, queue: &str, count: usize) -> Option<String> {
        let parent = caller.map(remote_context).unwrap_or_default();
        let Some((_, tracer)) = &self.exporting else { return traceparent_of(&parent) };
        let mut attributes = vec![
            KeyValue::new("messaging.system", "kiln"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.operation.name", "send"),
            KeyValue::new("messaging.destination.name", queue.to_string()),
        ];
        if count > 1 {
            attributes.push(KeyValue::new("messaging.batch.message_count", count as i64));
        }
        let mut span = tracer.span_builder(format!("send {queue}")).with_kind(SpanKind::Producer).with_attributes(attributes).start_with_context(tracer, &parent);
        let kept = traceparent_of(&Context::new().with_remote_span_context(span.span_context().clone()));
        span.end();
        kept
    }

    /// One attempt of a job, from its claim at `claimed_at`, under the
    /// context the job keeps (`None`: a trace of its own, or none when not
    /// exporting).
    pub fn attempt(&self, kept: Option<&str>, job: &JobAttempt<'_>, claimed_at: SystemTime) -> AttemptSpan {
        let parent = kept.map(remote_context).unwrap_or_default();
        let Some((_, tracer)) = &self.exporting else {
            return AttemptSpan { span: None, traceparent: traceparent_of(&parent) };
        };
        let attributes = vec![
            KeyValue::new("messaging.system", "kiln"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", job.queue.to_string()),
            KeyValue::new("messaging.message.id", job.id.to_string()),
            KeyValue::new("kiln.job.kind", job.kind.to_string()),
            KeyValue::new("kiln.job.attempt", i64::from(job.attempt)),
            KeyValue::new("kiln.job.max_attempts", i64::from(job.max_attempts)),
        ];
        let span = tracer
            .span_builder(format!("process {}", job.queue))
            .with_kind(SpanKind::Consumer)
            .with_start_time(claimed_at)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let traceparent = traceparent_of(&Context::new().with_remote_span_context(span.span_context().clone()));
        AttemptSpan { span: Some(span), traceparent }
    }
}

/// Which attempt of which job a span is of.
#[derive(Debug, Clone, Copy)]
pub struct JobAttempt<'a> {
    pub id: i64,
    pub kind: &'a str,
    pub queue: &'a str,
    pub attempt: u32,
    pub max_attempts: u32,
}

/// What one attempt cost and how it ended, for its span.
#[derive(Debug, Clone)]
pub struct AttemptEnd<'a> {
    /// `ok`, `retry`, `timed_out`, … (the outcome's name).
    pub outcome: &'a str,
    /// The error the job keeps, when it did not end `ok`.
    pub error: Option<&'a str>,
    pub run_started_at: SystemTime,
    pub run_ended_at: SystemTime,
    pub duration: Duration,
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    pub http_requests: u64,
    pub queue_delay_ms: i64,
}

/// The span of one attempt (when exporting) and the `traceparent` its
/// plugin's requests and children carry.
#[derive(Debug)]
pub struct AttemptSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
    traceparent: Option<String>,
}

/// The longest error text put on a span; the job keeps the whole.
const MAX_SPAN_ERROR_BYTES: usize = 1024;

impl AttemptSpan {
    /// The context the attempt's requests and children carry.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Ends the span at `at` with what the attempt did.
    pub fn end(self, end: &AttemptEnd<'_>, at: SystemTime) {
        let Some(mut span) = self.span else { return };
        span.add_event_with_timestamp("run started", end.run_started_at, Vec::new());
        span.add_event_with_timestamp("run ended", end.run_ended_at, Vec::new());
        span.set_attributes([
            KeyValue::new("kiln.job.outcome", end.outcome.to_string()),
            KeyValue::new("kiln.job.duration_ms", end.duration.as_secs_f64() * 1000.0),
            KeyValue::new("kiln.job.fuel_used", end.fuel_used as i64),
            KeyValue::new("kiln.job.peak_memory_bytes", end.peak_memory_bytes as i64),
            KeyValue::new("kiln.job.http_requests", end.http_requests as i64),
            KeyValue::new("kiln.job.queue_delay_ms", end.queue_delay_ms),
        ]);
        if end.outcome != "ok" {
            span.set_attribute(KeyValue::new("error.type", end.outcome.to_string()));
            let error = end.error.unwrap_or(end.outcome);
            span.set_status(Status::error(error[..error.floor_char_boundary(MAX_SPAN_ERROR_BYTES)].to_string()));
        }
        span.end_with_timestamp(at);
    }
}

/// Whether `traceparent` has the W3C shape: `VV-` 32, 16 and 2 lowercase
/// hex digits, exactly 55 bytes for version `00`, a later version (not
/// `ff`) longer only after a `-`. The SDK's own parser is lenient (it
/// takes a short trace id, padded), which this host does not pass on.
fn well_formed(traceparent: &str) -> bool {
    let b = traceparent.as_bytes();
    let hex = |range: std::ops::Range<usize>| b[range].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    if b.len() < 55 || b.len() > MAX_TRACEPARENT_BYTES || !hex(0..2) || &b[..2] == b"ff" {
        return false;
    }
    let shape = [b[2], b[35], b[52]] == [b'-'; 3] && hex(3..35) && hex(36..52) && hex(53..55);
    let length = if &b[..2] == b"00" { b.len() == 55 } else { b.len() == 55 || b[55] == b'-' };
    shape && length
}

/// The caller's context in `traceparent`, or none when it is not valid.
fn remote_context(traceparent: &str) -> Context {
    if !well_formed(traceparent) {
        return Context::new();
    }
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() { context } else { Context::new() }
}

/// `context`'s span as a `traceparent`, when it has a valid one.
fn traceparent_of(context: &Context) -> Option<String> {
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// A `traceparent` the host keeps, checked: valid W3C trace context, as
/// the host writes it; anything else is `None`.
pub fn checked_traceparent(text: &str) -> Option<String> {
    traceparent_of(&remote_context(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_as_written_and_anything_else_is_dropped() {
        assert_eq!(checked_traceparent(CALLER).as_deref(), Some(CALLER));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "not a traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(checked_traceparent(bad), None, "{bad:?}");
        }
        let long = format!("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}", "a".repeat(MAX_TRACEPARENT_BYTES));
        assert_eq!(checked_traceparent(&long), None, "over the bound, not parsed");
        // A later version's extra fields are ignored; the context is written as version 00.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(checked_traceparent(later).as_deref(), Some(CALLER));
    }

    #[test]
    fn without_an_endpoint_the_callers_context_is_carried_and_nothing_is_made() {
        let tracing = Tracing::default();
        assert!(!tracing.is_exporting());
        assert_eq!(tracing.enqueued(Some(CALLER), "default", 1).as_deref(), Some(CALLER));
        assert_eq!(tracing.enqueued(None, "default", 1), None, "no trace is started");
        let job = JobAttempt { id: 1, kind: "echo", queue: "default", attempt: 1, max_attempts: 1 };
        let attempt = tracing.attempt(Some(CALLER), &job, SystemTime::now());
        assert_eq!(attempt.traceparent(), Some(CALLER));
        assert!(attempt.span.is_none());
    }

    #[test]
    fn endpoints_come_from_the_settings_before_the_environment_and_bad_ones_are_named() {
        let settings = TelemetrySettings { otlp_endpoint: Some("http://collector:4318/".into()), ..Default::default() };
        assert_eq!(settings.traces_endpoint().as_deref(), Some("http://collector:4318/v1/traces"));
        assert_eq!(settings.problem(), None);
        for bad in ["collector:4318", "ftp://collector", "http://"] {
            let settings = TelemetrySettings { otlp_endpoint: Some(bad.into()), ..Default::default() };
            let (key, problem) = settings.problem().expect(bad);
            assert_eq!(key, "telemetry.otlp_endpoint");
            assert!(problem.contains(bad), "{problem}");
        }
    }
}
