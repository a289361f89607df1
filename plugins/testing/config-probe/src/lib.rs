//! Reads config keys through `wasi:config/store` and tries every way to
//! leak a secret it was given: a log line, stdout, stderr, its error and its
//! result. The host must show `[redacted]` in each.
//!
//! Payload: `{"read": [KEY, ...], "leak": KEY?, "fail": bool?}`. Returns
//! `{"values": {KEY: VALUE|null}, "lengths": {KEY: N}, "all": [KEY, ...]}`.

use kiln_sdk::{Job, JobError, JobResult, config};
use serde_json::{Map, Value, json};

fn run(job: Job) -> JobResult {
    let input: Value = job.json()?;
    let keys: Vec<String> = input["read"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(String::from)).collect();
    let mut values = Map::new();
    let mut lengths = Map::new();
    for key in &keys {
        let value = config::get(key);
        lengths.insert(key.clone(), json!(value.as_ref().map(String::len)));
        values.insert(key.clone(), json!(value));
    }
    let mut all: Vec<String> = config::all().into_iter().map(|(k, _)| k).collect();
    all.sort();
    if let Some(key) = input["leak"].as_str() {
        let secret = config::require(key)?;
        kiln_sdk::info(&format!("the secret is {secret}"));
        println!("stdout has {secret}");
        eprintln!("stderr has {secret}");
        if input["fail"].as_bool() == Some(true) {
            return Err(JobError::fatal(format!("failing with {secret} in the message")));
        }
    }
    kiln_sdk::ok_json(&json!({ "values": values, "lengths": lengths, "all": all }))
}

kiln_sdk::export_job!(run);
