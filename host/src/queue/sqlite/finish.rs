//! Transitions out of `running` and by hand: complete (with its effects),
//! retry at, discard, snooze, cancel; each fenced by its lease's token,
//! with the attempt it ended; and the heartbeat that keeps leases alive.

use super::connection::SqliteStore;
use super::insert::insert_jobs;
use super::kv::apply_kv;
use super::rows::{clamp_i64, db_error, error_json, get_job, is_unique_violation};
use crate::queue::{Finish, HeartbeatParams, HeartbeatResult, SCHEDULE_TICK_KEPT, StoreError, Transition, schedule_key_range, schedule_tick_key};
use crate::queue::attempt::{AttemptRun, logs_json};
use crate::queue::job::{Job, JobId, JobState, Lease, Millis};
use rusqlite::{OptionalExtension, params};
use rusqlite::types::Null;

/// Applies one transition; `Ok(false)` when the lease is not current.
pub(super) fn apply(tx: &rusqlite::Transaction<'_>, finish: &Finish, now: Millis) -> rusqlite::Result<bool> {
    let Lease { id, token } = finish.lease;
    let changed = match &finish.transition {
        Transition::Complete { result, effects } => {
            let changed = tx
                .prepare_cached(concat!("UPDATE jobs SET state = 'completed', result = ?3, finalized_at = ?4, ", clear_lease!(), fence!()))?
                .execute(params![id, token, result, now, Null, Null, Null, Null, finish.ran_version])?;
            // The run's effects go in with its completion, or not at all.
            if changed == 1 {
                apply_kv(tx, &effects.kv, now)?;
                if !effects.children.is_empty() {
                    insert_jobs(tx, &effects.children, now)?;
                }
            }
            changed
        }
        // A job whose cancel was requested (perhaps on another host, not
        // yet heard here) is not run again: cancelled instead.
        Transition::RetryAt { at, error } => tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'retryable' END, \
                 finalized_at = CASE WHEN cancel_requested = 1 THEN ?5 END, cancel_requested = 0, \
                 scheduled_at = ?3, errors = json_insert(errors, '$[#]', json(?4)), ",
                clear_lease!(),
                fence!()
            ))?
            .execute(params![id, token, at, error_json(error), now, Null, Null, Null, finish.ran_version])?,
        Transition::Discard { error } => tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = 'dead', finalized_at = ?3, errors = json_insert(errors, '$[#]', json(?4)), ",
                clear_lease!(),
                fence!()
            ))?
            .execute(params![id, token, now, error_json(error), Null, Null, Null, Null, finish.ran_version])?,
        Transition::Snooze { at } => tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' WHEN ?3 > ?4 THEN 'scheduled' ELSE 'available' END, \
                 finalized_at = CASE WHEN cancel_requested = 1 THEN ?4 END, cancel_requested = 0, scheduled_at = ?3, \
                 attempt = max(attempt - 1, 0), ",
                clear_lease!(),
                fence!()
            ))?
            .execute(params![id, token, at, now, Null, Null, Null, Null, finish.ran_version])?,
        Transition::Cancel { error } => tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = 'cancelled', finalized_at = ?3, cancel_requested = 0, \
                 errors = json_insert(errors, '$[#]', json(?4)), ",
                clear_lease!(),
                fence!()
            ))?
            .execute(params![id, token, now, error_json(error), Null, Null, Null, Null, finish.ran_version])?,
    };
    if changed == 1 && !matches!(finish.transition, Transition::Snooze { .. }) {
        if let Some(run) = &finish.attempt {
            record_attempt(tx, id, run, finish.ran_version.as_deref())?;
        }
    }
    Ok(changed == 1)
}

/// Keeps `run` as job `id`'s current attempt (once: a second record of
/// one attempt is ignored), and its last progress on the job.
pub(super) fn record_attempt(tx: &rusqlite::Transaction<'_>, id: JobId, run: &AttemptRun, version: Option<&str>) -> rusqlite::Result<()> {
    let a = &run.summary;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO job_attempts (job_id, attempt, host, plugin_version, started_at, ended_at, outcome, error, duration_ms, \
         fuel_used, peak_memory_bytes, http_requests, log_bytes_dropped, logs) \
         SELECT id, attempt, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13 FROM jobs WHERE id = ?1",
    )?
    .execute(params![
        id,
        a.host,
        version,
        a.started_at,
        a.ended_at,
        a.outcome,
        a.error,
        a.duration_ms,
        clamp_i64(a.fuel_used),
        clamp_i64(a.peak_memory_bytes),
        clamp_i64(a.http_requests),
        clamp_i64(a.log_bytes_dropped),
        logs_json(&run.logs)
    ])?;
    if let Some(progress) = &run.progress {
        tx.prepare_cached("UPDATE jobs SET progress_percent = ?2, progress_note = ?3 WHERE id = ?1")?.execute(params![id, progress.percent, progress.note])?;
    }
    Ok(())
}

