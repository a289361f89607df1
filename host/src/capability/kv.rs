//! Key-value state (`wasi:keyvalue@0.2.0-draft`: `store`, `atomics`,
//! `batch`, as wasmtime 48 ships the WIT), kept in Kiln's own job store.
//!
//! A store is opened by name (`open("default")`) among those granted, and
//! is the plugin's own: keys live under its name, so another plugin's
//! `default` is another store. Reads see what is committed plus this run's
//! own writes; the writes are an effect, returned with the report and
//! applied by the worker in the transaction that completes the job, so a
//! run that does not complete `ok` changes nothing.
//!
//! Linked by hand, like `context`: keys and values arrive as views into the
//! guest's memory and are checked against their bounds before the host
//! copies them. The views are read only inside the call that handed them
//! over, while the guest still owns that memory (it may free it as soon as
//! the call returns), and never kept past it. Reads of committed state go through [`KvBackend`], which
//! the worker wires to the job store.

use super::InScope;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use wasmtime::component::{ComponentType, Linker, Lower, Resource, ResourceTable, ResourceType, WasmList, WasmStr};
use wasmtime::{AsContext, StoreContextMut};

/// The longest key.
pub const MAX_KEY_BYTES: usize = 256;
/// The largest value.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// What a store may hold (keys' and values' bytes) unless kiln.toml says
/// otherwise (`[capabilities] kv_quota_bytes`).
pub const DEFAULT_QUOTA_BYTES: u64 = 64 << 20;
/// The most keys one run may write.
pub const MAX_WRITES_PER_RUN: usize = 10_000;
/// The most value bytes one run may write.
pub const MAX_WRITTEN_BYTES_PER_RUN: usize = 32 << 20;
/// Keys per `list-keys` page, and the most keys one batch call may name.
pub const PAGE_KEYS: usize = 1_000;
/// The largest number `increment` works on, and the largest step.
const MAX_COUNTER: u64 = 1_000_000_000_000_000_000;
const MAX_STEP: u64 = 100_000_000_000_000_000;

const STORE: &str = "wasi:keyvalue/store@0.2.0-draft";
const ATOMICS: &str = "wasi:keyvalue/atomics@0.2.0-draft";
const BATCH: &str = "wasi:keyvalue/batch@0.2.0-draft";

