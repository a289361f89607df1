//! The promises of a stop, under load: SIGTERM mid-stream leaves no job
//! `running`, runs nothing twice, counts no attempt it cut short, and exits
//! without waiting out a heartbeat; a requested cancel wins over the job's
//! own timeout.

use crate::support::host::{Host, HostDir, PATIENCE, eventually};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const STREAMING: &str =
    "lease_ms = 3000\npoll_interval_ms = 100\nshutdown_grace_ms = 2000\ncancel_grace_ms = 500\n\n[queues.default]\nconcurrency = 8\n";

/// Posts batches of short jobs (echo, and send-email that take 5–30 ms)
/// until told to stop or the host stops answering; counts the jobs the
/// host took.
fn stream(host: &Host, stop: Arc<AtomicBool>, accepted: Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
    let agent = host.agent();
    let url = format!("{}/jobs", host.url);
    std::thread::spawn(move || {
        let mut round = 0u64;
        while !stop.load(Ordering::SeqCst) {
            round += 1;
            let batch: Vec<Value> = (0..16)
                .map(|i| match i % 4 {
                    0 => json!({"kind": "send-email", "payload": {"to": "a@b.co", "subject": format!("{round}-{i}"), "send_ms": 5 + (round * 7 + i) % 25}}),
                    _ => json!({"kind": "echo", "payload": {"round": round, "i": i}}),
                })
                .collect();
            match agent.post(&url).send_json(Value::Array(batch)) {
                Ok(response) if response.status() == 201 => {
                    accepted.fetch_add(16, Ordering::SeqCst);
                }
                // 503 while stopping, or the connection refused once it is gone.
                _ => return,
            }
        }
    })
}

fn states(dir: &HostDir) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(dir.database()).unwrap();
    let mut statement = conn.prepare("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state").unwrap();
    statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

fn completed(dir: &HostDir) -> i64 {
    states(dir).iter().find(|(state, _)| state == "completed").map_or(0, |(_, n)| *n)
}

#[test]
fn sigterm_mid_stream_twenty_times_leaves_nothing_running_and_runs_nothing_twice() {
    let dir = HostDir::new(STREAMING);
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut exits = Vec::new();
    for round in 0..20 {
        let mut host = dir.start();
        let stop = Arc::new(AtomicBool::new(false));
        let streaming = stream(&host, stop.clone(), accepted.clone());
        // Jobs are flowing: some complete in this life of the host.
        let before = completed(&dir);
        eventually("jobs complete while the stream runs", || completed(&dir) >= before + 8);
        std::thread::sleep(Duration::from_millis(fastrand_ms(round)));
        let (status, took) = host.sigterm();
        stop.store(true, Ordering::SeqCst);
        streaming.join().unwrap();
        assert!(status.success(), "round {round}: exit {status:?}\n{}", dir.stderr());
        exits.push(took);

        let states = states(&dir);
        assert!(
            !states.iter().any(|(state, _)| state == "running"),
            "round {round}: jobs left running after a clean stop: {states:?}\n{}",
            dir.stderr()
        );
        let conn = rusqlite::Connection::open(dir.database()).unwrap();
        let counted: i64 = conn
            .query_row("SELECT count(*) FROM jobs WHERE state IN ('available', 'scheduled') AND attempt > 0", [], |r| r.get(0))
            .unwrap();
        assert_eq!(counted, 0, "round {round}: a job put back by the stop kept its attempt counted");
    }
    let log = dir.stderr();
    assert!(!log.contains("finisher already closed"), "a transition was thrown away:\n{log}");

    // One more life, with no stream: everything completes, each once.
    let host = dir.start();
    let total = accepted.load(Ordering::SeqCst);
    eventually("every job completes", || {
        let s = states(&dir);
        s.len() == 1 && s[0] == ("completed".to_string(), total as i64)
    });
    let conn = rusqlite::Connection::open(dir.database()).unwrap();
    let (twice, rescued): (i64, i64) = conn
        .query_row(
            "SELECT count(*) FILTER (WHERE attempt != 1), count(*) FILTER (WHERE errors LIKE '%lease_expired%') FROM jobs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((twice, rescued), (0, 0), "of {total} jobs, {twice} ran more than once and {rescued} waited out a lease");
    let mut exits_ms: Vec<u128> = exits.iter().map(Duration::as_millis).collect();
    exits_ms.sort_unstable();
    eprintln!("{total} jobs over 20 SIGTERMs; exit took {exits_ms:?} ms");
    drop(host);
}

/// A varying pause before the signal, so it lands at different points of
/// the claim–run–finish cycle.
fn fastrand_ms(round: u64) -> u64 {
    (round * 37) % 120
}

#[test]
fn an_idle_stop_does_not_wait_for_a_heartbeat() {
    // A lease of 120 s beats every 40 s: a shutdown that waited for the
    // next beat would take most of that. (Not a speed check: the bound only
    // tells a wait for the beat from none.)
    let dir = HostDir::new("lease_ms = 120000\n\n[queues.default]\nconcurrency = 2\n");
    let mut host = dir.start();
    let id = host.enqueue(json!({"kind": "echo", "payload": 1}));
    host.wait_for(id, "completed");
    let (status, took) = host.sigterm();
    assert!(status.success());
    let log = dir.stderr();
    let stopped = log.lines().filter(|l| l.contains("shutdown requested") || l.contains("stopped")).count();
    assert!(stopped >= 2, "{log}");
    // The heartbeat ends with the finisher: nothing waits out `lease / 3`.
    assert!(took < PATIENCE, "exit took {took:?}: it waited for the heartbeat");
    eprintln!("idle SIGTERM to exit: {took:?}");
}

#[test]
fn a_cancel_wins_over_the_jobs_own_timeout() {
    // Its timeout (1 s) ends the run before the cancel grace (5 s) would
    // interrupt it: the job is still cancelled, not retried to death.
    let dir = HostDir::new("poll_interval_ms = 100\ncancel_grace_ms = 5000\n\n[queues.default]\nconcurrency = 2\n");
    dir.add_plugin(
        "stubborn",
        crate::support::built::IGNORE_CANCEL,
        "name = \"stubborn\"\nversion = \"1\"\n[limits]\ntimeout_ms = 1000\n[retry]\nmax_attempts = 3\ninitial_backoff_ms = 10\n",
    );
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "stubborn"}));
    host.wait_for(id, "running");
    let (status, body) = host.post(&format!("/jobs/{id}/cancel"), &json!(null));
    assert_eq!(status, 200, "{body}");
    let job = host.wait_for(id, "cancelled");
    let attempt = job["attempt"].as_u64().unwrap();
    assert!(attempt < 3, "it was not retried through all its attempts: {job}");
    let errors = job["errors"].as_array().unwrap();
    assert_eq!(errors.len() as u64, attempt, "one error per run: {job}");
    assert_eq!(errors.last().unwrap()["outcome"], "timed_out", "the error says how the run ended: {job}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(host.job(id)["state"], "cancelled", "and it stays cancelled");
}
