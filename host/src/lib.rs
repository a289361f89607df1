//! Kiln: a background-job runtime that runs job code as sandboxed
//! WebAssembly components, one fresh instance per iteration.
//!
//! # Layout
//!
//! - [`sandbox`]: how ONE iteration runs — the shared engine, the linker,
//!   the per-iteration store, budgets, and the [`sandbox::Outcome`]. Knows
//!   wasmtime, nothing of queues.
//! - [`plugin`]: what a plugin is — component + manifest, validation
//!   against the `kiln:worker/job` world, the on-disk artifact cache.
//!
//! Dependencies point down this list: `plugin` uses `sandbox`, never the
//! reverse. The `kiln` binary (`main.rs`) parses the command line and calls
//! into these.

pub mod plugin;
pub mod sandbox;
