//! Schedules: the `PeriodicTimer` service. Each scheduled plugin has a task
//! that turns due ticks into jobs keyed by schedule and tick time
//! ([`schedule_key`](crate::queue::schedule_key)). Every host runs these tasks; the store's unique key,
//! not a leader, makes each tick one job. The tick then runs like any
//! queued job (lease, retries, dead letter), with the result of the last
//! completed tick as its checkpoint.
//!
//! What to fire is decided by [`plan`], a pure function of the schedule,
//! its policies, what the store says and the time: that is where overlap
//! and misfire live, and what the tests drive with an injected clock.

use super::handle::TriggerHandle;
use crate::plugin::trigger::{Misfire, Overlap, ScheduleTrigger, When};
use crate::queue::{Millis, ScheduleState, to_rfc3339};
use std::time::Duration;
use tokio::sync::watch;

/// A tick fired this late (or with another tick missed before it) is a
/// misfire, handled by the misfire policy.
pub const MISFIRE_GRACE_MS: Millis = 1_000;
/// How often a tick held back by `overlap = "queue"` checks whether the
/// previous run has ended.
pub const OVERLAP_RECHECK_MS: Millis = 100;
/// How long to wait before trying again when the store does not answer.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// What to do now, and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The tick to turn into a job now.
    pub fire: Option<Millis>,
    /// The newest tick this host has decided on (fired or dropped); ticks
    /// up to it are not considered again.
    pub decided_through: Option<Millis>,
    /// When to plan again.
    pub wake_at: Millis,
    /// Why a due tick was not fired, or that a missed one was.
    pub note: Option<&'static str>,
}

/// Decides what a schedule does at `now`.
///
/// - A tick is due when it is after the newest tick in the store (or, for
///   a schedule that never ran, after `started_at`) and after
///   `decided_through`, and not after `now`. Only the latest due tick is
///   ever fired: missed ticks never pile up.
/// - It is a misfire when another due tick came before it or it is more
///   than [`MISFIRE_GRACE_MS`] late: `misfire = "skip"` drops it,
///   `"run-once"` fires it.
/// - While a run of the schedule is still unfinished, `overlap = "skip"`
///   drops the tick, `"queue"` holds it until that run ends, `"allow"`
///   fires it.
pub fn plan(
    when: &When,
    overlap: Overlap,
    misfire: Misfire,
    store: ScheduleState,
    decided_through: Option<Millis>,
    started_at: Millis,
    now: Millis,
) -> Plan {
    let baseline = store.last_tick.max(decided_through).unwrap_or(started_at - 1);
    let wake_after = |after: Millis| when.next_after(after).unwrap_or(now + 60_000);
    let Some(latest) = when.latest_at_or_before(now).filter(|t| *t > baseline) else {
        return Plan { fire: None, decided_through, wake_at: wake_after(baseline.max(now)), note: None };
    };
    let first_due = when.next_after(baseline).unwrap_or(latest);
    let late = first_due < latest || now - latest > MISFIRE_GRACE_MS;
    let drop = |note| Plan { fire: None, decided_through: Some(latest), wake_at: wake_after(now), note: Some(note) };
    if late && misfire == Misfire::Skip {
        return drop("missed tick dropped (misfire = \"skip\")");
    }
    if store.active {
        match overlap {
            Overlap::Skip => return drop("the previous run is still going; tick dropped (overlap = \"skip\")"),
            Overlap::Queue => {
                return Plan {
                    fire: None,
                    decided_through,
                    wake_at: now + OVERLAP_RECHECK_MS,
                    note: Some("the previous run is still going; tick waits (overlap = \"queue\")"),
                };
            }
            Overlap::Allow => {}
        }
    }
    Plan {
        fire: Some(latest),
        decided_through: Some(latest),
        wake_at: wake_after(now),
        note: late.then_some("missed tick runs once (misfire = \"run-once\")"),
    }
}

