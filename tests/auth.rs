//! Authentication end to end: a `kiln serve` with `[admin] api_keys`
//! refuses every route without the key (or with a wrong, malformed or
//! over-long one) with 401 and changes nothing; the key admits; the
//! health probes stay open; refusals do not flood the log; the CLI sends
//! `KILN_API_KEY`. A host without keys will not listen beyond loopback
//! unless told `--insecure`; a bad tenant table stops it, naming the key.

use crate::support::host::{Host, HostDir};
use crate::support::{kiln, new_api_key};
use serde_json::Value;
use std::process::Stdio;

const CONFIG: &str = "lease_ms = 5000\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 2\n";

fn keyed_host() -> (HostDir, Host, String) {
    let (key, hash) = new_api_key();
    let dir = HostDir::new(&format!("{CONFIG}\n[admin]\napi_keys = [\"{hash}\"]\n"));
    let host = dir.start();
    (dir, host, key)
}

/// One call with `authorization` (or none): status and the WWW-Authenticate header.
fn call(host: &Host, method: &str, path: &str, authorization: Option<&str>) -> (u16, Option<String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_idle_connections(0).build().into();
    let url = format!("{}{path}", host.url);
    let mut request = http::Request::builder().method(method).uri(&url).header("content-type", "application/json");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let body = if matches!(method, "POST" | "PUT") { r#"{"kind":"echo","payload":1}"#.to_string() } else { String::new() };
    let mut response = agent.run(request.body(body).unwrap()).unwrap();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), challenge, response.body_mut().read_to_string().unwrap_or_default())
}

/// Every route the API has, with something to act on.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("DELETE", "/jobs?state=completed"),
    ("GET", "/jobs/1"),
    ("DELETE", "/jobs/1"),
    ("POST", "/jobs/retry"),
    ("POST", "/jobs/1/retry"),
    ("POST", "/jobs/1/cancel"),
    ("GET", "/queues"),
    ("POST", "/queues/default/pause"),
    ("POST", "/queues/default/resume"),
    ("GET", "/plugins"),
    ("PUT", "/plugins/echo"),
    ("DELETE", "/plugins/echo?force=true"),
    ("POST", "/plugins/echo/rollback"),
    ("GET", "/plugins/echo/kv"),
    ("GET", "/plugins/echo/kv/k"),
    ("PUT", "/plugins/echo/kv/k"),
    ("DELETE", "/plugins/echo/kv/k"),
    ("GET", "/metrics"),
    ("GET", "/no-such-route"),
];

#[test]
fn with_api_keys_every_route_refuses_a_caller_without_the_key_and_changes_nothing() {
    let (_dir, host, key) = keyed_host();
    let admin = format!("Bearer {key}");
    // Something to leave unchanged: a completed job.
    let (status, body) = {
        let (s, _, b) = call(&host, "POST", "/jobs", Some(&admin));
        (s, serde_json::from_str::<Value>(&b).unwrap())
    };
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().unwrap();
    let job_now = || {
        let (s, _, b) = call(&host, "GET", &format!("/jobs/{id}"), Some(&admin));
        assert_eq!(s, 200, "{b}");
        serde_json::from_str::<Value>(&b).unwrap()
    };
    crate::support::host::eventually("the job completed", || job_now()["state"] == "completed");
    let before = (job_now(), call(&host, "GET", "/plugins", Some(&admin)).2, call(&host, "GET", "/queues", Some(&admin)).2);

    let wrong = format!("Bearer {}", new_api_key().0);
    let long = format!("Bearer {}", "k".repeat(10_000));
    let cases: [(Option<&str>, &str); 5] = [
        (None, "no API key"),
        (Some(wrong.as_str()), "the key is not one this host knows"),
        (Some(long.as_str()), "the key is not one this host knows"),
        (Some("Basic YWRtaW46YWRtaW4="), "the Authorization header is not `Bearer KEY`"),
        (Some("Bearer"), "the Authorization header is not `Bearer KEY`"),
    ];
    for (method, path) in ROUTES {
        let path = path.replace("/jobs/1", &format!("/jobs/{id}"));
        for (authorization, says) in &cases {
            let (status, challenge, body) = call(&host, method, &path, *authorization);
            assert_eq!(status, 401, "{method} {path} with {authorization:?}: {body}");
            assert_eq!(challenge.as_deref(), Some("Bearer realm=\"kiln\""), "{method} {path}");
            assert!(body.contains(says), "{method} {path} with {authorization:?}: {body}");
        }
    }
    let after = (job_now(), call(&host, "GET", "/plugins", Some(&admin)).2, call(&host, "GET", "/queues", Some(&admin)).2);
    assert_eq!(before.0, after.0, "the job is as it was");
    assert_eq!(before.1, after.1, "the plugins are as they were");
    assert_eq!(before.2, after.2, "the queues are as they were");
    assert_eq!(call(&host, "GET", "/plugins/echo/kv", Some(&admin)).2, call(&host, "GET", "/plugins/echo/kv", Some(&admin)).2);
    let (status, _, kv) = call(&host, "GET", "/plugins/echo/kv", Some(&admin));
    assert_eq!(status, 200, "{kv}");
    assert!(!kv.contains("\"k\""), "no key was written: {kv}");

    // The key admits; the probes need none; the scheme's case does not matter.
    assert_eq!(call(&host, "GET", "/metrics", Some(&admin)).0, 200);
    assert_eq!(call(&host, "GET", "/jobs", Some(&format!("bearer {key}"))).0, 200);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(call(&host, "GET", probe, None).0, 200, "{probe}");
    }

    // ROUTES × 5 refusals, in a few seconds: the log has a line a second at most.
    let refusals = host.stderr().matches("API call refused").count();
    assert!((1..=15).contains(&refusals), "{refusals} refusal lines for {} refused calls", ROUTES.len() * cases.len());
    assert!(host.stderr().contains("unlogged_since_last="), "the lines say how many went unlogged");
    assert!(!host.stderr().contains(&key), "the key is never logged");
}

