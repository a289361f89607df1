//! The shared backend: PostgreSQL, for several hosts on one database (the
//! way River, Oban and graphile-worker scale), with nothing else to run.
//!
//! - A pool of tokio-postgres connections (deadpool), each with its
//!   `search_path` set to Kiln's schema, so Kiln's tables live apart from
//!   an application's and tests can run side by side in their own schemas.
//! - Migrations run at connect, in one transaction under an advisory lock:
//!   two hosts starting at once apply each migration once.
//! - Claims take a batch with `FOR UPDATE SKIP LOCKED`: hosts never wait on
//!   each other's rows. Completions of a batch are one statement, and the
//!   fencing rule (lease token and `running`) is in that statement's `WHERE`.
//! - An insert fires a statement-level trigger that `NOTIFY`s the queues it
//!   touched; every host `LISTEN`s on one dedicated connection and wakes
//!   its queue loops (see [`JobStore::wakeups`]). Polling stays as the
//!   safety net.
//! - Time comes from the host's clock, as with SQLite (the hosts' clocks are
//!   assumed to agree to well within a lease).

use super::attempt::{Attempt, AttemptRun, AttemptSummary, Progress, logs_json, logs_of_json};
use super::clock::SharedClock;
use super::job::{AttemptError, Job, JobId, JobState, Lease, Millis};
use super::store::{
    AttemptLogs,
    ClaimParams, Claimed, Finish, HeartbeatParams, HeartbeatResult, HeldBack, Inserted, KindGate, KindLimits, kind_bucket_name, JobList, JobStore, KvChange, KvWrite, Limit, ListFilter,
    LoopClaim, LoopLease, LoopSave, PruneParams, ClaimRounds, claim_cap, rate_bucket_name,
    LoopState, MinuteRuns, NewJob, QueueInfo, ScheduleState, StateCount, StoreError, Transition, SCHEDULE_TICK_KEPT, schedule_key_range, schedule_tick_key, tick_of_key,
};
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};

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
/// Identifies the migration lock among other users of advisory locks ("kiln").
const MIGRATION_LOCK: i64 = 0x6b69_6c6e;

