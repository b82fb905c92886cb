//! Events from producers that are not a bus, on each broker: their ids are kept as they came
//! (`py-order-3`, an upper-case UUID), `bus::event::current_event_id()` and the envelope give
//! that id, the source, the instant of a `time` written with an offset, the content type and
//! the extensions; a reply emitted by the listener names the foreign id as its cause on the
//! wire, with the foreign `traceparent` passed on; and a `time` that is not RFC 3339 is
//! dead-lettered with the reason.

#![cfg(all(feature = "nats", feature = "redis"))]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bus::transport::{
    CAUSATION, DEAD_LETTER_REASON, SubscribeOptions, TransportSubscription, WireEvent,
    dead_letter_name,
};
use bus::{Envelope, EventBus, EventId};
use common::brokers::{Broker, Cleanup, unique_prefix};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "foreign.orders", distributed)]
struct Order {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "foreign.receipts", distributed)]
struct Receipt {
    order: u64,
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UPPER_UUID: &str = "0193A5F0-7C1E-4D2A-8B36-54231C7890AB";

/// What the order listener saw: the order, its envelope, and `current_event_id()` in it.
type Seen = (u64, Envelope, Option<EventId>);

/// A foreign `foreign.orders` event: id `id`, from `py-shop`, at 12:00 in UTC+2.
fn foreign_order(id: &str, order: u64) -> WireEvent {
    let mut event = WireEvent::new(
        id,
        "py-shop",
        "foreign.orders",
        format!(r#"{{"id":{order}}}"#),
    )
    .content_type("application/json")
    .extension("traceparent", TRACEPARENT)
    .extension("tenant", "acme");
    event.time = Some("2026-12-07T12:00:00+02:00".to_owned());
    event
}

async fn next<T>(what: &str, receiver: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(PATIENCE, receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
        .expect("the sender lives as long as the bus")
}

async fn next_event(what: &str, subscription: &mut TransportSubscription) -> WireEvent {
    let delivery = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
        .expect("the subscription ended")
        .unwrap();
    let event = delivery.event().clone();
    delivery.ack().await.unwrap();
    event
}

async fn foreign_events_keep_their_envelope(broker: Broker) {
    let prefix = unique_prefix("foreign", broker);
    let test = format!("foreign_events_{}", broker.name());
    let Some(transport) = common::reachable(&test, broker.connect(&prefix, None).await) else {
        return;
    };
    let _cleanup = Cleanup {
        broker,
        prefix: prefix.clone(),
    };
    // What the bus writes, read by a plain subscription: the receipts and the dead letters.
    let mut receipts = transport
        .subscribe(SubscribeOptions::new("foreign.receipts"))
        .await
        .unwrap();
    let mut letters = transport
        .subscribe(SubscribeOptions::new(dead_letter_name("foreign.orders")))
        .await
        .unwrap();

    let bus = EventBus::builder()
        .service("billing")
        .shared_transport(Arc::clone(&transport))
        .build();
    let (seen, mut orders) = mpsc::unbounded_channel::<Seen>();
    bus.add_listener("foreign.orders", {
        let bus = bus.clone();
        move |order: Arc<Order>, envelope: Envelope| {
            let current = bus::event::current_event_id();
            let _ = seen.send((order.id, envelope, current));
            // A reply: its causation is the foreign event.
            bus.emit_event(Receipt { order: order.id });
            async {}
        }
    });
    let (caused, mut causes) = mpsc::unbounded_channel();
    bus.add_listener(
        "foreign.receipts",
        move |_: Arc<Receipt>, envelope: Envelope| {
            let _ = caused.send((envelope.causation().cloned(), envelope.source().to_owned()));
            async {}
        },
    );
    common::guarded("ready", bus.ready()).await.unwrap();

    for (id, order) in [("py-order-3", 3), (UPPER_UUID, 4)] {
        transport.publish(foreign_order(id, order)).await.unwrap();
        let (got, envelope, current) = next("the foreign order", &mut orders).await;
        assert_eq!(got, order);
        assert_eq!(envelope.id().to_string(), id, "the id as it came");
        assert_eq!(envelope.id().as_u128(), None, "not an id a bus made");
        assert_eq!(current.as_ref(), Some(envelope.id()), "current_event_id()");
        assert_eq!(envelope.name(), "foreign.orders");
        assert_eq!(envelope.source(), "py-shop");
        // 12:00 at UTC+2 is 10:00 UTC: 2026-12-07T10:00:00Z.
        assert_eq!(
            envelope.emitted_at(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_637_600),
            "the instant the offset time names"
        );
        assert_eq!(envelope.content_type(), Some("application/json"));
        assert_eq!(envelope.extension("traceparent"), Some(TRACEPARENT));
        assert_eq!(
            envelope.extensions().collect::<Vec<_>>(),
            [("tenant", "acme"), ("traceparent", TRACEPARENT)]
        );
        assert_eq!(envelope.causation(), None);

        // The reply, on the wire: its `causationid` is the foreign id, and it comes back to
        // the receipt listener with that cause.
        let receipt = next_event("the receipt on the wire", &mut receipts).await;
        assert_eq!(receipt.extensions[CAUSATION], id);
        // The listener's reply passes the foreign trace context on, with or without the
        // `opentelemetry` feature (no OpenTelemetry layer runs here).
        assert_eq!(
            receipt.extensions.get("traceparent").map(String::as_str),
            Some(TRACEPARENT),
            "the trace context passed on"
        );
        assert_eq!(receipt.source, "billing");
        let (cause, source) = next("the receipt", &mut causes).await;
        assert_eq!(cause.map(|cause| cause.to_string()).as_deref(), Some(id));
        assert_eq!(source, "billing");
    }

    let mut bad_time = foreign_order("py-order-5", 5);
    bad_time.time = Some("yesterday at noon".to_owned());
    transport.publish(bad_time).await.unwrap();
    let letter = next_event("the dead letter of a bad time", &mut letters).await;
    let reason = &letter.extensions[DEAD_LETTER_REASON];
    assert!(
        reason.contains("`yesterday at noon`") && reason.contains("RFC 3339"),
        "{reason}"
    );
    // The listener never saw it; the next good event still comes through.
    transport
        .publish(foreign_order("py-order-6", 6))
        .await
        .unwrap();
    let (got, envelope, _) = next("the order after the bad one", &mut orders).await;
    assert_eq!((got, envelope.id().to_string().as_str()), (6, "py-order-6"));
    bus.shutdown(Duration::from_secs(5)).await;
    println!("{test}: foreign ids, sources, times and extensions reach the listener as sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_foreign_events_keep_their_ids_times_and_extensions() {
    foreign_events_keep_their_envelope(Broker::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_foreign_events_keep_their_ids_times_and_extensions() {
    foreign_events_keep_their_envelope(Broker::Redis).await;
}
