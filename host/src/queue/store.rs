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
    /// → completed, with the result.
    Complete { result: Vec<u8> },
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

/// One transition out of `running`, accepted only with the current token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub lease: Lease,
    pub transition: Transition,
}

/// Filters for listing jobs; `after_id` pages through results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    /// Only jobs with a larger id (the previous page's last id).
    pub after_id: Option<JobId>,
    pub limit: usize,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self { state: None, kind: None, queue: None, after_id: None, limit: 100 }
    }
}

/// How many jobs of one queue are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    pub queue: String,
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
    #[error("job {existing} already holds unique key {key:?}")]
    UniqueConflict { key: String, existing: JobId },
    #[error("{path} is not a Kiln database: {reason}")]
    NotADatabase { path: String, reason: String },
    #[error("database schema version {found} is newer than this Kiln knows ({known}); upgrade Kiln")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database error: {0}")]
    Database(String),
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
        self.finish(Finish { lease, transition: Transition::Complete { result } }).await
    }

    /// → retryable at `at`.
    async fn retry_at(&self, lease: Lease, at: Millis, error: AttemptError) -> Result<(), StoreError> {
        self.finish(Finish { lease, transition: Transition::RetryAt { at, error } }).await
    }

    /// → dead.
    async fn discard(&self, lease: Lease, error: AttemptError) -> Result<(), StoreError> {
        self.finish(Finish { lease, transition: Transition::Discard { error } }).await
    }

    /// → available at `at`, attempt not counted.
    async fn snooze(&self, lease: Lease, at: Millis) -> Result<(), StoreError> {
        self.finish(Finish { lease, transition: Transition::Snooze { at } }).await
    }

    /// Cancels a job that is not running (→ cancelled); for a running job,
    /// records the request (its host stops it, then finishes it as
    /// cancelled). Returns the job as it is now.
    async fn cancel(&self, id: JobId) -> Result<Job, StoreError>;

    /// Moves running jobs whose lease expired to retryable (or dead when no
    /// attempts are left): their host died or lost touch. Returns their ids.
    async fn rescue_expired(&self) -> Result<Vec<JobId>, StoreError>;

    /// A dead or cancelled job → available, with a fresh set of attempts.
    async fn retry_by_hand(&self, id: JobId) -> Result<Job, StoreError>;

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    async fn list(&self, filter: ListFilter) -> Result<Vec<Job>, StoreError>;

    /// Job counts by queue and state (states with no jobs are left out).
    async fn counts(&self) -> Result<Vec<StateCount>, StoreError>;

    /// The earliest `scheduled_at` among jobs of `queue` waiting to run.
    async fn next_due(&self, queue: &str) -> Result<Option<Millis>, StoreError>;

    async fn pause_queue(&self, queue: &str) -> Result<(), StoreError>;

    async fn resume_queue(&self, queue: &str) -> Result<(), StoreError>;

    /// Queues known to the store (any that ever held a job or was paused).
    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError>;
}
