//! Recurses without end until the wasm call stack overflows. Frames are
//! kept tiny (no locals in linear memory), so it is the engine's stack limit
//! that is hit, not the guest's own shadow stack.

use kiln_sdk::{Job, JobResult};
use std::hint::black_box;

#[allow(unconditional_recursion)] // the point of this plugin
fn descend(depth: u64) -> u64 {
    black_box(descend(black_box(depth + 1))) + depth
}

fn run(_job: Job) -> JobResult {
    Ok(descend(0).to_le_bytes().to_vec())
}

kiln_sdk::export_job!(run);
