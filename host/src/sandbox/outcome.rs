//! What came of one iteration, and what it cost.

use std::time::Duration;

/// How an iteration ended. The worker maps each to a job state transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin returned `ok` with these bytes.
    Ok(Vec<u8>),
    /// The plugin asked to be retried.
    Retry { message: String, delay: Option<Duration> },
    /// The plugin refused its input.
    InvalidInput(String),
    /// The plugin reported it cannot succeed.
    Fatal(String),
    /// The wall-clock deadline passed (by epoch, or inside a host call).
    TimedOut,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The memory limit refused a growth and the plugin could not go on.
    OutOfMemory,
    /// The plugin trapped. `trap` is the matched kind when wasmtime gave one.
    Trapped { trap: Option<wasmtime::Trap>, message: String },
    /// The host cancelled the iteration; `interrupted` when the plugin did
    /// not return by itself within the grace period.
    Cancelled { interrupted: bool },
    /// The plugin returned more than `Budget::max_output_bytes`: refused.
    OutputTooLarge { size: usize, limit: usize },
}

impl Outcome {
    /// The stable snake_case name used in JSON, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Retry { .. } => "retry",
            Outcome::InvalidInput(_) => "invalid_input",
            Outcome::Fatal(_) => "fatal",
            Outcome::TimedOut => "timed_out",
            Outcome::OutOfFuel => "out_of_fuel",
            Outcome::OutOfMemory => "out_of_memory",
            Outcome::Trapped { .. } => "trapped",
            Outcome::Cancelled { .. } => "cancelled",
            Outcome::OutputTooLarge { .. } => "output_too_large",
        }
    }

    /// The outcome with a plugin's secrets replaced in everything it
    /// carries that the host keeps: the result and the error messages.
    pub fn redacted(self, redactor: &crate::capability::Redactor) -> Self {
        if redactor.is_empty() {
            return self;
        }
        let text = |m: String| redactor.text(&m).into_owned();
        match self {
            Outcome::Ok(bytes) => Outcome::Ok(redactor.bytes(&bytes).into_owned()),
            Outcome::Retry { message, delay } => Outcome::Retry { message: text(message), delay },
            Outcome::InvalidInput(m) => Outcome::InvalidInput(text(m)),
            Outcome::Fatal(m) => Outcome::Fatal(text(m)),
            Outcome::Trapped { trap, message } => Outcome::Trapped { trap, message: text(message) },
            other => other,
        }
    }

    /// The outcome with `note` added to its message, for failures that
    /// carry one (`retry`, `invalid_input`, `fatal`, `trapped`).
    pub fn with_note(self, note: &str) -> Self {
        let add = |m: String| format!("{m} ({note})");
        match self {
            Outcome::Retry { message, delay } => Outcome::Retry { message: add(message), delay },
            Outcome::InvalidInput(m) => Outcome::InvalidInput(add(m)),
            Outcome::Fatal(m) => Outcome::Fatal(add(m)),
            Outcome::Trapped { trap, message } => Outcome::Trapped { trap, message: add(message) },
            other => other,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// A one-line description of a failure; `None` for `Ok`.
    pub fn error_message(&self) -> Option<String> {
        Some(match self {
            Outcome::Ok(_) => return None,
            Outcome::Retry { message, delay: None } => format!("retry requested: {message}"),
            Outcome::Retry { message, delay: Some(d) } => {
                format!("retry requested in {} ms: {message}", d.as_millis())
            }
            Outcome::InvalidInput(m) => format!("invalid input: {m}"),
            Outcome::Fatal(m) => format!("fatal: {m}"),
            Outcome::TimedOut => "timed out: the wall-clock deadline passed".to_string(),
            Outcome::OutOfFuel => "out of fuel: the CPU budget ran out".to_string(),
            Outcome::OutOfMemory => "out of memory: the memory limit refused a growth".to_string(),
            Outcome::Trapped { message, .. } => format!("trapped: {message}"),
            Outcome::Cancelled { interrupted: false } => "cancelled".to_string(),
            Outcome::Cancelled { interrupted: true } => {
                "cancelled: interrupted after the grace period".to_string()
            }
            Outcome::OutputTooLarge { size, limit } => {
                format!("refused: output is {size} bytes, over the limit of {limit} bytes")
            }
        })
    }
}

/// The outcome of one iteration with what it used.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    /// Fuel consumed (budget minus what was left).
    pub fuel_used: u64,
    /// Largest total of memory and table bytes the instance held.
    pub peak_memory_bytes: u64,
    /// From the fresh store's creation to its drop.
    pub duration: Duration,
    /// The last progress the plugin reported.
    pub progress: Option<super::ReportedProgress>,
    /// Log lines kept for this iteration (stdout, stderr and context log).
    pub logs: Vec<super::LogLine>,
    /// Log bytes dropped past the per-iteration cap.
    pub log_bytes_dropped: u64,
    /// The jobs a run that completed `ok` enqueued (empty otherwise): an
    /// effect the worker inserts with the job's completion.
    pub enqueued: Vec<crate::capability::ChildJob>,
    /// The kv writes of a run that completed `ok` (empty otherwise): an
    /// effect, committed with the job's completion.
    pub kv_writes: Vec<crate::capability::KvEffect>,
    /// What the run sent and received over HTTP (whatever its outcome).
    pub http: HttpUse,
}

/// Outbound HTTP of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpUse {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl Report {
    /// A report for a run that used no sandbox: refused before it started,
    /// or work that is not wasm (the benchmarks' native baseline).
    pub fn without_cost(outcome: Outcome) -> Self {
        Self {
            outcome,
            fuel_used: 0,
            peak_memory_bytes: 0,
            duration: Duration::ZERO,
            progress: None,
            logs: Vec::new(),
            log_bytes_dropped: 0,
            enqueued: Vec::new(),
            kv_writes: Vec::new(),
            http: HttpUse::default(),
        }
    }
}
