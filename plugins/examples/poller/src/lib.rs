//! A long-running poller: each pass fetches the next page of a feed
//! (`feed_url` from the host's config) after the cursor it keeps in its kv
//! store, and stores the advanced cursor. The cursor commits only with a
//! pass that completes `ok`, so a failed or interrupted pass reads the same
//! page again and a restart resumes where the loop was.

use kiln_sdk::{Job, JobError, JobResult, config, http, kv};
use serde::{Deserialize, Serialize};

/// Items read per pass.
const BATCH: u64 = 10;
/// Where the cursor is kept, in the `default` store.
const CURSOR_KEY: &str = "cursor";
/// Every pass logs at debug; one in this many (the first, then once a
/// minute at the manifest's 5 s delay) also at info, so a loop that runs
/// all day does not fill the host's log.
const INFO_EVERY: u64 = 12;

/// The loop's checkpoint: what the host shows of it.
#[derive(Serialize, Deserialize, Default)]
struct Checkpoint {
    /// Passes that completed, this one included.
    passes: u64,
}

#[derive(Deserialize)]
struct Item {
    id: u64,
}

/// A page of the feed: `GET feed_url?after=CURSOR&limit=N`.
#[derive(Deserialize)]
struct Page {
    items: Vec<Item>,
    /// The cursor after this page.
    next: u64,
}

fn run(job: Job) -> JobResult {
    let previous: Checkpoint = job.checkpoint_json()?.unwrap_or_default();
    let store = kv::open("default")?;
    let cursor: u64 = store.get_json(CURSOR_KEY)?.unwrap_or(0);
    let feed = config::require("feed_url")?;
    let response = http::get(&format!("{feed}?after={cursor}&limit={BATCH}"))?;
    if response.status != 200 {
        return Err(JobError::retry(format!("the feed at {feed} answered {}", response.status)));
    }
    let page: Page = response.json()?;
    if page.next < cursor || page.items.iter().any(|i| i.id <= cursor) {
        return Err(JobError::fatal(format!("the feed went backwards: asked after {cursor}, got up to {}", page.next)));
    }
    store.set_json(CURSOR_KEY, &page.next)?;
    let next = Checkpoint { passes: previous.passes + 1 };
    kiln_sdk::debug(&format!("polled items {cursor}..{} ({} items, pass {})", page.next, page.items.len(), next.passes));
    if next.passes % INFO_EVERY == 1 {
        kiln_sdk::info(&format!("polling: read up to item {} in {} passes", page.next, next.passes));
    }
    kiln_sdk::ok_json(&next)
}

kiln_sdk::export_job!(run);
