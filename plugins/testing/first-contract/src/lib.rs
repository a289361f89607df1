//! Echo, written against `wit/worker.wit` as Kiln first published it
//! (commit c5a1d92, before any capability), with wit-bindgen and no SDK:
//! the contract's later additions must leave a plugin built then loading
//! and running unchanged. Its WIT is a frozen copy; never update it.

wit_bindgen::generate!({ path: "wit", world: "job" });

use kiln::worker::context::{LogLevel, log, progress};

struct Echo;

impl Guest for Echo {
    fn run(job: JobRecord) -> Result<Vec<u8>, JobError> {
        log(LogLevel::Info, &format!("first-contract echo of {} bytes, attempt {}", job.payload.len(), job.attempt));
        progress(100, None);
        Ok(job.payload)
    }
}

export!(Echo);
