//! Outbound HTTP end to end: the real `kiln` against a real HTTP server
//! started here on 127.0.0.1:0. Requests inside the grant arrive as sent
//! (Host header included); requests outside it, or to a name that leads
//! inside the host's network, are denied before any connection and the
//! job's error names them; a server that never answers cannot hold a run
//! past its deadline; a body over the cap is an error; a 500 is a retry.

use crate::support::host::HostDir;
use crate::support::http_server::TestServer;
use crate::support::{built, kiln, run_json, wasm_of};
use serde_json::{Value, json};

fn requests(list: Value) -> String {
    json!({"requests": list}).to_string()
}

#[test]
fn a_request_inside_the_grant_arrives_as_sent_and_is_counted() {
    let server = TestServer::start();
    let payload = requests(json!([
        {"url": server.url("/ok")},
        {"method": "POST", "url": server.url("/send"), "headers": [["content-type", "application/json"], ["authorization", "Bearer t0ken"]], "body": "{\"to\":\"ada@example.com\"}"},
    ]));
    let run = run_json(built::HTTP_PROBE, &["--allow-http", &server.origin(), "--payload", &payload]);
    assert_eq!(run.outcome(), "ok", "{}", run.json);
    assert_eq!(run.json["output"]["responses"], json!([{"status": 200, "body": "fine"}, {"status": 200, "body": "{\"queued\":true}"}]));
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let sent = &seen[0];
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/send"));
    assert_eq!(sent.headers["host"], format!("127.0.0.1:{}", server.port), "the Host header is sent");
    assert_eq!(sent.headers["authorization"], "Bearer t0ken");
    assert_eq!(serde_json::from_slice::<Value>(&sent.body).unwrap(), json!({"to": "ada@example.com"}));
    assert_eq!(run.json["http_requests"], 2);
    assert!(run.json["http_bytes_sent"].as_u64().unwrap() >= 24 && run.json["http_bytes_received"].as_u64().unwrap() >= 19, "{}", run.json);
}

#[test]
fn a_request_outside_the_grant_is_denied_before_connecting_and_the_error_names_it() {
    let server = TestServer::start();
    // The manifest asks for 127.0.0.1 on any port; this host allows one port: the narrower wins.
    let other_port = server.port.wrapping_add(1).max(1);
    let payload = json!({"requests": [{"url": server.url("/ok")}, {"url": format!("http://127.0.0.1:{other_port}/send")}], "fail_on_error": true}).to_string();
    let run = run_json(built::HTTP_PROBE, &["--allow-http", &server.origin(), "--payload", &payload]);
    assert_eq!(run.outcome(), "fatal", "{}", run.json);
    let error = run.error();
    assert!(
        error.contains(&format!("the host denied GET http://127.0.0.1:{other_port}/send is not in the plugin's grant (`[capabilities] http` allowed here: {})", server.origin())),
        "{error}"
    );
    assert!(server.seen.lock().unwrap().is_empty());
    let logs = run.json["logs"].to_string();
    assert!(logs.contains("the host denied an HTTP request"), "{logs}");
}

#[test]
fn a_name_that_resolves_inside_the_host_is_denied_unless_the_grant_names_the_address() {
    let server = TestServer::start();
    // This machine's own name: it resolves to a loopback or private address.
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_lowercase();
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), server.port)).map(|a| a.collect::<Vec<_>>()).unwrap_or_default();
    assert!(!resolved.is_empty(), "this test needs the machine's host name ({name}) to resolve; it does not");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm_of(built::HTTP_PROBE), dir.path().join("http-probe.wasm")).unwrap();
    let origin = format!("http://{name}:{}", server.port);
    std::fs::write(dir.path().join("plugin.toml"), format!("name = \"http-probe\"\nversion = \"1\"\n[capabilities]\nhttp = [\"{origin}\"]\n")).unwrap();
    let payload = json!({"requests": [{"url": format!("{origin}/ok")}], "fail_on_error": true}).to_string();
    let run = run_json(dir.path().to_str().unwrap(), &["--allow-http", &origin, "--payload", &payload]);
    assert_eq!(run.outcome(), "fatal", "{}", run.json);
    assert!(run.error().contains(&format!("{name} resolves to")) && run.error().contains("an internal address the grant"), "{}", run.error());
    assert!(server.seen.lock().unwrap().is_empty(), "no request reached the server");
}

