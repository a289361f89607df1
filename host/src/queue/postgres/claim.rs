//! Claiming with `FOR UPDATE SKIP LOCKED`: the best due jobs of a queue,
//! split between tenants by their shares and held to the kinds' and
//! tenants' limits (rate buckets, max running, max per key) across hosts,
//! under a new lease.

use super::connection::PostgresStore;
use super::rows::{jobs_from_rows, pg_error};
use crate::queue::{ClaimParams, ClaimRounds, Claimed, HeldBack, KindGate, KindLimits, Limit, StoreError, claim_cap, kind_bucket_name, rate_bucket_name};
use crate::queue::job::{Job, JobId, Millis};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// Takes up to `limit` of the best due jobs of the claim's queue (unless paused).
pub(super) async fn claim_best(client: &deadpool_postgres::Object, p: &ClaimParams, now: Millis, limit: usize) -> Result<Vec<Job>, StoreError> {
    let stmt = client.prepare_cached(claim_sql!("")).await.map_err(pg_error)?;
    let rows = client.query(&stmt, &[&p.queue, &now, &(limit as i64), &p.host, &(now + p.lease_ms)]).await.map_err(pg_error)?;
    jobs_from_rows(&rows)
}

/// What a claim stamps on the jobs it takes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pick<'a> {
    queue: &'a str,
    host: &'a str,
    now: Millis,
    until: Millis,
}

/// Takes up to `limit` of the best due jobs of the claim's queue, of one
/// tenant's (`""`: the host's own kinds) or of anyone's; with a gate, only
/// those it admits, looking again without what it refused (as SQLite's
/// `claim_gated`, whose doc says why this ends).
pub(super) async fn claim_pick(
    tx: &deadpool_postgres::Transaction<'_>,
    pick: Pick<'_>,
    tenant: Option<&str>,
    limit: usize,
    gate: Option<&mut KindGate>,
) -> Result<Vec<Job>, StoreError> {
    let Some(gate) = gate else {
        let lease: [&(dyn ToSql + Sync); 5] = [&pick.queue, &pick.now, &(limit as i64), &pick.host, &pick.until];
        let rows = match tenant {
            None => tx.query(&tx.prepare_cached(claim_sql!("")).await.map_err(pg_error)?, &lease).await,
            Some(tenant) => {
                let stmt = tx.prepare_cached(claim_sql!(concat!(tenant_is!(), "$6 AND "))).await.map_err(pg_error)?;
                tx.query(&stmt, &[lease[0], lease[1], lease[2], lease[3], lease[4], &tenant]).await
            }
        }
        .map_err(pg_error)?;
        return jobs_from_rows(&rows);
    };
    let look = match tenant {
        None => tx.prepare_cached(candidates_sql!("")).await,
        Some(_) => tx.prepare_cached(candidates_sql!(concat!(tenant_is!(), "$6 AND "))).await,
    }
    .map_err(pg_error)?;
    let take = tx
        .prepare_cached(concat!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
             leased_by = $1, lease_expires_at = $2, attempted_at = $3 WHERE id = ANY($4::bigint[]) RETURNING ",
            columns!()
        ))
        .await
        .map_err(pg_error)?;
    let mut jobs = Vec::with_capacity(limit);
    while jobs.len() < limit {
        let want = (limit - jobs.len()) as i64;
        let (kinds, keys) = gate.excluded();
        let rows = match tenant {
            None => tx.query(&look, &[&pick.queue, &pick.now, &kinds, &keys, &want]).await,
            Some(tenant) => tx.query(&look, &[&pick.queue, &pick.now, &kinds, &keys, &want, &tenant]).await,
        }
        .map_err(pg_error)?;
        let mut admitted: Vec<JobId> = Vec::with_capacity(rows.len());
        for row in &rows {
            let (kind, key): (String, Option<String>) = (row.get(1), row.get(2));
            if gate.admit(&kind, key.as_deref()) {
                admitted.push(row.get(0));
            }
        }
        let taken = tx.query(&take, &[&pick.host, &pick.until, &pick.now, &admitted]).await.map_err(pg_error)?;
        jobs.extend(jobs_from_rows(&taken)?);
        if (rows.len() as i64) < want || admitted.len() == rows.len() {
            break;
        }
    }
    Ok(jobs)
}

