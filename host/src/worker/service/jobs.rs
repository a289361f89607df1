//! Jobs as a caller reaches them: enqueued in its names, read and listed
//! among its own only, retried, deleted and cancelled by hand, dead ones
//! in bulk.

use super::{JobService, ServiceError};
use crate::queue::{Attempt, AttemptLogs, Inserted, Job, JobId, JobList, JobState, ListFilter, StoreError};
use crate::tenant::Caller;
use crate::worker::enqueue::{EnqueueError, EnqueueRequest};

/// The most jobs one bulk call acts on; `more` says to call again.
pub const MAX_BULK: usize = 10_000;
/// The most jobs one page of a bulk call reads.
const BULK_PAGE: usize = 1000;

/// What a bulk call does to each dead job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    Retry,
    Delete,
}

/// What a bulk call did: jobs acted on, jobs left as they were (another
/// job took the unique key, a schedule's newest tick, a job that changed
/// meanwhile), and whether dead jobs are left for another call.
#[derive(Debug, Clone, Default)]
pub struct Bulk {
    pub done: usize,
    pub skipped: usize,
    pub more: bool,
}

impl JobService {
    /// Enqueues a caller's jobs (kinds in its names); an error names only
    /// the caller's own kinds.
    pub async fn enqueue(&self, caller: &Caller, mut requests: Vec<EnqueueRequest>) -> Result<Vec<Inserted>, ServiceError> {
        for r in &mut requests {
            r.kind = caller.kind(&r.kind);
        }
        self.dispatcher.enqueue(requests).await.map_err(|e| scoped(e, caller).into())
    }

    /// A page of the caller's jobs: `filter` names a kind as the caller
    /// does, and whatever tenant it names, the caller's own are listed.
    pub async fn list(&self, caller: &Caller, mut filter: ListFilter) -> Result<JobList, ServiceError> {
        filter.kind = filter.kind.map(|k| caller.kind(&k));
        filter.tenant = caller.tenant().map(str::to_string);
        Ok(self.dispatcher.store().list(filter).await?)
    }

    /// Job `id`, if `caller` owns it. A job's kind, so its tenant, never
    /// changes: what is checked here still holds when the caller acts on it.
    pub async fn job(&self, caller: &Caller, id: JobId) -> Result<Job, ServiceError> {
        let not_found = || ServiceError::NotFound(format!("job {id} not found"));
        let job = self.dispatcher.store().get(id).await?.ok_or_else(not_found)?;
        if !caller.owns(&job.kind) {
            return Err(ServiceError::OtherTenants { what: format!("job {id}") });
        }
        Ok(job)
    }

    /// Every attempt of a job the caller read with [`JobService::job`].
    pub async fn attempts(&self, job: &Job) -> Result<Vec<Attempt>, ServiceError> {
        Ok(self.dispatcher.store().attempts(job.id).await?)
    }

    /// The log lines of a job's attempts (one, or all up to `max_bytes`).
    pub async fn logs(&self, job: &Job, attempt: Option<u32>, max_bytes: u64) -> Result<AttemptLogs, ServiceError> {
        if let Some(n) = attempt.filter(|n| *n == 0 || *n > job.attempt) {
            return Err(ServiceError::NotFound(format!("job {} has no attempt {n} (it has had {})", job.id, job.attempt)));
        }
        Ok(self.dispatcher.store().attempt_logs(job.id, attempt, max_bytes).await?)
    }

    /// Retries a dead or cancelled job of the caller's now.
    pub async fn retry(&self, caller: &Caller, id: JobId) -> Result<Job, ServiceError> {
        self.job(caller, id).await?;
        let job = self.dispatcher.store().retry_by_hand(id).await?;
        self.dispatcher.wake(&job.queue);
        tracing::info!(kind = %job.kind, job = job.id, attempt = job.attempt, max_attempts = job.max_attempts, "job retried by hand");
        Ok(job)
    }

