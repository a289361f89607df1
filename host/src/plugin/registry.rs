//! The live registry: which version of each plugin serves, swapped while
//! the host runs.
//!
//! Readers (every job run) take the current map without a lock
//! ([`ArcSwap`]); a writer validates and compiles the new version first, off
//! the hot path, then builds a new map and swaps it in. An iteration that
//! already holds the old version's `Arc<Plugin>` finishes on it; the next
//! one gets the new version. A version that fails validation never reaches
//! the map: the old one keeps serving.
//!
//! Every version that was ever active is archived under
//! `<data_dir>/plugin-versions/<kind>/<version id>/` (its manifest, its
//! component and a `record.json`), which is what `rollback` restores from,
//! across restarts too. The plugins directory holds what serves now: deploys
//! and rollbacks write there, so a restart serves the same versions.
//!
//! Plugins are keyed by kind: the host's own by name (`PLUGINS/echo/`), a
//! tenant's as `tenant/name`, from the directory named after the tenant
//! (`PLUGINS/acme/echo/`). So two tenants may each have an `echo`; a host
//! plugin may not take a tenant's name.

use super::manifest::is_valid_name;
use super::{ArtifactCache, LoadPolicy, MANIFEST_FILE, Plugin, PluginError};
use crate::sandbox::Sandbox;
use crate::tenant::TenantSettings;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The plugins serving now, by kind.
pub type LiveSet = BTreeMap<String, Arc<Plugin>>;

/// How a version came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Found in the plugins directory when the host started.
    Startup,
    /// Landed in the watched plugins directory while the host ran.
    File,
    /// `PUT /plugins/{name}` (or `kiln plugin deploy`).
    Api,
    /// `POST /plugins/{name}/rollback` (or `kiln plugin rollback`).
    Rollback,
}

/// One archived version of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    pub version_id: String,
    pub wasm_sha256: String,
    /// Milliseconds since the epoch when it last became active.
    pub activated_at: i64,
    pub source: Source,
    /// The key that signed it, when its tenant checks signatures.
    #[serde(default)]
    pub signed_by: Option<String>,
    /// True for the version serving now.
    #[serde(default)]
    pub active: bool,
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub name: String,
    pub version: String,
    pub version_id: String,
    /// The version it replaced, if any.
    pub previous: Option<String>,
    /// False when this exact version was already serving: nothing changed.
    pub changed: bool,
}

/// Why a deploy, rollback or removal was refused. The serving version is
/// untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("refused: {0}")]
    Invalid(#[from] PluginError),
    /// A refused upload, its paths named from the plugin's own name;
    /// `busy` when only the compiler's load refused it (try again).
    #[error("{message}")]
    Upload { message: String, busy: bool },
    #[error("refused: the manifest names plugin {found:?} but it was deployed as {expected:?} ({path})")]
    NameMismatch { expected: String, found: String, path: String },
    #[error("refused: {0:?} is not a valid plugin name (1-64 characters of a-z, 0-9, `-` or `_`, starting with a letter)")]
    BadName(String),
    #[error("refused: {0:?} is the name of a tenant (its plugins are in the directory of that name), so it cannot be a plugin's")]
    TenantName(String),
    #[error("no plugin {0:?} is loaded")]
    NotLoaded(String),
    #[error("plugin {name:?} has no earlier version to roll back to (archived: {archived})")]
    NoEarlierVersion { name: String, archived: usize },
    #[error(
        "refused: tenant {tenant:?} keeps {archived} plugin versions, its quota (`tenants.{tenant}.max_plugin_versions` = {limit}); \
         delete an archived version (DELETE /plugins/NAME/versions/VERSION_ID) to deploy another; nothing was changed"
    )]
    OverQuota { tenant: String, archived: usize, limit: u32 },
    #[error("plugin {name:?} has no archived version {version_id:?}")]
    NoSuchVersion { name: String, version_id: String },
    #[error("version {version_id} of plugin {name:?} serves now; roll back or deploy another before deleting it")]
    VersionServing { name: String, version_id: String },
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DeployError + '_ {
    move |source| DeployError::Io { path: path.display().to_string(), source }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The registry of live plugin versions.
