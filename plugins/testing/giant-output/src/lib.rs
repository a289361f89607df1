//! Returns an `ok` value of as many MiB as the payload says (default
//! 120): far over the output limit, within the memory budget. The host
//! must refuse it by its length, before copying it.

use kiln_sdk::{Job, JobResult};

fn run(job: Job) -> JobResult {
    let mib: usize = job.json().unwrap_or(120);
    Ok(vec![b'g'; mib << 20])
}

kiln_sdk::export_job!(run);
