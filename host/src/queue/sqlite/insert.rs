//! Inserting jobs: unique keys, due times and the count deltas, in the
//! caller's transaction.

use super::connection::SqliteStore;
use super::rows::{db_error, job_from_row};
use crate::queue::{Inserted, NewJob, StoreError};
use crate::queue::job::{JobState, Millis};
use rusqlite::{OptionalExtension, params};

/// Inserts jobs in order (and the queues they name); a job whose unique
/// key is held yields the job holding it.
pub(super) fn insert_jobs(tx: &rusqlite::Transaction<'_>, jobs: &[NewJob], now: Millis) -> rusqlite::Result<Vec<Inserted>> {
    let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    for queue in queues {
        tx.prepare_cached("INSERT OR IGNORE INTO queues (name, paused, updated_at) VALUES (?1, 0, ?2)")?.execute(params![queue, now])?;
    }
    let mut inserted = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Some(key) = &job.unique_key {
            let existing = tx
                .prepare_cached(concat!("SELECT ", columns!(), " FROM jobs WHERE unique_key = ?1 AND state NOT IN ('cancelled', 'dead')"))?
                .query_row([key], job_from_row)
                .optional()?;
            if let Some(job) = existing {
                inserted.push(Inserted { job, created: false });
                continue;
            }
        }
        let scheduled_at = job.scheduled_at.unwrap_or(now).max(0);
        let state = if scheduled_at > now { JobState::Scheduled } else { JobState::Available };
        let row = tx
            .prepare_cached(concat!(
                "INSERT INTO jobs (kind, queue, priority, payload, state, max_attempts, scheduled_at, unique_key, created_at, parent_id, concurrency_key, traceparent) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING ",
                columns!()
            ))?
            .query_row(
                params![job.kind, job.queue, job.priority, job.payload, state.as_str(), job.max_attempts, scheduled_at, job.unique_key, now, job.parent_id, job.concurrency_key, job.traceparent],
                job_from_row,
            )?;
        inserted.push(Inserted { job: row, created: true });
    }
    Ok(inserted)
}

pub(super) async fn insert_many(db: &SqliteStore, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError> {
    db.write(move |tx, now| insert_jobs(tx, &jobs, now).map_err(db_error)).await
}
