//! `[ceilings]` in `kiln.toml`: the most a plugin's manifest may ask for per
//! iteration on this host. A manifest over one is refused when it is loaded
//! or deployed, naming the key and the ceiling, so no plugin can grant
//! itself the host.

use super::manifest::{Limits, ManifestError};
use crate::sandbox;
use crate::tenant::settings::TenantCeilings;
use serde::Deserialize;

/// Fuel ceiling: 10× the default budget, tens of seconds of CPU.
pub const DEFAULT_CEILING_FUEL: u64 = 100_000_000_000;
/// Memory ceiling: room for a Python or JavaScript runtime with real data;
/// eight such jobs at once fit in 4 GiB.
pub const DEFAULT_CEILING_MEMORY_MIB: u64 = 512;
/// Timeout ceiling: five minutes. Longer work belongs in a continuous
/// plugin that checkpoints, so a stop or a crash loses one pass, not hours.
pub const DEFAULT_CEILING_TIMEOUT_MS: u64 = 300_000;
/// Output ceiling: a result is stored with its job and served by the API;
/// the same bound as the largest payload a host may accept.
pub const DEFAULT_CEILING_OUTPUT_BYTES: u64 = 16 << 20;

/// The ceilings of the per-iteration budgets a manifest may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ceilings {
    pub fuel: u64,
    pub memory_mib: u64,
    pub timeout_ms: u64,
    pub output_bytes: u64,
    /// A tenant's own ceilings (`[tenants.NAME] ceilings`), under these,
    /// for its plugins.
    #[serde(skip)]
    pub tenant: Option<(String, TenantCeilings)>,
}

impl Default for Ceilings {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_CEILING_FUEL,
            memory_mib: DEFAULT_CEILING_MEMORY_MIB,
            timeout_ms: DEFAULT_CEILING_TIMEOUT_MS,
            output_bytes: DEFAULT_CEILING_OUTPUT_BYTES,
            tenant: None,
        }
    }
}

impl Ceilings {
    /// These ceilings with `tenant`'s own under them.
    pub fn for_tenant(&self, tenant: &str, ceilings: &TenantCeilings) -> Self {
        Self { tenant: Some((tenant.to_string(), ceilings.clone())), ..self.clone() }
    }

    /// Refuses `limits` (of the manifest at `origin`) over any ceiling:
    /// the host's, then the tenant's.
    pub fn check(&self, limits: &Limits, origin: &str) -> Result<(), ManifestError> {
        let host = [
            ("limits.fuel", limits.fuel, self.fuel, "ceilings.fuel".to_string()),
            ("limits.memory_mib", limits.memory_mib, self.memory_mib, "ceilings.memory_mib".to_string()),
            ("limits.timeout_ms", limits.timeout_ms, self.timeout_ms, "ceilings.timeout_ms".to_string()),
            ("limits.output_bytes", limits.output_bytes, self.output_bytes, "ceilings.output_bytes".to_string()),
        ];
        let tenant = self.tenant.iter().flat_map(|(name, c)| {
            let key = move |field: &str| format!("tenants.{name}.ceilings.{field}");
            [
                c.fuel.map(|v| ("limits.fuel", limits.fuel, v.get(), key("fuel"))),
                c.memory_mib.map(|v| ("limits.memory_mib", limits.memory_mib, v.get(), key("memory_mib"))),
                c.timeout_ms.map(|v| ("limits.timeout_ms", limits.timeout_ms, v.get(), key("timeout_ms"))),
            ]
            .into_iter()
            .flatten()
        });
        for (field, asked, ceiling, key) in host.into_iter().chain(tenant) {
            if asked > ceiling {
                return Err(ManifestError::Invalid {
                    path: origin.to_string(),
                    field,
                    problem: format!("is {asked}, over this host's ceiling of {ceiling} (`{key}` in kiln.toml)"),
                });
            }
        }
        Ok(())
    }

