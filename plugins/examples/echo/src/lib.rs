//! The smallest job: returns its payload unchanged.

use kiln_sdk::{Job, JobResult};

fn run(job: Job) -> JobResult {
    Ok(job.payload)
}

kiln_sdk::export_job!(run);
