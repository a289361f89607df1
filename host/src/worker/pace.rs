//! A queue's pace: what its recent runs cost (how long they took, a moving
//! average), which sizes how far ahead of its free slots it claims, and
//! how many light runs came in a row, which decides how wide it runs.
//! Recorded by `run` as each run ends, read by `claim`.

use super::config::{LIGHT_RUN_FUEL, LIGHT_RUN_MEMORY, LIGHT_STREAK, QueueConfig};
use crate::sandbox::{Outcome, Report};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// A queue claims ahead of its free slots at most what they get through in
/// this long (see `claim::queue_loop`): the most a job claimed ahead waits here.
pub const LOOKAHEAD: Duration = Duration::from_millis(20);

/// What a queue's recent runs cost: how long they took (a moving
/// average, each run weighing 1/8), which sizes how far ahead of its free
/// slots it claims; and how many light runs came in a row, which decides
/// how wide it runs.
#[derive(Debug, Default)]
pub(super) struct RunPace {
    nanos: AtomicU64,
    light_streak: AtomicU32,
}

impl RunPace {
    pub(super) fn record(&self, took: Duration, report: &Report) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.nanos.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.nanos.store(new.max(1), Ordering::Relaxed);
        // A run that hit a budget is not light, whatever it used: a timeout
        // may be the width itself slicing the cores too thin.
        let over_budget = matches!(report.outcome, Outcome::TimedOut | Outcome::OutOfFuel | Outcome::OutOfMemory);
        if report.fuel_used < LIGHT_RUN_FUEL && report.peak_memory_bytes < LIGHT_RUN_MEMORY && !over_budget {
            let streak = self.light_streak.load(Ordering::Relaxed);
            self.light_streak.store(streak.saturating_add(1).min(LIGHT_STREAK), Ordering::Relaxed);
        } else {
            self.light_streak.store(0, Ordering::Relaxed);
        }
    }

    /// How many of `queue`'s jobs may run at once now.
    pub(super) fn width(&self, queue: &QueueConfig) -> usize {
        if self.light_streak.load(Ordering::Relaxed) >= LIGHT_STREAK { queue.light_concurrency } else { queue.concurrency }
    }

    /// Jobs worth claiming ahead for `slots` slots: what they get through
    /// in [`LOOKAHEAD`] at the pace seen so far, at most `cap`; none
    /// before a run has been seen.
    pub(super) fn ahead(&self, slots: usize, cap: usize) -> usize {
        let nanos = self.nanos.load(Ordering::Relaxed);
        if nanos == 0 {
            return 0;
        }
        let per_slot = u64::try_from(LOOKAHEAD.as_nanos()).unwrap_or(u64::MAX) / nanos;
        per_slot.saturating_mul(slots as u64).min(cap as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(fuel: u64, memory: u64) -> Report {
        Report { fuel_used: fuel, peak_memory_bytes: memory, ..Report::without_cost(Outcome::Ok(Vec::new())) }
    }

    #[test]
    fn nothing_is_claimed_ahead_before_a_run_is_seen_or_for_slow_jobs() {
        let pace = RunPace::default();
        assert_eq!(pace.ahead(8, 256), 0, "no run seen yet");
        pace.record(Duration::from_millis(1), &ran(0, 0));
        assert_eq!(pace.ahead(8, 256), 8 * 20, "what 8 slots do in 20 ms at 1 ms a job");
        assert_eq!(pace.ahead(8, 64), 64, "capped at the claim batch");
        let slow = RunPace::default();
        slow.record(Duration::from_millis(500), &ran(0, 0));
        assert_eq!(slow.ahead(512, 256), 0, "a job of half a second is never claimed ahead");
        // The average follows the jobs: after a run of slow ones, no lookahead.
        for _ in 0..40 {
            pace.record(Duration::from_millis(100), &ran(0, 0));
        }
        assert_eq!(pace.ahead(8, 256), 0);
    }

    #[test]
    fn a_queue_widens_after_a_streak_of_light_runs_and_narrows_at_one_heavy_run() {
        let queue = QueueConfig { name: "q".into(), concurrency: 8, light_concurrency: 128 };
        let pace = RunPace::default();
        assert_eq!(pace.width(&queue), 8, "nothing seen yet: narrow");
        for _ in 0..LIGHT_STREAK - 1 {
            pace.record(Duration::from_micros(50), &ran(40_000, 1 << 20));
        }
        assert_eq!(pace.width(&queue), 8);
        pace.record(Duration::from_micros(50), &ran(40_000, 1 << 20));
        assert_eq!(pace.width(&queue), 128);
        pace.record(Duration::from_micros(50), &ran(LIGHT_RUN_FUEL, 1 << 20));
        assert_eq!(pace.width(&queue), 8, "one CPU-heavy run narrows it");
        for _ in 0..LIGHT_STREAK {
            pace.record(Duration::from_micros(50), &ran(40_000, 1 << 20));
        }
        pace.record(Duration::from_micros(50), &ran(40_000, LIGHT_RUN_MEMORY));
        assert_eq!(pace.width(&queue), 8, "so does one memory-heavy run");
        for _ in 0..LIGHT_STREAK {
            pace.record(Duration::from_micros(50), &ran(40_000, 1 << 20));
        }
        pace.record(Duration::from_millis(100), &Report::without_cost(Outcome::TimedOut));
        assert_eq!(pace.width(&queue), 8, "and one that timed out, however little it used");
    }
}
