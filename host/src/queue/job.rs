//! A job as the store keeps it, and the states it moves through.

pub use super::clock::Millis;
use serde::{Deserialize, Serialize};

/// A job's id, assigned by the store, increasing.
pub type JobId = i64;

/// Where a job is in its life. Each state says what moves jobs in and out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Inserted with a `scheduled_at` in the future. In: insert. Out: a claim
    /// once `scheduled_at` has passed (→ running), cancel (→ cancelled).
    Scheduled,
    /// Ready to run. In: insert, a hand retry of a dead or cancelled job,
    /// a snooze, a shutdown releasing its job. Out: claim (→ running),
    /// cancel (→ cancelled).
    Available,
    /// Claimed by a host, which holds a lease with a fencing token. In: claim.
    /// Out, only with the current token: complete (→ completed), retry-at
    /// (→ retryable), discard (→ dead), snooze (→ available/scheduled),
    /// cancel (→ cancelled); or the rescuer when the lease expired
    /// (→ retryable, or dead when no attempts are left).
    Running,
    /// Failed an attempt and waits for `scheduled_at` to try again. In:
    /// retry-at, rescue. Out: a claim once due (→ running), cancel.
    Retryable,
    /// Finished with a result. Final. In: complete.
    Completed,
    /// Stopped on request. In: cancel. Out: a hand retry (→ available).
    Cancelled,
    /// Dead letter: failed for good (bad input, fatal, or out of attempts).
    /// In: discard, rescue of a job with no attempts left. Out: a hand retry
    /// (→ available).
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }

    /// True for states a job never leaves by itself.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Completed | JobState::Cancelled | JobState::Dead)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown job state {s:?} (one of: scheduled, available, running, retryable, completed, cancelled, dead)"))
    }
}

/// Why one attempt failed, kept on the job for every failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    pub attempt: u32,
    /// When the attempt ended.
    pub at: Millis,
    /// What ended it (`retry`, `timed_out`, `trapped`, `lease_expired`, ...).
    pub outcome: String,
    pub message: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    /// The plugin that runs it.
    pub kind: String,
    pub queue: String,
    /// Higher runs first among due jobs of one queue.
    pub priority: i32,
    /// JSON by convention.
    pub payload: Vec<u8>,
    pub state: JobState,
    /// Attempts started so far (a claim counts one).
    pub attempt: u32,
    pub max_attempts: u32,
    /// Not claimed before this time.
    pub scheduled_at: Millis,
    /// At most one job per key outside `cancelled` and `dead`.
    pub unique_key: Option<String>,
    pub errors: Vec<AttemptError>,
    /// The `ok` value of the completed run.
    pub result: Option<Vec<u8>>,
    /// Fencing token of the current (or last) lease; each claim increments it.
    pub lease_token: i64,
    /// The host holding the lease, while running.
    pub leased_by: Option<String>,
    pub lease_expires_at: Option<Millis>,
    /// A cancel was asked while it ran; its host stops it at the next heartbeat.
    pub cancel_requested: bool,
    pub created_at: Millis,
    pub attempted_at: Option<Millis>,
    pub finalized_at: Option<Millis>,
    /// The plugin version that ran the latest attempt.
    pub plugin_version: Option<String>,
    /// The job whose successful run enqueued this one.
    pub parent_id: Option<JobId>,
    /// Its group under its kind's `max_per_key`.
    pub concurrency_key: Option<String>,
    /// The progress its plugin last reported (by this attempt, or the last
    /// one until this one reports), written with the heartbeat and the end.
    pub progress: Option<super::attempt::Progress>,
    /// The W3C `traceparent` its attempts' spans are children of.
    pub traceparent: Option<String>,
}

impl Job {
    /// The tenant the job belongs to; `None` for the host's own kinds.
    pub fn tenant(&self) -> Option<&str> {
        crate::names::tenant_of(&self.kind)
    }

    /// The lease a host holds on this job while running it.
    pub fn lease(&self) -> Lease {
        Lease { id: self.id, token: self.lease_token }
    }
}

/// A claim's proof: the job and the fencing token it was claimed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub id: JobId,
    pub token: i64,
}