pub(super) async fn heartbeat(db: &SqliteStore, p: HeartbeatParams) -> Result<HeartbeatResult, StoreError> {
    db.write(move |tx, now| {
        let mut result = HeartbeatResult::default();
        let mut stmt = tx
            .prepare_cached(
                "UPDATE jobs SET lease_expires_at = ?3 WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
                 RETURNING cancel_requested",
            )
            .map_err(db_error)?;
        for lease in p.leases {
            let cancel: Option<bool> =
                stmt.query_row(params![lease.id, lease.token, now + p.lease_ms], |r| r.get(0)).optional().map_err(db_error)?;
            match cancel {
                None => result.lost.push(lease),
                Some(true) => result.cancel_requested.push(lease),
                Some(false) => {}
            }
        }
        let mut progress = tx
            .prepare_cached(
                "UPDATE jobs SET progress_percent = ?3, progress_note = ?4 WHERE id = ?1 AND lease_token = ?2 AND state = 'running'",
            )
            .map_err(db_error)?;
        for (lease, p) in &p.progress {
            progress.execute(params![lease.id, lease.token, p.percent, p.note]).map_err(db_error)?;
        }
        Ok(result)
    })
    .await
}

pub(super) async fn finish_many(db: &SqliteStore, finishes: Vec<Finish>) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    db.write(move |tx, now| {
        finishes
            .iter()
            .map(|f| match apply(tx, f, now) {
                Ok(true) => Ok(Ok(())),
                Ok(false) => Ok(Err(StoreError::StaleLease { id: f.lease.id, token: f.lease.token })),
                Err(e) => Err(db_error(e)),
            })
            .collect()
    })
    .await
}

pub(super) async fn cancel(db: &SqliteStore, id: JobId) -> Result<Job, StoreError> {
    db.write(move |tx, now| {
        let job = get_job(tx, id)?.ok_or(StoreError::NotFound(id))?;
        match job.state {
            JobState::Running => {
                tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id]).map_err(db_error)?;
            }
            state if state.is_final() => return Err(StoreError::InvalidState { id, state, action: "cancel" }),
            _ => {
                tx.execute(
                    "UPDATE jobs SET state = 'cancelled', finalized_at = ?2 WHERE id = ?1",
                    params![id, now],
                )
                .map_err(db_error)?;
            }
        }
        get_job(tx, id)?.ok_or(StoreError::NotFound(id))
    })
    .await
}

pub(super) async fn retry_by_hand(db: &SqliteStore, id: JobId) -> Result<Job, StoreError> {
    db.write(move |tx, now| {
        let job = done_with(tx, id, "retry")?;
        tx.execute(
            "UPDATE jobs SET state = 'available', max_attempts = max(max_attempts, attempt + 1), scheduled_at = ?2, \
             finalized_at = NULL, result = NULL, cancel_requested = 0 WHERE id = ?1",
            params![id, now],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                let key = job.unique_key.clone().unwrap_or_default();
                let existing = tx
                    .query_row(
                        "SELECT id FROM jobs WHERE unique_key = ?1 AND state NOT IN ('cancelled', 'dead')",
                        [&key],
                        |r| r.get(0),
                    )
                    .unwrap_or(0);
                StoreError::UniqueConflict { key, existing }
            } else {
                db_error(e)
            }
        })?;
        get_job(tx, id)?.ok_or(StoreError::NotFound(id))
    })
    .await
}

pub(super) async fn delete_by_hand(db: &SqliteStore, id: JobId) -> Result<Job, StoreError> {
    db.write(move |tx, _| {
        let job = done_with(tx, id, "delete")?;
        if let Some(key) = schedule_tick_key(&job) {
            let (start, end) = schedule_key_range(&job.kind);
            let newest: Option<String> = tx
                .query_row("SELECT max(unique_key) FROM jobs WHERE kind = ?1 AND unique_key >= ?2 AND unique_key < ?3", params![job.kind, start, end], |r| r.get(0))
                .map_err(db_error)?;
            if newest.as_deref() == Some(key) {
                return Err(StoreError::Kept { id, reason: SCHEDULE_TICK_KEPT });
            }
        }
        tx.execute("DELETE FROM jobs WHERE id = ?1", [id]).map_err(db_error)?;
        Ok(job)
    })
    .await
}

/// Job `id` if it is dead or cancelled, as a hand retry or delete (`action`) takes it.
fn done_with(tx: &rusqlite::Transaction<'_>, id: JobId, action: &'static str) -> Result<Job, StoreError> {
    let job = get_job(tx, id)?.ok_or(StoreError::NotFound(id))?;
    if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
        return Err(StoreError::InvalidState { id, state: job.state, action });
    }
    Ok(job)
}
