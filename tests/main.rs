//! End-to-end tests: the real `kiln` binary and real wasmtime instances
//! running the plugins built from `plugins/`, a real SQLite file, the HTTP API.

mod bad_input;
mod host;
mod hot_swap;
mod run_cli;
mod sandbox_in_process;
mod serve;
mod support;
mod triggers;
