//! The defaults against a tuned config: the real `kiln serve` (release),
//! 100,000 no-op `echo` jobs enqueued through the API into a paused queue,
//! then the queue resumed and timed until every job has completed. The
//! default config is an empty `kiln.toml`; the tuned one is what the README
//! suggested for short jobs (`concurrency = 512`, `claim_batch = 256`); the
//! narrow one names the default queue with the old defaults' numbers
//! (`concurrency = 8`, `claim_batch = 64`), so it does not widen for light
//! jobs and shows what claiming ahead does alone.
//!
//! Run: `cargo bench --bench defaults` (add `-- --quick` for 20,000 jobs
//! and fewer rounds). Variants alternate round by round (default, tuned,
//! default, ...); figures are medians over rounds, and the ratio is of
//! medians measured in the same run.

mod served;

use serde_json::{Value, json};
use served::ServedHost;
use std::path::Path;
use std::time::{Duration, Instant};

const TUNED: &str = "claim_batch = 256\n[queues.default]\nconcurrency = 512\n";
const NARROW: &str = "claim_batch = 64\n[queues.default]\nconcurrency = 8\n";

/// Jobs per second from the queue's resume to its last completion.
fn burn_down(config: &str, jobs: usize) -> f64 {
    let host = ServedHost::start(config, &[Path::new(kiln::plugin::built::ECHO)]);
    assert_eq!(host.post("/queues/default/pause", &Value::Null).0, 200);
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<Value> = chunk.iter().map(|i| json!({"kind": "echo", "payload": i})).collect();
        assert_eq!(host.post("/jobs", &Value::Array(batch)).0, 201);
    }
    let completed = || host.get("/queues").1["queues"][0]["jobs"]["completed"].as_u64().unwrap();
    let started = Instant::now();
    assert_eq!(host.post("/queues/default/resume", &Value::Null).0, 200);
    while completed() < jobs as u64 {
        std::thread::sleep(Duration::from_millis(50));
    }
    jobs as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (jobs, rounds) = if quick { (20_000, 3) } else { (100_000, 5) };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cores} cores; {jobs} no-op echo jobs through the API per round; {rounds} rounds\n");
    let (mut default, mut tuned, mut narrow) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        default.push(burn_down("", jobs));
        tuned.push(burn_down(TUNED, jobs));
        narrow.push(burn_down(NARROW, jobs));
        println!(
            "round {}: default {:.0} jobs/s, tuned {:.0} jobs/s, narrow {:.0} jobs/s",
            round + 1,
            default[round],
            tuned[round],
            narrow[round]
        );
    }
    let (d, t, n) = (median(&mut default), median(&mut tuned), median(&mut narrow));
    println!("\n| config | jobs/s (median of {rounds}) | vs tuned |");
    println!("|---|---|---|");
    println!("| default (empty kiln.toml) | {d:.0} | {:.2} |", d / t);
    println!("| tuned (`concurrency = 512`, `claim_batch = 256`) | {t:.0} | 1.00 |");
    println!("| narrow (`concurrency = 8`, `claim_batch = 64`) | {n:.0} | {:.2} |", n / t);
}
