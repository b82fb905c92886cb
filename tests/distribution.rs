//! Which events travel through the broker is explicit: a type marked
//! `#[event(.., distributed)]`, or named by `EventBusBuilder::distributed`, travels; a serde
//! type without either stays in process, listeners and emits alike. `build` logs the types that
//! travel and `listeners()` says which listeners are distributed.

mod common;

use std::sync::Arc;

use bus::EventBus;
use bus::transport::MemoryTransport;
use common::{Logs, guarded};
use serde::{Deserialize, Serialize};

/// Serde for its log lines only: it stays in process.
#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "audit.logged")]
struct Logged {
    line: String,
}

/// Marked: it travels.
#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "orders.placed", distributed)]
struct OrderPlaced {
    id: u64,
}

/// No derive: the builder names it.
#[derive(Debug, Serialize, Deserialize)]
struct Refunded {
    id: u64,
}

#[tokio::test(flavor = "current_thread")]
async fn only_the_types_that_say_so_travel_and_the_bus_tells_which() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let transport = Arc::new(MemoryTransport::new());
    let bus = EventBus::builder()
        .service("shop")
        .shared_transport(transport)
        .distributed::<Refunded>()
        .build();
    let built = logs.lines_with(&["distributed event types"]);
    assert_eq!(built.len(), 1, "{}", logs.text());
    assert!(
        built[0].contains("OrderPlaced") && built[0].contains("Refunded"),
        "{}",
        built[0]
    );
    assert!(!built[0].contains("Logged"), "{}", built[0]);

    bus.add_listener("audit.logged", |_: Arc<Logged>| async {});
    bus.add_listener("orders.placed", |_: Arc<OrderPlaced>| async {});
    bus.add_listener("orders.refunded", |_: Arc<Refunded>| async {});
    guarded("ready", bus.ready()).await.unwrap();
    for (name, distributed) in [
        ("audit.logged", false),
        ("orders.placed", true),
        ("orders.refunded", true),
    ] {
        let listeners = bus.listeners(name);
        assert_eq!(listeners.len(), 1, "{name}");
        assert_eq!(listeners[0].is_distributed(), distributed, "{name}");
    }

    // The serde type that does not travel is delivered here and never published.
    let logged = bus
        .emit_event(Logged {
            line: "hello".into(),
        })
        .await;
    assert_eq!(logged.delivered(), 1);
    assert!(logged.published().is_none(), "not published: {logged:?}");
    // The one that travels is published, and its listener gets it from the broker.
    let placed = bus.emit_event(OrderPlaced { id: 1 }).await;
    assert_eq!(placed.delivered(), 0, "its listener is on the broker");
    assert!(matches!(placed.published(), Some(Ok(()))), "{placed:?}");
    bus.shutdown(std::time::Duration::from_secs(5)).await;
}
