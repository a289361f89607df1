//! What a plugin hands to the host is read while the plugin still owns it.
//! `poison-on-free` overwrites every byte it frees, so a host that read
//! `run`'s result or an error message after post-return freed it, or kept a
//! view of a log line, a progress note, a kv write, a child job or an HTTP
//! body past the call that handed it over, shows poison here. Compared byte
//! for byte, under `kiln run` and through `kiln serve`; the JavaScript and
//! Python plugins run the same checks (`guest_languages`).

use crate::support::host::{Host, HostDir};
use crate::support::http_server::TestServer;
use crate::support::{built, run_json};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// Payload sizes from 1 byte to the 1 MiB a payload and a result may have
/// by default: around the allocator's small-block sizes and a page.
pub const SIZES: &[usize] = &[1, 2, 3, 8, 15, 16, 17, 31, 64, 100, 1000, 4095, 4096, 4097, 65_536, 1 << 20];

/// Messages for the three errors: ASCII, multi-byte characters, and one
/// longer than the 4 KiB a message keeps.
const MESSAGES: &[&str] = &["asked to try again later", "ungültige Eingabe: ✗ 名前", "a message of exactly thirty-two!"];

/// A JSON payload of exactly `size` bytes: a number for one byte, else a
/// string of ASCII and multi-byte characters that JSON needs no escape for,
/// so its text round-trips byte for byte.
pub fn payload_of(size: usize) -> Vec<u8> {
    if size == 1 {
        return b"7".to_vec();
    }
    let pieces = ["a", "b", "c", "d", "e", "f", "0", "1", "2", "é", "✓", "x", "y", "z", " ", "~"];
    let mut text = String::from("\"");
    let mut i = 0usize;
    while text.len() < size - 1 {
        let piece = pieces[(i * 7 + i / 5) % pieces.len()];
        text.push_str(if text.len() + piece.len() <= size - 1 { piece } else { "q" });
        i += 1;
    }
    text.push('"');
    assert_eq!(text.len(), size);
    text.into_bytes()
}

/// The three failures a plugin is asked for, with the outcome and the
/// error `kiln run` reports for each.
pub fn failures() -> Vec<(Value, &'static str, String)> {
    let long = "long message ".repeat(500);
    let cut = format!("{} … [cut: {} bytes in all]", &long[..4096], long.len());
    vec![
        (json!({"mode": "retry", "message": MESSAGES[0]}), "retry", format!("retry requested: {}", MESSAGES[0])),
        (json!({"mode": "retry", "message": MESSAGES[1], "delay_ms": 1500}), "retry", format!("retry requested in 1500 ms: {}", MESSAGES[1])),
        (json!({"mode": "invalid-input", "message": MESSAGES[1]}), "invalid_input", format!("invalid input: {}", MESSAGES[1])),
        (json!({"mode": "fatal", "message": MESSAGES[2]}), "fatal", format!("fatal: {}", MESSAGES[2])),
        (json!({"mode": "fatal", "message": long}), "fatal", format!("fatal: {cut}")),
    ]
}

/// What the hosts of these checks allow: loopback HTTP, which
/// `poison-on-free` asks for (it sends a body in its `effects` mode).
const ALLOW_HTTP: &str = "http://127.0.0.1:*";

/// `kiln run PLUGIN` returns each payload of [`SIZES`] unchanged and each
/// of [`failures`] with its exact message.
pub fn check_kiln_run(plugin: &str) {
    let dir = tempfile::tempdir().unwrap();
    for &size in SIZES {
        let payload = payload_of(size);
        let file = dir.path().join(format!("payload-{size}.json"));
        std::fs::write(&file, &payload).unwrap();
        let run = run_json(plugin, &["--allow-http", ALLOW_HTTP, "--payload", &format!("@{}", file.display())]);
        assert_eq!(run.outcome(), "ok", "{size} bytes: {} {}", run.json, run.stderr);
        let want: Value = serde_json::from_slice(&payload).unwrap();
        assert!(run.json["output"] == want, "a {size}-byte payload came back changed: {:.300}", run.json["output"].to_string());
    }
    for (payload, outcome, error) in failures() {
        let run = run_json(plugin, &["--allow-http", ALLOW_HTTP, "--payload", &payload.to_string()]);
        assert_eq!((run.outcome(), run.error()), (outcome, error.as_str()), "{payload:.100}: {} {}", run.json, run.stderr);
    }
}

