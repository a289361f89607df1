//! The Postgres store: the conformance suite, and what only a shared
//! database has (hosts migrating and claiming at once, another
//! application's schema, an unreachable server, wake-ups across hosts).

use super::connection::PostgresStore;
use super::rows::JOB_COLUMNS;
use super::schema::MIGRATIONS;
use crate::queue::{ClaimParams, JobStore, NewJob, StoreError};
use crate::queue::job::Job;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::NoTls;

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

#[test]
fn the_migrations_folder_and_the_list_agree() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/queue/postgres/migrations");
    crate::queue::migration::check_list(MIGRATIONS, &dir);
}

/// A schema as a host of an older version left it: migrations up to
/// `version` applied and recorded, a completed job, a waiting one and
/// (from version 3, when kv came) a kv entry with its store's size (from
/// version 4), written as a host of that version writes them.
async fn older_schema(url: &str, schema: &str, version: i64) {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE SCHEMA {schema}; SET search_path TO {schema};")).await.unwrap();
    client.batch_execute("CREATE TABLE kiln_migrations (version bigint PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL);").await.unwrap();
    for m in MIGRATIONS.iter().take_while(|m| m.version <= version) {
        client.batch_execute(m.sql).await.unwrap_or_else(|e| panic!("migration {}: {e}", m.version));
        client.execute("INSERT INTO kiln_migrations VALUES ($1, $2, 0)", &[&m.version, &m.name]).await.unwrap();
    }
    client
        .batch_execute(
            "INSERT INTO jobs (kind, queue, priority, payload, state, attempt, max_attempts, scheduled_at, created_at, result, finalized_at)
               VALUES ('echo', 'default', 0, '{\"n\":1}'::bytea, 'completed', 1, 3, 1000, 1000, '{\"n\":1}'::bytea, 1001);
             INSERT INTO jobs (kind, queue, priority, payload, state, attempt, max_attempts, scheduled_at, created_at)
               VALUES ('send-email', 'mail', 5, '{\"to\":\"ada@example.com\"}'::bytea, 'available', 0, 3, 1000, 1000);",
        )
        .await
        .unwrap();
    if version >= 3 {
        client.batch_execute("INSERT INTO kv (namespace, store, key, value, updated_at) VALUES ('cleanup', 'default', 'k', 'v'::bytea, 1000);").await.unwrap();
    }
    if version >= 4 {
        client.batch_execute("INSERT INTO kv_usage (namespace, store, bytes) VALUES ('cleanup', 'default', 2);").await.unwrap();
    }
}

#[tokio::test]
#[cfg_attr(not(kiln_postgres), ignore = "needs Postgres: set KILN_TEST_DATABASE_URL")]
async fn a_schema_of_an_older_version_runs_forward_with_nothing_lost() {
    let url = test_database_url();
    for version in [1, 3, 5, 9, 10, 12, crate::queue::migration::latest(MIGRATIONS)] {
        let schema = TestSchema::new(&url);
        older_schema(&schema.url(), &schema.name, version).await;
        let store = PostgresStore::connect(&schema.url(), &schema.name, Arc::new(SystemClock))
            .await
            .unwrap_or_else(|e| panic!("from version {version}: {e}"));
        crate::queue::conformance::check_migrated(&store, version, version >= 3).await;
    }
}
