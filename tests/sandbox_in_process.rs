//! The sandbox as a library, in this test process: one host runs bad and
//! good iterations side by side, stops them from outside, and caches
//! compiled plugins.

use crate::support::built;
use kiln::plugin::{self, ArtifactCache, CacheUse, Plugin, PluginFiles};
use kiln::sandbox::{Budget, JobInput, Outcome, Sandbox};
use std::path::Path;
use std::time::Duration;

fn load(sandbox: &Sandbox, dir: &str) -> Plugin {
    let files = plugin::resolve(dir, &[]).unwrap();
    plugin::load(sandbox, None, &files).unwrap()
}

fn job(kind: &str, payload: &[u8]) -> JobInput {
    JobInput {
        id: format!("test-{kind}"),
        kind: kind.to_string(),
        attempt: 1,
        max_attempts: 3,
        payload: payload.to_vec(),
        checkpoint: None,
        progress: Default::default(),
        traceparent: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_iteration_right_after_each_bad_one_still_succeeds() {
    let sandbox = Sandbox::new().unwrap();
    let echo = load(&sandbox, built::ECHO);
    // Each bad plugin meets the budget it is meant to break; the others are
    // generous, so a loaded machine cannot turn one outcome into another
    // (CI once saw huge-output time out at 300 ms before it could overflow).
    let tight = Budget { fuel: 50_000_000, timeout: Duration::from_secs(60), memory_bytes: 16 << 20, ..Budget::default() };
    let bad = [
        (built::SPIN, "out_of_fuel"),
        (built::IGNORE_CANCEL, "timed_out"),
        (built::MEMORY_BOMB, "out_of_memory"),
        (built::STACK_OVERFLOW, "trapped"),
        (built::PANIC, "trapped"),
        (built::HUGE_OUTPUT, "output_too_large"),
    ];
    for (dir, expected) in bad {
        let plugin = load(&sandbox, dir);
        let stop = sandbox.stop_signal();
        let budget = if dir == built::IGNORE_CANCEL {
            Budget { fuel: u64::MAX / 2, timeout: Duration::from_millis(300), ..tight.clone() }
        } else {
            tight.clone()
        };
        let report = sandbox.run_iteration(&plugin.component, &job(&plugin.manifest.name, b""), &budget, &stop).await;
        assert_eq!(report.outcome.name(), expected, "{dir}: {:?}", report.outcome);

        let good = sandbox
            .run_iteration(&echo.component, &job("echo", b"still fine"), &Budget::default(), &sandbox.stop_signal())
            .await;
        assert_eq!(good.outcome, Outcome::Ok(b"still fine".to_vec()), "echo after {dir}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooperative_plugin_returns_when_cancelled() {
    let sandbox = Sandbox::new().unwrap();
    // send-email posts over HTTP: a host must allow it some (the cancel
    // comes before any request).
    let mut host = kiln::capability::HostCapabilities::default();
    host.policy.allow_http.push("http://127.0.0.1:*".parse().unwrap());
    let policy = plugin::LoadPolicy { capabilities: std::sync::Arc::new(host), ..plugin::LoadPolicy::default() };
    let email = plugin::load_with(&sandbox, None, &plugin::resolve(built::SEND_EMAIL, &[]).unwrap(), &policy).unwrap();
    let payload = br#"{"to":"ada@example.com","subject":"slow","send_ms":60000}"#;
    let stop = sandbox.stop_signal();
    let canceller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.cancel();
        })
    };
    let report = sandbox.run_iteration(&email.component, &job("send-email", payload), &Budget::default(), &stop).await;
    canceller.await.unwrap();
    assert_eq!(report.outcome, Outcome::Cancelled { interrupted: false });
    assert!(report.progress.is_some(), "progress was reported before the cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_stops_plugins_that_ignore_cancellation() {
    let sandbox = Sandbox::new().unwrap();
    for dir in [built::SPIN, built::IGNORE_CANCEL] {
        let plugin = load(&sandbox, dir);
        let budget = Budget { fuel: u64::MAX / 2, timeout: Duration::from_secs(600), ..Budget::default() };
        let stop = sandbox.stop_signal();
        let interrupter = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stop.cancel();
                tokio::time::sleep(Duration::from_millis(100)).await;
                stop.interrupt();
            })
        };
        let report = sandbox.run_iteration(&plugin.component, &job("x", b""), &budget, &stop).await;
        interrupter.await.unwrap();
        assert_eq!(report.outcome, Outcome::Cancelled { interrupted: true }, "{dir}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterations_share_no_state_and_run_concurrently() {
    let sandbox = std::sync::Arc::new(Sandbox::new().unwrap());
    let echo = load(&sandbox, built::ECHO);
    let spin = load(&sandbox, built::SPIN);
    // A spinning plugin on one task does not keep echo iterations from running.
    let spinner = {
        let (sandbox, spin) = (sandbox.clone(), spin.clone());
        tokio::spawn(async move {
            let budget = Budget { fuel: u64::MAX / 2, timeout: Duration::from_secs(2), ..Budget::default() };
            sandbox.run_iteration(&spin.component, &job("spin", b""), &budget, &sandbox.stop_signal()).await
        })
    };
    for i in 0..50 {
        let payload = format!("{i}");
        let report = sandbox
            .run_iteration(&echo.component, &job("echo", payload.as_bytes()), &Budget::default(), &sandbox.stop_signal())
            .await;
        assert_eq!(report.outcome, Outcome::Ok(payload.into_bytes()));
    }
    assert!(!spinner.is_finished(), "echo iterations ran while the spinner was still going");
    assert_eq!(spinner.await.unwrap().outcome, Outcome::TimedOut);
}

#[tokio::test]
async fn the_artifact_cache_is_used_after_the_first_load_and_survives_corruption() {
    let sandbox = Sandbox::new().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::new(cache_dir.path());
    let files: PluginFiles = plugin::resolve(built::ECHO, &[]).unwrap();

    let first = plugin::load(&sandbox, Some(&cache), &files).unwrap();
    assert_eq!(first.cache, CacheUse::Miss);
    let second = plugin::load(&sandbox, Some(&cache), &files).unwrap();
    assert_eq!(second.cache, CacheUse::Hit);
    let report = sandbox
        .run_iteration(&second.component, &job("echo", b"cached"), &Budget::default(), &sandbox.stop_signal())
        .await;
    assert_eq!(report.outcome, Outcome::Ok(b"cached".to_vec()));

    let entries: Vec<_> = std::fs::read_dir(cache_dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "one artifact per (wasm, engine): {entries:?}");
    assert!(entries[0].file_name().unwrap().to_string_lossy().starts_with(&first.wasm_sha256));
    let sha = first.wasm_sha256.clone();
    // Loaded components map their artifact file: truncating it under them
    // would fault, which is why the cache only ever replaces by rename.
    drop((first.component, second, report));
    std::fs::write(&entries[0], b"garbage").unwrap();
    let third = plugin::load(&sandbox, Some(&cache), &files).unwrap();
    assert_eq!(third.wasm_sha256, sha);
    assert_eq!(third.cache, CacheUse::Miss, "a corrupt artifact is recompiled, not trusted");
    assert!(std::fs::read(&entries[0]).unwrap().len() > 100, "and rewritten");
}

#[tokio::test]
async fn a_payload_over_the_budget_never_reaches_the_plugin() {
    let sandbox = Sandbox::new().unwrap();
    let echo = load(&sandbox, built::ECHO);
    let budget = Budget { max_payload_bytes: 10, ..Budget::default() };
    let report = sandbox.run_iteration(&echo.component, &job("echo", &[b'x'; 11]), &budget, &sandbox.stop_signal()).await;
    assert_eq!(report.outcome, Outcome::InvalidInput("payload is 11 bytes, over the limit of 10 bytes".into()));
    assert_eq!(report.fuel_used, 0);
}

#[test]
fn every_built_plugin_constant_points_at_a_plugin_directory() {
    for dir in [built::ECHO, built::SEND_EMAIL, built::CLEANUP, built::SPIN, built::WRONG_WORLD] {
        assert!(Path::new(dir).join("plugin.toml").is_file(), "{dir}");
    }
}
