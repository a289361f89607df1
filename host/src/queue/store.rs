//! The [`JobStore`] trait: the database boundary, as state transitions.

use super::job::{AttemptError, Job, JobId, JobState, Lease, Millis};
use async_trait::async_trait;

/// A job to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub kind: String,
    pub queue: String,
    pub priority: i32,
    pub payload: Vec<u8>,
    pub max_attempts: u32,
    /// `None`: due now (state `available`); a future time: `scheduled`.
    pub scheduled_at: Option<Millis>,
    pub unique_key: Option<String>,
    /// The job whose run enqueued this one.
    pub parent_id: Option<JobId>,
}

/// The queue every job lands in unless it names another.
pub const DEFAULT_QUEUE: &str = "default";

impl NewJob {
    pub fn new(kind: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            kind: kind.into(),
            queue: DEFAULT_QUEUE.to_string(),
            priority: 0,
            payload: payload.into(),
            max_attempts: 1,
            scheduled_at: None,
            unique_key: None,
            parent_id: None,
        }
    }
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub job: Job,
    /// False when a job with the same unique key already existed: `job` is that one.
    pub created: bool,
}

/// Claim up to `limit` due jobs of `queue` for `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimParams {
    pub queue: String,
    pub limit: usize,
    /// Names the claiming host, for operators and `leased_by`.
    pub host: String,
    /// How long the lease lasts without a heartbeat.
    pub lease_ms: i64,
}

/// Extend the leases a host still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatParams {
    pub leases: Vec<Lease>,
    pub lease_ms: i64,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatResult {
    /// Leases that are no longer ours (rescued, or finished elsewhere): stop them.
    pub lost: Vec<Lease>,
    /// Jobs whose cancel was requested: ask them to stop.
    pub cancel_requested: Vec<Lease>,
}

/// How a running job leaves `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// → completed, with the result; the run's effects (the jobs it
    /// enqueued, its kv writes) are applied in the same transaction, and
    /// only if the lease is current.
    Complete { result: Vec<u8>, effects: Effects },
    /// → retryable until `at`, recording the error.
    RetryAt { at: Millis, error: AttemptError },
    /// → dead (the dead-letter state), recording the error.
    Discard { error: AttemptError },
    /// → available (or scheduled if `at` is later); the attempt is not
    /// counted: used when the host itself stopped the run (shutdown).
    Snooze { at: Millis },
    /// → cancelled, recording why.
    Cancel { error: AttemptError },
}

impl Transition {
    pub fn name(&self) -> &'static str {
        match self {
            Transition::Complete { .. } => "complete",
            Transition::RetryAt { .. } => "retry-at",
            Transition::Discard { .. } => "discard",
            Transition::Snooze { .. } => "snooze",
            Transition::Cancel { .. } => "cancel",
        }
    }
}

/// What a run changed in Kiln's own state, applied with its completion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Jobs it enqueued, inserted in order.
    pub children: Vec<NewJob>,
    /// Its kv writes, applied in order.
    pub kv: Vec<KvWrite>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.children.is_empty() && self.kv.is_empty()
    }
}

/// One change to a key of a kv store. Stores are namespaced: a plugin's
/// `default` is not another plugin's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWrite {
    pub namespace: String,
    pub store: String,
    pub key: String,
    pub change: KvChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvChange {
    Set(Vec<u8>),
    Delete,
    /// Adds to the decimal number the key holds (a missing key holds 0;
    /// a key that holds no such number is left as it is).
    Add(i64),
}

/// One transition out of `running`, accepted only with the current token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub lease: Lease,
    pub transition: Transition,
    /// The plugin version that ran the attempt, recorded on the job.
    pub ran_version: Option<String>,
}

impl Finish {
    pub fn new(lease: Lease, transition: Transition) -> Self {
        Self { lease, transition, ran_version: None }
    }
}

/// The unique key of a schedule's tick: one job per schedule and tick time,
/// so however many hosts fire the tick, the store keeps one. Fixed-width
/// time, so keys sort by tick.
pub fn schedule_key(kind: &str, tick: Millis) -> String {
    format!("schedule:{kind}:{tick:015}")
}

/// The key range `[start, end)` holding every tick of `kind`.
pub fn schedule_key_range(kind: &str) -> (String, String) {
    (format!("schedule:{kind}:"), format!("schedule:{kind};"))
}

/// Why a schedule's newest tick is not deleted by hand.
pub const SCHEDULE_TICK_KEPT: &str = "it is its schedule's newest tick, which is how the schedule knows where it got to";

/// The job's unique key, when it is one of its kind's schedule ticks.
pub fn schedule_tick_key(job: &Job) -> Option<&str> {
    let (start, end) = schedule_key_range(&job.kind);
    job.unique_key.as_deref().filter(|k| (start.as_str()..end.as_str()).contains(k))
}

/// The tick time inside a schedule key.
pub fn tick_of_key(key: &str) -> Option<Millis> {
    key.rsplit(':').next()?.parse().ok()
}

