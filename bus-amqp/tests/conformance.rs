//! The transport conformance suite (`bus-conformance`) on RabbitMQ: the machine's broker
//! (127.0.0.1:5672, `guest`), a fresh exchange per case (deleted after it, with the group
//! queues the case declared). Not restartable (the tests do not start a broker of their own)
//! and not deduplicating: `broker_restart` and `dedup` are skipped, by name.
//!
//! An unreachable broker fails the case (the suite never skips one).

mod common;

use std::sync::Arc;

use bus_conformance::Harness;
use bus_core::transport::{BoxFuture, Transport};
use common::{SHARED_URL, TestAmqp};

/// One broker, one exchange: every connection is a new client of them.
struct AmqpHarness(TestAmqp);

impl AmqpHarness {
    async fn shared() -> AmqpHarness {
        let (test, _first) = TestAmqp::connect("conformance", |builder| builder)
            .await
            .unwrap_or_else(|| panic!("RabbitMQ is not reachable at {SHARED_URL}"));
        AmqpHarness(test)
    }
}

impl Harness for AmqpHarness {
    fn name(&self) -> &str {
        "amqp"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(async move { Arc::new(self.0.another().await) as Arc<dyn Transport> })
    }
}

mod shared {
    use super::AmqpHarness;

    bus_conformance::conformance_tests!(AmqpHarness::shared().await);
}
