//! Continuous loops: the `ExecuteAsync` service. Each continuous plugin runs
//! pass after pass, each pass a fresh sandbox iteration whose `ok` value is
//! stored as the checkpoint the next pass gets, so a restart (or another
//! host) resumes where the loop was. A failed pass keeps the checkpoint,
//! waits its backoff and the loop goes on.
//!
//! A loop runs on one host at a time: the host holds it by a lease in the
//! store, renewed while it runs; the checkpoint is stored only with the
//! lease's current token (the same fencing as jobs). A host that dies loses
//! the loop when the lease expires, and any host picks it up. At shutdown
//! the pass sees `cancelled()`, is interrupted after the grace period, and
//! the loop is released at once.

use super::handle::TriggerHandle;
use super::runner::Ran;
use crate::plugin::trigger::ContinuousTrigger;
use crate::queue::{LoopClaim, LoopSave, StoreError};
use crate::sandbox::{JobInput, Outcome, ProgressCell};
use std::time::Duration;
use tokio::sync::watch;

/// The pause after the `failures`-th failed pass in a row: doubled each
/// time, up to the ceiling.
pub fn loop_backoff(trigger: &ContinuousTrigger, failures: u32) -> Duration {
    let doubled = trigger.backoff.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(trigger.max_backoff)
}

/// Runs the loop `name` until `stop` turns true.
pub(super) async fn run_loop(handle: TriggerHandle, name: String, trigger: ContinuousTrigger, mut stop: watch::Receiver<bool>) {
    let config = handle.config().clone();
    let lease_ms = config.lease.as_millis() as i64;
    let store = handle.store().clone();
    tracing::info!(plugin = %name, delay = %humantime::format_duration(trigger.delay), backoff = %humantime::format_duration(trigger.backoff),
        "loop started");
    'hold: while !*stop.borrow() {
        let claim = LoopClaim { name: name.clone(), host: config.host.clone(), lease_ms };
        let lease = match store.acquire_loop(claim).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tracing::debug!(plugin = %name, "loop held by another host; waiting");
                pause(&mut stop, config.lease / 3).await;
                continue;
            }
            Err(e) => {
                tracing::error!(plugin = %name, "loop: the store does not answer: {e}");
                pause(&mut stop, config.poll_interval).await;
                continue;
            }
        };
        tracing::info!(plugin = %name, passes = lease.passes, resumes_from_checkpoint = lease.checkpoint.is_some(), "loop taken");
        let (lost_tx, mut lost) = watch::channel(false);
        let renewer = tokio::spawn(renew(handle.clone(), name.clone(), lease.token, lost_tx));
        let mut checkpoint = lease.checkpoint;
        let mut passes = lease.passes;
        let mut failures = 0u32;
        let released = loop {
            if *stop.borrow() {
                break true;
            }
            let input = JobInput {
                id: format!("loop:{name}:{}", passes + 1),
                kind: name.clone(),
                attempt: failures + 1,
                max_attempts: 0,
                payload: Vec::new(),
                checkpoint: checkpoint.clone(),
                progress: ProgressCell::default(),
                traceparent: None,
            };
            let mut ran = run_pass(&handle, input, &mut stop, &mut lost).await;
            if *lost.borrow() {
                tracing::warn!(plugin = %name, "loop lease lost (another host took it); stopping here");
                break false;
            }
            let outcome = std::mem::replace(&mut ran.report.outcome, Outcome::Cancelled { interrupted: false });
            let wait = match outcome {
                Outcome::Ok(output) => {
                    let save = LoopSave { name: name.clone(), token: lease.token, checkpoint: Some(output.clone()), lease_ms };
                    match store.save_loop(save).await {
                        Ok(()) => {
                            if let Err(e) = handle.apply_effects(&name, &mut ran.report).await {
                                tracing::error!(plugin = %name, "what this loop pass wrote to kv or enqueued was not stored: {e}");
                            }
                            passes += 1;
                            failures = 0;
                            checkpoint = Some(output);
                            tracing::debug!(plugin = %name, passes, "loop pass stored its checkpoint");
                        }
                        Err(StoreError::LoopLost { .. }) => {
                            tracing::warn!(plugin = %name, "loop taken over by another host; this pass's checkpoint was not stored");
                            break false;
                        }
                        Err(e) => tracing::error!(plugin = %name, "loop checkpoint not stored: {e}; the next pass repeats this one"),
                    }
                    trigger.delay
                }
                Outcome::Cancelled { .. } if *stop.borrow() => break true,
                ref failed => {
                    if *stop.borrow() {
                        break true;
                    }
                    failures += 1;
                    let backoff = loop_backoff(&trigger, failures);
                    tracing::warn!(plugin = %name, failures, outcome = failed.name(), backoff = %humantime::format_duration(backoff),
                        "loop pass failed; the checkpoint stays and the loop goes on after the backoff: {}",
                        failed.error_message().unwrap_or_default());
                    backoff
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
                _ = lost.changed() => {}
            }
        };
        renewer.abort();
        if released {
            match store.release_loop(&name, lease.token).await {
                Ok(()) => tracing::info!(plugin = %name, passes, "loop released"),
                Err(e) => tracing::warn!(plugin = %name, "loop not released ({e}); its lease will expire"),
            }
            break 'hold;
        }
    }
    tracing::info!(plugin = %name, "loop stopped");
}

