//! Kiln: a background-job runtime that runs job code as sandboxed
//! WebAssembly components, one fresh instance per iteration.
//!
//! # Layout
//!
//! - [`sandbox`]: how ONE iteration runs — the shared engine, the linker,
//!   the per-iteration store, budgets, and the [`sandbox::Outcome`]. Knows
//!   wasmtime, nothing of queues.
//! - [`capability`]: what a plugin may be lent for one iteration (outbound
//!   HTTP, kv, config and secrets, enqueueing), granted per plugin version.
//! - [`plugin`]: what a plugin is — component + manifest, validation
//!   against the `kiln:worker/job` world, the on-disk artifact cache.
//! - [`queue`]: durable jobs — the [`queue::JobStore`] trait and its
//!   SQLite backend. Knows nothing of wasm.
//! - [`worker`]: the BackgroundService — claims, runs, retries, leases,
//!   graceful shutdown. The only part that knows queue and sandbox.
//! - [`tenant`]: who calls the API: the operator's and tenants' keys
//!   (as hashes) and each tenant's settings.
//! - [`telemetry`]: traces of job runs (OpenTelemetry, OTLP) and the W3C
//!   trace context a job carries from its caller to its plugin's requests.
//! - [`api`]: the HTTP API; calls into worker and queue, and asks
//!   [`tenant`] who a request's key belongs to.
//! - [`config`], [`serve`]: `kiln.toml` and the composition root of
//!   `kiln serve`; [`cli`]: the `kiln` command line, one file per group
//!   of commands; [`client`]: its HTTP client;
//!   [`example_services`]: the local mail API and feed the bundled
//!   examples reach when no real ones are configured.
//!
//! Dependencies point down this list: `sandbox` and `queue` never import
//! `worker` or `api`. The `kiln` binary (`main.rs`) parses the command line
//! and calls into these.

pub mod api;
pub mod capability;
pub mod cli;
pub mod client;
pub mod config;
pub mod example_services;
pub mod names;
pub mod plugin;
pub mod queue;
pub mod sandbox;
pub mod serve;
pub mod telemetry;
pub mod tenant;
pub mod worker;
