//! Transitions out of `running` and by hand: complete (in batches, with
//! their effects), retry at, discard, snooze, cancel; each fenced by its
//! lease's token, with the attempt it ended; and the heartbeat that keeps
//! leases alive.

use super::connection::PostgresStore;
use super::insert::insert_jobs;
use super::kv::apply_kv;
use super::rows::{clamp_i64, error_json, get_job, is_unique_violation, pg_error};
use crate::queue::{Finish, HeartbeatParams, HeartbeatResult, SCHEDULE_TICK_KEPT, StoreError, Transition, schedule_key_range, schedule_tick_key};
use crate::queue::attempt::{AttemptRun, Progress, logs_json};
use crate::queue::job::{Job, JobId, JobState, Lease, Millis};
use deadpool_postgres::GenericClient;
use std::collections::HashSet;

/// Applies one transition other than a plain completion, with its
/// attempt's record; `Ok(false)` when the lease is not current.
pub(super) async fn apply_one(client: &impl GenericClient, finish: &Finish, now: Millis) -> Result<bool, StoreError> {
    let applied = apply_transition(client, finish, now).await?;
    if applied && !matches!(finish.transition, Transition::Snooze { .. }) {
        if let Some(run) = &finish.attempt {
            record_attempt(client, finish.lease.id, run, finish.ran_version.as_deref()).await?;
        }
    }
    Ok(applied)
}

/// Keeps `run` as job `id`'s current attempt (once: a second record of
/// one attempt is ignored), and its last progress on the job.
pub(super) async fn record_attempt(client: &impl GenericClient, id: JobId, run: &AttemptRun, version: Option<&str>) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO job_attempts (job_id, attempt, host, plugin_version, started_at, ended_at, outcome, error, duration_ms, \
             fuel_used, peak_memory_bytes, http_requests, log_bytes_dropped, logs) \
             SELECT id, attempt, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 FROM jobs WHERE id = $1 \
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    let a = &run.summary;
    let counts = [a.fuel_used, a.peak_memory_bytes, a.http_requests, a.log_bytes_dropped].map(clamp_i64);
    client
        .execute(
            &stmt,
            &[&id, &a.host, &version, &a.started_at, &a.ended_at, &a.outcome, &a.error, &a.duration_ms, &counts[0], &counts[1], &counts[2], &counts[3], &logs_json(&run.logs)],
        )
        .await
        .map_err(pg_error)?;
    if let Some(progress) = &run.progress {
        let stmt = client.prepare_cached("UPDATE jobs SET progress_percent = $2, progress_note = $3 WHERE id = $1").await.map_err(pg_error)?;
        client.execute(&stmt, &[&id, &i16::from(progress.percent), &progress.note]).await.map_err(pg_error)?;
    }
    Ok(())
}

/// [`apply_one`]'s state change.
pub(super) async fn apply_transition(client: &impl GenericClient, finish: &Finish, now: Millis) -> Result<bool, StoreError> {
    let Lease { id, token } = finish.lease;
    let version = &finish.ran_version;
    let (sql, value, error): (&str, i64, Option<String>) = match &finish.transition {
        Transition::Complete { result, .. } => {
            let stmt = client
                .prepare_cached(concat!("UPDATE jobs SET state = 'completed', result = $4, finalized_at = $5", fenced!()))
                .await
                .map_err(pg_error)?;
            let changed = client.execute(&stmt, &[&id, &token, version, result, &now]).await.map_err(pg_error)?;
            return Ok(changed == 1);
        }
        // A job whose cancel was requested (perhaps on another host, not
        // yet heard here) is not run again: cancelled instead.
        Transition::RetryAt { at, error } => {
            let stmt = client
                .prepare_cached(concat!(
                    "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'retryable' END, \
                     finalized_at = CASE WHEN cancel_requested THEN $6::bigint END, cancel_requested = false, \
                     scheduled_at = $4, errors = errors || jsonb_build_array($5::text::jsonb)",
                    fenced!()
                ))
                .await
                .map_err(pg_error)?;
            let changed = client.execute(&stmt, &[&id, &token, version, at, &error_json(error), &now]).await.map_err(pg_error)?;
            return Ok(changed == 1);
        }
        Transition::Discard { error } => (
            concat!("UPDATE jobs SET state = 'dead', finalized_at = $4, errors = errors || jsonb_build_array($5::text::jsonb)", fenced!()),
            now,
            Some(error_json(error)),
        ),
        Transition::Cancel { error } => (
            concat!(
                "UPDATE jobs SET state = 'cancelled', finalized_at = $4, cancel_requested = false, \
                 errors = errors || jsonb_build_array($5::text::jsonb)",
                fenced!()
            ),
            now,
            Some(error_json(error)),
        ),
        Transition::Snooze { at } => (
            concat!(
                "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 'cancelled' WHEN $4::bigint > $5::bigint THEN 'scheduled' ELSE 'available' END, \
                 finalized_at = CASE WHEN cancel_requested THEN $5::bigint END, cancel_requested = false, \
                 scheduled_at = $4, attempt = greatest(attempt - 1, 0)",
                fenced!()
            ),
            *at,
            None,
        ),
    };
    let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
    let changed = match error {
        Some(error) => client.execute(&stmt, &[&id, &token, version, &value, &error]).await,
        None => client.execute(&stmt, &[&id, &token, version, &value, &now]).await,
    }
    .map_err(pg_error)?;
    Ok(changed == 1)
}