/// Committed kv state, as the capability reads it.
#[async_trait::async_trait]
pub trait KvBackend: Send + Sync + std::fmt::Debug {
    async fn get(&self, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Committed keys in byte order, from the `offset`-th, at most `limit`.
    async fn keys(&self, namespace: &str, store: &str, offset: u64, limit: usize) -> Result<Vec<String>, String>;
    /// Bytes the store holds; unless `fresh`, as read a moment ago.
    async fn usage(&self, namespace: &str, store: &str, fresh: bool) -> Result<u64, String>;
    /// Bytes every store of the namespaces under `prefix` holds (a
    /// tenant's); unless `fresh`, as read a moment ago.
    async fn usage_under(&self, prefix: &str, fresh: bool) -> Result<u64, String>;
}

/// One change a run made to a key: what the worker commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEffect {
    pub store: String,
    pub key: String,
    pub change: KvChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvChange {
    Set(Vec<u8>),
    Delete,
    /// Added to the committed number by `increment`.
    Add(u64),
}

/// An open store: a name among the granted ones.
#[derive(Debug)]
pub struct Bucket {
    store: String,
}

/// One run's kv: the open buckets, what it wrote, what the stores held.
#[derive(Debug, Default)]
pub(crate) struct KvScope {
    buckets: ResourceTable,
    /// By (store, key), in key order: the latest change of each.
    pending: BTreeMap<(String, String), KvChange>,
    written_bytes: usize,
    /// Committed bytes of each store this run wrote to, read once.
    usage: HashMap<String, u64>,
    /// Committed bytes of all its tenant's stores, read once.
    tenant_usage: Option<u64>,
}

impl KvScope {
    /// The run's writes, in (store, key) order.
    pub(crate) fn take_effects(&mut self) -> Vec<KvEffect> {
        std::mem::take(&mut self.pending).into_iter().map(|((store, key), change)| KvEffect { store, key, change }).collect()
    }
}

#[derive(Debug, Clone, ComponentType, Lower)]
#[component(variant)]
enum KvError {
    #[component(name = "no-such-store")]
    NoSuchStore,
    #[component(name = "access-denied")]
    AccessDenied,
    #[component(name = "other")]
    Other(String),
}

#[derive(Debug, ComponentType, Lower)]
#[component(record)]
struct KeyResponse {
    keys: Vec<String>,
    cursor: Option<u64>,
}

type KvResult<T> = Result<T, KvError>;

fn other(message: impl Into<String>) -> KvError {
    KvError::Other(message.into())
}

/// Links `store`, `atomics` and `batch`.
pub(crate) fn add_to_linker<T: InScope + Send + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let mut store = linker.instance(STORE)?;
    store.resource("bucket", ResourceType::host::<Bucket>(), |mut cx: StoreContextMut<'_, T>, rep| {
        cx.data_mut().scope().kv.buckets.delete(Resource::<Bucket>::new_own(rep))?;
        Ok(())
    })?;
    store.func_wrap("open", |mut cx: StoreContextMut<'_, T>, (name,): (WasmStr,)| {
        let answer = open(&mut cx, &name);
        Ok((answer,))
    })?;
    store.func_wrap_async("[method]bucket.get", |mut cx: StoreContextMut<'_, T>, (bucket, key): (Resource<Bucket>, WasmStr)| {
        Box::new(async move {
            let answer = match key_of(&mut cx, &bucket, &key) {
                Ok((store, key)) => read(&mut cx, &store, &key).await,
                Err(e) => Err(e),
            };
            Ok((answer,))
        })
    })?;
    store.func_wrap_async("[method]bucket.exists", |mut cx: StoreContextMut<'_, T>, (bucket, key): (Resource<Bucket>, WasmStr)| {
        Box::new(async move {
            let answer = match key_of(&mut cx, &bucket, &key) {
                Ok((store, key)) => read(&mut cx, &store, &key).await.map(|v| v.is_some()),
                Err(e) => Err(e),
            };
            Ok((answer,))
        })
    })?;
    store.func_wrap_async(
        "[method]bucket.set",
        |mut cx: StoreContextMut<'_, T>, (bucket, key, value): (Resource<Bucket>, WasmStr, WasmList<u8>)| {
            Box::new(async move {
                let answer = match key_of(&mut cx, &bucket, &key) {
                    Ok((store, key)) => set(&mut cx, store, key, &value).await,
                    Err(e) => Err(e),
                };
                Ok((answer,))
            })
        },
    )?;
    store.func_wrap("[method]bucket.delete", |mut cx: StoreContextMut<'_, T>, (bucket, key): (Resource<Bucket>, WasmStr)| {
        let answer = key_of(&mut cx, &bucket, &key).and_then(|(store, key)| record(&mut cx, store, key, KvChange::Delete, 0));
        Ok((answer,))
    })?;
    store.func_wrap_async("[method]bucket.list-keys", |mut cx: StoreContextMut<'_, T>, (bucket, cursor): (Resource<Bucket>, Option<u64>)| {
        Box::new(async move {
            let answer = match bucket_of(&mut cx, &bucket) {
                Ok(store) => list_keys(&mut cx, &store, cursor.unwrap_or(0)).await,
                Err(e) => Err(e),
            };
            Ok((answer,))
        })
    })?;

    let mut atomics = linker.instance(ATOMICS)?;
    atomics.func_wrap_async(
        "increment",
        |mut cx: StoreContextMut<'_, T>, (bucket, key, delta): (Resource<Bucket>, WasmStr, u64)| {
            Box::new(async move {
                let answer = match key_of(&mut cx, &bucket, &key) {
                    Ok((store, key)) => increment(&mut cx, store, key, delta).await,
                    Err(e) => Err(e),
                };
                Ok((answer,))
            })
        },
    )?;

    let mut batch = linker.instance(BATCH)?;
    batch.func_wrap_async("get-many", |mut cx: StoreContextMut<'_, T>, (bucket, keys): (Resource<Bucket>, WasmList<WasmStr>)| {
        Box::new(async move {
            let answer: KvResult<Vec<Option<(String, Vec<u8>)>>> = async {
                let names = keys_of(&mut cx, &bucket, &keys)?;
                let mut found = Vec::with_capacity(names.1.len());
                for key in names.1 {
                    found.push(read(&mut cx, &names.0, &key).await?.map(|v| (key, v)));
                }
                Ok(found)
            }
            .await;
            Ok((answer,))
        })
    })?;
    batch.func_wrap_async(
        "set-many",
        |mut cx: StoreContextMut<'_, T>, (bucket, pairs): (Resource<Bucket>, WasmList<(WasmStr, WasmList<u8>)>)| {
            Box::new(async move {
                let answer: KvResult<()> = async {
                    if pairs.len() > PAGE_KEYS {
                        return Err(other(format!("{} keys in one call, more than the most of {PAGE_KEYS}", pairs.len())));
                    }
                    let store = bucket_of(&mut cx, &bucket)?;
                    let items: Vec<(WasmStr, WasmList<u8>)> =
                        pairs.iter(&mut cx).and_then(|items| items.collect::<wasmtime::Result<_>>()).map_err(|e| other(e.to_string()))?;
                    for (key, value) in items {
                        let key = bounded_key(&cx, &key)?;
                        set(&mut cx, store.clone(), key, &value).await?;
                    }
                    Ok(())
                }
                .await;
                Ok((answer,))
            })
        },
    )?;
    batch.func_wrap("delete-many", |mut cx: StoreContextMut<'_, T>, (bucket, keys): (Resource<Bucket>, WasmList<WasmStr>)| {
        let answer = keys_of(&mut cx, &bucket, &keys)
            .and_then(|(store, keys)| keys.into_iter().try_for_each(|key| record(&mut cx, store.clone(), key, KvChange::Delete, 0)));
        Ok((answer,))
    })?;
    Ok(())
}

