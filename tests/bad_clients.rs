//! Clients that hold on, trickle, flood or come from a web page: idle and
//! slow connections are closed, connections are capped, pages of jobs are
//! bounded in bytes, a browser cannot drive the API, every error is JSON,
//! and what a client sends is bounded and read as it says.

use crate::support::host::{Host, HostDir, PATIENCE, eventually};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TIGHT: &str = "poll_interval_ms = 100\n\n[queues.default]\nconcurrency = 2\n\n\
    [http]\nmax_connections = 16\nheader_timeout_ms = 800\nbody_timeout_ms = 1500\n";

fn address(host: &Host) -> String {
    host.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or PATIENCE passes);
/// returns what it sent.
fn read_to_close(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn silent_trickling_and_idle_connections_are_closed() {
    let dir = HostDir::new(TIGHT);
    let host = dir.start();
    let at = address(&host);

    let mut silent = TcpStream::connect(&at).unwrap();
    assert!(read_to_close(&mut silent).is_some(), "a connection that sends nothing is closed");

    // Headers one byte every 100 ms: never complete within the timeout.
    let mut trickle = TcpStream::connect(&at).unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {at}\r\nX-Slow: {}\r\n\r\n", "a".repeat(200));
    let started = Instant::now();
    let mut closed = false;
    for byte in request.as_bytes() {
        if trickle.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(started.elapsed() < PATIENCE, "the trickling client was never cut off");
    }
    let answered = closed || read_to_close(&mut trickle).is_some_and(|got| !String::from_utf8_lossy(&got).contains("\"ok\""));
    assert!(answered, "the trickled request was not served");

    // A kept-alive connection that goes quiet after its request is closed too.
    let mut kept = TcpStream::connect(&at).unwrap();
    write!(kept, "GET /healthz HTTP/1.1\r\nHost: {at}\r\n\r\n").unwrap();
    let got = read_to_close(&mut kept).expect("the idle kept-alive connection is closed");
    assert!(String::from_utf8_lossy(&got).contains("\"status\":\"ok\""), "its request was answered first");

    // A body that never finishes: 408, in JSON.
    let mut slow_body = TcpStream::connect(&at).unwrap();
    write!(slow_body, "POST /jobs HTTP/1.1\r\nHost: {at}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"kind\"").unwrap();
    let got = String::from_utf8_lossy(&read_to_close(&mut slow_body).unwrap()).into_owned();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("\"error\":\"the request body was not complete within 1500 ms\""), "{got}");

    assert_eq!(host.get("/healthz").0, 200, "the host serves on");
}

#[test]
fn connections_over_the_cap_are_refused_and_descriptors_stay_bounded() {
    let dir = HostDir::new(&TIGHT.replace("header_timeout_ms = 800", "header_timeout_ms = 20000"));
    let host = dir.start();
    let at = address(&host);
    let baseline = open_fds(host.pid());
    // Far more idle sockets than the cap (16).
    let idle: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(&at).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = open_fds(host.pid());
    assert!(held <= baseline + 16 + 16, "descriptors grew from {baseline} to {held} with a cap of 16 connections");
    // While the cap is held, a new client is turned away at once, not queued for ever.
    let mut turned_away = TcpStream::connect(&at).unwrap();
    write!(turned_away, "GET /healthz HTTP/1.1\r\nHost: {at}\r\n\r\n").ok();
    let got = read_to_close(&mut turned_away).expect("closed, not left hanging");
    assert!(!String::from_utf8_lossy(&got).contains("\"ok\""), "served over the cap");
    drop(idle);
    eventually("the host serves again once the idle sockets are gone", || {
        host.agent().get(&format!("{}/healthz", host.url)).call().is_ok_and(|r| r.status() == 200)
    });
    assert!(host.stderr().contains("connection refused: the API holds its maximum of open connections"), "{}", host.stderr());
    assert!(!host.stderr().contains("Too many open files"));
}

#[test]
fn a_page_of_large_jobs_is_bounded_in_bytes_and_pages_reach_every_job() {
    let dir = HostDir::new("[queues.default]\nconcurrency = 1\n");
    let host = dir.start();
    assert_eq!(host.post("/queues/default/pause", &json!(null)).0, 200);
    let big = "x".repeat(1_000_000);
    for _ in 0..20 {
        host.enqueue(json!({"kind": "echo", "payload": big}));
    }
    let (status, page) = host.get("/jobs?limit=100");
    assert_eq!(status, 200);
    let first = page["jobs"].as_array().unwrap();
    assert!(first.len() < 20 && first.len() >= 8, "an 8 MiB page holds 8 or 9 jobs of 1 MB, not {}", first.len());
    assert!(page["next_after"].is_i64(), "and says where the next page starts");
    let all = host.jobs_of("echo");
    assert_eq!(all.len(), 20, "every job is reached by paging");
    let mut ids: Vec<i64> = all.iter().map(|j| j["id"].as_i64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 20, "no job twice");
}

