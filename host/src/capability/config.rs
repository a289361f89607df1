//! Configuration and secrets (`wasi:config/store@0.2.0-rc.1`, served by
//! `wasmtime-wasi-config`): the host's `[config]` values and `[secrets]`
//! (read once at start), what one plugin version may read of them (the
//! keys its manifest names, nothing else), and the redaction that keeps a
//! secret's value out of logs, job records and errors.

use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime_wasi_config::WasiConfigVariables;

/// The longest config key: names, not data.
pub const MAX_CONFIG_KEY_BYTES: usize = 128;
/// The largest value of one config key or secret.
pub const MAX_CONFIG_VALUE_BYTES: usize = 64 << 10;
/// What a secret's value is replaced with wherever the host writes text.
pub const REDACTED: &str = "[redacted]";

/// 1-128 bytes of `a-z`, `A-Z`, `0-9`, `_`, `-` or `.`.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_CONFIG_KEY_BYTES || !key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        return Err(format!("{key:?} is not a config key (1-{MAX_CONFIG_KEY_BYTES} characters of a-z, A-Z, 0-9, `_`, `-` or `.`)"));
    }
    Ok(())
}

/// Where `kiln.toml` says a secret's value is: `{ env = "VAR" }` or
/// `{ file = "/run/secrets/name" }`. Only the place is in the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// A secret's value. `Debug` never shows it; only the `wasi:config` grant
/// and the redactor read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({REDACTED:?})")
    }
}

/// A `[config]` or `[secrets]` entry that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigValueError {
    #[error("`{table}.{key}`: {problem}")]
    Invalid { table: &'static str, key: String, problem: String },
    #[error("`secrets.{key}` names environment variable {var}, which is not set")]
    EnvUnset { key: String, var: String },
    #[error("`secrets.{key}` names file {path}, which cannot be read: {source}")]
    File { key: String, path: String, source: std::io::Error },
}

/// The values a host holds for the keys plugins name: plain config and
/// secrets, each key in one of the two.
#[derive(Debug, Clone, Default)]
pub struct ConfigValues {
    plain: BTreeMap<String, String>,
    secrets: BTreeMap<String, Secret>,
}

impl ConfigValues {
    /// Checks `[config]` and reads every `[secrets]` source (once, at start).
    pub fn resolve(config: &BTreeMap<String, String>, secrets: &BTreeMap<String, SecretSource>) -> Result<Self, ConfigValueError> {
        let mut read = BTreeMap::new();
        for (key, source) in secrets {
            let value = match source {
                SecretSource::Env(var) => {
                    std::env::var(var).map_err(|_| ConfigValueError::EnvUnset { key: key.clone(), var: var.clone() })?
                }
                SecretSource::File(path) => {
                    let shown = path.display().to_string();
                    let file_error = |source| ConfigValueError::File { key: key.clone(), path: shown.clone(), source };
                    let len = std::fs::metadata(path).map_err(file_error)?.len();
                    if len > MAX_CONFIG_VALUE_BYTES as u64 {
                        return Err(ConfigValueError::Invalid {
                            table: "secrets",
                            key: key.clone(),
                            problem: format!("file {shown} is {len} bytes, over the most of {MAX_CONFIG_VALUE_BYTES}"),
                        });
                    }
                    // A file written by `echo` ends in a newline that is no part of the secret.
                    let text = std::fs::read_to_string(path).map_err(file_error)?;
                    text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string()
                }
            };
            read.insert(key.clone(), value);
        }
        Self::from_values(config.clone(), read)
    }

