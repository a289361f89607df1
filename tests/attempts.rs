//! A job's history over the real `kiln serve`: every attempt kept with its
//! host, version, cost and own log lines (capped), progress reaching the
//! store with the heartbeat, and the CLI's `jobs logs` and `jobs watch`.

use crate::support::host::{HostDir, eventually};
use crate::serve::cli;
use crate::support::built;
use serde_json::{Value, json};

const FAST: &str = "lease_ms = 1500\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\ncancel_grace_ms = 500\n\n[queues.default]\nconcurrency = 4\n";

fn messages(lines: &Value) -> Vec<String> {
    lines["lines"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_job_failing_twice_shows_three_attempts_each_with_its_own_lines_and_the_cap_holds() {
    let dir = HostDir::new(FAST);
    dir.link_plugin(built::LOG_FLOOD);
    dir.link_plugin(built::HUGE_LOG);
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "flaky", "payload": {"fail_attempts": 2, "log_lines": 10}}));
    let job = host.wait_for(id, "completed");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.iter().map(|a| a["outcome"].as_str().unwrap()).collect::<Vec<_>>(), ["retry", "retry", "ok"], "{job}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1);
        assert!(a["host"].as_str().is_some_and(|h| h.ends_with(&format!("-{}", host.pid()))), "the host that ran it: {a}");
        assert_eq!(a["plugin_version"], "0.1.0");
        let (started, ended) = (crate::support::millis(a["started_at"].as_str().unwrap()), crate::support::millis(a["ended_at"].as_str().unwrap()));
        assert!(started <= ended, "{a}");
        assert!(a["duration_ms"].as_f64().unwrap() > 0.0 && a["fuel_used"].as_u64().unwrap() > 0 && a["peak_memory_bytes"].as_u64().unwrap() > 0, "{a}");
        assert_eq!((a["http_requests"].as_u64(), a["log_bytes_dropped"].as_u64()), (Some(0), Some(0)));
    }
    assert!(attempts[0]["error"].as_str().unwrap().contains("upstream unavailable (attempt 1)"), "{}", attempts[0]);
    assert!(attempts[2]["error"].is_null());
    assert!(crate::support::millis(attempts[1]["started_at"].as_str().unwrap()) >= crate::support::millis(attempts[0]["ended_at"].as_str().unwrap()));

    // Each attempt's own ten lines, in order, from both sources.
    for n in 1..=3 {
        let (status, lines) = host.get(&format!("/jobs/{id}/logs?attempt={n}"));
        assert_eq!(status, 200, "{lines}");
        let want: Vec<String> = (0..10).map(|i| format!("attempt {n} line {i}")).collect();
        assert_eq!(messages(&lines), want);
        let sources: Vec<&str> = lines["lines"].as_array().unwrap().iter().map(|l| l["source"].as_str().unwrap()).collect();
        assert_eq!(&sources[..2], ["log", "stdout"]);
        assert!(lines["lines"].as_array().unwrap().iter().all(|l| l["attempt"] == n && l["level"] == "info" && l["at"].is_string()));
    }
    let (_, all) = host.get(&format!("/jobs/{id}/logs"));
    assert_eq!(messages(&all).len(), 30, "every attempt's lines");
    assert_eq!(all["more"], false, "all of them fit one answer");
    // No such attempt, a bad one, another job's: clear answers.
    assert_eq!(host.get(&format!("/jobs/{id}/logs?attempt=4")).0, 404);
    assert_eq!(host.get(&format!("/jobs/{id}/logs?attempt=0")).0, 404);
    let (status, body) = host.get(&format!("/jobs/{id}/logs?attempt=two"));
    assert!(status == 400 && body["error"].as_str().unwrap().contains("attempt"), "{status} {body}");
    assert_eq!(host.get(&format!("/jobs/{}/logs", id + 1000)).0, 404);

    let (code, out, err) = cli(&host, &["jobs", "logs", &id.to_string(), "--attempt", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 10, "{out}");
    assert!(out.lines().all(|l| l.starts_with("[attempt 2] ") && l.contains("attempt 2 line")), "{out}");
    let (_, shown, _) = cli(&host, &["jobs", "show", &id.to_string()]);
    assert!(shown.contains("attempt 1 retry on ") && shown.contains("attempt 3 ok on "), "{shown}");

    // A flood is kept up to the cap, and what was dropped is counted.
    let flood = host.enqueue(json!({"kind": "log-flood"}));
    let job = host.wait_for(flood, "completed");
    let (_, lines) = host.get(&format!("/jobs/{flood}/logs"));
    let kept: usize = messages(&lines).iter().map(String::len).sum();
    assert!(kept <= 64 << 10, "kept {kept} bytes of log, past the 64 KiB cap");
    assert!(kept > 32 << 10, "the cap's worth is kept: {kept} bytes");
    assert!(job["attempts"][0]["log_bytes_dropped"].as_u64().unwrap() > 1 << 20, "{job}");
    // A 50 MiB line is kept as its first 4 KiB.
    let huge = host.enqueue(json!({"kind": "huge-log"}));
    host.wait_for(huge, "completed");
    let (_, lines) = host.get(&format!("/jobs/{huge}/logs"));
    assert!(messages(&lines).iter().all(|m| m.len() <= 4 << 10), "no line past 4 KiB");
}

