//! Shared by the integration tests: transports on the machine's RabbitMQ on an exchange of
//! their own (a fresh name per test), whose exchange and group queues are deleted at the end.
#![allow(dead_code, reason = "each test file uses a part of these helpers")]

use std::sync::{Mutex, PoisonError};

use bus_amqp::{AmqpTransport, AmqpTransportBuilder};
use bus_core::transport::TransportError;

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use bus_conformance::checks::*;

/// The shared broker of the machine (and of CI), as `guest`.
pub const SHARED_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Transports on one fresh exchange; the exchange and every group queue they declared are
/// deleted when this is dropped (even when the test panics).
pub struct TestAmqp {
    pub exchange: String,
    pub url: String,
    opened: Mutex<Vec<AmqpTransport>>,
}

impl TestAmqp {
    /// A fresh exchange on the shared broker, and a first transport on it. `None` (with a
    /// printed reason) when the broker is down and this is not CI; in CI that panics.
    pub async fn connect(
        test: &str,
        configure: impl FnOnce(AmqpTransportBuilder) -> AmqpTransportBuilder,
    ) -> Option<(TestAmqp, AmqpTransport)> {
        let this = TestAmqp {
            exchange: format!("test.{}", unique()),
            url: SHARED_URL.to_owned(),
            opened: Mutex::default(),
        };
        match this.open(configure).await {
            Ok(transport) => Some((this, transport)),
            Err(error @ TransportError::Unreachable { .. }) if !ci() => {
                skip(
                    test,
                    format_args!("RabbitMQ is not reachable at {SHARED_URL}: {error}"),
                );
                None
            }
            Err(error) => panic!("{test}: cannot connect to RabbitMQ at {SHARED_URL}: {error}"),
        }
    }

    /// Another transport on the exchange.
    pub async fn open(
        &self,
        configure: impl FnOnce(AmqpTransportBuilder) -> AmqpTransportBuilder,
    ) -> Result<AmqpTransport, TransportError> {
        let transport =
            configure(AmqpTransport::builder(self.url.clone()).exchange(self.exchange.clone()))
                .connect()
                .await?;
        self.opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(transport.clone());
        Ok(transport)
    }

    /// Another transport on the exchange, which must connect.
    pub async fn another(&self) -> AmqpTransport {
        self.open(|builder| builder)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to RabbitMQ at {}: {error}", self.url))
    }
}

impl Drop for TestAmqp {
    fn drop(&mut self) {
        let opened =
            std::mem::take(&mut *self.opened.lock().unwrap_or_else(PoisonError::into_inner));
        let mut groups: Vec<String> = opened
            .iter()
            .flat_map(AmqpTransport::declared_groups)
            .collect();
        groups.sort();
        groups.dedup();
        drop(opened);
        let (url, exchange) = (self.url.clone(), self.exchange.clone());
        // A runtime of its own: this may run inside the test's runtime, or while it unwinds.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(transport) = AmqpTransport::builder(url)
                    .exchange(exchange)
                    .connect()
                    .await
                else {
                    return;
                };
                for group in groups {
                    let _ = transport.delete_group(&group).await;
                }
                let _ = transport.delete_exchange().await;
            });
        });
        let _ = cleanup.join();
    }
}
