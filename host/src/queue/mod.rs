//! Durable jobs: the [`JobStore`] trait (the database boundary, as state
//! transitions), the job states, and the backends (SQLite embedded, Postgres
//! shared). Knows nothing of wasm.

/// The earliest `scheduled_at` of a queue's waiting jobs, without reading
/// them all: the claim index orders them by priority first, so this reads
/// the first entry of each priority the queue has (a skip scan, one index
/// seek per distinct priority). Shared by both stores (`$q`: the queue's
/// parameter).
macro_rules! next_due_sql {
    ($q:literal) => {
        concat!(
            "WITH RECURSIVE p(priority) AS (\
               SELECT max(priority) FROM jobs WHERE queue = ", $q, " AND state IN ('available', 'scheduled', 'retryable') \
               UNION ALL \
               SELECT (SELECT max(priority) FROM jobs WHERE queue = ", $q, " AND state IN ('available', 'scheduled', 'retryable') \
                 AND priority < p.priority) FROM p WHERE p.priority IS NOT NULL) \
             SELECT min((SELECT min(scheduled_at) FROM jobs WHERE queue = ", $q, " AND state IN ('available', 'scheduled', 'retryable') \
               AND priority = p.priority)) FROM p WHERE p.priority IS NOT NULL"
        )
    };
}

mod attempt;
mod clock;
#[cfg(test)]
pub(crate) mod conformance;
mod job;
mod migration;
mod postgres;
mod sqlite;
mod store;

pub use attempt::{Attempt, AttemptRun, AttemptSummary, LogEntry, Progress, logs_json, logs_of_json};
pub use clock::{Clock, MAX_MILLIS, ManualClock, SharedClock, SystemClock, from_rfc3339, millis_after, system_time, to_rfc3339};
pub use job::{AttemptError, Job, JobId, JobState, Lease, Millis};
pub use postgres::{DEFAULT_SCHEMA, PostgresStore, WAKE_ALL, check_schema};
pub use sqlite::SqliteStore;
pub use store::{
    AttemptLogs, COUNT_FOLD_INTERVAL,
    ClaimRounds, ClaimShare, Claimed, HeldBack, KindGate, KindLimits, Limit, StartRate, TenantLimits, claim_cap, kind_bucket_name,
    kind_key, rate_bucket_name,
    ClaimParams, DEFAULT_PAGE_BYTES, DEFAULT_QUEUE, Effects, Finish, HeartbeatParams, HeartbeatResult, Inserted, JobList, JobStore, KvChange, KvWrite, ListFilter, LoopClaim,
    LoopLease, LoopSave, LoopState, MinuteRuns, NewJob, PruneParams, QueueInfo, ScheduleState, StateCount, StoreError, Transition, schedule_key,
    SCHEDULE_TICK_KEPT, schedule_key_range, schedule_tick_key, tick_of_key,
};
