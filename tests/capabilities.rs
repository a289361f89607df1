//! Capabilities end to end: a plugin reads the config keys its manifest
//! names and the host holds, secrets never show in what Kiln writes, and a
//! plugin importing a capability it is not granted is refused naming it.

use crate::support::host::HostDir;
use crate::support::{built, kiln, run_json, wasm_of};
use serde_json::{Value, json};

const SECRET: &str = "sk-live-7c1f00d5e2";
const CONFIG: &str = "lease_ms = 5000\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 2\n";

fn probe_payload(leak: bool, fail: bool) -> String {
    let mut payload = json!({"read": ["greeting", "api_key", "unset_key", "other"]});
    if leak {
        payload["leak"] = json!("api_key");
        payload["fail"] = json!(fail);
    }
    payload.to_string()
}

#[test]
fn kiln_run_serves_the_granted_keys_only_and_redacts_the_secret_everywhere() {
    let payload = probe_payload(true, false);
    let args = ["--payload", &payload, "--config", "greeting=hello", "--config", "other=not-yours", "--secret", &format!("api_key={SECRET}")];
    let run = run_json(built::CONFIG_PROBE, &args);
    assert_eq!(run.outcome(), "ok", "{}", run.json);
    let output = &run.json["output"];
    assert_eq!(output["values"]["greeting"], "hello");
    assert_eq!(output["values"]["other"], Value::Null, "a key the manifest does not name is not the plugin's to read");
    assert_eq!(output["values"]["unset_key"], Value::Null, "a key named but not held reads as absent");
    assert_eq!(output["lengths"]["api_key"], SECRET.len(), "the plugin got the secret itself");
    assert_eq!(output["values"]["api_key"], "[redacted]", "the result keeps no secret");
    assert_eq!(output["all"], json!(["api_key", "greeting"]));
    let logs = run.json["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 3, "context log, stdout and stderr: {logs:?}");
    for line in logs {
        assert!(line["message"].as_str().unwrap().contains("[redacted]"), "{line}");
    }
    let printed = format!("{}{}", run.json, run.stderr);
    assert!(!printed.contains(SECRET), "the secret was printed:\n{printed}");

    let payload = probe_payload(true, true);
    let args = ["--payload", &payload, "--secret", &format!("api_key={SECRET}")];
    let run = run_json(built::CONFIG_PROBE, &args);
    assert_eq!(run.outcome(), "fatal");
    assert_eq!(run.error(), "fatal: failing with [redacted] in the message");
}

#[test]
fn plugin_check_prints_what_a_plugin_imports_and_is_granted() {
    let out = kiln()
        .args(["plugin", "check", built::CONFIG_PROBE, "--config", "greeting=hi", "--secret", "api_key=k3y-value"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let imports = stdout.lines().find_map(|l| l.trim().strip_prefix("imports: ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(imports.split(", ").any(|i| i == "wasi:config/store@0.2.0-rc.1"), "{imports}");
    assert!(
        stdout.contains("config   asks greeting, api_key, unset_key; granted greeting, api_key (secret), no value here for unset_key"),
        "{stdout}"
    );
    assert!(!stdout.contains("k3y-value"));

    // A plugin built with the same SDK that calls no capability imports none.
    let out = kiln().args(["plugin", "check", built::ECHO]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("  capabilities: none asked"), "{stdout}");
    let imports = stdout.lines().find_map(|l| l.trim().strip_prefix("imports: ")).unwrap();
    assert!(imports.split(", ").all(|i| i.starts_with("wasi:") && !i.starts_with("wasi:config") || i.starts_with("kiln:worker/")), "{imports}");
}

/// `config-probe`'s component with `manifest` beside it, in a directory of its own.
fn probe_with_manifest(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm_of(built::CONFIG_PROBE), dir.path().join("config-probe.wasm")).unwrap();
    std::fs::write(dir.path().join("plugin.toml"), manifest).unwrap();
    dir
}

#[test]
fn a_plugin_importing_config_without_a_grant_is_refused_at_load_and_at_deploy() {
    let ungranted = probe_with_manifest("name = \"config-probe\"\nversion = \"2.0.0\"\n");
    let out = kiln().args(["plugin", "check"]).arg(ungranted.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("imports `wasi:config/store@0.2.0-rc.1` (configuration and secrets), which its manifest does not grant")
            && stderr.contains("`[capabilities] config` in plugin.toml"),
        "{stderr}"
    );

    let dir = HostDir::new(CONFIG);
    dir.link_plugin(built::CONFIG_PROBE);
    let host = dir.start();
    let deploy = kiln().args(["--api", &host.url, "plugin", "deploy"]).arg(ungranted.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&deploy.stderr);
    assert!(!deploy.status.success());
    assert!(stderr.contains("which its manifest does not grant") && stderr.contains("`[capabilities] config`"), "{stderr}");
    assert_eq!(host.plugin("config-probe").unwrap()["version"], "0.1.0", "the granted version keeps serving");
}

#[test]
fn kiln_serve_reads_secrets_at_start_and_keeps_them_out_of_jobs_logs_and_metrics() {
    let config = format!(
        "{CONFIG}\n[config]\ngreeting = \"from kiln.toml\"\nother = \"not-yours\"\n\n[secrets]\napi_key = {{ env = \"KILN_TEST_PROBE_KEY\" }}\n"
    );
    let dir = HostDir::new(&config);
    dir.link_plugin(built::CONFIG_PROBE);
    let mut serve = dir.command();
    serve.env("KILN_TEST_PROBE_KEY", SECRET);
    let host = crate::support::host::Host::spawn(serve, &dir.path().join("stderr.log"));

    let ok = host.enqueue(json!({"kind": "config-probe", "payload": serde_json::from_str::<Value>(&probe_payload(true, false)).unwrap()}));
    let job = host.wait_for(ok, "completed");
    assert_eq!(job["result"]["values"]["greeting"], "from kiln.toml");
    assert_eq!(job["result"]["values"]["other"], Value::Null);
    assert_eq!(job["result"]["lengths"]["api_key"], SECRET.len());
    assert_eq!(job["result"]["values"]["api_key"], "[redacted]");

    let failing = host.enqueue(json!({"kind": "config-probe", "payload": serde_json::from_str::<Value>(&probe_payload(true, true)).unwrap()}));
    let job = host.wait_for(failing, "dead");
    assert_eq!(job["errors"][0]["message"], "fatal: failing with [redacted] in the message");

    let plugin = host.plugin("config-probe").unwrap();
    assert_eq!(plugin["capabilities"]["asked"]["config"], json!(["greeting", "api_key", "unset_key"]));
    assert_eq!(plugin["capabilities"]["granted"]["config"], json!(["greeting", "api_key"]), "keys only, and only those held");

    for path in [format!("/jobs/{ok}"), format!("/jobs/{failing}"), "/jobs".to_string(), "/metrics".to_string(), "/plugins".to_string()] {
        assert!(!host.get_text(&path).contains(SECRET), "GET {path} shows the secret");
    }
    let log = host.stderr();
    assert!(log.contains("the secret is [redacted]") && log.contains("stdout has [redacted]"), "{log}");
    assert!(!log.contains(SECRET), "the host's log shows the secret:\n{log}");
    let database = std::fs::read(dir.database()).unwrap();
    assert!(!database.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "the database holds the secret");
}

#[test]
fn a_host_whose_secret_cannot_be_read_refuses_to_start_naming_it() {
    let config = format!("{CONFIG}\n[secrets]\nmail_api_key = {{ env = \"KILN_TEST_SURELY_UNSET_SECRET\" }}\ntoken = {{ file = \"missing-token\" }}\n");
    let dir = HostDir::new(&config);
    let (code, stderr) = dir.run_to_exit();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("`secrets.mail_api_key` names environment variable KILN_TEST_SURELY_UNSET_SECRET, which is not set"), "{stderr}");
}

#[test]
fn a_plugin_built_against_the_first_published_contract_loads_and_runs_unchanged() {
    // Built from a frozen copy of wit/worker.wit as it was before any
    // capability: what a plugin shipped then imports.
    let out = kiln().args(["plugin", "check", built::FIRST_CONTRACT]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let imports = stdout.lines().find_map(|l| l.trim().strip_prefix("imports: ")).unwrap();
    assert!(imports.starts_with("kiln:worker/context@0.1.0, kiln:worker/types@0.1.0, wasi:"), "{stdout}");
    assert!(!imports.contains("kiln:worker/enqueue") && !imports.contains("wasi:config") && !imports.contains("wasi:keyvalue"), "{stdout}");
    assert!(stdout.contains("capabilities: none asked"), "{stdout}");
    let run = run_json(built::FIRST_CONTRACT, &["--payload", r#"{"n":41}"#]);
    assert_eq!(run.outcome(), "ok", "{}", run.json);
    assert_eq!(run.json["output"], json!({"n": 41}));
    assert!(run.json["logs"][0]["message"].as_str().unwrap().contains("first-contract echo of 8 bytes, attempt 1"), "{}", run.json);

    // And on a host, beside plugins built against today's.
    let dir = HostDir::new(CONFIG);
    dir.link_plugin(built::FIRST_CONTRACT);
    let host = dir.start();
    let id = host.enqueue(json!({"kind": "first-contract", "payload": [1, 2]}));
    assert_eq!(host.wait_for(id, "completed")["result"], json!([1, 2]));
    let echo = host.enqueue(json!({"kind": "echo", "payload": "today"}));
    assert_eq!(host.wait_for(echo, "completed")["result"], "today");
}