/// Through `kiln serve`, each plugin of `plugins` (built plugin
/// directories) completes each payload of [`SIZES`] with that payload as
/// its result, and ends each of [`failures`] with its exact message.
pub fn check_through_serve(plugins: &[&str]) {
    let dir = HostDir::new(&format!(
        "lease_ms = 5000\npoll_interval_ms = 50\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 4\n\n[capabilities]\nallow_http = [\"{ALLOW_HTTP}\"]\n"
    ));
    for plugin in plugins {
        dir.link_plugin(plugin);
    }
    // A JavaScript or Python component takes ~20 s of CPU to compile the
    // first time, before the host listens.
    let host = dir.start_within(Duration::from_secs(600));
    for plugin in plugins {
        let kind = Path::new(plugin).file_name().unwrap().to_str().unwrap();
        let echoes: Vec<(i64, Value)> = SIZES
            .iter()
            .map(|&size| {
                let payload: Value = serde_json::from_slice(&payload_of(size)).unwrap();
                (host.enqueue(json!({"kind": kind, "payload": payload})), payload)
            })
            .collect();
        let failed: Vec<(i64, &str, String)> = failures()
            .into_iter()
            .map(|(payload, outcome, error)| (host.enqueue(json!({"kind": kind, "payload": payload})), outcome, error))
            .collect();
        for (id, payload) in echoes {
            let job = host.wait_for(id, "completed");
            assert!(job["result"] == payload, "{kind} job {id} completed with a changed result: {:.300}", job["result"].to_string());
        }
        for (id, outcome, error) in failed {
            let job = host.wait_for(id, "dead");
            let first = &job["errors"][0];
            assert_eq!(first["outcome"], outcome, "{kind} job {id}: {job:.300}");
            assert_eq!(first["message"].as_str().unwrap_or(""), error, "{kind} job {id}");
        }
    }
}

#[test]
fn kiln_run_reads_the_result_and_every_error_message_before_the_plugin_frees_them() {
    check_kiln_run(built::POISON_ON_FREE);
}

#[test]
fn kiln_serve_stores_the_result_and_every_error_message_as_the_plugin_returned_them() {
    check_through_serve(&[built::POISON_ON_FREE]);
}

#[test]
fn an_ok_value_over_the_limit_is_refused_with_its_size_and_one_at_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("poison-on-free");
    std::fs::create_dir(&plugin).unwrap();
    std::fs::copy(crate::support::wasm_of(built::POISON_ON_FREE), plugin.join("poison-on-free.wasm")).unwrap();
    let manifest = std::fs::read_to_string(Path::new(built::POISON_ON_FREE).join("plugin.toml")).unwrap();
    std::fs::write(plugin.join("plugin.toml"), manifest.replace("[limits]\n", "[limits]\noutput_bytes = 1000\n")).unwrap();
    let plugin = plugin.to_str().unwrap();
    let at_limit = String::from_utf8(payload_of(1000)).unwrap();
    let run = run_json(plugin, &["--allow-http", ALLOW_HTTP, "--payload", &at_limit]);
    assert_eq!(run.outcome(), "ok", "{}", run.json);
    assert_eq!(run.json["output"], serde_json::from_str::<Value>(&at_limit).unwrap());
    let run = run_json(plugin, &["--allow-http", ALLOW_HTTP, "--payload", &String::from_utf8(payload_of(1001)).unwrap()]);
    assert_eq!((run.outcome(), run.error()), ("output_too_large", "refused: output is 1001 bytes, over the limit of 1000 bytes"));
}

/// What the `effects` mode hands over, each with text of its own.
fn effects_payload(server: &TestServer) -> Value {
    json!({
        "mode": "effects",
        "log": "a log line handed over: ✓ 0123456789abcdef",
        "progress": "a progress note: halfway ✓",
        "stdout": "a line on stdout: 0123456789abcdef",
        "kv": {"key": "poisoned-key-✓-0123456789", "value": "a kv value: 0123456789abcdef ✓"},
        "enqueue": {"kind": "echo", "payload": "{\"child\":\"payload ✓ 0123456789abcdef\"}", "queue": "default", "unique_key": "child-key-✓-0123456789"},
        "http": {"url": server.url("/send"), "body": "an HTTP body: 0123456789abcdef ✓"},
    })
}

