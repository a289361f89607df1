//! What a plugin may be lent for one iteration: outbound HTTP, key-value
//! state, configuration and secrets, enqueueing jobs. A capability is
//! linked for a plugin only when its manifest asks for it (`[capabilities]`
//! in plugin.toml) AND the host allows it (`[capabilities]`, `[config]` and
//! `[secrets]` in kiln.toml); what the plugin gets is the intersection, a
//! [`Grants`], resolved once per plugin version at load.
//!
//! One file per capability, in Spin's "factor" shape: what it adds to the
//! linker (once), what a grant of it is (at load), what it puts in one
//! iteration's store (per run). Knows wasmtime and grants; nothing of
//! queues, workers or the API.

pub mod config;
pub mod enqueue;
pub mod http;
pub mod kv;

pub use enqueue::{ChildJob, Due};
pub use kv::{KvBackend, KvEffect};
pub use config::{ConfigValueError, ConfigValues, REDACTED, Redactor, Secret, SecretSource};
pub use http::{HttpOrigin, HttpStats};

use serde::Deserialize;

/// The most entries one list of a `[capabilities]` table may have.
pub const MAX_GRANT_ENTRIES: usize = 64;

/// A manifest's `[capabilities]` table: what the plugin asks for. Every
/// list is empty (nothing asked) by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Request {
    /// Origins it may send HTTP requests to, `scheme://host[:port|:*]`.
    pub http: Vec<HttpOrigin>,
    /// Key-value stores it may open by name.
    pub kv: Vec<String>,
    /// Config keys (and secrets) it may read.
    pub config: Vec<String>,
    /// Job kinds it may enqueue.
    pub enqueue: Vec<String>,
}

impl Request {
    /// The first entry that cannot be a grant: `(field, problem)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let too_many = |field: &'static str, n: usize| (n > MAX_GRANT_ENTRIES).then(|| (field, format!("has {n} entries, more than the most of {MAX_GRANT_ENTRIES}")));
        too_many("capabilities.http", self.http.len())
            .or_else(|| too_many("capabilities.kv", self.kv.len()))
            .or_else(|| too_many("capabilities.config", self.config.len()))
            .or_else(|| too_many("capabilities.enqueue", self.enqueue.len()))
            .or_else(|| self.kv.iter().find_map(|s| check_store_name(s).err().map(|p| ("capabilities.kv", p))))
            .or_else(|| self.config.iter().find_map(|k| config::check_key(k).err().map(|p| ("capabilities.config", p))))
            .or_else(|| {
                self.enqueue.iter().find(|k| !is_kind_name(k)).map(|k| {
                    ("capabilities.enqueue", format!("{k:?} is not a job kind (1-64 characters of a-z, 0-9, `-` or `_`, starting with a letter)"))
                })
            })
    }

    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.kv.is_empty() && self.config.is_empty() && self.enqueue.is_empty()
    }
}

/// A kv store's name: the rules of a job kind's.
pub fn check_store_name(name: &str) -> Result<(), String> {
    if is_kind_name(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a store name (1-64 characters of a-z, 0-9, `-` or `_`, starting with a letter)"))
    }
}

/// 1-64 characters of a-z, 0-9, `-` or `_`, starting with a letter (the
/// rule for plugin names, and so for job kinds).
pub fn is_kind_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// `kiln.toml`'s `[capabilities]`: what any plugin on this host may be granted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostPolicy {
    /// Origins a plugin may be granted; nothing by default.
    pub allow_http: Vec<HttpOrigin>,
    /// The kv stores that exist.
    pub kv_stores: Vec<String>,
    /// What one plugin's store may hold, in bytes (keys and values).
    pub kv_quota_bytes: u64,
}

/// The store every host has unless its config says otherwise.
pub const DEFAULT_KV_STORE: &str = "default";

impl Default for HostPolicy {
    fn default() -> Self {
        Self { allow_http: Vec::new(), kv_stores: vec![DEFAULT_KV_STORE.to_string()], kv_quota_bytes: kv::DEFAULT_QUOTA_BYTES }
    }
}

