//! Plugins in JavaScript and Python, built from `wit/` by the stock
//! toolchains (componentize-js from npm, componentize-py from PyPI) the
//! way a plugin author builds them, through the same checks as the
//! poisoning Rust plugin (`freed_memory`): their runtimes' allocators reuse
//! freed memory at once, so they show any read after a free.
//!
//! The toolchains are named by `KILN_TEST_COMPONENTIZE_JS` and
//! `KILN_TEST_COMPONENTIZE_PY` (`.ci/run` installs both); without them
//! these tests are listed as ignored. A build is kept under the test
//! target's tmp directory and made again when its source, its manifest,
//! `wit/` or the toolchain changes.

use crate::freed_memory::{check_kiln_run, check_through_serve};
use crate::support::repo_root;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A plugin of `plugins/testing/NAME` built into a plugin directory
/// (`plugin.toml` + `NAME.wasm`), by `command` given the source directory
/// and the output file, unless a build of the same inputs is there.
fn build(name: &str, toolchain_var: &str, source_file: &str, command: impl FnOnce(&str, &Path, &Path) -> Command) -> String {
    let toolchain = std::env::var(toolchain_var).unwrap_or_else(|_| panic!("{toolchain_var} names the toolchain"));
    let source = repo_root().join("plugins/testing").join(name);
    let mut inputs = Sha256::new();
    inputs.update(toolchain.as_bytes());
    for file in [source.join(source_file), source.join("plugin.toml"), repo_root().join("wit/worker.wit")] {
        inputs.update(std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
    }
    let digest = format!("{:x}", inputs.finalize());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-languages").join(name);
    let wasm = dir.join(format!("{name}.wasm"));
    let stamp = dir.join("inputs.sha256");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(digest.as_str()) || !wasm.is_file() {
        std::fs::create_dir_all(&dir).unwrap();
        let partial = dir.join(format!("{name}.wasm.partial"));
        let output = command(&toolchain, &source, &partial).output().unwrap_or_else(|e| panic!("cannot run {toolchain}: {e}"));
        assert!(
            output.status.success(),
            "building {name} with {toolchain} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::rename(&partial, &wasm).unwrap();
        std::fs::copy(source.join("plugin.toml"), dir.join("plugin.toml")).unwrap();
        std::fs::write(&stamp, &digest).unwrap();
    }
    dir.to_str().unwrap().to_string()
}

/// `plugins/testing/js-echo`, built by componentize-js for the `job` world,
/// without the `wasi:http` a default build imports.
fn js_echo() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        build("js-echo", "KILN_TEST_COMPONENTIZE_JS", "app.js", |toolchain, source, out| {
            let mut cmd = Command::new(toolchain);
            cmd.current_dir(source).arg("app.js").arg("--wit").arg(repo_root().join("wit"));
            cmd.args(["--world-name", "job", "--disable", "http", "--disable", "fetch-event", "--out"]).arg(out);
            cmd
        })
    })
}

/// `plugins/testing/py-echo`, built by componentize-py for the `job` world.
fn py_echo() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        build("py-echo", "KILN_TEST_COMPONENTIZE_PY", "app.py", |toolchain, source, out| {
            let mut cmd = Command::new(toolchain);
            cmd.current_dir(source).arg("--wit-path").arg(repo_root().join("wit"));
            cmd.args(["--world", "job", "componentize", "app", "--python-path"]).arg(source).arg("--output").arg(out);
            cmd
        })
    })
}

#[test]
#[cfg_attr(not(kiln_js), ignore = "needs componentize-js: set KILN_TEST_COMPONENTIZE_JS (.ci/run installs it)")]
fn a_javascript_plugin_returns_its_payload_and_its_errors_unchanged_under_kiln_run() {
    check_kiln_run(js_echo());
}

#[test]
#[cfg_attr(not(kiln_python), ignore = "needs componentize-py: set KILN_TEST_COMPONENTIZE_PY (.ci/run installs it)")]
fn a_python_plugin_returns_its_payload_and_its_errors_unchanged_under_kiln_run() {
    check_kiln_run(py_echo());
}

#[test]
#[cfg_attr(not(all(kiln_js, kiln_python)), ignore = "needs componentize-js and componentize-py: set KILN_TEST_COMPONENTIZE_JS and KILN_TEST_COMPONENTIZE_PY (.ci/run installs them)")]
fn javascript_and_python_jobs_through_kiln_serve_keep_their_results_and_errors() {
    check_through_serve(&[js_echo(), py_echo()]);
}
