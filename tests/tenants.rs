//! Tenants end to end, over the real `kiln serve`: each tenant's key sees
//! and touches only its own plugins, jobs and kv; another tenant's ids
//! answer 404 exactly as ids that do not exist, and leave what they name
//! unchanged; the operator's key sees everything; two tenants' plugins of
//! one name run side by side, each with its own kv.

use crate::support::host::{Host, HostDir, eventually};
use crate::support::{built, new_api_key, wasm_of};
use serde_json::{Value, json};
use std::path::Path;

pub(crate) const CONFIG: &str = "lease_ms = 5000\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 4\n";

/// A caller of one host with one key (or none).
pub(crate) struct Client<'h> {
    pub(crate) host: &'h Host,
    pub(crate) key: Option<String>,
}

impl Client<'_> {
    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_idle_connections(0).build().into();
        let mut request = http::Request::builder().method(method).uri(format!("{}{path}", self.host.url)).header("content-type", "application/json");
        if let Some(key) = &self.key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut response = agent.run(request.body(body).unwrap()).unwrap();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (response.status().as_u16(), serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub(crate) fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, answer) = self.call(method, path, body);
        assert!((200..300).contains(&status), "{method} {path}: {status} {answer}");
        answer
    }

    pub(crate) fn enqueue(&self, job: Value) -> i64 {
        self.ok("POST", "/jobs", Some(&job))["id"].as_i64().unwrap()
    }

    pub(crate) fn wait_for(&self, id: i64, state: &str) -> Value {
        let mut job = Value::Null;
        eventually(&format!("job {id} is {state}"), || {
            job = self.ok("GET", &format!("/jobs/{id}"), None);
            job["state"] == state
        });
        job
    }
}

/// Puts the built plugin `built` in `tenant`'s directory, its manifest's
/// version set to `version` (so the tests can tell whose ran).
pub(crate) fn add_tenant_plugin(dir: &HostDir, tenant: &str, built: &str, version: &str) {
    let name = Path::new(built).file_name().unwrap().to_str().unwrap();
    let target = dir.plugins().join(tenant).join(name);
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(wasm_of(built), target.join(format!("{name}.wasm"))).unwrap();
    let manifest = std::fs::read_to_string(Path::new(built).join("plugin.toml")).unwrap();
    let manifest: String =
        manifest.lines().map(|l| if l.starts_with("version") { format!("version = \"{version}\"\n") } else { format!("{l}\n") }).collect();
    std::fs::write(target.join("plugin.toml"), manifest).unwrap();
}

struct Tenants {
    _dir: HostDir,
    host: Host,
    admin: String,
    acme: String,
    beta: String,
}

fn two_tenants() -> Tenants {
    let (admin, admin_hash) = new_api_key();
    let (acme, acme_hash) = new_api_key();
    let (beta, beta_hash) = new_api_key();
    let config = format!(
        "{CONFIG}\n[admin]\napi_keys = [\"{admin_hash}\"]\n\n[tenants.acme]\napi_keys = [\"{acme_hash}\"]\nkv_quota_bytes = 64\n\n[tenants.beta]\napi_keys = [\"{beta_hash}\"]\n"
    );
    let dir = HostDir::new(&config);
    for (tenant, version) in [("acme", "1.0.0-acme"), ("beta", "2.0.0-beta")] {
        add_tenant_plugin(&dir, tenant, built::ECHO, version);
        add_tenant_plugin(&dir, tenant, built::KV_PROBE, version);
    }
    let host = dir.start();
    Tenants { _dir: dir, host, admin, acme, beta }
}

fn kv_ops(ops: Value, then: &str) -> Value {
    json!({"ops": ops, "then": then})
}

