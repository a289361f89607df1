//! Traces end to end: the real `kiln serve` exporting to an OTLP/HTTP
//! receiver started here (what it receives decoded with the real protobuf
//! types of `opentelemetry-proto`), and the W3C trace context a job carries
//! from its caller, through every attempt, to its plugin's outbound HTTP
//! requests (seen by a real HTTP server).

use crate::support::host::{Host, eventually};
use crate::http::send_email_host;
use crate::support::http_server::TestServer;
use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value as Any};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use prost::Message as _;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// A caller's span: trace `4bf9…4736`, span `00f0…02b7`, sampled.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// An OTLP/HTTP trace receiver on 127.0.0.1: `POST /v1/traces`, protobuf.
struct Collector {
    port: u16,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    /// Bodies that were not `application/x-protobuf` or did not decode.
    refused: Arc<Mutex<Vec<String>>>,
}

/// One span as received, with its resource's attributes.
#[derive(Debug, Clone)]
struct Received {
    resource: Vec<KeyValue>,
    span: Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<Any> {
        attribute(&self.span.attributes, key)
    }

    fn int(&self, key: &str) -> i64 {
        match self.attribute(key) {
            Some(Any::IntValue(n)) => n,
            other => panic!("{key} is {other:?}, not an integer, on {:?}", self.span.name),
        }
    }

    fn text(&self, key: &str) -> String {
        match self.attribute(key) {
            Some(Any::StringValue(s)) => s,
            other => panic!("{key} is {other:?}, not a string, on {:?}", self.span.name),
        }
    }

    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<Any> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    fn start() -> Self {
        let received: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
        let refused: Arc<Mutex<Vec<String>>> = Arc::default();
        let (keep, refuse) = (received.clone(), refused.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
                        let (keep, refuse) = (keep.clone(), refuse.clone());
                        async move {
                            let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                            match ExportTraceServiceRequest::decode(body.as_ref()) {
                                Ok(request) if content_type == "application/x-protobuf" => {
                                    keep.lock().unwrap().push(request);
                                    http::StatusCode::OK
                                }
                                Ok(_) => {
                                    refuse.lock().unwrap().push(format!("content-type {content_type:?}"));
                                    http::StatusCode::UNSUPPORTED_MEDIA_TYPE
                                }
                                Err(e) => {
                                    refuse.lock().unwrap().push(format!("undecodable: {e}"));
                                    http::StatusCode::BAD_REQUEST
                                }
                            }
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Self { port: rx.recv().unwrap(), received, refused }
    }

    fn spans(&self) -> Vec<Received> {
        assert!(self.refused.lock().unwrap().is_empty(), "the host sent what OTLP does not allow: {:?}", self.refused.lock().unwrap());
        let mut spans = Vec::new();
        for request in self.received.lock().unwrap().iter() {
            for resource_spans in &request.resource_spans {
                let resource = resource_spans.resource.as_ref().map(|r| r.attributes.clone()).unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    spans.extend(scope.spans.iter().map(|span| Received { resource: resource.clone(), span: span.clone() }));
                }
            }
        }
        spans
    }

    fn spans_of(&self, trace: &str) -> Vec<Received> {
        self.spans().into_iter().filter(|s| s.trace_id() == trace).collect()
    }
}

/// POST /jobs with a `traceparent` header (or none); the job's id.
fn enqueue_traced(host: &Host, traceparent: Option<&str>, job: &Value) -> i64 {
    let mut request = host.agent().post(&format!("{}/jobs", host.url));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let mut response = request.send_json(job).unwrap();
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(response.status(), 201, "{body}");
    body["id"].as_i64().unwrap()
}

/// The `traceparent` of the mail API's `n`th request, split into trace and parent span.
fn mail_traceparent(server: &TestServer, n: usize) -> Option<(String, String)> {
    let seen = server.seen.lock().unwrap();
    let header = seen[n].headers.get("traceparent")?.to_str().unwrap().to_string();
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3].len()), (4, "00", 2), "{header}");
    Some((parts[1].to_string(), parts[2].to_string()))
}