/// Completes a batch in one statement; returns the ids whose lease was current.
pub(super) async fn complete_batch(client: &impl GenericClient, finishes: &[&Finish], now: Millis) -> Result<HashSet<JobId>, StoreError> {
    let mut ids = Vec::with_capacity(finishes.len());
    let mut tokens = Vec::with_capacity(finishes.len());
    let mut results: Vec<&[u8]> = Vec::with_capacity(finishes.len());
    let mut versions: Vec<Option<&str>> = Vec::with_capacity(finishes.len());
    let mut percents: Vec<Option<i16>> = Vec::with_capacity(finishes.len());
    let mut notes: Vec<Option<&str>> = Vec::with_capacity(finishes.len());
    let mut ran = AttemptColumns::default();
    for f in finishes {
        let Transition::Complete { result, .. } = &f.transition else { unreachable!("only completions are batched") };
        ids.push(f.lease.id);
        tokens.push(f.lease.token);
        results.push(result);
        versions.push(f.ran_version.as_deref());
        let progress = f.attempt.as_ref().and_then(|a| a.progress.as_ref());
        percents.push(progress.map(|p| i16::from(p.percent)));
        notes.push(progress.and_then(|p| p.note.as_deref()));
        if let Some(run) = &f.attempt {
            ran.push(f.lease.id, f.ran_version.as_deref(), run);
        }
    }
    // The completions and their attempts' records in one statement: a
    // record goes in only for a job the update completed.
    let stmt = client
        .prepare_cached(
            concat!(
                "WITH done AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::text[], $6::smallint[], $7::text[]) \
                 AS d(id, token, result, version, percent, note)), ",
                locked_in_order!(),
                ", completed AS (UPDATE jobs SET state = 'completed', result = done.result, finalized_at = $5, leased_by = NULL, \
                 lease_expires_at = NULL, plugin_version = coalesce(done.version, jobs.plugin_version), \
                 progress_percent = coalesce(done.percent, jobs.progress_percent), \
                 progress_note = CASE WHEN done.percent IS NULL THEN jobs.progress_note ELSE done.note END \
                 FROM done, locked WHERE jobs.id = done.id AND jobs.id = locked.id \
                   AND jobs.lease_token = done.token AND jobs.state = 'running' \
                 RETURNING jobs.id, jobs.attempt), \
                 recorded AS (INSERT INTO job_attempts (job_id, attempt, host, plugin_version, started_at, ended_at, outcome, error, \
                   duration_ms, fuel_used, peak_memory_bytes, http_requests, log_bytes_dropped, logs) \
                 SELECT a.id, completed.attempt, a.host, a.version, a.started_at, a.ended_at, a.outcome, a.error, a.duration_ms, \
                   a.fuel_used, a.peak_memory_bytes, a.http_requests, a.log_bytes_dropped, a.logs \
                 FROM unnest($8::bigint[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], $13::text[], $14::text[], \
                   $15::float8[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::text[]) \
                   AS a(id, host, version, started_at, ended_at, outcome, error, duration_ms, fuel_used, peak_memory_bytes, \
                   http_requests, log_bytes_dropped, logs) \
                 JOIN completed ON completed.id = a.id \
                 ON CONFLICT DO NOTHING) \
                 SELECT id FROM completed"
            ),
        )
        .await
        .map_err(pg_error)?;
    let rows = client
        .query(
            &stmt,
            &[
                &ids,
                &tokens,
                &results,
                &versions,
                &now,
                &percents,
                &notes,
                &ran.ids,
                &ran.hosts,
                &ran.versions,
                &ran.started_at,
                &ran.ended_at,
                &ran.outcomes,
                &ran.errors,
                &ran.duration_ms,
                &ran.fuel_used,
                &ran.peak_memory_bytes,
                &ran.http_requests,
                &ran.log_bytes_dropped,
                &ran.logs,
            ],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Attempt records as the columns `complete_batch` unnests.
#[derive(Default)]
pub(super) struct AttemptColumns<'a> {
    ids: Vec<JobId>,
    hosts: Vec<&'a str>,
    versions: Vec<Option<&'a str>>,
    started_at: Vec<Millis>,
    ended_at: Vec<Millis>,
    outcomes: Vec<&'a str>,
    errors: Vec<Option<&'a str>>,
    duration_ms: Vec<f64>,
    fuel_used: Vec<i64>,
    peak_memory_bytes: Vec<i64>,
    http_requests: Vec<i64>,
    log_bytes_dropped: Vec<i64>,
    logs: Vec<String>,
}

impl<'a> AttemptColumns<'a> {
    fn push(&mut self, id: JobId, version: Option<&'a str>, run: &'a AttemptRun) {
        let a = &run.summary;
        self.ids.push(id);
        self.hosts.push(&a.host);
        self.versions.push(version);
        self.started_at.push(a.started_at);
        self.ended_at.push(a.ended_at);
        self.outcomes.push(&a.outcome);
        self.errors.push(a.error.as_deref());
        self.duration_ms.push(a.duration_ms);
        self.fuel_used.push(clamp_i64(a.fuel_used));
        self.peak_memory_bytes.push(clamp_i64(a.peak_memory_bytes));
        self.http_requests.push(clamp_i64(a.http_requests));
        self.log_bytes_dropped.push(clamp_i64(a.log_bytes_dropped));
        self.logs.push(logs_json(&run.logs));
    }
}

pub(super) async fn heartbeat(db: &PostgresStore, p: HeartbeatParams) -> Result<HeartbeatResult, StoreError> {
    let now = db.now();
    let client = db.client().await?;
    let ids: Vec<JobId> = p.leases.iter().map(|l| l.id).collect();
    let tokens: Vec<i64> = p.leases.iter().map(|l| l.token).collect();
    let reported: std::collections::HashMap<Lease, &Progress> = p.progress.iter().map(|(l, p)| (*l, p)).collect();
    let percents: Vec<Option<i16>> = p.leases.iter().map(|l| reported.get(l).map(|p| i16::from(p.percent))).collect();
    let notes: Vec<Option<&str>> = p.leases.iter().map(|l| reported.get(l).and_then(|p| p.note.as_deref())).collect();
    let stmt = client
        .prepare_cached(
            concat!(
                "WITH done AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $4::smallint[], $5::text[]) AS held(id, token, percent, note)), ",
                locked_in_order!(),
                "UPDATE jobs SET lease_expires_at = $3, progress_percent = coalesce(done.percent, jobs.progress_percent), \
                 progress_note = CASE WHEN done.percent IS NULL THEN jobs.progress_note ELSE done.note END FROM done, locked \
                 WHERE jobs.id = done.id AND jobs.id = locked.id AND jobs.lease_token = done.token AND jobs.state = 'running' \
                 RETURNING jobs.id, jobs.cancel_requested"
            ),
        )
        .await
        .map_err(pg_error)?;
    let rows = client.query(&stmt, &[&ids, &tokens, &(now + p.lease_ms), &percents, &notes]).await.map_err(pg_error)?;
    let kept: std::collections::HashMap<JobId, bool> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut result = HeartbeatResult::default();
    for lease in p.leases {
        match kept.get(&lease.id) {
            None => result.lost.push(lease),
            Some(true) => result.cancel_requested.push(lease),
            Some(false) => {}
        }
    }
    Ok(result)
}

pub(super) async fn finish_many(db: &PostgresStore, finishes: Vec<Finish>) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let now = db.now();
    let mut client = db.client().await?;
    let completes: Vec<&Finish> = finishes.iter().filter(|f| matches!(f.transition, Transition::Complete { .. })).collect();
    let stale = |f: &Finish| Err(StoreError::StaleLease { id: f.lease.id, token: f.lease.token });
    let has_effects = |f: &Finish| matches!(&f.transition, Transition::Complete { effects, .. } if !effects.is_empty());
    if completes.len() == finishes.len() && !finishes.iter().any(has_effects) {
        // The common case: one statement, no explicit transaction.
        let done = complete_batch(&client, &completes, now).await?;
        return Ok(finishes.iter().map(|f| if done.contains(&f.lease.id) { Ok(()) } else { stale(f) }).collect());
    }
    let tx = client.transaction().await.map_err(pg_error)?;
    // Lock every row of the batch first, in id order (see `locked_in_order!`).
    let ids: Vec<JobId> = finishes.iter().map(|f| f.lease.id).collect();
    tx.execute("SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE", &[&ids]).await.map_err(pg_error)?;
    let done = if completes.is_empty() { HashSet::new() } else { complete_batch(&tx, &completes, now).await? };
    // The effects of the runs completed here, in the same transaction.
    for f in &finishes {
        if let Transition::Complete { effects, .. } = &f.transition {
            if done.contains(&f.lease.id) {
                apply_kv(&tx, &effects.kv, now).await?;
                if !effects.children.is_empty() {
                    insert_jobs(&tx, &effects.children, now).await?;
                }
            }
        }
    }
    let mut results = Vec::with_capacity(finishes.len());
    for f in &finishes {
        let applied = match f.transition {
            Transition::Complete { .. } => done.contains(&f.lease.id),
            _ => apply_one(&tx, f, now).await?,
        };
        results.push(if applied { Ok(()) } else { stale(f) });
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(results)
}

pub(super) async fn cancel(db: &PostgresStore, id: JobId) -> Result<Job, StoreError> {
    let now = db.now();
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let state: Option<String> =
        tx.query_opt("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", &[&id]).await.map_err(pg_error)?.map(|r| r.get(0));
    let state: JobState = state.ok_or(StoreError::NotFound(id))?.parse().map_err(StoreError::Database)?;
    match state {
        JobState::Running => {
            tx.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", &[&id]).await.map_err(pg_error)?;
        }
        state if state.is_final() => return Err(StoreError::InvalidState { id, state, action: "cancel" }),
        _ => {
            tx.execute("UPDATE jobs SET state = 'cancelled', finalized_at = $2 WHERE id = $1", &[&id, &now])
                .await
                .map_err(pg_error)?;
        }
    }
    let job = get_job(&tx, id).await?.ok_or(StoreError::NotFound(id))?;
    tx.commit().await.map_err(pg_error)?;
    Ok(job)
}

pub(super) async fn retry_by_hand(db: &PostgresStore, id: JobId) -> Result<Job, StoreError> {
    let now = db.now();
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let key = done_with(&tx, id, "retry").await?.unique_key;
    let updated = tx
        .execute(
            "UPDATE jobs SET state = 'available', max_attempts = greatest(max_attempts, attempt + 1), scheduled_at = $2, \
             finalized_at = NULL, result = NULL, cancel_requested = false WHERE id = $1",
            &[&id, &now],
        )
        .await;
    if let Err(e) = updated {
        if is_unique_violation(&e) {
            drop(tx);
            let key = key.unwrap_or_default();
            let existing = db
                .client()
                .await?
                .query_opt("SELECT id FROM jobs WHERE unique_key = $1 AND state NOT IN ('cancelled', 'dead')", &[&key])
                .await
                .map_err(pg_error)?
                .map_or(0, |r| r.get(0));
            return Err(StoreError::UniqueConflict { key, existing });
        }
        return Err(pg_error(e));
    }
    let job = get_job(&tx, id).await?.ok_or(StoreError::NotFound(id))?;
    tx.commit().await.map_err(pg_error)?;
    Ok(job)
}

pub(super) async fn delete_by_hand(db: &PostgresStore, id: JobId) -> Result<Job, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let job = done_with(&tx, id, "delete").await?;
    if let Some(key) = schedule_tick_key(&job) {
        let (start, end) = schedule_key_range(&job.kind);
        let newest: Option<String> = tx
            .query_one("SELECT max(unique_key) FROM jobs WHERE kind = $1 AND unique_key >= $2 AND unique_key < $3", &[&job.kind, &start, &end])
            .await
            .map_err(pg_error)?
            .get(0);
        if newest.as_deref() == Some(key) {
            return Err(StoreError::Kept { id, reason: SCHEDULE_TICK_KEPT });
        }
    }
    tx.execute("DELETE FROM jobs WHERE id = $1", &[&id]).await.map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(job)
}

/// Job `id`, locked for `tx`, if it is dead or cancelled, as a hand retry
/// or delete (`action`) takes it.
async fn done_with(tx: &deadpool_postgres::Transaction<'_>, id: JobId, action: &'static str) -> Result<Job, StoreError> {
    tx.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&id]).await.map_err(pg_error)?;
    let job = get_job(tx, id).await?.ok_or(StoreError::NotFound(id))?;
    if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
        return Err(StoreError::InvalidState { id, state: job.state, action });
    }
    Ok(job)
}
