//! The seed's semantics: one registration per fn, removal, no-op emits, concurrency, and an
//! emitter that never waits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bus::EventBus;
use common::guarded;
use tokio::sync::{Barrier, Notify, oneshot};

#[derive(Debug)]
struct Ping;

static ADDED_TWICE_CALLS: AtomicUsize = AtomicUsize::new(0);

async fn added_twice(_: Arc<Ping>) {
    ADDED_TWICE_CALLS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn adding_the_same_fn_twice_registers_it_once() {
    let bus = EventBus::new();
    let first = bus.add_listener("ping", added_twice);
    let second = bus.add_listener("ping", added_twice);
    assert_eq!(first, second);
    assert_eq!(bus.listeners("ping").len(), 1);

    let report = guarded("emit", bus.emit("ping", Ping)).await;
    assert_eq!(report.delivered(), 1);
    assert_eq!(ADDED_TWICE_CALLS.load(Ordering::SeqCst), 1);
}

async fn first_listener(_: Arc<Ping>) {}
async fn second_listener(_: Arc<Ping>) {}

#[tokio::test]
async fn different_fns_are_different_listeners() {
    let bus = EventBus::new();
    let a = bus.add_listener("ping", first_listener);
    let b = bus.add_listener("ping", second_listener);
    assert_ne!(a, b);
    let report = guarded("emit", bus.emit("ping", Ping)).await;
    assert_eq!(report.delivered(), 2);
}

#[tokio::test]
async fn a_capturing_closure_is_a_new_listener_on_every_add() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let make = || {
        let calls = Arc::clone(&calls);
        move |_: Arc<Ping>| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let a = bus.add_listener("ping", make());
    let b = bus.add_listener("ping", make());
    assert_ne!(a, b);
    let report = guarded("emit", bus.emit("ping", Ping)).await;
    assert_eq!(report.delivered(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Removed by id; removing again says so.
    assert!(bus.remove(a));
    assert!(!bus.remove(a));
    let report = guarded("emit", bus.emit("ping", Ping)).await;
    assert_eq!(report.delivered(), 1);
    assert!(
        !bus.remove_listener("ping", make()),
        "a capturing closure has no identity"
    );
}

static REMOVED_CALLS: AtomicUsize = AtomicUsize::new(0);

async fn removable(_: Arc<Ping>) {
    REMOVED_CALLS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn remove_listener_stops_delivery_and_reports_absence() {
    let bus = EventBus::new();
    assert!(!bus.remove_listener("ping", removable), "never registered");
    bus.add_listener("ping", removable);
    guarded("emit", bus.emit("ping", Ping)).await;
    assert_eq!(REMOVED_CALLS.load(Ordering::SeqCst), 1);

    assert!(
        !bus.remove_listener("other", removable),
        "registered under another name"
    );
    assert!(bus.remove_listener("ping", removable));
    assert!(!bus.remove_listener("ping", removable), "already removed");
    assert!(bus.listeners("ping").is_empty());

    let report = guarded("emit", bus.emit("ping", Ping)).await;
    assert_eq!(report.delivered(), 0);
    assert_eq!(REMOVED_CALLS.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn emit_with_no_listener_is_a_no_op() {
    let bus = EventBus::new();
    let emission = bus.emit("nobody.listens", Ping);
    assert_eq!(emission.listener_count(), 0);
    let report = guarded("emit", emission).await;
    assert_eq!(report.event(), "nobody.listens");
    assert_eq!((report.delivered(), report.failed()), (0, 0));
    assert!(report.is_ok());
    assert!(bus.try_emit("nobody.listens", Ping).is_ok());
}

/// Two listeners that each wait for the other can only finish if they run at the same time.
async fn listeners_of_one_emit_run_concurrently(bus: EventBus) {
    let barrier = Arc::new(Barrier::new(2));
    for _ in 0..2 {
        let barrier = Arc::clone(&barrier);
        bus.add_listener("meet", move |_: Arc<Ping>| {
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
            }
        });
    }
    let report = guarded(
        "two listeners waiting for each other",
        bus.emit("meet", Ping),
    )
    .await;
    assert_eq!(report.delivered(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn listeners_run_concurrently_on_a_current_thread_runtime() {
    listeners_of_one_emit_run_concurrently(EventBus::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_run_concurrently_on_a_multi_thread_runtime() {
    listeners_of_one_emit_run_concurrently(EventBus::new()).await;
}

#[tokio::test]
async fn emit_returns_while_a_listener_is_still_waiting() {
    let bus = EventBus::new();
    let (release, released) = oneshot::channel::<()>();
    let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
    let finished = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    {
        let (finished, started) = (Arc::clone(&finished), Arc::clone(&started));
        bus.add_listener("slow", move |_: Arc<Ping>| {
            let (released, finished, started) = (
                Arc::clone(&released),
                Arc::clone(&finished),
                Arc::clone(&started),
            );
            async move {
                started.notify_one();
                let receiver = released.lock().await.take().expect("one delivery");
                receiver.await.expect("the test releases the listener");
                finished.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    let emission = bus.emit("slow", Ping);
    // `emit` has returned; the listener cannot have finished, since it waits for `release`.
    guarded("listener start", started.notified()).await;
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    assert_eq!(bus.in_flight(), 1);

    release.send(()).unwrap();
    let report = guarded("slow listener", emission).await;
    assert_eq!(report.delivered(), 1);
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn listeners_may_change_the_registry_while_they_run() {
    let bus = EventBus::new();
    let inner = bus.clone();
    bus.add_listener("grow", move |_: Arc<Ping>| {
        let bus = inner.clone();
        async move {
            // Adding and emitting from inside a delivery must not deadlock.
            let id = bus.add_listener("grow.more", |_: Arc<Ping>| async {});
            bus.emit("grow.more", Ping).await;
            assert!(bus.remove(id));
        }
    });
    let report = guarded("re-entrant listener", bus.emit("grow", Ping)).await;
    assert!(report.is_ok(), "{:?}", report.failures());
}

#[tokio::test]
async fn a_removal_does_not_affect_an_emit_already_started() {
    let bus = EventBus::new();
    let gate = Arc::new(Notify::new());
    let id = {
        let gate = Arc::clone(&gate);
        bus.add_listener("gated", move |_: Arc<Ping>| {
            let gate = Arc::clone(&gate);
            async move { gate.notified().await }
        })
    };
    let emission = bus.emit("gated", Ping);
    assert!(bus.remove(id));
    gate.notify_one();
    assert_eq!(guarded("started delivery", emission).await.delivered(), 1);
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<bus::EventBus>();
    send_sync::<bus::Emission>();
    send_sync::<bus::DeliveryReport>();
    send_sync::<bus::error::EmitError>();
    send_sync::<bus::error::DeliveryError>();
    send_sync::<bus::listener::ListenerInfo>();
    send::<bus::report::EmissionFuture>();
}
