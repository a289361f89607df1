//! A scheduled cleanup over its own kv store: each run deletes the entries
//! whose `expires_at` (milliseconds since the Unix epoch) has passed, and
//! carries its totals forward in the checkpoint the host hands the next
//! run. Its deletes are kept only if the run completes `ok`, with its tick.
//!
//! Entries are JSON values with an `expires_at` field, put there by anyone
//! who may write the store: the plugin's own jobs, or an operator
//! (`kiln kv set cleanup session/42 '{"expires_at": 1767225600000}'`).
//! Keys whose value has no `expires_at` are left alone.

use kiln_sdk::{Job, JobResult, kv};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Checkpoint {
    runs: u64,
    /// Entries deleted over all runs.
    deleted: u64,
}

#[derive(Deserialize)]
struct Entry {
    expires_at: i64,
}

/// Keys per `delete_many` call: the host takes at most 1,000.
const DELETE_BATCH: usize = 1_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn run(job: Job) -> JobResult {
    let previous: Checkpoint = job.checkpoint_json()?.unwrap_or_default();
    let store = kv::open("default")?;
    let now = now_ms();
    let mut expired = Vec::new();
    for key in store.keys()? {
        if store.get_json::<Entry>(&key)?.is_some_and(|e| e.expires_at <= now) {
            expired.push(key);
        }
    }
    for batch in expired.chunks(DELETE_BATCH) {
        store.delete_many(batch)?;
    }
    let next = Checkpoint { runs: previous.runs + 1, deleted: previous.deleted + expired.len() as u64 };
    kiln_sdk::info(&format!("deleted {} expired entries (run {}, {} in all)", expired.len(), next.runs, next.deleted));
    kiln_sdk::ok_json(&next)
}

kiln_sdk::export_job!(run);
