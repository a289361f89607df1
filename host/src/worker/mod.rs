//! The BackgroundService analog: claims jobs, runs them, retries them, keeps
//! their leases, shuts down gracefully. The only part that knows both the
//! queue and the sandbox.
//!
//! One room per stage of a job, each owning its loop and sharing
//! `state::Shared`: [`enqueue`] (the one type and validator of a new
//! job, whoever makes it), `claim` (each queue's loop: batches, width,
//! fair share, limits), `run` (one claimed job through the sandbox), `pace` (what
//! recent runs cost, which sizes claims),
//! [`effects`] (what a run changed, applied with its completion),
//! `finish` (transitions written in batches), `heartbeat` (leases
//! kept alive). This file starts them and hands out the [`Dispatcher`].
//!
//! The services around them, one file each: [`scheduler`] (cron and
//! interval ticks), [`looper`] (continuous loops), [`startup`] (start-up
//! plugins), `triggers` (starts and stops the schedule and loop tasks as
//! the registry changes; they get a narrow `handle`, not the
//! dispatcher), [`rescuer`] (expired leases), [`retry_policy`] (outcome →
//! transition), [`runner`] (what runs an iteration), [`kv_backend`] (the
//! kv capability's reads of the job store), [`metrics`], [`run_minutes`]
//! (runs per minute, for the dashboard), [`pruner`] (retention),
//! `counts` (the store's count upkeep), [`config`] (settings), and
//! [`service`]: what callers of the API and the dashboard may do, the
//! only way they reach the store.

mod claim;
pub mod config;
mod counts;
pub mod effects;
pub mod enqueue;
pub mod fair_share;
mod finish;
mod handle;
mod heartbeat;
pub mod kv_backend;
pub mod looper;
pub mod metrics;
pub mod pruner;
pub mod rescuer;
pub mod retry_policy;
mod pace;
mod run;
pub mod run_minutes;
pub mod runner;
pub mod scheduler;
pub mod service;
pub mod startup;
mod state;
#[cfg(test)]
mod tests;
mod triggers;

pub use config::{AttemptRecords, DispatcherConfig, QueueConfig};
pub use enqueue::{EnqueueError, EnqueueRequest};
pub use kv_backend::StoreKv;
pub use metrics::Metrics;
pub use runner::{KindInfo, Ran, Runner, SandboxRunner};
pub use service::{JobService, ServiceError};
pub use startup::{StartupFailed, run_startup_plugins};

use handle::TriggerHandle;
use retry_policy::StopReason;
use state::Shared;
use crate::queue::{Inserted, Job, JobId, JobStore, SharedClock, StoreError};
use rescuer::Rescuer;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// The worker: cheap to clone, shared by the API and the signal handler.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("host", &self.shared.config.host).finish_non_exhaustive()
    }
}

/// The dispatcher's background tasks; await `stopped` after `shutdown`.
#[derive(Debug)]
pub struct Running {
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Resolves once every queue loop, the heartbeat, the rescuer and the
    /// finisher have ended (after [`Dispatcher::shutdown`]).
    pub async fn stopped(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!("dispatcher task failed: {e}");
            }
        }
    }
}

impl Dispatcher {
    pub fn new(store: Arc<dyn JobStore>, runner: Arc<dyn Runner>, config: DispatcherConfig, clock: SharedClock, metrics: Arc<Metrics>) -> Self {
        Self { shared: Arc::new(Shared::new(store, runner, config, clock, metrics)) }
    }

    /// The store, for the worker's own services (`service`): nothing
    /// outside the worker reaches it.
    pub(in crate::worker) fn store(&self) -> &Arc<dyn JobStore> {
        &self.shared.store
    }

