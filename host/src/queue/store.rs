//! The [`JobStore`] trait: the database boundary, as state transitions.

use super::attempt::{Attempt, AttemptRun, Progress};
use super::claim::{ClaimParams, Claimed};
use super::job::{AttemptError, Job, JobId, JobState, Lease, Millis};
use super::reads::{AttemptLogs, JobList, ListFilter, MinuteRuns, PruneParams, QueueInfo, StateCount};
use super::triggers::{LoopClaim, LoopLease, LoopSave, LoopState, ScheduleState};
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
    /// Groups jobs of one kind (a customer id, say) that its
    /// `[throttle] max_per_key` lets run only so many at once.
    pub concurrency_key: Option<String>,
    /// The W3C `traceparent` its attempts' spans are children of (checked
    /// by the caller: the store keeps what it is given).
    pub traceparent: Option<String>,
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
            concurrency_key: None,
            traceparent: None,
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

/// Extend the leases a host still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatParams {
    pub leases: Vec<Lease>,
    pub lease_ms: i64,
    /// Progress reported since the last beat, by job (written only where
    /// the lease is current).
    pub progress: Vec<(Lease, Progress)>,
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
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub lease: Lease,
    pub transition: Transition,
    /// The plugin version that ran the attempt, recorded on the job.
    pub ran_version: Option<String>,
    /// The attempt's record, kept with the job (none for a snooze, which
    /// does not count as an attempt, or when the host keeps no attempts).
    pub attempt: Option<AttemptRun>,
}

impl Finish {
    pub fn new(lease: Lease, transition: Transition) -> Self {
        Self { lease, transition, ran_version: None, attempt: None }
    }
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
    /// With shares, each tenant's first (up to its `want`), then more of
    /// each in turn while the limit is not reached; no tenant past its
    /// limits, across every host of the store. Says which tenants its
    /// limits held back.
    async fn claim_fair(&self, params: ClaimParams) -> Result<Claimed, StoreError>;

    /// [`claim_fair`](Self::claim_fair)'s jobs.
    async fn claim(&self, params: ClaimParams) -> Result<Vec<Job>, StoreError> {
        Ok(self.claim_fair(params).await?.jobs)
    }

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

    /// Deletes up to `limit` finished jobs as [`PruneParams`] says, in one
    /// transaction, and returns how many. A schedule's newest tick and its
    /// newest completed one (its checkpoint) are kept whatever their age.
    async fn prune(&self, params: PruneParams) -> Result<u64, StoreError>;

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;
    /// The recorded attempts of job `id`, first first (none for a job that
    /// does not exist).
    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>, StoreError>;
    /// The log lines of job `id`'s attempt `attempt` (every attempt's when
    /// `None`), each with its attempt's number, in order: whole attempts,
    /// as many as fit in `max_bytes` of stored lines (at least one).
    async fn attempt_logs(&self, id: JobId, attempt: Option<u32>, max_bytes: u64) -> Result<AttemptLogs, StoreError>;

    async fn list(&self, filter: ListFilter) -> Result<JobList, StoreError>;

    /// Job counts by queue, tenant and state (states with no jobs are left out).
    async fn counts(&self) -> Result<Vec<StateCount>, StoreError>;
    /// Upkeep of those counts, where a backend keeps them in two parts
    /// (Postgres folds the changes hosts appended into the totals; see its
    /// migration 11). Called every [`COUNT_FOLD_INTERVAL`](super::COUNT_FOLD_INTERVAL) by each host;
    /// safe to call from several at once.
    async fn fold_counts(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The earliest `scheduled_at` among jobs of `queue` waiting to run.
    async fn next_due(&self, queue: &str) -> Result<Option<Millis>, StoreError>;

    async fn pause_queue(&self, queue: &str) -> Result<(), StoreError>;

    async fn resume_queue(&self, queue: &str) -> Result<(), StoreError>;

    /// Queues known to the store (any that ever held a job or was paused).
    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError>;

    /// How many jobs of `kind` are waiting (available, scheduled,
    /// retryable) or running.
    async fn pending_count(&self, kind: &str) -> Result<u64, StoreError>;

    /// How many of `tenant`'s jobs (`None`: the host's own kinds) are
    /// waiting: available, scheduled or retryable.
    async fn waiting_count(&self, tenant: Option<&str>) -> Result<u64, StoreError>;

    /// The newest tick of the schedule `kind` (its jobs carry
    /// [`schedule_key`](super::schedule_key)s) and whether any of its ticks is unfinished.
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
    /// Writes one host's per-minute run totals: each row replaces the one
    /// of its minute, host, queue and kind (a host writes its running
    /// totals again as the minute fills). Rows of minutes before
    /// `keep_since` (every host's) are deleted in the same call.
    async fn record_minutes(&self, rows: Vec<MinuteRuns>, keep_since: Millis) -> Result<(), StoreError>;

    /// Every host's per-minute totals of minutes from `since` on, oldest first.
    async fn minutes(&self, since: Millis) -> Result<Vec<MinuteRuns>, StoreError>;

    async fn kv_get(&self, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Committed keys of a kv store in byte order, from the `offset`-th,
    /// at most `limit`; with `prefix`, only keys that start with it.
    async fn kv_keys(&self, namespace: &str, store: &str, prefix: &str, offset: u64, limit: usize) -> Result<Vec<String>, StoreError>;

    /// The bytes a kv store holds: its keys' and values' lengths, summed.
    async fn kv_usage(&self, namespace: &str, store: &str) -> Result<u64, StoreError>;

    /// The bytes every store of every namespace starting with `prefix`
    /// holds together (a tenant's: `acme/`).
    async fn kv_usage_under(&self, prefix: &str) -> Result<u64, StoreError>;

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
