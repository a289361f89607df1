//! Queues: their counts and pause flags, pausing and resuming, and the next
//! due job of one.

use super::connection::PostgresStore;
use super::rows::pg_error;
use crate::queue::{QueueInfo, StoreError};
use crate::queue::job::Millis;
use deadpool_postgres::GenericClient;

impl PostgresStore {
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO queues (name, paused, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                &[&queue, &paused, &self.now()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

pub(super) async fn next_due(db: &PostgresStore, queue: &str) -> Result<Option<Millis>, StoreError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(next_due_sql!("$1"))
        .await
        .map_err(pg_error)?;
    Ok(client.query_one(&stmt, &[&queue]).await.map_err(pg_error)?.get(0))
}

pub(super) async fn pause_queue(db: &PostgresStore, queue: &str) -> Result<(), StoreError> {
    db.set_paused(queue, true).await
}

pub(super) async fn resume_queue(db: &PostgresStore, queue: &str) -> Result<(), StoreError> {
    db.set_paused(queue, false).await
}

pub(super) async fn queues(db: &PostgresStore) -> Result<Vec<QueueInfo>, StoreError> {
    let rows = db.client().await?.query("SELECT name, paused FROM queues ORDER BY name", &[]).await.map_err(pg_error)?;
    Ok(rows.iter().map(|r| QueueInfo { name: r.get(0), paused: r.get(1) }).collect())
}
