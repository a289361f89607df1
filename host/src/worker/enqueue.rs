//! One way in for a new job, whoever makes it: a client through the API or
//! the CLI, a schedule's tick, a job's or a loop pass's children. Each
//! becomes an [`EnqueueRequest`] and passes `validate`, the one validator
//! of a new job; the bounds of its names are [`crate::names`]' (the enqueue
//! capability checks the same ones at the trust boundary). What each
//! origin may skip is said in `Origin`.

use super::runner::KindInfo;
use super::state::Shared;
use crate::capability::{ChildJob, Due};
use crate::names::{MAX_CONCURRENCY_KEY_BYTES, MAX_UNIQUE_KEY_BYTES, qualified_kind, tenant_of};
use crate::queue::{DEFAULT_QUEUE, Inserted, JobId, Millis, NewJob, StoreError};
use std::collections::HashMap;

/// Why an enqueue was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("unknown job kind {kind:?}: no plugin of that name is loaded (loaded: {known})")]
    UnknownKind { kind: String, known: String },
    #[error("plugin {kind:?} is a {trigger} plugin: the host runs it, it is not enqueued")]
    NotEnqueued { kind: String, trigger: &'static str },
    #[error("job {index}: payload is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge { index: usize, size: usize, limit: usize },
    #[error("job {index}: queue {queue:?} is not served by this host (queues: {known})")]
    UnknownQueue { index: usize, queue: String, known: String },
    #[error("job {index}: max_attempts is {given}; it must be between 1 and {}", crate::plugin::MAX_ATTEMPTS)]
    BadAttempts { index: usize, given: u32 },
    #[error("job {index}: unique_key is {size} bytes, over the limit of {limit} bytes")]
    UniqueKeyTooLong { index: usize, size: usize, limit: usize },
    #[error("job {index}: concurrency_key {problem}")]
    BadConcurrencyKey { index: usize, problem: String },
    #[error(
        "tenant {tenant:?} has {waiting} jobs waiting and this adds {adding}: over its quota of {limit} \
         (`tenants.{tenant}.max_waiting`); nothing was enqueued"
    )]
    OverQuota { tenant: String, waiting: u64, adding: u64, limit: u64 },
    #[error("the host is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job as a client asks for it; unset fields take the plugin's defaults.
#[derive(Debug, Clone, Default)]
pub struct EnqueueRequest {
    pub kind: String,
    pub payload: Vec<u8>,
    pub queue: Option<String>,
    pub priority: Option<i32>,
    pub unique_key: Option<String>,
    pub scheduled_at: Option<i64>,
    pub max_attempts: Option<u32>,
    /// Its group under the kind's `[throttle] max_per_key`.
    pub concurrency_key: Option<String>,
    /// The caller's W3C `traceparent`, as it came (not valid: ignored).
    pub traceparent: Option<String>,
}

/// Where a new job comes from, which decides what [`validate`] asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A client's enqueue: a loaded kind that takes jobs, a served queue,
    /// a payload within the host's limit, everything in bounds.
    Client,
    /// A schedule's tick of its own kind (which a client may not enqueue).
    Tick,
    /// What a run enqueued, named by its parent (`None` for a loop pass or
    /// a start-up run). Its kind may not be loaded here yet (it waits for
    /// one), and its queue and payload were checked against the plugin's
    /// grant and budget when the run asked.
    Child { parent: Option<JobId> },
}

/// Kinds looked up once for many jobs (a fan-out names few kinds for many children).
#[derive(Default)]
pub(super) struct Kinds(HashMap<String, Option<KindInfo>>);

impl Kinds {
    fn get(&mut self, shared: &Shared, kind: &str) -> Option<KindInfo> {
        self.0.entry(kind.to_string()).or_insert_with(|| shared.runner.kind(kind)).clone()
    }
}

/// What is wrong with a concurrency key, if anything: 1 to
/// [`MAX_CONCURRENCY_KEY_BYTES`] bytes, no control characters (a store
/// joins kind and key with one).
fn concurrency_key_problem(key: &str) -> Option<String> {
    if key.is_empty() || key.len() > MAX_CONCURRENCY_KEY_BYTES {
        return Some(format!("is {} bytes; a concurrency key is 1 to {MAX_CONCURRENCY_KEY_BYTES}", key.len()));
    }
    key.chars().any(char::is_control).then(|| "holds a control character".to_string())
}

