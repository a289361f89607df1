//! Upkeep: rescuing jobs whose leases expired, pruning finished jobs past
//! their retention, folding the count deltas, runs per minute.

use super::connection::PostgresStore;
use super::rows::pg_error;
use crate::queue::{MinuteRuns, PruneParams, StoreError};
use crate::queue::job::{JobId, Millis};
use deadpool_postgres::GenericClient;

pub(super) async fn prune(db: &PostgresStore, p: PruneParams) -> Result<u64, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let state = p.state.as_str();
    // Rows another host's pruner holds are skipped: it deletes them.
    let by_age = concat!(
        "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j WHERE j.state = $1 AND j.finalized_at < $2 AND NOT ",
        kept_tick!(),
        " ORDER BY j.finalized_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
    );
    let mut deleted = tx.execute(by_age, &[&state, &p.finalized_before, &(p.limit as i64)]).await.map_err(pg_error)?;
    let queues: Vec<String> = tx.query("SELECT name FROM queues ORDER BY name", &[]).await.map_err(pg_error)?.iter().map(|r| r.get(0)).collect();
    for queue in queues {
        let left = p.limit as u64 - deleted;
        if left == 0 {
            break;
        }
        let cutoff = tx
            .query_opt("SELECT id FROM jobs WHERE queue = $1 AND state = $2 ORDER BY id DESC LIMIT 1 OFFSET $3", &[&queue, &state, &(p.keep_per_queue as i64)])
            .await
            .map_err(pg_error)?;
        let Some(cutoff) = cutoff.map(|r| r.get::<_, JobId>(0)) else { continue };
        let by_count = concat!(
            "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j WHERE j.queue = $1 AND j.state = $2 AND j.id <= $3 AND NOT ",
            kept_tick!(),
            " ORDER BY j.id LIMIT $4 FOR UPDATE SKIP LOCKED)"
        );
        deleted += tx.execute(by_count, &[&queue, &state, &cutoff, &(left as i64)]).await.map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(deleted)
}

pub(super) async fn rescue_expired(db: &PostgresStore, spare: &[JobId]) -> Result<Vec<JobId>, StoreError> {
    let now = db.now();
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE jobs SET \
               state = CASE WHEN cancel_requested THEN 'cancelled' WHEN attempt >= max_attempts THEN 'dead' ELSE 'retryable' END, \
               finalized_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN $1::bigint END, \
               scheduled_at = least(scheduled_at, $1), leased_by = NULL, lease_expires_at = NULL, cancel_requested = false, \
               errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'at', $1::bigint, \
                 'outcome', 'lease_expired', 'message', 'the lease of host ' || coalesce(leased_by, '?') || \
                 ' expired: the host stopped or lost touch with the store')) \
             WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < $1 AND NOT (id = ANY($2)) \
               FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .await
        .map_err(pg_error)?;
    let mut ids: Vec<JobId> = client.query(&stmt, &[&now, &spare]).await.map_err(pg_error)?.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    Ok(ids)
}

pub(super) async fn fold_counts(db: &PostgresStore) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    // One host folds at a time; the others skip this round.
    let ours: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock(hashtextextended('kiln:fold:' || current_schema(), 0))", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if ours {
        tx.execute(
            "WITH moved AS (DELETE FROM job_count_deltas RETURNING queue, tenant, state, n) \
             INSERT INTO job_counts AS c (queue, tenant, state, n) \
             SELECT queue, tenant, state, sum(n)::bigint FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 \
             ON CONFLICT (queue, tenant, state) DO UPDATE SET n = c.n + excluded.n",
            &[],
        )
        .await
        .map_err(pg_error)?;
        tx.execute("DELETE FROM job_counts WHERE n = 0", &[]).await.map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}

pub(super) async fn record_minutes(db: &PostgresStore, rows: Vec<MinuteRuns>, keep_since: Millis) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("DELETE FROM run_minutes WHERE minute < $1", &[&keep_since]).await.map_err(pg_error)?;
    let rows: Vec<&MinuteRuns> = rows.iter().filter(|r| r.minute >= keep_since).collect();
    if !rows.is_empty() {
        let column = |f: fn(&MinuteRuns) -> i64| rows.iter().map(|r| f(r)).collect::<Vec<i64>>();
        let text = |f: fn(&MinuteRuns) -> &str| rows.iter().map(|r| f(r)).collect::<Vec<&str>>();
        tx.execute(
            "INSERT INTO run_minutes (minute, host, queue, kind, runs, failures, delay_ms_sum, delay_ms_max) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[]) \
             ON CONFLICT (minute, host, queue, kind) DO UPDATE SET \
             runs = excluded.runs, failures = excluded.failures, delay_ms_sum = excluded.delay_ms_sum, delay_ms_max = excluded.delay_ms_max",
            &[
                &column(|r| r.minute),
                &text(|r| &r.host),
                &text(|r| &r.queue),
                &text(|r| &r.kind),
                &column(|r| r.runs as i64),
                &column(|r| r.failures as i64),
                &column(|r| r.delay_ms_sum),
                &column(|r| r.delay_ms_max),
            ],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}