/// Migrations, applied in order, each once, recorded in `kiln_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "jobs, queues, loops and the insert notification",
    r#"
    CREATE TABLE jobs (
        id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind             text    NOT NULL,
        queue            text    NOT NULL,
        priority         integer NOT NULL DEFAULT 0,
        payload          bytea   NOT NULL,
        state            text    NOT NULL,
        attempt          integer NOT NULL DEFAULT 0,
        max_attempts     integer NOT NULL,
        scheduled_at     bigint  NOT NULL,
        -- Byte order, so a schedule's keys sort by tick whatever the
        -- database's collation.
        unique_key       text COLLATE "C",
        errors           jsonb   NOT NULL DEFAULT '[]',
        result           bytea,
        lease_token      bigint  NOT NULL DEFAULT 0,
        leased_by        text,
        lease_expires_at bigint,
        cancel_requested boolean NOT NULL DEFAULT false,
        created_at       bigint  NOT NULL,
        attempted_at     bigint,
        finalized_at     bigint,
        plugin_version   text
    );
    -- The claim's path: due jobs of one queue, best first.
    CREATE INDEX jobs_due ON jobs (queue, priority DESC, scheduled_at, id)
        WHERE state IN ('available', 'scheduled', 'retryable');
    -- The rescuer's path.
    CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
    -- Pending jobs of a kind (plugin removal checks this).
    CREATE INDEX jobs_pending_kind ON jobs (kind) WHERE state IN ('available', 'scheduled', 'retryable', 'running');
    -- One job per unique key outside the states a job is finished with for
    -- good (completed keeps its key, so a schedule's tick fires once).
    CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
        WHERE unique_key IS NOT NULL AND state NOT IN ('cancelled', 'dead');
    -- A schedule's ticks: its newest tick, its newest completed one.
    CREATE INDEX jobs_kind_key ON jobs (kind, unique_key) WHERE unique_key IS NOT NULL;
    CREATE TABLE queues (
        name       text PRIMARY KEY,
        paused     boolean NOT NULL DEFAULT false,
        updated_at bigint  NOT NULL
    );
    CREATE TABLE loops (
        name             text PRIMARY KEY,
        checkpoint       bytea,
        passes           bigint NOT NULL DEFAULT 0,
        token            bigint NOT NULL DEFAULT 0,
        owner            text,
        lease_expires_at bigint,
        updated_at       bigint NOT NULL
    );
    -- Wakes every listening host: one notification per queue per inserting
    -- statement, on the channel of this schema, sent when it commits.
    CREATE FUNCTION kiln_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('kiln:' || TG_TABLE_SCHEMA, queue) FROM (SELECT DISTINCT queue FROM inserted) AS touched;
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
        REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION kiln_notify_inserted();
    "#,
), (
    2,
    "jobs enqueued by jobs",
    r#"
    -- The job whose successful run enqueued this one.
    ALTER TABLE jobs ADD COLUMN parent_id bigint;
    CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
    "#,
), (
    3,
    "key-value stores",
    r#"
    -- What plugins keep (wasi:keyvalue), per plugin (`namespace`) and store.
    CREATE TABLE kv (
        namespace  text   NOT NULL,
        store      text   NOT NULL,
        key        text   COLLATE "C" NOT NULL,
        value      bytea  NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (namespace, store, key)
    );
    "#,
), (
    4,
    "kv store sizes",
    r#"
    -- What each store holds (keys' and values' bytes), kept with every
    -- write, so a quota check reads one row instead of summing the store.
    CREATE TABLE kv_usage (
        namespace text   NOT NULL,
        store     text   NOT NULL,
        bytes     bigint NOT NULL,
        PRIMARY KEY (namespace, store)
    );
    INSERT INTO kv_usage (namespace, store, bytes)
        SELECT namespace, store, sum(octet_length(key) + octet_length(value)) FROM kv GROUP BY namespace, store;
    "#,
), (
    5,
    "tenants",
    r#"
    -- The tenant a job belongs to: its kind's prefix (`acme/echo` is
    -- acme's), NULL for the host's own kinds. Derived, so it can never
    -- disagree with the kind.
    ALTER TABLE jobs ADD COLUMN tenant text
        GENERATED ALWAYS AS (CASE WHEN strpos(kind, '/') > 0 THEN split_part(kind, '/', 1) END) STORED;
    CREATE INDEX jobs_tenant ON jobs (tenant, id) WHERE tenant IS NOT NULL;
    -- A fair-share claim's path: one tenant's due jobs of one queue, best first.
    CREATE INDEX jobs_tenant_due ON jobs (queue, coalesce(tenant, ''), priority DESC, scheduled_at, id)
        WHERE state IN ('available', 'scheduled', 'retryable');
    "#,
), (
    6,
    "tenant limits",
    r#"
    -- max_running's count: a tenant's running jobs.
    CREATE INDEX jobs_running_tenant ON jobs (coalesce(tenant, '')) WHERE state = 'running';
    -- rate's token buckets: tokens left at updated_at.
    CREATE TABLE rate_buckets (
        name       text             PRIMARY KEY,
        tokens     double precision NOT NULL,
        updated_at bigint           NOT NULL
    );
    "#,
), (
    7,
    "tenant quotas",
    r#"
    -- max_waiting's count: a tenant's waiting jobs.
    CREATE INDEX jobs_waiting_tenant ON jobs (coalesce(tenant, '')) WHERE state IN ('available', 'scheduled', 'retryable');
    "#,
), (
    8,
    "concurrency keys",
    r#"
    -- A job's group under its kind's max_per_key (a customer id, say).
    ALTER TABLE jobs ADD COLUMN concurrency_key text;
    -- max_per_key's count: a kind's running jobs per key.
    CREATE INDEX jobs_running_key ON jobs (kind, concurrency_key) WHERE state = 'running' AND concurrency_key IS NOT NULL;
    "#,
), (
    9,
    "retention",
    r#"
    -- The pruner's paths: finished jobs by age, and each queue's newest.
    CREATE INDEX jobs_finished ON jobs (state, finalized_at) WHERE state IN ('completed', 'cancelled', 'dead');
    CREATE INDEX jobs_queue_finished ON jobs (queue, state, id) WHERE state IN ('completed', 'cancelled', 'dead');
    "#,
), (
    10,
    "attempts",
    r#"
    -- A running job's last reported progress (with the heartbeat).
    ALTER TABLE jobs ADD COLUMN progress_percent smallint;
    ALTER TABLE jobs ADD COLUMN progress_note text;
    -- Each attempt as it ended, with its log lines (a JSON array); whatever
    -- deletes a job (the pruner, a hand delete) deletes its attempts.
    CREATE TABLE job_attempts (
        job_id            bigint           NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        attempt           integer          NOT NULL,
        host              text             NOT NULL,
        plugin_version    text,
        started_at        bigint           NOT NULL,
        ended_at          bigint           NOT NULL,
        outcome           text             NOT NULL,
        error             text,
        duration_ms       double precision NOT NULL,
        fuel_used         bigint           NOT NULL,
        peak_memory_bytes bigint           NOT NULL,
        http_requests     bigint           NOT NULL,
        log_bytes_dropped bigint           NOT NULL,
        logs              text             NOT NULL,
        PRIMARY KEY (job_id, attempt)
    );
    "#,
), (
    11,
    "job counts and list paths",
    r#"
    -- Jobs by queue, tenant ('' for the host's own) and state, so counting
    -- is a read of a few rows however many jobs there are (`/metrics`,
    -- `/queues`, quotas). Every statement that adds, moves or removes jobs
    -- appends its net change to job_count_deltas (appends: no row that
    -- hosts' transactions contend for); a host folds the deltas into
    -- job_counts every second; a count reads both.
    CREATE TABLE job_counts (
        queue  text   NOT NULL,
        tenant text   NOT NULL,
        state  text   NOT NULL,
        n      bigint NOT NULL,
        PRIMARY KEY (queue, tenant, state)
    );
    CREATE TABLE job_count_deltas (
        queue  text   NOT NULL,
        tenant text   NOT NULL,
        state  text   NOT NULL,
        n      bigint NOT NULL
    );
    INSERT INTO job_counts (queue, tenant, state, n)
        SELECT queue, coalesce(tenant, ''), state, count(*) FROM jobs GROUP BY 1, 2, 3;
    CREATE FUNCTION kiln_count_jobs() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO job_count_deltas (queue, tenant, state, n)
                SELECT queue, coalesce(tenant, ''), state, count(*) FROM new_rows GROUP BY 1, 2, 3;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO job_count_deltas (queue, tenant, state, n)
                SELECT queue, coalesce(tenant, ''), state, -count(*) FROM old_rows GROUP BY 1, 2, 3;
        ELSE
            INSERT INTO job_count_deltas (queue, tenant, state, n)
                SELECT queue, tenant, state, sum(n) FROM (
                    SELECT nw.queue, coalesce(nw.tenant, '') AS tenant, nw.state, 1 AS n
                        FROM new_rows nw JOIN old_rows od ON od.id = nw.id WHERE nw.state <> od.state OR nw.queue <> od.queue
                    UNION ALL
                    SELECT od.queue, coalesce(od.tenant, ''), od.state, -1
                        FROM new_rows nw JOIN old_rows od ON od.id = nw.id WHERE nw.state <> od.state OR nw.queue <> od.queue
                ) moved GROUP BY 1, 2, 3 HAVING sum(n) <> 0;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER jobs_counted_in AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_jobs();
    CREATE TRIGGER jobs_counted_moved AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_jobs();
    CREATE TRIGGER jobs_counted_out AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_jobs();
    -- A page of one state's jobs in id order (`GET /jobs?state=`).
    CREATE INDEX jobs_state_id ON jobs (state, id);
    "#,
), (
    12,
    "runs per minute",
    r#"
    -- Each host's runs per minute, queue and kind, written by the host as
    -- the minute fills and kept for two hours: the dashboard's charts.
    CREATE TABLE run_minutes (
        minute       bigint NOT NULL,
        host         text   NOT NULL,
        queue        text   NOT NULL,
        kind         text   NOT NULL,
        runs         bigint NOT NULL,
        failures     bigint NOT NULL,
        delay_ms_sum bigint NOT NULL,
        delay_ms_max bigint NOT NULL,
        PRIMARY KEY (minute, host, queue, kind)
    );
    "#,
), (
    13,
    "trace context",
    r#"
    -- The W3C traceparent a job's attempts' spans are children of.
    ALTER TABLE jobs ADD COLUMN traceparent text;
    "#,
)];

// SQL fragments as macros, so each statement is one literal built at
// compile time (`concat!`).
macro_rules! columns {
    () => {
        "jobs.id, jobs.kind, jobs.queue, jobs.priority, jobs.payload, jobs.state, jobs.attempt, jobs.max_attempts, \
         jobs.scheduled_at, jobs.unique_key, jobs.errors::text, jobs.result, jobs.lease_token, jobs.leased_by, \
         jobs.lease_expires_at, jobs.cancel_requested, jobs.created_at, jobs.attempted_at, jobs.finalized_at, jobs.plugin_version, \
         jobs.parent_id, jobs.concurrency_key, jobs.progress_percent, jobs.progress_note, jobs.traceparent"
    };
}
/// How many columns `columns!()` names: a query that adds one of its own
/// reads it at this index.
const JOB_COLUMNS: usize = 25;
/// The job counts as of now: what is folded and what is not yet.
macro_rules! counted {
    () => {
        "(SELECT queue, tenant, state, n FROM job_counts UNION ALL SELECT queue, tenant, state, n FROM job_count_deltas) AS counted"
    };
}
/// A job's tenant compared with a parameter that follows (`''`: the host's own).
macro_rules! tenant_is {
    () => {
        "coalesce(tenant, '') = "
    };
}
/// The states a claim takes jobs from (once due).
macro_rules! waiting {
    () => {
        "('available', 'scheduled', 'retryable')"
    };
}
/// The states of a job not yet done with.
macro_rules! pending {
    () => {
        "('available', 'scheduled', 'retryable', 'running')"
    };
}
/// The one-row transitions out of `running` share this tail: clear the
/// lease, record the version, and the fencing rule. `$1` id, `$2` token,
/// `$3` the plugin version.
macro_rules! fenced {
    () => {
        ", leased_by = NULL, lease_expires_at = NULL, plugin_version = coalesce($3::text, plugin_version) \
         WHERE id = $1 AND lease_token = $2 AND state = 'running'"
    };
}
/// Locks the rows of the leases in `done` (id, token) that are still
/// current, in id order. A host's heartbeat and its finisher touch the
/// same rows at once; taking row locks in one order keeps them from
/// deadlocking (an `UPDATE ... FROM unnest` locks in whatever order its
/// join produces).
macro_rules! locked_in_order {
    () => {
        "locked AS (SELECT jobs.id FROM jobs JOIN done ON jobs.id = done.id \
         WHERE jobs.lease_token = done.token AND jobs.state = 'running' ORDER BY jobs.id FOR UPDATE OF jobs) "
    };
}
/// The unique index's predicate, named in `ON CONFLICT` so Postgres infers it.
macro_rules! unique_live {
    () => {
        "(unique_key) WHERE unique_key IS NOT NULL AND state NOT IN ('cancelled', 'dead')"
    };
}

/// The Postgres job store; cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
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

/// Errors from the database itself (a constraint, bad SQL) are `Database`;
/// a connection that failed, closed or was ended by the server (shutdown:
/// SQLSTATE class 57; connection exceptions: 08; too many connections: 53)
/// is `Unavailable`, worth trying again once Postgres is back.
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if !["08", "53", "57"].iter().any(|class| db.code().code().starts_with(class)) => {
            StoreError::Database(format!("{} ({})", db.message(), db.code().code()))
        }
        Some(db) => StoreError::Unavailable(format!("{} ({})", db.message(), db.code().code())),
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
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
    fn channel(&self) -> String {
        format!("kiln:{}", self.shared.schema)
    }

    fn now(&self) -> Millis {
        self.shared.clock.now()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.shared.pool.get().await.map_err(pool_error)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO queues (name, paused, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                &[&queue, &paused, &self.now()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

async fn migrate(client: &mut deadpool_postgres::Object, schema: &str) -> Result<(), StoreError> {
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
async fn apply_migrations(tx: &deadpool_postgres::Transaction<'_>, schema: &str) -> Result<(), StoreError> {
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
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::SchemaTooNew { found: current, known });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.map_err(|e| StoreError::Database(format!("migration {version} ({name}): {}", pg_error(e))))?;
        let now = super::clock::Clock::now(&super::clock::SystemClock);
        tx.execute("INSERT INTO kiln_migrations (version, name, applied_at) VALUES ($1, $2, $3)", &[version, name, &now])
            .await
            .map_err(pg_error)?;
        tracing::info!(version, name, schema, "applied database migration");
    }
    Ok(())
}

fn job_from_row(row: &Row) -> Result<Job, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Database(format!("unexpected row: {e}"));
    let state: String = row.try_get(5).map_err(bad)?;
    let errors: String = row.try_get(10).map_err(bad)?;
    Ok(Job {
        id: row.try_get(0).map_err(bad)?,
        kind: row.try_get(1).map_err(bad)?,
        queue: row.try_get(2).map_err(bad)?,
        priority: row.try_get(3).map_err(bad)?,
        payload: row.try_get(4).map_err(bad)?,
        state: state.parse().map_err(StoreError::Database)?,
        attempt: row.try_get::<_, i32>(6).map_err(bad)? as u32,
        max_attempts: row.try_get::<_, i32>(7).map_err(bad)? as u32,
        scheduled_at: row.try_get(8).map_err(bad)?,
        unique_key: row.try_get(9).map_err(bad)?,
        errors: serde_json::from_str(&errors).unwrap_or_default(),
        result: row.try_get(11).map_err(bad)?,
        lease_token: row.try_get(12).map_err(bad)?,
        leased_by: row.try_get(13).map_err(bad)?,
        lease_expires_at: row.try_get(14).map_err(bad)?,
        cancel_requested: row.try_get(15).map_err(bad)?,
        created_at: row.try_get(16).map_err(bad)?,
        attempted_at: row.try_get(17).map_err(bad)?,
        finalized_at: row.try_get(18).map_err(bad)?,
        plugin_version: row.try_get(19).map_err(bad)?,
        parent_id: row.try_get(20).map_err(bad)?,
        concurrency_key: row.try_get(21).map_err(bad)?,
        progress: match row.try_get::<_, Option<i16>>(22).map_err(bad)? {
            Some(percent) => Some(Progress { percent: percent.clamp(0, 100) as u8, note: row.try_get(23).map_err(bad)? }),
            None => None,
        },
        traceparent: row.try_get(24).map_err(bad)?,
    })
}

fn jobs_from_rows(rows: &[Row]) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(job_from_row).collect()
}

async fn get_job(client: &impl GenericClient, id: JobId) -> Result<Option<Job>, StoreError> {
    let stmt = client.prepare_cached(concat!("SELECT ", columns!(), " FROM jobs WHERE id = $1")).await.map_err(pg_error)?;
    client.query_opt(&stmt, &[&id]).await.map_err(pg_error)?.as_ref().map(job_from_row).transpose()
}

fn error_json(error: &AttemptError) -> String {
    serde_json::to_string(error).expect("attempt errors serialise")
}

/// Applies one transition other than a plain completion, with its
/// attempt's record; `Ok(false)` when the lease is not current.
async fn apply_one(client: &impl GenericClient, finish: &Finish, now: Millis) -> Result<bool, StoreError> {
    let applied = apply_transition(client, finish, now).await?;
    if applied && !matches!(finish.transition, Transition::Snooze { .. }) {
        if let Some(run) = &finish.attempt {
            record_attempt(client, finish.lease.id, run, finish.ran_version.as_deref()).await?;
        }
    }
    Ok(applied)
}

/// Keeps `run` as job `id`'s current attempt (once: a second record of
/// one attempt is ignored), and its last progress on the job.
async fn record_attempt(client: &impl GenericClient, id: JobId, run: &AttemptRun, version: Option<&str>) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO job_attempts (job_id, attempt, host, plugin_version, started_at, ended_at, outcome, error, duration_ms, \
             fuel_used, peak_memory_bytes, http_requests, log_bytes_dropped, logs) \
             SELECT id, attempt, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 FROM jobs WHERE id = $1 \
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    let a = &run.summary;
    let counts = [a.fuel_used, a.peak_memory_bytes, a.http_requests, a.log_bytes_dropped].map(clamp_i64);
    client
        .execute(
            &stmt,
            &[&id, &a.host, &version, &a.started_at, &a.ended_at, &a.outcome, &a.error, &a.duration_ms, &counts[0], &counts[1], &counts[2], &counts[3], &logs_json(&run.logs)],
        )
        .await
        .map_err(pg_error)?;
    if let Some(progress) = &run.progress {
        let stmt = client.prepare_cached("UPDATE jobs SET progress_percent = $2, progress_note = $3 WHERE id = $1").await.map_err(pg_error)?;
        client.execute(&stmt, &[&id, &i16::from(progress.percent), &progress.note]).await.map_err(pg_error)?;
    }
    Ok(())
}