fn open<T: InScope>(cx: &mut StoreContextMut<'_, T>, name: &WasmStr) -> KvResult<Resource<Bucket>> {
    let name = name.to_str(cx.as_context()).map_err(|e| other(e.to_string()))?;
    let grants = &cx.data().scope_ref().grants;
    if !grants.kv.iter().any(|s| *s == name) {
        // Asked for but not on this host, or not asked for at all.
        return Err(if grants.asked.kv.iter().any(|s| *s == name) { KvError::NoSuchStore } else { KvError::AccessDenied });
    }
    if cx.data().scope_ref().kv_backend.is_none() {
        return Err(other("this host keeps no kv stores (a sandbox without a job store)"));
    }
    let bucket = Bucket { store: name.into_owned() };
    cx.data_mut().scope().kv.buckets.push(bucket).map_err(|e| other(e.to_string()))
}

fn bucket_of<T: InScope>(cx: &mut StoreContextMut<'_, T>, bucket: &Resource<Bucket>) -> KvResult<String> {
    let table = &cx.data_mut().scope().kv.buckets;
    table.get(bucket).map(|b| b.store.clone()).map_err(|e| other(e.to_string()))
}

fn bounded_key<T: 'static>(cx: &StoreContextMut<'_, T>, key: &WasmStr) -> KvResult<String> {
    let key = key.to_str(cx.as_context()).map_err(|e| other(e.to_string()))?;
    if key.len() > MAX_KEY_BYTES {
        return Err(other(format!("key is {} bytes, over the most of {MAX_KEY_BYTES}", key.len())));
    }
    Ok(key.into_owned())
}

fn key_of<T: InScope>(cx: &mut StoreContextMut<'_, T>, bucket: &Resource<Bucket>, key: &WasmStr) -> KvResult<(String, String)> {
    let store = bucket_of(cx, bucket)?;
    Ok((store, bounded_key(cx, key)?))
}

fn keys_of<T: InScope>(cx: &mut StoreContextMut<'_, T>, bucket: &Resource<Bucket>, keys: &WasmList<WasmStr>) -> KvResult<(String, Vec<String>)> {
    if keys.len() > PAGE_KEYS {
        return Err(other(format!("{} keys in one call, more than the most of {PAGE_KEYS}", keys.len())));
    }
    let store = bucket_of(cx, bucket)?;
    let views: Vec<WasmStr> = keys.iter(&mut *cx).and_then(|items| items.collect::<wasmtime::Result<_>>()).map_err(|e| other(e.to_string()))?;
    let keys = views.iter().map(|k| bounded_key(cx, k)).collect::<KvResult<_>>()?;
    Ok((store, keys))
}

