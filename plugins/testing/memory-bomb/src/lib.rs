//! Allocates (and touches) memory until the host's memory limit stops it.

use kiln_sdk::{Job, JobResult};

const CHUNK: usize = 1 << 20;

fn run(_job: Job) -> JobResult {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; CHUNK]);
        std::hint::black_box(&hoard);
    }
}

kiln_sdk::export_job!(run);