/// The `traceparent` of the last request to `/send` (the probe's).
fn sent_traceparent(server: &TestServer) -> Option<String> {
    let seen = server.seen.lock().unwrap();
    let sent = seen.iter().rev().find(|s| s.path == "/send").expect("a request to /send");
    sent.headers.get("traceparent").map(|v| v.to_str().unwrap().to_string())
}

const PROBE_MANIFEST: &str = "name = \"http-probe\"\nversion = \"1\"\n[capabilities]\nhttp = [\"http://127.0.0.1:*\"]\n";

#[test]
fn a_job_enqueued_with_a_traceparent_is_one_trace_from_the_callers_span_through_each_attempt_to_its_plugins_requests() {
    let collector = Collector::start();
    let server = TestServer::start();
    let dir = send_email_host(&server, &server.url("/mail"), "KILN_TEST_MAIL_KEY");
    let config = std::fs::read_to_string(dir.path().join("kiln.toml")).unwrap();
    let telemetry = format!("\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\nservice_name = \"kiln-traces-test\"\n", collector.port);
    std::fs::write(dir.path().join("kiln.toml"), config + &telemetry).unwrap();
    dir.add_plugin("http-probe", crate::support::built::HTTP_PROBE, PROBE_MANIFEST);
    let mut serve = dir.command();
    serve.env("KILN_TEST_MAIL_KEY", "k").env("OTEL_BSP_SCHEDULE_DELAY", "100").env_remove("OTEL_SERVICE_NAME");
    let mut host = Host::spawn(serve, &dir.path().join("stderr.log"));

    // One job, one attempt, one request to the mail API.
    let caller = traceparent(CALLER_TRACE, CALLER_SPAN);
    let id = enqueue_traced(&host, Some(&caller), &json!({"kind": "send-email", "payload": {"to": "ada@example.com", "subject": "Welcome"}}));
    let job = host.wait_for(id, "completed");
    assert_eq!(job["trace_id"], CALLER_TRACE, "the job shows its trace: {job}");
    let (trace, parent) = mail_traceparent(&server, 0).expect("the plugin's request carries a traceparent");
    assert_eq!(trace, CALLER_TRACE, "the plugin's request is in the caller's trace");

    // A job that fails twice: two attempts, each its own span.
    let failing_trace = "0af7651916cd43dd8448eb211c80319c";
    let failing = traceparent(failing_trace, "b7ad6b7169203331");
    let dead = enqueue_traced(&host, Some(&failing), &json!({"kind": "send-email", "payload": {"to": "ada@example.com", "subject": "fail"}}));
    host.wait_for(dead, "dead");

    // A job with no caller trace starts one of its own.
    let alone = enqueue_traced(&host, None, &json!({"kind": "echo", "payload": {"n": 1}}));
    host.wait_for(alone, "completed");

    eventually("the collector has the first job's send and process spans", || collector.spans_of(CALLER_TRACE).len() >= 2);
    let spans = collector.spans_of(CALLER_TRACE);
    let send = spans.iter().find(|s| s.span.name == "send default").unwrap_or_else(|| panic!("no send span: {spans:#?}"));
    assert_eq!(send.span.kind, SpanKind::Producer as i32);
    assert_eq!(send.parent_id(), CALLER_SPAN, "the enqueue is a child of the caller's span");
    assert_eq!((send.text("messaging.system"), send.text("messaging.operation.type")), ("kiln".into(), "send".into()));
    assert_eq!(send.text("messaging.destination.name"), "default");
    let process = spans.iter().find(|s| s.span.name == "process default").unwrap_or_else(|| panic!("no process span: {spans:#?}"));
    assert_eq!(process.span.kind, SpanKind::Consumer as i32);
    assert_eq!(process.parent_id(), send.span_id(), "the attempt is a child of the enqueue");
    assert_eq!(process.span_id(), parent, "the plugin's request is a child of the attempt");
    assert_eq!(process.text("messaging.message.id"), id.to_string());
    assert_eq!(process.text("messaging.operation.type"), "process");
    assert_eq!((process.text("kiln.job.kind"), process.int("kiln.job.attempt"), process.text("kiln.job.outcome")), ("send-email".into(), 1, "ok".into()));
    assert!(process.int("kiln.job.fuel_used") > 0 && process.int("kiln.job.peak_memory_bytes") > 0, "{process:#?}");
    assert_eq!(process.int("kiln.job.http_requests"), 1);
    // The store keeps the claim's time in milliseconds: compare at that grain.
    assert!(process.span.start_time_unix_nano >= send.span.start_time_unix_nano / 1_000_000 * 1_000_000, "claimed after it was enqueued");
    assert!(process.span.end_time_unix_nano > process.span.start_time_unix_nano);
    let events: Vec<&str> = process.span.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["run started", "run ended"]);
    assert_ne!(process.span.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    assert_eq!(attribute(&process.resource, "service.name"), Some(Any::StringValue("kiln-traces-test".into())));
    assert!(matches!(attribute(&process.resource, "service.instance.id"), Some(Any::StringValue(h)) if h.ends_with(&format!("-{}", host.pid()))));

    // Each failed attempt is a span under the one enqueue, marked an error.
    eventually("the failing job's two attempts are exported", || collector.spans_of(failing_trace).iter().filter(|s| s.span.name == "process default").count() == 2);
    let spans = collector.spans_of(failing_trace);
    let send = spans.iter().find(|s| s.span.name == "send default").expect("the failing job's send span");
    let mut attempts: Vec<&Received> = spans.iter().filter(|s| s.span.name == "process default").collect();
    attempts.sort_by_key(|s| s.int("kiln.job.attempt"));
    assert_eq!(attempts.iter().map(|s| s.int("kiln.job.attempt")).collect::<Vec<_>>(), [1, 2]);
    for attempt in &attempts {
        assert_eq!(attempt.parent_id(), send.span_id(), "every attempt is a child of the enqueue");
        assert_eq!(attempt.text("error.type"), attempt.text("kiln.job.outcome"));
        let status = attempt.span.status.as_ref().expect("a status");
        assert_eq!(status.code, StatusCode::Error as i32);
        assert!(status.message.contains("answered 500"), "{status:?}");
    }
    assert!(attempts[1].span.start_time_unix_nano > attempts[0].span.end_time_unix_nano, "the retry came after the first attempt");

    // The job that came with no trace is a trace of its own: the send is its root.
    let echo_span = || collector.spans().into_iter().find(|s| s.span.name == "process default" && s.text("messaging.message.id") == alone.to_string());
    eventually("the echo job's attempt is exported", || echo_span().is_some());
    let echo = echo_span().unwrap();
    assert_eq!(echo.text("kiln.job.kind"), "echo");
    let roots = collector.spans_of(&echo.trace_id());
    let root = roots.iter().find(|s| s.span.name == "send default").expect("its send span");
    assert!(root.span.parent_span_id.is_empty(), "{root:#?}");
    assert_eq!(echo.parent_id(), root.span_id());

    // A plugin that sets a traceparent of its own, to graft its request
    // onto another trace: the host's context replaces it.
    let forged = traceparent("ffffffffffffffffffffffffffffffff", "eeeeeeeeeeeeeeee");
    let probe = enqueue_traced(
        &host,
        Some(&caller),
        &json!({"kind": "http-probe", "payload": {"requests": [{"method": "POST", "url": server.url("/send"), "headers": [["traceparent", forged]], "body": "x"}]}}),
    );
    host.wait_for(probe, "completed");
    let sent = sent_traceparent(&server).expect("the probe's request has a traceparent");
    assert!(sent.starts_with(&format!("00-{CALLER_TRACE}-")) && sent != forged, "{sent}");

    // A SIGTERM sends what is still batched before the host exits.
    let before = collector.spans().len();
    let last = enqueue_traced(&host, None, &json!({"kind": "echo", "payload": {"n": 2}}));
    host.wait_for(last, "completed");
    let (status, _) = host.sigterm();
    assert!(status.success(), "{}", host.stderr());
    let spans = collector.spans();
    assert!(
        spans.iter().any(|s| s.span.name == "process default" && s.text("messaging.message.id") == last.to_string()),
        "the last job's span was flushed at shutdown ({before} spans before it)"
    );
}

