//! Fair share between tenants, measured in process: a real dispatcher on a
//! real SQLite file, every job a fresh sandbox instance of `echo` (a
//! no-op), as `kiln serve` runs it, under the kinds `acme/echo` and
//! `beta/echo`.
//!
//! Latency: tenant acme has 100,000 jobs waiting; tenant beta enqueues one
//! job every 10 ms (300 of them); beta's enqueue → start, p50 and p99, with
//! acme's flood and with acme idle, and with the flood but no tenants
//! configured (every job in one line, oldest first: what the host did
//! before fair share). Throughput: acme's jobs completed per second
//! meanwhile, against acme alone. Shares: with weights 3:1, both tenants
//! with 50,000 jobs waiting, each one's part of the jobs completed in
//! the window.
//!
//! Run: `cargo bench --bench fairness` (add `-- --quick` for one round).
//! Variants alternate round by round; figures are medians over rounds,
//! and ratios are of medians measured in the same run.

use async_trait::async_trait;
use kiln::plugin::{self, Registry};
use kiln::queue::{JobState, JobStore, NewJob, SqliteStore, SystemClock};
use kiln::sandbox::{JobInput, Sandbox, StopSignal};
use kiln::worker::fair_share::TenantPolicy;
use kiln::worker::{Dispatcher, DispatcherConfig, EnqueueRequest, KindInfo, Metrics, Ran, Runner, SandboxRunner};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FLOOD: usize = 100_000;
const B_JOBS: usize = 300;
const B_EVERY: Duration = Duration::from_millis(10);

/// Wraps the sandbox runner and notes when each job of beta's starts.
#[derive(Debug)]
struct StartTimes {
    inner: SandboxRunner,
    started: Mutex<HashMap<String, Instant>>,
}

#[async_trait]
impl Runner for StartTimes {
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
        if input.kind == "beta/echo" {
            self.started.lock().unwrap().insert(input.id.clone(), Instant::now());
        }
        self.inner.run(input, stop).await
    }
}

fn runner(sandbox: &Arc<Sandbox>) -> Arc<StartTimes> {
    let echo = Arc::new(plugin::load(sandbox, None, &plugin::resolve(plugin::built::ECHO, &[]).unwrap()).unwrap());
    let live = BTreeMap::from([("acme/echo".to_string(), echo.clone()), ("beta/echo".to_string(), echo)]);
    Arc::new(StartTimes { inner: SandboxRunner::new(Arc::new(Registry::fixed(sandbox.clone(), live))), started: Mutex::default() })
}

/// What one run measured.
struct Measured {
    /// Beta's enqueue → start, seconds.
    b_latency: Vec<f64>,
    /// Of which the enqueue call itself (the insert), seconds.
    b_insert: Vec<f64>,
    /// Acme's jobs completed per second in the window.
    a_rate: f64,
    /// Beta's part of the jobs completed in the window.
    b_share: f64,
}

fn completed_of(counts: &[kiln::queue::StateCount], tenant: &str) -> u64 {
    counts.iter().filter(|c| c.state == JobState::Completed && c.tenant.as_deref() == Some(tenant)).map(|c| c.count).sum()
}