/// Sends a request with the given headers and body; returns status and body.
fn raw(host: &Host, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let at = address(host);
    let mut stream = TcpStream::connect(&at).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {at}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let got = String::from_utf8_lossy(&read_to_close(&mut stream).unwrap()).into_owned();
    let status = got.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = got.split_once("\r\n\r\n").unwrap_or((&got, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn a_web_page_cannot_drive_the_api() {
    let dir = HostDir::new(TIGHT);
    let host = dir.start();
    let job = r#"{"kind": "echo", "payload": 1}"#;
    // The form and text types a page may post cross-origin without asking.
    for kind in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let (status, _, body) = raw(&host, "POST", "/jobs", &[("Content-Type", kind)], job);
        assert_eq!(status, 415, "{kind}: {body}");
        assert!(body.contains("must be Content-Type application/json"), "{body}");
    }
    let (status, _, body) = raw(&host, "POST", "/queues/default/pause", &[("Origin", "http://evil.example")], "");
    assert_eq!(status, 403, "a cross-origin POST, even bodiless: {body}");
    let (status, _, body) =
        raw(&host, "POST", "/jobs", &[("Content-Type", "application/json"), ("Host", "rebound.evil.example:8080")], job);
    assert_eq!(status, 421, "DNS rebinding: {body}");
    assert!(body.contains("http.allowed_hosts"), "{body}");
    let (status, head, _) = raw(&host, "OPTIONS", "/jobs", &[("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST")], "");
    assert!(status >= 400, "a preflight is not granted: {status}");
    assert!(!head.contains("access-control-allow"), "no CORS header is ever sent: {head}");
    let (_, queues) = host.get("/queues");
    assert_eq!(queues["queues"][0]["paused"], false, "the queue was not paused");
    assert!(host.get("/jobs").1["jobs"].as_array().unwrap().is_empty(), "no job was stored");

    // The API's own clients still work: JSON bodies, bodiless POSTs, its own origin.
    let own = host.url.clone();
    let (status, _, body) = raw(&host, "POST", "/jobs", &[("Content-Type", "application/json; charset=utf-8"), ("Origin", &own)], job);
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = raw(&host, "POST", "/queues/default/pause", &[], "");
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = raw(&host, "GET", "/healthz", &[("Host", "localhost")], "");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_allowed_hosts_list_admits_a_name() {
    let dir = HostDir::new(&format!("{TIGHT}allowed_hosts = [\"kiln.internal\"]\n"));
    let host = dir.start();
    let (status, _, body) = raw(&host, "GET", "/healthz", &[("Host", "kiln.internal:8080")], "");
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = raw(&host, "GET", "/healthz", &[("Host", "other.internal")], "");
    assert_eq!(status, 421, "{body}");
}

#[test]
fn every_error_is_json_and_names_no_server_path() {
    let dir = HostDir::new(TIGHT);
    let host = dir.start();
    for (method, path, status) in [("GET", "/nowhere", 404), ("PATCH", "/jobs", 405), ("PUT", "/healthz", 405), ("DELETE", "/jobs", 400)] {
        let (got, head, body) = raw(&host, method, path, &[], "");
        assert_eq!(got, status, "{method} {path}: {body}");
        assert!(head.contains("content-type: application/json"), "{method} {path}: {head}");
        let parsed: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body:?}"));
        assert!(parsed["error"].is_string(), "{body}");
    }
    // An upload over the body limit (32 MiB): 413 in JSON. Written from
    // another thread: the host answers before it has read it all.
    let at = address(&host);
    let mut upload = TcpStream::connect(&at).unwrap();
    let size = 33usize << 20;
    write!(upload, "PUT /plugins/echo HTTP/1.1\r\nHost: {at}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n").unwrap();
    let mut writer = upload.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..33 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let got = String::from_utf8_lossy(&read_to_close(&mut upload).unwrap()).into_owned();
    writing.join().unwrap();
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(body.contains("\"error\":\"request body is over the limit of 33554432 bytes\""), "{body}");
    // A refused upload names the plugin, never where the server keeps it.
    let (status, body) = host.put("/plugins/echo", &json!({"manifest": "name = \"echo\"\nversion = \"2\"\n", "wasm_base64": "AGFzbQ=="}));
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(!error.contains(&*dir.path().to_string_lossy()) && !error.contains("/tmp/"), "{error}");
}

#[test]
fn what_a_client_sends_is_bounded_and_read_as_it_says() {
    let dir = HostDir::new(TIGHT);
    let host = dir.start();
    let (status, body) = host.post("/jobs", &json!({"kind": "echo", "unique_key": "k".repeat(513)}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unique_key is 513 bytes, over the limit of 512 bytes"), "{body}");

    // An offset is taken as it says; a time without one is refused.
    let (status, body) = host.post("/jobs", &json!({"kind": "echo", "scheduled_at": "2030-01-01T02:00:00+02:00"}));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["scheduled_at"], "2030-01-01T00:00:00.000Z");
    let (status, body) = host.post("/jobs", &json!({"kind": "echo", "scheduled_at": "2030-01-01T00:00:00"}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("with an offset"), "{body}");

    // A batch says which jobs it created and which already existed.
    let first = host.enqueue(json!({"kind": "echo", "unique_key": "once", "scheduled_at": "2030-01-01T00:00:00Z"}));
    let (status, body) = host.post(
        "/jobs",
        &json!([{"kind": "echo", "unique_key": "once"}, {"kind": "echo", "payload": 2}]),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!((body[0]["id"].as_i64(), &body[0]["created"]), (Some(first), &json!(false)), "{body}");
    assert_eq!(body[1]["created"], true, "{body}");

    for bad in ["+1", "%201", "01x", "-1", "1.0"] {
        let (status, body) = host.get(&format!("/jobs/{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(host.get(&format!("/jobs/{first}")).0, 200);
}