#[test]
fn with_logs_off_attempts_are_kept_without_their_lines_and_with_records_off_errors_still_show() {
    let dir = HostDir::new(&format!("{FAST}\n[attempts]\nlogs = false\n"));
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "flaky", "payload": {"fail_attempts": 1, "log_lines": 4}}));
    let job = host.wait_for(id, "completed");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 2, "{job}");
    assert!(job["attempts"][1]["fuel_used"].as_u64().unwrap() > 0);
    assert!(messages(&host.get(&format!("/jobs/{id}/logs")).1).is_empty(), "no lines kept");
    drop(host);

    let dir = HostDir::new(&format!("{FAST}\n[attempts]\nrecord = false\n"));
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "flaky", "payload": {"fail_attempts": 1, "log_lines": 4}}));
    let job = host.wait_for(id, "completed");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "only the failed attempt's error says anything: {job}");
    assert_eq!((attempts[0]["outcome"].as_str(), attempts[0]["host"].as_str()), (Some("retry"), None));

    let bad = HostDir::new("[attempts]\nlog = false\n").run_to_exit().1;
    assert!(bad.contains("log") && bad.contains("kiln.toml"), "an unknown key is named: {bad}");
}

#[test]
fn progress_reaches_the_store_with_the_heartbeat_and_the_cli_follows_the_job() {
    // A heartbeat every 500 ms; the job reports progress for 4 s.
    let dir = HostDir::new(FAST);
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "send-email", "payload": {"to": "ada@example.com", "subject": "slow", "send_ms": 4000}}));
    let follow = {
        let mut follow = crate::support::kiln();
        follow.args(["jobs", "logs", &id.to_string(), "--follow"]).env("KILN_API", &host.url);
        std::thread::spawn(move || follow.output().unwrap())
    };
    let mut seen = Vec::new();
    eventually("progress while the job runs", || {
        let job = host.job(id);
        if let Some(p) = job["progress"]["percent"].as_u64() {
            if job["state"] == "running" {
                seen.push(p);
            }
        }
        seen.iter().any(|&p| (1..100).contains(&p))
    });
    assert!(host.job(id)["attempts"][0]["outcome"] == "running", "the attempt under way shows");

    let (code, _, watched) = cli(&host, &["jobs", "watch", &id.to_string()]);
    assert_eq!(code, Some(0), "{watched}");
    let lines: Vec<&str> = watched.lines().collect();
    assert!(lines.last().unwrap().starts_with(&format!("job {id}: completed")), "{watched}");
    assert!(lines.iter().any(|l| l.contains("running") && l.contains('%')), "progress shown: {watched}");
    let job = host.job(id);
    assert_eq!(job["progress"]["percent"], 100, "the last progress is written with the end: {job}");

    let followed = follow.join().unwrap();
    assert!(followed.status.success(), "{}", String::from_utf8_lossy(&followed.stderr));
    let out = String::from_utf8_lossy(&followed.stdout);
    assert!(out.contains("[attempt 1]") && out.contains("sent to ada@example.com"), "{out}");

    // A dead job: watch exits 1 and says why.
    let dead = host.enqueue(json!({"kind": "send-email", "payload": {"to": "nobody", "subject": "x"}}));
    host.wait_for(dead, "dead");
    let (code, _, watched) = cli(&host, &["jobs", "watch", &dead.to_string()]);
    assert_eq!(code, Some(1));
    assert!(watched.contains("dead") && watched.contains("not an email address"), "{watched}");
}
