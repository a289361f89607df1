//! An operator's bad day, bounded in time: jobs stream in while hosts are
//! killed (`kill -9`) and stopped (SIGTERM) at random, and (on SQLite) the
//! disk fills up for a while. Afterwards every job that was accepted is
//! completed exactly once, and every job that ran more than once says why:
//! only a run cut off by `kill -9` may be run again.
//!
//! The full disk is SQLite's only: on Postgres the disk is the database
//! server's, not the host's.

use crate::full_disk::{fill, host_on_tmpfs};
use crate::support::host::{Host, HostDir, PATIENCE};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONFIG: &str = "lease_ms = 2000\npoll_interval_ms = 100\nshutdown_grace_ms = 1500\ncancel_grace_ms = 300\n\n[queues.default]\nconcurrency = 8\n";
/// How long hosts are killed and stopped for.
const CHAOS: Duration = Duration::from_secs(40);

/// A small deterministic generator: the seed is printed, so a failing
/// sequence can be replayed.
struct Dice(u64);

impl Dice {
    fn new() -> Self {
        let seed = std::env::var("KILN_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("chaos seed {seed} (KILN_CHAOS_SEED={seed} replays it)");
        Self(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Enqueues batches to whichever host is up; records the id of every job
/// a host accepted (201).
struct Stream {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<BTreeSet<i64>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Stream {
    fn start(urls: Arc<Mutex<Vec<String>>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(BTreeSet::new()));
        let (stopping, ids) = (stop.clone(), accepted.clone());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let thread = std::thread::spawn(move || {
            let mut round = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                round += 1;
                let target = {
                    let urls = urls.lock().unwrap();
                    (!urls.is_empty()).then(|| urls[round as usize % urls.len()].clone())
                };
                let Some(url) = target else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let batch: Vec<Value> = (0..10)
                    .map(|i| match i % 5 {
                        0 => json!({"kind": "send-email", "payload": {"to": "a@b.co", "subject": format!("{round}"), "send_ms": 10 + (round + i) % 40}}),
                        _ => json!({"kind": "echo", "payload": {"round": round, "i": i}}),
                    })
                    .collect();
                match agent.post(&format!("{url}/jobs")).send_json(Value::Array(batch)) {
                    Ok(mut response) if response.status() == 201 => {
                        let body: Value = response.body_mut().read_json().unwrap();
                        let mut ids = ids.lock().unwrap();
                        ids.extend(body.as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()));
                    }
                    // Refused (503: stopping, disk full) or gone: not enqueued.
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        Self { stop, accepted, thread }
    }

    fn finish(self) -> BTreeSet<i64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.accepted).unwrap().into_inner().unwrap()
    }
}

/// What the store holds of one job at the end.
struct Ended {
    id: i64,
    state: String,
    attempt: i64,
    errors: Vec<Value>,
}

/// Checks the invariants; `killed` holds the pids of hosts that were `kill -9`ed.
fn check(accepted: &BTreeSet<i64>, jobs: &[Ended], killed: &[u32], stopped: &[u32]) {
    let by_id: std::collections::BTreeMap<i64, &Ended> = jobs.iter().map(|j| (j.id, j)).collect();
    let mut ran_again = 0;
    for id in accepted {
        let job = by_id.get(id).unwrap_or_else(|| panic!("accepted job {id} is not in the store"));
        assert_eq!(job.state, "completed", "job {id} ended {} (errors {:?})", job.state, job.errors);
        assert_eq!(job.errors.len() as i64, job.attempt - 1, "job {id}: every run before the last left its reason");
        for error in &job.errors {
            ran_again += 1;
            let message = error["message"].as_str().unwrap_or_default();
            assert_eq!(error["outcome"], "lease_expired", "job {id} ran again for another reason: {error}");
            let host_pid = message
                .split_whitespace()
                .nth(4)
                .and_then(|host| host.rsplit('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("job {id}: no host in {message:?}"));
            assert!(killed.contains(&host_pid), "job {id} was run again after host {host_pid}, which was not killed (stopped: {}): {message}", stopped.contains(&host_pid));
        }
    }
    eprintln!(
        "{} jobs accepted, all completed once; {ran_again} runs were repeated, each after a kill -9 ({} kills, {} SIGTERMs)",
        accepted.len(),
        killed.len(),
        stopped.len()
    );
}

fn end(host: &mut Host, kill: bool, killed: &mut Vec<u32>, stopped: &mut Vec<u32>) {
    let pid = host.pid();
    if kill {
        host.kill9();
        killed.push(pid);
    } else {
        let (status, _) = host.sigterm();
        assert!(status.success(), "host {pid} exited {status:?} on SIGTERM");
        stopped.push(pid);
    }
}

#[test]
#[cfg_attr(not(kiln_mount), ignore = "fills a tmpfs: set KILN_TEST_MOUNT=1 where the tests may mount (root)")]
fn chaos_on_sqlite_kills_stops_and_a_full_disk_lose_and_repeat_nothing_unexplained() {
    let (dir, _mount) = host_on_tmpfs(CONFIG, "64m");
    let mut dice = Dice::new();
    let urls = Arc::new(Mutex::new(Vec::new()));
    let stream = Stream::start(urls.clone());
    let (mut killed, mut stopped) = (Vec::new(), Vec::new());
    let began = Instant::now();
    let mut filled_once = false;
    while began.elapsed() < CHAOS {
        let mut host = dir.start();
        *urls.lock().unwrap() = vec![host.url.clone()];
        std::thread::sleep(Duration::from_millis(500 + dice.below(2500)));
        if !filled_once && began.elapsed() > CHAOS / 3 {
            filled_once = true;
            let filler = fill(&dir.path().join("data"));
            std::thread::sleep(Duration::from_millis(2500));
            std::fs::remove_file(filler).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
        urls.lock().unwrap().clear();
        end(&mut host, dice.below(2) == 0, &mut killed, &mut stopped);
    }
    let accepted = stream.finish();
    let host = dir.start();
    let conn = rusqlite::Connection::open(dir.database()).unwrap();
    let done = Instant::now();
    loop {
        let pending: i64 = conn.query_row("SELECT count(*) FROM jobs WHERE state != 'completed'", [], |r| r.get(0)).unwrap();
        if pending == 0 {
            break;
        }
        assert!(done.elapsed() < PATIENCE * 2, "{pending} jobs never completed\n{}", host.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut statement = conn.prepare("SELECT id, state, attempt, errors FROM jobs").unwrap();
    let jobs: Vec<Ended> = statement
        .query_map([], |r| {
            let errors: String = r.get(3)?;
            Ok(Ended { id: r.get(0)?, state: r.get(1)?, attempt: r.get(2)?, errors: serde_json::from_str(&errors).unwrap() })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(filled_once, "the disk filled once");
    check(&accepted, &jobs, &killed, &stopped);
}

#[test]
#[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
fn chaos_on_postgres_with_three_hosts_loses_and_repeats_nothing_unexplained() {
    let db = crate::support::postgres::Database::new();
    let dir = HostDir::new(&db.config(CONFIG));
    let mut dice = Dice::new();
    let urls = Arc::new(Mutex::new(Vec::new()));
    let stream = Stream::start(urls.clone());
    let (mut killed, mut stopped) = (Vec::new(), Vec::new());
    let mut hosts: Vec<Host> = (0..3).map(|_| dir.start()).collect();
    let began = Instant::now();
    while began.elapsed() < CHAOS {
        *urls.lock().unwrap() = hosts.iter().map(|h| h.url.clone()).collect();
        std::thread::sleep(Duration::from_millis(500 + dice.below(2000)));
        let victim = dice.below(hosts.len() as u64) as usize;
        let mut host = hosts.remove(victim);
        *urls.lock().unwrap() = hosts.iter().map(|h| h.url.clone()).collect();
        end(&mut host, dice.below(2) == 0, &mut killed, &mut stopped);
        hosts.push(dir.start());
    }
    let accepted = stream.finish();
    let done = Instant::now();
    loop {
        let pending = db.count("SELECT count(*) FROM jobs WHERE state != 'completed'");
        if pending == 0 {
            break;
        }
        assert!(done.elapsed() < PATIENCE * 2, "{pending} jobs never completed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let jobs: Vec<Ended> = db
        .query("SELECT id, state, attempt::bigint, errors::text FROM jobs")
        .iter()
        .map(|r| Ended {
            id: r.get(0),
            state: r.get(1),
            attempt: r.get(2),
            errors: serde_json::from_str(r.get::<_, &str>(3)).unwrap(),
        })
        .collect();
    check(&accepted, &jobs, &killed, &stopped);
    drop(hosts);
}
