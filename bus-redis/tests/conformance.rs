//! The transport conformance suite (`bus-conformance`) on Redis Streams, twice:
//!
//! - `shared`: on the machine's server (127.0.0.1:6379), a fresh key prefix per case (its keys
//!   deleted after it), with the transport's defaults: publishes are plain `XADD`s. Not
//!   restartable and not deduplicating at the broker: `broker_restart` and `dedup` are skipped
//!   there, by name.
//! - `private`: on a `redis-server --appendonly yes --appendfsync always` each case starts for itself on a free
//!   port, which the harness may restart, with a duplicate window (publishes go through the
//!   Lua script): every case runs, `broker_restart` and `dedup` included.
//!
//! An unreachable broker fails the case (the suite never skips one).

mod common;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus_conformance::Harness;
use bus_core::transport::{BoxFuture, Transport};
use bus_redis::RedisTransport;
use common::{PrivateRedisServer, SHARED_URL, TestRedis};

/// One broker, one key prefix: every connection is a new client of them.
struct RedisHarness {
    /// The first connection; its drop deletes the prefix's keys.
    first: TestRedis,
    server: Option<Mutex<PrivateRedisServer>>,
}

impl RedisHarness {
    /// On the shared server.
    async fn shared() -> RedisHarness {
        let first = TestRedis::connect("conformance", |builder| builder)
            .await
            .unwrap_or_else(|| panic!("Redis is not reachable at {SHARED_URL}"));
        RedisHarness {
            first,
            server: None,
        }
    }

    /// On a private server of its own.
    async fn private() -> RedisHarness {
        let server = PrivateRedisServer::start("conformance")
            .unwrap_or_else(|| panic!("no redis-server binary to start a private broker"));
        let url = server.url();
        let first = TestRedis::connect_to(&url, "conformance", |builder| builder.restartable(true))
            .await
            .unwrap_or_else(|| panic!("the private redis-server at {url} is not reachable"));
        RedisHarness {
            first,
            server: Some(Mutex::new(server)),
        }
    }
}

impl Harness for RedisHarness {
    fn name(&self) -> &str {
        "redis"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(async move {
            let transport = RedisTransport::builder(self.first.url.clone())
                .key_prefix(self.first.prefix.clone())
                .restartable(self.server.is_some())
                .duplicate_window(if self.server.is_some() {
                    Duration::from_secs(120)
                } else {
                    Duration::ZERO
                })
                .connect()
                .await
                .unwrap_or_else(|error| {
                    panic!("cannot connect to Redis at {}: {error}", self.first.url)
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
            // Blocking for the kill and the start (a few hundred ms): fine in a test.
            tokio::task::block_in_place(|| {
                server
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .restart();
            });
        })
    }
}

mod shared {
    use super::RedisHarness;

    bus_conformance::conformance_tests!(RedisHarness::shared().await);
}

mod private {
    use super::RedisHarness;

    bus_conformance::conformance_tests!(RedisHarness::private().await);
}
