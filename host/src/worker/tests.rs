//! The dispatcher end to end against a real SQLite store and a runner of
//! test jobs: fair share between tenants, light and heavy widths, jobs
//! claimed ahead reached by a cancel and by shutdown.

use super::config::LIGHT_STREAK;
use super::fair_share::TenantPolicy;
use super::*;
use crate::plugin::Trigger;
use crate::queue::{JobState, NewJob, SqliteStore, SystemClock};
use crate::sandbox::{Budget, JobInput, Outcome, Report, StopSignal};
use async_trait::async_trait;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;
use tokio::sync::Notify;

/// Runs `quick` jobs at once, `heavy` ones at once but reporting
/// heavy fuel, and `blocker` jobs once released; remembers what ran
/// and how many ran at once at most.
#[derive(Debug, Default)]
struct TestRunner {
    ran: Mutex<Vec<String>>,
    release: Notify,
    released: AtomicBool,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

#[async_trait]
impl Runner for TestRunner {
    fn kind(&self, _kind: &str) -> Option<KindInfo> {
        Some(KindInfo { version: "1".into(), retry: Default::default(), budget: Budget::default(), trigger: Trigger::Queued })
    }
    fn kinds(&self) -> Vec<String> {
        vec!["quick".into(), "blocker".into()]
    }
    fn stop_signal(&self) -> StopSignal {
        StopSignal::standalone()
    }
    async fn run(&self, input: &JobInput, _stop: &StopSignal) -> Ran {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        if input.kind == "blocker" {
            let released = self.release.notified();
            if !self.released.load(Ordering::SeqCst) {
                released.await;
            }
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.ran.lock().unwrap().push(input.id.clone());
        let mut report = Report::without_cost(Outcome::Ok(input.payload.clone()));
        if input.kind == "heavy" {
            report.fuel_used = config::LIGHT_RUN_FUEL;
        }
        Ran { report, version: Some("1".into()) }
    }
}

fn job(kind: &str) -> NewJob {
    NewJob {
        kind: kind.into(),
        queue: crate::queue::DEFAULT_QUEUE.into(),
        priority: 0,
        payload: b"1".to_vec(),
        max_attempts: 3,
        scheduled_at: None,
        unique_key: None,
        parent_id: None,
        concurrency_key: None,
        traceparent: None,
    }
}

/// A blocker and `n` quick jobs behind it, in one transaction (so no
/// claim sees the blocker alone).
async fn insert_behind_a_blocker(store: &SqliteStore, n: usize) -> (JobId, Vec<JobId>) {
    let jobs = std::iter::once(job("blocker")).chain((0..n).map(|_| job("quick"))).collect();
    let ids: Vec<JobId> = store.insert_many(jobs).await.unwrap().iter().map(|i| i.job.id).collect();
    (ids[0], ids[1..].to_vec())
}

async fn state_of(store: &SqliteStore, id: JobId) -> JobState {
    store.get(id).await.unwrap().unwrap().state
}

/// Waits (at most 10 s) until job `id` is in `state`.
async fn wait_until(store: &SqliteStore, id: JobId, state: JobState) {
    let started = std::time::Instant::now();
    while state_of(store, id).await != state {
        assert!(started.elapsed() < Duration::from_secs(10), "job {id} never became {state:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn run_to_completion(store: &SqliteStore, dispatcher: &Dispatcher, jobs: Vec<NewJob>) {
    let ids: Vec<JobId> = store.insert_many(jobs).await.unwrap().iter().map(|i| i.job.id).collect();
    dispatcher.wake(crate::queue::DEFAULT_QUEUE);
    for id in ids {
        wait_until(store, id, JobState::Completed).await;
    }
}

/// Where each of `ids` ran in `ran` (the order runs ended).
fn positions(ran: &[String], ids: &[JobId]) -> Vec<usize> {
    ids.iter().map(|id| ran.iter().position(|r| *r == id.to_string()).expect("it ran")).collect()
}

async fn run_two_tenants(weights: (u32, u32), acme: usize, beta: usize) -> (Vec<usize>, Vec<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap());
    // acme's backlog first: oldest first, one line, beta's would run last.
    let insert = async |kind: &str, n: usize| -> Vec<JobId> {
        store.insert_many((0..n).map(|_| job(kind)).collect()).await.unwrap().iter().map(|i| i.job.id).collect()
    };
    let (a, b) = (insert("acme/quick", acme).await, insert("beta/quick", beta).await);
    let runner = Arc::new(TestRunner::default());
    let tenants = vec![
        TenantPolicy { tenant: Some("acme".into()), weight: weights.0, ..TenantPolicy::default() },
        TenantPolicy { tenant: Some("beta".into()), weight: weights.1, ..TenantPolicy::default() },
    ];
    let config = DispatcherConfig { queues: vec![QueueConfig::fixed(crate::queue::DEFAULT_QUEUE, 2)], tenants, ..DispatcherConfig::default() };
    let dispatcher = Dispatcher::new(store.clone(), runner.clone(), config, Arc::new(SystemClock), Arc::new(Metrics::new()));
    let running = dispatcher.start();
    for id in a.iter().chain(&b) {
        wait_until(&store, *id, JobState::Completed).await;
    }
    dispatcher.shutdown().await;
    running.stopped().await;
    let ran = runner.ran.lock().unwrap().clone();
    (positions(&ran, &a), positions(&ran, &b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_few_jobs_is_not_kept_behind_another_tenants_backlog() {
    let (_, beta) = run_two_tenants((1, 1), 3000, 10).await;
    let last = beta.iter().max().unwrap();
    assert!(*last < 600, "beta's 10 jobs ran among the first of 3,010, not after acme's backlog: the last at {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_that_both_have_work_waiting_get_runs_by_weight() {
    let (_, beta) = run_two_tenants((3, 1), 2000, 2000).await;
    let beta_first = beta.iter().filter(|p| **p < 1000).count();
    assert!((150..=350).contains(&beta_first), "beta (weight 1 of 4) ran {beta_first} of the first 1,000 jobs, not about 250");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_jobs_run_wider_than_heavy_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap());
    let runner = Arc::new(TestRunner::default());
    let config = DispatcherConfig {
        queues: vec![QueueConfig { name: crate::queue::DEFAULT_QUEUE.into(), concurrency: 2, light_concurrency: 6 }],
        ..DispatcherConfig::default()
    };
    let dispatcher = Dispatcher::new(store.clone(), runner.clone(), config, Arc::new(SystemClock), Arc::new(Metrics::new()));
    let running = dispatcher.start();
    let blockers_at_once = async |runner: &TestRunner| {
        runner.released.store(false, Ordering::SeqCst);
        runner.most_at_once.store(0, Ordering::SeqCst);
        let ids: Vec<JobId> = store.insert_many((0..10).map(|_| job("blocker")).collect()).await.unwrap().iter().map(|i| i.job.id).collect();
        dispatcher.wake(crate::queue::DEFAULT_QUEUE);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let most = runner.most_at_once.load(Ordering::SeqCst);
        runner.released.store(true, Ordering::SeqCst);
        runner.release.notify_waiters();
        for id in ids {
            while state_of(&store, id).await != JobState::Completed {
                runner.release.notify_waiters();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        most
    };
    assert_eq!(blockers_at_once(&runner).await, 2, "before any light streak: as wide as its concurrency");
    run_to_completion(&store, &dispatcher, (0..LIGHT_STREAK).map(|_| job("quick")).collect()).await;
    assert_eq!(blockers_at_once(&runner).await, 6, "after a streak of light runs: its light concurrency");
    run_to_completion(&store, &dispatcher, vec![job("heavy")]).await;
    assert_eq!(blockers_at_once(&runner).await, 2, "one heavy run: narrow again");
    dispatcher.shutdown().await;
    running.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_jobs_are_claimed_ahead_and_a_cancel_or_shutdown_still_reaches_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(SystemClock)).unwrap());
    let runner = Arc::new(TestRunner::default());
    let config = DispatcherConfig {
        queues: vec![QueueConfig::fixed(crate::queue::DEFAULT_QUEUE, 1)],
        ..DispatcherConfig::default()
    };
    let dispatcher = Dispatcher::new(store.clone(), runner.clone(), config, Arc::new(SystemClock), Arc::new(Metrics::new()));
    let running = dispatcher.start();
    // A quick run first: the queue learns its pace.
    let warm = store.insert(job("quick")).await.unwrap().job.id;
    wait_until(&store, warm, JobState::Completed).await;
    // One slot, held by a blocker: the quick jobs behind it are claimed ahead.
    let (blocker, quick) = insert_behind_a_blocker(&store, 10).await;
    dispatcher.wake(crate::queue::DEFAULT_QUEUE);
    let claimed = || async {
        let mut n = 0;
        for id in &quick {
            n += usize::from(state_of(&store, *id).await == JobState::Running);
        }
        n
    };
    let started = std::time::Instant::now();
    while claimed().await < quick.len() {
        assert!(started.elapsed() < Duration::from_secs(10), "the quick jobs were not claimed ahead of the one slot");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state_of(&store, blocker).await, JobState::Running);
    // A cancel reaches a job claimed ahead: it never runs.
    let cancelled = dispatcher.cancel(quick[0]).await.unwrap();
    assert!(cancelled.cancel_requested);
    runner.released.store(true, Ordering::SeqCst);
    runner.release.notify_waiters();
    for id in &quick[1..] {
        wait_until(&store, *id, JobState::Completed).await;
    }
    assert_eq!(state_of(&store, quick[0]).await, JobState::Cancelled);
    assert!(!runner.ran.lock().unwrap().contains(&quick[0].to_string()), "the cancelled job never ran");

    // Shutdown with jobs claimed ahead: they go back, unstarted. (Quick
    // runs first, so the pace forgets the blocker's long one.)
    run_to_completion(&store, &dispatcher, (0..40).map(|_| job("quick")).collect()).await;
    runner.released.store(false, Ordering::SeqCst);
    let (blocker, behind) = insert_behind_a_blocker(&store, 10).await;
    dispatcher.wake(crate::queue::DEFAULT_QUEUE);
    wait_until(&store, *behind.last().unwrap(), JobState::Running).await;
    let stopping = tokio::spawn({
        let dispatcher = dispatcher.clone();
        async move { dispatcher.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    runner.released.store(true, Ordering::SeqCst);
    runner.release.notify_waiters();
    stopping.await.unwrap();
    running.stopped().await;
    for id in &behind {
        let job = store.get(*id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempt), (JobState::Available, 0), "job {id} went back unstarted");
    }
    assert_ne!(state_of(&store, blocker).await, JobState::Running);
}
