//! What capabilities cost, on the real `kiln serve` (release, SQLite).
//!
//! Fan-out: one `fan-out` job whose payload has 1,000 items, timed from its
//! `POST /jobs` until its 1,000 `echo` children (inserted with its
//! completion) have completed; against the baseline of the same 1,000
//! `echo` jobs posted by a client in one `POST /jobs`, timed the same way.
//!
//! Key-value state: 20,000 jobs that each `get` and `set` a key of their
//! own (the `kv-probe` test plugin), against 20,000 `echo` jobs with the
//! same payload, each burned down from a paused queue on the default
//! config; jobs per second, and the ratio.
//!
//! Outbound HTTP: one iteration of the `http-probe` plugin (in process,
//! a real sandbox) sending 20 GETs to a local HTTP server, per request,
//! against the same 20 GETs sent natively by the host's own HTTP client
//! (ureq, a new connection each, as wasi:http opens one per request);
//! medians of per-request time, and the ratio.
//!
//! Run: `cargo bench --bench capabilities` (add `-- --quick` for fewer
//! rounds). Variants alternate round by round; figures are medians, and
//! the ratio is of medians measured in the same run.

mod served;

use serde_json::{Value, json};
use served::ServedHost;
use std::path::Path;
use std::time::{Duration, Instant};

const CHILDREN: usize = 1_000;

fn completed_echoes(host: &ServedHost) -> u64 {
    let (_, answer) = host.get("/queues");
    answer["queues"].as_array().into_iter().flatten().map(|q| q["jobs"]["completed"].as_u64().unwrap_or(0)).sum()
}

