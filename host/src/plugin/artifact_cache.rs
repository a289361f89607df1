//! Compiled components on disk, keyed by the wasm's SHA-256 and the engine's
//! compatibility hash, so a restart loads in microseconds what took tens of
//! milliseconds to compile. A fresh compile is written beside its place and
//! moved in only once the plugin is accepted ([`PendingArtifact::keep`]):
//! a refused component leaves nothing on disk.

use super::compiler::{CompileError, Compiler};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of precompiled components.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// A compiled artifact not yet in the cache: moved in by
/// [`keep`](Self::keep), deleted when dropped without it.
#[derive(Debug)]
pub struct PendingArtifact {
    tmp: PathBuf,
    path: Option<PathBuf>,
}

impl PendingArtifact {
    /// Moves the artifact into the cache (best effort: a failure only
    /// means the next load compiles again).
    pub fn keep(mut self) {
        if let Some(path) = self.path.take() {
            if let Err(e) = std::fs::rename(&self.tmp, &path) {
                tracing::warn!(path = %path.display(), "cannot write artifact cache: {e}");
            }
        }
    }
}

impl Drop for PendingArtifact {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Whether a component came from the cache or was compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheUse {
    Hit,
    Miss,
    Disabled,
}

impl ArtifactCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for(&self, engine: &Engine, wasm_sha256: &str) -> PathBuf {
        // The std hasher is stable within one build of Kiln, which is all the
        // key needs: another build may simply miss and recompile.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{wasm_sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// Loads the compiled form of `wasm`, or compiles it with `compiler` on a miss; a fresh
    /// compile comes with the [`PendingArtifact`] to keep once the plugin is
    /// accepted. A corrupt or unreadable entry is recompiled, never trusted.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_path: &Path,
        wasm_sha256: &str,
        compiler: &Compiler,
    ) -> Result<(Component, CacheUse, Option<PendingArtifact>), CompileError> {
        let path = self.path_for(engine, wasm_sha256);
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with this compatibility hash, into a directory the host
            // owns; wasmtime also checks the header before mapping it.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheUse::Hit, None)),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable cached artifact: {e:#}"),
            }
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "cannot create the artifact cache: {e}");
            let (component, pending) = compile_to_temp(compiler, engine, wasm, wasm_path)?;
            drop(pending);
            return Ok((component, CacheUse::Miss, None));
        }
        // A new name per compile: never truncate a file a loaded component
        // has mapped (that would fault the process), never share one with a
        // concurrent host.
        let tmp = self.dir.join(format!(".{wasm_sha256}.{}-{:016x}.tmp", std::process::id(), fastrand::u64(..)));
        let pending = PendingArtifact { tmp, path: Some(path) };
        let component = compiler.compile_to(engine, wasm, wasm_path, &pending.tmp)?;
        Ok((component, CacheUse::Miss, Some(pending)))
    }

    /// Deletes what compiles left half-written when their process died
    /// (a crash, `kill -9`), so they cannot pile up over restarts. Another
    /// live host's compile in progress is left alone. Returns how many went.
    pub fn remove_unfinished(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = unfinished_compile_pid(&name) else { continue };
            let alive = Path::new("/proc").join(pid.to_string()).exists();
            if !alive && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// The process id in the name of an unfinished compile,
/// `.<sha256>.<pid>-<random>.tmp`.
fn unfinished_compile_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, pid_and_random) = rest.split_once('.')?;
    pid_and_random.split('-').next()?.parse().ok()
}

/// Compiles `wasm` without a cache: the artifact goes through a temporary
/// file, deleted once loaded (the mapping outlives the name).
pub(crate) fn compile_to_temp(
    compiler: &Compiler,
    engine: &Engine,
    wasm: &[u8],
    wasm_path: &Path,
) -> Result<(Component, PendingArtifact), CompileError> {
    let tmp = std::env::temp_dir().join(format!("kiln-compile-{}-{:016x}.cwasm", std::process::id(), fastrand::u64(..)));
    let pending = PendingArtifact { tmp, path: None };
    let component = compiler.compile_to(engine, wasm, wasm_path, &pending.tmp)?;
    Ok((component, pending))
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_compiles_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path());
        let dead = dir.path().join(".abc.4000000000-1f.tmp");
        let ours = dir.path().join(format!(".abc.{}-2e.tmp", std::process::id()));
        let kept = dir.path().join("abc-0123.cwasm");
        for f in [&dead, &ours, &kept] {
            std::fs::write(f, b"x").unwrap();
        }
        assert_eq!(cache.remove_unfinished(), 1);
        assert!(!dead.exists() && ours.exists() && kept.exists());
        assert_eq!(unfinished_compile_pid(".abc.17-ff.tmp"), Some(17));
        assert_eq!(unfinished_compile_pid("abc-17.cwasm"), None);
    }

    #[test]
    fn a_pending_artifact_is_deleted_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(".x.1-1.tmp");
        std::fs::write(&tmp, b"x").unwrap();
        drop(PendingArtifact { tmp: tmp.clone(), path: Some(dir.path().join("x.cwasm")) });
        assert!(!tmp.exists() && !dir.path().join("x.cwasm").exists(), "refused: nothing stays");
        std::fs::write(&tmp, b"x").unwrap();
        PendingArtifact { tmp: tmp.clone(), path: Some(dir.path().join("x.cwasm")) }.keep();
        assert!(!tmp.exists() && dir.path().join("x.cwasm").exists(), "kept: moved into place");
    }
}
