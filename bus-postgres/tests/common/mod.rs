//! Shared by the integration tests: a database on a fresh table prefix (its tables dropped at
//! the end, even when the test panics), a transport that records what it is given, NATS on
//! the shared server, and bounded waits.
#![allow(dead_code, reason = "each test file uses a part of these helpers")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::transport::{
    BoxFuture, Capabilities, SubscribeOptions, Transport, TransportError, TransportSubscription,
    WireEvent,
};
use bus_postgres::sqlx::postgres::PgPoolOptions;
use bus_postgres::sqlx::{self, Connection as _, PgPool};
use bus_postgres::{Inbox, Lag, Outbox, Relay, RelayBuilder, Schema};
use tokio::sync::Notify;

pub use bus_conformance::checks::{ci, skip, unique};

/// The shared server of the machine (and of CI).
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The longest a test waits for anything: past it, the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A pool on the shared database and a fresh table prefix whose tables exist; they are
/// dropped when this is dropped.
pub struct TestDb {
    pub pool: PgPool,
    pub prefix: String,
    _cleanup: DropTables,
}

impl TestDb {
    /// Connects and creates the tables under a fresh prefix. `None` (with a printed reason)
    /// when PostgreSQL is down and this is not CI; in CI that panics.
    pub async fn connect(test: &str) -> Option<TestDb> {
        let prefix = format!("t{}_", unique());
        let pool = match PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(DATABASE_URL)
            .await
        {
            Ok(pool) => pool,
            Err(error) if !ci() => {
                skip(
                    test,
                    format_args!("PostgreSQL is not reachable at {DATABASE_URL}: {error}"),
                );
                return None;
            }
            Err(error) => panic!("{test}: cannot connect to PostgreSQL at {DATABASE_URL}: {error}"),
        };
        let cleanup = DropTables(prefix.clone());
        Schema::new()
            .prefix(prefix.clone())
            .create(&pool)
            .await
            .unwrap_or_else(|error| panic!("{test}: creating the tables: {error}"));
        Some(TestDb {
            pool,
            prefix,
            _cleanup: cleanup,
        })
    }

    /// A connection of the pool, outside any transaction.
    pub async fn conn(&self) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
        self.pool.acquire().await.unwrap()
    }

    /// The outbox of this prefix, for `service`.
    pub fn outbox(&self, service: &str) -> Outbox {
        Outbox::new(service).prefix(&self.prefix)
    }

    /// The inbox of this prefix.
    pub fn inbox(&self) -> Inbox {
        Inbox::new().prefix(&self.prefix)
    }

    /// A relay of this prefix to `transport`, polling every 100 ms.
    pub fn relay(&self, transport: Arc<dyn Transport>) -> RelayBuilder {
        Relay::builder(self.pool.clone(), transport)
            .prefix(self.prefix.clone())
            .poll_interval(Duration::from_millis(100))
    }

    /// The lag of this prefix's outbox.
    pub async fn lag(&self) -> Lag {
        self.outbox("lag").lag(&self.pool).await.unwrap()
    }

    /// Waits until no committed row is pending, or fails the test.
    pub async fn wait_until_all_published(&self, what: &str) {
        let waiting = async {
            while self.lag().await.pending > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(PATIENCE, waiting).await.is_err() {
            panic!(
                "{what}: rows still pending after {PATIENCE:?}: {:?}",
                self.lag().await
            );
        }
    }

    /// The number of rows of the outbox table, published or not.
    pub async fn rows(&self) -> i64 {
        let sql = format!("SELECT count(*) FROM {}outbox", self.prefix);
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// Drops every table and schema whose name starts with the prefix when dropped, on a connection and a
/// runtime of its own: this may run inside the test's runtime, or while it unwinds.
struct DropTables(String);

impl Drop for DropTables {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(mut conn) = sqlx::PgConnection::connect(DATABASE_URL).await else {
                    return;
                };
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::TEXT FROM pg_tables
                     WHERE schemaname = current_schema() AND starts_with(tablename, $1)",
                )
                .bind(&prefix)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                let schemas: Vec<String> = sqlx::query_scalar(
                    "SELECT nspname::TEXT FROM pg_namespace WHERE starts_with(nspname, $1)",
                )
                .bind(&prefix)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                // Names read from the catalog, quoted.
                let drops = tables
                    .iter()
                    .map(|table| format!("DROP TABLE IF EXISTS \"{table}\" CASCADE"))
                    .chain(
                        schemas
                            .iter()
                            .map(|schema| format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")),
                    );
                for drop in drops {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A transport that records every event it is given, optionally failing the first publishes.
#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

#[derive(Default)]
struct RecorderInner {
    published: Mutex<Vec<WireEvent>>,
    changed: Notify,
    /// How many publishes still fail.
    failing: AtomicUsize,
    /// How many publishes failed.
    failed: AtomicUsize,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// The next `count` publishes fail.
    pub fn fail_next(&self, count: usize) {
        self.inner.failing.store(count, Ordering::SeqCst);
    }

    /// How many publishes failed.
    pub fn failed(&self) -> usize {
        self.inner.failed.load(Ordering::SeqCst)
    }

    /// Everything published so far.
    pub fn published(&self) -> Vec<WireEvent> {
        self.inner.published.lock().unwrap().clone()
    }

    /// How many times each id was published.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for event in self.published() {
            *counts.entry(event.id).or_default() += 1;
        }
        counts
    }

    /// Waits until `count` events were published, or fails the test with `what`.
    pub async fn wait_for(&self, count: usize, what: &str) -> Vec<WireEvent> {
        let waiting = async {
            loop {
                let changed = self.inner.changed.notified();
                let published = self.published();
                if published.len() >= count {
                    return published;
                }
                changed.await;
            }
        };
        match tokio::time::timeout(PATIENCE, waiting).await {
            Ok(published) => published,
            Err(_) => panic!(
                "{what}: {} of {count} events published after {PATIENCE:?}",
                self.published().len()
            ),
        }
    }

    /// As a shared transport.
    pub fn shared(&self) -> Arc<dyn Transport> {
        Arc::new(self.clone())
    }
}

impl Transport for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let failing =
                self.inner
                    .failing
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                self.inner.failed.fetch_add(1, Ordering::SeqCst);
                return Err(TransportError::Closed {
                    transport: "recorder".into(),
                });
            }
            self.inner.published.lock().unwrap().push(event);
            self.inner.changed.notify_waiters();
            Ok(())
        })
    }

    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        Box::pin(async move {
            Err(TransportError::Invalid {
                transport: "recorder".into(),
                what: "pattern",
                value: options.pattern,
                reason: "the recorder only records publishes".into(),
            })
        })
    }
}

