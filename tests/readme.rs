//! The README and the pages of `docs/`, followed literally: their commands
//! are parsed out of the Markdown (not copied here) and run against the
//! real binary. The README's first screen starts a host and enqueues the
//! job it then reads; every other ```` ```sh ```` block of every page runs
//! too, and every link between the pages leads somewhere.

use crate::support::host::{PATIENCE, eventually};
use crate::support::{kiln, repo_root, with_test_env};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The ```sh blocks of README.md, in order.
fn shell_blocks() -> Vec<String> {
    shell_blocks_of(&std::fs::read_to_string(repo_root().join("README.md")).unwrap())
}

/// The ```sh blocks of one Markdown text, in order.
fn shell_blocks_of(readme: &str) -> Vec<String> {
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

/// README.md, ARCHITECTURE.md and every page of `docs/`, with their paths.
fn pages() -> Vec<(PathBuf, String)> {
    let root = repo_root();
    let mut paths = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> =
        std::fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    docs.sort();
    paths.extend(docs);
    paths.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

/// The commands of a block, a line each (a line ending in `\` goes on).
fn command_lines(block: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(more) => current.push_str(more),
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

#[test]
fn every_shell_block_of_the_docs_runs_and_no_command_is_refused() {
    // `kiln` as the pages write it: the binary under test, first on the PATH.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for (page, text) in pages().iter().filter(|(p, _)| p.parent().is_some_and(|d| d.ends_with("docs"))) {
        for block in shell_blocks_of(text) {
            for line in command_lines(&block) {
                let mut shell = Command::new("sh");
                shell.arg("-c").arg(&line);
                let output = with_test_env(&mut shell).env("PATH", &path).output().unwrap();
                // 1 is a run that did not end `ok` (a page shows one on purpose); 2 and up is a refusal.
                let code = output.status.code().unwrap_or(-1);
                assert!(
                    (0..=1).contains(&code),
                    "{}: `{line}` exited {code}: {}{}",
                    page.display(),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                ran += 1;
            }
        }
    }
    assert!(ran >= 4, "the docs' commands ran ({ran})");
}

/// A heading as GitHub makes its anchor: lower case, punctuation but `-`
/// and `_` dropped, spaces as `-`.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_link_between_the_pages_leads_to_a_file_and_a_heading_that_are_there() {
    let link = regex_lite_links();
    let mut checked = 0;
    for (page, text) in pages() {
        let dir = page.parent().unwrap();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            if in_code {
                continue;
            }
            for target in link(line) {
                if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
                let file = if file.is_empty() { page.clone() } else { dir.join(file) };
                assert!(file.exists(), "{}: the link to {target} leads to no file", page.display());
                if !anchor.is_empty() {
                    let there = std::fs::read_to_string(&file).unwrap();
                    let found = there.lines().filter_map(|l| l.strip_prefix('#')).any(|h| anchor_of(h.trim_start_matches('#')) == anchor);
                    assert!(found, "{}: the link to {target} names no heading of {}", page.display(), file.display());
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "links were found ({checked})");
}

/// The targets of a line's Markdown links and images, `[text](target)`.
fn regex_lite_links() -> impl Fn(&str) -> Vec<String> {
    |line: &str| {
        let mut targets = Vec::new();
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            match after.find(')') {
                Some(end) => {
                    targets.push(after[..end].to_string());
                    rest = &after[end..];
                }
                None => break,
            }
        }
        targets
    }
}
