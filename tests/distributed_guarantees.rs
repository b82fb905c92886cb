//! A delivery that comes from a broker keeps every guarantee of an in-process one: the same
//! layers around each attempt, the same panic isolation (the listener's call, the poll of its
//! future and its drop), the same timeout, the same dead-letter hook, and the same type checks
//! at the emitter. On the in-memory transport; `tests/metrics.rs` shows the metrics.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bus::error::{DeliveryError, EmitError, PublishError};
use bus::layer::{AttemptResult, DeadLetter, DeliveryInfo, DeliveryOutcome, Layer};
use bus::transport::MemoryTransport;
use bus::{EventBus, EventId, Policy};
use common::{Logs, guarded};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
}

/// The same JSON shape as [`Order`], and another type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Refund {
    id: u64,
}

/// What the layers saw of each attempt, by event id: (attempt, result, final).
#[derive(Default)]
struct Attempts {
    seen: Mutex<Vec<(EventId, u32, String, bool)>>,
    befores: AtomicUsize,
    dead_letters: AtomicUsize,
}

impl Attempts {
    fn of(&self, id: Option<&EventId>) -> Vec<(u32, String, bool)> {
        let id = id.expect("an emitted event has an id");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(event, ..)| event == id)
            .map(|(_, attempt, result, last)| (*attempt, result.clone(), *last))
            .collect()
    }
}

impl Layer for Attempts {
    fn before(&self, _: &DeliveryInfo<'_>) {
        self.befores.fetch_add(1, Ordering::SeqCst);
    }

    fn after(&self, delivery: &DeliveryInfo<'_>, outcome: &DeliveryOutcome<'_>) {
        let result = match outcome.result() {
            AttemptResult::Delivered => "delivered".to_owned(),
            AttemptResult::Failed(error) => format!("failed: {error}"),
            AttemptResult::Panicked(message) => format!("panicked: {message}"),
            AttemptResult::TimedOut(timeout) => format!("timed out: {timeout:?}"),
            other => format!("{other:?}"),
        };
        self.seen.lock().unwrap().push((
            delivery.event_id().clone(),
            delivery.attempt(),
            result,
            outcome.is_final(),
        ));
    }

    fn on_dead_letter(&self, _: &DeadLetter) {
        self.dead_letters.fetch_add(1, Ordering::SeqCst);
    }
}

/// A bus on `transport` with the `attempts` layer and a dead-letter hook that sends the
/// letter's attempts and error.
fn bus_on(
    transport: &MemoryTransport,
    attempts: &Arc<Attempts>,
) -> (EventBus, mpsc::UnboundedReceiver<(u32, String)>) {
    let (letters, received) = mpsc::unbounded_channel();
    let bus = EventBus::builder()
        .service("billing")
        .transport(transport.clone())
        .distributed::<Order>()
        .distributed::<Refund>()
        .layer(Arc::clone(attempts))
        .dead_letter(move |letter| {
            let _ = letters.send((letter.attempts(), letter.error().to_string()));
        })
        .build();
    (bus, received)
}

async fn next<T>(receiver: &mut mpsc::UnboundedReceiver<T>) -> T {
    guarded("the next one", receiver.recv())
        .await
        .expect("the sender lives as long as the bus")
}

