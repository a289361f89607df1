//! A scheduled cleanup: each run picks up where the previous one stopped,
//! using the checkpoint the host hands it, and returns the next checkpoint.

use kiln_sdk::{Job, JobResult};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Checkpoint {
    runs: u64,
    /// The cursor: everything below it has been cleaned.
    cleaned_up_to: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_batch")]
    batch: u64,
}

fn default_batch() -> u64 {
    100
}

fn run(job: Job) -> JobResult {
    let settings: Settings = if job.payload.is_empty() {
        Settings { batch: default_batch() }
    } else {
        job.json()?
    };
    let previous: Checkpoint = job.checkpoint_json()?.unwrap_or_default();
    let next = Checkpoint {
        runs: previous.runs + 1,
        cleaned_up_to: previous.cleaned_up_to + settings.batch,
    };
    kiln_sdk::info(&format!(
        "cleaned items {}..{} (run {})",
        previous.cleaned_up_to, next.cleaned_up_to, next.runs
    ));
    kiln_sdk::ok_json(&next)
}

kiln_sdk::export_job!(run);