#[test]
fn a_tenant_sees_and_touches_only_its_own_and_another_tenants_ids_answer_404() {
    let t = two_tenants();
    let client = |key: &str| Client { host: &t.host, key: Some(key.to_string()) };
    let (admin, acme, beta) = (client(&t.admin), client(&t.acme), client(&t.beta));

    // Each tenant's `echo` is its own.
    let a_done = acme.enqueue(json!({"kind": "echo", "payload": {"from": "acme"}}));
    let b_done = beta.enqueue(json!({"kind": "echo", "payload": {"from": "beta"}}));
    let a_job = acme.wait_for(a_done, "completed");
    let b_job = beta.wait_for(b_done, "completed");
    assert_eq!((a_job["kind"].as_str(), a_job["tenant"].as_str(), a_job["plugin_version"].as_str()), (Some("echo"), Some("acme"), Some("1.0.0-acme")));
    assert_eq!((b_job["tenant"].as_str(), b_job["plugin_version"].as_str()), (Some("beta"), Some("2.0.0-beta")));
    assert_eq!(a_job["result"], json!({"from": "acme"}));
    // Something of acme's in each state a route acts on: completed, dead, waiting.
    let a_dead = acme.enqueue(json!({"kind": "kv-probe", "payload": kv_ops(json!([]), "retry"), "max_attempts": 1}));
    acme.wait_for(a_dead, "dead");
    let a_later = acme.enqueue(json!({"kind": "echo", "payload": 1, "scheduled_at": "2999-01-01T00:00:00Z"}));
    acme.ok("PUT", "/plugins/kv-probe/kv/k", Some(&json!({"value": "acme's"})));
    let acme_ids = [a_done, a_dead, a_later];
    let acme_view = || {
        let jobs: Vec<Value> = acme_ids.iter().map(|id| acme.ok("GET", &format!("/jobs/{id}"), None)).collect();
        (jobs, acme.ok("GET", "/plugins", None), acme.ok("GET", "/plugins/kv-probe/kv", None))
    };
    let before = acme_view();

    // Beta's key on each of acme's ids: 404, worded as for an id that does not exist.
    let missing = 999_999_999;
    for id in acme_ids {
        for (method, path) in [("GET", format!("/jobs/{id}")), ("DELETE", format!("/jobs/{id}")), ("POST", format!("/jobs/{id}/retry")), ("POST", format!("/jobs/{id}/cancel"))] {
            let (status, body) = beta.call(method, &path, None);
            let (_, none) = beta.call(method, &path.replace(&id.to_string(), &missing.to_string()), None);
            assert_eq!(status, 404, "{method} {path} as beta: {body}");
            assert_eq!(body["error"].as_str().unwrap().replace(&id.to_string(), "ID"), none["error"].as_str().unwrap().replace(&missing.to_string(), "ID"),
                "{method} {path}: another tenant's id reads as one that does not exist");
        }
    }
    // Lists and bulk routes see beta's own only.
    let listed = beta.ok("GET", "/jobs?limit=1000", None);
    let ids: Vec<i64> = listed["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [b_done], "beta lists its own job only");
    assert_eq!(beta.ok("GET", "/jobs?kind=echo", None)["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(beta.ok("POST", "/jobs/retry?state=dead", None)["retried"], 0, "acme's dead job is not beta's to retry");
    assert_eq!(beta.ok("DELETE", "/jobs?state=dead", None)["deleted"], 0, "nor to delete");
    let queues = beta.ok("GET", "/queues", None);
    let jobs = &queues["queues"][0]["jobs"];
    assert_eq!((jobs["completed"].as_u64(), jobs["dead"].as_u64(), jobs["scheduled"].as_u64()), (Some(1), Some(0), Some(0)), "{queues}");
    // Plugins: beta sees its own, by their own names, and nothing of acme's or the host's.
    let plugins = beta.ok("GET", "/plugins", None);
    let mut names: Vec<&str> = plugins["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["echo", "kv-probe"], "{plugins}");
    assert!(plugins["plugins"].as_array().unwrap().iter().all(|p| p["tenant"] == "beta" && p["versions"][0]["version"] == "2.0.0-beta"));
    // Beta's kv is its own: acme's key is not there, and writing it changes acme's nothing.
    assert_eq!(beta.call("GET", "/plugins/kv-probe/kv/k", None).0, 404);
    beta.ok("PUT", "/plugins/kv-probe/kv/k", Some(&json!({"value": "beta's"})));
    beta.ok("DELETE", "/plugins/kv-probe/kv/k", None);
    // Deploying, rolling back, removing: beta acts on its own plugins only.
    let wasm = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, std::fs::read(wasm_of(built::ECHO)).unwrap());
    let deploy = json!({"manifest": "name = \"echo\"\nversion = \"2.0.1-beta\"\n", "wasm_base64": wasm});
    let deployed = beta.ok("PUT", "/plugins/echo", Some(&deploy));
    assert_eq!((deployed["name"].as_str(), deployed["tenant"].as_str()), (Some("echo"), Some("beta")));
    beta.ok("POST", "/plugins/echo/rollback", None);
    assert_eq!(beta.call("DELETE", "/plugins/spin?force=true", None).0, 404, "the host's plugin is not beta's");
    assert_eq!(beta.call("POST", "/plugins/spin/rollback", None).0, 404);
    assert_eq!(beta.call("GET", "/plugins/spin/kv", None).0, 404);
    assert_eq!(beta.call("GET", "/plugins/acme%2Fecho/kv", None).0, 404, "naming acme's kind from beta names nothing");
    assert_eq!(beta.call("DELETE", "/plugins/acme%2Fecho", None).0, 404);
    assert_eq!(beta.call("POST", "/jobs", Some(&json!({"kind": "acme/echo"}))).0, 400, "beta cannot enqueue acme's kind");
    let (status, body) = beta.call("POST", "/jobs", Some(&json!({"kind": "spin"})));
    assert_eq!(status, 400, "{body}");
    assert!(!body["error"].as_str().unwrap().contains("acme"), "an unknown kind's error names beta's own kinds only: {body}");
    // What covers every tenant is the operator's.
    for (method, path) in [("POST", "/queues/default/pause"), ("POST", "/queues/default/resume"), ("GET", "/metrics")] {
        assert_eq!(beta.call(method, path, None).0, 403, "{method} {path}");
    }
    assert_eq!(before, acme_view(), "nothing of acme's changed");
    assert!(t.host.stderr().contains("another tenant's job") && t.host.stderr().contains("tenant=beta"), "refusals are logged with the tenant");

    // A missing or wrong key is 401 on every tenant route.
    let nobody = Client { host: &t.host, key: None };
    let wrong = Client { host: &t.host, key: Some(new_api_key().0) };
    for caller in [&nobody, &wrong] {
        assert_eq!(caller.call("GET", &format!("/jobs/{a_done}"), None).0, 401);
        assert_eq!(caller.call("GET", "/plugins", None).0, 401);
    }

    // The operator sees everything, and writes a tenant's kinds in full.
    let all = admin.ok("GET", "/jobs?limit=1000", None);
    let tenants: Vec<(&str, &str)> =
        all["jobs"].as_array().unwrap().iter().map(|j| (j["kind"].as_str().unwrap(), j["tenant"].as_str().unwrap_or("-"))).collect();
    assert!(tenants.contains(&("acme/echo", "acme")) && tenants.contains(&("beta/echo", "beta")), "{tenants:?}");
    assert_eq!(admin.ok("GET", &format!("/jobs/{a_done}"), None)["kind"], "acme/echo");
    let plugins = admin.ok("GET", "/plugins", None);
    let names: Vec<&str> = plugins["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"acme/echo") && names.contains(&"beta/echo") && names.contains(&"echo"), "{names:?}");
    let by_admin = admin.enqueue(json!({"kind": "beta/echo", "payload": 5}));
    assert_eq!(beta.wait_for(by_admin, "completed")["result"], 5, "the operator enqueues for a tenant");
    assert_eq!(admin.ok("GET", "/plugins/acme%2Fkv-probe/kv/k", None)["value"], "acme's");
    admin.ok("POST", &format!("/jobs/{a_later}/cancel"), None);
    assert_eq!(acme.ok("GET", &format!("/jobs/{a_later}"), None)["state"], "cancelled");
}

#[test]
fn two_tenants_plugins_of_one_name_run_side_by_side_each_with_its_own_kv() {
    let t = two_tenants();
    let client = |key: &str| Client { host: &t.host, key: Some(key.to_string()) };
    let (acme, beta) = (client(&t.acme), client(&t.beta));
    let count = |c: &Client, n: usize| -> Vec<i64> {
        (0..n).map(|_| c.enqueue(json!({"kind": "kv-probe", "payload": kv_ops(json!([{"op": "incr", "key": "runs"}]), "ok")}))).collect()
    };
    let (a_ids, b_ids) = (count(&acme, 5), count(&beta, 3));
    a_ids.iter().for_each(|id| drop(acme.wait_for(*id, "completed")));
    b_ids.iter().for_each(|id| drop(beta.wait_for(*id, "completed")));
    let runs = |c: &Client| c.ok("GET", "/plugins/kv-probe/kv/runs", None)["value"].as_str().unwrap().to_string();
    assert_eq!((runs(&acme), runs(&beta)), ("5".to_string(), "3".to_string()), "each tenant's kv-probe counts its own runs");
    // acme's stores hold at most 64 bytes (its kv_quota_bytes); beta's the host's default.
    let big = "v".repeat(100);
    let (status, body) = acme.call("PUT", "/plugins/kv-probe/kv/big", Some(&json!({"value": big})));
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("over its quota of 64 bytes"), "{body}");
    beta.ok("PUT", "/plugins/kv-probe/kv/big", Some(&json!({"value": big})));
    let over = acme.enqueue(json!({"kind": "kv-probe", "payload": kv_ops(json!([{"op": "set", "key": "big", "value_bytes": 100}]), "ok")}));
    let result = acme.wait_for(over, "completed")["result"]["results"][0].clone();
    assert!(result.as_str().unwrap_or_default().contains("quota of 64"), "the guest's write is refused: {result}");
    assert_eq!(runs(&acme), "5", "and nothing it held was touched");
    // A run reads its own tenant's store.
    let seen = acme.enqueue(json!({"kind": "kv-probe", "payload": kv_ops(json!([{"op": "get", "key": "runs"}]), "ok")}));
    assert_eq!(acme.wait_for(seen, "completed")["result"]["results"], json!(["5"]));
}

#[test]
fn a_tenants_plugins_are_held_to_its_own_ceilings_and_a_host_plugin_may_not_take_a_tenants_name() {
    let (admin_key, hash) = new_api_key();
    let (key, key_hash) = new_api_key();
    let config = format!(
        "{CONFIG}\n[capabilities]\nallow_http = [\"http://127.0.0.1:*\", \"https://api.acme.example\"]\n\n[admin]\napi_keys = [\"{hash}\"]\n\n\
         [tenants.acme]\napi_keys = [\"{key_hash}\"]\nceilings = {{ timeout_ms = 40000 }}\nallow_http = [\"https://api.acme.example\"]\n"
    );
    let dir = HostDir::new(&config);
    add_tenant_plugin(&dir, "acme", built::ECHO, "1.0.0");
    // One http-probe asking for both origins, as the host's and as acme's.
    let asks_both = "[capabilities]\nhttp = [\"http://127.0.0.1:*\", \"https://api.acme.example\"]\n";
    for at in [dir.plugins().join("http-probe"), dir.plugins().join("acme/http-probe")] {
        std::fs::create_dir_all(&at).unwrap();
        std::fs::copy(wasm_of(built::HTTP_PROBE), at.join("http-probe.wasm")).unwrap();
        std::fs::write(at.join("plugin.toml"), format!("name = \"http-probe\"\nversion = \"0.1.0\"\n{asks_both}")).unwrap();
    }
    let host = dir.start();
    let acme = Client { host: &host, key: Some(key) };
    let admin = Client { host: &host, key: Some(admin_key) };
    let wasm = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, std::fs::read(wasm_of(built::ECHO)).unwrap());
    // The tenant's allow_http narrows the host's for its plugins only.
    let plugins = admin.ok("GET", "/plugins", None);
    let granted = |name: &str| -> Vec<String> {
        let plugin = plugins["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name}: {plugins}"));
        plugin["capabilities"]["granted"]["http"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(granted("http-probe").len(), 2, "the host's plugin gets both origins");
    let narrowed = granted("acme/http-probe");
    assert!(narrowed.len() == 1 && narrowed[0].contains("api.acme.example"), "acme's gets only what acme allows: {narrowed:?}");
    // A host plugin may not take a tenant's name (its directory is the tenant's).
    let clash = json!({"manifest": "name = \"acme\"\nversion = \"1.0.0\"\n", "wasm_base64": wasm});
    let (status, body) = admin.call("PUT", "/plugins/acme", Some(&clash));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("is the name of a tenant"), "{body}");
    let slow = json!({"manifest": "name = \"echo\"\nversion = \"1.1.0\"\n[limits]\ntimeout_ms = 60000\n", "wasm_base64": wasm});
    let (status, body) = acme.call("PUT", "/plugins/echo", Some(&slow));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`tenants.acme.ceilings.timeout_ms`"), "{body}");
    let echo_version = || {
        let plugins = acme.ok("GET", "/plugins", None);
        plugins["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "echo").map(|p| p["version"].clone()).unwrap_or_default()
    };
    assert_eq!(echo_version(), "1.0.0", "the old version keeps serving");
    let within = json!({"manifest": "name = \"echo\"\nversion = \"1.2.0\"\n[limits]\ntimeout_ms = 40000\n", "wasm_base64": wasm});
    acme.ok("PUT", "/plugins/echo", Some(&within));
    assert!(dir.plugins().join("acme/echo/echo.wasm").is_file(), "a tenant's deploy lands in its own directory");
    let id = acme.enqueue(json!({"kind": "echo", "payload": 3}));
    assert_eq!(acme.wait_for(id, "completed")["plugin_version"], "1.2.0");
    // The operator deploys into a tenant by its full kind.
    let by_admin = json!({"manifest": "name = \"echo\"\nversion = \"1.3.0\"\n", "wasm_base64": wasm});
    assert_eq!(admin.ok("PUT", "/plugins/acme%2Fecho", Some(&by_admin))["tenant"], "acme");
    assert_eq!(echo_version(), "1.3.0");
}

/// The most intervals `[start, end)` open at once (an end before a start at the same instant).
fn most_at_once(intervals: &[(i64, i64)]) -> usize {
    let mut events: Vec<(i64, i32)> = intervals.iter().flat_map(|&(start, end)| [(start, 1), (end, -1)]).collect();
    events.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, change) in events {
        open += change;
        most = most.max(open);
    }
    most as usize
}

#[test]
#[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
fn max_running_and_rate_hold_across_three_hosts_on_postgres() {
    const ACME_JOBS: i64 = 60;
    const BETA_JOBS: i64 = 100;
    let db = crate::support::postgres::Database::new();
    let (admin_key, admin_hash) = new_api_key();
    let (acme_key, acme_hash) = new_api_key();
    let (beta_key, beta_hash) = new_api_key();
    let config = db.config(&format!(
        "lease_ms = 5000\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 16\n\n\
         [admin]\napi_keys = [\"{admin_hash}\"]\n\n[tenants.acme]\napi_keys = [\"{acme_hash}\"]\nmax_running = 4\n\n\
         [tenants.beta]\napi_keys = [\"{beta_hash}\"]\nrate = \"20/s\"\n"
    ));
    let dir = HostDir::new(&config);
    add_tenant_plugin(&dir, "acme", built::SPIN, "1.0.0");
    add_tenant_plugin(&dir, "beta", built::ECHO, "1.0.0");
    let hosts = [dir.start(), dir.start(), dir.start()];
    let acme = Client { host: &hosts[0], key: Some(acme_key) };
    let beta = Client { host: &hosts[1], key: Some(beta_key) };
    // Three hosts of 16 slots each: without the limits, all of them at once.
    let spins: Vec<Value> = (0..ACME_JOBS).map(|_| json!({"kind": "spin", "payload": {"iterations": 20_000_000}})).collect();
    acme.ok("POST", "/jobs", Some(&Value::Array(spins)));
    let echoes: Vec<Value> = (0..BETA_JOBS).map(|i| json!({"kind": "echo", "payload": i})).collect();
    beta.ok("POST", "/jobs", Some(&Value::Array(echoes)));
    // Meanwhile, which hosts run acme's jobs.
    let mut seen_hosts = std::collections::BTreeSet::new();
    let mut sampled_most = 0;
    eventually("every job completed", || {
        let rows = db.query("SELECT leased_by FROM jobs WHERE state = 'running' AND tenant = 'acme'");
        sampled_most = sampled_most.max(rows.len());
        for row in rows {
            seen_hosts.insert(row.get::<_, String>(0));
        }
        let done = db.count("SELECT count(*) FROM jobs WHERE state = 'completed'");
        if done < ACME_JOBS + BETA_JOBS {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        done == ACME_JOBS + BETA_JOBS
    });
    let spans = |tenant: &str| -> Vec<(i64, i64)> {
        db.query(&format!("SELECT attempted_at, finalized_at FROM jobs WHERE tenant = '{tenant}' ORDER BY attempted_at"))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let most = most_at_once(&spans("acme"));
    let detail = || {
        db.query("SELECT id, attempted_at, finalized_at, attempt, errors::text FROM jobs WHERE tenant = 'acme' ORDER BY attempted_at LIMIT 20")
            .iter()
            .map(|r| format!("{} {} {} {} {}", r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2), r.get::<_, i32>(3), r.get::<_, String>(4)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(most <= 4, "acme's max_running is 4, but {most} of its jobs were running at once (sampled {sampled_most}, on {seen_hosts:?}):\n{}", detail());
    assert!(most >= 2, "the limit was reached for, not the jobs run one by one: {most}");
    assert!(seen_hosts.len() >= 2, "more than one host ran acme's jobs: {seen_hosts:?}");
    // Beta: 20 start at once (its bucket), then 20 a second.
    let starts: Vec<i64> = spans("beta").iter().map(|s| s.0).collect();
    let busiest = starts.iter().map(|&t| starts.iter().filter(|&&s| (t..t + 1000).contains(&s)).count()).max().unwrap();
    assert!(busiest <= 40, "at most 20 + 20 of beta's jobs start within a second, not {busiest}");
    let span_ms = starts.last().unwrap() - starts.first().unwrap();
    assert!(span_ms >= 3500, "100 jobs at 20/s after a burst of 20 take about 4 s to start, not {span_ms} ms");
    // The waiting shows as throttled time, on the host that held them back.
    let admin = |host: &Host| Client { host, key: Some(admin_key.clone()) }.call("GET", "/metrics", None).1;
    let throttled: f64 = hosts
        .iter()
        .map(|h| {
            let text = admin(h).as_str().unwrap_or_default().to_string();
            text.lines()
                .filter(|l| l.starts_with("kiln_tenant_throttled_seconds_total{") && l.contains("tenant=\"beta\"") && l.contains("limit=\"rate\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum();
    assert!(throttled > 1.0, "beta waited seconds on its rate; /metrics says {throttled} s");
    // And in the API, to beta itself.
    let mut from_api = 0.0;
    for host in &hosts {
        let answer = Client { host, key: Some(beta.key.clone().unwrap()) }.ok("GET", "/tenants", None);
        let tenants = answer["tenants"].as_array().unwrap();
        assert_eq!(tenants.len(), 1, "a tenant sees itself only: {answer}");
        assert_eq!((tenants[0]["name"].as_str(), tenants[0]["rate"].as_str()), (Some("beta"), Some("20/s")));
        from_api += tenants[0]["throttled_seconds"]["rate"].as_f64().unwrap();
    }
    assert!((from_api - throttled).abs() < 1.0, "the API and /metrics tell the same throttled time: {from_api} and {throttled}");
    let all = Client { host: &hosts[0], key: Some(admin_key.clone()) }.ok("GET", "/tenants", None);
    assert_eq!(all["tenants"].as_array().unwrap().len(), 2, "the operator sees every tenant: {all}");
}

#[test]
#[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
fn max_per_key_and_a_kinds_rate_hold_across_three_hosts_on_postgres() {
    const PER_KEY: i64 = 12;
    const KEYS: [&str; 3] = ["customer-1", "customer-2", "customer-3"];
    const ECHOES: i64 = 100;
    let db = crate::support::postgres::Database::new();
    let (admin_key, admin_hash) = new_api_key();
    let (acme_key, acme_hash) = new_api_key();
    let config = db.config(&format!(
        "lease_ms = 5000\npoll_interval_ms = 100\nshutdown_grace_ms = 1000\n\n[queues.default]\nconcurrency = 16\n\n\
         [admin]\napi_keys = [\"{admin_hash}\"]\n\n[tenants.acme]\napi_keys = [\"{acme_hash}\"]\n"
    ));
    let dir = HostDir::new(&config);
    add_tenant_plugin(&dir, "acme", built::SPIN, "1.0.0");
    add_tenant_plugin(&dir, "acme", built::ECHO, "1.0.0");
    for (name, throttle) in [("spin", "max_per_key = 2"), ("echo", "rate = \"20/s\"")] {
        let manifest = dir.plugins().join("acme").join(name).join("plugin.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, format!("{text}\n[throttle]\n{throttle}\n")).unwrap();
    }
    let hosts = [dir.start(), dir.start(), dir.start()];
    let acme = |i: usize| Client { host: &hosts[i], key: Some(acme_key.clone()) };
    // Three hosts of 16 slots each: without the limit, every spin at once.
    let mut spins = Vec::new();
    for n in 0..PER_KEY {
        spins.extend(KEYS.iter().map(|key| json!({"kind": "spin", "payload": {"iterations": 20_000_000 + n}, "concurrency_key": key})));
    }
    let first = acme(0).ok("POST", "/jobs", Some(&Value::Array(spins)));
    assert_eq!(first[0]["concurrency_key"], "customer-1", "the key is on the job: {}", first[0]);
    let echoes: Vec<Value> = (0..ECHOES).map(|i| json!({"kind": "echo", "payload": i})).collect();
    acme(1).ok("POST", "/jobs", Some(&Value::Array(echoes)));
    let mut seen_hosts = std::collections::BTreeSet::new();
    let total = PER_KEY * KEYS.len() as i64 + ECHOES;
    eventually("every job completed", || {
        for row in db.query("SELECT leased_by FROM jobs WHERE state = 'running' AND kind = 'acme/spin'") {
            seen_hosts.insert(row.get::<_, String>(0));
        }
        let done = db.count("SELECT count(*) FROM jobs WHERE state = 'completed'");
        if done < total {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        done == total
    });
    let spans = |filter: &str| -> Vec<(i64, i64)> {
        db.query(&format!("SELECT attempted_at, finalized_at FROM jobs WHERE {filter} ORDER BY attempted_at")).iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    for key in KEYS {
        let most = most_at_once(&spans(&format!("concurrency_key = '{key}'")));
        assert!(most <= 2, "spin's max_per_key is 2, but {most} of {key}'s jobs ran at once");
    }
    let most = most_at_once(&spans("kind = 'acme/spin'"));
    assert!(most >= 3, "the limit is per key: different keys' jobs ran side by side, up to 6 at once, not {most}");
    assert!(seen_hosts.len() >= 2, "more than one host ran the keyed jobs: {seen_hosts:?}");
    // echo: 20 start at once (its bucket), then 20 a second, across the hosts.
    let starts: Vec<i64> = spans("kind = 'acme/echo'").iter().map(|s| s.0).collect();
    let busiest = starts.iter().map(|&t| starts.iter().filter(|&&s| (t..t + 1000).contains(&s)).count()).max().unwrap();
    assert!(busiest <= 40, "at most 20 + 20 of echo's jobs start within a second, not {busiest}");
    let span_ms = starts.last().unwrap() - starts.first().unwrap();
    assert!(span_ms >= 3500, "100 jobs at 20/s after a burst of 20 take about 4 s to start, not {span_ms} ms");
    // The waiting shows as the kind's throttled time, and as its tenant's.
    let mut by_kind = 0.0;
    let mut from_api = 0.0;
    for i in 0..hosts.len() {
        let admin = Client { host: &hosts[i], key: Some(admin_key.clone()) };
        let text = admin.call("GET", "/metrics", None).1.as_str().unwrap_or_default().to_string();
        by_kind += text
            .lines()
            .filter(|l| l.starts_with("kiln_kind_throttled_seconds_total{") && l.contains("kind=\"acme/echo\"") && l.contains("limit=\"kind_rate\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        from_api += acme(i).ok("GET", "/tenants", None)["tenants"][0]["throttled_seconds"]["kind_rate"].as_f64().unwrap();
    }
    assert!(by_kind > 1.0, "echo waited seconds on its rate; /metrics says {by_kind} s");
    assert!((from_api - by_kind).abs() < 1.0, "the API and /metrics tell the same throttled time: {from_api} and {by_kind}");
}

#[test]
fn an_enqueue_past_a_tenants_max_waiting_is_429_naming_the_quota_and_stores_nothing() {
    let (key, hash) = new_api_key();
    let (other, other_hash) = new_api_key();
    let config = format!(
        "{CONFIG}\n[tenants.acme]\napi_keys = [\"{hash}\"]\nmax_waiting = 5\n\n[tenants.beta]\napi_keys = [\"{other_hash}\"]\n"
    );
    let dir = HostDir::new(&config);
    add_tenant_plugin(&dir, "acme", built::ECHO, "1.0.0");
    add_tenant_plugin(&dir, "beta", built::ECHO, "1.0.0");
    let host = dir.start();
    let acme = Client { host: &host, key: Some(key) };
    let beta = Client { host: &host, key: Some(other) };
    let later = |n: usize| Value::Array((0..n).map(|i| json!({"kind": "echo", "payload": i, "scheduled_at": "2999-01-01T00:00:00Z"})).collect());
    acme.ok("POST", "/jobs", Some(&later(3)));
    let (status, body) = acme.call("POST", "/jobs", Some(&later(3)));
    assert_eq!(status, 429, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("`tenants.acme.max_waiting`") && error.contains("quota of 5") && error.contains("3 jobs waiting"), "{error}");
    let listed = acme.ok("GET", "/jobs?limit=100", None);
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 3, "the refused batch stored nothing, and what was there is there");
    acme.ok("POST", "/jobs", Some(&later(2)));
    assert_eq!(acme.call("POST", "/jobs", Some(&later(1))).0, 429, "exactly at the quota, one more is refused");
    beta.ok("POST", "/jobs", Some(&later(10)));
    // Running and finished jobs are not waiting: once one is cancelled, one more fits.
    let first = listed["jobs"][0]["id"].as_i64().unwrap();
    acme.ok("POST", &format!("/jobs/{first}/cancel"), None);
    acme.ok("POST", "/jobs", Some(&later(1)));
    let tenants = acme.ok("GET", "/tenants", None);
    assert_eq!((tenants["tenants"][0]["waiting"].as_u64(), tenants["tenants"][0]["max_waiting"].as_u64()), (Some(5), Some(5)), "{tenants}");
}

/// A fresh signing key from `kiln keys new --signing`: its file and its public key.
#[test]
fn a_tenants_kv_quota_holds_all_its_stores_together_for_its_plugins_and_the_api() {
    let (key, key_hash) = new_api_key();
    let config = format!(
        "{CONFIG}\n[capabilities]\nkv_stores = [\"default\", \"other\"]\n\n[tenants.acme]\napi_keys = [\"{key_hash}\"]\nkv_quota_bytes = 100\n"
    );
    let dir = HostDir::new(&config);
    add_tenant_plugin(&dir, "acme", built::KV_PROBE, "1.0.0");
    let host = dir.start();
    let acme = Client { host: &host, key: Some(key) };
    // 60 bytes in one store, then 60 in the other: each under 100, together over.
    let set = |store: &str, name: &str| json!({"op": "set", "store": store, "key": name, "value_bytes": 59});
    let first = acme.enqueue(json!({"kind": "kv-probe", "payload": kv_ops(json!([set("default", "a")]), "ok")}));
    assert_eq!(acme.wait_for(first, "completed")["result"]["results"], json!(["ok"]), "60 bytes fit");
    let second = acme.enqueue(json!({"kind": "kv-probe", "payload": kv_ops(json!([set("other", "b")]), "ok")}));
    let refused = acme.wait_for(second, "completed")["result"]["results"][0].clone();
    assert!(refused.as_str().unwrap_or_default().contains("`tenants.acme.kv_quota_bytes`"), "the tenant's total is held: {refused}");
    let (status, body) = acme.call("PUT", "/plugins/kv-probe/kv/c?store=other", Some(&json!({"value": "v".repeat(59)})));
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("over its quota of 100 bytes (`tenants.acme.kv_quota_bytes`)"), "{body}");
    assert_eq!(acme.call("GET", "/plugins/kv-probe/kv/b?store=other", None).0, 404, "nothing was written");
    assert_eq!(acme.ok("GET", "/plugins/kv-probe/kv/a", None)["value"].as_str().map(str::len), Some(59), "nothing it held was touched");
    // What fits still goes in.
    acme.ok("PUT", "/plugins/kv-probe/kv/c?store=other", Some(&json!({"value": "v".repeat(30)})));
}

#[test]
fn a_deploy_past_a_tenants_archived_versions_quota_is_429_and_deleting_one_makes_room() {
    let (key, key_hash) = new_api_key();
    let (other, other_hash) = new_api_key();
    let config = format!(
        "{CONFIG}\n[tenants.acme]\napi_keys = [\"{key_hash}\"]\nmax_plugin_versions = 2\n\n[tenants.beta]\napi_keys = [\"{other_hash}\"]\n"
    );
    let dir = HostDir::new(&config);
    add_tenant_plugin(&dir, "acme", built::ECHO, "1.0.0");
    let host = dir.start();
    let acme = Client { host: &host, key: Some(key) };
    let beta = Client { host: &host, key: Some(other) };
    let wasm = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, std::fs::read(wasm_of(built::ECHO)).unwrap());
    let version = |v: &str| json!({"manifest": format!("name = \"echo\"\nversion = \"{v}\"\n"), "wasm_base64": wasm});
    let versions = || -> Vec<(String, String, bool)> {
        let plugins = acme.ok("GET", "/plugins", None);
        let echo = plugins["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "echo").unwrap().clone();
        echo["versions"].as_array().unwrap().iter().map(|v| (v["version"].as_str().unwrap().into(), v["version_id"].as_str().unwrap().into(), v["active"] == true)).collect()
    };
    acme.ok("PUT", "/plugins/echo", Some(&version("1.1.0")));
    assert_eq!(versions().len(), 2, "1.0.0 from the directory and 1.1.0");
    // A third version is one past the quota: refused, naming it; nothing changes.
    let (status, body) = acme.call("PUT", "/plugins/echo", Some(&version("1.2.0")));
    assert_eq!(status, 429, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`tenants.acme.max_plugin_versions` = 2"), "{body}");
    let kept = versions();
    assert_eq!(kept.iter().map(|v| v.0.as_str()).collect::<Vec<_>>(), ["1.1.0", "1.0.0"], "nothing archived is touched");
    assert!(kept[0].2, "1.1.0 keeps serving");
    // A rollback adds no version: allowed at the quota.
    acme.ok("POST", "/plugins/echo/rollback", None);
    assert!(versions().iter().any(|v| v.0 == "1.0.0" && v.2));
    // The serving version cannot be deleted; another tenant's is not found; an unknown id is 404.
    let serving = versions().into_iter().find(|v| v.2).unwrap().1;
    let old = versions().into_iter().find(|v| !v.2).unwrap().1;
    assert_eq!(acme.call("DELETE", &format!("/plugins/echo/versions/{serving}"), None).0, 409);
    assert_eq!(beta.call("DELETE", &format!("/plugins/echo/versions/{old}"), None).0, 404);
    assert_eq!(acme.call("DELETE", "/plugins/echo/versions/..%2F..%2Fplugins", None).0, 404);
    assert_eq!(versions().len(), 2, "refused deletes delete nothing");
    let deleted = acme.ok("DELETE", &format!("/plugins/echo/versions/{old}"), None);
    assert_eq!((deleted["version"].as_str(), deleted["deleted"].as_bool()), (Some("1.1.0"), Some(true)));
    acme.ok("PUT", "/plugins/echo", Some(&version("1.2.0")));
    let now = versions();
    assert_eq!(now.iter().map(|v| (v.0.as_str(), v.2)).collect::<Vec<_>>(), [("1.2.0", true), ("1.0.0", false)], "room made, the deploy lands");
    let id = acme.enqueue(json!({"kind": "echo", "payload": 1}));
    assert_eq!(acme.wait_for(id, "completed")["plugin_version"], "1.2.0");
    // A client racing deploys past the quota: one slot left, six versions at once, one lands.
    let stale = versions().into_iter().find(|v| !v.2).unwrap().1;
    acme.ok("DELETE", &format!("/plugins/echo/versions/{stale}"), None);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let (acme, version) = (&acme, &version);
        let racers: Vec<_> = (0..6).map(|n| scope.spawn(move || acme.call("PUT", "/plugins/echo", Some(&version(&format!("2.0.{n}")))).0)).collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 1, "one deploy fits: {statuses:?}");
    assert!(statuses.iter().all(|&s| s == 200 || s == 429), "the others are over the quota: {statuses:?}");
    assert_eq!(versions().len(), 2, "the quota held under the race");
}

#[test]
fn a_tenants_plugins_read_only_the_config_keys_and_secrets_granted_to_it() {
    const SECRET: &str = "sk-host-only-91d2";
    let (admin, admin_hash) = new_api_key();
    let (acme, acme_hash) = new_api_key();
    let (beta, beta_hash) = new_api_key();
    let config = format!(
        "{CONFIG}\n[config]\ngreeting = \"hello\"\n\n[secrets]\napi_key = {{ env = \"KILN_TEST_TENANT_SECRET\" }}\n\n\
         [admin]\napi_keys = [\"{admin_hash}\"]\n\n[tenants.acme]\napi_keys = [\"{acme_hash}\"]\nconfig = [\"greeting\", \"api_key\"]\n\n\
         [tenants.beta]\napi_keys = [\"{beta_hash}\"]\nconfig = [\"greeting\"]\n"
    );
    let dir = HostDir::new(&config);
    for tenant in ["acme", "beta"] {
        add_tenant_plugin(&dir, tenant, built::CONFIG_PROBE, "0.1.0");
    }
    let mut serve = dir.command();
    serve.env("KILN_TEST_TENANT_SECRET", SECRET);
    let host = Host::spawn(serve, &dir.path().join("stderr.log"));
    let read = json!({"kind": "config-probe", "payload": {"read": ["greeting", "api_key"]}});
    let result = |key: &str| {
        let client = Client { host: &host, key: Some(key.to_string()) };
        let id = client.enqueue(read.clone());
        client.wait_for(id, "completed")["result"].clone()
    };
    let by_acme = result(&acme);
    assert_eq!((by_acme["values"]["greeting"].as_str(), by_acme["lengths"]["api_key"].as_u64()), (Some("hello"), Some(SECRET.len() as u64)));
    let by_beta = result(&beta);
    assert_eq!(by_beta["values"]["greeting"], "hello");
    assert_eq!(by_beta["values"]["api_key"], Value::Null, "the host's secret is not granted to beta: {by_beta}");
    assert_eq!(by_beta["all"], json!(["greeting"]), "beta's plugin sees no other key: {by_beta}");
    let plugins = Client { host: &host, key: Some(admin) }.ok("GET", "/plugins", None);
    let granted = |name: &str| plugins["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["capabilities"]["granted"]["config"].clone();
    assert_eq!((granted("acme/config-probe"), granted("beta/config-probe")), (json!(["greeting", "api_key"]), json!(["greeting"])));
}

fn signing_key(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let file = dir.join(name);
    let out = crate::support::kiln().args(["keys", "new", "--signing", "--out"]).arg(&file).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "the private key is the owner's only");
    (file, made["public_key"].as_str().unwrap().to_string())
}

#[derive(Clone, Copy, PartialEq)]
enum Tamper {
    Nothing,
    Component,
    Manifest,
}

/// An `echo` named `name` at `version` in `root/name`, signed with `key`
/// (if any), then tampered with as told.
fn variant(root: &Path, name: &str, version: &str, key: Option<&Path>, tamper: Tamper) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join(format!("{name}.wasm"));
    std::fs::copy(wasm_of(built::ECHO), &wasm).unwrap();
    std::fs::write(dir.join("plugin.toml"), format!("name = \"{name}\"\nversion = \"{version}\"\n")).unwrap();
    if let Some(key) = key {
        let out = crate::support::kiln().args(["plugin", "sign"]).arg(&dir).arg("--key").arg(key).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(dir.join("plugin.sig").is_file());
    }
    match tamper {
        Tamper::Nothing => {}
        Tamper::Component => {
            let mut bytes = std::fs::read(&wasm).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            std::fs::write(&wasm, bytes).unwrap();
        }
        Tamper::Manifest => std::fs::write(dir.join("plugin.toml"), format!("name = \"{name}\"\nversion = \"{version}-changed\"\n")).unwrap(),
    }
    dir
}

#[test]
fn good_unsigned_tampered_and_wrongly_signed_plugins_are_told_apart_at_load_and_at_deploy() {
    let keys = tempfile::tempdir().unwrap();
    let (trusted, public) = signing_key(keys.path(), "trusted.key");
    let (stranger, _) = signing_key(keys.path(), "stranger.key");
    let (api_key, hash) = new_api_key();
    let config = format!(
        "{CONFIG}\n[tenants.acme]\napi_keys = [\"{hash}\"]\nrequire_signature = true\nsigning_keys = [\"{public}\"]\n"
    );
    let dir = HostDir::new(&config);
    let acme_dir = dir.plugins().join("acme");
    let cases = [
        ("good", Some(trusted.as_path()), Tamper::Nothing, ""),
        ("unsigned", None, Tamper::Nothing, "is not signed, and tenant \"acme\" requires signatures"),
        ("tampered-component", Some(trusted.as_path()), Tamper::Component, "does not match"),
        ("tampered-manifest", Some(trusted.as_path()), Tamper::Manifest, "does not match"),
        ("unknown-key", Some(stranger.as_path()), Tamper::Nothing, "a key `tenants.acme.signing_keys` does not list"),
    ];
    for (name, key, tamper, _) in cases {
        variant(&acme_dir, name, "1.0.0", key, tamper);
    }
    // At load: the good one serves, signed by the trusted key; each other is refused, saying why.
    let host = dir.start();
    let acme = Client { host: &host, key: Some(api_key.clone()) };
    let plugins = acme.ok("GET", "/plugins", None);
    let names: Vec<&str> = plugins["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["good"], "{plugins}");
    assert_eq!(plugins["plugins"][0]["signed_by"], public.as_str());
    assert_eq!(plugins["plugins"][0]["versions"][0]["signed_by"], public.as_str(), "recorded with the version");
    let log = dir.stderr();
    for (name, _, _, says) in cases.iter().skip(1) {
        let line = log.lines().find(|l| l.contains(&format!("/acme/{name}/plugin.toml"))).unwrap_or_else(|| panic!("no refusal of {name}:\n{log}"));
        assert!(line.contains(says), "{name}: {line}");
    }
    // At deploy: a good version serves; each bad one is refused with its reason, and the good one keeps serving.
    let deploy = |dir: &Path| crate::support::kiln().args(["--api", &host.url, "plugin", "deploy"]).arg(dir).env("KILN_API_KEY", &api_key).output().unwrap();
    let uploads = tempfile::tempdir().unwrap();
    let v1 = variant(&uploads.path().join("v1"), "echo", "1.0.0", Some(&trusted), Tamper::Nothing);
    let out = deploy(&v1);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (case, key, tamper, says) in cases.iter().skip(1) {
        let bad = variant(&uploads.path().join(case), "echo", "2.0.0", *key, *tamper);
        let out = deploy(&bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{case}: {stderr}");
        let echo = acme.ok("GET", "/plugins", None)["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "echo").cloned().unwrap();
        assert_eq!((echo["version"].as_str(), echo["signed_by"].as_str()), (Some("1.0.0"), Some(public.as_str())), "{case}: the old version serves");
    }
    let id = acme.enqueue(json!({"kind": "echo", "payload": 9}));
    assert_eq!(acme.wait_for(id, "completed")["plugin_version"], "1.0.0");
    // A restart loads the deployed version with its signature (it was written beside it).
    assert!(dir.plugins().join("acme/echo/plugin.sig").is_file());
}
