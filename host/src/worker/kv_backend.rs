//! The kv capability's reads of committed state, wired to the job store
//! (the capability defines what it needs; the worker, which knows both,
//! provides it).

use crate::capability::KvBackend;
use crate::queue::JobStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old a store's size may be when a quota check reads it: every run
/// that writes checks its quota, and a read per run of a value that changes
/// by a run's writes would cost more than the writes.
pub const USAGE_MAX_AGE: Duration = Duration::from_millis(250);

/// Committed kv state in the job store (SQLite or Postgres).
#[derive(Debug, Clone)]
pub struct StoreKv {
    store: Arc<dyn JobStore>,
    /// Each store's size, and when it was read.
    usage: Arc<Mutex<HashMap<(String, String), (u64, Instant)>>>,
}

impl StoreKv {
    pub fn new(store: Arc<dyn JobStore>) -> Self {
        Self { store, usage: Arc::default() }
    }
}

#[async_trait::async_trait]
impl KvBackend for StoreKv {
    async fn get(&self, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store.kv_get(namespace, store, key).await.map_err(|e| e.to_string())
    }

    async fn keys(&self, namespace: &str, store: &str, offset: u64, limit: usize) -> Result<Vec<String>, String> {
        self.store.kv_keys(namespace, store, "", offset, limit).await.map_err(|e| e.to_string())
    }

    async fn usage(&self, namespace: &str, store: &str, fresh: bool) -> Result<u64, String> {
        let slot = (namespace.to_string(), store.to_string());
        if let Some(&(bytes, at)) = self.usage.lock().expect("usage poisoned").get(&slot) {
            if !fresh && at.elapsed() < USAGE_MAX_AGE {
                return Ok(bytes);
            }
        }
        let bytes = self.store.kv_usage(namespace, store).await.map_err(|e| e.to_string())?;
        self.usage.lock().expect("usage poisoned").insert(slot, (bytes, Instant::now()));
        Ok(bytes)
    }

    async fn usage_under(&self, prefix: &str, fresh: bool) -> Result<u64, String> {
        // Under a slot no store has: a store's name is never empty.
        let slot = (prefix.to_string(), String::new());
        if let Some(&(bytes, at)) = self.usage.lock().expect("usage poisoned").get(&slot) {
            if !fresh && at.elapsed() < USAGE_MAX_AGE {
                return Ok(bytes);
            }
        }
        let bytes = self.store.kv_usage_under(prefix).await.map_err(|e| e.to_string())?;
        self.usage.lock().expect("usage poisoned").insert(slot, (bytes, Instant::now()));
        Ok(bytes)
    }
}
