//! Fails with a retryable error on its first `fail_attempts` attempts, then
//! succeeds: the retry path, from backoff to the dead letter. With
//! `"log_lines": N` each attempt first writes N lines naming its attempt,
//! alternately with `context.log` and on stdout.

use kiln_sdk::{Job, JobError, JobResult, context};

fn run(job: Job) -> JobResult {
    let settings = serde_json::from_slice::<serde_json::Value>(&job.payload).unwrap_or_default();
    let fail_attempts = settings.get("fail_attempts").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
    let log_lines = settings.get("log_lines").and_then(|v| v.as_u64()).unwrap_or(0);
    for line in 0..log_lines {
        let message = format!("attempt {} line {line}", job.attempt);
        match line % 2 {
            0 => context::log(context::LogLevel::Info, &message),
            _ => println!("{message}"),
        }
    }
    if u64::from(job.attempt) <= fail_attempts {
        return Err(JobError::retry(format!("upstream unavailable (attempt {})", job.attempt)));
    }
    kiln_sdk::ok_json(&serde_json::json!({ "succeeded_on_attempt": job.attempt }))
}

kiln_sdk::export_job!(run);
