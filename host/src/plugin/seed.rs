//! The example plugins built into the `kiln` binary: what a host's own
//! plugins directory (`DATA_DIR/plugins`) starts with, and what `kiln run
//! NAME` finds when no directory has `NAME`. They are a seed, read-only:
//! deploys land in the data directory, never in a build tree, so an
//! installed or copied `kiln` needs no source checkout and `cargo clean`
//! deletes no deployed plugin.

use super::MANIFEST_FILE;
use std::path::{Path, PathBuf};

/// One example plugin's files, as built with this binary.
#[derive(Debug)]
pub struct SeedPlugin {
    pub name: &'static str,
    pub manifest: &'static str,
    pub wasm: &'static [u8],
}

/// The examples built into this binary.
pub fn examples() -> &'static [SeedPlugin] {
    super::built::EXAMPLE_SEED
}

/// The hex sha256 of each example's component: the bytes this binary
/// ships, which alone may reach its example services.
pub fn example_components() -> std::collections::BTreeSet<String> {
    examples().iter().map(|e| super::artifact_cache::sha256_hex(e.wasm)).collect()
}

/// The name of the plugins directory inside a data directory.
pub const PLUGINS_SUBDIR: &str = "plugins";

/// The plugins directory a host serves when none is configured:
/// `data_dir/plugins`. Made and filled with the examples the first time
/// (in a staging directory renamed into place, so a crash leaves either
/// nothing or every example); once it exists it is served as it is, so an
/// example removed or replaced by a deploy stays so across restarts.
pub fn default_plugins_dir(data_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = data_dir.join(PLUGINS_SUBDIR);
    if dir.exists() {
        return Ok(dir);
    }
    let staging = data_dir.join(format!(".{PLUGINS_SUBDIR}.seed-{:016x}", fastrand::u64(..)));
    let written = write_examples(&staging).and_then(|()| std::fs::rename(&staging, &dir));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    match written {
        Ok(()) => {
            let names: Vec<&str> = examples().iter().map(|e| e.name).collect();
            tracing::info!(dir = %dir.display(), examples = %names.join(", "), "made the plugins directory with the example plugins; deploys land here");
            Ok(dir)
        }
        // Another process made it first: serve that.
        Err(_) if dir.is_dir() => Ok(dir),
        Err(e) => Err(e),
    }
}

/// Writes every example into `dir` (made if missing), one plugin directory each.
pub fn write_examples(dir: &Path) -> std::io::Result<()> {
    for example in examples() {
        write_example(example, &dir.join(example.name))?;
    }
    Ok(())
}

fn write_example(example: &SeedPlugin, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MANIFEST_FILE), example.manifest)?;
    std::fs::write(dir.join(format!("{}.wasm", example.name)), example.wasm)
}

/// The examples written out for one command that runs or checks a plugin
/// by name (`kiln run echo`), in a temporary directory removed when this
/// is dropped.
#[derive(Debug)]
pub struct ExamplesOnDisk {
    dir: tempfile::TempDir,
}

impl ExamplesOnDisk {
    pub fn write() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("kiln-examples-").tempdir()?;
        write_examples(dir.path())?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_carries_every_example_as_a_valid_plugin_directory() {
        let names: Vec<&str> = examples().iter().map(|e| e.name).collect();
        for expected in ["echo", "send-email", "cleanup", "poller", "warmup"] {
            assert!(names.contains(&expected), "{expected} missing from {names:?}");
        }
        for example in examples() {
            assert!(example.wasm.starts_with(b"\0asm"), "{} is not wasm", example.name);
            let manifest = crate::plugin::Manifest::parse(example.manifest, example.name).unwrap();
            assert_eq!(manifest.name, example.name);
        }
    }

    #[test]
    fn a_new_data_directory_is_seeded_once_and_then_left_as_it_is() {
        let data = tempfile::tempdir().unwrap();
        let dir = default_plugins_dir(data.path()).unwrap();
        assert_eq!(dir, data.path().join("plugins"));
        assert_eq!(std::fs::read(dir.join("echo/echo.wasm")).unwrap(), examples().iter().find(|e| e.name == "echo").unwrap().wasm);
        // What the operator did to it stays: no example comes back.
        std::fs::remove_dir_all(dir.join("echo")).unwrap();
        assert_eq!(default_plugins_dir(data.path()).unwrap(), dir);
        assert!(!dir.join("echo").exists());
        assert!(dir.join("send-email/plugin.toml").is_file());
        // No staging directory is left behind.
        let entries: Vec<_> = std::fs::read_dir(data.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("plugins")]);
    }
}