    /// Why these ceilings cannot be used: each must admit the default a
    /// manifest gets when it names none, and memory must fit a pool slot.
    pub fn problem(&self) -> Option<(String, String)> {
        let defaults = Limits::default();
        for (key, ceiling, default) in [
            ("ceilings.fuel", self.fuel, defaults.fuel),
            ("ceilings.memory_mib", self.memory_mib, defaults.memory_mib),
            ("ceilings.timeout_ms", self.timeout_ms, defaults.timeout_ms),
            ("ceilings.output_bytes", self.output_bytes, defaults.output_bytes),
        ] {
            if ceiling < default {
                return Some((key.into(), format!("is {ceiling}, below the default of {default} that a manifest gets when it names none")));
            }
        }
        if let Some((tenant, c)) = &self.tenant {
            for (field, ceiling, default) in [
                ("fuel", c.fuel, defaults.fuel),
                ("memory_mib", c.memory_mib, defaults.memory_mib),
                ("timeout_ms", c.timeout_ms, defaults.timeout_ms),
            ] {
                if let Some(ceiling) = ceiling.filter(|c| c.get() < default) {
                    return Some((
                        format!("tenants.{tenant}.ceilings.{field}"),
                        format!("is {ceiling}, below the default of {default} that a manifest gets when it names none"),
                    ));
                }
            }
        }
        let max_mib = sandbox::MAX_MEMORY_BYTES >> 20;
        if self.memory_mib > max_mib {
            return Some(("ceilings.memory_mib".into(), format!("is {}, over the most any instance can have ({max_mib})", self.memory_mib)));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_over_a_ceiling_is_refused_naming_key_and_ceiling() {
        let ceilings = Ceilings::default();
        assert!(ceilings.check(&Limits::default(), "m").is_ok(), "the defaults are under every ceiling");
        let greedy = Limits { fuel: i64::MAX as u64, ..Limits::default() };
        let err = ceilings.check(&greedy, "greedy/plugin.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "bad manifest greedy/plugin.toml: `limits.fuel` is 9223372036854775807, over this host's ceiling of 100000000000 (`ceilings.fuel` in kiln.toml)"
        );
        let slow = Limits { timeout_ms: 300_001, ..Limits::default() };
        assert!(ceilings.check(&slow, "m").unwrap_err().to_string().contains("`limits.timeout_ms` is 300001"));
        let exact = Limits { fuel: ceilings.fuel, memory_mib: ceilings.memory_mib, timeout_ms: ceilings.timeout_ms, output_bytes: ceilings.output_bytes };
        assert!(ceilings.check(&exact, "m").is_ok(), "a ceiling itself may be asked for");
    }

    #[test]
    fn a_tenant_ceiling_narrows_the_host_and_is_named_when_it_refuses() {
        let tenant = TenantCeilings { timeout_ms: std::num::NonZeroU64::new(60_000), ..TenantCeilings::default() };
        assert_eq!(Ceilings::default().for_tenant("acme", &tenant).problem(), None);
        let tight = TenantCeilings { timeout_ms: std::num::NonZeroU64::new(1_000), ..TenantCeilings::default() };
        let (key, problem) = Ceilings::default().for_tenant("acme", &tight).problem().unwrap();
        assert_eq!(key, "tenants.acme.ceilings.timeout_ms", "{problem}");
        let ceilings = Ceilings::default().for_tenant("acme", &tenant);
        let long = Limits { timeout_ms: 60_001, ..Limits::default() };
        let err = ceilings.check(&long, "m").unwrap_err().to_string();
        assert!(err.contains("`limits.timeout_ms` is 60001, over this host's ceiling of 60000 (`tenants.acme.ceilings.timeout_ms`"), "{err}");
        assert!(Ceilings::default().check(&long, "m").is_ok(), "only the tenant's plugins are held to it");
        let greedy = Limits { fuel: DEFAULT_CEILING_FUEL + 1, ..Limits::default() };
        assert!(ceilings.check(&greedy, "m").unwrap_err().to_string().contains("(`ceilings.fuel`"), "the host's ceiling still holds");
    }

    #[test]
    fn ceilings_below_the_defaults_are_a_config_error() {
        assert_eq!(Ceilings::default().problem(), None);
        let (key, _) = Ceilings { fuel: 1, ..Ceilings::default() }.problem().unwrap();
        assert_eq!(key, "ceilings.fuel");
        let (key, _) = Ceilings { memory_mib: 4096, ..Ceilings::default() }.problem().unwrap();
        assert_eq!(key, "ceilings.memory_mib");
    }
}
