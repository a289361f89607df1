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
mod claim;
mod clock;
#[cfg(test)]
pub(crate) mod conformance;
mod job;
mod migration;
mod postgres;
mod reads;
mod sqlite;
mod store;
mod triggers;

pub use attempt::{Attempt, AttemptRun, AttemptSummary, LogEntry, Progress, logs_json, logs_of_json};
pub use clock::{Clock, MAX_MILLIS, ManualClock, SharedClock, SystemClock, from_rfc3339, millis_after, system_time, to_rfc3339};
pub use job::{AttemptError, Job, JobId, JobState, Lease, Millis};
pub use postgres::{DEFAULT_SCHEMA, PostgresStore, WAKE_ALL, check_schema};
pub use sqlite::SqliteStore;
pub use claim::{
    ClaimParams, ClaimRounds, ClaimShare, Claimed, HeldBack, KindGate, KindLimits, Limit, StartRate, TenantLimits, claim_cap, kind_bucket_name,
    kind_key, rate_bucket_name,
};
pub use reads::{AttemptLogs, COUNT_FOLD_INTERVAL, DEFAULT_PAGE_BYTES, JobList, ListFilter, MinuteRuns, PruneParams, QueueInfo, StateCount};
pub use store::{DEFAULT_QUEUE, Effects, Finish, HeartbeatParams, HeartbeatResult, Inserted, JobStore, KvChange, KvWrite, NewJob, StoreError, Transition};
pub use triggers::{
    LoopClaim, LoopLease, LoopSave, LoopState, SCHEDULE_TICK_KEPT, ScheduleState, schedule_key, schedule_key_range, schedule_tick_key, tick_of_key,
};
