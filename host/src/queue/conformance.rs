//! The store conformance suite (River's `riverdrivertest` shape): every
//! test is written once against [`JobStore`] and instantiated for each
//! backend with [`conformance_tests!`]. Time is a [`ManualClock`] the tests
//! move; nothing sleeps.

use super::clock::{Clock as _, ManualClock};
use super::job::{AttemptError, JobState, Lease};
use super::*;

const HOUR: i64 = 3_600_000;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn new_job(kind: &str) -> NewJob {
    NewJob { max_attempts: 3, ..NewJob::new(kind, b"{}".to_vec()) }
}

fn claim(queue: &str, limit: usize) -> ClaimParams {
    ClaimParams { queue: queue.into(), limit, host: "host-a".into(), lease_ms: 30_000, shares: Vec::new(), kinds: Vec::new() }
}

fn err(attempt: u32, message: &str) -> AttemptError {
    AttemptError { attempt, at: 0, outcome: "retry".into(), message: message.into() }
}

pub async fn insert_and_get(store: &dyn JobStore, clock: &ManualClock) {
    let mut job = new_job("echo");
    job.priority = 7;
    job.payload = br#"{"x":1}"#.to_vec();
    job.traceparent = Some(TRACEPARENT.into());
    let inserted = store.insert(job).await.unwrap();
    assert!(inserted.created);
    let got = store.get(inserted.job.id).await.unwrap().unwrap();
    assert_eq!(got, inserted.job);
    assert_eq!((got.kind.as_str(), got.queue.as_str(), got.priority), ("echo", DEFAULT_QUEUE, 7));
    assert_eq!(got.payload, br#"{"x":1}"#);
    assert_eq!((got.state, got.attempt, got.max_attempts), (JobState::Available, 0, 3));
    assert_eq!(got.created_at, clock.now_for_tests());
    assert_eq!(got.traceparent.as_deref(), Some(TRACEPARENT), "the trace context is kept");
    assert!(store.get(got.id + 1000).await.unwrap().is_none());
    // A batch keeps each job's own trace context (or none).
    let batch = vec![NewJob { traceparent: Some(TRACEPARENT.into()), ..new_job("echo") }, new_job("echo")];
    let batch = store.insert_many(batch).await.unwrap();
    assert_eq!((batch[0].job.traceparent.as_deref(), batch[1].job.traceparent.as_deref()), (Some(TRACEPARENT), None));

    let later = NewJob { scheduled_at: Some(clock.now_for_tests() + HOUR), ..new_job("echo") };
    assert_eq!(store.insert(later).await.unwrap().job.state, JobState::Scheduled);
}

pub async fn insert_many_keeps_order(store: &dyn JobStore, _clock: &ManualClock) {
    let jobs = (0..5).map(|i| NewJob { payload: vec![b'0' + i], ..new_job("echo") }).collect();
    let inserted = store.insert_many(jobs).await.unwrap();
    assert_eq!(inserted.len(), 5);
    assert!(inserted.windows(2).all(|w| w[0].job.id < w[1].job.id));
    assert_eq!(inserted[3].job.payload, b"3");
}

pub async fn unique_key_deduplicates_until_the_job_is_dead(store: &dyn JobStore, _clock: &ManualClock) {
    let keyed = || NewJob { unique_key: Some("report-2026-11-22".into()), ..new_job("report") };
    let first = store.insert(keyed()).await.unwrap();
    let second = store.insert(keyed()).await.unwrap();
    assert!(first.created && !second.created);
    assert_eq!(second.job.id, first.job.id);
    assert_eq!(store.list(ListFilter::default()).await.unwrap().jobs.len(), 1);

    // Completed keeps the key (a tick fires once); dead frees it.
    let running = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.discard(running.lease(), err(1, "bad")).await.unwrap();
    let third = store.insert(keyed()).await.unwrap();
    assert!(third.created, "a dead job's key can be used again");
    let running = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.complete(running.lease(), b"done".to_vec()).await.unwrap();
    assert!(!store.insert(keyed()).await.unwrap().created, "a completed job keeps its key");
}

pub async fn claim_takes_due_jobs_best_first_once(store: &dyn JobStore, clock: &ManualClock) {
    let now = clock.now_for_tests();
    let low = store.insert(new_job("a")).await.unwrap().job;
    let high = store.insert(NewJob { priority: 5, ..new_job("b") }).await.unwrap().job;
    let other_queue = store.insert(NewJob { queue: "mail".into(), ..new_job("c") }).await.unwrap().job;
    let future = store.insert(NewJob { scheduled_at: Some(now + HOUR), ..new_job("d") }).await.unwrap().job;

    let claimed = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![high.id], "priority first");
    let job = &claimed[0];
    assert_eq!((job.state, job.attempt), (JobState::Running, 1));
    assert_eq!(job.lease_token, high.lease_token + 1, "a claim takes a new fencing token");
    assert_eq!(job.leased_by.as_deref(), Some("host-a"));
    assert_eq!(job.lease_expires_at, Some(now + 30_000));
    assert_eq!(job.attempted_at, Some(now));

    let rest = store.claim(claim(DEFAULT_QUEUE, 10)).await.unwrap();
    assert_eq!(rest.iter().map(|j| j.id).collect::<Vec<_>>(), vec![low.id], "not the running one, not the future one");
    assert!(store.claim(claim(DEFAULT_QUEUE, 10)).await.unwrap().is_empty());

    clock.advance(HOUR);
    let due = store.claim(claim(DEFAULT_QUEUE, 10)).await.unwrap();
    assert_eq!(due.iter().map(|j| j.id).collect::<Vec<_>>(), vec![future.id], "due once its time has come");
    assert_eq!(store.claim(claim("mail", 10)).await.unwrap()[0].id, other_queue.id);
}

pub async fn complete_stores_the_result(store: &dyn JobStore, clock: &ManualClock) {
    store.insert(new_job("echo")).await.unwrap();
    let job = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    clock.advance(250);
    store.complete(job.lease(), b"result".to_vec()).await.unwrap();
    let done = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.result.as_deref(), Some(&b"result"[..]));
    assert_eq!(done.finalized_at, Some(clock.now_for_tests()));
    assert_eq!((done.leased_by, done.lease_expires_at), (None, None));
}

pub async fn a_stale_completion_is_refused(store: &dyn JobStore, clock: &ManualClock) {
    store.insert(new_job("echo")).await.unwrap();
    // Host A claims, then loses touch; its lease expires and is rescued.
    let by_a = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    clock.advance(31_000);
    assert_eq!(store.rescue_expired(&[]).await.unwrap(), vec![by_a.id]);
    // Host B claims the same job with a newer token.
    let by_b = store.claim(ClaimParams { host: "host-b".into(), ..claim(DEFAULT_QUEUE, 1) }).await.unwrap().pop().unwrap();
    assert_eq!(by_b.id, by_a.id);
    assert!(by_b.lease_token > by_a.lease_token);

    let stale = store.complete(by_a.lease(), b"from A".to_vec()).await.unwrap_err();
    assert!(matches!(stale, StoreError::StaleLease { id, .. } if id == by_a.id), "{stale}");
    let still = store.get(by_a.id).await.unwrap().unwrap();
    assert_eq!((still.state, still.leased_by.as_deref()), (JobState::Running, Some("host-b")), "nothing changed");
    // Every transition is fenced, not only complete.
    assert!(store.discard(by_a.lease(), err(1, "x")).await.is_err());
    assert!(store.retry_at(by_a.lease(), 0, err(1, "x")).await.is_err());
    assert!(store.snooze(by_a.lease(), 0).await.is_err());
    assert!(store.heartbeat(HeartbeatParams { leases: vec![by_a.lease()], lease_ms: 1, progress: vec![] }).await.unwrap().lost == vec![by_a.lease()]);

    store.complete(by_b.lease(), b"from B".to_vec()).await.unwrap();
    let done = store.get(by_b.id).await.unwrap().unwrap();
    assert_eq!(done.result.as_deref(), Some(&b"from B"[..]));
    assert!(store.complete(by_b.lease(), b"again".to_vec()).await.is_err(), "a finished job cannot be finished twice");
}

pub async fn retry_at_waits_and_records_the_error(store: &dyn JobStore, clock: &ManualClock) {
    store.insert(new_job("flaky")).await.unwrap();
    let job = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    let at = clock.now_for_tests() + 10_000;
    store.retry_at(job.lease(), at, err(1, "upstream 503")).await.unwrap();
    let waiting = store.get(job.id).await.unwrap().unwrap();
    assert_eq!((waiting.state, waiting.scheduled_at), (JobState::Retryable, at));
    assert_eq!(waiting.errors, vec![err(1, "upstream 503")]);
    assert!(store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().is_empty(), "not before its time");
    clock.advance(10_000);
    let again = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    assert_eq!(again.attempt, 2);
    store.retry_at(again.lease(), 0, err(2, "still 503")).await.unwrap();
    assert_eq!(store.get(job.id).await.unwrap().unwrap().errors.len(), 2, "every failed attempt is kept");
}

