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
//! `maintenance`); this file is the [`JobStore`](crate::queue::JobStore) they make
//! together (`job_store_by_concern!`).

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
    AttemptLogs, ClaimParams, Claimed, Finish, HeartbeatParams, HeartbeatResult, Inserted, JobList, KvWrite, ListFilter,
    LoopClaim, LoopLease, LoopSave, LoopState, MinuteRuns, NewJob, PruneParams, QueueInfo, ScheduleState, StateCount, StoreError,
};
use tokio::sync::broadcast;

job_store_by_concern!(PostgresStore;
    async fn fold_counts(&self) -> Result<(), StoreError> {
        maintenance::fold_counts(self).await
    }

    fn wakeups(&self) -> Option<broadcast::Receiver<String>> {
        connection::wakeups(self)
    }
);
