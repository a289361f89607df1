//! What the worker's stages share ([`Shared`]): the store and the runner,
//! the jobs this host holds (running, and ended but not yet written), the
//! queues' wake-ups, the finisher's channel, the count of claims and runs
//! in flight, and the stop flags. Each stage (claim, run, finish,
//! heartbeat) holds an `Arc` of it and touches only what it owns.

use super::config::DispatcherConfig;
use super::metrics::Metrics;
use super::retry_policy::StopReason;
use super::runner::Runner;
use crate::queue::{Finish, Job, JobId, JobStore, Lease, SharedClock, Transition};
use crate::sandbox::{ProgressCell, StopSignal};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};

/// A job this host has claimed and not yet seen end: beaten from the claim
/// on, and found there by a cancel, a lost lease or shutdown.
pub(super) struct RunningJob {
    pub(super) lease: Lease,
    pub(super) stop: StopSignal,
    pub(super) reason: Option<StopReason>,
    /// Where the run reports progress; the heartbeat writes what changed.
    pub(super) progress: ProgressCell,
}

/// What the worker's stages share: the store and the runner, the jobs this
/// host holds, the queues' wake-ups, the finisher's channel and the stop flags.
pub(super) struct Shared {
    pub(super) store: Arc<dyn JobStore>,
    pub(super) runner: Arc<dyn Runner>,
    pub(super) config: DispatcherConfig,
    pub(super) clock: SharedClock,
    pub(super) metrics: Arc<Metrics>,
    /// This host's runs per minute, for the dashboard's charts.
    pub(super) run_minutes: Arc<super::run_minutes::RunMinutes>,
    pub(super) wake: BTreeMap<String, Arc<Notify>>,
    /// Runs' ends were written: a claim held back by a limit that waits on
    /// running jobs (`max_running`, `max_per_key`) may find room now.
    pub(super) finished: Notify,
    pub(super) running: Mutex<HashMap<JobId, RunningJob>>,
    /// Leases of runs that have ended but whose transition the finisher has
    /// not written yet: still beaten, so a slow write cannot let them expire.
    pub(super) unwritten: Mutex<HashMap<JobId, Lease>>,
    /// Claims being made and runs not yet handed to the finisher: shutdown
    /// closes the finisher only once this is zero.
    pub(super) in_flight: AtomicUsize,
    pub(super) idle: Notify,
    /// Set by the finisher once its last transition is written: the
    /// heartbeat keeps every lease alive until then.
    pub(super) finisher_done: watch::Sender<bool>,
    pub(super) stopping: watch::Sender<bool>,
    pub(super) accepting: AtomicBool,
    pub(super) finishes: Mutex<Option<mpsc::UnboundedSender<Finish>>>,
    /// Where runs are spawned; the current runtime if not set.
    pub(super) jobs: std::sync::OnceLock<tokio::runtime::Handle>,
}

/// One claim or run the finisher must wait for; counted while it lives.
pub(super) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shared {
    pub(super) fn new(store: Arc<dyn JobStore>, runner: Arc<dyn Runner>, config: DispatcherConfig, clock: SharedClock, metrics: Arc<Metrics>) -> Self {
        let wake = config.queues.iter().map(|q| (q.name.clone(), Arc::new(Notify::new()))).collect();
        Self {
            store,
            runner,
            config,
            clock,
            metrics,
            run_minutes: Arc::default(),
            wake,
            running: Mutex::new(HashMap::new()),
            unwritten: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            stopping: watch::Sender::new(false),
            finisher_done: watch::Sender::new(false),
            finished: Notify::new(),
            accepting: AtomicBool::new(true),
            finishes: Mutex::new(None),
            jobs: std::sync::OnceLock::new(),
        }
    }

    /// True until shutdown starts.
    pub(super) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Where guest code runs: the job runtime if one was set, else the current one.
    pub(super) fn job_runtime(&self) -> tokio::runtime::Handle {
        self.jobs.get().cloned().unwrap_or_else(tokio::runtime::Handle::current)
    }

    /// Wakes `queue`'s loop, if this host serves it.
    pub(super) fn wake(&self, queue: &str) {
        if let Some(wake) = self.wake.get(queue) {
            wake.notify_one();
        }
    }

    /// Wakes each of `queues` once, however often it is named.
    pub(super) fn wake_each<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        let mut queues: Vec<&str> = queues.into_iter().collect();
        queues.sort_unstable();
        queues.dedup();
        for queue in queues {
            self.wake(queue);
        }
    }

    /// Wakes every queue this host serves.
    pub(super) fn wake_all(&self) {
        self.wake.values().for_each(|w| w.notify_one());
    }

    /// The jobs this host holds a lease on: running, or ended and not yet written.
    pub(super) fn held_jobs(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self.running.lock().expect("poisoned").keys().copied().collect();
        ids.extend(self.unwritten.lock().expect("poisoned").keys().copied());
        ids
    }

    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Puts a claimed job back without having run it: waiting again at its
    /// old place in the queue, its attempt not counted.
    pub(super) fn put_back(&self, job: &Job) {
        let lease = job.lease();
        self.unwritten.lock().expect("poisoned").insert(job.id, lease);
        self.send_finish(Finish { lease, transition: Transition::Snooze { at: job.scheduled_at }, ran_version: None, attempt: None });
    }

    pub(super) fn stop_locally(self: &Arc<Self>, id: JobId, reason: StopReason) {
        let mut running = self.running.lock().expect("poisoned");
        let Some(job) = running.get_mut(&id) else { return };
        if job.reason.is_none() || reason == StopReason::LeaseLost {
            job.reason = Some(reason);
        }
        match reason {
            StopReason::LeaseLost => job.stop.interrupt(),
            StopReason::Shutdown => job.stop.cancel(),
            StopReason::CancelRequested => {
                job.stop.cancel();
                let stop = job.stop.clone();
                let grace = self.config.cancel_grace;
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    stop.interrupt();
                });
            }
        }
    }

    pub(super) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    pub(super) fn send_finish(&self, finish: Finish) {
        let sender = self.finishes.lock().expect("poisoned").clone();
        match sender {
            Some(sender) => {
                if sender.send(finish).is_err() {
                    tracing::error!("finisher has stopped; a transition was not written");
                }
            }
            None => tracing::error!(job = finish.lease.id, "finisher already closed; the lease will expire and the job be rescued"),
        }
    }
}