impl HostPolicy {
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.kv_quota_bytes == 0 {
            return Some(("capabilities.kv_quota_bytes", "must be greater than zero".into()));
        }
        self.kv_stores.iter().find_map(|s| check_store_name(s).err().map(|p| ("capabilities.kv_stores", p)))
    }
}

/// Everything a host may grant: its policy, the values behind config keys,
/// and the queues it serves (what a child job may name).
#[derive(Debug, Clone, Default)]
pub struct HostCapabilities {
    pub policy: HostPolicy,
    pub config: ConfigValues,
    /// `None`: any queue (`kiln run`, which serves none).
    pub queues: Option<Vec<String>>,
    /// HTTP allowed only to the examples built into this binary.
    pub examples: Option<ExampleGrant>,
    /// What a tenant's stores hold together at most (its plugins' only).
    pub kv_total: Option<KvTotal>,
}

/// A tenant's `kv_quota_bytes`: the most all its plugins' stores hold
/// together (its plugins' namespaces start with `TENANT/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvTotal {
    pub tenant: String,
    pub bytes: u64,
}

impl KvTotal {
    /// The namespace prefix of the tenant's stores.
    pub fn prefix(&self) -> String {
        format!("{}/", self.tenant)
    }

    /// Why a write that leaves the tenant's stores holding `bytes` is
    /// refused, if it is.
    pub fn refusal(&self, bytes: u64) -> Option<String> {
        (bytes > self.bytes).then(|| {
            format!(
                "tenant {:?}'s stores would hold {bytes} bytes together, over its quota of {} bytes (`tenants.{}.kv_quota_bytes`)",
                self.tenant, self.bytes, self.tenant
            )
        })
    }
}

/// An origin the host allows only to components with given bytes: the
/// local services `kiln` runs for its own examples (`example_services`)
/// are reachable from those examples, by the sha256 of their component,
/// and from nothing else, not even a plugin deployed under an example's
/// name. So a host with no `allow_http` still allows no HTTP to any code
/// it did not ship.
#[derive(Debug, Clone)]
pub struct ExampleGrant {
    pub origin: HttpOrigin,
    /// Hex sha256 of each component that may reach it.
    pub components: std::collections::BTreeSet<String>,
}

/// What one plugin version was granted: the intersection of its request
/// and the host's policy.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// The plugin's name: its kv stores live under it.
    pub namespace: String,
    /// What the manifest asked for.
    pub asked: Request,
    pub http: Vec<HttpOrigin>,
    pub kv: Vec<String>,
    /// What each of its stores may hold, in bytes.
    pub kv_quota_bytes: u64,
    /// What its tenant's stores hold together at most.
    pub kv_total: Option<KvTotal>,
    /// The config keys it may read that the host holds a value for.
    pub config_keys: Vec<String>,
    pub enqueue: Vec<String>,
    /// The queues a child may name (`None`: any).
    pub enqueue_queues: Option<Vec<String>>,
    /// Keys the manifest names that the host holds no value for: the
    /// plugin reads them as absent.
    pub config_missing: Vec<String>,
    config: config::ConfigGrant,
}

impl Grants {
    /// The intersection of what plugin `name`'s `request` asks and what
    /// `host` allows.
    /// `component_sha256` (hex) says whether the bytes are an example the
    /// host ships ([`ExampleGrant`]).
    pub fn resolve(name: &str, request: &Request, host: &HostCapabilities, component_sha256: &str) -> Self {
        let shipped = host.examples.iter().filter(|e| e.components.contains(component_sha256)).map(|e| &e.origin);
        let allowed: Vec<&HttpOrigin> = host.policy.allow_http.iter().chain(shipped).collect();
        let mut http: Vec<HttpOrigin> =
            request.http.iter().flat_map(|asked| allowed.iter().filter_map(|allowed| asked.intersect(allowed))).collect();
        http.sort();
        http.dedup();
        let kv = request.kv.iter().filter(|s| host.policy.kv_stores.contains(s)).cloned().collect();
        let (config_keys, config_missing) = request.config.iter().cloned().partition(|k| host.config.has(k));
        Self {
            namespace: name.to_string(),
            asked: request.clone(),
            http,
            kv,
            kv_quota_bytes: host.policy.kv_quota_bytes,
            kv_total: host.kv_total.clone(),
            config: host.config.grant(&request.config),
            config_keys,
            config_missing,
            enqueue: request.enqueue.clone(),
            enqueue_queues: host.queues.clone(),
        }
    }

