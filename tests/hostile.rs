//! Hostile plugins against the real `kiln serve`, each next to a stream of
//! well-behaved `echo` jobs: the host stays up and answers `/healthz`, the
//! bad job ends in the right state with a bounded, clear error, every
//! neighbour completes, and nothing stored is unbounded. Outcomes are
//! asserted, never timings (`cargo bench --bench hostile` measures those).

use crate::support::host::{Host, HostDir, PATIENCE, eventually};
use crate::support::built;
use base64::Engine as _;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SETTINGS: &str = "lease_ms = 3000\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\ncancel_grace_ms = 500\n";
const QUEUES: &str = "[queues.default]\nconcurrency = 4\n";

/// The most a job's JSON may take when everything a plugin handed back is
/// bounded: a payload, a 4 KiB message per attempt, the rest small.
const SMALL_JOB_BYTES: usize = 32 << 10;

/// A host serving the usual test plugins plus `hostile`; `extra_config`
/// (top-level keys first, then tables) goes between the fast settings and
/// the queue.
fn host_with(hostile: &[&str], extra_config: &str) -> (HostDir, Host) {
    let dir = HostDir::new(&format!("{SETTINGS}{extra_config}\n{QUEUES}"));
    for plugin in hostile {
        dir.link_plugin(plugin);
    }
    let host = dir.start();
    (dir, host)
}

/// Echo jobs enqueued every few milliseconds while a bad plugin runs, and
/// `/healthz` asked between them.
struct Neighbours {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Vec<i64>, usize)>>,
}

impl Neighbours {
    fn start(host: &Host) -> Self {
        let (agent, url) = (host.agent(), host.url.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut health_checks = 0;
            let started = Instant::now();
            while !stopping.load(Ordering::SeqCst) && started.elapsed() < PATIENCE {
                let mut response =
                    agent.post(&format!("{url}/jobs")).send_json(json!({"kind": "echo", "payload": {"n": ids.len()}})).unwrap();
                assert_eq!(response.status(), 201, "a neighbour's enqueue was refused");
                let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
                ids.push(body["id"].as_i64().unwrap());
                let health = agent.get(&format!("{url}/healthz")).call().unwrap();
                assert_eq!(health.status(), 200, "/healthz failed while a hostile plugin ran");
                health_checks += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (ids, health_checks)
        });
        Self { stop, thread: Some(thread) }
    }

    /// Stops enqueueing and checks that every neighbour completed with its
    /// own payload as result, on its first attempt.
    fn all_complete(mut self, host: &Host) {
        self.stop.store(true, Ordering::SeqCst);
        let (ids, health_checks) = self.thread.take().unwrap().join().expect("the neighbour thread failed");
        assert!(!ids.is_empty() && health_checks > 0);
        for (n, id) in ids.iter().enumerate() {
            let job = host.wait_for(*id, "completed");
            assert_eq!(job["result"], json!({"n": n}), "{job}");
            assert_eq!(job["attempt"], 1, "a neighbour failed an attempt: {job}");
        }
        let (status, _) = host.get("/healthz");
        assert_eq!(status, 200);
    }
}

