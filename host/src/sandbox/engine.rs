//! The one wasmtime `Engine` every plugin shares, its configuration, and the
//! epoch ticker that turns wall-clock time into epochs.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// The epoch ticker's period. A deadline is enforced within one tick, and a
/// CPU-bound guest yields its tokio worker thread once a tick, so this is
/// also the longest a spinning plugin can hold a thread other tasks want.
/// 1 ms keeps both well under what a health check notices, at the price of
/// a thousand wake-ups a second of one idle thread (a few µs of CPU each).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Instances that may exist at once across the host. The pooling allocator
/// reserves address space (not memory) for this many; `kiln.toml` may not
/// give a host's queues more concurrency than this in all.
pub const MAX_CONCURRENT_INSTANCES: u32 = 1000;

/// Memory kept resident (not returned to the kernel) in each pooled linear
/// memory slot between instances: the first MiB of a plugin's heap is
/// reused warm instead of being faulted in again on every iteration
/// (`../shared/FLOOR.md`: 27 µs → 8–11 µs per fresh instance).
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// Builds the engine from [`engine_config`].
pub fn build_engine() -> wasmtime::Result<Engine> {
    Engine::new(&engine_config())
}

/// Kiln's engine configuration: pooling allocator tuned for
/// fresh-instance-per-run, fuel for CPU budgets, epochs for wall-clock
/// deadlines. Public so benchmarks can build bare-wasmtime baselines with
/// exactly these settings.
pub fn engine_config() -> Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_CONCURRENT_INSTANCES)
        .total_core_instances(MAX_CONCURRENT_INSTANCES)
        .total_memories(MAX_CONCURRENT_INSTANCES)
        .total_tables(MAX_CONCURRENT_INSTANCES)
        .total_stacks(MAX_CONCURRENT_INSTANCES)
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

/// A thread that increments the engine's epoch every [`EPOCH_TICK`]; stopped
/// and joined when dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("kiln-epoch".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                engine.increment_epoch();
            }
        })?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
