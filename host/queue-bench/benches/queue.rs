//! Queue benchmarks: end-to-end no-op jobs per second through the SQLite
//! store and the dispatcher, with each job run in the sandbox (`echo`) and,
//! as the baseline, by a native closure (the sandbox's share of the cost);
//! and enqueue → start latency on an idle host.
//!
//! Run: `cargo bench -p kiln-queue-bench --bench queue` (add `-- --quick` for a short run).
//! Variants alternate round by round; figures are medians over rounds.

mod bench_support;

use bench_support::{NativeRunner, Timed, config, percentile, sandbox_runner};
use kiln::plugin::{self, Registry};
use kiln::queue::{JobState, JobStore, SharedClock, SqliteStore, SystemClock};
use kiln::sandbox::Sandbox;
use kiln::worker::{Dispatcher, DispatcherConfig, EnqueueRequest, Metrics, Runner, SandboxRunner};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;


/// Pre-inserts `jobs` no-op jobs into a fresh database, then times the
/// dispatcher burning them down. Returns jobs per second.
async fn burn_down(runner: Arc<dyn Runner>, jobs: usize, concurrency: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap());
    bench_support::insert_noops(&*store, jobs).await;
    let drained = || bench_support::nothing_pending(&*store);
    let rate = bench_support::burn_down_hosts(vec![store.clone()], runner, jobs, &config(concurrency), drained).await;
    bench_support::assert_all_completed(&*store, jobs).await;
    rate
}

/// The peer: apalis 1.0 with its SQLite backend (sqlx), a no-op handler,
/// the same job count and concurrency, tuned for throughput with its own
/// settings: fetch batches of 64 (Kiln's claim batch) and a 1 ms poll
/// interval (its default waits between polls, ~0.5k jobs/s here).
mod apalis_peer {
    use apalis::prelude::*;
    use apalis_sqlite::{Config, SqliteConnectOptions, SqlitePoolOptions, SqliteStorage};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    async fn noop(_n: u64, done: Data<Arc<AtomicUsize>>) -> Result<(), BoxDynError> {
        done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Jobs per second, timed until every handler has returned (apalis
    /// acknowledges after that, so this favours apalis slightly).
    pub async fn burn_down(jobs: usize, concurrency: usize) -> f64 {
        let dir = tempfile::tempdir().unwrap();
        // Kiln's durability settings (WAL, synchronous = NORMAL), so both
        // pay the same for a commit; sqlx's default fsyncs every one.
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("apalis.db"))
            .create_if_missing(true)
            .pragma("journal_mode", "WAL")
            .pragma("synchronous", "NORMAL");
        // One connection, as Kiln has one writer. (Tried here: batches of 8
        // to 512, poll intervals of 10 µs to 1 ms, pools of 1 to 10
        // connections, sqlx's default durability: all ~0.5-0.6k jobs/s.)
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
        SqliteStorage::setup(&pool).await.unwrap();
        let config = Config::default().batch_size(64);
        let mut sink = SqliteStorage::new(&pool).with_config(config.clone());
        let mut items = futures::stream::iter((0..jobs as u64).map(|n| TaskBuilder::new(n).build()));
        sink.push_all(&mut items).await.unwrap();
        let backend = SqliteStorage::<u64>::new(&pool).with_config(config).poll_with_interval(Duration::from_millis(1));
        let done = Arc::new(AtomicUsize::new(0));
        let worker = WorkerBuilder::new("peer").backend(backend).concurrency(concurrency).data(done.clone()).build(noop);
        let elapsed = crate::bench_support::run_until_counted(worker.run(), &done, jobs).await;
        jobs as f64 / elapsed.as_secs_f64()
    }
}

/// Enqueue → start on an idle host, `samples` times, in microseconds.
async fn latency(runner: Arc<dyn Runner>, samples: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), clock.clone()).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let timed = Arc::new(Timed { inner: runner, started: tx });
    let dispatcher = Dispatcher::new(store, timed, config(8), clock, Arc::new(Metrics::new()));
    let jobs_runtime = kiln::serve::job_runtime().unwrap();
    dispatcher.run_jobs_on(jobs_runtime.handle().clone());
    let running = dispatcher.start();
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        // Idle: let the queue loop go back to waiting.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t0 = Instant::now();
        dispatcher
            .enqueue(vec![EnqueueRequest { kind: "echo".into(), payload: b"{}".to_vec(), ..Default::default() }])
            .await
            .unwrap();
        let started = rx.recv().await.unwrap();
        out.push((started - t0).as_secs_f64() * 1e6);
    }
    dispatcher.shutdown().await;
    running.stopped().await;
    jobs_runtime.shutdown_background();
    out
}

