//! Enqueueing follow-up jobs (`kiln:worker/enqueue`): the kinds a grant
//! names, and the children one run asks for. The children are an effect:
//! collected here during the run, returned with its report, and inserted
//! by the worker in the transaction that completes the job, so a run that
//! does not complete `ok` enqueues nothing.
//!
//! Linked by hand, like `context`: the request's strings and payload
//! arrive as views into the guest's memory, and each is checked against
//! its bound before the host copies it, inside the call (the guest may
//! free them as soon as it returns).

use super::{InScope, Scope};
use crate::names::{MAX_NAME_BYTES, MAX_UNIQUE_KEY_BYTES};
use std::time::Duration;
use wasmtime::{AsContext, StoreContextMut};
use wasmtime::component::{ComponentType, Lift, Linker, Lower, WasmList, WasmStr};

/// The interface's name as components import it.
pub(crate) const INTERFACE: &str = "kiln:worker/enqueue@0.1.0";
/// The most children one run may enqueue.
pub const MAX_CHILDREN_PER_RUN: usize = 10_000;
/// The most payload bytes one run's children may hold together.
pub const MAX_CHILD_BYTES_PER_RUN: usize = 32 << 20;
/// The longest a child may be put off (`delay-ms`, or `scheduled-at-ms` ahead).
pub const MAX_CHILD_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a child may first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// This long after its parent completes.
    After(Duration),
    /// At this time, milliseconds since the Unix epoch.
    At(i64),
}

/// One job a run asked to enqueue, checked against its grant and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildJob {
    pub kind: String,
    /// JSON, or empty.
    pub payload: Vec<u8>,
    pub queue: Option<String>,
    pub priority: Option<i32>,
    /// `None`: as soon as its parent completes.
    pub due: Option<Due>,
    pub unique_key: Option<String>,
}

/// The children one run has enqueued so far.
#[derive(Debug, Default)]
pub struct Children {
    pub jobs: Vec<ChildJob>,
    bytes: usize,
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct JobRequest {
    kind: WasmStr,
    payload: WasmList<u8>,
    queue: Option<WasmStr>,
    priority: Option<i32>,
    #[component(name = "delay-ms")]
    delay_ms: Option<u64>,
    #[component(name = "scheduled-at-ms")]
    scheduled_at_ms: Option<i64>,
    #[component(name = "unique-key")]
    unique_key: Option<WasmStr>,
}

#[derive(Debug, ComponentType, Lower)]
#[component(variant)]
enum EnqueueError {
    #[component(name = "denied")]
    Denied(String),
    #[component(name = "invalid")]
    Invalid(String),
    #[component(name = "limit-reached")]
    LimitReached(String),
}

/// Links `enqueue`, which records a child in the store's scope.
pub(crate) fn add_to_linker<T: InScope + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let mut enqueue = linker.instance(INTERFACE)?;
    enqueue.func_wrap("enqueue", |mut store: StoreContextMut<'_, T>, (request,): (JobRequest,)| {
        let answer = match check(&store, &request) {
            Ok(child) => Ok(store.data_mut().scope().children.record(child)),
            Err(error) => Err(error),
        };
        if let Err(error) = &answer {
            let text = match error {
                EnqueueError::Denied(t) | EnqueueError::Invalid(t) | EnqueueError::LimitReached(t) => t,
            };
            tracing::debug!(target: "kiln::plugin", "enqueue refused: {text}");
        }
        Ok((answer,))
    })?;
    Ok(())
}

impl Children {
    fn record(&mut self, child: ChildJob) -> u32 {
        self.bytes += child.payload.len();
        self.jobs.push(child);
        u32::try_from(self.jobs.len()).unwrap_or(u32::MAX)
    }
}

/// A guest string of at most `limit` bytes, copied; `what` names it in the error.
fn bounded_str<T: 'static>(store: &StoreContextMut<'_, T>, text: &WasmStr, limit: usize, what: &str) -> Result<String, EnqueueError> {
    let text = text.to_str(store.as_context()).map_err(|e| EnqueueError::Invalid(format!("{what}: {e}")))?;
    if text.len() > limit {
        return Err(EnqueueError::Invalid(format!("{what} is {} bytes, over the most of {limit}", text.len())));
    }
    Ok(text.into_owned())
}

fn check<T: InScope + 'static>(store: &StoreContextMut<'_, T>, request: &JobRequest) -> Result<ChildJob, EnqueueError> {
    let scope: &Scope = store.data().scope_ref();
    let (granted, queues, max_payload) = (&scope.grants.enqueue, &scope.grants.enqueue_queues, scope.max_payload_bytes);
    let (count, bytes) = (scope.children.jobs.len(), scope.children.bytes);
    let kind = bounded_str(store, &request.kind, MAX_NAME_BYTES, "kind")?;
    if !granted.contains(&kind) {
        let names = if granted.is_empty() { "none".to_string() } else { granted.join(", ") };
        return Err(EnqueueError::Denied(format!(
            "kind {kind:?} is not granted: `[capabilities] enqueue` in plugin.toml names {names}"
        )));
    }
    if count >= MAX_CHILDREN_PER_RUN {
        return Err(EnqueueError::LimitReached(format!("this run has enqueued {count} jobs, the most one run may")));
    }
    let size = request.payload.len();
    if size > max_payload {
        return Err(EnqueueError::Invalid(format!("payload is {size} bytes, over the limit of {max_payload} bytes")));
    }
    if bytes + size > MAX_CHILD_BYTES_PER_RUN {
        return Err(EnqueueError::LimitReached(format!(
            "this run's children would hold {} payload bytes, over the most of {MAX_CHILD_BYTES_PER_RUN} one run may enqueue",
            bytes + size
        )));
    }
    let payload = request.payload.as_le_slice(store.as_context()).to_vec();
    if !payload.is_empty() {
        serde_json::from_slice::<serde::de::IgnoredAny>(&payload)
            .map_err(|e| EnqueueError::Invalid(format!("payload is not JSON: {e}")))?;
    }
    let queue = match &request.queue {
        Some(q) => {
            let q = bounded_str(store, q, MAX_NAME_BYTES, "queue")?;
            if queues.as_ref().is_some_and(|served| !served.contains(&q)) {
                let served = queues.as_deref().unwrap_or_default().join(", ");
                return Err(EnqueueError::Invalid(format!("queue {q:?} is not served here (queues: {served})")));
            }
            Some(q)
        }
        None => None,
    };
    let due = match (request.delay_ms, request.scheduled_at_ms) {
        (Some(_), Some(_)) => return Err(EnqueueError::Invalid("give delay-ms or scheduled-at-ms, not both".into())),
        (Some(ms), None) => {
            let delay = Duration::from_millis(ms);
            if delay > MAX_CHILD_DELAY {
                return Err(EnqueueError::Invalid(format!("delay-ms {ms} is over the most of {} (365 days)", MAX_CHILD_DELAY.as_millis())));
            }
            Some(Due::After(delay))
        }
        (None, Some(at)) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            let latest = now.saturating_add(MAX_CHILD_DELAY.as_millis() as i64);
            if !(0..=latest).contains(&at) {
                return Err(EnqueueError::Invalid(format!("scheduled-at-ms {at} is not between 0 and 365 days from now ({latest})")));
            }
            Some(Due::At(at))
        }
        (None, None) => None,
    };
    let unique_key = request.unique_key.as_ref().map(|k| bounded_str(store, k, MAX_UNIQUE_KEY_BYTES, "unique-key")).transpose()?;
    Ok(ChildJob { kind, payload, queue, priority: request.priority, due, unique_key })
}
