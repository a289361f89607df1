//! A real `kiln serve` for the benchmarks: this build's binary in a
//! temporary directory of its own (`kiln.toml`, `data/`, and `plugins/`
//! holding links to built plugin directories), its API address read from
//! its stdout, killed when dropped. Each bench uses the parts it needs.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ServedHost {
    child: Child,
    pub url: String,
    agent: ureq::Agent,
    dir: tempfile::TempDir,
}

impl Drop for ServedHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServedHost {
    /// Serves `plugins` (built plugin directories, linked by their names)
    /// with `config` as `kiln.toml`; returns once the API listens and the
    /// host is ready (start-up plugins have run).
    pub fn start(config: &str, plugins: &[&Path]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kiln.toml"), config).unwrap();
        let plugins_dir = dir.path().join("plugins");
        std::fs::create_dir(&plugins_dir).unwrap();
        for plugin in plugins {
            std::os::unix::fs::symlink(plugin, plugins_dir.join(plugin.file_name().unwrap())).unwrap();
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data", "--plugins-dir", "plugins", "--config", "kiln.toml"])
            .env("KILN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let url = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening on ").map(str::to_string))
            .expect("kiln serve did not start");
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_idle_connections(0).build().into();
        let host = Self { child, url, agent, dir };
        let started = Instant::now();
        while host.get("/readyz").0 != 200 {
            assert!(started.elapsed() < Duration::from_secs(120), "the host never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The plugins directory it serves.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut response = self.agent.get(&format!("{}{path}", self.url)).call().unwrap();
        let status = response.status().as_u16();
        (status, serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut response = self.agent.post(&format!("{}{path}", self.url)).send_json(body).unwrap();
        let status = response.status().as_u16();
        (status, serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
    }
}
