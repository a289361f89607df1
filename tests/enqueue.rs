//! The enqueue capability end to end: what a run enqueues is inserted with
//! its completion (and only then), each child naming its parent; what it
//! is not granted, or what is out of bounds, is refused to the guest.

use crate::support::host::{Host, HostDir, kill_mid_run_and_restart};
use crate::support::{assert_each_says, built, kiln, run_json, wasm_of};
use serde_json::{Value, json};

const CONFIG: &str = "lease_ms = 1500\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 4\n";

fn probe(requests: Value, then: &str) -> String {
    json!({"requests": requests, "then": then}).to_string()
}

#[test]
fn kiln_run_reports_the_children_and_refuses_what_is_not_granted_or_out_of_bounds() {
    let requests = json!([
        {"kind": "echo", "payload": {"n": 1}, "queue": "mail", "delay_ms": 500, "unique_key": "child-1"},
        {"kind": "send-email", "payload": {}},
        {"kind": "echo", "payload_bytes": 2 << 20},
        {"kind": "echo", "raw": "not json"},
        {"kind": "echo", "delay_ms": 400u64 * 24 * 3_600_000},
        {"kind": "echo", "delay_ms": 1, "scheduled_at_ms": 1},
        {"kind": "echo", "scheduled_at_ms": -5},
        {"kind": "echo", "unique_key": "k".repeat(600)},
        {"kind": "e".repeat(100)},
    ]);
    let run = run_json(built::ENQUEUE_PROBE, &["--payload", &probe(requests, "ok")]);
    assert_eq!(run.outcome(), "ok", "{}", run.json);
    let results: Vec<String> = run.json["output"]["results"].as_array().unwrap().iter().map(|r| r.to_string()).collect();
    let expect = [
        "1",
        "denied: kind \\\"send-email\\\" is not granted: `[capabilities] enqueue` in plugin.toml names echo",
        "invalid: payload is 2097154 bytes, over the limit of 1048576 bytes",
        "invalid: payload is not JSON",
        "invalid: delay-ms 34560000000 is over the most of 31536000000 (365 days)",
        "invalid: give delay-ms or scheduled-at-ms, not both",
        "invalid: scheduled-at-ms -5 is not between 0 and 365 days from now",
        "invalid: unique-key is 600 bytes, over the most of 512",
        "invalid: kind is 100 bytes, over the most of 64",
    ];
    assert_each_says(&results, &expect);
    let enqueued = run.json["enqueued"].as_array().unwrap();
    assert_eq!(enqueued.len(), 1, "only the one child inside its grant and bounds: {enqueued:?}");
    assert_eq!(enqueued[0], json!({"kind": "echo", "payload": {"n": 1}, "queue": "mail", "priority": 0, "delay_ms": 500, "scheduled_at": null, "unique_key": "child-1"}));

    // A run that does not complete `ok` reports no children.
    let run = run_json(built::ENQUEUE_PROBE, &["--payload", &probe(json!([{"kind": "echo"}]), "retry")]);
    assert_eq!((run.outcome(), run.json["enqueued"].as_array().unwrap().len()), ("retry", 0));
}

#[test]
fn one_run_may_enqueue_ten_thousand_children_and_no_more() {
    let payload = json!({"requests": [{"kind": "echo", "payload": 0}], "repeat": 10_001, "then": "ok"}).to_string();
    let run = run_json(built::ENQUEUE_PROBE, &["--payload", &payload]);
    assert_eq!(run.outcome(), "ok", "{}", run.error());
    assert!(run.json["output"]["results"][0].as_str().unwrap().starts_with("limit-reached: this run has enqueued 10000 jobs"), "{}", run.json["output"]);
    assert_eq!(run.json["enqueued"].as_array().unwrap().len(), 10_000);
}

#[test]
fn a_plugin_importing_enqueue_without_a_grant_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm_of(built::FAN_OUT), dir.path().join("fan-out.wasm")).unwrap();
    std::fs::write(dir.path().join("plugin.toml"), "name = \"fan-out\"\nversion = \"9.9.9\"\n").unwrap();
    let out = kiln().args(["plugin", "check"]).arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("imports `kiln:worker/enqueue@0.1.0` (enqueueing jobs), which its manifest does not grant")
            && stderr.contains("`[capabilities] enqueue`"),
        "{stderr}"
    );
}

fn fan_out_host() -> (HostDir, Host) {
    let dir = HostDir::new(CONFIG);
    dir.link_plugin(built::FAN_OUT);
    dir.link_plugin(built::ENQUEUE_PROBE);
    let host = dir.start();
    (dir, host)
}

#[test]
fn a_fan_out_inserts_its_children_with_its_completion_and_they_run() {
    let (_dir, host) = fan_out_host();
    let parent = host.enqueue(json!({"kind": "fan-out", "payload": {"items": [{"a": 1}, {"b": 2}, {"c": 3}]}}));
    let done = host.wait_for(parent, "completed");
    assert_eq!(done["result"], json!({"enqueued": 3}));
    assert_eq!(done["parent_id"], Value::Null);
    let children: Vec<Value> = host.jobs_of("echo").into_iter().filter(|j| j["parent_id"] == parent).collect();
    assert_eq!(children.len(), 3, "{children:?}");
    for child in &children {
        let child = host.wait_for(child["id"].as_i64().unwrap(), "completed");
        assert_eq!(child["result"], child["payload"], "each child ran: {child}");
    }
    let payloads: Vec<&Value> = children.iter().map(|c| &c["payload"]).collect();
    assert_eq!(payloads, [&json!({"a": 1}), &json!({"b": 2}), &json!({"c": 3})]);

    // A child in a queue this host does not serve is refused to the guest, not left to wait forever.
    let probe_job = host.enqueue(json!({"kind": "enqueue-probe", "payload": {"requests": [{"kind": "echo", "queue": "nope"}], "then": "ok"}}));
    let done = host.wait_for(probe_job, "completed");
    assert_eq!(done["result"]["results"][0], "invalid: queue \"nope\" is not served here (queues: default)");
}

#[test]
fn a_run_that_fails_times_out_or_traps_inserts_none_of_its_children() {
    let (_dir, host) = fan_out_host();
    let child = json!([{"kind": "echo", "payload": "should never exist"}]);
    let retried = host.enqueue(json!({"kind": "enqueue-probe", "payload": {"requests": child, "then": "retry"}}));
    let trapped = host.enqueue(json!({"kind": "enqueue-probe", "payload": {"requests": child, "then": "trap"}}));
    let slept = host.enqueue(json!({"kind": "enqueue-probe", "payload": {"requests": child, "then": "sleep"}}));
    for id in [retried, trapped, slept] {
        let job = host.wait_for(id, "dead");
        assert_eq!(job["attempt"], 2, "both attempts ran: {job}");
    }
    assert_eq!(host.job(slept)["errors"][0]["outcome"], "timed_out");
    assert!(host.jobs_of("echo").is_empty(), "a failed run enqueued: {:?}", host.jobs_of("echo"));
}

#[test]
fn a_host_killed_mid_run_inserts_none_of_the_children_after_restart() {
    let (dir, host) = fan_out_host();
    let child = json!([{"kind": "echo", "payload": "should never exist"}]);
    let id = host.enqueue(json!({"kind": "enqueue-probe", "payload": {"requests": child, "then": "sleep"}}));
    // The lease runs out, the job is rescued and runs (and times out) again.
    let (host, _) = kill_mid_run_and_restart(&dir, host, id);
    assert!(host.jobs_of("echo").is_empty(), "children of a killed run were inserted: {:?}", host.jobs_of("echo"));
}
