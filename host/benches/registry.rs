//! Registry benchmarks: how fast a new plugin version serves after its
//! files land in the watched plugins directory, and how fast the real
//! `kiln serve` starts with 100 plugins, from the artifact cache and
//! compiled.
//!
//! Run: `cargo bench --bench registry` (add `-- --quick` for a short run).
//! Variants alternate round by round; figures are medians over rounds.

use kiln::plugin::{self, ArtifactCache, Registry, watch_plugins_dir};
use kiln::sandbox::{JobInput, Outcome, Sandbox};
use kiln::worker::{Runner, SandboxRunner};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The echo component with a custom section appended: the same code, but
/// other bytes, so it hashes (and compiles) as a new component.
fn echo_variant(tag: usize) -> Vec<u8> {
    let mut wasm = std::fs::read(Path::new(plugin::built::ECHO).join("echo.wasm")).unwrap();
    let name = b"kiln-bench";
    let payload = tag.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    wasm.push(0); // custom section
    wasm.push(size as u8); // < 128: one LEB128 byte
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm.extend_from_slice(&payload);
    wasm
}

fn write_plugin(dir: &Path, name: &str, version: &str, wasm: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), wasm).unwrap();
    std::fs::write(dir.join("plugin.toml"), format!("name = \"{name}\"\nversion = \"{version}\"\n")).unwrap();
}

/// Lands version `version` of echo by writing it beside the plugins
/// directory and renaming it in; returns (landing → serving, landing →
/// first job done on it).
async fn land(registry: &Arc<Registry>, runner: &SandboxRunner, version: &str, wasm: &[u8]) -> (Duration, Duration) {
    let plugins = registry.plugins_dir().to_path_buf();
    let staged = plugins.join(format!(".echo-{version}"));
    write_plugin(&staged, "echo", version, wasm);
    let old = plugins.join(format!(".echo-old-{version}"));
    let landed = Instant::now();
    std::fs::rename(plugins.join("echo"), &old).unwrap();
    std::fs::rename(&staged, plugins.join("echo")).unwrap();
    while registry.get("echo").unwrap().manifest.version != version {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let serving = landed.elapsed();
    let input = JobInput { id: "1".into(), kind: "echo".into(), attempt: 1, max_attempts: 1, payload: b"1".to_vec(), checkpoint: None, progress: Default::default(), traceparent: None };
    let stop = runner.stop_signal();
    let ran = runner.run(&input, &stop).await;
    assert!(matches!(ran.report.outcome, Outcome::Ok(_)));
    assert_eq!(ran.version.as_deref(), Some(version));
    let first_job = landed.elapsed();
    std::fs::remove_dir_all(old).unwrap();
    (serving, first_job)
}

async fn file_landing(rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    write_plugin(&plugins.join("echo"), "echo", "0", &echo_variant(0));
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let cache = ArtifactCache::new(dir.path().join("artifacts"));
    let registry = Arc::new(Registry::new(sandbox.clone(), cache, plugins.clone(), dir.path().join("versions")));
    registry.load_all().unwrap();
    let _watcher = watch_plugins_dir(registry.clone()).unwrap();
    let runner = SandboxRunner::new(registry.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut manifest_only, mut new_code, mut direct_load) = (vec![], vec![], vec![]);
    let (mut manifest_only_serving, mut new_code_serving) = (vec![], vec![]);
    for round in 0..rounds {
        // A new manifest, same component: the compiled form is in the cache.
        let (serving, first) = land(&registry, &runner, &format!("m{round}"), &echo_variant(0)).await;
        manifest_only_serving.push(ms(serving));
        manifest_only.push(ms(first));
        // New component bytes: compiled on arrival.
        let (serving, first) = land(&registry, &runner, &format!("c{round}"), &echo_variant(1000 + round)).await;
        new_code_serving.push(ms(serving));
        new_code.push(ms(first));
        // Baseline: loading that same new component directly (no watcher, no swap), cache off.
        let files = plugin::PluginFiles { manifest: None, wasm: plugins.join("echo/echo.wasm") };
        let started = Instant::now();
        plugin::load(&sandbox, None, &files).unwrap();
        direct_load.push(ms(started.elapsed()));
    }
    let (m, c, d) = (median(manifest_only), median(new_code), median(direct_load));
    println!("file landing -> serving, same component (cache hit):  median {:.1} ms", median(manifest_only_serving));
    println!("file landing -> first job done, same component:        median {m:.1} ms");
    println!("file landing -> serving, new component (compiled):    median {:.1} ms", median(new_code_serving));
    println!("file landing -> first job done, new component:         median {c:.1} ms");
    println!("baseline: plugin::load of the new component, no cache: median {d:.1} ms  (new component / baseline = {:.2}x)", c / d);
}

/// Starts the real `kiln serve` on `data` and times it until `/readyz` says ready.
fn serve_until_ready(plugins: &Path, data: &Path) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", "127.0.0.1:0", "--plugins-dir"])
        .arg(plugins)
        .arg("--data-dir")
        .arg(data)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").expect("the listening line").to_string();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    while agent.get(&format!("{url}/readyz")).call().unwrap().status() != 200 {
        std::thread::sleep(Duration::from_micros(500));
    }
    let ready = started.elapsed();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();
    ready
}

fn startup(rounds: usize) {
    const PLUGINS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let many = dir.path().join("many");
    for i in 0..PLUGINS {
        let name = format!("echo-{i:03}");
        write_plugin(&many.join(&name), &name, "1", &echo_variant(i));
    }
    let one = dir.path().join("one");
    write_plugin(&one.join("echo"), "echo", "1", &echo_variant(0));
    let warm_data = dir.path().join("warm");
    serve_until_ready(&many, &warm_data); // fills the artifact cache
    serve_until_ready(&one, &warm_data);

    let (mut cached, mut compiled, mut single) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        cached.push(ms(serve_until_ready(&many, &warm_data)));
        let cold = dir.path().join(format!("cold-{round}"));
        compiled.push(ms(serve_until_ready(&many, &cold)));
        std::fs::remove_dir_all(cold).unwrap();
        single.push(ms(serve_until_ready(&one, &warm_data)));
    }
    let (c, k, s) = (median(cached), median(compiled), median(single));
    println!("kiln serve start -> ready, {PLUGINS} plugins from the artifact cache: median {c:.0} ms");
    println!("kiln serve start -> ready, {PLUGINS} plugins compiled:               median {k:.0} ms  ({:.1}x the cached start)", k / c);
    println!("baseline: kiln serve start -> ready, 1 plugin (cached):      median {s:.0} ms  (100 cached / 1 = {:.2}x)", c / s);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 15 };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(file_landing(rounds));
    startup(if quick { 2 } else { 5 });
}
