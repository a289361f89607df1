//! Inserting jobs in batches: unique keys (one job per key among the live
//! ones, across hosts), due times, and the NOTIFY that wakes every host.

use super::connection::PostgresStore;
use super::rows::{job_from_row, jobs_from_rows, pg_error};
use crate::queue::{Inserted, NewJob, StoreError};
use crate::queue::job::{JobState, Millis};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// Inserts jobs in order (and the queues they name); a job whose unique
/// key is held yields the job holding it. Keyed jobs go one statement
/// each: call it inside a transaction when any has a key.
pub(super) async fn insert_jobs(client: &impl GenericClient, jobs: &[NewJob], now: Millis) -> Result<Vec<Inserted>, StoreError> {
    let prepared: Vec<(String, i64)> = jobs
        .iter()
        .map(|j| {
            let at = j.scheduled_at.unwrap_or(now).max(0);
            let state = if at > now { JobState::Scheduled } else { JobState::Available };
            (state.as_str().to_string(), at)
        })
        .collect();
    if jobs.iter().all(|j| j.unique_key.is_none()) {
        // One statement: the queues, then every job, in order.
        let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
        let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        let priorities: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
        let payloads: Vec<&[u8]> = jobs.iter().map(|j| j.payload.as_slice()).collect();
        let states: Vec<&str> = prepared.iter().map(|p| p.0.as_str()).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts as i32).collect();
        let times: Vec<i64> = prepared.iter().map(|p| p.1).collect();
        let parents: Vec<Option<i64>> = jobs.iter().map(|j| j.parent_id).collect();
        let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.concurrency_key.as_deref()).collect();
        let traces: Vec<Option<&str>> = jobs.iter().map(|j| j.traceparent.as_deref()).collect();
        let stmt = client
            .prepare_cached(concat!(
                "WITH touched AS (INSERT INTO queues (name, updated_at) SELECT DISTINCT unnest($2::text[]), $8::bigint \
                 ON CONFLICT (name) DO NOTHING) \
                 INSERT INTO jobs (kind, queue, priority, payload, state, max_attempts, scheduled_at, created_at, parent_id, concurrency_key, traceparent) \
                 SELECT kind, queue, priority, payload, state, max_attempts, scheduled_at, $8, parent_id, concurrency_key, traceparent \
                 FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[], $5::text[], $6::int[], $7::bigint[], $9::bigint[], $10::text[], $11::text[]) \
                   WITH ORDINALITY AS incoming(kind, queue, priority, payload, state, max_attempts, scheduled_at, parent_id, concurrency_key, traceparent, n) \
                 ORDER BY n RETURNING ",
                columns!()
            ))
            .await
            .map_err(pg_error)?;
        let rows = client
            .query(&stmt, &[&kinds, &queues, &priorities, &payloads, &states, &attempts, &times, &now, &parents, &keys, &traces])
            .await
            .map_err(pg_error)?;
        let mut inserted = jobs_from_rows(&rows)?;
        inserted.sort_by_key(|j| j.id);
        return Ok(inserted.into_iter().map(|job| Inserted { job, created: true }).collect());
    }
    let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    client
        .execute("INSERT INTO queues (name, updated_at) SELECT unnest($1::text[]), $2::bigint ON CONFLICT (name) DO NOTHING", &[&queues, &now])
        .await
        .map_err(pg_error)?;
    let insert = client
        .prepare_cached(concat!(
            "INSERT INTO jobs (kind, queue, priority, payload, state, max_attempts, scheduled_at, unique_key, created_at, parent_id, concurrency_key, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT ",
            unique_live!(),
            " DO NOTHING RETURNING ",
            columns!()
        ))
        .await
        .map_err(pg_error)?;
    let existing = client
        .prepare_cached(concat!("SELECT ", columns!(), " FROM jobs WHERE unique_key = $1 AND state NOT IN ('cancelled', 'dead')"))
        .await
        .map_err(pg_error)?;
    let mut inserted = Vec::with_capacity(jobs.len());
    for (job, (state, at)) in jobs.iter().zip(&prepared) {
        let max_attempts = job.max_attempts as i32;
        let params: [&(dyn ToSql + Sync); 12] = [
            &job.kind,
            &job.queue,
            &job.priority,
            &job.payload,
            state,
            &max_attempts,
            at,
            &job.unique_key,
            &now,
            &job.parent_id,
            &job.concurrency_key,
            &job.traceparent,
        ];
        if let Some(row) = client.query_opt(&insert, &params).await.map_err(pg_error)? {
            inserted.push(Inserted { job: job_from_row(&row)?, created: true });
            continue;
        }
        // The key is held: by a job committed before this statement
        // began, or inserted earlier in this transaction.
        match client.query_opt(&existing, &[&job.unique_key]).await.map_err(pg_error)? {
            Some(row) => inserted.push(Inserted { job: job_from_row(&row)?, created: false }),
            None => {
                return Err(StoreError::Database(format!("unique key {:?} was held and then freed while inserting; try again", job.unique_key)));
            }
        }
    }
    Ok(inserted)
}

pub(super) async fn insert_many(db: &PostgresStore, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError> {
    let now = db.now();
    let mut client = db.client().await?;
    if jobs.iter().all(|j| j.unique_key.is_none()) {
        return insert_jobs(&client, &jobs, now).await;
    }
    // Keyed jobs: one at a time in a transaction, so each key is checked
    // against the jobs before it.
    let tx = client.transaction().await.map_err(pg_error)?;
    let inserted = insert_jobs(&tx, &jobs, now).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(inserted)
}
