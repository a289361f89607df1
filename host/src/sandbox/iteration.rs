//! The per-iteration scope: everything one fresh `Store` holds (WASI with
//! nothing granted, the plugin version's capability grants, the log, the
//! memory accounting, the stop flags).

use super::logs::{IterationLog, LogSource};
use super::stop::StopSignal;
use crate::capability::{InScope, Scope};
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
    http: wasmtime_wasi_http::WasiHttpCtx,
    /// What the run was lent: its version's grants, and what it asked of them.
    pub(crate) scope: Scope,
    table: ResourceTable,
    pub(crate) log: IterationLog,
    pub(crate) stop: StopSignal,
    pub(crate) deadline: Instant,
    pub(crate) memory: MemoryAccount,
    pub(crate) progress: super::ProgressCell,
    pub(crate) interrupted_by: Option<InterruptReason>,
}

impl IterationState {
    pub(crate) fn new(log: IterationLog, stop: StopSignal, progress: super::ProgressCell, deadline: Instant, memory_limit: u64, scope: Scope) -> Self {
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
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            scope,
            table: ResourceTable::new(),
            log,
            stop,
            deadline,
            memory: MemoryAccount::new(memory_limit),
            progress,
            interrupted_by: None,
        }
    }
}

impl WasiView for IterationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wasmtime_wasi_http::WasiHttpView for IterationState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        // The same table as WASI's: HTTP bodies are wasi:io streams.
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.scope.http }
    }
}

impl super::bindings::kiln::worker::types::Host for IterationState {}

impl InScope for IterationState {
    fn scope(&mut self) -> &mut Scope {
        &mut self.scope
    }

    fn scope_ref(&self) -> &Scope {
        &self.scope
    }
}

/// Memory and table bytes of one instance, summed, against one limit.
#[derive(Debug)]
pub(crate) struct MemoryAccount {
    limit: u64,
    current: u64,
    pub(crate) peak: u64,
    /// Set when a growth was refused: a trap after it is out-of-memory.
    pub(crate) refused: bool,
    /// `current` and `peak` before the last allowed growth, to undo it
    /// when the growth fails after all.
    last_growth: Option<(u64, u64)>,
}

impl MemoryAccount {
    fn new(limit: u64) -> Self {
        Self { limit, current: 0, peak: 0, refused: false, last_growth: None }
    }

    /// Charges a growth from `current` to `desired` bytes of one memory or
    /// table; false (and `refused` set) when it would pass the limit or the
    /// memory's or table's own `maximum` (its declared one, or the pool's).
    fn grow(&mut self, current: u64, desired: u64, maximum: Option<u64>) -> bool {
        let total = (self.current - current.min(self.current)).saturating_add(desired);
        if total > self.limit || maximum.is_some_and(|max| desired > max) {
            self.refused = true;
            return false;
        }
        self.last_growth = Some((self.current, self.peak));
        self.current = total;
        self.peak = self.peak.max(total);
        true
    }

    /// A growth the limiter allowed failed after all: it never happened.
    fn grow_failed(&mut self) {
        if let Some((current, peak)) = self.last_growth.take() {
            self.current = current;
            self.peak = peak;
        }
        self.refused = true;
    }
}

impl ResourceLimiter for IterationState {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.memory.grow(current as u64, desired as u64, maximum.map(|m| m as u64)))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory.grow_failed();
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| (elements as u64).saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.memory.grow(bytes(current), bytes(desired), maximum.map(bytes)))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory.grow_failed();
        Ok(())
    }

    // One instance may hold no more than the pool lets one component have.
    fn instances(&self) -> usize {
        super::engine::MAX_CORE_INSTANCES_PER_COMPONENT as usize
    }

    fn memories(&self) -> usize {
        super::engine::MAX_MEMORIES_PER_COMPONENT as usize
    }

    fn tables(&self) -> usize {
        super::engine::MAX_TABLES_PER_COMPONENT as usize
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryAccount;

    #[test]
    fn sums_growths_across_memories_and_refuses_past_the_limit() {
        let mut m = MemoryAccount::new(100);
        assert!(m.grow(0, 40, None)); // memory A
        assert!(m.grow(0, 30, None)); // memory B
        assert!(m.grow(40, 60, None)); // A grows by 20
        assert_eq!(m.peak, 90);
        assert!(!m.grow(30, 41, None), "B growing by 11 passes 100");
        assert!(m.refused);
        assert_eq!(m.peak, 90);
    }

    #[test]
    fn a_growth_past_the_maximum_or_that_fails_later_is_not_counted() {
        let mut m = MemoryAccount::new(1000);
        assert!(m.grow(0, 10, Some(50)));
        assert!(!m.grow(10, 60, Some(50)), "past the table's own maximum");
        assert!(m.refused);
        assert_eq!((m.current, m.peak), (10, 10));
        let mut m = MemoryAccount::new(1000);
        assert!(m.grow(0, 10, None));
        assert!(m.grow(10, 500, None));
        m.grow_failed();
        assert_eq!((m.current, m.peak, m.refused), (10, 10, true), "the failed growth never happened");
    }
}
