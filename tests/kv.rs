//! The kv capability end to end: a run reads what is committed plus its
//! own writes; its writes are kept only when it completes `ok`, with its
//! job; a store is its plugin's own; bounds and quotas are errors to the
//! guest.

use crate::support::host::{Host, HostDir, kill_mid_run_and_restart};
use crate::support::{assert_each_says, built, run_json};
use serde_json::{Value, json};
use std::time::Duration;

fn ops(ops: Value, then: &str) -> String {
    json!({"ops": ops, "then": then}).to_string()
}

fn results(run: &crate::support::RunResult) -> Vec<Value> {
    assert_eq!(run.outcome(), "ok", "{}", run.json);
    run.json["output"]["results"].as_array().unwrap().clone()
}

#[test]
fn kiln_run_keeps_a_store_in_its_kv_directory_and_only_an_ok_runs_writes() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().to_str().unwrap();
    let first = ops(json!([{"op": "get", "key": "a"}, {"op": "set", "key": "a", "value": "one"}, {"op": "incr", "key": "n", "by": 5}, {"op": "get", "key": "a"}]), "ok");
    let run = run_json(built::KV_PROBE, &["--kv", kv, "--payload", &first]);
    assert_eq!(results(&run), [json!(null), json!("ok"), json!(5), json!("one")], "a run sees its own writes");
    assert_eq!(run.json["kv_writes"].as_array().unwrap().len(), 2);

    // A failed run's writes are not kept.
    let failing = ops(json!([{"op": "set", "key": "a", "value": "lost"}, {"op": "incr", "key": "n"}]), "retry");
    let run = run_json(built::KV_PROBE, &["--kv", kv, "--payload", &failing]);
    assert_eq!((run.outcome(), run.json["kv_writes"].as_array().unwrap().len()), ("retry", 0));

    let second = ops(json!([{"op": "get", "key": "a"}, {"op": "incr", "key": "n", "by": 2}, {"op": "keys"}, {"op": "delete", "key": "a"}, {"op": "exists", "key": "a"}]), "ok");
    let run = run_json(built::KV_PROBE, &["--kv", kv, "--payload", &second]);
    assert_eq!(results(&run), [json!("one"), json!(7), json!(["a", "n"]), json!("ok"), json!(false)]);

    // Without --kv every run starts from an empty store.
    let run = run_json(built::KV_PROBE, &["--payload", &ops(json!([{"op": "get", "key": "n"}]), "ok")]);
    assert_eq!(results(&run), [json!(null)]);
}

#[test]
fn bounds_and_stores_outside_the_grant_are_errors_to_the_guest() {
    let payload = ops(
        json!([
            {"op": "set", "key_bytes": 257, "value": "x"},
            {"op": "set", "key": "big", "value_bytes": (1 << 20) + 1},
            {"op": "set", "key": "t", "value": "not a number"},
            {"op": "incr", "key": "t"},
            {"op": "incr", "key": "n", "by": 200_000_000_000_000_000u64},
            {"op": "open", "store": "other"},
            {"op": "open", "store": "nope"},
            {"op": "get", "key_bytes": 256},
        ]),
        "ok",
    );
    let run = run_json(built::KV_PROBE, &["--payload", &payload]);
    let got: Vec<String> = results(&run).iter().map(|r| r.as_str().map_or(r.to_string(), str::to_string)).collect();
    let want = [
        "error: key is 257 bytes, over the most of 256",
        "error: value is 1048577 bytes, over the most of 1048576",
        "ok",
        "error: key \"t\" holds no number `increment` can add to",
        "error: delta 200000000000000000 is over the most of 10^17",
        "error: no-such-store",
        "error: access-denied",
        "null",
    ];
    assert_each_says(&got, &want);
}

const CONFIG: &str = "lease_ms = 1500\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 4\n";

fn kv_host(extra: &str) -> (HostDir, Host) {
    let dir = HostDir::new(&format!("{CONFIG}{extra}"));
    dir.link_plugin(built::KV_PROBE);
    // The same component under another name: a plugin of its own, with stores of its own.
    let manifest = std::fs::read_to_string(format!("{}/plugin.toml", built::KV_PROBE)).unwrap().replace("name = \"kv-probe\"", "name = \"kv-twin\"");
    dir.add_plugin("kv-twin", built::KV_PROBE, &manifest);
    let host = dir.start();
    (dir, host)
}

