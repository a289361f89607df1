//! `Dispatcher`: the BackgroundService of Kiln. Claims jobs from each named
//! queue in batches, runs each in the runner (one fresh sandbox iteration),
//! turns the outcome into a state transition, keeps leases alive, and shuts
//! down without losing a job.

use super::fair_share::{FairShare, Held, TenantPolicy};
use super::metrics::Metrics;
use super::rescuer::Rescuer;
use super::retry_policy::{StopReason, decide};
use super::runner::{Ran, Runner};
use crate::queue::{
    ClaimParams, Finish, HeartbeatParams, Inserted, Job, JobId, JobStore, Lease, Millis, NewJob, SharedClock, StoreError, Transition,
};
use crate::sandbox::{JobInput, Outcome, ProgressCell, StopSignal};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// The most jobs one claim takes: enough to amortise the claim's
/// transaction over many short jobs. A host does not hoard with it: a
/// claim takes only as many as the queue has free slots (its width), plus
/// what those slots get through in [`LOOKAHEAD`].
pub const DEFAULT_CLAIM_BATCH: usize = 256;
/// Transitions written per transaction, for the same reason.
pub const DEFAULT_FINISH_BATCH: usize = 256;
/// A lease outlives a host by this much: a dead host's jobs come back
/// within it (plus one rescue period).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Safety net for work that nothing announces (a retry came due, another
/// process enqueued into a store that cannot announce it, an announcement
/// lost in an outage); local enqueues, and on Postgres every host's, wake
/// the queue at once.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// When a busy queue has only a few free slots, wait this long for more
/// before claiming, so claims come in batches instead of one job per
/// transaction. An idle queue claims at once.
pub const CLAIM_COOLDOWN: Duration = Duration::from_millis(1);
/// A queue claims ahead of its free slots at most what they get through in
/// this long (see `queue_loop`): the most a job claimed ahead waits here.
pub const LOOKAHEAD: Duration = Duration::from_millis(20);
/// The finisher's first wait before writing a batch again while the store
/// is unreachable; it doubles each time.
pub const FINISH_RETRY_DELAY: Duration = Duration::from_millis(50);
/// The finisher's longest wait between tries: once the store is back, the
/// transitions are written within this.
pub const FINISH_RETRY_MAX_DELAY: Duration = Duration::from_secs(1);
/// The longest `unique_key` a job may carry: room for a kind, a date and a
/// few ids, and an index entry that stays small.
pub const MAX_UNIQUE_KEY_BYTES: usize = 512;
/// How long running jobs get to finish on shutdown before they are interrupted.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a cancelled job gets to return before it is interrupted.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// One named queue and how many of its jobs run at once on this host (0:
/// it takes jobs in but runs none; see `QueueSettings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    pub concurrency: usize,
    /// How many run at once while the queue's runs are light (see
    /// [`LIGHT_RUN_FUEL`]); at least `concurrency`.
    pub light_concurrency: usize,
}

impl QueueConfig {
    /// A queue that runs `concurrency` jobs at once, light or not.
    pub fn fixed(name: impl Into<String>, concurrency: usize) -> Self {
        Self { name: name.into(), concurrency, light_concurrency: concurrency }
    }
}

/// Jobs of the default queue that run at once, per core: room for a few
/// CPU-bound jobs each, so a long one is not time-sliced past its timeout.
pub const DEFAULT_CONCURRENCY_PER_CORE: usize = 4;
/// ... and per core while its runs are light: enough jobs in flight that
/// the cores stay busy through each short job's claim, start and finish.
pub const DEFAULT_LIGHT_CONCURRENCY_PER_CORE: usize = 128;
/// The default queue's light concurrency is at most this (half the
/// default instance pool), however many cores.
pub const MAX_DEFAULT_LIGHT_CONCURRENCY: usize = 512;
/// A run is light when it uses less fuel than this (a few milliseconds of
/// CPU) and less memory than [`LIGHT_RUN_MEMORY`]: many such runs at once
/// cost the host little, and none of them is slowed past its budget.
pub const LIGHT_RUN_FUEL: u64 = 10_000_000;
pub const LIGHT_RUN_MEMORY: u64 = 8 << 20;
/// A queue widens to its light concurrency after this many light runs in a
/// row; one run that is not light narrows it again at once.
pub const LIGHT_STREAK: u32 = 32;

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// This host's name in leases.
    pub host: String,
    pub queues: Vec<QueueConfig>,
    pub claim_batch: usize,
    pub finish_batch: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub shutdown_grace: Duration,
    pub cancel_grace: Duration,
    /// The largest payload accepted at enqueue.
    pub max_payload_bytes: usize,
    /// Tenants and their weights, for fair share (see `fair_share`);
    /// empty: claims take the best due jobs, whoever's.
    pub tenants: Vec<TenantPolicy>,
    /// How long finished jobs are kept (`None`: for ever).
    pub retention: Option<super::pruner::Retention>,
    /// What is kept of each attempt.
    pub attempts: AttemptRecords,
    /// Spans of enqueues and attempts, and the trace context jobs carry.
    pub tracing: crate::telemetry::Tracing,
}

/// `kiln.toml`'s `[attempts]`: what the store keeps of each attempt, with
/// its job (and deleted with it by the pruner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttemptRecords {
    /// Each attempt's host, plugin version, start and end, outcome, error,
    /// fuel, peak memory and HTTP requests: on.
    pub record: bool,
    /// ... and its log lines (`context.log`, stdout, stderr), at most
    /// [`MAX_LOG_BYTES_PER_ITERATION`](crate::sandbox::MAX_LOG_BYTES_PER_ITERATION)
    /// an attempt: on.
    pub logs: bool,
}

impl Default for AttemptRecords {
    fn default() -> Self {
        Self { record: true, logs: true }
    }
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            host: default_host_name(),
            queues: vec![QueueConfig {
                name: crate::queue::DEFAULT_QUEUE.into(),
                concurrency: cores * DEFAULT_CONCURRENCY_PER_CORE,
                light_concurrency: (cores * DEFAULT_LIGHT_CONCURRENCY_PER_CORE).min(MAX_DEFAULT_LIGHT_CONCURRENCY),
            }],
            claim_batch: DEFAULT_CLAIM_BATCH,
            finish_batch: DEFAULT_FINISH_BATCH,
            lease: DEFAULT_LEASE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            max_payload_bytes: crate::sandbox::DEFAULT_MAX_PAYLOAD_BYTES,
            tenants: Vec::new(),
            retention: Some(super::pruner::Retention::default()),
            attempts: AttemptRecords::default(),
            tracing: crate::telemetry::Tracing::default(),
        }
    }
}

/// `hostname-pid`: unique among live processes on one machine.
pub fn default_host_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

/// Why an enqueue was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("unknown job kind {kind:?}: no plugin of that name is loaded (loaded: {known})")]
    UnknownKind { kind: String, known: String },
    #[error("plugin {kind:?} is a {trigger} plugin: the host runs it, it is not enqueued")]
    NotEnqueued { kind: String, trigger: &'static str },
    #[error("job {index}: payload is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge { index: usize, size: usize, limit: usize },
    #[error("job {index}: queue {queue:?} is not served by this host (queues: {known})")]
    UnknownQueue { index: usize, queue: String, known: String },
    #[error("job {index}: max_attempts is {given}; it must be between 1 and {}", crate::plugin::MAX_ATTEMPTS)]
    BadAttempts { index: usize, given: u32 },
    #[error("job {index}: unique_key is {size} bytes, over the limit of {limit} bytes")]
    UniqueKeyTooLong { index: usize, size: usize, limit: usize },
    #[error("job {index}: concurrency_key {problem}")]
    BadConcurrencyKey { index: usize, problem: String },
    #[error(
        "tenant {tenant:?} has {waiting} jobs waiting and this adds {adding}: over its quota of {limit} \
         (`tenants.{tenant}.max_waiting`); nothing was enqueued"
    )]
    OverQuota { tenant: String, waiting: u64, adding: u64, limit: u64 },
    #[error("the host is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job as a client asks for it; unset fields take the plugin's defaults.
#[derive(Debug, Clone, Default)]
pub struct EnqueueRequest {
    pub kind: String,
    pub payload: Vec<u8>,
    pub queue: Option<String>,
    pub priority: Option<i32>,
    pub unique_key: Option<String>,
    pub scheduled_at: Option<i64>,
    pub max_attempts: Option<u32>,
    /// Its group under the kind's `[throttle] max_per_key`.
    pub concurrency_key: Option<String>,
    /// The caller's W3C `traceparent`, as it came (not valid: ignored).
    pub traceparent: Option<String>,
}

