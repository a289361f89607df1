//! How ONE iteration runs: a fresh `Store` and instance per call, under fuel,
//! memory and wall-clock budgets, classified into an [`Outcome`]. Knows
//! wasmtime; knows nothing of queues, schedules or HTTP.
//!
//! # Scheduling
//!
//! Iterations are async tasks on the host's tokio runtime, not threads of a
//! blocking pool. `call_async` runs the guest on a fiber, and the epoch
//! callback yields back to the executor every [`EPOCH_TICK`], so a CPU-bound
//! plugin holds a worker thread for at most one tick before other tasks
//! (the HTTP API, heartbeats, other jobs) get their turn. A blocking pool
//! would need one OS thread per running job and could not be preempted at
//! all; epoch yields give preemption at the cost of a fiber switch a tick.

mod admission;
mod bindings;
mod budget;
mod context;
mod engine;
mod iteration;
mod lifted;
mod logs;
mod outcome;
mod plugin_text;
mod progress;
mod returned;
mod stop;

pub use admission::PoolNeeds;
pub use budget::{
    Budget, DEFAULT_CANCEL_GRACE, DEFAULT_FUEL, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MEMORY_BYTES, DEFAULT_TIMEOUT, MAX_MEMORY_BYTES, PayloadTooLarge,
};
pub use engine::{
    EPOCH_TICK, MAX_CONCURRENT_INSTANCES, MAX_CORE_INSTANCES_PER_COMPONENT, MAX_MEMORIES_PER_COMPONENT,
    MAX_TABLE_ELEMENTS, MAX_TABLES_PER_COMPONENT, MEMORY_SLOTS_PER_INSTANCE, PoolSize, build_engine, engine_config,
    engine_config_for,
};
pub use logs::{LogLine, LogSource, MAX_LOG_BYTES_PER_ITERATION, MAX_LOG_LINE_BYTES};
pub use outcome::{HttpUse, Outcome, Report};
pub use plugin_text::{MAX_ERROR_MESSAGE_BYTES, MAX_PROGRESS_NOTE_BYTES, escape_controls};
pub use progress::{ProgressCell, ReportedProgress};
pub use stop::StopSignal;

/// The WIT world plugins must target, as shown in errors.
pub const WORLD: &str = "kiln:worker/job@0.1.0";

use crate::capability::{self, Capability, Grants, ImportRefused};
use admission::Admission;
use bindings::{JobPre, WitJob};
use iteration::{InterruptReason, IterationState};
use logs::IterationLog;
use returned::RunResult;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, InstancePre, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

/// One job as handed to a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInput {
    pub id: String,
    pub kind: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub payload: Vec<u8>,
    pub checkpoint: Option<Vec<u8>>,
    /// Where the run's `context.progress` lands, for the host to read
    /// while it runs (a fresh cell when nobody reads it).
    pub progress: ProgressCell,
    /// The W3C `traceparent` the run's outbound HTTP requests carry (the
    /// host's span of this attempt), when it is traced.
    pub traceparent: Option<String>,
}

/// A component checked against the `job` world and pre-instantiated with
/// the host's imports: the cheap-to-instantiate form of a plugin version.
#[derive(Clone)]
pub struct JobComponent {
    pre: InstancePre<IterationState>,
    run: ComponentExportIndex,
    needs: PoolNeeds,
    /// The largest initial size of any of its memories, in bytes.
    min_memory_bytes: u64,
    /// What this version was granted; every iteration's store serves it.
    grants: Arc<Grants>,
    /// The interfaces it imports, as named in the component.
    imports: Arc<[String]>,
}

impl JobComponent {
    /// What this version was granted of the host's capabilities.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The interfaces the component imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// What one instance takes from the pool.
    pub fn needs(&self) -> PoolNeeds {
        self.needs
    }

    /// The largest initial size any of its memories declares: a budget
    /// below this can never instantiate it.
    pub fn min_memory_bytes(&self) -> u64 {
        self.min_memory_bytes
    }
}

impl std::fmt::Debug for JobComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobComponent").finish_non_exhaustive()
    }
}

/// The WASI 0.2 packages linked for every plugin: what a Rust, Python or
/// JavaScript guest's standard library imports. The sandbox's context
/// behind them holds no files, environment or network.
const LINKED_WASI: &[&str] = &["wasi:cli/", "wasi:clocks/", "wasi:filesystem/", "wasi:io/", "wasi:random/", "wasi:sockets/"];
/// Kiln's own interfaces every plugin may import.
const LINKED_KILN: &[&str] = &["kiln:worker/context", "kiln:worker/types"];