#[test]
fn log_lines_progress_kv_children_and_http_bodies_are_read_while_the_plugin_owns_them() {
    let server = TestServer::start();
    let payload = effects_payload(&server);
    let run = run_json(built::POISON_ON_FREE, &["--allow-http", &server.origin(), "--payload", &payload.to_string()]);
    assert_eq!(run.outcome(), "ok", "{} {}", run.json, run.stderr);
    assert_eq!(run.json["output"]["done"], json!(["log", "progress", "stdout", "kv", "enqueue", "http"]));
    let messages: Vec<&str> = run.json["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    for line in [payload["log"].as_str().unwrap(), payload["stdout"].as_str().unwrap()] {
        assert!(messages.contains(&line), "{line:?} not logged as sent: {messages:?}");
    }
    assert_eq!(run.json["progress_note"], payload["progress"]);
    let kv = &run.json["kv_writes"][0];
    assert_eq!((&kv["key"], &kv["op"], &kv["bytes"]), (&payload["kv"]["key"], &json!("set"), &json!(payload["kv"]["value"].as_str().unwrap().len())));
    let child = &run.json["enqueued"][0];
    assert_eq!(child["kind"], "echo");
    assert_eq!(child["payload"], json!({"child": "payload ✓ 0123456789abcdef"}));
    assert_eq!((&child["queue"], &child["unique_key"]), (&payload["enqueue"]["queue"], &payload["enqueue"]["unique_key"]));
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, payload["http"]["body"].as_str().unwrap().as_bytes());
}

#[test]
fn kiln_serve_keeps_the_kv_value_and_the_child_a_poisoning_plugin_handed_over() {
    let server = TestServer::start();
    let dir = HostDir::new(&format!(
        "lease_ms = 5000\npoll_interval_ms = 50\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 2\n\n[capabilities]\nallow_http = [\"{}\"]\n",
        server.origin()
    ));
    dir.link_plugin(built::POISON_ON_FREE);
    let host: Host = dir.start();
    let payload = effects_payload(&server);
    let id = host.enqueue(json!({"kind": "poison-on-free", "payload": payload}));
    host.wait_for(id, "completed");
    let key = payload["kv"]["key"].as_str().unwrap();
    let (status, stored) = host.get(&format!("/plugins/poison-on-free/kv/{}", urlencode(key)));
    assert_eq!((status, &stored["value"]), (200, &payload["kv"]["value"]), "{stored}");
    let children = host.jobs_of("echo");
    assert_eq!(children.len(), 1, "{children:?}");
    let child = host.wait_for(children[0]["id"].as_i64().unwrap(), "completed");
    assert_eq!(child["payload"], json!({"child": "payload ✓ 0123456789abcdef"}));
    assert_eq!(child["result"], child["payload"]);
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, payload["http"]["body"].as_str().unwrap().as_bytes());
    let (_, lines) = host.get(&format!("/jobs/{id}/logs"));
    let text = lines.to_string();
    assert!(text.contains(payload["log"].as_str().unwrap()) && text.contains(payload["stdout"].as_str().unwrap()), "{text:.500}");
}

/// `text` as one path segment.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[test]
fn the_poisoning_plugin_does_overwrite_what_it_frees() {
    let run = run_json(built::POISON_ON_FREE, &["--allow-http", ALLOW_HTTP, "--payload", r#"{"mode": "check-poison"}"#]);
    assert_eq!(run.json["output"], json!({"freed_byte": 0xA5}), "without poison these tests prove nothing: {}", run.json);
}

#[test]
fn a_message_lifted_as_utf16_is_read_in_its_encoding() {
    let run = run_json(built::UTF16_TEXT, &[]);
    assert_eq!((run.outcome(), run.error()), ("fatal", "fatal: a message in UTF-16: ü ✓ 😀"), "{}", run.json);
}