fn run_on(host: &Host, kind: &str, payload: &str, state: &str) -> Value {
    let id = host.enqueue(json!({"kind": kind, "payload": serde_json::from_str::<Value>(payload).unwrap()}));
    host.wait_for(id, state)
}

#[test]
fn on_a_host_writes_commit_with_the_job_and_failed_runs_change_nothing() {
    let (_dir, host) = kv_host("");
    let done = run_on(&host, "kv-probe", &ops(json!([{"op": "set", "key": "cursor", "value": "10"}, {"op": "incr", "key": "runs"}]), "ok"), "completed");
    assert_eq!(done["result"]["results"], json!(["ok", 1]));
    for then in ["retry", "trap", "sleep"] {
        let writes = ops(json!([{"op": "set", "key": "cursor", "value": then}, {"op": "incr", "key": "runs", "by": 100}, {"op": "delete", "key": "cursor"}]), then);
        let job = run_on(&host, "kv-probe", &writes, "dead");
        assert_eq!(job["attempt"], 2, "{job}");
    }
    let read = ops(json!([{"op": "get", "key": "cursor"}, {"op": "get", "key": "runs"}]), "ok");
    assert_eq!(run_on(&host, "kv-probe", &read, "completed")["result"]["results"], json!(["10", "1"]), "failed runs wrote nothing");
    // Another plugin's `default` is another store.
    assert_eq!(run_on(&host, "kv-twin", &read, "completed")["result"]["results"], json!([null, null]));
}

#[test]
fn a_host_killed_mid_run_keeps_none_of_its_writes_after_restart() {
    let (dir, host) = kv_host("");
    run_on(&host, "kv-probe", &ops(json!([{"op": "set", "key": "k", "value": "before"}]), "ok"), "completed");
    let id = host.enqueue(json!({"kind": "kv-probe", "payload": serde_json::from_str::<Value>(&ops(json!([{"op": "set", "key": "k", "value": "killed"}]), "sleep")).unwrap()}));
    let (host, _) = kill_mid_run_and_restart(&dir, host, id);
    let read = ops(json!([{"op": "get", "key": "k"}]), "ok");
    assert_eq!(run_on(&host, "kv-probe", &read, "completed")["result"]["results"], json!(["before"]));
}

#[test]
fn a_store_over_its_quota_refuses_the_write_and_keeps_what_it_holds() {
    let (_dir, host) = kv_host("\n[capabilities]\nkv_quota_bytes = 10000\n");
    let fill = ops(json!([{"op": "set", "key": "a", "value_bytes": 6000}]), "ok");
    assert_eq!(run_on(&host, "kv-probe", &fill, "completed")["result"]["results"], json!(["ok"]));
    let over = ops(json!([{"op": "set", "key": "b", "value_bytes": 6000}, {"op": "set", "key": "c", "value": "small"}]), "ok");
    let results = run_on(&host, "kv-probe", &over, "completed")["result"]["results"].clone();
    assert!(results[0].as_str().unwrap().starts_with("error: store \"default\" would hold 12002 bytes, over its quota of 10000 bytes"), "{results}");
    assert_eq!(results[1], "ok", "a write that fits still goes in");
    let read = ops(json!([{"op": "exists", "key": "a"}, {"op": "exists", "key": "b"}, {"op": "get", "key": "c"}]), "ok");
    assert_eq!(run_on(&host, "kv-probe", &read, "completed")["result"]["results"], json!([true, false, "small"]));
}