    pub fn runner(&self) -> &Arc<dyn Runner> {
        &self.shared.runner
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn config(&self) -> &DispatcherConfig {
        &self.shared.config
    }

    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// Where guest code runs: the job runtime if one was set, else the current one.
    pub fn job_runtime(&self) -> tokio::runtime::Handle {
        self.shared.job_runtime()
    }

    /// Runs jobs on `runtime` instead of the current one, so guests (which
    /// yield only once per epoch tick) never queue ahead of the API, the
    /// heartbeats and the claims. Call before [`start`](Self::start).
    pub fn run_jobs_on(&self, runtime: tokio::runtime::Handle) {
        let _ = self.shared.jobs.set(runtime);
    }

    /// True until shutdown starts.
    pub fn is_accepting(&self) -> bool {
        self.shared.is_accepting()
    }

    /// Starts the queue loops, the heartbeat, the rescuer and the finisher.
    pub fn start(&self) -> Running {
        let mut tasks = tokio::task::JoinSet::new();
        let (finish_tx, finish_rx) = mpsc::unbounded_channel();
        *self.shared.finishes.lock().expect("poisoned") = Some(finish_tx);
        tasks.spawn(finish::finisher(self.shared.clone(), finish_rx));
        // A queue with no concurrency here is enqueue-only: other hosts run it.
        for queue in self.shared.config.queues.iter().filter(|q| q.concurrency > 0) {
            tasks.spawn(claim::queue_loop(self.shared.clone(), queue.clone()));
        }
        tasks.spawn(heartbeat::heartbeat_loop(self.shared.clone()));
        if let Some(wakeups) = self.shared.store.wakeups() {
            tasks.spawn(claim::wake_on_announcements(self.shared.clone(), wakeups));
        }
        let rescuer = Rescuer::new(self.shared.store.clone(), self.shared.config.lease);
        let (held, wake) = (self.shared.clone(), self.shared.clone());
        tasks.spawn(rescuer.run(self.shared.stopping.subscribe(), move || held.held_jobs(), move || wake.wake_all()));
        tasks.spawn(counts::fold_counts_loop(self.shared.store.clone(), self.shared.stopping.subscribe()));
        tasks.spawn(run_minutes::flush_loop(
            self.shared.run_minutes.clone(),
            self.shared.store.clone(),
            self.shared.clock.clone(),
            self.shared.config.host.clone(),
            self.shared.stopping.subscribe(),
        ));
        if let Some(retention) = self.shared.config.retention.clone() {
            tasks.spawn(pruner::run(self.shared.store.clone(), self.shared.clock.clone(), retention, self.shared.stopping.subscribe()));
        }
        tasks.spawn(triggers::supervise(TriggerHandle::new(self.shared.clone()), self.shared.runner.changes(), self.shared.stopping.subscribe()));
        let queues: Vec<String> = self
            .shared
            .config
            .queues
            .iter()
            .map(|q| match q.light_concurrency > q.concurrency {
                true => format!("{} (concurrency {}, {} while its jobs are light)", q.name, q.concurrency, q.light_concurrency),
                false => format!("{} (concurrency {})", q.name, q.concurrency),
            })
            .collect();
        tracing::info!(host = %self.shared.config.host, queues = %queues.join(", "), "dispatcher started");
        Running { tasks }
    }

    /// Validates and inserts a client's jobs, then wakes their queues at
    /// once. An unknown kind, an oversized payload or an unserved queue
    /// refuses the whole batch before anything is stored (see `enqueue`).
    pub async fn enqueue(&self, requests: Vec<EnqueueRequest>) -> Result<Vec<Inserted>, EnqueueError> {
        enqueue::from_client(&self.shared, requests).await
    }

    /// Applies what a loop pass or a start-up run of `plugin` changed (its
    /// kv writes, the jobs it enqueued), and wakes the children's queues.
    /// Those runs complete no job for the effects to go in with: they are
    /// applied after the pass's checkpoint is stored (or the start-up run
    /// ended `ok`), in transactions of their own.
    pub async fn apply_effects(&self, plugin: &str, report: &mut crate::sandbox::Report) -> Result<(), StoreError> {
        effects::apply_outside_a_job(&self.shared, plugin, report).await
    }

    /// Cancels a job: a waiting one at once; a running one here sees
    /// `cancelled()` now and is interrupted after the cancel grace period.
    pub async fn cancel(&self, id: JobId) -> Result<Job, StoreError> {
        let job = self.shared.store.cancel(id).await?;
        if job.cancel_requested {
            self.shared.stop_locally(id, StopReason::CancelRequested);
        }
        Ok(job)
    }

    /// Wakes a queue (after a hand retry, a resume).
    pub fn wake(&self, queue: &str) {
        self.shared.wake(queue);
    }

    /// Graceful stop: stop claiming, ask running jobs to cancel, wait up to
    /// the grace period, interrupt the rest, write every transition. Jobs
    /// stopped this way go back to `available` without counting the attempt.
    /// A claim already on its way is waited for, and the jobs it brings are
    /// put back without being started.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        // Under the lock that claimed jobs are registered with: each one is
        // either registered before this (and asked to stop below) or sees
        // that the host is stopping (and is put back).
        let running: Vec<JobId> = {
            let running = shared.running.lock().expect("poisoned");
            shared.accepting.store(false, Ordering::SeqCst);
            running.keys().copied().collect()
        };
        shared.stopping.send_replace(true);
        tracing::info!(running = running.len(), "shutdown: stopped claiming; asking running jobs to cancel");
        for id in &running {
            shared.stop_locally(*id, StopReason::Shutdown);
        }
        let grace = shared.config.shutdown_grace;
        if tokio::time::timeout(grace, shared.wait_idle()).await.is_err() {
            let left: Vec<JobId> = shared.running.lock().expect("poisoned").keys().copied().collect();
            tracing::warn!(jobs = ?left, "shutdown: grace period of {grace:?} over; interrupting what is left");
            for running in shared.running.lock().expect("poisoned").values() {
                running.stop.interrupt();
            }
            shared.wait_idle().await;
        }
        tracing::info!("shutdown: no claim is in flight and every run has ended; writing the last transitions");
        // Closing the channel lets the finisher drain and end.
        shared.finishes.lock().expect("poisoned").take();
    }
}
