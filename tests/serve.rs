//! `kiln serve` end to end: the real binary, a real SQLite file, the HTTP
//! API. Jobs run, retry, dead-letter, deduplicate, survive `kill -9` and
//! SIGTERM; bad input is refused without touching what is stored.

use crate::support::host::{HostDir, PATIENCE, eventually};
use serde_json::{Value, json};
use std::time::Duration;

/// Fast timings so failure paths show in seconds, not minutes.
const FAST: &str = "lease_ms = 1500\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\ncancel_grace_ms = 500\n\n[queues.default]\nconcurrency = 4\n";

#[test]
fn an_enqueued_job_runs_and_completes_with_its_result() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "echo", "payload": {"hello": "world"}}));
    let job = host.wait_for(id, "completed");
    assert_eq!(job["result"], json!({"hello": "world"}));
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["errors"], json!([]));
    assert!(job["finalized_at"].is_string());
    assert_eq!(job["max_attempts"], 5, "the plugin's default max_attempts");
}

#[test]
fn a_retryable_failure_retries_with_growing_delays_then_dead_letters() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "flaky", "payload": {"fail_attempts": 100}}));
    let job = host.wait_for(id, "dead");
    let errors = job["errors"].as_array().unwrap();
    assert_eq!(job["attempt"], 3, "flaky's manifest allows 3 attempts");
    assert_eq!(errors.len(), 3, "{job}");
    assert!(errors.iter().all(|e| e["outcome"] == "retry"));
    assert!(errors[2]["message"].as_str().unwrap().contains("no attempts left"));
    let at = |i: usize| crate::support::millis(errors[i]["at"].as_str().unwrap());
    let (first_gap, second_gap) = (at(1) - at(0), at(2) - at(1));
    // Backoff 100 ms then 200 ms, each ±25 %.
    assert!(first_gap >= 75, "first retry waited {first_gap} ms");
    assert!(second_gap > first_gap, "delays grow: {first_gap} ms then {second_gap} ms");
}

#[test]
fn a_job_that_fails_once_completes_on_retry() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "flaky", "payload": {"fail_attempts": 1}}));
    let job = host.wait_for(id, "completed");
    assert_eq!(job["result"], json!({"succeeded_on_attempt": 2}));
    assert_eq!(job["errors"].as_array().unwrap().len(), 1);
}

#[test]
fn invalid_input_dead_letters_at_once_and_a_hand_retry_runs_it_again() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "send-email", "payload": {"to": "not-an-address", "subject": "x"}}));
    let dead = host.wait_for(id, "dead");
    assert_eq!(dead["attempt"], 1, "never retried");
    assert_eq!(dead["errors"][0]["outcome"], "invalid_input");
    assert!(dead["errors"][0]["message"].as_str().unwrap().contains("not an email address"));

    let (status, retried) = host.post(&format!("/jobs/{id}/retry"), &json!(null));
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["state"], "available");
    eventually("the retried job runs again", || host.job(id)["errors"].as_array().unwrap().len() == 2);
    let again = host.wait_for(id, "dead");
    assert_eq!(again["attempt"], 2, "the attempt count goes on: {again}");
    let numbers: Vec<&Value> = again["errors"].as_array().unwrap().iter().map(|e| &e["attempt"]).collect();
    assert_eq!(numbers, [&json!(1), &json!(2)], "no attempt number repeats: {again}");

    let (status, body) = host.post(&format!("/jobs/{id}/retry"), &json!(null));
    assert_eq!(status, 200, "a dead job can be retried again: {body}");
    let (status, body) = host.post("/jobs/999999/retry", &json!(null));
    assert_eq!((status, body["error"].as_str().unwrap()), (404, "job 999999 not found"));
}

#[test]
fn a_unique_key_deduplicates() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let job = json!({"kind": "echo", "payload": 1, "unique_key": "nightly-2026-11-22", "scheduled_at": "2999-01-01T00:00:00Z"});
    let (first_status, first) = host.post("/jobs", &job);
    let (second_status, second) = host.post("/jobs", &job);
    assert_eq!((first_status, second_status), (201, 200));
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["state"], "scheduled");
    assert_eq!(host.jobs_in("scheduled").len(), 1);
}