    /// Values given directly (`kiln run --config/--secret`), checked like a file's.
    pub fn from_values(plain: BTreeMap<String, String>, secrets: BTreeMap<String, String>) -> Result<Self, ConfigValueError> {
        let invalid = |table, key: &str, problem: String| Err(ConfigValueError::Invalid { table, key: key.to_string(), problem });
        for (table, values) in [("config", &plain), ("secrets", &secrets)] {
            for (key, value) in values {
                if let Err(problem) = check_key(key) {
                    return invalid(table, key, problem);
                }
                if value.len() > MAX_CONFIG_VALUE_BYTES {
                    return invalid(table, key, format!("is {} bytes, over the most of {MAX_CONFIG_VALUE_BYTES}", value.len()));
                }
            }
        }
        if let Some(both) = plain.keys().find(|k| secrets.contains_key(*k)) {
            return invalid("secrets", both, "is in [config] too: a key is one or the other".into());
        }
        if let Some((key, _)) = secrets.iter().find(|(_, v)| v.is_empty()) {
            return invalid("secrets", key, "is empty: an empty value cannot be kept out of logs".into());
        }
        Ok(Self { plain, secrets: secrets.into_iter().map(|(k, v)| (k, Secret(v))).collect() })
    }

    /// Only the values of `keys` (a tenant's: the rest of the host's are
    /// not its plugins' to read).
    pub fn only(&self, keys: &[String]) -> Self {
        let keep = |k: &String| keys.contains(k);
        Self {
            plain: self.plain.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
            secrets: self.secrets.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// Whether the host holds a value for `key`.
    pub fn has(&self, key: &str) -> bool {
        self.plain.contains_key(key) || self.secrets.contains_key(key)
    }

    /// A `[config]` value (never a secret's).
    pub fn plain(&self, key: &str) -> Option<&str> {
        self.plain.get(key).map(String::as_str)
    }

    /// Holds `value` for `key` unless the host already holds one: what a
    /// host's own config says wins over a default.
    pub fn set_default(&mut self, key: &str, value: String, secret: bool) {
        if self.has(key) {
            return;
        }
        if secret {
            self.secrets.insert(key.to_string(), Secret(value));
        } else {
            self.plain.insert(key.to_string(), value);
        }
    }

    /// Whether `key` is a secret.
    pub fn is_secret(&self, key: &str) -> bool {
        self.secrets.contains_key(key)
    }

    /// What a plugin that names `keys` may read: those of them the host
    /// holds a value for.
    pub(crate) fn grant(&self, keys: &[String]) -> ConfigGrant {
        let mut vars = WasiConfigVariables::new();
        let mut secrets = Vec::new();
        for key in keys {
            if let Some(value) = self.plain.get(key) {
                vars.insert(key.clone(), value.clone());
            } else if let Some(Secret(value)) = self.secrets.get(key) {
                vars.insert(key.clone(), value.clone());
                secrets.push(value.clone());
            }
        }
        ConfigGrant { vars: Arc::new(vars), redactor: Redactor::new(secrets) }
    }
}

/// One plugin version's view of the configuration, in the form
/// `wasmtime-wasi-config` serves it, with the redactor for its secrets.
#[derive(Clone, Default)]
pub(crate) struct ConfigGrant {
    pub(crate) vars: Arc<WasiConfigVariables>,
    pub(crate) redactor: Redactor,
}

impl std::fmt::Debug for ConfigGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigGrant").finish_non_exhaustive()
    }
}

/// Links `wasi:config/store`, serving each store the values its grants hold.
pub(crate) fn add_to_linker<T: super::InScope + 'static>(linker: &mut wasmtime::component::Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_config::add_to_linker(linker, |state: &mut T| wasmtime_wasi_config::WasiConfig::from(&*state.scope_ref().grants.config.vars))
}

/// Replaces the values of a plugin's secrets with [`REDACTED`] in what
/// the host keeps or prints of a run (log lines, errors, the result).
/// It catches a value as written; a plugin set on leaking its secret can
/// encode it first, which is why secrets go only to plugins granted them.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another goes whole.
    secrets: Arc<[Vec<u8>]>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    pub fn new(mut secrets: Vec<String>) -> Self {
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets: secrets.into_iter().map(String::into_bytes).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn bytes<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out = Cow::Borrowed(text);
        for secret in self.secrets.iter() {
            if let Some(replaced) = replace_all(&out, secret, REDACTED.as_bytes()) {
                out = Cow::Owned(replaced);
            }
        }
        out
    }

    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Whole secrets (valid UTF-8) were swapped for ASCII inside
            // valid UTF-8: still valid; lossy only as a guard.
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