#[test]
fn a_server_that_never_answers_ends_the_run_at_its_deadline() {
    let server = TestServer::start();
    let run = run_json(built::HTTP_PROBE, &["--allow-http", "http://127.0.0.1:*", "--timeout-ms", "1500", "--payload", &requests(json!([{"url": server.url("/hang")}]))]);
    assert_eq!(run.outcome(), "timed_out", "{}", run.json);
    assert!(run.json["duration_ms"].as_f64().unwrap() >= 1500.0, "{}", run.json);
}

#[test]
fn a_response_body_over_the_cap_is_an_error_to_the_guest() {
    let server = TestServer::start();
    let run = run_json(built::HTTP_PROBE, &["--allow-http", "http://127.0.0.1:*", "--payload", &requests(json!([{"url": server.url("/big")}]))]);
    assert_eq!(run.outcome(), "ok", "{}", run.json);
    let answer = run.json["output"]["responses"][0].as_str().unwrap_or_default().to_string();
    assert!(answer.starts_with("error: HTTP request failed") && answer.to_lowercase().contains("size"), "{answer}");
    assert!(run.json["http_bytes_received"].as_u64().unwrap() <= (16 << 20) + (1 << 20), "{}", run.json);
}

#[test]
fn on_a_host_a_500_is_a_retry_and_a_granted_request_completes_the_job() {
    let server = TestServer::start();
    let dir = HostDir::new(&format!(
        "lease_ms = 5000\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n[queues.default]\nconcurrency = 2\n[capabilities]\nallow_http = [\"{}\"]\n",
        server.origin()
    ));
    dir.link_plugin(built::HTTP_PROBE);
    let host = dir.start();
    let ok = host.enqueue(json!({"kind": "http-probe", "payload": {"requests": [{"method": "POST", "url": server.url("/send"), "body": "{}"}], "fail_on_error": true}}));
    host.wait_for(ok, "completed");
    assert_eq!(server.seen.lock().unwrap().len(), 1);
    let failing = host.enqueue(json!({"kind": "http-probe", "payload": {"requests": [{"url": server.url("/fail")}], "fail_on_error": true}}));
    let job = host.wait_for(failing, "dead");
    assert_eq!(job["errors"][0]["outcome"], "retry", "{job}");
    assert!(job["errors"][0]["message"].as_str().unwrap().contains("answered 500"), "{job}");
    assert_eq!(job["attempt"], 2);
    let metrics = host.get_text("/metrics");
    assert!(metrics.lines().any(|l| l.starts_with("kiln_http_requests_total{") && l.contains("http-probe")), "{metrics}");
}

#[test]
fn a_host_that_allows_no_http_refuses_a_plugin_that_imports_it() {
    let out = kiln().args(["plugin", "check", built::HTTP_PROBE]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("(outbound HTTP): its manifest asks for it in `[capabilities] http`, but this host allows none of what it asks"), "{stderr}");
}

/// send-email as shipped, on a host whose config points it at `mail_url`
/// with `secret` as its key, allowed to reach only the test server.
pub(crate) fn send_email_host(server: &TestServer, mail_url: &str, secret_var: &str) -> HostDir {
    let dir = HostDir::new(&format!(
        "lease_ms = 5000\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n[queues.default]\nconcurrency = 4\n\
         [capabilities]\nallow_http = [\"{}\"]\n[config]\nmail_api_url = \"{mail_url}\"\n[secrets]\nmail_api_key = {{ env = \"{secret_var}\" }}\n",
        server.origin()
    ));
    // Its own manifest, with a short deadline and quick retries.
    let manifest = std::fs::read_to_string(std::path::Path::new(built::SEND_EMAIL).join("plugin.toml")).unwrap();
    let manifest = manifest.replace("timeout_ms = 10000", "timeout_ms = 1500").replace("max_attempts = 5", "max_attempts = 2\ninitial_backoff_ms = 100");
    std::fs::remove_file(dir.plugins().join("send-email")).unwrap();
    dir.add_plugin("send-email", built::SEND_EMAIL, &manifest);
    dir
}

