//! The schema: migrations, applied in order, each once, recorded in
//! `kiln_migrations`.

use super::rows::db_error;
use crate::queue::StoreError;
use crate::queue::migration::{self, Migration};
use rusqlite::{Connection, params};

/// The migrations, in order: each a file of `migrations/`, applied once,
/// recorded in `kiln_migrations` with its version and name.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "jobs and queues", sql: include_str!("migrations/0001_jobs_and_queues.sql") },
    Migration { version: 2, name: "schedules, loops and plugin versions", sql: include_str!("migrations/0002_schedules_loops_and_plugin_versions.sql") },
    Migration { version: 3, name: "jobs enqueued by jobs", sql: include_str!("migrations/0003_jobs_enqueued_by_jobs.sql") },
    Migration { version: 4, name: "key-value stores", sql: include_str!("migrations/0004_key_value_stores.sql") },
    Migration { version: 5, name: "kv store sizes", sql: include_str!("migrations/0005_kv_store_sizes.sql") },
    Migration { version: 6, name: "tenants", sql: include_str!("migrations/0006_tenants.sql") },
    Migration { version: 7, name: "tenant limits", sql: include_str!("migrations/0007_tenant_limits.sql") },
    Migration { version: 8, name: "tenant quotas", sql: include_str!("migrations/0008_tenant_quotas.sql") },
    Migration { version: 9, name: "concurrency keys", sql: include_str!("migrations/0009_concurrency_keys.sql") },
    Migration { version: 10, name: "retention", sql: include_str!("migrations/0010_retention.sql") },
    Migration { version: 11, name: "attempts", sql: include_str!("migrations/0011_attempts.sql") },
    Migration { version: 12, name: "job counts and list paths", sql: include_str!("migrations/0012_job_counts_and_list_paths.sql") },
    Migration { version: 13, name: "runs per minute", sql: include_str!("migrations/0013_runs_per_minute.sql") },
    Migration { version: 14, name: "trace context", sql: include_str!("migrations/0014_trace_context.sql") },
];

/// Applies what `conn`'s database has yet to apply, in one transaction;
/// a database newer than this build is refused.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS kiln_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);",
    )
    .map_err(db_error)?;
    let result = (|| {
        let current: i64 =
            conn.query_row("SELECT coalesce(max(version), 0) FROM kiln_migrations", [], |r| r.get(0)).map_err(db_error)?;
        let known = migration::latest(MIGRATIONS);
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        for Migration { version, name, sql } in migration::pending(MIGRATIONS, current) {
            conn.execute_batch(sql).map_err(|e| StoreError::Database(format!("migration {version} ({name}): {e}")))?;
            conn.execute(
                "INSERT INTO kiln_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, crate::queue::clock::Clock::now(&crate::queue::clock::SystemClock)],
            )
            .map_err(db_error)?;
            // Upgrading a database is news; making a new one is not.
            if current > 0 {
                tracing::info!(version, name, "applied database migration");
            } else {
                tracing::debug!(version, name, "applied database migration");
            }
        }
        Ok(())
    })();
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    conn.execute_batch(end).map_err(db_error)?;
    result
}
