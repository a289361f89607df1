//! What a plugin IS: a `.wasm` component plus its manifest, validated
//! against the `kiln:worker/job` world, compiled once (and cached on disk),
//! ready for the sandbox to instantiate per iteration.

mod artifact_cache;
pub mod built;
mod ceilings;
pub mod compiler;
mod manifest;
mod registry;
mod resolve;
pub mod scaffold;
pub mod seed;
pub mod trigger;
mod watch;

pub use artifact_cache::{ArtifactCache, CacheUse, PendingArtifact, sha256_hex};
pub use ceilings::Ceilings;
pub use compiler::{CompileBudget, CompileError, Compiler, CompilerProcess};
pub use manifest::{
    DEFAULT_MAX_ATTEMPTS, Limits, MANIFEST_FILE, MAX_ATTEMPTS, MAX_BACKOFF_MS, Manifest, ManifestError,
    RetryPolicy, Throttle,
};
pub use registry::{DeployError, Deployed, Registry, Source, VersionInfo};
pub use resolve::{PluginFiles, resolve};
pub use trigger::Trigger;
pub use watch::watch_plugins_dir;

use crate::capability::{Grants, HostCapabilities};
use crate::sandbox::{JobComponent, PrepareError, Sandbox};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loaded, validated plugin version.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// What the host knows it by: its name, or `tenant/name` for a
    /// tenant's plugin (see [`crate::names::tenant_of`]).
    pub kind: String,
    pub manifest: Manifest,
    pub component: JobComponent,
    pub wasm_path: PathBuf,
    pub wasm_sha256: String,
    /// The manifest as written (`None` for a bare `.wasm`).
    pub manifest_text: Option<String>,
    /// Names this exact version: the SHA-256 of the component and the
    /// manifest together, so a manifest-only change is a new version too.
    pub version_id: String,
    /// Whether the compiled form came from the artifact cache.
    pub cache: CacheUse,
    /// Time spent compiling or loading the component.
    pub load_time: Duration,
    /// The key that signed this version (`ed25519:...`), when its tenant
    /// checks signatures and it was signed.
    pub signed_by: Option<String>,
    /// A fresh compile not yet in the artifact cache: kept once the
    /// version is accepted ([`Plugin::keep_artifact`]), deleted otherwise.
    pending_artifact: Arc<Mutex<Option<PendingArtifact>>>,
}

impl Plugin {
    /// Moves a fresh compile of this version into the artifact cache.
    pub fn keep_artifact(&self) {
        if let Some(pending) = self.pending_artifact.lock().expect("artifact poisoned").take() {
            pending.keep();
        }
    }
}

/// What a host lets a plugin be when it loads one: the ceilings its
/// manifest must stay under, the compiler (with its budget), and what it
/// may be granted of the host's capabilities.
#[derive(Debug, Clone, Default)]
pub struct LoadPolicy {
    pub ceilings: Ceilings,
    pub compiler: Arc<Compiler>,
    pub capabilities: Arc<HostCapabilities>,
    /// The tenant whose plugin this is (`None`: the host's own).
    pub tenant: Option<String>,
    /// What its signature must be (the tenant's `require_signature` and
    /// `signing_keys`); `None`: a signature file is not read.
    pub signatures: Option<crate::tenant::SignaturePolicy>,
}

/// Why a plugin cannot be loaded. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot read {path}: {source}")]
    ReadWasm { path: String, source: std::io::Error },
    #[error("{path} is not WebAssembly (it does not start with the `\\0asm` magic bytes)")]
    NotWasm { path: String },
    #[error(
        "{path} is a core WebAssembly module, not a component: build the plugin for \
         wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { path: String },
    #[error("{path} is not a valid WebAssembly component: {reason}")]
    InvalidComponent { path: String, reason: String },
    #[error("{path} {source}")]
    Compile { path: String, source: CompileError },
    #[error(
        "{path} declares a memory of {min_bytes} bytes to start with, more than the plugin's memory budget of \
         {budget_bytes} bytes (`limits.memory_mib`): it could never run"
    )]
    MemoryOverBudget { path: String, min_bytes: u64, budget_bytes: u64 },
    #[error("{path} {source}")]
    Prepare { path: String, source: PrepareError },
    #[error("no plugin {what}: {hint}")]
    NotFound { what: String, hint: String },
    #[error("{path}: {reason}")]
    Signature { path: String, reason: String },
}

/// The `\0asm` magic, then the version and layer fields of the header.
const WASM_MAGIC: &[u8; 4] = b"\0asm";
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

/// Loads `files` under the default [`LoadPolicy`] and keeps a fresh
/// compile in `cache` at once; see [`load_with`].
pub fn load(sandbox: &Sandbox, cache: Option<&ArtifactCache>, files: &PluginFiles) -> Result<Plugin, PluginError> {
    let plugin = load_with(sandbox, cache, files, &LoadPolicy::default())?;
    plugin.keep_artifact();
    Ok(plugin)
}