    /// What keeps its secrets out of what the host writes.
    pub fn redactor(&self) -> &Redactor {
        &self.config.redactor
    }

    /// Whether an import of `capability` is granted, and if not why.
    fn refusal(&self, capability: Capability) -> Option<Refusal> {
        let request = &self.asked;
        let (asked, granted) = match capability {
            Capability::Http => (!request.http.is_empty(), !self.http.is_empty()),
            Capability::Kv => (!request.kv.is_empty(), !self.kv.is_empty()),
            // A key the host lacks reads as absent: asking is enough.
            Capability::Config => (!request.config.is_empty(), true),
            Capability::Enqueue => (!request.enqueue.is_empty(), true),
        };
        if !asked {
            Some(Refusal::NotAsked)
        } else if !granted {
            Some(Refusal::NotAllowed)
        } else {
            None
        }
    }
}

/// The capabilities there are, each one import family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Http,
    Kv,
    Config,
    Enqueue,
}

impl Capability {
    /// The import (package or interface) that is this capability.
    const IMPORTS: [(&'static str, Capability); 4] = [
        ("wasi:http/", Capability::Http),
        ("wasi:keyvalue/", Capability::Kv),
        ("wasi:config/", Capability::Config),
        ("kiln:worker/enqueue", Capability::Enqueue),
    ];

    /// The capability an import (`@version` optional) belongs to.
    pub fn of_import(import: &str) -> Option<Capability> {
        let unversioned = import.split('@').next().unwrap_or(import);
        Self::IMPORTS.iter().find(|(prefix, _)| unversioned.starts_with(prefix)).map(|&(_, c)| c)
    }

    /// Its key in `[capabilities]` of plugin.toml.
    pub fn key(self) -> &'static str {
        match self {
            Capability::Http => "http",
            Capability::Kv => "kv",
            Capability::Config => "config",
            Capability::Enqueue => "enqueue",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Capability::Http => "outbound HTTP",
            Capability::Kv => "key-value state",
            Capability::Config => "configuration and secrets",
            Capability::Enqueue => "enqueueing jobs",
        }
    }

    /// Where the host's side of it is set, for an error that names it.
    fn host_setting(self) -> &'static str {
        match self {
            Capability::Http => "`[capabilities] allow_http` in kiln.toml",
            Capability::Kv => "`[capabilities] kv_stores` in kiln.toml",
            Capability::Config => "`[config]` and `[secrets]` in kiln.toml",
            Capability::Enqueue => "kiln.toml",
        }
    }
}

/// Why a capability import is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The manifest does not ask for it.
    NotAsked,
    /// The manifest asks, and the host allows none of what it asks.
    NotAllowed,
}

/// A capability import a plugin version is not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ImportRefused {
    pub import: String,
    pub capability: Capability,
    pub reason: Refusal,
}

impl ImportRefused {
    fn describe(&self) -> String {
        let (import, what, key) = (&self.import, self.capability.what(), self.capability.key());
        match self.reason {
            Refusal::NotAsked => format!(
                "imports `{import}` ({what}), which its manifest does not grant: a plugin that uses it names what it needs in `[capabilities] {key}` in plugin.toml"
            ),
            Refusal::NotAllowed => format!(
                "imports `{import}` ({what}): its manifest asks for it in `[capabilities] {key}`, but this host allows none of what it asks ({})",
                self.capability.host_setting()
            ),
        }
    }
}

