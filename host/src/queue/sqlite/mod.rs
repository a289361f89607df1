//! The embedded default backend: one SQLite file in WAL mode, created and
//! migrated by Kiln, with no set-up. `synchronous = NORMAL`: a committed
//! transaction survives a crash of the process (`kill -9`); only a power
//! loss can drop the last few commits.
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
mod tests;

pub use connection::SqliteStore;

use crate::queue::attempt::Attempt;
use crate::queue::job::{Job, JobId, Millis};
use crate::queue::{
    AttemptLogs, ClaimParams, Claimed, Finish, HeartbeatParams, HeartbeatResult, Inserted, JobList, KvWrite, ListFilter,
    LoopClaim, LoopLease, LoopSave, LoopState, MinuteRuns, NewJob, PruneParams, QueueInfo, ScheduleState, StateCount, StoreError,
};

job_store_by_concern!(SqliteStore;);
