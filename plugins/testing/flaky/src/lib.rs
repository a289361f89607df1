//! Fails with a retryable error on its first `fail_attempts` attempts, then
//! succeeds: the retry path, from backoff to the dead letter.

use kiln_sdk::{Job, JobError, JobResult};

fn run(job: Job) -> JobResult {
    let fail_attempts = serde_json::from_slice::<serde_json::Value>(&job.payload)
        .ok()
        .and_then(|v| v.get("fail_attempts")?.as_u64())
        .unwrap_or(u64::MAX);
    if u64::from(job.attempt) <= fail_attempts {
        return Err(JobError::retry(format!("upstream unavailable (attempt {})", job.attempt)));
    }
    kiln_sdk::ok_json(&serde_json::json!({ "succeeded_on_attempt": job.attempt }))
}

kiln_sdk::export_job!(run);