/// Checks a capability import against what the plugin asked for and was granted.
pub fn check_import(import: &str, capability: Capability, grants: &Grants) -> Result<(), ImportRefused> {
    match grants.refusal(capability) {
        None => Ok(()),
        Some(reason) => Err(ImportRefused { import: import.to_string(), capability, reason }),
    }
}

/// What one iteration was lent: its plugin version's grants, and what the
/// run asked for through them (the effects the worker applies if the run
/// completes `ok`). Made fresh for each run; dropped with its store.
#[derive(Debug)]
pub struct Scope {
    pub(crate) grants: std::sync::Arc<Grants>,
    /// The largest payload a child may have (the host's own bound).
    pub(crate) max_payload_bytes: usize,
    pub(crate) children: enqueue::Children,
    /// Where committed kv state is read (`None`: this host keeps none).
    pub(crate) kv_backend: Option<std::sync::Arc<dyn KvBackend>>,
    pub(crate) kv: kv::KvScope,
    /// The `wasi:http` hooks of this run.
    pub(crate) http: http::HttpScope,
}

impl Scope {
    pub(crate) fn new(
        grants: std::sync::Arc<Grants>,
        max_payload_bytes: usize,
        kv_backend: Option<std::sync::Arc<dyn KvBackend>>,
        deadline: std::time::Instant,
        traceparent: Option<String>,
    ) -> Self {
        let http = http::HttpScope::new(grants.clone(), deadline, traceparent);
        Self { grants, max_payload_bytes, children: enqueue::Children::default(), kv_backend, kv: kv::KvScope::default(), http }
    }

    /// What the run sent and received over HTTP.
    pub(crate) fn http_stats(&self) -> &HttpStats {
        &self.http.stats
    }

    /// Why the run's requests were denied, taken at its end.
    pub(crate) fn take_http_denials(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.http.denials.lock().expect("denials poisoned"))
    }

    /// The jobs the run enqueued, taken at its end.
    pub(crate) fn take_children(&mut self) -> Vec<ChildJob> {
        std::mem::take(&mut self.children.jobs)
    }

    /// The run's kv writes, taken at its end.
    pub(crate) fn take_kv_effects(&mut self) -> Vec<KvEffect> {
        self.kv.take_effects()
    }
}

/// A store's data that holds one iteration's [`Scope`].
pub(crate) trait InScope {
    fn scope(&mut self) -> &mut Scope;
    fn scope_ref(&self) -> &Scope;
}

