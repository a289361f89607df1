//! A queue consumer: validates an email job, logs what it would send, and
//! stops early when the host cancels it.

use kiln_sdk::{Job, JobError, JobResult, context};
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Email {
    to: String,
    subject: String,
    #[serde(default)]
    body: String,
    /// How long "sending" takes, to show cancellation; 0 by default.
    #[serde(default)]
    send_ms: u64,
}

/// Granularity of the simulated send: how often `cancelled()` is checked.
const CANCEL_CHECK_EVERY: Duration = Duration::from_millis(5);

fn run(job: Job) -> JobResult {
    let email: Email = job.json()?;
    let Some((user, domain)) = email.to.split_once('@') else {
        return Err(JobError::invalid_input(format!("`to` is not an email address: {:?}", email.to)));
    };
    if user.is_empty() || !domain.contains('.') {
        return Err(JobError::invalid_input(format!("`to` is not an email address: {:?}", email.to)));
    }
    if email.subject.trim().is_empty() {
        return Err(JobError::invalid_input("`subject` is empty"));
    }

    let mut waited = Duration::ZERO;
    let total = Duration::from_millis(email.send_ms);
    while waited < total {
        if context::cancelled() {
            return Err(JobError::retry("cancelled before the email was sent"));
        }
        std::thread::sleep(CANCEL_CHECK_EVERY);
        waited += CANCEL_CHECK_EVERY;
        let percent = (waited.as_millis() * 100 / total.as_millis()).min(100) as u8;
        context::progress(percent, None);
    }

    kiln_sdk::info(&format!(
        "would send to {} (subject {:?}, {} bytes of body)",
        email.to,
        email.subject,
        email.body.len()
    ));
    kiln_sdk::ok_json(&serde_json::json!({ "sent_to": email.to, "attempt": job.attempt }))
}

kiln_sdk::export_job!(run);
