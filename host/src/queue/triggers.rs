//! What the store keeps for schedules and loops: a tick's unique key
//! (one job per tick across hosts), a schedule's last tick, and a loop's
//! lease and checkpoint.

use super::job::{Job, Millis};

/// The unique key of a schedule's tick: one job per schedule and tick time,
/// so however many hosts fire the tick, the store keeps one. Fixed-width
/// time, so keys sort by tick.
pub fn schedule_key(kind: &str, tick: Millis) -> String {
    format!("schedule:{kind}:{tick:015}")
}

/// The key range `[start, end)` holding every tick of `kind`.
pub fn schedule_key_range(kind: &str) -> (String, String) {
    (format!("schedule:{kind}:"), format!("schedule:{kind};"))
}

/// Why a schedule's newest tick is not deleted by hand.
pub const SCHEDULE_TICK_KEPT: &str = "it is its schedule's newest tick, which is how the schedule knows where it got to";

/// The job's unique key, when it is one of its kind's schedule ticks.
pub fn schedule_tick_key(job: &Job) -> Option<&str> {
    let (start, end) = schedule_key_range(&job.kind);
    job.unique_key.as_deref().filter(|k| (start.as_str()..end.as_str()).contains(k))
}

/// The tick time inside a schedule key.
pub fn tick_of_key(key: &str) -> Option<Millis> {
    key.rsplit(':').next()?.parse().ok()
}

/// Where a schedule stands in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScheduleState {
    /// The newest tick that became a job (whatever happened to it since).
    pub last_tick: Option<Millis>,
    /// Whether any of its ticks is waiting or running.
    pub active: bool,
}

/// Take a continuous loop for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopClaim {
    pub name: String,
    pub host: String,
    pub lease_ms: i64,
}

/// A host's hold on a loop: only it may store the loop's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopLease {
    pub name: String,
    /// Fencing token: each acquire increments it.
    pub token: i64,
    /// The last stored checkpoint: the next pass's input.
    pub checkpoint: Option<Vec<u8>>,
    /// Passes that stored a checkpoint so far.
    pub passes: u64,
}

/// Store a loop pass's checkpoint (or, with `None`, only renew the lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopSave {
    pub name: String,
    pub token: i64,
    pub checkpoint: Option<Vec<u8>>,
    pub lease_ms: i64,
}

/// A loop as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopState {
    pub name: String,
    pub checkpoint: Option<Vec<u8>>,
    pub passes: u64,
    pub owner: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub updated_at: Millis,
}
