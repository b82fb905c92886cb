//! Deliveries that wait: in the default dispatch mode, a listener's deliveries that cannot
//! complete on the emitter's thread go on in the listener's lane (one task drains them all),
//! not in a task each. These tests pin what a user relies on whatever runs them: deliveries
//! of one listener run concurrently, each fails or panics on its own, reports are exact,
//! `drain`, `shutdown` and `max_in_flight` count them, a concurrency limit holds, and a runtime
//! that goes away aborts only its own deliveries.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus::error::{DeliveryError, EmitError};
use bus::{EventBus, Policy};
use common::{Gauge, guarded};
use tokio::sync::{Barrier, Notify, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job(u32);

/// A gate the listeners wait at until the test opens it.
struct Gate {
    open: Semaphore,
    arrived: AtomicUsize,
    arrival: Notify,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Gate {
            open: Semaphore::new(0),
            arrived: AtomicUsize::new(0),
            arrival: Notify::new(),
        })
    }

    async fn pass(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.arrival.notify_waiters();
        // Never closed: `acquire` only fails if it were.
        self.open
            .acquire()
            .await
            .expect("the gate is never closed")
            .forget();
    }

    fn open(&self, count: usize) {
        self.open.add_permits(count);
    }

    async fn arrivals(&self, count: usize) {
        loop {
            let notified = self.arrival.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.arrived.load(Ordering::SeqCst) >= count {
                return;
            }
            notified.await;
        }
    }
}

/// A listener whose every delivery waits at `gate`. It captures the gate, so each add of it is
/// a listener of its own.
fn waiting_at(gate: &Arc<Gate>) -> impl bus::listener::Listener<Job> {
    let gate = Arc::clone(gate);
    move |_: Arc<Job>| {
        let gate = Arc::clone(&gate);
        async move { gate.pass().await }
    }
}

