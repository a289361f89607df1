//! Claiming: each queue's loop takes jobs from the store in batches under
//! a lease, as many as its free slots (its width, which widens while its
//! runs are light) plus what those slots get through in [`LOOKAHEAD`](super::pace::LOOKAHEAD),
//! split between tenants by fair share and held to the kinds' and
//! tenants' limits in the claim itself, and starts each in a slot
//! (`run::run_job`). The store's announcements of new jobs wake it.

use super::config::QueueConfig;
use super::pace::RunPace;
use super::fair_share::{FairShare, Held};
use super::metrics::Metrics;
use super::runner::Runner;
use super::state::{InFlight, RunningJob, Shared};
use crate::queue::{ClaimParams, Job};
use crate::sandbox::{ProgressCell, StopSignal};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// When a busy queue has only a few free slots, wait this long for more
/// before claiming, so claims come in batches instead of one job per
/// transaction. An idle queue claims at once.
pub const CLAIM_COOLDOWN: Duration = Duration::from_millis(1);

/// A job claimed ahead of a free slot: registered as running (so it is
/// beaten, and a cancel or shutdown finds it), started once a slot frees.
struct ClaimedAhead {
    job: Job,
    stop: StopSignal,
    counted: InFlight,
    /// Counted against its tenant's fair share until the run ends.
    held: Option<Held>,
}

/// Keeps `want` of a queue's slots back: takes free ones now (the rest
/// come back as runs end, through [`held_back`]), or gives back what is
/// over.
fn hold_back(slots: &Arc<Semaphore>, held: &mut Option<OwnedSemaphorePermit>, want: usize) {
    let have = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
    if have > want {
        if let Some(held) = held.as_mut() {
            drop(held.split(have - want));
        }
    } else if have < want {
        let take = (want - have).min(slots.available_permits());
        if take == 0 {
            return;
        }
        if let Ok(more) = slots.clone().try_acquire_many_owned(take as u32) {
            match held {
                Some(held) => held.merge(more),
                None => *held = Some(more),
            }
        }
    }
}

/// A slot that came free while the queue holds fewer back than it wants:
/// kept back (`None`); otherwise it is the caller's to use.
fn held_back(held: &mut Option<OwnedSemaphorePermit>, want: usize, slot: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
    if held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits) >= want {
        return Some(slot);
    }
    match held {
        Some(held) => held.merge(slot),
        None => *held = Some(slot),
    }
    None
}

/// The tenants the last claim said were held back by a limit, and when:
/// the time until the next claim is counted as throttled
/// (`kiln_tenant_throttled_seconds`).
#[derive(Debug, Default)]
struct Throttles {
    since: HashMap<(Option<String>, Option<String>, crate::queue::Limit), std::time::Instant>,
}

impl Throttles {
    fn saw(&mut self, metrics: &Metrics, held_back: &[crate::queue::HeldBack]) {
        let now = std::time::Instant::now();
        for ((tenant, kind, limit), since) in self.since.drain() {
            metrics.throttled(tenant.as_deref(), kind.as_deref(), limit, now.duration_since(since).as_secs_f64());
        }
        self.since.extend(held_back.iter().map(|h| ((h.tenant.clone(), h.kind.clone(), h.by), now)));
    }
}

/// The kinds whose `[throttle]` this queue's claims hold, read again
/// whenever the runner's set of kinds changes.
struct ThrottledKinds {
    changes: Option<watch::Receiver<u64>>,
    kinds: Vec<crate::queue::KindLimits>,
}

impl ThrottledKinds {
    fn new(runner: &dyn Runner) -> Self {
        let mut changes = runner.changes();
        if let Some(changes) = &mut changes {
            changes.mark_unchanged();
        }
        Self { changes, kinds: runner.throttled() }
    }

    fn now(&mut self, runner: &dyn Runner) -> Vec<crate::queue::KindLimits> {
        if let Some(changes) = &mut self.changes {
            if changes.has_changed().unwrap_or(false) {
                changes.mark_unchanged();
                self.kinds = runner.throttled();
            }
        }
        self.kinds.clone()
    }
}

