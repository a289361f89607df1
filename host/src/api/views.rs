//! The JSON shapes of the API: what a client sends and what it gets back.

use crate::queue::{AttemptError, Job, to_rfc3339};
use crate::tenant::Caller;
use serde::{Deserialize, Serialize};

/// `POST /jobs` body (or an array of these).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// A tenant's plugin name; the operator writes a tenant's as `acme/echo`.
    pub kind: String,
    /// Any JSON; stored as its JSON text. Absent: an empty payload.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    pub queue: Option<String>,
    pub priority: Option<i32>,
    pub unique_key: Option<String>,
    /// RFC 3339; absent or past: due now.
    pub scheduled_at: Option<String>,
    pub max_attempts: Option<u32>,
    /// Its group under the kind's `[throttle] max_per_key` (a customer id, say).
    pub concurrency_key: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: i64,
    /// As the caller writes it: `echo` for its tenant, `acme/echo` for the operator.
    pub kind: String,
    /// The tenant the job belongs to; null for the host's own kinds.
    pub tenant: Option<String>,
    pub queue: String,
    pub priority: i32,
    pub state: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub payload: serde_json::Value,
    pub result: serde_json::Value,
    pub errors: Vec<ErrorView>,
    pub unique_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub scheduled_at: String,
    pub created_at: String,
    pub attempted_at: Option<String>,
    pub finalized_at: Option<String>,
    /// The plugin version that ran the latest attempt.
    pub plugin_version: Option<String>,
    /// The job whose successful run enqueued this one.
    pub parent_id: Option<i64>,
    pub leased_by: Option<String>,
    pub cancel_requested: bool,
}

/// A job as `POST /jobs` answers it: the job, and whether this request
/// created it (`false`: a job with the same `unique_key` already existed,
/// and this is that job).
#[derive(Debug, Serialize)]
pub struct EnqueuedView {
    #[serde(flatten)]
    pub job: JobView,
    pub created: bool,
}

#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub attempt: u32,
    pub at: String,
    pub outcome: String,
    pub message: String,
}

/// Stored bytes as JSON when they are JSON, as text otherwise, null when empty.
pub fn bytes_value(bytes: &[u8]) -> serde_json::Value {
    if bytes.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned().into())
}

impl JobView {
    /// `job` as `caller` sees it.
    pub fn of(job: &Job, caller: &Caller) -> Self {
        Self {
            id: job.id,
            kind: caller.name_of(&job.kind).to_string(),
            tenant: job.tenant().map(str::to_string),
            queue: job.queue.clone(),
            priority: job.priority,
            state: job.state.to_string(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            payload: bytes_value(&job.payload),
            result: job.result.as_deref().map_or(serde_json::Value::Null, bytes_value),
            errors: job.errors.iter().map(ErrorView::from).collect(),
            unique_key: job.unique_key.clone(),
            concurrency_key: job.concurrency_key.clone(),
            scheduled_at: to_rfc3339(job.scheduled_at),
            created_at: to_rfc3339(job.created_at),
            attempted_at: job.attempted_at.map(to_rfc3339),
            finalized_at: job.finalized_at.map(to_rfc3339),
            plugin_version: job.plugin_version.clone(),
            parent_id: job.parent_id,
            leased_by: job.leased_by.clone(),
            cancel_requested: job.cancel_requested,
        }
    }
}

impl From<&AttemptError> for ErrorView {
    fn from(e: &AttemptError) -> Self {
        Self { attempt: e.attempt, at: to_rfc3339(e.at), outcome: e.outcome.clone(), message: e.message.clone() }
    }
}

/// `GET /jobs` answer: a page of jobs and the cursor for the next one.
#[derive(Debug, Serialize)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Oldest first: pass as `after` to get the next page; null on the last page.
    pub next_after: Option<i64>,
    /// Newest first (`order=newest`): pass as `before` for the next page.
    pub next_before: Option<i64>,
}

/// `GET /jobs` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub after: Option<i64>,
    /// With `order=newest`: only jobs older (smaller id) than this.
    pub before: Option<i64>,
    /// `oldest` (the default) or `newest`.
    pub order: Option<String>,
    pub limit: Option<usize>,
}
