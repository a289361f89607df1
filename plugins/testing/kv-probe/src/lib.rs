//! Drives the kv capability from the guest side: the operations its
//! payload lists, in order, on the stores it names (granted or not, on the
//! host or not), with keys and values as large as asked; then ends as told
//! (`ok`, a retry, a trap, or a sleep past its deadline), so the tests see
//! that only an `ok` run's writes are kept.
//!
//! Payload: `{"ops": [OP, ...], "then": "ok"|"retry"|"trap"|"sleep"}` with
//! `OP = {"op": "open"|"get"|"set"|"delete"|"exists"|"incr"|"keys", "store"?,
//! "key"?, "key_bytes"?, "value"?, "value_bytes"?, "by"?, "repeat"?}`.
//! Returns `{"results": [...]}`, one per op: the value (as text), `true`/
//! `false`, a count, the keys, or `"error: ..."`.

use kiln_sdk::kv::{self, KvError, Store};
use kiln_sdk::{Job, JobError, JobResult};
use serde_json::{Value, json};
use std::time::Duration;

fn error(e: KvError) -> Value {
    json!(match e {
        KvError::NoSuchStore => "error: no-such-store".to_string(),
        KvError::AccessDenied => "error: access-denied".to_string(),
        KvError::Other(m) => format!("error: {m}"),
    })
}

fn key_of(op: &Value) -> String {
    match op["key_bytes"].as_u64() {
        Some(n) => "k".repeat(n as usize),
        None => op["key"].as_str().unwrap_or("key").to_string(),
    }
}

fn apply(store: &Store, op: &Value) -> Result<Value, KvError> {
    let key = key_of(op);
    Ok(match op["op"].as_str().unwrap_or("") {
        "get" => store.get(&key)?.map_or(Value::Null, |v| json!(String::from_utf8_lossy(&v))),
        "exists" => json!(store.exists(&key)?),
        "set" => {
            let value = match op["value_bytes"].as_u64() {
                Some(n) => vec![b'v'; n as usize],
                None => op["value"].as_str().unwrap_or("").as_bytes().to_vec(),
            };
            let repeat = op["repeat"].as_u64().unwrap_or(1);
            for i in 0..repeat {
                let key = if repeat > 1 { format!("{key}-{i}") } else { key.clone() };
                store.set(&key, &value)?;
            }
            json!("ok")
        }
        "delete" => {
            store.delete(&key)?;
            json!("ok")
        }
        "incr" => json!(store.increment(&key, op["by"].as_u64().unwrap_or(1))?),
        "keys" => json!(store.keys()?),
        other => json!(format!("unknown op {other}")),
    })
}

fn run(job: Job) -> JobResult {
    let input: Value = job.json()?;
    let mut results = Vec::new();
    let mut stores: Vec<(String, Store)> = Vec::new();
    for op in input["ops"].as_array().into_iter().flatten() {
        let name = op["store"].as_str().unwrap_or("default").to_string();
        if !stores.iter().any(|(n, _)| *n == name) {
            match kv::open(&name) {
                Ok(store) => stores.push((name.clone(), store)),
                Err(e) => {
                    results.push(error(e));
                    continue;
                }
            }
        }
        if op["op"] == "open" {
            results.push(json!("ok"));
            continue;
        }
        let store = &stores.iter().find(|(n, _)| *n == name).expect("opened").1;
        results.push(apply(store, op).unwrap_or_else(error));
    }
    match input["then"].as_str().unwrap_or("ok") {
        "retry" => Err(JobError::retry("failing after writing")),
        "trap" => panic!("trapping after writing"),
        "sleep" => loop {
            std::thread::sleep(Duration::from_millis(50));
        },
        _ => kiln_sdk::ok_json(&json!({ "results": results })),
    }
}

kiln_sdk::export_job!(run);