#[test]
fn many_jobs_in_one_request_all_run() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let batch: Vec<Value> = (0..50).map(|i| json!({"kind": "echo", "payload": {"i": i}})).collect();
    let (status, body) = host.post("/jobs", &Value::Array(batch));
    assert_eq!(status, 201, "{body}");
    let ids: Vec<i64> = body.as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 50);
    eventually("all 50 complete", || host.jobs_in("completed").len() == 50);
    assert_eq!(host.job(ids[7])["result"], json!({"i": 7}));
}

#[test]
fn a_running_job_is_cancelled_through_the_api() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let polite = host.enqueue(json!({"kind": "send-email", "payload": {"to": "a@b.co", "subject": "s", "send_ms": 60000}}));
    let stubborn = host.enqueue(json!({"kind": "ignore-cancel"}));
    host.wait_for(polite, "running");
    host.wait_for(stubborn, "running");
    for id in [polite, stubborn] {
        let (status, body) = host.post(&format!("/jobs/{id}/cancel"), &json!(null));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["cancel_requested"], true);
    }
    let polite_job = host.wait_for(polite, "cancelled");
    assert_eq!(polite_job["errors"][0]["outcome"], "cancelled");
    let stubborn_job = host.wait_for(stubborn, "cancelled");
    assert!(stubborn_job["errors"][0]["message"].as_str().unwrap().contains("interrupted"), "{stubborn_job}");

    let waiting = host.enqueue(json!({"kind": "echo", "scheduled_at": "2999-01-01T00:00:00Z"}));
    assert_eq!(host.post(&format!("/jobs/{waiting}/cancel"), &json!(null)).1["state"], "cancelled");
    let (status, body) = host.post(&format!("/jobs/{waiting}/cancel"), &json!(null));
    assert_eq!(status, 409, "a cancelled job cannot be cancelled again: {body}");
}

#[test]
fn queues_show_their_jobs_by_state_and_how_long_the_oldest_has_waited() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let queue = |host: &crate::support::host::Host| host.get("/queues").1["queues"][0].clone();
    let idle = queue(&host);
    assert_eq!(idle["name"], "default");
    assert_eq!(idle["jobs"]["available"], 0, "{idle}");
    assert_eq!(idle["jobs"].as_object().unwrap().len(), 7, "every state, zeros included: {idle}");
    assert!(idle["oldest_waiting_ms"].is_null(), "{idle}");
    assert_eq!(host.post("/queues/default/pause", &json!(null)).0, 200);
    for _ in 0..3 {
        host.enqueue(json!({"kind": "echo", "payload": 1}));
    }
    host.enqueue(json!({"kind": "echo", "scheduled_at": "2099-01-01T00:00:00Z"}));
    std::thread::sleep(Duration::from_millis(300));
    let waiting = queue(&host);
    assert_eq!((waiting["jobs"]["available"].as_u64(), waiting["jobs"]["scheduled"].as_u64()), (Some(3), Some(1)), "{waiting}");
    assert!(waiting["oldest_waiting_ms"].as_i64().unwrap() >= 300, "{waiting}");
    assert_eq!(waiting["paused"], true);
}

#[test]
fn a_paused_queue_holds_its_jobs_until_resumed() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    assert_eq!(host.post("/queues/default/pause", &json!(null)).0, 200);
    let id = host.enqueue(json!({"kind": "echo", "payload": "held"}));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(host.job(id)["state"], "available", "a paused queue is not claimed");
    let (_, queues) = host.get("/queues");
    assert_eq!(queues["queues"][0]["paused"], true);
    assert_eq!(host.post("/queues/default/resume", &json!(null)).0, 200);
    host.wait_for(id, "completed");
    assert_eq!(host.post("/queues/nope/pause", &json!(null)).0, 404);
}

