//! Fair share between tenants: how one queue's claim splits its slots.
//!
//! The rule, one slot at a time: a slot goes to the tenant holding the
//! fewest of this queue's jobs on this host (claimed ahead or running)
//! for its weight, counting the slots it was just given. So a tenant with
//! nothing in flight gets the next slot whatever another has waiting, and
//! tenants that all keep work waiting hold slots in proportion to their
//! weights. What a tenant cannot use (it has fewer jobs due than it was
//! given) goes to the others in the same claim, by weight (see
//! [`ClaimRounds`](crate::queue::ClaimRounds)), so no slot idles while any
//! tenant has work. The host's own kinds take part as one more
//! tenant of weight 1.

use crate::queue::{ClaimShare, TenantLimits};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One participant: a tenant (`None`: the host's own kinds), its weight,
/// and the limits every claim for it carries to the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    pub tenant: Option<String>,
    pub weight: u32,
    pub limits: TenantLimits,
    /// Its jobs waiting at once: an enqueue past it is refused.
    pub max_waiting: Option<u64>,
}

/// The participants of one queue and what each holds there now.
#[derive(Debug)]
pub struct FairShare {
    weights: Vec<TenantPolicy>,
    held: Arc<HeldCounts>,
}

#[derive(Debug)]
struct HeldCounts {
    counts: Box<[AtomicUsize]>,
}

/// One claimed job counted against its tenant until it is dropped (its
/// run ended, or it went back unstarted).
#[derive(Debug)]
pub struct Held {
    held: Arc<HeldCounts>,
    index: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.counts[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

impl FairShare {
    /// `None` without tenants: claims take the best due jobs, whoever's.
    pub fn new(weights: &[TenantPolicy]) -> Option<Self> {
        if weights.is_empty() {
            return None;
        }
        let mut weights = weights.to_vec();
        if !weights.iter().any(|w| w.tenant.is_none()) {
            weights.push(TenantPolicy { tenant: None, weight: 1, ..TenantPolicy::default() });
        }
        let counts = weights.iter().map(|_| AtomicUsize::new(0)).collect();
        Some(Self { weights, held: Arc::new(HeldCounts { counts }) })
    }

    fn index_of(&self, tenant: Option<&str>) -> Option<usize> {
        self.weights.iter().position(|w| w.tenant.as_deref() == tenant)
    }

    /// How many of this queue's jobs `tenant` holds here now.
    pub fn held(&self, tenant: Option<&str>) -> usize {
        self.index_of(tenant).map_or(0, |i| self.held.counts[i].load(Ordering::Relaxed))
    }

    /// Counts a claimed job of `tenant` (one not configured counts for
    /// nobody: it was taken to fill a claim).
    pub fn hold(&self, tenant: Option<&str>) -> Option<Held> {
        let index = self.index_of(tenant)?;
        self.held.counts[index].fetch_add(1, Ordering::Relaxed);
        Some(Held { held: self.held.clone(), index })
    }

    /// Splits `slots` by the rule in the module's doc.
    pub fn split(&self, slots: usize) -> Vec<ClaimShare> {
        let held: Vec<usize> = self.held.counts.iter().map(|h| h.load(Ordering::Relaxed)).collect();
        split(&self.weights, &held, slots)
    }
}

/// The rule itself, over a snapshot of what each participant holds.
/// Every participant is in the answer, in the order configured (the order
/// in which the store takes limited tenants' locks, the same on every
/// host), with what it was given, maybe nothing: what others leave unused
/// can still go to it.
fn split(weights: &[TenantPolicy], held: &[usize], slots: usize) -> Vec<ClaimShare> {
    let mut given = vec![0usize; weights.len()];
    for _ in 0..slots {
        // The least held per weight: a/wa < b/wb as a*wb < b*wa; ties to the first listed.
        let next = (0..weights.len())
            .min_by(|&a, &b| {
                let load = |i: usize| (held[i] + given[i]) as u128;
                (load(a) * u128::from(weights[b].weight)).cmp(&(load(b) * u128::from(weights[a].weight)))
            })
            .expect("at least one participant");
        given[next] += 1;
    }
    weights.iter().zip(given).map(|(w, want)| ClaimShare { tenant: w.tenant.clone(), want, weight: w.weight, limits: w.limits }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(of: &[(&str, u32)]) -> Vec<TenantPolicy> {
        of.iter().map(|(t, w)| TenantPolicy { tenant: (!t.is_empty()).then(|| t.to_string()), weight: *w, ..TenantPolicy::default() }).collect()
    }

    /// The participants given something.
    fn wants(shares: &[ClaimShare]) -> Vec<(String, usize)> {
        shares.iter().filter(|s| s.want > 0).map(|s| (s.tenant.clone().unwrap_or_default(), s.want)).collect()
    }

    #[test]
    fn a_tenant_holding_nothing_gets_the_next_slot_whatever_another_holds() {
        let w = weights(&[("acme", 1), ("beta", 1)]);
        assert_eq!(wants(&split(&w, &[200, 0], 1)), [("beta".into(), 1)]);
        assert_eq!(wants(&split(&w, &[200, 0], 4)), [("beta".into(), 4)], "all of them, until it holds as many as acme");
        assert_eq!(wants(&split(&w, &[3, 0], 8)), [("acme".into(), 3), ("beta".into(), 5)]);
    }

    #[test]
    fn tenants_that_keep_work_waiting_hold_slots_by_weight() {
        let w = weights(&[("acme", 3), ("beta", 1)]);
        assert_eq!(wants(&split(&w, &[0, 0], 8)), [("acme".into(), 6), ("beta".into(), 2)]);
        // Claim after claim, each holding what it was given until runs end: shares stay 3:1.
        let mut held = [0usize, 0];
        for _ in 0..50 {
            for s in split(&w, &held, 16) {
                held[usize::from(s.tenant.as_deref() == Some("beta"))] += s.want;
            }
            held = [held[0] * 3 / 4, held[1] * 3 / 4];
        }
        let share = held[0] as f64 / (held[0] + held[1]) as f64;
        assert!((0.70..=0.80).contains(&share), "acme holds {share:.2} of the slots, not 0.75: {held:?}");
    }

    #[test]
    fn the_host_takes_part_with_weight_one_and_holds_are_released_on_drop() {
        let fair = FairShare::new(&weights(&[("acme", 2)])).unwrap();
        assert_eq!(wants(&fair.split(3)), [("acme".into(), 2), (String::new(), 1)]);
        let held: Vec<Held> = (0..4).map(|_| fair.hold(Some("acme")).unwrap()).collect();
        assert_eq!(fair.held(Some("acme")), 4);
        assert_eq!(wants(&fair.split(2)), [(String::new(), 2)]);
        drop(held);
        assert_eq!(fair.held(Some("acme")), 0);
        assert!(fair.hold(Some("stranger")).is_none(), "a tenant not configured counts for nobody");
        assert!(FairShare::new(&[]).is_none(), "no tenants: no shares");
    }
}