#[tokio::test]
async fn layers_and_the_dead_letter_hook_see_every_attempt_the_broker_makes() {
    // A current-thread runtime: the consumer logs on this thread, into this capture.
    let logs = Logs::default();
    let _capture = logs.capture();
    let transport = MemoryTransport::new();
    let attempts = Arc::new(Attempts::default());
    let (bus, mut letters) = bus_on(&transport, &attempts);
    let calls = Arc::new(AtomicUsize::new(0));
    let (handled, mut handled_ids) = mpsc::unbounded_channel();
    {
        let calls = Arc::clone(&calls);
        bus.on("orders.placed", move |order: Arc<Order>| {
            let (calls, handled) = (Arc::clone(&calls), handled.clone());
            async move {
                if order.id == 13 {
                    calls.fetch_add(1, Ordering::SeqCst);
                    return Err(format!("order {} is poison", order.id));
                }
                let _ = handled.send(order.id);
                Ok(())
            }
        })
        .policy(Policy::new().retry(2).backoff(Duration::from_millis(1)))
        .add();
    }
    assert!(bus.listeners("orders.placed")[0].is_distributed());
    guarded("ready", bus.ready()).await.unwrap();

    let poison = guarded("publish", bus.emit("orders.placed", Order { id: 13 })).await;
    let healthy = guarded("publish", bus.emit("orders.placed", Order { id: 14 })).await;
    assert!(poison.is_ok() && healthy.is_ok());
    assert_eq!(next(&mut handled_ids).await, 14);
    let (letter_attempts, error) = next(&mut letters).await;
    assert_eq!(
        letter_attempts, 3,
        "the hook gets the last of 1 + 2 attempts"
    );
    assert!(error.contains("order 13 is poison"), "{error}");
    guarded("drain", bus.drain()).await;

    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let failed = "failed: order 13 is poison".to_owned();
    assert_eq!(
        attempts.of(poison.event_id()),
        [
            (1, failed.clone(), false),
            (2, failed.clone(), false),
            (3, failed, true)
        ],
        "each attempt passed through the layers, the last one final"
    );
    assert_eq!(
        attempts.of(healthy.event_id()),
        [(1, "delivered".to_owned(), true)]
    );
    assert_eq!(attempts.befores.load(Ordering::SeqCst), 4);
    assert_eq!(attempts.dead_letters.load(Ordering::SeqCst), 1);
    // The bus's own layer logged each failed attempt inside the delivery's span, which names
    // the event and the listener, as in process.
    let failures = logs.lines_with(&[
        "bus.deliver{",
        "orders.placed",
        "listener returned an error",
    ]);
    assert_eq!(failures.len(), 3, "{}", logs.text());
    assert!(
        failures
            .iter()
            .all(|line| line.contains("distributed_guarantees")),
        "{failures:?}"
    );
    assert_eq!(
        logs.lines_with(&["bus.deliver{", "dead-lettered after its last attempt"])
            .len(),
        1,
        "{}",
        logs.text()
    );
}

/// A future that is done at once, and panics when it is dropped.
struct PanicsOnDrop;

impl Future for PanicsOnDrop {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("panicked as it was dropped");
    }
}

type Boxed = Pin<Box<dyn Future<Output = ()> + Send>>;