pub async fn discard_dead_letters(store: &dyn JobStore, _clock: &ManualClock) {
    store.insert(new_job("email")).await.unwrap();
    let job = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.discard(job.lease(), err(1, "invalid input: no address")).await.unwrap();
    let dead = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.errors[0].message, "invalid input: no address");
    assert!(dead.finalized_at.is_some());
    assert!(store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().is_empty());
}

pub async fn snooze_returns_the_job_without_counting_the_attempt(store: &dyn JobStore, clock: &ManualClock) {
    store.insert(new_job("echo")).await.unwrap();
    let job = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.snooze(job.lease(), clock.now_for_tests()).await.unwrap();
    let back = store.get(job.id).await.unwrap().unwrap();
    assert_eq!((back.state, back.attempt), (JobState::Available, 0));
    let again = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    assert_eq!(again.attempt, 1);
    store.snooze(again.lease(), clock.now_for_tests() + HOUR).await.unwrap();
    assert_eq!(store.get(job.id).await.unwrap().unwrap().state, JobState::Scheduled);
}

pub async fn heartbeats_keep_a_lease_alive(store: &dyn JobStore, clock: &ManualClock) {
    store.insert(new_job("long")).await.unwrap();
    let job = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    for _ in 0..5 {
        clock.advance(20_000);
        let beat = store.heartbeat(HeartbeatParams { leases: vec![job.lease()], lease_ms: 30_000, progress: vec![] }).await.unwrap();
        assert_eq!(beat, HeartbeatResult::default());
        assert!(store.rescue_expired(&[]).await.unwrap().is_empty(), "a beating lease is not rescued");
    }
    clock.advance(31_000);
    assert_eq!(store.rescue_expired(&[]).await.unwrap(), vec![job.id]);
    let rescued = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(rescued.state, JobState::Retryable);
    assert_eq!(rescued.errors[0].outcome, "lease_expired");
    assert_eq!(rescued.scheduled_at, job.scheduled_at, "a rescued job keeps its place in the queue");
    let beat = store.heartbeat(HeartbeatParams { leases: vec![job.lease()], lease_ms: 30_000, progress: vec![] }).await.unwrap();
    assert_eq!(beat.lost, vec![job.lease()], "the old holder learns it lost the lease");
}

pub async fn rescue_with_no_attempts_left_dead_letters(store: &dyn JobStore, clock: &ManualClock) {
    store.insert(NewJob { max_attempts: 1, ..new_job("once") }).await.unwrap();
    let job = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    clock.advance(31_000);
    store.rescue_expired(&[]).await.unwrap();
    assert_eq!(store.get(job.id).await.unwrap().unwrap().state, JobState::Dead);
}

pub async fn cancel_pending_running_and_final_jobs(store: &dyn JobStore, _clock: &ManualClock) {
    let pending = store.insert(new_job("a")).await.unwrap().job;
    assert_eq!(store.cancel(pending.id).await.unwrap().state, JobState::Cancelled);

    store.insert(new_job("b")).await.unwrap();
    let running = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    let asked = store.cancel(running.id).await.unwrap();
    assert_eq!((asked.state, asked.cancel_requested), (JobState::Running, true));
    let beat = store.heartbeat(HeartbeatParams { leases: vec![running.lease()], lease_ms: 30_000, progress: vec![] }).await.unwrap();
    assert_eq!(beat.cancel_requested, vec![running.lease()]);
    store
        .finish(Finish::new(running.lease(), Transition::Cancel { error: err(1, "cancelled by request") }))
        .await
        .unwrap();
    assert_eq!(store.get(running.id).await.unwrap().unwrap().state, JobState::Cancelled);

    let e = store.cancel(running.id).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidState { state: JobState::Cancelled, .. }), "{e}");
    assert!(matches!(store.cancel(999_999).await.unwrap_err(), StoreError::NotFound(999_999)));
}

/// A cancel requested while a job runs wins over however its host ends
/// the run: a retry, a shutdown's snooze, or the lease running out.
pub async fn a_requested_cancel_wins_over_retry_snooze_and_rescue(store: &dyn JobStore, clock: &ManualClock) {
    for _ in 0..3 {
        store.insert(new_job("slow")).await.unwrap();
    }
    let jobs = store.claim(claim(DEFAULT_QUEUE, 3)).await.unwrap();
    for job in &jobs {
        assert!(store.cancel(job.id).await.unwrap().cancel_requested);
    }
    let now = clock.now_for_tests();
    store.retry_at(jobs[0].lease(), now + HOUR, err(1, "timed out")).await.unwrap();
    store.snooze(jobs[1].lease(), now).await.unwrap();
    clock.advance(31_000);
    assert!(store.rescue_expired(&[jobs[2].id]).await.unwrap().is_empty(), "a job its host still holds is spared");
    assert_eq!(store.rescue_expired(&[]).await.unwrap(), vec![jobs[2].id]);
    for job in &jobs {
        let now = store.get(job.id).await.unwrap().unwrap();
        assert_eq!((now.state, now.cancel_requested), (JobState::Cancelled, false), "job {}", job.id);
        assert!(now.finalized_at.is_some(), "job {} is final", job.id);
    }
    assert!(store.claim(claim(DEFAULT_QUEUE, 3)).await.unwrap().is_empty(), "none runs again");
}

pub async fn a_dead_job_retried_by_hand_runs_again(store: &dyn JobStore, _clock: &ManualClock) {
    store.insert(new_job("email")).await.unwrap();
    let job = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.discard(job.lease(), err(1, "bad")).await.unwrap();
    let revived = store.retry_by_hand(job.id).await.unwrap();
    assert_eq!((revived.state, revived.attempt, revived.max_attempts, revived.finalized_at), (JobState::Available, 1, 3, None));
    assert_eq!(revived.errors.len(), 1, "its history stays");
    let again = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    assert_eq!((again.id, again.attempt), (job.id, 2), "the attempt count goes on");
    store.complete(again.lease(), b"ok".to_vec()).await.unwrap();

    // A job that used every attempt gets one more.
    store.insert(NewJob { max_attempts: 1, ..new_job("email") }).await.unwrap();
    let once = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.discard(once.lease(), err(1, "bad")).await.unwrap();
    let revived = store.retry_by_hand(once.id).await.unwrap();
    assert_eq!((revived.attempt, revived.max_attempts), (1, 2));
    let last = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    assert_eq!((last.attempt, last.max_attempts), (2, 2));
    let e = store.retry_by_hand(job.id).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidState { state: JobState::Completed, .. }), "{e}");
}

pub async fn dead_and_cancelled_jobs_are_deleted_by_hand_and_nothing_else(store: &dyn JobStore, _clock: &ManualClock) {
    let keyed = NewJob { unique_key: Some("invoice-7".into()), ..new_job("email") };
    store.insert(keyed.clone()).await.unwrap();
    let dead = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.discard(dead.lease(), err(1, "bad")).await.unwrap();
    let waiting = store.insert(new_job("email")).await.unwrap().job.id;
    let cancelled = store.insert(new_job("email")).await.unwrap().job.id;
    store.cancel(cancelled).await.unwrap();

    let deleted = store.delete_by_hand(dead.id).await.unwrap();
    assert_eq!((deleted.id, deleted.state, deleted.errors.len()), (dead.id, JobState::Dead, 1), "it answers the job as it was");
    assert!(store.get(dead.id).await.unwrap().is_none(), "gone");
    assert!(matches!(store.delete_by_hand(dead.id).await.unwrap_err(), StoreError::NotFound(_)));
    assert!(store.insert(keyed).await.unwrap().created, "its unique key is free again");
    store.delete_by_hand(cancelled).await.unwrap();
    let e = store.delete_by_hand(waiting).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidState { state: JobState::Available, action: "delete", .. }), "{e}");
    assert!(store.get(waiting).await.unwrap().is_some(), "a waiting job stays");

    // A schedule's newest tick says where the schedule is: kept; older ones go.
    let tick = |t: i64| NewJob { unique_key: Some(schedule_key("report", t)), ..new_job("report") };
    let old = store.insert(tick(1_000)).await.unwrap().job.id;
    let newest = store.insert(tick(2_000)).await.unwrap().job.id;
    for id in [old, newest] {
        store.cancel(id).await.unwrap();
    }
    let e = store.delete_by_hand(newest).await.unwrap_err();
    assert!(matches!(e, StoreError::Kept { .. }), "{e}");
    store.delete_by_hand(old).await.unwrap();
    assert_eq!(store.schedule_state("report").await.unwrap().last_tick, Some(2_000));
}

