//! Fails with a ~50 MiB error message: `"retry"`, `"fatal"` or
//! `"invalid"` as the payload picks which. The host must keep only a
//! bounded prefix, read in place, never the whole message.

use kiln_sdk::{Job, JobError, JobResult};

const MESSAGE_BYTES: usize = 50 << 20;

fn run(job: Job) -> JobResult {
    let mode: String = job.json().unwrap_or_else(|_| "retry".into());
    let message = format!("huge {mode} message: {}", "e".repeat(MESSAGE_BYTES));
    Err(match mode.as_str() {
        "fatal" => JobError::fatal(message),
        "invalid" => JobError::invalid_input(message),
        _ => JobError::retry(message),
    })
}

kiln_sdk::export_job!(run);