fn backend_of<T: InScope>(cx: &StoreContextMut<'_, T>) -> KvResult<(Arc<dyn KvBackend>, String)> {
    let scope = cx.data().scope_ref();
    let backend = scope.kv_backend.clone().ok_or_else(|| other("this host keeps no kv stores"))?;
    Ok((backend, scope.grants.namespace.clone()))
}

/// The value this run sees: its own latest write, else what is committed.
async fn read<T: InScope>(cx: &mut StoreContextMut<'_, T>, store: &str, key: &str) -> KvResult<Option<Vec<u8>>> {
    let pending = cx.data().scope_ref().kv.pending.get(&(store.to_string(), key.to_string())).cloned();
    match pending {
        Some(KvChange::Set(value)) => return Ok(Some(value)),
        Some(KvChange::Delete) => return Ok(None),
        Some(KvChange::Add(delta)) => {
            let committed = committed_number(cx, store, key).await?;
            return Ok(Some((committed + delta).to_string().into_bytes()));
        }
        None => {}
    }
    let (backend, namespace) = backend_of(cx)?;
    backend.get(&namespace, store, key).await.map_err(|e| other(format!("the store cannot be read: {e}")))
}

async fn committed_number<T: InScope>(cx: &mut StoreContextMut<'_, T>, store: &str, key: &str) -> KvResult<u64> {
    let (backend, namespace) = backend_of(cx)?;
    let value = backend.get(&namespace, store, key).await.map_err(|e| other(format!("the store cannot be read: {e}")))?;
    value.map_or(Ok(0), |v| number(key, &v))
}

/// A value `increment` can add to: a decimal number up to 10^18.
fn number(key: &str, value: &[u8]) -> KvResult<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|n| *n <= MAX_COUNTER)
        .ok_or_else(|| other(format!("key {key:?} holds no number `increment` can add to (a decimal number up to 10^18)")))
}

async fn set<T: InScope>(cx: &mut StoreContextMut<'_, T>, store: String, key: String, value: &WasmList<u8>) -> KvResult<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(other(format!("value is {} bytes, over the most of {MAX_VALUE_BYTES}", value.len())));
    }
    check_quota(cx, &store, key.len() + value.len()).await?;
    let bytes = value.as_le_slice(cx.as_context()).to_vec();
    let size = bytes.len();
    record(cx, store, key, KvChange::Set(bytes), size)
}

/// Refuses a write that would take the store past its quota: what is
/// committed plus what this run has written (overwrites counted in full).
/// Below half the quota the store's size may be a moment old (see
/// `KvBackend::usage`); from half on it is read afresh for each run.
async fn check_quota<T: InScope>(cx: &mut StoreContextMut<'_, T>, store: &str, adding: usize) -> KvResult<()> {
    let quota = cx.data().scope_ref().grants.kv_quota_bytes;
    let known = cx.data().scope_ref().kv.usage.get(store).copied();
    let written = cx.data().scope_ref().kv.written_bytes as u64;
    let committed = match known {
        Some(used) => used,
        None => {
            let mut used = read_usage(cx, store, false).await?;
            if used + written + adding as u64 > quota / 2 {
                used = read_usage(cx, store, true).await?;
            }
            cx.data_mut().scope().kv.usage.insert(store.to_string(), used);
            used
        }
    };
    if committed + written + adding as u64 > quota {
        return Err(other(format!(
            "store {store:?} would hold {} bytes, over its quota of {quota} bytes",
            committed + written + adding as u64
        )));
    }
    check_tenant_quota(cx, written + adding as u64).await
}

/// Refuses a write that would take its tenant's stores together past the
/// tenant's `kv_quota_bytes` (read as [`check_quota`] reads a store's).
async fn check_tenant_quota<T: InScope>(cx: &mut StoreContextMut<'_, T>, adding: u64) -> KvResult<()> {
    let Some(total) = cx.data().scope_ref().grants.kv_total.clone() else { return Ok(()) };
    let committed = match cx.data().scope_ref().kv.tenant_usage {
        Some(used) => used,
        None => {
            let (backend, _) = backend_of(cx)?;
            let read = |fresh| {
                let (backend, prefix) = (backend.clone(), total.prefix());
                async move { backend.usage_under(&prefix, fresh).await.map_err(|e| other(format!("the store cannot be read: {e}"))) }
            };
            let mut used = read(false).await?;
            if used + adding > total.bytes / 2 {
                used = read(true).await?;
            }
            cx.data_mut().scope().kv.tenant_usage = Some(used);
            used
        }
    };
    total.refusal(committed + adding).map_or(Ok(()), |why| Err(other(why)))
}