struct RunningJob {
    lease: Lease,
    stop: StopSignal,
    reason: Option<StopReason>,
    /// Where the run reports progress; the heartbeat writes what changed.
    progress: ProgressCell,
}

struct Inner {
    store: Arc<dyn JobStore>,
    runner: Arc<dyn Runner>,
    config: DispatcherConfig,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// This host's runs per minute, for the dashboard's charts.
    run_minutes: Arc<super::run_minutes::RunMinutes>,
    wake: BTreeMap<String, Arc<Notify>>,
    /// Runs' ends were written: a claim held back by a limit that waits on
    /// running jobs (`max_running`, `max_per_key`) may find room now.
    finished: Notify,
    running: Mutex<HashMap<JobId, RunningJob>>,
    /// Leases of runs that have ended but whose transition the finisher has
    /// not written yet: still beaten, so a slow write cannot let them expire.
    unwritten: Mutex<HashMap<JobId, Lease>>,
    /// Claims being made and runs not yet handed to the finisher: shutdown
    /// closes the finisher only once this is zero.
    in_flight: AtomicUsize,
    idle: Notify,
    /// Set by the finisher once its last transition is written: the
    /// heartbeat keeps every lease alive until then.
    finisher_done: watch::Sender<bool>,
    stopping: watch::Sender<bool>,
    accepting: AtomicBool,
    finishes: Mutex<Option<mpsc::UnboundedSender<Finish>>>,
    /// Where runs are spawned; the current runtime if not set.
    jobs: std::sync::OnceLock<tokio::runtime::Handle>,
}

/// The worker: cheap to clone, shared by the API and the signal handler.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("host", &self.inner.config.host).finish_non_exhaustive()
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
        let wake = config.queues.iter().map(|q| (q.name.clone(), Arc::new(Notify::new()))).collect();
        Self {
            inner: Arc::new(Inner {
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
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    pub fn runner(&self) -> &Arc<dyn Runner> {
        &self.inner.runner
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn config(&self) -> &DispatcherConfig {
        &self.inner.config
    }

    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// Where guest code runs: the job runtime if one was set, else the current one.
    pub fn job_runtime(&self) -> tokio::runtime::Handle {
        self.inner.jobs.get().cloned().unwrap_or_else(tokio::runtime::Handle::current)
    }

    /// Runs jobs on `runtime` instead of the current one, so guests (which
    /// yield only once per epoch tick) never queue ahead of the API, the
    /// heartbeats and the claims. Call before [`start`](Self::start).
    pub fn run_jobs_on(&self, runtime: tokio::runtime::Handle) {
        let _ = self.inner.jobs.set(runtime);
    }

    /// True until shutdown starts.
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::SeqCst)
    }

    /// Starts the queue loops, the heartbeat, the rescuer and the finisher.
    pub fn start(&self) -> Running {
        let mut tasks = tokio::task::JoinSet::new();
        let (finish_tx, finish_rx) = mpsc::unbounded_channel();
        *self.inner.finishes.lock().expect("poisoned") = Some(finish_tx);
        tasks.spawn(finisher(self.inner.clone(), finish_rx));
        // A queue with no concurrency here is enqueue-only: other hosts run it.
        for queue in self.inner.config.queues.iter().filter(|q| q.concurrency > 0) {
            tasks.spawn(queue_loop(self.inner.clone(), queue.clone()));
        }
        tasks.spawn(heartbeat_loop(self.inner.clone()));
        if let Some(wakeups) = self.inner.store.wakeups() {
            tasks.spawn(wake_on_announcements(self.inner.clone(), wakeups));
        }
        let rescuer = Rescuer::new(self.inner.store.clone(), self.inner.config.lease);
        let wake: Vec<Arc<Notify>> = self.inner.wake.values().cloned().collect();
        let held = {
            let inner = self.inner.clone();
            move || {
                let mut ids: Vec<JobId> = inner.running.lock().expect("poisoned").keys().copied().collect();
                ids.extend(inner.unwritten.lock().expect("poisoned").keys().copied());
                ids
            }
        };
        tasks.spawn(rescuer.run(self.inner.stopping.subscribe(), held, move || wake.iter().for_each(|w| w.notify_one())));
        tasks.spawn(fold_counts_loop(self.inner.store.clone(), self.inner.stopping.subscribe()));
        tasks.spawn(super::run_minutes::flush_loop(
            self.inner.run_minutes.clone(),
            self.inner.store.clone(),
            self.inner.clock.clone(),
            self.inner.config.host.clone(),
            self.inner.stopping.subscribe(),
        ));
        if let Some(retention) = self.inner.config.retention.clone() {
            tasks.spawn(super::pruner::run(self.inner.store.clone(), self.inner.clock.clone(), retention, self.inner.stopping.subscribe()));
        }
        tasks.spawn(super::triggers::supervise(self.clone(), self.inner.runner.changes(), self.inner.stopping.subscribe()));
        let queues: Vec<String> = self
            .inner
            .config
            .queues
            .iter()
            .map(|q| match q.light_concurrency > q.concurrency {
                true => format!("{} (concurrency {}, {} while its jobs are light)", q.name, q.concurrency, q.light_concurrency),
                false => format!("{} (concurrency {})", q.name, q.concurrency),
            })
            .collect();
        tracing::info!(host = %self.inner.config.host, queues = %queues.join(", "), "dispatcher started");
        Running { tasks }
    }

    /// Validates and inserts jobs, then wakes their queues at once. An
    /// unknown kind, an oversized payload or an unserved queue refuses the
    /// whole batch before anything is stored.
    pub async fn enqueue(&self, requests: Vec<EnqueueRequest>) -> Result<Vec<Inserted>, EnqueueError> {
        if !self.is_accepting() {
            return Err(EnqueueError::ShuttingDown);
        }
        let mut jobs = Vec::with_capacity(requests.len());
        for (index, r) in requests.into_iter().enumerate() {
            let Some(kind) = self.inner.runner.kind(&r.kind) else {
                // Only the kinds a client may enqueue: not schedules, loops or start-up plugins.
                let enqueueable: Vec<String> = self
                    .inner
                    .runner
                    .kinds()
                    .into_iter()
                    .filter(|k| self.inner.runner.kind(k).is_some_and(|info| info.trigger.accepts_jobs()))
                    .collect();
                return Err(EnqueueError::UnknownKind { kind: r.kind, known: enqueueable.join(", ") });
            };
            if !kind.trigger.accepts_jobs() {
                return Err(EnqueueError::NotEnqueued { kind: r.kind, trigger: kind.trigger.name() });
            }
            if r.payload.len() > self.inner.config.max_payload_bytes {
                return Err(EnqueueError::PayloadTooLarge { index, size: r.payload.len(), limit: self.inner.config.max_payload_bytes });
            }
            let queue = r.queue.unwrap_or_else(|| crate::queue::DEFAULT_QUEUE.to_string());
            if !self.inner.wake.contains_key(&queue) {
                let known = self.inner.wake.keys().cloned().collect::<Vec<_>>().join(", ");
                return Err(EnqueueError::UnknownQueue { index, queue, known });
            }
            let max_attempts = r.max_attempts.unwrap_or(kind.retry.max_attempts);
            if max_attempts == 0 || max_attempts > crate::plugin::MAX_ATTEMPTS {
                return Err(EnqueueError::BadAttempts { index, given: max_attempts });
            }
            if let Some(key) = &r.unique_key {
                if key.len() > MAX_UNIQUE_KEY_BYTES {
                    return Err(EnqueueError::UniqueKeyTooLong { index, size: key.len(), limit: MAX_UNIQUE_KEY_BYTES });
                }
            }
            if let Some(problem) = r.concurrency_key.as_deref().and_then(crate::queue::concurrency_key_problem) {
                return Err(EnqueueError::BadConcurrencyKey { index, problem });
            }
            jobs.push(NewJob {
                kind: r.kind,
                queue,
                priority: r.priority.unwrap_or(0),
                payload: r.payload,
                max_attempts,
                scheduled_at: r.scheduled_at,
                unique_key: r.unique_key,
                parent_id: None,
                concurrency_key: r.concurrency_key,
                traceparent: r.traceparent,
            });
        }
        self.check_waiting_quota(&jobs).await?;
        self.trace_enqueue(&mut jobs);
        let inserted = self.inner.store.insert_many(jobs).await?;
        let mut woken: Vec<&str> = inserted.iter().filter(|i| i.created).map(|i| i.job.queue.as_str()).collect();
        woken.dedup();
        for queue in woken {
            if let Some(wake) = self.inner.wake.get(queue) {
                wake.notify_one();
            }
        }
        Ok(inserted)
    }

    /// Replaces each job's caller `traceparent` with what it keeps: the
    /// context of one `send` span per queue and caller (exporting), or the
    /// caller's own when valid.
    fn trace_enqueue(&self, jobs: &mut [NewJob]) {
        let tracing = &self.inner.config.tracing;
        if !tracing.is_exporting() && jobs.iter().all(|j| j.traceparent.is_none()) {
            return;
        }
        let mut kept: HashMap<(String, Option<String>), Option<String>> = HashMap::new();
        let mut counts: HashMap<(String, Option<String>), usize> = HashMap::new();
        for job in jobs.iter() {
            *counts.entry((job.queue.clone(), job.traceparent.clone())).or_default() += 1;
        }
        for job in jobs.iter_mut() {
            let key = (job.queue.clone(), job.traceparent.take());
            let count = counts[&key];
            job.traceparent = kept.entry(key).or_insert_with_key(|(queue, caller)| tracing.enqueued(caller.as_deref(), queue, count)).clone();
        }
    }

    /// Refuses `jobs` if they would take a tenant past its `max_waiting`.
    /// Counted before the insert, not in its transaction: jobs enqueued
    /// at the same moment (on other hosts too) may pass it by as many.
    async fn check_waiting_quota(&self, jobs: &[NewJob]) -> Result<(), EnqueueError> {
        for policy in self.inner.config.tenants.iter().filter(|p| p.max_waiting.is_some()) {
            let tenant = policy.tenant.as_deref();
            let adding = jobs.iter().filter(|j| crate::kind::tenant_of(&j.kind) == tenant).count() as u64;
            let limit = policy.max_waiting.unwrap_or(u64::MAX);
            if adding == 0 {
                continue;
            }
            let waiting = self.inner.store.waiting_count(tenant).await?;
            if waiting + adding > limit {
                return Err(EnqueueError::OverQuota { tenant: tenant.unwrap_or("").to_string(), waiting, adding, limit });
            }
        }
        Ok(())
    }

    /// Applies what a loop pass or a start-up run of `plugin` changed (its
    /// kv writes, the jobs it enqueued), and wakes the children's queues.
    /// Those runs complete no job for the effects to go in with: they are
    /// applied after the pass's checkpoint is stored (or the start-up run
    /// ended `ok`), in transactions of their own.
    pub async fn apply_effects(&self, plugin: &str, report: &mut crate::sandbox::Report) -> Result<(), StoreError> {
        let writes = kv_writes(plugin, std::mem::take(&mut report.kv_writes));
        if !writes.is_empty() {
            self.inner.store.write_kv(writes).await?;
        }
        let children = std::mem::take(&mut report.enqueued);
        if children.is_empty() {
            return Ok(());
        }
        let jobs = child_jobs(&self.inner, plugin, None, children, self.inner.clock.now());
        let inserted = self.inner.store.insert_many(jobs).await?;
        let mut woken: Vec<&str> = inserted.iter().filter(|i| i.created).map(|i| i.job.queue.as_str()).collect();
        woken.sort_unstable();
        woken.dedup();
        for queue in woken {
            self.wake(queue);
        }
        Ok(())
    }

    /// Cancels a job: a waiting one at once; a running one here sees
    /// `cancelled()` now and is interrupted after the cancel grace period.
    pub async fn cancel(&self, id: JobId) -> Result<Job, StoreError> {
        let job = self.inner.store.cancel(id).await?;
        if job.cancel_requested {
            self.inner.stop_locally(id, StopReason::CancelRequested);
        }
        Ok(job)
    }

    /// Wakes a queue (after a hand retry, a resume).
    pub fn wake(&self, queue: &str) {
        if let Some(wake) = self.inner.wake.get(queue) {
            wake.notify_one();
        }
    }

    /// Graceful stop: stop claiming, ask running jobs to cancel, wait up to
    /// the grace period, interrupt the rest, write every transition. Jobs
    /// stopped this way go back to `available` without counting the attempt.
    /// A claim already on its way is waited for, and the jobs it brings are
    /// put back without being started.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        // Under the lock that claimed jobs are registered with: each one is
        // either registered before this (and asked to stop below) or sees
        // that the host is stopping (and is put back).
        let running: Vec<JobId> = {
            let running = inner.running.lock().expect("poisoned");
            inner.accepting.store(false, Ordering::SeqCst);
            running.keys().copied().collect()
        };
        inner.stopping.send_replace(true);
        tracing::info!(running = running.len(), "shutdown: stopped claiming; asking running jobs to cancel");
        for id in &running {
            inner.stop_locally(*id, StopReason::Shutdown);
        }
        let grace = inner.config.shutdown_grace;
        if tokio::time::timeout(grace, inner.wait_idle()).await.is_err() {
            let left: Vec<JobId> = inner.running.lock().expect("poisoned").keys().copied().collect();
            tracing::warn!(jobs = ?left, "shutdown: grace period of {grace:?} over; interrupting what is left");
            for running in inner.running.lock().expect("poisoned").values() {
                running.stop.interrupt();
            }
            inner.wait_idle().await;
        }
        tracing::info!("shutdown: no claim is in flight and every run has ended; writing the last transitions");
        // Closing the channel lets the finisher drain and end.
        inner.finishes.lock().expect("poisoned").take();
    }
}