/// The job `request` (the `index`-th of its batch) asks for, with its
/// defaults filled in, or why it may not be made.
pub(super) fn validate(shared: &Shared, kinds: &mut Kinds, origin: Origin, index: usize, r: EnqueueRequest) -> Result<NewJob, EnqueueError> {
    let kind = kinds.get(shared, &r.kind);
    let default_attempts = match (&kind, origin) {
        (Some(kind), Origin::Client) if !kind.trigger.accepts_jobs() => {
            return Err(EnqueueError::NotEnqueued { kind: r.kind, trigger: kind.trigger.name() });
        }
        (Some(kind), _) => kind.retry.max_attempts,
        (None, Origin::Child { .. }) => crate::plugin::DEFAULT_MAX_ATTEMPTS,
        (None, Origin::Tick) => 1,
        (None, Origin::Client) => {
            // Only the kinds a client may enqueue: not schedules, loops or start-up plugins.
            let runner = &shared.runner;
            let enqueueable: Vec<String> =
                runner.kinds().into_iter().filter(|k| runner.kind(k).is_some_and(|info| info.trigger.accepts_jobs())).collect();
            return Err(EnqueueError::UnknownKind { kind: r.kind, known: enqueueable.join(", ") });
        }
    };
    let client = origin == Origin::Client;
    let limit = shared.config.max_payload_bytes;
    if client && r.payload.len() > limit {
        return Err(EnqueueError::PayloadTooLarge { index, size: r.payload.len(), limit });
    }
    let queue = r.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_string());
    if client && !shared.wake.contains_key(&queue) {
        let known = shared.wake.keys().cloned().collect::<Vec<_>>().join(", ");
        return Err(EnqueueError::UnknownQueue { index, queue, known });
    }
    let max_attempts = r.max_attempts.unwrap_or(default_attempts);
    if max_attempts == 0 || max_attempts > crate::plugin::MAX_ATTEMPTS {
        return Err(EnqueueError::BadAttempts { index, given: max_attempts });
    }
    if let Some(key) = r.unique_key.as_ref().filter(|key| key.len() > MAX_UNIQUE_KEY_BYTES) {
        return Err(EnqueueError::UniqueKeyTooLong { index, size: key.len(), limit: MAX_UNIQUE_KEY_BYTES });
    }
    if let Some(problem) = r.concurrency_key.as_deref().and_then(concurrency_key_problem) {
        return Err(EnqueueError::BadConcurrencyKey { index, problem });
    }
    Ok(NewJob {
        kind: r.kind,
        queue,
        priority: r.priority.unwrap_or(0),
        payload: r.payload,
        max_attempts,
        scheduled_at: r.scheduled_at,
        unique_key: r.unique_key,
        parent_id: match origin {
            Origin::Child { parent } => parent,
            Origin::Client | Origin::Tick => None,
        },
        concurrency_key: r.concurrency_key,
        traceparent: r.traceparent,
    })
}

/// A client's jobs: validated (an unknown kind, an oversized payload or an
/// unserved queue refuses the whole batch before anything is stored),
/// held to their tenants' quotas, traced, inserted, and their queues woken.
pub(super) async fn from_client(shared: &Shared, requests: Vec<EnqueueRequest>) -> Result<Vec<Inserted>, EnqueueError> {
    if !shared.is_accepting() {
        return Err(EnqueueError::ShuttingDown);
    }
    let mut kinds = Kinds::default();
    let mut jobs = requests
        .into_iter()
        .enumerate()
        .map(|(index, r)| validate(shared, &mut kinds, Origin::Client, index, r))
        .collect::<Result<Vec<_>, _>>()?;
    check_waiting_quota(shared, &jobs).await?;
    trace_enqueue(shared, &mut jobs);
    let inserted = shared.store.insert_many(jobs).await?;
    shared.wake_each(inserted.iter().filter(|i| i.created).map(|i| i.job.queue.as_str()));
    Ok(inserted)
}

