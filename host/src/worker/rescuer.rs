//! The rescuer: a maintenance service that brings back jobs whose host died
//! or lost touch, by moving expired leases back to retryable.

use crate::queue::{JobId, JobStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Never check more often than this: each check is a write transaction.
pub const MIN_RESCUE_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Rescuer {
    store: Arc<dyn JobStore>,
    every: Duration,
}

impl Rescuer {
    /// Checks three times per lease, so a dead host's jobs come back at most
    /// a third of a lease after their lease expired.
    pub fn new(store: Arc<dyn JobStore>, lease: Duration) -> Self {
        Self { store, every: (lease / 3).max(MIN_RESCUE_INTERVAL) }
    }

    /// Runs until `stopping` turns true; calls `rescued` after any rescue so
    /// the queues look for the returned jobs at once. `held` names the jobs
    /// this host still runs or writes: never rescued from under it, even
    /// when their lease ran out while the store was unreachable.
    pub async fn run(
        self,
        mut stopping: watch::Receiver<bool>,
        held: impl Fn() -> Vec<JobId> + Send + 'static,
        rescued: impl Fn() + Send + 'static,
    ) {
        loop {
            match self.store.rescue_expired(&held()).await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::warn!(jobs = ?ids, "rescued jobs whose lease expired (their host stopped or lost touch)");
                    rescued();
                }
                Ok(_) => {}
                Err(e) => tracing::error!("rescue failed: {e}"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.every) => {}
                _ = stopping.changed() => break,
            }
        }
    }
}
