//! Asks the host whether it is cancelled, and carries on regardless: half of
//! each round burns CPU, half sleeps inside a host call (where epochs cannot
//! reach it), so both ways of stopping a guest are exercised.

use kiln_sdk::{Job, JobResult, context};
use std::hint::black_box;
use std::time::Duration;

fn run(_job: Job) -> JobResult {
    let mut x: u64 = 1;
    loop {
        let _ignored = context::cancelled();
        for _ in 0..200_000 {
            x = black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

kiln_sdk::export_job!(run);
