//! Both dispatch modes keep every guarantee of the core (concurrency, isolation, tracking,
//! reports); `InlineFirst` adds that a listener with nothing to wait for is done before `emit`
//! returns, that a listener that suspends is not polled twice, and that inline nesting is
//! bounded.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus::{Dispatch, EventBus, error::DeliveryError};
use common::guarded;
use tokio::sync::{Barrier, Notify};

#[derive(Debug)]
struct Event(usize);

/// Two listeners that wait for each other can only finish if they run at the same time.
async fn listeners_of_one_emit_run_concurrently(bus: EventBus) {
    let barrier = Arc::new(Barrier::new(2));
    for _ in 0..2 {
        let barrier = Arc::clone(&barrier);
        bus.add_listener("meet", move |_: Arc<Event>| {
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
            }
        });
    }
    let report = guarded(
        "listeners waiting for each other",
        bus.emit("meet", Event(0)),
    )
    .await;
    assert_eq!(report.delivered(), 2);
}

fn boom(when: &str) {
    panic!("listener panicked {when}");
}

async fn failures_are_isolated_and_reported(bus: EventBus) {
    bus.add_listener("mixed", |_: Arc<Event>| async {});
    bus.add_listener("mixed", |_: Arc<Event>| async { boom("at once") });
    bus.add_listener("mixed", |_: Arc<Event>| async {
        tokio::task::yield_now().await;
        boom("after an await");
    });
    bus.add_listener("mixed", |_: Arc<Event>| async { Err::<(), _>("at once") });
    bus.add_listener("mixed", |_: Arc<Event>| async {
        tokio::task::yield_now().await;
        Err::<(), _>("after an await")
    });
    bus.add_listener("mixed", |_: Arc<Event>| async {
        tokio::task::yield_now().await;
    });
    for round in 0..3 {
        let report = guarded("emit", bus.emit("mixed", Event(round))).await;
        assert_eq!(
            (report.delivered(), report.failed()),
            (2, 4),
            "round {round}"
        );
        let panics = report
            .failures()
            .iter()
            .filter(|f| matches!(f, DeliveryError::Panicked { .. }))
            .count();
        assert_eq!(panics, 2, "round {round}");
    }
    assert_eq!(bus.in_flight(), 0);
}

async fn drain_waits_for_deliveries_and_what_they_emit(bus: EventBus) {
    let done = Arc::new(AtomicUsize::new(0));
    let (inner, counter) = (bus.clone(), Arc::clone(&done));
    bus.add_listener("chain", move |step: Arc<Event>| {
        let (bus, counter) = (inner.clone(), Arc::clone(&counter));
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            counter.fetch_add(1, Ordering::SeqCst);
            if step.0 > 0 {
                bus.emit("chain", Event(step.0 - 1));
            }
        }
    });
    for _ in 0..5 {
        bus.emit("chain", Event(3));
    }
    guarded("drain", bus.drain()).await;
    assert_eq!(done.load(Ordering::SeqCst), 20);
}

