//! Several `kiln serve` processes on one Postgres: they share the work,
//! take over a killed host's jobs once its leases expire (and its late
//! completions are refused), fire each schedule tick once with no leader,
//! and wake each other through LISTEN/NOTIFY.

use crate::support::host::{Host, HostDir, PATIENCE, eventually};
use crate::support::postgres::Database;
use crate::support::built;
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LEASE_MS: i64 = 3000;

/// The two tests that load the machine (three hosts each) take turns, so
/// neither starves the other's schedule of CPU on a small machine.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy_turn() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn shared_config() -> String {
    format!("lease_ms = {LEASE_MS}\npoll_interval_ms = 200\nshutdown_grace_ms = 1000\ncancel_grace_ms = 500\n\n[queues.default]\nconcurrency = 16\n")
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn median(values: &mut [i64]) -> i64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Waits until `sql` (a count) reaches `target`, printing progress.
fn wait_for_count(db: &Database, what: &str, sql: &str, target: i64, patience: Duration) {
    let started = Instant::now();
    loop {
        let n = db.count(sql);
        if n >= target {
            return;
        }
        assert!(started.elapsed() < patience, "timed out waiting for {what}: {n} of {target}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
fn three_hosts_share_100_000_jobs_and_a_killed_hosts_jobs_come_back_within_the_lease() {
    const JOBS: i64 = 100_000;
    let _turn = heavy_turn();
    let db = Database::new();
    let dir = HostDir::new(&db.config(&shared_config()));
    let (a, b, mut c) = (dir.start(), dir.start(), dir.start());
    for batch in 0..JOBS / 1000 {
        let jobs: Vec<Value> = (0..1000).map(|i| json!({"kind": "echo", "payload": {"n": batch * 1000 + i}})).collect();
        let (status, body) = [&a, &b, &c][batch as usize % 3].post("/jobs", &json!(jobs));
        assert_eq!(status, 201, "{body}");
    }

    // Kill host C while it holds leases, early on: the catch below needs
    // jobs left to run while it tries.
    let c_name = format!("%-{}", c.pid());
    wait_for_count(&db, "a tenth of the jobs", "SELECT count(*) FROM jobs WHERE state = 'completed'", JOBS / 10, PATIENCE * 4);
    // Freeze C, and kill it only at a moment it holds leases: between two
    // claims a host running short jobs may hold none.
    let held_by_c = || -> Vec<(i64, i64)> {
        db.query(&format!("SELECT id, lease_token FROM jobs WHERE state = 'running' AND leased_by LIKE '{c_name}'"))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let c_pid = i32::try_from(c.pid()).unwrap();
    let started = Instant::now();
    let mut tries = 0u32;
    let killed_at = loop {
        // SAFETY: signals a child process this test started and still owns.
        unsafe { libc::kill(c_pid, libc::SIGSTOP) };
        if !held_by_c().is_empty() {
            c.kill9();
            eprintln!("host C killed holding leases at stop {} after {:?}", tries + 1, started.elapsed());
            break now_ms();
        }
        unsafe { libc::kill(c_pid, libc::SIGCONT) };
        tries += 1;
        let left = db.count("SELECT count(*) FROM jobs WHERE state <> 'completed'");
        if started.elapsed() > PATIENCE * 2 || left == 0 {
            let holders: Vec<String> = db
                .query("SELECT coalesce(leased_by, '-') || ' ' || state || ': ' || count(*)::text FROM jobs GROUP BY leased_by, state ORDER BY 1")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let log = c.stderr();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!("host C ({c_name}) held no lease at any of {tries} stops ({left} jobs left); jobs by holder: {holders:#?}\nC's log, last lines first: {tail:#?}");
        }
        // Let C run a while between stops: a stop lands in a claim-run-
        // complete cycle at a random point, and on a loaded machine C needs
        // time to be scheduled at all.
        std::thread::sleep(Duration::from_millis(5 + u64::from(tries % 8) * 5));
    };
    // A statement C sent before it stopped (a claim, say) may still
    // commit: read what C holds once those have landed.
    std::thread::sleep(Duration::from_millis(500));
    let orphans = held_by_c();
    assert!(!orphans.is_empty(), "host C held leases when it was killed");

    wait_for_count(&db, "every job completed", "SELECT count(*) FROM jobs WHERE state = 'completed'", JOBS, PATIENCE * 10);
    assert_eq!(db.count("SELECT count(*) FROM jobs"), JOBS, "no job lost, none made up");
    assert_eq!(db.count("SELECT count(*) FROM jobs WHERE result IS DISTINCT FROM payload"), 0, "every result is its payload");
    let ids = orphans.iter().map(|o| o.0.to_string()).collect::<Vec<_>>().join(",");
    let twice: Vec<String> = db
        .query(&format!("SELECT id::text || ': ' || errors::text FROM jobs WHERE attempt <> 1 AND id NOT IN ({ids}) LIMIT 5"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    let log = dir.stderr();
    let lease_lines: Vec<&str> = log.lines().filter(|l| l.contains("lease") || l.contains("heartbeat") || l.contains("refused")).take(20).collect();
    assert!(twice.is_empty(), "only the killed host's jobs ran twice; also: {twice:#?}\n{lease_lines:#?}");
    let served: Vec<i64> = db
        .query("SELECT count(DISTINCT leased_by) FROM jobs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(served, vec![0], "every lease was cleared on completion");

    // Redelivery: each orphan's second attempt started after its lease ran
    // out. A completion batch host C had already sent when it was killed
    // still commits (Postgres runs a statement it has received, and only
    // then finds the client gone): those jobs are done on their first
    // attempt, written before any lease of theirs could expire.
    let rescued: Vec<(i64, i64)> = db
        .query(&format!(
            "SELECT id, attempted_at FROM jobs WHERE id IN ({ids}) AND attempt = 2 AND errors::text LIKE '%lease_expired%'"
        ))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let written_in_flight = db.count(&format!(
        "SELECT count(*) FROM jobs WHERE id IN ({ids}) AND attempt = 1 AND state = 'completed' AND finalized_at < {}",
        killed_at + LEASE_MS
    ));
    assert_eq!(
        rescued.len() as i64 + written_in_flight,
        orphans.len() as i64,
        "every job host C held was rescued and run again, unless its completion was already on the wire"
    );
    assert!(!rescued.is_empty(), "host C held jobs it had not finished");
    let mut redelivered: Vec<i64> = rescued.iter().map(|(_, at)| at - killed_at).collect();
    let (mid, max) = (median(&mut redelivered), *redelivered.last().unwrap());
    eprintln!(
        "redelivery after kill -9: {} jobs, median {mid} ms, max {max} ms (lease {LEASE_MS} ms); \
         {written_in_flight} more completed by the write host C had in flight",
        rescued.len()
    );
    // The lease, plus one rescue period (a third of it), plus scheduling slack.
    assert!(max <= LEASE_MS + LEASE_MS / 3 + 2000, "redelivered within the lease and one rescue period: max {max} ms");

    // Host C's late completion, with its old token, through the same store
    // code a host uses: refused, and the job keeps the result it has.
    let id = rescued[0].0;
    let old_token = orphans.iter().find(|o| o.0 == id).expect("a rescued job is an orphan").1;
    let refused = db.block_on(async {
        let store = kiln::queue::PostgresStore::connect(&db.url, &db.schema, std::sync::Arc::new(kiln::queue::SystemClock))
            .await
            .unwrap();
        kiln::queue::JobStore::complete(&store, kiln::queue::Lease { id, token: old_token }, b"stale".to_vec()).await
    });
    assert!(matches!(refused, Err(kiln::queue::StoreError::StaleLease { .. })), "{refused:?}");
    assert_eq!(db.count(&format!("SELECT count(*) FROM jobs WHERE id = {id} AND result = payload")), 1);
    assert_eq!((a.get("/readyz").0, b.get("/readyz").0), (200, 200));
}

fn schedule_manifest() -> &'static str {
    // `queue`: a tick that runs long on a loaded machine holds the next one
    // back instead of dropping it.
    "name = \"cleanup\"\nversion = \"1.0.0\"\n[capabilities]\nkv = [\"default\"]\n[trigger.schedule]\ninterval = \"1s\"\noverlap = \"queue\"\n"
}

/// Sleeps until `offset` ms past a whole second, when no tick is waiting or
/// running: a one-second tick's job runs in a few milliseconds just after
/// the second, so a host killed then holds nothing.
fn between_ticks(db: &Database, offset: i64) {
    loop {
        let into = now_ms() % 1000;
        std::thread::sleep(Duration::from_millis(((offset - into).rem_euclid(1000)) as u64));
        let pending = db.count("SELECT count(*) FROM jobs WHERE state IN ('available', 'scheduled', 'retryable', 'running')");
        if pending == 0 && now_ms() % 1000 < offset + 300 {
            return;
        }
    }
}

#[test]
#[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
fn a_one_second_schedule_on_three_hosts_fires_every_tick_once_while_hosts_are_killed_and_restarted() {
    let _turn = heavy_turn();
    let db = Database::new();
    let dir = HostDir::new(&db.config(&shared_config()));
    dir.add_plugin("cleanup", built::CLEANUP, schedule_manifest());
    let mut hosts: Vec<Host> = (0..3).map(|_| dir.start()).collect();
    let started = Instant::now();
    let mut restarts = 0;
    // Every 20 s one host is killed with `kill -9` and started again 4 s later.
    while started.elapsed() < Duration::from_secs(116) {
        std::thread::sleep(Duration::from_secs(16));
        between_ticks(&db, 500);
        let victim = restarts % 3;
        hosts[victim].kill9();
        std::thread::sleep(Duration::from_secs(4));
        hosts[victim] = dir.start();
        restarts += 1;
    }
    eventually("the last tick finished", || {
        db.count("SELECT count(*) FROM jobs WHERE state IN ('available', 'scheduled', 'retryable', 'running')") == 0
    });
    let ticks: Vec<(String, i32, Option<Vec<u8>>)> =
        db.query("SELECT unique_key, attempt, result FROM jobs WHERE state = 'completed' ORDER BY unique_key")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
    assert_eq!(db.count("SELECT count(*) FROM jobs WHERE state <> 'completed'"), 0, "every tick completed");
    assert!(ticks.len() >= 115, "two minutes of one-second ticks, got {}", ticks.len());
    let times: Vec<i64> = ticks.iter().map(|t| t.0.rsplit(':').next().unwrap().parse().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 1000 && w[1] % 1000 == 0), "one job per tick, none twice: {times:?}");
    // A gap is a tick the misfire policy dropped because every host woke
    // more than a second late (a starved 2-core machine); it is logged.
    let gaps: Vec<&[i64]> = times.windows(2).filter(|w| w[1] - w[0] != 1000).collect();
    assert!(gaps.len() <= 3, "at most a few ticks dropped under load: {gaps:?}");
    if !gaps.is_empty() {
        assert!(dir.stderr().contains("schedule: missed tick"), "a dropped tick is logged: {gaps:?}");
    }
    let runs: Vec<u64> = ticks
        .iter()
        .map(|t| serde_json::from_slice::<Value>(t.2.as_deref().unwrap()).unwrap()["runs"].as_u64().unwrap())
        .collect();
    assert_eq!(runs, (1..=ticks.len() as u64).collect::<Vec<_>>(), "each tick ran once, in order, after the one before");
    assert!(ticks.iter().all(|t| t.1 == 1), "no tick needed a second attempt");
    assert!(restarts >= 5, "hosts were killed and restarted {restarts} times");
    eprintln!("{} ticks over {:?}, {restarts} kills and restarts, {} dropped as misfires", ticks.len(), started.elapsed(), gaps.len());
}

#[test]
#[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
fn a_job_enqueued_on_one_host_wakes_an_idle_host_through_notify_not_polling() {
    let db = Database::new();
    // B polls once a minute: within the test's patience only a notification wakes it.
    let worker = HostDir::new(&db.config("poll_interval_ms = 60000\n[queues.default]\nconcurrency = 4\n"));
    let b = worker.start();
    eventually("B listens", || b.stderr().contains("listening for new jobs"));
    // A takes jobs in but runs none of the default queue.
    let front = HostDir::new(&db.config("[queues.default]\nconcurrency = 0\n[queues.local]\nconcurrency = 1\n"));
    let a = front.start();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        let id = a.enqueue(json!({"kind": "echo", "payload": {"i": i}}));
        let done = a.wait_for(id, "completed");
        assert_eq!(done["result"], json!({"i": i}));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut latencies: Vec<i64> =
        db.query("SELECT attempted_at - created_at FROM jobs ORDER BY id").iter().map(|r| r.get(0)).collect();
    assert_eq!(latencies.len(), 20);
    eprintln!("enqueue on A → claimed on B (debug build): median {} ms", median(&mut latencies));
}

#[test]
fn an_unreachable_database_stops_the_host_with_a_message_naming_it() {
    let dir = HostDir::new("database_url = \"postgres://kiln@127.0.0.1:1/jobs\"\n[queues.default]\nconcurrency = 1\n");
    let (code, stderr) = dir.run_to_exit();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("cannot connect to Postgres at 127.0.0.1:1/jobs"), "{stderr}");
}

#[test]
fn a_bad_database_url_from_the_environment_is_named() {
    let dir = HostDir::new("[queues.default]\nconcurrency = 1\n");
    let out = dir.command().env("KILN_DATABASE_URL", "mysql://db/jobs").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--database-url (or KILN_DATABASE_URL)") && stderr.contains("must be a postgres://"), "{stderr}");
}
