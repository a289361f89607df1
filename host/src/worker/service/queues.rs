//! Queues as a caller sees them (its own jobs' counts; the oldest wait is
//! the operator's), pausing and resuming them (the operator's), and what
//! covers the whole host: readiness, `/metrics`, tenants' use.

use super::{JobService, ServiceError};
use crate::queue::{JobState, Limit, StateCount};
use crate::tenant::Caller;

/// A queue this host serves, as `GET /queues` and the dashboard show it.
#[derive(Debug, Clone)]
pub struct QueueView {
    pub name: String,
    pub concurrency: usize,
    pub light_concurrency: usize,
    pub paused: bool,
    /// Every state, zeros included, counting the caller's jobs only.
    pub jobs: Vec<(JobState, u64)>,
    /// How long its oldest due job has waited; the operator's only (it is
    /// every tenant's), `None` for a tenant or when none is due.
    pub oldest_waiting_ms: Option<i64>,
}

/// One tenant's use: what it has running and waiting, and how long its due
/// jobs waited on each of its limits.
#[derive(Debug, Clone)]
pub struct TenantUse {
    pub running: u64,
    pub waiting: u64,
    /// Throttled seconds by limit, as this host's claims saw them.
    pub throttled_seconds: Vec<(Limit, f64)>,
}

impl JobService {
    /// Each queue this host serves, in config order.
    pub async fn queues(&self, caller: &Caller) -> Result<Vec<QueueView>, ServiceError> {
        let store = self.dispatcher.store();
        let known = store.queues().await?;
        let counts = store.counts().await?;
        let now = self.now();
        let mut queues = Vec::with_capacity(self.dispatcher.config().queues.len());
        for q in &self.dispatcher.config().queues {
            let jobs = JobState::ALL
                .iter()
                .map(|s| {
                    let mine = |c: &&StateCount| caller.tenant().is_none() || c.tenant.as_deref() == caller.tenant();
                    (*s, counts.iter().filter(|c| c.queue == q.name && c.state == *s).filter(mine).map(|c| c.count).sum())
                })
                .collect();
            let oldest_waiting_ms = match caller {
                Caller::Admin => store.next_due(&q.name).await?.filter(|at| *at <= now).map(|at| now - at),
                Caller::Tenant(_) => None,
            };
            queues.push(QueueView {
                name: q.name.clone(),
                concurrency: q.concurrency,
                light_concurrency: q.light_concurrency,
                paused: known.iter().any(|k| k.name == q.name && k.paused),
                jobs,
                oldest_waiting_ms,
            });
        }
        Ok(queues)
    }

    /// Pauses or resumes a queue this host serves (the operator's only).
    pub async fn set_paused(&self, caller: &Caller, name: &str, paused: bool) -> Result<(), ServiceError> {
        Self::operator_only(caller, if paused { "pausing a queue" } else { "resuming a queue" })?;
        if !self.dispatcher.config().queues.iter().any(|q| q.name == name) {
            return Err(ServiceError::NotFound(format!("queue {name:?} is not served by this host")));
        }
        let store = self.dispatcher.store();
        if paused {
            store.pause_queue(name).await?;
            tracing::info!(queue = %name, "queue paused");
        } else {
            store.resume_queue(name).await?;
            self.dispatcher.wake(name);
            tracing::info!(queue = %name, "queue resumed");
        }
        Ok(())
    }

    /// Why the host is not ready for work, if it is not (shutting down, or
    /// a store that does not answer), as `/readyz` says it.
    pub async fn not_ready(&self) -> Option<String> {
        if !self.dispatcher.is_accepting() {
            return Some("not ready: shutting down".into());
        }
        self.dispatcher.store().queues().await.err().map(|e| format!("the job store does not answer: {e}"))
    }

    /// The host's metrics as OpenMetrics text (the operator's only).
    pub async fn metrics_text(&self, caller: &Caller) -> Result<String, ServiceError> {
        Self::operator_only(caller, "/metrics")?;
        let counts = self.dispatcher.store().counts().await?;
        Ok(self.dispatcher.metrics().render(&counts))
    }

    /// What each of `tenants` has running and waiting, and its throttled time.
    pub async fn tenants_use(&self, tenants: &[&str]) -> Result<Vec<TenantUse>, ServiceError> {
        let counts = self.dispatcher.store().counts().await?;
        let metrics = self.dispatcher.metrics();
        Ok(tenants
            .iter()
            .map(|name| {
                let count = |states: &[JobState]| -> u64 {
                    counts.iter().filter(|c| c.tenant.as_deref() == Some(*name) && states.contains(&c.state)).map(|c| c.count).sum()
                };
                TenantUse {
                    running: count(&[JobState::Running]),
                    waiting: count(&[JobState::Available, JobState::Scheduled, JobState::Retryable]),
                    throttled_seconds: [Limit::MaxRunning, Limit::Rate, Limit::MaxPerKey, Limit::KindRate]
                        .into_iter()
                        .map(|limit| (limit, metrics.throttled_seconds(Some(name), limit)))
                        .collect(),
                }
            })
            .collect())
    }
}