/// Whether the host links `import` (an interface name, `@version` optional)
/// for a plugin version granted `grants`.
fn check_import(import: &str, grants: &Grants) -> Result<(), PrepareError> {
    let unversioned = import.split('@').next().unwrap_or(import);
    if LINKED_WASI.iter().any(|p| unversioned.starts_with(p)) || LINKED_KILN.contains(&unversioned) {
        return Ok(());
    }
    match Capability::of_import(import) {
        Some(capability) => Ok(capability::check_import(import, capability, grants)?),
        None => Err(PrepareError::UnknownImport { import: import.to_string() }),
    }
}

/// Why a component cannot run as a job.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("imports `{import}`, which this host does not provide (not in {WORLD}, nor WASI 0.2's cli, clocks, filesystem, io, random or sockets)")]
    UnknownImport { import: String },
    /// An import of a capability this plugin version is not granted.
    #[error(transparent)]
    Capability(#[from] ImportRefused),
    #[error("does not implement {WORLD}: {reason}")]
    WrongWorld { reason: String },
    #[error("needs {needs} linear memories at once, more than this host's pool of {pool} memory slots")]
    PoolTooSmall { needs: u32, pool: u32 },
}

/// The engine, the linker, the pool's admission and the epoch ticker,
/// shared by every iteration.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<IterationState>,
    /// Where the kv capability reads committed state; unset, plugins
    /// granted kv find no store.
    kv_backend: std::sync::OnceLock<Arc<dyn capability::KvBackend>>,
    pool: PoolSize,
    admission: Admission,
    ticker: engine::EpochTicker,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

/// How the guest call ended, before classification.
enum CallEnd {
    Returned(wasmtime::Result<RunResult>),
    /// The deadline passed while the guest waited in a host call (where
    /// epochs cannot reach it).
    DeadlineInHostCall,
    /// An interrupt came while the guest waited in a host call.
    InterruptedInHostCall,
}

impl Sandbox {
    /// A sandbox with the default pool; see [`Sandbox::with_pool`].
    pub fn new() -> anyhow::Result<Self> {
        Self::with_pool(PoolSize::default())
    }

