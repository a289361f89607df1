//! Tries to read files and list directories, and reports what it saw. In
//! Kiln's sandbox (no preopened directories) every probe must fail.

use kiln_sdk::{Job, JobResult};
use serde_json::{Value, json};

fn probe<T>(result: std::io::Result<T>, show: impl Fn(T) -> Value) -> Value {
    match result {
        Ok(v) => json!({ "ok": show(v) }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn list(dir: &str) -> Value {
    probe(std::fs::read_dir(dir), |entries| {
        Value::from(entries.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect::<Vec<_>>())
    })
}

fn run(_job: Job) -> JobResult {
    let report = json!({
        "read /etc/passwd": probe(std::fs::read_to_string("/etc/passwd"), |s| Value::from(s.len())),
        "read plugin.toml": probe(std::fs::read_to_string("plugin.toml"), |s| Value::from(s.len())),
        "write /tmp/kiln-fs-probe": probe(std::fs::write("/tmp/kiln-fs-probe", b"x"), |()| Value::Null),
        "list /": list("/"),
        "list .": list("."),
    });
    kiln_sdk::ok_json(&report)
}

kiln_sdk::export_job!(run);