/// A count as Postgres's bigint (which is signed).
fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// [`apply_one`]'s state change.
async fn apply_transition(client: &impl GenericClient, finish: &Finish, now: Millis) -> Result<bool, StoreError> {
    let Lease { id, token } = finish.lease;
    let version = &finish.ran_version;
    let (sql, value, error): (&str, i64, Option<String>) = match &finish.transition {
        Transition::Complete { result, .. } => {
            let stmt = client
                .prepare_cached(concat!("UPDATE jobs SET state = 'completed', result = $4, finalized_at = $5", fenced!()))
                .await
                .map_err(pg_error)?;
            let changed = client.execute(&stmt, &[&id, &token, version, result, &now]).await.map_err(pg_error)?;
            return Ok(changed == 1);
        }
        // A job whose cancel was requested (perhaps on another host, not
        // yet heard here) is not run again: cancelled instead.
        Transition::RetryAt { at, error } => {
            let stmt = client
                .prepare_cached(concat!(
                    "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'retryable' END, \
                     finalized_at = CASE WHEN cancel_requested THEN $6::bigint END, cancel_requested = false, \
                     scheduled_at = $4, errors = errors || jsonb_build_array($5::text::jsonb)",
                    fenced!()
                ))
                .await
                .map_err(pg_error)?;
            let changed = client.execute(&stmt, &[&id, &token, version, at, &error_json(error), &now]).await.map_err(pg_error)?;
            return Ok(changed == 1);
        }
        Transition::Discard { error } => (
            concat!("UPDATE jobs SET state = 'dead', finalized_at = $4, errors = errors || jsonb_build_array($5::text::jsonb)", fenced!()),
            now,
            Some(error_json(error)),
        ),
        Transition::Cancel { error } => (
            concat!(
                "UPDATE jobs SET state = 'cancelled', finalized_at = $4, cancel_requested = false, \
                 errors = errors || jsonb_build_array($5::text::jsonb)",
                fenced!()
            ),
            now,
            Some(error_json(error)),
        ),
        Transition::Snooze { at } => (
            concat!(
                "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 'cancelled' WHEN $4::bigint > $5::bigint THEN 'scheduled' ELSE 'available' END, \
                 finalized_at = CASE WHEN cancel_requested THEN $5::bigint END, cancel_requested = false, \
                 scheduled_at = $4, attempt = greatest(attempt - 1, 0)",
                fenced!()
            ),
            *at,
            None,
        ),
    };
    let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
    let changed = match error {
        Some(error) => client.execute(&stmt, &[&id, &token, version, &value, &error]).await,
        None => client.execute(&stmt, &[&id, &token, version, &value, &now]).await,
    }
    .map_err(pg_error)?;
    Ok(changed == 1)
}

/// Completes a batch in one statement; returns the ids whose lease was current.
async fn complete_batch(client: &impl GenericClient, finishes: &[&Finish], now: Millis) -> Result<HashSet<JobId>, StoreError> {
    let mut ids = Vec::with_capacity(finishes.len());
    let mut tokens = Vec::with_capacity(finishes.len());
    let mut results: Vec<&[u8]> = Vec::with_capacity(finishes.len());
    let mut versions: Vec<Option<&str>> = Vec::with_capacity(finishes.len());
    let mut percents: Vec<Option<i16>> = Vec::with_capacity(finishes.len());
    let mut notes: Vec<Option<&str>> = Vec::with_capacity(finishes.len());
    let mut ran = AttemptColumns::default();
    for f in finishes {
        let Transition::Complete { result, .. } = &f.transition else { unreachable!("only completions are batched") };
        ids.push(f.lease.id);
        tokens.push(f.lease.token);
        results.push(result);
        versions.push(f.ran_version.as_deref());
        let progress = f.attempt.as_ref().and_then(|a| a.progress.as_ref());
        percents.push(progress.map(|p| i16::from(p.percent)));
        notes.push(progress.and_then(|p| p.note.as_deref()));
        if let Some(run) = &f.attempt {
            ran.push(f.lease.id, f.ran_version.as_deref(), run);
        }
    }
    // The completions and their attempts' records in one statement: a
    // record goes in only for a job the update completed.
    let stmt = client
        .prepare_cached(
            concat!(
                "WITH done AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::text[], $6::smallint[], $7::text[]) \
                 AS d(id, token, result, version, percent, note)), ",
                locked_in_order!(),
                ", completed AS (UPDATE jobs SET state = 'completed', result = done.result, finalized_at = $5, leased_by = NULL, \
                 lease_expires_at = NULL, plugin_version = coalesce(done.version, jobs.plugin_version), \
                 progress_percent = coalesce(done.percent, jobs.progress_percent), \
                 progress_note = CASE WHEN done.percent IS NULL THEN jobs.progress_note ELSE done.note END \
                 FROM done, locked WHERE jobs.id = done.id AND jobs.id = locked.id \
                   AND jobs.lease_token = done.token AND jobs.state = 'running' \
                 RETURNING jobs.id, jobs.attempt), \
                 recorded AS (INSERT INTO job_attempts (job_id, attempt, host, plugin_version, started_at, ended_at, outcome, error, \
                   duration_ms, fuel_used, peak_memory_bytes, http_requests, log_bytes_dropped, logs) \
                 SELECT a.id, completed.attempt, a.host, a.version, a.started_at, a.ended_at, a.outcome, a.error, a.duration_ms, \
                   a.fuel_used, a.peak_memory_bytes, a.http_requests, a.log_bytes_dropped, a.logs \
                 FROM unnest($8::bigint[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], $13::text[], $14::text[], \
                   $15::float8[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::text[]) \
                   AS a(id, host, version, started_at, ended_at, outcome, error, duration_ms, fuel_used, peak_memory_bytes, \
                   http_requests, log_bytes_dropped, logs) \
                 JOIN completed ON completed.id = a.id \
                 ON CONFLICT DO NOTHING) \
                 SELECT id FROM completed"
            ),
        )
        .await
        .map_err(pg_error)?;
    let rows = client
        .query(
            &stmt,
            &[
                &ids,
                &tokens,
                &results,
                &versions,
                &now,
                &percents,
                &notes,
                &ran.ids,
                &ran.hosts,
                &ran.versions,
                &ran.started_at,
                &ran.ended_at,
                &ran.outcomes,
                &ran.errors,
                &ran.duration_ms,
                &ran.fuel_used,
                &ran.peak_memory_bytes,
                &ran.http_requests,
                &ran.log_bytes_dropped,
                &ran.logs,
            ],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Attempt records as the columns `complete_batch` unnests.
#[derive(Default)]
struct AttemptColumns<'a> {
    ids: Vec<JobId>,
    hosts: Vec<&'a str>,
    versions: Vec<Option<&'a str>>,
    started_at: Vec<Millis>,
    ended_at: Vec<Millis>,
    outcomes: Vec<&'a str>,
    errors: Vec<Option<&'a str>>,
    duration_ms: Vec<f64>,
    fuel_used: Vec<i64>,
    peak_memory_bytes: Vec<i64>,
    http_requests: Vec<i64>,
    log_bytes_dropped: Vec<i64>,
    logs: Vec<String>,
}

impl<'a> AttemptColumns<'a> {
    fn push(&mut self, id: JobId, version: Option<&'a str>, run: &'a AttemptRun) {
        let a = &run.summary;
        self.ids.push(id);
        self.hosts.push(&a.host);
        self.versions.push(version);
        self.started_at.push(a.started_at);
        self.ended_at.push(a.ended_at);
        self.outcomes.push(&a.outcome);
        self.errors.push(a.error.as_deref());
        self.duration_ms.push(a.duration_ms);
        self.fuel_used.push(clamp_i64(a.fuel_used));
        self.peak_memory_bytes.push(clamp_i64(a.peak_memory_bytes));
        self.http_requests.push(clamp_i64(a.http_requests));
        self.log_bytes_dropped.push(clamp_i64(a.log_bytes_dropped));
        self.logs.push(logs_json(&run.logs));
    }
}

/// Applies kv writes in order. `Add` touches only a key that holds a
/// decimal number of at most 18 digits (or none: it starts from 0).
async fn apply_kv(client: &impl GenericClient, writes: &[KvWrite], now: Millis) -> Result<(), StoreError> {
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

/// Inserts jobs in order (and the queues they name); a job whose unique
/// key is held yields the job holding it. Keyed jobs go one statement
/// each: call it inside a transaction when any has a key.
async fn insert_jobs(client: &impl GenericClient, jobs: &[NewJob], now: Millis) -> Result<Vec<Inserted>, StoreError> {
    let prepared: Vec<(String, i64)> = jobs
        .iter()
        .map(|j| {
            let at = j.scheduled_at.unwrap_or(now).max(0);
            let state = if at > now { JobState::Scheduled } else { JobState::Available };
            (state.as_str().to_string(), at)
        })
        .collect();
    if jobs.iter().all(|j| j.unique_key.is_none()) {
        // One statement: the queues, then every job, in order.
        let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
        let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        let priorities: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
        let payloads: Vec<&[u8]> = jobs.iter().map(|j| j.payload.as_slice()).collect();
        let states: Vec<&str> = prepared.iter().map(|p| p.0.as_str()).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts as i32).collect();
        let times: Vec<i64> = prepared.iter().map(|p| p.1).collect();
        let parents: Vec<Option<i64>> = jobs.iter().map(|j| j.parent_id).collect();
        let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.concurrency_key.as_deref()).collect();
        let traces: Vec<Option<&str>> = jobs.iter().map(|j| j.traceparent.as_deref()).collect();
        let stmt = client
            .prepare_cached(concat!(
                "WITH touched AS (INSERT INTO queues (name, updated_at) SELECT DISTINCT unnest($2::text[]), $8::bigint \
                 ON CONFLICT (name) DO NOTHING) \
                 INSERT INTO jobs (kind, queue, priority, payload, state, max_attempts, scheduled_at, created_at, parent_id, concurrency_key, traceparent) \
                 SELECT kind, queue, priority, payload, state, max_attempts, scheduled_at, $8, parent_id, concurrency_key, traceparent \
                 FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[], $5::text[], $6::int[], $7::bigint[], $9::bigint[], $10::text[], $11::text[]) \
                   WITH ORDINALITY AS incoming(kind, queue, priority, payload, state, max_attempts, scheduled_at, parent_id, concurrency_key, traceparent, n) \
                 ORDER BY n RETURNING ",
                columns!()
            ))
            .await
            .map_err(pg_error)?;
        let rows = client
            .query(&stmt, &[&kinds, &queues, &priorities, &payloads, &states, &attempts, &times, &now, &parents, &keys, &traces])
            .await
            .map_err(pg_error)?;
        let mut inserted = jobs_from_rows(&rows)?;
        inserted.sort_by_key(|j| j.id);
        return Ok(inserted.into_iter().map(|job| Inserted { job, created: true }).collect());
    }
    let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    client
        .execute("INSERT INTO queues (name, updated_at) SELECT unnest($1::text[]), $2::bigint ON CONFLICT (name) DO NOTHING", &[&queues, &now])
        .await
        .map_err(pg_error)?;
    let insert = client
        .prepare_cached(concat!(
            "INSERT INTO jobs (kind, queue, priority, payload, state, max_attempts, scheduled_at, unique_key, created_at, parent_id, concurrency_key, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT ",
            unique_live!(),
            " DO NOTHING RETURNING ",
            columns!()
        ))
        .await
        .map_err(pg_error)?;
    let existing = client
        .prepare_cached(concat!("SELECT ", columns!(), " FROM jobs WHERE unique_key = $1 AND state NOT IN ('cancelled', 'dead')"))
        .await
        .map_err(pg_error)?;
    let mut inserted = Vec::with_capacity(jobs.len());
    for (job, (state, at)) in jobs.iter().zip(&prepared) {
        let max_attempts = job.max_attempts as i32;
        let params: [&(dyn ToSql + Sync); 12] = [
            &job.kind,
            &job.queue,
            &job.priority,
            &job.payload,
            state,
            &max_attempts,
            at,
            &job.unique_key,
            &now,
            &job.parent_id,
            &job.concurrency_key,
            &job.traceparent,
        ];
        if let Some(row) = client.query_opt(&insert, &params).await.map_err(pg_error)? {
            inserted.push(Inserted { job: job_from_row(&row)?, created: true });
            continue;
        }
        // The key is held: by a job committed before this statement
        // began, or inserted earlier in this transaction.
        match client.query_opt(&existing, &[&job.unique_key]).await.map_err(pg_error)? {
            Some(row) => inserted.push(Inserted { job: job_from_row(&row)?, created: false }),
            None => {
                return Err(StoreError::Database(format!("unique key {:?} was held and then freed while inserting; try again", job.unique_key)));
            }
        }
    }
    Ok(inserted)
}