/// Seconds from the POST until `expected` jobs have completed.
fn until_completed(host: &ServedHost, body: &Value, expected: u64) -> f64 {
    let before = completed_echoes(host);
    let started = Instant::now();
    let (status, answer) = host.post("/jobs", body);
    assert_eq!(status, 201, "{answer}");
    while completed_echoes(host) < before + expected {
        assert!(started.elapsed() < Duration::from_secs(120), "the jobs never completed");
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed().as_secs_f64()
}

/// Jobs per second from the queue's resume to its last completion.
fn burn_down(host: &ServedHost, jobs: &[Value]) -> f64 {
    assert_eq!(host.post("/queues/default/pause", &Value::Null).0, 200);
    let before = completed_echoes(host);
    for chunk in jobs.chunks(1000) {
        assert_eq!(host.post("/jobs", &Value::Array(chunk.to_vec())).0, 201);
    }
    let started = Instant::now();
    assert_eq!(host.post("/queues/default/resume", &Value::Null).0, 200);
    while completed_echoes(host) < before + jobs.len() as u64 {
        assert!(started.elapsed() < Duration::from_secs(300), "the jobs never completed");
        std::thread::sleep(Duration::from_millis(20));
    }
    jobs.len() as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A local HTTP server answering `GET /ok` with a short body.
fn http_server() -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route("/ok", axum::routing::get(|| async { "fine" }));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Per-request seconds of outbound HTTP from a plugin, and natively.
fn outbound_http(rounds: usize) -> (f64, f64) {
    use kiln::capability::HostCapabilities;
    use kiln::plugin::{self, LoadPolicy};
    use kiln::sandbox::{Budget, JobInput, Sandbox};
    const REQUESTS: usize = 20;
    let port = http_server();
    let url = format!("http://127.0.0.1:{port}/ok");
    let mut host = HostCapabilities::default();
    host.policy.allow_http.push(format!("http://127.0.0.1:{port}").parse().unwrap());
    let policy = LoadPolicy { capabilities: std::sync::Arc::new(host), ..LoadPolicy::default() };
    let sandbox = Sandbox::new().unwrap();
    let files = plugin::resolve(plugin::built::HTTP_PROBE, &[]).unwrap();
    let probe = plugin::load_with(&sandbox, None, &files, &policy).unwrap();
    let requests: Vec<Value> = (0..REQUESTS).map(|_| json!({"url": url})).collect();
    let job = JobInput {
        id: "bench".into(),
        kind: "http-probe".into(),
        attempt: 1,
        max_attempts: 1,
        payload: serde_json::to_vec(&json!({"requests": requests, "fail_on_error": true})).unwrap(),
        checkpoint: None,
        progress: Default::default(),
        traceparent: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let native: ureq::Agent = ureq::Agent::config_builder().max_idle_connections(0).build().into();
    let (mut plugin_times, mut native_times) = (Vec::new(), Vec::new());
    for _ in 0..rounds * 10 {
        let started = Instant::now();
        let report = runtime.block_on(sandbox.run_iteration(&probe.component, &job, &Budget::default(), &sandbox.stop_signal()));
        assert!(report.outcome.is_ok(), "{:?}", report.outcome);
        assert_eq!(report.http.requests, REQUESTS as u64);
        plugin_times.push(started.elapsed().as_secs_f64() / REQUESTS as f64);
        let started = Instant::now();
        for _ in 0..REQUESTS {
            let body = native.get(&url).call().unwrap().body_mut().read_to_string().unwrap();
            assert_eq!(body, "fine");
        }
        native_times.push(started.elapsed().as_secs_f64() / REQUESTS as f64);
    }
    (median(&mut plugin_times), median(&mut native_times))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 7 };
    let (from_plugin, native) = outbound_http(rounds);
    println!(
        "outbound HTTP, per request: median {:.1} µs from a plugin; {:.1} µs natively (ureq); ratio {:.2}\n",
        from_plugin * 1e6,
        native * 1e6,
        from_plugin / native
    );
    let plugins = [Path::new(kiln::plugin::built::ECHO), Path::new(kiln::plugin::built::FAN_OUT), Path::new(kiln::plugin::built::KV_PROBE)];
    let host = ServedHost::start("", &plugins);
    let items: Vec<Value> = (0..CHILDREN).map(|i| json!(i)).collect();
    let fan_out = json!({"kind": "fan-out", "payload": {"items": items}});
    let batch = Value::Array((0..CHILDREN).map(|i| json!({"kind": "echo", "payload": i})).collect());
    // Warm the host (compiled plugins, connections) before measuring.
    until_completed(&host, &batch, CHILDREN as u64);
    let (mut fanned, mut posted) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // The parent counts as a completed job too.
        fanned.push(until_completed(&host, &fan_out, CHILDREN as u64 + 1));
        posted.push(until_completed(&host, &batch, CHILDREN as u64));
        println!("round {}: fan-out {:.1} ms, client batch {:.1} ms", round + 1, fanned[round] * 1e3, posted[round] * 1e3);
    }
    let (fanned, posted) = (median(&mut fanned), median(&mut posted));

    let count = if quick { 5_000 } else { 20_000 };
    let kv_ops = |i: usize| json!({"ops": [{"op": "get", "key": format!("k{i}")}, {"op": "set", "key": format!("k{i}"), "value": "v"}]});
    let kv_jobs: Vec<Value> = (0..count).map(|i| json!({"kind": "kv-probe", "payload": kv_ops(i)})).collect();
    let echo_jobs: Vec<Value> = (0..count).map(|i| json!({"kind": "echo", "payload": kv_ops(i)})).collect();
    let (mut kv_rates, mut echo_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds.min(5) {
        kv_rates.push(burn_down(&host, &kv_jobs));
        echo_rates.push(burn_down(&host, &echo_jobs));
        println!("round {}: kv get+set {:.0} jobs/s, echo {:.0} jobs/s", round + 1, kv_rates[round], echo_rates[round]);
    }
    let (kv_rate, echo_rate) = (median(&mut kv_rates), median(&mut echo_rates));
    println!("\nkv get+set per job: median {kv_rate:.0} jobs/s; echo: {echo_rate:.0} jobs/s; ratio {:.2}", kv_rate / echo_rate);
    println!(
        "\nfan-out of 1 job into {CHILDREN} children, end to end: median {:.1} ms; the same {CHILDREN} jobs posted by a client: {:.1} ms; ratio {:.2}",
        fanned * 1e3,
        posted * 1e3,
        fanned / posted
    );
}