/// `haystack` with every `needle` replaced, or `None` when there is none.
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    let first = haystack.windows(needle.len()).position(|w| w == needle)?;
    let mut out = Vec::with_capacity(haystack.len());
    out.extend_from_slice(&haystack[..first]);
    let mut rest = &haystack[first..];
    while !rest.is_empty() {
        if rest.starts_with(needle) {
            out.extend_from_slice(with);
            rest = &rest[needle.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(plain: &[(&str, &str)], secrets: &[(&str, &str)]) -> Result<ConfigValues, ConfigValueError> {
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ConfigValues::from_values(map(plain), map(secrets))
    }

    #[test]
    fn a_grant_holds_only_the_keys_named_and_present() {
        let v = values(&[("url", "http://x"), ("other", "o")], &[("key", "s3cret")]).unwrap();
        let grant = v.grant(&["url".into(), "key".into(), "absent".into()]);
        let redacted = grant.redactor.text("url http://x key s3cret twice s3cret");
        assert_eq!(redacted, "url http://x key [redacted] twice [redacted]");
        assert!(!v.grant(&["url".into()]).redactor.text("s3cret").contains("redacted"), "a secret not granted is not this plugin's to leak");
    }

    #[test]
    fn secrets_redact_longest_first_in_text_and_bytes() {
        let r = Redactor::new(vec!["abc".into(), "abcdef".into()]);
        assert_eq!(r.text("xabcdefx abc"), "x[redacted]x [redacted]");
        assert_eq!(&*r.bytes(b"\xffabc\xff"), b"\xff[redacted]\xff");
        assert!(matches!(r.text("nothing here"), Cow::Borrowed(_)));
        assert!(format!("{:?}", Secret::new("hunter2".into())).contains("[redacted]"));
    }

    #[test]
    fn bad_values_are_named() {
        let e = values(&[("bad key", "v")], &[]).unwrap_err().to_string();
        assert!(e.starts_with("`config.bad key`: \"bad key\" is not a config key"), "{e}");
        let e = values(&[("k", "v")], &[("k", "s")]).unwrap_err().to_string();
        assert!(e.contains("`secrets.k`: is in [config] too"), "{e}");
        let e = values(&[], &[("k", "")]).unwrap_err().to_string();
        assert!(e.contains("`secrets.k`: is empty"), "{e}");
        let big = "x".repeat(MAX_CONFIG_VALUE_BYTES + 1);
        assert!(values(&[("k", &big)], &[]).unwrap_err().to_string().contains("over the most"));
    }

    #[test]
    fn secrets_are_read_from_env_and_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mail");
        std::fs::write(&file, "from-file\n").unwrap();
        let secrets = BTreeMap::from([("mail".to_string(), SecretSource::File(file.clone()))]);
        let v = ConfigValues::resolve(&BTreeMap::new(), &secrets).unwrap();
        assert_eq!(v.grant(&["mail".into()]).redactor.text("from-file"), REDACTED, "the trailing newline is no part of it");
        let unset = BTreeMap::from([("k".to_string(), SecretSource::Env("KILN_TEST_SURELY_UNSET_VAR".into()))]);
        let e = ConfigValues::resolve(&BTreeMap::new(), &unset).unwrap_err().to_string();
        assert_eq!(e, "`secrets.k` names environment variable KILN_TEST_SURELY_UNSET_VAR, which is not set");
        let missing = BTreeMap::from([("k".to_string(), SecretSource::File(dir.path().join("nope")))]);
        let e = ConfigValues::resolve(&BTreeMap::new(), &missing).unwrap_err().to_string();
        assert!(e.starts_with("`secrets.k` names file ") && e.contains("cannot be read"), "{e}");
    }
}
