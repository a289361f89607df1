//! Compiling a component under a budget: a size limit checked before
//! anything is parsed, a CPU-time limit (with a wall-clock backstop), and a
//! cap on how many compile at once. Cranelift cannot be interrupted, so the `kiln` binary compiles in
//! a child process of itself (`kiln compile-component`), killed when its
//! time is up: a component crafted to compile slowly costs one core for the
//! budget and nothing after, and the compiler's memory never stays in the
//! host. Embedders (tests, benchmarks) may compile in process, bounded by
//! size only.

use serde::Deserialize;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Largest component accepted: componentize-py (Python) output is about
/// 40 MiB, componentize-js (JavaScript) about 12 MiB, a Rust plugin well
/// under 1 MiB.
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 64 << 20;
/// Every compile may use this much CPU time, plus
/// [`DEFAULT_COMPILE_MS_PER_MIB`]. A Rust plugin compiles in tens of
/// milliseconds on an idle core (a debug build of kiln is several times
/// slower): the budget is there to stop a crafted component's minutes, not
/// to race honest ones. It counts CPU time because a loaded host once took
/// 10.8 s of wall clock to compile a 430 KiB example.
pub const DEFAULT_COMPILE_TIMEOUT_MS: u64 = 10_000;
/// Time allowed per MiB of component on top of the base: honest code
/// compiles at about 1 s per MiB on one core (the child compiles on one,
/// leaving the others to jobs), and a large component is mostly data.
pub const DEFAULT_COMPILE_MS_PER_MIB: u64 = 2_000;
/// Compiles at once: one keeps a core free for jobs on a 2-core host, and
/// a burst of uploads queues instead of multiplying the cost.
pub const DEFAULT_CONCURRENT_COMPILES: usize = 1;

/// `[compile]` in `kiln.toml`: what compiling one plugin may cost.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompileBudget {
    /// Components larger than this are refused unread.
    pub max_component_bytes: u64,
    /// CPU time every compile gets (the child's user and system time: a
    /// loaded machine slows an honest compile, not its cost) ...
    pub timeout_ms: u64,
    /// ... plus this much per MiB of component.
    pub ms_per_mib: u64,
    /// Compiles running at once; others wait (up to their own time limit).
    pub concurrent: usize,
}

impl Default for CompileBudget {
    fn default() -> Self {
        Self {
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            timeout_ms: DEFAULT_COMPILE_TIMEOUT_MS,
            ms_per_mib: DEFAULT_COMPILE_MS_PER_MIB,
            concurrent: DEFAULT_CONCURRENT_COMPILES,
        }
    }
}

impl CompileBudget {
    /// The time a component of `bytes` may take to compile.
    pub fn time_for(&self, bytes: usize) -> Duration {
        let per_mib = (bytes as u64).saturating_mul(self.ms_per_mib) >> 20;
        Duration::from_millis(self.timeout_ms.saturating_add(per_mib))
    }
}

/// Why a component was not compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("is {size} bytes, over this host's limit of {limit} bytes for a component (compile.max_component_bytes)")]
    TooLarge { size: usize, limit: u64 },
    #[error("took longer to compile than this host allows ({} ms of CPU time for a component of this size; compile.timeout_ms, compile.ms_per_mib): refused", .limit.as_millis())]
    TimedOut { limit: Duration },
    #[error("could not be compiled now: {running} other compiles held the compiler for {} ms; try again", .waited.as_millis())]
    Busy { running: usize, waited: Duration },
    #[error("is not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("could not be compiled: {0}")]
    Failed(String),
}

/// Where compiling happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompilerProcess {
    /// On the calling thread (size-bounded only).
    InProcess,
    /// In a child process: this `kiln` executable's `compile-component`.
    Child { kiln: PathBuf },
}

/// Compiles components within a [`CompileBudget`].
#[derive(Debug)]
pub struct Compiler {
    budget: CompileBudget,
    process: CompilerProcess,
    running: Mutex<usize>,
    freed: Condvar,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new(CompileBudget::default(), CompilerProcess::InProcess)
    }
}