/// The claim statement: the best due jobs of queue `$1` (unless paused)
/// that pass `$filter`, at most `$3`, to running for host `$4` until `$5`.
macro_rules! claim_sql {
    ($filter:expr) => {
        concat!(
            "WITH picked AS (SELECT id FROM jobs WHERE queue = $1 AND ",
            $filter,
            "state IN ",
            waiting!(),
            " AND scheduled_at <= $2 AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) \
               ORDER BY priority DESC, scheduled_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
               leased_by = $4, lease_expires_at = $5, attempted_at = $2 \
             FROM picked WHERE jobs.id = picked.id RETURNING ",
            columns!()
        )
    };
}

/// Takes up to `limit` of the best due jobs of the claim's queue (unless paused).
async fn claim_best(client: &deadpool_postgres::Object, p: &ClaimParams, now: Millis, limit: usize) -> Result<Vec<Job>, StoreError> {
    let stmt = client.prepare_cached(claim_sql!("")).await.map_err(pg_error)?;
    let rows = client.query(&stmt, &[&p.queue, &now, &(limit as i64), &p.host, &(now + p.lease_ms)]).await.map_err(pg_error)?;
    jobs_from_rows(&rows)
}

/// What a claim stamps on the jobs it takes.
#[derive(Debug, Clone, Copy)]
struct Pick<'a> {
    queue: &'a str,
    host: &'a str,
    now: Millis,
    until: Millis,
}

/// The candidates of a gated claim: what [`claim_sql!`] would take of
/// queue `$1` due at `$2` that pass `$filter`, less the kinds of `$3` and
/// the `kind_key`s of `$4`, at most `$5`: id, kind, key.
macro_rules! candidates_sql {
    ($filter:expr) => {
        concat!(
            "SELECT id, kind, concurrency_key FROM jobs WHERE queue = $1 AND ",
            $filter,
            "state IN ",
            waiting!(),
            " AND scheduled_at <= $2 AND kind <> ALL($3::text[]) \
               AND (concurrency_key IS NULL OR kind || chr(31) || concurrency_key <> ALL($4::text[])) \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) \
             ORDER BY priority DESC, scheduled_at, id LIMIT $5 FOR UPDATE SKIP LOCKED"
        )
    };
}

/// Takes up to `limit` of the best due jobs of the claim's queue, of one
/// tenant's (`""`: the host's own kinds) or of anyone's; with a gate, only
/// those it admits, looking again without what it refused (as SQLite's
/// `claim_gated`, whose doc says why this ends).
async fn claim_pick(
    tx: &deadpool_postgres::Transaction<'_>,
    pick: Pick<'_>,
    tenant: Option<&str>,
    limit: usize,
    gate: Option<&mut KindGate>,
) -> Result<Vec<Job>, StoreError> {
    let Some(gate) = gate else {
        let lease: [&(dyn ToSql + Sync); 5] = [&pick.queue, &pick.now, &(limit as i64), &pick.host, &pick.until];
        let rows = match tenant {
            None => tx.query(&tx.prepare_cached(claim_sql!("")).await.map_err(pg_error)?, &lease).await,
            Some(tenant) => {
                let stmt = tx.prepare_cached(claim_sql!(concat!(tenant_is!(), "$6 AND "))).await.map_err(pg_error)?;
                tx.query(&stmt, &[lease[0], lease[1], lease[2], lease[3], lease[4], &tenant]).await
            }
        }
        .map_err(pg_error)?;
        return jobs_from_rows(&rows);
    };
    let look = match tenant {
        None => tx.prepare_cached(candidates_sql!("")).await,
        Some(_) => tx.prepare_cached(candidates_sql!(concat!(tenant_is!(), "$6 AND "))).await,
    }
    .map_err(pg_error)?;
    let take = tx
        .prepare_cached(concat!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
             leased_by = $1, lease_expires_at = $2, attempted_at = $3 WHERE id = ANY($4::bigint[]) RETURNING ",
            columns!()
        ))
        .await
        .map_err(pg_error)?;
    let mut jobs = Vec::with_capacity(limit);
    while jobs.len() < limit {
        let want = (limit - jobs.len()) as i64;
        let (kinds, keys) = gate.excluded();
        let rows = match tenant {
            None => tx.query(&look, &[&pick.queue, &pick.now, &kinds, &keys, &want]).await,
            Some(tenant) => tx.query(&look, &[&pick.queue, &pick.now, &kinds, &keys, &want, &tenant]).await,
        }
        .map_err(pg_error)?;
        let mut admitted: Vec<JobId> = Vec::with_capacity(rows.len());
        for row in &rows {
            let (kind, key): (String, Option<String>) = (row.get(1), row.get(2));
            if gate.admit(&kind, key.as_deref()) {
                admitted.push(row.get(0));
            }
        }
        let taken = tx.query(&take, &[&pick.host, &pick.until, &pick.now, &admitted]).await.map_err(pg_error)?;
        jobs.extend(jobs_from_rows(&taken)?);
        if (rows.len() as i64) < want || admitted.len() == rows.len() {
            break;
        }
    }
    Ok(jobs)
}

/// What the held kinds have now: their keys' running jobs and their
/// stored buckets (`None` when the claim holds no kind).
#[allow(clippy::type_complexity)]
async fn gate_state(
    tx: &deadpool_postgres::Transaction<'_>,
    kinds: &[KindLimits],
) -> Result<Option<(Vec<((String, String), u64)>, std::collections::HashMap<String, (f64, Millis)>)>, StoreError> {
    if kinds.is_empty() {
        return Ok(None);
    }
    let keyed: Vec<&str> = kinds.iter().filter(|k| k.max_per_key.is_some()).map(|k| k.kind.as_str()).collect();
    let rows = tx
        .query(
            "SELECT kind, concurrency_key, count(*) FROM jobs \
             WHERE state = 'running' AND concurrency_key IS NOT NULL AND kind = ANY($1::text[]) GROUP BY kind, concurrency_key",
            &[&keyed],
        )
        .await
        .map_err(pg_error)?;
    let running = rows.iter().map(|r| ((r.get(0), r.get(1)), r.get::<_, i64>(2) as u64)).collect();
    let mut buckets = std::collections::HashMap::new();
    for limits in kinds.iter().filter(|k| k.rate.is_some()) {
        if let Some(bucket) = load_bucket(tx, &kind_bucket_name(&limits.kind)).await? {
            buckets.insert(limits.kind.clone(), bucket);
        }
    }
    Ok(Some((running, buckets)))
}