async fn emit_returns_while_a_listener_waits(bus: EventBus) {
    let gate = Arc::new(Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    {
        let (gate, finished) = (Arc::clone(&gate), Arc::clone(&finished));
        bus.add_listener("gated", move |_: Arc<Event>| {
            let (gate, finished) = (Arc::clone(&gate), Arc::clone(&finished));
            async move {
                gate.notified().await;
                finished.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let emission = bus.emit("gated", Event(0));
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    assert_eq!(bus.in_flight(), 1);
    gate.notify_one();
    assert_eq!(guarded("gated listener", emission).await.delivered(), 1);
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

async fn shutdown_aborts_what_never_finishes(bus: EventBus) {
    bus.add_listener("stuck", |_: Arc<Event>| std::future::pending::<()>());
    let emission = bus.emit("stuck", Event(0));
    let report = guarded("shutdown", bus.shutdown(Duration::from_millis(10))).await;
    assert_eq!(report.aborted(), 1);
    let report = guarded("aborted emission", emission).await;
    assert!(matches!(report.failures(), [DeliveryError::Aborted { .. }]));
}

macro_rules! every_mode {
    ($($module:ident => $mode:ident),* $(,)?) => {$(
        mod $module {
            use super::*;

            fn bus() -> EventBus {
                EventBus::builder().dispatch(Dispatch::$mode).build()
            }

            #[tokio::test(flavor = "current_thread")]
            async fn listeners_run_concurrently_on_one_thread() {
                listeners_of_one_emit_run_concurrently(bus()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn listeners_run_concurrently_on_two_threads() {
                listeners_of_one_emit_run_concurrently(bus()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failures_are_isolated() {
                failures_are_isolated_and_reported(bus()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn drain_waits() {
                drain_waits_for_deliveries_and_what_they_emit(bus()).await;
            }

            #[tokio::test]
            async fn emit_does_not_wait() {
                emit_returns_while_a_listener_waits(bus()).await;
            }

            #[tokio::test]
            async fn shutdown_aborts() {
                shutdown_aborts_what_never_finishes(bus()).await;
            }
        }
    )*};
}

every_mode!(inline_first => InlineFirst, spawn => Spawn);

#[test]
fn inline_first_is_the_default() {
    assert_eq!(EventBus::new().dispatch_mode(), Dispatch::InlineFirst);
    assert_eq!(bus::global().dispatch_mode(), Dispatch::InlineFirst);
}

/// Counts the listener's synchronous start, then finishes at once.
fn counting(counter: Arc<AtomicUsize>) -> impl Fn(Arc<Event>) -> std::future::Ready<()> {
    move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(())
    }
}

// On a current-thread runtime a spawned task cannot run before the test yields, so "done when
// emit returns" tells an inline delivery from a spawned one.
#[tokio::test(flavor = "current_thread")]
async fn inline_first_finishes_a_listener_with_nothing_to_wait_for_before_emit_returns() {
    let ran = Arc::new(AtomicUsize::new(0));
    let bus = EventBus::new();
    bus.add_listener("now", counting(Arc::clone(&ran)));
    let emission = bus.emit("now", Event(0));
    assert_eq!(ran.load(Ordering::SeqCst), 1, "ran inline");
    assert_eq!(bus.in_flight(), 0, "no task was needed");
    assert_eq!(emission.await.delivered(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn spawn_mode_never_runs_a_listener_on_the_emitters_stack() {
    let ran = Arc::new(AtomicUsize::new(0));
    let bus = EventBus::builder().dispatch(Dispatch::Spawn).build();
    bus.add_listener("later", counting(Arc::clone(&ran)));
    let emission = bus.emit("later", Event(0));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "not run before the emitter yields"
    );
    assert_eq!(bus.in_flight(), 1);
    assert_eq!(guarded("spawned listener", emission).await.delivered(), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_listener_that_suspended_once_is_spawned_directly_afterwards() {
    let starts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&starts);
    let bus = EventBus::new();
    bus.add_listener("yields", move |_: Arc<Event>| {
        let counter = Arc::clone(&counter);
        // The body of the async block runs when the future is polled.
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
    });

    let first = bus.emit("yields", Event(0));
    assert_eq!(
        starts.load(Ordering::SeqCst),
        1,
        "first delivery polled inline"
    );
    assert_eq!(
        bus.in_flight(),
        1,
        "and continued as a task when it suspended"
    );
    assert_eq!(guarded("first", first).await.delivered(), 1);

    let second = bus.emit("yields", Event(1));
    assert_eq!(
        starts.load(Ordering::SeqCst),
        1,
        "second delivery not polled inline"
    );
    assert_eq!(guarded("second", second).await.delivered(), 1);
    assert_eq!(starts.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_listener_emitting_inline_does_not_grow_the_stack_without_bound() {
    // Each delivery emits the next one before its first await: polled inline without a bound,
    // 20,000 nested emits would overflow the test thread's stack.
    const DEPTH: usize = 20_000;
    let bus = EventBus::new();
    let done = Arc::new(AtomicUsize::new(0));
    let (inner, counter) = (bus.clone(), Arc::clone(&done));
    bus.add_listener("recurse", move |left: Arc<Event>| {
        counter.fetch_add(1, Ordering::SeqCst);
        if left.0 > 0 {
            inner.emit("recurse", Event(left.0 - 1));
        }
        std::future::ready(())
    });
    bus.emit("recurse", Event(DEPTH));
    guarded("drain", bus.drain()).await;
    assert_eq!(done.load(Ordering::SeqCst), DEPTH + 1);
}
