//! The SQLite store: the conformance suite, and what only a file has
//! (permissions, foreign files, a full disk, migrations).

use super::connection::SqliteStore;
use super::rows::{JOB_COLUMNS, db_error};
use super::schema::MIGRATIONS;
use crate::queue::{JobStore, StoreError};
use rusqlite::Connection;
use std::sync::Arc;

#[test]
fn job_columns_counts_the_columns_a_job_is_read_from() {
    assert_eq!(columns!().split(',').count(), JOB_COLUMNS);
}
use crate::queue::clock::{ManualClock, SystemClock};

async fn sqlite_store() -> (Arc<dyn JobStore>, ManualClock, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let store = SqliteStore::open(&dir.path().join("kiln.db"), Arc::new(clock.clone())).unwrap();
    (Arc::new(store), clock, dir)
}

crate::queue::conformance::conformance_tests!(sqlite_store);

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let garbage = b"this is a text file, not a database\n".repeat(200);
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStore::open(&path, Arc::new(SystemClock)).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "the file is unchanged");
}

#[test]
fn a_new_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let _open = SqliteStore::open(&path, Arc::new(SystemClock)).unwrap();
    for file in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
}

#[test]
fn a_database_that_cannot_be_opened_is_not_called_foreign() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(&dir.path().join("missing-dir/kiln.db"), Arc::new(SystemClock)).unwrap_err();
    assert!(!matches!(err, StoreError::NotADatabase { .. }), "{err}");
    assert!(err.to_string().contains("cannot create"), "{err}");
}

#[test]
fn a_full_disk_is_the_store_being_unavailable() {
    let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
    assert!(matches!(db_error(full), StoreError::Unavailable(_)));
    let io = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_WRITE), None);
    assert!(matches!(db_error(io), StoreError::Unavailable(_)));
    let constraint = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT), None);
    assert!(matches!(db_error(constraint), StoreError::Database(_)));
}

#[test]
fn another_applications_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    Connection::open(&path).unwrap().execute_batch("CREATE TABLE invoices (id INTEGER);").unwrap();
    let err = SqliteStore::open(&path, Arc::new(SystemClock)).unwrap_err().to_string();
    assert!(err.contains("SQLite database of something else") && err.contains("invoices"), "{err}");
}

#[test]
fn migrations_run_once_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    drop(SqliteStore::open(&path, Arc::new(SystemClock)).unwrap());
    drop(SqliteStore::open(&path, Arc::new(SystemClock)).unwrap());
    let conn = Connection::open(&path).unwrap();
    let applied: i64 = conn.query_row("SELECT count(*) FROM kiln_migrations", [], |r| r.get(0)).unwrap();
    assert_eq!(applied, MIGRATIONS.len() as i64);
    conn.execute("INSERT INTO kiln_migrations VALUES (999, 'future', 0)", []).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path, Arc::new(SystemClock)).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 999, .. }), "{err}");
}

#[test]
fn the_migrations_folder_and_the_list_agree() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/queue/sqlite/migrations");
    crate::queue::migration::check_list(MIGRATIONS, &dir);
}

/// A database as a host of an older schema left it: migrations up to
/// `version` applied and recorded, a completed job, a waiting one and (from
/// version 4, when kv came) a kv entry, written as a host of that schema
/// writes them.
fn older_database(path: &std::path::Path, version: i64) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("CREATE TABLE kiln_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);").unwrap();
    for m in MIGRATIONS.iter().take_while(|m| m.version <= version) {
        conn.execute_batch(m.sql).unwrap();
        conn.execute("INSERT INTO kiln_migrations VALUES (?1, ?2, 0)", rusqlite::params![m.version, m.name]).unwrap();
    }
    conn.execute_batch(
        "INSERT INTO jobs (kind, queue, priority, payload, state, attempt, max_attempts, scheduled_at, created_at, result, finalized_at)
           VALUES ('echo', 'default', 0, CAST('{\"n\":1}' AS BLOB), 'completed', 1, 3, 1000, 1000, CAST('{\"n\":1}' AS BLOB), 1001);
         INSERT INTO jobs (kind, queue, priority, payload, state, attempt, max_attempts, scheduled_at, created_at)
           VALUES ('send-email', 'mail', 5, CAST('{\"to\":\"ada@example.com\"}' AS BLOB), 'available', 0, 3, 1000, 1000);",
    )
    .unwrap();
    if version >= 4 {
        conn.execute("INSERT INTO kv (namespace, store, key, value, updated_at) VALUES ('cleanup', 'default', 'k', CAST('v' AS BLOB), 1000)", []).unwrap();
    }
    if version >= 5 {
        // From version 5 a host keeps each store's size with its writes.
        conn.execute("INSERT INTO kv_usage (namespace, store, bytes) VALUES ('cleanup', 'default', 2)", []).unwrap();
    }
}

#[tokio::test]
async fn a_database_of_an_older_schema_runs_forward_with_nothing_lost() {
    for version in [1, 4, 6, 10, 11, 13, crate::queue::migration::latest(MIGRATIONS)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        older_database(&path, version);
        let store = SqliteStore::open(&path, Arc::new(SystemClock)).unwrap_or_else(|e| panic!("from version {version}: {e}"));
        crate::queue::conformance::check_migrated(&store, version, version >= 4).await;
    }
}
