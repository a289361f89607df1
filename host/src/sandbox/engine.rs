//! The one wasmtime `Engine` every plugin shares, its configuration, and the
//! epoch ticker that turns wall-clock time into epochs.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// The epoch ticker's period. A deadline is enforced within one tick, and a
/// CPU-bound guest yields its tokio worker thread once a tick, so this is
/// also the longest a spinning plugin can hold a thread other tasks want.
/// 1 ms keeps both well under what a health check notices, at the price of
/// a thousand wake-ups a second of one thread while any iteration runs
/// (a few µs of CPU each); with none running the ticker sleeps.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Sandbox instances (one per running iteration) that may exist at once
/// across the host, by default: `max_instances` in `kiln.toml` changes it,
/// and the queues' concurrency must fit in it.
pub const MAX_CONCURRENT_INSTANCES: u32 = 1000;

/// What ONE plugin's instance may hold. A component over any of these is
/// refused when it is compiled or loaded, naming the limit, so no single
/// job can take the pooled resources every other job shares.
///
/// Core module instances: a Rust or C plugin has 1–3, a componentize-py
/// (Python) one 14, a componentize-js one 4; 32 leaves room for those
/// toolchains to grow, and stops nested components multiplying instances.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Linear memories: one per toolchain runtime plus an adapter's is usual (1–2).
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
/// Tables: a main function table plus the component's shim tables (2–3
/// for the toolchains above; wasmtime allows one per core module).
pub const MAX_TABLES_PER_COMPONENT: u32 = 16;
/// Elements in any one table: wasmtime's default, which CPython's function
/// table fits; each pooled table slot reserves this × 8 bytes of address space.
pub const MAX_TABLE_ELEMENTS: usize = 20_000;
/// Pooled linear-memory slots per sandbox instance. Memory slots are the
/// costly part of the pool (each reserves 4 GiB of address space), so they
/// are not sized for the worst case: a job takes what its component really
/// has, and waits while the pool is short (see `Admission`).
pub const MEMORY_SLOTS_PER_INSTANCE: u32 = 2;

/// The pool's sizes for `instances` concurrent sandbox instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Component instances (and async stacks): one per running iteration.
    pub instances: u32,
    /// Linear-memory slots shared by all of them.
    pub memories: u32,
}

impl PoolSize {
    pub fn for_instances(instances: u32) -> Self {
        Self { instances, memories: instances.saturating_mul(MEMORY_SLOTS_PER_INSTANCE) }
    }

    /// The smallest pool that runs one iteration of any component within
    /// the per-component limits (`kiln run`, the compiler process).
    pub fn for_one_run() -> Self {
        Self { instances: 1, memories: MAX_MEMORIES_PER_COMPONENT }
    }
}

impl Default for PoolSize {
    fn default() -> Self {
        Self::for_instances(MAX_CONCURRENT_INSTANCES)
    }
}

/// Memory kept resident (not returned to the kernel) in each pooled linear
/// memory slot between instances: the first MiB of a plugin's heap is
/// reused warm instead of being faulted in again on every iteration
/// (`../shared/FLOOR.md`: 27 µs → 8–11 µs per fresh instance).
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// Builds the engine from [`engine_config`] with the default pool.
pub fn build_engine() -> wasmtime::Result<Engine> {
    Engine::new(&engine_config())
}

/// Kiln's engine configuration with the default pool; see [`engine_config_for`].
pub fn engine_config() -> Config {
    engine_config_for(PoolSize::default())
}

/// Kiln's engine configuration: pooling allocator tuned for
/// fresh-instance-per-run, fuel for CPU budgets, epochs for wall-clock
/// deadlines. Public so benchmarks can build bare-wasmtime baselines with
/// exactly these settings. The pool size does not change compiled code:
/// artifacts compiled under one size load under any other.
pub fn engine_config_for(size: PoolSize) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    // Core instances and tables cost (almost) nothing until used, so their
    // totals cover every instance at its per-component maximum: they can
    // never run out. Memory slots are admitted per job instead.
    pool.total_component_instances(size.instances)
        .total_stacks(size.instances)
        .total_core_instances(size.instances.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
        .total_tables(size.instances.saturating_mul(MAX_TABLES_PER_COMPONENT))
        .total_memories(size.memories)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(usize::try_from(super::budget::MAX_MEMORY_BYTES).expect("64-bit host"))
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .consume_fuel(true)
        .epoch_interruption(true)
        // No component-model-async guests yet: skip the per-store
        // concurrency state (a measurable share of a µs-scale iteration).
        .concurrency_support(false)
        // Kiln keeps its own artifact cache, keyed by wasm and engine hash.
        .cache(None);
    config
}

/// A thread that increments the engine's epoch every [`EPOCH_TICK`] while
/// at least one iteration runs (an idle host must be idle); stopped and
/// joined when dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    shared: Arc<TickerState>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct TickerState {
    /// (iterations running, ticker stopped)
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

/// Keeps the ticker going while it lives: one per running iteration.
#[derive(Debug)]
pub(crate) struct Ticking(Arc<TickerState>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.state.lock().expect("ticker poisoned").0 -= 1;
    }
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> std::io::Result<Self> {
        let shared = Arc::new(TickerState::default());
        let ticker = shared.clone();
        let thread = std::thread::Builder::new().name("kiln-epoch".into()).spawn(move || {
            let mut state = ticker.state.lock().expect("ticker poisoned");
            loop {
                // Parked until an iteration starts (or the ticker stops).
                state = ticker.changed.wait_while(state, |(running, stopped)| *running == 0 && !*stopped).expect("ticker poisoned");
                if state.1 {
                    return;
                }
                let (next, _) = ticker.changed.wait_timeout_while(state, EPOCH_TICK, |(_, stopped)| !*stopped).expect("ticker poisoned");
                state = next;
                if state.1 {
                    return;
                }
                engine.increment_epoch();
            }
        })?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Ticks until the returned guard is dropped.
    pub(crate) fn running(&self) -> Ticking {
        let mut state = self.shared.state.lock().expect("ticker poisoned");
        state.0 += 1;
        if state.0 == 1 {
            self.shared.changed.notify_all();
        }
        Ticking(self.shared.clone())
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.state.lock().expect("ticker poisoned").1 = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
