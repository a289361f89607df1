//! Claiming: the best due jobs of a queue, split between tenants by their
//! shares and held to the kinds' and tenants' limits (rate buckets, max
//! running, max per key), under a new lease.

use super::connection::SqliteStore;
use super::rows::{db_error, job_from_row, json_list};
use crate::queue::{ClaimParams, ClaimRounds, Claimed, HeldBack, KindGate, KindLimits, Limit, StoreError, claim_cap, kind_bucket_name, rate_bucket_name};
use crate::queue::job::{Job, JobId, Millis};
use rusqlite::{OptionalExtension, params};

/// What a claim stamps on the jobs it takes: the host, the lease's end,
/// now, and the queue.
pub(super) type ClaimLease<'a> = (&'a str, Millis, Millis, &'a str);

/// Takes up to `limit` of the best due jobs of the lease's queue: of one
/// tenant's (`""`: the host's own kinds), or, with `None`, of anyone's;
/// with a gate, only those it admits.
pub(super) fn claim_of(
    tx: &rusqlite::Transaction<'_>,
    lease: ClaimLease<'_>,
    tenant: Option<&str>,
    limit: usize,
    gate: Option<&mut KindGate>,
) -> rusqlite::Result<Vec<Job>> {
    if let Some(gate) = gate {
        return claim_gated(tx, lease, tenant, limit, gate);
    }
    let (host, until, now, queue) = lease;
    let limit = limit as i64;
    match tenant {
        None => tx.prepare_cached(claim_sql!(""))?.query_map(params![host, until, now, queue, limit], job_from_row)?.collect(),
        Some(tenant) => tx
            .prepare_cached(claim_sql!(concat!(tenant_is!(), "?6 AND ")))?
            .query_map(params![host, until, now, queue, limit, tenant], job_from_row)?
            .collect(),
    }
}

/// [`claim_of`] through a gate: looks at the best candidates, takes those
/// the gate admits, and looks again without the kinds and keys it refused
/// until it has `limit` or there are no more. Each look that falls short
/// of `limit` refused one more kind or key, so it ends; a key at its limit
/// costs the looks after it a skip past its jobs, never a wait behind them.
pub(super) fn claim_gated(
    tx: &rusqlite::Transaction<'_>,
    (host, until, now, queue): ClaimLease<'_>,
    tenant: Option<&str>,
    limit: usize,
    gate: &mut KindGate,
) -> rusqlite::Result<Vec<Job>> {
    let mut jobs = Vec::with_capacity(limit);
    while jobs.len() < limit {
        let want = limit - jobs.len();
        let (kinds, keys) = gate.excluded();
        let (kinds, keys) = (json_list(&kinds), json_list(&keys));
        let row = |r: &rusqlite::Row<'_>| Ok((r.get::<_, JobId>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?));
        let seen: Vec<(JobId, String, Option<String>)> = match tenant {
            None => tx.prepare_cached(candidates_sql!(""))?.query_map(params![queue, now, kinds, keys, want as i64], row)?.collect::<Result<_, _>>()?,
            Some(tenant) => tx
                .prepare_cached(candidates_sql!(concat!(tenant_is!(), "?6 AND ")))?
                .query_map(params![queue, now, kinds, keys, want as i64, tenant], row)?
                .collect::<Result<_, _>>()?,
        };
        let admitted: Vec<JobId> = seen.iter().filter(|(_, kind, key)| gate.admit(kind, key.as_deref())).map(|(id, _, _)| *id).collect();
        let taken: Vec<Job> = tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
                 leased_by = ?1, lease_expires_at = ?2, attempted_at = ?3 WHERE id IN (SELECT value FROM json_each(?4)) RETURNING ",
                columns!()
            ))?
            .query_map(params![host, until, now, json_list(&admitted)], job_from_row)?
            .collect::<Result<_, _>>()?;
        jobs.extend(taken);
        if seen.len() < want || admitted.len() == seen.len() {
            break;
        }
    }
    Ok(jobs)
}

/// The gate of the claim's kinds, from what the store holds now: their
/// buckets and their keys' running jobs (`None` when it names no kind).
pub(super) fn open_gate(tx: &rusqlite::Transaction<'_>, kinds: &[KindLimits], now: Millis) -> rusqlite::Result<Option<KindGate>> {
    if kinds.is_empty() {
        return Ok(None);
    }
    let keyed: Vec<&str> = kinds.iter().filter(|k| k.max_per_key.is_some()).map(|k| k.kind.as_str()).collect();
    let running: Vec<((String, String), u64)> = tx
        .prepare_cached(
            "SELECT kind, concurrency_key, count(*) FROM jobs \
             WHERE state = 'running' AND concurrency_key IS NOT NULL AND kind IN (SELECT value FROM json_each(?1)) GROUP BY kind, concurrency_key",
        )?
        .query_map([json_list(&keyed)], |r| Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u64)))?
        .collect::<Result<_, _>>()?;
    let mut buckets = std::collections::HashMap::new();
    for limits in kinds {
        let Some(rate) = limits.rate else { continue };
        let stored: Option<(f64, i64)> = tx
            .prepare_cached("SELECT tokens, updated_at FROM rate_buckets WHERE name = ?1")?
            .query_row([kind_bucket_name(&limits.kind)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((tokens, at)) = stored {
            buckets.insert(limits.kind.clone(), rate.refill(tokens, at, now));
        }
    }
    Ok(Some(KindGate::new(kinds, |kind| buckets.get(kind).copied(), running)))
}

/// Stores a bucket's tokens as of `now`.
pub(super) fn save_bucket(tx: &rusqlite::Transaction<'_>, name: &str, tokens: f64, now: Millis) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO rate_buckets (name, tokens, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
    )?
    .execute(params![name, tokens, now])?;
    Ok(())
}

