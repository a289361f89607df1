//! A running `kiln serve` for end-to-end tests: its own data directory and
//! plugins directory, its API address read from its stdout, stopped by
//! SIGTERM, `kill -9`, or dropping it.

use crate::support::built;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for something the host should do in well under a
/// second: generous, because the machine is shared and the build is debug.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The queued plugins a test host serves (the scheduled, continuous and
/// start-up examples are added by the tests about them, with fast timings).
const PLUGINS: &[&str] = &[built::ECHO, built::SEND_EMAIL, built::FLAKY, built::SPIN, built::IGNORE_CANCEL];

/// A directory for one host: `kiln.toml`, `data/`, `plugins/`, `stderr.log`.
pub struct HostDir {
    pub dir: tempfile::TempDir,
}

impl HostDir {
    /// `config` is written as `kiln.toml`; `[queues.default]` and fast
    /// timings are the caller's to choose.
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kiln.toml"), config).unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        for plugin in PLUGINS {
            let name = Path::new(plugin).file_name().unwrap();
            std::os::unix::fs::symlink(plugin, plugins.join(name)).unwrap();
        }
        // Share compiled plugins across tests (writes are atomic renames).
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let shared = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-serve-artifacts");
        std::fs::create_dir_all(&shared).unwrap();
        std::os::unix::fs::symlink(&shared, data.join("artifacts")).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn plugins(&self) -> PathBuf {
        self.path().join("plugins")
    }

    /// Serves the built plugin directory `built` (by a link) as well.
    pub fn link_plugin(&self, built: &str) {
        let name = Path::new(built).file_name().unwrap();
        std::os::unix::fs::symlink(built, self.plugins().join(name)).unwrap();
    }

    /// Installs the component of the built plugin `built` as plugin `name`
    /// with `manifest` (whose `name` should be `name`).
    pub fn add_plugin(&self, name: &str, built: &str, manifest: &str) {
        let dir = self.plugins().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(crate::support::wasm_of(built), dir.join(format!("{name}.wasm"))).unwrap();
        std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    }

    /// Starts `kiln serve` expecting it to exit on its own; returns its exit
    /// code and stderr.
    pub fn run_to_exit(&self) -> (Option<i32>, String) {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(self.path().join("stderr.log")).unwrap();
        let mut child = self.command().stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), self.stderr());
            }
            if started.elapsed() > PATIENCE {
                let _ = child.kill();
                panic!("kiln serve did not exit; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn database(&self) -> PathBuf {
        self.path().join("data/kiln.db")
    }

    /// The `kiln serve` command for this directory, not yet started.
    pub fn command(&self) -> Command {
        let mut cmd = crate::support::kiln();
        cmd.current_dir(self.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data", "--plugins-dir", "plugins", "--config", "kiln.toml"])
            .env("KILN_LOG", "info");
        cmd
    }

    /// Starts `kiln serve` and waits until its API listens.
    pub fn start(&self) -> Host {
        self.start_within(PATIENCE)
    }

    /// [`HostDir::start`], waiting up to `patience` for the API: a host
    /// that first compiles large plugins (JavaScript, Python) listens
    /// only after it.
    pub fn start_within(&self, patience: Duration) -> Host {
        Host::spawn_within(self.command(), &self.path().join("stderr.log"), patience)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.path().join("stderr.log")).unwrap_or_default()
    }
}

pub struct Host {
    child: Option<Child>,
    pub url: String,
    agent: ureq::Agent,
    log: PathBuf,
}

impl Host {
    /// Starts `serve` (a `kiln serve` command), its stderr appended to
    /// `log`, and waits until its API listens.
    pub fn spawn(serve: Command, log: &Path) -> Host {
        Self::spawn_within(serve, log, PATIENCE)
    }

