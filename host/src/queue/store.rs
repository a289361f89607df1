//! The [`JobStore`] trait: the database boundary, as state transitions.

use super::attempt::{Attempt, AttemptRun, LogEntry, Progress};
use super::job::{AttemptError, Job, JobId, JobState, Lease, Millis};
use async_trait::async_trait;

/// A job to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub kind: String,
    pub queue: String,
    pub priority: i32,
    pub payload: Vec<u8>,
    pub max_attempts: u32,
    /// `None`: due now (state `available`); a future time: `scheduled`.
    pub scheduled_at: Option<Millis>,
    pub unique_key: Option<String>,
    /// The job whose run enqueued this one.
    pub parent_id: Option<JobId>,
    /// Groups jobs of one kind (a customer id, say) that its
    /// `[throttle] max_per_key` lets run only so many at once.
    pub concurrency_key: Option<String>,
    /// The W3C `traceparent` its attempts' spans are children of (checked
    /// by the caller: the store keeps what it is given).
    pub traceparent: Option<String>,
}

/// The queue every job lands in unless it names another.
pub const DEFAULT_QUEUE: &str = "default";

impl NewJob {
    pub fn new(kind: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            kind: kind.into(),
            queue: DEFAULT_QUEUE.to_string(),
            priority: 0,
            payload: payload.into(),
            max_attempts: 1,
            scheduled_at: None,
            unique_key: None,
            parent_id: None,
            concurrency_key: None,
            traceparent: None,
        }
    }
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub job: Job,
    /// False when a job with the same unique key already existed: `job` is that one.
    pub created: bool,
}

/// Claim up to `limit` due jobs of `queue` for `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimParams {
    pub queue: String,
    pub limit: usize,
    /// Names the claiming host, for operators and `leased_by`.
    pub host: String,
    /// How long the lease lasts without a heartbeat.
    pub lease_ms: i64,
    /// Fair share: up to `want` jobs of each tenant first (best first
    /// within each); then what tenants left unused (they had fewer due),
    /// split between the others by weight; then more of each in turn,
    /// none past its limits (see [`ClaimRounds`]). Empty: the best due
    /// jobs, whoever's.
    pub shares: Vec<ClaimShare>,
    /// The kinds whose `[throttle]` the claim holds, across every host of
    /// the store (see [`KindGate`]); kinds not named are not held.
    pub kinds: Vec<KindLimits>,
}

/// A kind's own limits, from its manifest's `[throttle]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindLimits {
    pub kind: String,
    /// Jobs of one concurrency key running at once (jobs with no key are
    /// not held by it).
    pub max_per_key: Option<u32>,
    /// Its jobs started per unit of time.
    pub rate: Option<StartRate>,
}

/// The name a kind's start bucket is kept under (beside tenants', see
/// [`rate_bucket_name`]).
pub fn kind_bucket_name(kind: &str) -> String {
    format!("kind:{kind}")
}

/// A kind and a concurrency key as one string, as the stores compare them.
pub fn kind_key(kind: &str, key: &str) -> String {
    format!("{kind}\u{1f}{key}")
}

/// What a claim lets through of the kinds it holds: each kind's bucket,
/// and each of its keys' room under `max_per_key`. The store fills it with
/// what it read under its locks, shows each candidate job to
/// [`admit`](Self::admit) in the claim's order, and leaves out of its next
/// look the kinds and keys [`excluded`](Self::excluded) names, so a key at
/// its limit never keeps the jobs behind it waiting.
#[derive(Debug, Default)]
pub struct KindGate {
    kinds: std::collections::HashMap<String, KindState>,
    /// `(kind, key)` → its jobs running, counting those admitted here.
    running: std::collections::HashMap<(String, String), u64>,
    full_kinds: std::collections::BTreeSet<String>,
    full_keys: std::collections::BTreeSet<String>,
}