impl Drop for Neighbours {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `GET /jobs/{id}` as text: its size is what a client must hold.
fn job_text(host: &Host, id: i64) -> String {
    host.get_text(&format!("/jobs/{id}"))
}

fn wait_final(host: &Host, id: i64) -> Value {
    let started = Instant::now();
    loop {
        let job = host.job(id);
        if ["completed", "dead", "cancelled"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        assert!(started.elapsed() < PATIENCE, "job {id} did not finish: {job}\n{}", host.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn deploy(host: &Host, name: &str, manifest: &str, wasm: &[u8]) -> (u16, Value) {
    let body = json!({"manifest": manifest, "wasm_base64": base64::engine::general_purpose::STANDARD.encode(wasm)});
    host.put(&format!("/plugins/{name}"), &body)
}

#[test]
fn huge_error_messages_are_cut_before_they_are_stored() {
    let (_dir, host) = host_with(&[built::HUGE_ERROR], "");
    let neighbours = Neighbours::start(&host);
    let ids: Vec<(i64, &str)> = ["retry", "fatal", "invalid"]
        .into_iter()
        .map(|mode| (host.enqueue(json!({"kind": "huge-error", "payload": mode})), mode))
        .collect();
    for (id, mode) in ids {
        let job = host.wait_for(id, "dead");
        let text = job_text(&host, id);
        assert!(text.len() < SMALL_JOB_BYTES, "GET /jobs/{id} is {} bytes", text.len());
        let errors = job["errors"].as_array().unwrap();
        assert_eq!(errors.len(), if mode == "retry" { 2 } else { 1 }, "{text}");
        for error in errors {
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(&format!("huge {mode} message: eee")), "{message:.200}");
            let full = (50 << 20) + format!("huge {mode} message: ").len();
            assert!(message.contains(&format!("[cut: {full} bytes in all]")), "{message:.200}…");
            assert!(message.len() < 2 * kiln::sandbox::MAX_ERROR_MESSAGE_BYTES);
        }
        let expected = match mode {
            "retry" => "retry",
            "fatal" => "fatal",
            _ => "invalid_input",
        };
        assert_eq!(errors[0]["outcome"], expected);
    }
    neighbours.all_complete(&host);
    assert!(host.stderr().len() < 1 << 20, "the host's log grew by {} bytes", host.stderr().len());
}

#[test]
fn huge_log_lines_and_progress_notes_keep_only_a_bounded_prefix() {
    let (_dir, host) = host_with(&[built::HUGE_LOG], "");
    let neighbours = Neighbours::start(&host);
    let id = host.enqueue(json!({"kind": "huge-log"}));
    assert_eq!(host.wait_for(id, "completed")["result"], "logged");
    neighbours.all_complete(&host);
    let log = host.stderr();
    assert!(log.len() < 1 << 20, "the host's log grew by {} bytes", log.len());
    assert!(log.lines().all(|l| l.len() < 16 << 10), "a plugin log line reached the host log unbounded");

    // `kiln run` reports what was dropped: the whole 50 MiB line but its
    // first 4 KiB, and the megabyte of stdout past the per-run cap.
    let run = crate::support::run_json(built::HUGE_LOG, &[]);
    assert_eq!(run.outcome(), "ok", "{}", run.json);
    let dropped = run.json["log_bytes_dropped"].as_u64().unwrap();
    assert!(dropped >= (50 << 20) - 4096 + (1 << 20) - (64 << 10), "dropped {dropped}");
    let progress_note = run.json["logs"].as_array().unwrap().iter().find(|l| l["message"].as_str().unwrap().starts_with("progress 50%"));
    let note = progress_note.expect("the progress note is logged")["message"].as_str().unwrap().to_string();
    assert!(note.len() < 512 && note.contains("[cut: 52428800 bytes in all]"), "{note}");
}

#[test]
fn a_plugin_cannot_forge_lines_of_the_host_log() {
    let (_dir, host) = host_with(&[built::LOG_FORGE], "");
    let id = host.enqueue(json!({"kind": "log-forge"}));
    let job = host.wait_for(id, "dead");
    let message = job["errors"][0]["message"].as_str().unwrap();
    assert!(!message.contains('\n') && message.contains("failed\\n2026-12-01"), "{message}");
    eventually("the plugin's lines are logged", || host.stderr().contains("innocent"));
    let log = host.stderr();
    for line in log.lines() {
        assert!(!line.contains("FORGED") || line.contains("kiln::plugin") || line.contains(&format!("job={id}")), "forged: {line}");
        assert!(!line.starts_with("2026-12-01T00:00:00.000000Z"), "a plugin wrote a host log line: {line}");
        assert!(!line.contains('\x1b') && !line.contains('\r'), "a control character reached the host log: {line:?}");
    }
    assert!(log.contains("innocent\\n2026-12-01"), "newlines are shown escaped");
}

#[test]
fn absurd_retry_delays_are_capped_and_every_time_renders() {
    let (_dir, host) = host_with(&[built::FAR_RETRY], "");
    let neighbours = Neighbours::start(&host);
    for mode in ["1e15", "2^63", "max"] {
        let before = crate::support::millis(host.job(host.enqueue(json!({"kind": "echo"})))["created_at"].as_str().unwrap());
        let id = host.enqueue(json!({"kind": "far-retry", "payload": mode}));
        let job = host.wait_for(id, "retryable");
        let at = crate::support::millis(job["scheduled_at"].as_str().unwrap());
        // The manifest's max_backoff_ms is 60 s: the plugin gets no more.
        assert!(at > before + 50_000 && at < before + 70_000, "{mode}: retry at {} ({at} vs {before})", job["scheduled_at"]);
        let (status, page) = host.get("/jobs?limit=1000");
        assert_eq!(status, 200, "{page}");
        assert!(page["jobs"].as_array().unwrap().iter().any(|j| j["id"] == id));
    }
    neighbours.all_complete(&host);
}

#[test]
fn a_manifest_over_the_hosts_ceilings_is_refused_naming_key_and_ceiling() {
    let (dir, host) = host_with(&[built::GREEDY_MANIFEST, built::MIN_MEMORY], "");
    let neighbours = Neighbours::start(&host);
    assert!(host.plugin("greedy-manifest").is_none() && host.plugin("min-memory").is_none());
    let log = host.stderr();
    assert!(log.contains("`limits.fuel` is 9223372036854775807, over this host's ceiling of 100000000000 (`ceilings.fuel` in kiln.toml)"), "{log}");
    assert!(log.contains("declares a memory of 134217728 bytes to start with, more than the plugin's memory budget of 67108864"), "{log}");

    let wasm = std::fs::read(crate::support::wasm_of(built::ECHO)).unwrap();
    for (key, value, ceiling) in [("fuel", "9223372036854775807", "ceilings.fuel"), ("timeout_ms", "9223372036854775807", "ceilings.timeout_ms"), ("memory_mib", "1024", "ceilings.memory_mib"), ("output_bytes", "1073741824", "ceilings.output_bytes")] {
        let manifest = format!("name = \"greedy\"\nversion = \"1\"\n[limits]\n{key} = {value}\n");
        let (status, body) = deploy(&host, "greedy", &manifest, &wasm);
        assert_eq!(status, 400, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(&format!("`limits.{key}` is {value}, over this host's ceiling")) && error.contains(ceiling), "{error}");
        // The upload is named by the plugin, never by the server's paths.
        assert!(error.contains("greedy/plugin.toml") && !error.contains(dir.path().to_str().unwrap()) && !error.contains(".deploy-"), "{error}");
    }
    let min_memory = std::fs::read(crate::support::wasm_of(built::MIN_MEMORY)).unwrap();
    let (status, body) = deploy(&host, "min-memory", "name = \"min-memory\"\nversion = \"1\"\n", &min_memory);
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("min-memory/min-memory.wasm declares a memory of 134217728 bytes"), "{error}");
    assert!(!error.contains(dir.path().to_str().unwrap()), "{error}");
    assert!(host.plugin("greedy").is_none());
    neighbours.all_complete(&host);
}

#[test]
fn an_oversized_output_is_refused_by_its_length_and_dead_lettered() {
    let (_dir, host) = host_with(&[built::GIANT_OUTPUT], "");
    let neighbours = Neighbours::start(&host);
    for mib in [120u64, 200] {
        let id = host.enqueue(json!({"kind": "giant-output", "payload": mib}));
        let job = host.wait_for(id, "dead");
        assert_eq!(job["attempt"], 1, "refused output is not retried: {job}");
        assert_eq!(job["errors"][0]["outcome"], "output_too_large", "{job}");
        let message = job["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(&format!("output is {} bytes, over the limit of 1048576 bytes", mib << 20)), "{message}");
        assert!(job_text(&host, id).len() < SMALL_JOB_BYTES);
    }
    neighbours.all_complete(&host);
}

#[test]
fn components_over_the_per_component_pool_limits_are_refused_at_load() {
    let (dir, host) = host_with(&[built::NESTED_INSTANCES, built::MANY_MEMORIES, built::MANY_TABLES], "");
    let neighbours = Neighbours::start(&host);
    for name in ["nested-instances", "many-memories", "many-tables"] {
        assert!(host.plugin(name).is_none(), "{name} was loaded");
    }
    let log = host.stderr();
    for limit in [
        "contains 1025 core module instances, which exceeds the configured maximum of 32",
        "contains 9 Wasm linear memories, which exceeds the configured maximum of 8",
        "contains 17 tables, which exceeds the configured maximum of 16",
    ] {
        assert!(log.contains(limit), "{limit}\n{log}");
    }
    let nested = std::fs::read(crate::support::wasm_of(built::NESTED_INSTANCES)).unwrap();
    let (status, body) = deploy(&host, "nested-instances", "name = \"nested-instances\"\nversion = \"2\"\n", &nested);
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("core module instances, which exceeds the configured maximum of 32"), "{error}");
    assert!(!error.contains(dir.path().to_str().unwrap()), "{error}");
    neighbours.all_complete(&host);
}

#[test]
fn jobs_wait_for_pool_slots_instead_of_failing() {
    // Four instances and eight memory slots: two three-memory jobs fit at
    // a time, the others must wait for them, and none may fail.
    let (_dir, host) = host_with(&[built::THREE_MEMORIES], "max_instances = 4\n");
    let batch: Vec<Value> = (0..24).map(|_| json!({"kind": "three-memories", "max_attempts": 1})).collect();
    let (status, body) = host.post("/jobs", &Value::Array(batch));
    assert_eq!(status, 201, "{body}");
    let ids: Vec<i64> = body.as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect();
    let neighbours = Neighbours::start(&host);
    for id in ids {
        let job = wait_final(&host, id);
        assert_eq!(job["state"], "completed", "a job that found the pool full failed: {job}");
        assert_eq!(job["errors"], json!([]));
    }
    neighbours.all_complete(&host);
    assert!(!host.stderr().contains("concurrent limit"), "{}", host.stderr());
}

#[test]
fn a_refused_table_growth_is_out_of_memory_and_never_counted() {
    let run = crate::support::run_json(built::TABLE_GROW, &[]);
    assert_eq!(run.outcome(), "out_of_memory", "{}", run.json);
    let peak = run.json["peak_memory_bytes"].as_u64().unwrap();
    assert!(peak < 1 << 20, "peak {peak} counts a growth that never happened");

    let (_dir, host) = host_with(&[built::TABLE_GROW], "");
    let id = host.enqueue(json!({"kind": "table-grow", "max_attempts": 1}));
    let job = host.wait_for(id, "dead");
    assert_eq!(job["errors"][0]["outcome"], "out_of_memory", "{job}");
}

#[test]
fn compiling_is_bounded_by_size_time_and_leaves_no_artifact_when_refused() {
    // The crafted component takes ~14 s to compile; this host allows one
    // second. Honest plugins can need more than that on a loaded machine in
    // a debug build, so a first start with the default budget compiles them
    // into the artifact cache, and the tight budget meets only what is new.
    let (dir, mut first) = host_with(&[], "");
    first.sigterm();
    let config = "[compile]\ntimeout_ms = 1000\nms_per_mib = 0\nmax_component_bytes = 1000000\n";
    std::fs::write(dir.path().join("kiln.toml"), format!("{SETTINGS}{config}\n{QUEUES}")).unwrap();
    dir.link_plugin(built::SLOW_COMPILE);
    let host = dir.start();
    let neighbours = Neighbours::start(&host);
    assert!(host.plugin("slow-compile").is_none());
    assert!(host.stderr().contains("took longer to compile than this host allows (1000 ms"), "{}", host.stderr());

    let slow = std::fs::read(crate::support::wasm_of(built::SLOW_COMPILE)).unwrap();
    let started = Instant::now();
    let (status, body) = deploy(&host, "slow-compile", "name = \"slow-compile\"\nversion = \"2\"\n", &slow);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("took longer to compile than this host allows"), "{body}");
    assert!(started.elapsed() < PATIENCE, "the compiler was not stopped at its budget");

    let too_big = [slow.as_slice(), &vec![0u8; 1_000_000]].concat();
    assert!(slow.len() < 1_000_000 && too_big.len() > 1_000_000);
    let (status, body) = deploy(&host, "slow-compile", "name = \"slow-compile\"\nversion = \"3\"\n", &too_big);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("over this host's limit of 1000000 bytes for a component"), "{body}");

    // A component that compiles but is refused (another world) leaves
    // nothing in the artifact cache either.
    let wrong = std::fs::read(crate::support::wasm_of(built::WRONG_WORLD)).unwrap();
    let (status, body) = deploy(&host, "wrong-world", "name = \"wrong-world\"\nversion = \"1\"\n", &wrong);
    assert_eq!(status, 400, "{body}");
    let artifacts: Vec<String> = std::fs::read_dir(dir.path().join("data/artifacts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for refused in [&slow, &too_big, &wrong] {
        let sha = kiln::plugin::sha256_hex(refused);
        assert!(!artifacts.iter().any(|a| a.contains(&sha)), "a refused component left {sha} in the artifact cache");
    }
    neighbours.all_complete(&host);
}
