//! The schema: migrations, applied in order, each once, recorded in
//! `kiln_migrations`, by one host at a time (an advisory lock), so hosts
//! that start together apply each once.

use super::rows::pg_error;
use crate::queue::StoreError;
use crate::queue::migration::{self, Migration};
use deadpool_postgres::GenericClient;

/// Identifies the migration lock among other users of advisory locks ("kiln").
pub(super) const MIGRATION_LOCK: i64 = 0x6b69_6c6e;

/// The migrations, in order: each a file of `migrations/`, applied once,
/// recorded in `kiln_migrations` with its version and name.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "jobs, queues, loops and the insert notification", sql: include_str!("migrations/0001_jobs_queues_loops_and_the_insert_notification.sql") },
    Migration { version: 2, name: "jobs enqueued by jobs", sql: include_str!("migrations/0002_jobs_enqueued_by_jobs.sql") },
    Migration { version: 3, name: "key-value stores", sql: include_str!("migrations/0003_key_value_stores.sql") },
    Migration { version: 4, name: "kv store sizes", sql: include_str!("migrations/0004_kv_store_sizes.sql") },
    Migration { version: 5, name: "tenants", sql: include_str!("migrations/0005_tenants.sql") },
    Migration { version: 6, name: "tenant limits", sql: include_str!("migrations/0006_tenant_limits.sql") },
    Migration { version: 7, name: "tenant quotas", sql: include_str!("migrations/0007_tenant_quotas.sql") },
    Migration { version: 8, name: "concurrency keys", sql: include_str!("migrations/0008_concurrency_keys.sql") },
    Migration { version: 9, name: "retention", sql: include_str!("migrations/0009_retention.sql") },
    Migration { version: 10, name: "attempts", sql: include_str!("migrations/0010_attempts.sql") },
    Migration { version: 11, name: "job counts and list paths", sql: include_str!("migrations/0011_job_counts_and_list_paths.sql") },
    Migration { version: 12, name: "runs per minute", sql: include_str!("migrations/0012_runs_per_minute.sql") },
    Migration { version: 13, name: "trace context", sql: include_str!("migrations/0013_trace_context.sql") },
];

pub(super) async fn migrate(client: &mut deadpool_postgres::Object, schema: &str) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    match apply_migrations(&tx, schema).await {
        Ok(()) => tx.commit().await.map_err(pg_error),
        Err(e) => {
            // Release the lock now, not when the pool next uses the connection.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The migrations not yet applied, in `tx`, which holds the migration lock
/// of `schema` until it ends.
pub(super) async fn apply_migrations(tx: &deadpool_postgres::Transaction<'_>, schema: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&(MIGRATION_LOCK as i32), &schema]).await.map_err(pg_error)?;
    let tables: Vec<String> = tx
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", &[&schema])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !tables.is_empty() && !tables.iter().any(|t| t == "kiln_migrations") {
        return Err(StoreError::NotADatabase {
            path: format!("schema {schema:?}"),
            reason: format!("it holds tables of something else ({}); name another schema with `database_schema`", tables.join(", ")),
        });
    }
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS kiln_migrations (version bigint PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL);"
    ))
    .await
    .map_err(pg_error)?;
    let current: i64 =
        tx.query_one("SELECT coalesce(max(version), 0) FROM kiln_migrations", &[]).await.map_err(pg_error)?.get(0);
    let known = migration::latest(MIGRATIONS);
    if current > known {
        return Err(StoreError::SchemaTooNew { found: current, known });
    }
    for Migration { version, name, sql } in migration::pending(MIGRATIONS, current) {
        tx.batch_execute(sql).await.map_err(|e| StoreError::Database(format!("migration {version} ({name}): {}", pg_error(e))))?;
        let now = crate::queue::clock::Clock::now(&crate::queue::clock::SystemClock);
        tx.execute("INSERT INTO kiln_migrations (version, name, applied_at) VALUES ($1, $2, $3)", &[version, name, &now])
            .await
            .map_err(pg_error)?;
        tracing::info!(version, name, schema, "applied database migration");
    }
    Ok(())
}