#[derive(Debug)]
struct KindState {
    limits: KindLimits,
    /// Its bucket's tokens now, less those admitted here.
    tokens: Option<f64>,
    taken: usize,
    refused: Option<Limit>,
}

impl KindGate {
    /// `tokens`: each rated kind's bucket now (`None`: never used, full);
    /// `running`: the jobs running per kind and key of each kind with a
    /// `max_per_key` (keys with none running may be left out).
    pub fn new(kinds: &[KindLimits], tokens: impl Fn(&str) -> Option<f64>, running: impl IntoIterator<Item = ((String, String), u64)>) -> Self {
        let kinds = kinds
            .iter()
            .map(|k| {
                let tokens = k.rate.map(|rate| tokens(&k.kind).unwrap_or(f64::from(rate.count)));
                (k.kind.clone(), KindState { limits: k.clone(), tokens, taken: 0, refused: None })
            })
            .collect();
        // A kind whose bucket is empty already is left in the first look:
        // refusing one of its jobs is how the claim learns it held some back.
        Self { kinds, running: running.into_iter().collect(), ..Self::default() }
    }

    /// Whether a job of `kind` with `key` may start; if so, it is counted.
    /// A refusal marks the kind (its bucket is empty) or the key (it is at
    /// `max_per_key`) as excluded.
    pub fn admit(&mut self, kind: &str, key: Option<&str>) -> bool {
        let Some(state) = self.kinds.get_mut(kind) else { return true };
        if state.tokens.is_some_and(|t| t < 1.0) {
            state.refused = Some(Limit::KindRate);
            self.full_kinds.insert(kind.to_string());
            return false;
        }
        if let (Some(max), Some(key)) = (state.limits.max_per_key, key) {
            let running = self.running.entry((kind.to_string(), key.to_string())).or_insert(0);
            if *running >= u64::from(max) {
                state.refused.get_or_insert(Limit::MaxPerKey);
                self.full_keys.insert(kind_key(kind, key));
                return false;
            }
            *running += 1;
        }
        if let Some(tokens) = &mut state.tokens {
            *tokens -= 1.0;
            if *tokens < 1.0 {
                self.full_kinds.insert(kind.to_string());
            }
        }
        state.taken += 1;
        true
    }

    /// The kinds and the `kind_key`s a claim's next look leaves out.
    pub fn excluded(&self) -> (Vec<String>, Vec<String>) {
        (self.full_kinds.iter().cloned().collect(), self.full_keys.iter().cloned().collect())
    }

    /// Each rated kind's bucket as the claim leaves it: write these back.
    pub fn buckets(&self) -> impl Iterator<Item = (String, f64)> + '_ {
        self.kinds.iter().filter_map(|(kind, s)| s.tokens.map(|t| (kind_bucket_name(kind), t)))
    }

    /// The kinds whose jobs the claim saw due and left waiting, why, and
    /// when the first may start (`None`: when a run of its key ends).
    pub fn held_back(&self, now: Millis) -> Vec<HeldBack> {
        let mut held: Vec<HeldBack> = self
            .kinds
            .iter()
            .filter_map(|(kind, s)| {
                let by = s.refused?;
                let until = match (by, s.limits.rate, s.tokens) {
                    (Limit::KindRate, Some(rate), Some(tokens)) => Some(rate.next_token_at(tokens, now)),
                    _ => None,
                };
                Some(HeldBack { tenant: crate::names::tenant_of(kind).map(str::to_string), kind: Some(kind.clone()), by, until })
            })
            .collect();
        held.sort_by(|a, b| a.kind.cmp(&b.kind));
        held
    }
}

/// One tenant's part of a claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimShare {
    /// `None`: the host's own kinds.
    pub tenant: Option<String>,
    pub want: usize,
    /// Its part of what other tenants leave unused (0 counts as 1).
    pub weight: u32,
    /// What the claim may not take past, whatever `want` says.
    pub limits: TenantLimits,
}