/// A stored bucket: its tokens and when it held them.
async fn load_bucket(tx: &deadpool_postgres::Transaction<'_>, name: &str) -> Result<Option<(f64, Millis)>, StoreError> {
    let row = tx.query_opt("SELECT tokens, updated_at FROM rate_buckets WHERE name = $1", &[&name]).await.map_err(pg_error)?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Stores a bucket's tokens as of `now`.
async fn save_bucket(tx: &deadpool_postgres::Transaction<'_>, name: &str, tokens: f64, now: Millis) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO rate_buckets (name, tokens, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
        &[&name, &tokens, &now],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// What the pruner never deletes: a job `j` that is its schedule's newest
/// tick, or its newest completed one (the next tick's checkpoint).
macro_rules! kept_tick {
    () => {
        "(j.unique_key IS NOT NULL AND starts_with(j.unique_key, 'schedule:') AND j.unique_key IN ( \
           (SELECT max(s.unique_key) FROM jobs s WHERE s.kind = j.kind AND starts_with(s.unique_key, 'schedule:' || j.kind || ':')), \
           (SELECT max(s.unique_key) FROM jobs s WHERE s.kind = j.kind AND s.state = 'completed' \
              AND starts_with(s.unique_key, 'schedule:' || j.kind || ':'))))"
    };
}

/// Best first: as the claim query orders them.
fn sort_best_first(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.scheduled_at.cmp(&b.scheduled_at)).then(a.id.cmp(&b.id)));
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn insert_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, StoreError> {
        let now = self.now();
        let mut client = self.client().await?;
        if jobs.iter().all(|j| j.unique_key.is_none()) {
            return insert_jobs(&client, &jobs, now).await;
        }
        // Keyed jobs: one at a time in a transaction, so each key is checked
        // against the jobs before it.
        let tx = client.transaction().await.map_err(pg_error)?;
        let inserted = insert_jobs(&tx, &jobs, now).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(inserted)
    }

    async fn claim_fair(&self, p: ClaimParams) -> Result<Claimed, StoreError> {
        let mut client = self.client().await?;
        if p.shares.is_empty() && p.kinds.is_empty() {
            let mut jobs = claim_best(&client, &p, self.now(), p.limit).await?;
            sort_best_first(&mut jobs);
            return Ok(Claimed { jobs, held_back: Vec::new() });
        }
        // One transaction: a limited tenant's lock (taken in the order of
        // the shares, the same on every host), then each held kind's (in
        // name order), keep another host's claim for them waiting until
        // this one's running jobs and buckets are written, so their limits
        // hold across hosts. The time is read once the locks are held: a
        // claim that waited stamps when it took.
        let tx = client.transaction().await.map_err(pg_error)?;
        for share in p.shares.iter().filter(|s| !s.limits.is_empty()) {
            let tenant = share.tenant.as_deref().unwrap_or("");
            tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('kiln:tenant:' || $1, 0))", &[&tenant]).await.map_err(pg_error)?;
        }
        let mut kinds: Vec<&str> = p.kinds.iter().map(|k| k.kind.as_str()).collect();
        kinds.sort_unstable();
        for kind in kinds {
            tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('kiln:kind:' || $1, 0))", &[&kind]).await.map_err(pg_error)?;
        }
        // What each limited tenant has running and in its bucket, and what
        // the held kinds have, then the time: read after them, it is later
        // than any finish they missed.
        let mut stored = Vec::with_capacity(p.shares.len());
        for share in &p.shares {
            let tenant = share.tenant.as_deref().unwrap_or("");
            let running: i64 = match share.limits.max_running {
                Some(_) => tx
                    .query_one(concat!("SELECT count(*) FROM jobs WHERE state = 'running' AND ", tenant_is!(), "$1"), &[&tenant])
                    .await
                    .map_err(pg_error)?
                    .get(0),
                None => 0,
            };
            let bucket = match share.limits.rate {
                Some(_) => load_bucket(&tx, &rate_bucket_name(share.tenant.as_deref())).await?,
                None => None,
            };
            stored.push((running, bucket));
        }
        let gate = gate_state(&tx, &p.kinds).await?;
        let now = self.now();
        let mut gate = gate.map(|(running, buckets)| {
            let tokens = |kind: &str| {
                let rate = p.kinds.iter().find(|k| k.kind == kind)?.rate?;
                buckets.get(kind).map(|&(tokens, at)| rate.refill(tokens, at, now))
            };
            KindGate::new(&p.kinds, tokens, running)
        });
        let lease = Pick { queue: &p.queue, host: &p.host, now, until: now + p.lease_ms };
        let mut jobs = Vec::with_capacity(p.limit);
        let mut held_back = Vec::new();
        if p.shares.is_empty() {
            jobs = claim_pick(&tx, lease, None, p.limit, gate.as_mut()).await?;
        } else {
            let caps: Vec<_> = p
                .shares
                .iter()
                .zip(&stored)
                .map(|(share, &(running, bucket))| {
                    let tokens = share.limits.rate.map(|rate| bucket.map_or(f64::from(rate.count), |(tokens, at)| rate.refill(tokens, at, now)));
                    (claim_cap(&share.limits, running as u64, tokens), tokens)
                })
                .collect();
            let mut rounds = ClaimRounds::new(&p.shares, &caps.iter().map(|c| c.0.0).collect::<Vec<_>>(), p.limit);
            let mut got = vec![0usize; p.shares.len()];
            while let Some((i, take)) = rounds.next() {
                let tenant = p.shares[i].tenant.as_deref().unwrap_or("");
                let taken = claim_pick(&tx, lease, Some(tenant), take, gate.as_mut()).await?;
                rounds.took(i, take, taken.len());
                got[i] += taken.len();
                jobs.extend(taken);
            }
            for (i, share) in p.shares.iter().enumerate() {
                let ((cap, by), tokens) = caps[i];
                let left = tokens.map(|t| t - got[i] as f64);
                if let Some(left) = left {
                    save_bucket(&tx, &rate_bucket_name(share.tenant.as_deref()), left, now).await?;
                }
                let Some(by) = by else { continue };
                let tenant = share.tenant.as_deref().unwrap_or("");
                if got[i] >= cap && !rounds.is_exhausted(i) {
                    let due: bool = tx
                        .query_one(
                            concat!("SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = $1 AND ", tenant_is!(), "$2 AND state IN ", waiting!(), " AND scheduled_at <= $3)"),
                            &[&p.queue, &tenant, &now],
                        )
                        .await
                        .map_err(pg_error)?
                        .get(0);
                    if due {
                        let until = match (by, share.limits.rate, left) {
                            (Limit::Rate, Some(rate), Some(left)) => Some(rate.next_token_at(left, now)),
                            _ => None,
                        };
                        held_back.push(HeldBack { tenant: share.tenant.clone(), kind: None, by, until });
                    }
                }
            }
        }
        if let Some(gate) = &gate {
            for (name, tokens) in gate.buckets() {
                save_bucket(&tx, &name, tokens, now).await?;
            }
            held_back.extend(gate.held_back(now));
        }
        tx.commit().await.map_err(pg_error)?;
        sort_best_first(&mut jobs);
        Ok(Claimed { jobs, held_back })
    }

    async fn heartbeat(&self, p: HeartbeatParams) -> Result<HeartbeatResult, StoreError> {
        let now = self.now();
        let client = self.client().await?;
        let ids: Vec<JobId> = p.leases.iter().map(|l| l.id).collect();
        let tokens: Vec<i64> = p.leases.iter().map(|l| l.token).collect();
        let reported: std::collections::HashMap<Lease, &Progress> = p.progress.iter().map(|(l, p)| (*l, p)).collect();
        let percents: Vec<Option<i16>> = p.leases.iter().map(|l| reported.get(l).map(|p| i16::from(p.percent))).collect();
        let notes: Vec<Option<&str>> = p.leases.iter().map(|l| reported.get(l).and_then(|p| p.note.as_deref())).collect();
        let stmt = client
            .prepare_cached(
                concat!(
                    "WITH done AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $4::smallint[], $5::text[]) AS held(id, token, percent, note)), ",
                    locked_in_order!(),
                    "UPDATE jobs SET lease_expires_at = $3, progress_percent = coalesce(done.percent, jobs.progress_percent), \
                     progress_note = CASE WHEN done.percent IS NULL THEN jobs.progress_note ELSE done.note END FROM done, locked \
                     WHERE jobs.id = done.id AND jobs.id = locked.id AND jobs.lease_token = done.token AND jobs.state = 'running' \
                     RETURNING jobs.id, jobs.cancel_requested"
                ),
            )
            .await
            .map_err(pg_error)?;
        let rows = client.query(&stmt, &[&ids, &tokens, &(now + p.lease_ms), &percents, &notes]).await.map_err(pg_error)?;
        let kept: std::collections::HashMap<JobId, bool> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut result = HeartbeatResult::default();
        for lease in p.leases {
            match kept.get(&lease.id) {
                None => result.lost.push(lease),
                Some(true) => result.cancel_requested.push(lease),
                Some(false) => {}
            }
        }
        Ok(result)
    }

    async fn finish_many(&self, finishes: Vec<Finish>) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let now = self.now();
        let mut client = self.client().await?;
        let completes: Vec<&Finish> = finishes.iter().filter(|f| matches!(f.transition, Transition::Complete { .. })).collect();
        let stale = |f: &Finish| Err(StoreError::StaleLease { id: f.lease.id, token: f.lease.token });
        let has_effects = |f: &Finish| matches!(&f.transition, Transition::Complete { effects, .. } if !effects.is_empty());
        if completes.len() == finishes.len() && !finishes.iter().any(has_effects) {
            // The common case: one statement, no explicit transaction.
            let done = complete_batch(&client, &completes, now).await?;
            return Ok(finishes.iter().map(|f| if done.contains(&f.lease.id) { Ok(()) } else { stale(f) }).collect());
        }
        let tx = client.transaction().await.map_err(pg_error)?;
        // Lock every row of the batch first, in id order (see `locked_in_order!`).
        let ids: Vec<JobId> = finishes.iter().map(|f| f.lease.id).collect();
        tx.execute("SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE", &[&ids]).await.map_err(pg_error)?;
        let done = if completes.is_empty() { HashSet::new() } else { complete_batch(&tx, &completes, now).await? };
        // The effects of the runs completed here, in the same transaction.
        for f in &finishes {
            if let Transition::Complete { effects, .. } = &f.transition {
                if done.contains(&f.lease.id) {
                    apply_kv(&tx, &effects.kv, now).await?;
                    if !effects.children.is_empty() {
                        insert_jobs(&tx, &effects.children, now).await?;
                    }
                }
            }
        }
        let mut results = Vec::with_capacity(finishes.len());
        for f in &finishes {
            let applied = match f.transition {
                Transition::Complete { .. } => done.contains(&f.lease.id),
                _ => apply_one(&tx, f, now).await?,
            };
            results.push(if applied { Ok(()) } else { stale(f) });
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(results)
    }

    async fn prune(&self, p: PruneParams) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let state = p.state.as_str();
        // Rows another host's pruner holds are skipped: it deletes them.
        let by_age = concat!(
            "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j WHERE j.state = $1 AND j.finalized_at < $2 AND NOT ",
            kept_tick!(),
            " ORDER BY j.finalized_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
        );
        let mut deleted = tx.execute(by_age, &[&state, &p.finalized_before, &(p.limit as i64)]).await.map_err(pg_error)?;
        let queues: Vec<String> = tx.query("SELECT name FROM queues ORDER BY name", &[]).await.map_err(pg_error)?.iter().map(|r| r.get(0)).collect();
        for queue in queues {
            let left = p.limit as u64 - deleted;
            if left == 0 {
                break;
            }
            let cutoff = tx
                .query_opt("SELECT id FROM jobs WHERE queue = $1 AND state = $2 ORDER BY id DESC LIMIT 1 OFFSET $3", &[&queue, &state, &(p.keep_per_queue as i64)])
                .await
                .map_err(pg_error)?;
            let Some(cutoff) = cutoff.map(|r| r.get::<_, JobId>(0)) else { continue };
            let by_count = concat!(
                "DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j WHERE j.queue = $1 AND j.state = $2 AND j.id <= $3 AND NOT ",
                kept_tick!(),
                " ORDER BY j.id LIMIT $4 FOR UPDATE SKIP LOCKED)"
            );
            deleted += tx.execute(by_count, &[&queue, &state, &cutoff, &(left as i64)]).await.map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(deleted)
    }

    async fn cancel(&self, id: JobId) -> Result<Job, StoreError> {
        let now = self.now();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let state: Option<String> =
            tx.query_opt("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", &[&id]).await.map_err(pg_error)?.map(|r| r.get(0));
        let state: JobState = state.ok_or(StoreError::NotFound(id))?.parse().map_err(StoreError::Database)?;
        match state {
            JobState::Running => {
                tx.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", &[&id]).await.map_err(pg_error)?;
            }
            state if state.is_final() => return Err(StoreError::InvalidState { id, state, action: "cancel" }),
            _ => {
                tx.execute("UPDATE jobs SET state = 'cancelled', finalized_at = $2 WHERE id = $1", &[&id, &now])
                    .await
                    .map_err(pg_error)?;
            }
        }
        let job = get_job(&tx, id).await?.ok_or(StoreError::NotFound(id))?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    async fn rescue_expired(&self, spare: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let now = self.now();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE jobs SET \
                   state = CASE WHEN cancel_requested THEN 'cancelled' WHEN attempt >= max_attempts THEN 'dead' ELSE 'retryable' END, \
                   finalized_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN $1::bigint END, \
                   scheduled_at = least(scheduled_at, $1), leased_by = NULL, lease_expires_at = NULL, cancel_requested = false, \
                   errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'at', $1::bigint, \
                     'outcome', 'lease_expired', 'message', 'the lease of host ' || coalesce(leased_by, '?') || \
                     ' expired: the host stopped or lost touch with the store')) \
                 WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < $1 AND NOT (id = ANY($2)) \
                   FOR UPDATE SKIP LOCKED) \
                 RETURNING id",
            )
            .await
            .map_err(pg_error)?;
        let mut ids: Vec<JobId> = client.query(&stmt, &[&now, &spare]).await.map_err(pg_error)?.iter().map(|r| r.get(0)).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn retry_by_hand(&self, id: JobId) -> Result<Job, StoreError> {
        let now = self.now();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let row = tx.query_opt("SELECT state, unique_key FROM jobs WHERE id = $1 FOR UPDATE", &[&id]).await.map_err(pg_error)?;
        let row = row.ok_or(StoreError::NotFound(id))?;
        let state: JobState = row.get::<_, String>(0).parse().map_err(StoreError::Database)?;
        let key: Option<String> = row.get(1);
        if !matches!(state, JobState::Dead | JobState::Cancelled) {
            return Err(StoreError::InvalidState { id, state, action: "retry" });
        }
        let updated = tx
            .execute(
                "UPDATE jobs SET state = 'available', max_attempts = greatest(max_attempts, attempt + 1), scheduled_at = $2, \
                 finalized_at = NULL, result = NULL, cancel_requested = false WHERE id = $1",
                &[&id, &now],
            )
            .await;
        if let Err(e) = updated {
            if is_unique_violation(&e) {
                drop(tx);
                let key = key.unwrap_or_default();
                let existing = self
                    .client()
                    .await?
                    .query_opt("SELECT id FROM jobs WHERE unique_key = $1 AND state NOT IN ('cancelled', 'dead')", &[&key])
                    .await
                    .map_err(pg_error)?
                    .map_or(0, |r| r.get(0));
                return Err(StoreError::UniqueConflict { key, existing });
            }
            return Err(pg_error(e));
        }
        let job = get_job(&tx, id).await?.ok_or(StoreError::NotFound(id))?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    async fn delete_by_hand(&self, id: JobId) -> Result<Job, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&id]).await.map_err(pg_error)?;
        let job = get_job(&tx, id).await?.ok_or(StoreError::NotFound(id))?;
        if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
            return Err(StoreError::InvalidState { id, state: job.state, action: "delete" });
        }
        if let Some(key) = schedule_tick_key(&job) {
            let (start, end) = schedule_key_range(&job.kind);
            let newest: Option<String> = tx
                .query_one("SELECT max(unique_key) FROM jobs WHERE kind = $1 AND unique_key >= $2 AND unique_key < $3", &[&job.kind, &start, &end])
                .await
                .map_err(pg_error)?
                .get(0);
            if newest.as_deref() == Some(key) {
                return Err(StoreError::Kept { id, reason: SCHEDULE_TICK_KEPT });
            }
        }
        tx.execute("DELETE FROM jobs WHERE id = $1", &[&id]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(job)
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        get_job(&self.client().await?, id).await
    }

    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT attempt, host, plugin_version, started_at, ended_at, outcome, error, duration_ms, fuel_used, peak_memory_bytes, \
                 http_requests, log_bytes_dropped FROM job_attempts WHERE job_id = $1 ORDER BY attempt",
            )
            .await
            .map_err(pg_error)?;
        let count = |r: &Row, i: usize| r.get::<_, i64>(i).max(0) as u64;
        Ok(client
            .query(&stmt, &[&id])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| Attempt {
                attempt: r.get::<_, i32>(0).max(0) as u32,
                plugin_version: r.get(2),
                summary: AttemptSummary {
                    host: r.get(1),
                    started_at: r.get(3),
                    ended_at: r.get(4),
                    outcome: r.get(5),
                    error: r.get(6),
                    duration_ms: r.get(7),
                    fuel_used: count(r, 8),
                    peak_memory_bytes: count(r, 9),
                    http_requests: count(r, 10),
                    log_bytes_dropped: count(r, 11),
                },
            })
            .collect())
    }

    async fn attempt_logs(&self, id: JobId, attempt: Option<u32>, max_bytes: u64) -> Result<AttemptLogs, StoreError> {
        let client = self.client().await?;
        // Sizes first, then only the attempts that fit.
        let stmt = client
            .prepare_cached(
                "WITH sized AS (SELECT attempt, sum(octet_length(logs)) OVER (ORDER BY attempt) - octet_length(logs) AS before, \
                   row_number() OVER (ORDER BY attempt) AS n, count(*) OVER () AS total \
                   FROM job_attempts WHERE job_id = $1 AND ($2::integer IS NULL OR attempt = $2)) \
                 SELECT a.attempt, a.logs, sized.total FROM job_attempts a JOIN sized ON sized.attempt = a.attempt \
                 WHERE a.job_id = $1 AND (sized.before < $3 OR sized.n = 1) ORDER BY a.attempt",
            )
            .await
            .map_err(pg_error)?;
        let attempt = attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX));
        let rows = client.query(&stmt, &[&id, &attempt, &clamp_i64(max_bytes)]).await.map_err(pg_error)?;
        let more = rows.first().is_some_and(|r| r.get::<_, i64>(2) > rows.len() as i64);
        let lines = rows
            .iter()
            .flat_map(|r| {
                let n = r.get::<_, i32>(0).max(0) as u32;
                logs_of_json(r.get(1)).into_iter().map(move |l| (n, l))
            })
            .collect();
        Ok(AttemptLogs { lines, more })
    }

    async fn list(&self, filter: ListFilter) -> Result<JobList, StoreError> {
        let state = filter.state.map(|s| s.as_str().to_string());
        let limit = filter.limit as i64;
        let mut clauses = Vec::new();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (column, value) in
            [("state", state.as_ref()), ("kind", filter.kind.as_ref()), ("queue", filter.queue.as_ref()), ("tenant", filter.tenant.as_ref())]
        {
            if let Some(value) = value {
                params.push(value);
                clauses.push(format!("{column} = ${}", params.len()));
            }
        }
        let (beyond, order) = if filter.newest_first { ("<", "DESC") } else { (">", "ASC") };
        if let Some(after) = &filter.after_id {
            params.push(after);
            clauses.push(format!("id {beyond} ${}", params.len()));
        }
        let filter_sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        params.push(&limit);
        let limit_at = params.len();
        let max_bytes = i64::try_from(filter.max_bytes).unwrap_or(i64::MAX);
        params.push(&max_bytes);
        // Sizes first (octet_length reads no TOASTed value), one job more
        // than the page to learn whether there are more, then only the rows
        // that fit the byte bound.
        let sql = format!(
            "WITH page AS (SELECT id, octet_length(payload) + coalesce(octet_length(result), 0) + octet_length(errors::text) AS size \
               FROM jobs {filter_sql} ORDER BY id {order} LIMIT ${limit_at}::bigint + 1), \
             fitting AS (SELECT id, row_number() OVER (ORDER BY id {order}) AS n, \
               (sum(size) OVER (ORDER BY id {order}) - size)::bigint AS before FROM page) \
             SELECT {}, (SELECT count(*) FROM page) FROM jobs \
             WHERE id IN (SELECT id FROM fitting WHERE before < ${}::bigint AND n <= ${limit_at}::bigint) ORDER BY id {order}",
            columns!(),
            params.len()
        );
        let rows = self.client().await?.query(&sql, &params).await.map_err(pg_error)?;
        let matched = rows.first().map_or(0, |r| r.get::<_, i64>(JOB_COLUMNS)) as usize;
        let jobs = jobs_from_rows(&rows)?;
        Ok(JobList { more: matched > jobs.len(), jobs })
    }

    async fn fold_counts(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // One host folds at a time; the others skip this round.
        let ours: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock(hashtextextended('kiln:fold:' || current_schema(), 0))", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        if ours {
            tx.execute(
                "WITH moved AS (DELETE FROM job_count_deltas RETURNING queue, tenant, state, n) \
                 INSERT INTO job_counts AS c (queue, tenant, state, n) \
                 SELECT queue, tenant, state, sum(n)::bigint FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 \
                 ON CONFLICT (queue, tenant, state) DO UPDATE SET n = c.n + excluded.n",
                &[],
            )
            .await
            .map_err(pg_error)?;
            tx.execute("DELETE FROM job_counts WHERE n = 0", &[]).await.map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)
    }

    async fn counts(&self) -> Result<Vec<StateCount>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(concat!("SELECT queue, nullif(tenant, ''), state, sum(n)::bigint FROM ", counted!(), " GROUP BY queue, tenant, state HAVING sum(n) <> 0 ORDER BY queue, tenant, state"), &[])
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|r| {
                Ok(StateCount {
                    queue: r.get(0),
                    tenant: r.get(1),
                    state: r.get::<_, String>(2).parse().map_err(StoreError::Database)?,
                    count: r.get::<_, i64>(3) as u64,
                })
            })
            .collect()
    }

    async fn next_due(&self, queue: &str) -> Result<Option<Millis>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(next_due_sql!("$1"))
            .await
            .map_err(pg_error)?;
        Ok(client.query_one(&stmt, &[&queue]).await.map_err(pg_error)?.get(0))
    }

    async fn pause_queue(&self, queue: &str) -> Result<(), StoreError> {
        self.set_paused(queue, true).await
    }

    async fn resume_queue(&self, queue: &str) -> Result<(), StoreError> {
        self.set_paused(queue, false).await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        let rows = self.client().await?.query("SELECT name, paused FROM queues ORDER BY name", &[]).await.map_err(pg_error)?;
        Ok(rows.iter().map(|r| QueueInfo { name: r.get(0), paused: r.get(1) }).collect())
    }

    async fn pending_count(&self, kind: &str) -> Result<u64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(concat!("SELECT count(*) FROM jobs WHERE state IN ", pending!(), " AND kind = $1"), &[&kind])
            .await
            .map_err(pg_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn waiting_count(&self, tenant: Option<&str>) -> Result<u64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(concat!("SELECT coalesce(sum(n), 0)::bigint FROM ", counted!(), " WHERE tenant = $1 AND state IN ", waiting!()), &[&tenant.unwrap_or("")])
            .await
            .map_err(pg_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn schedule_state(&self, kind: &str) -> Result<ScheduleState, StoreError> {
        let (start, end) = schedule_key_range(kind);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(concat!(
                "SELECT (SELECT max(unique_key) FROM jobs WHERE kind = $1 AND unique_key >= $2 AND unique_key < $3), \
                        EXISTS (SELECT 1 FROM jobs WHERE state IN ",
                pending!(),
                " AND kind = $1 AND unique_key >= $2 AND unique_key < $3)"
            ))
            .await
            .map_err(pg_error)?;
        let row = client.query_one(&stmt, &[&kind, &start, &end]).await.map_err(pg_error)?;
        let last: Option<String> = row.get(0);
        Ok(ScheduleState { last_tick: last.as_deref().and_then(tick_of_key), active: row.get(1) })
    }

    async fn schedule_checkpoint(&self, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (start, end) = schedule_key_range(kind);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT result FROM jobs WHERE kind = $1 AND unique_key >= $2 AND unique_key < $3 AND state = 'completed' \
                 ORDER BY unique_key DESC LIMIT 1",
            )
            .await
            .map_err(pg_error)?;
        let row = client.query_opt(&stmt, &[&kind, &start, &end]).await.map_err(pg_error)?;
        Ok(row.and_then(|r| r.get(0)))
    }

    async fn acquire_loop(&self, claim: LoopClaim) -> Result<Option<LoopLease>, StoreError> {
        let now = self.now();
        let client = self.client().await?;
        client
            .execute("INSERT INTO loops (name, updated_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", &[&claim.name, &now])
            .await
            .map_err(pg_error)?;
        let row = client
            .query_opt(
                "UPDATE loops SET token = token + 1, owner = $2, lease_expires_at = $3::bigint + $4::bigint, updated_at = $3 \
                 WHERE name = $1 AND (owner IS NULL OR owner = $2 OR lease_expires_at < $3) RETURNING token, checkpoint, passes",
                &[&claim.name, &claim.host, &now, &claim.lease_ms],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.map(|r| LoopLease { name: claim.name, token: r.get(0), checkpoint: r.get(1), passes: r.get::<_, i64>(2) as u64 }))
    }

    async fn save_loop(&self, save: LoopSave) -> Result<(), StoreError> {
        let now = self.now();
        let stored = save.checkpoint.is_some();
        let changed = self
            .client()
            .await?
            .execute(
                "UPDATE loops SET checkpoint = CASE WHEN $3 THEN $4 ELSE checkpoint END, passes = passes + CASE WHEN $3 THEN 1 ELSE 0 END, \
                 lease_expires_at = $5::bigint + $6::bigint, updated_at = $5 WHERE name = $1 AND token = $2 AND owner IS NOT NULL",
                &[&save.name, &save.token, &stored, &save.checkpoint, &now, &save.lease_ms],
            )
            .await
            .map_err(pg_error)?;
        if changed == 1 { Ok(()) } else { Err(StoreError::LoopLost { name: save.name, token: save.token }) }
    }

    async fn release_loop(&self, name: &str, token: i64) -> Result<(), StoreError> {
        let changed = self
            .client()
            .await?
            .execute(
                "UPDATE loops SET owner = NULL, lease_expires_at = NULL, updated_at = $3 WHERE name = $1 AND token = $2",
                &[&name, &token, &self.now()],
            )
            .await
            .map_err(pg_error)?;
        if changed == 1 { Ok(()) } else { Err(StoreError::LoopLost { name: name.to_string(), token }) }
    }

    async fn kv_get(&self, namespace: &str, store: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("SELECT value FROM kv WHERE namespace = $1 AND store = $2 AND key = $3").await.map_err(pg_error)?;
        Ok(client.query_opt(&stmt, &[&namespace, &store, &key]).await.map_err(pg_error)?.map(|r| r.get(0)))
    }

    async fn kv_keys(&self, namespace: &str, store: &str, prefix: &str, offset: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
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

    async fn kv_usage(&self, namespace: &str, store: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT bytes FROM kv_usage WHERE namespace = $1 AND store = $2")
            .await
            .map_err(pg_error)?;
        let used: i64 = client.query_opt(&stmt, &[&namespace, &store]).await.map_err(pg_error)?.map_or(0, |r| r.get(0));
        Ok(used.max(0) as u64)
    }

    async fn kv_usage_under(&self, prefix: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        // One row per store: a scan of kv_usage, not of the values.
        let stmt = client
            .prepare_cached("SELECT coalesce(sum(bytes), 0)::bigint FROM kv_usage WHERE starts_with(namespace, $1)")
            .await
            .map_err(pg_error)?;
        let used: i64 = client.query_one(&stmt, &[&prefix]).await.map_err(pg_error)?.get(0);
        Ok(used.max(0) as u64)
    }

    async fn write_kv(&self, writes: Vec<KvWrite>) -> Result<(), StoreError> {
        let now = self.now();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        apply_kv(&tx, &writes, now).await?;
        tx.commit().await.map_err(pg_error)
    }

    async fn record_minutes(&self, rows: Vec<MinuteRuns>, keep_since: Millis) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("DELETE FROM run_minutes WHERE minute < $1", &[&keep_since]).await.map_err(pg_error)?;
        let rows: Vec<&MinuteRuns> = rows.iter().filter(|r| r.minute >= keep_since).collect();
        if !rows.is_empty() {
            let column = |f: fn(&MinuteRuns) -> i64| rows.iter().map(|r| f(r)).collect::<Vec<i64>>();
            let text = |f: fn(&MinuteRuns) -> &str| rows.iter().map(|r| f(r)).collect::<Vec<&str>>();
            tx.execute(
                "INSERT INTO run_minutes (minute, host, queue, kind, runs, failures, delay_ms_sum, delay_ms_max) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[]) \
                 ON CONFLICT (minute, host, queue, kind) DO UPDATE SET \
                 runs = excluded.runs, failures = excluded.failures, delay_ms_sum = excluded.delay_ms_sum, delay_ms_max = excluded.delay_ms_max",
                &[
                    &column(|r| r.minute),
                    &text(|r| &r.host),
                    &text(|r| &r.queue),
                    &text(|r| &r.kind),
                    &column(|r| r.runs as i64),
                    &column(|r| r.failures as i64),
                    &column(|r| r.delay_ms_sum),
                    &column(|r| r.delay_ms_max),
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)
    }

    async fn minutes(&self, since: Millis) -> Result<Vec<MinuteRuns>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT minute, host, queue, kind, runs, failures, delay_ms_sum, delay_ms_max FROM run_minutes \
                 WHERE minute >= $1 ORDER BY minute, host, queue, kind",
                &[&since],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|r| MinuteRuns {
                minute: r.get(0),
                host: r.get(1),
                queue: r.get(2),
                kind: r.get(3),
                runs: r.get::<_, i64>(4) as u64,
                failures: r.get::<_, i64>(5) as u64,
                delay_ms_sum: r.get(6),
                delay_ms_max: r.get(7),
            })
            .collect())
    }

    async fn loops(&self) -> Result<Vec<LoopState>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT name, checkpoint, passes, owner, lease_expires_at, updated_at FROM loops ORDER BY name", &[])
            .await
            .map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|r| LoopState {
                name: r.get(0),
                checkpoint: r.get(1),
                passes: r.get::<_, i64>(2) as u64,
                owner: r.get(3),
                lease_expires_at: r.get(4),
                updated_at: r.get(5),
            })
            .collect())
    }

    fn wakeups(&self) -> Option<broadcast::Receiver<String>> {
        let (sender, _) = self.shared.listener.get_or_init(|| {
            let (sender, _) = broadcast::channel(1024);
            let task = tokio::spawn(listen(self.shared.config.clone(), self.channel(), sender.clone()));
            (sender, task.abort_handle())
        });
        Some(sender.subscribe())
    }
}