/// The hidden subcommand of `kiln` that compiles one component.
pub const COMPILE_SUBCOMMAND: &str = "compile-component";
/// What the child process prints of a failure, at the most.
const MAX_CHILD_ERROR_BYTES: u64 = 16 << 10;
/// How often the host looks whether the child has finished.
const CHILD_POLL: Duration = Duration::from_millis(5);

impl Compiler {
    pub fn new(budget: CompileBudget, process: CompilerProcess) -> Self {
        Self { budget, process, running: Mutex::new(0), freed: Condvar::new() }
    }

    /// A compiler that runs in a child process of the current executable
    /// (which must be `kiln`).
    pub fn child_process(budget: CompileBudget) -> std::io::Result<Self> {
        Ok(Self::new(budget, CompilerProcess::Child { kiln: std::env::current_exe()? }))
    }

    pub fn budget(&self) -> &CompileBudget {
        &self.budget
    }

    /// Checks `wasm`'s size, waits for a compile slot, and compiles it,
    /// writing the compiled artifact to `out`; then loads it from there.
    pub fn compile_to(&self, engine: &Engine, wasm: &[u8], wasm_path: &Path, out: &Path) -> Result<Component, CompileError> {
        if wasm.len() as u64 > self.budget.max_component_bytes {
            return Err(CompileError::TooLarge { size: wasm.len(), limit: self.budget.max_component_bytes });
        }
        let limit = self.budget.time_for(wasm.len());
        let _slot = self.slot(limit)?;
        match &self.process {
            CompilerProcess::InProcess => {
                let component = Component::new(engine, wasm).map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
                let bytes = component.serialize().map_err(|e| CompileError::Failed(format!("{e:#}")))?;
                std::fs::write(out, bytes).map_err(|e| CompileError::Failed(format!("cannot write {}: {e}", out.display())))?;
                Ok(component)
            }
            CompilerProcess::Child { kiln } => {
                compile_in_child(kiln, wasm_path, out, limit)?;
                // SAFETY: `out` was just written by `Component::serialize` in
                // a `kiln` of this very build (same engine configuration), in
                // a file only this host writes; wasmtime checks the header
                // and the engine's compatibility before mapping it.
                unsafe { Component::deserialize_file(engine, out) }.map_err(|e| CompileError::Invalid(format!("{e:#}")))
            }
        }
    }

    fn slot(&self, limit: Duration) -> Result<SlotGuard<'_>, CompileError> {
        let started = Instant::now();
        let mut running = self.running.lock().expect("compiler slots poisoned");
        while *running >= self.budget.concurrent.max(1) {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(CompileError::Busy { running: *running, waited: started.elapsed() });
            }
            running = self.freed.wait_timeout(running, left).expect("compiler slots poisoned").0;
        }
        *running += 1;
        Ok(SlotGuard { compiler: self })
    }
}

struct SlotGuard<'a> {
    compiler: &'a Compiler,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.compiler.running.lock().expect("compiler slots poisoned") -= 1;
        self.compiler.freed.notify_one();
    }
}

/// However starved of CPU a compile is, it ends after this many times its
/// CPU budget in wall-clock time.
const WALL_CLOCK_BACKSTOP: u32 = 4;

/// The CPU time (user and system) process `pid` has used, from
/// `/proc/PID/stat`; `None` where that cannot be read.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which is in parentheses and may hold spaces:
    // state is field 3 of the line, utime 14 and stime 15.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&t| t > 0)?;
    Some(Duration::from_millis(ticks.saturating_mul(1000) / per_second))
}