/// A tenant's limits, held at claim time across every host of the store:
/// its jobs wait, they do not fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Its jobs running at once.
    pub max_running: Option<u32>,
    /// Its jobs started per unit of time.
    pub rate: Option<StartRate>,
}

impl TenantLimits {
    pub fn is_empty(&self) -> bool {
        self.max_running.is_none() && self.rate.is_none()
    }
}

/// At most `count` jobs started per `per_ms`: a token bucket of `count`
/// tokens (so up to `count` may start at once), refilled at that rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartRate {
    pub count: u32,
    pub per_ms: i64,
}

impl StartRate {
    /// The tokens a bucket holding `tokens` at `since` holds at `now`.
    pub fn refill(&self, tokens: f64, since: Millis, now: Millis) -> f64 {
        let elapsed = (now - since).max(0) as f64;
        (tokens + elapsed * f64::from(self.count) / self.per_ms.max(1) as f64).min(f64::from(self.count))
    }

    /// When a bucket holding `tokens` at `now` holds one whole token.
    pub fn next_token_at(&self, tokens: f64, now: Millis) -> Millis {
        let missing = (1.0 - tokens).max(0.0);
        now + (missing * self.per_ms as f64 / f64::from(self.count.max(1))).ceil() as Millis
    }
}

/// The name a tenant's start bucket is kept under.
pub fn rate_bucket_name(tenant: Option<&str>) -> String {
    format!("tenant:{}", tenant.unwrap_or(""))
}

/// What a claim took, and which tenants it held back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    pub jobs: Vec<Job>,
    /// Tenants with due jobs left waiting by one of their limits.
    pub held_back: Vec<HeldBack>,
}

/// A tenant a claim left jobs of waiting, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBack {
    pub tenant: Option<String>,
    /// The kind held back, when it was one of its own limits.
    pub kind: Option<String>,
    pub by: Limit,
    /// When it may start another (its rate's next token); `None` when it
    /// waits for one of its runs to end.
    pub until: Option<Millis>,
}

/// Which of a tenant's limits held its jobs back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// The tenant's `max_running`.
    MaxRunning,
    /// The tenant's `rate`.
    Rate,
    /// The kind's `[throttle] max_per_key`.
    MaxPerKey,
    /// The kind's `[throttle] rate`.
    KindRate,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxRunning => "max_running",
            Limit::Rate => "rate",
            Limit::MaxPerKey => "max_per_key",
            Limit::KindRate => "kind_rate",
        }
    }
}

/// The order a fair claim takes jobs in, for both backends: each step
/// names a share and how many of its jobs to take, and is told how many
/// were there. Round 1 takes each share's `want`; round 2 splits what is
/// left of the limit between the shares that may still have jobs (none
/// came back short) by weight; round 3 gives what is still left to them
/// in turn. No share ever past its cap.
#[derive(Debug)]
pub struct ClaimRounds {
    room: Vec<usize>,
    weight: Vec<u32>,
    exhausted: Vec<bool>,
    left: usize,
    steps: std::collections::VecDeque<(usize, usize)>,
    round: u8,
}

impl ClaimRounds {
    /// `caps`: what each share may take at most, from its limits.
    pub fn new(shares: &[ClaimShare], caps: &[usize], limit: usize) -> Self {
        let room: Vec<usize> = caps.to_vec();
        let steps = shares.iter().enumerate().map(|(i, s)| (i, s.want)).collect();
        let weight = shares.iter().map(|s| s.weight.max(1)).collect();
        Self { exhausted: vec![false; room.len()], room, weight, left: limit, steps, round: 1 }
    }