    /// Deletes a dead or cancelled job of the caller's; answers it as it was.
    pub async fn delete(&self, caller: &Caller, id: JobId) -> Result<Job, ServiceError> {
        self.job(caller, id).await?;
        let job = self.dispatcher.store().delete_by_hand(id).await?;
        tracing::info!(kind = %job.kind, job = job.id, state = job.state.as_str(), "job deleted by hand");
        Ok(job)
    }

    /// Cancels a job of the caller's, or asks its run to stop.
    pub async fn cancel(&self, caller: &Caller, id: JobId) -> Result<Job, ServiceError> {
        self.job(caller, id).await?;
        let job = self.dispatcher.cancel(id).await?;
        match job.state {
            JobState::Cancelled => tracing::info!(kind = %job.kind, job = job.id, "job cancelled by hand"),
            _ => tracing::info!(kind = %job.kind, job = job.id, "cancel requested by hand; the running job is asked to stop"),
        }
        Ok(job)
    }

    /// Applies `action` to every dead job of the caller's (of a kind, in
    /// the caller's names, and a queue), up to [`MAX_BULK`], a page at a
    /// time; wakes the queues of what it retried.
    pub async fn on_dead_jobs(&self, caller: &Caller, kind: Option<&str>, queue: Option<&str>, action: BulkAction) -> Result<Bulk, ServiceError> {
        let store = self.dispatcher.store();
        let mut bulk = Bulk { more: true, ..Bulk::default() };
        let mut queues = std::collections::BTreeSet::new();
        let mut after = None;
        while bulk.more && bulk.done + bulk.skipped < MAX_BULK {
            let filter = ListFilter {
                state: Some(JobState::Dead),
                kind: kind.map(|k| caller.kind(k)),
                queue: queue.map(str::to_string),
                tenant: caller.tenant().map(str::to_string),
                after_id: after,
                limit: BULK_PAGE.min(MAX_BULK - bulk.done - bulk.skipped),
                ..ListFilter::default()
            };
            let page = store.list(filter).await?;
            bulk.more = page.more;
            after = page.jobs.last().map(|j| j.id);
            for job in &page.jobs {
                let done = match action {
                    BulkAction::Retry => store.retry_by_hand(job.id).await,
                    BulkAction::Delete => store.delete_by_hand(job.id).await,
                };
                match done {
                    Ok(job) => {
                        bulk.done += 1;
                        queues.insert(job.queue);
                    }
                    Err(StoreError::UniqueConflict { .. } | StoreError::InvalidState { .. } | StoreError::Kept { .. } | StoreError::NotFound(_)) => {
                        bulk.skipped += 1
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if action == BulkAction::Retry {
            for queue in &queues {
                self.dispatcher.wake(queue);
            }
        }
        let kind = kind.unwrap_or("any");
        match action {
            BulkAction::Retry => tracing::info!(retried = bulk.done, skipped = bulk.skipped, kind, "dead jobs retried by hand"),
            BulkAction::Delete => tracing::info!(deleted = bulk.done, skipped = bulk.skipped, kind, "dead jobs deleted by hand"),
        }
        Ok(bulk)
    }
}

/// An enqueue error in the caller's words: a tenant is told of its own
/// kinds only, by its own names.
fn scoped(e: EnqueueError, caller: &Caller) -> EnqueueError {
    match (e, caller) {
        (EnqueueError::UnknownKind { kind, known }, Caller::Tenant(_)) => {
            let known: Vec<&str> = known.split(", ").filter(|k| caller.owns(k)).map(|k| caller.name_of(k)).collect();
            EnqueueError::UnknownKind { kind: caller.name_of(&kind).to_string(), known: known.join(", ") }
        }
        (EnqueueError::NotEnqueued { kind, trigger }, Caller::Tenant(_)) => EnqueueError::NotEnqueued { kind: caller.name_of(&kind).to_string(), trigger },
        (e, _) => e,
    }
}
