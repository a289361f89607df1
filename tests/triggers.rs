//! The other shapes of background work, end to end with the real binary:
//! schedules (ticks become jobs once, across hosts, carrying a checkpoint),
//! continuous loops (resume from the stored checkpoint after `kill -9`),
//! and start-up plugins (run before any work, gate `/readyz`).

use crate::support::host::{HostDir, PATIENCE, eventually};
use crate::support::{built, millis};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const FAST: &str = "lease_ms = 1500\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\ncancel_grace_ms = 500\n\n[queues.default]\nconcurrency = 4\n";

fn schedule_manifest(every: &str) -> String {
    format!("name = \"cleanup\"\nversion = \"1.0.0\"\n[capabilities]\nkv = [\"default\"]\n[trigger.schedule]\ninterval = \"{every}\"\n")
}

/// The completed ticks of `kind`, in tick order: (tick, runs in the result).
fn ticks(jobs: &[Value]) -> Vec<(i64, u64)> {
    let mut ticks: Vec<(i64, u64)> = jobs
        .iter()
        .map(|j| {
            let key = j["unique_key"].as_str().unwrap_or_else(|| panic!("a tick has a key: {j}"));
            let tick = key.rsplit(':').next().unwrap().parse().unwrap();
            (tick, j["result"]["runs"].as_u64().unwrap_or(0))
        })
        .collect();
    ticks.sort();
    ticks
}

#[test]
fn an_interval_schedule_fires_ticks_that_carry_the_checkpoint() {
    let dir = HostDir::new(FAST);
    dir.add_plugin("cleanup", built::CLEANUP, &schedule_manifest("400ms"));
    let host = dir.start();
    eventually("four ticks completed", || host.jobs_of("cleanup").iter().filter(|j| j["state"] == "completed").count() >= 4);
    let jobs: Vec<Value> = host.jobs_of("cleanup").into_iter().filter(|j| j["state"] == "completed").collect();
    let ticks = ticks(&jobs);
    for (i, (tick, runs)) in ticks.iter().enumerate() {
        assert_eq!(tick % 400, 0, "ticks fall on multiples of the interval");
        assert_eq!(*runs, i as u64 + 1, "each tick got the previous tick's result as its checkpoint: {ticks:?}");
    }
    assert!(ticks.windows(2).all(|w| w[1].0 > w[0].0), "one job per tick: {ticks:?}");
    let plugin = host.plugin("cleanup").unwrap();
    assert_eq!(plugin["trigger"], "schedule");
    assert!(plugin["trigger_detail"].as_str().unwrap().contains("every 400ms"), "{plugin}");
    // A schedule's kind can still be run now, by hand.
    let id = host.enqueue(json!({"kind": "cleanup"}));
    assert_eq!(host.wait_for(id, "completed")["plugin_version"], "1.0.0");
}