    /// Builds the engine with a pool of `pool` instances and the linker
    /// (WASI p2 with nothing granted, plus the `context` interface) and
    /// starts the epoch ticker.
    pub fn with_pool(pool: PoolSize) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config_for(pool))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::kiln::worker::types::add_to_linker::<_, HasSelf<IterationState>>(&mut linker, |state| state)?;
        context::add_to_linker(&mut linker)?;
        capability::add_to_linker(&mut linker)?;
        let ticker = engine::EpochTicker::start(engine.clone())?;
        Ok(Self { engine, linker, kv_backend: std::sync::OnceLock::new(), pool, admission: Admission::new(pool), ticker })
    }

    /// Where the kv capability reads committed state (set once, before
    /// plugins granted kv run).
    pub fn set_kv_backend(&self, backend: Arc<dyn capability::KvBackend>) {
        let _ = self.kv_backend.set(backend);
    }

    /// The instance pool this sandbox admits jobs to.
    pub fn pool(&self) -> PoolSize {
        self.pool
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A fresh stop signal for one iteration.
    pub fn stop_signal(&self) -> StopSignal {
        StopSignal::new(self.engine.clone())
    }

    /// Checks a compiled component against the world and the host's
    /// imports (its capability imports against `grants`), and
    /// pre-instantiates it.
    pub fn prepare(&self, component: &Component, grants: Grants) -> Result<JobComponent, PrepareError> {
        let ty = component.component_type();
        let mut imports = Vec::new();
        for (import, _) in ty.imports(&self.engine) {
            check_import(import, &grants)?;
            imports.push(import.to_string());
        }
        let wrong_world = |e: wasmtime::Error| PrepareError::WrongWorld { reason: format!("{e:#}") };
        let instance_pre = self.linker.instantiate_pre(component).map_err(wrong_world)?;
        // The generated bindings check that `run` is there with the world's type.
        JobPre::new(instance_pre.clone()).map_err(wrong_world)?;
        let run = component
            .get_export_index(None, "run")
            .ok_or_else(|| PrepareError::WrongWorld { reason: "no `run` export".into() })?;
        // `None` only for components that import core modules, which no
        // host provides: count them at the most one component may have.
        let resources = component.resources_required();
        let memories = resources.as_ref().map_or(MAX_MEMORIES_PER_COMPONENT, |r| r.num_memories);
        if memories > self.pool.memories {
            return Err(PrepareError::PoolTooSmall { needs: memories, pool: self.pool.memories });
        }
        let min_memory_bytes =
            resources.and_then(|r| r.max_initial_memory_size).unwrap_or(0).saturating_mul(WASM_PAGE_BYTES);
        Ok(JobComponent {
            pre: instance_pre,
            run,
            needs: PoolNeeds { memories },
            min_memory_bytes,
            grants: Arc::new(grants),
            imports: imports.into(),
        })
    }


    /// Runs one iteration of `plugin` on `job` in a fresh store and instance,
    /// enforcing `budget`; `stop` cancels or interrupts it from outside.
    ///
    /// The iteration first waits for its slots in the instance pool; the
    /// budget's clock starts once it has them. A stop while it waits ends
    /// it as cancelled, before anything ran.
    pub async fn run_iteration(&self, plugin: &JobComponent, job: &JobInput, budget: &Budget, stop: &StopSignal) -> Report {
        let log = IterationLog::new(&job.id, &job.kind, plugin.grants.redactor().clone());
        if let Err(too_large) = budget.check_payload(&job.payload) {
            return finish(Outcome::InvalidInput(too_large.to_string()), 0, 0, None, Instant::now(), &log);
        }
        let _admitted = tokio::select! {
            biased;
            admitted = self.admission.admit(plugin.needs) => admitted,
            () = stop.cancelled() => {
                let interrupted = stop.is_interrupted();
                return finish(Outcome::Cancelled { interrupted }, 0, 0, None, Instant::now(), &log);
            }
        };
        let _ticking = self.ticker.running();
        let started = Instant::now();
        let deadline = started.checked_add(budget.timeout).unwrap_or_else(far_future);
        let mut store = Store::new(
            &self.engine,
            IterationState::new(
                log.clone(),
                stop.clone(),
                job.progress.clone(),
                deadline,
                budget.memory_bytes,
                capability::Scope::new(plugin.grants.clone(), budget.max_payload_bytes, self.kv_backend.get().cloned(), deadline, job.traceparent.clone()),
            ),
        );
        store.limiter(|state| state);
        // wasmtime's own cap on what one call may copy from guest to host
        // would turn an oversized `ok` value into an opaque error. Kiln
        // bounds `run`'s return and the context strings itself as they are
        // lifted (`lifted`); what is left (WASI calls) is bounded by the
        // guest's own memory, which is this budget.
        store.set_hostcall_fuel(usize::try_from(budget.memory_bytes).unwrap_or(usize::MAX).saturating_add(1));
        store.set_fuel(budget.fuel).expect("the engine meters fuel");
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.stop.is_interrupted() {
                state.interrupted_by = Some(InterruptReason::Cancelled);
                return Ok(UpdateDeadline::Interrupt);
            }
            if Instant::now() >= state.deadline {
                state.interrupted_by = Some(InterruptReason::Deadline);
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });

        let wit_job = WitJob {
            id: job.id.clone(),
            // A tenant's plugin is `acme/echo` to the host; to itself it is `echo`.
            kind: crate::names::plain_name(&job.kind).to_string(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            payload: job.payload.clone(),
            checkpoint: job.checkpoint.clone(),
        };
        let end = {
            let call = async {
                let instance = plugin.pre.instantiate_async(&mut store).await?;
                let run = instance.get_typed_func::<(&WitJob,), (RunResult,)>(&mut store, &plugin.run)?;
                // What `run` returns is copied as it is lifted, before
                // post-return frees it, and the `ok` bytes only up to the budget.
                let (returned,) = lifted::with_bytes_limit(budget.max_output_bytes, run.call_async(&mut store, (&wit_job,))).await?;
                Ok(returned)
            };
            tokio::select! {
                biased;
                returned = call => CallEnd::Returned(returned),
                () = tokio::time::sleep_until(deadline.into()) => CallEnd::DeadlineInHostCall,
                () = stop.interrupted() => CallEnd::InterruptedInHostCall,
            }
        };

        let fuel_used = budget.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let outcome = classify(end, store.data(), stop, budget);
        let state = store.data_mut();
        let peak = state.memory.peak;
        let progress = state.progress.latest();
        // Effects count only for a run that completed.
        let mut children = if outcome.is_ok() { state.scope.take_children() } else { Vec::new() };
        let kv_writes = if outcome.is_ok() { state.scope.take_kv_effects() } else { Vec::new() };
        let http = {
            let stats = state.scope.http_stats();
            HttpUse {
                requests: stats.requests.load(std::sync::atomic::Ordering::Relaxed),
                bytes_sent: stats.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
                bytes_received: stats.bytes_received.load(std::sync::atomic::Ordering::Relaxed),
            }
        };
        let denials = state.scope.take_http_denials();
        for denial in &denials {
            log.line(LogSource::Context, tracing::Level::WARN, &format!("the host denied an HTTP request: {denial}"), 0);
        }
        // A failure names what the host denied: the plugin saw only `http-request-denied`.
        let outcome = match denials.first() {
            Some(first) if !outcome.is_ok() => outcome.with_note(&format!("the host denied {first}")),
            _ => outcome,
        };
        let redactor = log.redactor();
        if !redactor.is_empty() {
            for child in &mut children {
                child.payload = redactor.bytes(&child.payload).into_owned();
                child.unique_key = child.unique_key.as_deref().map(|k| redactor.text(k).into_owned());
            }
        }
        drop(store);
        let mut report = finish(outcome, fuel_used, peak, progress, started, &log);
        report.enqueued = children;
        report.kv_writes = kv_writes;
        report.http = http;
        report
    }
}

