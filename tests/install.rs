//! A `kiln` copied out of the build tree, as `cargo install` leaves it:
//! it serves the examples built into it from its own data directory, and
//! deploys land in that data directory, never in the source checkout's
//! `target/` nor in another host's plugins.

use crate::support::host::Host;
use crate::support::built;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXAMPLES: [&str; 6] = ["cleanup", "echo", "fan-out", "poller", "send-email", "warmup"];

/// `kiln serve` of the copy at `bin`, run from `cwd`, on `data`, with no
/// plugins directory named anywhere.
fn serve(bin: &Path, cwd: &Path, data: &Path) -> Host {
    let mut cmd = Command::new(bin);
    cmd.current_dir(cwd)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env_remove("KILN_PLUGINS_DIR")
        .env_remove("KILN_CONFIG")
        .env("KILN_LOG", "info");
    Host::spawn(cmd, &cwd.join(format!("{}.log", data.file_name().unwrap().to_string_lossy())))
}

fn served(host: &Host) -> Vec<String> {
    let (_, body) = host.get("/plugins");
    body["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_copied_kiln_serves_its_examples_from_its_data_directory_and_deploys_land_there() {
    let root = tempfile::tempdir().unwrap();
    let bin_dir = root.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let bin = bin_dir.join("kiln");
    std::fs::copy(env!("CARGO_BIN_EXE_kiln"), &bin).unwrap();
    let cwd = root.path().join("work");
    std::fs::create_dir(&cwd).unwrap();
    let (first_data, second_data) = (cwd.join("first"), cwd.join("second"));

    let first = serve(&bin, &cwd, &first_data);
    assert_eq!(served(&first), EXAMPLES, "every example, from the binary");
    for name in EXAMPLES {
        assert!(first_data.join("plugins").join(name).join(format!("{name}.wasm")).is_file(), "{name} written into the data directory");
    }
    let id = first.enqueue(json!({"kind": "echo", "payload": "from a copy"}));
    assert_eq!(first.wait_for(id, "completed")["result"], "from a copy");

    // A deploy through the copy's CLI lands in this host's data directory.
    let deploy = Command::new(&bin).args(["--api", &first.url, "plugin", "deploy", built::FLAKY]).output().unwrap();
    assert!(deploy.status.success(), "{}", String::from_utf8_lossy(&deploy.stderr));
    assert!(first_data.join("plugins/flaky/flaky.wasm").is_file(), "deployed into DATA_DIR/plugins");
    let build_tree = Path::new(built::EXAMPLES_DIR);
    assert!(!build_tree.join("flaky").exists(), "nothing written into the build tree {}", build_tree.display());

    // Another data directory: only the examples, nothing of the first's deploys.
    let second = serve(&bin, &cwd, &second_data);
    assert_eq!(served(&second), EXAMPLES);
    drop(second);

    // A restart serves what was deployed; an example removed stays removed.
    let (status, body) = first.delete("/plugins/poller?force=true");
    assert_eq!(status, 200, "{body}");
    let mut first = first;
    first.sigterm();
    let first = serve(&bin, &cwd, &first_data);
    let mut expected: Vec<String> = EXAMPLES.iter().filter(|n| **n != "poller").map(|n| n.to_string()).collect();
    expected.push("flaky".into());
    expected.sort();
    assert_eq!(served(&first), expected);
    let log: PathBuf = cwd.join("first.log");
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(log.matches("made the plugins directory with the example plugins").count(), 1, "seeded once: {log}");
}

#[test]
fn kiln_run_finds_an_example_by_name_without_the_build_tree() {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("kiln");
    std::fs::copy(env!("CARGO_BIN_EXE_kiln"), &bin).unwrap();
    let out = Command::new(&bin)
        .current_dir(root.path())
        .args(["--no-cache", "run", "echo", "--payload", r#"{"n": 1}"#, "--json"])
        .env_remove("KILN_PLUGINS_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["output"], json!({"n": 1}), "{report}");
}
