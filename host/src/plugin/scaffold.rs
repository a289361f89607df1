//! `kiln plugin new NAME`: writes a plugin crate — manifest, SDK
//! dependency, a job function and its tests — that builds with one
//! command and runs with `kiln run`. Kiln's `dotnet new worker`.

use super::manifest::is_valid_name;
use std::path::{Path, PathBuf};

/// The command that builds a scaffolded plugin, run in its directory.
pub const BUILD_COMMAND: &str = "cargo build --release --target wasm32-wasip2";

/// Where the SDK crate is in the source tree this binary was built from.
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0:?} is not a valid plugin name (1-64 characters of a-z, 0-9, `-` or `_`, starting with a letter)")]
    BadName(String),
    #[error("{0} already exists and is not empty; choose another name or --path")]
    Exists(String),
    #[error("the Kiln SDK is not at {0}; pass --sdk with the path of Kiln's plugins/sdk")]
    NoSdk(String),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Writes the plugin crate `name` into `dir`; returns the files written.
pub fn scaffold(name: &str, dir: &Path, sdk: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !is_valid_name(name) {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    if dir.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ScaffoldError::Exists(dir.display().to_string()));
    }
    let sdk = sdk.canonicalize().ok().filter(|p| p.join("Cargo.toml").is_file()).ok_or_else(|| ScaffoldError::NoSdk(sdk.display().to_string()))?;
    let crate_name = name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("plugin.toml", manifest(name)),
        ("src/lib.rs", lib_rs(name)),
        (".gitignore", "/target\n".to_string()),
        ("README.md", readme(name, &crate_name)),
    ];
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        let io = |source| ScaffoldError::Io { path: path.display().to_string(), source };
        std::fs::create_dir_all(path.parent().expect("files have a parent")).map_err(io)?;
        std::fs::write(&path, text).map_err(|source| ScaffoldError::Io { path: path.display().to_string(), source })?;
        written.push(path);
    }
    Ok(written)
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A plugin is a WebAssembly component: build it with
#   {BUILD_COMMAND}
[lib]
crate-type = ["cdylib"]

[dependencies]
kiln-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}

# Its own workspace, wherever it is created.
[workspace]

[profile.release]
strip = true
"#,
        sdk = sdk.display().to_string()
    )
}

fn manifest(name: &str) -> String {
    format!(
        r#"name = "{name}"
version = "0.1.0"
description = "Greets whoever the payload names."

# What starts an iteration. One of:
#   [trigger.queued]                         jobs enqueued by the API or `kiln enqueue` (the default)
#   [trigger.schedule] cron = "*/5 * * * *"  or  interval = "30s"
#   [trigger.continuous] delay = "1s"        a loop; each pass's result is the next pass's checkpoint
#   [trigger.startup]                        once when the host starts
[trigger.queued]

[limits]
timeout_ms = 10000

[retry]
max_attempts = 3
"#
    )
}

fn lib_rs(name: &str) -> String {
    format!(
        r#"//! `{name}`: a Kiln job plugin. The host calls `run` once per job, each
//! time in a fresh sandboxed instance: keep no state between runs.

use kiln_sdk::{{Job, JobError, JobResult}};
use serde::{{Deserialize, Serialize}};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {{
    name: String,
}}

#[derive(Debug, PartialEq, Serialize)]
struct Output {{
    greeting: String,
}}

/// The job's logic, kept apart from the host so it can be unit tested.
fn greet(input: &Input) -> Result<Output, JobError> {{
    if input.name.trim().is_empty() {{
        // Bad input is never retried: the job goes to the dead letters.
        return Err(JobError::invalid_input("`name` is empty"));
    }}
    Ok(Output {{ greeting: format!("Hello, {{}}!", input.name) }})
}}

fn run(job: Job) -> JobResult {{
    let input: Input = job.json()?;
    kiln_sdk::info(&format!("greeting {{}} (attempt {{}})", input.name, job.attempt));
    kiln_sdk::ok_json(&greet(&input)?)
}}

kiln_sdk::export_job!(run);

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn greets_by_name() {{
        let output = greet(&Input {{ name: "Ada".into() }}).unwrap();
        assert_eq!(output, Output {{ greeting: "Hello, Ada!".into() }});
    }}

    #[test]
    fn an_empty_name_is_invalid_input() {{
        assert!(matches!(greet(&Input {{ name: " ".into() }}), Err(JobError::InvalidInput(_))));
    }}
}}
"#
    )
}

fn readme(name: &str, crate_name: &str) -> String {
    format!(
        r#"# {name}

A Kiln job plugin.

    {BUILD_COMMAND}
    kiln run . --payload '{{"name": "Ada"}}'
    cargo test

The component is `target/wasm32-wasip2/release/{crate_name}.wasm`; `kiln run .`
finds it. To serve it, deploy it to a running host:

    kiln plugin deploy .
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaffold_has_a_valid_manifest_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("hello");
        let files = scaffold("hello", &target, &default_sdk_path()).unwrap();
        assert_eq!(files.len(), 5);
        let manifest = super::super::Manifest::load(&target.join("plugin.toml")).unwrap();
        assert_eq!(manifest.name, "hello");
        let err = scaffold("hello", &target, &default_sdk_path()).unwrap_err();
        assert!(matches!(err, ScaffoldError::Exists(_)), "{err}");
        assert!(matches!(scaffold("Hello World", &dir.path().join("x"), &default_sdk_path()), Err(ScaffoldError::BadName(_))));
        assert!(matches!(scaffold("x", &dir.path().join("x"), Path::new("/nonexistent")), Err(ScaffoldError::NoSdk(_))));
    }
}
