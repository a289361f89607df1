//! Returns 8 MiB: more than the host's output cap, less than its memory limit.

use kiln_sdk::{Job, JobResult};

fn run(_job: Job) -> JobResult {
    Ok(vec![b'x'; 8 << 20])
}

kiln_sdk::export_job!(run);
