//! Where the plugins in this repository were built, by `host/build.rs`: one
//! directory per plugin (`plugin.toml` + `NAME.wasm`). Examples land in
//! `target/<profile>/plugins/`, test plugins in `target/<profile>/test-plugins/`.
//! A constant per plugin, so a missing guest is a compile error in the tests.

include!(concat!(env!("OUT_DIR"), "/built_plugins.rs"));