/// A multi-thread runtime with one worker, beside the test's own.
fn one_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_of_one_listener_that_wait_run_concurrently() {
    const DELIVERIES: usize = 64;
    let bus = EventBus::new();
    // Every delivery waits until all of them have arrived: if one listener's deliveries ran
    // one at a time, the first would wait forever.
    let barrier = Arc::new(Barrier::new(DELIVERIES));
    let handled = Arc::new(AtomicUsize::new(0));
    bus.add_listener("job", {
        let (barrier, handled) = (Arc::clone(&barrier), Arc::clone(&handled));
        move |_: Arc<Job>| {
            let (barrier, handled) = (Arc::clone(&barrier), Arc::clone(&handled));
            async move {
                barrier.wait().await;
                handled.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let emissions: Vec<_> = (0..DELIVERIES as u32)
        .map(|n| bus.emit("job", Job(n)))
        .collect();
    for emission in emissions {
        let report = guarded("a delivery at the barrier", emission).await;
        assert_eq!((report.delivered(), report.failed()), (1, 0), "{report:?}");
    }
    assert_eq!(handled.load(Ordering::SeqCst), DELIVERIES);
    assert_eq!(bus.in_flight(), 0);
}

#[tokio::test]
async fn errors_and_panics_stay_with_their_delivery() {
    let bus = EventBus::new();
    bus.add_listener("job", |job: Arc<Job>| async move {
        tokio::task::yield_now().await;
        match job.0 % 3 {
            0 => Ok(()),
            1 => Err(format!("job {} failed", job.0)),
            _ => panic!("job {} panicked", job.0),
        }
    });
    // A listener whose call itself panics for some events, once it is known to wait.
    bus.add_listener("job", |job: Arc<Job>| {
        assert!(job.0 != 4, "the call for job 4 panicked");
        async move {
            tokio::task::yield_now().await;
        }
    });
    let emissions: Vec<_> = (0..9).map(|n| bus.emit("job", Job(n))).collect();
    let mut failures = Vec::new();
    let mut delivered = 0;
    for emission in emissions {
        let report = guarded("an emission", emission).await;
        delivered += report.delivered();
        failures.extend(report.failures().iter().map(ToString::to_string));
    }
    // First listener: 3 ok, 3 errors, 3 panics. Second: 8 ok, 1 panic in its call.
    assert_eq!(delivered, 3 + 8, "{failures:#?}");
    assert_eq!(failures.len(), 3 + 3 + 1, "{failures:#?}");
    assert!(failures.iter().any(|f| f.contains("job 4 failed")));
    assert!(failures.iter().any(|f| f.contains("job 5 panicked")));
    assert!(
        failures
            .iter()
            .any(|f| f.contains("the call for job 4 panicked"))
    );
    assert_eq!(bus.in_flight(), 0);
}

#[tokio::test]
async fn drain_waits_for_every_waiting_delivery_and_in_flight_counts_them() {
    let bus = EventBus::new();
    let gate = Gate::new();
    let handled = Arc::new(AtomicUsize::new(0));
    bus.add_listener("job", {
        let (gate, handled) = (Arc::clone(&gate), Arc::clone(&handled));
        move |_: Arc<Job>| {
            let (gate, handled) = (Arc::clone(&gate), Arc::clone(&handled));
            async move {
                gate.pass().await;
                handled.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    for n in 0..100 {
        drop(bus.emit("job", Job(n)));
    }
    guarded("the deliveries reaching the gate", gate.arrivals(100)).await;
    assert_eq!(bus.in_flight(), 100);
    let drain = tokio::spawn({
        let bus = bus.clone();
        async move { bus.drain().await }
    });
    tokio::task::yield_now().await;
    assert!(
        !drain.is_finished(),
        "drain returned with deliveries waiting"
    );
    gate.open(100);
    guarded("drain", drain).await.expect("drain panicked");
    assert_eq!(handled.load(Ordering::SeqCst), 100);
    assert_eq!(bus.in_flight(), 0);
}

#[tokio::test]
async fn shutdown_aborts_every_waiting_and_queued_delivery_and_counts_them() {
    let bus = EventBus::new();
    let gate = Gate::new();
    // One listener without a policy (its deliveries all started), one with `concurrency = 1`
    // (one started, the rest queued).
    for policy in [Policy::new(), Policy::new().concurrency(1)] {
        bus.on("job", waiting_at(&gate)).policy(policy).add();
    }
    let emissions: Vec<_> = (0..50).map(|n| bus.emit("job", Job(n))).collect();
    guarded("the deliveries reaching the gate", gate.arrivals(51)).await;
    assert_eq!(bus.in_flight(), 100);
    let report = guarded("shutdown", bus.shutdown(Duration::from_millis(10))).await;
    assert_eq!(report.in_flight(), 100);
    assert_eq!(report.aborted(), 100, "{report:?}");
    assert_eq!(bus.in_flight(), 0);
    for emission in emissions {
        let report = guarded("an aborted emission", emission).await;
        assert_eq!(report.delivered(), 0);
        assert_eq!(report.failed(), 2);
        assert!(
            report
                .failures()
                .iter()
                .all(|failure| matches!(failure, DeliveryError::Aborted { .. })),
            "{report:?}"
        );
    }
}

#[tokio::test]
async fn a_concurrency_limit_starts_queued_deliveries_in_emit_order() {
    let bus = EventBus::new();
    let gate = Gate::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let gauge = Arc::new(Gauge::default());
    bus.on("job", {
        let (gate, order, gauge) = (Arc::clone(&gate), Arc::clone(&order), Arc::clone(&gauge));
        move |job: Arc<Job>| {
            let (gate, order, gauge) = (Arc::clone(&gate), Arc::clone(&order), Arc::clone(&gauge));
            async move {
                let _running = gauge.enter();
                order
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(job.0);
                gate.pass().await;
            }
        }
    })
    .policy(Policy::new().concurrency(2))
    .add();
    for n in 0..20 {
        drop(bus.emit("job", Job(n)));
    }
    guarded("two deliveries at the gate", gate.arrivals(2)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        gate.arrived.load(Ordering::SeqCst),
        2,
        "the limit let more start"
    );
    gate.open(20);
    guarded("drain", bus.drain()).await;
    assert_eq!(gauge.max(), 2);
    let order = order.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(order, (0..20).collect::<Vec<_>>());
}

#[tokio::test]
async fn max_in_flight_counts_waiting_deliveries() {
    let bus = EventBus::builder().max_in_flight(10).build();
    let gate = Gate::new();
    bus.add_listener("job", waiting_at(&gate));
    for n in 0..10 {
        drop(bus.try_emit("job", Job(n)).expect("room for ten"));
    }
    guarded("ten deliveries at the gate", gate.arrivals(10)).await;
    let refused = bus.try_emit("job", Job(10)).map(drop);
    assert!(
        matches!(&refused, Err(error) if matches!(error.error(), EmitError::Full { .. })),
        "{refused:?}"
    );
    gate.open(10);
    guarded("drain", bus.drain()).await;
    drop(bus.try_emit("job", Job(11)).expect("room again"));
    gate.open(1);
    guarded("drain", bus.drain()).await;
}

#[test]
fn a_runtime_that_goes_away_aborts_its_deliveries_and_no_other() {
    let bus = EventBus::new();
    let gate = Gate::new();
    bus.add_listener("job", waiting_at(&gate));
    let (first, second) = (one_worker_runtime(), one_worker_runtime());
    let early = first.block_on(async {
        let emissions: Vec<_> = (0..5).map(|n| bus.emit("job", Job(n))).collect();
        guarded(
            "the first runtime's deliveries at the gate",
            gate.arrivals(5),
        )
        .await;
        emissions
    });
    let later = second.block_on(async {
        let emissions: Vec<_> = (5..10).map(|n| bus.emit("job", Job(n))).collect();
        guarded(
            "the second runtime's deliveries at the gate",
            gate.arrivals(10),
        )
        .await;
        emissions
    });
    // The first runtime goes away with its five deliveries waiting.
    drop(first);
    second.block_on(async {
        for emission in early {
            let report = guarded("an emission of the dropped runtime", emission).await;
            assert!(
                matches!(report.failures(), [DeliveryError::Aborted { .. }]),
                "{report:?}"
            );
        }
        gate.open(5);
        for emission in later {
            let report = guarded("an emission of the live runtime", emission).await;
            assert_eq!((report.delivered(), report.failed()), (1, 0), "{report:?}");
        }
        // The listener's lane on the first runtime is gone; a new emit here still runs.
        gate.open(1);
        let report = guarded("an emit after", bus.emit("job", Job(11))).await;
        assert_eq!(report.delivered(), 1);
        assert_eq!(bus.in_flight(), 0);
    });
}

/// Counts the layers' hooks: every `before` has its `after`.
#[derive(Default)]
struct Counts {
    before: AtomicUsize,
    after: AtomicUsize,
    aborted: AtomicUsize,
}

struct Hooks(Arc<Counts>);

impl bus::layer::Layer for Hooks {
    fn before(&self, _: &bus::layer::DeliveryInfo<'_>) {
        self.0.before.fetch_add(1, Ordering::SeqCst);
    }

    fn after(&self, _: &bus::layer::DeliveryInfo<'_>, outcome: &bus::layer::DeliveryOutcome<'_>) {
        self.0.after.fetch_add(1, Ordering::SeqCst);
        if matches!(outcome.result(), bus::layer::AttemptResult::Aborted) {
            self.0.aborted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn deliveries_aborted_before_they_started_still_pair_their_hooks() {
    // More than a lane starts in one turn, so that some wait for the next when shutdown
    // aborts them all.
    const DELIVERIES: usize = 3_000;
    let hooks = Arc::new(Counts::default());
    let bus = EventBus::builder().layer(Hooks(Arc::clone(&hooks))).build();
    let gate = Gate::new();
    bus.add_listener("job", waiting_at(&gate));
    // The first delivery finds the listener waiting; the rest go to its lane whole.
    drop(bus.emit("job", Job(0)));
    guarded("the first delivery at the gate", gate.arrivals(1)).await;
    for n in 1..DELIVERIES as u32 {
        drop(bus.emit("job", Job(n)));
    }
    let report = guarded("shutdown", bus.shutdown(Duration::ZERO)).await;
    assert_eq!(report.aborted(), DELIVERIES);
    assert_eq!(hooks.before.load(Ordering::SeqCst), DELIVERIES);
    assert_eq!(hooks.after.load(Ordering::SeqCst), DELIVERIES);
    assert_eq!(hooks.aborted.load(Ordering::SeqCst), DELIVERIES);
}

#[test]
fn a_concurrency_limit_holds_across_the_lanes_of_two_runtimes() {
    let bus = EventBus::new();
    let gate = Gate::new();
    let gauge = Arc::new(Gauge::default());
    bus.on("job", {
        let (gate, gauge) = (Arc::clone(&gate), Arc::clone(&gauge));
        move |_: Arc<Job>| {
            let (gate, gauge) = (Arc::clone(&gate), Arc::clone(&gauge));
            async move {
                let _running = gauge.enter();
                gate.pass().await;
            }
        }
    })
    .policy(Policy::new().concurrency(1))
    .add();
    let (first, second) = (one_worker_runtime(), one_worker_runtime());
    // Each runtime's emits go to a lane of their own; the limit is the listener's.
    let emits = |runtime: &tokio::runtime::Runtime, from: u32| {
        let bus = bus.clone();
        runtime.spawn(async move {
            let emissions: Vec<_> = (from..from + 5).map(|n| bus.emit("job", Job(n))).collect();
            let mut delivered = 0;
            for emission in emissions {
                delivered += emission.await.delivered();
            }
            delivered
        })
    };
    let (a, b) = (emits(&first, 0), emits(&second, 100));
    first.block_on(async {
        guarded("the first delivery at the gate", gate.arrivals(1)).await;
        gate.open(10);
        let a = guarded("the first runtime's emissions", a)
            .await
            .expect("no panic");
        let b = guarded("the second runtime's emissions", b)
            .await
            .expect("no panic");
        assert_eq!(a + b, 10);
        guarded("drain", bus.drain()).await;
    });
    assert_eq!(gauge.max(), 1, "two deliveries ran at once");
    assert_eq!(gate.arrived.load(Ordering::SeqCst), 10);
}
