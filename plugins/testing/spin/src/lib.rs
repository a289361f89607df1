//! Burns CPU without ever calling the host. With `{"iterations": N}` it stops
//! after N rounds and returns the result (the CPU-bound benchmark); without,
//! it never stops, and only the host's fuel or epoch deadline can end it.
//! `"mode": "memory"` makes each round load and store in a 16 KiB buffer
//! instead of a pure multiply-add chain (metering costs more there).

use kiln_sdk::{Job, JobResult};
use std::hint::black_box;

const MUL: u64 = 6364136223846793005;
const ADD: u64 = 1442695040888963407;
/// 2048 × 8 bytes = 16 KiB: fits in L1, so the loop measures the guest's
/// loads and stores, not the cache.
const SLOTS: usize = 2048;

fn run(job: Job) -> JobResult {
    let settings = serde_json::from_slice::<serde_json::Value>(&job.payload).unwrap_or_default();
    let iterations = settings.get("iterations").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
    let memory = settings.get("mode").and_then(|m| m.as_str()) == Some("memory");
    let mut x: u64 = black_box(1);
    let mut i = 0;
    if memory {
        let mut slots = vec![0u64; SLOTS];
        while i < iterations {
            let a = (x as usize) % SLOTS;
            let b = ((x >> 32) as usize) % SLOTS;
            slots[a] = slots[b].wrapping_add(x);
            x = x.wrapping_mul(MUL).wrapping_add(ADD) ^ slots[a];
            i += 1;
        }
    } else {
        // A multiply-add dependency chain: every round needs the one before.
        while i < iterations {
            x = x.wrapping_mul(MUL).wrapping_add(ADD);
            i += 1;
        }
    }
    Ok(black_box(x).to_le_bytes().to_vec())
}

kiln_sdk::export_job!(run);
