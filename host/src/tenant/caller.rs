//! Who a request comes from: the key ring that tells the operator's keys
//! from each tenant's, and the [`Caller`] a key turns out to be, which
//! says what it may see (its own kinds) and how its names become kinds.

use super::{KeyHash, TenantSettings};
use crate::names::{qualified_kind, tenant_of};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator (or anyone, on a host with no keys): sees and does
    /// everything, its own plugins and every tenant's.
    Admin,
    /// A tenant: sees and touches only its own plugins and jobs.
    Tenant(Arc<str>),
}

impl Caller {
    /// The tenant, for a tenant.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(name) => Some(name),
        }
    }

    /// Whether the caller may see and touch jobs and plugins of `kind`.
    pub fn owns(&self, kind: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(name) => tenant_of(kind) == Some(&**name),
        }
    }

    /// The kind a name means from this caller: for a tenant, its own
    /// plugin of that name (whatever the name holds: `beta/echo` from
    /// acme is `acme/beta/echo`, which nothing is); for the operator, the
    /// kind as written (`echo` is the host's, `acme/echo` acme's).
    pub fn kind(&self, name: &str) -> String {
        match self {
            Caller::Admin => name.to_string(),
            Caller::Tenant(own) => qualified_kind(Some(own), name),
        }
    }

    /// A kind as this caller writes it: without the tenant, for a tenant.
    pub fn name_of<'k>(&self, kind: &'k str) -> &'k str {
        match self {
            Caller::Admin => kind,
            Caller::Tenant(_) => crate::names::plain_name(kind),
        }
    }
}

/// Every key a host knows: the operator's and each tenant's, as hashes.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Arc<[(KeyHash, Caller)]>,
}

impl KeyRing {
    pub fn new(admin: &[KeyHash], tenants: &BTreeMap<String, TenantSettings>) -> Self {
        let admin = admin.iter().map(|hash| (hash.clone(), Caller::Admin));
        let tenants = tenants.iter().flat_map(|(name, t)| {
            let name: Arc<str> = name.as_str().into();
            t.api_keys.iter().map(move |hash| (hash.clone(), Caller::Tenant(name.clone())))
        });
        Self { keys: admin.chain(tenants).collect() }
    }

    /// No keys at all: whoever reaches the socket is the operator.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Who `key` belongs to. The key is hashed once and compared with
    /// every hash in constant time, all of them whatever matches, so the
    /// time says nothing of which key (or how much of one) was right.
    pub fn identify(&self, key: &str) -> Option<Caller> {
        if key.len() > super::keys::MAX_KEY_BYTES {
            return None;
        }
        let presented = KeyHash::of(key);
        self.keys.iter().fold(None, |found, (hash, caller)| match hash.matches(&presented) {
            true => Some(caller.clone()),
            false => found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(key: &str) -> TenantSettings {
        let text = format!("api_keys = [\"{}\"]", KeyHash::of(key));
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn a_key_is_its_owner_and_nobody_else() {
        let tenants = BTreeMap::from([("acme".to_string(), tenant("a-key")), ("beta".to_string(), tenant("b-key"))]);
        let ring = KeyRing::new(&[KeyHash::of("root")], &tenants);
        assert_eq!(ring.identify("root"), Some(Caller::Admin));
        assert_eq!(ring.identify("a-key"), Some(Caller::Tenant("acme".into())));
        assert_eq!(ring.identify("b-key"), Some(Caller::Tenant("beta".into())));
        for wrong in ["", "a-ke", "a-key ", "ROOT", &"x".repeat(10_000)] {
            assert_eq!(ring.identify(wrong), None, "{wrong:.10}");
        }
        assert!(KeyRing::default().is_empty() && !ring.is_empty());
    }

    #[test]
    fn a_tenant_names_only_its_own_kinds() {
        let acme = Caller::Tenant("acme".into());
        assert_eq!(acme.kind("echo"), "acme/echo");
        assert_eq!(acme.kind("beta/echo"), "acme/beta/echo", "another tenant's is not there for it");
        assert_eq!(Caller::Admin.kind("echo"), "echo");
        assert_eq!(Caller::Admin.kind("beta/echo"), "beta/echo");
        assert_eq!((acme.name_of("acme/echo"), Caller::Admin.name_of("acme/echo")), ("echo", "acme/echo"));
        assert!(acme.owns("acme/echo") && !acme.owns("beta/echo") && !acme.owns("echo") && !acme.owns("acmeecho"));
        assert!(Caller::Admin.owns("beta/echo") && Caller::Admin.owns("echo"));
    }
}