/// Runs `kiln compile-component --out OUT WASM`, killing it once it has
/// used `limit` of CPU time (or, where the kernel cannot say, of wall
/// clock), or [`WALL_CLOCK_BACKSTOP`] times that of wall clock.
fn compile_in_child(kiln: &Path, wasm_path: &Path, out: &Path, limit: Duration) -> Result<(), CompileError> {
    let mut child = Command::new(kiln)
        .arg(COMPILE_SUBCOMMAND)
        .arg("--out")
        .arg(out)
        .arg(wasm_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("KILN_LOG", "error")
        .spawn()
        .map_err(|e| CompileError::Failed(format!("cannot start the compiler ({}): {e}", kiln.display())))?;
    let started = Instant::now();
    let backstop = started + limit.saturating_mul(WALL_CLOCK_BACKSTOP);
    let over_budget = |pid: u32| match cpu_time(pid) {
        Some(used) => used >= limit || Instant::now() >= backstop,
        None => started.elapsed() >= limit,
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if over_budget(child.id()) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(out);
                return Err(CompileError::TimedOut { limit });
            }
            Ok(None) => std::thread::sleep(CHILD_POLL),
            Err(e) => return Err(CompileError::Failed(format!("lost the compiler process: {e}"))),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut message = String::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = stderr.take(MAX_CHILD_ERROR_BYTES).read_to_string(&mut message);
    }
    let message = message.trim().trim_start_matches("error: ").to_string();
    match status.code() {
        Some(CHILD_INVALID_COMPONENT) => Err(CompileError::Invalid(message)),
        _ => Err(CompileError::Failed(format!("the compiler process ended with {status}: {message}"))),
    }
}

/// The child's exit code for a component wasmtime refuses.
pub const CHILD_INVALID_COMPONENT: i32 = 3;

/// The child's side: compiles `wasm` with Kiln's engine configuration and
/// writes the artifact to `out`. The pool is the smallest that holds one
/// component of each per-component limit: it does not change the compiled
/// code, and a compiler needs no instances.
pub fn compile_component_file(wasm: &Path, out: &Path) -> Result<(), (i32, String)> {
    let bytes = std::fs::read(wasm).map_err(|e| (1, format!("cannot read {}: {e}", wasm.display())))?;
    let mut config = crate::sandbox::engine_config_for(crate::sandbox::PoolSize::for_one_run());
    config.parallel_compilation(false);
    let engine = Engine::new(&config).map_err(|e| (1, format!("{e:#}")))?;
    let component = Component::new(&engine, &bytes).map_err(|e| (CHILD_INVALID_COMPONENT, format!("{e:#}")))?;
    let serialized = component.serialize().map_err(|e| (1, format!("{e:#}")))?;
    std::fs::write(out, serialized).map_err(|e| (1, format!("cannot write {}: {e}", out.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_time_is_read_from_proc_and_grows_with_work() {
        let before = cpu_time(std::process::id()).expect("/proc/self/stat is readable here");
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = cpu_time(std::process::id()).unwrap();
        assert!(after >= before + Duration::from_millis(100), "{before:?} then {after:?}");
        assert_eq!(cpu_time(u32::MAX), None, "no such process");
    }

    #[test]
    fn the_time_allowed_grows_with_the_component() {
        let budget = CompileBudget { timeout_ms: 1000, ms_per_mib: 2000, ..CompileBudget::default() };
        assert_eq!(budget.time_for(0), Duration::from_millis(1000));
        assert_eq!(budget.time_for(3 << 20), Duration::from_millis(7000));
        let huge = CompileBudget { timeout_ms: u64::MAX, ms_per_mib: u64::MAX, ..CompileBudget::default() };
        assert!(huge.time_for(usize::MAX) >= Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn a_component_over_the_size_limit_is_refused_unread() {
        let compiler = Compiler::new(CompileBudget { max_component_bytes: 10, ..CompileBudget::default() }, CompilerProcess::InProcess);
        let engine = Engine::default();
        let err = compiler.compile_to(&engine, &[0; 11], Path::new("x.wasm"), Path::new("/nonexistent/out")).unwrap_err();
        assert!(matches!(err, CompileError::TooLarge { size: 11, limit: 10 }), "{err}");
    }

    #[test]
    fn compiles_wait_for_a_free_slot_and_give_up_past_their_time() {
        let compiler = Compiler::new(CompileBudget { concurrent: 1, ..CompileBudget::default() }, CompilerProcess::InProcess);
        let held = compiler.slot(Duration::from_secs(1)).unwrap();
        let err = compiler.slot(Duration::from_millis(30)).err().expect("the only slot is taken");
        assert!(matches!(err, CompileError::Busy { running: 1, .. }), "{err}");
        drop(held);
        assert!(compiler.slot(Duration::from_millis(30)).is_ok());
    }
}