#[tokio::test]
async fn a_panic_in_the_call_the_poll_or_the_drop_is_caught_and_the_consumer_goes_on() {
    let transport = MemoryTransport::new();
    let attempts = Arc::new(Attempts::default());
    let (bus, mut letters) = bus_on(&transport, &attempts);
    let (handled, mut handled_ids) = mpsc::unbounded_channel();
    bus.on("orders.placed", move |order: Arc<Order>| -> Boxed {
        match order.id {
            // Before the closure returns its future.
            1 => panic!("panicked in the call"),
            2 => Box::pin(async { panic!("panicked in a poll") }),
            3 => Box::pin(PanicsOnDrop),
            id => {
                let handled = handled.clone();
                Box::pin(async move {
                    let _ = handled.send(id);
                })
            }
        }
    })
    .policy(Policy::new().retry(1).backoff(Duration::from_millis(1)))
    .add();
    guarded("ready", bus.ready()).await.unwrap();

    let mut ids = Vec::new();
    for id in 1..=3 {
        let report = guarded("publish", bus.emit("orders.placed", Order { id })).await;
        assert!(report.is_ok(), "{report:?}");
        ids.push(report.event_id().cloned());
    }
    for _ in 1..=3 {
        let (attempts, error) = next(&mut letters).await;
        assert_eq!(attempts, 2, "{error}");
        assert!(error.contains("panicked"), "{error}");
    }
    // The consumer lives on: the next event is handled, and the bus says it is ready.
    let after = guarded("publish", bus.emit("orders.placed", Order { id: 4 })).await;
    assert!(after.is_ok());
    assert_eq!(next(&mut handled_ids).await, 4);
    guarded("ready", bus.ready()).await.unwrap();

    for (id, message) in ids.into_iter().zip([
        "panicked in the call",
        "panicked in a poll",
        "panicked as it was dropped",
    ]) {
        let panicked = format!("panicked: {message}");
        assert_eq!(
            attempts.of(id.as_ref()),
            [(1, panicked.clone(), false), (2, panicked, true)],
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_broker_attempt_that_runs_past_its_timeout_is_cancelled_and_tried_again() {
    let transport = MemoryTransport::new();
    let attempts = Arc::new(Attempts::default());
    let (bus, _letters) = bus_on(&transport, &attempts);
    let calls = Arc::new(AtomicUsize::new(0));
    let (handled, mut handled_ids) = mpsc::unbounded_channel();
    {
        let calls = Arc::clone(&calls);
        bus.on("orders.placed", move |order: Arc<Order>| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            let handled = handled.clone();
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                let _ = handled.send(order.id);
            }
        })
        .policy(
            Policy::new()
                .timeout(Duration::from_millis(50))
                .retry(1)
                .backoff(Duration::from_millis(1)),
        )
        .add();
    }
    guarded("ready", bus.ready()).await.unwrap();
    let report = guarded("publish", bus.emit("orders.placed", Order { id: 5 })).await;
    assert_eq!(next(&mut handled_ids).await, 5);
    guarded("drain", bus.drain()).await;
    assert_eq!(
        attempts.of(report.event_id()),
        [
            (1, "timed out: 50ms".to_owned(), false),
            (2, "delivered".to_owned(), true)
        ]
    );
}

#[tokio::test]
async fn an_event_of_another_type_than_a_distributed_listener_takes_is_refused_as_in_process() {
    let transport = MemoryTransport::new();
    let attempts = Arc::new(Attempts::default());
    let (distributed, _letters) = bus_on(&transport, &attempts);
    let local = EventBus::new();
    let (handled, mut handled_ids) = mpsc::unbounded_channel();
    for bus in [&distributed, &local] {
        let handled = handled.clone();
        bus.add_listener("orders.placed", move |order: Arc<Order>| {
            let handled = handled.clone();
            async move {
                let _ = handled.send(order.id);
            }
        });
    }
    assert!(distributed.listeners("orders.placed")[0].is_distributed());
    guarded("ready", distributed.ready()).await.unwrap();

    // `try_emit` refuses it the same way with and without a transport, and gives it back.
    for bus in [&distributed, &local] {
        let refused = bus
            .try_emit("orders.placed", Refund { id: 7 })
            .expect_err("a refund under the name of orders");
        let (error, refund) = refused.into_parts();
        assert!(
            matches!(
                &error,
                EmitError::TypeMismatch { listener, expected, actual, .. }
                    if listener.contains("distributed_guarantees")
                        && expected.ends_with("Order")
                        && actual.ends_with("Refund")
            ),
            "{error}"
        );
        assert_eq!(refund, Refund { id: 7 });
    }

    // `emit` does not publish it: the broker would hand it to the listener as an `Order`.
    let report = guarded("emit", distributed.emit("orders.placed", Refund { id: 8 })).await;
    assert!(
        matches!(
            report.published(),
            Some(Err(PublishError::Refused {
                reason: EmitError::TypeMismatch { .. },
                ..
            }))
        ),
        "{report:?}"
    );
    assert!(!report.is_ok());
    // In process, the listener of another type is counted as not delivered.
    let report = guarded("emit", local.emit("orders.placed", Refund { id: 8 })).await;
    assert!(matches!(
        report.failures(),
        [DeliveryError::NotDelivered {
            reason: EmitError::TypeMismatch { .. },
            ..
        }]
    ));

    // An order after it is the first thing the distributed listener gets: the memory
    // transport keeps the publish order, so a published refund would have come first.
    let report = guarded("emit", distributed.emit("orders.placed", Order { id: 9 })).await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(next(&mut handled_ids).await, 9);
}