pub async fn list_filters_and_pages(store: &dyn JobStore, _clock: &ManualClock) {
    for i in 0..6 {
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        store.insert(new_job(kind)).await.unwrap();
    }
    let first = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    let evens = store.list(ListFilter { kind: Some("even".into()), ..ListFilter::default() }).await.unwrap();
    assert_eq!((evens.jobs.len(), evens.more), (3, false));
    let running = store.list(ListFilter { state: Some(JobState::Running), ..ListFilter::default() }).await.unwrap();
    assert_eq!(running.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![first.id]);
    let page1 = store.list(ListFilter { limit: 4, ..ListFilter::default() }).await.unwrap();
    let page2 = store.list(ListFilter { limit: 4, after_id: Some(page1.jobs[3].id), ..ListFilter::default() }).await.unwrap();
    assert_eq!((page1.jobs.len(), page1.more, page2.jobs.len(), page2.more), (4, true, 2, false));
    assert!(page2.jobs[0].id > page1.jobs[3].id);
    let exact = store.list(ListFilter { limit: 2, after_id: Some(page1.jobs[3].id), ..ListFilter::default() }).await.unwrap();
    assert_eq!((exact.jobs.len(), exact.more), (2, false), "a full last page says there is no more");

    // The byte bound: jobs of 1,000-byte payloads, 2,500 bytes a page: the
    // job that crosses the bound is the page's last.
    let big: Vec<NewJob> = (0..5).map(|_| NewJob { payload: vec![b'x'; 1000], ..new_job("big") }).collect();
    store.insert_many(big).await.unwrap();
    let bounded = |after| ListFilter { kind: Some("big".into()), max_bytes: 2500, after_id: after, ..ListFilter::default() };
    let first_page = store.list(bounded(None)).await.unwrap();
    assert_eq!((first_page.jobs.len(), first_page.more), (3, true), "1,000 + 1,000 + 1,000 crosses 2,500 at the third");
    let rest = store.list(bounded(first_page.jobs.last().map(|j| j.id))).await.unwrap();
    assert_eq!((rest.jobs.len(), rest.more), (2, false));
    let tiny = store.list(ListFilter { max_bytes: 1, ..bounded(None) }).await.unwrap();
    assert_eq!((tiny.jobs.len(), tiny.more), (1, true), "a page holds at least one job");

    // Newest first, paging backwards.
    let newest = |after| ListFilter { newest_first: true, limit: 4, after_id: after, ..ListFilter::default() };
    let top = store.list(newest(None)).await.unwrap();
    let ids: Vec<_> = top.jobs.iter().map(|j| j.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]) && top.more, "{ids:?}");
    let all = store.list(ListFilter { limit: 1000, ..ListFilter::default() }).await.unwrap();
    assert_eq!(ids[0], all.jobs.last().unwrap().id, "the newest job first");
    let next = store.list(newest(Some(ids[3]))).await.unwrap();
    assert!(next.jobs[0].id < ids[3], "the next page goes on below the last id");

    let counts = store.counts().await.unwrap();
    let count = |state| counts.iter().find(|c| c.state == state).map_or(0, |c| c.count);
    assert_eq!((count(JobState::Available), count(JobState::Running), count(JobState::Dead)), (10, 1, 0));
}

pub async fn a_paused_queue_is_not_claimed(store: &dyn JobStore, _clock: &ManualClock) {
    store.insert(new_job("a")).await.unwrap();
    store.pause_queue(DEFAULT_QUEUE).await.unwrap();
    assert!(store.claim(claim(DEFAULT_QUEUE, 10)).await.unwrap().is_empty());
    assert_eq!(store.queues().await.unwrap(), vec![QueueInfo { name: DEFAULT_QUEUE.into(), paused: true }]);
    store.resume_queue(DEFAULT_QUEUE).await.unwrap();
    assert_eq!(store.claim(claim(DEFAULT_QUEUE, 10)).await.unwrap().len(), 1);
}

pub async fn finish_many_applies_each_valid_transition(store: &dyn JobStore, _clock: &ManualClock) {
    store.insert_many((0..3).map(|_| new_job("echo")).collect()).await.unwrap();
    let jobs = store.claim(claim(DEFAULT_QUEUE, 3)).await.unwrap();
    let stale = Lease { id: jobs[1].id, token: jobs[1].lease_token - 1 };
    let results = store
        .finish_many(vec![
            Finish::new(jobs[0].lease(), Transition::Complete { result: b"0".to_vec(), effects: Effects::default() }),
            Finish::new(stale, Transition::Complete { result: b"1".to_vec(), effects: Effects::default() }),
            Finish::new(jobs[2].lease(), Transition::Discard { error: err(1, "bad") }),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(StoreError::StaleLease { .. })));
    let states: Vec<JobState> = futures_states(store, &jobs).await;
    assert_eq!(states, vec![JobState::Completed, JobState::Running, JobState::Dead]);
}

async fn futures_states(store: &dyn JobStore, jobs: &[Job]) -> Vec<JobState> {
    let mut states = Vec::new();
    for job in jobs {
        states.push(store.get(job.id).await.unwrap().unwrap().state);
    }
    states
}

pub async fn next_due_finds_the_earliest_waiting_job(store: &dyn JobStore, clock: &ManualClock) {
    assert_eq!(store.next_due(DEFAULT_QUEUE).await.unwrap(), None);
    let now = clock.now_for_tests();
    store.insert(NewJob { scheduled_at: Some(now + 5_000), ..new_job("a") }).await.unwrap();
    store.insert(NewJob { scheduled_at: Some(now + 2_000), ..new_job("b") }).await.unwrap();
    assert_eq!(store.next_due(DEFAULT_QUEUE).await.unwrap(), Some(now + 2_000));
    assert_eq!(store.next_due("other").await.unwrap(), None);
    // Across priorities (it reads the first of each): the earliest is a low one's, among negatives and highs.
    for (priority, after) in [(10, 9_000), (-3, 1_000), (-3, 700), (0, 800), (7, 600), (-20, 3_000)] {
        store.insert(NewJob { priority, scheduled_at: Some(now + after), queue: "mixed".into(), ..new_job("c") }).await.unwrap();
    }
    assert_eq!(store.next_due("mixed").await.unwrap(), Some(now + 600));
    // A running or finished job is not waiting.
    let first = store.claim(ClaimParams { limit: 1, ..claim("mixed", 1) }).await;
    assert!(first.unwrap().is_empty(), "none is due yet");
    clock.advance(650);
    let running = store.claim(claim("mixed", 1)).await.unwrap().pop().unwrap();
    assert_eq!(running.priority, 7);
    assert_eq!(store.next_due("mixed").await.unwrap(), Some(now + 700));
}

pub async fn schedule_ticks_fire_once_and_carry_the_checkpoint(store: &dyn JobStore, clock: &ManualClock) {
    assert_eq!(store.schedule_state("report").await.unwrap(), ScheduleState { last_tick: None, active: false });
    let tick = |t: i64| NewJob { unique_key: Some(schedule_key("report", t)), scheduled_at: Some(t), ..new_job("report") };
    let now = clock.now_for_tests();
    // Two hosts fire the same tick: the store keeps one.
    assert!(store.insert(tick(now)).await.unwrap().created);
    assert!(!store.insert(tick(now)).await.unwrap().created);
    store.insert(NewJob { unique_key: Some(schedule_key("other", now + 9)), ..new_job("other") }).await.unwrap();
    assert_eq!(store.schedule_state("report").await.unwrap(), ScheduleState { last_tick: Some(now), active: true });
    assert_eq!(store.pending_count("report").await.unwrap(), 1);

    let first = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    assert_eq!(first.kind, "report");
    store.complete(first.lease(), b"{\"cursor\":1}".to_vec()).await.unwrap();
    assert_eq!(store.schedule_state("report").await.unwrap(), ScheduleState { last_tick: Some(now), active: false });
    assert_eq!(store.schedule_checkpoint("report").await.unwrap().as_deref(), Some(&b"{\"cursor\":1}"[..]));
    assert_eq!(store.pending_count("report").await.unwrap(), 0);

    // A later tick that fails leaves the checkpoint of the last completed one.
    store.insert(tick(now + 1_000)).await.unwrap();
    clock.advance(1_000);
    let second = store.claim(claim(DEFAULT_QUEUE, 10)).await.unwrap().into_iter().find(|j| j.kind == "report").unwrap();
    store.discard(second.lease(), err(1, "boom")).await.unwrap();
    assert_eq!(store.schedule_state("report").await.unwrap().last_tick, Some(now + 1_000), "a dead tick still counts as fired");
    assert_eq!(store.schedule_checkpoint("report").await.unwrap().as_deref(), Some(&b"{\"cursor\":1}"[..]));
    assert_eq!(tick_of_key(&schedule_key("report", now)), Some(now));
}

