//! Reads: one job, its attempts and their logs, lists by filter, counts by
//! state, the waiting counts quotas read.

use super::connection::PostgresStore;
use super::rows::{JOB_COLUMNS, clamp_i64, get_job, jobs_from_rows, pg_error};
use crate::queue::{AttemptLogs, JobList, ListFilter, MinuteRuns, StateCount, StoreError};
use crate::queue::attempt::{Attempt, AttemptSummary, logs_of_json};
use crate::queue::job::{Job, JobId, Millis};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

pub(super) async fn get(db: &PostgresStore, id: JobId) -> Result<Option<Job>, StoreError> {
    get_job(&db.client().await?, id).await
}

pub(super) async fn attempts(db: &PostgresStore, id: JobId) -> Result<Vec<Attempt>, StoreError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT attempt, host, plugin_version, started_at, ended_at, outcome, error, duration_ms, fuel_used, peak_memory_bytes, \
             http_requests, log_bytes_dropped FROM job_attempts WHERE job_id = $1 ORDER BY attempt",
        )
        .await
        .map_err(pg_error)?;
    let count = |r: &Row, i: usize| r.get::<_, i64>(i).max(0) as u64;
    Ok(client
        .query(&stmt, &[&id])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| Attempt {
            attempt: r.get::<_, i32>(0).max(0) as u32,
            plugin_version: r.get(2),
            summary: AttemptSummary {
                host: r.get(1),
                started_at: r.get(3),
                ended_at: r.get(4),
                outcome: r.get(5),
                error: r.get(6),
                duration_ms: r.get(7),
                fuel_used: count(r, 8),
                peak_memory_bytes: count(r, 9),
                http_requests: count(r, 10),
                log_bytes_dropped: count(r, 11),
            },
        })
        .collect())
}

pub(super) async fn attempt_logs(db: &PostgresStore, id: JobId, attempt: Option<u32>, max_bytes: u64) -> Result<AttemptLogs, StoreError> {
    let client = db.client().await?;
    // Sizes first, then only the attempts that fit.
    let stmt = client
        .prepare_cached(
            "WITH sized AS (SELECT attempt, sum(octet_length(logs)) OVER (ORDER BY attempt) - octet_length(logs) AS before, \
               row_number() OVER (ORDER BY attempt) AS n, count(*) OVER () AS total \
               FROM job_attempts WHERE job_id = $1 AND ($2::integer IS NULL OR attempt = $2)) \
             SELECT a.attempt, a.logs, sized.total FROM job_attempts a JOIN sized ON sized.attempt = a.attempt \
             WHERE a.job_id = $1 AND (sized.before < $3 OR sized.n = 1) ORDER BY a.attempt",
        )
        .await
        .map_err(pg_error)?;
    let attempt = attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX));
    let rows = client.query(&stmt, &[&id, &attempt, &clamp_i64(max_bytes)]).await.map_err(pg_error)?;
    let more = rows.first().is_some_and(|r| r.get::<_, i64>(2) > rows.len() as i64);
    let lines = rows
        .iter()
        .flat_map(|r| {
            let n = r.get::<_, i32>(0).max(0) as u32;
            logs_of_json(r.get(1)).into_iter().map(move |l| (n, l))
        })
        .collect();
    Ok(AttemptLogs { lines, more })
}

pub(super) async fn list(db: &PostgresStore, filter: ListFilter) -> Result<JobList, StoreError> {
    let state = filter.state.map(|s| s.as_str().to_string());
    let limit = filter.limit as i64;
    let mut clauses = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    for (column, value) in
        [("state", state.as_ref()), ("kind", filter.kind.as_ref()), ("queue", filter.queue.as_ref()), ("tenant", filter.tenant.as_ref())]
    {
        if let Some(value) = value {
            params.push(value);
            clauses.push(format!("{column} = ${}", params.len()));
        }
    }
    let (beyond, order) = if filter.newest_first { ("<", "DESC") } else { (">", "ASC") };
    if let Some(after) = &filter.after_id {
        params.push(after);
        clauses.push(format!("id {beyond} ${}", params.len()));
    }
    let filter_sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    params.push(&limit);
    let limit_at = params.len();
    let max_bytes = i64::try_from(filter.max_bytes).unwrap_or(i64::MAX);
    params.push(&max_bytes);
    // Sizes first (octet_length reads no TOASTed value), one job more
    // than the page to learn whether there are more, then only the rows
    // that fit the byte bound.
    let sql = format!(
        "WITH page AS (SELECT id, octet_length(payload) + coalesce(octet_length(result), 0) + octet_length(errors::text) AS size \
           FROM jobs {filter_sql} ORDER BY id {order} LIMIT ${limit_at}::bigint + 1), \
         fitting AS (SELECT id, row_number() OVER (ORDER BY id {order}) AS n, \
           (sum(size) OVER (ORDER BY id {order}) - size)::bigint AS before FROM page) \
         SELECT {}, (SELECT count(*) FROM page) FROM jobs \
         WHERE id IN (SELECT id FROM fitting WHERE before < ${}::bigint AND n <= ${limit_at}::bigint) ORDER BY id {order}",
        columns!(),
        params.len()
    );
    let rows = db.client().await?.query(&sql, &params).await.map_err(pg_error)?;
    let matched = rows.first().map_or(0, |r| r.get::<_, i64>(JOB_COLUMNS)) as usize;
    let jobs = jobs_from_rows(&rows)?;
    Ok(JobList { more: matched > jobs.len(), jobs })
}

pub(super) async fn counts(db: &PostgresStore) -> Result<Vec<StateCount>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(concat!("SELECT queue, nullif(tenant, ''), state, sum(n)::bigint FROM ", counted!(), " GROUP BY queue, tenant, state HAVING sum(n) <> 0 ORDER BY queue, tenant, state"), &[])
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|r| {
            Ok(StateCount {
                queue: r.get(0),
                tenant: r.get(1),
                state: r.get::<_, String>(2).parse().map_err(StoreError::Database)?,
                count: r.get::<_, i64>(3) as u64,
            })
        })
        .collect()
}

pub(super) async fn pending_count(db: &PostgresStore, kind: &str) -> Result<u64, StoreError> {
    let row = db
        .client()
        .await?
        .query_one(concat!("SELECT count(*) FROM jobs WHERE state IN ", pending!(), " AND kind = $1"), &[&kind])
        .await
        .map_err(pg_error)?;
    Ok(row.get::<_, i64>(0) as u64)
}

pub(super) async fn waiting_count(db: &PostgresStore, tenant: Option<&str>) -> Result<u64, StoreError> {
    let row = db
        .client()
        .await?
        .query_one(concat!("SELECT coalesce(sum(n), 0)::bigint FROM ", counted!(), " WHERE tenant = $1 AND state IN ", waiting!()), &[&tenant.unwrap_or("")])
        .await
        .map_err(pg_error)?;
    Ok(row.get::<_, i64>(0) as u64)
}

pub(super) async fn minutes(db: &PostgresStore, since: Millis) -> Result<Vec<MinuteRuns>, StoreError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT minute, host, queue, kind, runs, failures, delay_ms_sum, delay_ms_max FROM run_minutes \
             WHERE minute >= $1 ORDER BY minute, host, queue, kind",
            &[&since],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows
        .iter()
        .map(|r| MinuteRuns {
            minute: r.get(0),
            host: r.get(1),
            queue: r.get(2),
            kind: r.get(3),
            runs: r.get::<_, i64>(4) as u64,
            failures: r.get::<_, i64>(5) as u64,
            delay_ms_sum: r.get(6),
            delay_ms_max: r.get(7),
        })
        .collect())
}
