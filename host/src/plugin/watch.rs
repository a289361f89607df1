//! Hot-swap by file: watches the plugins directory and deploys a plugin
//! directory that changed, once its files have been quiet for [`SETTLE`].
//!
//! A new version lands whole when it is written beside the directory and
//! renamed in (what `kiln plugin deploy` and the API do); files copied into
//! place one by one also work, as long as the copy finishes within the
//! settle time — a half-written version fails validation and is refused,
//! and the next write tries again. Deleting a directory does not unload its
//! plugin (a file being replaced must not stop a kind): removal goes
//! through `kiln plugin remove`, which checks for pending jobs.

use super::registry::{Registry, Source, is_hidden};
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a plugin directory must be quiet before it is loaded.
pub const SETTLE: Duration = Duration::from_millis(20);

/// Watches while it lives.
pub struct PluginWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for PluginWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginWatcher")
    }
}

/// Starts watching `registry`'s plugins directory; changes are deployed
/// from a task on the current runtime until the watcher is dropped.
pub fn watch_plugins_dir(registry: Arc<Registry>) -> notify::Result<PluginWatcher> {
    let root = registry.plugins_dir().to_path_buf();
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    // Events may name paths absolutely whatever the watch was given.
    let watched = root.canonicalize().unwrap_or_else(|_| root.clone());
    let tenants = registry.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if !changes_content(&event.kind) => {}
        Ok(event) => {
            for path in &event.paths {
                if let Some(kind) = plugin_of(&watched, &absolute(path), |name| tenants.is_tenant(name)) {
                    let _ = tx.send(kind);
                }
            }
        }
        Err(e) => tracing::warn!("watching the plugins directory: {e}"),
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    tokio::spawn(deploy_changes(registry, rx));
    tracing::info!(dir = %root.display(), "watching the plugins directory for new versions");
    Ok(PluginWatcher { _watcher: watcher })
}

/// Whether an event can mean a new version: opening and reading a file
/// cannot (the registry's own reads of a plugin it loads would otherwise
/// trigger another load, for ever); closing a file written to can.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// `path` with symlinks resolved, as far as it still exists (a removed
/// file cannot be canonicalized; its directory can).
fn absolute(path: &Path) -> std::path::PathBuf {
    path.canonicalize()
        .or_else(|e| match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => parent.canonicalize().map(|p| p.join(name)),
            _ => Err(e),
        })
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The plugin directory `path` is in, as the kind it holds (`echo`, or
/// `acme/echo` inside the directory of a tenant, as `is_tenant` says), if
/// it is inside `root` and not a staging area.
fn plugin_of(root: &Path, path: &Path, is_tenant: impl Fn(&str) -> bool) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts = relative.components().map(|c| match c {
        Component::Normal(part) => Some(Path::new(part)).filter(|p| !is_hidden(p)).map(|p| p.to_string_lossy().into_owned()),
        _ => None,
    });
    let first = parts.next()??;
    if !is_tenant(&first) {
        return Some(first);
    }
    Some(format!("{first}/{}", parts.next()??))
}

async fn deploy_changes(registry: Arc<Registry>, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(first) = rx.recv().await {
        let mut changed = BTreeSet::from([first]);
        // Settle: keep gathering until the directory has been quiet.
        while let Ok(Some(name)) = tokio::time::timeout(SETTLE, rx.recv()).await {
            changed.insert(name);
        }
        for name in changed {
            let dir = registry.plugins_dir().join(&name);
            if !dir.join(super::MANIFEST_FILE).is_file() {
                tracing::debug!(plugin = %name, "plugin directory changed but holds no manifest (removed or half-written); ignored");
                continue;
            }
            let registry = registry.clone();
            let deployed = tokio::task::spawn_blocking(move || registry.deploy_dir(&dir, Source::File)).await;
            match deployed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(plugin = %name, "new version in the plugins directory {e}; the serving version stays"),
                Err(e) => tracing::error!(plugin = %name, "loading a new version failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};
        assert!(!changes_content(&notify::EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!changes_content(&notify::EventKind::Access(AccessKind::Close(AccessMode::Read))));
        for change in [
            notify::EventKind::Access(AccessKind::Close(AccessMode::Write)),
            notify::EventKind::Create(CreateKind::Folder),
            notify::EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            notify::EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        ] {
            assert!(changes_content(&change), "{change:?}");
        }
    }

    #[test]
    fn events_map_to_their_plugin_directory() {
        let root = Path::new("/p");
        let of = |path: &str| plugin_of(root, Path::new(path), |name| name == "acme");
        assert_eq!(of("/p/echo/echo.wasm"), Some("echo".into()));
        assert_eq!(of("/p/echo"), Some("echo".into()));
        assert_eq!(of("/p/.echo.deploy-1/echo.wasm"), None, "staging areas are not plugins");
        assert_eq!(of("/p"), None);
        assert_eq!(of("/elsewhere/echo"), None);
        assert_eq!(of("/p/acme/echo/echo.wasm"), Some("acme/echo".into()), "a tenant's plugin");
        assert_eq!(of("/p/acme/echo"), Some("acme/echo".into()));
        assert_eq!(of("/p/acme/.echo.deploy-1/plugin.toml"), None, "a staging area in a tenant's directory");
        assert_eq!(of("/p/acme"), None, "the tenant's directory itself holds no plugin");
    }
}