#[test]
fn two_hosts_on_one_sqlite_file_run_every_one_second_tick_exactly_once() {
    let dir = HostDir::new(FAST);
    dir.add_plugin("cleanup", built::CLEANUP, &schedule_manifest("1s"));
    let a = dir.start();
    let b = dir.start();
    std::thread::sleep(Duration::from_secs(60));
    // Let the last tick finish before reading.
    let started = Instant::now();
    let jobs = loop {
        let jobs = a.jobs_of("cleanup");
        if jobs.iter().all(|j| j["state"] == "completed") || started.elapsed() > PATIENCE {
            break jobs;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(jobs.iter().all(|j| j["state"] == "completed"), "every tick completed: {jobs:?}");
    let ticks = ticks(&jobs);
    assert!(ticks.len() >= 55, "a minute of one-second ticks, got {}", ticks.len());
    for (i, w) in ticks.windows(2).enumerate() {
        assert_eq!(w[1].0 - w[0].0, 1000, "tick {i}: no tick missed, none twice: {:?}", &ticks[i..i + 2]);
    }
    let runs: Vec<u64> = ticks.iter().map(|t| t.1).collect();
    assert_eq!(runs, (1..=ticks.len() as u64).collect::<Vec<_>>(), "each tick ran once, in order");
    // Both hosts were up and planning ticks the whole time.
    assert_eq!(b.get("/readyz").0, 200);
    assert_eq!(dir.stderr().matches("schedule started").count(), 2, "both hosts ran the schedule");
}

fn loop_passes(host: &crate::support::host::Host) -> u64 {
    host.plugin("poller").and_then(|p| p["loop"]["passes"].as_u64()).unwrap_or(0)
}

#[test]
fn a_continuous_loop_survives_kill_9_and_resumes_from_its_stored_checkpoint() {
    let dir = HostDir::new(FAST);
    // The example as shipped, polling the feed of the host's example services.
    dir.add_plugin(
        "poller",
        built::POLLER,
        "name = \"poller\"\nversion = \"1\"\n[trigger.continuous]\ndelay = \"20ms\"\n\
         [capabilities]\nhttp = [\"http://127.0.0.1:*\"]\nconfig = [\"feed_url\"]\nkv = [\"default\"]\n",
    );
    let mut host = dir.start();
    eventually("the loop made five passes", || loop_passes(&host) >= 5);
    host.kill9();
    let conn = rusqlite::Connection::open(dir.database()).unwrap();
    let (passes, checkpoint): (i64, Vec<u8>) =
        conn.query_row("SELECT passes, checkpoint FROM loops WHERE name = 'poller'", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    let cursor: Vec<u8> = conn
        .query_row("SELECT value FROM kv WHERE namespace = 'poller' AND store = 'default' AND key = 'cursor'", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    let stored: Value = serde_json::from_slice(&checkpoint).unwrap();
    assert_eq!(stored, json!({"passes": passes}));
    // The cursor is written after the checkpoint: a kill between the two
    // leaves it one page behind, and that page is read again.
    let cursor: i64 = serde_json::from_slice(&cursor).unwrap();
    assert!(cursor == passes * 10 || cursor == (passes - 1) * 10, "cursor {cursor} after {passes} passes of 10 items");

    // At the default log level a pass is not a line: the first is, then one in twelve.
    let log = dir.stderr();
    assert_eq!(log.matches("polled items").count(), 0, "{log}");
    let info_lines = log.matches("polling: ").count() as i64;
    assert!((1..=passes / 12 + 2).contains(&info_lines), "{info_lines} info lines for {passes} passes");
    let log_before = dir.stderr().len();
    // Each pass's line is at debug (the example logs at info once a minute).
    let mut serve = dir.command();
    serve.env("KILN_LOG", "info,kiln::plugin=debug");
    let host = crate::support::host::Host::spawn(serve, &dir.path().join("stderr.log"));
    eventually("the loop goes on after the restart", || loop_passes(&host) >= passes as u64 + 3);
    let after = dir.stderr()[log_before..].to_string();
    let first = after.lines().find(|l| l.contains("polled items")).expect("a pass after the restart");
    let expected = format!("polled items {cursor}..{} (10 items, pass {})", cursor + 10, passes + 1);
    assert!(first.contains(&expected), "the first pass after kill -9 resumed from the stored cursor: {first:?}, expected {expected:?}");
}

#[test]
fn a_failing_loop_pass_backs_off_and_the_loop_goes_on() {
    let dir = HostDir::new(FAST);
    // flaky without a payload fails every pass (its input is invalid).
    dir.add_plugin(
        "flaky-loop",
        built::FLAKY,
        "name = \"flaky-loop\"\nversion = \"1\"\n[trigger.continuous]\ndelay = \"10ms\"\nbackoff = \"50ms\"\nmax_backoff = \"200ms\"\n",
    );
    let host = dir.start();
    eventually("five failed passes", || host.stderr().matches("loop pass failed").count() >= 5);
    let log = host.stderr();
    let backoffs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("loop pass failed"))
        .map(|l| l.split("backoff=").nth(1).unwrap().split_whitespace().next().unwrap())
        .take(5)
        .collect();
    assert_eq!(backoffs, ["50ms", "100ms", "200ms", "200ms", "200ms"], "doubling up to the ceiling");
    // The host serves on.
    let id = host.enqueue(json!({"kind": "echo", "payload": 1}));
    host.wait_for(id, "completed");
}

#[test]
fn start_up_plugins_run_before_any_work_and_gate_readiness() {
    let dir = HostDir::new(FAST);
    dir.add_plugin("warmup", built::WARMUP, &std::fs::read_to_string(format!("{}/plugin.toml", built::WARMUP)).unwrap());
    let host = dir.start();
    let (status, body) = host.get("/readyz");
    assert_eq!(status, 503, "not ready while the warm-up runs: {body}");
    assert!(body["error"].as_str().unwrap().contains("start-up plugins"), "{body}");
    let id = host.enqueue(json!({"kind": "echo", "payload": "early"}));
    let mut saw_waiting = false;
    loop {
        // The state is read first: if the host is still not ready after
        // it, the warm-up was still running when the state was read.
        let state = host.job(id)["state"].clone();
        if host.get("/readyz").0 != 503 {
            break;
        }
        assert_eq!(state, "available", "no queued work runs before the warm-up ends");
        saw_waiting = true;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(saw_waiting);
    let job = host.wait_for(id, "completed");
    let log = host.stderr();
    let warmed = log.find("start-up plugin finished").expect("the warm-up finished");
    assert!(log[..warmed].contains("reference data loaded"), "its log line came before");
    assert!(log.find("dispatcher started").unwrap() > warmed, "work started after the warm-up");
    assert!(millis(job["attempted_at"].as_str().unwrap()) > 0);
    let (status, body) = host.post("/jobs", &json!({"kind": "warmup"}));
    assert_eq!(status, 400, "a start-up plugin is not enqueued: {body}");
    assert!(body["error"].as_str().unwrap().contains("startup plugin"), "{body}");
    let (status, body) = host.post("/jobs", &json!({"kind": "nope"}));
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("echo") && !error.contains("warmup"), "only kinds one may enqueue are offered: {error}");
}

#[test]
fn a_failed_start_up_plugin_stops_the_host_unless_its_manifest_says_continue() {
    let dir = HostDir::new(FAST);
    dir.add_plugin("boom", built::PANIC, "name = \"boom\"\nversion = \"1\"\n[trigger.startup]\n");
    let (code, stderr) = dir.run_to_exit();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("start-up plugin \"boom\" failed (trapped)"), "{stderr}");
    assert!(stderr.contains("on_failure = \"stop-host\""), "{stderr}");

    let dir = HostDir::new(FAST);
    dir.add_plugin("boom", built::PANIC, "name = \"boom\"\nversion = \"1\"\n[trigger.startup]\non_failure = \"continue\"\n");
    let host = dir.start();
    eventually("ready despite the failure", || host.get("/readyz").0 == 200);
    assert!(host.stderr().contains("so the host serves anyway"));
    let id = host.enqueue(json!({"kind": "echo", "payload": 2}));
    host.wait_for(id, "completed");
}
