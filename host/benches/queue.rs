//! Queue benchmarks: end-to-end no-op jobs per second through the SQLite
//! store and the dispatcher, with each job run in the sandbox (`echo`) and,
//! as the baseline, by a native closure (the sandbox's share of the cost);
//! and enqueue → start latency on an idle host.
//!
//! Run: `cargo bench --bench queue` (add `-- --quick` for a short run).
//! Variants alternate round by round; figures are medians over rounds.

use async_trait::async_trait;
use kiln::plugin;
use kiln::queue::{JobState, JobStore, NewJob, SharedClock, SqliteStore, SystemClock};
use kiln::sandbox::{Budget, Outcome, Report, Sandbox, StopSignal};
use kiln::worker::{Dispatcher, DispatcherConfig, EnqueueRequest, KindInfo, Metrics, QueueConfig, Runner, SandboxRunner};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The baseline: the same queue, but the job is a native closure.
#[derive(Debug)]
struct NativeRunner;

#[async_trait]
impl Runner for NativeRunner {
    fn kind(&self, _kind: &str) -> Option<KindInfo> {
        Some(KindInfo { version: "native".into(), retry: Default::default(), budget: Budget::default() })
    }
    fn kinds(&self) -> Vec<String> {
        vec!["echo".into()]
    }
    fn stop_signal(&self) -> StopSignal {
        StopSignal::standalone()
    }
    async fn run(&self, job: &kiln::queue::Job, _stop: &StopSignal) -> Report {
        Report::without_cost(Outcome::Ok(job.payload.clone()))
    }
}

/// Wraps a runner and reports the instant each run starts.
#[derive(Debug)]
struct Timed<R> {
    inner: R,
    started: mpsc::UnboundedSender<Instant>,
}

#[async_trait]
impl<R: Runner> Runner for Timed<R> {
    fn kind(&self, kind: &str) -> Option<KindInfo> {
        self.inner.kind(kind)
    }
    fn kinds(&self) -> Vec<String> {
        self.inner.kinds()
    }
    fn stop_signal(&self) -> StopSignal {
        self.inner.stop_signal()
    }
    async fn run(&self, job: &kiln::queue::Job, stop: &StopSignal) -> Report {
        let _ = self.started.send(Instant::now());
        self.inner.run(job, stop).await
    }
}

fn config(concurrency: usize) -> DispatcherConfig {
    DispatcherConfig {
        queues: vec![QueueConfig { name: "default".into(), concurrency }],
        lease: Duration::from_secs(60),
        ..DispatcherConfig::default()
    }
}

fn sandbox_runner() -> Arc<dyn Runner> {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let echo = plugin::load(&sandbox, None, &plugin::resolve(plugin::built::ECHO, &[]).unwrap()).unwrap();
    Arc::new(SandboxRunner::new(sandbox, Arc::new(BTreeMap::from([("echo".to_string(), Arc::new(echo))]))))
}

/// Pre-inserts `jobs` no-op jobs into a fresh database, then times the
/// dispatcher burning them down. Returns jobs per second.
async fn burn_down(runner: Arc<dyn Runner>, jobs: usize, concurrency: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), clock.clone()).unwrap());
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(5000) {
        store
            .insert_many(chunk.iter().map(|_| NewJob { max_attempts: 1, ..NewJob::new("echo", b"{}".to_vec()) }).collect())
            .await
            .unwrap();
    }
    let dispatcher = Dispatcher::new(store.clone(), runner, config(concurrency), clock, Arc::new(Metrics::new()));
    let started = Instant::now();
    let running = dispatcher.start();
    loop {
        let done: u64 = store.counts().await.unwrap().iter().filter(|c| c.state == JobState::Completed).map(|c| c.count).sum();
        if done as usize == jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    dispatcher.shutdown().await;
    running.stopped().await;
    jobs as f64 / elapsed.as_secs_f64()
}

/// Enqueue → start on an idle host, `samples` times, in microseconds.
async fn latency(runner: Arc<dyn Runner>, samples: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), clock.clone()).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    #[derive(Debug)]
    struct Shared(Arc<dyn Runner>);
    #[async_trait]
    impl Runner for Shared {
        fn kind(&self, k: &str) -> Option<KindInfo> {
            self.0.kind(k)
        }
        fn kinds(&self) -> Vec<String> {
            self.0.kinds()
        }
        fn stop_signal(&self) -> StopSignal {
            self.0.stop_signal()
        }
        async fn run(&self, job: &kiln::queue::Job, stop: &StopSignal) -> Report {
            self.0.run(job, stop).await
        }
    }
    let timed = Arc::new(Timed { inner: Shared(runner), started: tx });
    let dispatcher = Dispatcher::new(store, timed, config(8), clock, Arc::new(Metrics::new()));
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
    out
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
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
    let (mut with_sandbox, mut with_native) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..rounds {
            with_sandbox.push(burn_down(sandboxed.clone(), jobs, concurrency).await);
            with_native.push(burn_down(native.clone(), jobs, concurrency).await);
        }
    });
    let (s, n) = (percentile(&mut with_sandbox, 50.0), percentile(&mut with_native, 50.0));
    println!("## No-op jobs per second, end to end (insert excluded; claim, run, complete), all cores\n");
    println!("| runner | jobs/s (median of {rounds}) | time per job, ratio to native |");
    println!("|---|---|---|");
    println!("| native Rust closure (no sandbox) | {n:.0} | 1.00 |");
    println!("| `echo` in a fresh sandbox instance | {s:.0} | {:.2} |\n", n / s);

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
}
