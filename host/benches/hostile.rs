//! Neighbours' latency under hostile plugins, and the host's memory.
//!
//! Runs the real `kiln serve` (this build's binary) with the misbehaving
//! plugins of `plugins/testing/`. A steady stream of `echo` jobs measures
//! what a well-behaved neighbour sees: first alone (the quiet baseline),
//! then while each hostile plugin runs over and over. Latency is the
//! host's own `finalized_at - created_at` of each echo job. The host's
//! resident memory is sampled throughout; its peak over the whole suite
//! is reported against its idle size.
//!
//! `cargo bench --bench hostile` (`-- --quick` for a short run).

use kiln::plugin::built;
use serde_json::{Value, json};
mod served;

use served::ServedHost;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Echo jobs per second in every phase: enough to see a stall, few enough
/// that the stream itself does not load the host.
const ECHO_PER_SECOND: u64 = 100;

struct Case {
    name: &'static str,
    kind: &'static str,
    payload: Value,
    /// Seconds between two hostile jobs.
    every: Duration,
}

fn cases() -> Vec<Case> {
    let case = |name, kind, payload, every_ms| Case { name, kind, payload, every: Duration::from_millis(every_ms) };
    vec![
        case("50 MiB retry message", "huge-error", json!("retry"), 250),
        case("50 MiB fatal message", "huge-error", json!("fatal"), 250),
        case("50 MiB log line + progress note", "huge-log", json!(null), 250),
        case("forged log lines", "log-forge", json!(null), 50),
        case("retry delay 2^64 ms", "far-retry", json!("max"), 50),
        case("120 MiB ok value", "giant-output", json!(120), 250),
        case("200 MiB ok value", "giant-output", json!(200), 250),
        case("table growth past the pool", "table-grow", json!(null), 50),
        case("three memories each", "three-memories", json!(null), 20),
        case("log flood", "log-flood", json!(null), 250),
        case("memory bomb", "memory-bomb", json!(null), 250),
    ]
}

fn start_host() -> ServedHost {
    let plugins = [
        built::ECHO,
        built::HUGE_ERROR,
        built::HUGE_LOG,
        built::LOG_FORGE,
        built::FAR_RETRY,
        built::GIANT_OUTPUT,
        built::TABLE_GROW,
        built::THREE_MEMORIES,
        built::LOG_FLOOD,
        built::MEMORY_BOMB,
        // Refused at load: they must cost nothing after.
        built::NESTED_INSTANCES,
        built::MANY_MEMORIES,
        built::MANY_TABLES,
        built::GREEDY_MANIFEST,
        built::MIN_MEMORY,
        built::SLOW_COMPILE,
    ];
    ServedHost::start("poll_interval_ms = 100\n", &plugins.map(Path::new))
}

fn enqueue(host: &ServedHost, kind: &str, payload: &Value) -> i64 {
    let (status, body) = host.post("/jobs", &json!({"kind": kind, "payload": payload, "max_attempts": 1}));
    assert_eq!(status, 201, "enqueue {kind}: {body}");
    body["id"].as_i64().unwrap()
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

fn millis(text: &Value) -> i64 {
    kiln::queue::from_rfc3339(text.as_str().unwrap()).unwrap()
}

/// Runs the echo stream for `duration`, with `hostile` enqueued on its own
/// schedule; returns each echo job's latency in milliseconds.
fn phase(host: &ServedHost, duration: Duration, hostile: Option<&Case>) -> Vec<i64> {
    let started = Instant::now();
    let mut echo_ids = Vec::new();
    let mut next_hostile = started;
    let gap = Duration::from_micros(1_000_000 / ECHO_PER_SECOND);
    while started.elapsed() < duration {
        if let Some(case) = hostile {
            if Instant::now() >= next_hostile {
                enqueue(host, case.kind, &case.payload);
                next_hostile += case.every;
            }
        }
        echo_ids.push(enqueue(host, "echo", &json!({"n": echo_ids.len()})));
        std::thread::sleep(gap);
    }
    echo_ids
        .iter()
        .map(|id| {
            let waited = Instant::now();
            loop {
                let (_, job) = host.get(&format!("/jobs/{id}"));
                if job["state"] == "completed" {
                    return millis(&job["finalized_at"]) - millis(&job["created_at"]);
                }
                assert!(waited.elapsed() < Duration::from_secs(120), "echo job {id} never completed: {job}");
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .collect()
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seconds = if quick { 2 } else { 6 };
    let host = start_host();
    let pid = host.pid();
    std::thread::sleep(Duration::from_secs(1));
    let idle_kib = rss_kib(pid, "VmRSS:");

    // Sample RSS in the background for the whole suite.
    let peak_kib = Arc::new(AtomicU64::new(idle_kib));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak_kib, done) = (peak_kib.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak_kib.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let duration = Duration::from_secs(seconds);
    let mut quiet = phase(&host, duration, None);
    quiet.sort_unstable();
    let (quiet_p50, quiet_p99) = (percentile(&quiet, 0.5), percentile(&quiet, 0.99));
    println!("idle RSS {:.1} MiB; echo at {ECHO_PER_SECOND}/s for {seconds} s per phase", idle_kib as f64 / 1024.0);
    println!("{:<34} {:>8} {:>8} {:>10} {:>10}", "case", "p50 ms", "p99 ms", "p50/quiet", "p99/quiet");
    println!("{:<34} {:>8.1} {:>8.1} {:>10} {:>10}", "quiet (baseline)", quiet_p50, quiet_p99, "1.00", "1.00");
    for case in cases() {
        let mut latencies = phase(&host, duration, Some(&case));
        latencies.sort_unstable();
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        println!(
            "{:<34} {:>8.1} {:>8.1} {:>10.2} {:>10.2}",
            case.name,
            p50,
            p99,
            p50 / quiet_p50.max(1.0),
            p99 / quiet_p99.max(1.0)
        );
        let (status, _) = host.get("/healthz");
        assert_eq!(status, 200, "the host is unhealthy after {}", case.name);
    }
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let hwm_kib = rss_kib(pid, "VmHWM:").max(peak_kib.load(Ordering::SeqCst));
    println!(
        "RSS: idle {:.1} MiB, peak {:.1} MiB over the suite ({:.1} MiB above idle)",
        idle_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0,
        (hwm_kib - idle_kib) as f64 / 1024.0
    );
}
