//! What a claim is asked and answers: the queue, how many, the tenants'
//! shares and the kinds' and tenants' limits (token buckets for rates,
//! caps for running jobs), how a claim splits its batch between tenants
//! round by round, and what it held back and why. Both stores' claims are
//! written against these.

use super::job::{Job, Millis};

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
