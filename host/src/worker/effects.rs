//! What a run changed in Kiln's own state (its kv writes, the jobs it
//! enqueued), made into what the store applies: with the completion of
//! its job, in the transaction that completes it under its fencing token
//! (`for_completion`), or after a loop pass or a start-up run, which
//! complete no job (`apply_outside_a_job`). A run that did not end `ok`
//! brings none (the sandbox keeps them only for an `ok` run).

use super::enqueue;
use super::state::Shared;
use crate::capability::KvEffect;
use crate::queue::{Effects, Job, KvChange, KvWrite, Millis, StoreError};
use crate::sandbox::Report;

/// A run's kv writes as the store applies them: in the stores of the
/// plugin that ran (its name is their namespace).
pub fn kv_writes(plugin: &str, effects: Vec<KvEffect>) -> Vec<KvWrite> {
    use crate::capability::kv::KvChange as Ran;
    effects
        .into_iter()
        .map(|e| KvWrite {
            namespace: plugin.to_string(),
            store: e.store,
            key: e.key,
            change: match e.change {
                Ran::Set(value) => KvChange::Set(value),
                Ran::Delete => KvChange::Delete,
                // Bounded to 10^17 by the capability.
                Ran::Add(delta) => KvChange::Add(i64::try_from(delta).unwrap_or(i64::MAX)),
            },
        })
        .collect()
}

/// Fills `effects` with what the `ok` run of `job` changed, taken out of
/// its report; its children carry the attempt's trace context.
pub(super) fn for_completion(shared: &Shared, job: &Job, report: &mut Report, traceparent: Option<&str>, now: Millis, effects: &mut Effects) {
    effects.children = enqueue::children(shared, &job.kind, Some(job.id), std::mem::take(&mut report.enqueued), now);
    for child in &mut effects.children {
        child.traceparent = traceparent.map(str::to_string);
    }
    effects.kv = kv_writes(&job.kind, std::mem::take(&mut report.kv_writes));
}

/// Applies what a loop pass or a start-up run of `plugin` changed, and
/// wakes the children's queues. Those runs complete no job for the
/// effects to go in with: they are applied after the pass's checkpoint is
/// stored (or the start-up run ended `ok`), in transactions of their own.
pub(super) async fn apply_outside_a_job(shared: &Shared, plugin: &str, report: &mut Report) -> Result<(), StoreError> {
    let writes = kv_writes(plugin, std::mem::take(&mut report.kv_writes));
    if !writes.is_empty() {
        shared.store.write_kv(writes).await?;
    }
    let children = std::mem::take(&mut report.enqueued);
    if children.is_empty() {
        return Ok(());
    }
    let jobs = enqueue::children(shared, plugin, None, children, shared.clock.now());
    let inserted = shared.store.insert_many(jobs).await?;
    shared.wake_each(inserted.iter().filter(|i| i.created).map(|i| i.job.queue.as_str()));
    Ok(())
}
