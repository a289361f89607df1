//! Leases kept alive: every running job's lease (and those of runs ended
//! but not yet written) renewed three times a lease, with the progress
//! their plugins reported since; a lost lease interrupts the run, a cancel
//! asked through the store cancels it.

use super::retry_policy::StopReason;
use super::state::Shared;
use crate::queue::{HeartbeatParams, Lease, Progress};
use std::sync::Arc;

/// Keeps the leases of running jobs alive, and acts on what it learns: a
/// lost lease interrupts the run, a requested cancel cancels it.
pub(super) async fn heartbeat_loop(shared: Arc<Shared>) {
    // Three beats per lease: one lost beat does not lose the lease.
    let every = shared.config.lease / 3;
    // Beats on through shutdown (which may take the whole grace period)
    // until the finisher has written the last transition, and not a beat longer.
    let mut done = shared.finisher_done.subscribe();
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = done.wait_for(|done| *done) => break,
        }
        let (mut leases, progress): (Vec<Lease>, Vec<(Lease, Progress)>) = {
            let running = shared.running.lock().expect("poisoned");
            let progress = running.values().filter_map(|r| Some((r.lease, super::finish::stored_progress(r.progress.take_unseen()?)))).collect();
            (running.values().map(|r| r.lease).collect(), progress)
        };
        leases.extend(shared.unwritten.lock().expect("poisoned").values().copied());
        if leases.is_empty() {
            // Nothing to keep alive is on time: an idle spell is not lateness.
            last = tokio::time::Instant::now();
            continue;
        }
        let since = last.elapsed();
        if since > shared.config.lease / 2 {
            tracing::warn!(since_ms = since.as_millis() as u64, lease_ms = shared.config.lease.as_millis() as u64,
                "heartbeat late (the host is overloaded?); leases may expire and their jobs run again elsewhere");
        }
        match shared.store.heartbeat(HeartbeatParams { leases, lease_ms: shared.config.lease.as_millis() as i64, progress }).await {
            Ok(beat) => {
                last = tokio::time::Instant::now();
                for lease in beat.lost {
                    // A run that ended and was written meanwhile is not lost.
                    if shared.running.lock().expect("poisoned").contains_key(&lease.id) {
                        tracing::warn!(job = lease.id, "lease lost; interrupting the run");
                        shared.stop_locally(lease.id, StopReason::LeaseLost);
                    }
                }
                for lease in beat.cancel_requested {
                    shared.stop_locally(lease.id, StopReason::CancelRequested);
                }
            }
            Err(e) => tracing::error!("heartbeat failed: {e}"),
        }
    }
}
