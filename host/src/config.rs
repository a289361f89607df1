//! `kiln.toml`: the host's configuration. Strict (an unknown key or a wrong
//! type is an error naming the key and its line); every field has a
//! default; `kiln serve` flags and `KILN_*` environment variables override.

use crate::api::HttpLimits;
use crate::capability::{ConfigValueError, ConfigValues, HostCapabilities, HostPolicy, SecretSource};
use crate::plugin::{Ceilings, CompileBudget};
use crate::tenant::{AdminSettings, TenantSettings};
use crate::worker::config::{self as worker_config, DispatcherConfig, QueueConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config file `kiln serve` reads from the working directory when no
/// `--config` is given.
pub const CONFIG_FILE: &str = "kiln.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// Holds the SQLite database (`kiln.db`) and the artifact cache.
    pub data_dir: PathBuf,
    /// `postgres://user@host:port/database`: keep jobs in Postgres, shared
    /// with every host that names the same database and schema. Unset:
    /// the embedded SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// The Postgres schema Kiln's tables live in.
    pub database_schema: String,
    /// One directory per plugin, served and deployed into; default:
    /// `data_dir/plugins`, made with the examples built into the binary
    /// the first time (see `plugin::seed`).
    pub plugins_dir: Option<PathBuf>,
    /// This host's name in leases; default `hostname-pid`.
    pub host_name: Option<String>,
    pub lease_ms: u64,
    pub poll_interval_ms: u64,
    pub shutdown_grace_ms: u64,
    pub cancel_grace_ms: u64,
    pub claim_batch: usize,
    pub max_payload_bytes: usize,
    /// Sandbox instances alive at once on this host (one per running
    /// iteration); the queues' concurrency must fit in it. The pool holds
    /// twice as many linear-memory slots, taken per job by what its
    /// component has.
    pub max_instances: u32,
    /// The most a manifest may ask for per iteration.
    pub ceilings: Ceilings,
    /// What compiling one plugin may cost.
    pub compile: CompileBudget,
    /// What one client may hold of the HTTP API, and the names it answers to.
    pub http: HttpLimits,
    /// Named queues and their concurrency on this host.
    pub queues: BTreeMap<String, QueueSettings>,
    /// What any plugin on this host may be granted: `allow_http`,
    /// `kv_stores`, `kv_quota_bytes`.
    pub capabilities: HostPolicy,
    /// Values of the config keys plugins name (`wasi:config/store`).
    #[serde(rename = "config")]
    pub config_values: BTreeMap<String, String>,
    /// Where the secrets' values are (`{ env = "VAR" }` or `{ file = "PATH" }`),
    /// read once at start and never written anywhere.
    pub secrets: BTreeMap<String, SecretSource>,
    /// Serve the local mail API and feed the bundled examples talk to
    /// (`send-email`, `poller`) on a loopback port, reachable only from the
    /// examples' own bytes, and default `mail_api_url`, `mail_api_key` and
    /// `feed_url` to them (a value in `[config]`/`[secrets]` wins).
    pub example_services: bool,
    /// The operator's API keys (hashes): with any, every API call but the
    /// health probes needs one.
    pub admin: AdminSettings,
    /// Tenants: their keys, shares, limits and grants.
    pub tenants: BTreeMap<String, TenantSettings>,
    /// How long finished jobs are kept.
    pub retention: crate::worker::pruner::Retention,
    /// What is kept of each attempt (its record, its log lines).
    pub attempts: crate::worker::AttemptRecords,
    /// Where traces of job runs are exported (OTLP), if anywhere.
    pub telemetry: crate::telemetry::TelemetrySettings,
    /// `kiln serve --insecure`: listen beyond loopback with no API keys.
    #[serde(skip)]
    pub insecure: bool,
}

