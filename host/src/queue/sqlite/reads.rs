//! Reads: one job, its attempts and their logs, lists by filter, counts by
//! state, the waiting counts quotas read.

use super::connection::SqliteStore;
use super::rows::{JOB_COLUMNS, clamp_i64, db_error, get_job, job_from_row};
use crate::queue::{AttemptLogs, JobList, ListFilter, MinuteRuns, StateCount, StoreError};
use crate::queue::attempt::{Attempt, AttemptSummary, logs_of_json};
use crate::queue::job::{Job, JobId, Millis};
use rusqlite::{ToSql, params};

pub(super) async fn get(db: &SqliteStore, id: JobId) -> Result<Option<Job>, StoreError> {
    db.read(move |conn, _| get_job(conn, id)).await
}

pub(super) async fn attempts(db: &SqliteStore, id: JobId) -> Result<Vec<Attempt>, StoreError> {
    db.read(move |conn, _| {
        conn.prepare_cached(
            "SELECT attempt, host, plugin_version, started_at, ended_at, outcome, error, duration_ms, fuel_used, peak_memory_bytes, \
             http_requests, log_bytes_dropped FROM job_attempts WHERE job_id = ?1 ORDER BY attempt",
        )
        .and_then(|mut s| {
            s.query_map([id], |r| {
                let count = |i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
                Ok(Attempt {
                    attempt: r.get(0)?,
                    plugin_version: r.get(2)?,
                    summary: AttemptSummary {
                        host: r.get(1)?,
                        started_at: r.get(3)?,
                        ended_at: r.get(4)?,
                        outcome: r.get(5)?,
                        error: r.get(6)?,
                        duration_ms: r.get(7)?,
                        fuel_used: count(8)?,
                        peak_memory_bytes: count(9)?,
                        http_requests: count(10)?,
                        log_bytes_dropped: count(11)?,
                    },
                })
            })?
            .collect()
        })
        .map_err(db_error)
    })
    .await
}

