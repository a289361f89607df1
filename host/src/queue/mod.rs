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

/// The [`JobStore`] of a backend split by concern, as both are: each
/// method a call of the function of the same name in the backend's module
/// for that concern (`insert`, `claim`, `finish`, `reads`, `queues`,
/// `triggers`, `kv`, `maintenance`), written once for both; a backend
/// adds what only it has after `;`.
macro_rules! job_store_by_concern {
    ($store:ty; $($extra:tt)*) => {
        #[async_trait::async_trait]
        impl $crate::queue::JobStore for $store {
            async fn insert_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError> {
                insert::insert_many(self, jobs).await
            }

            async fn claim_fair(&self, p: ClaimParams) -> Result<Claimed, StoreError> {
                claim::claim_fair(self, p).await
            }

            async fn heartbeat(&self, p: HeartbeatParams) -> Result<HeartbeatResult, StoreError> {
                finish::heartbeat(self, p).await
            }

            async fn finish_many(&self, finishes: Vec<Finish>) -> Result<Vec<Result<(), StoreError>>, StoreError> {
                finish::finish_many(self, finishes).await
            }

            async fn cancel(&self, id: JobId) -> Result<Job, StoreError> {
                finish::cancel(self, id).await
            }

            async fn rescue_expired(&self, spare: &[JobId]) -> Result<Vec<JobId>, StoreError> {
                maintenance::rescue_expired(self, spare).await
            }

            async fn retry_by_hand(&self, id: JobId) -> Result<Job, StoreError> {
                finish::retry_by_hand(self, id).await
            }

            async fn delete_by_hand(&self, id: JobId) -> Result<Job, StoreError> {
                finish::delete_by_hand(self, id).await
            }

            async fn prune(&self, p: PruneParams) -> Result<u64, StoreError> {
                maintenance::prune(self, p).await
            }

            async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
                reads::get(self, id).await
            }

            async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>, StoreError> {
                reads::attempts(self, id).await
            }

            async fn attempt_logs(&self, id: JobId, attempt: Option<u32>, max_bytes: u64) -> Result<AttemptLogs, StoreError> {
                reads::attempt_logs(self, id, attempt, max_bytes).await
            }

            async fn list(&self, filter: ListFilter) -> Result<JobList, StoreError> {
                reads::list(self, filter).await
            }

            async fn counts(&self) -> Result<Vec<StateCount>, StoreError> {
                reads::counts(self).await
            }

            async fn next_due(&self, queue: &str) -> Result<Option<Millis>, StoreError> {
                queues::next_due(self, queue).await
            }

            async fn pause_queue(&self, queue: &str) -> Result<(), StoreError> {
                queues::pause_queue(self, queue).await
            }

            async fn resume_queue(&self, queue: &str) -> Result<(), StoreError> {
                queues::resume_queue(self, queue).await
            }

            async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
                queues::queues(self).await
            }

            async fn pending_count(&self, kind: &str) -> Result<u64, StoreError> {
                reads::pending_count(self, kind).await
            }

            async fn waiting_count(&self, tenant: Option<&str>) -> Result<u64, StoreError> {
                reads::waiting_count(self, tenant).await
            }

            async fn schedule_state(&self, kind: &str) -> Result<ScheduleState, StoreError> {
                triggers::schedule_state(self, kind).await
            }

            async fn schedule_checkpoint(&self, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
                triggers::schedule_checkpoint(self, kind).await
            }

            async fn acquire_loop(&self, claim: LoopClaim) -> Result<Option<LoopLease>, StoreError> {
                triggers::acquire_loop(self, claim).await
            }

            async fn save_loop(&self, save: LoopSave) -> Result<(), StoreError> {
                triggers::save_loop(self, save).await
            }

            async fn release_loop(&self, name: &str, token: i64) -> Result<(), StoreError> {
                triggers::release_loop(self, name, token).await
            }

            async fn kv_get(&self, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
                kv::kv_get(self, namespace, store, key).await
            }

            async fn kv_keys(&self, namespace: &str, store: &str, prefix: &str, offset: u64, limit: usize) -> Result<Vec<String>, StoreError> {
                kv::kv_keys(self, namespace, store, prefix, offset, limit).await
            }

            async fn kv_usage(&self, namespace: &str, store: &str) -> Result<u64, StoreError> {
                kv::kv_usage(self, namespace, store).await
            }

            async fn kv_usage_under(&self, prefix: &str) -> Result<u64, StoreError> {
                kv::kv_usage_under(self, prefix).await
            }

            async fn write_kv(&self, writes: Vec<KvWrite>) -> Result<(), StoreError> {
                kv::write_kv(self, writes).await
            }

            async fn record_minutes(&self, rows: Vec<MinuteRuns>, keep_since: Millis) -> Result<(), StoreError> {
                maintenance::record_minutes(self, rows, keep_since).await
            }

            async fn minutes(&self, since: Millis) -> Result<Vec<MinuteRuns>, StoreError> {
                reads::minutes(self, since).await
            }

            async fn loops(&self) -> Result<Vec<LoopState>, StoreError> {
                triggers::loops(self).await
            }

            $($extra)*
        }
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
