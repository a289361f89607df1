//! The store's connections: one writer behind a mutex, used from tokio's
//! blocking pool (SQLite has one writer at a time anyway), and reader
//! threads of their own, each with its own connection, taking work from one
//! queue (WAL lets them run beside the writer); opening a file (created
//! readable by its owner only, refused if it is not a Kiln database) and
//! migrating it.

use super::rows::db_error;
use super::schema::migrate;
use crate::queue::StoreError;
use crate::queue::clock::SharedClock;
use crate::queue::job::Millis;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
pub(super) type ReadWork = Box<dyn FnOnce(&Connection) + Send>;

/// Reader threads (and connections): reads overlap each other and the writer.
pub(super) const READERS: usize = 2;

/// Starts the reader threads, each on its own connection to `path`; they
/// end when the last sender (the last clone of the store) is gone.
pub(super) fn start_readers(path: &Path, flags: OpenFlags) -> Result<std::sync::mpsc::Sender<ReadWork>, StoreError> {
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

/// Whether opening failed because the file is not an SQLite database at
/// all (as opposed to a disk or permission problem with a good one).
pub(super) fn is_not_a_database(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ffi::ErrorCode::NotADatabase)
}

/// Creates the database file readable and writable by its owner only (SQLite
/// gives its `-wal` and `-shm` files the same mode); an existing file is
/// left as it is.
pub(super) fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

pub(super) fn configure(conn: &Connection) -> rusqlite::Result<()> {
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
    pub(super) async fn write<R: Send + 'static>(
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
    pub(super) async fn read<R: Send + 'static>(
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
