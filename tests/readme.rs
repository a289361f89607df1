//! The README's first screen, followed literally: its commands are parsed
//! out of README.md (not copied here) and run against the real binary. The
//! job the example enqueues is the job it then reads, and it completes.

use crate::support::host::{PATIENCE, eventually};
use crate::support::{kiln, repo_root};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The ```sh blocks of README.md, in order.
fn shell_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start().starts_with("```")) {
            (None, true) if line.trim() == "```sh" => current = Some(String::new()),
            (Some(block), true) => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), false) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

fn commands(block: &str) -> Vec<&str> {
    block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

#[test]
fn the_readme_first_screen_enqueues_a_job_and_reads_that_same_job() {
    let blocks = shell_blocks();
    let setup = commands(&blocks[0]);
    assert_eq!(setup.len(), 2, "exactly two set-up commands: {setup:?}");
    assert_eq!(setup[1], "cargo test", "the second runs the tests");
    // The first builds and runs `kiln` with what follows `--`: run the
    // built binary with those arguments (and a free port for the test).
    let (build, args) = setup[0].split_once(" -- ").expect("`cargo run ... -- ARGS`");
    assert!(build.starts_with("cargo run"), "{build}");
    let dir = tempfile::tempdir().unwrap();
    let mut host = kiln()
        .current_dir(dir.path())
        .args(args.split_whitespace())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = host.stdout.take().unwrap();
    let url = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on ").map(str::to_string))
        .expect("kiln serve listens");
    let address = url.trim_start_matches("http://");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    eventually("ready", || agent.get(&format!("{url}/readyz")).call().is_ok_and(|r| r.status() == 200));

    // The example, as written, against this host's address.
    let example = blocks[1].replace("localhost:8080", address);
    assert_ne!(example, blocks[1], "the example talks to localhost:8080");
    let started = Instant::now();
    let output = Command::new("sh").arg("-ec").arg(&example).output().unwrap();
    assert!(output.status.success(), "the example failed: {}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout);
    let job: Value = serde_json::from_str(printed.trim()).unwrap_or_else(|e| panic!("{e}: {printed}"));
    assert_eq!(job["kind"], "send-email", "the example reads the job it enqueued: {job}");
    assert_eq!(job["payload"]["to"], "ada@example.com", "{job}");
    let id = job["id"].as_i64().unwrap();
    // It completes (the example may look before it has).
    loop {
        let mut response = agent.get(&format!("{url}/jobs/{id}")).call().unwrap();
        let job: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        if job["state"] == "completed" {
            assert_eq!(job["result"]["sent_to"], "ada@example.com", "{job}");
            assert_eq!(job["result"]["status"], 202, "posted to the mail API the host runs for its examples: {job}");
            break;
        }
        assert!(started.elapsed() < PATIENCE, "job {id} never completed: {job}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = host.kill();
    let _ = host.wait();
}
