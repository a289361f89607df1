//! Compiled components on disk, keyed by the wasm's SHA-256 and the engine's
//! compatibility hash, so a restart loads in microseconds what took tens of
//! milliseconds to compile.

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

/// Whether a component came from the cache or was compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Loads the compiled form of `wasm`, compiling and storing it on a miss.
    /// A corrupt or unreadable entry is recompiled, never trusted.
    pub fn load_or_compile(&self, engine: &Engine, wasm: &[u8], wasm_sha256: &str) -> wasmtime::Result<(Component, CacheUse)> {
        let path = self.path_for(engine, wasm_sha256);
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with this compatibility hash, into a directory the host
            // owns; wasmtime also checks the header before mapping it.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheUse::Hit)),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable cached artifact: {e:#}"),
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), "cannot write artifact cache: {e:#}");
        }
        Ok((component, CacheUse::Miss))
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = component.serialize()?;
        // Write then rename, so a crash or a concurrent host never sees half a
        // file, and so a file already mapped by a loaded component is never
        // truncated under it (that would fault the process).
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
