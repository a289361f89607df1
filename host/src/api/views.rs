//! The JSON shapes of the API: what a client sends and what it gets back.

use crate::queue::{Attempt, AttemptError, Job, JobState, LogEntry, Progress, to_rfc3339};
use crate::tenant::Caller;
use serde::{Deserialize, Serialize};

/// `POST /jobs` body (or an array of these).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    /// What its plugin last reported (`context.progress`), with the heartbeat.
    pub progress: Option<ProgressView>,
    /// The trace its attempts are spans of (32 hex digits), when it has one:
    /// its caller's, or the host's own when it exports traces.
    pub trace_id: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProgressView {
    pub percent: u8,
    pub note: Option<String>,
}

/// `GET /jobs/{id}`: the job and every attempt, first first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobDetailView {
    #[serde(flatten)]
    pub job: JobView,
    pub attempts: Vec<AttemptView>,
}

/// One attempt. An attempt the store holds no record of (its host died
/// and its lease ran out, it was cancelled before it started, or it ran
/// before records were kept) shows what its error says; the attempt
/// running now shows as `running`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    pub host: Option<String>,
    pub plugin_version: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub outcome: String,
    pub error: Option<String>,
    pub duration_ms: Option<f64>,
    pub fuel_used: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub http_requests: Option<u64>,
    /// Log bytes past the per-attempt cap, left out.
    pub log_bytes_dropped: Option<u64>,
}

impl AttemptView {
    /// Every attempt of `job`: its records, what its errors say of the
    /// attempts with none, and the one running now.
    pub fn all(job: &Job, records: &[Attempt]) -> Vec<AttemptView> {
        let mut views: std::collections::BTreeMap<u32, AttemptView> = records.iter().map(|a| (a.attempt, AttemptView::from(a))).collect();
        for e in &job.errors {
            views.entry(e.attempt).or_insert_with(|| AttemptView {
                ended_at: Some(to_rfc3339(e.at)),
                outcome: e.outcome.clone(),
                error: Some(e.message.clone()),
                ..AttemptView::blank(e.attempt)
            });
        }
        if job.state == JobState::Running && job.attempt > 0 {
            views.entry(job.attempt).or_insert_with(|| AttemptView {
                host: job.leased_by.clone(),
                started_at: job.attempted_at.map(to_rfc3339),
                outcome: "running".into(),
                ..AttemptView::blank(job.attempt)
            });
        }
        views.into_values().collect()
    }

    fn blank(attempt: u32) -> Self {
        Self {
            attempt,
            host: None,
            plugin_version: None,
            started_at: None,
            ended_at: None,
            outcome: String::new(),
            error: None,
            duration_ms: None,
            fuel_used: None,
            peak_memory_bytes: None,
            http_requests: None,
            log_bytes_dropped: None,
        }
    }
}

impl From<&Attempt> for AttemptView {
    fn from(stored: &Attempt) -> Self {
        let a = &stored.summary;
        Self {
            attempt: stored.attempt,
            host: Some(a.host.clone()),
            plugin_version: stored.plugin_version.clone(),
            started_at: Some(to_rfc3339(a.started_at)),
            ended_at: Some(to_rfc3339(a.ended_at)),
            outcome: a.outcome.clone(),
            error: a.error.clone(),
            duration_ms: Some(a.duration_ms),
            fuel_used: Some(a.fuel_used),
            peak_memory_bytes: Some(a.peak_memory_bytes),
            http_requests: Some(a.http_requests),
            log_bytes_dropped: Some(a.log_bytes_dropped),
        }
    }
}

/// `GET /jobs/{id}/logs` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogLineView>,
    /// Later attempts' lines were left out (about 8 MiB a page): ask for
    /// them by `attempt`.
    pub more: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogLineView {
    pub attempt: u32,
    pub at: String,
    pub level: String,
    pub source: String,
    pub message: String,
}

impl LogLineView {
    pub fn of(attempt: u32, line: LogEntry) -> Self {
        Self { attempt, at: to_rfc3339(line.at), level: line.level, source: line.source, message: line.message }
    }
}

/// `GET /jobs/{id}/logs` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// One attempt's lines; absent: every attempt's.
    pub attempt: Option<u32>,
}

impl From<&Progress> for ProgressView {
    fn from(p: &Progress) -> Self {
        Self { percent: p.percent, note: p.note.clone() }
    }
}

/// A job as `POST /jobs` answers it: the job, and whether this request
/// created it (`false`: a job with the same `unique_key` already existed,
/// and this is that job).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnqueuedView {
    #[serde(flatten)]
    pub job: JobView,
    pub created: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
            progress: job.progress.as_ref().map(ProgressView::from),
            trace_id: job.traceparent.as_deref().and_then(|t| t.get(3..35)).map(str::to_string),
        }
    }
}

impl From<&AttemptError> for ErrorView {
    fn from(e: &AttemptError) -> Self {
        Self { attempt: e.attempt, at: to_rfc3339(e.at), outcome: e.outcome.clone(), message: e.message.clone() }
    }
}

/// `GET /jobs` answer: a page of jobs and the cursor for the next one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Oldest first: pass as `after` to get the next page; null on the last page.
    pub next_after: Option<i64>,
    /// Newest first (`order=newest`): pass as `before` for the next page.
    pub next_before: Option<i64>,
}

/// `GET /jobs` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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

/// `POST /jobs` body: one job, or an array of them. The handler reads each
/// element as a [`JobRequest`] itself, to name the one that is wrong.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum JobRequests {
    One(JobRequest),
    Many(Vec<JobRequest>),
}

/// `POST /jobs` answer: the job, or the array of them, as asked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EnqueuedAnswer {
    One(EnqueuedView),
    Many(Vec<EnqueuedView>),
}

/// Every error answer: what is wrong, and where.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}
