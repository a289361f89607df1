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

mod bindings;
mod budget;
mod engine;
mod iteration;
mod logs;
mod outcome;
mod stop;

pub use budget::{
    Budget, DEFAULT_CANCEL_GRACE, DEFAULT_FUEL, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MEMORY_BYTES, DEFAULT_TIMEOUT, MAX_MEMORY_BYTES, PayloadTooLarge,
};
pub use engine::{EPOCH_TICK, MAX_CONCURRENT_INSTANCES, build_engine, engine_config};
pub use logs::{LogLine, LogSource, MAX_LOG_BYTES_PER_ITERATION};
pub use outcome::{Outcome, Report};
pub use stop::StopSignal;

/// The WIT world plugins must target, as shown in errors.
pub const WORLD: &str = "kiln:worker/job@0.1.0";

use bindings::{JobPre, WitJob, WitJobError};
use iteration::{InterruptReason, IterationState};
use logs::IterationLog;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
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
}

/// A component checked against the `job` world and pre-instantiated with
/// the host's imports: the cheap-to-instantiate form of a plugin version.
#[derive(Clone)]
pub struct JobComponent {
    pre: JobPre<IterationState>,
}

impl std::fmt::Debug for JobComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobComponent").finish_non_exhaustive()
    }
}

/// Why a component cannot run as a job.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("imports `{import}`, which this host does not provide (not in {WORLD}, or not granted)")]
    UnknownImport { import: String },
    #[error("does not implement {WORLD}: {reason}")]
    WrongWorld { reason: String },
}

/// The engine, the linker and the epoch ticker, shared by every iteration.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<IterationState>,
    _ticker: engine::EpochTicker,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

/// How the guest call ended, before classification.
enum CallEnd {
    Returned(wasmtime::Result<Result<Vec<u8>, WitJobError>>),
    /// The deadline passed while the guest waited in a host call (where
    /// epochs cannot reach it).
    DeadlineInHostCall,
    /// An interrupt came while the guest waited in a host call.
    InterruptedInHostCall,
}

impl Sandbox {
    /// Builds the engine and the linker (WASI p2 with nothing granted, plus
    /// the `context` interface) and starts the epoch ticker.
    pub fn new() -> anyhow::Result<Self> {
        let engine = build_engine()?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Job::add_to_linker::<_, HasSelf<IterationState>>(&mut linker, |state| state)?;
        let ticker = engine::EpochTicker::start(engine.clone())?;
        Ok(Self { engine, linker, _ticker: ticker })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A fresh stop signal for one iteration.
    pub fn stop_signal(&self) -> StopSignal {
        StopSignal::new(self.engine.clone())
    }

    /// Checks a compiled component against the world and the host's imports,
    /// and pre-instantiates it.
    pub fn prepare(&self, component: &Component) -> Result<JobComponent, PrepareError> {
        let ty = component.component_type();
        for (import, _) in ty.imports(&self.engine) {
            if !self.provides(import) {
                return Err(PrepareError::UnknownImport { import: import.to_string() });
            }
        }
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| PrepareError::WrongWorld { reason: format!("{e:#}") })?;
        let pre = JobPre::new(instance_pre).map_err(|e| PrepareError::WrongWorld { reason: format!("{e:#}") })?;
        Ok(JobComponent { pre })
    }

    fn provides(&self, import: &str) -> bool {
        let unversioned = import.split('@').next().unwrap_or(import);
        unversioned.starts_with("wasi:") || unversioned == "kiln:worker/context" || unversioned == "kiln:worker/types"
    }

    /// Runs one iteration of `plugin` on `job` in a fresh store and instance,
    /// enforcing `budget`; `stop` cancels or interrupts it from outside.
    pub async fn run_iteration(&self, plugin: &JobComponent, job: &JobInput, budget: &Budget, stop: &StopSignal) -> Report {
        let started = Instant::now();
        let log = IterationLog::new(&job.id, &job.kind);
        if let Err(too_large) = budget.check_payload(&job.payload) {
            return finish(Outcome::InvalidInput(too_large.to_string()), 0, 0, None, started, &log);
        }
        let deadline = started + budget.timeout;
        let mut store = Store::new(
            &self.engine,
            IterationState::new(log.clone(), stop.clone(), deadline, budget.memory_bytes),
        );
        store.limiter(|state| state);
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
            kind: job.kind.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            payload: job.payload.clone(),
            checkpoint: job.checkpoint.clone(),
        };
        let end = {
            let call = async {
                let instance = plugin.pre.instantiate_async(&mut store).await?;
                instance.call_run(&mut store, &wit_job).await
            };
            tokio::select! {
                biased;
                returned = call => CallEnd::Returned(returned),
                () = tokio::time::sleep_until(deadline.into()) => CallEnd::DeadlineInHostCall,
                () = stop.interrupted() => CallEnd::InterruptedInHostCall,
            }
        };

        let fuel_used = budget.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let state = store.data();
        let outcome = classify(end, state, stop, budget);
        let (peak, progress) = (state.memory.peak, state.progress);
        drop(store);
        finish(outcome, fuel_used, peak, progress, started, &log)
    }
}

fn finish(outcome: Outcome, fuel_used: u64, peak: u64, progress: Option<u8>, started: Instant, log: &IterationLog) -> Report {
    let (logs, log_bytes_dropped) = log.finish();
    Report { outcome, fuel_used, peak_memory_bytes: peak, duration: started.elapsed(), progress, logs, log_bytes_dropped }
}

fn classify(end: CallEnd, state: &IterationState, stop: &StopSignal, budget: &Budget) -> Outcome {
    let returned = match end {
        CallEnd::DeadlineInHostCall => return Outcome::TimedOut,
        CallEnd::InterruptedInHostCall => return Outcome::Cancelled { interrupted: true },
        CallEnd::Returned(returned) => returned,
    };
    match returned {
        Ok(Ok(output)) if output.len() > budget.max_output_bytes => {
            Outcome::OutputTooLarge { size: output.len(), limit: budget.max_output_bytes }
        }
        Ok(Ok(output)) => Outcome::Ok(output),
        // A plugin that gives up after being cancelled was cancelled, whatever it says.
        Ok(Err(_)) if stop.is_cancelled() => Outcome::Cancelled { interrupted: false },
        Ok(Err(WitJobError::Retry(r))) => Outcome::Retry {
            message: r.message,
            delay: r.delay_ms.map(Duration::from_millis),
        },
        Ok(Err(WitJobError::InvalidInput(m))) => Outcome::InvalidInput(m),
        Ok(Err(WitJobError::Fatal(m))) => Outcome::Fatal(m),
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
            Outcome::Trapped { trap: None, message: format!("{error:#}") }
        }
    }
}