/// One queue on this host: claims jobs and starts each in a free slot.
///
/// Claims are where a short job's time goes (one write transaction each),
/// so a queue claims in batches, and for short jobs ahead of its free
/// slots: up to what its slots get through in [`LOOKAHEAD`](super::pace::LOOKAHEAD) at the pace of
/// its recent runs (at most `claim_batch`), topped up once half of that is
/// left. A queue whose jobs take a second never claims ahead, so its jobs
/// never wait here behind one another while another host has free slots.
///
/// With tenants, each claim is split between them by `fair_share`, a job
/// of a tenant with nothing claimed ahead is started before those that
/// are, and a job enqueued while the queue waits on its claimed-ahead jobs
/// is claimed at once (it may be another tenant's, which should not wait
/// behind them).
///
/// A queue runs `concurrency` jobs at once, and `light_concurrency` after
/// [`LIGHT_STREAK`] light runs in a row (under [`LIGHT_RUN_FUEL`] and
/// [`LIGHT_RUN_MEMORY`] each): short jobs need many in flight to keep the
/// cores busy, while CPU-heavy ones at that width would be time-sliced
/// past their timeouts. The slots over the current width are held back.
pub(super) async fn queue_loop(shared: Arc<Shared>, queue: QueueConfig) {
    let slots = Arc::new(Semaphore::new(queue.light_concurrency.max(queue.concurrency)));
    let mut held: Option<OwnedSemaphorePermit> = None;
    let hold = |width: usize| queue.light_concurrency.max(queue.concurrency) - width;
    let wake = shared.wake[&queue.name].clone();
    let mut stopping = shared.stopping.subscribe();
    let runtime = shared.job_runtime();
    let pace = Arc::new(RunPace::default());
    let fair = FairShare::new(&shared.config.tenants);
    let mut throttles = Throttles::default();
    let mut throttled_kinds = ThrottledKinds::new(shared.runner.as_ref());
    let mut ahead: VecDeque<ClaimedAhead> = VecDeque::new();
    // The last claim found fewer jobs than it asked for: claim again only
    // once what was claimed ahead has started.
    let mut drained = false;
    let start = |claimed: ClaimedAhead, slot: OwnedSemaphorePermit| {
        runtime.spawn(super::run::run_job(shared.clone(), claimed.job, claimed.stop, (slot, claimed.counted, claimed.held), pace.clone()));
    };
    loop {
        if *stopping.borrow() {
            break;
        }
        let width = pace.width(&queue);
        hold_back(&slots, &mut held, hold(width));
        while !ahead.is_empty() {
            let Ok(slot) = slots.clone().try_acquire_owned() else { break };
            start(ahead.pop_front().expect("not empty"), slot);
        }
        let target = pace.ahead(width, shared.config.claim_batch);
        let mut woken = false;
        if !ahead.is_empty() && (drained || ahead.len() > target / 2) {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => Some(slot.expect("semaphore never closed")),
                () = wake.notified(), if fair.is_some() => None,
                _ = stopping.changed() => break,
            };
            match slot {
                Some(slot) => {
                    if let Some(slot) = held_back(&mut held, hold(pace.width(&queue)), slot) {
                        start(ahead.pop_front().expect("not empty"), slot);
                    }
                    continue;
                }
                None => woken = true,
            }
        }
        // Free slots are claimed for only when nothing claimed ahead waits
        // (those go first, in the order they were claimed).
        let mut permits: Option<OwnedSemaphorePermit> = None;
        if ahead.is_empty() {
            drained = false;
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
                _ = stopping.changed() => break,
            };
            // Narrowed while it waited: the slot is held back instead.
            let Some(mut first) = held_back(&mut held, hold(pace.width(&queue)), first) else { continue };
            let batch = shared.config.claim_batch.min(width).max(1);
            let enough = (batch / 4).max(1);
            if target == 0 && 1 + slots.available_permits() < enough {
                let more = tokio::time::timeout(CLAIM_COOLDOWN, slots.clone().acquire_many_owned((enough - 1) as u32)).await;
                if let Ok(Ok(more)) = more {
                    first.merge(more);
                }
            }
            hold_back(&slots, &mut held, hold(pace.width(&queue)));
            let extra = slots.available_permits().min(batch.saturating_sub(first.num_permits()));
            if extra > 0 {
                if let Ok(more) = slots.clone().try_acquire_many_owned(extra as u32) {
                    first.merge(more);
                }
            }
            permits = Some(first);
        }
        let for_slots = permits.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        let wanted = (for_slots + target.saturating_sub(ahead.len())).max(usize::from(woken));
        // Counted before the check, so shutdown either stops this claim
        // here or waits for it to hand its jobs on.
        let claiming = shared.begin();
        if !shared.accepting.load(Ordering::SeqCst) {
            break;
        }
        // Listening from before the claim, so a run's end written while it
        // is under way is not missed.
        let finished = shared.finished.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        let claimed = shared
            .store
            .claim_fair(ClaimParams {
                queue: queue.name.clone(),
                limit: wanted,
                host: shared.config.host.clone(),
                lease_ms: shared.config.lease.as_millis() as i64,
                shares: fair.as_ref().map_or_else(Vec::new, |f| f.split(wanted)),
                kinds: throttled_kinds.now(shared.runner.as_ref()),
            })
            .await;
        let (jobs, held_back) = match claimed {
            Ok(claimed) => (claimed.jobs, claimed.held_back),
            Err(e) => {
                tracing::error!(queue = %queue.name, "claim failed: {e}; retrying after {:?}", shared.config.poll_interval);
                drop((permits, claiming));
                tokio::time::sleep(shared.config.poll_interval).await;
                continue;
            }
        };
        throttles.saw(&shared.metrics, &held_back);
        drained = jobs.len() < wanted;
        if jobs.is_empty() {
            drop((permits, claiming));
            if !ahead.is_empty() {
                continue;
            }
            // Due jobs held back by limits: look again when the first may
            // start (its rate's next token, or a run's end written here;
            // another host's, at the poll).
            let until_due = if held_back.is_empty() {
                match shared.store.next_due(&queue.name).await {
                    Ok(Some(at)) => Duration::from_millis((at - shared.clock.now()).max(1) as u64),
                    _ => shared.config.poll_interval,
                }
            } else {
                let now = shared.clock.now();
                held_back.iter().filter_map(|h| h.until).min().map_or(shared.config.poll_interval, |at| Duration::from_millis((at - now).max(1) as u64))
            };
            let run_ended = async {
                match held_back.iter().any(|h| h.until.is_none()) {
                    true => finished.await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wake.notified() => {}
                () = run_ended => {}
                () = tokio::time::sleep(until_due.min(shared.config.poll_interval)) => {}
                _ = stopping.changed() => break,
            }
            continue;
        }
        let mut starting = Vec::with_capacity(jobs.len());
        let mut stopped = Vec::new();
        {
            let mut running = shared.running.lock().expect("poisoned");
            for job in jobs {
                if !shared.accepting.load(Ordering::SeqCst) {
                    stopped.push(job);
                    continue;
                }
                // Beaten from the claim on, not only once the run has started.
                let stop = shared.runner.stop_signal();
                running.insert(job.id, RunningJob { lease: job.lease(), stop: stop.clone(), reason: None, progress: ProgressCell::default() });
                starting.push((job, stop));
            }
        }
        if !stopped.is_empty() {
            tracing::info!(queue = %queue.name, jobs = stopped.len(), "shutdown began during the claim; putting the claimed jobs back unstarted");
        }
        for job in &stopped {
            shared.put_back(job);
        }
        for (job, stop) in starting {
            let held = fair.as_ref().and_then(|f| f.hold(job.tenant()));
            let first_of_its_tenant = fair.is_some() && !ahead.iter().any(|c| c.job.tenant() == job.tenant());
            let claimed = ClaimedAhead { job, stop, counted: shared.begin(), held };
            match permits.as_mut().and_then(|p| p.split(1)) {
                Some(slot) => start(claimed, slot),
                None if first_of_its_tenant => ahead.push_front(claimed),
                None => ahead.push_back(claimed),
            }
        }
        drop(claiming);
        // Permits for jobs the claim did not find are dropped here.
    }
    // Stopping: what was claimed ahead goes back unstarted, at its place.
    if !ahead.is_empty() {
        tracing::info!(queue = %queue.name, jobs = ahead.len(), "putting the jobs claimed ahead back unstarted");
    }
    for claimed in ahead.drain(..) {
        shared.running.lock().expect("poisoned").remove(&claimed.job.id);
        shared.put_back(&claimed.job);
    }
    tracing::info!(queue = %queue.name, "queue loop stopped");
}

/// Wakes the queue loops on the store's announcements of jobs inserted by
/// any host.
pub(super) async fn wake_on_announcements(shared: Arc<Shared>, mut wakeups: tokio::sync::broadcast::Receiver<String>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut stopping = shared.stopping.subscribe();
    loop {
        tokio::select! {
            announced = wakeups.recv() => match announced {
                Ok(queue) if queue == crate::queue::WAKE_ALL => shared.wake_all(),
                Ok(queue) => shared.wake(&queue),
                Err(RecvError::Lagged(_)) => shared.wake_all(),
                Err(RecvError::Closed) => break,
            },
            _ = stopping.changed() => break,
        }
    }
}