pub struct Registry {
    sandbox: Arc<Sandbox>,
    cache: ArtifactCache,
    policy: LoadPolicy,
    plugins_dir: PathBuf,
    archive_dir: PathBuf,
    /// Tenants, each with a directory of plugins and what it narrows.
    tenants: BTreeMap<String, TenantSettings>,
    live: ArcSwap<LiveSet>,
    /// Serialises writers; readers never take it.
    writer: Mutex<()>,
    /// Bumped on every swap, for the services that follow triggers.
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("plugins_dir", &self.plugins_dir).field("live", &self.live.load().len()).finish()
    }
}

impl Registry {
    /// An empty registry serving from `plugins_dir`, archiving under `archive_dir`.
    pub fn new(sandbox: Arc<Sandbox>, cache: ArtifactCache, plugins_dir: PathBuf, archive_dir: PathBuf) -> Self {
        Self {
            sandbox,
            cache,
            policy: LoadPolicy::default(),
            plugins_dir,
            archive_dir,
            tenants: Default::default(),
            live: ArcSwap::from_pointee(LiveSet::new()),
            writer: Mutex::new(()),
            generation: watch::Sender::new(0),
        }
    }

    /// The same registry, loading every version under `policy`.
    pub fn with_policy(mut self, policy: LoadPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same registry, with a directory of plugins for each of
    /// `tenants`, loaded under its narrower ceilings and grants.
    pub fn with_tenants(mut self, tenants: &BTreeMap<String, TenantSettings>) -> Self {
        self.tenants = tenants.clone();
        self
    }

    pub fn policy(&self) -> &LoadPolicy {
        &self.policy
    }

    /// Whether `name` is a tenant's (and its directory holds plugins).
    pub fn is_tenant(&self, name: &str) -> bool {
        self.tenants.contains_key(name)
    }

    /// The policy `kind`'s versions load under: for a tenant's, the host's
    /// narrowed by the tenant's ceilings, `config`, `allow_http` and
    /// `kv_quota_bytes` (what its plugins' stores hold together, so each
    /// too), and without the example services (they are the host's, for the host's examples).
    fn policy_for(&self, kind: &str) -> LoadPolicy {
        let Some(tenant) = crate::names::tenant_of(kind) else { return self.policy.clone() };
        let mut policy = LoadPolicy { tenant: Some(tenant.to_string()), ..self.policy.clone() };
        if let Some(settings) = self.tenants.get(tenant) {
            policy.ceilings = policy.ceilings.for_tenant(tenant, &settings.ceilings);
            policy.signatures = settings.signatures(tenant);
            let mut capabilities = crate::capability::HostCapabilities::clone(&policy.capabilities);
            capabilities.examples = None;
            capabilities.config = capabilities.config.only(&settings.config);
            if let Some(quota) = settings.kv_quota_bytes {
                capabilities.policy.kv_quota_bytes = capabilities.policy.kv_quota_bytes.min(quota.get());
                capabilities.kv_total = Some(crate::capability::KvTotal { tenant: tenant.to_string(), bytes: quota.get() });
            }
            if let Some(allowed) = &settings.allow_http {
                let host = std::mem::take(&mut capabilities.policy.allow_http);
                capabilities.policy.allow_http = host.iter().flat_map(|h| allowed.iter().filter_map(|t| h.intersect(t))).collect();
            }
            policy.capabilities = Arc::new(capabilities);
        }
        policy
    }

    /// Where `kind` serves from in the plugins directory.
    fn dir_of(&self, kind: &str) -> PathBuf {
        self.plugins_dir.join(kind)
    }

    /// The kind a directory in the plugins directory holds: `acme/echo`
    /// for `PLUGINS/acme/echo`, `echo` for `PLUGINS/echo`.
    fn kind_of_dir(&self, dir: &Path) -> String {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = dir.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
        match parent.filter(|p| self.is_tenant(p) && dir.parent().and_then(Path::parent) == Some(self.plugins_dir.as_path())) {
            Some(tenant) => format!("{tenant}/{name}"),
            None => name,
        }
    }

    /// Checks `kind` names a plugin this registry may hold.
    fn check_kind(&self, kind: &str) -> Result<(), DeployError> {
        let name = crate::names::plain_name(kind);
        match crate::names::tenant_of(kind) {
            _ if !is_valid_name(name) => Err(DeployError::BadName(name.to_string())),
            Some(tenant) if !self.is_tenant(tenant) => Err(DeployError::NotLoaded(kind.to_string())),
            None if self.is_tenant(name) => Err(DeployError::TenantName(name.to_string())),
            _ => Ok(()),
        }
    }

    /// A registry holding `plugins`, with no directory behind it (tests and
    /// benchmarks that never deploy).
    pub fn fixed(sandbox: Arc<Sandbox>, plugins: LiveSet) -> Self {
        let registry = Self::new(sandbox, ArtifactCache::new(std::env::temp_dir()), PathBuf::new(), PathBuf::new());
        registry.live.store(Arc::new(plugins));
        registry
    }

    pub fn plugins_dir(&self) -> &Path {
        &self.plugins_dir
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// The plugins serving now. Lock-free; the map never changes under the caller.
    pub fn snapshot(&self) -> Arc<LiveSet> {
        self.live.load_full()
    }

    /// The version of `name` serving now.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.live.load().get(name).cloned()
    }

    /// Resolves whenever the set of live versions changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Loads every plugin directory in the plugins directory (and in each
    /// tenant's directory there). One that fails is reported and left out;
    /// the others serve. Returns the failures.
    pub fn load_all(&self) -> Result<Vec<(PathBuf, DeployError)>, DeployError> {
        let plugin_dirs = |dir: &Path| -> Result<Vec<PathBuf>, DeployError> {
            let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
            Ok(entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| !is_hidden(p)).collect())
        };
        let mut dirs = Vec::new();
        for dir in plugin_dirs(&self.plugins_dir)? {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if self.is_tenant(&name) {
                dirs.extend(plugin_dirs(&dir)?.into_iter().filter(|p| p.join(MANIFEST_FILE).is_file()));
            } else if dir.join(MANIFEST_FILE).is_file() {
                dirs.push(dir);
            }
        }
        dirs.sort();
        let mut failures = Vec::new();
        for dir in dirs {
            if let Err(e) = self.deploy_dir(&dir, Source::Startup) {
                tracing::error!(dir = %dir.display(), "plugin {e}");
                failures.push((dir, e));
            }
        }
        let removed = self.cache.remove_unfinished();
        if removed > 0 {
            tracing::info!(dir = %self.cache.dir().display(), removed, "removed compiles left unfinished by a process that died");
        }
        Ok(failures)
    }

