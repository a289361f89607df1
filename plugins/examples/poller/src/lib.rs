//! A long-running poller: each pass "reads" the next batch of a feed after
//! the cursor in its checkpoint and returns the advanced cursor, which the
//! host stores, so a restart resumes where the loop was.

use kiln_sdk::{Job, JobResult};
use serde::{Deserialize, Serialize};

/// Items read per pass.
const BATCH: u64 = 10;
/// Every pass logs at debug; one in this many (the first, then once a
/// minute at the manifest's 5 s delay) also at info, so a loop that runs
/// all day does not fill the host's log.
const INFO_EVERY: u64 = 12;

#[derive(Serialize, Deserialize, Default)]
struct Checkpoint {
    /// Everything before it has been read.
    cursor: u64,
    /// Passes that completed, this one included.
    passes: u64,
}

fn run(job: Job) -> JobResult {
    let previous: Checkpoint = job.checkpoint_json()?.unwrap_or_default();
    let next = Checkpoint { cursor: previous.cursor + BATCH, passes: previous.passes + 1 };
    kiln_sdk::debug(&format!("polled items {}..{} (pass {})", previous.cursor, next.cursor, next.passes));
    if next.passes % INFO_EVERY == 1 {
        kiln_sdk::info(&format!("polling: {} items read in {} passes", next.cursor, next.passes));
    }
    kiln_sdk::ok_json(&next)
}

kiln_sdk::export_job!(run);
