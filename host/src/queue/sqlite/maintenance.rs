//! Upkeep: rescuing jobs whose leases expired, pruning finished jobs past
//! their retention, runs per minute.

use super::connection::SqliteStore;
use super::rows::{db_error, error_json};
use crate::queue::{MinuteRuns, PruneParams, StoreError};
use crate::queue::job::{AttemptError, JobId, Millis};
use rusqlite::{OptionalExtension, params};

/// The pruner's transaction: by age first, then each queue past its newest `keep_per_queue`.
pub(super) fn prune_jobs(tx: &rusqlite::Transaction<'_>, p: &PruneParams) -> rusqlite::Result<u64> {
    let state = p.state.as_str();
    let mut deleted = tx
        .prepare_cached(concat!(
            "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j WHERE j.state = ?1 AND j.finalized_at < ?2 AND NOT ",
            kept_tick!(),
            " ORDER BY j.finalized_at LIMIT ?3)"
        ))?
        .execute(params![state, p.finalized_before, p.limit as i64])? as u64;
    let queues: Vec<String> = tx.prepare_cached("SELECT name FROM queues ORDER BY name")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    for queue in queues {
        let left = p.limit as u64 - deleted;
        if left == 0 {
            break;
        }
        let cutoff: Option<JobId> = tx
            .prepare_cached("SELECT id FROM jobs WHERE queue = ?1 AND state = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3")?
            .query_row(params![queue, state, p.keep_per_queue as i64], |r| r.get(0))
            .optional()?;
        let Some(cutoff) = cutoff else { continue };
        deleted += tx
            .prepare_cached(concat!(
                "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j WHERE j.queue = ?1 AND j.state = ?2 AND j.id <= ?3 AND NOT ",
                kept_tick!(),
                " ORDER BY j.id LIMIT ?4)"
            ))?
            .execute(params![queue, state, cutoff, left as i64])? as u64;
    }
    Ok(deleted)
}

pub(super) async fn rescue_expired(db: &SqliteStore, spare: &[JobId]) -> Result<Vec<JobId>, StoreError> {
    let spare = serde_json::to_string(spare).expect("ids serialise");
    db.write(move |tx, now| {
        let expired: Vec<(JobId, u32, u32, Option<String>, bool)> = tx
            .prepare_cached(
                "SELECT id, attempt, max_attempts, leased_by, cancel_requested FROM jobs WHERE state = 'running' AND lease_expires_at < ?1 \
                 AND id NOT IN (SELECT value FROM json_each(?2))",
            )
            .and_then(|mut s| s.query_map(params![now, spare], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?.collect())
            .map_err(db_error)?;
        for (id, attempt, max_attempts, host, cancel_requested) in &expired {
            let error = AttemptError {
                attempt: *attempt,
                at: now,
                outcome: "lease_expired".into(),
                message: format!(
                    "the lease of host {} expired: the host stopped or lost touch with the store",
                    host.as_deref().unwrap_or("?")
                ),
            };
            let (state, finalized) = match () {
                () if *cancel_requested => ("cancelled", Some(now)),
                () if attempt >= max_attempts => ("dead", Some(now)),
                () => ("retryable", None),
            };
            tx.prepare_cached(
                "UPDATE jobs SET state = ?2, scheduled_at = min(scheduled_at, ?3), finalized_at = ?4, leased_by = NULL, lease_expires_at = NULL, \
                 cancel_requested = 0, errors = json_insert(errors, '$[#]', json(?5)) WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, state, now, finalized, error_json(&error)]))
            .map_err(db_error)?;
        }
        Ok(expired.into_iter().map(|e| e.0).collect())
    })
    .await
}

pub(super) async fn prune(db: &SqliteStore, p: PruneParams) -> Result<u64, StoreError> {
    db.write(move |tx, _| prune_jobs(tx, &p).map_err(db_error)).await
}

pub(super) async fn record_minutes(db: &SqliteStore, rows: Vec<MinuteRuns>, keep_since: Millis) -> Result<(), StoreError> {
    db.write(move |tx, _| {
        tx.execute("DELETE FROM run_minutes WHERE minute < ?1", params![keep_since]).map_err(db_error)?;
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO run_minutes (minute, host, queue, kind, runs, failures, delay_ms_sum, delay_ms_max) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (minute, host, queue, kind) DO UPDATE SET \
                 runs = excluded.runs, failures = excluded.failures, delay_ms_sum = excluded.delay_ms_sum, delay_ms_max = excluded.delay_ms_max",
            )
            .map_err(db_error)?;
        for r in rows.iter().filter(|r| r.minute >= keep_since) {
            upsert
                .execute(params![r.minute, r.host, r.queue, r.kind, r.runs as i64, r.failures as i64, r.delay_ms_sum, r.delay_ms_max])
                .map_err(db_error)?;
        }
        Ok(())
    })
    .await
}
