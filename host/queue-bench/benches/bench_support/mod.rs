//! What the queue benchmarks share: the native baseline runner, a runner
//! wrapper that reports when each run starts, the sandboxed `echo` runner,
//! and percentiles.

#![allow(dead_code)]

use async_trait::async_trait;
use kiln::plugin::{self, Registry, Trigger};
use kiln::sandbox::{Budget, JobInput, Outcome, Report, Sandbox, StopSignal};
use kiln::queue::{JobState, JobStore, ListFilter, NewJob, SharedClock, SystemClock};
use kiln::worker::{Dispatcher, DispatcherConfig, KindInfo, Metrics, QueueConfig, Ran, Runner, SandboxRunner};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The baseline: the same queue, but the job is a native closure.
#[derive(Debug)]
pub struct NativeRunner;

#[async_trait]
impl Runner for NativeRunner {
    fn kind(&self, _kind: &str) -> Option<KindInfo> {
        Some(KindInfo { version: "native".into(), retry: Default::default(), budget: Budget::default(), trigger: Trigger::Queued })
    }
    fn kinds(&self) -> Vec<String> {
        vec!["echo".into()]
    }
    fn stop_signal(&self) -> StopSignal {
        StopSignal::standalone()
    }
    async fn run(&self, input: &JobInput, _stop: &StopSignal) -> Ran {
        Ran { report: Report::without_cost(Outcome::Ok(input.payload.clone())), version: None }
    }
}

/// Wraps a runner and reports the instant each run starts.
#[derive(Debug)]
pub struct Timed {
    pub inner: Arc<dyn Runner>,
    pub started: mpsc::UnboundedSender<Instant>,
}

#[async_trait]
impl Runner for Timed {
    fn kind(&self, kind: &str) -> Option<KindInfo> {
        self.inner.kind(kind)
    }
    fn kinds(&self) -> Vec<String> {
        self.inner.kinds()
    }
    fn stop_signal(&self) -> StopSignal {
        self.inner.stop_signal()
    }
    async fn run(&self, input: &JobInput, stop: &StopSignal) -> Ran {
        let _ = self.started.send(Instant::now());
        self.inner.run(input, stop).await
    }
}

/// `echo` in a fresh sandbox instance per job, as `kiln serve` runs it.
pub fn sandbox_runner() -> Arc<dyn Runner> {
    sandbox_runner_of("echo", plugin::built::ECHO)
}

/// The plugin built in `dir`, as kind `kind`, in a fresh sandbox instance per job.
pub fn sandbox_runner_of(kind: &str, dir: &str) -> Arc<dyn Runner> {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let loaded = plugin::load(&sandbox, None, &plugin::resolve(dir, &[]).unwrap()).unwrap();
    Arc::new(SandboxRunner::new(Arc::new(Registry::fixed(sandbox, BTreeMap::from([(kind.to_string(), Arc::new(loaded))])))))
}

/// The `p`th percentile (0-100) of `v`, sorting it.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}


/// A host's settings in the benches: one queue, a long lease, the default
/// claim batch.
pub fn config(concurrency: usize) -> DispatcherConfig {
    DispatcherConfig {
        queues: vec![QueueConfig::fixed("default", concurrency)],
        lease: Duration::from_secs(60),
        ..DispatcherConfig::default()
    }
}

/// The settings README's "many short jobs" advice gives: many jobs in
/// flight per host and big claims, so a claim's round trip is paid for
/// hundreds of jobs (graphile-worker's documented equivalent keeps 500
/// jobs in a local queue).
pub fn throughput_config() -> DispatcherConfig {
    DispatcherConfig { claim_batch: 256, ..config(512) }
}

/// Inserts `jobs` no-op `echo` jobs, 5,000 to a transaction.
pub async fn insert_noops(store: &dyn JobStore, jobs: usize) {
    insert_jobs(store, jobs, "echo", b"{}").await;
}

/// Inserts `jobs` jobs of `kind` with `payload`, one attempt each, 5,000 to a transaction.
pub async fn insert_jobs(store: &dyn JobStore, jobs: usize, kind: &str, payload: &[u8]) {
    for start in (0..jobs).step_by(5000) {
        let n = 5000.min(jobs - start);
        store.insert_many((0..n).map(|_| NewJob { max_attempts: 1, ..NewJob::new(kind, payload.to_vec()) }).collect()).await.unwrap();
    }
}

