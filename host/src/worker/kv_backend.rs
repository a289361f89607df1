//! The kv capability's reads of committed state, wired to the job store
//! (the capability defines what it needs; the worker, which knows both,
//! provides it).

use crate::capability::KvBackend;
use crate::queue::JobStore;
use std::sync::Arc;

/// Committed kv state in the job store (SQLite or Postgres).
#[derive(Debug, Clone)]
pub struct StoreKv(pub Arc<dyn JobStore>);

#[async_trait::async_trait]
impl KvBackend for StoreKv {
    async fn get(&self, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.kv_get(namespace, store, key).await.map_err(|e| e.to_string())
    }

    async fn keys(&self, namespace: &str, store: &str, offset: u64, limit: usize) -> Result<Vec<String>, String> {
        self.0.kv_keys(namespace, store, "", offset, limit).await.map_err(|e| e.to_string())
    }

    async fn usage(&self, namespace: &str, store: &str) -> Result<u64, String> {
        self.0.kv_usage(namespace, store).await.map_err(|e| e.to_string())
    }
}
