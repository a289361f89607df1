//! A fan-out: one job in, one child job per item out. The children are
//! inserted when this run completes `ok`, in the same transaction, each
//! with this job as its parent; a run that fails enqueues none of them, so
//! a retry never doubles them.
//!
//! Payload: `{"items": [ITEM, ...], "kind": "echo"|"send-email", "delay_ms": N?}`
//! (`kind` defaults to `echo`). Returns `{"enqueued": N}`.

use kiln_sdk::enqueue::Child;
use kiln_sdk::{Job, JobError, JobResult};
use serde_json::{Value, json};
use std::time::Duration;

fn run(job: Job) -> JobResult {
    let input: Value = job.json()?;
    let Some(items) = input["items"].as_array() else {
        return Err(JobError::invalid_input("`items` must be an array"));
    };
    let kind = input["kind"].as_str().unwrap_or("echo");
    let mut enqueued = 0;
    for item in items {
        let mut child = Child::new(kind, item);
        if let Some(ms) = input["delay_ms"].as_u64() {
            child = child.delay(Duration::from_millis(ms));
        }
        enqueued = child.send().map_err(|e| JobError::invalid_input(e.to_string()))?;
    }
    kiln_sdk::info(&format!("enqueued {enqueued} {kind} jobs"));
    kiln_sdk::ok_json(&json!({ "enqueued": enqueued }))
}

kiln_sdk::export_job!(run);