    /// The next share to take from, and how many.
    pub fn next(&mut self) -> Option<(usize, usize)> {
        loop {
            while let Some((i, want)) = self.steps.pop_front() {
                let take = want.min(self.room[i]).min(self.left);
                if take > 0 && !self.exhausted[i] {
                    return Some((i, take));
                }
            }
            let open: Vec<usize> = (0..self.room.len()).filter(|&i| !self.exhausted[i] && self.room[i] > 0).collect();
            if self.left == 0 || open.is_empty() || self.round == 3 {
                return None;
            }
            self.round += 1;
            if self.round == 2 {
                let total: u64 = open.iter().map(|&i| u64::from(self.weight[i])).sum();
                self.steps = open.iter().map(|&i| (i, (self.left as u64 * u64::from(self.weight[i]) / total) as usize)).collect();
            } else {
                self.steps = open.iter().map(|&i| (i, usize::MAX)).collect();
            }
        }
    }

    /// Of the `asked` jobs of share `i`, `found` were there.
    pub fn took(&mut self, i: usize, asked: usize, found: usize) {
        self.room[i] -= found;
        self.left -= found;
        self.exhausted[i] |= found < asked;
    }

    /// Whether share `i` came back short: it has no more due jobs.
    pub fn is_exhausted(&self, i: usize) -> bool {
        self.exhausted[i]
    }
}

/// How many of one tenant's jobs a claim may take, from its limits: the
/// room under `max_running` given `running`, and the whole tokens its
/// bucket holds. Returns the cap and the limit that set it (`None`:
/// unlimited).
pub fn claim_cap(limits: &TenantLimits, running: u64, tokens: Option<f64>) -> (usize, Option<Limit>) {
    let room = limits.max_running.map(|m| u64::from(m).saturating_sub(running) as usize);
    let whole = tokens.map(|t| t.max(0.0).floor() as usize);
    match (room, whole) {
        (None, None) => (usize::MAX, None),
        (Some(room), None) => (room, Some(Limit::MaxRunning)),
        (None, Some(whole)) => (whole, Some(Limit::Rate)),
        (Some(room), Some(whole)) if whole < room => (whole, Some(Limit::Rate)),
        (Some(room), Some(_)) => (room, Some(Limit::MaxRunning)),
    }
}

/// Extend the leases a host still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatParams {
    pub leases: Vec<Lease>,
    pub lease_ms: i64,
    /// Progress reported since the last beat, by job (written only where
    /// the lease is current).
    pub progress: Vec<(Lease, Progress)>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatResult {
    /// Leases that are no longer ours (rescued, or finished elsewhere): stop them.
    pub lost: Vec<Lease>,
    /// Jobs whose cancel was requested: ask them to stop.
    pub cancel_requested: Vec<Lease>,
}

/// How a running job leaves `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// → completed, with the result; the run's effects (the jobs it
    /// enqueued, its kv writes) are applied in the same transaction, and
    /// only if the lease is current.
    Complete { result: Vec<u8>, effects: Effects },
    /// → retryable until `at`, recording the error.
    RetryAt { at: Millis, error: AttemptError },
    /// → dead (the dead-letter state), recording the error.
    Discard { error: AttemptError },
    /// → available (or scheduled if `at` is later); the attempt is not
    /// counted: used when the host itself stopped the run (shutdown).
    Snooze { at: Millis },
    /// → cancelled, recording why.
    Cancel { error: AttemptError },
}

impl Transition {
    pub fn name(&self) -> &'static str {
        match self {
            Transition::Complete { .. } => "complete",
            Transition::RetryAt { .. } => "retry-at",
            Transition::Discard { .. } => "discard",
            Transition::Snooze { .. } => "snooze",
            Transition::Cancel { .. } => "cancel",
        }
    }
}

/// What a run changed in Kiln's own state, applied with its completion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Jobs it enqueued, inserted in order.
    pub children: Vec<NewJob>,
    /// Its kv writes, applied in order.
    pub kv: Vec<KvWrite>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.children.is_empty() && self.kv.is_empty()
    }
}

/// One change to a key of a kv store. Stores are namespaced: a plugin's
/// `default` is not another plugin's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWrite {
    pub namespace: String,
    pub store: String,
    pub key: String,
    pub change: KvChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvChange {
    Set(Vec<u8>),
    Delete,
    /// Adds to the decimal number the key holds (a missing key holds 0;
    /// a key that holds no such number is left as it is).
    Add(i64),
}

