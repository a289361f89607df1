//! Postgres benchmarks: no-op jobs per second with 1 and 3 hosts on one
//! Postgres (50,000 jobs pre-inserted, burned down), against 1 host on
//! SQLite and against the peers a user would otherwise pick on the same
//! Postgres in the same run (graphile-worker, apalis-postgres); and
//! enqueue on host A → start on idle host B.
//!
//! Kiln runs with the settings README gives for many short jobs
//! (concurrency 512, claim batch 256 per host; graphile-worker's documented
//! settings likewise keep 500 jobs in a local queue), and once with
//! concurrency 64 as in the SQLite queue bench.
//!
//! Run: `cargo bench -p kiln-queue-bench --bench postgres` (add `-- --quick` for a short run).
//! Postgres: `KILN_BENCH_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; each variant gets a fresh
//! schema. graphile-worker needs node and npm: the bench installs the
//! version pinned in `benches/peers/graphile/package.json` under the
//! target directory. Variants alternate round by round; figures are
//! medians over rounds.

mod bench_support;

use bench_support::{NativeRunner, Timed, burn_down_hosts, config, insert_noops, percentile, sandbox_runner, throughput_config};
use kiln::queue::{JobStore, PostgresStore, SharedClock, SqliteStore, SystemClock};
use kiln::worker::{Dispatcher, DispatcherConfig, EnqueueRequest, Metrics, QueueConfig, Runner};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema of its own for one variant, dropped after.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str, tag: &str) -> Self {
        Self { url: url.to_string(), name: format!("kiln_bench_{tag}_{}", fastrand::u32(..)) }
    }

    async fn drop_it(self) {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)).await.unwrap();
    }
}

/// Kiln on Postgres with `hosts` hosts (each its own pool and listener, as
/// separate `kiln serve` processes would have); jobs per second.
async fn kiln_postgres(url: &str, hosts: usize, runner: Arc<dyn Runner>, jobs: usize, settings: &DispatcherConfig) -> f64 {
    let schema = Schema::new(url, "kiln");
    let seed = PostgresStore::connect(url, &schema.name, Arc::new(SystemClock)).await.unwrap();
    insert_noops(&seed, jobs).await;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("SET search_path = {}", schema.name)).await.unwrap();
    let mut stores: Vec<Arc<dyn JobStore>> = Vec::new();
    for _ in 0..hosts {
        stores.push(Arc::new(PostgresStore::connect(url, &schema.name, Arc::new(SystemClock)).await.unwrap()));
    }
    // Done when no job is waiting or running: one probe of the pending-jobs
    // partial index, which stops at the first entry it finds, so polling it
    // costs the hosts being measured next to nothing.
    let pending = client
        .prepare("SELECT EXISTS (SELECT 1 FROM jobs WHERE state IN ('available', 'scheduled', 'retryable', 'running'))")
        .await
        .unwrap();
    let drained = || async { !client.query_one(&pending, &[]).await.unwrap().get::<_, bool>(0) };
    let rate = burn_down_hosts(stores, runner, jobs, settings, drained).await;
    bench_support::assert_all_completed(&seed, jobs).await;
    schema.drop_it().await;
    rate
}

/// Kiln on SQLite, one host: the embedded default, for scale.
async fn kiln_sqlite(runner: Arc<dyn Runner>, jobs: usize, settings: &DispatcherConfig) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap());
    insert_noops(&*store, jobs).await;
    let drained = || bench_support::nothing_pending(&*store);
    let rate = burn_down_hosts(vec![store.clone()], runner, jobs, settings, drained).await;
    bench_support::assert_all_completed(&*store, jobs).await;
    rate
}

/// graphile-worker, installed under the target directory on first use.
mod graphile {
    use super::*;

    /// Where `npm install` puts graphile-worker.
    fn install_dir() -> PathBuf {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-peers/graphile")
    }