#[test]
fn health_readiness_plugins_and_metrics() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    assert_eq!(host.get("/healthz"), (200, json!({"status": "ok"})));
    // The examples include a start-up plugin (`warmup`): ready once it ran,
    // which on a loaded machine can be after the API answers.
    eventually("ready after the start-up plugins", || host.get("/readyz").0 == 200);
    assert_eq!(host.get("/readyz"), (200, json!({"status": "ready"})));
    let (_, plugins) = host.get("/plugins");
    let names: Vec<&str> = plugins["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"echo") && names.contains(&"flaky"), "{names:?}");

    let ok = host.enqueue(json!({"kind": "echo", "payload": 1}));
    let bad = host.enqueue(json!({"kind": "send-email", "payload": {}}));
    host.wait_for(ok, "completed");
    host.wait_for(bad, "dead");
    let metrics = host.get_text("/metrics");
    for expected in [
        r#"kiln_jobs_finished_total{kind="echo",outcome="ok"} 1"#,
        r#"kiln_jobs_finished_total{kind="send-email",outcome="invalid_input"} 1"#,
        r#"kiln_job_failures_total{kind="send-email"} 1"#,
        r#"kiln_queue_depth{queue="default",state="completed"} 1"#,
        r#"kiln_queue_depth{queue="default",state="dead"} 1"#,
        r#"kiln_queue_delay_seconds_count{kind="echo"} 1"#,
        r#"kiln_run_duration_seconds_count{kind="echo"} 1"#,
        r#"kiln_fuel_used_total{kind="echo"}"#,
        r#"kiln_peak_memory_bytes_count{kind="echo"} 1"#,
    ] {
        assert!(metrics.contains(expected), "missing {expected} in:\n{metrics}");
    }
}