/// Holds one connection that `LISTEN`s on `channel` and forwards each
/// notification's payload (a queue name) to `wakeups`. When the connection
/// is lost it says so, reconnects with backoff, and then sends
/// [`WAKE_ALL`], since notifications sent meanwhile were missed.
async fn listen(config: tokio_postgres::Config, channel: String, wakeups: broadcast::Sender<String>) {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn job_columns_counts_the_columns_a_job_is_read_from() {
        assert_eq!(columns!().split(',').count(), JOB_COLUMNS);
    }
    use crate::queue::clock::{ManualClock, SystemClock};

    /// The URL of the Postgres to test against. Tests that call this are
    /// compiled as ignored ("needs Postgres") unless `KILN_TEST_DATABASE_URL`
    /// was set at build time (see build.rs), so they are never counted as
    /// passed without a database.
    pub fn test_database_url() -> String {
        std::env::var("KILN_TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .expect("built with KILN_TEST_DATABASE_URL set, so it must be set when the tests run")
    }

    /// A fresh schema for one test, dropped when the guard drops.
    pub struct TestSchema {
        base: String,
        pub name: String,
    }

    impl TestSchema {
        pub fn new(url: &str) -> Self {
            Self { base: url.to_string(), name: format!("kiln_test_{}_{}", std::process::id(), fastrand::u64(..)) }
        }

        /// The test URL with the schema as the connections' application
        /// name, so the guard can end them before dropping the schema.
        pub fn url(&self) -> String {
            let separator = if self.base.contains('?') { '&' } else { '?' };
            format!("{}{separator}application_name={}", self.base, self.name)
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            let (url, name) = (self.base.clone(), self.name.clone());
            // On a thread of its own: this runs inside the test's runtime,
            // which cannot drive the store's connections meanwhile. Those
            // may still hold locks (a transaction being rolled back), so
            // they are ended first.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    if let Ok((client, connection)) = tokio_postgres::connect(&url, NoTls).await {
                        tokio::spawn(connection);
                        let _ = client
                            .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", &[&name])
                            .await;
                        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
                    }
                });
            })
            .join();
        }
    }

    async fn postgres_store() -> (Arc<dyn JobStore>, ManualClock, TestSchema) {
        let url = test_database_url();
        let schema = TestSchema::new(&url);
        let clock = ManualClock::new(1_700_000_000_000);
        let store = PostgresStore::connect(&schema.url(), &schema.name, Arc::new(clock.clone())).await.unwrap();
        (Arc::new(store), clock, schema)
    }

    crate::queue::conformance::conformance_tests!(postgres_store, #[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
    async fn hosts_claiming_at_once_keep_a_tenants_max_running_and_rate_between_them() {
        use crate::queue::{ClaimShare, StartRate, TenantLimits};
        let url = test_database_url();
        let schema = TestSchema::new(&url);
        let mut hosts = Vec::new();
        for _ in 0..3 {
            hosts.push(Arc::new(PostgresStore::connect(&schema.url(), &schema.name, Arc::new(SystemClock)).await.unwrap()));
        }
        let jobs = (0..40).map(|_| NewJob::new("acme/echo", b"1".to_vec())).chain((0..40).map(|_| NewJob::new("beta/echo", b"1".to_vec())));
        hosts[0].insert_many(jobs.collect()).await.unwrap();
        let shares = vec![
            ClaimShare { tenant: Some("acme".into()), want: 10, weight: 1, limits: TenantLimits { max_running: Some(4), rate: None } },
            ClaimShare { tenant: Some("beta".into()), want: 10, weight: 1, limits: TenantLimits { max_running: None, rate: Some(StartRate { count: 5, per_ms: 3_600_000 }) } },
        ];
        let mut claims = tokio::task::JoinSet::new();
        for round in 0..30 {
            let (store, shares) = (hosts[round % 3].clone(), shares.clone());
            claims.spawn(async move {
                let params = ClaimParams { queue: "default".into(), limit: 20, host: format!("host-{}", round % 3), lease_ms: 60_000, shares, kinds: Vec::new() };
                store.claim_fair(params).await.unwrap().jobs
            });
        }
        let claimed: Vec<Job> = claims.join_all().await.into_iter().flatten().collect();
        let of = |t: &str| claimed.iter().filter(|j| j.tenant() == Some(t)).count();
        assert_eq!((of("acme"), of("beta")), (4, 5), "max_running 4 and a bucket of 5, whichever host claimed");
    }

    #[tokio::test]
    #[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
    async fn two_hosts_migrating_at_once_apply_each_migration_once() {
        let url = test_database_url();
        let schema = TestSchema::new(&url);
        let url = schema.url();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (url, name) = (url.clone(), schema.name.clone());
            connects.spawn(async move { PostgresStore::connect(&url, &name, Arc::new(SystemClock)).await.map(drop) });
        }
        for store in connects.join_all().await {
            store.unwrap();
        }
        let store = PostgresStore::connect(&schema.url(), &schema.name, Arc::new(SystemClock)).await.unwrap();
        let applied: i64 = store.client().await.unwrap().query_one("SELECT count(*) FROM kiln_migrations", &[]).await.unwrap().get(0);
        assert_eq!(applied, MIGRATIONS.len() as i64);
        store.client().await.unwrap().execute("INSERT INTO kiln_migrations VALUES (999, 'future', 0)", &[]).await.unwrap();
        let err = PostgresStore::connect(&schema.url(), &schema.name, Arc::new(SystemClock)).await.unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 999, .. }), "{err}");
    }

    #[tokio::test]
    #[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
    async fn a_schema_of_another_application_is_refused_and_left_untouched() {
        let url = test_database_url();
        let schema = TestSchema::new(&url);
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA {0}; CREATE TABLE {0}.invoices (id int); INSERT INTO {0}.invoices VALUES (7);", schema.name))
            .await
            .unwrap();
        let err = PostgresStore::connect(&schema.url(), &schema.name, Arc::new(SystemClock)).await.unwrap_err().to_string();
        assert!(err.contains("invoices") && err.contains(&schema.name), "{err}");
        let kept: i64 = client.query_one(&format!("SELECT count(*) FROM {}.invoices", schema.name), &[]).await.unwrap().get(0);
        assert_eq!(kept, 1);
        let tables: i64 = client
            .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = $1", &[&schema.name])
            .await
            .unwrap()
            .get(0);
        assert_eq!(tables, 1, "nothing was created beside it");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_a_clear_error() {
        let err = PostgresStore::connect("postgres://kiln@127.0.0.1:1/none", "kiln", Arc::new(SystemClock)).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("127.0.0.1:1/none"), "{err}");
        let err = PostgresStore::connect("postgres://kiln@127.0.0.1/db", "Bad-Name", Arc::new(SystemClock)).await.unwrap_err();
        assert!(err.to_string().contains("\"Bad-Name\" is not a schema name"), "{err}");
        let err = PostgresStore::connect("postgres://[", "kiln", Arc::new(SystemClock)).await.unwrap_err();
        assert!(err.to_string().contains("bad database URL"), "{err}");
    }

    #[tokio::test]
    #[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
    async fn an_insert_on_one_host_wakes_the_others() {
        let url = test_database_url();
        let schema = TestSchema::new(&url);
        let a = PostgresStore::connect(&schema.url(), &schema.name, Arc::new(SystemClock)).await.unwrap();
        let b = PostgresStore::connect(&schema.url(), &schema.name, Arc::new(SystemClock)).await.unwrap();
        let other = TestSchema::new(&url);
        let elsewhere = PostgresStore::connect(&other.url(), &other.name, Arc::new(SystemClock)).await.unwrap();
        let mut woken = b.wakeups().unwrap();
        // The listener is up once it hears anything; keep inserting until then.
        let heard = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                elsewhere.insert(NewJob { queue: "other-schema".into(), ..NewJob::new("echo", b"{}".to_vec()) }).await.unwrap();
                a.insert(NewJob { queue: "mail".into(), ..NewJob::new("echo", b"{}".to_vec()) }).await.unwrap();
                if let Ok(Ok(queue)) = tokio::time::timeout(Duration::from_millis(200), woken.recv()).await {
                    return queue;
                }
            }
        })
        .await
        .expect("a notification within 10 s");
        assert_eq!(heard, "mail", "only this schema's inserts, named by queue");
    }
}
