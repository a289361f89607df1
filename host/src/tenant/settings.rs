//! `[admin]` and `[tenants.NAME]` as kiln.toml writes them: who may call
//! the API, and each tenant's keys, share, limits and grants. Every value
//! is checked as it is read, so a bad one is an error naming its key and
//! line.

use super::KeyHash;
use crate::capability::HttpOrigin;
use serde::Deserialize;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

/// The operator: sees and does everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub api_keys: Vec<KeyHash>,
}

/// One tenant: its keys, its fair share, its limits and what it may be
/// granted (each narrowing the host's own).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    pub api_keys: Vec<KeyHash>,
    /// Its share of the host's slots while others wait too.
    #[serde(default = "one")]
    pub weight: NonZeroU32,
    /// Its jobs running at once, across the host (across hosts on Postgres).
    pub max_running: Option<NonZeroU32>,
    /// Its jobs started per unit of time, e.g. `"100/s"`.
    pub rate: Option<Rate>,
    /// Its jobs waiting at once.
    pub max_waiting: Option<NonZeroU64>,
    /// Narrows `[capabilities] allow_http` for its plugins.
    pub allow_http: Option<Vec<HttpOrigin>>,
    /// The host's `[config]` keys and `[secrets]` its plugins may be
    /// granted; none by default (another tenant's secrets are not its).
    #[serde(default)]
    pub config: Vec<String>,
    /// What all its plugins' kv stores hold together, in bytes (so each
    /// of them too: it narrows `[capabilities] kv_quota_bytes`).
    pub kv_quota_bytes: Option<NonZeroU64>,
    /// The plugin versions it keeps archived, across its plugins (each
    /// version ever deployed is kept for rollback until deleted).
    pub max_plugin_versions: Option<NonZeroU32>,
    /// Narrows `[ceilings]` for its plugins.
    #[serde(default)]
    pub ceilings: TenantCeilings,
    #[serde(default)]
    pub require_signature: bool,
    /// The keys it trusts to sign its plugins.
    #[serde(default)]
    pub signing_keys: Vec<super::PublicKey>,
}

impl TenantSettings {
    /// What `name`'s plugins' signatures must be, if it asks anything of them.
    pub fn signatures(&self, name: &str) -> Option<super::SignaturePolicy> {
        (self.require_signature || !self.signing_keys.is_empty()).then(|| super::SignaturePolicy {
            tenant: name.to_string(),
            required: self.require_signature,
            trusted: self.signing_keys.clone(),
        })
    }
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// The most a tenant's manifest may ask for, per iteration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCeilings {
    pub fuel: Option<NonZeroU64>,
    pub memory_mib: Option<NonZeroU64>,
    pub timeout_ms: Option<NonZeroU64>,
}

/// `N/s`, `N/m` or `N/h`: at most N jobs started per second, minute or hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

/// The most a rate may name per unit.
pub const MAX_RATE_COUNT: u32 = 1_000_000;

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let problem = || format!("{text:?} is not a rate: COUNT/s, COUNT/m or COUNT/h, COUNT from 1 to {MAX_RATE_COUNT} (\"100/s\")");
        let (count, unit) = text.split_once('/').ok_or_else(problem)?;
        let count: u32 = count.trim().parse().map_err(|_| problem())?;
        let count = NonZeroU32::new(count).filter(|c| c.get() <= MAX_RATE_COUNT).ok_or_else(problem)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(problem()),
        };
        Ok(Self { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What is wrong across `[admin]` and `[tenants]`, if anything: `(key, problem)`.
pub fn problem(admin: &AdminSettings, tenants: &std::collections::BTreeMap<String, TenantSettings>) -> Option<(String, String)> {
    let mut seen: std::collections::BTreeMap<&KeyHash, String> = admin.api_keys.iter().map(|k| (k, "admin.api_keys".to_string())).collect();
    if seen.len() < admin.api_keys.len() {
        return Some(("admin.api_keys".into(), "names one hash twice".into()));
    }
    for (name, tenant) in tenants {
        let at = |key: &str| format!("tenants.{name}.{key}");
        if !crate::capability::is_kind_name(name) {
            return Some((format!("tenants.{name}"), format!("{name:?} is not a tenant name (1-64 characters of a-z, 0-9, `-` or `_`, starting with a letter)")));
        }
        if tenant.require_signature && tenant.signing_keys.is_empty() {
            return Some((at("require_signature"), "is true, but signing_keys is empty: no plugin could be loaded (`kiln keys new --signing` makes a key)".into()));
        }
        if let Some(problem) = tenant.config.iter().find_map(|k| crate::capability::config::check_key(k).err()) {
            return Some((at("config"), problem));
        }
        if tenant.api_keys.is_empty() {
            return Some((at("api_keys"), "is empty: a tenant needs a key to call the API (`kiln keys new`)".into()));
        }
        for key in &tenant.api_keys {
            if let Some(other) = seen.insert(key, at("api_keys")) {
                return Some((at("api_keys"), format!("{key} is in {other} too: one key is one caller")));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_bad_ones_say_what_a_rate_looks_like() {
        let r: Rate = "100/s".parse().unwrap();
        assert_eq!((r.count.get(), r.per), (100, Duration::from_secs(1)));
        assert_eq!(("5/h".parse::<Rate>().unwrap().to_string(), r.to_string()), ("5/h".to_string(), "100/s".to_string()));
        assert_eq!("5/h".parse::<Rate>().unwrap().per, Duration::from_secs(3600));
        for bad in ["0/s", "100", "100/d", "-1/s", "x/s", "1000001/s", ""] {
            assert!(bad.parse::<Rate>().unwrap_err().contains("is not a rate: COUNT/s"), "{bad}");
        }
    }
}
