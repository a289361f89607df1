//! A queue consumer: validates an email job and posts it to an HTTP mail
//! API, whose URL (`mail_api_url`) and key (`mail_api_key`, sent as a
//! bearer token) come from the host's config; stops early when the host
//! cancels it. A 429 or 5xx from the API, or no answer, is a retry; any
//! other refusal is final.

use kiln_sdk::{Job, JobError, JobResult, config, context, http};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Email {
    to: String,
    subject: String,
    #[serde(default)]
    body: String,
    /// How long composing takes before the send, to show cancellation; 0 by default.
    #[serde(default)]
    send_ms: u64,
}

/// What the mail API is sent.
#[derive(Serialize)]
struct Mail<'a> {
    to: &'a str,
    subject: &'a str,
    body: &'a str,
}

/// Granularity of the composing wait: how often `cancelled()` is checked.
const CANCEL_CHECK_EVERY: Duration = Duration::from_millis(5);
/// The most of a refusal's body quoted in the job's error.
const QUOTED_BYTES: usize = 200;

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

    let url = config::require("mail_api_url")?;
    let authorization = config::get("mail_api_key").map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("authorization", a.as_str())).collect();
    let mail = Mail { to: &email.to, subject: &email.subject, body: &email.body };
    let response = http::post_json(&url, &mail, &headers)?;
    let status = response.status;
    if !(200..300).contains(&status) {
        let quoted: String = String::from_utf8_lossy(&response.body).chars().take(QUOTED_BYTES).collect();
        let message = format!("the mail API at {url} answered {status}: {quoted}");
        return Err(if status == 429 || status >= 500 { JobError::retry(message) } else { JobError::fatal(message) });
    }
    // The API's id for the mail, when it gives one.
    let id = serde_json::from_slice::<serde_json::Value>(&response.body).ok().and_then(|v| v.get("id").cloned());
    kiln_sdk::info(&format!("sent to {} (subject {:?}, {} bytes of body): {status}", email.to, email.subject, email.body.len()));
    kiln_sdk::ok_json(&serde_json::json!({ "sent_to": email.to, "attempt": job.attempt, "status": status, "id": id }))
}

kiln_sdk::export_job!(run);
