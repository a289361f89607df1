//! The plugin manifest (`plugin.toml`): what a plugin says about itself.
//! Strict: an unknown key or a wrong type is an error naming it and its line.

use super::trigger::{Trigger, TriggerTable};
use crate::capability;
use crate::sandbox::{self, Budget};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The manifest's file name inside a plugin directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name; jobs of this kind run it.
    pub name: String,
    /// The plugin's own version (semver by convention).
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub throttle: Throttle,
    /// The `[capabilities]` table: what the plugin asks to be granted
    /// (outbound HTTP, kv stores, config keys, kinds to enqueue); nothing
    /// by default. The host grants the part it allows.
    #[serde(default)]
    pub capabilities: capability::Request,
    /// The `[trigger.*]` table as written; [`Manifest::trigger`] is what it means.
    #[serde(default, rename = "trigger")]
    pub trigger_table: TriggerTable,
    /// What starts the plugin's iterations, resolved from `[trigger.*]`.
    #[serde(skip)]
    pub trigger: Trigger,
}

/// Per-iteration budgets; each defaults to the host's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub fuel: u64,
    pub memory_mib: u64,
    pub timeout_ms: u64,
    /// The largest `ok` value accepted back; a larger one is refused
    /// (`output_too_large`) and dead-lettered.
    pub output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: sandbox::DEFAULT_FUEL,
            memory_mib: sandbox::DEFAULT_MEMORY_BYTES >> 20,
            timeout_ms: u64::try_from(sandbox::DEFAULT_TIMEOUT.as_millis()).expect("fits"),
            output_bytes: sandbox::DEFAULT_MAX_OUTPUT_BYTES as u64,
        }
    }
}

/// How the starts of the plugin's jobs are held back, at claim time and
/// across every host of the store: held jobs wait, they do not fail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Throttle {
    /// At most this many of its jobs with one `concurrency_key` run at
    /// once (jobs without a key are not held by it).
    pub max_per_key: Option<std::num::NonZeroU32>,
    /// At most this many of its jobs started per second, minute or hour
    /// (`"10/s"`).
    pub rate: Option<crate::tenant::settings::Rate>,
}

impl Throttle {
    pub fn is_empty(&self) -> bool {
        self.max_per_key.is_none() && self.rate.is_none()
    }
}

/// How failed attempts are retried.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; then the job is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each attempt, with jitter.
    pub initial_backoff_ms: u64,
    /// Ceiling of the backoff.
    pub max_backoff_ms: u64,
}

