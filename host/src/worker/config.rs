//! The worker's settings (`DispatcherConfig`: the host's name, its queues,
//! batches, lease, grace periods, tenants, retention, what is kept of
//! attempts) and their defaults, each with why it is that number.

use super::fair_share::TenantPolicy;
use std::time::Duration;

/// The most jobs one claim takes: enough to amortise the claim's
/// transaction over many short jobs. A host does not hoard with it: a
/// claim takes only as many as the queue has free slots (its width), plus
/// what those slots get through in `LOOKAHEAD` (`pace`).
pub const DEFAULT_CLAIM_BATCH: usize = 256;
/// Transitions written per transaction, for the same reason.
pub const DEFAULT_FINISH_BATCH: usize = 256;
/// A lease outlives a host by this much: a dead host's jobs come back
/// within it (plus one rescue period).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Safety net for work that nothing announces (a retry came due, another
/// process enqueued into a store that cannot announce it, an announcement
/// lost in an outage); local enqueues, and on Postgres every host's, wake
/// the queue at once.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long running jobs get to finish on shutdown before they are interrupted.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a cancelled job gets to return before it is interrupted.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// One named queue and how many of its jobs run at once on this host (0:
/// it takes jobs in but runs none; see `QueueSettings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    pub concurrency: usize,
    /// How many run at once while the queue's runs are light (see
    /// [`LIGHT_RUN_FUEL`]); at least `concurrency`.
    pub light_concurrency: usize,
}

impl QueueConfig {
    /// A queue that runs `concurrency` jobs at once, light or not.
    pub fn fixed(name: impl Into<String>, concurrency: usize) -> Self {
        Self { name: name.into(), concurrency, light_concurrency: concurrency }
    }
}

/// Jobs of the default queue that run at once, per core: room for a few
/// CPU-bound jobs each, so a long one is not time-sliced past its timeout.
pub const DEFAULT_CONCURRENCY_PER_CORE: usize = 4;
/// ... and per core while its runs are light: enough jobs in flight that
/// the cores stay busy through each short job's claim, start and finish.
pub const DEFAULT_LIGHT_CONCURRENCY_PER_CORE: usize = 128;
/// The default queue's light concurrency is at most this (half the
/// default instance pool), however many cores.
pub const MAX_DEFAULT_LIGHT_CONCURRENCY: usize = 512;
/// A run is light when it uses less fuel than this (a few milliseconds of
/// CPU) and less memory than [`LIGHT_RUN_MEMORY`]: many such runs at once
/// cost the host little, and none of them is slowed past its budget.
pub const LIGHT_RUN_FUEL: u64 = 10_000_000;
pub const LIGHT_RUN_MEMORY: u64 = 8 << 20;
/// A queue widens to its light concurrency after this many light runs in a
/// row; one run that is not light narrows it again at once.
pub const LIGHT_STREAK: u32 = 32;

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// This host's name in leases.
    pub host: String,
    pub queues: Vec<QueueConfig>,
    pub claim_batch: usize,
    pub finish_batch: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub shutdown_grace: Duration,
    pub cancel_grace: Duration,
    /// The largest payload accepted at enqueue.
    pub max_payload_bytes: usize,
    /// Tenants and their weights, for fair share (see `fair_share`);
    /// empty: claims take the best due jobs, whoever's.
    pub tenants: Vec<TenantPolicy>,
    /// How long finished jobs are kept (`None`: for ever).
    pub retention: Option<super::pruner::Retention>,
    /// What is kept of each attempt.
    pub attempts: AttemptRecords,
    /// Spans of enqueues and attempts, and the trace context jobs carry.
    pub tracing: crate::telemetry::Tracing,
}

/// `kiln.toml`'s `[attempts]`: what the store keeps of each attempt, with
/// its job (and deleted with it by the pruner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttemptRecords {
    /// Each attempt's host, plugin version, start and end, outcome, error,
    /// fuel, peak memory and HTTP requests: on.
    pub record: bool,
    /// ... and its log lines (`context.log`, stdout, stderr), at most
    /// [`MAX_LOG_BYTES_PER_ITERATION`](crate::sandbox::MAX_LOG_BYTES_PER_ITERATION)
    /// an attempt: on.
    pub logs: bool,
}

impl Default for AttemptRecords {
    fn default() -> Self {
        Self { record: true, logs: true }
    }
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            host: default_host_name(),
            queues: vec![QueueConfig {
                name: crate::queue::DEFAULT_QUEUE.into(),
                concurrency: cores * DEFAULT_CONCURRENCY_PER_CORE,
                light_concurrency: (cores * DEFAULT_LIGHT_CONCURRENCY_PER_CORE).min(MAX_DEFAULT_LIGHT_CONCURRENCY),
            }],
            claim_batch: DEFAULT_CLAIM_BATCH,
            finish_batch: DEFAULT_FINISH_BATCH,
            lease: DEFAULT_LEASE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            max_payload_bytes: crate::sandbox::DEFAULT_MAX_PAYLOAD_BYTES,
            tenants: Vec::new(),
            retention: Some(super::pruner::Retention::default()),
            attempts: AttemptRecords::default(),
            tracing: crate::telemetry::Tracing::default(),
        }
    }
}

/// `hostname-pid`: unique among live processes on one machine.
pub fn default_host_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}
