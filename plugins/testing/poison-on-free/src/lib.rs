//! A plugin whose allocator overwrites every byte it frees with
//! [`POISON`] before handing it back, so a host that reads guest memory
//! after the guest freed it reads poison, never the value by luck. That is
//! what StarlingMonkey's and CPython's allocators do to a freed block at
//! once (their free-list links); Rust's own allocator happens not to, which
//! hides such a read from every other Rust plugin.
//!
//! Whatever it returns (the `ok` value, an error message) is freed by
//! `run`'s post-return; whatever it hands to a host call (a log line, a
//! progress note, a kv key and value, a child job, an HTTP body) is freed
//! as soon as the call returns.
//!
//! Payload: any JSON. An object's `mode` says what to do:
//! - absent (or not an object): return the payload unchanged;
//! - `"retry"`, `"invalid-input"`, `"fatal"`: fail with the message in
//!   `message` (a retry after `delay_ms`, when given);
//! - `"effects"`: for each of `log`, `progress`, `stdout`, `kv` (`{key,
//!   value}`), `enqueue` (`{kind, payload, queue?, unique_key?}`) and
//!   `http` (`{url, body}`) present, hand it to the host, then return
//!   `{"done": [...]}` naming what was handed over;
//! - `"check-poison"`: free a block and return `{"freed_byte": N}`, a byte
//!   read from it after, so a test sees that the poisoning works.

use kiln_sdk::context::{self, LogLevel};
use kiln_sdk::enqueue::Child;
use kiln_sdk::{Job, JobError, JobResult};
use serde_json::{Value, json};
use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Duration;

/// What every freed byte becomes: not valid UTF-8 on its own, so poisoned
/// text cannot pass for text either.
const POISON: u8 = 0xA5;

struct PoisonOnFree;

// SAFETY: every call is passed to `System` with the layout it was given;
// the only addition is the write over a block the caller is done with.
unsafe impl GlobalAlloc for PoisonOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes that the
        // caller gives up. Volatile: a plain write to memory about to be
        // freed is a dead store the optimiser may (and here did) remove.
        unsafe {
            for i in 0..layout.size() {
                ptr.add(i).write_volatile(POISON);
            }
            System.dealloc(ptr, layout);
        }
    }

    // `realloc` is the trait's own: a new block, a copy, and `dealloc` of
    // the old one, so a block that moves is poisoned too.
}

#[global_allocator]
static ALLOCATOR: PoisonOnFree = PoisonOnFree;

/// Hands `value` to `call`, then frees (and so poisons) it before going on.
fn handed<T>(value: T, call: impl FnOnce(&T) -> Result<(), String>) -> Result<(), String> {
    let result = call(&value);
    drop(value);
    result
}

fn text(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_default().to_string()
}

fn effects(input: &Value) -> JobResult {
    let mut done = Vec::new();
    let step = |name: &str, result: Result<(), String>, done: &mut Vec<Value>| match result {
        Ok(()) => {
            done.push(json!(name));
            Ok(())
        }
        Err(e) => Err(JobError::fatal(format!("{name}: {e}"))),
    };
    if let Some(line) = input["log"].as_str() {
        let r = handed(line.to_string(), |line| {
            context::log(LogLevel::Info, line);
            Ok(())
        });
        step("log", r, &mut done)?;
    }
    if let Some(note) = input["progress"].as_str() {
        let r = handed(note.to_string(), |note| {
            context::progress(42, Some(note));
            Ok(())
        });
        step("progress", r, &mut done)?;
    }
    if let Some(line) = input["stdout"].as_str() {
        let r = handed(format!("{line}\n"), |line| {
            use std::io::Write;
            let mut out = std::io::stdout();
            out.write_all(line.as_bytes()).and_then(|()| out.flush()).map_err(|e| e.to_string())
        });
        step("stdout", r, &mut done)?;
    }
    if input["kv"].is_object() {
        let store = kiln_sdk::kv::open("default").map_err(|e| JobError::fatal(format!("kv: {e:?}")))?;
        let (key, value) = (text(&input["kv"], "key"), text(&input["kv"], "value").into_bytes());
        let r = handed((key, value), |(key, value)| store.set(key, value).map_err(|e| format!("{e:?}")));
        step("kv", r, &mut done)?;
    }
    if input["enqueue"].is_object() {
        let request = &input["enqueue"];
        let mut child = Child::from_bytes(&text(request, "kind"), text(request, "payload").into_bytes());
        if let Some(queue) = request["queue"].as_str() {
            child = child.queue(queue);
        }
        if let Some(key) = request["unique_key"].as_str() {
            child = child.unique_key(key);
        }
        // `send` takes the child and frees its strings and payload when the call returns.
        let r = child.send().map(drop).map_err(|e| e.to_string());
        step("enqueue", r, &mut done)?;
    }
    if input["http"].is_object() {
        let (url, body) = (text(&input["http"], "url"), text(&input["http"], "body").into_bytes());
        let r = handed(body, |body| {
            let response = kiln_sdk::http::send("POST", &url, &[("content-type", "application/octet-stream")], body.clone())
                .map_err(|e| e.to_string())?;
            if response.status == 200 { Ok(()) } else { Err(format!("answered {}", response.status)) }
        });
        step("http", r, &mut done)?;
    }
    kiln_sdk::ok_json(&json!({ "done": done }))
}

fn run(job: Job) -> JobResult {
    let input: Value = serde_json::from_slice(&job.payload).unwrap_or(Value::Null);
    let message = text(&input, "message");
    match input["mode"].as_str() {
        Some("retry") => Err(match input["delay_ms"].as_u64() {
            Some(ms) => JobError::retry_after(message, Duration::from_millis(ms)),
            None => JobError::retry(message),
        }),
        Some("invalid-input") => Err(JobError::invalid_input(message)),
        Some("fatal") => Err(JobError::fatal(message)),
        Some("effects") => effects(&input),
        Some("check-poison") => {
            let block = vec![1u8; 64];
            let freed = block.as_ptr();
            drop(block);
            // SAFETY: reads one byte of a block just freed and not reused
            // (nothing was allocated since): memory of this instance, in
            // bounds; what it holds is the question.
            let byte = unsafe { std::ptr::read_volatile(freed.add(32)) };
            kiln_sdk::ok_json(&json!({ "freed_byte": byte }))
        }
        _ => Ok(job.payload),
    }
}

kiln_sdk::export_job!(run);
