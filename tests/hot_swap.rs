//! The live registry, end to end: new versions swapped in under load by
//! file and by API, broken versions refused while the old one serves,
//! rollback, removal guarded by pending jobs, and `kiln plugin new`.

use crate::support::host::{Host, HostDir, PATIENCE, eventually};
use crate::support::{built, kiln, wasm_of};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const CONFIG: &str = "lease_ms = 5000\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 8\n";

fn echo_manifest(version: &str) -> String {
    format!("name = \"echo\"\nversion = \"{version}\"\ndescription = \"echo, version {version}\"\n")
}

/// A host serving `echo` 1.0.0 from a real directory (not a link to the build).
fn echo_host() -> (HostDir, Host) {
    let dir = HostDir::new(CONFIG);
    std::fs::remove_file(dir.plugins().join("echo")).unwrap();
    dir.add_plugin("echo", built::ECHO, &echo_manifest("1.0.0"));
    let host = dir.start();
    (dir, host)
}

fn deploy_body(manifest: &str, wasm: &[u8]) -> Value {
    json!({"manifest": manifest, "wasm_base64": base64::engine::general_purpose::STANDARD.encode(wasm)})
}

fn echo_wasm() -> Vec<u8> {
    std::fs::read(wasm_of(built::ECHO)).unwrap()
}

