//! Hands the host a 50 MiB log line and a 50 MiB progress note, then a
//! megabyte-long line with no newline on stdout, then succeeds. The host
//! keeps bounded prefixes and counts the rest as dropped.

use kiln_sdk::{Job, JobResult, context};

fn run(_job: Job) -> JobResult {
    let huge = "l".repeat(50 << 20);
    context::log(context::LogLevel::Info, &huge);
    context::progress(50, Some(&huge));
    drop(huge);
    print!("{}", "o".repeat(1 << 20));
    Ok(b"\"logged\"".to_vec())
}

kiln_sdk::export_job!(run);
