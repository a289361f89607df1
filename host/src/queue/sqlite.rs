//! The embedded default backend: one SQLite file in WAL mode, created and
//! migrated by Kiln, with no set-up.
//!
//! One writer connection behind a mutex, used from tokio's blocking pool
//! (SQLite has one writer at a time anyway), and reads on reader threads of
//! their own, each with its own connection, taking work from one queue (WAL
//! lets them run beside the writer). Reads used to share one connection
//! behind a mutex from the blocking pool: with hundreds of runs reading kv
//! at once, hundreds of blocking threads queued on that mutex. `synchronous = NORMAL`: a committed
//! transaction survives a crash of the process (`kill -9`); only a power
//! loss can drop the last few commits.

use super::attempt::{Attempt, AttemptRun, AttemptSummary, Progress, logs_json, logs_of_json};
use super::clock::SharedClock;
use super::job::{AttemptError, Job, JobId, JobState, Lease, Millis};
use super::store::{
    AttemptLogs,
    ClaimParams, ClaimRounds, Claimed, HeldBack, KindGate, KindLimits, Limit, claim_cap, kind_bucket_name, rate_bucket_name, Finish, HeartbeatParams, HeartbeatResult, Inserted, JobList, JobStore, KvChange, KvWrite, ListFilter, LoopClaim, LoopLease, LoopSave, PruneParams,
    LoopState, MinuteRuns, NewJob, QueueInfo, ScheduleState, StateCount, StoreError, Transition, SCHEDULE_TICK_KEPT, schedule_key_range, schedule_tick_key, tick_of_key,
};
use async_trait::async_trait;
use rusqlite::types::Null;
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Migrations, applied in order, each once, recorded in `kiln_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
    1,
    "jobs and queues",
    r#"
    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        kind             TEXT    NOT NULL,
        queue            TEXT    NOT NULL,
        priority         INTEGER NOT NULL DEFAULT 0,
        payload          BLOB    NOT NULL,
        state            TEXT    NOT NULL,
        attempt          INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL,
        scheduled_at     INTEGER NOT NULL,
        unique_key       TEXT,
        errors           TEXT    NOT NULL DEFAULT '[]',
        result           BLOB,
        lease_token      INTEGER NOT NULL DEFAULT 0,
        leased_by        TEXT,
        lease_expires_at INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at       INTEGER NOT NULL,
        attempted_at     INTEGER,
        finalized_at     INTEGER
    );
    -- The claim query's path: due jobs of one queue, best first.
    CREATE INDEX jobs_due ON jobs (queue, priority DESC, scheduled_at, id)
        WHERE state IN ('available', 'scheduled', 'retryable');
    -- The rescuer's path.
    CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
    CREATE INDEX jobs_state_kind ON jobs (state, kind);
    -- One job per unique key outside the states a job is finished with for
    -- good (completed keeps its key, so a schedule's tick fires once).
    CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
        WHERE unique_key IS NOT NULL AND state NOT IN ('cancelled', 'dead');
    CREATE TABLE queues (
        name       TEXT PRIMARY KEY,
        paused     INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL
    );
    "#,
    ),
    (
        2,
        "schedules, loops and plugin versions",
        r#"
    ALTER TABLE jobs ADD COLUMN plugin_version TEXT;
    -- A schedule's ticks: its newest tick, its newest completed one.
    CREATE INDEX jobs_kind_key ON jobs (kind, unique_key) WHERE unique_key IS NOT NULL;
    CREATE TABLE loops (
        name             TEXT PRIMARY KEY,
        checkpoint       BLOB,
        passes           INTEGER NOT NULL DEFAULT 0,
        token            INTEGER NOT NULL DEFAULT 0,
        owner            TEXT,
        lease_expires_at INTEGER,
        updated_at       INTEGER NOT NULL
    );
    "#,
    ),
    (
        3,
        "jobs enqueued by jobs",
        r#"
    -- The job whose successful run enqueued this one.
    ALTER TABLE jobs ADD COLUMN parent_id INTEGER;
    CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
    "#,
    ),
    (
        4,
        "key-value stores",
        r#"
    -- What plugins keep (wasi:keyvalue), per plugin (`namespace`) and store.
    CREATE TABLE kv (
        namespace  TEXT    NOT NULL,
        store      TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        value      BLOB    NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, store, key)
    ) WITHOUT ROWID;
    "#,
    ),
    (
        5,
        "kv store sizes",
        r#"
    -- What each store holds (keys' and values' bytes), kept with every
    -- write, so a quota check reads one row instead of summing the store.
    CREATE TABLE kv_usage (
        namespace TEXT    NOT NULL,
        store     TEXT    NOT NULL,
        bytes     INTEGER NOT NULL,
        PRIMARY KEY (namespace, store)
    ) WITHOUT ROWID;
    INSERT INTO kv_usage (namespace, store, bytes)
        SELECT namespace, store, sum(length(key) + length(value)) FROM kv GROUP BY namespace, store;
    "#,
    ),
    (
        6,
        "tenants",
        r#"
    -- The tenant a job belongs to: its kind's prefix (`acme/echo` is
    -- acme's), NULL for the host's own kinds. Derived, so it can never
    -- disagree with the kind.
    ALTER TABLE jobs ADD COLUMN tenant TEXT
        GENERATED ALWAYS AS (CASE WHEN instr(kind, '/') > 0 THEN substr(kind, 1, instr(kind, '/') - 1) END) VIRTUAL;
    CREATE INDEX jobs_tenant ON jobs (tenant, id) WHERE tenant IS NOT NULL;
    -- A fair-share claim's path: one tenant's due jobs of one queue, best first.
    CREATE INDEX jobs_tenant_due ON jobs (queue, coalesce(tenant, ''), priority DESC, scheduled_at, id)
        WHERE state IN ('available', 'scheduled', 'retryable');
    "#,
    ),
    (
        7,
        "tenant limits",
        r#"
    -- max_running's count: a tenant's running jobs.
    CREATE INDEX jobs_running_tenant ON jobs (coalesce(tenant, '')) WHERE state = 'running';
    -- rate's token buckets: tokens left at updated_at.
    CREATE TABLE rate_buckets (
        name       TEXT    PRIMARY KEY,
        tokens     REAL    NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
    ),
    (
        8,
        "tenant quotas",
        r#"
    -- max_waiting's count: a tenant's waiting jobs.
    CREATE INDEX jobs_waiting_tenant ON jobs (coalesce(tenant, '')) WHERE state IN ('available', 'scheduled', 'retryable');
    "#,
    ),
    (
        9,
        "concurrency keys",
        r#"
    -- A job's group under its kind's max_per_key (a customer id, say).
    ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
    -- max_per_key's count: a kind's running jobs per key.
    CREATE INDEX jobs_running_key ON jobs (kind, concurrency_key) WHERE state = 'running' AND concurrency_key IS NOT NULL;
    "#,
    ),
    (
        10,
        "retention",
        r#"
    -- The pruner's paths: finished jobs by age, and each queue's newest.
    CREATE INDEX jobs_finished ON jobs (state, finalized_at) WHERE state IN ('completed', 'cancelled', 'dead');
    CREATE INDEX jobs_queue_finished ON jobs (queue, state, id) WHERE state IN ('completed', 'cancelled', 'dead');
    "#,
    ),
    (
        11,
        "attempts",
        r#"
    -- A running job's last reported progress (with the heartbeat).
    ALTER TABLE jobs ADD COLUMN progress_percent INTEGER;
    ALTER TABLE jobs ADD COLUMN progress_note TEXT;
    -- Each attempt as it ended, with its log lines (a JSON array).
    CREATE TABLE job_attempts (
        job_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        host TEXT NOT NULL,
        plugin_version TEXT,
        started_at INTEGER NOT NULL,
        ended_at INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        duration_ms REAL NOT NULL,
        fuel_used INTEGER NOT NULL,
        peak_memory_bytes INTEGER NOT NULL,
        http_requests INTEGER NOT NULL,
        log_bytes_dropped INTEGER NOT NULL,
        logs TEXT NOT NULL,
        PRIMARY KEY (job_id, attempt)
    );
    -- Whatever deletes a job (the pruner, a hand delete) deletes its attempts.
    CREATE TRIGGER job_attempts_go_with_their_job AFTER DELETE ON jobs
    BEGIN
        DELETE FROM job_attempts WHERE job_id = old.id;
    END;
    "#,
    ),
    (
        12,
        "job counts and list paths",
        r#"
    -- Jobs by queue, tenant ('' for the host's own) and state, kept by
    -- triggers as jobs come, move and go, so counting is a read of a few
    -- rows however many jobs there are (`/metrics`, `/queues`, quotas).
    CREATE TABLE job_counts (
        queue  TEXT    NOT NULL,
        tenant TEXT    NOT NULL,
        state  TEXT    NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (queue, tenant, state)
    ) WITHOUT ROWID;
    INSERT INTO job_counts (queue, tenant, state, n)
        SELECT queue, coalesce(tenant, ''), state, count(*) FROM jobs GROUP BY 1, 2, 3;
    CREATE TRIGGER jobs_counted_in AFTER INSERT ON jobs
    BEGIN
        INSERT INTO job_counts (queue, tenant, state, n) VALUES (new.queue, coalesce(new.tenant, ''), new.state, 1)
            ON CONFLICT (queue, tenant, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER jobs_counted_out AFTER DELETE ON jobs
    BEGIN
        UPDATE job_counts SET n = n - 1 WHERE queue = old.queue AND tenant = coalesce(old.tenant, '') AND state = old.state;
    END;
    CREATE TRIGGER jobs_counted_moved AFTER UPDATE OF state, queue ON jobs
        WHEN new.state IS NOT old.state OR new.queue IS NOT old.queue
    BEGIN
        INSERT INTO job_counts (queue, tenant, state, n)
            VALUES (old.queue, coalesce(old.tenant, ''), old.state, -1), (new.queue, coalesce(new.tenant, ''), new.state, 1)
            ON CONFLICT (queue, tenant, state) DO UPDATE SET n = n + excluded.n;
    END;
    -- A page of one state's jobs in id order (`GET /jobs?state=`) reads
    -- only its page: an index holds each row's id after its columns, so
    -- (state) is (state, id). It takes the place of (state, kind), which
    -- served only the count of a kind's pending jobs at plugin removal.
    DROP INDEX jobs_state_kind;
    CREATE INDEX jobs_state ON jobs (state);
    "#,
    ),
    (
        13,
        "runs per minute",
        r#"
    -- Each host's runs per minute, queue and kind, written by the host as
    -- the minute fills and kept for two hours: the dashboard's charts.
    CREATE TABLE run_minutes (
        minute       INTEGER NOT NULL,
        host         TEXT    NOT NULL,
        queue        TEXT    NOT NULL,
        kind         TEXT    NOT NULL,
        runs         INTEGER NOT NULL,
        failures     INTEGER NOT NULL,
        delay_ms_sum INTEGER NOT NULL,
        delay_ms_max INTEGER NOT NULL,
        PRIMARY KEY (minute, host, queue, kind)
    ) WITHOUT ROWID;
    "#,
    ),
    (
        14,
        "trace context",
        r#"
    -- The W3C traceparent a job's attempts' spans are children of.
    ALTER TABLE jobs ADD COLUMN traceparent TEXT;
    "#,
    ),
];

// SQL fragments as macros, so every statement below is one literal built at
// compile time (`concat!`), not formatted again for each job.
macro_rules! columns {
    () => {
        "id, kind, queue, priority, payload, state, attempt, max_attempts, scheduled_at, unique_key, \
         errors, result, lease_token, leased_by, lease_expires_at, cancel_requested, created_at, attempted_at, finalized_at, \
         plugin_version, parent_id, concurrency_key, progress_percent, progress_note, traceparent"
    };
}
/// How many columns `columns!()` names: a query that adds one of its own
/// reads it at this index.
const JOB_COLUMNS: usize = 25;
/// The states a claim takes jobs from (once due).
macro_rules! waiting {
    () => {
        "('available', 'scheduled', 'retryable')"
    };
}
macro_rules! clear_lease {
    () => {
        "leased_by = NULL, lease_expires_at = NULL"
    };
}
/// The fencing rule: a transition out of `running` names the current token.
/// `?9` is the plugin version that ran the attempt.
macro_rules! fence {
    () => {
        ", plugin_version = coalesce(?9, plugin_version) WHERE id = ?1 AND lease_token = ?2 AND state = 'running'"
    };
}
/// A job's tenant compared with a parameter that follows (`''`: the host's own).
macro_rules! tenant_is {
    () => {
        "coalesce(tenant, '') = "
    };
}
/// The states of a job not yet done with.
macro_rules! pending {
    () => {
        "('available', 'scheduled', 'retryable', 'running')"
    };
}

/// The SQLite job store.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    /// Where reads go: the reader threads take them in turn.
    reads: std::sync::mpsc::Sender<ReadWork>,
    clock: SharedClock,
}

/// One read, run on a reader thread's connection.
type ReadWork = Box<dyn FnOnce(&Connection) + Send>;

/// Reader threads (and connections): reads overlap each other and the writer.
const READERS: usize = 2;

/// Starts the reader threads, each on its own connection to `path`; they
/// end when the last sender (the last clone of the store) is gone.
fn start_readers(path: &Path, flags: OpenFlags) -> Result<std::sync::mpsc::Sender<ReadWork>, StoreError> {
    let (tx, rx) = std::sync::mpsc::channel::<ReadWork>();
    let rx = Arc::new(Mutex::new(rx));
    for n in 0..READERS {
        let conn = Connection::open_with_flags(path, flags).map_err(db_error)?;
        configure(&conn).map_err(db_error)?;
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("kiln-sqlite-read-{n}"))
            .spawn(move || {
                loop {
                    let next = rx.lock().expect("read queue poisoned").recv();
                    match next {
                        // A read that panics fails alone (its caller sees it dropped); the thread goes on.
                        Ok(work) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&conn)));
                        }
                        Err(_) => break,
                    }
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start an SQLite reader thread: {e}")))?;
    }
    Ok(tx)
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// SQLite's errors in Kiln's classes: a full disk, an I/O error, a file
/// that cannot be opened or a lock held too long are the store being
/// unavailable (try again: the data is intact); the rest are errors.
fn db_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(failure, _)
            if matches!(
                failure.code,
                ErrorCode::DiskFull
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::CannotOpen
                    | ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::ReadOnly
                    | ErrorCode::OutOfMemory
            ) =>
        {
            StoreError::Unavailable(format!("SQLite: {e}"))
        }
        _ => StoreError::Database(e.to_string()),
    }
}

/// Whether opening failed because the file is not an SQLite database at
/// all (as opposed to a disk or permission problem with a good one).
fn is_not_a_database(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ffi::ErrorCode::NotADatabase)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it. A
    /// file that is not an SQLite database, or an SQLite database that is
    /// not Kiln's, is refused without being changed.
    pub fn open(path: &Path, clock: SharedClock) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let not_a_db = |reason: String| StoreError::NotADatabase { path: shown.clone(), reason };
        // Only a file that really is not a database is called one; a full
        // disk or a permission problem says what it is, about a good file.
        let opening = |e: rusqlite::Error| {
            if is_not_a_database(&e) {
                not_a_db(e.to_string())
            } else {
                match db_error(e) {
                    StoreError::Unavailable(e) => StoreError::Unavailable(format!("cannot open {shown}: {e}")),
                    other => StoreError::Database(format!("cannot open {shown}: {other}")),
                }
            }
        };
        create_private(path).map_err(|e| StoreError::Unavailable(format!("cannot create {shown}: {e}")))?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let writer = Connection::open_with_flags(path, flags).map_err(opening)?;
        // The first read of the header: fails here, before any write, for a
        // file that is not a database.
        let tables: Vec<String> = writer
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(opening)?;
        if !tables.is_empty() && !tables.iter().any(|t| t == "kiln_migrations") {
            return Err(not_a_db(format!("it is an SQLite database of something else (tables: {})", tables.join(", "))));
        }
        configure(&writer).map_err(opening)?;
        migrate(&writer)?;
        let reads = start_readers(path, flags)?;
        Ok(Self { path: path.to_path_buf(), writer: Arc::new(Mutex::new(writer)), reads, clock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a write transaction on the blocking pool.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, Millis) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (writer, now) = (self.writer.clone(), self.clock.now());
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().expect("sqlite writer poisoned");
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_error)?;
            let result = f(&tx, now)?;
            tx.commit().map_err(db_error)?;
            Ok(result)
        })
        .await
        .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
    }

    /// Runs `f` on a reader thread's connection.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, Millis) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let now = self.clock.now();
        let (done, answer) = tokio::sync::oneshot::channel();
        let work: ReadWork = Box::new(move |conn| {
            let _ = done.send(f(conn, now));
        });
        self.reads.send(work).map_err(|_| StoreError::Database("the SQLite reader threads have stopped".into()))?;
        answer.await.map_err(|_| StoreError::Database("an SQLite read was dropped".into()))?
    }
}

/// Creates the database file readable and writable by its owner only (SQLite
/// gives its `-wal` and `-shm` files the same mode); an existing file is
/// left as it is.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The default 2 MB page cache holds a few thousand jobs; a busy queue's
    // hot pages (the due index, recent rows) are larger. 64 MiB of cache and
    // memory-mapped reads keep claims off the read() syscall path.
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
    // Claims use ephemeral tables (`IN (subquery)`, `RETURNING`) and
    // statement journals: keep them off disk.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Another process (a second host on the same file) may hold the write
    // lock briefly; wait for it rather than fail.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS kiln_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);",
    )
    .map_err(db_error)?;
    let result = (|| {
        let current: i64 =
            conn.query_row("SELECT coalesce(max(version), 0) FROM kiln_migrations", [], |r| r.get(0)).map_err(db_error)?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            conn.execute_batch(sql).map_err(|e| StoreError::Database(format!("migration {version} ({name}): {e}")))?;
            conn.execute(
                "INSERT INTO kiln_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, super::clock::Clock::now(&super::clock::SystemClock)],
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

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(5)?;
    let errors: String = row.get(10)?;
    Ok(Job {
        id: row.get(0)?,
        kind: row.get(1)?,
        queue: row.get(2)?,
        priority: row.get(3)?,
        payload: row.get(4)?,
        state: state.parse().map_err(|e: String| rusqlite::Error::InvalidColumnType(5, e, rusqlite::types::Type::Text))?,
        attempt: row.get(6)?,
        max_attempts: row.get(7)?,
        scheduled_at: row.get(8)?,
        unique_key: row.get(9)?,
        errors: serde_json::from_str(&errors).unwrap_or_default(),
        result: row.get(11)?,
        lease_token: row.get(12)?,
        leased_by: row.get(13)?,
        lease_expires_at: row.get(14)?,
        cancel_requested: row.get(15)?,
        created_at: row.get(16)?,
        attempted_at: row.get(17)?,
        finalized_at: row.get(18)?,
        plugin_version: row.get(19)?,
        parent_id: row.get(20)?,
        concurrency_key: row.get(21)?,
        progress: row.get::<_, Option<u8>>(22)?.map(|percent| Ok::<_, rusqlite::Error>(Progress { percent, note: row.get(23)? })).transpose()?,
        traceparent: row.get(24)?,
    })
}

fn get_job(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
    conn.prepare_cached(concat!("SELECT ", columns!(), " FROM jobs WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], job_from_row).optional())
        .map_err(db_error)
}

fn error_json(error: &AttemptError) -> String {
    serde_json::to_string(error).expect("attempt errors serialise")
}

/// Applies one transition; `Ok(false)` when the lease is not current.
fn apply(tx: &rusqlite::Transaction<'_>, finish: &Finish, now: Millis) -> rusqlite::Result<bool> {
    let Lease { id, token } = finish.lease;
    let changed = match &finish.transition {
        Transition::Complete { result, effects } => {
            let changed = tx
                .prepare_cached(concat!("UPDATE jobs SET state = 'completed', result = ?3, finalized_at = ?4, ", clear_lease!(), fence!()))?
                .execute(params![id, token, result, now, Null, Null, Null, Null, finish.ran_version])?;
            // The run's effects go in with its completion, or not at all.
            if changed == 1 {
                apply_kv(tx, &effects.kv, now)?;
                if !effects.children.is_empty() {
                    insert_jobs(tx, &effects.children, now)?;
                }
            }
            changed
        }
        // A job whose cancel was requested (perhaps on another host, not
        // yet heard here) is not run again: cancelled instead.
        Transition::RetryAt { at, error } => tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'retryable' END, \
                 finalized_at = CASE WHEN cancel_requested = 1 THEN ?5 END, cancel_requested = 0, \
                 scheduled_at = ?3, errors = json_insert(errors, '$[#]', json(?4)), ",
                clear_lease!(),
                fence!()
            ))?
            .execute(params![id, token, at, error_json(error), now, Null, Null, Null, finish.ran_version])?,
        Transition::Discard { error } => tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = 'dead', finalized_at = ?3, errors = json_insert(errors, '$[#]', json(?4)), ",
                clear_lease!(),
                fence!()
            ))?
            .execute(params![id, token, now, error_json(error), Null, Null, Null, Null, finish.ran_version])?,
        Transition::Snooze { at } => tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' WHEN ?3 > ?4 THEN 'scheduled' ELSE 'available' END, \
                 finalized_at = CASE WHEN cancel_requested = 1 THEN ?4 END, cancel_requested = 0, scheduled_at = ?3, \
                 attempt = max(attempt - 1, 0), ",
                clear_lease!(),
                fence!()
            ))?
            .execute(params![id, token, at, now, Null, Null, Null, Null, finish.ran_version])?,
        Transition::Cancel { error } => tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = 'cancelled', finalized_at = ?3, cancel_requested = 0, \
                 errors = json_insert(errors, '$[#]', json(?4)), ",
                clear_lease!(),
                fence!()
            ))?
            .execute(params![id, token, now, error_json(error), Null, Null, Null, Null, finish.ran_version])?,
    };
    if changed == 1 && !matches!(finish.transition, Transition::Snooze { .. }) {
        if let Some(run) = &finish.attempt {
            record_attempt(tx, id, run, finish.ran_version.as_deref())?;
        }
    }
    Ok(changed == 1)
}

/// Keeps `run` as job `id`'s current attempt (once: a second record of
/// one attempt is ignored), and its last progress on the job.
fn record_attempt(tx: &rusqlite::Transaction<'_>, id: JobId, run: &AttemptRun, version: Option<&str>) -> rusqlite::Result<()> {
    let a = &run.summary;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO job_attempts (job_id, attempt, host, plugin_version, started_at, ended_at, outcome, error, duration_ms, \
         fuel_used, peak_memory_bytes, http_requests, log_bytes_dropped, logs) \
         SELECT id, attempt, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13 FROM jobs WHERE id = ?1",
    )?
    .execute(params![
        id,
        a.host,
        version,
        a.started_at,
        a.ended_at,
        a.outcome,
        a.error,
        a.duration_ms,
        clamp_i64(a.fuel_used),
        clamp_i64(a.peak_memory_bytes),
        clamp_i64(a.http_requests),
        clamp_i64(a.log_bytes_dropped),
        logs_json(&run.logs)
    ])?;
    if let Some(progress) = &run.progress {
        tx.prepare_cached("UPDATE jobs SET progress_percent = ?2, progress_note = ?3 WHERE id = ?1")?.execute(params![id, progress.percent, progress.note])?;
    }
    Ok(())
}

/// A count as SQLite's integer (which is signed).
fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Applies kv writes in order. `Add` touches only a key that holds a
/// decimal number of at most 18 digits (or none: it starts from 0).
fn apply_kv(tx: &rusqlite::Transaction<'_>, writes: &[KvWrite], now: Millis) -> rusqlite::Result<()> {
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

/// Inserts jobs in order (and the queues they name); a job whose unique
/// key is held yields the job holding it.
fn insert_jobs(tx: &rusqlite::Transaction<'_>, jobs: &[NewJob], now: Millis) -> rusqlite::Result<Vec<Inserted>> {
    let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    for queue in queues {
        tx.prepare_cached("INSERT OR IGNORE INTO queues (name, paused, updated_at) VALUES (?1, 0, ?2)")?.execute(params![queue, now])?;
    }
    let mut inserted = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Some(key) = &job.unique_key {
            let existing = tx
                .prepare_cached(concat!("SELECT ", columns!(), " FROM jobs WHERE unique_key = ?1 AND state NOT IN ('cancelled', 'dead')"))?
                .query_row([key], job_from_row)
                .optional()?;
            if let Some(job) = existing {
                inserted.push(Inserted { job, created: false });
                continue;
            }
        }
        let scheduled_at = job.scheduled_at.unwrap_or(now).max(0);
        let state = if scheduled_at > now { JobState::Scheduled } else { JobState::Available };
        let row = tx
            .prepare_cached(concat!(
                "INSERT INTO jobs (kind, queue, priority, payload, state, max_attempts, scheduled_at, unique_key, created_at, parent_id, concurrency_key, traceparent) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING ",
                columns!()
            ))?
            .query_row(
                params![job.kind, job.queue, job.priority, job.payload, state.as_str(), job.max_attempts, scheduled_at, job.unique_key, now, job.parent_id, job.concurrency_key, job.traceparent],
                job_from_row,
            )?;
        inserted.push(Inserted { job: row, created: true });
    }
    Ok(inserted)
}

/// What a claim stamps on the jobs it takes: the host, the lease's end,
/// now, and the queue.
type ClaimLease<'a> = (&'a str, Millis, Millis, &'a str);

/// The claim statement: the best due jobs of queue `?4` (unless paused)
/// that pass `$filter`, at most `?5`, to running for host `?1` until `?2`.
macro_rules! claim_sql {
    ($filter:expr) => {
        concat!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
             leased_by = ?1, lease_expires_at = ?2, attempted_at = ?3 \
             WHERE id IN (SELECT id FROM jobs WHERE queue = ?4 AND ",
            $filter,
            "state IN ",
            waiting!(),
            " AND scheduled_at <= ?3 ORDER BY priority DESC, scheduled_at, id LIMIT ?5) \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?4 AND paused = 1) \
             RETURNING ",
            columns!()
        )
    };
}

/// The candidates of a gated claim: what [`claim_sql!`] would take of
/// queue `?1` due at `?2` that pass `$filter`, less the kinds of the JSON
/// array `?3` and the `kind_key`s of `?4`, at most `?5`: id, kind, key.
macro_rules! candidates_sql {
    ($filter:expr) => {
        concat!(
            "SELECT id, kind, concurrency_key FROM jobs WHERE queue = ?1 AND ",
            $filter,
            "state IN ",
            waiting!(),
            " AND scheduled_at <= ?2 AND kind NOT IN (SELECT value FROM json_each(?3)) \
               AND (concurrency_key IS NULL OR kind || char(31) || concurrency_key NOT IN (SELECT value FROM json_each(?4))) \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused = 1) \
             ORDER BY priority DESC, scheduled_at, id LIMIT ?5"
        )
    };
}

/// Takes up to `limit` of the best due jobs of the lease's queue: of one
/// tenant's (`""`: the host's own kinds), or, with `None`, of anyone's;
/// with a gate, only those it admits.
fn claim_of(
    tx: &rusqlite::Transaction<'_>,
    lease: ClaimLease<'_>,
    tenant: Option<&str>,
    limit: usize,
    gate: Option<&mut KindGate>,
) -> rusqlite::Result<Vec<Job>> {
    if let Some(gate) = gate {
        return claim_gated(tx, lease, tenant, limit, gate);
    }
    let (host, until, now, queue) = lease;
    let limit = limit as i64;
    match tenant {
        None => tx.prepare_cached(claim_sql!(""))?.query_map(params![host, until, now, queue, limit], job_from_row)?.collect(),
        Some(tenant) => tx
            .prepare_cached(claim_sql!(concat!(tenant_is!(), "?6 AND ")))?
            .query_map(params![host, until, now, queue, limit, tenant], job_from_row)?
            .collect(),
    }
}

/// [`claim_of`] through a gate: looks at the best candidates, takes those
/// the gate admits, and looks again without the kinds and keys it refused
/// until it has `limit` or there are no more. Each look that falls short
/// of `limit` refused one more kind or key, so it ends; a key at its limit
/// costs the looks after it a skip past its jobs, never a wait behind them.
fn claim_gated(
    tx: &rusqlite::Transaction<'_>,
    (host, until, now, queue): ClaimLease<'_>,
    tenant: Option<&str>,
    limit: usize,
    gate: &mut KindGate,
) -> rusqlite::Result<Vec<Job>> {
    let mut jobs = Vec::with_capacity(limit);
    while jobs.len() < limit {
        let want = limit - jobs.len();
        let (kinds, keys) = gate.excluded();
        let (kinds, keys) = (json_list(&kinds), json_list(&keys));
        let row = |r: &rusqlite::Row<'_>| Ok((r.get::<_, JobId>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?));
        let seen: Vec<(JobId, String, Option<String>)> = match tenant {
            None => tx.prepare_cached(candidates_sql!(""))?.query_map(params![queue, now, kinds, keys, want as i64], row)?.collect::<Result<_, _>>()?,
            Some(tenant) => tx
                .prepare_cached(candidates_sql!(concat!(tenant_is!(), "?6 AND ")))?
                .query_map(params![queue, now, kinds, keys, want as i64, tenant], row)?
                .collect::<Result<_, _>>()?,
        };
        let admitted: Vec<JobId> = seen.iter().filter(|(_, kind, key)| gate.admit(kind, key.as_deref())).map(|(id, _, _)| *id).collect();
        let taken: Vec<Job> = tx
            .prepare_cached(concat!(
                "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
                 leased_by = ?1, lease_expires_at = ?2, attempted_at = ?3 WHERE id IN (SELECT value FROM json_each(?4)) RETURNING ",
                columns!()
            ))?
            .query_map(params![host, until, now, json_list(&admitted)], job_from_row)?
            .collect::<Result<_, _>>()?;
        jobs.extend(taken);
        if seen.len() < want || admitted.len() == seen.len() {
            break;
        }
    }
    Ok(jobs)
}

/// A JSON array of `items`, for `json_each`.
fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("strings and numbers serialize")
}

/// The gate of the claim's kinds, from what the store holds now: their
/// buckets and their keys' running jobs (`None` when it names no kind).
fn open_gate(tx: &rusqlite::Transaction<'_>, kinds: &[KindLimits], now: Millis) -> rusqlite::Result<Option<KindGate>> {
    if kinds.is_empty() {
        return Ok(None);
    }
    let keyed: Vec<&str> = kinds.iter().filter(|k| k.max_per_key.is_some()).map(|k| k.kind.as_str()).collect();
    let running: Vec<((String, String), u64)> = tx
        .prepare_cached(
            "SELECT kind, concurrency_key, count(*) FROM jobs \
             WHERE state = 'running' AND concurrency_key IS NOT NULL AND kind IN (SELECT value FROM json_each(?1)) GROUP BY kind, concurrency_key",
        )?
        .query_map([json_list(&keyed)], |r| Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u64)))?
        .collect::<Result<_, _>>()?;
    let mut buckets = std::collections::HashMap::new();
    for limits in kinds {
        let Some(rate) = limits.rate else { continue };
        let stored: Option<(f64, i64)> = tx
            .prepare_cached("SELECT tokens, updated_at FROM rate_buckets WHERE name = ?1")?
            .query_row([kind_bucket_name(&limits.kind)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((tokens, at)) = stored {
            buckets.insert(limits.kind.clone(), rate.refill(tokens, at, now));
        }
    }
    Ok(Some(KindGate::new(kinds, |kind| buckets.get(kind).copied(), running)))
}

/// Stores a bucket's tokens as of `now`.
fn save_bucket(tx: &rusqlite::Transaction<'_>, name: &str, tokens: f64, now: Millis) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO rate_buckets (name, tokens, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
    )?
    .execute(params![name, tokens, now])?;
    Ok(())
}

/// A claim, in the writer's transaction (so no other claim runs beside
/// it: the counts and buckets it reads stay true until it commits).
fn claim_shares(tx: &rusqlite::Transaction<'_>, p: &ClaimParams, now: Millis) -> rusqlite::Result<Claimed> {
    let lease = (p.host.as_str(), now + p.lease_ms, now, p.queue.as_str());
    let mut gate = open_gate(tx, &p.kinds, now)?;
    let mut claimed = claim_tenants(tx, p, lease, gate.as_mut())?;
    if let Some(gate) = gate {
        for (name, tokens) in gate.buckets() {
            save_bucket(tx, &name, tokens, now)?;
        }
        claimed.held_back.extend(gate.held_back(now));
    }
    sort_best_first(&mut claimed.jobs);
    Ok(claimed)
}

/// The claim by tenants' shares (or of anyone's, with none).
fn claim_tenants(tx: &rusqlite::Transaction<'_>, p: &ClaimParams, lease: ClaimLease<'_>, mut gate: Option<&mut KindGate>) -> rusqlite::Result<Claimed> {
    let now = lease.2;
    let mut jobs = Vec::with_capacity(p.limit);
    if p.shares.is_empty() {
        jobs = claim_of(tx, lease, None, p.limit, gate)?;
        return Ok(Claimed { jobs, held_back: Vec::new() });
    }
    // Each share's cap from its limits, and its bucket's tokens now.
    let mut caps = Vec::with_capacity(p.shares.len());
    for share in &p.shares {
        let tenant = share.tenant.as_deref().unwrap_or("");
        let running: i64 = match share.limits.max_running {
            Some(_) => tx.prepare_cached(concat!("SELECT count(*) FROM jobs WHERE state = 'running' AND ", tenant_is!(), "?1"))?.query_row([tenant], |r| r.get(0))?,
            None => 0,
        };
        let tokens = match share.limits.rate {
            Some(rate) => {
                let stored: Option<(f64, i64)> = tx
                    .prepare_cached("SELECT tokens, updated_at FROM rate_buckets WHERE name = ?1")?
                    .query_row([rate_bucket_name(share.tenant.as_deref())], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                Some(stored.map_or(f64::from(rate.count), |(tokens, at)| rate.refill(tokens, at, now)))
            }
            None => None,
        };
        caps.push((claim_cap(&share.limits, running as u64, tokens), tokens));
    }
    let mut rounds = ClaimRounds::new(&p.shares, &caps.iter().map(|c| c.0.0).collect::<Vec<_>>(), p.limit);
    let mut got = vec![0usize; p.shares.len()];
    while let Some((i, take)) = rounds.next() {
        let claimed = claim_of(tx, lease, Some(p.shares[i].tenant.as_deref().unwrap_or("")), take, gate.as_deref_mut())?;
        rounds.took(i, take, claimed.len());
        got[i] += claimed.len();
        jobs.extend(claimed);
    }
    let mut held_back = Vec::new();
    for (i, share) in p.shares.iter().enumerate() {
        let ((cap, by), tokens) = caps[i];
        let left = tokens.map(|t| t - got[i] as f64);
        if let Some(left) = left {
            save_bucket(tx, &rate_bucket_name(share.tenant.as_deref()), left, now)?;
        }
        let Some(by) = by else { continue };
        let tenant = share.tenant.as_deref().unwrap_or("");
        if got[i] >= cap && !rounds.is_exhausted(i) && has_due(tx, lease, tenant)? {
            let until = match (by, share.limits.rate, left) {
                (Limit::Rate, Some(rate), Some(left)) => Some(rate.next_token_at(left, now)),
                _ => None,
            };
            held_back.push(HeldBack { tenant: share.tenant.clone(), kind: None, by, until });
        }
    }
    Ok(Claimed { jobs, held_back })
}

/// What the pruner never deletes: a job `j` that is its schedule's newest
/// tick, or its newest completed one (the next tick's checkpoint).
macro_rules! kept_tick {
    () => {
        "(j.unique_key IS NOT NULL AND substr(j.unique_key, 1, 9) = 'schedule:' AND j.unique_key IN ( \
           (SELECT max(s.unique_key) FROM jobs s WHERE s.kind = j.kind \
              AND s.unique_key >= 'schedule:' || j.kind || ':' AND s.unique_key < 'schedule:' || j.kind || ';'), \
           (SELECT max(s.unique_key) FROM jobs s WHERE s.kind = j.kind AND s.state = 'completed' \
              AND s.unique_key >= 'schedule:' || j.kind || ':' AND s.unique_key < 'schedule:' || j.kind || ';')))"
    };
}

/// The pruner's transaction: by age first, then each queue past its newest `keep_per_queue`.
fn prune_jobs(tx: &rusqlite::Transaction<'_>, p: &PruneParams) -> rusqlite::Result<u64> {
    let state = p.state.as_str();
    let mut deleted = tx
        .prepare_cached(concat!(
            "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j WHERE j.state = ?1 AND j.finalized_at < ?2 AND NOT ",
            kept_tick!(),
            " ORDER BY j.finalized_at LIMIT ?3)"
        ))?
        .execute(params![state, p.finalized_before, p.limit as i64])? as u64;
    let queues: Vec<String> = tx.prepare_cached("SELECT name FROM queues ORDER BY name")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    for queue in queues {
        let left = p.limit as u64 - deleted;
        if left == 0 {
            break;
        }
        let cutoff: Option<JobId> = tx
            .prepare_cached("SELECT id FROM jobs WHERE queue = ?1 AND state = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3")?
            .query_row(params![queue, state, p.keep_per_queue as i64], |r| r.get(0))
            .optional()?;
        let Some(cutoff) = cutoff else { continue };
        deleted += tx
            .prepare_cached(concat!(
                "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j WHERE j.queue = ?1 AND j.state = ?2 AND j.id <= ?3 AND NOT ",
                kept_tick!(),
                " ORDER BY j.id LIMIT ?4)"
            ))?
            .execute(params![queue, state, cutoff, left as i64])? as u64;
    }
    Ok(deleted)
}

/// Best first: as the claim query orders them.
fn sort_best_first(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.scheduled_at.cmp(&b.scheduled_at)).then(a.id.cmp(&b.id)));
}

/// Whether one of `tenant`'s jobs of the lease's queue is due and waiting.
fn has_due(tx: &rusqlite::Transaction<'_>, (_, _, now, queue): ClaimLease<'_>, tenant: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached(concat!(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND ",
        tenant_is!(),
        "?2 AND state IN ",
        waiting!(),
        " AND scheduled_at <= ?3)"
    ))?
    .query_row(params![queue, tenant, now], |r| r.get(0))
}

/// The first string after every string that starts with `prefix` (`None`:
/// there is none, or the prefix is empty and every key matches).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn insert_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError> {
        self.write(move |tx, now| insert_jobs(tx, &jobs, now).map_err(db_error)).await
    }

    async fn claim_fair(&self, p: ClaimParams) -> Result<Claimed, StoreError> {
        self.write(move |tx, now| claim_shares(tx, &p, now).map_err(db_error)).await
    }

    async fn heartbeat(&self, p: HeartbeatParams) -> Result<HeartbeatResult, StoreError> {
        self.write(move |tx, now| {
            let mut result = HeartbeatResult::default();
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE jobs SET lease_expires_at = ?3 WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
                     RETURNING cancel_requested",
                )
                .map_err(db_error)?;
            for lease in p.leases {
                let cancel: Option<bool> =
                    stmt.query_row(params![lease.id, lease.token, now + p.lease_ms], |r| r.get(0)).optional().map_err(db_error)?;
                match cancel {
                    None => result.lost.push(lease),
                    Some(true) => result.cancel_requested.push(lease),
                    Some(false) => {}
                }
            }
            let mut progress = tx
                .prepare_cached(
                    "UPDATE jobs SET progress_percent = ?3, progress_note = ?4 WHERE id = ?1 AND lease_token = ?2 AND state = 'running'",
                )
                .map_err(db_error)?;
            for (lease, p) in &p.progress {
                progress.execute(params![lease.id, lease.token, p.percent, p.note]).map_err(db_error)?;
            }
            Ok(result)
        })
        .await
    }

    async fn finish_many(&self, finishes: Vec<Finish>) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.write(move |tx, now| {
            finishes
                .iter()
                .map(|f| match apply(tx, f, now) {
                    Ok(true) => Ok(Ok(())),
                    Ok(false) => Ok(Err(StoreError::StaleLease { id: f.lease.id, token: f.lease.token })),
                    Err(e) => Err(db_error(e)),
                })
                .collect()
        })
        .await
    }

    async fn cancel(&self, id: JobId) -> Result<Job, StoreError> {
        self.write(move |tx, now| {
            let job = get_job(tx, id)?.ok_or(StoreError::NotFound(id))?;
            match job.state {
                JobState::Running => {
                    tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id]).map_err(db_error)?;
                }
                state if state.is_final() => return Err(StoreError::InvalidState { id, state, action: "cancel" }),
                _ => {
                    tx.execute(
                        "UPDATE jobs SET state = 'cancelled', finalized_at = ?2 WHERE id = ?1",
                        params![id, now],
                    )
                    .map_err(db_error)?;
                }
            }
            get_job(tx, id)?.ok_or(StoreError::NotFound(id))
        })
        .await
    }

    async fn rescue_expired(&self, spare: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let spare = serde_json::to_string(spare).expect("ids serialise");
        self.write(move |tx, now| {
            let expired: Vec<(JobId, u32, u32, Option<String>, bool)> = tx
                .prepare_cached(
                    "SELECT id, attempt, max_attempts, leased_by, cancel_requested FROM jobs WHERE state = 'running' AND lease_expires_at < ?1 \
                     AND id NOT IN (SELECT value FROM json_each(?2))",
                )
                .and_then(|mut s| s.query_map(params![now, spare], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?.collect())
                .map_err(db_error)?;
            for (id, attempt, max_attempts, host, cancel_requested) in &expired {
                let error = AttemptError {
                    attempt: *attempt,
                    at: now,
                    outcome: "lease_expired".into(),
                    message: format!(
                        "the lease of host {} expired: the host stopped or lost touch with the store",
                        host.as_deref().unwrap_or("?")
                    ),
                };
                let (state, finalized) = match () {
                    () if *cancel_requested => ("cancelled", Some(now)),
                    () if attempt >= max_attempts => ("dead", Some(now)),
                    () => ("retryable", None),
                };
                tx.prepare_cached(
                    "UPDATE jobs SET state = ?2, scheduled_at = min(scheduled_at, ?3), finalized_at = ?4, leased_by = NULL, lease_expires_at = NULL, \
                     cancel_requested = 0, errors = json_insert(errors, '$[#]', json(?5)) WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, state, now, finalized, error_json(&error)]))
                .map_err(db_error)?;
            }
            Ok(expired.into_iter().map(|e| e.0).collect())
        })
        .await
    }

    async fn retry_by_hand(&self, id: JobId) -> Result<Job, StoreError> {
        self.write(move |tx, now| {
            let job = get_job(tx, id)?.ok_or(StoreError::NotFound(id))?;
            if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
                return Err(StoreError::InvalidState { id, state: job.state, action: "retry" });
            }
            tx.execute(
                "UPDATE jobs SET state = 'available', max_attempts = max(max_attempts, attempt + 1), scheduled_at = ?2, \
                 finalized_at = NULL, result = NULL, cancel_requested = 0 WHERE id = ?1",
                params![id, now],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    let key = job.unique_key.clone().unwrap_or_default();
                    let existing = tx
                        .query_row(
                            "SELECT id FROM jobs WHERE unique_key = ?1 AND state NOT IN ('cancelled', 'dead')",
                            [&key],
                            |r| r.get(0),
                        )
                        .unwrap_or(0);
                    StoreError::UniqueConflict { key, existing }
                } else {
                    db_error(e)
                }
            })?;
            get_job(tx, id)?.ok_or(StoreError::NotFound(id))
        })
        .await
    }

    async fn delete_by_hand(&self, id: JobId) -> Result<Job, StoreError> {
        self.write(move |tx, _| {
            let job = get_job(tx, id)?.ok_or(StoreError::NotFound(id))?;
            if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
                return Err(StoreError::InvalidState { id, state: job.state, action: "delete" });
            }
            if let Some(key) = schedule_tick_key(&job) {
                let (start, end) = schedule_key_range(&job.kind);
                let newest: Option<String> = tx
                    .query_row("SELECT max(unique_key) FROM jobs WHERE kind = ?1 AND unique_key >= ?2 AND unique_key < ?3", params![job.kind, start, end], |r| r.get(0))
                    .map_err(db_error)?;
                if newest.as_deref() == Some(key) {
                    return Err(StoreError::Kept { id, reason: SCHEDULE_TICK_KEPT });
                }
            }
            tx.execute("DELETE FROM jobs WHERE id = ?1", [id]).map_err(db_error)?;
            Ok(job)
        })
        .await
    }

    async fn prune(&self, p: PruneParams) -> Result<u64, StoreError> {
        self.write(move |tx, _| prune_jobs(tx, &p).map_err(db_error)).await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.read(move |conn, _| get_job(conn, id)).await
    }

    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>, StoreError> {
        self.read(move |conn, _| {
            conn.prepare_cached(
                "SELECT attempt, host, plugin_version, started_at, ended_at, outcome, error, duration_ms, fuel_used, peak_memory_bytes, \
                 http_requests, log_bytes_dropped FROM job_attempts WHERE job_id = ?1 ORDER BY attempt",
            )
            .and_then(|mut s| {
                s.query_map([id], |r| {
                    let count = |i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
                    Ok(Attempt {
                        attempt: r.get(0)?,
                        plugin_version: r.get(2)?,
                        summary: AttemptSummary {
                            host: r.get(1)?,
                            started_at: r.get(3)?,
                            ended_at: r.get(4)?,
                            outcome: r.get(5)?,
                            error: r.get(6)?,
                            duration_ms: r.get(7)?,
                            fuel_used: count(8)?,
                            peak_memory_bytes: count(9)?,
                            http_requests: count(10)?,
                            log_bytes_dropped: count(11)?,
                        },
                    })
                })?
                .collect()
            })
            .map_err(db_error)
        })
        .await
    }

    async fn attempt_logs(&self, id: JobId, attempt: Option<u32>, max_bytes: u64) -> Result<AttemptLogs, StoreError> {
        self.read(move |conn, _| {
            // Sizes first (length() reads no text), then only the attempts that fit.
            let rows: Vec<(u32, String, i64)> = conn
                .prepare_cached(
                    "WITH sized AS (SELECT attempt, sum(length(CAST(logs AS BLOB))) OVER (ORDER BY attempt) - length(CAST(logs AS BLOB)) AS before, \
                       row_number() OVER (ORDER BY attempt) AS n, count(*) OVER () AS total \
                       FROM job_attempts WHERE job_id = ?1 AND (?2 IS NULL OR attempt = ?2)) \
                     SELECT a.attempt, a.logs, sized.total FROM job_attempts a JOIN sized ON sized.attempt = a.attempt \
                     WHERE a.job_id = ?1 AND (sized.before < ?3 OR sized.n = 1) ORDER BY a.attempt",
                )
                .and_then(|mut s| s.query_map(params![id, attempt, clamp_i64(max_bytes)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
                .map_err(db_error)?;
            let more = rows.first().is_some_and(|r| r.2 > rows.len() as i64);
            let lines = rows.into_iter().flat_map(|(n, logs, _)| logs_of_json(&logs).into_iter().map(move |l| (n, l))).collect();
            Ok(AttemptLogs { lines, more })
        })
        .await
    }

    async fn list(&self, filter: ListFilter) -> Result<JobList, StoreError> {
        self.read(move |conn, _| {
            let mut clauses = Vec::new();
            let mut values: Vec<Box<dyn ToSql>> = Vec::new();
            if let Some(state) = filter.state {
                values.push(Box::new(state.as_str()));
                clauses.push(format!("state = ?{}", values.len()));
            }
            if let Some(kind) = filter.kind {
                values.push(Box::new(kind));
                clauses.push(format!("kind = ?{}", values.len()));
            }
            if let Some(tenant) = filter.tenant {
                values.push(Box::new(tenant));
                clauses.push(format!("tenant = ?{}", values.len()));
            }
            if let Some(queue) = filter.queue {
                values.push(Box::new(queue));
                clauses.push(format!("queue = ?{}", values.len()));
            }
            let (beyond, order) = if filter.newest_first { ("<", "DESC") } else { (">", "ASC") };
            if let Some(after) = filter.after_id {
                values.push(Box::new(after));
                clauses.push(format!("id {beyond} ?{}", values.len()));
            }
            let filter_sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
            values.push(Box::new(filter.limit as i64));
            let limit = values.len();
            values.push(Box::new(i64::try_from(filter.max_bytes).unwrap_or(i64::MAX)));
            // Sizes first (length() reads no blob), one job more than the
            // page to learn whether there are more, then only the rows that
            // fit the byte bound.
            let sql = format!(
                "WITH page AS (SELECT id, length(payload) + coalesce(length(result), 0) + length(CAST(errors AS BLOB)) AS size \
                   FROM jobs {filter_sql} ORDER BY id {order} LIMIT ?{limit} + 1), \
                 fitting AS (SELECT id, row_number() OVER (ORDER BY id {order}) AS n, \
                   sum(size) OVER (ORDER BY id {order}) - size AS before FROM page) \
                 SELECT {}, (SELECT count(*) FROM page) FROM jobs \
                 WHERE id IN (SELECT id FROM fitting WHERE before < ?{} AND n <= ?{limit}) ORDER BY id {order}",
                columns!(),
                values.len()
            );
            let params: Vec<&dyn ToSql> = values.iter().map(|v| v.as_ref()).collect();
            let rows: Vec<(Job, i64)> = conn
                .prepare(&sql)
                .and_then(|mut s| s.query_map(params.as_slice(), |r| Ok((job_from_row(r)?, r.get(JOB_COLUMNS)?)))?.collect())
                .map_err(db_error)?;
            let matched = rows.first().map_or(0, |r| r.1) as usize;
            let jobs: Vec<Job> = rows.into_iter().map(|r| r.0).collect();
            Ok(JobList { more: matched > jobs.len(), jobs })
        })
        .await
    }

    async fn counts(&self) -> Result<Vec<StateCount>, StoreError> {
        self.read(|conn, _| {
            let rows: Vec<(String, Option<String>, String, i64)> = conn
                .prepare_cached("SELECT queue, nullif(tenant, ''), state, n FROM job_counts WHERE n <> 0 ORDER BY queue, tenant, state")
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect())
                .map_err(db_error)?;
            rows.into_iter()
                .map(|(queue, tenant, state, count)| {
                    Ok(StateCount { queue, tenant, state: state.parse().map_err(StoreError::Database)?, count: count as u64 })
                })
                .collect()
        })
        .await
    }

    async fn next_due(&self, queue: &str) -> Result<Option<Millis>, StoreError> {
        let queue = queue.to_string();
        self.read(move |conn, _| {
            conn.prepare_cached(next_due_sql!("?1"))
                .and_then(|mut s| s.query_row([queue], |r| r.get(0)))
                .map_err(db_error)
        })
        .await
    }

    async fn pause_queue(&self, queue: &str) -> Result<(), StoreError> {
        self.set_paused(queue, true).await
    }

    async fn resume_queue(&self, queue: &str) -> Result<(), StoreError> {
        self.set_paused(queue, false).await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.read(|conn, _| {
            conn.prepare_cached("SELECT name, paused FROM queues ORDER BY name")
                .and_then(|mut s| s.query_map([], |r| Ok(QueueInfo { name: r.get(0)?, paused: r.get(1)? }))?.collect())
                .map_err(db_error)
        })
        .await
    }

    async fn pending_count(&self, kind: &str) -> Result<u64, StoreError> {
        let kind = kind.to_string();
        self.read(move |conn, _| {
            conn.prepare_cached(concat!("SELECT count(*) FROM jobs WHERE state IN ", pending!(), " AND kind = ?1"))
                .and_then(|mut s| s.query_row([kind], |r| r.get::<_, i64>(0)))
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }

    async fn waiting_count(&self, tenant: Option<&str>) -> Result<u64, StoreError> {
        let tenant = tenant.unwrap_or("").to_string();
        self.read(move |conn, _| {
            conn.prepare_cached(concat!("SELECT coalesce(sum(n), 0) FROM job_counts WHERE tenant = ?1 AND state IN ", waiting!()))
                .and_then(|mut s| s.query_row([tenant], |r| r.get::<_, i64>(0)))
                .map(|n| n.max(0) as u64)
                .map_err(db_error)
        })
        .await
    }

    async fn schedule_state(&self, kind: &str) -> Result<ScheduleState, StoreError> {
        let kind = kind.to_string();
        self.read(move |conn, _| {
            let (start, end) = schedule_key_range(&kind);
            let (last, active): (Option<String>, bool) = conn
                .prepare_cached(concat!(
                    "SELECT (SELECT max(unique_key) FROM jobs WHERE kind = ?1 AND unique_key >= ?2 AND unique_key < ?3), \
                            EXISTS (SELECT 1 FROM jobs WHERE state IN ",
                    pending!(),
                    " AND kind = ?1 AND unique_key >= ?2 AND unique_key < ?3)"
                ))
                .and_then(|mut s| s.query_row(params![kind, start, end], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(db_error)?;
            Ok(ScheduleState { last_tick: last.as_deref().and_then(tick_of_key), active })
        })
        .await
    }

    async fn schedule_checkpoint(&self, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let kind = kind.to_string();
        self.read(move |conn, _| {
            let (start, end) = schedule_key_range(&kind);
            conn.prepare_cached(
                "SELECT result FROM jobs WHERE kind = ?1 AND unique_key >= ?2 AND unique_key < ?3 AND state = 'completed' \
                 ORDER BY unique_key DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![kind, start, end], |r| r.get::<_, Option<Vec<u8>>>(0)).optional())
            .map(Option::flatten)
            .map_err(db_error)
        })
        .await
    }

    async fn acquire_loop(&self, claim: LoopClaim) -> Result<Option<LoopLease>, StoreError> {
        self.write(move |tx, now| {
            tx.prepare_cached("INSERT INTO loops (name, updated_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")
                .and_then(|mut s| s.execute(params![claim.name, now]))
                .map_err(db_error)?;
            tx.prepare_cached(
                "UPDATE loops SET token = token + 1, owner = ?2, lease_expires_at = ?3 + ?4, updated_at = ?3 \
                 WHERE name = ?1 AND (owner IS NULL OR owner = ?2 OR lease_expires_at < ?3) RETURNING token, checkpoint, passes",
            )
            .and_then(|mut s| {
                s.query_row(params![claim.name, claim.host, now, claim.lease_ms], |r| {
                    Ok(LoopLease { name: claim.name.clone(), token: r.get(0)?, checkpoint: r.get(1)?, passes: r.get::<_, i64>(2)? as u64 })
                })
                .optional()
            })
            .map_err(db_error)
        })
        .await
    }

    async fn save_loop(&self, save: LoopSave) -> Result<(), StoreError> {
        self.write(move |tx, now| {
            let stored = save.checkpoint.is_some();
            let changed = tx
                .prepare_cached(
                    "UPDATE loops SET checkpoint = CASE WHEN ?3 THEN ?4 ELSE checkpoint END, passes = passes + ?3, \
                     lease_expires_at = ?5 + ?6, updated_at = ?5 WHERE name = ?1 AND token = ?2 AND owner IS NOT NULL",
                )
                .and_then(|mut s| s.execute(params![save.name, save.token, stored, save.checkpoint, now, save.lease_ms]))
                .map_err(db_error)?;
            if changed == 1 { Ok(()) } else { Err(StoreError::LoopLost { name: save.name, token: save.token }) }
        })
        .await
    }

    async fn release_loop(&self, name: &str, token: i64) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |tx, now| {
            let changed = tx
                .prepare_cached("UPDATE loops SET owner = NULL, lease_expires_at = NULL, updated_at = ?3 WHERE name = ?1 AND token = ?2")
                .and_then(|mut s| s.execute(params![name, token, now]))
                .map_err(db_error)?;
            if changed == 1 { Ok(()) } else { Err(StoreError::LoopLost { name, token }) }
        })
        .await
    }

    async fn kv_get(&self, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (namespace, store, key) = (namespace.to_string(), store.to_string(), key.to_string());
        self.read(move |conn, _| {
            conn.prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND store = ?2 AND key = ?3")
                .and_then(|mut s| s.query_row(params![namespace, store, key], |r| r.get(0)).optional())
                .map_err(db_error)
        })
        .await
    }

    async fn kv_keys(&self, namespace: &str, store: &str, prefix: &str, offset: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let (namespace, store) = (namespace.to_string(), store.to_string());
        // Keys from `prefix` up to (not including) the first key past every key that starts with it.
        let (start, end) = (prefix.to_string(), prefix_end(prefix));
        self.read(move |conn, _| {
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

    async fn kv_usage(&self, namespace: &str, store: &str) -> Result<u64, StoreError> {
        let (namespace, store) = (namespace.to_string(), store.to_string());
        self.read(move |conn, _| {
            conn.prepare_cached("SELECT bytes FROM kv_usage WHERE namespace = ?1 AND store = ?2")
                .and_then(|mut s| s.query_row(params![namespace, store], |r| r.get::<_, i64>(0)).optional())
                .map(|n| n.unwrap_or(0).max(0) as u64)
                .map_err(db_error)
        })
        .await
    }

    async fn kv_usage_under(&self, prefix: &str) -> Result<u64, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |conn, _| {
            // One row per store: a scan of kv_usage, not of the values.
            conn.prepare_cached("SELECT coalesce(sum(bytes), 0) FROM kv_usage WHERE substr(namespace, 1, length(?1)) = ?1")
                .and_then(|mut s| s.query_row([prefix], |r| r.get::<_, i64>(0)))
                .map(|n| n.max(0) as u64)
                .map_err(db_error)
        })
        .await
    }

    async fn write_kv(&self, writes: Vec<KvWrite>) -> Result<(), StoreError> {
        self.write(move |tx, now| apply_kv(tx, &writes, now).map_err(db_error)).await
    }

    async fn record_minutes(&self, rows: Vec<MinuteRuns>, keep_since: Millis) -> Result<(), StoreError> {
        self.write(move |tx, _| {
            tx.execute("DELETE FROM run_minutes WHERE minute < ?1", params![keep_since]).map_err(db_error)?;
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO run_minutes (minute, host, queue, kind, runs, failures, delay_ms_sum, delay_ms_max) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (minute, host, queue, kind) DO UPDATE SET \
                     runs = excluded.runs, failures = excluded.failures, delay_ms_sum = excluded.delay_ms_sum, delay_ms_max = excluded.delay_ms_max",
                )
                .map_err(db_error)?;
            for r in rows.iter().filter(|r| r.minute >= keep_since) {
                upsert
                    .execute(params![r.minute, r.host, r.queue, r.kind, r.runs as i64, r.failures as i64, r.delay_ms_sum, r.delay_ms_max])
                    .map_err(db_error)?;
            }
            Ok(())
        })
        .await
    }

    async fn minutes(&self, since: Millis) -> Result<Vec<MinuteRuns>, StoreError> {
        self.read(move |conn, _| {
            conn.prepare_cached(
                "SELECT minute, host, queue, kind, runs, failures, delay_ms_sum, delay_ms_max FROM run_minutes \
                 WHERE minute >= ?1 ORDER BY minute, host, queue, kind",
            )
            .and_then(|mut s| {
                s.query_map(params![since], |r| {
                    Ok(MinuteRuns {
                        minute: r.get(0)?,
                        host: r.get(1)?,
                        queue: r.get(2)?,
                        kind: r.get(3)?,
                        runs: r.get::<_, i64>(4)? as u64,
                        failures: r.get::<_, i64>(5)? as u64,
                        delay_ms_sum: r.get(6)?,
                        delay_ms_max: r.get(7)?,
                    })
                })?
                .collect()
            })
            .map_err(db_error)
        })
        .await
    }

    async fn loops(&self) -> Result<Vec<LoopState>, StoreError> {
        self.read(|conn, _| {
            conn.prepare_cached("SELECT name, checkpoint, passes, owner, lease_expires_at, updated_at FROM loops ORDER BY name")
                .and_then(|mut s| {
                    s.query_map([], |r| {
                        Ok(LoopState {
                            name: r.get(0)?,
                            checkpoint: r.get(1)?,
                            passes: r.get::<_, i64>(2)? as u64,
                            owner: r.get(3)?,
                            lease_expires_at: r.get(4)?,
                            updated_at: r.get(5)?,
                        })
                    })?
                    .collect()
                })
                .map_err(db_error)
        })
        .await
    }
}

impl SqliteStore {
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError> {
        let queue = queue.to_string();
        self.write(move |tx, now| {
            tx.execute(
                "INSERT INTO queues (name, paused, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                params![queue, paused, now],
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
