//! The transport conformance suite (`bus-conformance`) on the in-process `MemoryTransport`:
//! every connection of the harness reaches one shared in-memory broker.

use std::sync::Arc;

use bus::transport::{BoxFuture, MemoryTransport, Transport};
use bus_conformance::Harness;

/// One in-memory broker; each connection is a clone of it, as a new client of the same server.
struct MemoryHarness {
    broker: MemoryTransport,
}

impl MemoryHarness {
    fn new() -> Self {
        MemoryHarness {
            broker: MemoryTransport::new(),
        }
    }
}

impl Harness for MemoryHarness {
    fn name(&self) -> &str {
        "memory"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        let connection: Arc<dyn Transport> = Arc::new(self.broker.clone());
        Box::pin(std::future::ready(connection))
    }
}

bus_conformance::conformance_tests!(MemoryHarness::new());
