//! The worker's Prometheus metrics: what ran, how it ended, what it cost,
//! how long it waited. Rendered by the API's `/metrics`.

use crate::queue::StateCount;
use crate::sandbox::Report;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThrottleLabels {
    tenant: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindThrottleLabels {
    kind: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepthLabels {
    queue: String,
    state: String,
}

type Histograms = Family<KindLabels, Histogram, fn() -> Histogram>;

/// 0.1 ms to ~6.5 min in 24 doublings: from a no-op run to a long batch job.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 24))
}

/// 64 KiB (one wasm page) to 1 GiB (the most a plugin may get).
fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(65536.0, 2.0, 15))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    finished: Family<OutcomeLabels, Counter>,
    failures: Family<KindLabels, Counter>,
    queue_delay: Histograms,
    run_duration: Histograms,
    fuel_used: Family<KindLabels, Counter>,
    peak_memory: Histograms,
    http_requests: Family<KindLabels, Counter>,
    http_bytes_sent: Family<KindLabels, Counter>,
    http_bytes_received: Family<KindLabels, Counter>,
    depth: Family<DepthLabels, Gauge>,
    throttled: Family<ThrottleLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    kind_throttled: Family<KindThrottleLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let finished = Family::<OutcomeLabels, Counter>::default();
        let failures = Family::<KindLabels, Counter>::default();
        let queue_delay = Histograms::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let run_duration = Histograms::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let fuel_used = Family::<KindLabels, Counter>::default();
        let peak_memory = Histograms::new_with_constructor(bytes_histogram as fn() -> Histogram);
        let depth = Family::<DepthLabels, Gauge>::default();
        let (http_requests, http_bytes_sent, http_bytes_received) = Default::default();
        registry.register("http_requests", "Outbound HTTP requests plugins sent, by plugin", Family::<KindLabels, Counter>::clone(&http_requests));
        registry.register("http_sent_bytes", "Outbound HTTP request body bytes plugins sent, by plugin", Family::<KindLabels, Counter>::clone(&http_bytes_sent));
        registry.register("http_received_bytes", "Outbound HTTP response body bytes plugins received, by plugin", Family::<KindLabels, Counter>::clone(&http_bytes_received));
        registry.register("jobs_finished", "Job runs finished, by kind and outcome", finished.clone());
        registry.register("job_failures", "Job runs that did not end ok, by kind", failures.clone());
        registry.register("queue_delay_seconds", "Time from a job being due to its run starting", queue_delay.clone());
        registry.register("run_duration_seconds", "Duration of one job run (one sandbox iteration)", run_duration.clone());
        registry.register("fuel_used", "Fuel (≈ wasm instructions) used by job runs, by plugin", fuel_used.clone());
        registry.register("peak_memory_bytes", "Peak memory of one job run, by plugin", peak_memory.clone());
        registry.register("queue_depth", "Jobs by queue and state", depth.clone());
        let throttled = Family::<ThrottleLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "tenant_throttled_seconds",
            "Time a tenant's due jobs waited on one of its limits (max_running, rate) or its kinds' (max_per_key, kind_rate: summed \
             over its kinds), as this host's claims saw it",
            throttled.clone(),
        );
        let kind_throttled = Family::<KindThrottleLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "kind_throttled_seconds",
            "Time a kind's due jobs waited on its [throttle] (max_per_key, kind_rate), as this host's claims saw it",
            kind_throttled.clone(),
        );
        Self {
            registry,
            finished,
            failures,
            queue_delay,
            run_duration,
            fuel_used,
            peak_memory,
            http_requests,
            http_bytes_sent,
            http_bytes_received,
            depth,
            throttled,
            kind_throttled,
        }
    }

    /// `tenant`'s due jobs (of `kind`, when it was the kind's limit)
    /// waited `seconds` more on `limit`.
    pub fn throttled(&self, tenant: Option<&str>, kind: Option<&str>, limit: crate::queue::Limit, seconds: f64) {
        let labels = ThrottleLabels { tenant: tenant.unwrap_or("").to_string(), limit: limit.as_str().to_string() };
        self.throttled.get_or_create(&labels).inc_by(seconds);
        if let Some(kind) = kind {
            let labels = KindThrottleLabels { kind: kind.to_string(), limit: limit.as_str().to_string() };
            self.kind_throttled.get_or_create(&labels).inc_by(seconds);
        }
    }

    /// The seconds `tenant`'s due jobs waited on `limit` so far.
    pub fn throttled_seconds(&self, tenant: Option<&str>, limit: crate::queue::Limit) -> f64 {
        let labels = ThrottleLabels { tenant: tenant.unwrap_or("").to_string(), limit: limit.as_str().to_string() };
        self.throttled.get(&labels).map_or(0.0, |c| c.get())
    }

    /// A run starts `delay_ms` after its job was due.
    pub fn job_started(&self, kind: &str, delay_ms: i64) {
        let labels = KindLabels { kind: kind.to_string() };
        self.queue_delay.get_or_create(&labels).observe(delay_ms.max(0) as f64 / 1000.0);
    }

    pub fn job_finished(&self, kind: &str, report: &Report) {
        let labels = KindLabels { kind: kind.to_string() };
        self.finished.get_or_create(&OutcomeLabels { kind: kind.to_string(), outcome: report.outcome.name().to_string() }).inc();
        if !report.outcome.is_ok() {
            self.failures.get_or_create(&labels).inc();
        }
        self.run_duration.get_or_create(&labels).observe(report.duration.as_secs_f64());
        self.fuel_used.get_or_create(&labels).inc_by(report.fuel_used);
        self.peak_memory.get_or_create(&labels).observe(report.peak_memory_bytes as f64);
        if report.http.requests > 0 {
            self.http_requests.get_or_create(&labels).inc_by(report.http.requests);
            self.http_bytes_sent.get_or_create(&labels).inc_by(report.http.bytes_sent);
            self.http_bytes_received.get_or_create(&labels).inc_by(report.http.bytes_received);
        }
    }

    /// The Prometheus text exposition, with queue depth from `counts`.
    pub fn render(&self, counts: &[StateCount]) -> String {
        self.depth.clear();
        // Summed over tenants: one gauge per queue and state.
        let mut depth: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
        for c in counts {
            *depth.entry((&c.queue, c.state.as_str())).or_default() += c.count;
        }
        for ((queue, state), count) in depth {
            self.depth.get_or_create(&DepthLabels { queue: queue.to_string(), state: state.to_string() }).set(count as i64);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