#[test]
fn send_email_on_a_host_delivers_through_the_configured_api_with_its_secret_and_retries_what_failed() {
    let server = TestServer::start();
    const SECRET: &str = "sk-live-4f1c9a77e2";
    let dir = send_email_host(&server, &server.url("/mail"), "KILN_TEST_MAIL_KEY");
    let mut serve = dir.command();
    serve.env("KILN_TEST_MAIL_KEY", SECRET);
    let host = crate::support::host::Host::spawn(serve, &dir.path().join("stderr.log"));

    let id = host.enqueue(json!({"kind": "send-email", "payload": {"to": "ada@example.com", "subject": "Welcome", "body": "Hello, Ada."}}));
    let job = host.wait_for(id, "completed");
    assert_eq!(job["result"], json!({"sent_to": "ada@example.com", "attempt": 1, "status": 200, "id": 7}), "{job}");
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let mail = &seen[0];
    assert_eq!((mail.method.as_str(), mail.path.as_str()), ("POST", "/mail"));
    assert_eq!(mail.headers["host"], format!("127.0.0.1:{}", server.port), "the Host header is sent");
    assert_eq!(mail.headers["content-type"], "application/json");
    assert_eq!(mail.headers["authorization"], format!("Bearer {SECRET}"), "the secret reaches the API");
    assert!(mail.headers.get("cookie").is_none() && mail.headers.get("proxy-authorization").is_none(), "no credentials of the host's");
    assert_eq!(serde_json::from_slice::<Value>(&mail.body).unwrap(), json!({"to": "ada@example.com", "subject": "Welcome", "body": "Hello, Ada."}));

    // A 500 is a retry; the API quoted the key back, and the job's error shows it redacted.
    let failing = host.enqueue(json!({"kind": "send-email", "payload": {"to": "ada@example.com", "subject": "fail"}}));
    let job = host.wait_for(failing, "dead");
    assert_eq!((job["attempt"].as_i64(), job["errors"][0]["outcome"].as_str()), (Some(2), Some("retry")), "{job}");
    let error = job["errors"][0]["message"].as_str().unwrap();
    assert!(error.contains(&format!("the mail API at {} answered 500", server.url("/mail"))), "{error}");
    assert!(error.contains("you sent authorization: Bearer [redacted]"), "{error}");

    // An API that never answers: the run ends at its own deadline (1.5 s), not the server's.
    let hanging = host.enqueue(json!({"kind": "send-email", "payload": {"to": "ada@example.com", "subject": "hang"}}));
    let job = host.wait_for(hanging, "dead");
    assert_eq!(job["errors"][0]["outcome"], "timed_out", "{job}");
    assert_eq!(job["errors"][1]["outcome"], "timed_out", "{job}");

    // The secret is nowhere the host writes: its log, the jobs, the metrics.
    let everything = format!("{}\n{}\n{}", host.stderr(), host.get("/jobs?limit=100").1, host.get_text("/metrics"));
    assert!(!everything.contains(SECRET), "the secret leaked");
    assert!(everything.contains("http_requests=1"), "the run-end line counts the request: {}", host.stderr());
}

#[test]
fn send_email_pointed_outside_its_grant_is_denied_and_the_error_names_the_url_and_the_grant() {
    let server = TestServer::start();
    let other_port = server.port.wrapping_add(1).max(1);
    let outside = format!("http://127.0.0.1:{other_port}/mail");
    let dir = send_email_host(&server, &outside, "KILN_TEST_MAIL_KEY");
    let mut serve = dir.command();
    serve.env("KILN_TEST_MAIL_KEY", "k");
    let host = crate::support::host::Host::spawn(serve, &dir.path().join("stderr.log"));
    let id = host.enqueue(json!({"kind": "send-email", "payload": {"to": "ada@example.com", "subject": "Welcome"}}));
    let job = host.wait_for(id, "dead");
    assert_eq!(job["errors"][0]["outcome"], "fatal", "a denied request is not retried: {job}");
    let error = job["errors"][0]["message"].as_str().unwrap();
    assert!(
        error.contains(&format!("the host denied POST {outside} is not in the plugin's grant (`[capabilities] http` allowed here: "))
            && error.contains(&server.origin()),
        "the job's error names the URL and the grant: {error}"
    );
    assert!(server.seen.lock().unwrap().is_empty(), "nothing reached any server");
}
