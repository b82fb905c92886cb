//! Waiting and streaming: `once`, `wait_for` and `stream`, each removing its listener when
//! it is done or dropped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus::{
    EventBus,
    error::{AddListenerError, Lagged, WaitError},
};
use common::guarded;
use tokio_stream::StreamExt;

#[derive(Debug, PartialEq)]
struct Paid(u32);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_calls_exactly_once_however_many_emits_race() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let id = bus
        .on("orders.paid", move |_: Arc<Paid>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .once()
        .add();
    let emitters: Vec<_> = (0..8)
        .map(|task| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    drop(bus.emit("orders.paid", Paid(task * 1000 + i)));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for emitter in emitters {
        guarded("an emitter", emitter)
            .await
            .expect("emitter panicked");
    }
    guarded("drain", bus.drain()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        bus.listeners("orders.paid").is_empty(),
        "removed after firing"
    );
    assert!(!bus.remove(id), "already gone");
}

#[tokio::test]
async fn once_can_be_removed_before_it_fires() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let id = bus
        .on("orders.*", move |_: Arc<Paid>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async {}
        })
        .once()
        .add();
    assert_eq!(bus.listeners("orders.*").len(), 1);
    assert!(bus.remove(id));
    let report = guarded("emit", bus.emit("orders.paid", Paid(1))).await;
    assert_eq!(report.delivered(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(
        bus.on("bad name", |_: Arc<Paid>| async {})
            .once()
            .try_add()
            .is_err()
    );
}

#[tokio::test]
async fn wait_for_resolves_with_the_next_matching_event() {
    let bus = EventBus::new();
    // The wait starts at the call: an emit before the first poll is not missed.
    let paid = bus.wait_for::<Paid>("orders.*.paid");
    drop(bus.emit("orders.42.created", Paid(0)));
    drop(bus.emit("orders.42.paid", Paid(42)));
    drop(bus.emit("orders.43.paid", Paid(43)));
    let event = guarded("wait_for", paid).await.expect("an event");
    assert_eq!(*event, Paid(42));
    assert!(
        bus.event_names().is_empty(),
        "the waiting listener is removed"
    );
}

#[tokio::test]
async fn wait_for_matching_skips_what_the_predicate_rejects() {
    let bus = EventBus::new();
    let big = bus.wait_for_matching("orders.paid", |paid: &Paid| paid.0 > 100);
    for amount in [5, 50, 500, 5000] {
        drop(bus.emit("orders.paid", Paid(amount)));
    }
    assert_eq!(*guarded("wait", big).await.unwrap(), Paid(500));
}

#[tokio::test]
async fn dropping_a_wait_removes_its_listener() {
    let bus = EventBus::new();
    let wait = bus.wait_for::<Paid>("orders.paid");
    assert_eq!(bus.listeners("orders.paid").len(), 1);
    // Cancelled by a timeout, as a caller would bound it.
    let timed_out = tokio::time::timeout(Duration::from_millis(10), wait).await;
    assert!(timed_out.is_err());
    assert!(bus.listeners("orders.paid").is_empty());
}

#[tokio::test]
async fn wait_for_reports_a_bad_pattern_and_a_dropped_bus() {
    let bus = EventBus::new();
    match bus.wait_for::<Paid>("orders.>.paid").await {
        Err(WaitError::InvalidPattern(error)) => assert_eq!(error.name(), "orders.>.paid"),
        other => panic!("{other:?}"),
    }
    let wait = bus.wait_for::<Paid>("orders.paid");
    drop(bus);
    match guarded("wait", wait).await {
        Err(WaitError::Closed { pattern }) => assert_eq!(pattern, "orders.paid"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stream_yields_matching_events_in_order() {
    let bus = EventBus::new();
    let mut orders = bus.stream::<Paid>("orders.>", 16).unwrap();
    assert_eq!(orders.pattern(), "orders.>");
    for amount in 1..=3 {
        drop(bus.emit("orders.eu.paid", Paid(amount)));
    }
    drop(bus.emit("invoices.eu.paid", Paid(99)));
    for amount in 1..=3 {
        let event = guarded("next", orders.next()).await.unwrap().unwrap();
        assert_eq!(*event, Paid(amount));
    }
    // The stream ends when the bus goes.
    drop(bus);
    assert!(guarded("end", orders.next()).await.is_none());
}

#[tokio::test]
async fn a_slow_reader_is_told_what_it_lost_and_never_blocks_emitters() {
    let bus = EventBus::new();
    let mut slow = bus.stream::<Paid>("orders.paid", 2).unwrap();
    // Five emits into a buffer of two, with nobody reading: every emit returns.
    for amount in 0..5 {
        let report = guarded("emit", bus.emit("orders.paid", Paid(amount))).await;
        assert_eq!(report.delivered(), 1);
    }
    assert_eq!(guarded("next", slow.next()).await, Some(Err(Lagged(3))));
    assert_eq!(slow.lagged(), 3);
    let rest: Vec<u32> = [
        guarded("next", slow.next()).await,
        guarded("next", slow.next()).await,
    ]
    .into_iter()
    .map(|item| item.unwrap().unwrap().0)
    .collect();
    assert_eq!(rest, [3, 4]);
}

#[tokio::test]
async fn streams_check_their_capacity_and_leave_when_dropped() {
    let bus = EventBus::new();
    for capacity in [0, bus::stream::MAX_CAPACITY + 1] {
        match bus.stream::<Paid>("orders.paid", capacity) {
            Err(error @ AddListenerError::InvalidCapacity { .. }) => {
                assert!(
                    error.to_string().contains("must be between 1 and"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        bus.stream::<Paid>("orders paid", 4),
        Err(AddListenerError::InvalidName { .. })
    ));
    let stream = bus.stream::<Paid>("orders.paid", 4).unwrap();
    let id = stream.listener_id();
    assert_eq!(bus.listeners("orders.paid")[0].id(), id);
    drop(stream);
    assert!(bus.listeners("orders.paid").is_empty());
}

#[tokio::test]
async fn a_stream_holds_exactly_its_capacity_and_counts_exactly_what_it_drops() {
    for capacity in [1, 3, 5, 16] {
        let bus = EventBus::new();
        let mut stream = bus.stream::<Paid>("orders.paid", capacity).unwrap();
        let emitted = 40_u32;
        for amount in 0..emitted {
            drop(bus.emit("orders.paid", Paid(amount)));
        }
        let dropped = u64::from(emitted) - capacity as u64;
        assert_eq!(
            guarded("next", stream.next()).await,
            Some(Err(Lagged(dropped))),
            "capacity {capacity}: exactly the events past the capacity are dropped"
        );
        let mut kept = Vec::new();
        for _ in 0..capacity {
            kept.push(guarded("next", stream.next()).await.unwrap().unwrap().0);
        }
        let first_kept = emitted - capacity as u32;
        assert_eq!(kept, (first_kept..emitted).collect::<Vec<_>>());
        assert_eq!(stream.lagged(), dropped);
        drop(bus);
        assert!(
            guarded("end", stream.next()).await.is_none(),
            "capacity {capacity}: nothing more was held"
        );
    }
}

/// Runs `remove` on a thread of its own: a removal that deadlocks fails the test instead of
/// hanging it.
fn returns(what: &str, remove: impl FnOnce() -> bool + Send + 'static) -> bool {
    let (done, returned) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(remove());
    });
    match returned.recv_timeout(common::GUARD) {
        Ok(removed) => removed,
        Err(_) => panic!("{what} did not return within {:?}", common::GUARD),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_listener_that_owns_a_stream_or_a_wait_returns_and_the_bus_goes_on() {
    let bus = EventBus::new();
    // A listener whose closure owns a stream of the same bus: dropping the closure drops the
    // stream, which removes its own listener.
    let stream = bus.stream::<Paid>("orders.audited", 4).unwrap();
    let owner = bus.add_listener("orders.paid", move |_: Arc<Paid>| {
        let _owned = &stream;
        async {}
    });
    // One that owns a wait, and a `once` listener that owns one and has not fired.
    let wait = bus.wait_for::<Paid>("orders.refunded");
    let waiting = bus.add_listener("orders.paid", move |_: Arc<Paid>| {
        let _owned = &wait;
        async {}
    });
    let once_wait = bus.wait_for::<Paid>("orders.voided");
    let once = bus
        .on("orders.paid", move |_: Arc<Paid>| {
            let _owned = &once_wait;
            async {}
        })
        .once()
        .add();
    for (what, id) in [("stream", owner), ("wait", waiting), ("once", once)] {
        let handle = bus.clone();
        assert!(returns(what, move || handle.remove(id)), "{what}");
    }
    assert!(
        bus.listeners("orders.audited").is_empty()
            && bus.listeners("orders.refunded").is_empty()
            && bus.listeners("orders.voided").is_empty(),
        "the owned stream and waits removed their own listeners"
    );
    // Later adds and removes work.
    let handle = bus.clone();
    assert!(returns("a later add and remove", move || {
        let id = handle.add_listener("orders.paid", |_: Arc<Paid>| async {});
        handle.remove(id)
    }));

    // A `once` listener that owns a stream fires, removes itself, and drops the stream.
    let stream = bus.stream::<Paid>("orders.shipped", 4).unwrap();
    bus.on("orders.packed", move |_: Arc<Paid>| {
        let _owned = &stream;
        async {}
    })
    .once()
    .add();
    let report = guarded("emit", bus.emit("orders.packed", Paid(1))).await;
    assert_eq!(report.delivered(), 1);
    assert!(bus.listeners("orders.packed").is_empty());
    assert!(bus.listeners("orders.shipped").is_empty());
}
