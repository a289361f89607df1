//! Turns what a user typed (`echo`, `plugins/testing/spin`, `x.wasm`) into
//! the manifest and component files of one plugin.

use super::{MANIFEST_FILE, PluginError};
use std::path::{Path, PathBuf};

/// The files of one plugin: its component, and its manifest when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFiles {
    pub manifest: Option<PathBuf>,
    pub wasm: PathBuf,
}

impl PluginFiles {
    /// The name a plugin without a manifest gets: its file stem.
    pub fn default_name(&self) -> String {
        let stem = self.wasm.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        stem.replace('_', "-").to_ascii_lowercase()
    }
}

/// Resolves `plugin`, which is one of:
/// - a `.wasm` file (its manifest is a `plugin.toml` beside it, if any);
/// - a plugin directory: `plugin.toml` and one `.wasm`;
/// - a plugin's source directory (`plugin.toml` and `Cargo.toml`, no
///   `.wasm`): resolved to the newest component the crate's own build made
///   (a `target/wasm32-wasip2/{release,debug}` above it, or under
///   `$CARGO_TARGET_DIR`); only with no build of its own, to the plugin of
///   that name in one of `plugin_dirs` (a deployed copy, never preferred
///   to the author's build however new);
/// - a plugin's name: `DIR/NAME` for the first of `plugin_dirs` that has it.
pub fn resolve(plugin: &str, plugin_dirs: &[PathBuf]) -> Result<PluginFiles, PluginError> {
    let path = Path::new(plugin);
    if path.is_file() {
        let manifest = path.parent().map(|d| d.join(MANIFEST_FILE)).filter(|m| m.is_file());
        return Ok(PluginFiles { manifest, wasm: path.to_path_buf() });
    }
    if path.is_dir() {
        return resolve_dir(path, plugin_dirs);
    }
    let looks_like_name = !plugin.contains(['/', '\\']) && !plugin.ends_with(".wasm");
    if looks_like_name {
        if let Some(by_name) = plugin_dirs.iter().map(|d| d.join(plugin)).find(|d| d.is_dir()) {
            return resolve_dir(&by_name, plugin_dirs);
        }
    }
    let searched: Vec<String> = plugin_dirs.iter().map(|d| d.display().to_string()).collect();
    Err(PluginError::NotFound {
        what: format!("{plugin:?}"),
        hint: if looks_like_name {
            format!("it is not a file or directory, nor a plugin in {}", searched.join(" or "))
        } else {
            "no such file or directory".to_string()
        },
    })
}

fn resolve_dir(dir: &Path, plugin_dirs: &[PathBuf]) -> Result<PluginFiles, PluginError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = manifest_path.is_file().then_some(manifest_path);
    let wasm_files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| PluginError::NotFound { what: dir.display().to_string(), hint: e.to_string() })?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "wasm") && p.is_file())
        .collect();
    match wasm_files.as_slice() {
        [wasm] => return Ok(PluginFiles { manifest, wasm: wasm.clone() }),
        [] => {}
        _ => {
            return Err(PluginError::NotFound {
                what: format!("component in {}", dir.display()),
                hint: "the directory holds more than one .wasm file; keep one".to_string(),
            });
        }
    }
    let cargo_toml = dir.join("Cargo.toml");
    let Some(manifest) = manifest.filter(|_| cargo_toml.is_file()) else {
        return Err(PluginError::NotFound {
            what: format!("component in {}", dir.display()),
            hint: format!("a plugin directory holds {MANIFEST_FILE} and one .wasm file"),
        });
    };
    let crate_name = crate_name(&cargo_toml)?;
    let plugin_name = super::Manifest::load(&manifest)?.name;
    let file = format!("{}.wasm", crate_name.replace('-', "_"));
    let mut own_builds: Vec<PathBuf> = dir
        .ancestors()
        .flat_map(|a| ["release", "debug"].map(|p| a.join("target/wasm32-wasip2").join(p).join(&file)))
        .collect();
    // A target directory set for all builds (CARGO_TARGET_DIR) is where cargo put it.
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = dir.join(target);
        own_builds.extend(["release", "debug"].map(|p| target.join("wasm32-wasip2").join(p).join(&file)));
    }
    let deployed = plugin_dirs.iter().map(|d| d.join(&plugin_name).join(format!("{plugin_name}.wasm")));
    let newest = |paths: &mut dyn Iterator<Item = PathBuf>| {
        paths.filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p))).max_by_key(|(modified, _)| *modified)
    };
    match newest(&mut own_builds.into_iter()).or_else(|| newest(&mut deployed.into_iter())) {
        Some((_, wasm)) => Ok(PluginFiles { manifest: Some(manifest), wasm }),
        None => Err(PluginError::NotFound {
            what: format!("built component for the source directory {}", dir.display()),
            hint: format!(
                "build it with `cargo build --release --target wasm32-wasip2 -p {crate_name}`, \
                 or `cargo build` the host, which builds the repository's plugins"
            ),
        }),
    }
}

fn crate_name(cargo_toml: &Path) -> Result<String, PluginError> {
    let not_found = |hint: String| PluginError::NotFound { what: format!("crate name in {}", cargo_toml.display()), hint };
    let text = std::fs::read_to_string(cargo_toml).map_err(|e| not_found(e.to_string()))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| not_found(e.to_string()))?;
    doc.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .ok_or_else(|| not_found("no [package] name".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn write_aged(path: &Path, age: Duration) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"\0asm").unwrap();
        std::fs::File::options().write(true).open(path).unwrap().set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn a_source_directory_resolves_to_its_own_build_before_a_newer_deployed_copy() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("my-plugin");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("Cargo.toml"), "[package]\nname = \"my-plugin\"\nversion = \"0.1.0\"\n").unwrap();
        std::fs::write(src.join(MANIFEST_FILE), "name = \"my-plugin\"\nversion = \"0.1.0\"\n").unwrap();
        let deployed_dir = root.path().join("plugins");
        let deployed = deployed_dir.join("my-plugin/my-plugin.wasm");
        write_aged(&deployed, Duration::from_secs(1));
        let dirs = [deployed_dir];
        assert_eq!(resolve(&src.display().to_string(), &dirs).unwrap().wasm, deployed, "no build of its own yet");
        let own = src.join("target/wasm32-wasip2/debug/my_plugin.wasm");
        write_aged(&own, Duration::from_secs(3600));
        assert_eq!(resolve(&src.display().to_string(), &dirs).unwrap().wasm, own, "its own build, though older");
        let release = src.join("target/wasm32-wasip2/release/my_plugin.wasm");
        write_aged(&release, Duration::from_secs(60));
        assert_eq!(resolve(&src.display().to_string(), &dirs).unwrap().wasm, release, "the newest of its own builds");
    }
}
