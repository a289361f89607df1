//! A job read from a row (written once, for every query that reads jobs),
//! and the small conversions the statements share.

use crate::queue::StoreError;
use crate::queue::attempt::Progress;
use crate::queue::job::{AttemptError, Job, JobId};
use rusqlite::{Connection, OptionalExtension};

/// How many columns `columns!()` names: a query that adds one of its own
/// reads it at this index.
pub(super) const JOB_COLUMNS: usize = 25;

pub(super) fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(5)?;
    let errors: String = row.get(10)?;
    Ok(Job {
        id: row.get(0)?,
        kind: row.get(1)?,
        queue: row.get(2)?,
        priority: row.get(3)?,
        payload: row.get(4)?,
        state: state.parse().map_err(|e: String| rusqlite::Error::InvalidColumnType(5, e, rusqlite::types::Type::Text))?,
        attempt: row.get(6)?,
        max_attempts: row.get(7)?,
        scheduled_at: row.get(8)?,
        unique_key: row.get(9)?,
        errors: serde_json::from_str(&errors).unwrap_or_default(),
        result: row.get(11)?,
        lease_token: row.get(12)?,
        leased_by: row.get(13)?,
        lease_expires_at: row.get(14)?,
        cancel_requested: row.get(15)?,
        created_at: row.get(16)?,
        attempted_at: row.get(17)?,
        finalized_at: row.get(18)?,
        plugin_version: row.get(19)?,
        parent_id: row.get(20)?,
        concurrency_key: row.get(21)?,
        progress: row.get::<_, Option<u8>>(22)?.map(|percent| Ok::<_, rusqlite::Error>(Progress { percent, note: row.get(23)? })).transpose()?,
        traceparent: row.get(24)?,
    })
}

pub(super) fn get_job(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
    conn.prepare_cached(concat!("SELECT ", columns!(), " FROM jobs WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], job_from_row).optional())
        .map_err(db_error)
}

pub(super) fn error_json(error: &AttemptError) -> String {
    serde_json::to_string(error).expect("attempt errors serialise")
}

/// A count as SQLite's integer (which is signed).
pub(super) fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A JSON array of `items`, for `json_each`.
pub(super) fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("strings and numbers serialize")
}

pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// SQLite's errors in Kiln's classes: a full disk, an I/O error, a file
/// that cannot be opened or a lock held too long are the store being
/// unavailable (try again: the data is intact); the rest are errors.
pub(super) fn db_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(failure, _)
            if matches!(
                failure.code,
                ErrorCode::DiskFull
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::CannotOpen
                    | ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::ReadOnly
                    | ErrorCode::OutOfMemory
            ) =>
        {
            StoreError::Unavailable(format!("SQLite: {e}"))
        }
        _ => StoreError::Database(e.to_string()),
    }
}