#[test]
fn bad_requests_are_refused_with_a_clear_error_and_store_nothing() {
    let dir = HostDir::new(&format!("max_payload_bytes = 1000\n{FAST}"));
    let host = dir.start();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"kind\": \"echo\", ".to_vec(), 400, "request body is not JSON: EOF while parsing a value at line 1 column 17"),
        (br#"{"kind": "nope"}"#.to_vec(), 400, "unknown job kind \"nope\""),
        (br#"{"kind": "echo", "colour": 1}"#.to_vec(), 400, "unknown field `colour`"),
        (br#"{"kind": "echo", "max_attempts": 0}"#.to_vec(), 400, "max_attempts is 0; it must be between 1 and 1000"),
        (br#"{"kind": "echo", "max_attempts": 4294967295}"#.to_vec(), 400, "max_attempts is 4294967295; it must be between 1 and 1000"),
        (br#"{"kind": "echo", "scheduled_at": "tomorrow"}"#.to_vec(), 400, "scheduled_at: \"tomorrow\" is not an RFC 3339 time"),
        (br#"{"kind": "echo", "queue": "elsewhere"}"#.to_vec(), 400, "queue \"elsewhere\" is not served"),
        (br#"{"kind": "echo", "concurrency_key": ""}"#.to_vec(), 400, "job 0: concurrency_key is 0 bytes; a concurrency key is 1 to 256"),
        (format!(r#"[{{"kind": "echo"}}, {{"kind": "echo", "concurrency_key": "{}"}}]"#, "k".repeat(257)).into_bytes(), 400, "job 1: concurrency_key is 257 bytes"),
        (br#"{"kind": "echo", "concurrency_key": "a\u001fb"}"#.to_vec(), 400, "concurrency_key holds a control character"),
        (br#"[{"kind": "echo"}, {"kind": "nope"}]"#.to_vec(), 400, "unknown job kind \"nope\""),
        (br#"42"#.to_vec(), 400, "must be a job object or an array"),
        (format!(r#"{{"kind": "echo", "payload": "{}"}}"#, "x".repeat(2000)).into_bytes(), 413, "payload is 2002 bytes, over the limit of 1000 bytes"),
    ];
    for (body, status, message) in cases {
        let (got, answer) = host.post_raw("/jobs", &body);
        assert_eq!(got, status, "{answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("no error field: {answer}"));
        assert!(error.contains(message), "expected {message:?} in {error:?}");
    }
    let (status, page) = host.get("/jobs");
    assert_eq!(status, 200);
    assert_eq!(page["jobs"], json!([]), "nothing was stored, not even the valid first job of the mixed batch");
    assert_eq!(host.get("/jobs?state=sleeping").0, 400);
    assert_eq!(host.get("/jobs/abc").0, 400);
}

#[test]
fn kill_9_loses_nothing_and_only_jobs_in_flight_run_twice() {
    let dir = HostDir::new(FAST);
    let mut host = dir.start();
    let jobs: Vec<Value> = (0..40).map(|i| json!({"kind": "send-email", "payload": {"to": format!("u{i}@example.com"), "subject": "hi", "send_ms": 100}})).collect();
    let (status, _) = host.post("/jobs", &Value::Array(jobs));
    assert_eq!(status, 201);
    eventually("some jobs completed", || host.jobs_in("completed").len() >= 8);
    host.kill9();

    let host = dir.start();
    eventually("every job completed after the restart", || host.jobs_in("completed").len() == 40);
    let completed = host.jobs_in("completed");
    let twice: Vec<&Value> = completed.iter().filter(|j| j["attempt"] != 1).collect();
    assert!(!twice.is_empty(), "jobs were in flight at the kill");
    // In flight: at most `concurrency` running, plus runs finished but not yet written.
    assert!(twice.len() <= 8, "{} jobs ran twice", twice.len());
    for job in twice {
        assert_eq!(job["attempt"], 2);
        assert_eq!(job["errors"][0]["outcome"], "lease_expired", "{job}");
    }
}

#[test]
fn sigterm_lets_a_polite_job_stop_interrupts_a_stubborn_one_and_loses_neither() {
    let dir = HostDir::new(FAST);
    let mut host = dir.start();
    let polite = host.enqueue(json!({"kind": "send-email", "payload": {"to": "a@b.co", "subject": "s", "send_ms": 60000}}));
    let stubborn = host.enqueue(json!({"kind": "ignore-cancel"}));
    host.wait_for(polite, "running");
    host.wait_for(stubborn, "running");
    // Paused (a stored flag): the restarted host must not claim them before we look.
    assert_eq!(host.post("/queues/default/pause", &json!(null)).0, 200);
    let (status, took) = host.sigterm();
    assert!(status.success(), "exit {status:?}");
    // Grace 1 s + one epoch tick; the bound here only catches a hang.
    assert!(took < PATIENCE, "took {took:?}");
    eprintln!("SIGTERM to exit with a stubborn job: {took:?} (grace 1 s)");
    let log = dir.stderr();
    for step in ["SIGTERM received", "shutdown: stopped claiming", "grace period of 1s over", "every run has ended", "every transition written", "stopped"] {
        assert!(log.contains(step), "the log shows {step:?}:\n{log}");
    }

    let host = dir.start();
    for id in [polite, stubborn] {
        let job = host.job(id);
        assert_eq!(job["state"], "available", "{job}");
        assert_eq!(job["attempt"], 0, "a run stopped by shutdown does not count as an attempt: {job}");
    }
}

#[test]
fn bad_config_and_a_file_that_is_not_a_database_are_refused() {
    for (config, expected) in [
        ("lease_ms = 1000\nthreads = 4\n", vec!["kiln.toml", "line 2", "unknown field `threads`"]),
        ("lease_ms = \"soon\"\n", vec!["kiln.toml", "line 1", "lease_ms"]),
        ("[queues.default]\nconcurrency = 0\n", vec!["`queues` must give at least one queue a concurrency above zero"]),
        ("[queues.default]\nconcurrency = 5000\n", vec!["kiln.toml", "`queues` concurrency adds up to 5000, more than the 1000"]),
    ] {
        let dir = HostDir::new(config);
        let out = dir.command().output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{config}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for part in expected {
            assert!(stderr.contains(part), "{part:?} not in {stderr}");
        }
    }

    let dir = HostDir::new(FAST);
    let garbage = b"definitely not sqlite\n".repeat(100);
    std::fs::write(dir.database(), &garbage).unwrap();
    let out = dir.command().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kiln.db is not a Kiln database"), "{stderr}");
    assert_eq!(std::fs::read(dir.database()).unwrap(), garbage, "the file is untouched");
}

/// The `kiln` CLI against `host`'s API: exit code, stdout, stderr.
pub(crate) fn cli(host: &crate::support::host::Host, args: &[&str]) -> (Option<i32>, String, String) {
    let out = crate::support::kiln().args(args).env("KILN_API", &host.url).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_cli_talks_to_the_api() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let kiln = |args: &[&str]| cli(&host, args);
    let (code, out, err) = kiln(&["enqueue", "echo", "--payload", r#"{"via":"cli"}"#, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out:?} {err}"))["id"].as_i64().unwrap();
    host.wait_for(id, "completed");
    let (_, out, _) = kiln(&["jobs", "show", &id.to_string(), "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["result"], json!({"via": "cli"}));
    // For a person: one line naming the new job, a summary, a table.
    let (_, out, _) = kiln(&["enqueue", "echo", "--payload", "7"]);
    let second: i64 = out.strip_prefix("enqueued job ").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(out.contains(&format!("kiln jobs show {second}")), "{out}");
    host.wait_for(second, "completed");
    let (_, out, _) = kiln(&["jobs", "show", &second.to_string()]);
    assert!(out.starts_with(&format!("job {second}: echo (queue default), completed, attempt 1/")), "{out}");
    assert!(out.contains("payload   7") && out.contains("result    7"), "{out}");
    let (_, out, _) = kiln(&["queues", "list"]);
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("QUEUE") && rows[0].contains("COMPLETED") && rows[0].contains("OLDEST WAITING"), "{out}");
    assert!(rows[1].starts_with("default") && rows[1].contains(" 2 "), "two completed jobs: {out}");
    let (_, out, _) = kiln(&["jobs", "list", "--state", "completed", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["jobs"].as_array().unwrap().len(), 2, "--json keeps the API's page");
    let (_, out, _) = kiln(&["queues", "pause", "default"]);
    assert_eq!(out, "queue default paused: no job of it starts until `kiln queues resume default`\n");
    assert_eq!(host.get("/queues").1["queues"][0]["paused"], true);
    let waiting = host.enqueue(json!({"kind": "echo", "payload": 1}));
    let (_, out, _) = kiln(&["jobs", "cancel", &waiting.to_string()]);
    assert!(out.starts_with(&format!("cancelled job {waiting} (echo, queue default): now cancelled")), "{out}");
    let (_, out, _) = kiln(&["jobs", "retry", &waiting.to_string()]);
    assert!(out.starts_with(&format!("retried job {waiting} (echo, queue default): now available")), "{out}");
    let (_, out, _) = kiln(&["queues", "resume", "default", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"name": "default", "paused": false}));
    host.wait_for(waiting, "completed");
    let (code, _, err) = kiln(&["enqueue", "nope"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("400 Bad Request: unknown job kind \"nope\""), "{err}");
    let (code, _, err) = kiln(&["jobs", "cancel", &id.to_string()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("409") && err.contains("is completed; cannot cancel"), "{err}");
}

#[test]
fn jobs_list_is_a_table_newest_first_with_paging() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let kiln = |args: &[&str]| {
        let (code, stdout, stderr) = cli(&host, args);
        assert_eq!(code, Some(0), "{stderr}");
        stdout
    };
    let dead = host.enqueue(json!({"kind": "send-email", "payload": {"to": "not-an-address", "subject": "x"}}));
    host.wait_for(dead, "dead");
    let ids: Vec<i64> = (0..5).map(|i| host.enqueue(json!({"kind": "echo", "payload": i}))).collect();
    for id in &ids {
        host.wait_for(*id, "completed");
    }
    let table = kiln(&["jobs", "list", "--limit", "3"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("STATE") && lines[0].contains("LAST ERROR"), "{table}");
    let shown: Vec<i64> = lines[1..4].iter().map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(shown, [ids[4], ids[3], ids[2]], "newest first: {table}");
    assert!(lines[1].contains("echo") && lines[1].contains("completed") && lines[1].contains("1/"), "{table}");
    assert_eq!(lines[4], format!("more: kiln jobs list --before {}", ids[2]), "{table}");
    let next = kiln(&["jobs", "list", "--limit", "3", "--before", &ids[2].to_string()]);
    let shown: Vec<i64> = next.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(shown, [ids[1], ids[0], dead], "the next page: {next}");
    assert!(!next.contains("more:"), "the last page says no more: {next}");
    let dead_only = kiln(&["jobs", "list", "--state", "dead"]);
    assert_eq!(dead_only.lines().count(), 2, "{dead_only}");
    assert!(dead_only.contains("dead") && dead_only.contains("not an email address"), "the last error shows: {dead_only}");
    assert_eq!(kiln(&["jobs", "list", "--state", "cancelled"]), "no jobs\n");
    let (status, body) = host.get("/jobs?order=sideways");
    assert_eq!(status, 400, "{body}");

    // Every dead job at once.
    let more_dead: Vec<i64> =
        (0..2).map(|_| host.enqueue(json!({"kind": "send-email", "payload": {"to": "nobody", "subject": "x"}}))).collect();
    for id in &more_dead {
        host.wait_for(*id, "dead");
    }
    let answer: Value = serde_json::from_str(&kiln(&["jobs", "retry", "--all-dead", "--kind", "send-email", "--json"])).unwrap();
    assert_eq!((answer["retried"].as_u64(), answer["more"].as_bool()), (Some(3), Some(false)), "{answer}");
    for id in more_dead.iter().chain([&dead]) {
        eventually("each runs again", || host.job(*id)["attempt"] == 2);
        assert_eq!(host.wait_for(*id, "dead")["errors"].as_array().unwrap().len(), 2);
    }
    let (status, body) = host.post("/jobs/retry?state=completed", &json!(null));
    assert_eq!(status, 400, "only dead jobs are retried in bulk: {body}");

    // Dead jobs deleted: one, then the rest at once; nothing else goes.
    let out = kiln(&["jobs", "delete", &dead.to_string()]);
    assert!(out.starts_with(&format!("deleted job {dead} (send-email, queue default): now dead, attempt 2/")), "{out}");
    assert_eq!(host.get(&format!("/jobs/{dead}")).0, 404);
    let (code, _, err) = cli(&host, &["jobs", "delete", &ids[0].to_string()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("409") && err.contains("is completed; cannot delete it"), "{err}");
    let (status, body) = host.delete("/jobs?state=completed");
    assert_eq!(status, 400, "only dead jobs are deleted in bulk: {body}");
    assert_eq!(kiln(&["jobs", "delete", "--all-dead"]), "deleted 2 dead jobs\n");
    for id in &more_dead {
        assert_eq!(host.get(&format!("/jobs/{id}")).0, 404);
    }
    assert_eq!(kiln(&["jobs", "list", "--state", "dead"]), "no jobs\n");
    assert_eq!(host.get("/jobs?state=completed").1["jobs"].as_array().unwrap().len(), 5, "completed jobs stay");
}

#[test]
fn every_run_end_is_one_log_line_saying_how_it_ended_and_what_it_cost() {
    let dir = HostDir::new(FAST);
    let host = dir.start();
    // Idle for longer than half a lease (1.5 s) first: the first beat
    // after an idle spell is not "late".
    std::thread::sleep(Duration::from_millis(1200));
    let ok = host.enqueue(json!({"kind": "send-email", "payload": {"to": "a@b.co", "subject": "s", "send_ms": 1200}}));
    host.wait_for(ok, "completed");
    let retried = host.enqueue(json!({"kind": "flaky", "payload": {"fail_attempts": 1}}));
    host.wait_for(retried, "completed");
    let dead = host.enqueue(json!({"kind": "send-email", "payload": {"to": "not-an-address", "subject": "x"}}));
    host.wait_for(dead, "dead");
    assert_eq!(host.post(&format!("/jobs/{dead}/retry"), &json!(null)).0, 200);
    eventually("the hand retry is logged", || host.stderr().contains("job retried by hand"));

    let log = host.stderr();
    let lines_of = |id: i64| -> Vec<&str> {
        log.lines().filter(|l| l.contains(&format!(" job={id} ")) && l.contains("kiln::worker::run")).collect()
    };
    let completed = lines_of(ok);
    assert_eq!(completed.len(), 1, "one line for one run: {completed:?}");
    for field in ["INFO", "job completed", "kind=send-email", "attempt=1", "outcome=ok", "duration_ms=", "fuel=", "memory_bytes="] {
        assert!(completed[0].contains(field), "{field} in {}", completed[0]);
    }
    let flaky = lines_of(retried);
    assert_eq!(flaky.len(), 2, "{flaky:?}");
    assert!(flaky[0].contains("WARN") && flaky[0].contains("job failed; it will be retried") && flaky[0].contains("retry_at=20"), "{}", flaky[0]);
    assert!(flaky[1].contains("INFO") && flaky[1].contains("job completed") && flaky[1].contains("attempt=2"), "{}", flaky[1]);
    let dead_line = lines_of(dead);
    assert!(dead_line[0].contains("ERROR") && dead_line[0].contains("job dead-lettered") && dead_line[0].contains("not an email address"), "{dead_line:?}");
    assert!(!log.contains("heartbeat late"), "an idle spell is not a late heartbeat:\n{log}");
    for leak in ["QueueConfig {", "Skip", "RunOnce", "StopHost", "Startup", "cache=Hit"] {
        assert!(!log.contains(leak), "Rust debug text {leak:?} in the log:\n{log}");
    }
}

#[test]
fn finished_jobs_are_pruned_past_their_retention_by_age_and_by_count_and_dead_ones_wait_their_own() {
    let config = format!("{FAST}\n[retention]\ncompleted_after_ms = 1500\ndead_after_ms = 3600000\nmax_per_queue = 3\ninterval_ms = 200\n");
    let dir = HostDir::new(&config);
    dir.add_plugin("boom", crate::support::built::PANIC, "name = \"boom\"\nversion = \"1\"\n[retry]\nmax_attempts = 1\n");
    let host = dir.start();
    let dead = host.enqueue(json!({"kind": "boom"}));
    host.wait_for(dead, "dead");
    let ids: Vec<i64> = (0..6).map(|i| host.enqueue(json!({"kind": "echo", "payload": i}))).collect();
    for id in &ids {
        host.wait_for(*id, "completed");
    }
    // By count first: only the newest three completed stay (of the queue's).
    eventually("the oldest completed are pruned past max_per_queue", || host.jobs_in("completed").len() <= 3);
    let kept: Vec<i64> = host.jobs_in("completed").iter().map(|j| j["id"].as_i64().unwrap()).collect();
    assert!(kept.iter().all(|id| ids[3..].contains(id)), "the newest are the ones kept: {kept:?} of {ids:?}");
    assert_eq!(host.get(&format!("/jobs/{}", ids[0])).0, 404, "a pruned job is gone");
    // Then by age: all of them, 1.5 s after they finished.
    eventually("completed jobs are pruned after completed_after_ms", || host.jobs_in("completed").is_empty());
    assert_eq!(host.get(&format!("/jobs/{dead}")).1["state"], "dead", "a dead job waits its own, longer retention");
}