/// Default attempts: enough to ride out a short outage of a dependency.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The most attempts a manifest may ask for: past this a job is not
/// failing transiently.
pub const MAX_ATTEMPTS: u32 = 1_000;
/// The longest backoff a manifest may ask for (30 days); it also caps the
/// delay a plugin may request in a `retry`.
pub const MAX_BACKOFF_MS: u64 = 30 * 24 * 3_600_000;

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: DEFAULT_MAX_ATTEMPTS, initial_backoff_ms: 1_000, max_backoff_ms: 300_000 }
    }
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("bad manifest {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("bad manifest {path}: `{field}` {problem}")]
    Invalid { path: String, field: &'static str, problem: String },
}

impl Manifest {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates manifest text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ManifestError> {
        let mut manifest: Manifest =
            toml::from_str(text).map_err(|source| ManifestError::Parse { path: origin.to_string(), source })?;
        manifest.validate(origin)?;
        manifest.trigger = manifest
            .trigger_table
            .resolve()
            .map_err(|(field, problem)| ManifestError::Invalid { path: origin.to_string(), field, problem })?;
        Ok(manifest)
    }

    /// The manifest a bare `.wasm` gets: its file stem as name, defaults elsewhere.
    pub fn for_bare_component(name: &str) -> Self {
        Self {
            name: name.to_string(),
            version: "0.0.0".to_string(),
            description: String::new(),
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            throttle: Throttle::default(),
            capabilities: capability::Request::default(),
            trigger_table: TriggerTable::default(),
            trigger: Trigger::Queued,
        }
    }

    fn validate(&self, origin: &str) -> Result<(), ManifestError> {
        let invalid = |field, problem: String| Err(ManifestError::Invalid { path: origin.to_string(), field, problem });
        if !is_valid_name(&self.name) {
            return invalid("name", format!("{:?} must be 1-64 characters of a-z, 0-9, `-` or `_`, starting with a letter", self.name));
        }
        if self.version.trim().is_empty() {
            return invalid("version", "must not be empty".into());
        }
        if self.limits.fuel == 0 {
            return invalid("limits.fuel", "must be greater than zero".into());
        }
        if self.limits.memory_mib == 0 {
            return invalid("limits.memory_mib", "must be greater than zero".into());
        }
        let max_mib = sandbox::MAX_MEMORY_BYTES >> 20;
        if self.limits.memory_mib > max_mib {
            return invalid("limits.memory_mib", format!("is {}, over the host's maximum of {max_mib}", self.limits.memory_mib));
        }
        if self.limits.timeout_ms == 0 {
            return invalid("limits.timeout_ms", "must be greater than zero".into());
        }
        if self.limits.output_bytes == 0 {
            return invalid("limits.output_bytes", "must be greater than zero".into());
        }
        if self.retry.max_attempts == 0 || self.retry.max_attempts > MAX_ATTEMPTS {
            return invalid("retry.max_attempts", format!("is {}, must be between 1 and {MAX_ATTEMPTS}", self.retry.max_attempts));
        }
        if self.retry.max_backoff_ms > MAX_BACKOFF_MS {
            return invalid("retry.max_backoff_ms", format!("is {}, over the most of {MAX_BACKOFF_MS} (30 days)", self.retry.max_backoff_ms));
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            return invalid("retry.initial_backoff_ms", "must not exceed retry.max_backoff_ms".into());
        }
        if let Some((field, problem)) = self.capabilities.problem() {
            return invalid(field, problem);
        }
        Ok(())
    }

    /// The budget the manifest asks for, on top of the host's defaults.
    pub fn budget(&self) -> Budget {
        Budget {
            fuel: self.limits.fuel,
            memory_bytes: self.limits.memory_mib.saturating_mul(1 << 20),
            timeout: Duration::from_millis(self.limits.timeout_ms),
            max_output_bytes: usize::try_from(self.limits.output_bytes).unwrap_or(usize::MAX),
            ..Budget::default()
        }
    }
}

/// 1-64 characters of a-z, 0-9, `-` or `_`, starting with a letter.
pub fn is_valid_name(name: &str) -> bool {
    // A plugin's name is its jobs' kind: one rule, kept with the grants that name kinds.
    capability::is_kind_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, "test/plugin.toml")
    }

    #[test]
    fn a_partial_limits_table_keeps_the_other_defaults() {
        let m = parse("name = \"echo\"\nversion = \"1\"\n[limits]\nfuel = 7\n").unwrap();
        assert_eq!(m.limits.fuel, 7);
        assert_eq!(m.limits.timeout_ms, Limits::default().timeout_ms);
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = parse("name = \"echo\"\nversion = \"1.0.0\"\n").unwrap();
        assert_eq!(m.limits, Limits::default());
        assert_eq!(m.retry.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert!(m.capabilities.is_empty());
        assert_eq!(m.trigger, Trigger::Queued);
        assert_eq!(m.budget().memory_bytes, sandbox::DEFAULT_MEMORY_BYTES);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("name = \"echo\"\nversion = \"1\"\n\n[limits]\nfuel = 5\nmemory_mib = 1\ntimeout_ms = 1\ncpus = 4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cpus"), "{err}");
        assert!(err.contains("line 8"), "{err}");
        assert!(err.contains("test/plugin.toml"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let err = parse("name = \"echo\"\nversion = \"1\"\n[limits]\nfuel = \"lots\"\nmemory_mib = 1\ntimeout_ms = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("fuel"), "{err}");
    }

    #[test]
    fn zero_and_negative_limits_are_refused() {
        let err = parse("name = \"a\"\nversion = \"1\"\n[limits]\nfuel = 0\nmemory_mib = 1\ntimeout_ms = 1\n").unwrap_err();
        assert!(err.to_string().contains("`limits.fuel` must be greater than zero"), "{err}");
        let err = parse("name = \"a\"\nversion = \"1\"\n[limits]\nfuel = 1\nmemory_mib = -5\ntimeout_ms = 1\n").unwrap_err();
        assert!(err.to_string().contains("line 5"), "{err}");
        let err = parse("name = \"a\"\nversion = \"1\"\n[limits]\nfuel = 1\nmemory_mib = 1\ntimeout_ms = 0\n").unwrap_err();
        assert!(err.to_string().contains("limits.timeout_ms"), "{err}");
    }

    #[test]
    fn bad_names_and_capabilities_are_refused() {
        assert!(parse("name = \"Bad Name\"\nversion = \"1\"\n").unwrap_err().to_string().contains("`name`"));
        let err = parse("name = \"a\"\nversion = \"1\"\n[capabilities]\nfiles = [\"/\"]\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `files`") && err.contains("line 4"), "{err}");
        let err = parse("name = \"a\"\nversion = \"1\"\n[capabilities]\nhttp = [\"https://ok.example\", \"ftp://x\"]\n").unwrap_err().to_string();
        assert!(err.contains("\"ftp://x\" is not an origin") && err.contains("line 4"), "{err}");
        let err = parse("name = \"a\"\nversion = \"1\"\n[capabilities]\nenqueue = [\"Send Email\"]\n").unwrap_err().to_string();
        assert!(err.contains("`capabilities.enqueue` \"Send Email\" is not a job kind"), "{err}");
        let m = parse("name = \"a\"\nversion = \"1\"\n[capabilities]\nconfig = [\"mail_api_url\"]\nkv = [\"default\"]\n").unwrap();
        assert_eq!((m.capabilities.config.as_slice(), m.capabilities.kv.as_slice()), (&["mail_api_url".to_string()][..], &["default".to_string()][..]));
    }

    #[test]
    fn a_throttle_is_read_and_a_bad_one_names_its_key_and_line() {
        let m = parse("name = \"a\"\nversion = \"1\"\n[throttle]\nmax_per_key = 2\nrate = \"10/s\"\n").unwrap();
        assert_eq!((m.throttle.max_per_key.map(|m| m.get()), m.throttle.rate.map(|r| r.to_string())), (Some(2), Some("10/s".to_string())));
        assert!(parse("name = \"a\"\nversion = \"1\"\n").unwrap().throttle.is_empty());
        let err = parse("name = \"a\"\nversion = \"1\"\n[throttle]\nmax_per_key = 0\n").unwrap_err().to_string();
        assert!(err.contains("max_per_key") && err.contains("line 4") && err.contains("nonzero"), "{err}");
        let err = parse("name = \"a\"\nversion = \"1\"\n[throttle]\n\nrate = \"fast\"\n").unwrap_err().to_string();
        assert!(err.contains("rate") && err.contains("line 5") && err.contains("is not a rate"), "{err}");
        let err = parse("name = \"a\"\nversion = \"1\"\n[throttle]\nper_key = 1\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `per_key`") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn retry_settings_are_bounded() {
        let err = parse("name = \"a\"\nversion = \"1\"\n[retry]\nmax_backoff_ms = 18446744073709551615\n").unwrap_err().to_string();
        assert!(err.contains("`retry.max_backoff_ms` is 18446744073709551615, over the most"), "{err}");
        let err = parse("name = \"a\"\nversion = \"1\"\n[retry]\nmax_attempts = 4000000000\n").unwrap_err().to_string();
        assert!(err.contains("`retry.max_attempts` is 4000000000"), "{err}");
        let m = parse("name = \"a\"\nversion = \"1\"\n[limits]\noutput_bytes = 2048\n").unwrap();
        assert_eq!(m.budget().max_output_bytes, 2048);
    }
}

#[cfg(test)]
mod trigger_tests {
    use super::*;

    #[test]
    fn a_bad_trigger_names_the_manifest_and_the_field() {
        let err = Manifest::parse("name = \"a\"\nversion = \"1\"\n[trigger.schedule]\ncron = \"0 0 32 * *\"\n", "x/plugin.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bad manifest x/plugin.toml: `trigger.schedule.cron`"), "{err}");
        assert!(err.contains("field 3 (day-of-month) \"32\""), "{err}");
        let err = Manifest::parse("name = \"a\"\nversion = \"1\"\n[trigger.nightly]\n", "x/plugin.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `nightly`"), "{err}");
    }
}
