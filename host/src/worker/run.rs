//! One claimed job through the sandbox: a job stopped before it started is
//! put back or cancelled; otherwise it runs in the runner (a fresh
//! iteration) with its schedule's checkpoint and its attempt's span, and
//! its outcome becomes a transition (`retry_policy::decide`) with the
//! run's effects and what is kept of the attempt, handed to the finisher.

use super::pace::RunPace;
use super::fair_share::Held;
use super::retry_policy::{StopReason, decide};
use super::runner::Ran;
use super::state::{InFlight, Shared};
use crate::queue::{Finish, Job, Millis, Transition};
use crate::sandbox::{JobInput, Report, StopSignal};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Runs one claimed job in its slot; `_holds` (the slot, the in-flight
/// count, the fair-share count) are let go when the run has ended.
pub(super) async fn run_job(shared: Arc<Shared>, job: Job, stop: StopSignal, _holds: (OwnedSemaphorePermit, InFlight, Option<Held>), pace: Arc<RunPace>) {
    let lease = job.lease();
    // Stopped between the claim and this start: never started at all.
    let stopped = shared.running.lock().expect("poisoned").get(&job.id).and_then(|r| r.reason);
    if stopped == Some(StopReason::LeaseLost) {
        shared.running.lock().expect("poisoned").remove(&job.id);
        tracing::warn!(job = job.id, "lease lost before the job started; another host has it, nothing written");
        return;
    }
    let cancelled = job.cancel_requested || stopped == Some(StopReason::CancelRequested);
    if stopped == Some(StopReason::Shutdown) || cancelled {
        shared.running.lock().expect("poisoned").remove(&job.id);
        if cancelled {
            let error = crate::queue::AttemptError {
                attempt: job.attempt,
                at: shared.clock.now(),
                outcome: "cancelled".into(),
                message: "cancelled before it started".into(),
            };
            shared.unwritten.lock().expect("poisoned").insert(job.id, lease);
            shared.send_finish(Finish { lease, transition: Transition::Cancel { error }, ran_version: None, attempt: None });
        } else {
            shared.put_back(&job);
        }
        return;
    }
    let progress = shared.running.lock().expect("poisoned").get(&job.id).map(|r| r.progress.clone()).unwrap_or_default();
    let kind = shared.runner.kind(&job.kind);
    // A schedule's tick gets the result of the last completed tick.
    let checkpoint = match kind.as_ref().map(|k| &k.trigger) {
        Some(crate::plugin::Trigger::Schedule(_)) => match shared.store.schedule_checkpoint(&job.kind).await {
            Ok(checkpoint) => checkpoint,
            Err(e) => {
                tracing::warn!(job = job.id, "cannot read the schedule's checkpoint ({e}); the tick runs without it");
                None
            }
        },
        _ => None,
    };
    let span = shared.config.tracing.attempt(
        job.traceparent.as_deref(),
        &crate::telemetry::JobAttempt { id: job.id, kind: &job.kind, queue: &job.queue, attempt: job.attempt, max_attempts: job.max_attempts },
        crate::queue::system_time(job.attempted_at.unwrap_or_else(|| shared.clock.now())),
    );
    let input = JobInput {
        id: job.id.to_string(),
        kind: job.kind.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload: job.payload.clone(),
        checkpoint,
        progress,
        traceparent: span.traceparent().map(str::to_string),
    };
    let started = shared.clock.now();
    shared.metrics.job_started(&job.kind, started - job.scheduled_at);
    let began = std::time::Instant::now();
    let Ran { mut report, version } = shared.runner.run(&input, &stop).await;
    pace.record(began.elapsed(), &report);
    let reason = shared.running.lock().expect("poisoned").remove(&job.id).and_then(|r| r.reason);
    shared.metrics.job_finished(&job.kind, &report);
    shared.run_minutes.record(shared.clock.now(), &job.queue, &job.kind, started - job.scheduled_at, !report.outcome.is_ok());
    let policy = kind.map(|k| k.retry).unwrap_or_default();
    let now = shared.clock.now();
    match decide(&job, &report.outcome, reason, &policy, now) {
        Some(mut transition) => {
            if let Transition::Complete { effects, .. } = &mut transition {
                super::effects::for_completion(&shared, &job, &mut report, span.traceparent(), now, effects);
            }
            log_run_end(&job, &report, &transition);
            end_span(span, &job, &report, &transition, started, now);
            let attempt = shared.config.attempts.record.then(|| super::finish::attempt_run(&shared, &mut report, &transition, started, now));
            shared.unwritten.lock().expect("poisoned").insert(job.id, lease);
            shared.send_finish(Finish { lease, transition, ran_version: version, attempt });
        }
        None => tracing::warn!(job = job.id, "lease lost while running; another host has the job, nothing written"),
    }
}

/// Ends an attempt's span with how it ended and what it cost.
fn end_span(span: crate::telemetry::AttemptSpan, job: &Job, report: &Report, transition: &Transition, started_at: Millis, ended_at: Millis) {
    let error = match transition {
        Transition::RetryAt { error, .. } | Transition::Discard { error } | Transition::Cancel { error } => Some(error.message.as_str()),
        Transition::Complete { .. } | Transition::Snooze { .. } => None,
    };
    let end = crate::telemetry::AttemptEnd {
        outcome: report.outcome.name(),
        error,
        run_started_at: crate::queue::system_time(started_at),
        run_ended_at: crate::queue::system_time(started_at) + report.duration,
        duration: report.duration,
        fuel_used: report.fuel_used,
        peak_memory_bytes: report.peak_memory_bytes,
        http_requests: report.http.requests,
        queue_delay_ms: started_at - job.scheduled_at,
    };
    span.end(&end, crate::queue::system_time(ended_at));
}

/// One line per run end, Sidekiq-style: what ran, how it ended, what it
/// cost, and what happens next. Failures that will be retried are WARN,
/// dead letters ERROR.
fn log_run_end(job: &Job, report: &Report, transition: &Transition) {
    let duration_ms = format!("{:.2}", report.duration.as_secs_f64() * 1000.0);
    let (fuel, memory_bytes, outcome) = (report.fuel_used, report.peak_memory_bytes, report.outcome.name());
    let http_requests = report.http.requests;
    let error = report.outcome.error_message().unwrap_or_default();
    macro_rules! line {
        ($level:ident, $($rest:tt)*) => {
            tracing::$level!(kind = %job.kind, job = job.id, attempt = job.attempt, %outcome, %duration_ms, fuel, memory_bytes, http_requests, $($rest)*)
        };
    }
    match transition {
        Transition::Complete { .. } => line!(info, "job completed"),
        Transition::RetryAt { at, .. } => {
            line!(warn, retry_at = %crate::queue::to_rfc3339(*at), "job failed; it will be retried: {error}")
        }
        Transition::Discard { .. } => line!(error, "job dead-lettered: {error}"),
        Transition::Snooze { .. } => line!(info, "job put back unfinished: the host is stopping"),
        Transition::Cancel { .. } => line!(info, "job cancelled"),
    }
}