/// `GET /healthz` latencies (µs) from a real socket while `spinners` jobs
/// of a plugin that never yields on its own burn every core.
async fn healthz_latency(spinners: usize, samples: usize) -> Vec<f64> {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let mut spin = plugin::load(&sandbox, None, &plugin::resolve(plugin::built::SPIN, &[]).unwrap()).unwrap();
    // Spin until the bench stops it, not until its manifest's small budgets.
    spin.manifest.limits.fuel = u64::MAX / 2;
    spin.manifest.limits.timeout_ms = 600_000;
    let registry = Arc::new(Registry::fixed(sandbox, BTreeMap::from([("spin".to_string(), Arc::new(spin))])));
    let runner = Arc::new(SandboxRunner::new(registry.clone()));
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), clock.clone()).unwrap());
    let config = DispatcherConfig { shutdown_grace: Duration::from_millis(100), ..config(spinners.max(1)) };
    let dispatcher = Dispatcher::new(store.clone(), runner, config, clock, Arc::new(Metrics::new()));
    // As `kiln serve` does: jobs on their own runtime.
    let jobs = kiln::serve::job_runtime().unwrap();
    dispatcher.run_jobs_on(jobs.handle().clone());
    let running = dispatcher.start();
    let api = bench_support::ServedApi::start(dispatcher.clone(), registry).await;
    let url = format!("{}/healthz", api.base);
    if spinners > 0 {
        let spins = (0..spinners).map(|_| EnqueueRequest { kind: "spin".into(), ..Default::default() }).collect();
        dispatcher.enqueue(spins).await.unwrap();
        while store.counts().await.unwrap().iter().filter(|c| c.state == JobState::Running).map(|c| c.count).sum::<u64>() < spinners as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The client is a blocking thread outside the runtime, like any outside caller.
    let out = tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::new_with_defaults();
        (0..samples)
            .map(|_| {
                let t = Instant::now();
                agent.get(&url).call().unwrap().body_mut().read_to_string().unwrap();
                let took = t.elapsed().as_secs_f64() * 1e6;
                std::thread::sleep(Duration::from_millis(2));
                took
            })
            .collect::<Vec<f64>>()
    })
    .await
    .unwrap();
    dispatcher.shutdown().await;
    running.stopped().await;
    api.stop().await;
    jobs.shutdown_background();
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, jobs, samples) = if quick { (2, 5_000, 50) } else { (5, 50_000, 300) };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let concurrency = 64;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().unwrap();
    println!("# Kiln queue benchmarks ({})", if quick { "quick" } else { "full" });
    println!("machine: {cores} cores; SQLite in a temp dir; {jobs} jobs pre-inserted per round; queue concurrency {concurrency}\n");

    let sandboxed = sandbox_runner();
    let native: Arc<dyn Runner> = Arc::new(NativeRunner);
    let (mut with_sandbox, mut with_native, mut with_apalis) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..rounds {
            with_sandbox.push(burn_down(sandboxed.clone(), jobs, concurrency).await);
            with_native.push(burn_down(native.clone(), jobs, concurrency).await);
            // A tenth of the jobs: at its rate the full count takes minutes a round.
            with_apalis.push(apalis_peer::burn_down(jobs / 10, concurrency).await);
        }
    });
    let (s, n, a) = (percentile(&mut with_sandbox, 50.0), percentile(&mut with_native, 50.0), percentile(&mut with_apalis, 50.0));
    println!("## No-op jobs per second, end to end (insert excluded; claim, run, complete), all cores\n");
    println!("| queue and runner | jobs/s (median of {rounds}) | time per job, ratio to Kiln native | Kiln sandbox's speed-up over it |");
    println!("|---|---|---|---|");
    println!("| Kiln, native Rust closure (no sandbox) | {n:.0} | 1.00 | {:.2}× |", s / n);
    println!("| Kiln, `echo` in a fresh sandbox instance | {s:.0} | {:.2} | 1.00× |", n / s);
    println!("| apalis 1.0 + apalis-sqlite, native no-op handler | {a:.0} | {:.2} | {:.2}× |\n", n / a, s / a);

    let (mut lat_sandbox, mut lat_native) = (Vec::new(), Vec::new());
    rt.block_on(async {
        lat_sandbox = latency(sandboxed.clone(), samples).await;
        lat_native = latency(native.clone(), samples).await;
    });
    println!("## Enqueue → start on an idle host ({samples} jobs, one at a time)\n");
    println!("| runner | p50 | p99 |");
    println!("|---|---|---|");
    for (name, v) in [("native", &mut lat_native), ("sandbox (`echo`)", &mut lat_sandbox)] {
        println!("| {name} | {:.0} µs | {:.0} µs |", percentile(v, 50.0), percentile(v, 99.0));
    }
    println!();

    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    rt.block_on(async {
        idle = healthz_latency(0, samples).await;
        loaded = healthz_latency(cores, samples).await;
    });
    println!("## `GET /healthz` while {cores} CPU-spinning plugins run (as many as cores)\n");
    println!("| host | p50 | p99 | ratio of p50 to idle |");
    println!("|---|---|---|---|");
    let (i50, l50) = (percentile(&mut idle, 50.0), percentile(&mut loaded, 50.0));
    println!("| idle | {i50:.0} µs | {:.0} µs | 1.00 |", percentile(&mut idle, 99.0));
    println!("| {cores} × `spin` running | {l50:.0} µs | {:.0} µs | {:.1} |", percentile(&mut loaded, 99.0), l50 / i50);
    println!();
}