    fn sources() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/graphile")
    }

    /// Installs the pinned graphile-worker if it is not there yet.
    pub fn install() {
        let dir = install_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let wanted = std::fs::read(sources().join("package.json")).unwrap();
        if std::fs::read(dir.join("package.json")).ok().as_ref() == Some(&wanted) && dir.join("node_modules/graphile-worker").is_dir() {
            return;
        }
        std::fs::write(dir.join("package.json"), wanted).unwrap();
        let status = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm runs (graphile-worker is installed with it)");
        assert!(status.success(), "npm install of graphile-worker failed");
    }

    /// One burn-down in a node process; `mode` is `batching` (the settings
    /// its performance page documents) or `defaults`. Jobs per second.
    pub async fn burn_down(url: &str, jobs: usize, concurrency: usize, mode: &str) -> f64 {
        let schema = Schema::new(url, "graphile");
        let mut node = std::process::Command::new("node");
        node.arg(sources().join("burn.js"))
            .args([url, &schema.name, &jobs.to_string(), &concurrency.to_string(), mode])
            .env("NODE_PATH", install_dir().join("node_modules"));
        let output = tokio::task::spawn_blocking(move || node.output()).await.unwrap().expect("node runs");
        schema.drop_it().await;
        assert!(output.status.success(), "graphile-worker run failed: {}", String::from_utf8_lossy(&output.stderr));
        let line = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap()).unwrap();
        report["jobs_per_sec"].as_f64().unwrap()
    }
}

