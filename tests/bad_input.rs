//! Bad input is refused before anything runs, with an error that names what
//! is wrong and where (exit code 2, no report).

use crate::support::{built, refused, wasm_of};
use std::path::{Path, PathBuf};

/// A plugin directory holding `wasm` and, if given, a manifest.
fn plugin_dir(wasm: &[u8], manifest: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let wasm_path = dir.path().join("plugin.wasm");
    std::fs::write(&wasm_path, wasm).unwrap();
    if let Some(manifest) = manifest {
        std::fs::write(dir.path().join("plugin.toml"), manifest).unwrap();
    }
    (dir, wasm_path)
}

fn echo_wasm() -> Vec<u8> {
    std::fs::read(wasm_of(built::ECHO)).unwrap()
}

fn check(path: &Path) -> String {
    refused(&["plugin", "check", path.to_str().unwrap()])
}

/// Deterministic noise (xorshift), so a failure is reproducible.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn random_bytes_are_not_webassembly() {
    let (_dir, path) = plugin_dir(&noise(4096), None);
    let err = check(&path);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("is not WebAssembly"), "{err}");
    // Also through `kiln run`.
    assert!(refused(&["run", path.to_str().unwrap()]).contains("is not WebAssembly"));
}

#[test]
fn random_bytes_behind_a_component_header_are_an_invalid_component() {
    let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
    bytes.extend(noise(4096));
    let (_dir, path) = plugin_dir(&bytes, None);
    let err = check(&path);
    assert!(err.contains("is not a valid WebAssembly component"), "{err}");
}

#[test]
fn a_truncated_component_is_refused() {
    let echo = echo_wasm();
    let (_dir, path) = plugin_dir(&echo[..echo.len() / 2], None);
    let err = check(&path);
    assert!(err.contains(&path.display().to_string()) && err.contains("is not a valid WebAssembly component"), "{err}");
}

#[test]
fn a_core_module_is_not_a_component() {
    // The smallest valid core module: magic and version 1, no sections.
    let (_dir, path) = plugin_dir(b"\0asm\x01\x00\x00\x00", None);
    let err = check(&path);
    assert!(err.contains("is a core WebAssembly module, not a component"), "{err}");
    assert!(err.contains("wasm32-wasip2"), "the error says how to fix it: {err}");
}

#[test]
fn a_component_for_another_world_is_refused() {
    let err = refused(&["run", "wrong-world"]);
    assert!(err.contains("wrong-world.wasm does not implement kiln:worker/job@0.1.0"), "{err}");
    assert!(err.contains("run"), "the error says what is missing: {err}");
}

const GOOD_HEAD: &str = "name = \"probe\"\nversion = \"0.1.0\"\n";

#[test]
fn a_manifest_with_an_unknown_field_names_it_and_its_line() {
    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[limits]\nfuel = 100\nthreads = 4\n")));
    let err = check(dir.path());
    assert!(err.contains("plugin.toml") && err.contains("line 5") && err.contains("unknown field `threads`"), "{err}");
}

#[test]
fn a_manifest_with_a_wrong_type_names_it_and_its_line() {
    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[limits]\ntimeout_ms = \"ten seconds\"\n")));
    let err = check(dir.path());
    assert!(err.contains("plugin.toml") && err.contains("line 4") && err.contains("invalid type"), "{err}");
}

#[test]
fn a_manifest_with_a_zero_or_negative_limit_is_refused() {
    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[limits]\nmemory_mib = 0\n")));
    let err = check(dir.path());
    assert!(err.contains("`limits.memory_mib` must be greater than zero"), "{err}");

    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[limits]\nfuel = -1\n")));
    let err = check(dir.path());
    assert!(err.contains("line 4") && err.contains("fuel"), "{err}");
}

#[test]
fn a_manifest_asking_for_an_unknown_capability_is_refused() {
    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[capabilities]\nfilesystem = [\"/\"]\n")));
    let err = check(dir.path());
    assert!(err.contains("unknown field `filesystem`") && err.contains("`http`, `kv`, `config`"), "{err}");
    // The array form of earlier manifests names the table it became.
    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}capabilities = [\"kv\"]\n")));
    let err = check(dir.path());
    assert!(err.contains("capabilities") && err.contains("line 3"), "{err}");
    for (entry, problem) in [
        ("http = [\"*\"]", "a bare `*` would grant the whole network"),
        ("http = [\"https://api.example.com/v1\"]", "an origin has no path"),
        ("kv = [\"../other\"]", "is not a store name"),
        ("enqueue = [\"\"]", "is not a job kind"),
    ] {
        let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[capabilities]\n{entry}\n")));
        let err = check(dir.path());
        assert!(err.contains(problem) && err.contains("plugin.toml"), "{entry}: {err}");
    }
}

#[test]
fn a_payload_over_the_size_limit_is_refused_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; kiln::sandbox::DEFAULT_MAX_PAYLOAD_BYTES + 1]).unwrap();
    let err = refused(&["run", "echo", "--payload", &format!("@{}", big.display())]);
    assert!(err.contains("--payload") && err.contains("payload is 1048577 bytes, over the limit of 1048576 bytes"), "{err}");
}

#[test]
fn a_missing_plugin_or_payload_file_is_named() {
    let err = refused(&["run", "no-such-plugin"]);
    assert!(err.contains("no plugin \"no-such-plugin\""), "{err}");
    let err = refused(&["run", "echo", "--payload", "@/nonexistent/payload.json"]);
    assert!(err.contains("--payload: cannot read /nonexistent/payload.json"), "{err}");
}

#[test]
fn zero_budgets_on_the_command_line_are_refused() {
    assert!(refused(&["run", "echo", "--fuel", "0"]).contains("--fuel must be greater than zero"));
    assert!(refused(&["run", "echo", "--timeout-ms", "0"]).contains("--timeout-ms must be greater than zero"));
    assert!(refused(&["run", "echo", "--memory-mib", "0"]).contains("--memory-mib must be between 1 and"));
}

#[test]
fn a_bad_cron_line_is_refused_naming_the_field() {
    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[trigger.schedule]\ncron = \"0 25 * * *\"\n")));
    let err = check(dir.path());
    assert!(err.contains("`trigger.schedule.cron`") && err.contains("field 2 (hour) \"25\" is invalid"), "{err}");
    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[trigger.schedule]\ncron = \"30 2 * * FUNDAY\"\n")));
    let err = check(dir.path());
    assert!(err.contains("field 5 (day-of-week) \"FUNDAY\" is invalid"), "{err}");
}

#[test]
fn an_unknown_time_zone_is_refused() {
    let (dir, _) =
        plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[trigger.schedule]\ncron = \"0 9 * * *\"\ntimezone = \"Europe/Atlantis\"\n")));
    let err = check(dir.path());
    assert!(err.contains("`trigger.schedule.timezone` \"Europe/Atlantis\" is not a known IANA time zone"), "{err}");
}

#[test]
fn a_zero_interval_is_refused() {
    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[trigger.schedule]\ninterval = \"0s\"\n")));
    let err = check(dir.path());
    assert!(err.contains("`trigger.schedule.interval` \"0s\" is zero"), "{err}");
}

#[test]
fn two_triggers_in_one_manifest_are_refused() {
    let (dir, _) = plugin_dir(&echo_wasm(), Some(&format!("{GOOD_HEAD}[trigger.startup]\n[trigger.continuous]\ndelay = \"1s\"\n")));
    let err = check(dir.path());
    assert!(err.contains("`trigger` names 2 triggers (continuous, startup); a plugin has exactly one"), "{err}");
}