/// What the held kinds have now: their keys' running jobs and their
/// stored buckets (`None` when the claim holds no kind).
#[allow(clippy::type_complexity)]
pub(super) async fn gate_state(
    tx: &deadpool_postgres::Transaction<'_>,
    kinds: &[KindLimits],
) -> Result<Option<(Vec<((String, String), u64)>, std::collections::HashMap<String, (f64, Millis)>)>, StoreError> {
    if kinds.is_empty() {
        return Ok(None);
    }
    let keyed: Vec<&str> = kinds.iter().filter(|k| k.max_per_key.is_some()).map(|k| k.kind.as_str()).collect();
    let rows = tx
        .query(
            "SELECT kind, concurrency_key, count(*) FROM jobs \
             WHERE state = 'running' AND concurrency_key IS NOT NULL AND kind = ANY($1::text[]) GROUP BY kind, concurrency_key",
            &[&keyed],
        )
        .await
        .map_err(pg_error)?;
    let running = rows.iter().map(|r| ((r.get(0), r.get(1)), r.get::<_, i64>(2) as u64)).collect();
    let mut buckets = std::collections::HashMap::new();
    for limits in kinds.iter().filter(|k| k.rate.is_some()) {
        if let Some(bucket) = load_bucket(tx, &kind_bucket_name(&limits.kind)).await? {
            buckets.insert(limits.kind.clone(), bucket);
        }
    }
    Ok(Some((running, buckets)))
}

/// A stored bucket: its tokens and when it held them.
pub(super) async fn load_bucket(tx: &deadpool_postgres::Transaction<'_>, name: &str) -> Result<Option<(f64, Millis)>, StoreError> {
    let row = tx.query_opt("SELECT tokens, updated_at FROM rate_buckets WHERE name = $1", &[&name]).await.map_err(pg_error)?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Stores a bucket's tokens as of `now`.
pub(super) async fn save_bucket(tx: &deadpool_postgres::Transaction<'_>, name: &str, tokens: f64, now: Millis) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO rate_buckets (name, tokens, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
        &[&name, &tokens, &now],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Best first: as the claim query orders them.
pub(super) fn sort_best_first(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.scheduled_at.cmp(&b.scheduled_at)).then(a.id.cmp(&b.id)));
}