/// apalis 1.0 with its Postgres backend (sqlx), a native no-op handler,
/// fetch batches of 64 and a 1 ms poll interval, as in the SQLite bench.
mod apalis_peer {
    use apalis::prelude::*;
    use apalis_postgres::{Config, PgPool, PostgresStorage};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    async fn noop(_n: u64, done: Data<Arc<AtomicUsize>>) -> Result<(), BoxDynError> {
        done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Jobs per second, timed until every handler has returned. apalis
    /// keeps its tables in the fixed schema `apalis`, dropped first.
    pub async fn burn_down(url: &str, jobs: usize, concurrency: usize) -> f64 {
        drop_apalis_schema(url).await;
        let pool = PgPool::connect(url).await.unwrap();
        PostgresStorage::setup(&pool).await.unwrap();
        let config = Config::default().batch_size(64);
        let mut sink = PostgresStorage::new(&pool).with_config(config.clone());
        let mut items = futures::stream::iter((0..jobs as u64).map(|n| TaskBuilder::new(n).build()));
        sink.push_all(&mut items).await.unwrap();
        let backend = PostgresStorage::<u64>::new(&pool).with_config(config).poll_with_interval(Duration::from_millis(1));
        let done = Arc::new(AtomicUsize::new(0));
        let worker = WorkerBuilder::new("peer").backend(backend).concurrency(concurrency).data(done.clone()).build(noop);
        let elapsed = crate::bench_support::run_until_counted(worker.run(), &done, jobs).await;
        pool.close().await;
        drop_apalis_schema(url).await;
        jobs as f64 / elapsed.as_secs_f64()
    }

    async fn drop_apalis_schema(url: &str) {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute("DROP SCHEMA IF EXISTS apalis CASCADE").await.unwrap();
    }
}

/// Enqueue on host A → the run starting on host B, in microseconds; A
/// runs no jobs itself (its queue has concurrency 0). With `same_host`,
/// B enqueues its own jobs: the local wake-up, for comparison.
async fn wake_latency(url: &str, runner: Arc<dyn Runner>, samples: usize, same_host: bool) -> Vec<f64> {
    let schema = Schema::new(url, "wake");
    let clock: SharedClock = Arc::new(SystemClock);
    let store_a = Arc::new(PostgresStore::connect(url, &schema.name, clock.clone()).await.unwrap());
    let store_b = Arc::new(PostgresStore::connect(url, &schema.name, clock.clone()).await.unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let timed = Arc::new(Timed { inner: runner.clone(), started: tx });
    let b = Dispatcher::new(store_b, timed, DispatcherConfig { host: "b".into(), ..config(8) }, clock.clone(), Arc::new(Metrics::new()));
    let front = DispatcherConfig { host: "a".into(), queues: vec![QueueConfig::fixed("default", 0)], ..config(1) };
    let a = Dispatcher::new(store_a, runner, front, clock, Arc::new(Metrics::new()));
    let jobs_runtime = kiln::serve::job_runtime().unwrap();
    b.run_jobs_on(jobs_runtime.handle().clone());
    let (running_a, running_b) = (a.start(), b.start());
    // Let B's listener connect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let enqueuer = if same_host { &b } else { &a };
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        // Idle: let B's queue loop go back to waiting.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t0 = Instant::now();
        enqueuer.enqueue(vec![EnqueueRequest { kind: "echo".into(), payload: b"{}".to_vec(), ..Default::default() }]).await.unwrap();
        let started = rx.recv().await.unwrap();
        out.push((started - t0).as_secs_f64() * 1e6);
    }
    a.shutdown().await;
    b.shutdown().await;
    running_a.stopped().await;
    running_b.stopped().await;
    jobs_runtime.shutdown_background();
    schema.drop_it().await;
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, jobs, samples) = if quick { (1, 10_000, 50) } else { (5, 50_000, 300) };
    let url = std::env::var("KILN_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (fast, plain) = (throughput_config(), config(64));
    let concurrency = plain.queues[0].concurrency;
    let graphile_concurrency = 24;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().unwrap();
    graphile::install();
    println!("# Kiln Postgres benchmarks ({})", if quick { "quick" } else { "full" });
    println!(
        "machine: {cores} cores; Postgres and every host on it; {jobs} jobs pre-inserted per variant and round; \
         Kiln per host: concurrency {} and claim batch {} unless the row says 64 (then claim batch 64 too, \
         as in the SQLite queue bench)\n",
        fast.queues[0].concurrency, fast.claim_batch
    );

    let sandboxed = sandbox_runner();
    let native: Arc<dyn Runner> = Arc::new(NativeRunner);
    let names = [
        "Kiln, Postgres, 1 host, `echo` sandboxed",
        "Kiln, Postgres, 3 hosts, `echo` sandboxed",
        "Kiln, Postgres, 1 host, native closure",
        "Kiln, Postgres, 1 host, `echo` sandboxed, concurrency 64",
        "Kiln, SQLite, 1 host, `echo` sandboxed",
        "graphile-worker 0.17.3, batching settings (JS no-op)",
        "graphile-worker 0.17.3, defaults (JS no-op; a tenth of the jobs)",
        "apalis 1.0 + apalis-postgres (native no-op; a tenth of the jobs)",
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    // `-- --only TEXT`: run only the variants whose name contains TEXT
    // (for looking into one; the table's ratios need the full set).
    let args: Vec<String> = std::env::args().collect();
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let wanted = |i: usize| only.as_deref().is_none_or(|o| names[i].contains(o));
    rt.block_on(async {
        for round in 0..rounds {
            for (i, rate) in rates.iter_mut().enumerate().filter(|(i, _)| wanted(*i)) {
                rate.push(match i {
                    0 => kiln_postgres(&url, 1, sandboxed.clone(), jobs, &fast).await,
                    1 => kiln_postgres(&url, 3, sandboxed.clone(), jobs, &fast).await,
                    2 => kiln_postgres(&url, 1, native.clone(), jobs, &fast).await,
                    3 => kiln_postgres(&url, 1, sandboxed.clone(), jobs, &plain).await,
                    4 => kiln_sqlite(sandboxed.clone(), jobs, &fast).await,
                    5 => graphile::burn_down(&url, jobs, graphile_concurrency, "batching").await,
                    6 => graphile::burn_down(&url, jobs / 10, graphile_concurrency, "defaults").await,
                    _ => apalis_peer::burn_down(&url, jobs / 10, concurrency).await,
                });
            }
            let last: Vec<String> = rates.iter().map(|r| r.last().map_or("-".into(), |v| format!("{v:.0}"))).collect();
            eprintln!("round {}: {}", round + 1, last.join(" / "));
        }
    });
    if only.is_some() {
        for (name, r) in names.iter().zip(&mut rates).filter(|(_, r)| !r.is_empty()) {
            println!("{name}: median {:.0} jobs/s", percentile(r, 50.0));
        }
        return;
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| percentile(r, 50.0)).collect();
    let (graphile_best, sqlite) = (medians[5], medians[4]);
    println!("## No-op jobs per second (insert excluded; claim, run, complete), median of {rounds} rounds\n");
    println!("| queue | jobs/s | ratio to graphile-worker (batching) | ratio to Kiln SQLite |");
    println!("|---|---|---|---|");
    for (name, rate) in names.iter().zip(&medians) {
        println!("| {name} | {rate:.0} | {:.2}× | {:.2}× |", rate / graphile_best, rate / sqlite);
    }
    println!();

    let (mut across, mut local) = (Vec::new(), Vec::new());
    rt.block_on(async {
        across = wake_latency(&url, sandboxed.clone(), samples, false).await;
        local = wake_latency(&url, sandboxed.clone(), samples, true).await;
    });
    println!("## Enqueue → start on an idle host ({samples} jobs, one at a time, `echo` sandboxed)\n");
    println!("| path | p50 | p99 |");
    println!("|---|---|---|");
    for (name, v) in [("enqueue on A, runs on B (LISTEN/NOTIFY)", &mut across), ("enqueue and run on B (local wake)", &mut local)] {
        println!("| {name} | {:.2} ms | {:.2} ms |", percentile(v, 50.0) / 1000.0, percentile(v, 99.0) / 1000.0);
    }
    println!();
}