#[test]
fn without_an_endpoint_the_callers_traceparent_reaches_the_plugins_requests_as_sent_and_a_bad_one_is_ignored() {
    let server = TestServer::start();
    let dir = send_email_host(&server, &server.url("/mail"), "KILN_TEST_MAIL_KEY");
    dir.add_plugin("http-probe", crate::support::built::HTTP_PROBE, PROBE_MANIFEST);
    let mut serve = dir.command();
    serve.env("KILN_TEST_MAIL_KEY", "k").env_remove("OTEL_EXPORTER_OTLP_ENDPOINT").env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let host = Host::spawn(serve, &dir.path().join("stderr.log"));
    let mail = json!({"kind": "send-email", "payload": {"to": "ada@example.com", "subject": "Welcome"}});

    let caller = traceparent(CALLER_TRACE, CALLER_SPAN);
    host.wait_for(enqueue_traced(&host, Some(&caller), &mail), "completed");
    assert_eq!(mail_traceparent(&server, 0), Some((CALLER_TRACE.to_string(), CALLER_SPAN.to_string())), "passed on as it came");

    // Not trace context (a zero trace id, garbage, an oversized header):
    // enqueued all the same, and nothing is made up for the plugin's request.
    let huge = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01{}", "-x".repeat(4096));
    for (n, bad) in ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "I am not a traceparent", huge.as_str()].iter().enumerate() {
        host.wait_for(enqueue_traced(&host, Some(bad), &mail), "completed");
        assert_eq!(mail_traceparent(&server, n + 1), None, "{bad:.80}");
    }
    let job = host.wait_for(enqueue_traced(&host, None, &mail), "completed");
    assert_eq!(mail_traceparent(&server, 4), None, "no trace, no header");
    assert_eq!(job["trace_id"], Value::Null, "{job}");
    // With no trace of the host's, a plugin's own context is its business.
    let own = traceparent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let probe = json!({"kind": "http-probe", "payload": {"requests": [{"method": "POST", "url": server.url("/send"), "headers": [["traceparent", own]], "body": "x"}]}});
    host.wait_for(enqueue_traced(&host, None, &probe), "completed");
    assert_eq!(sent_traceparent(&server), Some(own));
    assert!(!host.stderr().contains("exporting traces"), "{}", host.stderr());
}

#[test]
fn a_collector_that_never_answers_holds_up_neither_the_jobs_nor_the_shutdown() {
    // Accepts connections and reads nothing, answers nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let dir = crate::support::host::HostDir::new(&format!(
        "poll_interval_ms = 100\nshutdown_grace_ms = 1000\n[queues.default]\nconcurrency = 4\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n"
    ));
    let mut serve = dir.command();
    serve.env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let mut host = Host::spawn(serve, &dir.path().join("stderr.log"));
    let ids: Vec<i64> = (0..20).map(|n| enqueue_traced(&host, Some(&traceparent(CALLER_TRACE, CALLER_SPAN)), &json!({"kind": "echo", "payload": {"n": n}}))).collect();
    for id in ids {
        host.wait_for(id, "completed");
    }
    let (status, took) = host.sigterm();
    assert!(status.success(), "{}", host.stderr());
    // The flush gives up after 5 s; the grace period is 1 s.
    assert!(took < std::time::Duration::from_secs(20), "shutdown took {took:?}");
}
