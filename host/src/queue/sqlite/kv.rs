//! Plugins' kv stores: reads, key listing, usage for quotas, and writes
//! applied in the caller's transaction.

use super::connection::SqliteStore;
use super::rows::db_error;
use crate::queue::{KvChange, KvWrite, StoreError};
use crate::queue::job::Millis;
use rusqlite::{OptionalExtension, params};

/// Applies kv writes in order. `Add` touches only a key that holds a
/// decimal number of at most 18 digits (or none: it starts from 0).
pub(super) fn apply_kv(tx: &rusqlite::Transaction<'_>, writes: &[KvWrite], now: Millis) -> rusqlite::Result<()> {
    // What each write changes the size of its store by, summed per store.
    let mut grown: std::collections::BTreeMap<(&str, &str), i64> = std::collections::BTreeMap::new();
    let size_of = |w: &KvWrite| -> rusqlite::Result<i64> {
        tx.prepare_cached("SELECT length(key) + length(value) FROM kv WHERE namespace = ?1 AND store = ?2 AND key = ?3")?
            .query_row(params![w.namespace, w.store, w.key], |r| r.get(0))
            .optional()
            .map(Option::unwrap_or_default)
    };
    for w in writes {
        let before = size_of(w)?;
        match &w.change {
            KvChange::Set(value) => tx
                .prepare_cached(
                    "INSERT INTO kv (namespace, store, key, value, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (namespace, store, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )?
                .execute(params![w.namespace, w.store, w.key, value, now])?,
            KvChange::Delete => tx
                .prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND store = ?2 AND key = ?3")?
                .execute(params![w.namespace, w.store, w.key])?,
            KvChange::Add(delta) => tx
                .prepare_cached(
                    "INSERT INTO kv (namespace, store, key, value, updated_at) VALUES (?1, ?2, ?3, CAST(CAST(?4 AS TEXT) AS BLOB), ?5) \
                     ON CONFLICT (namespace, store, key) DO UPDATE SET \
                       value = CASE WHEN length(kv.value) <= 19 \
                                     AND CAST(CAST(CAST(kv.value AS TEXT) AS INTEGER) AS TEXT) = CAST(kv.value AS TEXT) \
                                THEN CAST(CAST(CAST(CAST(kv.value AS TEXT) AS INTEGER) + ?4 AS TEXT) AS BLOB) ELSE kv.value END, \
                       updated_at = ?5",
                )?
                .execute(params![w.namespace, w.store, w.key, delta, now])?,
        };
        let after = match &w.change {
            KvChange::Set(value) => (w.key.len() + value.len()) as i64,
            KvChange::Delete => 0,
            KvChange::Add(_) => size_of(w)?,
        };
        *grown.entry((w.namespace.as_str(), w.store.as_str())).or_default() += after - before;
    }
    for ((namespace, store), bytes) in grown {
        tx.prepare_cached(
            "INSERT INTO kv_usage (namespace, store, bytes) VALUES (?1, ?2, ?3) \
             ON CONFLICT (namespace, store) DO UPDATE SET bytes = kv_usage.bytes + excluded.bytes",
        )?
        .execute(params![namespace, store, bytes])?;
    }
    Ok(())
}

/// The first string after every string that starts with `prefix` (`None`:
/// there is none, or the prefix is empty and every key matches).
pub(super) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub(super) async fn kv_get(db: &SqliteStore, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let (namespace, store, key) = (namespace.to_string(), store.to_string(), key.to_string());
    db.read(move |conn, _| {
        conn.prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND store = ?2 AND key = ?3")
            .and_then(|mut s| s.query_row(params![namespace, store, key], |r| r.get(0)).optional())
            .map_err(db_error)
    })
    .await
}

pub(super) async fn kv_keys(db: &SqliteStore, namespace: &str, store: &str, prefix: &str, offset: u64, limit: usize) -> Result<Vec<String>, StoreError> {
    let (namespace, store) = (namespace.to_string(), store.to_string());
    // Keys from `prefix` up to (not including) the first key past every key that starts with it.
    let (start, end) = (prefix.to_string(), prefix_end(prefix));
    db.read(move |conn, _| {
        conn.prepare_cached(
            "SELECT key FROM kv WHERE namespace = ?1 AND store = ?2 AND key >= ?3 AND (?4 IS NULL OR key < ?4) \
             ORDER BY key LIMIT ?5 OFFSET ?6",
        )
        .and_then(|mut s| {
            s.query_map(params![namespace, store, start, end, limit as i64, offset.min(i64::MAX as u64) as i64], |r| r.get(0))?
                .collect()
        })
        .map_err(db_error)
    })
    .await
}

pub(super) async fn kv_usage(db: &SqliteStore, namespace: &str, store: &str) -> Result<u64, StoreError> {
    let (namespace, store) = (namespace.to_string(), store.to_string());
    db.read(move |conn, _| {
        conn.prepare_cached("SELECT bytes FROM kv_usage WHERE namespace = ?1 AND store = ?2")
            .and_then(|mut s| s.query_row(params![namespace, store], |r| r.get::<_, i64>(0)).optional())
            .map(|n| n.unwrap_or(0).max(0) as u64)
            .map_err(db_error)
    })
    .await
}

pub(super) async fn kv_usage_under(db: &SqliteStore, prefix: &str) -> Result<u64, StoreError> {
    let prefix = prefix.to_string();
    db.read(move |conn, _| {
        // One row per store: a scan of kv_usage, not of the values.
        conn.prepare_cached("SELECT coalesce(sum(bytes), 0) FROM kv_usage WHERE substr(namespace, 1, length(?1)) = ?1")
            .and_then(|mut s| s.query_row([prefix], |r| r.get::<_, i64>(0)))
            .map(|n| n.max(0) as u64)
            .map_err(db_error)
    })
    .await
}

pub(super) async fn write_kv(db: &SqliteStore, writes: Vec<KvWrite>) -> Result<(), StoreError> {
    db.write(move |tx, now| apply_kv(tx, &writes, now).map_err(db_error)).await
}
