//! Tries the enqueue capability from the guest side, the way a careless or
//! hostile plugin would: kinds it is not granted, payloads that are too
//! large or not JSON, more children than one run may have, bad times; then
//! ends as told (`ok`, a retry, a trap, or a sleep past its deadline), so
//! the tests see that only an `ok` run's children are inserted.
//!
//! Payload: `{"requests": [REQ, ...], "repeat": N?, "then": "ok"|"retry"|"trap"|"sleep"}`
//! with `REQ = {"kind", "payload"?, "payload_bytes"?, "queue"?, "delay_ms"?,
//! "scheduled_at_ms"?, "unique_key"?, "raw"?}`; `payload_bytes` sends a
//! JSON string that long instead of `payload`, `raw` these bytes as they are. `repeat` sends every request N
//! times, stopping at the first refusal. Returns
//! `{"results": [COUNT | "ERROR", ...]}`.

use kiln_sdk::enqueue::{Child, EnqueueError};
use kiln_sdk::{Job, JobError, JobResult};
use serde_json::{Value, json};
use std::time::Duration;

fn child(request: &Value) -> Child {
    let kind = request["kind"].as_str().unwrap_or("echo");
    let mut child = match (request["payload_bytes"].as_u64(), request["raw"].as_str()) {
        (Some(n), _) => Child::new(kind, &"x".repeat(n as usize)),
        (None, Some(raw)) => Child::from_bytes(kind, raw.as_bytes().to_vec()),
        (None, None) => Child::new(kind, &request["payload"]),
    };
    if let Some(q) = request["queue"].as_str() {
        child = child.queue(q);
    }
    if let Some(ms) = request["delay_ms"].as_u64() {
        child = child.delay(Duration::from_millis(ms));
    }
    if let Some(at) = request["scheduled_at_ms"].as_i64() {
        child = child.at_ms(at);
    }
    if let Some(key) = request["unique_key"].as_str() {
        child = child.unique_key(key);
    }
    child
}

fn run(job: Job) -> JobResult {
    let input: Value = job.json()?;
    let repeat = input["repeat"].as_u64().unwrap_or(1);
    let mut results = Vec::new();
    for request in input["requests"].as_array().into_iter().flatten() {
        let mut last = json!(null);
        for _ in 0..repeat {
            match child(request).send() {
                Ok(count) => last = json!(count),
                Err(e) => {
                    last = json!(match e {
                        EnqueueError::Denied(m) => format!("denied: {m}"),
                        EnqueueError::Invalid(m) => format!("invalid: {m}"),
                        EnqueueError::LimitReached(m) => format!("limit-reached: {m}"),
                    });
                    break;
                }
            }
        }
        results.push(last);
    }
    match input["then"].as_str().unwrap_or("ok") {
        "retry" => Err(JobError::retry("failing after enqueueing")),
        "trap" => panic!("trapping after enqueueing"),
        "sleep" => loop {
            std::thread::sleep(Duration::from_millis(50));
        },
        _ => kiln_sdk::ok_json(&json!({ "results": results })),
    }
}

kiln_sdk::export_job!(run);