/// One claim or run the finisher must wait for; counted while it lives.
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Inner {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Puts a claimed job back without having run it: waiting again at its
    /// old place in the queue, its attempt not counted.
    fn put_back(&self, job: &Job) {
        let lease = job.lease();
        self.unwritten.lock().expect("poisoned").insert(job.id, lease);
        self.send_finish(Finish { lease, transition: Transition::Snooze { at: job.scheduled_at }, ran_version: None, attempt: None });
    }

    fn stop_locally(self: &Arc<Self>, id: JobId, reason: StopReason) {
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

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    fn send_finish(&self, finish: Finish) {
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

/// A job claimed ahead of a free slot: registered as running (so it is
/// beaten, and a cancel or shutdown finds it), started once a slot frees.
struct ClaimedAhead {
    job: Job,
    stop: StopSignal,
    counted: InFlight,
    /// Counted against its tenant's fair share until the run ends.
    held: Option<Held>,
}

/// What a queue's recent runs cost: how long they took (a moving
/// average, each run weighing 1/8), which sizes how far ahead of its free
/// slots it claims; and how many light runs came in a row, which decides
/// how wide it runs.
#[derive(Debug, Default)]
struct RunPace {
    nanos: AtomicU64,
    light_streak: AtomicU32,
}

impl RunPace {
    fn record(&self, took: Duration, report: &crate::sandbox::Report) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.nanos.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.nanos.store(new.max(1), Ordering::Relaxed);
        // A run that hit a budget is not light, whatever it used: a timeout
        // may be the width itself slicing the cores too thin.
        let over_budget = matches!(report.outcome, Outcome::TimedOut | Outcome::OutOfFuel | Outcome::OutOfMemory);
        if report.fuel_used < LIGHT_RUN_FUEL && report.peak_memory_bytes < LIGHT_RUN_MEMORY && !over_budget {
            let streak = self.light_streak.load(Ordering::Relaxed);
            self.light_streak.store(streak.saturating_add(1).min(LIGHT_STREAK), Ordering::Relaxed);
        } else {
            self.light_streak.store(0, Ordering::Relaxed);
        }
    }

    /// How many of `queue`'s jobs may run at once now.
    fn width(&self, queue: &QueueConfig) -> usize {
        if self.light_streak.load(Ordering::Relaxed) >= LIGHT_STREAK { queue.light_concurrency } else { queue.concurrency }
    }

    /// Jobs worth claiming ahead for `slots` slots: what they get through
    /// in [`LOOKAHEAD`] at the pace seen so far, at most `cap`; none
    /// before a run has been seen.
    fn ahead(&self, slots: usize, cap: usize) -> usize {
        let nanos = self.nanos.load(Ordering::Relaxed);
        if nanos == 0 {
            return 0;
        }
        let per_slot = u64::try_from(LOOKAHEAD.as_nanos()).unwrap_or(u64::MAX) / nanos;
        per_slot.saturating_mul(slots as u64).min(cap as u64) as usize
    }
}

/// Keeps `want` of a queue's slots back: takes free ones now (the rest
/// come back as runs end, through [`held_back`]), or gives back what is
/// over.
fn hold_back(slots: &Arc<Semaphore>, held: &mut Option<OwnedSemaphorePermit>, want: usize) {
    let have = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
    if have > want {
        if let Some(held) = held.as_mut() {
            drop(held.split(have - want));
        }
    } else if have < want {
        let take = (want - have).min(slots.available_permits());
        if take == 0 {
            return;
        }
        if let Ok(more) = slots.clone().try_acquire_many_owned(take as u32) {
            match held {
                Some(held) => held.merge(more),
                None => *held = Some(more),
            }
        }
    }
}

/// A slot that came free while the queue holds fewer back than it wants:
/// kept back (`None`); otherwise it is the caller's to use.
fn held_back(held: &mut Option<OwnedSemaphorePermit>, want: usize, slot: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
    if held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits) >= want {
        return Some(slot);
    }
    match held {
        Some(held) => held.merge(slot),
        None => *held = Some(slot),
    }
    None
}

/// The tenants the last claim said were held back by a limit, and when:
/// the time until the next claim is counted as throttled
/// (`kiln_tenant_throttled_seconds`).
#[derive(Debug, Default)]
struct Throttles {
    since: HashMap<(Option<String>, Option<String>, crate::queue::Limit), std::time::Instant>,
}

impl Throttles {
    fn saw(&mut self, metrics: &Metrics, held_back: &[crate::queue::HeldBack]) {
        let now = std::time::Instant::now();
        for ((tenant, kind, limit), since) in self.since.drain() {
            metrics.throttled(tenant.as_deref(), kind.as_deref(), limit, now.duration_since(since).as_secs_f64());
        }
        self.since.extend(held_back.iter().map(|h| ((h.tenant.clone(), h.kind.clone(), h.by), now)));
    }
}

/// The kinds whose `[throttle]` this queue's claims hold, read again
/// whenever the runner's set of kinds changes.
struct ThrottledKinds {
    changes: Option<watch::Receiver<u64>>,
    kinds: Vec<crate::queue::KindLimits>,
}

impl ThrottledKinds {
    fn new(runner: &dyn Runner) -> Self {
        let mut changes = runner.changes();
        if let Some(changes) = &mut changes {
            changes.mark_unchanged();
        }
        Self { changes, kinds: runner.throttled() }
    }

    fn now(&mut self, runner: &dyn Runner) -> Vec<crate::queue::KindLimits> {
        if let Some(changes) = &mut self.changes {
            if changes.has_changed().unwrap_or(false) {
                changes.mark_unchanged();
                self.kinds = runner.throttled();
            }
        }
        self.kinds.clone()
    }
}

/// One queue on this host: claims jobs and starts each in a free slot.
///
/// Claims are where a short job's time goes (one write transaction each),
/// so a queue claims in batches, and for short jobs ahead of its free
/// slots: up to what its slots get through in [`LOOKAHEAD`] at the pace of
/// its recent runs (at most `claim_batch`), topped up once half of that is
/// left. A queue whose jobs take a second never claims ahead, so its jobs
/// never wait here behind one another while another host has free slots.
///
/// With tenants, each claim is split between them by `fair_share`, a job
/// of a tenant with nothing claimed ahead is started before those that
/// are, and a job enqueued while the queue waits on its claimed-ahead jobs
/// is claimed at once (it may be another tenant's, which should not wait
/// behind them).
///
/// A queue runs `concurrency` jobs at once, and `light_concurrency` after
/// [`LIGHT_STREAK`] light runs in a row (under [`LIGHT_RUN_FUEL`] and
/// [`LIGHT_RUN_MEMORY`] each): short jobs need many in flight to keep the
/// cores busy, while CPU-heavy ones at that width would be time-sliced
/// past their timeouts. The slots over the current width are held back.
async fn queue_loop(inner: Arc<Inner>, queue: QueueConfig) {
    let slots = Arc::new(Semaphore::new(queue.light_concurrency.max(queue.concurrency)));
    let mut held: Option<OwnedSemaphorePermit> = None;
    let hold = |width: usize| queue.light_concurrency.max(queue.concurrency) - width;
    let wake = inner.wake[&queue.name].clone();
    let mut stopping = inner.stopping.subscribe();
    let runtime = Dispatcher { inner: inner.clone() }.job_runtime();
    let pace = Arc::new(RunPace::default());
    let fair = FairShare::new(&inner.config.tenants);
    let mut throttles = Throttles::default();
    let mut throttled_kinds = ThrottledKinds::new(inner.runner.as_ref());
    let mut ahead: VecDeque<ClaimedAhead> = VecDeque::new();
    // The last claim found fewer jobs than it asked for: claim again only
    // once what was claimed ahead has started.
    let mut drained = false;
    let start = |claimed: ClaimedAhead, slot: OwnedSemaphorePermit| {
        runtime.spawn(run_job(inner.clone(), claimed.job, claimed.stop, (slot, claimed.counted, claimed.held), pace.clone()));
    };
    loop {
        if *stopping.borrow() {
            break;
        }
        let width = pace.width(&queue);
        hold_back(&slots, &mut held, hold(width));
        while !ahead.is_empty() {
            let Ok(slot) = slots.clone().try_acquire_owned() else { break };
            start(ahead.pop_front().expect("not empty"), slot);
        }
        let target = pace.ahead(width, inner.config.claim_batch);
        let mut woken = false;
        if !ahead.is_empty() && (drained || ahead.len() > target / 2) {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => Some(slot.expect("semaphore never closed")),
                () = wake.notified(), if fair.is_some() => None,
                _ = stopping.changed() => break,
            };
            match slot {
                Some(slot) => {
                    if let Some(slot) = held_back(&mut held, hold(pace.width(&queue)), slot) {
                        start(ahead.pop_front().expect("not empty"), slot);
                    }
                    continue;
                }
                None => woken = true,
            }
        }
        // Free slots are claimed for only when nothing claimed ahead waits
        // (those go first, in the order they were claimed).
        let mut permits: Option<OwnedSemaphorePermit> = None;
        if ahead.is_empty() {
            drained = false;
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
                _ = stopping.changed() => break,
            };
            // Narrowed while it waited: the slot is held back instead.
            let Some(mut first) = held_back(&mut held, hold(pace.width(&queue)), first) else { continue };
            let batch = inner.config.claim_batch.min(width).max(1);
            let enough = (batch / 4).max(1);
            if target == 0 && 1 + slots.available_permits() < enough {
                let more = tokio::time::timeout(CLAIM_COOLDOWN, slots.clone().acquire_many_owned((enough - 1) as u32)).await;
                if let Ok(Ok(more)) = more {
                    first.merge(more);
                }
            }
            hold_back(&slots, &mut held, hold(pace.width(&queue)));
            let extra = slots.available_permits().min(batch.saturating_sub(first.num_permits()));
            if extra > 0 {
                if let Ok(more) = slots.clone().try_acquire_many_owned(extra as u32) {
                    first.merge(more);
                }
            }
            permits = Some(first);
        }
        let for_slots = permits.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        let wanted = (for_slots + target.saturating_sub(ahead.len())).max(usize::from(woken));
        // Counted before the check, so shutdown either stops this claim
        // here or waits for it to hand its jobs on.
        let claiming = inner.begin();
        if !inner.accepting.load(Ordering::SeqCst) {
            break;
        }
        // Listening from before the claim, so a run's end written while it
        // is under way is not missed.
        let finished = inner.finished.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        let claimed = inner
            .store
            .claim_fair(ClaimParams {
                queue: queue.name.clone(),
                limit: wanted,
                host: inner.config.host.clone(),
                lease_ms: inner.config.lease.as_millis() as i64,
                shares: fair.as_ref().map_or_else(Vec::new, |f| f.split(wanted)),
                kinds: throttled_kinds.now(inner.runner.as_ref()),
            })
            .await;
        let (jobs, held_back) = match claimed {
            Ok(claimed) => (claimed.jobs, claimed.held_back),
            Err(e) => {
                tracing::error!(queue = %queue.name, "claim failed: {e}; retrying after {:?}", inner.config.poll_interval);
                drop((permits, claiming));
                tokio::time::sleep(inner.config.poll_interval).await;
                continue;
            }
        };
        throttles.saw(&inner.metrics, &held_back);
        drained = jobs.len() < wanted;
        if jobs.is_empty() {
            drop((permits, claiming));
            if !ahead.is_empty() {
                continue;
            }
            // Due jobs held back by limits: look again when the first may
            // start (its rate's next token, or a run's end written here;
            // another host's, at the poll).
            let until_due = if held_back.is_empty() {
                match inner.store.next_due(&queue.name).await {
                    Ok(Some(at)) => Duration::from_millis((at - inner.clock.now()).max(1) as u64),
                    _ => inner.config.poll_interval,
                }
            } else {
                let now = inner.clock.now();
                held_back.iter().filter_map(|h| h.until).min().map_or(inner.config.poll_interval, |at| Duration::from_millis((at - now).max(1) as u64))
            };
            let run_ended = async {
                match held_back.iter().any(|h| h.until.is_none()) {
                    true => finished.await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wake.notified() => {}
                () = run_ended => {}
                () = tokio::time::sleep(until_due.min(inner.config.poll_interval)) => {}
                _ = stopping.changed() => break,
            }
            continue;
        }
        let mut starting = Vec::with_capacity(jobs.len());
        let mut stopped = Vec::new();
        {
            let mut running = inner.running.lock().expect("poisoned");
            for job in jobs {
                if !inner.accepting.load(Ordering::SeqCst) {
                    stopped.push(job);
                    continue;
                }
                // Beaten from the claim on, not only once the run has started.
                let stop = inner.runner.stop_signal();
                running.insert(job.id, RunningJob { lease: job.lease(), stop: stop.clone(), reason: None, progress: ProgressCell::default() });
                starting.push((job, stop));
            }
        }
        if !stopped.is_empty() {
            tracing::info!(queue = %queue.name, jobs = stopped.len(), "shutdown began during the claim; putting the claimed jobs back unstarted");
        }
        for job in &stopped {
            inner.put_back(job);
        }
        for (job, stop) in starting {
            let held = fair.as_ref().and_then(|f| f.hold(job.tenant()));
            let first_of_its_tenant = fair.is_some() && !ahead.iter().any(|c| c.job.tenant() == job.tenant());
            let claimed = ClaimedAhead { job, stop, counted: inner.begin(), held };
            match permits.as_mut().and_then(|p| p.split(1)) {
                Some(slot) => start(claimed, slot),
                None if first_of_its_tenant => ahead.push_front(claimed),
                None => ahead.push_back(claimed),
            }
        }
        drop(claiming);
        // Permits for jobs the claim did not find are dropped here.
    }
    // Stopping: what was claimed ahead goes back unstarted, at its place.
    if !ahead.is_empty() {
        tracing::info!(queue = %queue.name, jobs = ahead.len(), "putting the jobs claimed ahead back unstarted");
    }
    for claimed in ahead.drain(..) {
        inner.running.lock().expect("poisoned").remove(&claimed.job.id);
        inner.put_back(&claimed.job);
    }
    tracing::info!(queue = %queue.name, "queue loop stopped");
}