pub async fn a_loop_is_held_by_one_host_and_its_checkpoint_is_fenced(store: &dyn JobStore, clock: &ManualClock) {
    let take = |host: &str| LoopClaim { name: "poller".into(), host: host.into(), lease_ms: 10_000 };
    let a = store.acquire_loop(take("a")).await.unwrap().expect("a free loop is taken");
    assert_eq!((a.checkpoint.clone(), a.passes), (None, 0));
    assert!(store.acquire_loop(take("b")).await.unwrap().is_none(), "held by a");

    let save = |token, data: Option<&[u8]>| LoopSave { name: "poller".into(), token, checkpoint: data.map(<[u8]>::to_vec), lease_ms: 10_000 };
    store.save_loop(save(a.token, Some(b"1"))).await.unwrap();
    store.save_loop(save(a.token, Some(b"2"))).await.unwrap();
    clock.advance(8_000);
    store.save_loop(save(a.token, None)).await.unwrap();
    clock.advance(8_000);
    assert!(store.acquire_loop(take("b")).await.unwrap().is_none(), "a renewed its lease");

    // a stops beating; once its lease expires b takes over where a was.
    clock.advance(10_001);
    let b = store.acquire_loop(take("b")).await.unwrap().expect("an expired loop is taken");
    assert_eq!((b.checkpoint.as_deref(), b.passes), (Some(&b"2"[..]), 2));
    assert!(b.token > a.token);
    let stale = store.save_loop(save(a.token, Some(b"99"))).await.unwrap_err();
    assert!(matches!(stale, StoreError::LoopLost { .. }), "{stale}");
    let state = store.loops().await.unwrap();
    assert_eq!(state.len(), 1);
    assert_eq!((state[0].checkpoint.as_deref(), state[0].owner.as_deref()), (Some(&b"2"[..]), Some("b")));

    // A released loop is free at once, checkpoint kept.
    store.release_loop("poller", b.token).await.unwrap();
    let c = store.acquire_loop(take("c")).await.unwrap().expect("a released loop is free");
    assert_eq!(c.checkpoint.as_deref(), Some(&b"2"[..]));
}

pub async fn a_finish_records_the_plugin_version(store: &dyn JobStore, _clock: &ManualClock) {
    store.insert(new_job("echo")).await.unwrap();
    let job = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    let finish = Finish { ran_version: Some("2.0.0".into()), ..Finish::new(job.lease(), Transition::Complete { result: vec![], effects: Effects::default() }) };
    store.finish(finish).await.unwrap();
    assert_eq!(store.get(job.id).await.unwrap().unwrap().plugin_version.as_deref(), Some("2.0.0"));
}

fn with_children(children: Vec<NewJob>) -> Effects {
    Effects { children, ..Effects::default() }
}