/// The shared NATS server of the machine (and of CI).
pub const NATS_URL: &str = "127.0.0.1:4222";

/// A `NatsTransport` on a fresh subject prefix and stream of the shared server; the streams
/// are deleted when this is dropped (even when the test panics).
pub struct TestNats {
    pub transport: bus_nats::NatsTransport,
    pub prefix: String,
    pub stream: String,
    _cleanup: StreamCleanup,
}

impl TestNats {
    /// Connects. `None` (with a printed reason) when the server is down and this is not CI;
    /// in CI that panics.
    pub async fn connect(test: &str) -> Option<TestNats> {
        TestNats::connect_with_prefix(test, &format!("t{}", unique())).await
    }

    /// As [`TestNats::connect`], on the subject prefix and stream of `prefix`.
    pub async fn connect_with_prefix(test: &str, prefix: &str) -> Option<TestNats> {
        let stream = format!("TEST_{}", prefix.to_uppercase());
        let cleanup = StreamCleanup(stream.clone());
        match bus_nats::NatsTransport::builder(NATS_URL)
            .subject_prefix(prefix)
            .stream_name(stream.clone())
            .connect()
            .await
        {
            Ok(transport) => Some(TestNats {
                transport,
                prefix: prefix.to_owned(),
                stream,
                _cleanup: cleanup,
            }),
            Err(error @ TransportError::Unreachable { .. }) if !ci() => {
                skip(
                    test,
                    format_args!("NATS with JetStream is not reachable at {NATS_URL}: {error}"),
                );
                None
            }
            Err(error) => panic!("{test}: cannot connect to NATS at {NATS_URL}: {error}"),
        }
    }

    /// How many messages the stream holds.
    pub async fn stream_messages(&self) -> u64 {
        let mut stream = self
            .transport
            .jetstream()
            .get_stream(&self.stream)
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// The `ce-id` header of every message of the stream.
    pub async fn stream_ids(&self) -> Vec<String> {
        let stream = self
            .transport
            .jetstream()
            .get_stream(&self.stream)
            .await
            .unwrap();
        let mut ids = Vec::new();
        let last = self.stream_last_sequence().await;
        for sequence in 1..=last {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                let id = message
                    .headers
                    .get("ce-id")
                    .map(|value| value.to_string())
                    .unwrap_or_default();
                ids.push(id);
            }
        }
        ids
    }

    async fn stream_last_sequence(&self) -> u64 {
        let mut stream = self
            .transport
            .jetstream()
            .get_stream(&self.stream)
            .await
            .unwrap();
        stream.info().await.unwrap().state.last_sequence
    }
}

/// Deletes a stream and its dead letters' stream when dropped, on a runtime of its own.
struct StreamCleanup(String);

impl Drop for StreamCleanup {
    fn drop(&mut self) {
        let streams = [self.0.clone(), format!("{}_DEAD_LETTERS", self.0)];
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(Ok(client)) =
                    tokio::time::timeout(Duration::from_secs(5), async_nats::connect(NATS_URL))
                        .await
                else {
                    return;
                };
                let js = async_nats::jetstream::new(client);
                for stream in &streams {
                    let _ = tokio::time::timeout(Duration::from_secs(5), js.delete_stream(stream))
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
