//! `Dispatcher`: the BackgroundService of Kiln. Claims jobs from each named
//! queue in batches, runs each in the runner (one fresh sandbox iteration),
//! turns the outcome into a state transition, keeps leases alive, and shuts
//! down without losing a job.

use super::metrics::Metrics;
use super::rescuer::Rescuer;
use super::retry_policy::{StopReason, decide};
use super::runner::{Ran, Runner};
use crate::queue::{
    ClaimParams, Finish, HeartbeatParams, Inserted, Job, JobId, JobStore, Lease, NewJob, SharedClock, StoreError, Transition,
};
use crate::sandbox::{JobInput, StopSignal};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// Jobs claimed per round trip: enough to amortise the claim's transaction
/// over many jobs, small enough that one host does not hoard a queue.
pub const DEFAULT_CLAIM_BATCH: usize = 64;
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
}

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
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            host: default_host_name(),
            queues: vec![QueueConfig { name: crate::queue::DEFAULT_QUEUE.into(), concurrency: cores * 4 }],
            claim_batch: DEFAULT_CLAIM_BATCH,
            finish_batch: DEFAULT_FINISH_BATCH,
            lease: DEFAULT_LEASE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            max_payload_bytes: crate::sandbox::DEFAULT_MAX_PAYLOAD_BYTES,
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
}

struct RunningJob {
    lease: Lease,
    stop: StopSignal,
    reason: Option<StopReason>,
}

struct Inner {
    store: Arc<dyn JobStore>,
    runner: Arc<dyn Runner>,
    config: DispatcherConfig,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    wake: BTreeMap<String, Arc<Notify>>,
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
                wake,
                running: Mutex::new(HashMap::new()),
                unwritten: Mutex::new(HashMap::new()),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                stopping: watch::Sender::new(false),
                finisher_done: watch::Sender::new(false),
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
        tasks.spawn(super::triggers::supervise(self.clone(), self.inner.runner.changes(), self.inner.stopping.subscribe()));
        let queues: Vec<String> = self.inner.config.queues.iter().map(|q| format!("{} (concurrency {})", q.name, q.concurrency)).collect();
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
            jobs.push(NewJob {
                kind: r.kind,
                queue,
                priority: r.priority.unwrap_or(0),
                payload: r.payload,
                max_attempts,
                scheduled_at: r.scheduled_at,
                unique_key: r.unique_key,
            });
        }
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
        self.send_finish(Finish { lease, transition: Transition::Snooze { at: job.scheduled_at }, ran_version: None });
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

async fn queue_loop(inner: Arc<Inner>, queue: QueueConfig) {
    let slots = Arc::new(Semaphore::new(queue.concurrency));
    let wake = inner.wake[&queue.name].clone();
    let mut stopping = inner.stopping.subscribe();
    loop {
        if *stopping.borrow() {
            break;
        }
        let mut permits: OwnedSemaphorePermit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = stopping.changed() => break,
        };
        let batch = inner.config.claim_batch.min(queue.concurrency).max(1);
        let enough = (batch / 4).max(1);
        if 1 + slots.available_permits() < enough {
            let more = tokio::time::timeout(CLAIM_COOLDOWN, slots.clone().acquire_many_owned((enough - 1) as u32)).await;
            if let Ok(Ok(more)) = more {
                permits.merge(more);
            }
        }
        let extra = slots.available_permits().min(batch.saturating_sub(permits.num_permits()));
        if extra > 0 {
            if let Ok(more) = slots.clone().try_acquire_many_owned(extra as u32) {
                permits.merge(more);
            }
        }
        let wanted = permits.num_permits();
        // Counted before the check, so shutdown either stops this claim
        // here or waits for it to hand its jobs on.
        let claiming = inner.begin();
        if !inner.accepting.load(Ordering::SeqCst) {
            break;
        }
        let claimed = inner
            .store
            .claim(ClaimParams {
                queue: queue.name.clone(),
                limit: wanted,
                host: inner.config.host.clone(),
                lease_ms: inner.config.lease.as_millis() as i64,
            })
            .await;
        let jobs = match claimed {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(queue = %queue.name, "claim failed: {e}; retrying after {:?}", inner.config.poll_interval);
                drop((permits, claiming));
                tokio::time::sleep(inner.config.poll_interval).await;
                continue;
            }
        };
        if jobs.is_empty() {
            drop((permits, claiming));
            let until_due = match inner.store.next_due(&queue.name).await {
                Ok(Some(at)) => Duration::from_millis((at - inner.clock.now()).max(1) as u64),
                _ => inner.config.poll_interval,
            };
            tokio::select! {
                () = wake.notified() => {}
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
                running.insert(job.id, RunningJob { lease: job.lease(), stop: stop.clone(), reason: None });
                starting.push((job, stop));
            }
        }
        if !stopped.is_empty() {
            tracing::info!(queue = %queue.name, jobs = stopped.len(), "shutdown began during the claim; putting the claimed jobs back unstarted");
        }
        for job in &stopped {
            inner.put_back(job);
        }
        let runtime = Dispatcher { inner: inner.clone() }.job_runtime();
        for (job, stop) in starting {
            let permit = permits.split(1).expect("one permit per claimed job");
            runtime.spawn(run_job(inner.clone(), job, stop, permit, inner.begin()));
        }
        drop(claiming);
        // Permits for jobs the claim did not find are dropped here.
    }
    tracing::info!(queue = %queue.name, "queue loop stopped");
}

