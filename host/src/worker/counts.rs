//! The store's count upkeep: folds the per-transition count deltas into
//! the counts `/metrics`, `/queues` and the dashboard read, on every host.

use crate::queue::JobStore;
use std::sync::Arc;
use tokio::sync::watch;

/// The store's count upkeep (see [`JobStore::fold_counts`]), every
/// [`COUNT_FOLD_INTERVAL`](crate::queue::COUNT_FOLD_INTERVAL) until the host stops.
pub(super) async fn fold_counts_loop(store: Arc<dyn JobStore>, mut stopping: watch::Receiver<bool>) {
    loop {
        if let Err(e) = store.fold_counts().await {
            tracing::warn!("folding the job counts failed (counts stay right, only slower to read): {e}");
        }
        tokio::select! {
            () = tokio::time::sleep(crate::queue::COUNT_FOLD_INTERVAL) => {}
            _ = stopping.changed() => break,
        }
    }
}
