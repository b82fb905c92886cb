//! The transport conformance suite (`bus-conformance`) on NATS JetStream, twice:
//!
//! - `shared`: on the machine's server (127.0.0.1:4222), a fresh subject prefix and stream per
//!   case (deleted after it). Not restartable: `broker_restart` is skipped there, by name.
//! - `private`: on a `nats-server -js` each case starts for itself on a free port, which the
//!   harness may restart: every case runs, `broker_restart` included.
//!
//! An unreachable broker fails the case (the suite never skips one).

mod common;

use std::sync::{Arc, Mutex, PoisonError};

use bus_conformance::Harness;
use bus_core::transport::{BoxFuture, Transport};
use bus_nats::NatsTransport;
use common::{PrivateNatsServer, SHARED_URL, TestNats};

/// One broker, one prefix and stream: every connection is a new client of them.
struct NatsHarness {
    /// The first connection; its drop deletes the stream.
    first: TestNats,
    url: String,
    server: Option<Mutex<PrivateNatsServer>>,
}

impl NatsHarness {
    /// On the shared server.
    async fn shared() -> NatsHarness {
        let first = TestNats::connect("conformance", |builder| builder)
            .await
            .unwrap_or_else(|| panic!("NATS with JetStream is not reachable at {SHARED_URL}"));
        NatsHarness {
            first,
            url: SHARED_URL.to_owned(),
            server: None,
        }
    }

    /// On a private server of its own.
    async fn private() -> NatsHarness {
        let server = PrivateNatsServer::start("conformance")
            .unwrap_or_else(|| panic!("no nats-server binary to start a private broker"));
        let url = server.url();
        let first = TestNats::connect_to(&url, "conformance", |builder| builder.restartable(true))
            .await
            .unwrap_or_else(|| panic!("the private nats-server at {url} is not reachable"));
        NatsHarness {
            first,
            url,
            server: Some(Mutex::new(server)),
        }
    }
}

impl Harness for NatsHarness {
    fn name(&self) -> &str {
        "nats"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(async move {
            let transport = NatsTransport::builder(self.url.clone())
                .subject_prefix(self.first.prefix.clone())
                .stream_name(self.first.stream_name())
                .restartable(self.server.is_some())
                .connect()
                .await
                .unwrap_or_else(|error| panic!("cannot connect to NATS at {}: {error}", self.url));
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
    use super::NatsHarness;

    bus_conformance::conformance_tests!(NatsHarness::shared().await);
}

mod private {
    use super::NatsHarness;

    bus_conformance::conformance_tests!(NatsHarness::private().await);
}
