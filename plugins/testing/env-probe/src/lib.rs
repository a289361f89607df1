//! Reports the environment, arguments and working directory it can see. In
//! Kiln's sandbox all of them must be empty.

use kiln_sdk::{Job, JobResult};
use serde_json::json;

fn run(_job: Job) -> JobResult {
    let report = json!({
        "vars": std::env::vars().collect::<Vec<_>>(),
        "args": std::env::args().collect::<Vec<_>>(),
        "cwd": std::env::current_dir().ok().map(|p| p.display().to_string()),
        "HOME": std::env::var("HOME").ok(),
        "PATH": std::env::var("PATH").ok(),
    });
    kiln_sdk::ok_json(&report)
}

kiln_sdk::export_job!(run);
