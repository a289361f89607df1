//! The end of a run, written: transitions go to the store in batches (one
//! transaction for everything waiting when the previous write ends), each
//! checked against its lease's fencing token, with what the store keeps of
//! the attempt. While the store cannot be written, a batch is tried again
//! until it is.

use super::state::Shared;
use crate::queue::{AttemptRun, AttemptSummary, Finish, Lease, LogEntry, Millis, Progress, StoreError, Transition};
use crate::sandbox::{LogLine, Report, ReportedProgress};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The finisher's first wait before writing a batch again while the store
/// is unreachable; it doubles each time.
pub const FINISH_RETRY_DELAY: Duration = Duration::from_millis(50);
/// The finisher's longest wait between tries: once the store is back, the
/// transitions are written within this.
pub const FINISH_RETRY_MAX_DELAY: Duration = Duration::from_secs(1);

/// Writes transitions in batches: everything waiting when the previous
/// write ends goes in the next transaction. While the store is unreachable
/// (a database outage, a full disk) a batch is tried again until it is
/// written.
pub(super) async fn finisher(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Finish>) {
    let mut batch = Vec::with_capacity(shared.config.finish_batch);
    while rx.recv_many(&mut batch, shared.config.finish_batch).await > 0 {
        let finishes = std::mem::take(&mut batch);
        let leases: Vec<Lease> = finishes.iter().map(|f| f.lease).collect();
        let forget = |leases: &[Lease]| {
            let mut unwritten = shared.unwritten.lock().expect("poisoned");
            for lease in leases {
                if unwritten.get(&lease.id) == Some(lease) {
                    unwritten.remove(&lease.id);
                }
            }
        };
        let began = tokio::time::Instant::now();
        let mut delay = FINISH_RETRY_DELAY;
        let written = loop {
            // Tried again for as long as the host runs (the heartbeat keeps
            // the leases and the rescuer spares the jobs meanwhile); a host
            // stopping gives up after its grace period, and the next start
            // rescues the jobs.
            let stopping = *shared.stopping.borrow();
            match shared.store.finish_many(finishes.clone()).await {
                Err(StoreError::Unavailable(e)) if !stopping || began.elapsed() + delay < shared.config.shutdown_grace => {
                    tracing::warn!(jobs = leases.len(), "cannot write transitions yet: {e}; trying again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(FINISH_RETRY_MAX_DELAY);
                }
                other => break other,
            }
        };
        match written {
            Ok(results) => {
                let mut woken: Vec<&str> = Vec::new();
                for ((lease, result), finish) in leases.iter().zip(results).zip(&finishes) {
                    match result {
                        Err(e) => tracing::warn!(job = lease.id, "transition refused: {e}"),
                        // Children were inserted with the completion: wake their queues here.
                        Ok(()) => {
                            if let Transition::Complete { effects, .. } = &finish.transition {
                                woken.extend(effects.children.iter().map(|c| c.queue.as_str()));
                            }
                        }
                    }
                }
                shared.finished.notify_waiters();
                shared.wake_each(woken);
            }
            // The leases expire and the rescuer brings the jobs back.
            Err(e) => tracing::error!(jobs = leases.len(), "writing transitions failed: {e}; the jobs will be rescued"),
        }
        forget(&leases);
    }
    shared.finisher_done.send_replace(true);
    tracing::info!("finisher stopped: every transition written");
}

/// What the store keeps of a run that ended in `transition`.
pub(super) fn attempt_run(shared: &Shared, report: &mut Report, transition: &Transition, started_at: Millis, ended_at: Millis) -> AttemptRun {
    let error = match transition {
        Transition::RetryAt { error, .. } | Transition::Discard { error } | Transition::Cancel { error } => Some(error.message.clone()),
        Transition::Complete { .. } | Transition::Snooze { .. } => None,
    };
    let logs = match shared.config.attempts.logs {
        true => std::mem::take(&mut report.logs).into_iter().map(log_entry).collect(),
        false => Vec::new(),
    };
    AttemptRun {
        summary: AttemptSummary {
            host: shared.config.host.clone(),
            started_at,
            ended_at,
            outcome: report.outcome.name().to_string(),
            error,
            duration_ms: report.duration.as_secs_f64() * 1000.0,
            fuel_used: report.fuel_used,
            peak_memory_bytes: report.peak_memory_bytes,
            http_requests: report.http.requests,
            log_bytes_dropped: report.log_bytes_dropped,
        },
        progress: report.progress.take().map(stored_progress),
        logs,
    }
}

fn log_entry(line: LogLine) -> LogEntry {
    LogEntry {
        at: line.at_ms,
        level: line.level.as_str().to_ascii_lowercase(),
        source: line.source.as_str().to_string(),
        message: line.message,
    }
}

pub(super) fn stored_progress(p: ReportedProgress) -> Progress {
    Progress { percent: p.percent, note: p.note }
}
