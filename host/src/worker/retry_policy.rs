//! What happens to a job after each outcome: the one place where the retry
//! policy and its constants live.

use crate::plugin::RetryPolicy;
use crate::queue::{AttemptError, Job, Millis, Transition, millis_after};
use crate::sandbox::Outcome;
use std::time::Duration;

/// Each delay is spread over ±JITTER of itself, so jobs that failed together
/// (an upstream outage) do not all come back in the same millisecond.
pub const JITTER: f64 = 0.25;
/// Doubling per attempt: after 10 failures the delay is 2^10 × the initial
/// one, long enough that the policy's ceiling takes over.
pub const BACKOFF_FACTOR: f64 = 2.0;

/// Why the host stopped a run itself (if it did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The host is shutting down: the job goes back, its attempt uncounted.
    Shutdown,
    /// Someone cancelled the job.
    CancelRequested,
    /// Another host holds the job now: write nothing.
    LeaseLost,
}

/// The delay before retry number `attempt` (1 = the first retry): exponential
/// from the policy's initial backoff, with jitter, and never over its
/// maximum (the cap comes after the jitter, so `max_backoff_ms` holds).
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(62) as i32;
    let max = policy.max_backoff_ms as f64;
    let base = (policy.initial_backoff_ms as f64 * BACKOFF_FACTOR.powi(exponent)).min(max);
    let jittered = base * (1.0 + JITTER * (2.0 * fastrand::f64() - 1.0));
    Duration::from_millis(jittered.clamp(0.0, max) as u64)
}