/// One run: `a_waiting` and `b_waiting` jobs inserted before the host
/// starts, then beta enqueues `B_JOBS` one every `B_EVERY` (if `b_trickle`),
/// or the window is as long as that would take.
async fn measure(sandbox: &Arc<Sandbox>, weights: Option<(u32, u32)>, a_waiting: usize, b_waiting: usize, b_trickle: bool, window_length: Duration) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap());
    for (kind, n) in [("acme/echo", a_waiting), ("beta/echo", b_waiting)] {
        for start in (0..n).step_by(5000) {
            let jobs = (start..n.min(start + 5000)).map(|_| NewJob::new(kind, format!("\"{}\"", &kind[..4]).into_bytes())).collect();
            store.insert_many(jobs).await.unwrap();
        }
    }
    let tenants = weights.map_or_else(Vec::new, |(a, b)| {
        vec![
            TenantPolicy { tenant: Some("acme".into()), weight: a, ..TenantPolicy::default() },
            TenantPolicy { tenant: Some("beta".into()), weight: b, ..TenantPolicy::default() },
        ]
    });
    let runner = runner(sandbox);
    let config = DispatcherConfig { lease: Duration::from_secs(60), tenants, ..DispatcherConfig::default() };
    let dispatcher = Dispatcher::new(store.clone(), runner.clone(), config, Arc::new(SystemClock), Arc::new(Metrics::new()));
    let running = dispatcher.start();
    // Warm up: the first runs compile nothing (the plugin is loaded) but fill pools.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = store.counts().await.unwrap();
    let window = Instant::now();
    let mut enqueued: HashMap<String, Instant> = HashMap::new();
    let mut b_insert = Vec::new();
    if b_trickle {
        let mut tick = tokio::time::interval(B_EVERY);
        for _ in 0..B_JOBS {
            tick.tick().await;
            let at = Instant::now();
            let request = EnqueueRequest { kind: "beta/echo".into(), payload: b"\"beta\"".to_vec(), ..EnqueueRequest::default() };
            let inserted = dispatcher.enqueue(vec![request]).await.unwrap();
            b_insert.push(at.elapsed().as_secs_f64());
            enqueued.insert(inserted[0].job.id.to_string(), at);
        }
    } else {
        tokio::time::sleep(window_length).await;
    }
    let elapsed = window.elapsed().as_secs_f64();
    let after = store.counts().await.unwrap();
    // Beta's last jobs may still be on their way to a slot.
    let waited = Instant::now();
    while runner.started.lock().unwrap().len() < enqueued.len() && waited.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    dispatcher.shutdown().await;
    running.stopped().await;
    let started = runner.started.lock().unwrap();
    let b_latency = enqueued.iter().filter_map(|(id, at)| started.get(id).map(|s| s.duration_since(*at).as_secs_f64())).collect::<Vec<_>>();
    assert_eq!(b_latency.len(), enqueued.len(), "every job of beta's started");
    let a_done = completed_of(&after, "acme") - completed_of(&before, "acme");
    let b_done = completed_of(&after, "beta") - completed_of(&before, "beta");
    Measured { b_latency, b_insert, a_rate: a_done as f64 / elapsed, b_share: b_done as f64 / (a_done + b_done).max(1) as f64 }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 50.0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 3 };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let mut rows: BTreeMap<&str, Vec<(f64, f64, f64, f64)>> = BTreeMap::new();
    let trickle = B_EVERY * B_JOBS as u32;
    // The shares are read over one second, long before either tenant's 50,000 run out.
    let variants: [(&str, Option<(u32, u32)>, usize, usize, bool, Duration); 5] = [
        ("1 beta alone", Some((1, 1)), 0, 0, true, trickle),
        ("2 beta with acme's flood, fair share", Some((1, 1)), FLOOD, 0, true, trickle),
        ("3 beta with acme's flood, no tenants (one line)", None, FLOOD, 0, true, trickle),
        ("4 acme alone", Some((1, 1)), FLOOD, 0, false, trickle),
        ("5 weights 3:1, both flooded", Some((3, 1)), FLOOD / 2, FLOOD / 2, false, Duration::from_secs(1)),
    ];
    for round in 0..rounds {
        for (name, weights, a, b, trickle, window) in variants {
            let mut m = runtime.block_on(measure(&sandbox, weights, a, b, trickle, window));
            let (p50, p99) =
                if m.b_latency.is_empty() { (0.0, 0.0) } else { (percentile(&mut m.b_latency, 50.0), percentile(&mut m.b_latency, 99.0)) };
            let insert = if m.b_insert.is_empty() { 0.0 } else { percentile(&mut m.b_insert, 50.0) };
            println!(
                "round {}: {name}: beta p50 {:.2} ms, p99 {:.2} ms (the insert: p50 {:.2} ms); acme {:.0} jobs/s; beta's share {:.3}",
                round + 1,
                p50 * 1e3,
                p99 * 1e3,
                insert * 1e3,
                m.a_rate,
                m.b_share
            );
            rows.entry(name).or_default().push((p50, p99, m.a_rate, m.b_share));
        }
    }
    let med = |name: &str, pick: fn(&(f64, f64, f64, f64)) -> f64| median(rows[name].iter().map(pick).collect());
    let (alone, fair, fifo, a_alone, shares) = (variants[0].0, variants[1].0, variants[2].0, variants[3].0, variants[4].0);
    println!("\nmedians over {rounds} rounds:");
    for name in [alone, fair, fifo] {
        println!("  {name}: beta enqueue → start p50 {:.2} ms, p99 {:.2} ms", med(name, |r| r.0) * 1e3, med(name, |r| r.1) * 1e3);
    }
    println!(
        "  beta's p99 with the flood / alone: {:.2} with fair share; {:.1} without",
        med(fair, |r| r.1) / med(alone, |r| r.1),
        med(fifo, |r| r.1) / med(alone, |r| r.1)
    );
    println!(
        "  acme: {:.0} jobs/s beside beta, {:.0} jobs/s alone: {:.1} % kept",
        med(fair, |r| r.2),
        med(a_alone, |r| r.2),
        100.0 * med(fair, |r| r.2) / med(a_alone, |r| r.2)
    );
    println!("  weights 3:1, both with work waiting: beta completed {:.1} % of the jobs (75/25 is 25 %)", 100.0 * med(shares, |r| r.3));
}
