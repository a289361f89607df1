//! The narrow handle the trigger services (cron ticks in `scheduler`,
//! loops in `looper`, started and stopped by `triggers`) get from the
//! worker: the store, the runner, the clock and settings, and the two
//! ways they change what the worker holds — a tick made into a job through
//! the one validator, a pass's effects applied — never the whole
//! `Dispatcher`.

use super::config::DispatcherConfig;
use super::enqueue::{self, EnqueueError};
use super::metrics::Metrics;
use super::runner::Runner;
use super::state::Shared;
use crate::queue::{Inserted, JobStore, Millis, SharedClock, StoreError};
use crate::sandbox::Report;
use std::sync::Arc;

#[derive(Clone)]
pub(super) struct TriggerHandle {
    shared: Arc<Shared>,
}

impl TriggerHandle {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub(super) fn store(&self) -> &Arc<dyn JobStore> {
        &self.shared.store
    }

    pub(super) fn runner(&self) -> &Arc<dyn Runner> {
        &self.shared.runner
    }

    pub(super) fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    pub(super) fn config(&self) -> &DispatcherConfig {
        &self.shared.config
    }

    pub(super) fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Where guest code runs (see `Dispatcher::run_jobs_on`).
    pub(super) fn job_runtime(&self) -> tokio::runtime::Handle {
        self.shared.job_runtime()
    }

    /// Inserts the job of schedule `kind`'s tick at `tick` (once across
    /// hosts: its unique key is the tick's) and wakes its queue.
    pub(super) async fn fire_tick(&self, kind: &str, tick: Millis) -> Result<Inserted, EnqueueError> {
        let job = enqueue::tick(&self.shared, kind, tick)?;
        let queue = job.queue.clone();
        let inserted = self.shared.store.insert(job).await?;
        if inserted.created {
            self.shared.wake(&queue);
        }
        Ok(inserted)
    }

    /// Applies what a loop pass of `plugin` changed (see `effects`).
    pub(super) async fn apply_effects(&self, plugin: &str, report: &mut Report) -> Result<(), StoreError> {
        super::effects::apply_outside_a_job(&self.shared, plugin, report).await
    }
}
