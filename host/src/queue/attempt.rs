//! What the store keeps of each attempt of a job: where and what ran it,
//! what it cost, how it ended, and the plugin's log lines; and a running
//! job's last reported progress.

use super::clock::Millis;
use serde::{Deserialize, Serialize};

/// A job's progress as its plugin last reported it (`context.progress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u8,
    pub note: Option<String>,
}

/// What the store keeps of one attempt's run: where, when, how it ended
/// and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptSummary {
    /// The host that ran it.
    pub host: String,
    /// When the run started and ended (the host's clock).
    pub started_at: Millis,
    pub ended_at: Millis,
    /// How it ended: `ok`, `retry`, `fatal`, `timed_out`, `trapped`, ...
    pub outcome: String,
    /// The error it ended with, if it failed.
    pub error: Option<String>,
    /// The iteration's own time (instantiation to the store's drop).
    pub duration_ms: f64,
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    pub http_requests: u64,
    /// Log bytes the per-attempt cap left out.
    pub log_bytes_dropped: u64,
}

/// One attempt as it ended, written with the job's transition out of
/// `running` (its number is the job's attempt at that moment).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRun {
    pub summary: AttemptSummary,
    /// The progress it last reported, if any.
    pub progress: Option<Progress>,
    /// Its log lines, as captured (capped per iteration by the sandbox).
    pub logs: Vec<LogEntry>,
}

/// One attempt as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub attempt: u32,
    /// The plugin version that ran it.
    pub plugin_version: Option<String>,
    pub summary: AttemptSummary,
}

/// One log line of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the host took the line (the host's wall clock).
    pub at: Millis,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `stdout`, `stderr` or `log` (`context.log`).
    pub source: String,
    pub message: String,
}

/// An attempt's log lines as one stored value.
pub fn logs_json(logs: &[LogEntry]) -> String {
    serde_json::to_string(logs).expect("log lines serialise")
}

/// Stored log lines back; a value that does not parse (written by hand,
/// say) reads as no lines rather than failing the whole read.
pub fn logs_of_json(text: &str) -> Vec<LogEntry> {
    serde_json::from_str(text).unwrap_or_default()
}