pub(super) async fn attempt_logs(db: &SqliteStore, id: JobId, attempt: Option<u32>, max_bytes: u64) -> Result<AttemptLogs, StoreError> {
    db.read(move |conn, _| {
        // Sizes first (length() reads no text), then only the attempts that fit.
        let rows: Vec<(u32, String, i64)> = conn
            .prepare_cached(
                "WITH sized AS (SELECT attempt, sum(length(CAST(logs AS BLOB))) OVER (ORDER BY attempt) - length(CAST(logs AS BLOB)) AS before, \
                   row_number() OVER (ORDER BY attempt) AS n, count(*) OVER () AS total \
                   FROM job_attempts WHERE job_id = ?1 AND (?2 IS NULL OR attempt = ?2)) \
                 SELECT a.attempt, a.logs, sized.total FROM job_attempts a JOIN sized ON sized.attempt = a.attempt \
                 WHERE a.job_id = ?1 AND (sized.before < ?3 OR sized.n = 1) ORDER BY a.attempt",
            )
            .and_then(|mut s| s.query_map(params![id, attempt, clamp_i64(max_bytes)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
            .map_err(db_error)?;
        let more = rows.first().is_some_and(|r| r.2 > rows.len() as i64);
        let lines = rows.into_iter().flat_map(|(n, logs, _)| logs_of_json(&logs).into_iter().map(move |l| (n, l))).collect();
        Ok(AttemptLogs { lines, more })
    })
    .await
}

pub(super) async fn list(db: &SqliteStore, filter: ListFilter) -> Result<JobList, StoreError> {
    db.read(move |conn, _| {
        let mut clauses = Vec::new();
        let mut values: Vec<Box<dyn ToSql>> = Vec::new();
        if let Some(state) = filter.state {
            values.push(Box::new(state.as_str()));
            clauses.push(format!("state = ?{}", values.len()));
        }
        if let Some(kind) = filter.kind {
            values.push(Box::new(kind));
            clauses.push(format!("kind = ?{}", values.len()));
        }
        if let Some(tenant) = filter.tenant {
            values.push(Box::new(tenant));
            clauses.push(format!("tenant = ?{}", values.len()));
        }
        if let Some(queue) = filter.queue {
            values.push(Box::new(queue));
            clauses.push(format!("queue = ?{}", values.len()));
        }
        let (beyond, order) = if filter.newest_first { ("<", "DESC") } else { (">", "ASC") };
        if let Some(after) = filter.after_id {
            values.push(Box::new(after));
            clauses.push(format!("id {beyond} ?{}", values.len()));
        }
        let filter_sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        values.push(Box::new(filter.limit as i64));
        let limit = values.len();
        values.push(Box::new(i64::try_from(filter.max_bytes).unwrap_or(i64::MAX)));
        // Sizes first (length() reads no blob), one job more than the
        // page to learn whether there are more, then only the rows that
        // fit the byte bound.
        let sql = format!(
            "WITH page AS (SELECT id, length(payload) + coalesce(length(result), 0) + length(CAST(errors AS BLOB)) AS size \
               FROM jobs {filter_sql} ORDER BY id {order} LIMIT ?{limit} + 1), \
             fitting AS (SELECT id, row_number() OVER (ORDER BY id {order}) AS n, \
               sum(size) OVER (ORDER BY id {order}) - size AS before FROM page) \
             SELECT {}, (SELECT count(*) FROM page) FROM jobs \
             WHERE id IN (SELECT id FROM fitting WHERE before < ?{} AND n <= ?{limit}) ORDER BY id {order}",
            columns!(),
            values.len()
        );
        let params: Vec<&dyn ToSql> = values.iter().map(|v| v.as_ref()).collect();
        let rows: Vec<(Job, i64)> = conn
            .prepare(&sql)
            .and_then(|mut s| s.query_map(params.as_slice(), |r| Ok((job_from_row(r)?, r.get(JOB_COLUMNS)?)))?.collect())
            .map_err(db_error)?;
        let matched = rows.first().map_or(0, |r| r.1) as usize;
        let jobs: Vec<Job> = rows.into_iter().map(|r| r.0).collect();
        Ok(JobList { more: matched > jobs.len(), jobs })
    })
    .await
}

pub(super) async fn counts(db: &SqliteStore) -> Result<Vec<StateCount>, StoreError> {
    db.read(|conn, _| {
        let rows: Vec<(String, Option<String>, String, i64)> = conn
            .prepare_cached("SELECT queue, nullif(tenant, ''), state, n FROM job_counts WHERE n <> 0 ORDER BY queue, tenant, state")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect())
            .map_err(db_error)?;
        rows.into_iter()
            .map(|(queue, tenant, state, count)| {
                Ok(StateCount { queue, tenant, state: state.parse().map_err(StoreError::Database)?, count: count as u64 })
            })
            .collect()
    })
    .await
}

pub(super) async fn pending_count(db: &SqliteStore, kind: &str) -> Result<u64, StoreError> {
    let kind = kind.to_string();
    db.read(move |conn, _| {
        conn.prepare_cached(concat!("SELECT count(*) FROM jobs WHERE state IN ", pending!(), " AND kind = ?1"))
            .and_then(|mut s| s.query_row([kind], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(db_error)
    })
    .await
}

pub(super) async fn waiting_count(db: &SqliteStore, tenant: Option<&str>) -> Result<u64, StoreError> {
    let tenant = tenant.unwrap_or("").to_string();
    db.read(move |conn, _| {
        conn.prepare_cached(concat!("SELECT coalesce(sum(n), 0) FROM job_counts WHERE tenant = ?1 AND state IN ", waiting!()))
            .and_then(|mut s| s.query_row([tenant], |r| r.get::<_, i64>(0)))
            .map(|n| n.max(0) as u64)
            .map_err(db_error)
    })
    .await
}

pub(super) async fn minutes(db: &SqliteStore, since: Millis) -> Result<Vec<MinuteRuns>, StoreError> {
    db.read(move |conn, _| {
        conn.prepare_cached(
            "SELECT minute, host, queue, kind, runs, failures, delay_ms_sum, delay_ms_max FROM run_minutes \
             WHERE minute >= ?1 ORDER BY minute, host, queue, kind",
        )
        .and_then(|mut s| {
            s.query_map(params![since], |r| {
                Ok(MinuteRuns {
                    minute: r.get(0)?,
                    host: r.get(1)?,
                    queue: r.get(2)?,
                    kind: r.get(3)?,
                    runs: r.get::<_, i64>(4)? as u64,
                    failures: r.get::<_, i64>(5)? as u64,
                    delay_ms_sum: r.get(6)?,
                    delay_ms_max: r.get(7)?,
                })
            })?
            .collect()
        })
        .map_err(db_error)
    })
    .await
}
