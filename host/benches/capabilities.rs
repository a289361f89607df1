//! What capabilities cost, on the real `kiln serve` (release, SQLite).
//!
//! Fan-out: one `fan-out` job whose payload has 1,000 items, timed from its
//! `POST /jobs` until its 1,000 `echo` children (inserted with its
//! completion) have completed; against the baseline of the same 1,000
//! `echo` jobs posted by a client in one `POST /jobs`, timed the same way.
//!
//! Run: `cargo bench --bench capabilities` (add `-- --quick` for fewer
//! rounds). Variants alternate round by round; figures are medians, and
//! the ratio is of medians measured in the same run.

mod served;

use serde_json::{Value, json};
use served::ServedHost;
use std::path::Path;
use std::time::{Duration, Instant};

const CHILDREN: usize = 1_000;

fn completed_echoes(host: &ServedHost) -> u64 {
    let (_, answer) = host.get("/queues");
    answer["queues"].as_array().into_iter().flatten().map(|q| q["jobs"]["completed"].as_u64().unwrap_or(0)).sum()
}

/// Seconds from the POST until `expected` jobs have completed.
fn until_completed(host: &ServedHost, body: &Value, expected: u64) -> f64 {
    let before = completed_echoes(host);
    let started = Instant::now();
    let (status, answer) = host.post("/jobs", body);
    assert_eq!(status, 201, "{answer}");
    while completed_echoes(host) < before + expected {
        assert!(started.elapsed() < Duration::from_secs(120), "the jobs never completed");
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 7 };
    let plugins = [Path::new(kiln::plugin::built::ECHO), Path::new(kiln::plugin::built::FAN_OUT)];
    let host = ServedHost::start("", &plugins);
    let items: Vec<Value> = (0..CHILDREN).map(|i| json!(i)).collect();
    let fan_out = json!({"kind": "fan-out", "payload": {"items": items}});
    let batch = Value::Array((0..CHILDREN).map(|i| json!({"kind": "echo", "payload": i})).collect());
    // Warm the host (compiled plugins, connections) before measuring.
    until_completed(&host, &batch, CHILDREN as u64);
    let (mut fanned, mut posted) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // The parent counts as a completed job too.
        fanned.push(until_completed(&host, &fan_out, CHILDREN as u64 + 1));
        posted.push(until_completed(&host, &batch, CHILDREN as u64));
        println!("round {}: fan-out {:.1} ms, client batch {:.1} ms", round + 1, fanned[round] * 1e3, posted[round] * 1e3);
    }
    let (fanned, posted) = (median(&mut fanned), median(&mut posted));
    println!(
        "\nfan-out of 1 job into {CHILDREN} children, end to end: median {:.1} ms; the same {CHILDREN} jobs posted by a client: {:.1} ms; ratio {:.2}",
        fanned * 1e3,
        posted * 1e3,
        fanned / posted
    );
}
