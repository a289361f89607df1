//! Schedules' ticks and their checkpoints, and continuous loops' leases and
//! checkpoints.

use super::connection::PostgresStore;
use super::rows::pg_error;
use crate::queue::{LoopClaim, LoopLease, LoopSave, LoopState, ScheduleState, StoreError, schedule_key_range, tick_of_key};
use deadpool_postgres::GenericClient;

pub(super) async fn schedule_state(db: &PostgresStore, kind: &str) -> Result<ScheduleState, StoreError> {
    let (start, end) = schedule_key_range(kind);
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(concat!(
            "SELECT (SELECT max(unique_key) FROM jobs WHERE kind = $1 AND unique_key >= $2 AND unique_key < $3), \
                    EXISTS (SELECT 1 FROM jobs WHERE state IN ",
            pending!(),
            " AND kind = $1 AND unique_key >= $2 AND unique_key < $3)"
        ))
        .await
        .map_err(pg_error)?;
    let row = client.query_one(&stmt, &[&kind, &start, &end]).await.map_err(pg_error)?;
    let last: Option<String> = row.get(0);
    Ok(ScheduleState { last_tick: last.as_deref().and_then(tick_of_key), active: row.get(1) })
}

pub(super) async fn schedule_checkpoint(db: &PostgresStore, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let (start, end) = schedule_key_range(kind);
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT result FROM jobs WHERE kind = $1 AND unique_key >= $2 AND unique_key < $3 AND state = 'completed' \
             ORDER BY unique_key DESC LIMIT 1",
        )
        .await
        .map_err(pg_error)?;
    let row = client.query_opt(&stmt, &[&kind, &start, &end]).await.map_err(pg_error)?;
    Ok(row.and_then(|r| r.get(0)))
}

pub(super) async fn acquire_loop(db: &PostgresStore, claim: LoopClaim) -> Result<Option<LoopLease>, StoreError> {
    let now = db.now();
    let client = db.client().await?;
    client
        .execute("INSERT INTO loops (name, updated_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", &[&claim.name, &now])
        .await
        .map_err(pg_error)?;
    let row = client
        .query_opt(
            "UPDATE loops SET token = token + 1, owner = $2, lease_expires_at = $3::bigint + $4::bigint, updated_at = $3 \
             WHERE name = $1 AND (owner IS NULL OR owner = $2 OR lease_expires_at < $3) RETURNING token, checkpoint, passes",
            &[&claim.name, &claim.host, &now, &claim.lease_ms],
        )
        .await
        .map_err(pg_error)?;
    Ok(row.map(|r| LoopLease { name: claim.name, token: r.get(0), checkpoint: r.get(1), passes: r.get::<_, i64>(2) as u64 }))
}

pub(super) async fn save_loop(db: &PostgresStore, save: LoopSave) -> Result<(), StoreError> {
    let now = db.now();
    let stored = save.checkpoint.is_some();
    let changed = db
        .client()
        .await?
        .execute(
            "UPDATE loops SET checkpoint = CASE WHEN $3 THEN $4 ELSE checkpoint END, passes = passes + CASE WHEN $3 THEN 1 ELSE 0 END, \
             lease_expires_at = $5::bigint + $6::bigint, updated_at = $5 WHERE name = $1 AND token = $2 AND owner IS NOT NULL",
            &[&save.name, &save.token, &stored, &save.checkpoint, &now, &save.lease_ms],
        )
        .await
        .map_err(pg_error)?;
    if changed == 1 { Ok(()) } else { Err(StoreError::LoopLost { name: save.name, token: save.token }) }
}

pub(super) async fn release_loop(db: &PostgresStore, name: &str, token: i64) -> Result<(), StoreError> {
    let changed = db
        .client()
        .await?
        .execute(
            "UPDATE loops SET owner = NULL, lease_expires_at = NULL, updated_at = $3 WHERE name = $1 AND token = $2",
            &[&name, &token, &db.now()],
        )
        .await
        .map_err(pg_error)?;
    if changed == 1 { Ok(()) } else { Err(StoreError::LoopLost { name: name.to_string(), token }) }
}

pub(super) async fn loops(db: &PostgresStore) -> Result<Vec<LoopState>, StoreError> {
    let rows = db
        .client()
        .await?
        .query("SELECT name, checkpoint, passes, owner, lease_expires_at, updated_at FROM loops ORDER BY name", &[])
        .await
        .map_err(pg_error)?;
    Ok(rows
        .iter()
        .map(|r| LoopState {
            name: r.get(0),
            checkpoint: r.get(1),
            passes: r.get::<_, i64>(2) as u64,
            owner: r.get(3),
            lease_expires_at: r.get(4),
            updated_at: r.get(5),
        })
        .collect())
}
