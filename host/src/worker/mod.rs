//! The BackgroundService analog: claims jobs, runs them, retries them, keeps
//! their leases, shuts down gracefully. The only part that knows both the
//! queue and the sandbox.
//!
//! One file per service: [`dispatcher`] (queue loops, heartbeat, finisher),
//! [`scheduler`] (cron and interval ticks), [`looper`] (continuous loops),
//! [`startup`] (start-up plugins), [`triggers`] (starts and stops the
//! schedule and loop tasks as the registry changes), [`rescuer`] (expired
//! leases), [`retry_policy`] (outcome → transition), [`runner`] (what runs
//! an iteration), [`kv_backend`] (the kv capability's reads of the job
//! store), [`metrics`], [`run_minutes`] (runs per minute, for the
//! dashboard), [`pruner`] (retention).

pub mod dispatcher;
pub mod fair_share;
pub mod kv_backend;
pub mod looper;
pub mod metrics;
pub mod pruner;
pub mod rescuer;
pub mod retry_policy;
pub mod run_minutes;
pub mod runner;
pub mod scheduler;
pub mod startup;
mod triggers;

pub use dispatcher::{AttemptRecords, Dispatcher, DispatcherConfig, EnqueueError, EnqueueRequest, QueueConfig, Running};
pub use kv_backend::StoreKv;
pub use metrics::Metrics;
pub use runner::{KindInfo, Ran, Runner, SandboxRunner};
pub use startup::{StartupFailed, run_startup_plugins};