/// Runs one claimed job in its slot; `_holds` (the slot, the in-flight
/// count, the fair-share count) are let go when the run has ended.
async fn run_job(inner: Arc<Inner>, job: Job, stop: StopSignal, _holds: (OwnedSemaphorePermit, InFlight, Option<Held>), pace: Arc<RunPace>) {
    let lease = job.lease();
    // Stopped between the claim and this start: never started at all.
    let stopped = inner.running.lock().expect("poisoned").get(&job.id).and_then(|r| r.reason);
    if stopped == Some(StopReason::LeaseLost) {
        inner.running.lock().expect("poisoned").remove(&job.id);
        tracing::warn!(job = job.id, "lease lost before the job started; another host has it, nothing written");
        return;
    }
    let cancelled = job.cancel_requested || stopped == Some(StopReason::CancelRequested);
    if stopped == Some(StopReason::Shutdown) || cancelled {
        inner.running.lock().expect("poisoned").remove(&job.id);
        if cancelled {
            let error = crate::queue::AttemptError {
                attempt: job.attempt,
                at: inner.clock.now(),
                outcome: "cancelled".into(),
                message: "cancelled before it started".into(),
            };
            inner.unwritten.lock().expect("poisoned").insert(job.id, lease);
            inner.send_finish(Finish { lease, transition: Transition::Cancel { error }, ran_version: None, attempt: None });
        } else {
            inner.put_back(&job);
        }
        return;
    }
    let progress = inner.running.lock().expect("poisoned").get(&job.id).map(|r| r.progress.clone()).unwrap_or_default();
    let kind = inner.runner.kind(&job.kind);
    // A schedule's tick gets the result of the last completed tick.
    let checkpoint = match kind.as_ref().map(|k| &k.trigger) {
        Some(crate::plugin::Trigger::Schedule(_)) => match inner.store.schedule_checkpoint(&job.kind).await {
            Ok(checkpoint) => checkpoint,
            Err(e) => {
                tracing::warn!(job = job.id, "cannot read the schedule's checkpoint ({e}); the tick runs without it");
                None
            }
        },
        _ => None,
    };
    let span = inner.config.tracing.attempt(
        job.traceparent.as_deref(),
        &crate::telemetry::JobAttempt { id: job.id, kind: &job.kind, queue: &job.queue, attempt: job.attempt, max_attempts: job.max_attempts },
        crate::queue::system_time(job.attempted_at.unwrap_or_else(|| inner.clock.now())),
    );
    let input = JobInput {
        id: job.id.to_string(),
        kind: job.kind.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload: job.payload.clone(),
        checkpoint,
        progress,
        traceparent: span.traceparent().map(str::to_string),
    };
    let started = inner.clock.now();
    inner.metrics.job_started(&job.kind, started - job.scheduled_at);
    let began = std::time::Instant::now();
    let Ran { mut report, version } = inner.runner.run(&input, &stop).await;
    pace.record(began.elapsed(), &report);
    let reason = inner.running.lock().expect("poisoned").remove(&job.id).and_then(|r| r.reason);
    inner.metrics.job_finished(&job.kind, &report);
    inner.run_minutes.record(inner.clock.now(), &job.queue, &job.kind, started - job.scheduled_at, !report.outcome.is_ok());
    let policy = kind.map(|k| k.retry).unwrap_or_default();
    let now = inner.clock.now();
    match decide(&job, &report.outcome, reason, &policy, now) {
        Some(mut transition) => {
            if let Transition::Complete { effects, .. } = &mut transition {
                effects.children = child_jobs(&inner, &job.kind, Some(job.id), std::mem::take(&mut report.enqueued), now);
                for child in &mut effects.children {
                    child.traceparent = span.traceparent().map(str::to_string);
                }
                effects.kv = kv_writes(&job.kind, std::mem::take(&mut report.kv_writes));
            }
            log_run_end(&job, &report, &transition);
            end_span(span, &job, &report, &transition, started, now);
            let attempt = inner.config.attempts.record.then(|| attempt_run(&inner, &mut report, &transition, started, now));
            inner.unwritten.lock().expect("poisoned").insert(job.id, lease);
            inner.send_finish(Finish { lease, transition, ran_version: version, attempt });
        }
        None => tracing::warn!(job = job.id, "lease lost while running; another host has the job, nothing written"),
    }
}

