//! The per-iteration scope: everything one fresh `Store` holds (WASI with
//! nothing granted, the log, the memory accounting, the stop flags) and the
//! `context` interface the plugin calls.

use super::bindings::kiln::worker::context;
use super::logs::{IterationLog, LogSource};
use super::stop::StopSignal;
use std::time::Instant;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Bytes charged per table element: wasmtime stores table entries as
/// pointer-sized (funcref/externref) slots.
const TABLE_ELEMENT_BYTES: u64 = size_of::<usize>() as u64;

/// Why the epoch callback stopped the guest (a `Trap::Interrupt` alone does
/// not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InterruptReason {
    Deadline,
    Cancelled,
}

/// The data of one iteration's `Store`; dropped with it.
pub(crate) struct IterationState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) log: IterationLog,
    pub(crate) stop: StopSignal,
    pub(crate) deadline: Instant,
    pub(crate) memory: MemoryAccount,
    pub(crate) progress: Option<u8>,
    pub(crate) interrupted_by: Option<InterruptReason>,
}

impl IterationState {
    pub(crate) fn new(log: IterationLog, stop: StopSignal, deadline: Instant, memory_limit: u64) -> Self {
        let mut wasi = WasiCtx::builder();
        // Nothing is granted: no preopened directories, no environment, no
        // arguments, no sockets (the address check denies every address by
        // default; TCP, UDP and name lookup are also switched off).
        wasi.stdout(log.stream(LogSource::Stdout))
            .stderr(log.stream(LogSource::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            log,
            stop,
            deadline,
            memory: MemoryAccount::new(memory_limit),
            progress: None,
            interrupted_by: None,
        }
    }
}

impl WasiView for IterationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl context::Host for IterationState {
    fn cancelled(&mut self) -> bool {
        self.stop.is_cancelled()
    }

    fn time_left_ms(&mut self) -> u64 {
        let left = self.deadline.saturating_duration_since(Instant::now());
        u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
    }

    fn log(&mut self, level: context::LogLevel, message: String) {
        let level = match level {
            context::LogLevel::Trace => tracing::Level::TRACE,
            context::LogLevel::Debug => tracing::Level::DEBUG,
            context::LogLevel::Info => tracing::Level::INFO,
            context::LogLevel::Warn => tracing::Level::WARN,
            context::LogLevel::Error => tracing::Level::ERROR,
        };
        self.log.line(LogSource::Context, level, &message);
    }

    fn progress(&mut self, percent: u8, note: Option<String>) {
        let percent = percent.min(100);
        self.progress = Some(percent);
        if let Some(note) = note {
            self.log.line(LogSource::Context, tracing::Level::DEBUG, &format!("progress {percent}%: {note}"));
        }
    }
}

impl super::bindings::kiln::worker::types::Host for IterationState {}

/// Memory and table bytes of one instance, summed, against one limit.
#[derive(Debug)]
pub(crate) struct MemoryAccount {
    limit: u64,
    current: u64,
    pub(crate) peak: u64,
    /// Set when a growth was refused: a trap after it is out-of-memory.
    pub(crate) refused: bool,
}

impl MemoryAccount {
    fn new(limit: u64) -> Self {
        Self { limit, current: 0, peak: 0, refused: false }
    }

    /// Charges a growth from `current` to `desired` bytes of one memory or
    /// table; false (and `refused` set) when it would pass the limit.
    fn grow(&mut self, current: u64, desired: u64) -> bool {
        let total = self.current - current.min(self.current) + desired;
        if total > self.limit {
            self.refused = true;
            return false;
        }
        self.current = total;
        self.peak = self.peak.max(total);
        true
    }
}

impl ResourceLimiter for IterationState {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.memory.grow(current as u64, desired as u64))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.memory.grow(current as u64 * TABLE_ELEMENT_BYTES, desired as u64 * TABLE_ELEMENT_BYTES))
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryAccount;

    #[test]
    fn sums_growths_across_memories_and_refuses_past_the_limit() {
        let mut m = MemoryAccount::new(100);
        assert!(m.grow(0, 40)); // memory A
        assert!(m.grow(0, 30)); // memory B
        assert!(m.grow(40, 60)); // A grows by 20
        assert_eq!(m.peak, 90);
        assert!(!m.grow(30, 41), "B growing by 11 passes 100");
        assert!(m.refused);
        assert_eq!(m.peak, 90);
    }
}
