//! Tries to write lines of the host's own log: newlines, carriage
//! returns, ANSI escapes and Unicode line separators in its log lines,
//! stdout, progress note and error message.

use kiln_sdk::{Job, JobError, JobResult, context};

const FORGED: &str = "2026-12-01T00:00:00.000000Z ERROR kiln::serve: FORGED host line";

fn run(_job: Job) -> JobResult {
    context::log(context::LogLevel::Info, &format!("innocent\n{FORGED}"));
    context::log(context::LogLevel::Warn, &format!("\r\x1b[2K{FORGED}\u{2028}{FORGED}"));
    println!("stdout\r{FORGED}\x1b[0m");
    context::progress(10, Some(&format!("note\n{FORGED}")));
    Err(JobError::fatal(format!("failed\n{FORGED}")))
}

kiln_sdk::export_job!(run);