async fn read_usage<T: InScope>(cx: &mut StoreContextMut<'_, T>, store: &str, fresh: bool) -> KvResult<u64> {
    let (backend, namespace) = backend_of(cx)?;
    backend.usage(&namespace, store, fresh).await.map_err(|e| other(format!("the store cannot be read: {e}")))
}

fn record<T: InScope>(cx: &mut StoreContextMut<'_, T>, store: String, key: String, change: KvChange, bytes: usize) -> KvResult<()> {
    let kv = &mut cx.data_mut().scope().kv;
    let slot = (store, key);
    if !kv.pending.contains_key(&slot) && kv.pending.len() >= MAX_WRITES_PER_RUN {
        return Err(other(format!("this run has written {} keys, the most one run may", kv.pending.len())));
    }
    if kv.written_bytes + bytes > MAX_WRITTEN_BYTES_PER_RUN {
        return Err(other(format!("this run would write {} value bytes, over the most of {MAX_WRITTEN_BYTES_PER_RUN}", kv.written_bytes + bytes)));
    }
    kv.written_bytes += bytes + slot.1.len();
    kv.pending.insert(slot, change);
    Ok(())
}

async fn increment<T: InScope>(cx: &mut StoreContextMut<'_, T>, store: String, key: String, delta: u64) -> KvResult<u64> {
    if delta > MAX_STEP {
        return Err(other(format!("delta {delta} is over the most of 10^17")));
    }
    let pending = cx.data().scope_ref().kv.pending.get(&(store.clone(), key.clone())).cloned();
    let (now, change) = match pending {
        Some(KvChange::Set(value)) => {
            let n = number(&key, &value)? + delta;
            (n, KvChange::Set(n.to_string().into_bytes()))
        }
        Some(KvChange::Delete) => (delta, KvChange::Set(delta.to_string().into_bytes())),
        Some(KvChange::Add(before)) => (committed_number(cx, &store, &key).await? + before + delta, KvChange::Add(before + delta)),
        None => (committed_number(cx, &store, &key).await? + delta, KvChange::Add(delta)),
    };
    if now > MAX_COUNTER {
        return Err(other(format!("key {key:?} would pass 10^18")));
    }
    check_quota(cx, &store, key.len() + 20).await?;
    record(cx, store, key, change, 20)?;
    Ok(now)
}

async fn list_keys<T: InScope>(cx: &mut StoreContextMut<'_, T>, store: &str, offset: u64) -> KvResult<KeyResponse> {
    let (backend, namespace) = backend_of(cx)?;
    let committed = backend.keys(&namespace, store, offset, PAGE_KEYS).await.map_err(|e| other(format!("the store cannot be read: {e}")))?;
    let full = committed.len() == PAGE_KEYS;
    // In a block: nothing borrowed from the store lives across the reads below.
    let (mut keys, written) = {
        let kv = &cx.data().scope_ref().kv;
        let deleted = |k: &String| matches!(kv.pending.get(&(store.to_string(), k.clone())), Some(KvChange::Delete));
        let keys: Vec<String> = committed.into_iter().filter(|k| !deleted(k)).collect();
        // The keys this run wrote; on the last page, those not committed yet are added.
        let written: Vec<String> = kv
            .pending
            .iter()
            .filter(|((s, k), change)| s == store && !matches!(change, KvChange::Delete) && !keys.contains(k))
            .map(|((_, k), _)| k.clone())
            .collect();
        (keys, written)
    };
    if !full {
        for key in written {
            if backend.get(&namespace, store, &key).await.map_err(|e| other(e.to_string()))?.is_none() {
                keys.push(key);
            }
        }
    }
    Ok(KeyResponse { keys, cursor: full.then_some(offset + PAGE_KEYS as u64) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increment_works_on_plain_decimal_numbers_only() {
        assert_eq!(number("k", b"41").unwrap(), 41);
        assert_eq!(number("k", b"0").unwrap(), 0);
        for bad in [&b""[..], b"-1", b"4 2", b"0x10", b"\xff", b"10000000000000000000"] {
            assert!(number("k", bad).is_err(), "{bad:?}");
        }
    }
}