/// The job of schedule `kind`'s tick at `tick`, keyed by schedule and tick
/// so that every host firing it makes one job.
pub(super) fn tick(shared: &Shared, kind: &str, tick: Millis) -> Result<NewJob, EnqueueError> {
    let request = EnqueueRequest {
        kind: kind.to_string(),
        unique_key: Some(crate::queue::schedule_key(kind, tick)),
        scheduled_at: Some(tick),
        ..EnqueueRequest::default()
    };
    validate(shared, &mut Kinds::default(), Origin::Tick, 0, request)
}

/// The jobs a run of `parent_kind` enqueued, as the store inserts them
/// with its completion (or, for a loop pass or a start-up run, after it):
/// each is of a kind of the parent's own tenant (a tenant's plugin names
/// `echo` and gets its tenant's `echo`, never another's), names its parent,
/// takes its kind's retry policy (the default when no plugin of that kind
/// is loaded here: it waits for one), and is due after its delay from
/// `now`, the completion.
pub(super) fn children(shared: &Shared, parent_kind: &str, parent: Option<JobId>, children: Vec<ChildJob>, now: Millis) -> Vec<NewJob> {
    let mut kinds = Kinds::default();
    let origin = Origin::Child { parent };
    children
        .into_iter()
        .enumerate()
        .filter_map(|(index, child)| {
            let request = EnqueueRequest {
                kind: qualified_kind(tenant_of(parent_kind), &child.kind),
                payload: child.payload,
                queue: child.queue,
                priority: child.priority,
                unique_key: child.unique_key,
                scheduled_at: child.due.map(|due| match due {
                    Due::After(delay) => crate::queue::millis_after(now, delay),
                    Due::At(at) => at,
                }),
                ..EnqueueRequest::default()
            };
            // The capability checked these bounds as the run asked: a
            // refusal here is a host bug, said loudly rather than stored.
            validate(shared, &mut kinds, origin, index, request)
                .inspect_err(|e| tracing::error!(parent = parent_kind, "a child job the capability accepted was refused: {e}"))
                .ok()
        })
        .collect()
}

/// Replaces each job's caller `traceparent` with what it keeps: the
/// context of one `send` span per queue and caller (exporting), or the
/// caller's own when valid.
fn trace_enqueue(shared: &Shared, jobs: &mut [NewJob]) {
    let tracing = &shared.config.tracing;
    if !tracing.is_exporting() && jobs.iter().all(|j| j.traceparent.is_none()) {
        return;
    }
    let mut kept: HashMap<(String, Option<String>), Option<String>> = HashMap::new();
    let mut counts: HashMap<(String, Option<String>), usize> = HashMap::new();
    for job in jobs.iter() {
        *counts.entry((job.queue.clone(), job.traceparent.clone())).or_default() += 1;
    }
    for job in jobs.iter_mut() {
        let key = (job.queue.clone(), job.traceparent.take());
        let count = counts[&key];
        job.traceparent = kept.entry(key).or_insert_with_key(|(queue, caller)| tracing.enqueued(caller.as_deref(), queue, count)).clone();
    }
}

/// Refuses `jobs` if they would take a tenant past its `max_waiting`.
/// Counted before the insert, not in its transaction: jobs enqueued
/// at the same moment (on other hosts too) may pass it by as many.
async fn check_waiting_quota(shared: &Shared, jobs: &[NewJob]) -> Result<(), EnqueueError> {
    for policy in shared.config.tenants.iter().filter(|p| p.max_waiting.is_some()) {
        let tenant = policy.tenant.as_deref();
        let adding = jobs.iter().filter(|j| tenant_of(&j.kind) == tenant).count() as u64;
        let limit = policy.max_waiting.unwrap_or(u64::MAX);
        if adding == 0 {
            continue;
        }
        let waiting = shared.store.waiting_count(tenant).await?;
        if waiting + adding > limit {
            return Err(EnqueueError::OverQuota { tenant: tenant.unwrap_or("").to_string(), waiting, adding, limit });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::concurrency_key_problem;

    #[test]
    fn a_concurrency_key_is_short_and_holds_no_control_characters() {
        assert_eq!(concurrency_key_problem("customer-42"), None);
        assert!(concurrency_key_problem("").unwrap().contains("1 to 256"));
        assert!(concurrency_key_problem(&"k".repeat(257)).unwrap().contains("is 257 bytes"));
        assert_eq!(concurrency_key_problem("a\u{1f}b").as_deref(), Some("holds a control character"));
    }
}
