//! An operator's hand on a plugin's kv stores (`/plugins/{name}/kv`):
//! list, read, write and delete keys, with the same bounds and quotas a
//! plugin has. A tenant reaches only its own plugins' stores.

use super::{JobService, ServiceError};
use crate::capability::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::queue::{KvChange, KvWrite};
use crate::tenant::Caller;

/// One store of one plugin, checked: a plugin this host serves to the
/// caller, a store the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvStore {
    /// The plugin's kind: the store's namespace.
    pub namespace: String,
    pub store: String,
}

/// A page of a store's keys with their values.
#[derive(Debug, Clone)]
pub struct KvPage {
    pub entries: Vec<(String, Vec<u8>)>,
    /// Where the next page starts, when this one was full.
    pub next_offset: Option<u64>,
    /// What the store holds, keys and values, in bytes.
    pub store_bytes: u64,
}

impl JobService {
    /// The store `store` (default `default`) of the caller's plugin `plugin`.
    pub fn kv_store(&self, caller: &Caller, plugin: &str, store: Option<String>) -> Result<KvStore, ServiceError> {
        let kind = caller.kind(plugin);
        if self.registry.get(&kind).is_none() {
            return Err(ServiceError::NotFound(format!("no plugin {plugin:?} is loaded on this host")));
        }
        let store = store.unwrap_or_else(|| crate::capability::DEFAULT_KV_STORE.to_string());
        let stores = &self.registry.policy().capabilities.policy.kv_stores;
        if !stores.contains(&store) {
            return Err(ServiceError::NotFound(format!("no kv store {store:?} on this host (stores: {})", stores.join(", "))));
        }
        Ok(KvStore { namespace: kind, store })
    }

    /// Refuses a key (or a prefix) over the bound a plugin's keys have.
    pub fn check_kv_key(key: &str) -> Result<(), ServiceError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(ServiceError::BadRequest(format!("key is {} bytes, over the most of {MAX_KEY_BYTES}", key.len())));
        }
        Ok(())
    }

    /// Keys from `offset` in byte order, with their values, `limit` at most.
    pub async fn kv_page(&self, at: &KvStore, prefix: &str, offset: u64, limit: usize) -> Result<KvPage, ServiceError> {
        Self::check_kv_key(prefix)?;
        let store = self.dispatcher.store();
        let keys = store.kv_keys(&at.namespace, &at.store, prefix, offset, limit).await?;
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys.iter() {
            // A key deleted between the two reads is left out.
            if let Some(value) = store.kv_get(&at.namespace, &at.store, key).await? {
                entries.push((key.clone(), value));
            }
        }
        let next_offset = (keys.len() == limit).then_some(offset + limit as u64);
        let store_bytes = store.kv_usage(&at.namespace, &at.store).await?;
        Ok(KvPage { entries, next_offset, store_bytes })
    }

    pub async fn kv_get(&self, at: &KvStore, key: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        Ok(self.dispatcher.store().kv_get(&at.namespace, &at.store, key).await?)
    }

    /// Sets `key`, held to the value bound, the plugin's store quota and
    /// its tenant's quota over all its stores.
    pub async fn kv_set(&self, at: &KvStore, key: &str, value: Vec<u8>) -> Result<(), ServiceError> {
        Self::check_kv_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(ServiceError::TooLarge(format!("value is {} bytes, over the most of {MAX_VALUE_BYTES}", value.len())));
        }
        let store = self.dispatcher.store();
        // The plugin's own quota: a tenant's may be narrower than the host's.
        let grants = self.registry.get(&at.namespace).map(|p| p.component.grants().clone());
        let quota = grants.as_ref().map_or(0, |g| g.kv_quota_bytes);
        let adding = (key.len() + value.len()) as u64;
        let after = store.kv_usage(&at.namespace, &at.store).await? + adding;
        if after > quota {
            return Err(ServiceError::TooLarge(format!("store {:?} would hold {after} bytes, over its quota of {quota} bytes", at.store)));
        }
        if let Some(total) = grants.and_then(|g| g.kv_total) {
            if let Some(why) = total.refusal(store.kv_usage_under(&total.prefix()).await? + adding) {
                return Err(ServiceError::TooLarge(why));
            }
        }
        let write = KvWrite { namespace: at.namespace.clone(), store: at.store.clone(), key: key.to_string(), change: KvChange::Set(value) };
        store.write_kv(vec![write]).await?;
        tracing::info!(plugin = %at.namespace, key = %key, "kv key set by hand");
        Ok(())
    }

    /// Deletes `key`; says whether it was there.
    pub async fn kv_delete(&self, at: &KvStore, key: &str) -> Result<bool, ServiceError> {
        let store = self.dispatcher.store();
        let existed = store.kv_get(&at.namespace, &at.store, key).await?.is_some();
        if existed {
            let write = KvWrite { namespace: at.namespace.clone(), store: at.store.clone(), key: key.to_string(), change: KvChange::Delete };
            store.write_kv(vec![write]).await?;
            tracing::info!(plugin = %at.namespace, key = %key, "kv key deleted by hand");
        }
        Ok(existed)
    }
}
