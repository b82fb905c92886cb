//! Listener patterns in NATS token syntax: `*` matches exactly one token, a last `>` one or
//! more. They work for `add_listener` and `#[bus::listener]`, beside exact names.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bus::{EventBus, error::EmitError};
use common::guarded;

#[derive(Debug)]
struct Order(u32);

/// Counts the deliveries of one closure listener.
fn counter(bus: &EventBus, pattern: &str) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    bus.on(pattern, move |_: Arc<Order>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    })
    .try_add()
    .expect("a valid pattern");
    count
}

#[tokio::test]
async fn wildcards_match_by_token() {
    let bus = EventBus::new();
    let one = counter(&bus, "orders.*");
    let rest = counter(&bus, "orders.>");
    let middle = counter(&bus, "orders.*.created");
    let exact = counter(&bus, "orders.eu.created");
    let everything = counter(&bus, ">");

    let report = guarded("emit", bus.emit("orders.eu.created", Order(1))).await;
    assert_eq!((report.delivered(), report.failed()), (4, 0));
    assert_eq!(report.event(), "orders.eu.created");
    let report = guarded("emit", bus.emit("orders.eu", Order(2))).await;
    assert_eq!(report.delivered(), 3, "orders.*, orders.> and >");
    let report = guarded("emit", bus.emit("orders", Order(3))).await;
    assert_eq!(
        report.delivered(),
        1,
        "only >: `orders.>` needs one more token"
    );
    let report = guarded("emit", bus.emit("orders.eu.created.late", Order(4))).await;
    assert_eq!(report.delivered(), 2, "orders.> and >");

    let counts = [&one, &rest, &middle, &exact, &everything].map(|c| c.load(Ordering::SeqCst));
    assert_eq!(counts, [1, 3, 1, 1, 4]);
}

#[tokio::test]
async fn removing_a_pattern_listener_stops_its_deliveries() {
    let bus = EventBus::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    let id = bus.add_listener("orders.>", move |_: Arc<Order>| {
        let counted = Arc::clone(&counted);
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    assert_eq!(
        guarded("emit", bus.emit("orders.eu", Order(1)))
            .await
            .delivered(),
        1
    );
    assert_eq!(
        bus.listeners("orders.>").len(),
        1,
        "listed under its pattern"
    );
    assert!(bus.remove(id));
    assert_eq!(
        guarded("emit", bus.emit("orders.eu", Order(2)))
            .await
            .delivered(),
        0
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert!(bus.event_names().is_empty());
}

#[tokio::test]
async fn a_pattern_listener_of_another_type_is_skipped_not_failed() {
    let bus = EventBus::new();
    let orders = counter(&bus, "orders.>");
    let texts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&texts);
    bus.add_listener("orders.>", move |_: Arc<String>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });

    let emission = bus
        .try_emit("orders.eu", Order(1))
        .expect("no exact listener of another type");
    let report = guarded("emit", emission).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));
    let report = guarded("emit", bus.emit("orders.eu", "note".to_owned())).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));
    assert_eq!(
        (orders.load(Ordering::SeqCst), texts.load(Ordering::SeqCst)),
        (1, 1)
    );
}

#[tokio::test]
async fn an_emitted_name_is_never_a_pattern() {
    let bus = EventBus::new();
    let count = counter(&bus, "orders.*");
    for name in ["orders.*", "orders.>", "orders..eu"] {
        match bus.try_emit(name, Order(1)).map_err(EmitError::from) {
            Err(EmitError::InvalidName(error)) => assert_eq!(error.name(), name),
            other => panic!("{name}: {other:?}"),
        }
        let report = guarded("emit", bus.emit(name, Order(1))).await;
        assert_eq!(report.delivered(), 0);
    }
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

#[test]
fn invalid_patterns_are_rejected_with_what_to_write() {
    let bus = EventBus::new();
    let error = bus
        .on("orders.>.created", |_: Arc<Order>| async {})
        .try_add()
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("invalid listener pattern \"orders.>.created\"")
            && message.contains("must come last"),
        "{message}"
    );
    let error = bus
        .on("ord*", |_: Arc<Order>| async {})
        .try_add()
        .unwrap_err();
    assert!(error.to_string().contains("whole token"), "{error}");
    assert!(bus.event_names().is_empty());
}

static AUDITED: AtomicUsize = AtomicUsize::new(0);

#[bus::listener("audit.>")]
async fn audit(order: &Order) {
    assert_eq!(order.0, 9);
    AUDITED.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn an_annotated_pattern_listener_is_found_by_the_global_emit() {
    let report = guarded("emit", bus::emit("audit.orders.created", Order(9))).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));
    assert_eq!(AUDITED.load(Ordering::SeqCst), 1);
    assert!(
        bus::global()
            .listeners("audit.>")
            .iter()
            .any(|info| info.name().ends_with("audit"))
    );
}