/// Fires the ticks of the schedule `kind` until `stop` turns true.
pub(super) async fn run_schedule(handle: TriggerHandle, kind: String, schedule: ScheduleTrigger, mut stop: watch::Receiver<bool>) {
    let clock = handle.clock().clone();
    let started_at = clock.now();
    let mut decided: Option<Millis> = None;
    let mut last_note: Option<(&'static str, Millis)> = None;
    tracing::info!(plugin = %kind, when = %schedule.when, overlap = %crate::plugin::trigger::as_written(&schedule.overlap),
        misfire = %crate::plugin::trigger::as_written(&schedule.misfire), "schedule started");
    loop {
        if *stop.borrow() {
            break;
        }
        let wait = match handle.store().schedule_state(&kind).await {
            Err(e) => {
                tracing::error!(plugin = %kind, "schedule: the store does not answer: {e}");
                STORE_RETRY
            }
            Ok(state) => {
                let now = clock.now();
                let plan = plan(&schedule.when, schedule.overlap, schedule.misfire, state, decided, started_at, now);
                decided = plan.decided_through;
                if let (Some(note), tick) = (plan.note, plan.fire.or(plan.decided_through).unwrap_or(now)) {
                    if last_note != Some((note, tick)) {
                        tracing::info!(plugin = %kind, tick = %to_rfc3339(tick), "schedule: {note}");
                        last_note = Some((note, tick));
                    }
                }
                if let Some(tick) = plan.fire {
                    fire(&handle, &kind, tick).await;
                }
                Duration::from_millis((plan.wake_at - clock.now()).max(0) as u64)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    tracing::info!(plugin = %kind, "schedule stopped");
}

async fn fire(handle: &TriggerHandle, kind: &str, tick: Millis) {
    match handle.fire_tick(kind, tick).await {
        Ok(inserted) if inserted.created => {
            tracing::info!(plugin = %kind, tick = %to_rfc3339(tick), job = inserted.job.id, "schedule tick fired");
        }
        Ok(inserted) => tracing::debug!(plugin = %kind, tick = %to_rfc3339(tick), job = inserted.job.id, "tick already fired by another host"),
        Err(e) => tracing::error!(plugin = %kind, tick = %to_rfc3339(tick), "schedule tick not stored: {e}; the next plan tries again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::trigger::parse_cron;
    use jiff::tz::TimeZone;

    const S: Millis = 1_000;
    /// 2026-11-22T10:00:00Z, a multiple of every interval used here.
    const T0: Millis = 1_795_341_600_000;

    fn every(secs: u64) -> When {
        When::Interval(Duration::from_secs(secs))
    }

    fn idle(last_tick: Option<Millis>) -> ScheduleState {
        ScheduleState { last_tick, active: false }
    }

    fn busy(last_tick: Millis) -> ScheduleState {
        ScheduleState { last_tick: Some(last_tick), active: true }
    }

    /// Runs `plan` the way the scheduler task does, against a store that
    /// records what fired and an injected clock, from `from` to `to`.
    struct Sim {
        when: When,
        overlap: Overlap,
        misfire: Misfire,
        started_at: Millis,
        fired: Vec<Millis>,
        /// When each fired tick started to run.
        fired_at: Vec<Millis>,
        decided: Option<Millis>,
        /// How long each fired run takes.
        run_for: Millis,
    }

    impl Sim {
        fn new(when: When, started_at: Millis) -> Self {
            Self { when, overlap: Overlap::Skip, misfire: Misfire::RunOnce, started_at, fired: vec![], fired_at: vec![], decided: None, run_for: 0 }
        }

        fn state(&self, now: Millis) -> ScheduleState {
            let active = self.fired_at.last().is_some_and(|at| now < at + self.run_for);
            ScheduleState { last_tick: self.fired.last().copied(), active }
        }

        /// Wakes at each planned time (or every `step` at most) until `to`.
        fn run(&mut self, to: Millis, step: Millis) -> &[Millis] {
            let mut now = self.started_at;
            while now <= to {
                let plan = plan(&self.when, self.overlap, self.misfire, self.state(now), self.decided, self.started_at, now);
                self.decided = plan.decided_through;
                if let Some(tick) = plan.fire {
                    self.fired.push(tick);
                    self.fired_at.push(now);
                }
                now = plan.wake_at.min(now + step).max(now + 1);
            }
            &self.fired
        }
    }

    #[test]
    fn an_interval_fires_every_tick_once_from_start() {
        let mut sim = Sim::new(every(10), T0 + 3 * S);
        let fired = sim.run(T0 + 60 * S, 60 * S).to_vec();
        assert_eq!(fired, (1..=6).map(|i| T0 + i * 10 * S).collect::<Vec<_>>());
    }

    #[test]
    fn waking_late_within_the_grace_still_fires_the_tick() {
        let p = plan(&every(10), Overlap::Skip, Misfire::Skip, idle(Some(T0)), None, T0 - S, T0 + 10 * S + 400);
        assert_eq!(p.fire, Some(T0 + 10 * S));
        assert_eq!(p.wake_at, T0 + 20 * S);
        assert_eq!(p.note, None);
    }

    #[test]
    fn nothing_due_sleeps_until_the_next_tick() {
        let p = plan(&every(10), Overlap::Skip, Misfire::RunOnce, idle(Some(T0)), Some(T0), T0, T0 + 4 * S);
        assert_eq!((p.fire, p.wake_at), (None, T0 + 10 * S));
        let never_ran = plan(&every(10), Overlap::Skip, Misfire::RunOnce, idle(None), None, T0 + 2 * S, T0 + 2 * S);
        assert_eq!((never_ran.fire, never_ran.wake_at), (None, T0 + 10 * S), "a new schedule does not fire a past tick");
    }

    #[test]
    fn after_downtime_run_once_fires_the_latest_missed_tick_once() {
        // Last tick 10:00:00, host back at 10:05:03: 30 ticks were missed.
        let now = T0 + 303 * S;
        let p = plan(&every(10), Overlap::Skip, Misfire::RunOnce, idle(Some(T0)), None, now, now);
        assert_eq!(p.fire, Some(T0 + 300 * S), "only the latest");
        assert!(p.note.unwrap().contains("run-once"));
        let again = plan(&every(10), Overlap::Skip, Misfire::RunOnce, idle(Some(T0 + 300 * S)), p.decided_through, now, now + 1);
        assert_eq!(again.fire, None, "and not again");
        assert_eq!(again.wake_at, T0 + 310 * S);
    }

    #[test]
    fn after_downtime_skip_drops_missed_ticks_and_waits_for_the_next() {
        let now = T0 + 303 * S;
        let p = plan(&every(10), Overlap::Skip, Misfire::Skip, idle(Some(T0)), None, now, now);
        assert_eq!(p.fire, None);
        assert_eq!(p.decided_through, Some(T0 + 300 * S));
        assert_eq!(p.wake_at, T0 + 310 * S);
        let next = plan(&every(10), Overlap::Skip, Misfire::Skip, idle(Some(T0)), p.decided_through, now, T0 + 310 * S);
        assert_eq!(next.fire, Some(T0 + 310 * S), "the next tick on time fires");
    }

    #[test]
    fn overlap_skip_drops_ticks_while_a_run_is_going() {
        let mut sim = Sim::new(every(10), T0 - S);
        sim.run_for = 25 * S; // each run spans two more ticks
        let fired = sim.run(T0 + 60 * S, S).to_vec();
        assert_eq!(fired, [T0, T0 + 30 * S, T0 + 60 * S], "the ticks during a run are dropped");
    }

    #[test]
    fn overlap_queue_runs_the_held_tick_when_the_previous_ends() {
        let p = plan(&every(10), Overlap::Queue, Misfire::RunOnce, busy(T0), Some(T0), T0, T0 + 10 * S);
        assert_eq!((p.fire, p.decided_through), (None, Some(T0)), "held, not dropped");
        assert_eq!(p.wake_at, T0 + 10 * S + OVERLAP_RECHECK_MS);
        let mut sim = Sim::new(every(10), T0 - S);
        sim.overlap = Overlap::Queue;
        sim.run_for = 15 * S;
        let fired = sim.run(T0 + 50 * S, 100).to_vec();
        // Run 1: 10:00:00-15; tick :10 waits, runs at :15 until :30; tick
        // :20 waits and collapses into :30, which runs on time until :45;
        // tick :40 waits and runs at :45.
        assert_eq!(fired, [T0, T0 + 10 * S, T0 + 30 * S, T0 + 40 * S]);
    }

    #[test]
    fn overlap_allow_fires_beside_a_running_tick() {
        let p = plan(&every(10), Overlap::Allow, Misfire::RunOnce, busy(T0), Some(T0), T0, T0 + 10 * S);
        assert_eq!(p.fire, Some(T0 + 10 * S));
    }

    #[test]
    fn two_hosts_planning_the_same_tick_both_pick_it() {
        // Each host plans from the store; the unique key makes one job.
        let a = plan(&every(1), Overlap::Skip, Misfire::RunOnce, idle(Some(T0)), None, T0 - 5 * S, T0 + S + 3);
        let b = plan(&every(1), Overlap::Skip, Misfire::RunOnce, idle(Some(T0)), None, T0 - 9 * S, T0 + S + 40);
        assert_eq!((a.fire, b.fire), (Some(T0 + S), Some(T0 + S)));
        // Once A's tick is stored, B (late) finds nothing to fire.
        let b_late = plan(&every(1), Overlap::Skip, Misfire::RunOnce, busy(T0 + S), None, T0 - 9 * S, T0 + S + 90);
        assert_eq!(b_late.fire, None);
    }

    #[test]
    fn a_cron_schedule_in_a_time_zone_across_daylight_saving() {
        // Every day at 02:30 New York time, through the spring-forward day.
        let when = When::Cron {
            line: "30 2 * * *".into(),
            cron: parse_cron("30 2 * * *").unwrap(),
            zone: "America/New_York".into(),
            tz: TimeZone::get("America/New_York").unwrap(),
        };
        let start = "2026-03-06T12:00:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let end = "2026-03-10T12:00:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let mut sim = Sim::new(when, start);
        let fired: Vec<String> = sim
            .run(end, 3_600 * S)
            .iter()
            .map(|t| jiff::Timestamp::from_millisecond(*t).unwrap().to_string())
            .collect();
        assert_eq!(
            fired,
            ["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z", "2026-03-10T06:30:00Z"],
            "02:30 EST; 03:00 EDT on the day 02:30 does not exist; then 02:30 EDT"
        );
    }
}
