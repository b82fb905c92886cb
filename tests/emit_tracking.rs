//! No task is lost or detached: `drain` waits for every delivery, `shutdown` stops the bus and
//! aborts what does not finish in time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus::{
    EventBus,
    error::{DeliveryError, EmitError},
};
use common::guarded;
use tokio::sync::Notify;

#[derive(Debug)]
struct Step(usize);

/// Builds a bus where `chain` re-emits itself `depth` times; every hop waits on a timer first,
/// so nothing is done by the time the first emit returns.
fn chained_bus(done: &Arc<AtomicUsize>) -> EventBus {
    let bus = EventBus::new();
    let (inner, done) = (bus.clone(), Arc::clone(done));
    bus.add_listener("chain", move |step: Arc<Step>| {
        let (bus, done) = (inner.clone(), Arc::clone(&done));
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            done.fetch_add(1, Ordering::SeqCst);
            if step.0 > 0 {
                // Fire and forget: only `drain` can know about this one.
                bus.emit("chain", Step(step.0 - 1));
            }
        }
    });
    bus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_every_task_including_the_ones_listeners_start() {
    let done = Arc::new(AtomicUsize::new(0));
    let bus = chained_bus(&done);
    for _ in 0..10 {
        bus.emit("chain", Step(4));
    }
    guarded("drain", bus.drain()).await;
    assert_eq!(done.load(Ordering::SeqCst), 50, "10 chains of 5 hops");
    assert_eq!(bus.in_flight(), 0);
}

#[tokio::test]
async fn drain_on_an_idle_bus_returns_at_once() {
    guarded("drain", EventBus::new().drain()).await;
}

#[tokio::test]
async fn shutdown_waits_for_work_that_finishes_in_time() {
    let done = Arc::new(AtomicUsize::new(0));
    let bus = chained_bus(&done);
    bus.emit("chain", Step(0));
    let report = guarded("shutdown", bus.shutdown(Duration::from_secs(5))).await;
    assert_eq!(report.in_flight(), 1);
    assert_eq!(report.aborted(), 0);
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn shutdown_aborts_what_is_still_running_at_the_deadline_and_closes_the_bus() {
    let bus = EventBus::new();
    let started = Arc::new(Notify::new());
    {
        let started = Arc::clone(&started);
        bus.add_listener("stuck", move |_: Arc<Step>| {
            let started = Arc::clone(&started);
            async move {
                started.notify_one();
                std::future::pending::<()>().await;
            }
        });
    }
    bus.add_listener("quick", |_: Arc<Step>| async {});

    let stuck = bus.emit("stuck", Step(0));
    let also_stuck = bus.emit("stuck", Step(1));
    guarded("listener start", started.notified()).await;

    let report = guarded("shutdown", bus.shutdown(Duration::from_millis(20))).await;
    assert_eq!(report.in_flight(), 2);
    assert_eq!(report.aborted(), 2);
    assert_eq!(bus.in_flight(), 0);
    assert!(bus.is_closed());

    for emission in [stuck, also_stuck] {
        let report = guarded("aborted emission", emission).await;
        assert_eq!(report.failed(), 1);
        assert!(
            matches!(report.failures()[0], DeliveryError::Aborted { .. }),
            "{:?}",
            report.failures()
        );
    }

    // Closed: new emits are refused, with or without listeners.
    let refused = bus
        .try_emit("quick", Step(2))
        .map_err(EmitError::from)
        .unwrap_err();
    assert!(matches!(refused, EmitError::Closed { ref event } if event == "quick"));
    assert!(refused.to_string().contains("shut down"), "{refused}");
    assert!(matches!(
        bus.try_emit("nobody", Step(3)).map_err(EmitError::from),
        Err(EmitError::Closed { .. })
    ));
    let report = guarded("emit after shutdown", bus.emit("quick", Step(4))).await;
    assert_eq!((report.delivered(), report.failed()), (0, 1));
    assert!(matches!(
        &report.failures()[0],
        DeliveryError::NotDelivered {
            reason: EmitError::Closed { .. },
            ..
        }
    ));
}

#[tokio::test]
async fn a_listener_emitting_during_shutdown_is_refused_not_lost_silently() {
    let bus = EventBus::new();
    let gate = Arc::new(Notify::new());
    let outcome = Arc::new(tokio::sync::Mutex::new(None));
    {
        let (inner, gate, outcome) = (bus.clone(), Arc::clone(&gate), Arc::clone(&outcome));
        bus.add_listener("first", move |_: Arc<Step>| {
            let (bus, gate, outcome) = (inner.clone(), Arc::clone(&gate), Arc::clone(&outcome));
            async move {
                gate.notified().await;
                *outcome.lock().await = Some(
                    bus.try_emit("second", Step(1))
                        .map_err(EmitError::from)
                        .map(|_| ()),
                );
            }
        });
    }
    bus.add_listener("second", |_: Arc<Step>| async {});
    bus.emit("first", Step(0));
    let shutdown = tokio::spawn({
        let bus = bus.clone();
        async move { bus.shutdown(Duration::from_secs(5)).await }
    });
    guarded("the bus closing", async {
        while !bus.is_closed() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    gate.notify_one();
    let report = guarded("shutdown", shutdown).await.unwrap();
    assert_eq!(report.aborted(), 0);
    let outcome = outcome.lock().await.take().expect("the listener ran");
    assert!(
        matches!(outcome, Err(EmitError::Closed { .. })),
        "{outcome:?}"
    );
}

#[test]
fn a_delivery_dropped_with_its_runtime_is_reported_as_aborted() {
    let bus = EventBus::new();
    bus.add_listener("stuck", |_: Arc<Step>| std::future::pending::<()>());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let emission = runtime.block_on(async { bus.emit("stuck", Step(0)) });
    assert_eq!(bus.in_flight(), 1);
    // Dropping the runtime drops the task that runs the delivery.
    drop(runtime);
    assert_eq!(
        bus.in_flight(),
        0,
        "the dropped delivery is no longer counted"
    );

    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = other.block_on(emission.into_future());
    assert!(
        matches!(report.failures(), [DeliveryError::Aborted { .. }]),
        "{:?}",
        report.failures()
    );
}