/// The largest pool `max_instances` may ask for: each instance reserves
/// two 4 GiB memory slots of address space, and 4,000 of them take a
/// quarter of what a 64-bit process has.
pub const MAX_INSTANCES_CEILING: u32 = 4_000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Jobs of this queue run at once on this host. 0: the host takes jobs
    /// into the queue (API, CLI) but runs none; other hosts on the same
    /// Postgres run them.
    pub concurrency: usize,
    /// Jobs that run at once while the queue's runs are light (each under
    /// 10 million fuel and 8 MiB); at least `concurrency`. Unset: the
    /// same as `concurrency`, except for the default queue of a config that
    /// names no queues (128 per core, at most 512).
    #[serde(default)]
    pub light_concurrency: Option<usize>,
}

impl QueueSettings {
    /// The most of its jobs that may run at once, light or not.
    pub fn widest(&self) -> usize {
        self.light_concurrency.unwrap_or(self.concurrency).max(self.concurrency)
    }
}

/// The default listen address: loopback only; exposing the API is a choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Default for Config {
    fn default() -> Self {
        let d = DispatcherConfig::default();
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid address"),
            data_dir: PathBuf::from("data"),
            database_url: None,
            database_schema: crate::queue::DEFAULT_SCHEMA.to_string(),
            plugins_dir: None,
            host_name: None,
            lease_ms: d.lease.as_millis() as u64,
            poll_interval_ms: d.poll_interval.as_millis() as u64,
            shutdown_grace_ms: d.shutdown_grace.as_millis() as u64,
            cancel_grace_ms: d.cancel_grace.as_millis() as u64,
            claim_batch: d.claim_batch,
            max_payload_bytes: d.max_payload_bytes,
            max_instances: crate::sandbox::MAX_CONCURRENT_INSTANCES,
            ceilings: Ceilings::default(),
            compile: CompileBudget::default(),
            http: HttpLimits::default(),
            queues: d
                .queues
                .into_iter()
                .map(|q| (q.name, QueueSettings { concurrency: q.concurrency, light_concurrency: Some(q.light_concurrency) }))
                .collect(),
            capabilities: HostPolicy::default(),
            config_values: BTreeMap::new(),
            secrets: BTreeMap::new(),
            example_services: true,
            admin: AdminSettings::default(),
            tenants: BTreeMap::new(),
            retention: crate::worker::pruner::Retention::default(),
            attempts: crate::worker::AttemptRecords::default(),
            telemetry: crate::telemetry::TelemetrySettings::default(),
            insecure: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("bad config {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("bad config {path}: `{key}` {problem}")]
    Invalid { path: String, key: String, problem: String },
}

impl Config {
    /// Reads `path`, or `kiln.toml` in the working directory if it exists,
    /// or uses the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None if Path::new(CONFIG_FILE).is_file() => PathBuf::from(CONFIG_FILE),
            None => return Ok(Self::default()),
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse { path: origin.into(), source })?;
        // A file that names no queues gets the default queue, whose light
        // concurrency is the host's to fit into a smaller instance pool.
        if config.queues == Config::default().queues {
            let instances = config.max_instances as usize;
            for q in config.queues.values_mut() {
                q.light_concurrency = q.light_concurrency.map(|light| light.min(instances).max(q.concurrency));
            }
        }
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| Err(ConfigError::Invalid { path: origin.into(), key: key.into(), problem: problem.into() });
        for (key, value) in [
            ("lease_ms", self.lease_ms),
            ("poll_interval_ms", self.poll_interval_ms),
            ("claim_batch", self.claim_batch as u64),
            ("max_payload_bytes", self.max_payload_bytes as u64),
        ] {
            if value == 0 {
                return invalid(key, "must be greater than zero");
            }
        }
        self.validate_database(origin)?;
        if let Some((key, problem)) = self.retention.problem() {
            return invalid(key, &problem);
        }
        if let Some((key, problem)) = self.http.problem() {
            return invalid(key, &problem);
        }
        if let Some((key, problem)) = self.telemetry.problem() {
            return invalid(key, &problem);
        }
        if self.queues.is_empty() {
            return invalid("queues", "must name at least one queue");
        }
        if self.queues.values().all(|q| q.concurrency == 0) {
            return invalid("queues", "must give at least one queue a concurrency above zero (0 only takes jobs in)");
        }
        if self.max_instances == 0 || self.max_instances > MAX_INSTANCES_CEILING {
            return invalid("max_instances", &format!("is {}, must be between 1 and {MAX_INSTANCES_CEILING}", self.max_instances));
        }
        for (name, q) in &self.queues {
            if q.light_concurrency.is_some_and(|light| light < q.concurrency) {
                return invalid(&format!("queues.{name}.light_concurrency"), &format!("must be at least its concurrency ({})", q.concurrency));
            }
        }
        // Every job in flight holds a sandbox instance from the engine's pool.
        let total: usize = self.queues.values().map(QueueSettings::widest).sum();
        let instances = self.max_instances as usize;
        if total > instances {
            return invalid(
                "queues",
                &format!("concurrency adds up to {total}, more than the {instances} sandbox instances this host holds at once (max_instances)"),
            );
        }
        if let Some((key, problem)) = self.ceilings.problem() {
            return invalid(&key, &problem);
        }
        for (name, tenant) in &self.tenants {
            if let Some((key, problem)) = self.ceilings.for_tenant(name, &tenant.ceilings).problem() {
                return invalid(&key, &problem);
            }
        }
        for (key, value) in [
            ("compile.max_component_bytes", self.compile.max_component_bytes),
            ("compile.timeout_ms", self.compile.timeout_ms),
            ("compile.concurrent", self.compile.concurrent as u64),
        ] {
            if value == 0 {
                return invalid(key, "must be greater than zero");
            }
        }
        if self.max_payload_bytes > crate::sandbox::DEFAULT_MAX_PAYLOAD_BYTES * 16 {
            return invalid("max_payload_bytes", "must be at most 16 MiB");
        }
        if let Some((key, problem)) = self.capabilities.problem() {
            return invalid(key, &problem);
        }
        if let Some((key, problem)) = crate::tenant::settings::problem(&self.admin, &self.tenants) {
            return invalid(&key, &problem);
        }
        // The values themselves: secrets are read only at start, by `capabilities()`.
        let placeholders = self.secrets.keys().map(|k| (k.clone(), "-".to_string())).collect();
        if let Err(ConfigValueError::Invalid { table, key, problem }) = ConfigValues::from_values(self.config_values.clone(), placeholders) {
            return invalid(&format!("{table}.{key}"), &problem);
        }
        Ok(())
    }

    /// What plugins on this host may be granted, with the secrets read
    /// from where `[secrets]` says they are.
    pub fn capabilities(&self) -> Result<HostCapabilities, ConfigValueError> {
        Ok(HostCapabilities {
            policy: self.capabilities.clone(),
            config: ConfigValues::resolve(&self.config_values, &self.secrets)?,
            queues: Some(self.queues.keys().cloned().collect()),
            // Lent by `serve` once the example services listen.
            examples: None,
            // A tenant's, set where its plugins' policy is made.
            kv_total: None,
        })
    }

    /// Checks `database_url` and `database_schema` (also after a flag or
    /// `KILN_DATABASE_URL` replaced the URL; `origin` says where it came from).
    pub fn validate_database(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| Err(ConfigError::Invalid { path: origin.into(), key: key.into(), problem: problem.into() });
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return invalid("database_url", "must be a postgres:// or postgresql:// URL (leave it unset for the embedded SQLite file)");
            }
            if let Err(e) = url.parse::<tokio_postgres::Config>() {
                return invalid("database_url", &format!("is not a valid Postgres URL: {e}"));
            }
        }
        if let Err(problem) = crate::queue::check_schema(&self.database_schema) {
            return invalid("database_schema", &problem);
        }
        Ok(())
    }

    /// The dispatcher's settings.
    pub fn dispatcher(&self) -> DispatcherConfig {
        DispatcherConfig {
            host: self.host_name.clone().unwrap_or_else(worker_config::default_host_name),
            queues: self
                .queues
                .iter()
                .map(|(name, q)| QueueConfig { name: name.clone(), concurrency: q.concurrency, light_concurrency: q.widest() })
                .collect(),
            claim_batch: self.claim_batch,
            finish_batch: worker_config::DEFAULT_FINISH_BATCH,
            lease: Duration::from_millis(self.lease_ms),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            cancel_grace: Duration::from_millis(self.cancel_grace_ms),
            max_payload_bytes: self.max_payload_bytes,
            tenants: self
                .tenants
                .iter()
                .map(|(name, t)| crate::worker::fair_share::TenantPolicy {
                    tenant: Some(name.clone()),
                    weight: t.weight.get(),
                    limits: crate::queue::TenantLimits {
                        max_running: t.max_running.map(|m| m.get()),
                        rate: t.rate.as_ref().map(crate::worker::runner::start_rate),
                    },
                    max_waiting: t.max_waiting.map(|m| m.get()),
                })
                .collect(),
            retention: Some(self.retention.clone()),
            attempts: self.attempts,
            tracing: crate::telemetry::Tracing::default(),
        }
    }

    /// Where the embedded SQLite database lives (when no `database_url` is set).
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("kiln.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_all_defaults() {
        assert_eq!(Config::parse("", "kiln.toml").unwrap(), Config::default());
    }

    #[test]
    fn fields_and_queues_parse() {
        let c = Config::parse("listen = \"0.0.0.0:9000\"\nlease_ms = 2000\n[queues.mail]\nconcurrency = 3\n", "k").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.dispatcher().lease, Duration::from_secs(2));
        assert_eq!(c.dispatcher().queues, vec![QueueConfig::fixed("mail", 3)], "a queue named in the config runs as wide as it says");
        let c = Config::parse("[queues.mail]\nconcurrency = 3\nlight_concurrency = 40\n", "k").unwrap();
        assert_eq!(c.dispatcher().queues[0].light_concurrency, 40);
        let e = Config::parse("[queues.mail]\nconcurrency = 3\nlight_concurrency = 2\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`queues.mail.light_concurrency` must be at least its concurrency (3)"), "{e}");
        let default = &Config::default().dispatcher().queues[0];
        assert!(default.light_concurrency > default.concurrency, "the default queue widens for light jobs: {default:?}");
        let pool = default.concurrency + 4;
        let small = Config::parse(&format!("max_instances = {pool}\n"), "k").unwrap();
        assert_eq!(small.dispatcher().queues[0].light_concurrency, pool, "the default queue fits a smaller pool");
    }

    #[test]
    fn unknown_key_and_wrong_type_name_the_key_and_line() {
        let e = Config::parse("listen = \"127.0.0.1:1\"\n\nworkers = 4\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("kiln.toml") && e.contains("line 3") && e.contains("workers"), "{e}");
        let e = Config::parse("lease_ms = \"soon\"\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("lease_ms"), "{e}");
        let e = Config::parse("[queues.mail]\nconcurrency = 0\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`queues` must give at least one queue a concurrency above zero"), "{e}");
        let c = Config::parse("[queues.mail]\nconcurrency = 0\n[queues.default]\nconcurrency = 2\n", "k").unwrap();
        assert_eq!(c.queues["mail"].concurrency, 0, "an enqueue-only queue beside a served one");
    }

    #[test]
    fn concurrency_beyond_the_instance_pool_is_refused() {
        let c = Config::parse("[queues.a]
concurrency = 512
[queues.b]
concurrency = 488
", "k").unwrap();
        assert_eq!(c.queues.values().map(|q| q.concurrency).sum::<usize>(), 1000, "up to the pool is fine");
        let e = Config::parse("[queues.a]
concurrency = 512
[queues.b]
concurrency = 489
", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("kiln.toml") && e.contains("`queues`") && e.contains("adds up to 1001, more than the 1000"), "{e}");
        let e = Config::parse("max_instances = 8\n[queues.a]\nconcurrency = 9\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("adds up to 9, more than the 8 sandbox instances"), "{e}");
        let e = Config::parse("max_instances = 8\n[queues.a]\nconcurrency = 2\nlight_concurrency = 9\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("adds up to 9, more than the 8 sandbox instances"), "light concurrency counts: {e}");
        let e = Config::parse("max_instances = 0\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`max_instances` is 0"), "{e}");
    }

    #[test]
    fn ceilings_and_the_compile_budget_parse_and_are_checked() {
        let c = Config::parse("[ceilings]\nfuel = 20000000000\ntimeout_ms = 60000\n[compile]\ntimeout_ms = 500\n", "k").unwrap();
        assert_eq!((c.ceilings.fuel, c.ceilings.timeout_ms, c.ceilings.memory_mib), (20_000_000_000, 60_000, 512));
        assert_eq!(c.compile.timeout_ms, 500);
        let e = Config::parse("[ceilings]\ntimeout_ms = 10\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`ceilings.timeout_ms` is 10, below the default of 30000"), "{e}");
        let e = Config::parse("[ceilings]\ncpus = 1\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("cpus") && e.contains("line 2"), "{e}");
        let e = Config::parse("[compile]\nconcurrent = 0\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`compile.concurrent` must be greater than zero"), "{e}");
    }

    #[test]
    fn capabilities_config_and_secrets_parse_and_are_checked() {
        let c = Config::parse(
            "[capabilities]\nallow_http = [\"http://127.0.0.1:*\"]\n[config]\nmail_api_url = \"http://127.0.0.1:8025/send\"\n[secrets]\nmail_api_key = { env = \"KILN_TEST_MAIL_KEY_SURELY_UNSET\" }\ntoken = { file = \"/run/secrets/token\" }\n",
            "kiln.toml",
        )
        .unwrap();
        assert_eq!(c.capabilities.allow_http[0].to_string(), "http://127.0.0.1:*");
        assert_eq!(c.capabilities.kv_stores, ["default"], "the default store exists unless the file says otherwise");
        assert_eq!(c.secrets["token"], SecretSource::File("/run/secrets/token".into()));
        let e = c.capabilities().unwrap_err().to_string();
        assert!(e.contains("`secrets.mail_api_key` names environment variable KILN_TEST_MAIL_KEY_SURELY_UNSET"), "{e}");
        let e = Config::parse("[capabilities]\nallow_http = [\"*\"]\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("kiln.toml") && e.contains("line 2") && e.contains("bare `*`"), "{e}");
        let e = Config::parse("[secrets]\nk = { vault = \"x\" }\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("vault") && e.contains("line 2"), "{e}");
        let e = Config::parse("[config]\nk = \"v\"\n[secrets]\nk = { env = \"K\" }\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`secrets.k` is in [config] too"), "{e}");
        let e = Config::parse("[capabilities]\nkv_stores = [\"Nope\"]\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`capabilities.kv_stores`"), "{e}");
        let e = Config::parse("[capabilities]\nkv_quota_bytes = 0\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`capabilities.kv_quota_bytes` must be greater than zero"), "{e}");
        assert_eq!(Config::parse("[capabilities]\nkv_quota_bytes = 4096\n", "k").unwrap().capabilities.kv_quota_bytes, 4096);
    }

    #[test]
    fn a_database_url_must_be_postgres_and_the_schema_a_plain_name() {
        let c = Config::parse("database_url = \"postgres://kiln@db.internal:5433/jobs\"\n", "kiln.toml").unwrap();
        assert_eq!(c.database_url.as_deref(), Some("postgres://kiln@db.internal:5433/jobs"));
        assert_eq!(c.database_schema, "kiln");
        let e = Config::parse("database_url = \"mysql://db/jobs\"\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`database_url` must be a postgres://"), "{e}");
        let e = Config::parse("database_url = \"postgres://db:notaport/jobs\"\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`database_url` is not a valid Postgres URL"), "{e}");
        let e = Config::parse("database_schema = \"Jobs; DROP\"\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`database_schema`") && e.contains("is not a schema name"), "{e}");
    }

    const HASH_A: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const HASH_B: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    /// An ed25519 public key (RFC 8032's first test vector).
    const KEY: &str = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    #[test]
    fn admin_and_tenants_parse_as_the_issue_writes_them() {
        let text = format!(
            "[admin]\napi_keys = [\"{HASH_A}\"]\n[tenants.acme]\napi_keys = [\"{HASH_B}\"]\nweight = 3\nmax_running = 50\nrate = \"100/s\"\n\
             max_waiting = 100000\nallow_http = [\"https://api.acme.example\"]\nkv_quota_bytes = 104857600\n\
             ceilings = {{ fuel = 20000000000, memory_mib = 256, timeout_ms = 60000 }}\nrequire_signature = true\nsigning_keys = [\"{KEY}\"]\n"
        );
        let c = Config::parse(&text, "kiln.toml").unwrap();
        assert_eq!(c.admin.api_keys[0].to_string(), HASH_A);
        let acme = &c.tenants["acme"];
        assert_eq!((acme.weight.get(), acme.max_running.map(|n| n.get()), acme.rate.map(|r| r.count.get())), (3, Some(50), Some(100)));
        assert_eq!(acme.ceilings.memory_mib.map(|n| n.get()), Some(256));
        assert!(acme.require_signature);
        assert_eq!(acme.signing_keys[0].to_string(), KEY);
        assert!(Config::default().admin.api_keys.is_empty() && Config::default().tenants.is_empty());
    }

    #[test]
    fn bad_keys_fields_limits_and_rates_name_the_key_and_the_line() {
        let cases = [
            (format!("[admin]\napi_keys = [\"sha256:abc\"]\n"), "is not a key hash", "line 2"),
            (format!("[tenants.acme]\napi_keys = [\"{HASH_B}\"]\nmax_runing = 5\n"), "unknown field `max_runing`", "line 3"),
            (format!("[tenants.acme]\napi_keys = [\"{HASH_B}\"]\nmax_running = 0\n"), "nonzero", "line 3"),
            (format!("[tenants.acme]\napi_keys = [\"{HASH_B}\"]\n\nrate = \"fast\"\n"), "is not a rate", "line 4"),
            (format!("[tenants.acme]\napi_keys = [\"{HASH_B}\"]\nceilings = {{ fuel = 0 }}\n"), "nonzero", "line 3"),
            (format!("[tenants.acme]\napi_keys = [\"{HASH_B}\"]\nsigning_keys = [\"ed25519:short\"]\n"), "is not a signing key", "line 3"),
            (format!("[tenants.acme]\napi_keys = [\"{HASH_B}\"]\nmax_plugin_versions = 0\n"), "nonzero", "line 3"),
        ];
        for (text, says, line) in cases {
            let e = Config::parse(&text, "kiln.toml").unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(line), "{text:?}: {e}");
        }
        let e = Config::parse(&format!("[admin]\napi_keys = [\"{HASH_A}\"]\n[tenants.acme]\napi_keys = [\"{HASH_A}\"]\n"), "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`tenants.acme.api_keys`") && e.contains("is in admin.api_keys too"), "{e}");
        let e = Config::parse(&format!("[tenants.acme]\napi_keys = [\"{HASH_B}\"]\nrequire_signature = true\n"), "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`tenants.acme.require_signature` is true, but signing_keys is empty"), "{e}");
        let e = Config::parse(&format!("[tenants.acme]\napi_keys = [\"{HASH_B}\"]\nconfig = [\"api key\"]\n"), "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`tenants.acme.config`") && e.contains("\"api key\" is not a config key"), "{e}");
        let e = Config::parse("[tenants.acme]\napi_keys = []\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`tenants.acme.api_keys` is empty"), "{e}");
        let e = Config::parse("[retention]\ninterval_ms = 10\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`retention.interval_ms`") && e.contains("at most every 100 ms"), "{e}");
        let e = Config::parse("[retention]\ncompleted_after = \"1d\"\n", "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("unknown field `completed_after`") && e.contains("line 2"), "{e}");
        let e = Config::parse(&format!("[tenants.Acme]\napi_keys = [\"{HASH_B}\"]\n"), "kiln.toml").unwrap_err().to_string();
        assert!(e.contains("`tenants.Acme`") && e.contains("is not a tenant name"), "{e}");
    }
}