/// A claim, in the writer's transaction (so no other claim runs beside
/// it: the counts and buckets it reads stay true until it commits).
pub(super) fn claim_shares(tx: &rusqlite::Transaction<'_>, p: &ClaimParams, now: Millis) -> rusqlite::Result<Claimed> {
    let lease = (p.host.as_str(), now + p.lease_ms, now, p.queue.as_str());
    let mut gate = open_gate(tx, &p.kinds, now)?;
    let mut claimed = claim_tenants(tx, p, lease, gate.as_mut())?;
    if let Some(gate) = gate {
        for (name, tokens) in gate.buckets() {
            save_bucket(tx, &name, tokens, now)?;
        }
        claimed.held_back.extend(gate.held_back(now));
    }
    sort_best_first(&mut claimed.jobs);
    Ok(claimed)
}

/// The claim by tenants' shares (or of anyone's, with none).
pub(super) fn claim_tenants(tx: &rusqlite::Transaction<'_>, p: &ClaimParams, lease: ClaimLease<'_>, mut gate: Option<&mut KindGate>) -> rusqlite::Result<Claimed> {
    let now = lease.2;
    let mut jobs = Vec::with_capacity(p.limit);
    if p.shares.is_empty() {
        jobs = claim_of(tx, lease, None, p.limit, gate)?;
        return Ok(Claimed { jobs, held_back: Vec::new() });
    }
    // Each share's cap from its limits, and its bucket's tokens now.
    let mut caps = Vec::with_capacity(p.shares.len());
    for share in &p.shares {
        let tenant = share.tenant.as_deref().unwrap_or("");
        let running: i64 = match share.limits.max_running {
            Some(_) => tx.prepare_cached(concat!("SELECT count(*) FROM jobs WHERE state = 'running' AND ", tenant_is!(), "?1"))?.query_row([tenant], |r| r.get(0))?,
            None => 0,
        };
        let tokens = match share.limits.rate {
            Some(rate) => {
                let stored: Option<(f64, i64)> = tx
                    .prepare_cached("SELECT tokens, updated_at FROM rate_buckets WHERE name = ?1")?
                    .query_row([rate_bucket_name(share.tenant.as_deref())], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                Some(stored.map_or(f64::from(rate.count), |(tokens, at)| rate.refill(tokens, at, now)))
            }
            None => None,
        };
        caps.push((claim_cap(&share.limits, running as u64, tokens), tokens));
    }
    let mut rounds = ClaimRounds::new(&p.shares, &caps.iter().map(|c| c.0.0).collect::<Vec<_>>(), p.limit);
    let mut got = vec![0usize; p.shares.len()];
    while let Some((i, take)) = rounds.next() {
        let claimed = claim_of(tx, lease, Some(p.shares[i].tenant.as_deref().unwrap_or("")), take, gate.as_deref_mut())?;
        rounds.took(i, take, claimed.len());
        got[i] += claimed.len();
        jobs.extend(claimed);
    }
    let mut held_back = Vec::new();
    for (i, share) in p.shares.iter().enumerate() {
        let ((cap, by), tokens) = caps[i];
        let left = tokens.map(|t| t - got[i] as f64);
        if let Some(left) = left {
            save_bucket(tx, &rate_bucket_name(share.tenant.as_deref()), left, now)?;
        }
        let Some(by) = by else { continue };
        let tenant = share.tenant.as_deref().unwrap_or("");
        if got[i] >= cap && !rounds.is_exhausted(i) && has_due(tx, lease, tenant)? {
            let until = match (by, share.limits.rate, left) {
                (Limit::Rate, Some(rate), Some(left)) => Some(rate.next_token_at(left, now)),
                _ => None,
            };
            held_back.push(HeldBack { tenant: share.tenant.clone(), kind: None, by, until });
        }
    }
    Ok(Claimed { jobs, held_back })
}

/// Best first: as the claim query orders them.
pub(super) fn sort_best_first(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.scheduled_at.cmp(&b.scheduled_at)).then(a.id.cmp(&b.id)));
}

/// Whether one of `tenant`'s jobs of the lease's queue is due and waiting.
pub(super) fn has_due(tx: &rusqlite::Transaction<'_>, (_, _, now, queue): ClaimLease<'_>, tenant: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached(concat!(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND ",
        tenant_is!(),
        "?2 AND state IN ",
        waiting!(),
        " AND scheduled_at <= ?3)"
    ))?
    .query_row(params![queue, tenant, now], |r| r.get(0))
}

pub(super) async fn claim_fair(db: &SqliteStore, p: ClaimParams) -> Result<Claimed, StoreError> {
    db.write(move |tx, now| claim_shares(tx, &p, now).map_err(db_error)).await
}
