//! The shared backend: PostgreSQL, for several hosts on one database (the
//! way River, Oban and graphile-worker scale), with nothing else to run.
//!
//! - A pool of tokio-postgres connections (deadpool), each with its
//!   `search_path` set to Kiln's schema, so Kiln's tables live apart from
//!   an application's and tests can run side by side in their own schemas.
//! - Migrations run at connect, in one transaction under an advisory lock:
//!   two hosts starting at once apply each migration once.
//! - Claims take a batch with `FOR UPDATE SKIP LOCKED`: hosts never wait on
//!   each other's rows. Completions of a batch are one statement, and the
//!   fencing rule (lease token and `running`) is in that statement's `WHERE`.
//! - An insert fires a statement-level trigger that `NOTIFY`s the queues it
//!   touched; every host `LISTEN`s on one dedicated connection and wakes
//!   its queue loops (see [`JobStore::wakeups`]). Polling stays as the
//!   safety net.
//! - Time comes from the host's clock, as with SQLite (the hosts' clocks are
//!   assumed to agree to well within a lease).
//!
//! One file per concern (`connection`, `schema`, `rows`, `insert`,
//! `claim`, `finish`, `reads`, `queues`, `triggers`, `kv`,
//! `maintenance`); this file is the [`JobStore`] they make together.

#[macro_use]
mod sql;

mod claim;
mod connection;
mod finish;
mod insert;
mod kv;
mod maintenance;
mod queues;
mod reads;
mod rows;
mod schema;
mod triggers;
#[cfg(test)]
pub(crate) mod tests;

pub use connection::{DEFAULT_SCHEMA, PostgresStore, WAKE_ALL, check_schema};

use crate::queue::attempt::Attempt;
use crate::queue::job::{Job, JobId, Millis};
use crate::queue::{
    AttemptLogs, ClaimParams, Claimed, Finish, HeartbeatParams, HeartbeatResult, Inserted, JobList, JobStore, KvWrite, ListFilter,
    LoopClaim, LoopLease, LoopSave, LoopState, MinuteRuns, NewJob, PruneParams, QueueInfo, ScheduleState, StateCount, StoreError,
};
use async_trait::async_trait;
use tokio::sync::broadcast;

#[async_trait]
impl JobStore for PostgresStore {
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

    async fn prune(&self, p: PruneParams) -> Result<u64, StoreError> {
        maintenance::prune(self, p).await
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

    async fn fold_counts(&self) -> Result<(), StoreError> {
        maintenance::fold_counts(self).await
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

    fn wakeups(&self) -> Option<broadcast::Receiver<String>> {
        connection::wakeups(self)
    }
}