async fn run_job(inner: Arc<Inner>, job: Job, stop: StopSignal, _slot: OwnedSemaphorePermit, _counted: InFlight) {
    let lease = job.lease();
    // Stopped between the claim and this start: never started at all.
    let stopped = inner.running.lock().expect("poisoned").get(&job.id).and_then(|r| r.reason);
    if stopped == Some(StopReason::Shutdown) || job.cancel_requested {
        inner.running.lock().expect("poisoned").remove(&job.id);
        if job.cancel_requested {
            let error = crate::queue::AttemptError {
                attempt: job.attempt,
                at: inner.clock.now(),
                outcome: "cancelled".into(),
                message: "cancelled before it started".into(),
            };
            inner.unwritten.lock().expect("poisoned").insert(job.id, lease);
            inner.send_finish(Finish { lease, transition: Transition::Cancel { error }, ran_version: None });
        } else {
            inner.put_back(&job);
        }
        return;
    }
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
    let input = JobInput {
        id: job.id.to_string(),
        kind: job.kind.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload: job.payload.clone(),
        checkpoint,
    };
    let started = inner.clock.now();
    inner.metrics.job_started(&job.kind, started - job.scheduled_at);
    let Ran { report, version } = inner.runner.run(&input, &stop).await;
    let reason = inner.running.lock().expect("poisoned").remove(&job.id).and_then(|r| r.reason);
    inner.metrics.job_finished(&job.kind, &report);
    let policy = kind.map(|k| k.retry).unwrap_or_default();
    let now = inner.clock.now();
    match decide(&job, &report.outcome, reason, &policy, now) {
        Some(transition) => {
            log_run_end(&job, &report, &transition);
            inner.unwritten.lock().expect("poisoned").insert(job.id, lease);
            inner.send_finish(Finish { lease, transition, ran_version: version });
        }
        None => tracing::warn!(job = job.id, "lease lost while running; another host has the job, nothing written"),
    }
}

/// One line per run end, Sidekiq-style: what ran, how it ended, what it
/// cost, and what happens next. Failures that will be retried are WARN,
/// dead letters ERROR.
fn log_run_end(job: &Job, report: &crate::sandbox::Report, transition: &Transition) {
    let duration_ms = format!("{:.2}", report.duration.as_secs_f64() * 1000.0);
    let (fuel, memory_bytes, outcome) = (report.fuel_used, report.peak_memory_bytes, report.outcome.name());
    let error = report.outcome.error_message().unwrap_or_default();
    macro_rules! line {
        ($level:ident, $($rest:tt)*) => {
            tracing::$level!(kind = %job.kind, job = job.id, attempt = job.attempt, %outcome, %duration_ms, fuel, memory_bytes, $($rest)*)
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
                for (lease, result) in leases.iter().zip(results) {
                    if let Err(e) = result {
                        tracing::warn!(job = lease.id, "transition refused: {e}");
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
        let mut leases: Vec<Lease> = inner.running.lock().expect("poisoned").values().map(|r| r.lease).collect();
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
        match inner.store.heartbeat(HeartbeatParams { leases, lease_ms: inner.config.lease.as_millis() as i64 }).await {
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
