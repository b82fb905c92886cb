//! A listener that panics or returns `Err` disturbs nobody: not the other listeners, not the
//! emitter, not the bus. It is logged with the event and the listener, and counted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bus::{EventBus, error::DeliveryError};
use common::{Logs, guarded};

#[derive(Debug)]
struct Order(u32);

/// A hand-written error, as a user without thiserror would write it.
#[derive(Debug)]
struct NoStock(u32);

impl std::fmt::Display for NoStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no stock for order {}", self.0)
    }
}

impl std::error::Error for NoStock {}

static HEALTHY_CALLS: AtomicUsize = AtomicUsize::new(0);

async fn healthy(_: Arc<Order>) {
    HEALTHY_CALLS.fetch_add(1, Ordering::SeqCst);
}

async fn panics(order: Arc<Order>) {
    panic!("order {} is cursed", order.0);
}

async fn fails(order: Arc<Order>) -> Result<(), NoStock> {
    Err(NoStock(order.0))
}

async fn fails_with_a_string(_: Arc<Order>) -> Result<(), String> {
    Err("plain text error".to_owned())
}

#[tokio::test]
async fn failures_are_isolated_counted_and_logged() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let bus = EventBus::new();
    bus.add_listener("order.placed", healthy);
    bus.add_listener("order.placed", panics);
    bus.add_listener("order.placed", fails);
    bus.add_listener("order.placed", fails_with_a_string);

    let report = guarded("emit", bus.emit("order.placed", Order(7))).await;
    assert_eq!(report.delivered(), 1);
    assert_eq!(report.failed(), 3);
    assert!(!report.is_ok());
    assert_eq!(HEALTHY_CALLS.load(Ordering::SeqCst), 1);

    let mut messages: Vec<String> = report.failures().iter().map(ToString::to_string).collect();
    messages.sort();
    assert_eq!(
        messages,
        [
            "listener `emit_failures::fails_with_a_string` failed on event `order.placed`: plain \
             text error",
            "listener `emit_failures::fails` failed on event `order.placed`: no stock for order 7",
            "listener `emit_failures::panics` panicked on event `order.placed`: order 7 is cursed",
        ]
    );
    for failure in report.failures() {
        assert_eq!(failure.event(), "order.placed");
        assert!(
            bus.listeners("order.placed")
                .iter()
                .any(|l| l.id() == failure.listener_id())
        );
    }
    let panicked = report
        .failures()
        .iter()
        .find(|f| matches!(f, DeliveryError::Panicked { .. }))
        .unwrap();
    assert_eq!(panicked.listener(), "emit_failures::panics");
    let failed = report
        .failures()
        .iter()
        .find(|f| f.listener() == "emit_failures::fails")
        .unwrap();
    let source = std::error::Error::source(failed).expect("the listener's error is the source");
    assert_eq!(source.to_string(), "no stock for order 7");

    // Logged, with the event and the listener as fields.
    let panic_lines = logs.lines_with(&[
        "ERROR",
        "listener panicked",
        "order.placed",
        "emit_failures::panics",
        "order 7 is cursed",
    ]);
    assert_eq!(panic_lines.len(), 1, "{}", logs.text());
    let error_lines = logs.lines_with(&[
        "ERROR",
        "listener returned an error",
        "order.placed",
        "emit_failures::fails",
        "no stock for order 7",
    ]);
    assert_eq!(error_lines.len(), 1, "{}", logs.text());

    // The bus and the emitter carry on.
    let report = guarded("second emit", bus.emit("order.placed", Order(8))).await;
    assert_eq!((report.delivered(), report.failed()), (1, 3));
    assert_eq!(HEALTHY_CALLS.load(Ordering::SeqCst), 2);
    assert_eq!(bus.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_listener_does_not_cancel_its_siblings_under_load() {
    let bus = EventBus::new();
    let ok = Arc::new(AtomicUsize::new(0));
    {
        let ok = Arc::clone(&ok);
        bus.add_listener("load", move |_: Arc<Order>| {
            let ok = Arc::clone(&ok);
            async move {
                tokio::task::yield_now().await;
                ok.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    bus.add_listener("load", |order: Arc<Order>| async move {
        tokio::task::yield_now().await;
        assert!(order.0.is_multiple_of(2), "odd order {}", order.0);
    });
    let emissions: Vec<_> = (0..200).map(|i| bus.emit("load", Order(i))).collect();
    let mut failed = 0;
    for emission in emissions {
        failed += guarded("emit", emission).await.failed();
    }
    assert_eq!(failed, 100);
    assert_eq!(ok.load(Ordering::SeqCst), 200);
}

/// A future that is done at once, or after one wait, and panics when it is dropped.
struct PanicsOnDrop {
    waits: bool,
}

impl std::future::Future for PanicsOnDrop {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.waits {
            self.waits = false;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(())
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("dropped in a bad state");
    }
}

#[tokio::test]
async fn a_future_that_panics_as_it_is_dropped_fails_its_delivery_not_the_emit() {
    for waits in [false, true] {
        let bus = EventBus::new();
        bus.add_listener("orders.placed", move |_: Arc<Order>| PanicsOnDrop { waits });
        bus.add_listener("orders.placed", |_: Arc<Order>| async {});
        // Inline (done at once) or in a task (after a wait): `emit` returns, no panic.
        let emission = bus.emit("orders.placed", Order(1));
        let report = guarded("emit", emission).await;
        assert_eq!(
            (report.delivered(), report.failed()),
            (1, 1),
            "waits: {waits}"
        );
        assert!(
            matches!(
                &report.failures()[0],
                DeliveryError::Panicked { message, .. } if message == "dropped in a bad state"
            ),
            "waits: {waits}: {:?}",
            report.failures()
        );
        guarded("drain", bus.drain()).await;
        assert_eq!(bus.in_flight(), 0);
    }
}
