//! The pruner: a maintenance service (River's and Oban's pruners are the
//! model) that deletes finished jobs once they are past their retention,
//! by age and by count per queue, so the store does not grow for ever.
//! Every host runs one; their deletes skip one another's rows, so several
//! hosts on one Postgres prune together without harm.

use crate::queue::{JobState, JobStore, PruneParams, SharedClock};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// `kiln.toml`'s `[retention]`: how long finished jobs are kept, and how
/// many of each state per queue at most (the newest are kept).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Completed jobs, after they finished: 24 hours.
    pub completed_after_ms: u64,
    /// Cancelled jobs: 24 hours.
    pub cancelled_after_ms: u64,
    /// Dead (dead-lettered) jobs: 7 days, time to look at them and retry.
    pub dead_after_ms: u64,
    /// At most this many jobs of each of those states per queue: 100,000.
    pub max_per_queue: u64,
    /// How often a pass runs: every minute.
    pub interval_ms: u64,
}

const HOUR_MS: u64 = 3_600_000;

impl Default for Retention {
    fn default() -> Self {
        Self {
            completed_after_ms: 24 * HOUR_MS,
            cancelled_after_ms: 24 * HOUR_MS,
            dead_after_ms: 7 * 24 * HOUR_MS,
            max_per_queue: 100_000,
            interval_ms: 60_000,
        }
    }
}

impl Retention {
    /// What is wrong with it, if anything: `(key, problem)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        (self.interval_ms < MIN_INTERVAL_MS).then(|| ("retention.interval_ms", format!("is {}; a pass runs at most every {MIN_INTERVAL_MS} ms", self.interval_ms)))
    }
}

/// The shortest interval between passes.
pub const MIN_INTERVAL_MS: u64 = 100;
/// Jobs one transaction deletes: short enough not to hold the writer long.
pub const PRUNE_BATCH: usize = 1_000;
/// Jobs one pass deletes at most; the next pass goes on.
pub const MAX_PER_PASS: u64 = 100_000;

/// Prunes every `interval_ms` until `stopping` turns true.
pub async fn run(store: Arc<dyn JobStore>, clock: SharedClock, retention: Retention, mut stopping: watch::Receiver<bool>) {
    let every = Duration::from_millis(retention.interval_ms.max(MIN_INTERVAL_MS));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopping.changed() => break,
        }
        match pass(store.as_ref(), &clock, &retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned finished jobs past their retention"),
            Err(e) => tracing::warn!("pruning failed: {e}; the next pass tries again"),
        }
    }
}

/// One pass: each finished state in batches, until a batch comes back short.
pub async fn pass(store: &dyn JobStore, clock: &SharedClock, retention: &Retention) -> Result<u64, crate::queue::StoreError> {
    let mut deleted = 0;
    for (state, age) in [
        (JobState::Completed, retention.completed_after_ms),
        (JobState::Cancelled, retention.cancelled_after_ms),
        (JobState::Dead, retention.dead_after_ms),
    ] {
        loop {
            let params = PruneParams {
                state,
                finalized_before: clock.now().saturating_sub(i64::try_from(age).unwrap_or(i64::MAX)),
                keep_per_queue: retention.max_per_queue,
                limit: PRUNE_BATCH,
            };
            let n = store.prune(params).await?;
            deleted += n;
            if n < PRUNE_BATCH as u64 || deleted >= MAX_PER_PASS {
                break;
            }
            // Between batches, the host's own writes go first.
            tokio::task::yield_now().await;
        }
    }
    Ok(deleted)
}
