//! Plugins' kv stores: reads, key listing, usage for quotas, and writes
//! applied in the caller's transaction.

use super::connection::PostgresStore;
use super::rows::pg_error;
use crate::queue::{KvChange, KvWrite, StoreError};
use crate::queue::job::Millis;
use deadpool_postgres::GenericClient;

/// Applies kv writes in order. `Add` touches only a key that holds a
/// decimal number of at most 18 digits (or none: it starts from 0).
pub(super) async fn apply_kv(client: &impl GenericClient, writes: &[KvWrite], now: Millis) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    // What each write changes the size of its store by, summed per store.
    let mut grown: std::collections::BTreeMap<(&str, &str), i64> = std::collections::BTreeMap::new();
    let size = client
        .prepare_cached("SELECT (octet_length(key) + octet_length(value))::bigint FROM kv WHERE namespace = $1 AND store = $2 AND key = $3")
        .await
        .map_err(pg_error)?;
    for w in writes {
        let (ns, store, key) = (&w.namespace, &w.store, &w.key);
        let before: i64 = client.query_opt(&size, &[ns, store, key]).await.map_err(pg_error)?.map_or(0, |r| r.get(0));
        match &w.change {
            KvChange::Set(value) => {
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO kv (namespace, store, key, value, updated_at) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (namespace, store, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    )
                    .await
                    .map_err(pg_error)?;
                client.execute(&stmt, &[ns, store, key, value, &now]).await.map_err(pg_error)?;
            }
            KvChange::Delete => {
                let stmt = client.prepare_cached("DELETE FROM kv WHERE namespace = $1 AND store = $2 AND key = $3").await.map_err(pg_error)?;
                client.execute(&stmt, &[ns, store, key]).await.map_err(pg_error)?;
            }
            KvChange::Add(delta) => {
                // `encode(..., 'escape')` reads any bytes; only a plain number matches.
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO kv (namespace, store, key, value, updated_at) VALUES ($1, $2, $3, convert_to($4::bigint::text, 'UTF8'), $5) \
                         ON CONFLICT (namespace, store, key) DO UPDATE SET \
                           value = CASE WHEN encode(kv.value, 'escape') ~ '^-?[0-9]{1,18}$' \
                                   THEN convert_to((encode(kv.value, 'escape')::bigint + $4::bigint)::text, 'UTF8') ELSE kv.value END, \
                           updated_at = $5",
                    )
                    .await
                    .map_err(pg_error)?;
                client.execute(&stmt, &[ns, store, key, delta, &now]).await.map_err(pg_error)?;
            }
        }
        let after: i64 = match &w.change {
            KvChange::Set(value) => (key.len() + value.len()) as i64,
            KvChange::Delete => 0,
            KvChange::Add(_) => client.query_opt(&size, &[ns, store, key]).await.map_err(pg_error)?.map_or(0, |r| r.get(0)),
        };
        *grown.entry((ns.as_str(), store.as_str())).or_default() += after - before;
    }
    let usage = client
        .prepare_cached(
            "INSERT INTO kv_usage (namespace, store, bytes) VALUES ($1, $2, $3) \
             ON CONFLICT (namespace, store) DO UPDATE SET bytes = kv_usage.bytes + excluded.bytes",
        )
        .await
        .map_err(pg_error)?;
    for ((namespace, store), bytes) in grown {
        client.execute(&usage, &[&namespace, &store, &bytes]).await.map_err(pg_error)?;
    }
    Ok(())
}

pub(super) async fn kv_get(db: &PostgresStore, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached("SELECT value FROM kv WHERE namespace = $1 AND store = $2 AND key = $3").await.map_err(pg_error)?;
    Ok(client.query_opt(&stmt, &[&namespace, &store, &key]).await.map_err(pg_error)?.map(|r| r.get(0)))
}

pub(super) async fn kv_keys(db: &PostgresStore, namespace: &str, store: &str, prefix: &str, offset: u64, limit: usize) -> Result<Vec<String>, StoreError> {
    let client = db.client().await?;
    // `starts_with` on a "C"-collated key: byte order, no LIKE escaping.
    let stmt = client
        .prepare_cached(
            "SELECT key FROM kv WHERE namespace = $1 AND store = $2 AND starts_with(key, $3) ORDER BY key LIMIT $4 OFFSET $5",
        )
        .await
        .map_err(pg_error)?;
    let (limit, offset) = (limit as i64, offset.min(i64::MAX as u64) as i64);
    let rows = client.query(&stmt, &[&namespace, &store, &prefix, &limit, &offset]).await.map_err(pg_error)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(super) async fn kv_usage(db: &PostgresStore, namespace: &str, store: &str) -> Result<u64, StoreError> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached("SELECT bytes FROM kv_usage WHERE namespace = $1 AND store = $2")
        .await
        .map_err(pg_error)?;
    let used: i64 = client.query_opt(&stmt, &[&namespace, &store]).await.map_err(pg_error)?.map_or(0, |r| r.get(0));
    Ok(used.max(0) as u64)
}

pub(super) async fn kv_usage_under(db: &PostgresStore, prefix: &str) -> Result<u64, StoreError> {
    let client = db.client().await?;
    // One row per store: a scan of kv_usage, not of the values.
    let stmt = client
        .prepare_cached("SELECT coalesce(sum(bytes), 0)::bigint FROM kv_usage WHERE starts_with(namespace, $1)")
        .await
        .map_err(pg_error)?;
    let used: i64 = client.query_one(&stmt, &[&prefix]).await.map_err(pg_error)?.get(0);
    Ok(used.max(0) as u64)
}

pub(super) async fn write_kv(db: &PostgresStore, writes: Vec<KvWrite>) -> Result<(), StoreError> {
    let now = db.now();
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    apply_kv(&tx, &writes, now).await?;
    tx.commit().await.map_err(pg_error)
}