/// Ends an attempt's span with how it ended and what it cost.
fn end_span(span: crate::telemetry::AttemptSpan, job: &Job, report: &crate::sandbox::Report, transition: &Transition, started_at: Millis, ended_at: Millis) {
    let error = match transition {
        Transition::RetryAt { error, .. } | Transition::Discard { error } | Transition::Cancel { error } => Some(error.message.as_str()),
        Transition::Complete { .. } | Transition::Snooze { .. } => None,
    };
    let end = crate::telemetry::AttemptEnd {
        outcome: report.outcome.name(),
        error,
        run_started_at: crate::queue::system_time(started_at),
        run_ended_at: crate::queue::system_time(started_at) + report.duration,
        duration: report.duration,
        fuel_used: report.fuel_used,
        peak_memory_bytes: report.peak_memory_bytes,
        http_requests: report.http.requests,
        queue_delay_ms: started_at - job.scheduled_at,
    };
    span.end(&end, crate::queue::system_time(ended_at));
}

/// What the store keeps of a run that ended in `transition`.
fn attempt_run(inner: &Inner, report: &mut crate::sandbox::Report, transition: &Transition, started_at: Millis, ended_at: Millis) -> crate::queue::AttemptRun {
    let error = match transition {
        Transition::RetryAt { error, .. } | Transition::Discard { error } | Transition::Cancel { error } => Some(error.message.clone()),
        Transition::Complete { .. } | Transition::Snooze { .. } => None,
    };
    let logs = match inner.config.attempts.logs {
        true => std::mem::take(&mut report.logs).into_iter().map(log_entry).collect(),
        false => Vec::new(),
    };
    crate::queue::AttemptRun {
        summary: crate::queue::AttemptSummary {
            host: inner.config.host.clone(),
            started_at,
            ended_at,
            outcome: report.outcome.name().to_string(),
            error,
            duration_ms: report.duration.as_secs_f64() * 1000.0,
            fuel_used: report.fuel_used,
            peak_memory_bytes: report.peak_memory_bytes,
            http_requests: report.http.requests,
            log_bytes_dropped: report.log_bytes_dropped,
        },
        progress: report.progress.take().map(stored_progress),
        logs,
    }
}

