//! Burns CPU without ever calling the host. With `{"iterations": N}` it stops
//! after N rounds and returns the result (the CPU-bound benchmark); without,
//! it never stops, and only the host's fuel or epoch deadline can end it.

use kiln_sdk::{Job, JobResult};
use std::hint::black_box;

fn run(job: Job) -> JobResult {
    let iterations = serde_json::from_slice::<serde_json::Value>(&job.payload)
        .ok()
        .and_then(|v| v.get("iterations")?.as_u64())
        .unwrap_or(u64::MAX);
    // A multiply-add dependency chain: every round needs the one before.
    let mut x: u64 = black_box(1);
    let mut i = 0;
    while i < iterations {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        i += 1;
    }
    Ok(black_box(x).to_le_bytes().to_vec())
}

kiln_sdk::export_job!(run);