/// The transition for a finished run; `None` when nothing may be written
/// (the lease is lost).
pub fn decide(job: &Job, outcome: &Outcome, stopped: Option<StopReason>, policy: &RetryPolicy, now: Millis) -> Option<Transition> {
    let error = || AttemptError {
        attempt: job.attempt,
        at: now,
        outcome: outcome.name().to_string(),
        message: outcome.error_message().unwrap_or_default(),
    };
    let retry_later = |requested: Option<Duration>| {
        if job.attempt >= job.max_attempts {
            let mut error = error();
            error.message = format!("{} (attempt {} of {}: no attempts left)", error.message, job.attempt, job.max_attempts);
            return Transition::Discard { error };
        }
        // A plugin may ask for its own delay, but not for more than its
        // policy's longest backoff.
        let ceiling = Duration::from_millis(policy.max_backoff_ms);
        let delay = requested.map_or_else(|| backoff(policy, job.attempt), |asked| asked.min(ceiling));
        Transition::RetryAt { at: millis_after(now, delay), error: error() }
    };
    Some(match (outcome, stopped) {
        (_, Some(StopReason::LeaseLost)) => return None,
        // The run's children are the caller's to add (they are its effects).
        (Outcome::Ok(result), _) => Transition::Complete { result: result.clone(), effects: Default::default() },
        // A requested cancel wins over however else the run ended (its own
        // timeout, a trap, a retry it asked for): the job is not run again.
        (_, Some(StopReason::CancelRequested)) => Transition::Cancel { error: error() },
        (Outcome::Cancelled { .. }, Some(StopReason::Shutdown)) => Transition::Snooze { at: now },
        (Outcome::Cancelled { .. }, _) => Transition::Cancel { error: error() },
        // A run that failed while the host was stopping it gets another go.
        (_, Some(StopReason::Shutdown)) => Transition::Snooze { at: now },
        (Outcome::Retry { delay, .. }, _) => retry_later(*delay),
        (Outcome::TimedOut | Outcome::OutOfFuel | Outcome::OutOfMemory | Outcome::Trapped { .. }, _) => retry_later(None),
        (Outcome::InvalidInput(_) | Outcome::Fatal(_) | Outcome::OutputTooLarge { .. }, _) => {
            Transition::Discard { error: error() }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::JobState;

    fn job(attempt: u32, max_attempts: u32) -> Job {
        Job {
            id: 1,
            kind: "k".into(),
            queue: "default".into(),
            priority: 0,
            payload: vec![],
            state: JobState::Running,
            attempt,
            max_attempts,
            scheduled_at: 0,
            unique_key: None,
            errors: vec![],
            result: None,
            lease_token: 1,
            leased_by: None,
            lease_expires_at: None,
            cancel_requested: false,
            created_at: 0,
            attempted_at: None,
            finalized_at: None,
            plugin_version: None,
            parent_id: None,
            concurrency_key: None,
            traceparent: None,
            progress: None,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy { max_attempts: 5, initial_backoff_ms: 1000, max_backoff_ms: 60_000 };

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_is_capped() {
        for attempt in 1..=5u32 {
            let nominal = 1000.0 * 2f64.powi(attempt as i32 - 1);
            for _ in 0..50 {
                let d = backoff(&POLICY, attempt).as_millis() as f64;
                assert!(d >= nominal * (1.0 - JITTER) - 1.0 && d <= nominal * (1.0 + JITTER) + 1.0, "attempt {attempt}: {d}");
            }
        }
        for _ in 0..200 {
            let capped = backoff(&POLICY, 40).as_millis();
            assert!((45_000..=60_000).contains(&capped), "jitter stays under max_backoff_ms: {capped}");
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(&POLICY, 3)).collect();
        assert!(spread.len() > 1, "jitter spreads retries");
    }

    #[test]
    fn outcomes_map_to_transitions() {
        let now = 10_000;
        let t = |outcome: Outcome, attempt, stopped| decide(&job(attempt, 3), &outcome, stopped, &POLICY, now);
        assert!(matches!(t(Outcome::Ok(b"r".to_vec()), 1, None), Some(Transition::Complete { .. })));
        for failing in [Outcome::TimedOut, Outcome::OutOfFuel, Outcome::OutOfMemory, Outcome::Trapped { trap: None, message: "x".into() }] {
            match t(failing.clone(), 1, None) {
                Some(Transition::RetryAt { at, error }) => {
                    assert!(at >= now + 750 && at <= now + 1250, "{at}");
                    assert_eq!(error.outcome, failing.name());
                }
                other => panic!("{failing:?} → {other:?}"),
            }
            assert!(matches!(t(failing, 3, None), Some(Transition::Discard { .. })), "no attempts left → dead");
        }
        let asked = Outcome::Retry { message: "later".into(), delay: Some(Duration::from_secs(42)) };
        assert!(matches!(t(asked, 1, None), Some(Transition::RetryAt { at: 52_000, .. })), "the plugin's delay wins");
        for absurd in [10u64.pow(15), 1 << 63, u64::MAX] {
            let asked = Outcome::Retry { message: "never".into(), delay: Some(Duration::from_millis(absurd)) };
            assert!(
                matches!(t(asked, 1, None), Some(Transition::RetryAt { at: 70_000, .. })),
                "{absurd} ms is capped at the policy's max_backoff_ms"
            );
        }
        for dead_at_once in [Outcome::InvalidInput("x".into()), Outcome::Fatal("x".into()), Outcome::OutputTooLarge { size: 2, limit: 1 }] {
            assert!(matches!(t(dead_at_once, 1, None), Some(Transition::Discard { .. })));
        }
        assert!(matches!(t(Outcome::Cancelled { interrupted: false }, 1, Some(StopReason::CancelRequested)), Some(Transition::Cancel { .. })));
        assert!(matches!(t(Outcome::Cancelled { interrupted: true }, 2, Some(StopReason::Shutdown)), Some(Transition::Snooze { at: 10_000 })));
        assert!(matches!(t(Outcome::TimedOut, 1, Some(StopReason::Shutdown)), Some(Transition::Snooze { .. })));
        for ended_otherwise in [Outcome::TimedOut, Outcome::OutOfFuel, Outcome::Retry { message: "x".into(), delay: None }, Outcome::Fatal("x".into())] {
            assert!(
                matches!(t(ended_otherwise.clone(), 1, Some(StopReason::CancelRequested)), Some(Transition::Cancel { .. })),
                "a requested cancel wins over {ended_otherwise:?}"
            );
        }
        assert_eq!(t(Outcome::Ok(vec![]), 1, Some(StopReason::LeaseLost)), None);
        assert!(matches!(t(Outcome::Ok(vec![]), 1, Some(StopReason::Shutdown)), Some(Transition::Complete { .. })), "a finished run counts");
    }
}
