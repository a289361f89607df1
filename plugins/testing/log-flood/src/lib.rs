//! Writes far more log output than the host keeps for one run, through
//! stdout, stderr and the context log, then succeeds.

use kiln_sdk::{Job, JobResult, context};

const LINES: usize = 20_000;

fn run(_job: Job) -> JobResult {
    for i in 0..LINES {
        println!("stdout line {i} of the flood, padded to look like a real log line");
        eprintln!("stderr line {i} of the flood");
        context::log(context::LogLevel::Info, &format!("context line {i} of the flood"));
    }
    Ok(format!("{LINES}").into_bytes())
}

kiln_sdk::export_job!(run);
