//! Schedules' ticks and their checkpoints, and continuous loops' leases and
//! checkpoints.

use super::connection::SqliteStore;
use super::rows::db_error;
use crate::queue::{LoopClaim, LoopLease, LoopSave, LoopState, ScheduleState, StoreError, schedule_key_range, tick_of_key};
use rusqlite::{OptionalExtension, params};

pub(super) async fn schedule_state(db: &SqliteStore, kind: &str) -> Result<ScheduleState, StoreError> {
    let kind = kind.to_string();
    db.read(move |conn, _| {
        let (start, end) = schedule_key_range(&kind);
        let (last, active): (Option<String>, bool) = conn
            .prepare_cached(concat!(
                "SELECT (SELECT max(unique_key) FROM jobs WHERE kind = ?1 AND unique_key >= ?2 AND unique_key < ?3), \
                        EXISTS (SELECT 1 FROM jobs WHERE state IN ",
                pending!(),
                " AND kind = ?1 AND unique_key >= ?2 AND unique_key < ?3)"
            ))
            .and_then(|mut s| s.query_row(params![kind, start, end], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(db_error)?;
        Ok(ScheduleState { last_tick: last.as_deref().and_then(tick_of_key), active })
    })
    .await
}

pub(super) async fn schedule_checkpoint(db: &SqliteStore, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let kind = kind.to_string();
    db.read(move |conn, _| {
        let (start, end) = schedule_key_range(&kind);
        conn.prepare_cached(
            "SELECT result FROM jobs WHERE kind = ?1 AND unique_key >= ?2 AND unique_key < ?3 AND state = 'completed' \
             ORDER BY unique_key DESC LIMIT 1",
        )
        .and_then(|mut s| s.query_row(params![kind, start, end], |r| r.get::<_, Option<Vec<u8>>>(0)).optional())
        .map(Option::flatten)
        .map_err(db_error)
    })
    .await
}

pub(super) async fn acquire_loop(db: &SqliteStore, claim: LoopClaim) -> Result<Option<LoopLease>, StoreError> {
    db.write(move |tx, now| {
        tx.prepare_cached("INSERT INTO loops (name, updated_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")
            .and_then(|mut s| s.execute(params![claim.name, now]))
            .map_err(db_error)?;
        tx.prepare_cached(
            "UPDATE loops SET token = token + 1, owner = ?2, lease_expires_at = ?3 + ?4, updated_at = ?3 \
             WHERE name = ?1 AND (owner IS NULL OR owner = ?2 OR lease_expires_at < ?3) RETURNING token, checkpoint, passes",
        )
        .and_then(|mut s| {
            s.query_row(params![claim.name, claim.host, now, claim.lease_ms], |r| {
                Ok(LoopLease { name: claim.name.clone(), token: r.get(0)?, checkpoint: r.get(1)?, passes: r.get::<_, i64>(2)? as u64 })
            })
            .optional()
        })
        .map_err(db_error)
    })
    .await
}

pub(super) async fn save_loop(db: &SqliteStore, save: LoopSave) -> Result<(), StoreError> {
    db.write(move |tx, now| {
        let stored = save.checkpoint.is_some();
        let changed = tx
            .prepare_cached(
                "UPDATE loops SET checkpoint = CASE WHEN ?3 THEN ?4 ELSE checkpoint END, passes = passes + ?3, \
                 lease_expires_at = ?5 + ?6, updated_at = ?5 WHERE name = ?1 AND token = ?2 AND owner IS NOT NULL",
            )
            .and_then(|mut s| s.execute(params![save.name, save.token, stored, save.checkpoint, now, save.lease_ms]))
            .map_err(db_error)?;
        if changed == 1 { Ok(()) } else { Err(StoreError::LoopLost { name: save.name, token: save.token }) }
    })
    .await
}

pub(super) async fn release_loop(db: &SqliteStore, name: &str, token: i64) -> Result<(), StoreError> {
    let name = name.to_string();
    db.write(move |tx, now| {
        let changed = tx
            .prepare_cached("UPDATE loops SET owner = NULL, lease_expires_at = NULL, updated_at = ?3 WHERE name = ?1 AND token = ?2")
            .and_then(|mut s| s.execute(params![name, token, now]))
            .map_err(db_error)?;
        if changed == 1 { Ok(()) } else { Err(StoreError::LoopLost { name, token }) }
    })
    .await
}

pub(super) async fn loops(db: &SqliteStore) -> Result<Vec<LoopState>, StoreError> {
    db.read(|conn, _| {
        conn.prepare_cached("SELECT name, checkpoint, passes, owner, lease_expires_at, updated_at FROM loops ORDER BY name")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(LoopState {
                        name: r.get(0)?,
                        checkpoint: r.get(1)?,
                        passes: r.get::<_, i64>(2)? as u64,
                        owner: r.get(3)?,
                        lease_expires_at: r.get(4)?,
                        updated_at: r.get(5)?,
                    })
                })?
                .collect()
            })
            .map_err(db_error)
    })
    .await
}
