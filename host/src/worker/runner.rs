//! What runs a claimed job: the sandbox in production; a native closure in
//! the benchmark that measures the queue without it.

use crate::plugin::{Manifest, Plugin, RetryPolicy};
use crate::queue::Job;
use crate::sandbox::{Budget, JobInput, Report, Sandbox, StopSignal};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the worker needs to know of one job kind.
#[derive(Debug, Clone)]
pub struct KindInfo {
    pub version: String,
    pub retry: RetryPolicy,
    pub budget: Budget,
}

/// Runs jobs of the kinds it knows.
#[async_trait]
pub trait Runner: Send + Sync + std::fmt::Debug + 'static {
    /// The kind's policy, or `None` when this host cannot run it.
    fn kind(&self, kind: &str) -> Option<KindInfo>;
    /// The kinds this host runs.
    fn kinds(&self) -> Vec<String>;
    /// A fresh stop signal for one run.
    fn stop_signal(&self) -> StopSignal;
    /// Runs one attempt of `job`.
    async fn run(&self, job: &Job, stop: &StopSignal) -> Report;
}

/// The loaded plugins, by name.
pub type PluginSet = Arc<BTreeMap<String, Arc<Plugin>>>;

/// Runs each job as one fresh sandbox iteration of its kind's plugin.
#[derive(Debug, Clone)]
pub struct SandboxRunner {
    sandbox: Arc<Sandbox>,
    plugins: PluginSet,
}

impl SandboxRunner {
    pub fn new(sandbox: Arc<Sandbox>, plugins: PluginSet) -> Self {
        Self { sandbox, plugins }
    }
}

fn kind_info(manifest: &Manifest) -> KindInfo {
    KindInfo { version: manifest.version.clone(), retry: manifest.retry.clone(), budget: manifest.budget() }
}

#[async_trait]
impl Runner for SandboxRunner {
    fn kind(&self, kind: &str) -> Option<KindInfo> {
        self.plugins.get(kind).map(|p| kind_info(&p.manifest))
    }

    fn kinds(&self) -> Vec<String> {
        self.plugins.keys().cloned().collect()
    }

    fn stop_signal(&self) -> StopSignal {
        self.sandbox.stop_signal()
    }

    async fn run(&self, job: &Job, stop: &StopSignal) -> Report {
        let Some(plugin) = self.plugins.get(&job.kind) else {
            return Report::without_cost(crate::sandbox::Outcome::Fatal(format!("no plugin {:?} is loaded on this host", job.kind)));
        };
        let input = JobInput {
            id: job.id.to_string(),
            kind: job.kind.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            payload: job.payload.clone(),
            checkpoint: None,
        };
        self.sandbox.run_iteration(&plugin.component, &input, &plugin.manifest.budget(), stop).await
    }
}