#[test]
fn operators_read_and_change_a_plugins_store_through_the_api_and_the_cli() {
    let (_dir, host) = kv_host("");
    let cli = |args: &[&str]| {
        let out = crate::support::kiln().arg("--api").arg(&host.url).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, said, err) = cli(&["kv", "set", "kv-probe", "a key/with spaces", "hello"]);
    assert!(ok, "{err}");
    assert_eq!(said, "set a key/with spaces in store default of kv-probe (5 bytes)\n");
    let read = ops(json!([{"op": "get", "key": "a key/with spaces"}]), "ok");
    assert_eq!(run_on(&host, "kv-probe", &read, "completed")["result"]["results"], json!(["hello"]), "the plugin reads what the operator set");
    run_on(&host, "kv-probe", &ops(json!([{"op": "set", "key": "b", "value": "from the plugin"}]), "ok"), "completed");
    let (ok, said, _) = cli(&["kv", "get", "kv-probe", "b"]);
    assert!(ok);
    assert_eq!(said, "from the plugin\n");
    let (ok, said, _) = cli(&["kv", "list", "kv-probe"]);
    assert!(ok);
    assert_eq!(said.lines().collect::<Vec<_>>(), ["KEY                VALUE", "a key/with spaces  hello", "b                  from the plugin"]);
    let (_, said, _) = cli(&["kv", "list", "kv-twin", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&said).unwrap()["entries"], json!([]), "another plugin's store is empty");
    let (ok, said, _) = cli(&["kv", "delete", "kv-probe", "b"]);
    assert!(ok && said.starts_with("deleted b"), "{said}");
    let (ok, said, _) = cli(&["kv", "delete", "kv-probe", "b"]);
    assert!(ok && said.starts_with("no key b"), "{said}");

    // Bad requests, each named; nothing stored changes.
    let (status, body) = host.get("/plugins/nope/kv");
    assert_eq!(status, 404, "{body}");
    let (status, body) = host.get("/plugins/kv-probe/kv?store=other");
    assert!(status == 404 && body["error"].as_str().unwrap().contains("no kv store \"other\" on this host"), "{body}");
    let (status, body) = host.put(&format!("/plugins/kv-probe/kv/{}", "k".repeat(257)), &json!({"value": "x"}));
    assert!(status == 400 && body["error"].as_str().unwrap().contains("key is 257 bytes"), "{body}");
    let (status, body) = host.put("/plugins/kv-probe/kv/big", &json!({"value": "v".repeat((1 << 20) + 1)}));
    assert!(status == 413 && body["error"].as_str().unwrap().contains("over the most of 1048576"), "{body}");
    let (status, _) = host.put("/plugins/kv-probe/kv/both", &json!({"value": "x", "value_base64": "eA=="}));
    assert_eq!(status, 400);
    let (status, body) = host.put("/plugins/kv-probe/kv/raw", &json!({"value_base64": "/wA="}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(host.get("/plugins/kv-probe/kv/raw").1["value_base64"], "/wA=", "bytes that are not text round-trip");
    let (_, listed) = host.get("/plugins/kv-probe/kv");
    let keys: Vec<&str> = listed["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a key/with spaces", "raw"]);
}

#[test]
fn the_cleanup_example_deletes_the_expired_entries_of_its_store() {
    let dir = HostDir::new(CONFIG);
    let manifest = "name = \"cleanup\"\nversion = \"1.0.0\"\n[capabilities]\nkv = [\"default\"]\n[trigger.schedule]\ninterval = \"1h\"\n";
    dir.add_plugin("cleanup", built::CLEANUP, manifest);
    let host = dir.start();
    for (key, value) in [("session/old", json!({"expires_at": 1_000})), ("session/new", json!({"expires_at": 4_102_444_800_000i64})), ("note", json!("no expiry"))] {
        let (status, body) = host.put(&format!("/plugins/cleanup/kv/{}", key.replace('/', "%2F")), &json!({"value": value.to_string()}));
        assert_eq!(status, 200, "{body}");
    }
    let id = host.enqueue(json!({"kind": "cleanup"}));
    let done = host.wait_for(id, "completed");
    assert_eq!(done["result"]["deleted"], 1, "{done}");
    let (_, listed) = host.get("/plugins/cleanup/kv");
    let keys: Vec<&str> = listed["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["note", "session/new"]);
}

#[test]
fn a_cancelled_run_keeps_none_of_its_writes() {
    let (_dir, host) = kv_host("");
    // kv-probe writes, then sleeps until the cancel interrupts it.
    let id = host.enqueue(json!({"kind": "kv-probe", "payload": serde_json::from_str::<Value>(&ops(json!([{"op": "set", "key": "k", "value": "cancelled"}]), "sleep")).unwrap()}));
    host.wait_for(id, "running");
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = host.post(&format!("/jobs/{id}/cancel"), &Value::Null);
    assert_eq!(status, 200, "{body}");
    // Cancelled, however the run then ended (here the guest sleeps in a
    // host call until its deadline, which comes before the cancel grace).
    host.wait_for(id, "cancelled");
    let read = ops(json!([{"op": "get", "key": "k"}]), "ok");
    assert_eq!(run_on(&host, "kv-probe", &read, "completed")["result"]["results"], json!([null]), "a cancelled run wrote nothing");
}