/// The transactional outbox: a run's children are inserted with its
/// completion, only when its lease is current, each naming its parent.
pub async fn a_completion_inserts_its_children_with_it_or_not_at_all(store: &dyn JobStore, clock: &ManualClock) {
    store.insert_many(vec![new_job("fan-out"), new_job("fan-out"), new_job("fan-out")]).await.unwrap();
    let jobs = store.claim(claim(DEFAULT_QUEUE, 3)).await.unwrap();
    let now = clock.now_for_tests();
    let child = |parent: &Job, n: u8| NewJob {
        parent_id: Some(parent.id),
        traceparent: Some(TRACEPARENT.into()),
        queue: "mail".into(),
        payload: vec![b'0' + n],
        ..new_job("send-email")
    };
    let later = |parent: &Job| NewJob { scheduled_at: Some(now + HOUR), unique_key: Some("once".into()), ..child(parent, 9) };
    let stale = Lease { id: jobs[1].id, token: jobs[1].lease_token - 1 };
    let results = store
        .finish_many(vec![
            Finish::new(jobs[0].lease(), Transition::Complete { result: b"a".to_vec(), effects: with_children(vec![child(&jobs[0], 1), child(&jobs[0], 2), later(&jobs[0])]) }),
            // A stale completion (its lease was rescued and re-run elsewhere) inserts nothing.
            Finish::new(stale, Transition::Complete { result: b"b".to_vec(), effects: with_children(vec![child(&jobs[1], 3)]) }),
            Finish::new(jobs[2].lease(), Transition::Discard { error: err(1, "bad") }),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok(), "{results:?}");
    let children = store.list(ListFilter { kind: Some("send-email".into()), ..ListFilter::default() }).await.unwrap().jobs;
    assert_eq!(children.iter().map(|c| c.payload.clone()).collect::<Vec<_>>(), vec![b"1".to_vec(), b"2".to_vec(), b"9".to_vec()]);
    assert!(
        children.iter().all(|c| c.parent_id == Some(jobs[0].id) && c.queue == "mail" && c.max_attempts == 3 && c.traceparent.as_deref() == Some(TRACEPARENT)),
        "{children:?}"
    );
    assert_eq!((children[0].state, children[2].state), (JobState::Available, JobState::Scheduled));
    assert_eq!(store.get(jobs[1].id).await.unwrap().unwrap().state, JobState::Running, "the stale completion changed nothing");
    assert_eq!(store.get(jobs[0].id).await.unwrap().unwrap().parent_id, None);
    // A child whose unique key is held is not enqueued twice; one alone (no batch) goes in too.
    let next = store.insert(new_job("fan-out")).await.unwrap().job;
    let next = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().filter(|j| j.id == next.id).expect("claimed");
    store
        .finish(Finish::new(next.lease(), Transition::Complete { result: vec![], effects: with_children(vec![later(&next), child(&next, 4)]) }))
        .await
        .unwrap();
    let children = store.list(ListFilter { kind: Some("send-email".into()), ..ListFilter::default() }).await.unwrap().jobs;
    assert_eq!(children.len(), 4, "the keyed child was held already: {children:?}");
    assert_eq!(children[3].parent_id, Some(next.id));
    assert!(store.queues().await.unwrap().iter().any(|q| q.name == "mail"), "a child's queue is known to the store");
}

fn kv(store: &str, key: &str, change: KvChange) -> KvWrite {
    KvWrite { namespace: "counter".into(), store: store.into(), key: key.into(), change }
}

/// A run's kv writes are applied with its completion, only when its lease
/// is current; a store is namespaced; `Add` works on numbers only.
pub async fn kv_writes_commit_with_the_completion_or_not_at_all(store: &dyn JobStore, _clock: &ManualClock) {
    store.write_kv(vec![kv("default", "n", KvChange::Set(b"40".to_vec())), kv("default", "text", KvChange::Set(b"hello".to_vec()))]).await.unwrap();
    store.insert_many(vec![new_job("counter"), new_job("counter")]).await.unwrap();
    let jobs = store.claim(claim(DEFAULT_QUEUE, 2)).await.unwrap();
    let stale = Lease { id: jobs[1].id, token: jobs[1].lease_token - 1 };
    let effects = |writes: Vec<KvWrite>| Effects { kv: writes, ..Effects::default() };
    let results = store
        .finish_many(vec![
            Finish::new(
                jobs[0].lease(),
                Transition::Complete {
                    result: vec![],
                    effects: effects(vec![
                        kv("default", "n", KvChange::Add(2)),
                        kv("default", "fresh", KvChange::Add(7)),
                        kv("default", "text", KvChange::Add(1)),
                        kv("default", "a/1", KvChange::Set(vec![0xff, 0])),
                        kv("default", "a/2", KvChange::Set(b"x".to_vec())),
                        kv("other", "n", KvChange::Set(b"o".to_vec())),
                    ]),
                },
            ),
            Finish::new(stale, Transition::Complete { result: vec![], effects: effects(vec![kv("default", "n", KvChange::Set(b"stale".to_vec()))]) }),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_err(), "{results:?}");
    let get = |store_name: &'static str, key: &'static str| async move { store.kv_get("counter", store_name, key).await.unwrap() };
    assert_eq!(get("default", "n").await.as_deref(), Some(&b"42"[..]), "added to the committed number");
    assert_eq!(get("default", "fresh").await.as_deref(), Some(&b"7"[..]), "a missing key starts from 0");
    assert_eq!(get("default", "text").await.as_deref(), Some(&b"hello"[..]), "a key that holds no number is left as it is");
    assert_eq!(get("other", "n").await.as_deref(), Some(&b"o"[..]));
    assert_eq!(store.kv_get("someone-else", "default", "n").await.unwrap(), None, "stores are per namespace");
    assert_eq!(store.kv_keys("counter", "default", "", 0, 10).await.unwrap(), ["a/1", "a/2", "fresh", "n", "text"]);
    assert_eq!(store.kv_keys("counter", "default", "a/", 1, 10).await.unwrap(), ["a/2"], "prefix and offset");
    assert_eq!(store.kv_keys("counter", "default", "", 4, 10).await.unwrap(), ["text"]);
    // a/1 (3+2) a/2 (3+1) fresh (5+1) n (1+2) text (4+5)
    assert_eq!(store.kv_usage("counter", "default").await.unwrap(), 5 + 4 + 6 + 3 + 9);
    store.write_kv(vec![kv("default", "a/1", KvChange::Delete)]).await.unwrap();
    assert_eq!(store.kv_get("counter", "default", "a/1").await.unwrap(), None);
    assert_eq!(store.kv_usage("counter", "default").await.unwrap(), 4 + 6 + 3 + 9, "the size is kept with every write");
    assert_eq!(store.kv_usage("counter", "nothing-here").await.unwrap(), 0);
    // A tenant's stores together: every store of every namespace under its prefix, no one else's.
    let tenant = |namespace: &str, bytes: usize| KvWrite { namespace: namespace.into(), store: "default".into(), key: "k".into(), change: KvChange::Set(vec![b'v'; bytes]) };
    store.write_kv(vec![tenant("acme/echo", 9), tenant("acme/send", 19), tenant("acmex/echo", 99), tenant("acme", 999)]).await.unwrap();
    store.write_kv(vec![KvWrite { store: "other".into(), ..tenant("acme/echo", 4) }]).await.unwrap();
    assert_eq!(store.kv_usage_under("acme/").await.unwrap(), 10 + 20 + 5);
    assert_eq!(store.kv_usage_under("nobody/").await.unwrap(), 0);
    assert_eq!(store.get(jobs[1].id).await.unwrap().unwrap().state, JobState::Running, "the stale completion changed nothing");
}

impl ManualClock {
    fn now_for_tests(&self) -> i64 {
        Clock::now(self)
    }
}

pub async fn jobs_belong_to_the_tenant_their_kind_names(store: &dyn JobStore, _clock: &ManualClock) {
    let jobs = store.insert_many(vec![new_job("acme/echo"), new_job("beta/echo"), new_job("echo"), new_job("acme/send")]).await.unwrap();
    let tenants: Vec<_> = jobs.iter().map(|i| i.job.tenant().map(str::to_string)).collect();
    assert_eq!(tenants, [Some("acme".into()), Some("beta".into()), None, Some("acme".into())]);
    let of = |tenant: &str| ListFilter { tenant: Some(tenant.into()), ..ListFilter::default() };
    let acme: Vec<_> = store.list(of("acme")).await.unwrap().jobs.into_iter().map(|j| j.kind).collect();
    assert_eq!(acme, ["acme/echo", "acme/send"], "a tenant's filter finds its jobs and nobody else's");
    assert!(store.list(of("acm")).await.unwrap().jobs.is_empty(), "a prefix of a tenant's name is another tenant");
    let counts = store.counts().await.unwrap();
    let count = |tenant: Option<&str>| counts.iter().filter(|c| c.tenant.as_deref() == tenant).map(|c| c.count).sum::<u64>();
    assert_eq!((count(Some("acme")), count(Some("beta")), count(None)), (2, 1, 1));
    let claimed = store.claim(ClaimParams { shares: vec![ClaimShare { tenant: Some("acme".into()), want: 1, ..ClaimShare::default() }], ..claim(DEFAULT_QUEUE, 1) }).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let waiting = (store.waiting_count(Some("acme")).await.unwrap(), store.waiting_count(Some("beta")).await.unwrap(), store.waiting_count(None).await.unwrap());
    assert_eq!(waiting, (1, 1, 1), "a running job is not waiting");
}

pub async fn a_claim_takes_each_tenants_share_first_then_more_of_each(store: &dyn JobStore, clock: &ManualClock) {
    // acme's backlog is older than beta's and the host's: without shares a claim takes acme's only.
    store.insert_many((0..10).map(|_| new_job("acme/echo")).collect()).await.unwrap();
    clock.advance(10);
    store.insert_many((0..2).map(|_| new_job("beta/echo")).chain([new_job("echo")]).collect()).await.unwrap();
    let share = |tenant: Option<&str>, want| ClaimShare { tenant: tenant.map(str::to_string), want, ..ClaimShare::default() };
    let tenants = |jobs: &[Job]| {
        let mut t: Vec<_> = jobs.iter().map(|j| j.tenant().unwrap_or("-").to_string()).collect();
        t.sort();
        t
    };
    let fair = ClaimParams { shares: vec![share(Some("acme"), 2), share(Some("beta"), 2), share(None, 1)], ..claim(DEFAULT_QUEUE, 5) };
    let got = store.claim(fair).await.unwrap();
    assert_eq!(tenants(&got), ["-", "acme", "acme", "beta", "beta"], "each share first");
    // beta has none left: what it would have taken goes to the others (acme).
    let short = ClaimParams { shares: vec![share(Some("beta"), 3), share(Some("acme"), 1)], ..claim(DEFAULT_QUEUE, 4) };
    let got = store.claim(short).await.unwrap();
    assert_eq!(tenants(&got), ["acme", "acme", "acme", "acme"], "the claim fills its limit from whoever has due jobs");
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "best first among what was taken");
    // A share is never more than the limit.
    let over = ClaimParams { shares: vec![share(Some("acme"), 10)], ..claim(DEFAULT_QUEUE, 1) };
    assert_eq!(store.claim(over).await.unwrap().len(), 1);
    store.pause_queue(DEFAULT_QUEUE).await.unwrap();
    let paused = ClaimParams { shares: vec![share(Some("acme"), 3)], ..claim(DEFAULT_QUEUE, 3) };
    assert!(store.claim(paused).await.unwrap().is_empty(), "a paused queue gives nothing, shares or not");
}

pub async fn a_tenants_limits_hold_at_claim_time_and_say_what_held_it_back(store: &dyn JobStore, clock: &ManualClock) {
    store.insert_many((0..10).map(|_| new_job("acme/echo")).chain((0..10).map(|_| new_job("beta/echo"))).collect()).await.unwrap();
    let acme = ClaimShare { tenant: Some("acme".into()), want: 10, weight: 1, limits: TenantLimits { max_running: Some(3), rate: None } };
    let rate = StartRate { count: 2, per_ms: 1000 };
    let beta = ClaimShare { tenant: Some("beta".into()), want: 10, weight: 1, limits: TenantLimits { max_running: None, rate: Some(rate) } };
    let fair = |shares: Vec<ClaimShare>| ClaimParams { shares, ..claim(DEFAULT_QUEUE, 20) };
    let first = store.claim_fair(fair(vec![acme.clone(), beta.clone()])).await.unwrap();
    let of = |c: &Claimed, t: &str| c.jobs.iter().filter(|j| j.tenant() == Some(t)).count();
    assert_eq!((of(&first, "acme"), of(&first, "beta")), (3, 2), "max_running 3; a bucket of 2");
    let now = clock.now();
    assert_eq!(
        first.held_back,
        [
            HeldBack { tenant: Some("acme".into()), kind: None, by: Limit::MaxRunning, until: None },
            HeldBack { tenant: Some("beta".into()), kind: None, by: Limit::Rate, until: Some(now + 500) },
        ]
    );
    let again = store.claim_fair(fair(vec![acme.clone(), beta.clone()])).await.unwrap();
    assert!(again.jobs.is_empty() && again.held_back.len() == 2, "nothing more until a run ends or a token comes: {again:?}");
    // A run of acme's ends: one more of acme's may start.
    store.complete(first.jobs.iter().find(|j| j.tenant() == Some("acme")).unwrap().lease(), vec![]).await.unwrap();
    let after_one = store.claim_fair(fair(vec![acme.clone()])).await.unwrap();
    assert_eq!(of(&after_one, "acme"), 1);
    // Half a second later beta's bucket holds one token; ten seconds later, two (its size).
    clock.advance(500);
    assert_eq!(of(&store.claim_fair(fair(vec![beta.clone()])).await.unwrap(), "beta"), 1);
    clock.advance(10_000);
    assert_eq!(of(&store.claim_fair(fair(vec![beta.clone()])).await.unwrap(), "beta"), 2);
    // No other tenant's jobs fill a limited tenant's room, and a tenant with nothing due is not held back.
    let empty = ClaimShare { tenant: Some("zeta".into()), want: 5, weight: 1, limits: TenantLimits { max_running: Some(1), rate: None } };
    let none = store.claim_fair(fair(vec![empty])).await.unwrap();
    assert!(none.jobs.is_empty() && none.held_back.is_empty(), "{none:?}");
}

pub async fn a_kinds_max_per_key_holds_each_key_and_never_the_jobs_behind_it(store: &dyn JobStore, clock: &ManualClock) {
    let keyed = |kind: &str, key: Option<&str>| NewJob { concurrency_key: key.map(str::to_string), ..new_job(kind) };
    // Customer a's backlog comes first; b's, the unkeyed and another kind's behind it.
    let mut jobs: Vec<NewJob> = (0..6).map(|_| keyed("mail", Some("a"))).collect();
    jobs.extend([keyed("mail", Some("b")), keyed("mail", Some("b")), keyed("mail", Some("b")), keyed("mail", None), keyed("other", Some("a"))]);
    store.insert_many(jobs).await.unwrap();
    assert_eq!(store.get(1).await.unwrap().unwrap().concurrency_key.as_deref(), Some("a"), "the key is stored");
    let kinds = vec![KindLimits { kind: "mail".into(), max_per_key: Some(2), rate: None }];
    let gated = |limit| ClaimParams { kinds: kinds.clone(), ..claim(DEFAULT_QUEUE, limit) };
    let first = store.claim_fair(gated(20)).await.unwrap();
    let keys = |c: &Claimed| {
        let mut k: Vec<String> = c.jobs.iter().map(|j| format!("{}:{}", j.kind, j.concurrency_key.as_deref().unwrap_or("-"))).collect();
        k.sort();
        k
    };
    assert_eq!(keys(&first), ["mail:-", "mail:a", "mail:a", "mail:b", "mail:b", "other:a"], "two of each key of mail; the unkeyed and other kinds are not held");
    assert_eq!(first.held_back, [HeldBack { tenant: None, kind: Some("mail".into()), by: Limit::MaxPerKey, until: None }]);
    assert!(first.jobs.windows(2).all(|w| w[0].id < w[1].id), "best first among what was taken");
    let again = store.claim_fair(gated(20)).await.unwrap();
    assert!(again.jobs.is_empty() && again.held_back.len() == 1, "both keys are full: {again:?}");
    // One of a's ends: one more of a's, and only one.
    let a = first.jobs.iter().find(|j| j.concurrency_key.as_deref() == Some("a") && j.kind == "mail").unwrap();
    store.complete(a.lease(), vec![]).await.unwrap();
    let after = store.claim_fair(gated(20)).await.unwrap();
    assert_eq!(keys(&after), ["mail:a"]);
    // A claim of one is a claim of one, however many keys have room.
    for j in first.jobs.iter().filter(|j| j.concurrency_key.as_deref() == Some("b")) {
        store.complete(j.lease(), vec![]).await.unwrap();
    }
    assert_eq!(store.claim_fair(gated(1)).await.unwrap().jobs.len(), 1);
    // Without the kind in the claim, nothing holds it.
    clock.advance(1);
    let ungated = store.claim(claim(DEFAULT_QUEUE, 20)).await.unwrap();
    assert_eq!(ungated.len(), 3, "the rest of a's: {ungated:?}");
}

pub async fn a_kinds_rate_holds_its_starts_beside_other_kinds_and_tenants(store: &dyn JobStore, clock: &ManualClock) {
    let mut jobs: Vec<NewJob> = (0..5).map(|_| new_job("acme/report")).collect();
    jobs.extend((0..3).map(|_| new_job("acme/echo")));
    store.insert_many(jobs).await.unwrap();
    let rate = StartRate { count: 2, per_ms: 1000 };
    let kinds = vec![KindLimits { kind: "acme/report".into(), max_per_key: None, rate: Some(rate) }];
    let acme = ClaimShare { tenant: Some("acme".into()), want: 10, weight: 1, limits: TenantLimits::default() };
    let gated = || ClaimParams { kinds: kinds.clone(), shares: vec![acme.clone()], ..claim(DEFAULT_QUEUE, 10) };
    let first = store.claim_fair(gated()).await.unwrap();
    let of = |c: &Claimed, kind: &str| c.jobs.iter().filter(|j| j.kind == kind).count();
    assert_eq!((of(&first, "acme/report"), of(&first, "acme/echo")), (2, 3), "a bucket of 2; the tenant's other kind is not held");
    let now = clock.now();
    assert_eq!(first.held_back, [HeldBack { tenant: Some("acme".into()), kind: Some("acme/report".into()), by: Limit::KindRate, until: Some(now + 500) }]);
    clock.advance(500);
    assert_eq!(of(&store.claim_fair(gated()).await.unwrap(), "acme/report"), 1, "half a second: one token");
    let empty = store.claim_fair(gated()).await.unwrap();
    assert!(empty.jobs.is_empty(), "{empty:?}");
    assert_eq!(empty.held_back[0].until, Some(clock.now() + 500), "the next token's time");
    clock.advance(60_000);
    assert_eq!(of(&store.claim_fair(gated()).await.unwrap(), "acme/report"), 2, "a full bucket is its size, not a minute's worth");
}

pub async fn the_pruner_deletes_old_and_surplus_finished_jobs_and_keeps_what_schedules_need(store: &dyn JobStore, clock: &ManualClock) {
    // Five completed in `default`, finished one second apart; two in `mail`; one dead; then a schedule's; one waiting.
    store.insert_many((0..5).map(|_| new_job("echo")).collect()).await.unwrap();
    store.insert_many((0..2).map(|_| NewJob { queue: "mail".into(), ..new_job("echo") }).collect()).await.unwrap();
    for _ in 0..5 {
        let job = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
        store.complete(job.lease(), vec![]).await.unwrap();
        clock.advance(1000);
    }
    for job in store.claim(claim("mail", 2)).await.unwrap() {
        store.complete(job.lease(), vec![]).await.unwrap();
    }
    store.insert(NewJob { max_attempts: 1, ..new_job("dies") }).await.unwrap();
    let dying = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.discard(dying.lease(), AttemptError { attempt: 1, at: clock.now(), outcome: "fatal".into(), message: "no".into() }).await.unwrap();
    // A schedule's ticks: an old completed one (its checkpoint) and a newer dead one (its newest).
    let tick = |t: i64| NewJob { unique_key: Some(schedule_key("report", t)), max_attempts: 1, ..new_job("report") };
    store.insert(tick(1_000)).await.unwrap();
    let t1 = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.complete(t1.lease(), b"checkpoint".to_vec()).await.unwrap();
    store.insert(tick(2_000)).await.unwrap();
    let t2 = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    store.discard(t2.lease(), AttemptError { attempt: 1, at: clock.now(), outcome: "fatal".into(), message: "no".into() }).await.unwrap();
    store.insert(new_job("waiting")).await.unwrap();
    let count = |c: Vec<StateCount>, state: JobState| c.iter().filter(|c| c.state == state).map(|c| c.count).sum::<u64>();
    let prune = |state, before, keep, limit| PruneParams { state, finalized_before: before, keep_per_queue: keep, limit };
    // By age: completed before the third one finished (two of default's), never the schedule's.
    let third = clock.now() - 3000;
    assert_eq!(store.prune(prune(JobState::Completed, third, 1000, 100)).await.unwrap(), 2);
    assert_eq!(count(store.counts().await.unwrap(), JobState::Completed), 3 + 2 + 1);
    // By count: default keeps its newest two completed (the schedule's tick counts but is kept); mail keeps both.
    let deleted = store.prune(prune(JobState::Completed, 0, 2, 100)).await.unwrap();
    assert_eq!(deleted, 2, "default's completed: three echo and the tick, past the newest two, less the kept tick");
    // The limit bounds one call.
    assert_eq!(store.prune(prune(JobState::Completed, clock.now() + 1, 0, 1)).await.unwrap(), 1);
    assert_eq!(store.prune(prune(JobState::Completed, clock.now() + 1, 0, 100)).await.unwrap(), 2, "the rest");
    let left = store.counts().await.unwrap();
    assert_eq!(count(left.clone(), JobState::Completed), 1, "only the schedule's checkpoint: {left:?}");
    assert_eq!(store.schedule_checkpoint("report").await.unwrap().as_deref(), Some(&b"checkpoint"[..]), "the checkpoint survives");
    // Dead jobs: the schedule's newest tick is kept, the other goes; waiting jobs are never touched.
    assert_eq!(store.prune(prune(JobState::Dead, clock.now() + 1, 0, 100)).await.unwrap(), 1);
    assert_eq!(store.schedule_state("report").await.unwrap().last_tick, Some(2_000), "the schedule still knows its newest tick");
    assert_eq!(count(store.counts().await.unwrap(), JobState::Available), 1);
}

fn ran(outcome: &str, lines: &[&str], progress: Option<u8>) -> AttemptRun {
    AttemptRun {
        summary: AttemptSummary {
            host: "host-a".into(),
            started_at: 1_000,
            ended_at: 1_250,
            outcome: outcome.into(),
            error: (outcome != "ok").then(|| format!("{outcome} happened")),
            duration_ms: 12.5,
            fuel_used: 4_000_000,
            peak_memory_bytes: 1 << 20,
            http_requests: 3,
            log_bytes_dropped: 7,
        },
        progress: progress.map(|percent| Progress { percent, note: Some(format!("at {percent}")) }),
        logs: lines
            .iter()
            .enumerate()
            .map(|(i, m)| LogEntry { at: 1_000 + i as i64, level: "info".into(), source: "log".into(), message: (*m).into() })
            .collect(),
    }
}

fn recorded(lease: Lease, transition: Transition, run: AttemptRun) -> Finish {
    Finish { ran_version: Some("1.2.0".into()), attempt: Some(run), ..Finish::new(lease, transition) }
}

pub async fn each_attempt_is_kept_with_its_logs_and_progress_and_goes_with_its_job(store: &dyn JobStore, clock: &ManualClock) {
    use Progress;
    let id = store.insert(new_job("echo")).await.unwrap().job.id;
    let first = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    // Progress comes with the heartbeat, and only for the current lease.
    let at = |percent: u8| Progress { percent, note: Some(format!("step {percent}")) };
    let stale = Lease { id, token: first.lease_token + 1 };
    store.heartbeat(HeartbeatParams { leases: vec![first.lease()], lease_ms: 30_000, progress: vec![(first.lease(), at(40))] }).await.unwrap();
    store.heartbeat(HeartbeatParams { leases: vec![stale], lease_ms: 30_000, progress: vec![(stale, at(99))] }).await.unwrap();
    assert_eq!(store.get(id).await.unwrap().unwrap().progress, Some(at(40)));
    assert!(store.attempts(id).await.unwrap().is_empty(), "nothing recorded while it runs");

    // Attempt 1 fails and is retried; attempt 2 completes in a batch of plain completions.
    let retry = Transition::RetryAt { at: clock.now(), error: err(1, "retry happened") };
    store.finish(recorded(first.lease(), retry, ran("retry", &["one", "two"], Some(50)))).await.unwrap();
    assert_eq!(store.get(id).await.unwrap().unwrap().progress.map(|p| p.percent), Some(50), "the attempt's last progress");
    let second = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    assert_eq!(second.attempt, 2);
    let done = Transition::Complete { result: b"{}".to_vec(), effects: Effects::default() };
    let results = store.finish_many(vec![recorded(second.lease(), done.clone(), ran("ok", &["three"], None))]).await.unwrap();
    assert!(results[0].is_ok());
    // A stale finish records nothing.
    assert!(store.finish(recorded(first.lease(), done.clone(), ran("ok", &["stale"], None))).await.is_err());

    let attempts = store.attempts(id).await.unwrap();
    assert_eq!(attempts.iter().map(|a| (a.attempt, a.summary.outcome.as_str())).collect::<Vec<_>>(), vec![(1, "retry"), (2, "ok")]);
    assert_eq!(attempts[0].plugin_version.as_deref(), Some("1.2.0"));
    let a = &attempts[0].summary;
    assert_eq!((a.host.as_str(), a.started_at, a.ended_at), ("host-a", 1_000, 1_250));
    assert_eq!((a.error.as_deref(), a.duration_ms, a.fuel_used, a.peak_memory_bytes), (Some("retry happened"), 12.5, 4_000_000, 1 << 20));
    assert_eq!((a.http_requests, a.log_bytes_dropped), (3, 7));
    assert_eq!(attempts[1].summary.error, None);
    assert_eq!(store.get(id).await.unwrap().unwrap().progress.map(|p| p.percent), Some(50), "a run that reported none leaves the last");
    let lines = |logs: AttemptLogs| logs.lines.into_iter().map(|(n, l)| (n, l.message)).collect::<Vec<_>>();
    const ALL: u64 = 1 << 20;
    assert_eq!(lines(store.attempt_logs(id, Some(1), ALL).await.unwrap()), vec![(1, "one".into()), (1, "two".into())]);
    let every = store.attempt_logs(id, None, ALL).await.unwrap();
    assert!(!every.more);
    assert_eq!(lines(every), vec![(1, "one".into()), (1, "two".into()), (2, "three".into())]);
    assert!(store.attempt_logs(id, Some(3), ALL).await.unwrap().lines.is_empty());
    // The bound: whole attempts, at least one, and says more were left.
    let first_only = store.attempt_logs(id, None, 1).await.unwrap();
    assert!(first_only.more);
    assert_eq!(lines(first_only), vec![(1, "one".into()), (1, "two".into())]);
    let line = store.attempt_logs(id, Some(2), ALL).await.unwrap().lines.remove(0).1;
    assert_eq!((line.at, line.level.as_str(), line.source.as_str()), (1_000, "info", "log"));

    // A snooze is no attempt; a completion with effects (its own transaction) records; a discard records.
    let other = store.insert_many(vec![new_job("echo"), new_job("echo")]).await.unwrap();
    let (snoozed, effected) = (other[0].job.id, other[1].job.id);
    let claimed = store.claim(claim(DEFAULT_QUEUE, 2)).await.unwrap();
    let snooze = Transition::Snooze { at: clock.now() };
    let with_effects = Transition::Complete { result: vec![], effects: with_children(vec![new_job("child")]) };
    let by_id = |id| claimed.iter().find(|j| j.id == id).unwrap().lease();
    store
        .finish_many(vec![recorded(by_id(snoozed), snooze, ran("cancelled", &[], None)), recorded(by_id(effected), with_effects, ran("ok", &["x"], Some(100)))])
        .await
        .unwrap();
    assert!(store.attempts(snoozed).await.unwrap().is_empty(), "a snooze is not an attempt");
    assert_eq!(store.attempts(effected).await.unwrap().len(), 1);
    assert_eq!(store.get(effected).await.unwrap().unwrap().progress.map(|p| p.percent), Some(100));
    let dying = store.claim(claim(DEFAULT_QUEUE, 1)).await.unwrap().pop().unwrap();
    assert_eq!(dying.id, snoozed);
    store.finish(recorded(dying.lease(), Transition::Discard { error: err(1, "fatal happened") }, ran("fatal", &["bye"], None))).await.unwrap();
    assert_eq!(store.attempts(snoozed).await.unwrap().len(), 1);

    // Deleting a job, by hand or by the pruner, deletes its attempts and logs.
    store.delete_by_hand(snoozed).await.unwrap();
    assert!(store.attempts(snoozed).await.unwrap().is_empty() && store.attempt_logs(snoozed, None, ALL).await.unwrap().lines.is_empty());
    let pruned = store.prune(PruneParams { state: JobState::Completed, finalized_before: clock.now() + 1, keep_per_queue: 0, limit: 100 }).await.unwrap();
    assert_eq!(pruned, 2);
    assert!(store.attempts(id).await.unwrap().is_empty() && store.attempt_logs(id, None, ALL).await.unwrap().lines.is_empty());
    assert!(store.attempts(effected).await.unwrap().is_empty());
}

pub async fn run_minutes_replace_their_row_and_age_out(store: &dyn JobStore, _clock: &ManualClock) {
    const MINUTE: i64 = 60_000;
    let row = |minute: i64, host: &str, kind: &str, runs: u64| MinuteRuns {
        minute: minute * MINUTE,
        host: host.into(),
        queue: DEFAULT_QUEUE.into(),
        kind: kind.into(),
        runs,
        failures: runs / 2,
        delay_ms_sum: runs as i64 * 10,
        delay_ms_max: 40,
    };
    store.record_minutes(vec![row(100, "a", "echo", 3), row(101, "a", "echo", 1)], 0).await.unwrap();
    store.record_minutes(vec![row(101, "b", "echo", 7), row(101, "b", "acme/send", 2)], 0).await.unwrap();
    // A host's running totals replace its row of that minute: they are not added.
    store.record_minutes(vec![row(101, "a", "echo", 5)], 0).await.unwrap();
    let all = store.minutes(0).await.unwrap();
    assert_eq!(all, vec![row(100, "a", "echo", 3), row(101, "a", "echo", 5), row(101, "b", "acme/send", 2), row(101, "b", "echo", 7)]);
    assert_eq!(store.minutes(101 * MINUTE).await.unwrap().len(), 3);
    // Writing deletes every host's rows before `keep_since`, and writes none of them.
    store.record_minutes(vec![row(99, "c", "echo", 9), row(102, "c", "echo", 1)], 101 * MINUTE).await.unwrap();
    let kept = store.minutes(0).await.unwrap();
    assert_eq!(kept.iter().map(|r| (r.minute / MINUTE, r.host.as_str())).collect::<Vec<_>>(), vec![(101, "a"), (101, "b"), (101, "b"), (102, "c")]);
}

pub async fn counts_follow_jobs_as_they_come_move_and_go(store: &dyn JobStore, clock: &ManualClock) {
    let count_of = |counts: &[StateCount], queue: &str, tenant: Option<&str>, state: JobState| {
        counts.iter().filter(|c| c.queue == queue && c.tenant.as_deref() == tenant && c.state == state).map(|c| c.count).sum::<u64>()
    };
    store.insert_many((0..5).map(|_| new_job("echo")).collect()).await.unwrap();
    store.insert_many((0..3).map(|_| NewJob { queue: "mail".into(), ..new_job("acme/send") }).collect()).await.unwrap();
    store.insert(NewJob { scheduled_at: Some(clock.now() + HOUR), ..new_job("acme/send") }).await.unwrap();
    let claimed = store.claim(claim(DEFAULT_QUEUE, 3)).await.unwrap();
    store.complete(claimed[0].lease(), vec![]).await.unwrap();
    store.discard(claimed[1].lease(), err(1, "bad")).await.unwrap();
    for folded in [false, true] {
        if folded {
            store.fold_counts().await.unwrap();
            store.fold_counts().await.unwrap();
        }
        let counts = store.counts().await.unwrap();
        let want = [
            (DEFAULT_QUEUE, None, JobState::Available, 2),
            (DEFAULT_QUEUE, None, JobState::Running, 1),
            (DEFAULT_QUEUE, None, JobState::Completed, 1),
            (DEFAULT_QUEUE, None, JobState::Dead, 1),
            ("mail", Some("acme"), JobState::Available, 3),
            (DEFAULT_QUEUE, Some("acme"), JobState::Scheduled, 1),
        ];
        for (queue, tenant, state, n) in want {
            assert_eq!(count_of(&counts, queue, tenant, state), n, "{queue} {tenant:?} {state} (folded: {folded}): {counts:?}");
        }
        assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 9, "nothing else: {counts:?}");
        assert!(counts.iter().all(|c| c.count > 0), "no empty rows: {counts:?}");
        assert_eq!(store.waiting_count(Some("acme")).await.unwrap(), 4);
        assert_eq!(store.waiting_count(None).await.unwrap(), 2);
    }
    // A hand retry, a delete, a heartbeat (no move) and the pruner.
    let dead = claimed[1].id;
    store.retry_by_hand(dead).await.unwrap();
    store.heartbeat(HeartbeatParams { leases: vec![claimed[2].lease()], lease_ms: 30_000, progress: vec![] }).await.unwrap();
    let counts = store.counts().await.unwrap();
    assert_eq!((count_of(&counts, DEFAULT_QUEUE, None, JobState::Dead), count_of(&counts, DEFAULT_QUEUE, None, JobState::Available)), (0, 3));
    assert_eq!(count_of(&counts, DEFAULT_QUEUE, None, JobState::Running), 1);
    store.prune(PruneParams { state: JobState::Completed, finalized_before: clock.now() + 1, keep_per_queue: 0, limit: 100 }).await.unwrap();
    let cancelled = store.cancel(claimed[2].id).await.unwrap();
    assert!(matches!(cancelled.state, JobState::Running | JobState::Cancelled));
    store.fold_counts().await.unwrap();
    let counts = store.counts().await.unwrap();
    assert_eq!(count_of(&counts, DEFAULT_QUEUE, None, JobState::Completed), 0, "{counts:?}");
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 8, "{counts:?}");
}