/// Loads `files`: reads and validates the manifest (against the policy's
/// ceilings), checks the bytes are a component, compiles it within the
/// policy's budget (or loads it from `cache`) and prepares it against the
/// world. Nothing is registered anywhere: a failure changes nothing, and a
/// fresh compile reaches the cache only through [`Plugin::keep_artifact`].
pub fn load_with(sandbox: &Sandbox, cache: Option<&ArtifactCache>, files: &PluginFiles, policy: &LoadPolicy) -> Result<Plugin, PluginError> {
    let started = Instant::now();
    let path = files.wasm.display().to_string();
    let (manifest, manifest_text) = match &files.manifest {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ManifestError::Read { path: path.display().to_string(), source })?;
            (Manifest::parse(&text, &path.display().to_string())?, Some(text))
        }
        None => (Manifest::for_bare_component(&files.default_name()), None),
    };
    let manifest_origin = files.manifest.as_ref().map_or_else(|| path.clone(), |p| p.display().to_string());
    policy.ceilings.check(&manifest.limits, &manifest_origin)?;
    let limit = policy.compiler.budget().max_component_bytes;
    let size = std::fs::metadata(&files.wasm).map_err(|source| PluginError::ReadWasm { path: path.clone(), source })?.len();
    if size > limit {
        let source = CompileError::TooLarge { size: usize::try_from(size).unwrap_or(usize::MAX), limit };
        return Err(PluginError::Compile { path, source });
    }
    let wasm = std::fs::read(&files.wasm).map_err(|source| PluginError::ReadWasm { path: path.clone(), source })?;
    if wasm.len() < 8 || &wasm[..4] != WASM_MAGIC {
        return Err(PluginError::NotWasm { path });
    }
    if wasm[4..8] == CORE_MODULE_VERSION {
        return Err(PluginError::CoreModule { path });
    }
    let wasm_sha256 = sha256_hex(&wasm);
    let signed_by = match &policy.signatures {
        None => None,
        Some(signatures) => {
            let sig_path = files.manifest.as_ref().and_then(|m| m.parent()).unwrap_or(Path::new(".")).join(crate::tenant::SIGNATURE_FILE);
            let limit = crate::tenant::signing::MAX_SIGNATURE_BYTES as u64;
            let sig_text = match std::fs::metadata(&sig_path) {
                Ok(meta) if meta.len() > limit => {
                    let reason = format!("{} is {} bytes, over the most of {limit}", crate::tenant::SIGNATURE_FILE, meta.len());
                    return Err(PluginError::Signature { path: manifest_origin, reason });
                }
                Ok(_) => Some(std::fs::read_to_string(&sig_path).map_err(|source| PluginError::ReadWasm { path: sig_path.display().to_string(), source })?),
                Err(_) => None,
            };
            signatures
                .check(sig_text.as_deref(), &wasm_sha256, manifest_text.as_deref().unwrap_or(""))
                .map_err(|reason| PluginError::Signature { path: manifest_origin.clone(), reason })?
        }
    };
    let version_id = sha256_hex(format!("{wasm_sha256}\n{}", manifest_text.as_deref().unwrap_or("")).as_bytes());
    let compiled = match cache {
        Some(cache) => cache.load_or_compile(sandbox.engine(), &wasm, &files.wasm, &wasm_sha256, &policy.compiler),
        None => artifact_cache::compile_to_temp(&policy.compiler, sandbox.engine(), &wasm, &files.wasm)
            .map(|(component, _deleted)| (component, CacheUse::Disabled, None)),
    };
    let (component, cache_use, pending) = compiled.map_err(|source| match source {
        CompileError::Invalid(reason) => PluginError::InvalidComponent { path: path.clone(), reason },
        source => PluginError::Compile { path: path.clone(), source },
    })?;
    let kind = crate::names::qualified_kind(policy.tenant.as_deref(), &manifest.name);
    let grants = Grants::resolve(&kind, &manifest.capabilities, &policy.capabilities, &wasm_sha256);
    if !grants.config_missing.is_empty() {
        tracing::warn!(plugin = %kind, keys = %grants.config_missing.join(", "),
            "the manifest names config keys this host holds no value for ([config] or [secrets] in kiln.toml); the plugin reads them as absent");
    }
    let component = sandbox.prepare(&component, grants).map_err(|source| PluginError::Prepare { path: path.clone(), source })?;
    let budget_bytes = manifest.budget().memory_bytes;
    if component.min_memory_bytes() > budget_bytes {
        return Err(PluginError::MemoryOverBudget { path, min_bytes: component.min_memory_bytes(), budget_bytes });
    }
    Ok(Plugin {
        kind,
        manifest,
        component,
        wasm_path: files.wasm.clone(),
        wasm_sha256,
        manifest_text,
        version_id,
        cache: cache_use,
        load_time: started.elapsed(),
        signed_by,
        pending_artifact: Arc::new(Mutex::new(pending)),
    })
}
