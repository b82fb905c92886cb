//! The transport conformance suite (`bus-conformance`) on PostgreSQL tables, twice:
//!
//! - `shared`: on the machine's server (127.0.0.1:5432, database `test`), a fresh table prefix
//!   per case (its tables dropped after it). Not restartable: `broker_restart` is skipped
//!   there, by name.
//! - `private`: on a PostgreSQL each case starts for itself from a temporary directory
//!   (`initdb`, `pg_ctl`, `fsync=on`) on a free loopback port, which the harness restarts
//!   (`pg_ctl stop -m immediate`, a crash, then start): every case runs, `broker_restart`
//!   included.
//!
//! The instances a case connects share one pool of the harness (each has its own state and its
//! own `LISTEN` connection), so that 50 instances stay under the server's `max_connections`.
//! An unreachable server fails the case in CI (`CI=true`); locally the case is skipped with a
//! printed message.

#[path = "common/pg_server.rs"]
mod pg_server;

use std::sync::Arc;

use bus_conformance::Harness;
use bus_core::transport::{BoxFuture, Transport};
use bus_postgres::PostgresTransport;
use pg_server::{PrivatePostgres, TestPostgres};

/// One server, one table prefix: every connection is a new transport on them.
struct PostgresHarness {
    /// The first connection; its drop drops the prefix's tables.
    first: TestPostgres,
    server: Option<PrivatePostgres>,
}

impl PostgresHarness {
    /// On the shared server; `None` (skipped, with a message) when it is down outside CI.
    async fn shared(case: &str) -> Option<PostgresHarness> {
        let first = TestPostgres::connect(case, |builder| builder).await?;
        Some(PostgresHarness {
            first,
            server: None,
        })
    }

    /// On a private server of its own; `None` (skipped, with a message) when the binaries
    /// are missing outside CI.
    async fn private(case: &str) -> Option<PostgresHarness> {
        let server = tokio::task::block_in_place(|| PrivatePostgres::start(case))?;
        let url = server.url();
        let first = TestPostgres::connect_to(&url, case, |builder| builder.restartable(true))
            .await
            .unwrap_or_else(|| panic!("the private PostgreSQL at {url} is not reachable"));
        Some(PostgresHarness {
            first,
            server: Some(server),
        })
    }
}

impl Harness for PostgresHarness {
    fn name(&self) -> &str {
        "postgres"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(async move {
            let transport = PostgresTransport::builder(self.first.pool.clone())
                .table_prefix(self.first.prefix.clone())
                .create_schema(false)
                .restartable(self.server.is_some())
                .connect()
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "cannot connect to PostgreSQL at {}: {error}",
                        self.first.url
                    )
                });
            Arc::new(transport) as Arc<dyn Transport>
        })
    }

    fn restart_broker(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let server = self
                .server
                .as_ref()
                .expect("only the private harness is restartable");
            // Blocking for the stop and the start (a second or two): fine in a test.
            tokio::task::block_in_place(|| server.restart());
        })
    }
}

mod shared {
    use super::PostgresHarness;

    bus_conformance::conformance_tests!(match PostgresHarness::shared("conformance").await {
        Some(harness) => harness,
        None => return,
    });
}

mod private {
    use super::PostgresHarness;

    bus_conformance::conformance_tests!(match PostgresHarness::private("conformance").await {
        Some(harness) => harness,
        None => return,
    });
}
