//! A job kind's name: the tenant's plugin `echo` is the kind `acme/echo`
//! inside the host (its registry key, its jobs' kind, its kv namespace);
//! the host's own plugins have plain names. A leaf: used by plugin,
//! tenant, queue, worker, sandbox and api, importing none of them.

/// The tenant a kind belongs to; `None` for the host's own kinds. Neither
/// a tenant name nor a plugin name holds a `/`.
pub fn tenant_of(kind: &str) -> Option<&str> {
    kind.split_once('/').map(|(tenant, _)| tenant)
}

/// The kind of `tenant`'s plugin `name` (the name itself for the host's).
pub fn qualified_kind(tenant: Option<&str>, name: &str) -> String {
    match tenant {
        Some(tenant) => format!("{tenant}/{name}"),
        None => name.to_string(),
    }
}

/// A kind's plugin name, without its tenant: what the plugin is to itself.
pub fn plain_name(kind: &str) -> &str {
    kind.split_once('/').map_or(kind, |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_kind_splits_into_tenant_and_name_and_joins_back() {
        assert_eq!((tenant_of("acme/echo"), plain_name("acme/echo")), (Some("acme"), "echo"));
        assert_eq!((tenant_of("echo"), plain_name("echo")), (None, "echo"));
        assert_eq!(qualified_kind(Some("acme"), "echo"), "acme/echo");
        assert_eq!(qualified_kind(None, "echo"), "echo");
    }
}
