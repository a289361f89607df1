//! A Postgres schema of its own for one end-to-end test, read with plain
//! SQL so the tests check the store's rows, not only what the API says.
//! Tests that use it are listed as ignored unless `KILN_TEST_DATABASE_URL`
//! was set when they were built (see host/build.rs).

use tokio_postgres::{NoTls, Row};

pub struct Database {
    pub url: String,
    pub schema: String,
    runtime: tokio::runtime::Runtime,
    /// Reconnected when lost (the outage test restarts the server).
    client: std::cell::RefCell<Option<tokio_postgres::Client>>,
}

impl Database {
    /// A fresh schema in the test database; dropped with the value.
    pub fn new() -> Self {
        let url = std::env::var("KILN_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .expect("built with KILN_TEST_DATABASE_URL set, so it must be set when the tests run");
        let schema = format!("kiln_e2e_{}_{}", std::process::id(), fastrand::u32(..));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Self { url, schema, runtime, client: std::cell::RefCell::new(None) }
    }

    /// A `kiln.toml` naming this database and schema, then `rest`.
    pub fn config(&self, rest: &str) -> String {
        format!("database_url = \"{}\"\ndatabase_schema = \"{}\"\n{rest}", self.url, self.schema)
    }

    /// Runs `sql` in this schema. A failure (the database down) is an `Err`.
    pub fn try_query(&self, sql: &str) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.runtime.block_on(async {
            let mut slot = self.client.borrow_mut();
            if slot.as_ref().is_none_or(|c| c.is_closed()) {
                let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
                tokio::spawn(connection);
                // Allowed before the schema exists; hosts create it.
                client.batch_execute(&format!("SET search_path = {}", self.schema)).await?;
                *slot = Some(client);
            }
            slot.as_ref().expect("connected").query(sql, &[]).await
        })
    }

    pub fn query(&self, sql: &str) -> Vec<Row> {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {}", e.as_db_error().map_or_else(|| e.to_string(), ToString::to_string)))
    }

    /// The one bigint `sql` selects.
    pub fn count(&self, sql: &str) -> i64 {
        self.query(sql)[0].get(0)
    }

    /// Runs `f` on this database's runtime (for calling the kiln library).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = self.try_query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
    }
}
