//! What a large backlog costs the API and the dashboard: `GET
//! /jobs?state=available&limit=100`, `GET /metrics`, `GET /queues`, the
//! dashboard's overview (`/`, with an hour of runs per minute from three
//! hosts behind its charts), its jobs page filtered to a state and its
//! queues page, with 10,000 and with 1,000,000 jobs waiting, on SQLite and, when it is reachable, on Postgres. The goal is
//! that neither grows with the backlog (the 10,000-job store is the
//! baseline of the same run).
//!
//! Run: `cargo bench -p kiln-queue-bench --bench backlog` (add `-- --quick`
//! for 100,000 instead of 1,000,000). Postgres: `KILN_BENCH_DATABASE_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`; skipped when it does
//! not answer. Figures are medians and 99th percentiles of 50 calls each.

mod bench_support;

use bench_support::{ServedApi, config, insert_noops, percentile, sandbox_runner};
use kiln::plugin::Registry;
use kiln::queue::{JobStore, PostgresStore, SharedClock, SqliteStore, SystemClock};
use kiln::sandbox::Sandbox;
use kiln::worker::{Dispatcher, Metrics};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const CALLS: usize = 50;
const PATHS: [&str; 6] = ["/jobs?state=available&limit=100", "/metrics", "/queues", "/", "/ui/jobs?state=available", "/ui/queues"];

/// An hour of runs per minute from three hosts, five kinds on two queues:
/// what the overview's charts read on a busy host.
async fn an_hour_of_runs(store: &dyn JobStore) {
    let now = kiln::queue::Clock::now(&SystemClock);
    let minute = now - now.rem_euclid(60_000);
    let rows = (0..60)
        .flat_map(|m| {
            (0..3).flat_map(move |host| {
                (0..5).map(move |kind| kiln::queue::MinuteRuns {
                    minute: minute - m * 60_000,
                    host: format!("host-{host}"),
                    queue: if kind % 2 == 0 { "default".into() } else { "mail".into() },
                    kind: format!("kind-{kind}"),
                    runs: 50_000 + m as u64,
                    failures: 12,
                    delay_ms_sum: 900_000,
                    delay_ms_max: 250,
                })
            })
        })
        .collect();
    store.record_minutes(rows, minute - 2 * 3_600_000).await.unwrap();
}

/// Each path's call times (ms) against a store holding `jobs` waiting jobs.
async fn call_times(store: Arc<dyn JobStore>, jobs: usize) -> Vec<Vec<f64>> {
    let inserted = Instant::now();
    insert_noops(&*store, jobs).await;
    eprintln!("  {jobs} jobs inserted in {:.1} s", inserted.elapsed().as_secs_f64());
    // A host that serves the API and runs nothing: the backlog stays.
    let clock: SharedClock = Arc::new(SystemClock);
    let dispatcher = Dispatcher::new(store.clone(), sandbox_runner(), config(1), clock, Arc::new(Metrics::new()));
    let registry = Arc::new(Registry::fixed(Arc::new(Sandbox::new().unwrap()), BTreeMap::new()));
    let api = ServedApi::start(dispatcher, registry).await;
    // The counts' upkeep, as a running host does it every second.
    store.fold_counts().await.unwrap();
    an_hour_of_runs(&*store).await;
    let base = api.base.clone();
    let times = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().max_redirects(0).build().into();
        // The host is open (no keys): its login page opens a session at once.
        let login = agent.get(&format!("{base}/login")).call().unwrap();
        let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
        PATHS
            .iter()
            .map(|path| {
                let url = format!("{base}{path}");
                let get = || agent.get(&url).header("cookie", &cookie).call().unwrap();
                get().body_mut().read_to_string().unwrap();
                (0..CALLS)
                    .map(|_| {
                        let t = Instant::now();
                        let mut answer = get();
                        assert_eq!(answer.status(), 200, "{url}");
                        answer.body_mut().read_to_string().unwrap();
                        t.elapsed().as_secs_f64() * 1000.0
                    })
                    .collect()
            })
            .collect()
    })
    .await
    .unwrap();
    api.stop().await;
    times
}

async fn sqlite(jobs: usize) -> Vec<Vec<f64>> {
    let dir = tempfile::tempdir().unwrap();
    call_times(Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap()), jobs).await
}

async fn postgres(url: &str, jobs: usize) -> Vec<Vec<f64>> {
    let schema = format!("kiln_bench_backlog_{}", fastrand::u32(..));
    let store = Arc::new(PostgresStore::connect(url, &schema, Arc::new(SystemClock)).await.unwrap());
    let times = call_times(store, jobs).await;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
    times
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (small, large) = (10_000, if quick { 100_000 } else { 1_000_000 });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let url = std::env::var("KILN_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let reachable = rt.block_on(async { tokio_postgres::connect(&url, tokio_postgres::NoTls).await.is_ok() });
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("# Kiln API against a backlog ({})", if quick { "quick" } else { "full" });
    println!("machine: {cores} cores; {CALLS} calls per path; jobs waiting (available), none running\n");
    println!("| store | call | p50, {small} jobs | p50, {large} jobs | p99, {large} jobs | ratio of p50s |");
    println!("|---|---|---|---|---|---|");
    let mut stores: Vec<&str> = vec!["SQLite"];
    if reachable {
        stores.push("Postgres");
    }
    for name in stores {
        let (mut few, mut many) = rt.block_on(async {
            match name {
                "SQLite" => (sqlite(small).await, sqlite(large).await),
                _ => (postgres(&url, small).await, postgres(&url, large).await),
            }
        });
        for (i, path) in PATHS.iter().enumerate() {
            let (f, m) = (percentile(&mut few[i], 50.0), percentile(&mut many[i], 50.0));
            let path = match *path {
                "/" => "/ (dashboard overview)",
                other => other,
            };
            println!("| {name} | `GET {path}` | {f:.2} ms | {m:.2} ms | {:.2} ms | {:.2} |", percentile(&mut many[i], 99.0), m / f);
        }
    }
    if !reachable {
        println!("\n(Postgres at {url} does not answer: its rows are skipped)");
    }
    println!();
}