/// Replaces a file the way an editor or a deploy script should: write
/// beside it, rename over it.
fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn completed_count(host: &Host) -> u64 {
    let text = host.get_text("/metrics");
    text.lines()
        .filter(|l| l.starts_with("kiln_queue_depth{") && l.contains("state=\"completed\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn enqueue_echoes(host: &Host, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let jobs: Vec<Value> = chunk.iter().map(|i| json!({"kind": "echo", "payload": i})).collect();
        let (status, body) = host.post("/jobs", &Value::Array(jobs));
        assert_eq!(status, 201, "{body}");
    }
}

fn wait_all_completed(host: &Host, count: u64) {
    let started = Instant::now();
    while completed_count(host) < count {
        assert!(started.elapsed() < PATIENCE * 4, "only {} of {count} completed\n{}", completed_count(host), host.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ten_thousand_jobs_through_two_swaps_by_file_and_by_api_none_lost() {
    const JOBS: usize = 10_000;
    let (dir, host) = echo_host();
    enqueue_echoes(&host, JOBS);

    eventually("a fifth done", || completed_count(&host) >= 2_000);
    replace_file(&dir.plugins().join("echo/plugin.toml"), echo_manifest("2.0.0").as_bytes());
    eventually("version 2 serves", || host.plugin("echo").unwrap()["version"] == "2.0.0");

    eventually("half done", || completed_count(&host) >= 5_000);
    let (status, body) = host.put("/plugins/echo", &deploy_body(&echo_manifest("3.0.0"), &echo_wasm()));
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["version"].as_str(), body["previous"].as_str()), (Some("3.0.0"), Some("2.0.0")));

    wait_all_completed(&host, JOBS as u64);
    let jobs = host.jobs_of("echo");
    assert_eq!(jobs.len(), JOBS);
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for job in &jobs {
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(job["attempt"], 1, "no job failed or ran twice: {job}");
        assert_eq!(job["result"], job["payload"]);
        *by_version.entry(job["plugin_version"].as_str().expect("tagged with its version").to_string()).or_default() += 1;
    }
    assert_eq!(by_version.keys().collect::<Vec<_>>(), ["1.0.0", "2.0.0", "3.0.0"], "{by_version:?}");

    let log = host.stderr();
    assert!(log.contains("plugin version swapped plugin=echo from=1.0.0 to=2.0.0 source=file"), "{log}");
    assert!(log.contains("plugin version swapped plugin=echo from=2.0.0 to=3.0.0 source=api"), "{log}");
    let plugin = host.plugin("echo").unwrap();
    let versions: Vec<(&str, bool)> =
        plugin["versions"].as_array().unwrap().iter().map(|v| (v["version"].as_str().unwrap(), v["active"].as_bool().unwrap())).collect();
    assert_eq!(versions, [("3.0.0", true), ("2.0.0", false), ("1.0.0", false)]);
    // The API deploy was written to the plugins directory: a restart serves it.
    assert!(std::fs::read_to_string(dir.plugins().join("echo/plugin.toml")).unwrap().contains("3.0.0"));
}

#[test]
fn broken_versions_are_refused_mid_load_and_the_old_one_keeps_serving() {
    const JOBS: usize = 3_000;
    let (dir, host) = echo_host();
    enqueue_echoes(&host, JOBS);
    eventually("some done", || completed_count(&host) >= 300);

    // By file: a manifest that does not parse, then a component that is not one.
    let manifest = dir.plugins().join("echo/plugin.toml");
    replace_file(&manifest, b"name = \"echo\"\nversion = \"2.0.0\"\n[limits]\ntimeout_ms = 0\n");
    eventually("the bad manifest is refused", || host.stderr().contains("`limits.timeout_ms` must be greater than zero"));
    replace_file(&manifest, echo_manifest("1.0.0").as_bytes());
    replace_file(&dir.plugins().join("echo/echo.wasm"), b"\0asm\x0d\0\x01\0 not really a component");
    eventually("the malformed component is refused", || host.stderr().contains("is not a valid WebAssembly component"));

    // By API: another world, a bad manifest, a name that does not match.
    let wrong_world = std::fs::read(wasm_of(built::WRONG_WORLD)).unwrap();
    let (status, body) = host.put("/plugins/echo", &deploy_body(&echo_manifest("2.0.0"), &wrong_world));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("kiln:worker"), "names the world: {body}");
    let (status, body) = host.put("/plugins/echo", &deploy_body("name = \"echo\"\nversion = \"2\"\nthreads = 4\n", &echo_wasm()));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("threads"), "{body}");
    let (status, body) = host.put("/plugins/echo", &deploy_body("name = \"other\"\nversion = \"2\"\n", &echo_wasm()));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "refused: the manifest names plugin \"other\" but it was deployed as \"echo\" (the uploaded manifest)");

    wait_all_completed(&host, JOBS as u64);
    let jobs = host.jobs_of("echo");
    assert!(jobs.iter().all(|j| j["state"] == "completed" && j["plugin_version"] == "1.0.0" && j["attempt"] == 1));
    assert_eq!(host.plugin("echo").unwrap()["version"], "1.0.0");
    assert!(!host.stderr().contains("plugin version swapped"), "nothing was swapped");
}