    /// Loads the plugin in `dir` (named by the directory) and makes it the
    /// serving version, unless that exact version already serves.
    pub fn deploy_dir(&self, dir: &Path, source: Source) -> Result<Deployed, DeployError> {
        let expected = self.kind_of_dir(dir);
        self.check_kind(&expected)?;
        let plugin = self.load_checked(dir, &expected)?;
        let _writer = self.writer.lock().expect("registry writer poisoned");
        // Loading took a while: if a deploy or rollback rewrote the directory
        // meanwhile, what was read is stale; the rewrite's own event (or the
        // rollback itself) decides what serves. Nothing changes here.
        let on_disk = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap_or_default();
        if plugin.manifest_text.as_deref().is_some_and(|read| read != on_disk) {
            tracing::debug!(dir = %dir.display(), "plugin directory changed while it was loaded; the newer contents decide");
            let current = self.get(&expected);
            return Ok(Deployed {
                name: expected,
                version: current.as_ref().map(|p| p.manifest.version.clone()).unwrap_or_default(),
                version_id: current.as_ref().map(|p| p.version_id.clone()).unwrap_or_default(),
                previous: None,
                changed: false,
            });
        }
        self.activate(plugin, source)
    }

    /// Validates an uploaded version of `kind` (with its `plugin.sig`, if
    /// signed), makes it serve, and writes it into the plugins directory
    /// (so a restart serves it too).
    pub fn deploy_upload(&self, kind: &str, manifest_text: &str, wasm: &[u8], signature: Option<&str>) -> Result<Deployed, DeployError> {
        self.check_kind(kind)?;
        let name = crate::names::plain_name(kind);
        let staging = staging_beside(&self.dir_of(kind), "deploy");
        let result = (|| {
            std::fs::create_dir_all(&staging).map_err(io_error(&staging))?;
            let wasm_path = staging.join(format!("{name}.wasm"));
            std::fs::write(&wasm_path, wasm).map_err(io_error(&wasm_path))?;
            let manifest_path = staging.join(MANIFEST_FILE);
            std::fs::write(&manifest_path, manifest_text).map_err(io_error(&manifest_path))?;
            if let Some(signature) = signature {
                let sig_path = staging.join(crate::tenant::SIGNATURE_FILE);
                std::fs::write(&sig_path, signature).map_err(io_error(&sig_path))?;
            }
            // Errors name the upload as `NAME/plugin.toml`, never the
            // server's staging directory.
            let plugin = self.load_checked(&staging, kind).map_err(|e| match e {
                DeployError::NameMismatch { expected, found, .. } => {
                    DeployError::NameMismatch { expected, found, path: "the uploaded manifest".into() }
                }
                other => DeployError::Upload {
                    busy: matches!(&other, DeployError::Invalid(PluginError::Compile { source: super::CompileError::Busy { .. }, .. })),
                    message: other.to_string().replace(&staging.display().to_string(), name),
                },
            })?;
            let _writer = self.writer.lock().expect("registry writer poisoned");
            let deployed = self.activate(plugin, Source::Api)?;
            self.install(&staging, kind)?;
            Ok(deployed)
        })();
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// Makes the newest archived version of `name` other than the serving
    /// one serve again, and writes it back into the plugins directory.
    pub fn rollback(&self, name: &str) -> Result<Deployed, DeployError> {
        let _writer = self.writer.lock().expect("registry writer poisoned");
        let current = self.get(name).ok_or_else(|| DeployError::NotLoaded(name.to_string()))?;
        let versions = self.archived(name);
        let Some(target) = versions.iter().find(|v| v.version_id != current.version_id) else {
            return Err(DeployError::NoEarlierVersion { name: name.to_string(), archived: versions.len() });
        };
        let archived = self.archive_dir.join(name).join(&target.version_id);
        let plugin = self.load_checked(&archived, name).map_err(|e| DeployError::Upload {
            busy: false,
            message: e.to_string().replace(&archived.display().to_string(), &format!("{name} (archived version {})", target.version_id)),
        })?;
        let deployed = self.activate(plugin, Source::Rollback)?;
        let staging = staging_beside(&self.dir_of(name), "rollback");
        let copied = copy_plugin(&archived, &staging, crate::names::plain_name(name)).and_then(|()| self.install(&staging, name));
        let _ = std::fs::remove_dir_all(&staging);
        copied?;
        Ok(deployed)
    }

    /// Stops serving `name` and removes its directory from the plugins
    /// directory (its versions stay archived). Whether its pending jobs
    /// allow this is the caller's to check.
    pub fn remove(&self, name: &str) -> Result<Arc<Plugin>, DeployError> {
        let _writer = self.writer.lock().expect("registry writer poisoned");
        let mut next = LiveSet::clone(&self.live.load());
        let removed = next.remove(name).ok_or_else(|| DeployError::NotLoaded(name.to_string()))?;
        self.live.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
        let dir = self.dir_of(name);
        let gone = if dir.is_symlink() || dir.is_file() { std::fs::remove_file(&dir) } else { std::fs::remove_dir_all(&dir) };
        if let Err(e) = gone.or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }) {
            tracing::warn!(plugin = name, "removed from the registry, but its directory stays: {e}");
        }
        tracing::info!(plugin = name, version = %removed.manifest.version, "plugin removed");
        Ok(removed)
    }

    /// Every archived version of `name`, newest activation first, the
    /// serving one marked.
    pub fn versions(&self, name: &str) -> Vec<VersionInfo> {
        let active = self.get(name).map(|p| p.version_id.clone());
        let mut versions = self.archived(name);
        for v in &mut versions {
            v.active = Some(&v.version_id) == active.as_ref();
        }
        versions
    }

    /// Deletes an archived version of `name` that does not serve now (the
    /// tenant's way to make room under `max_plugin_versions`).
    pub fn delete_version(&self, name: &str, version_id: &str) -> Result<VersionInfo, DeployError> {
        self.check_kind(name)?;
        let _writer = self.writer.lock().expect("registry writer poisoned");
        let missing = || DeployError::NoSuchVersion { name: name.to_string(), version_id: version_id.to_string() };
        // Only an id the archive lists names a directory: never a path from the caller.
        let version = self.archived(name).into_iter().find(|v| v.version_id == version_id).ok_or_else(missing)?;
        if self.get(name).is_some_and(|p| p.version_id == version.version_id) {
            return Err(DeployError::VersionServing { name: name.to_string(), version_id: version.version_id });
        }
        let dir = self.archive_dir.join(name).join(&version.version_id);
        std::fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        tracing::info!(plugin = name, version = %version.version, version_id = %&version.version_id[..16.min(version.version_id.len())], "archived version deleted");
        Ok(version)
    }

    /// Refuses a version that would take its tenant past
    /// `max_plugin_versions`: a new one, not yet archived (a rollback, or a
    /// version deployed before, adds none).
    fn check_version_quota(&self, plugin: &Plugin) -> Result<(), DeployError> {
        let Some(tenant) = crate::names::tenant_of(&plugin.kind) else { return Ok(()) };
        let Some(limit) = self.tenants.get(tenant).and_then(|t| t.max_plugin_versions) else { return Ok(()) };
        if self.archive_dir.as_os_str().is_empty() || self.archive_dir.join(&plugin.kind).join(&plugin.version_id).join("record.json").is_file() {
            return Ok(());
        }
        let archived = self.tenant_versions(tenant);
        if archived >= limit.get() as usize {
            return Err(DeployError::OverQuota { tenant: tenant.to_string(), archived, limit: limit.get() });
        }
        Ok(())
    }

    /// How many versions `tenant`'s plugins keep archived, all together.
    fn tenant_versions(&self, tenant: &str) -> usize {
        let Ok(plugins) = std::fs::read_dir(self.archive_dir.join(tenant)) else { return 0 };
        plugins
            .filter_map(|p| std::fs::read_dir(p.ok()?.path()).ok())
            .map(|versions| versions.filter_map(Result::ok).filter(|v| v.path().join("record.json").is_file()).count())
            .sum()
    }

    fn archived(&self, name: &str) -> Vec<VersionInfo> {
        let Ok(entries) = std::fs::read_dir(self.archive_dir.join(name)) else { return Vec::new() };
        let mut versions: Vec<VersionInfo> = entries
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.ok()?.path().join("record.json")).ok()?;
                serde_json::from_str(&text).ok()
            })
            .collect();
        versions.sort_by(|a, b| b.activated_at.cmp(&a.activated_at));
        versions
    }

    /// Loads `dir` as kind `expected` and checks its manifest names it.
    fn load_checked(&self, dir: &Path, expected: &str) -> Result<Plugin, DeployError> {
        let files = super::resolve(&dir.display().to_string(), &[])?;
        let plugin = super::load_with(&self.sandbox, Some(&self.cache), &files, &self.policy_for(expected))?;
        if plugin.kind != expected {
            return Err(DeployError::NameMismatch {
                expected: crate::names::plain_name(expected).to_string(),
                found: plugin.manifest.name.clone(),
                path: files.manifest.as_ref().unwrap_or(&files.wasm).display().to_string(),
            });
        }
        Ok(plugin)
    }

    /// Swaps `plugin` in (the writer lock is held) and archives it.
    fn activate(&self, plugin: Plugin, source: Source) -> Result<Deployed, DeployError> {
        let name = plugin.kind.clone();
        let current = self.live.load();
        let previous = current.get(&name).cloned();
        let mut deployed = Deployed {
            name: name.clone(),
            version: plugin.manifest.version.clone(),
            version_id: plugin.version_id.clone(),
            previous: previous.as_ref().map(|p| p.manifest.version.clone()),
            changed: true,
        };
        if previous.as_ref().is_some_and(|p| p.version_id == plugin.version_id) {
            deployed.changed = false;
            return Ok(deployed);
        }
        self.check_version_quota(&plugin)?;
        plugin.keep_artifact();
        self.archive(&plugin, source);
        let mut next = LiveSet::clone(&current);
        let trigger = plugin.manifest.trigger.describe();
        let (cache, load_ms) = (super::trigger::as_written(&plugin.cache), format!("{:.1}", plugin.load_time.as_secs_f64() * 1000.0));
        let source = super::trigger::as_written(&source);
        next.insert(name.clone(), Arc::new(plugin));
        self.live.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
        match &deployed.previous {
            Some(previous) => tracing::info!(plugin = %name, from = %previous, to = %deployed.version, %source, %cache, %load_ms,
                version_id = %&deployed.version_id[..16], "plugin version swapped"),
            None => tracing::info!(plugin = %name, version = %deployed.version, %source, %cache, %load_ms, %trigger,
                version_id = %&deployed.version_id[..16], "plugin loaded"),
        }
        Ok(deployed)
    }

    /// Keeps a copy of `plugin` to roll back to. Best effort: a failure is
    /// logged, the deploy goes on.
    fn archive(&self, plugin: &Plugin, source: Source) {
        if self.archive_dir.as_os_str().is_empty() {
            return;
        }
        let name = &plugin.kind;
        let dir = self.archive_dir.join(name).join(&plugin.version_id);
        let record = VersionInfo {
            version: plugin.manifest.version.clone(),
            version_id: plugin.version_id.clone(),
            wasm_sha256: plugin.wasm_sha256.clone(),
            activated_at: now_millis(),
            source,
            signed_by: plugin.signed_by.clone(),
            active: false,
        };
        let written = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let wasm = dir.join(format!("{}.wasm", plugin.manifest.name));
            if !wasm.is_file() {
                std::fs::copy(&plugin.wasm_path, &wasm)?;
                std::fs::write(dir.join(MANIFEST_FILE), plugin.manifest_text.as_deref().unwrap_or_default())?;
                let signature = plugin.wasm_path.with_file_name(crate::tenant::SIGNATURE_FILE);
                if plugin.signed_by.is_some() && signature.is_file() {
                    std::fs::copy(&signature, dir.join(crate::tenant::SIGNATURE_FILE))?;
                }
            }
            let tmp = dir.join("record.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&record).expect("a record serialises"))?;
            std::fs::rename(tmp, dir.join("record.json"))
        })();
        if let Err(e) = written {
            tracing::warn!(plugin = %name, dir = %dir.display(), "cannot archive this version (rollback to it will not be possible): {e}");
        }
    }

    /// Moves the staged directory into the plugins directory as `kind`,
    /// replacing what was there (a directory or a symlink) in one rename
    /// each, so the watcher never sees half a plugin.
    fn install(&self, staging: &Path, kind: &str) -> Result<(), DeployError> {
        let target = self.dir_of(kind);
        let old = staging_beside(&target, "old");
        if target.is_symlink() || target.is_file() {
            std::fs::remove_file(&target).map_err(io_error(&target))?;
        } else if target.is_dir() {
            std::fs::rename(&target, &old).map_err(io_error(&target))?;
        }
        std::fs::rename(staging, &target).map_err(io_error(&target))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

/// A fresh dot-entry beside `target` (the same directory, so a rename
/// moves it into place): `.echo.deploy-<random>` beside `echo`.
fn staging_beside(target: &Path, what: &str) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}.{what}-{:016x}", fastrand::u64(..)))
}

fn copy_plugin(from: &Path, to: &Path, name: &str) -> Result<(), DeployError> {
    std::fs::create_dir_all(to).map_err(io_error(to))?;
    for file in [MANIFEST_FILE.to_string(), format!("{name}.wasm")] {
        std::fs::copy(from.join(&file), to.join(&file)).map_err(io_error(&to.join(&file)))?;
    }
    let signature = from.join(crate::tenant::SIGNATURE_FILE);
    if signature.is_file() {
        std::fs::copy(&signature, to.join(crate::tenant::SIGNATURE_FILE)).map_err(io_error(&signature))?;
    }
    Ok(())
}

/// Dot-entries are staging areas (a deploy in progress), never plugins.
pub(super) fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}
