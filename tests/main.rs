//! End-to-end tests: the real `kiln` binary and real wasmtime instances
//! running the plugins built from `plugins/`, a real SQLite file or a real
//! Postgres shared by several hosts, the HTTP API.

mod attempts;
mod auth;
mod bad_clients;
mod bad_input;
mod capabilities;
mod chaos;
mod dashboard;
mod enqueue;
mod freed_memory;
mod full_disk;
mod guest_languages;
mod http;
mod hostile;
mod hot_swap;
mod install;
mod kv;
mod multi_host;
mod openapi;
mod readme;
mod run_cli;
mod sandbox_in_process;
mod serve;
mod shutdown;
mod support;
mod tenants;
mod traces;
mod triggers;