/// Checks what a store opened on a database an older version left still
/// holds (the tests write it: a completed job 1, a waiting job 2 of
/// `send-email` in queue `mail`, and with `with_kv` the key `k = v` in
/// store `default` of `cleanup`), and that it takes new work.
pub(crate) async fn check_migrated(store: &dyn JobStore, from: i64, with_kv: bool) {
    let done = store.get(1).await.unwrap().unwrap();
    assert_eq!((done.state, done.payload.as_slice(), done.result.as_deref()), (JobState::Completed, &b"{\"n\":1}"[..], Some(&b"{\"n\":1}"[..])), "from {from}");
    let waiting = store.get(2).await.unwrap().unwrap();
    assert_eq!((waiting.kind.as_str(), waiting.queue.as_str(), waiting.priority, waiting.state), ("send-email", "mail", 5, JobState::Available));
    let counts = store.counts().await.unwrap();
    let count = |state: JobState| counts.iter().filter(|c| c.state == state).map(|c| c.count).sum::<u64>();
    assert_eq!((count(JobState::Completed), count(JobState::Available)), (1, 1), "from {from}: the counts include the old rows");
    let listed = store.list(ListFilter { state: Some(JobState::Available), limit: 100, ..ListFilter::default() }).await.unwrap();
    assert_eq!(listed.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [2], "from {from}");
    if with_kv {
        assert_eq!(store.kv_get("cleanup", "default", "k").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(store.kv_usage("cleanup", "default").await.unwrap(), 2, "from {from}: the store's size is known");
    }
    let inserted = store.insert(NewJob::new("echo", b"{}".to_vec())).await.unwrap();
    assert_eq!(inserted.job.id, 3, "from {from}: the migrated store takes new work");
}


/// Instantiates every conformance test for one backend. `$factory` is an
/// async fn returning `(Arc<dyn JobStore>, ManualClock, guard)`; the guard
/// (a temp dir, a schema) lives as long as the test. Attributes after it
/// go on every test (`#[cfg_attr(..., ignore = "...")]`).
macro_rules! conformance_tests {
    ($factory:ident $(, #[$attr:meta])*) => {
        $crate::queue::conformance::conformance_tests!(@each $factory, [$(#[$attr])*],
            insert_and_get,
            insert_many_keeps_order,
            unique_key_deduplicates_until_the_job_is_dead,
            claim_takes_due_jobs_best_first_once,
            complete_stores_the_result,
            a_stale_completion_is_refused,
            retry_at_waits_and_records_the_error,
            discard_dead_letters,
            snooze_returns_the_job_without_counting_the_attempt,
            heartbeats_keep_a_lease_alive,
            rescue_with_no_attempts_left_dead_letters,
            cancel_pending_running_and_final_jobs,
            a_requested_cancel_wins_over_retry_snooze_and_rescue,
            a_dead_job_retried_by_hand_runs_again,
            dead_and_cancelled_jobs_are_deleted_by_hand_and_nothing_else,
            list_filters_and_pages,
            a_paused_queue_is_not_claimed,
            finish_many_applies_each_valid_transition,
            next_due_finds_the_earliest_waiting_job,
            schedule_ticks_fire_once_and_carry_the_checkpoint,
            a_loop_is_held_by_one_host_and_its_checkpoint_is_fenced,
            a_finish_records_the_plugin_version,
            a_completion_inserts_its_children_with_it_or_not_at_all,
            kv_writes_commit_with_the_completion_or_not_at_all,
            jobs_belong_to_the_tenant_their_kind_names,
            a_claim_takes_each_tenants_share_first_then_more_of_each,
            a_tenants_limits_hold_at_claim_time_and_say_what_held_it_back,
            a_kinds_max_per_key_holds_each_key_and_never_the_jobs_behind_it,
            a_kinds_rate_holds_its_starts_beside_other_kinds_and_tenants,
            the_pruner_deletes_old_and_surplus_finished_jobs_and_keeps_what_schedules_need,
            each_attempt_is_kept_with_its_logs_and_progress_and_goes_with_its_job,
            counts_follow_jobs_as_they_come_move_and_go,
            run_minutes_replace_their_row_and_age_out,
        );
    };
    (@each $factory:ident, $attrs:tt, $($test:ident),+ $(,)?) => {
        mod conformance {
            $( $crate::queue::conformance::conformance_tests!(@one $factory, $attrs, $test); )+
        }
    };
    (@one $factory:ident, [$($attr:tt)*], $test:ident) => {
        #[tokio::test]
        $($attr)*
        async fn $test() {
            let (store, clock, _guard) = super::$factory().await;
            $crate::queue::conformance::$test(&*store, &clock).await;
        }
    };
}
pub(crate) use conformance_tests;