fn finish(outcome: Outcome, fuel_used: u64, peak: u64, progress: Option<ReportedProgress>, started: Instant, log: &IterationLog) -> Report {
    let (logs, log_bytes_dropped) = log.finish();
    let outcome = outcome.redacted(log.redactor());
    Report { outcome, fuel_used, peak_memory_bytes: peak, duration: started.elapsed(), progress, logs, log_bytes_dropped, enqueued: Vec::new(), kv_writes: Vec::new(), http: HttpUse::default() }
}

/// Bytes in a WebAssembly page.
const WASM_PAGE_BYTES: u64 = 64 << 10;

/// A deadline so far away it never comes (for a timeout too large to add).
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(100 * 365 * 24 * 3600)
}

fn classify(end: CallEnd, state: &IterationState, stop: &StopSignal, budget: &Budget) -> Outcome {
    let returned = match end {
        CallEnd::DeadlineInHostCall => return Outcome::TimedOut,
        CallEnd::InterruptedInHostCall => return Outcome::Cancelled { interrupted: true },
        CallEnd::Returned(returned) => returned,
    };
    match returned {
        // A plugin that gives up after being cancelled was cancelled, whatever it says.
        Ok(Err(_)) if stop.is_cancelled() => Outcome::Cancelled { interrupted: false },
        Ok(returned) => returned::outcome_of(returned, budget.max_output_bytes),
        Err(error) => classify_error(&error, state),
    }
}

fn classify_error(error: &wasmtime::Error, state: &IterationState) -> Outcome {
    match state.interrupted_by {
        Some(InterruptReason::Deadline) => return Outcome::TimedOut,
        Some(InterruptReason::Cancelled) => return Outcome::Cancelled { interrupted: true },
        None => {}
    }
    let trap = error.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::OutOfFuel) => Outcome::OutOfFuel,
        // A refused growth surfaces as whatever the guest does next (Rust
        // aborts with `unreachable`); the limiter's flag says why.
        _ if state.memory.refused => Outcome::OutOfMemory,
        Some(trap) => Outcome::Trapped { trap: Some(trap), message: trap.to_string() },
        None => {
            if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                return Outcome::Trapped { trap: None, message: format!("plugin exited with status {}", exit.0) };
            }
            // wasmtime's text can carry what the plugin chose (function
            // names in a backtrace): bound and escape it like the rest.
            let text = format!("{error:#}");
            Outcome::Trapped { trap: None, message: plugin_text::bounded(&text, text.len(), MAX_ERROR_MESSAGE_BYTES) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_wasi_0_2_kiln_or_a_granted_capability() {
        let none = Grants::default();
        for linked in ["wasi:cli/stdout@0.2.6", "wasi:io/streams@0.2.0", "wasi:sockets/tcp@0.2.6", "kiln:worker/context@0.1.0", "kiln:worker/types"] {
            assert!(check_import(linked, &none).is_ok(), "{linked}");
        }
        let e = check_import("wasi:http/outgoing-handler@0.2.6", &none).unwrap_err().to_string();
        assert_eq!(
            e,
            "imports `wasi:http/outgoing-handler@0.2.6` (outbound HTTP), which its manifest does not grant: a plugin that uses it names what it needs in `[capabilities] http` in plugin.toml"
        );
        let e = check_import("wasi:config/store@0.2.0-rc.1", &none).unwrap_err().to_string();
        assert!(e.contains("which its manifest does not grant") && e.contains("`[capabilities] config`"), "{e}");
        for (import, key) in [("wasi:keyvalue/store@0.2.0-draft", "`[capabilities] kv`"), ("kiln:worker/enqueue", "`[capabilities] enqueue`")] {
            let e = check_import(import, &none).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(import), "{e}");
        }
        // A name that only looks like WASI is no WASI the host links.
        let e = check_import("wasi:nn/inference@0.2.0", &none).unwrap_err().to_string();
        assert!(e.starts_with("imports `wasi:nn/inference@0.2.0`, which this host does not provide"), "{e}");
        assert!(check_import("wasi:clix/run", &none).is_err());
        assert!(check_import("kiln:worker/context-extra", &none).is_err());
    }
}
