//! The store's connections: a deadpool of tokio-postgres connections to
//! one schema (`search_path`), opened with a timeout and retried after an
//! outage; and one connection of its own that LISTENs for every host's
//! inserts, turned into wake-ups of the queues, reconnecting after an
//! outage (with a wake of every queue, for what it missed).

use super::rows::pg_error;
use super::schema::migrate;
use crate::queue::StoreError;
use crate::queue::clock::SharedClock;
use crate::queue::job::Millis;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

/// The schema Kiln's tables live in unless the config names another.
pub const DEFAULT_SCHEMA: &str = "kiln";

/// Connections per host. A host's claim loops, finisher, heartbeat,
/// rescuer, schedules and API share them; each holds one only for a statement.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// How long a statement waits for a free connection or a new one before
/// the caller sees [`StoreError::Unavailable`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The listener's first wait before reconnecting; it doubles up to
/// [`MAX_RECONNECT_DELAY`].
pub const RECONNECT_DELAY: Duration = Duration::from_millis(100);

pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// The message a listener sends after it reconnects: notifications may
/// have been missed, so every queue looks for work.
pub const WAKE_ALL: &str = "*";

/// The Postgres job store; cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    pool: Pool,
    clock: SharedClock,
    schema: String,
    /// Where the listener connects (the pool's settings).
    config: tokio_postgres::Config,
    /// Started on the first [`JobStore::wakeups`] call.
    listener: OnceLock<(broadcast::Sender<String>, tokio::task::AbortHandle)>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some((_, task)) = self.listener.get() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("at", &describe(&self.shared.config)).field("schema", &self.shared.schema).finish_non_exhaustive()
    }
}

/// `host:port/database`, never the password: for logs and errors.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or("postgres"))
}

/// A schema name Kiln will put in `search_path` and a channel name: plain
/// lowercase identifiers only, so nothing needs quoting.
pub fn check_schema(schema: &str) -> Result<(), String> {
    let ok = !schema.is_empty()
        && schema.len() <= 58
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok { Ok(()) } else { Err(format!("{schema:?} is not a schema name Kiln accepts (lowercase letters, digits and _, at most 58 characters, not starting with a digit)")) }
}

pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Holds one connection that `LISTEN`s on `channel` and forwards each
/// notification's payload (a queue name) to `wakeups`. When the connection
/// is lost it says so, reconnects with backoff, and then sends
/// [`WAKE_ALL`], since notifications sent meanwhile were missed.
pub(super) async fn listen(config: tokio_postgres::Config, channel: String, wakeups: broadcast::Sender<String>) {
    let at = describe(&config);
    let mut delay = RECONNECT_DELAY;
    let mut lost: Option<String> = None;
    loop {
        let (client, mut connection) = match config.connect(NoTls).await {
            Ok(connected) => connected,
            Err(e) => {
                if lost.is_none() {
                    tracing::warn!(database = %at, "cannot connect to listen for new jobs: {e}; retrying (polling meanwhile)");
                    lost = Some(e.to_string());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                continue;
            }
        };
        // The connection must be polled for the LISTEN to go through;
        // notifications arrive on it as asynchronous messages.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        let _ = tx.send(n.payload().to_string());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return e.to_string(),
                    None => return "the connection closed".to_string(),
                }
            }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
            tracing::warn!(database = %at, "cannot listen for new jobs: {e}; retrying");
            driver.abort();
            tokio::time::sleep(delay).await;
            continue;
        }
        delay = RECONNECT_DELAY;
        match lost.take() {
            Some(_) => {
                tracing::info!(database = %at, %channel, "reconnected; listening for new jobs again");
                let _ = wakeups.send(WAKE_ALL.to_string());
            }
            None => tracing::info!(database = %at, %channel, "listening for new jobs"),
        }
        while let Some(queue) = rx.recv().await {
            let _ = wakeups.send(queue);
        }
        let why = driver.await.unwrap_or_else(|e| e.to_string());
        drop(client);
        tracing::warn!(database = %at, "lost the connection that listens for new jobs ({why}); reconnecting (polling meanwhile)");
        lost = Some(why);
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://...`), creates `schema` if needed and
    /// migrates it. A schema holding tables that are not Kiln's is refused
    /// without being changed.
    pub async fn connect(url: &str, schema: &str, clock: SharedClock) -> Result<Self, StoreError> {
        check_schema(schema).map_err(StoreError::Database)?;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Database(format!("bad database URL: {e}")))?;
        let options = match config.get_options() {
            Some(existing) => format!("{existing} -c search_path={schema}"),
            None => format!("-c search_path={schema}"),
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("kiln");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(DEFAULT_POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))?;
        let store = Self {
            shared: Arc::new(Shared { pool, clock, schema: schema.to_string(), config, listener: OnceLock::new() }),
        };
        let at = describe(&store.shared.config);
        let mut client = store.shared.pool.get().await.map_err(|e| match pool_error(e) {
            StoreError::Unavailable(why) => StoreError::Unavailable(format!("cannot connect to Postgres at {at}: {why}")),
            other => other,
        })?;
        migrate(&mut client, schema).await?;
        Ok(store)
    }

    pub fn schema(&self) -> &str {
        &self.shared.schema
    }

    /// `host:port/database`, without the password.
    pub fn location(&self) -> String {
        describe(&self.shared.config)
    }

    /// The channel this schema's inserts are announced on.
    pub(super) fn channel(&self) -> String {
        format!("kiln:{}", self.shared.schema)
    }

    pub(super) fn now(&self) -> Millis {
        self.shared.clock.now()
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.shared.pool.get().await.map_err(pool_error)
    }
}

pub(super) fn wakeups(db: &PostgresStore) -> Option<broadcast::Receiver<String>> {
    let (sender, _) = db.shared.listener.get_or_init(|| {
        let (sender, _) = broadcast::channel(1024);
        let task = tokio::spawn(listen(db.shared.config.clone(), db.channel(), sender.clone()));
        (sender, task.abort_handle())
    });
    Some(sender.subscribe())
}
