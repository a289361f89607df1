//! Queues: their counts and pause flags, pausing and resuming, and the next
//! due job of one.

use super::connection::SqliteStore;
use super::rows::db_error;
use crate::queue::{QueueInfo, StoreError};
use crate::queue::job::Millis;
use rusqlite::params;

impl SqliteStore {
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError> {
        let queue = queue.to_string();
        self.write(move |tx, now| {
            tx.execute(
                "INSERT INTO queues (name, paused, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                params![queue, paused, now],
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await
    }
}

pub(super) async fn next_due(db: &SqliteStore, queue: &str) -> Result<Option<Millis>, StoreError> {
    let queue = queue.to_string();
    db.read(move |conn, _| {
        conn.prepare_cached(next_due_sql!("?1"))
            .and_then(|mut s| s.query_row([queue], |r| r.get(0)))
            .map_err(db_error)
    })
    .await
}

pub(super) async fn pause_queue(db: &SqliteStore, queue: &str) -> Result<(), StoreError> {
    db.set_paused(queue, true).await
}

pub(super) async fn resume_queue(db: &SqliteStore, queue: &str) -> Result<(), StoreError> {
    db.set_paused(queue, false).await
}

pub(super) async fn queues(db: &SqliteStore) -> Result<Vec<QueueInfo>, StoreError> {
    db.read(|conn, _| {
        conn.prepare_cached("SELECT name, paused FROM queues ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| Ok(QueueInfo { name: r.get(0)?, paused: r.get(1)? }))?.collect())
            .map_err(db_error)
    })
    .await
}
