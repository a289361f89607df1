//! Finding a plugin on this machine (a name in the plugins directory or
//! among the built-in examples, a plugin directory, a source directory, a
//! bare `.wasm`) and loading it with the artifact cache.

use super::common::CommonArgs;
use crate::capability::HostCapabilities;
use crate::plugin::{self, ArtifactCache, CompileBudget, Compiler, LoadPolicy, Plugin};
use crate::sandbox::Sandbox;
use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a plugin given by name is looked up: `--plugins-dir`, then the
/// examples built into this binary (written out to a temporary directory
/// only when `spec` names one), then, in a source checkout, the plugins
/// built beside the binary (what a plugin's source directory without a
/// build of its own resolves to).
pub(crate) struct PluginLookup {
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) _examples: Option<plugin::seed::ExamplesOnDisk>,
}

pub(crate) fn plugin_lookup(common: &CommonArgs, spec: &str) -> anyhow::Result<PluginLookup> {
    let mut dirs = Vec::new();
    dirs.extend(common.plugins_dir.clone());
    let in_given_dir = dirs.iter().any(|d| d.join(spec).is_dir());
    let examples = if !in_given_dir && plugin::seed::examples().iter().any(|e| e.name == spec) && !std::path::Path::new(spec).exists() {
        let written = plugin::seed::ExamplesOnDisk::write().context("cannot write the built-in examples to a temporary directory")?;
        dirs.push(written.path().to_path_buf());
        Some(written)
    } else {
        None
    };
    dirs.extend([plugin::built::EXAMPLES_DIR, plugin::built::TESTING_DIR].map(PathBuf::from).into_iter().filter(|d| d.is_dir()));
    Ok(PluginLookup { dirs, _examples: examples })
}

pub(crate) fn artifact_cache(common: &CommonArgs) -> Option<ArtifactCache> {
    if common.no_cache {
        return None;
    }
    let dir = common.cache_dir.clone().or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("kiln"))
    })?;
    Some(ArtifactCache::new(dir))
}

/// Loads a plugin as a host with the default `kiln.toml` and what `host`
/// allows would: the same ceilings and compile budget, compiled in a
/// child process.
pub(crate) fn load(common: &CommonArgs, sandbox: &Sandbox, spec: &str, host: HostCapabilities) -> anyhow::Result<Plugin> {
    let lookup = plugin_lookup(common, spec)?;
    let files = plugin::resolve(spec, &lookup.dirs)?;
    let compiler = Compiler::child_process(CompileBudget::default()).context("cannot find the kiln executable to compile with")?;
    let policy = LoadPolicy { compiler: Arc::new(compiler), capabilities: Arc::new(host), ..LoadPolicy::default() };
    let plugin = plugin::load_with(sandbox, artifact_cache(common).as_ref(), &files, &policy)?;
    plugin.keep_artifact();
    Ok(plugin)
}
