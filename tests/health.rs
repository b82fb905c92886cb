//! `EventBus::health`: open or closed, deliveries in flight and shed, the transport's
//! connection, and per distributed listener its subscription and its group's lag and pending
//! count; the verdict `is_healthy` and the report's text.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bus::health::SubscriptionState;
use bus::transport::{
    BoxFuture, Capabilities, GroupStats, MemoryTransport, SubscribeOptions, Transport,
    TransportError, TransportSubscription, WireEvent,
};
use bus::{EventBus, Policy, policy::Group};
use tokio::sync::watch;

#[tokio::test]
async fn a_bus_without_a_transport_reports_its_deliveries_and_sheds() {
    let bus = EventBus::builder().max_in_flight(1).build();
    let (open, gate) = watch::channel(false);
    bus.add_listener("jobs.run", move |_: Arc<u32>| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
        }
    });
    let running = bus.emit("jobs.run", 1_u32);
    // The bus holds one delivery: the next one is shed.
    let shed = bus.emit("jobs.run", 2_u32).await;
    assert_eq!(shed.failed(), 1, "{shed:?}");

    let health = bus.health().await;
    assert!(health.is_healthy(), "{health}");
    assert_eq!((health.in_flight(), health.shed()), (1, 1));
    assert_eq!(health.transport(), None);
    assert!(health.consumers().is_empty());
    assert_eq!(health.to_string(), "ok: 1 in flight, 1 shed");

    open.send_replace(true);
    assert_eq!(running.await.delivered(), 1);
    bus.shutdown(Duration::from_secs(1)).await;
    let closed = bus.health().await;
    assert!(!closed.is_healthy() && closed.is_closed(), "{closed}");
    assert_eq!(closed.to_string(), "unhealthy: 0 in flight, 1 shed, closed");
}

#[tokio::test]
async fn a_distributed_listener_reports_its_subscription_and_its_group() {
    let transport = MemoryTransport::new();
    let bus = EventBus::builder()
        .service("billing")
        .transport(transport.clone())
        .distributed::<u64>()
        .build();
    bus.on("orders.placed", |_: Arc<u64>| async {})
        .policy(Policy::new().group(Group::Named("invoices")))
        .add();
    bus.ready().await.unwrap();
    let publisher = EventBus::builder()
        .service("shop")
        .transport(transport.clone())
        .distributed::<u64>()
        .build();
    for order in 0..3_u64 {
        assert!(publisher.emit("orders.placed", order).await.is_ok());
    }
    bus.drain().await;

    let health = bus.health().await;
    assert!(health.is_healthy(), "{health}");
    let transport = health.transport().expect("a transport");
    assert_eq!(
        (transport.name(), transport.connected()),
        ("memory", Some(true))
    );
    let [consumer] = health.consumers() else {
        panic!("one consumer: {health}");
    };
    assert_eq!(consumer.pattern(), "orders.placed");
    assert_eq!(consumer.group(), Some("invoices"));
    assert_eq!(consumer.subscription(), &SubscriptionState::Subscribed);
    // Delivered and acked, or about to be: nothing left once settled.
    common::guarded("the group settled", async {
        loop {
            let health = bus.health().await;
            if health.consumers()[0].stats() == Ok(Some(GroupStats::new(0, 0))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let text = bus.health().await.to_string();
    assert!(
        text.starts_with("ok: 0 in flight, 0 shed; transport memory: connected\nlistener ")
            && text.ends_with("(orders.placed, group invoices): subscribed, lag 0, pending 0"),
        "{text}"
    );
    bus.shutdown(Duration::from_secs(1)).await;
    publisher.shutdown(Duration::from_secs(1)).await;
}

/// A broker that is down: subscribing and asking for stats fail, and the client knows it is
/// disconnected.
struct Down;

impl Transport for Down {
    fn name(&self) -> &str {
        "down"
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.group_stats = true;
        capabilities
    }

    fn publish(&self, _: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async { Err(unreachable()) })
    }

    fn subscribe(
        &self,
        _: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        Box::pin(async { Err(unreachable()) })
    }

    fn is_connected(&self) -> Option<bool> {
        Some(false)
    }

    fn group_stats<'a>(
        &'a self,
        _: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<Option<GroupStats>, TransportError>> {
        Box::pin(async { Err(unreachable()) })
    }
}

fn unreachable() -> TransportError {
    TransportError::Unreachable {
        transport: "down".to_owned(),
        source: "connection refused".into(),
    }
}

#[tokio::test]
async fn a_transport_that_is_down_makes_the_bus_unhealthy_and_says_why() {
    let bus = EventBus::builder()
        .service("billing")
        .transport(Down)
        .distributed::<u64>()
        .build();
    bus.add_listener("orders.placed", |_: Arc<u64>| async {});
    assert!(bus.ready().await.is_err());

    let health = bus.health().await;
    assert!(!health.is_healthy(), "{health}");
    assert_eq!(health.transport().unwrap().connected(), Some(false));
    let consumer = &health.consumers()[0];
    assert!(
        matches!(consumer.subscription(), SubscriptionState::Failed(error) if error.contains("connection refused")),
        "{health}"
    );
    assert!(consumer.stats().is_err(), "{health}");
    let text = health.to_string();
    assert!(
        text.starts_with("unhealthy: 0 in flight, 0 shed; transport down: disconnected\n")
            && text.contains("failing: ")
            && text.contains("stats unavailable: "),
        "{text}"
    );
    bus.shutdown(Duration::from_secs(1)).await;
}
