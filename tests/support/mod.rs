//! What the end-to-end tests start, by what it is: the `kiln` binary for
//! one command (here), a running `kiln serve` ([`host`]), a Postgres
//! schema of a test's own ([`postgres`]), an HTTP server for plugins to
//! reach ([`http_server`]), a headless browser ([`browser`]).

pub mod browser;
pub mod host;
pub mod http_server;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use kiln::plugin::built;

/// The repository root (the tests run from any directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `kiln` binary with a test-local artifact cache.
pub fn kiln() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    with_test_env(&mut cmd);
    cmd
}

/// What every `kiln` a test starts runs with: from the repository root,
/// a test-local artifact cache, none of the caller's plugins or keys.
pub fn with_test_env(cmd: &mut Command) -> &mut Command {
    cmd.current_dir(repo_root())
        .env("KILN_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-test-cache"))
        .env_remove("KILN_PLUGINS_DIR")
        .env_remove("KILN_API_KEY")
        .env("KILN_LOG", "warn")
}

/// What one `kiln run --json` printed, and how it exited.
#[derive(Debug)]
pub struct RunResult {
    pub code: i32,
    pub json: serde_json::Value,
    pub stderr: String,
}

impl RunResult {
    pub fn outcome(&self) -> &str {
        self.json["outcome"].as_str().unwrap_or_else(|| panic!("no outcome in {}", self.json))
    }

    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

/// Runs `kiln run <plugin> --json <args...>` and parses its report.
pub fn run_json(plugin: &str, args: &[&str]) -> RunResult {
    let output = kiln().arg("run").arg(plugin).arg("--json").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("kiln run {plugin} did not print JSON ({e}); stdout: {stdout}; stderr: {stderr}"));
    RunResult { code: output.status.code().unwrap_or(-1), json, stderr }
}

/// Runs kiln with `args`, expecting it to refuse them: exit code 2, and
/// returns stderr.
pub fn refused(args: &[&str]) -> String {
    let Output { status, stdout, stderr } = kiln().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert_eq!(status.code(), Some(2), "kiln {args:?} should be refused; stdout: {}; stderr: {stderr}", String::from_utf8_lossy(&stdout));
    assert!(stdout.is_empty(), "a refused command prints no report");
    stderr
}

/// The component file inside a built plugin directory.
pub fn wasm_of(plugin_dir: &str) -> PathBuf {
    let dir = Path::new(plugin_dir);
    dir.join(format!("{}.wasm", dir.file_name().unwrap().to_string_lossy()))
}

/// Parses an RFC 3339 time from the API into milliseconds.
pub fn millis(rfc3339: &str) -> i64 {
    kiln::queue::from_rfc3339(rfc3339).unwrap()
}

/// Asserts that each of `got` contains the text `want` has at its place, and
/// that there are as many of each.
pub fn assert_each_says(got: &[String], want: &[&str]) {
    for (got, want) in got.iter().zip(want) {
        assert!(got.contains(want), "{got}\n  should say: {want}");
    }
    assert_eq!(got.len(), want.len(), "{got:?}");
}

/// A fresh API key and its hash, from `kiln keys new --json`.
pub fn new_api_key() -> (String, String) {
    let out = kiln().args(["keys", "new", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (made["key"].as_str().unwrap().to_string(), made["hash"].as_str().unwrap().to_string())
}
