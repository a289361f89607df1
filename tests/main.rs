//! End-to-end tests: the real `kiln` binary and real wasmtime instances
//! running the plugins built from `plugins/`.

mod bad_input;
mod run_cli;
mod sandbox_in_process;
mod support;