/// One pass on the job runtime. Shutdown cancels it, and interrupts it
/// after the grace period; a lost lease interrupts it at once.
async fn run_pass(handle: &TriggerHandle, input: JobInput, stop: &mut watch::Receiver<bool>, lost: &mut watch::Receiver<bool>) -> Ran {
    let runner = handle.runner().clone();
    let signal = runner.stop_signal();
    let pass_signal = signal.clone();
    let kind = input.kind.clone();
    let mut pass = handle.job_runtime().spawn(async move { runner.run(&input, &pass_signal).await });
    let grace = handle.config().shutdown_grace;
    let mut cancelled_at: Option<tokio::time::Instant> = None;
    loop {
        let interrupt_at = cancelled_at.map(|at| at + grace);
        tokio::select! {
            ran = &mut pass => {
                let ran = ran.unwrap_or_else(|e| Ran {
                    report: crate::sandbox::Report::without_cost(Outcome::Fatal(format!("the pass task failed: {e}"))),
                    version: None,
                });
                handle.metrics().job_finished(&kind, &ran.report);
                return ran;
            }
            _ = stop.changed(), if cancelled_at.is_none() => {
                signal.cancel();
                cancelled_at = Some(tokio::time::Instant::now());
            }
            _ = lost.changed() => signal.interrupt(),
            () = async { tokio::time::sleep_until(interrupt_at.expect("set")).await }, if interrupt_at.is_some() => {
                tracing::warn!(plugin = %kind, "loop pass ignored cancellation for {grace:?}; interrupting it");
                signal.interrupt();
                cancelled_at = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
        }
    }
}

/// Keeps the loop's lease alive while this host holds it; reports a lost lease.
async fn renew(handle: TriggerHandle, name: String, token: i64, lost: watch::Sender<bool>) {
    let lease = handle.config().lease;
    loop {
        tokio::time::sleep(lease / 3).await;
        let save = LoopSave { name: name.clone(), token, checkpoint: None, lease_ms: lease.as_millis() as i64 };
        match handle.store().save_loop(save).await {
            Ok(()) => {}
            Err(StoreError::LoopLost { .. }) => {
                lost.send_replace(true);
                return;
            }
            Err(e) => tracing::error!(plugin = %name, "loop lease not renewed: {e}"),
        }
    }
}

async fn pause(stop: &mut watch::Receiver<bool>, wait: Duration) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        _ = stop.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_ceiling() {
        let trigger = ContinuousTrigger {
            delay: Duration::from_millis(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        };
        let waits: Vec<u64> = (1..=5).map(|n| loop_backoff(&trigger, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(loop_backoff(&trigger, 200), Duration::from_secs(5), "no overflow");
    }
}
