//! Asks to be retried absurdly far in the future: `"1e15"` (past year
//! 9999), `"2^63"` and `"max"` (which wrap a signed 64-bit time) as the
//! payload pick the delay in milliseconds.

use kiln_sdk::{Job, JobError, JobResult};
use std::time::Duration;

fn run(job: Job) -> JobResult {
    let mode: String = job.json().unwrap_or_else(|_| "max".into());
    let ms = match mode.as_str() {
        "1e15" => 1_000_000_000_000_000,
        "2^63" => 1 << 63,
        _ => u64::MAX,
    };
    Err(JobError::retry_after(format!("see you in {ms} ms"), Duration::from_millis(ms)))
}

kiln_sdk::export_job!(run);