fn log_entry(line: crate::sandbox::LogLine) -> crate::queue::LogEntry {
    crate::queue::LogEntry {
        at: line.at_ms,
        level: line.level.as_str().to_ascii_lowercase(),
        source: line.source.as_str().to_string(),
        message: line.message,
    }
}

fn stored_progress(p: crate::sandbox::ReportedProgress) -> crate::queue::Progress {
    crate::queue::Progress { percent: p.percent, note: p.note }
}

/// The jobs a run of `parent_kind` enqueued, as the store inserts them
/// with its completion: each is of a kind of the parent's own tenant (a
/// tenant's plugin names `echo` and gets its tenant's `echo`, never
/// another's), names its parent, takes its kind's retry policy (the
/// default when no plugin of that kind is loaded here: it waits for one),
/// and is due after its delay from now, the completion.
fn child_jobs(inner: &Inner, parent_kind: &str, parent_id: Option<JobId>, children: Vec<crate::capability::ChildJob>, now: Millis) -> Vec<NewJob> {
    use crate::capability::Due;
    // A fan-out names few kinds for many children: look each kind up once.
    let mut attempts: HashMap<String, u32> = HashMap::new();
    let mut max_attempts = |kind: &str| {
        *attempts.entry(kind.to_string()).or_insert_with(|| {
            inner.runner.kind(kind).map_or(crate::plugin::DEFAULT_MAX_ATTEMPTS, |k| k.retry.max_attempts)
        })
    };
    children
        .into_iter()
        .map(|c| (crate::kind::qualified_kind(crate::kind::tenant_of(parent_kind), &c.kind), c))
        .map(|(kind, c)| NewJob {
            max_attempts: max_attempts(&kind),
            queue: c.queue.unwrap_or_else(|| crate::queue::DEFAULT_QUEUE.to_string()),
            priority: c.priority.unwrap_or(0),
            scheduled_at: c.due.map(|due| match due {
                Due::After(delay) => crate::queue::millis_after(now, delay),
                Due::At(at) => at,
            }),
            unique_key: c.unique_key,
            parent_id,
            payload: c.payload,
            kind,
            concurrency_key: None,
            traceparent: None,
        })
        .collect()
}

/// A run's kv writes as the store applies them: in the stores of the
/// plugin that ran (its name is their namespace).
pub fn kv_writes(plugin: &str, effects: Vec<crate::capability::KvEffect>) -> Vec<crate::queue::KvWrite> {
    use crate::capability::kv::KvChange as Ran;
    use crate::queue::KvChange;
    effects
        .into_iter()
        .map(|e| crate::queue::KvWrite {
            namespace: plugin.to_string(),
            store: e.store,
            key: e.key,
            change: match e.change {
                Ran::Set(value) => KvChange::Set(value),
                Ran::Delete => KvChange::Delete,
                // Bounded to 10^17 by the capability.
                Ran::Add(delta) => KvChange::Add(i64::try_from(delta).unwrap_or(i64::MAX)),
            },
        })
        .collect()
}

/// One line per run end, Sidekiq-style: what ran, how it ended, what it
/// cost, and what happens next. Failures that will be retried are WARN,
/// dead letters ERROR.
fn log_run_end(job: &Job, report: &crate::sandbox::Report, transition: &Transition) {
    let duration_ms = format!("{:.2}", report.duration.as_secs_f64() * 1000.0);
    let (fuel, memory_bytes, outcome) = (report.fuel_used, report.peak_memory_bytes, report.outcome.name());
    let http_requests = report.http.requests;
    let error = report.outcome.error_message().unwrap_or_default();
    macro_rules! line {
        ($level:ident, $($rest:tt)*) => {
            tracing::$level!(kind = %job.kind, job = job.id, attempt = job.attempt, %outcome, %duration_ms, fuel, memory_bytes, http_requests, $($rest)*)
        };
    }
    match transition {
        Transition::Complete { .. } => line!(info, "job completed"),
        Transition::RetryAt { at, .. } => {
            line!(warn, retry_at = %crate::queue::to_rfc3339(*at), "job failed; it will be retried: {error}")
        }
        Transition::Discard { .. } => line!(error, "job dead-lettered: {error}"),
        Transition::Snooze { .. } => line!(info, "job put back unfinished: the host is stopping"),
        Transition::Cancel { .. } => line!(info, "job cancelled"),
    }
}

/// Wakes the queue loops on the store's announcements of jobs inserted by
/// any host.
async fn wake_on_announcements(inner: Arc<Inner>, mut wakeups: tokio::sync::broadcast::Receiver<String>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut stopping = inner.stopping.subscribe();
    let wake_all = || inner.wake.values().for_each(|w| w.notify_one());
    loop {
        tokio::select! {
            announced = wakeups.recv() => match announced {
                Ok(queue) if queue == crate::queue::WAKE_ALL => wake_all(),
                Ok(queue) => {
                    if let Some(wake) = inner.wake.get(&queue) {
                        wake.notify_one();
                    }
                }
                Err(RecvError::Lagged(_)) => wake_all(),
                Err(RecvError::Closed) => break,
            },
            _ = stopping.changed() => break,
        }
    }
}

