//! The names a job carries: its kind, its queue, its unique and
//! concurrency keys. How a kind's name splits and joins (a tenant's plugin
//! `echo` is the kind `acme/echo` inside the host: its registry key, its
//! jobs' kind, its kv namespace; the host's own plugins have plain names),
//! and how long each name may be, defined once for every path that makes
//! a job (the worker's `enqueue` validator, and the enqueue capability at
//! the trust boundary). A leaf: used by plugin, tenant, queue, worker,
//! capability, sandbox and api, importing none of them.

/// The longest kind or queue name a plugin may name for a child job.
pub const MAX_NAME_BYTES: usize = 64;
/// The longest `unique_key` a job may carry: room for a kind, a date and a
/// few ids, and an index entry that stays small.
pub const MAX_UNIQUE_KEY_BYTES: usize = 512;
/// The longest concurrency key a job may carry.
pub const MAX_CONCURRENCY_KEY_BYTES: usize = 256;

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