/// One transition out of `running`, accepted only with the current token.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub lease: Lease,
    pub transition: Transition,
    /// The plugin version that ran the attempt, recorded on the job.
    pub ran_version: Option<String>,
    /// The attempt's record, kept with the job (none for a snooze, which
    /// does not count as an attempt, or when the host keeps no attempts).
    pub attempt: Option<AttemptRun>,
}

impl Finish {
    pub fn new(lease: Lease, transition: Transition) -> Self {
        Self { lease, transition, ran_version: None, attempt: None }
    }
}

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

/// One host's runs of one kind on one queue in one minute: what the
/// dashboard's throughput and queue-delay charts are drawn from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MinuteRuns {
    /// The minute's start, ms since the epoch (a multiple of 60,000).
    pub minute: Millis,
    pub host: String,
    pub queue: String,
    pub kind: String,
    /// Runs that ended in the minute, and how many of them failed.
    pub runs: u64,
    pub failures: u64,
    /// Their waits from due to start, summed and the longest.
    pub delay_ms_sum: i64,
    pub delay_ms_max: i64,
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

/// Delete finished jobs of one state: those finalized before a time, and
/// those past the newest `keep_per_queue` of their queue (by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneParams {
    /// `completed`, `cancelled` or `dead`.
    pub state: JobState,
    pub finalized_before: Millis,
    pub keep_per_queue: u64,
    /// The most one call deletes (one transaction).
    pub limit: usize,
}

/// Filters for listing jobs; `after_id` pages through results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    /// Only the jobs of this tenant (see [`tenant_of`](crate::names::tenant_of)).
    pub tenant: Option<String>,
    /// Oldest first: only jobs with a larger id (the previous page's last
    /// id). Newest first: only jobs with a smaller one.
    pub after_id: Option<JobId>,
    /// Newest (largest id) first instead of oldest first.
    pub newest_first: bool,
    pub limit: usize,
    /// The page ends at the first job that brings the stored bytes it
    /// holds (payload, result, errors) to this many: however large each
    /// job is, a page holds at most this plus one job.
    pub max_bytes: u64,
}

/// The default byte bound of a page of jobs.
pub const DEFAULT_PAGE_BYTES: u64 = 8 << 20;

impl Default for ListFilter {
    fn default() -> Self {
        Self { state: None, kind: None, queue: None, tenant: None, after_id: None, newest_first: false, limit: 100, max_bytes: DEFAULT_PAGE_BYTES }
    }
}

/// One page of [`JobStore::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// More jobs match after the last one here (the page was full, or cut
    /// by its byte bound).
    pub more: bool,
}

/// How often each host calls [`JobStore::fold_counts`].
pub const COUNT_FOLD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`JobStore::attempt_logs`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptLogs {
    pub lines: Vec<(u32, LogEntry)>,
    /// Later attempts' lines were left out to keep within the bound.
    pub more: bool,
}

/// How many jobs of one queue and one tenant are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    pub queue: String,
    /// `None`: the host's own kinds.
    pub tenant: Option<String>,
    pub state: JobState,
    pub count: u64,
}

/// A queue and whether it is paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub paused: bool,
}

