//! What runs one iteration of a kind: the sandbox, with the version the
//! live registry serves at that moment, in production; a native closure in
//! the benchmark that measures the queue without it.

use crate::plugin::{Manifest, Registry, RetryPolicy, Trigger};
use crate::sandbox::{Budget, JobInput, Outcome, Report, StopSignal};
use async_trait::async_trait;
use std::sync::Arc;

/// What the worker needs to know of one job kind.
#[derive(Debug, Clone)]
pub struct KindInfo {
    pub version: String,
    pub retry: RetryPolicy,
    pub budget: Budget,
    pub trigger: Trigger,
}

impl KindInfo {
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            version: manifest.version.clone(),
            retry: manifest.retry.clone(),
            budget: manifest.budget(),
            trigger: manifest.trigger.clone(),
        }
    }
}

/// One finished iteration, and the plugin version that ran it.
#[derive(Debug)]
pub struct Ran {
    pub report: Report,
    /// `None` when no version of the kind was loaded.
    pub version: Option<String>,
}

/// Runs iterations of the kinds it knows.
#[async_trait]
pub trait Runner: Send + Sync + std::fmt::Debug + 'static {
    /// The kind's policy, or `None` when this host cannot run it.
    fn kind(&self, kind: &str) -> Option<KindInfo>;
    /// The kinds this host runs.
    fn kinds(&self) -> Vec<String>;
    /// A fresh stop signal for one run.
    fn stop_signal(&self) -> StopSignal;
    /// Runs one iteration of `input.kind` with the version serving now.
    async fn run(&self, input: &JobInput, stop: &StopSignal) -> Ran;
    /// Changes whenever the set of kinds (or a kind's version) changes;
    /// `None` for a fixed set.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// The kinds with a `[throttle]`, as claims hold them.
    fn throttled(&self) -> Vec<crate::queue::KindLimits> {
        Vec::new()
    }
}

/// Runs each iteration in a fresh sandbox instance of the version the
/// registry serves when it starts.
#[derive(Debug, Clone)]
pub struct SandboxRunner {
    registry: Arc<Registry>,
}

impl SandboxRunner {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

#[async_trait]
impl Runner for SandboxRunner {
    fn kind(&self, kind: &str) -> Option<KindInfo> {
        self.registry.get(kind).map(|p| KindInfo::of(&p.manifest))
    }

    fn throttled(&self) -> Vec<crate::queue::KindLimits> {
        let plugins = self.registry.snapshot();
        plugins.iter().filter_map(|(kind, p)| kind_limits(kind, &p.manifest.throttle)).collect()
    }

    fn kinds(&self) -> Vec<String> {
        self.registry.snapshot().keys().cloned().collect()
    }

    fn stop_signal(&self) -> StopSignal {
        self.registry.sandbox().stop_signal()
    }

    async fn run(&self, input: &JobInput, stop: &StopSignal) -> Ran {
        // The version is pinned here: a swap during the run does not touch it.
        let Some(plugin) = self.registry.get(&input.kind) else {
            let outcome = Outcome::Fatal(format!("no plugin {:?} is loaded on this host", input.kind));
            return Ran { report: Report::without_cost(outcome), version: None };
        };
        let report = self.registry.sandbox().run_iteration(&plugin.component, input, &plugin.manifest.budget(), stop).await;
        Ran { report, version: Some(plugin.manifest.version.clone()) }
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.registry.subscribe())
    }
}

/// The claim-time limits of kind `kind` from its manifest's `[throttle]`
/// (`None` when it sets none).
fn kind_limits(kind: &str, throttle: &crate::plugin::Throttle) -> Option<crate::queue::KindLimits> {
    (!throttle.is_empty()).then(|| crate::queue::KindLimits {
        kind: kind.to_string(),
        max_per_key: throttle.max_per_key.map(std::num::NonZeroU32::get),
        rate: throttle.rate.as_ref().map(start_rate),
    })
}

/// A manifest's or a tenant's rate as the store's claims hold it.
pub fn start_rate(rate: &crate::tenant::settings::Rate) -> crate::queue::StartRate {
    crate::queue::StartRate { count: rate.count.get(), per_ms: rate.per.as_millis() as i64 }
}