pub(super) async fn claim_fair(db: &PostgresStore, p: ClaimParams) -> Result<Claimed, StoreError> {
    let mut client = db.client().await?;
    if p.shares.is_empty() && p.kinds.is_empty() {
        let mut jobs = claim_best(&client, &p, db.now(), p.limit).await?;
        sort_best_first(&mut jobs);
        return Ok(Claimed { jobs, held_back: Vec::new() });
    }
    // One transaction: a limited tenant's lock (taken in the order of
    // the shares, the same on every host), then each held kind's (in
    // name order), keep another host's claim for them waiting until
    // this one's running jobs and buckets are written, so their limits
    // hold across hosts. The time is read once the locks are held: a
    // claim that waited stamps when it took.
    let tx = client.transaction().await.map_err(pg_error)?;
    for share in p.shares.iter().filter(|s| !s.limits.is_empty()) {
        let tenant = share.tenant.as_deref().unwrap_or("");
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('kiln:tenant:' || $1, 0))", &[&tenant]).await.map_err(pg_error)?;
    }
    let mut kinds: Vec<&str> = p.kinds.iter().map(|k| k.kind.as_str()).collect();
    kinds.sort_unstable();
    for kind in kinds {
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('kiln:kind:' || $1, 0))", &[&kind]).await.map_err(pg_error)?;
    }
    // What each limited tenant has running and in its bucket, and what
    // the held kinds have, then the time: read after them, it is later
    // than any finish they missed.
    let mut stored = Vec::with_capacity(p.shares.len());
    for share in &p.shares {
        let tenant = share.tenant.as_deref().unwrap_or("");
        let running: i64 = match share.limits.max_running {
            Some(_) => tx
                .query_one(concat!("SELECT count(*) FROM jobs WHERE state = 'running' AND ", tenant_is!(), "$1"), &[&tenant])
                .await
                .map_err(pg_error)?
                .get(0),
            None => 0,
        };
        let bucket = match share.limits.rate {
            Some(_) => load_bucket(&tx, &rate_bucket_name(share.tenant.as_deref())).await?,
            None => None,
        };
        stored.push((running, bucket));
    }
    let gate = gate_state(&tx, &p.kinds).await?;
    let now = db.now();
    let mut gate = gate.map(|(running, buckets)| {
        let tokens = |kind: &str| {
            let rate = p.kinds.iter().find(|k| k.kind == kind)?.rate?;
            buckets.get(kind).map(|&(tokens, at)| rate.refill(tokens, at, now))
        };
        KindGate::new(&p.kinds, tokens, running)
    });
    let lease = Pick { queue: &p.queue, host: &p.host, now, until: now + p.lease_ms };
    let mut jobs = Vec::with_capacity(p.limit);
    let mut held_back = Vec::new();
    if p.shares.is_empty() {
        jobs = claim_pick(&tx, lease, None, p.limit, gate.as_mut()).await?;
    } else {
        let caps: Vec<_> = p
            .shares
            .iter()
            .zip(&stored)
            .map(|(share, &(running, bucket))| {
                let tokens = share.limits.rate.map(|rate| bucket.map_or(f64::from(rate.count), |(tokens, at)| rate.refill(tokens, at, now)));
                (claim_cap(&share.limits, running as u64, tokens), tokens)
            })
            .collect();
        let mut rounds = ClaimRounds::new(&p.shares, &caps.iter().map(|c| c.0.0).collect::<Vec<_>>(), p.limit);
        let mut got = vec![0usize; p.shares.len()];
        while let Some((i, take)) = rounds.next() {
            let tenant = p.shares[i].tenant.as_deref().unwrap_or("");
            let taken = claim_pick(&tx, lease, Some(tenant), take, gate.as_mut()).await?;
            rounds.took(i, take, taken.len());
            got[i] += taken.len();
            jobs.extend(taken);
        }
        for (i, share) in p.shares.iter().enumerate() {
            let ((cap, by), tokens) = caps[i];
            let left = tokens.map(|t| t - got[i] as f64);
            if let Some(left) = left {
                save_bucket(&tx, &rate_bucket_name(share.tenant.as_deref()), left, now).await?;
            }
            let Some(by) = by else { continue };
            let tenant = share.tenant.as_deref().unwrap_or("");
            if got[i] >= cap && !rounds.is_exhausted(i) {
                let due: bool = tx
                    .query_one(
                        concat!("SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = $1 AND ", tenant_is!(), "$2 AND state IN ", waiting!(), " AND scheduled_at <= $3)"),
                        &[&p.queue, &tenant, &now],
                    )
                    .await
                    .map_err(pg_error)?
                    .get(0);
                if due {
                    let until = match (by, share.limits.rate, left) {
                        (Limit::Rate, Some(rate), Some(left)) => Some(rate.next_token_at(left, now)),
                        _ => None,
                    };
                    held_back.push(HeldBack { tenant: share.tenant.clone(), kind: None, by, until });
                }
            }
        }
    }
    if let Some(gate) = &gate {
        for (name, tokens) in gate.buckets() {
            save_bucket(&tx, &name, tokens, now).await?;
        }
        held_back.extend(gate.held_back(now));
    }
    tx.commit().await.map_err(pg_error)?;
    sort_best_first(&mut jobs);
    Ok(Claimed { jobs, held_back })
}