/// True when no job is waiting or running: two index lookups of one row,
/// cheap enough to poll every few milliseconds without loading the store
/// being measured (the bench jobs have one attempt, so none is retryable).
pub async fn nothing_pending(store: &dyn JobStore) -> bool {
    for state in [JobState::Available, JobState::Running] {
        if !store.list(ListFilter { state: Some(state), limit: 1, ..ListFilter::default() }).await.unwrap().jobs.is_empty() {
            return false;
        }
    }
    true
}

/// Runs a peer's worker (the future of its run loop) until its handler
/// has counted `jobs` runs in `done`, then stops it; how long that took.
pub async fn run_until_counted<W>(worker: W, done: &std::sync::atomic::AtomicUsize, jobs: usize) -> Duration
where
    W: Future + Send + 'static,
    W::Output: Send + 'static,
{
    let started = Instant::now();
    let handle = tokio::spawn(worker);
    while done.load(std::sync::atomic::Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    handle.abort();
    elapsed
}

/// Panics unless all `jobs` completed: a run in which some failed (say, for
/// want of a sandbox instance) would otherwise drain early and look fast.
pub async fn assert_all_completed(store: &dyn JobStore, jobs: usize) {
    let counts = store.counts().await.unwrap();
    let completed: u64 = counts.iter().filter(|c| c.state == JobState::Completed).map(|c| c.count).sum();
    assert_eq!(completed, jobs as u64, "every bench job completed: {counts:?}");
}

/// Starts one dispatcher per store with `settings` (each one host, with its own job
/// runtime as `kiln serve` has), times them until `drained` says no job is
/// left, and returns jobs per second.
pub async fn burn_down_hosts<F, Fut>(stores: Vec<Arc<dyn JobStore>>, runner: Arc<dyn Runner>, jobs: usize, settings: &DispatcherConfig, drained: F) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let clock: SharedClock = Arc::new(SystemClock);
    let hosts: Vec<(Dispatcher, tokio::runtime::Runtime)> = stores
        .into_iter()
        .enumerate()
        .map(|(i, store)| {
            let config = DispatcherConfig { host: format!("bench-{i}"), ..settings.clone() };
            let dispatcher = Dispatcher::new(store, runner.clone(), config, clock.clone(), Arc::new(Metrics::new()));
            let jobs_runtime = kiln::serve::job_runtime().unwrap();
            dispatcher.run_jobs_on(jobs_runtime.handle().clone());
            (dispatcher, jobs_runtime)
        })
        .collect();
    let started = Instant::now();
    let running: Vec<_> = hosts.iter().map(|(d, _)| d.start()).collect();
    while !drained().await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    for (dispatcher, _) in &hosts {
        dispatcher.shutdown().await;
    }
    for r in running {
        r.stopped().await;
    }
    for (_, jobs_runtime) in hosts {
        jobs_runtime.shutdown_background();
    }
    jobs as f64 / elapsed.as_secs_f64()
}

/// The HTTP API of `dispatcher` on a loopback port, open as `kiln serve`
/// is without tenants; its base URL, and what closes it.
pub struct ServedApi {
    pub base: String,
    close: tokio::sync::oneshot::Sender<()>,
    api: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServedApi {
    pub async fn start(dispatcher: Dispatcher, registry: Arc<Registry>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let state = kiln::api::AppState {
            service: kiln::worker::JobService::new(dispatcher, registry.clone()),
            registry,
            not_ready: tokio::sync::watch::channel(None).1,
            http: Default::default(),
            access: kiln::api::auth::Access::new(kiln::tenant::KeyRing::new(&[], &Default::default())),
            tenants: Default::default(),
            sessions: Default::default(),
        };
        let api = tokio::spawn(kiln::api::serve(listener, state, async {
            let _ = closed.await;
        }));
        Self { base, close, api }
    }

    pub async fn stop(self) {
        let _ = self.close.send(());
        self.api.await.unwrap().unwrap();
    }
}
