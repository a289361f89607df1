//! A job read from a row (written once, for every query that reads jobs),
//! and the small conversions the statements share.

use crate::queue::StoreError;
use crate::queue::attempt::Progress;
use crate::queue::job::{AttemptError, Job, JobId};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

/// How many columns `columns!()` names: a query that adds one of its own
/// reads it at this index.
pub(super) const JOB_COLUMNS: usize = 25;

/// Errors from the database itself (a constraint, bad SQL) are `Database`;
/// a connection that failed, closed or was ended by the server (shutdown:
/// SQLSTATE class 57; connection exceptions: 08; too many connections: 53)
/// is `Unavailable`, worth trying again once Postgres is back.
pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if !["08", "53", "57"].iter().any(|class| db.code().code().starts_with(class)) => {
            StoreError::Database(format!("{} ({})", db.message(), db.code().code()))
        }
        Some(db) => StoreError::Unavailable(format!("{} ({})", db.message(), db.code().code())),
        None => StoreError::Unavailable(e.to_string()),
    }
}

pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

pub(super) fn job_from_row(row: &Row) -> Result<Job, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Database(format!("unexpected row: {e}"));
    let state: String = row.try_get(5).map_err(bad)?;
    let errors: String = row.try_get(10).map_err(bad)?;
    Ok(Job {
        id: row.try_get(0).map_err(bad)?,
        kind: row.try_get(1).map_err(bad)?,
        queue: row.try_get(2).map_err(bad)?,
        priority: row.try_get(3).map_err(bad)?,
        payload: row.try_get(4).map_err(bad)?,
        state: state.parse().map_err(StoreError::Database)?,
        attempt: row.try_get::<_, i32>(6).map_err(bad)? as u32,
        max_attempts: row.try_get::<_, i32>(7).map_err(bad)? as u32,
        scheduled_at: row.try_get(8).map_err(bad)?,
        unique_key: row.try_get(9).map_err(bad)?,
        errors: serde_json::from_str(&errors).unwrap_or_default(),
        result: row.try_get(11).map_err(bad)?,
        lease_token: row.try_get(12).map_err(bad)?,
        leased_by: row.try_get(13).map_err(bad)?,
        lease_expires_at: row.try_get(14).map_err(bad)?,
        cancel_requested: row.try_get(15).map_err(bad)?,
        created_at: row.try_get(16).map_err(bad)?,
        attempted_at: row.try_get(17).map_err(bad)?,
        finalized_at: row.try_get(18).map_err(bad)?,
        plugin_version: row.try_get(19).map_err(bad)?,
        parent_id: row.try_get(20).map_err(bad)?,
        concurrency_key: row.try_get(21).map_err(bad)?,
        progress: match row.try_get::<_, Option<i16>>(22).map_err(bad)? {
            Some(percent) => Some(Progress { percent: percent.clamp(0, 100) as u8, note: row.try_get(23).map_err(bad)? }),
            None => None,
        },
        traceparent: row.try_get(24).map_err(bad)?,
    })
}

pub(super) fn jobs_from_rows(rows: &[Row]) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(job_from_row).collect()
}

pub(super) async fn get_job(client: &impl GenericClient, id: JobId) -> Result<Option<Job>, StoreError> {
    let stmt = client.prepare_cached(concat!("SELECT ", columns!(), " FROM jobs WHERE id = $1")).await.map_err(pg_error)?;
    client.query_opt(&stmt, &[&id]).await.map_err(pg_error)?.as_ref().map(job_from_row).transpose()
}

pub(super) fn error_json(error: &AttemptError) -> String {
    serde_json::to_string(error).expect("attempt errors serialise")
}

/// A count as Postgres's bigint (which is signed).
pub(super) fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
