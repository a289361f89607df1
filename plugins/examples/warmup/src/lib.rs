//! A start-up warm-up: "loads reference data" for half a second, checking
//! for cancellation as it goes, then reports what it loaded.

use kiln_sdk::{Job, JobError, JobResult, context};
use std::time::Duration;

/// How long the simulated load takes.
const LOAD_TIME: Duration = Duration::from_millis(500);
/// How often it checks `cancelled()`.
const STEP: Duration = Duration::from_millis(10);

fn run(_job: Job) -> JobResult {
    let mut loaded = Duration::ZERO;
    while loaded < LOAD_TIME {
        if context::cancelled() {
            return Err(JobError::retry("cancelled while warming up"));
        }
        std::thread::sleep(STEP);
        loaded += STEP;
    }
    kiln_sdk::info("reference data loaded");
    Ok(br#"{"warmed_up":true}"#.to_vec())
}

kiln_sdk::export_job!(run);