fn cli(host: &Host, args: &[&str]) -> (i32, Value, String) {
    let output = kiln().arg("--api").arg(&host.url).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), value, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn deploy_list_rollback_and_remove_from_the_command_line() {
    let (dir, host) = echo_host();
    let v2 = tempfile::tempdir().unwrap();
    std::fs::copy(wasm_of(built::ECHO), v2.path().join("echo.wasm")).unwrap();
    std::fs::write(v2.path().join("plugin.toml"), echo_manifest("2.0.0")).unwrap();
    let v2_dir = v2.path().to_str().unwrap();

    let (code, _, stderr) = cli(&host, &["plugin", "deploy", v2_dir, "--name", "other"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("manifest names plugin \"echo\" but it was deployed as \"other\""), "{stderr}");

    let (code, body, stderr) = cli(&host, &["plugin", "deploy", v2_dir, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((body["version"].as_str(), body["changed"].as_bool()), (Some("2.0.0"), Some(true)));
    let (_, again, _) = cli(&host, &["plugin", "deploy", v2_dir, "--json"]);
    assert_eq!(again["changed"], false, "the same version again changes nothing");
    // For a person: a line, and a table.
    let said = kiln().arg("--api").arg(&host.url).args(["plugin", "deploy", v2_dir]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&said.stdout), "echo 2.0.0 already serves; nothing changed\n");
    let table = kiln().arg("--api").arg(&host.url).args(["plugin", "list"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.starts_with("PLUGIN") && table.lines().any(|l| l.starts_with("echo") && l.contains("2.0.0") && l.contains("queued")), "{table}");
    let (_, list, _) = cli(&host, &["plugin", "list", "--json"]);
    let echo = list["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "echo").unwrap().clone();
    assert_eq!(echo["version"], "2.0.0");

    let (code, body, stderr) = cli(&host, &["plugin", "rollback", "echo", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((body["version"].as_str(), body["previous"].as_str()), (Some("1.0.0"), Some("2.0.0")));
    assert!(std::fs::read_to_string(dir.plugins().join("echo/plugin.toml")).unwrap().contains("1.0.0"), "written back");
    let id = host.enqueue(json!({"kind": "echo", "payload": "after rollback"}));
    assert_eq!(host.wait_for(id, "completed")["plugin_version"], "1.0.0");
    let said = kiln().arg("--api").arg(&host.url).args(["plugin", "rollback", "echo"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&said.stdout),
        "rolled back echo: 1.0.0 -> 2.0.0; jobs from now on run it\n",
        "rolling back again returns to the newer version"
    );

    // Removal is refused while jobs of the kind wait.
    host.post("/queues/default/pause", &json!(null));
    let waiting = host.enqueue(json!({"kind": "echo", "payload": "waiting"}));
    let (status, body) = host.delete("/plugins/echo");
    assert_eq!(status, 409, "{body}");
    let (code, _, stderr) = cli(&host, &["plugin", "remove", "echo"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("still has 1 pending jobs"), "{stderr}");
    assert_eq!(host.job(waiting)["state"], "available", "nothing touched");
    let (code, body, stderr) = cli(&host, &["plugin", "remove", "echo", "--force", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(body["removed"], true);
    assert!(host.plugin("echo").is_none());
    assert!(!dir.plugins().join("echo").exists());
    let (status, body) = host.post("/jobs", &json!({"kind": "echo"}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(cli(&host, &["plugin", "rollback", "echo"]).0, 2, "nothing to roll back once removed");
}

#[test]
fn plugin_new_scaffolds_a_crate_that_builds_tests_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("hello-job");
    let output = kiln().args(["plugin", "new", "hello-job", "--path"]).arg(&crate_dir).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let again = kiln().args(["plugin", "new", "hello-job", "--path"]).arg(&crate_dir).output().unwrap();
    assert_eq!(again.status.code(), Some(2), "an existing crate is not overwritten");

    // One shared target directory, so the SDK's dependencies build once.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target");
    let cargo = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.current_dir(&crate_dir).args(args).env("CARGO_TARGET_DIR", &target);
        for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_MAKEFLAGS", "RUSTC_WRAPPER"] {
            cmd.env_remove(var);
        }
        let output = cmd.output().unwrap();
        assert!(output.status.success(), "cargo {args:?}:\n{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    cargo(&["build", "--release", "--target", "wasm32-wasip2"]);
    let tests = cargo(&["test"]);
    assert!(tests.contains("test result: ok. 2 passed"), "{tests}");

    let run = kiln()
        .args(["run", "--json", "--payload", r#"{"name": "Ada"}"#])
        .arg(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&run.stderr)));
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["output"], json!({"greeting": "Hello, Ada!"}));
    assert_eq!(report["plugin"]["name"], "hello-job");

    // The hint `kiln plugin new` printed, followed literally from where it
    // was run, with `kiln` on the PATH.
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let hint: Vec<&str> = printed.lines().skip_while(|l| !l.starts_with("next, build and run it:")).skip(1).map(str::trim).collect();
    assert_eq!(hint.len(), 3, "{printed}");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kiln")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut sh = std::process::Command::new("sh");
    sh.arg("-ec").arg(hint.join("\n")).current_dir(dir.path()).env("PATH", path).env("CARGO_TARGET_DIR", &target);
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_MAKEFLAGS", "RUSTC_WRAPPER"] {
        sh.env_remove(var);
    }
    let followed = sh.output().unwrap();
    let out = String::from_utf8_lossy(&followed.stdout);
    assert!(followed.status.success(), "the hint failed: {}\n{out}", String::from_utf8_lossy(&followed.stderr));
    assert!(out.contains("Hello, Ada!"), "{out}");

    // The README's next steps: deploy it to a running host, enqueue it.
    let (_host_dir, host) = echo_host();
    let deploy = kiln().current_dir(&crate_dir).args(["--api", &host.url, "plugin", "deploy", "."]).env("CARGO_TARGET_DIR", &target).output().unwrap();
    assert!(deploy.status.success(), "{}", String::from_utf8_lossy(&deploy.stderr));
    assert_eq!(String::from_utf8_lossy(&deploy.stdout), "deployed hello-job 0.1.0; jobs from now on run it\n");
    let id = host.enqueue(json!({"kind": "hello-job", "payload": {"name": "Ada"}}));
    assert_eq!(host.wait_for(id, "completed")["result"], json!({"greeting": "Hello, Ada!"}));
}

#[test]
fn a_plugin_directory_is_read_once_per_change_not_for_ever() {
    // The watcher once reacted to its own reads: a refused directory was
    // validated again and again (30–46 times a second), and every plugin
    // load was followed by another.
    let (dir, host) = echo_host();
    let broken = dir.plugins().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("plugin.toml"), "name = \"broken\"\nversion = 1\n").unwrap();
    eventually("the broken directory is refused", || host.stderr().matches("plugin=broken").count() >= 1);
    replace_file(&dir.plugins().join("echo/plugin.toml"), echo_manifest("1.0.1").as_bytes());
    eventually("the new echo serves", || host.plugin("echo").is_some_and(|p| p["version"] == "1.0.1"));
    std::thread::sleep(Duration::from_millis(500));
    // Idle now: reloading the same version logs nothing, but it reads the
    // plugin's files (the component is ~100 KB) again and again.
    let read = || {
        let io = std::fs::read_to_string(format!("/proc/{}/io", host.pid())).unwrap();
        io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse::<u64>().unwrap()
    };
    let before = read();
    std::thread::sleep(Duration::from_secs(2));
    let idle_reads = read() - before;
    let log = host.stderr();
    let refusals = log.lines().filter(|l| l.contains("plugin=broken")).count();
    assert!(refusals <= 2, "the broken directory was validated {refusals} times for one change:\n{log}");
    assert_eq!(log.matches("to=1.0.1").count(), 1, "echo 1.0.1 was swapped in once:\n{log}");
    assert!(idle_reads < 1 << 20, "an idle host read {idle_reads} bytes in 2 s: it is reloading its plugins");
}

#[test]
fn a_deploy_importing_an_ungranted_capability_is_refused_naming_it_and_nothing_changes() {
    let (dir, host) = echo_host();
    let wasm = std::fs::read(wasm_of(built::HTTP_IMPORT)).unwrap();
    let (status, body) = host.put("/plugins/http-import", &deploy_body("name = \"http-import\"\nversion = \"1\"\n", &wasm));
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("imports `wasi:http/outgoing-handler@0.2.6` (outbound HTTP)") && error.contains("`[capabilities] http`"), "{error}");
    assert!(host.plugin("http-import").is_none());
    assert!(!dir.plugins().join("http-import").exists(), "nothing written");
    // Under an existing name too: the serving version stays.
    let (status, _) = host.put("/plugins/echo", &deploy_body(&echo_manifest("9.0.0"), &wasm));
    assert_eq!(status, 400);
    assert_eq!(host.plugin("echo").unwrap()["version"], "1.0.0");
}