#[test]
fn the_cli_sends_kiln_api_key_and_without_it_says_what_is_missing() {
    let (_dir, host, key) = keyed_host();
    let with_key = kiln().args(["--api", &host.url, "jobs", "list"]).env("KILN_API_KEY", &key).output().unwrap();
    assert!(with_key.status.success(), "{}", String::from_utf8_lossy(&with_key.stderr));
    let without = kiln().args(["--api", &host.url, "jobs", "list"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(!without.status.success());
    assert!(stderr.contains("401") && stderr.contains("KILN_API_KEY"), "{stderr}");
    let enqueued = kiln().args(["--api", &host.url, "enqueue", "echo", "--payload", "7"]).env("KILN_API_KEY", &key).output().unwrap();
    assert!(enqueued.status.success(), "{}", String::from_utf8_lossy(&enqueued.stderr));
}

#[test]
fn without_keys_a_host_listens_beyond_loopback_only_when_told_insecure() {
    let dir = HostDir::new(CONFIG);
    let serve = |extra: &[&str]| {
        let mut cmd = kiln();
        cmd.current_dir(dir.path())
            .args(["serve", "--listen", "0.0.0.0:0", "--data-dir", "data", "--plugins-dir", "plugins", "--config", "kiln.toml"])
            .args(extra)
            .env("KILN_LOG", "info");
        cmd
    };
    let refused = serve(&[]).stdout(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 with no API keys") && stderr.contains("--insecure"), "{stderr}");
    let host = Host::spawn(serve(&["--insecure"]), &dir.path().join("stderr.log"));
    assert_eq!(host.get("/healthz").0, 200);
    assert!(host.stderr().contains("the API has no keys"), "it says so loudly: {}", host.stderr());
}

#[test]
fn a_bad_tenant_table_is_refused_at_start_naming_the_key() {
    let (_, hash) = new_api_key();
    let unusable = HostDir::new(&format!("{CONFIG}\n[tenants.acme]\napi_keys = [\"{hash}\"]\nrequire_signature = true\n"));
    let (code, stderr) = unusable.run_to_exit();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("`tenants.acme.require_signature` is true, but signing_keys is empty"), "{stderr}");
    // A bad value is an error naming the key and the line.
    let bad = HostDir::new(&format!("{CONFIG}\n[tenants.acme]\napi_keys = [\"{hash}\"]\nrate = \"lots\"\n"));
    let (code, stderr) = bad.run_to_exit();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("is not a rate") && stderr.contains("line 10"), "{stderr}");
    let tight = HostDir::new(&format!("{CONFIG}\n[tenants.acme]\napi_keys = [\"{hash}\"]\nceilings = {{ timeout_ms = 10 }}\n"));
    let (code, stderr) = tight.run_to_exit();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("`tenants.acme.ceilings.timeout_ms` is 10, below the default"), "{stderr}");
    let key = HostDir::new(&format!("{CONFIG}\n[tenants.acme]\napi_keys = [\"{hash}\"]\nsigning_keys = [\"ed25519:nope\"]\n"));
    let (code, stderr) = key.run_to_exit();
    assert_ne!(code, Some(0));
    assert!(stderr.contains("is not a signing key") && stderr.contains("line 10"), "{stderr}");
}