    /// [`Host::spawn`], waiting up to `patience` for the API.
    pub fn spawn_within(mut serve: Command, log: &Path, patience: Duration) -> Host {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = serve.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(patience)
            .unwrap_or_else(|_| panic!("kiln serve did not start; stderr:\n{}", std::fs::read_to_string(log).unwrap_or_default()));
        // A fresh connection per request: a kept-alive one can be closed by
        // the server just as the next request goes out on it (CI once saw
        // "Peer disconnected" on the request after a body-less POST), and
        // ureq does not retry. Loopback connections cost next to nothing.
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).max_idle_connections(0).build().into();
        Host { child: Some(child), url, agent, log: log.to_path_buf() }
    }

    fn answer(mut response: http::Response<ureq::Body>) -> (u16, Value) {
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::answer(self.agent.get(&format!("{}{path}", self.url)).call().unwrap())
    }

    pub fn get_text(&self, path: &str) -> String {
        self.agent.get(&format!("{}{path}", self.url)).call().unwrap().body_mut().read_to_string().unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::answer(self.agent.post(&format!("{}{path}", self.url)).send_json(body).unwrap())
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::answer(self.agent.put(&format!("{}{path}", self.url)).send_json(body).unwrap())
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        Self::answer(self.agent.delete(&format!("{}{path}", self.url)).call().unwrap())
    }

    /// The live plugin `name` as `GET /plugins` shows it.
    pub fn plugin(&self, name: &str) -> Option<Value> {
        let (status, body) = self.get("/plugins");
        assert_eq!(status, 200, "{body}");
        body["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned()
    }

    /// Every job of `kind` (first 10,000), oldest first.
    pub fn jobs_of(&self, kind: &str) -> Vec<Value> {
        let mut jobs = Vec::new();
        let mut after = String::new();
        loop {
            let (status, body) = self.get(&format!("/jobs?kind={kind}&limit=1000{after}"));
            assert_eq!(status, 200, "{body}");
            jobs.extend(body["jobs"].as_array().unwrap().iter().cloned());
            match body["next_after"].as_i64() {
                Some(id) if jobs.len() < 10_000 => after = format!("&after={id}"),
                _ => return jobs,
            }
        }
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        Self::answer(self.agent.post(&format!("{}{path}", self.url)).content_type("application/json").send(body).unwrap())
    }

    /// Enqueues one job; returns its id.
    pub fn enqueue(&self, job: Value) -> i64 {
        let (status, body) = self.post("/jobs", &job);
        assert_eq!(status, 201, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub fn job(&self, id: i64) -> Value {
        let (status, body) = self.get(&format!("/jobs/{id}"));
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until job `id` is in `state`; returns the job.
    pub fn wait_for(&self, id: i64, state: &str) -> Value {
        let started = Instant::now();
        loop {
            let job = self.job(id);
            if job["state"] == state {
                return job;
            }
            assert!(started.elapsed() < PATIENCE, "job {id} never became {state}: {job}\nhost log:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// All jobs (first 1000) in `state`.
    pub fn jobs_in(&self, state: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/jobs?state={state}&limit=1000"));
        assert_eq!(status, 200, "{body}");
        body["jobs"].as_array().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }


    /// The agent this host's requests go through (for other threads).
    pub fn agent(&self) -> ureq::Agent {
        self.agent.clone()
    }

    /// The process id; a host's default name in leases ends with `-PID`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns its status and how long it took.
    pub fn sigterm(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().unwrap();
        let sent = Instant::now();
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            assert!(sent.elapsed() < PATIENCE * 2, "kiln serve did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `condition` holds.
/// Waits until job `id` (whose run sleeps until its deadline) runs on
/// `host`, kills the host with `kill -9` mid-run, restarts it from `dir`,
/// and waits until the rescued job has used its attempts; returns the new
/// host and the job, whose first error is the lease that ran out.
pub fn kill_mid_run_and_restart(dir: &HostDir, mut host: Host, id: i64) -> (Host, Value) {
    host.wait_for(id, "running");
    std::thread::sleep(Duration::from_millis(300));
    host.kill9();
    let host = dir.start();
    let job = host.wait_for(id, "dead");
    assert_eq!(job["errors"][0]["outcome"], "lease_expired", "{job}");
    (host, job)
}

pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