/// Where a schedule stands in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScheduleState {
    /// The newest tick that became a job (whatever happened to it since).
    pub last_tick: Option<Millis>,
    /// Whether any of its ticks is waiting or running.
    pub active: bool,
}

/// Take a continuous loop for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopClaim {
    pub name: String,
    pub host: String,
    pub lease_ms: i64,
}

/// A host's hold on a loop: only it may store the loop's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopLease {
    pub name: String,
    /// Fencing token: each acquire increments it.
    pub token: i64,
    /// The last stored checkpoint: the next pass's input.
    pub checkpoint: Option<Vec<u8>>,
    /// Passes that stored a checkpoint so far.
    pub passes: u64,
}

/// Store a loop pass's checkpoint (or, with `None`, only renew the lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopSave {
    pub name: String,
    pub token: i64,
    pub checkpoint: Option<Vec<u8>>,
    pub lease_ms: i64,
}

/// A loop as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopState {
    pub name: String,
    pub checkpoint: Option<Vec<u8>>,
    pub passes: u64,
    pub owner: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub updated_at: Millis,
}

/// Filters for listing jobs; `after_id` pages through results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    /// Only the jobs of this tenant (see [`tenant_of`](super::tenant_of)).
    pub tenant: Option<String>,
    /// Oldest first: only jobs with a larger id (the previous page's last
    /// id). Newest first: only jobs with a smaller one.
    pub after_id: Option<JobId>,
    /// Newest (largest id) first instead of oldest first.
    pub newest_first: bool,
    pub limit: usize,
    /// The page ends at the first job that brings the stored bytes it
    /// holds (payload, result, errors) to this many: however large each
    /// job is, a page holds at most this plus one job.
    pub max_bytes: u64,
}

/// The default byte bound of a page of jobs.
pub const DEFAULT_PAGE_BYTES: u64 = 8 << 20;

impl Default for ListFilter {
    fn default() -> Self {
        Self { state: None, kind: None, queue: None, tenant: None, after_id: None, newest_first: false, limit: 100, max_bytes: DEFAULT_PAGE_BYTES }
    }
}

/// One page of [`JobStore::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// More jobs match after the last one here (the page was full, or cut
    /// by its byte bound).
    pub more: bool,
}

/// How many jobs of one queue and one tenant are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    pub queue: String,
    /// `None`: the host's own kinds.
    pub tenant: Option<String>,
    pub state: JobState,
    pub count: u64,
}

/// A queue and whether it is paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub paused: bool,
}

