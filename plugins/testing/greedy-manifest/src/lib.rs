//! An honest job whose manifest grants itself unlimited fuel and time:
//! a host must refuse the manifest before anything runs.

use kiln_sdk::{Job, JobResult};

fn run(job: Job) -> JobResult {
    Ok(job.payload)
}

kiln_sdk::export_job!(run);
