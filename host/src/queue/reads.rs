//! What reads and upkeep ask and answer: a page of jobs by filter,
//! attempts' logs, counts by state, queues, runs per minute, pruning.

use super::attempt::LogEntry;
use super::job::{Job, JobId, JobState, Millis};

/// One host's runs of one kind on one queue in one minute: what the
/// dashboard's throughput and queue-delay charts are drawn from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MinuteRuns {
    /// The minute's start, ms since the epoch (a multiple of 60,000).
    pub minute: Millis,
    pub host: String,
    pub queue: String,
    pub kind: String,
    /// Runs that ended in the minute, and how many of them failed.
    pub runs: u64,
    pub failures: u64,
    /// Their waits from due to start, summed and the longest.
    pub delay_ms_sum: i64,
    pub delay_ms_max: i64,
}

/// Delete finished jobs of one state: those finalized before a time, and
/// those past the newest `keep_per_queue` of their queue (by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneParams {
    /// `completed`, `cancelled` or `dead`.
    pub state: JobState,
    pub finalized_before: Millis,
    pub keep_per_queue: u64,
    /// The most one call deletes (one transaction).
    pub limit: usize,
}

/// Filters for listing jobs; `after_id` pages through results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    /// Only the jobs of this tenant (see [`tenant_of`](crate::names::tenant_of)).
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

/// One page of [`JobStore::list`](super::JobStore::list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// More jobs match after the last one here (the page was full, or cut
    /// by its byte bound).
    pub more: bool,
}

/// How often each host calls [`JobStore::fold_counts`](super::JobStore::fold_counts).
pub const COUNT_FOLD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`JobStore::attempt_logs`](super::JobStore::attempt_logs) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptLogs {
    pub lines: Vec<(u32, LogEntry)>,
    /// Later attempts' lines were left out to keep within the bound.
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
