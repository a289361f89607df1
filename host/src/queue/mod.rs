//! Durable jobs: the [`JobStore`] trait (the database boundary, as state
//! transitions), the job states, and the backends (SQLite embedded, Postgres
//! shared). Knows nothing of wasm.

mod attempt;
mod clock;
#[cfg(test)]
pub(crate) mod conformance;
mod job;
mod postgres;
mod sqlite;
mod store;

pub use attempt::{Attempt, AttemptRun, AttemptSummary, LogEntry, Progress, logs_json, logs_of_json};
pub use clock::{Clock, MAX_MILLIS, ManualClock, SharedClock, SystemClock, from_rfc3339, millis_after, to_rfc3339};
pub use job::{AttemptError, Job, JobId, JobState, Lease, Millis, plain_name, qualified_kind, tenant_of};
pub use postgres::{DEFAULT_SCHEMA, PostgresStore, WAKE_ALL, check_schema};
pub use sqlite::SqliteStore;
pub use store::{
    AttemptLogs,
    ClaimRounds, ClaimShare, Claimed, HeldBack, KindGate, KindLimits, Limit, StartRate, TenantLimits, claim_cap, concurrency_key_problem, kind_bucket_name,
    kind_key, rate_bucket_name, MAX_CONCURRENCY_KEY_BYTES,
    ClaimParams, DEFAULT_PAGE_BYTES, DEFAULT_QUEUE, Effects, Finish, HeartbeatParams, HeartbeatResult, Inserted, JobList, JobStore, KvChange, KvWrite, ListFilter, LoopClaim,
    LoopLease, LoopSave, LoopState, NewJob, PruneParams, QueueInfo, ScheduleState, StateCount, StoreError, Transition, schedule_key,
    SCHEDULE_TICK_KEPT, schedule_key_range, schedule_tick_key, tick_of_key,
};
