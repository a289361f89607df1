//! The BackgroundService analog: claims jobs, runs them, retries them, keeps
//! their leases, shuts down gracefully. The only part that knows both the
//! queue and the sandbox.
//!
//! One file per service: [`dispatcher`] (queue loops, heartbeat, finisher),
//! [`rescuer`] (expired leases), [`retry_policy`] (outcome → transition),
//! [`runner`] (what runs a job), [`metrics`].

pub mod dispatcher;
pub mod metrics;
pub mod rescuer;
pub mod retry_policy;
pub mod runner;

pub use dispatcher::{Dispatcher, DispatcherConfig, EnqueueError, EnqueueRequest, QueueConfig, Running};
pub use metrics::Metrics;
pub use runner::{KindInfo, PluginSet, Runner, SandboxRunner};
