//! Postgres stopped and started again under two running hosts: they log
//! the outage, reconnect, and lose no job. Its own test binary, so no
//! other test's database goes away under it (cargo runs test binaries one
//! after another). It needs a Postgres it may restart: `KILN_TEST_PG_CTL`
//! names the command that takes `stop` and `start` (.ci/run sets both).

#![allow(dead_code)]

#[path = "support/mod.rs"]
mod support;

use support::host::{HostDir, PATIENCE, eventually};
use support::postgres::Database;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `$KILN_TEST_PG_CTL <action>`.
fn pg_ctl(action: &str) -> bool {
    let ctl = std::env::var("KILN_TEST_PG_CTL").expect("built with KILN_TEST_PG_CTL set, so it must be set now");
    let mut words = ctl.split_whitespace();
    let program = words.next().expect("KILN_TEST_PG_CTL names a command");
    Command::new(program).args(words).arg(action).status().map(|s| s.success()).unwrap_or(false)
}

/// Starts the cluster again however the test ends.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        pg_ctl("start");
    }
}

#[test]
#[cfg_attr(not(kiln_postgres_restart), ignore = "needs a Postgres it may restart: set KILN_TEST_DATABASE_URL and KILN_TEST_PG_CTL")]
fn postgres_restarted_under_two_hosts_loses_no_job() {
    const JOBS: i64 = 30_000;
    let db = Database::new();
    let dir = HostDir::new(&db.config("lease_ms = 5000\npoll_interval_ms = 200\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 16\n"));
    let (a, b) = (dir.start(), dir.start());
    for batch in 0..JOBS / 1000 {
        let jobs: Vec<Value> = (0..1000).map(|i| json!({"kind": "echo", "payload": {"n": batch * 1000 + i}})).collect();
        assert_eq!(a.post("/jobs", &json!(jobs)).0, 201);
    }
    let completed = || db.try_query("SELECT count(*) FROM jobs WHERE state = 'completed'").map(|rows| rows[0].get::<_, i64>(0));
    eventually("some jobs done", || completed().unwrap() >= 2_000);

    let _start_again = StartAgain;
    assert!(pg_ctl("stop"), "the cluster stopped");
    let stopped = Instant::now();
    eventually("both hosts noticed", || dir.stderr().matches("lost the connection that listens for new jobs").count() >= 2);
    let (status, body) = a.post("/jobs", &json!({"kind": "echo", "payload": {"during": "outage"}}));
    assert_eq!(status, 503, "an enqueue during the outage is refused as unavailable: {body}");
    assert!(body["error"].as_str().unwrap().contains("unreachable"), "{body}");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed()));
    assert!(pg_ctl("start"), "the cluster started again");
    eprintln!("Postgres was down for {:?}", stopped.elapsed());

    eventually("both hosts reconnected", || dir.stderr().matches("reconnected; listening for new jobs again").count() >= 2);
    let deadline = Instant::now() + PATIENCE * 6;
    while completed().unwrap_or(0) < JOBS {
        assert!(Instant::now() < deadline, "jobs still unfinished: {:?}", completed());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(db.count("SELECT count(*) FROM jobs"), JOBS, "no job lost, none made up");
    assert_eq!(db.count("SELECT count(*) FROM jobs WHERE result IS DISTINCT FROM payload"), 0);
    let rerun = db.count("SELECT count(*) FROM jobs WHERE attempt > 1");
    eprintln!("{JOBS} jobs completed across the outage; {rerun} ran a second time (their lease ran out meanwhile)");
    // Wake-ups work again: B picks up a job enqueued on A.
    let id = a.enqueue(json!({"kind": "echo", "payload": {"after": "outage"}}));
    assert_eq!(b.wait_for(id, "completed")["result"], json!({"after": "outage"}));
    assert!(dir.stderr().contains("claim failed"), "the outage is in the log");
}
