//! Sends the HTTP requests its payload lists, in order, through the SDK
//! (wasi:http), and reports each answer: inside and outside its grant, to
//! servers that answer, fail, send too much or never answer.
//!
//! Payload: `{"requests": [{"method"?, "url", "headers"?: [[K, V]], "body"?}],
//! "fail_on_error": bool?}`. Returns `{"responses": [{"status", "body"} |
//! "error: ..."]}`; with `fail_on_error`, the first failed request (or a
//! 5xx answer) ends the run with a retry naming it.

use kiln_sdk::http::{self, HttpError};
use kiln_sdk::{Job, JobError, JobResult};
use serde_json::{Value, json};

fn run(job: Job) -> JobResult {
    let input: Value = job.json()?;
    let fail_on_error = input["fail_on_error"].as_bool().unwrap_or(false);
    let mut responses = Vec::new();
    for request in input["requests"].as_array().into_iter().flatten() {
        let url = request["url"].as_str().unwrap_or("");
        let method = request["method"].as_str().unwrap_or("GET");
        let headers: Vec<(String, String)> = request["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| Some((h[0].as_str()?.to_string(), h[1].as_str()?.to_string())))
            .collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = request["body"].as_str().unwrap_or("").as_bytes().to_vec();
        match http::send(method, url, &headers, body) {
            Ok(response) if fail_on_error && response.status >= 500 => {
                return Err(JobError::retry(format!("{url} answered {}", response.status)));
            }
            Ok(response) => responses.push(json!({"status": response.status, "body": String::from_utf8_lossy(&response.body)})),
            Err(e) if fail_on_error => {
                return Err(match e {
                    HttpError::Denied => JobError::fatal(format!("{url}: {e}")),
                    HttpError::Failed(_) => JobError::retry(format!("{url}: {e}")),
                });
            }
            Err(e) => responses.push(json!(format!("error: {e}"))),
        }
    }
    kiln_sdk::ok_json(&json!({ "responses": responses }))
}

kiln_sdk::export_job!(run);
