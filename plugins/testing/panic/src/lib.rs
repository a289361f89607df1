//! Panics: a Rust panic in a guest is a trap the host must classify.

use kiln_sdk::{Job, JobResult};

fn run(job: Job) -> JobResult {
    panic!("the panic plugin panicked on purpose (job {})", job.id)
}

kiln_sdk::export_job!(run);
