//! Builds the repository's plugins (`plugins/examples`, `plugins/testing`)
//! for `wasm32-wasip2` and lays each out as a plugin directory
//! (`plugin.toml` + `NAME.wasm`) next to the host binary. A test plugin
//! that Rust cannot express (a crafted component) is a `NAME.wat` beside
//! its `plugin.toml`, assembled here; `(;repeat N;) ... (;end;)` in it
//! repeats the text between N times, with `(;i;)` in it counting 1 to N.
//! The layout is
//! `target/<profile>/plugins/` for examples, `target/<profile>/test-plugins/`
//! for the misbehaving test plugins. Their paths become constants in
//! `kiln::plugin::built` (the pattern of wasmtime's `test-programs`), and
//! the examples' files are built into the binary as `EXAMPLE_SEED`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

struct PluginCrate {
    group: &'static str,
    crate_name: String,
    plugin_name: String,
    source_dir: PathBuf,
}

/// A test plugin written as component text.
struct WatPlugin {
    plugin_name: String,
    source_dir: PathBuf,
}

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ has a parent").to_path_buf();
    println!("cargo:rerun-if-changed={}", root.join("plugins").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    // Tests that need Postgres run only when a test database is named;
    // otherwise libtest lists them as ignored, with the reason.
    // The outage test also needs a command that stops and starts that
    // Postgres (`KILN_TEST_PG_CTL`).
    // The full-disk tests mount a small tmpfs (root on Linux): only where
    // `KILN_TEST_MOUNT` says they may; elsewhere they are listed as ignored.
    println!("cargo::rustc-check-cfg=cfg(kiln_mount)");
    println!("cargo:rerun-if-env-changed=KILN_TEST_MOUNT");
    if std::env::var_os("KILN_TEST_MOUNT").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=kiln_mount");
    }
    // The schemathesis run needs its command (`KILN_TEST_SCHEMATHESIS`,
    // which `.ci/run` installs); elsewhere it is listed as ignored.
    println!("cargo::rustc-check-cfg=cfg(kiln_schemathesis)");
    println!("cargo:rerun-if-env-changed=KILN_TEST_SCHEMATHESIS");
    if std::env::var_os("KILN_TEST_SCHEMATHESIS").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=kiln_schemathesis");
    }
    // The dashboard's browser test needs chromedriver and Chromium
    // (`KILN_TEST_CHROMEDRIVER`, which `.ci/run` installs); elsewhere it
    // is listed as ignored.
    println!("cargo::rustc-check-cfg=cfg(kiln_browser)");
    println!("cargo:rerun-if-env-changed=KILN_TEST_CHROMEDRIVER");
    if std::env::var_os("KILN_TEST_CHROMEDRIVER").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=kiln_browser");
    }
    // The JavaScript and Python plugin tests build their plugins with the
    // stock toolchains (`KILN_TEST_COMPONENTIZE_JS`, `KILN_TEST_COMPONENTIZE_PY`,
    // which `.ci/run` installs); elsewhere they are listed as ignored.
    for (cfg, var) in [("kiln_js", "KILN_TEST_COMPONENTIZE_JS"), ("kiln_python", "KILN_TEST_COMPONENTIZE_PY")] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo:rerun-if-env-changed={var}");
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
    println!("cargo::rustc-check-cfg=cfg(kiln_postgres)");
    println!("cargo::rustc-check-cfg=cfg(kiln_postgres_restart)");
    println!("cargo:rerun-if-env-changed=KILN_TEST_DATABASE_URL");
    println!("cargo:rerun-if-env-changed=KILN_TEST_PG_CTL");
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("KILN_TEST_DATABASE_URL") {
        println!("cargo:rustc-cfg=kiln_postgres");
        if set("KILN_TEST_PG_CTL") {
            println!("cargo:rustc-cfg=kiln_postgres_restart");
        }
    }

    check_target_installed();

    let out_dir = PathBuf::from(env("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/kiln-<hash>/out.
    let profile_dir = out_dir.ancestors().nth(3).expect("OUT_DIR is inside the target directory").to_path_buf();
    let build_dir = profile_dir.parent().expect("profile dir has a parent").join("kiln-plugins-build");

    let crates: Vec<PluginCrate> = [("examples", "plugins"), ("testing", "test-plugins")]
        .iter()
        .flat_map(|(group, _)| plugin_crates(&root.join("plugins").join(group), group))
        .collect();

    let mut cargo = Command::new(env("CARGO"));
    cargo
        .current_dir(&root)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&build_dir)
        // Plugins are shipped, not debugged here: small files compile fast.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        // The host's flags (e.g. -C target-cpu=native) mean nothing to wasm.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    for c in &crates {
        cargo.args(["-p", &c.crate_name]);
    }
    let status = cargo.status().expect("cannot run cargo to build the plugins");
    assert!(status.success(), "building the plugins for {TARGET} failed (see the errors above)");

    let wasm_dir = build_dir.join(TARGET).join("release");
    let mut constants = String::new();
    let wat_plugins = wat_plugins(&root.join("plugins").join("testing"));
    for w in &wat_plugins {
        let dir = profile_dir.join("test-plugins").join(&w.plugin_name);
        std::fs::create_dir_all(&dir).unwrap();
        let wat_path = w.source_dir.join(format!("{}.wat", w.plugin_name));
        let text = std::fs::read_to_string(&wat_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", wat_path.display()));
        let wasm = wat::parse_str(expand_repeats(&text)).unwrap_or_else(|e| panic!("{}: {e}", wat_path.display()));
        write_if_changed(&dir.join(format!("{}.wasm", w.plugin_name)), &wasm);
        copy_if_changed(&w.source_dir.join("plugin.toml"), &dir.join("plugin.toml"));
        writeln!(constants, "/// The assembled `{}` plugin directory (`plugins/testing/{}`).", w.plugin_name, w.plugin_name).unwrap();
        writeln!(constants, "pub const {}: &str = {:?};", w.plugin_name.replace('-', "_").to_uppercase(), dir.display().to_string()).unwrap();
    }
    // The examples are built into the binary too: the seed of a new host's
    // plugins directory, so an installed `kiln` needs no source checkout.
    let mut seed = String::from("/// The example plugins, built into the binary (see `plugin::seed`).\npub const EXAMPLE_SEED: &[super::seed::SeedPlugin] = &[\n");
    for (group, dest) in [("examples", "plugins"), ("testing", "test-plugins")] {
        let dest_dir = profile_dir.join(dest);
        writeln!(constants, "/// Directory of the built `plugins/{group}` plugins, one folder each.").unwrap();
        writeln!(constants, "pub const {}_DIR: &str = {:?};", group.to_uppercase(), dest_dir.display().to_string()).unwrap();
        for c in crates.iter().filter(|c| c.group == group) {
            let plugin_dir = dest_dir.join(&c.plugin_name);
            std::fs::create_dir_all(&plugin_dir).unwrap();
            let wasm = wasm_dir.join(format!("{}.wasm", c.crate_name.replace('-', "_")));
            copy_if_changed(&wasm, &plugin_dir.join(format!("{}.wasm", c.plugin_name)));
            copy_if_changed(&c.source_dir.join("plugin.toml"), &plugin_dir.join("plugin.toml"));
            if group == "examples" {
                writeln!(
                    seed,
                    "    super::seed::SeedPlugin {{ name: {:?}, manifest: include_str!({:?}), wasm: include_bytes!({:?}) }},",
                    c.plugin_name,
                    plugin_dir.join("plugin.toml").display().to_string(),
                    plugin_dir.join(format!("{}.wasm", c.plugin_name)).display().to_string()
                )
                .unwrap();
            }
            writeln!(constants, "/// The built `{}` plugin directory (`plugins/{group}/{}`).", c.plugin_name, c.plugin_name).unwrap();
            writeln!(
                constants,
                "pub const {}: &str = {:?};",
                c.plugin_name.replace('-', "_").to_uppercase(),
                plugin_dir.display().to_string()
            )
            .unwrap();
        }
    }
    seed.push_str("];\n");
    constants.push_str(&seed);
    std::fs::write(out_dir.join("built_plugins.rs"), constants).unwrap();
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

/// Makes sure the wasm target is there: `rust-toolchain.toml` declares it,
/// but rustup does not always install declared targets by itself (not with
/// `RUSTUP_AUTO_INSTALL=0`, nor for an already-installed toolchain). Tries
/// `rustup target add` once, then fails with the exact command to run.
fn check_target_installed() {
    if target_installed() {
        return;
    }
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        rustup.args(["--toolchain", &toolchain]);
    }
    println!("cargo:warning=installing the {TARGET} target with `rustup target add {TARGET}`");
    let added = rustup.status().is_ok_and(|s| s.success());
    if !added || !target_installed() {
        panic!(
            "\n\nThe {TARGET} target is not installed; Kiln's plugins are built for it.\n\
             Run:\n\n    rustup target add {TARGET}\n\nthen build again.\n"
        );
    }
}

fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(sysroot) = Command::new(&rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    Path::new(&sysroot).join("lib/rustlib").join(TARGET).is_dir()
}

fn plugin_crates(group_dir: &Path, group: &'static str) -> Vec<PluginCrate> {
    let mut crates: Vec<PluginCrate> = std::fs::read_dir(group_dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", group_dir.display()))
        .filter_map(|entry| {
            let source_dir = entry.ok()?.path();
            let cargo: toml::Table = toml::from_str(&std::fs::read_to_string(source_dir.join("Cargo.toml")).ok()?).ok()?;
            let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(source_dir.join("plugin.toml")).ok()?).ok()?;
            Some(PluginCrate {
                group,
                crate_name: cargo.get("package")?.get("name")?.as_str()?.to_string(),
                plugin_name: manifest.get("name")?.as_str()?.to_string(),
                source_dir,
            })
        })
        .collect();
    crates.sort_by(|a, b| a.plugin_name.cmp(&b.plugin_name));
    crates
}

/// Test plugin directories holding `NAME.wat` (and no crate).
fn wat_plugins(group_dir: &Path) -> Vec<WatPlugin> {
    let mut plugins: Vec<WatPlugin> = std::fs::read_dir(group_dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", group_dir.display()))
        .filter_map(|entry| {
            let source_dir = entry.ok()?.path();
            if source_dir.join("Cargo.toml").exists() {
                return None;
            }
            let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(source_dir.join("plugin.toml")).ok()?).ok()?;
            let plugin_name = manifest.get("name")?.as_str()?.to_string();
            source_dir.join(format!("{plugin_name}.wat")).is_file().then_some(WatPlugin { plugin_name, source_dir })
        })
        .collect();
    plugins.sort_by(|a, b| a.plugin_name.cmp(&b.plugin_name));
    plugins
}

/// Expands `(;repeat N;) TEXT (;end;)` into TEXT N times (not nested),
/// `(;i;)` in TEXT becoming 1, 2, … N.
fn expand_repeats(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("(;repeat ") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "(;repeat ".len()..];
        let (count, body) = after.split_once(";)").expect("(;repeat N;) is closed");
        let count: usize = count.trim().parse().expect("(;repeat N;) takes a number");
        let (body, tail) = body.split_once("(;end;)").expect("(;repeat N;) is ended by (;end;)");
        for i in 1..=count {
            out.push_str(&body.replace("(;i;)", &i.to_string()));
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Copies only when the content differs, so unchanged plugins keep their
/// modification time (and the host's artifact cache key stays the same anyway).
fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()));
    write_if_changed(to, &new);
}

fn write_if_changed(to: &Path, new: &[u8]) {
    if std::fs::read(to).ok().as_deref() != Some(new) {
        std::fs::write(to, new).unwrap_or_else(|e| panic!("cannot write {}: {e}", to.display()));
    }
}