/// What can go wrong in a store; callers match on these.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The fencing rule: the caller's lease is not the job's current one.
    #[error("job {id}: stale lease (token {token} is not the current lease of a running job); the transition was refused")]
    StaleLease { id: JobId, token: i64 },
    #[error("job {id} is {state}; cannot {action} it")]
    InvalidState { id: JobId, state: JobState, action: &'static str },
    /// A job the store keeps although it was asked to delete it.
    #[error("job {id} is kept: {reason}")]
    Kept { id: JobId, reason: &'static str },
    #[error("job {existing} already holds unique key {key:?}")]
    UniqueConflict { key: String, existing: JobId },
    /// The fencing rule for loops: another host (or a newer run here) took it.
    #[error("loop {name:?}: stale lease (token {token} is no longer current); the checkpoint was not stored")]
    LoopLost { name: String, token: i64 },
    #[error("{path} is not a Kiln database: {reason}")]
    NotADatabase { path: String, reason: String },
    #[error("database schema version {found} is newer than this Kiln knows ({known}); upgrade Kiln")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database error: {0}")]
    Database(String),
    /// The database could not be reached (refused, closed, timed out):
    /// worth trying again once it is back.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
}

/// The durable job store. Every method is one state transition or a read;
/// transitions out of `running` need the lease's current fencing token.
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts one job; with a unique key already held, returns that job instead.
    async fn insert(&self, job: NewJob) -> Result<Inserted, StoreError> {
        let mut inserted = self.insert_many(vec![job]).await?;
        Ok(inserted.pop().expect("one job in, one out"))
    }

    /// Inserts jobs in one transaction, in order.
    async fn insert_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError>;

    /// Moves up to `limit` due jobs of a queue (not paused) to `running`,
    /// counting an attempt and taking a lease with a new fencing token.
    async fn claim(&self, params: ClaimParams) -> Result<Vec<Job>, StoreError>;

    /// Extends held leases; reports lost ones and requested cancels.
    async fn heartbeat(&self, params: HeartbeatParams) -> Result<HeartbeatResult, StoreError>;

    /// Applies transitions out of `running` in one transaction. Each result
    /// is `Err(StaleLease)` when its token is not current; the others still apply.
    async fn finish_many(&self, finishes: Vec<Finish>) -> Result<Vec<Result<(), StoreError>>, StoreError>;

    /// One transition out of `running`.
    async fn finish(&self, finish: Finish) -> Result<(), StoreError> {
        self.finish_many(vec![finish]).await?.pop().expect("one finish in, one result out")
    }

    /// → completed.
    async fn complete(&self, lease: Lease, result: Vec<u8>) -> Result<(), StoreError> {
        self.finish(Finish::new(lease, Transition::Complete { result, effects: Effects::default() })).await
    }

    /// → retryable at `at`.
    async fn retry_at(&self, lease: Lease, at: Millis, error: AttemptError) -> Result<(), StoreError> {
        self.finish(Finish::new(lease, Transition::RetryAt { at, error })).await
    }

    /// → dead.
    async fn discard(&self, lease: Lease, error: AttemptError) -> Result<(), StoreError> {
        self.finish(Finish::new(lease, Transition::Discard { error })).await
    }

    /// → available at `at`, attempt not counted.
    async fn snooze(&self, lease: Lease, at: Millis) -> Result<(), StoreError> {
        self.finish(Finish::new(lease, Transition::Snooze { at })).await
    }

    /// Cancels a job that is not running (→ cancelled); for a running job,
    /// records the request (its host stops it, then finishes it as
    /// cancelled). Returns the job as it is now.
    async fn cancel(&self, id: JobId) -> Result<Job, StoreError>;

    /// Moves running jobs whose lease expired to retryable (or dead when no
    /// attempts are left): their host died or lost touch. They keep their
    /// `scheduled_at`, so they run next, not behind the whole backlog.
    /// Returns their ids.
    ///
    /// `spare` names jobs the calling host still runs or is still writing
    /// the end of (their lease ran out while the store was unreachable):
    /// they are alive, and left alone.
    async fn rescue_expired(&self, spare: &[JobId]) -> Result<Vec<JobId>, StoreError>;

    /// A dead or cancelled job → available, due now. Its attempt count goes
    /// on (attempt numbers never repeat in its errors); a job that used all
    /// its attempts gets one more, as in Oban and River.
    async fn retry_by_hand(&self, id: JobId) -> Result<Job, StoreError>;

    /// Deletes a dead or cancelled job (its errors go with it), and returns
    /// it as it was. A schedule's newest tick is kept ([`StoreError::Kept`]):
    /// it is how the schedule knows which tick it got to.
    async fn delete_by_hand(&self, id: JobId) -> Result<Job, StoreError>;

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    async fn list(&self, filter: ListFilter) -> Result<JobList, StoreError>;

    /// Job counts by queue, tenant and state (states with no jobs are left out).
    async fn counts(&self) -> Result<Vec<StateCount>, StoreError>;

    /// The earliest `scheduled_at` among jobs of `queue` waiting to run.
    async fn next_due(&self, queue: &str) -> Result<Option<Millis>, StoreError>;

    async fn pause_queue(&self, queue: &str) -> Result<(), StoreError>;

    async fn resume_queue(&self, queue: &str) -> Result<(), StoreError>;

    /// Queues known to the store (any that ever held a job or was paused).
    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError>;

    /// How many jobs of `kind` are waiting (available, scheduled,
    /// retryable) or running.
    async fn pending_count(&self, kind: &str) -> Result<u64, StoreError>;

    /// The newest tick of the schedule `kind` (its jobs carry
    /// [`schedule_key`]s) and whether any of its ticks is unfinished.
    async fn schedule_state(&self, kind: &str) -> Result<ScheduleState, StoreError>;

    /// The result of the newest completed tick of `kind`: the checkpoint
    /// handed to the next tick.
    async fn schedule_checkpoint(&self, kind: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Takes the loop for `host` if it is free, its lease expired, or it is
    /// already this host's; a new fencing token either way. `None`: another
    /// host holds it.
    async fn acquire_loop(&self, claim: LoopClaim) -> Result<Option<LoopLease>, StoreError>;

    /// Stores a pass's checkpoint and extends the lease, only with the
    /// current token (`Err(LoopLost)` otherwise).
    async fn save_loop(&self, save: LoopSave) -> Result<(), StoreError>;

    /// Gives the loop up (at shutdown), only with the current token.
    async fn release_loop(&self, name: &str, token: i64) -> Result<(), StoreError>;

    /// Every loop the store knows.
    async fn loops(&self) -> Result<Vec<LoopState>, StoreError>;

    /// The committed value of a kv key.
    async fn kv_get(&self, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Committed keys of a kv store in byte order, from the `offset`-th,
    /// at most `limit`; with `prefix`, only keys that start with it.
    async fn kv_keys(&self, namespace: &str, store: &str, prefix: &str, offset: u64, limit: usize) -> Result<Vec<String>, StoreError>;

    /// The bytes a kv store holds: its keys' and values' lengths, summed.
    async fn kv_usage(&self, namespace: &str, store: &str) -> Result<u64, StoreError>;

    /// Applies kv writes in one transaction of their own: for runs that
    /// complete no job (`kiln run`, loop passes, start-up runs) and for
    /// operators.
    async fn write_kv(&self, writes: Vec<KvWrite>) -> Result<(), StoreError>;

    /// Announcements of jobs inserted into this store by any host, as the
    /// name of the queue they went to ([`WAKE_ALL`](crate::queue::WAKE_ALL):
    /// look at every queue). `None` when the backend cannot announce across
    /// processes; hosts then find other processes' jobs by polling.
    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
}