/// Adds every capability the host offers to the linker, once; each
/// iteration's store serves the grants of its own plugin version.
pub(crate) fn add_to_linker<T: InScope + wasmtime_wasi_http::WasiHttpView + Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    config::add_to_linker(linker)?;
    enqueue::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    http::add_to_linker(linker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn request(text: &str) -> Request {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn host(allow_http: &[&str], kv: &[&str], config: &[(&str, &str)]) -> HostCapabilities {
        HostCapabilities {
            policy: HostPolicy {
                allow_http: allow_http.iter().map(|o| o.parse().unwrap()).collect(),
                kv_stores: kv.iter().map(|s| s.to_string()).collect(),
                ..HostPolicy::default()
            },
            config: ConfigValues::from_values(config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), BTreeMap::new()).unwrap(),
            queues: None,
            examples: None,
            kv_total: None,
        }
    }

    #[test]
    fn a_grant_is_what_both_the_manifest_and_the_host_say() {
        let asked = request(
            "http = [\"https://api.example.com\", \"http://127.0.0.1:*\"]\nkv = [\"default\", \"cache\"]\nconfig = [\"url\", \"token\"]\nenqueue = [\"send-email\"]\n",
        );
        let grants = Grants::resolve("p", &asked, &host(&["http://127.0.0.1:8025", "https://other.example"], &["default"], &[("url", "u")]), "");
        assert_eq!(grants.http.iter().map(ToString::to_string).collect::<Vec<_>>(), ["http://127.0.0.1:8025"], "the host's narrower port wins");
        assert_eq!(grants.kv, ["default"]);
        assert_eq!((grants.config_keys.as_slice(), grants.config_missing.as_slice()), (&["url".to_string()][..], &["token".to_string()][..]));
        assert_eq!(grants.enqueue, ["send-email"]);
        assert!(Grants::resolve("p", &asked, &HostCapabilities::default(), "").http.is_empty(), "a host allows no HTTP by default");
    }

    #[test]
    fn the_example_services_are_allowed_only_to_the_bytes_the_host_ships() {
        let asked = request("http = [\"http://127.0.0.1:*\"]");
        let mut host = HostCapabilities::default();
        host.examples = Some(ExampleGrant { origin: "http://127.0.0.1:4100".parse().unwrap(), components: ["ab12".to_string()].into() });
        let shipped = Grants::resolve("send-email", &asked, &host, "ab12");
        assert_eq!(shipped.http.iter().map(ToString::to_string).collect::<Vec<_>>(), ["http://127.0.0.1:4100"]);
        assert!(Grants::resolve("send-email", &asked, &host, "cd34").http.is_empty(), "other bytes under the same name get nothing");
        // And the manifest still has to ask.
        assert!(Grants::resolve("send-email", &Request::default(), &host, "ab12").http.is_empty());
    }

    #[test]
    fn unknown_capabilities_and_bad_entries_are_named() {
        let e = toml::from_str::<Request>("files = [\"/etc\"]\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `files`") && e.contains("http, kv, config, enqueue") || e.contains("`http`"), "{e}");
        let e = toml::from_str::<Request>("http = [\"*\"]\n").unwrap_err().to_string();
        assert!(e.contains("bare `*`") && e.contains("line 1"), "{e}");
        assert_eq!(request("kv = [\"Bad Store\"]").problem().unwrap().0, "capabilities.kv");
        assert_eq!(request("config = [\"a b\"]").problem().unwrap().0, "capabilities.config");
        assert_eq!(request("enqueue = [\"Nope!\"]").problem().unwrap().0, "capabilities.enqueue");
        let many = format!("config = [{}]", (0..65).map(|i| format!("\"k{i}\"")).collect::<Vec<_>>().join(","));
        assert!(request(&many).problem().unwrap().1.contains("65 entries"));
    }

    #[test]
    fn an_import_is_checked_against_the_request_and_the_grant() {
        let e = check_import("wasi:config/store@0.2.0-rc.1", Capability::Config, &Grants::default()).unwrap_err().to_string();
        assert!(e.contains("which its manifest does not grant") && e.contains("`[capabilities] config`"), "{e}");
        let asked = request("config = [\"url\"]");
        assert!(check_import("wasi:config/store", Capability::Config, &Grants::resolve("p", &asked, &HostCapabilities::default(), "")).is_ok());
        let e = check_import("wasi:http/outgoing-handler@0.2.6", Capability::Http, &Grants::default()).unwrap_err().to_string();
        assert!(e.contains("which its manifest does not grant") && e.contains("`[capabilities] http`"), "{e}");
        let asked_http = request("http = [\"https://api.example.com\"]");
        let e = check_import("wasi:http/types@0.2.6", Capability::Http, &Grants::resolve("p", &asked_http, &HostCapabilities::default(), ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("this host allows none of what it asks (`[capabilities] allow_http` in kiln.toml)"), "{e}");
        let e2 = check_import("wasi:keyvalue/store@0.2.0-draft", Capability::Kv, &Grants::default()).unwrap_err().to_string();
        assert!(e2.contains("which its manifest does not grant") && e2.contains("`[capabilities] kv`"), "{e2}");
        assert_eq!(Capability::of_import("wasi:keyvalue/store@0.2.0-draft"), Some(Capability::Kv));
        assert_eq!(Capability::of_import("kiln:worker/enqueue@0.1.0"), Some(Capability::Enqueue));
        assert_eq!(Capability::of_import("wasi:cli/stdout"), None);
    }
}