/// Writes transitions in batches: everything waiting when the previous
/// write ends goes in the next transaction. While the store is unreachable
/// (a database outage, a full disk) a batch is tried again until it is
/// written.
async fn finisher(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Finish>) {
    let mut batch = Vec::with_capacity(inner.config.finish_batch);
    while rx.recv_many(&mut batch, inner.config.finish_batch).await > 0 {
        let finishes = std::mem::take(&mut batch);
        let leases: Vec<Lease> = finishes.iter().map(|f| f.lease).collect();
        let forget = |leases: &[Lease]| {
            let mut unwritten = inner.unwritten.lock().expect("poisoned");
            for lease in leases {
                if unwritten.get(&lease.id) == Some(lease) {
                    unwritten.remove(&lease.id);
                }
            }
        };
        let began = tokio::time::Instant::now();
        let mut delay = FINISH_RETRY_DELAY;
        let written = loop {
            // Tried again for as long as the host runs (the heartbeat keeps
            // the leases and the rescuer spares the jobs meanwhile); a host
            // stopping gives up after its grace period, and the next start
            // rescues the jobs.
            let stopping = *inner.stopping.borrow();
            match inner.store.finish_many(finishes.clone()).await {
                Err(StoreError::Unavailable(e)) if !stopping || began.elapsed() + delay < inner.config.shutdown_grace => {
                    tracing::warn!(jobs = leases.len(), "cannot write transitions yet: {e}; trying again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(FINISH_RETRY_MAX_DELAY);
                }
                other => break other,
            }
        };
        match written {
            Ok(results) => {
                let mut woken: Vec<&str> = Vec::new();
                for ((lease, result), finish) in leases.iter().zip(results).zip(&finishes) {
                    match result {
                        Err(e) => tracing::warn!(job = lease.id, "transition refused: {e}"),
                        // Children were inserted with the completion: wake their queues here.
                        Ok(()) => {
                            if let Transition::Complete { effects, .. } = &finish.transition {
                                woken.extend(effects.children.iter().map(|c| c.queue.as_str()));
                            }
                        }
                    }
                }
                inner.finished.notify_waiters();
                woken.sort_unstable();
                woken.dedup();
                for queue in woken {
                    if let Some(wake) = inner.wake.get(queue) {
                        wake.notify_one();
                    }
                }
            }
            // The leases expire and the rescuer brings the jobs back.
            Err(e) => tracing::error!(jobs = leases.len(), "writing transitions failed: {e}; the jobs will be rescued"),
        }
        forget(&leases);
    }
    inner.finisher_done.send_replace(true);
    tracing::info!("finisher stopped: every transition written");
}

/// The store's count upkeep (see [`JobStore::fold_counts`]), every
/// [`COUNT_FOLD_INTERVAL`](crate::queue::COUNT_FOLD_INTERVAL) until the host stops.
async fn fold_counts_loop(store: Arc<dyn JobStore>, mut stopping: watch::Receiver<bool>) {
    loop {
        if let Err(e) = store.fold_counts().await {
            tracing::warn!("folding the job counts failed (counts stay right, only slower to read): {e}");
        }
        tokio::select! {
            () = tokio::time::sleep(crate::queue::COUNT_FOLD_INTERVAL) => {}
            _ = stopping.changed() => break,
        }
    }
}

/// Keeps the leases of running jobs alive, and acts on what it learns: a
/// lost lease interrupts the run, a requested cancel cancels it.
async fn heartbeat_loop(inner: Arc<Inner>) {
    // Three beats per lease: one lost beat does not lose the lease.
    let every = inner.config.lease / 3;
    // Beats on through shutdown (which may take the whole grace period)
    // until the finisher has written the last transition, and not a beat longer.
    let mut done = inner.finisher_done.subscribe();
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = done.wait_for(|done| *done) => break,
        }
        let (mut leases, progress): (Vec<Lease>, Vec<(Lease, crate::queue::Progress)>) = {
            let running = inner.running.lock().expect("poisoned");
            let progress = running.values().filter_map(|r| Some((r.lease, stored_progress(r.progress.take_unseen()?)))).collect();
            (running.values().map(|r| r.lease).collect(), progress)
        };
        leases.extend(inner.unwritten.lock().expect("poisoned").values().copied());
        if leases.is_empty() {
            // Nothing to keep alive is on time: an idle spell is not lateness.
            last = tokio::time::Instant::now();
            continue;
        }
        let since = last.elapsed();
        if since > inner.config.lease / 2 {
            tracing::warn!(since_ms = since.as_millis() as u64, lease_ms = inner.config.lease.as_millis() as u64,
                "heartbeat late (the host is overloaded?); leases may expire and their jobs run again elsewhere");
        }
        match inner.store.heartbeat(HeartbeatParams { leases, lease_ms: inner.config.lease.as_millis() as i64, progress }).await {
            Ok(beat) => {
                last = tokio::time::Instant::now();
                for lease in beat.lost {
                    // A run that ended and was written meanwhile is not lost.
                    if inner.running.lock().expect("poisoned").contains_key(&lease.id) {
                        tracing::warn!(job = lease.id, "lease lost; interrupting the run");
                        inner.stop_locally(lease.id, StopReason::LeaseLost);
                    }
                }
                for lease in beat.cancel_requested {
                    inner.stop_locally(lease.id, StopReason::CancelRequested);
                }
            }
            Err(e) => tracing::error!("heartbeat failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::Trigger;
    use crate::queue::{JobState, SqliteStore, SystemClock};
    use crate::sandbox::{Budget, Report};

    fn ran(fuel: u64, memory: u64) -> Report {
        Report { fuel_used: fuel, peak_memory_bytes: memory, ..Report::without_cost(Outcome::Ok(Vec::new())) }
    }
    use crate::worker::runner::KindInfo;
    use async_trait::async_trait;

    #[test]
    fn nothing_is_claimed_ahead_before_a_run_is_seen_or_for_slow_jobs() {
        let pace = RunPace::default();
        assert_eq!(pace.ahead(8, 256), 0, "no run seen yet");
        pace.record(Duration::from_millis(1), &ran(0, 0));
        assert_eq!(pace.ahead(8, 256), 8 * 20, "what 8 slots do in 20 ms at 1 ms a job");
        assert_eq!(pace.ahead(8, 64), 64, "capped at the claim batch");
        let slow = RunPace::default();
        slow.record(Duration::from_millis(500), &ran(0, 0));
        assert_eq!(slow.ahead(512, 256), 0, "a job of half a second is never claimed ahead");
        // The average follows the jobs: after a run of slow ones, no lookahead.
        for _ in 0..40 {
            pace.record(Duration::from_millis(100), &ran(0, 0));
        }
        assert_eq!(pace.ahead(8, 256), 0);
    }

    #[test]
    fn a_queue_widens_after_a_streak_of_light_runs_and_narrows_at_one_heavy_run() {
        let queue = QueueConfig { name: "q".into(), concurrency: 8, light_concurrency: 128 };
        let pace = RunPace::default();
        assert_eq!(pace.width(&queue), 8, "nothing seen yet: narrow");
        for _ in 0..LIGHT_STREAK - 1 {
            pace.record(Duration::from_micros(50), &ran(40_000, 1 << 20));
        }
        assert_eq!(pace.width(&queue), 8);
        pace.record(Duration::from_micros(50), &ran(40_000, 1 << 20));
        assert_eq!(pace.width(&queue), 128);
        pace.record(Duration::from_micros(50), &ran(LIGHT_RUN_FUEL, 1 << 20));
        assert_eq!(pace.width(&queue), 8, "one CPU-heavy run narrows it");
        for _ in 0..LIGHT_STREAK {
            pace.record(Duration::from_micros(50), &ran(40_000, 1 << 20));
        }
        pace.record(Duration::from_micros(50), &ran(40_000, LIGHT_RUN_MEMORY));
        assert_eq!(pace.width(&queue), 8, "so does one memory-heavy run");
        for _ in 0..LIGHT_STREAK {
            pace.record(Duration::from_micros(50), &ran(40_000, 1 << 20));
        }
        pace.record(Duration::from_millis(100), &Report::without_cost(Outcome::TimedOut));
        assert_eq!(pace.width(&queue), 8, "and one that timed out, however little it used");
    }

    /// Runs `quick` jobs at once, `heavy` ones at once but reporting
    /// heavy fuel, and `blocker` jobs once released; remembers what ran
    /// and how many ran at once at most.
    #[derive(Debug, Default)]
    struct TestRunner {
        ran: Mutex<Vec<String>>,
        release: Notify,
        released: AtomicBool,
        running: AtomicUsize,
        most_at_once: AtomicUsize,
    }

    #[async_trait]
    impl Runner for TestRunner {
        fn kind(&self, _kind: &str) -> Option<KindInfo> {
            Some(KindInfo { version: "1".into(), retry: Default::default(), budget: Budget::default(), trigger: Trigger::Queued })
        }
        fn kinds(&self) -> Vec<String> {
            vec!["quick".into(), "blocker".into()]
        }
        fn stop_signal(&self) -> StopSignal {
            StopSignal::standalone()
        }
        async fn run(&self, input: &JobInput, _stop: &StopSignal) -> Ran {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            if input.kind == "blocker" {
                let released = self.release.notified();
                if !self.released.load(Ordering::SeqCst) {
                    released.await;
                }
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.ran.lock().unwrap().push(input.id.clone());
            let mut report = Report::without_cost(Outcome::Ok(input.payload.clone()));
            if input.kind == "heavy" {
                report.fuel_used = LIGHT_RUN_FUEL;
            }
            Ran { report, version: Some("1".into()) }
        }
    }

    fn job(kind: &str) -> NewJob {
        NewJob {
            kind: kind.into(),
            queue: crate::queue::DEFAULT_QUEUE.into(),
            priority: 0,
            payload: b"1".to_vec(),
            max_attempts: 3,
            scheduled_at: None,
            unique_key: None,
            parent_id: None,
            concurrency_key: None,
            traceparent: None,
        }
    }

    /// A blocker and `n` quick jobs behind it, in one transaction (so no
    /// claim sees the blocker alone).
    async fn insert_behind_a_blocker(store: &SqliteStore, n: usize) -> (JobId, Vec<JobId>) {
        let jobs = std::iter::once(job("blocker")).chain((0..n).map(|_| job("quick"))).collect();
        let ids: Vec<JobId> = store.insert_many(jobs).await.unwrap().iter().map(|i| i.job.id).collect();
        (ids[0], ids[1..].to_vec())
    }

    async fn state_of(store: &SqliteStore, id: JobId) -> JobState {
        store.get(id).await.unwrap().unwrap().state
    }

    /// Waits (at most 10 s) until job `id` is in `state`.
    async fn wait_until(store: &SqliteStore, id: JobId, state: JobState) {
        let started = std::time::Instant::now();
        while state_of(store, id).await != state {
            assert!(started.elapsed() < Duration::from_secs(10), "job {id} never became {state:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn run_to_completion(store: &SqliteStore, dispatcher: &Dispatcher, jobs: Vec<NewJob>) {
        let ids: Vec<JobId> = store.insert_many(jobs).await.unwrap().iter().map(|i| i.job.id).collect();
        dispatcher.wake(crate::queue::DEFAULT_QUEUE);
        for id in ids {
            wait_until(store, id, JobState::Completed).await;
        }
    }

    /// Where each of `ids` ran in `ran` (the order runs ended).
    fn positions(ran: &[String], ids: &[JobId]) -> Vec<usize> {
        ids.iter().map(|id| ran.iter().position(|r| *r == id.to_string()).expect("it ran")).collect()
    }

    async fn run_two_tenants(weights: (u32, u32), acme: usize, beta: usize) -> (Vec<usize>, Vec<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap());
        // acme's backlog first: oldest first, one line, beta's would run last.
        let insert = async |kind: &str, n: usize| -> Vec<JobId> {
            store.insert_many((0..n).map(|_| job(kind)).collect()).await.unwrap().iter().map(|i| i.job.id).collect()
        };
        let (a, b) = (insert("acme/quick", acme).await, insert("beta/quick", beta).await);
        let runner = Arc::new(TestRunner::default());
        let tenants = vec![
            TenantPolicy { tenant: Some("acme".into()), weight: weights.0, ..TenantPolicy::default() },
            TenantPolicy { tenant: Some("beta".into()), weight: weights.1, ..TenantPolicy::default() },
        ];
        let config = DispatcherConfig { queues: vec![QueueConfig::fixed(crate::queue::DEFAULT_QUEUE, 2)], tenants, ..DispatcherConfig::default() };
        let dispatcher = Dispatcher::new(store.clone(), runner.clone(), config, Arc::new(SystemClock), Arc::new(Metrics::new()));
        let running = dispatcher.start();
        for id in a.iter().chain(&b) {
            wait_until(&store, *id, JobState::Completed).await;
        }
        dispatcher.shutdown().await;
        running.stopped().await;
        let ran = runner.ran.lock().unwrap().clone();
        (positions(&ran, &a), positions(&ran, &b))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_with_a_few_jobs_is_not_kept_behind_another_tenants_backlog() {
        let (_, beta) = run_two_tenants((1, 1), 3000, 10).await;
        let last = beta.iter().max().unwrap();
        assert!(*last < 600, "beta's 10 jobs ran among the first of 3,010, not after acme's backlog: the last at {last}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tenants_that_both_have_work_waiting_get_runs_by_weight() {
        let (_, beta) = run_two_tenants((3, 1), 2000, 2000).await;
        let beta_first = beta.iter().filter(|p| **p < 1000).count();
        assert!((150..=350).contains(&beta_first), "beta (weight 1 of 4) ran {beta_first} of the first 1,000 jobs, not about 250");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn light_jobs_run_wider_than_heavy_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap());
        let runner = Arc::new(TestRunner::default());
        let config = DispatcherConfig {
            queues: vec![QueueConfig { name: crate::queue::DEFAULT_QUEUE.into(), concurrency: 2, light_concurrency: 6 }],
            ..DispatcherConfig::default()
        };
        let dispatcher = Dispatcher::new(store.clone(), runner.clone(), config, Arc::new(SystemClock), Arc::new(Metrics::new()));
        let running = dispatcher.start();
        let blockers_at_once = async |runner: &TestRunner| {
            runner.released.store(false, Ordering::SeqCst);
            runner.most_at_once.store(0, Ordering::SeqCst);
            let ids: Vec<JobId> = store.insert_many((0..10).map(|_| job("blocker")).collect()).await.unwrap().iter().map(|i| i.job.id).collect();
            dispatcher.wake(crate::queue::DEFAULT_QUEUE);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let most = runner.most_at_once.load(Ordering::SeqCst);
            runner.released.store(true, Ordering::SeqCst);
            runner.release.notify_waiters();
            for id in ids {
                while state_of(&store, id).await != JobState::Completed {
                    runner.release.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            most
        };
        assert_eq!(blockers_at_once(&runner).await, 2, "before any light streak: as wide as its concurrency");
        run_to_completion(&store, &dispatcher, (0..LIGHT_STREAK).map(|_| job("quick")).collect()).await;
        assert_eq!(blockers_at_once(&runner).await, 6, "after a streak of light runs: its light concurrency");
        run_to_completion(&store, &dispatcher, vec![job("heavy")]).await;
        assert_eq!(blockers_at_once(&runner).await, 2, "one heavy run: narrow again");
        dispatcher.shutdown().await;
        running.stopped().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_jobs_are_claimed_ahead_and_a_cancel_or_shutdown_still_reaches_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap());
        let runner = Arc::new(TestRunner::default());
        let config = DispatcherConfig {
            queues: vec![QueueConfig::fixed(crate::queue::DEFAULT_QUEUE, 1)],
            ..DispatcherConfig::default()
        };
        let dispatcher = Dispatcher::new(store.clone(), runner.clone(), config, Arc::new(SystemClock), Arc::new(Metrics::new()));
        let running = dispatcher.start();
        // A quick run first: the queue learns its pace.
        let warm = store.insert(job("quick")).await.unwrap().job.id;
        wait_until(&store, warm, JobState::Completed).await;
        // One slot, held by a blocker: the quick jobs behind it are claimed ahead.
        let (blocker, quick) = insert_behind_a_blocker(&store, 10).await;
        dispatcher.wake(crate::queue::DEFAULT_QUEUE);
        let claimed = || async {
            let mut n = 0;
            for id in &quick {
                n += usize::from(state_of(&store, *id).await == JobState::Running);
            }
            n
        };
        let started = std::time::Instant::now();
        while claimed().await < quick.len() {
            assert!(started.elapsed() < Duration::from_secs(10), "the quick jobs were not claimed ahead of the one slot");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state_of(&store, blocker).await, JobState::Running);
        // A cancel reaches a job claimed ahead: it never runs.
        let cancelled = dispatcher.cancel(quick[0]).await.unwrap();
        assert!(cancelled.cancel_requested);
        runner.released.store(true, Ordering::SeqCst);
        runner.release.notify_waiters();
        for id in &quick[1..] {
            wait_until(&store, *id, JobState::Completed).await;
        }
        assert_eq!(state_of(&store, quick[0]).await, JobState::Cancelled);
        assert!(!runner.ran.lock().unwrap().contains(&quick[0].to_string()), "the cancelled job never ran");

        // Shutdown with jobs claimed ahead: they go back, unstarted. (Quick
        // runs first, so the pace forgets the blocker's long one.)
        run_to_completion(&store, &dispatcher, (0..40).map(|_| job("quick")).collect()).await;
        runner.released.store(false, Ordering::SeqCst);
        let (blocker, behind) = insert_behind_a_blocker(&store, 10).await;
        dispatcher.wake(crate::queue::DEFAULT_QUEUE);
        wait_until(&store, *behind.last().unwrap(), JobState::Running).await;
        let stopping = tokio::spawn({
            let dispatcher = dispatcher.clone();
            async move { dispatcher.shutdown().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        runner.released.store(true, Ordering::SeqCst);
        runner.release.notify_waiters();
        stopping.await.unwrap();
        running.stopped().await;
        for id in &behind {
            let job = store.get(*id).await.unwrap().unwrap();
            assert_eq!((job.state, job.attempt), (JobState::Available, 0), "job {id} went back unstarted");
        }
        assert_ne!(state_of(&store, blocker).await, JobState::Running);
    }
}
