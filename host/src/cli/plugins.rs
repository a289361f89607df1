//! `kiln plugin`: new (a project from the template), check and sign here,
//! and list, deploy, roll back and remove through the API.

use super::common::CommonArgs;
use super::local::load;
use super::output::{JsonOutput, say};
use super::run::GrantArgs;
use crate::capability::{Grants, HostCapabilities};
use crate::client::{ApiClient, render};
use crate::plugin;
use crate::sandbox::{PoolSize, Sandbox};
use anyhow::Context as _;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub(crate) enum PluginCommand {
    /// Sign a plugin directory (its component and manifest) with a key
    /// from `kiln keys new --signing`: writes DIR/plugin.sig, which
    /// `kiln plugin deploy DIR` and the plugins directory pick up.
    Sign {
        /// The plugin directory: plugin.toml and one .wasm.
        dir: PathBuf,
        /// The signing key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Validate a plugin (manifest and component) without running it, and
    /// say what it imports and what it would be granted.
    Check {
        /// A .wasm file, a plugin directory, a plugin source directory, or a plugin name.
        plugin: String,
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// Write a new plugin crate: manifest, SDK dependency, a job function, a test.
    New {
        /// The plugin's name (a-z, 0-9, `-`, `_`).
        name: String,
        /// Where to write it [default: ./NAME].
        #[arg(long)]
        path: Option<PathBuf>,
        /// The Kiln SDK crate [default: the one this binary was built beside].
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// List the plugins a running host serves, with their versions.
    List {
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Send a new version to a running host; it serves from the next job on.
    Deploy {
        /// A plugin directory, a plugin source directory, or a .wasm with a plugin.toml beside it.
        plugin: String,
        /// Deploy as this name [default: the manifest's]; the host refuses a mismatch.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Serve the previous version of a plugin again.
    Rollback {
        name: String,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Stop serving a plugin (refused while jobs of its kind are pending, unless --force).
    Remove {
        name: String,
        /// Remove it even though jobs of its kind wait; they fail when claimed.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        json: JsonOutput,
    },
}

/// `kiln plugin sign DIR --key FILE`: writes DIR/plugin.sig over the
/// directory's component and manifest as they are now.
pub(crate) fn sign_plugin(dir: &std::path::Path, key: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(key).with_context(|| format!("cannot read the signing key {}", key.display()))?;
    let key = crate::tenant::PrivateKey::from_file_text(&text, &key.display().to_string()).map_err(anyhow::Error::msg)?;
    let manifest_path = dir.join(plugin::MANIFEST_FILE);
    let manifest = std::fs::read_to_string(&manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let files = plugin::resolve(&dir.display().to_string(), &[])?;
    let wasm = std::fs::read(&files.wasm).with_context(|| format!("cannot read {}", files.wasm.display()))?;
    let out = dir.join(crate::tenant::SIGNATURE_FILE);
    std::fs::write(&out, key.sign(&plugin::sha256_hex(&wasm), &manifest)).with_context(|| format!("cannot write {}", out.display()))?;
    println!("signed {} and {} with {}: wrote {}", files.wasm.display(), manifest_path.display(), key.public(), out.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn plugins(client: &ApiClient, dirs: &[PathBuf], command: PluginCommand) -> anyhow::Result<ExitCode> {
    let answer = match command {
        PluginCommand::List { json } => {
            let answer = client.get("/plugins")?;
            say(json, &answer, || render::plugin_table(&answer))
        }
        PluginCommand::Deploy { plugin, name, json } => {
            let files = plugin::resolve(&plugin, dirs)?;
            let manifest_path = files
                .manifest
                .as_ref()
                .with_context(|| format!("{} has no {} beside it; a deployed plugin needs one", files.wasm.display(), plugin::MANIFEST_FILE))?;
            let manifest = std::fs::read_to_string(manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
            let name = match name {
                Some(name) => name,
                None => plugin::Manifest::parse(&manifest, &manifest_path.display().to_string())?.name,
            };
            let wasm = std::fs::read(&files.wasm).with_context(|| format!("cannot read {}", files.wasm.display()))?;
            let sig_path = manifest_path.with_file_name(crate::tenant::SIGNATURE_FILE);
            let signature = match sig_path.is_file() {
                true => Some(std::fs::read_to_string(&sig_path).with_context(|| format!("cannot read {}", sig_path.display()))?),
                false => None,
            };
            use base64::Engine as _;
            let body = serde_json::to_value(crate::api::DeployRequest {
                manifest,
                wasm_base64: base64::engine::general_purpose::STANDARD.encode(wasm),
                signature,
            })?;
            let answer = client.put(&format!("/plugins/{name}"), &body)?;
            say(json, &answer, || render::deployed("deployed", &answer))
        }
        PluginCommand::Rollback { name, json } => {
            let answer = client.post(&format!("/plugins/{name}/rollback"), None)?;
            say(json, &answer, || render::deployed("rolled back", &answer))
        }
        PluginCommand::Remove { name, force, json } => {
            let answer = client.delete(&format!("/plugins/{name}?force={force}"))?;
            say(json, &answer, || format!("removed {name} {}; its versions stay archived\n", answer["version"].as_str().unwrap_or("?")))
        }
        PluginCommand::Check { .. } | PluginCommand::New { .. } | PluginCommand::Sign { .. } => unreachable!("handled without the API"),
    };
    print!("{answer}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn new_plugin(name: &str, path: Option<PathBuf>, sdk: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = path.unwrap_or_else(|| PathBuf::from(name));
    let sdk = sdk.unwrap_or_else(plugin::scaffold::default_sdk_path);
    let files = plugin::scaffold::scaffold(name, &dir, &sdk)?;
    for file in &files {
        println!("created {}", file.display());
    }
    // Commands that work when followed literally, one after another.
    println!("\nnext, build and run it:");
    println!("  cd {}", dir.display());
    println!("  {}", plugin::scaffold::BUILD_COMMAND);
    println!("  kiln run . --payload '{{\"name\": \"Ada\"}}'");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn check(common: &CommonArgs, spec: &str, grants: &GrantArgs) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::with_pool(PoolSize::for_one_run())?;
    let (host, _services) = grants.host()?;
    let plugin = load(common, &sandbox, spec, host.clone())?;
    let m = &plugin.manifest;
    println!("ok: {} {} implements {}", m.name, m.version, crate::sandbox::WORLD);
    println!("  component: {} (sha256 {})", plugin.wasm_path.display(), plugin.wasm_sha256);
    println!(
        "  limits: fuel {}, memory {} MiB, timeout {} ms, output {} bytes; retry: {} attempts",
        m.limits.fuel, m.limits.memory_mib, m.limits.timeout_ms, m.limits.output_bytes, m.retry.max_attempts
    );
    println!("  trigger: {}", m.trigger.describe());
    println!("  imports: {}", plugin.component.imports().join(", "));
    print!("{}", capability_lines(plugin.component.grants(), &host));
    Ok(ExitCode::SUCCESS)
}

/// What a plugin asks for of each capability and what it is granted, one line each.
pub(crate) fn capability_lines(grants: &Grants, host: &HostCapabilities) -> String {
    let asked = &grants.asked;
    if asked.is_empty() {
        return "  capabilities: none asked\n".to_string();
    }
    let list = |items: Vec<String>| if items.is_empty() { "nothing".to_string() } else { items.join(", ") };
    let names = |items: &[String]| items.to_vec();
    let origins = |items: &[crate::capability::HttpOrigin]| items.iter().map(ToString::to_string).collect::<Vec<_>>();
    let mut config_granted: Vec<String> =
        grants.config_keys.iter().map(|k| if host.config.is_secret(k) { format!("{k} (secret)") } else { k.clone() }).collect();
    if !grants.config_missing.is_empty() {
        config_granted.push(format!("no value here for {}", grants.config_missing.join(", ")));
    }
    let mut out = "  capabilities:\n".to_string();
    for (key, asked, granted) in [
        ("http", origins(&asked.http), origins(&grants.http)),
        ("kv", names(&asked.kv), names(&grants.kv)),
        ("config", names(&asked.config), config_granted),
        ("enqueue", names(&asked.enqueue), names(&grants.enqueue)),
    ] {
        if !asked.is_empty() {
            out.push_str(&format!("    {key:<8} asks {}; granted {}\n", list(asked), list(granted)));
        }
    }
    out
}
