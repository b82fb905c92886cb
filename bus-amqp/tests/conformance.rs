//! The transport conformance suite (`bus-conformance`) on RabbitMQ, twice:
//!
//! - `shared`: on the machine's broker (127.0.0.1:5672, `guest`), a fresh exchange per case
//!   (deleted after it, with the group queues the case declared). Not restartable:
//!   `broker_restart` is skipped there, by name.
//! - `private`: on a RabbitMQ node each case starts for itself ([`PrivateRabbitMq`]: free
//!   ports, data in a temporary directory), which the harness may restart (SIGKILL, then a
//!   start on the same data): `broker_restart` runs there. Needs root and `rabbitmq-server`:
//!   without them the cases are skipped with a message, except in CI (`CI=true`), where that
//!   fails them.
//!
//! The cases needing a capability RabbitMQ lacks (`dedup`, `list_groups`,
//! `stored_dead_letters`) are skipped in both, by name. An unreachable broker fails the case
//! (the suite never skips one).

mod common;

use std::sync::{Arc, Mutex, PoisonError};

use bus_conformance::Harness;
use bus_core::transport::{BoxFuture, Transport};
use common::{PrivateRabbitMq, SHARED_URL, TestAmqp};

/// One broker, one exchange: every connection is a new client of them.
struct AmqpHarness {
    /// Declared before `server`, so dropped first: it cleans up while the broker still runs.
    test: TestAmqp,
    server: Option<Mutex<PrivateRabbitMq>>,
}

impl AmqpHarness {
    /// On the shared broker.
    async fn shared() -> AmqpHarness {
        let (test, _first) = TestAmqp::connect("conformance", |builder| builder)
            .await
            .unwrap_or_else(|| panic!("RabbitMQ is not reachable at {SHARED_URL}"));
        AmqpHarness { test, server: None }
    }

    /// On a private node of its own; `None` (the case skipped, with a message) when none can
    /// be started here and this is not CI.
    async fn private() -> Option<AmqpHarness> {
        let server = PrivateRabbitMq::start("conformance")?;
        let url = server.url();
        let (test, _first) =
            TestAmqp::connect_to(&url, "conformance", |builder| builder.restartable(true))
                .await
                .unwrap_or_else(|| panic!("the private RabbitMQ node at {url} is not reachable"));
        Some(AmqpHarness {
            test,
            server: Some(Mutex::new(server)),
        })
    }
}

impl Harness for AmqpHarness {
    fn name(&self) -> &str {
        "amqp"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(async move {
            let restartable = self.server.is_some();
            let transport = self
                .test
                .open(|builder| builder.restartable(restartable))
                .await
                .unwrap_or_else(|error| {
                    panic!("cannot connect to RabbitMQ at {}: {error}", self.test.url)
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
            // Blocking for the kill and the start (a few seconds): fine in a test.
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
    use super::AmqpHarness;

    bus_conformance::conformance_tests!(AmqpHarness::shared().await);
}

mod private {
    use super::AmqpHarness;

    // No node to start here (and not CI): the case returns at once, after the skip message.
    bus_conformance::conformance_tests!(match AmqpHarness::private().await {
        Some(harness) => harness,
        None => return,
    });
}