/// What can go wrong in a store; callers match on these.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The fencing rule: the caller's lease is not the job's current one.
    #[error("job {id}: stale lease (token {token} is not the current lease of a running job); the transition was refused")]
    StaleLease { id: JobId, token: i64 },
    #[error("job {id} is {state}; cannot {action} it")]
    InvalidState { id: JobId, state: JobState, action: &'static str },
    /// A job the store keeps although it was asked to delete it.
    #[error("job {id} is kept: {reason}")]
    Kept { id: JobId, reason: &'static str },
    #[error("job {existing} already holds unique key {key:?}")]
    UniqueConflict { key: String, existing: JobId },
    /// The fencing rule for loops: another host (or a newer run here) took it.
    #[error("loop {name:?}: stale lease (token {token} is no longer current); the checkpoint was not stored")]
    LoopLost { name: String, token: i64 },
    #[error("{path} is not a Kiln database: {reason}")]
    NotADatabase { path: String, reason: String },
    #[error("database schema version {found} is newer than this Kiln knows ({known}); upgrade Kiln")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database error: {0}")]
    Database(String),
    /// The database could not be reached (refused, closed, timed out):
    /// worth trying again once it is back.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
}

/// The durable job store. Every method is one state transition or a read;
/// transitions out of `running` need the lease's current fencing token.
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts one job; with a unique key already held, returns that job instead.
    async fn insert(&self, job: NewJob) -> Result<Inserted, StoreError> {
        let mut inserted = self.insert_many(vec![job]).await?;
        Ok(inserted.pop().expect("one job in, one out"))
    }

    /// Inserts jobs in one transaction, in order.
    async fn insert_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError>;

    /// Moves up to `limit` due jobs of a queue (not paused) to `running`,
    /// counting an attempt and taking a lease with a new fencing token.
    /// With shares, each tenant's first (up to its `want`), then more of
    /// each in turn while the limit is not reached; no tenant past its
    /// limits, across every host of the store. Says which tenants its
    /// limits held back.
    async fn claim_fair(&self, params: ClaimParams) -> Result<Claimed, StoreError>;

    /// [`claim_fair`](Self::claim_fair)'s jobs.
    async fn claim(&self, params: ClaimParams) -> Result<Vec<Job>, StoreError> {
        Ok(self.claim_fair(params).await?.jobs)
    }

    /// Extends held leases; reports lost ones and requested cancels.
    async fn heartbeat(&self, params: HeartbeatParams) -> Result<HeartbeatResult, StoreError>;

    /// Applies transitions out of `running` in one transaction. Each result
    /// is `Err(StaleLease)` when its token is not current; the others still apply.
    async fn finish_many(&self, finishes: Vec<Finish>) -> Result<Vec<Result<(), StoreError>>, StoreError>;

    /// One transition out of `running`.
    async fn finish(&self, finish: Finish) -> Result<(), StoreError> {
        self.finish_many(vec![finish]).await?.pop().expect("one finish in, one result out")
    }

    /// → completed.
    async fn complete(&self, lease: Lease, result: Vec<u8>) -> Result<(), StoreError> {
        self.finish(Finish::new(lease, Transition::Complete { result, effects: Effects::default() })).await
    }

    /// → retryable at `at`.
    async fn retry_at(&self, lease: Lease, at: Millis, error: AttemptError) -> Result<(), StoreError> {
        self.finish(Finish::new(lease, Transition::RetryAt { at, error })).await
    }

    /// → dead.
    async fn discard(&self, lease: Lease, error: AttemptError) -> Result<(), StoreError> {
        self.finish(Finish::new(lease, Transition::Discard { error })).await
    }

    /// → available at `at`, attempt not counted.
    async fn snooze(&self, lease: Lease, at: Millis) -> Result<(), StoreError> {
        self.finish(Finish::new(lease, Transition::Snooze { at })).await
    }

    /// Cancels a job that is not running (→ cancelled); for a running job,
    /// records the request (its host stops it, then finishes it as
    /// cancelled). Returns the job as it is now.
    async fn cancel(&self, id: JobId) -> Result<Job, StoreError>;

    /// Moves running jobs whose lease expired to retryable (or dead when no
    /// attempts are left): their host died or lost touch. They keep their
    /// `scheduled_at`, so they run next, not behind the whole backlog.
    /// Returns their ids.
    ///
    /// `spare` names jobs the calling host still runs or is still writing
    /// the end of (their lease ran out while the store was unreachable):
    /// they are alive, and left alone.
    async fn rescue_expired(&self, spare: &[JobId]) -> Result<Vec<JobId>, StoreError>;

    /// A dead or cancelled job → available, due now. Its attempt count goes
    /// on (attempt numbers never repeat in its errors); a job that used all
    /// its attempts gets one more, as in Oban and River.
    async fn retry_by_hand(&self, id: JobId) -> Result<Job, StoreError>;

    /// Deletes a dead or cancelled job (its errors go with it), and returns
    /// it as it was. A schedule's newest tick is kept ([`StoreError::Kept`]):
    /// it is how the schedule knows which tick it got to.
    async fn delete_by_hand(&self, id: JobId) -> Result<Job, StoreError>;

    /// Deletes up to `limit` finished jobs as [`PruneParams`] says, in one
    /// transaction, and returns how many. A schedule's newest tick and its
    /// newest completed one (its checkpoint) are kept whatever their age.
    async fn prune(&self, params: PruneParams) -> Result<u64, StoreError>;

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;
    /// The recorded attempts of job `id`, first first (none for a job that
    /// does not exist).
    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>, StoreError>;
    /// The log lines of job `id`'s attempt `attempt` (every attempt's when
    /// `None`), each with its attempt's number, in order: whole attempts,
    /// as many as fit in `max_bytes` of stored lines (at least one).
    async fn attempt_logs(&self, id: JobId, attempt: Option<u32>, max_bytes: u64) -> Result<AttemptLogs, StoreError>;

    async fn list(&self, filter: ListFilter) -> Result<JobList, StoreError>;

    /// Job counts by queue, tenant and state (states with no jobs are left out).
    async fn counts(&self) -> Result<Vec<StateCount>, StoreError>;
    /// Upkeep of those counts, where a backend keeps them in two parts
    /// (Postgres folds the changes hosts appended into the totals; see its
    /// migration 11). Called every [`COUNT_FOLD_INTERVAL`] by each host;
    /// safe to call from several at once.
    async fn fold_counts(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The earliest `scheduled_at` among jobs of `queue` waiting to run.
    async fn next_due(&self, queue: &str) -> Result<Option<Millis>, StoreError>;

    async fn pause_queue(&self, queue: &str) -> Result<(), StoreError>;

    async fn resume_queue(&self, queue: &str) -> Result<(), StoreError>;

    /// Queues known to the store (any that ever held a job or was paused).
    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError>;

    /// How many jobs of `kind` are waiting (available, scheduled,
    /// retryable) or running.
    async fn pending_count(&self, kind: &str) -> Result<u64, StoreError>;

    /// How many of `tenant`'s jobs (`None`: the host's own kinds) are
    /// waiting: available, scheduled or retryable.
    async fn waiting_count(&self, tenant: Option<&str>) -> Result<u64, StoreError>;

    /// The newest tick of the schedule `kind` (its jobs carry
    /// [`schedule_key`]s) and whether any of its ticks is unfinished.
    async fn schedule_state(&self, kind: &str) -> Result<ScheduleState, StoreError>;

    /// The result of the newest completed tick of `kind`: the checkpoint
    /// handed to the next tick.
    async fn schedule_checkpoint(&self, kind: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Takes the loop for `host` if it is free, its lease expired, or it is
    /// already this host's; a new fencing token either way. `None`: another
    /// host holds it.
    async fn acquire_loop(&self, claim: LoopClaim) -> Result<Option<LoopLease>, StoreError>;

    /// Stores a pass's checkpoint and extends the lease, only with the
    /// current token (`Err(LoopLost)` otherwise).
    async fn save_loop(&self, save: LoopSave) -> Result<(), StoreError>;

    /// Gives the loop up (at shutdown), only with the current token.
    async fn release_loop(&self, name: &str, token: i64) -> Result<(), StoreError>;

    /// Every loop the store knows.
    async fn loops(&self) -> Result<Vec<LoopState>, StoreError>;

    /// The committed value of a kv key.
    /// Writes one host's per-minute run totals: each row replaces the one
    /// of its minute, host, queue and kind (a host writes its running
    /// totals again as the minute fills). Rows of minutes before
    /// `keep_since` (every host's) are deleted in the same call.
    async fn record_minutes(&self, rows: Vec<MinuteRuns>, keep_since: Millis) -> Result<(), StoreError>;

    /// Every host's per-minute totals of minutes from `since` on, oldest first.
    async fn minutes(&self, since: Millis) -> Result<Vec<MinuteRuns>, StoreError>;

    async fn kv_get(&self, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Committed keys of a kv store in byte order, from the `offset`-th,
    /// at most `limit`; with `prefix`, only keys that start with it.
    async fn kv_keys(&self, namespace: &str, store: &str, prefix: &str, offset: u64, limit: usize) -> Result<Vec<String>, StoreError>;

    /// The bytes a kv store holds: its keys' and values' lengths, summed.
    async fn kv_usage(&self, namespace: &str, store: &str) -> Result<u64, StoreError>;

    /// The bytes every store of every namespace starting with `prefix`
    /// holds together (a tenant's: `acme/`).
    async fn kv_usage_under(&self, prefix: &str) -> Result<u64, StoreError>;

    /// Applies kv writes in one transaction of their own: for runs that
    /// complete no job (`kiln run`, loop passes, start-up runs) and for
    /// operators.
    async fn write_kv(&self, writes: Vec<KvWrite>) -> Result<(), StoreError>;

    /// Announcements of jobs inserted into this store by any host, as the
    /// name of the queue they went to ([`WAKE_ALL`](crate::queue::WAKE_ALL):
    /// look at every queue). `None` when the backend cannot announce across
    /// processes; hosts then find other processes' jobs by polling.
    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_size() {
        let rate = StartRate { count: 10, per_ms: 1000 };
        assert_eq!(rate.refill(0.0, 0, 100), 1.0);
        assert_eq!(rate.refill(0.0, 0, 10_000), 10.0, "never more than one unit's worth");
        assert_eq!(rate.refill(3.0, 500, 400), 3.0, "a clock that went back adds nothing");
        assert_eq!(rate.next_token_at(0.5, 1000), 1050);
        assert_eq!(rate.next_token_at(2.0, 1000), 1000);
    }

    #[test]
    fn what_a_tenant_leaves_unused_goes_to_the_others_by_weight_then_in_turn() {
        let share = |want, weight| ClaimShare { want, weight, ..ClaimShare::default() };
        let shares = [share(2, 3), share(2, 1), share(2, 1)];
        let mut rounds = ClaimRounds::new(&shares, &[usize::MAX, usize::MAX, 5], 30);
        let mut steps = Vec::new();
        // Share 2 has nothing due; shares 0 and 1 have plenty.
        while let Some((i, take)) = rounds.next() {
            let found = if i == 2 { 0 } else { take };
            steps.push((i, take));
            rounds.took(i, take, found);
        }
        assert_eq!(steps, [(0, 2), (1, 2), (2, 2), (0, 19), (1, 6), (0, 1)], "26 left, split 3:1 between the two with jobs, then in turn");
        let mut capped = ClaimRounds::new(&[share(10, 1)], &[3], 10);
        assert_eq!(capped.next(), Some((0, 3)), "never past the cap");
        capped.took(0, 3, 3);
        assert_eq!(capped.next(), None);
    }

    #[test]
    fn the_cap_is_the_tighter_limit_and_says_which() {
        let both = TenantLimits { max_running: Some(5), rate: Some(StartRate { count: 100, per_ms: 1000 }) };
        assert_eq!(claim_cap(&both, 2, Some(50.0)), (3, Some(Limit::MaxRunning)));
        assert_eq!(claim_cap(&both, 2, Some(1.9)), (1, Some(Limit::Rate)));
        assert_eq!(claim_cap(&both, 9, Some(50.0)), (0, Some(Limit::MaxRunning)), "over the limit (it was lowered) is no room");
        assert_eq!(claim_cap(&TenantLimits::default(), 1000, None), (usize::MAX, None));
    }
}
