//! What keeping a job's history costs: jobs per second burned down with
//! each attempt's record and log lines kept (the default) against with
//! none kept (`[attempts] record = false`), in the same run, for `echo`
//! (which writes no lines: the record alone) and for `flaky` writing four
//! lines a run (record and lines), on SQLite and, when it is reachable, on
//! Postgres (one host).
//!
//! Run: `cargo bench -p kiln-queue-bench --bench history` (add `-- --quick`
//! for a short run). Postgres: `KILN_BENCH_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; skipped when it does not
//! answer. Variants alternate round by round; figures are medians.

mod bench_support;

use bench_support::{assert_all_completed, burn_down_hosts, config, insert_jobs, nothing_pending, percentile, sandbox_runner_of};
use kiln::plugin::built;
use kiln::queue::{JobStore, PostgresStore, SqliteStore, SystemClock};
use kiln::worker::{AttemptRecords, DispatcherConfig, Runner};
use std::sync::Arc;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const LOGGING: &[u8] = br#"{"fail_attempts": 0, "log_lines": 4}"#;

#[derive(Clone, Copy)]
enum Backend<'a> {
    Sqlite,
    Postgres(&'a str),
}

/// One burn-down of `jobs` jobs of `kind` on a fresh store; jobs per second.
async fn burn_down(backend: Backend<'_>, runner: Arc<dyn Runner>, kind: &str, payload: &[u8], jobs: usize, attempts: AttemptRecords) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("kiln_bench_history_{}", fastrand::u32(..));
    let store: Arc<dyn JobStore> = match backend {
        Backend::Sqlite => Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap()),
        Backend::Postgres(url) => Arc::new(PostgresStore::connect(url, &schema, Arc::new(SystemClock)).await.unwrap()),
    };
    insert_jobs(&*store, jobs, kind, payload).await;
    let settings = DispatcherConfig { attempts, ..config(64) };
    let rate = burn_down_hosts(vec![store.clone()], runner, jobs, &settings, || nothing_pending(&*store)).await;
    assert_all_completed(&*store, jobs).await;
    if let Backend::Postgres(url) = backend {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
    }
    rate
}

async fn reachable(url: &str) -> bool {
    tokio_postgres::connect(url, tokio_postgres::NoTls).await.is_ok()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, jobs) = if quick { (2, 5_000) } else { (5, 20_000) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let url = std::env::var("KILN_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let postgres = rt.block_on(reachable(&url));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("# Kiln job history benchmarks ({})", if quick { "quick" } else { "full" });
    println!("machine: {cores} cores; {jobs} jobs pre-inserted per round; queue concurrency 64; {rounds} rounds\n");
    let (on, off) = (AttemptRecords::default(), AttemptRecords { record: false, logs: false });
    let echo = sandbox_runner_of("echo", built::ECHO);
    let flaky = sandbox_runner_of("flaky", built::FLAKY);
    let mut backends = vec![("SQLite", Backend::Sqlite)];
    if postgres {
        backends.push(("Postgres, 1 host", Backend::Postgres(&url)));
    } else {
        println!("(Postgres at {url} does not answer: its rows are skipped)\n");
    }
    println!("| store | plugin | nothing kept, jobs/s | attempts and lines kept, jobs/s | ratio kept / not |");
    println!("|---|---|---|---|---|");
    for (name, backend) in backends {
        for (plugin, runner, kind, payload) in [("`echo`", &echo, "echo", &b"{}"[..]), ("`flaky`, 4 lines a run", &flaky, "flaky", LOGGING)] {
            let (mut kept, mut not) = (Vec::new(), Vec::new());
            rt.block_on(async {
                for _ in 0..rounds {
                    not.push(burn_down(backend, runner.clone(), kind, payload, jobs, off).await);
                    kept.push(burn_down(backend, runner.clone(), kind, payload, jobs, on).await);
                }
            });
            let (k, n) = (percentile(&mut kept, 50.0), percentile(&mut not, 50.0));
            println!("| {name} | {plugin} | {n:.0} | {k:.0} | {:.2} |", k / n);
        }
    }
    println!();
}
