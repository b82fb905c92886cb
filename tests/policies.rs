//! Per-listener delivery policies: a concurrency limit that runs deliveries in emit order, a
//! timeout per attempt, retries with backoff, and the dead letter after the last attempt.
//!
//! Time-based behaviour runs on Tokio's paused clock: timers fire in virtual time, so the
//! delays asserted here are exact and no test depends on the speed of the machine.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus::{
    EventBus, Policy,
    error::{DeliveryError, EmitError},
    layer::{AttemptResult, DeadLetter, Layer},
};
use common::{Gauge, guarded};
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job(u32);

/// A `Mutex<Vec<T>>` that tests push to from listeners and read at the end.
struct Record<T>(Mutex<Vec<T>>);

impl<T: Clone> Record<T> {
    fn new() -> Arc<Self> {
        Arc::new(Record(Mutex::new(Vec::new())))
    }

    fn push(&self, item: T) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item);
    }

    fn items(&self) -> Vec<T> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[tokio::test(start_paused = true)]
async fn concurrency_one_runs_deliveries_one_at_a_time_in_emit_order() {
    let bus = EventBus::new();
    let gauge = Arc::new(Gauge::default());
    let (started, finished) = (Record::new(), Record::new());
    bus.on("jobs.run", {
        let (gauge, started, finished) = (
            Arc::clone(&gauge),
            Arc::clone(&started),
            Arc::clone(&finished),
        );
        move |job: Arc<Job>| {
            let (gauge, started, finished) = (
                Arc::clone(&gauge),
                Arc::clone(&started),
                Arc::clone(&finished),
            );
            async move {
                let _running = gauge.enter();
                started.push(job.0);
                for _ in 0..job.0 % 3 {
                    tokio::task::yield_now().await;
                }
                // Later events take less time: without the limit they would finish first.
                tokio::time::sleep(Duration::from_millis(u64::from(50 - job.0))).await;
                finished.push(job.0);
            }
        }
    })
    .policy(Policy::new().concurrency(1))
    .add();
    for n in 0..50 {
        drop(bus.emit("jobs.run", Job(n)));
    }
    guarded("drain", bus.drain()).await;
    let in_order: Vec<u32> = (0..50).collect();
    assert_eq!(started.items(), in_order, "started in emit order");
    assert_eq!(finished.items(), in_order, "finished in emit order");
    assert_eq!(gauge.max(), 1, "never two at once");
    assert_eq!(bus.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_one_holds_when_emits_race_from_several_threads() {
    const EMITTERS: u32 = 4;
    const PER_EMITTER: u32 = 50;
    let bus = EventBus::new();
    let gauge = Arc::new(Gauge::default());
    let handled = Record::new();
    bus.on("jobs.run", {
        let (gauge, handled) = (Arc::clone(&gauge), Arc::clone(&handled));
        move |job: Arc<Job>| {
            let (gauge, handled) = (Arc::clone(&gauge), Arc::clone(&handled));
            async move {
                let _running = gauge.enter();
                for _ in 0..1 + job.0 % 4 {
                    tokio::task::yield_now().await;
                }
                handled.push(job.0);
            }
        }
    })
    .policy(Policy::new().concurrency(1))
    .add();
    let emitters: Vec<_> = (0..EMITTERS)
        .map(|emitter| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for seq in 0..PER_EMITTER {
                    drop(bus.emit("jobs.run", Job(emitter * 1000 + seq)));
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

    assert_eq!(
        gauge.max(),
        1,
        "two deliveries of a concurrency = 1 listener overlapped"
    );
    let handled = handled.items();
    let mut every: Vec<u32> = handled.clone();
    every.sort_unstable();
    let expected: Vec<u32> = (0..EMITTERS)
        .flat_map(|emitter| (0..PER_EMITTER).map(move |seq| emitter * 1000 + seq))
        .collect();
    assert_eq!(every, expected, "every event handled exactly once");
    // The emits of one emitter are sequential, so their deliveries run in that order.
    for emitter in 0..EMITTERS {
        let own: Vec<u32> = handled
            .iter()
            .copied()
            .filter(|id| id / 1000 == emitter)
            .collect();
        let in_order: Vec<u32> = (0..PER_EMITTER).map(|seq| emitter * 1000 + seq).collect();
        assert_eq!(own, in_order, "emitter {emitter}'s events out of order");
    }
}

#[tokio::test(start_paused = true)]
async fn concurrency_three_runs_three_at_a_time() {
    let bus = EventBus::new();
    let gauge = Arc::new(Gauge::default());
    let handled = Arc::new(AtomicUsize::new(0));
    bus.on("jobs.run", {
        let (gauge, handled) = (Arc::clone(&gauge), Arc::clone(&handled));
        move |_: Arc<Job>| {
            let (gauge, handled) = (Arc::clone(&gauge), Arc::clone(&handled));
            async move {
                let _running = gauge.enter();
                tokio::time::sleep(Duration::from_millis(100)).await;
                handled.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .policy(Policy::new().concurrency(3))
    .add();
    let start = Instant::now();
    let emissions: Vec<_> = (0..20).map(|n| bus.emit("jobs.run", Job(n))).collect();
    for emission in emissions {
        assert_eq!(guarded("emission", emission).await.delivered(), 1);
    }
    assert_eq!(handled.load(Ordering::SeqCst), 20);
    assert_eq!(gauge.max(), 3);
    // Virtual time: 20 deliveries of 100 ms, three at a time, take seven rounds.
    assert_eq!(start.elapsed(), Duration::from_millis(700));
}

#[tokio::test]
async fn queued_deliveries_count_towards_max_in_flight_and_are_never_dropped() {
    let bus = EventBus::builder().max_in_flight(5).build();
    let gate = Arc::new(Semaphore::new(0));
    let handled = Record::new();
    bus.on("jobs.run", {
        let (gate, handled) = (Arc::clone(&gate), Arc::clone(&handled));
        move |job: Arc<Job>| {
            let (gate, handled) = (Arc::clone(&gate), Arc::clone(&handled));
            async move {
                // One permit, handed on by each delivery as it ends: the gate stays open.
                let _pass = gate.acquire().await.expect("the gate is never closed");
                handled.push(job.0);
            }
        }
    })
    .policy(Policy::new().concurrency(1))
    .add();
    let emissions: Vec<_> = (0..5)
        .map(|n| bus.try_emit("jobs.run", Job(n)).expect("room for five"))
        .collect();
    // One delivery waits at the gate, four wait for their turn: all five hold a place.
    assert_eq!(bus.in_flight(), 5);
    match bus.try_emit("jobs.run", Job(5)).map_err(EmitError::from) {
        Err(EmitError::Full {
            event,
            limit,
            listeners,
        }) => assert_eq!((event.as_str(), limit, listeners), ("jobs.run", 5, 1)),
        other => panic!("expected Full, got {other:?}"),
    }
    tokio::task::yield_now().await;
    assert!(handled.items().is_empty(), "the gate is closed");

    gate.add_permits(1);
    for emission in emissions {
        let report = guarded("emission", emission).await;
        assert_eq!((report.delivered(), report.failed()), (1, 0));
    }
    assert_eq!(handled.items(), [0, 1, 2, 3, 4]);
    guarded("drain", bus.drain()).await;
    assert_eq!(bus.in_flight(), 0);
    let again = bus.try_emit("jobs.run", Job(6)).expect("room again");
    assert_eq!(guarded("emission", again).await.delivered(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_past_its_timeout_is_cancelled_and_reported() {
    let bus = EventBus::new();
    let policy = Policy::new().timeout(Duration::from_millis(50));
    let slow_finished = Arc::new(AtomicBool::new(false));
    let slow = bus
        .on("reports.build", {
            let finished = Arc::clone(&slow_finished);
            move |_: Arc<Job>| {
                let finished = Arc::clone(&finished);
                async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    finished.store(true, Ordering::SeqCst);
                }
            }
        })
        .policy(policy)
        .add();
    let start = Instant::now();
    let report = guarded("slow emission", bus.emit("reports.build", Job(1))).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(50),
        "virtual time: cancelled at its timeout"
    );
    assert_eq!(report.delivered(), 0);
    match report.failures() {
        [
            DeliveryError::TimedOut {
                event,
                listener_id,
                timeout,
                ..
            },
        ] => {
            assert_eq!(&**event, "reports.build");
            assert_eq!(*listener_id, slow);
            assert_eq!(*timeout, Duration::from_millis(50));
        }
        other => panic!("expected one TimedOut, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        !slow_finished.load(Ordering::SeqCst),
        "a cancelled delivery never resumes"
    );

    bus.on("reports.quick", |_: Arc<Job>| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
    })
    .policy(policy)
    .add();
    let report = guarded("quick emission", bus.emit("reports.quick", Job(2))).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failed_delivery_is_retried_with_growing_backoff() {
    let backoff = Duration::from_millis(1000);
    let bus = EventBus::new();
    let calls = Record::new();
    bus.on("payments.charge", {
        let calls = Arc::clone(&calls);
        move |_: Arc<Job>| {
            let calls = Arc::clone(&calls);
            async move {
                calls.push(Instant::now());
                let attempt = calls.items().len();
                if attempt <= 2 {
                    return Err(format!("attempt {attempt}: gateway down"));
                }
                Ok(())
            }
        }
    })
    .policy(Policy::new().retry(3).backoff(backoff))
    .add();
    let report = guarded("emission", bus.emit("payments.charge", Job(1))).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));
    let calls = calls.items();
    assert_eq!(
        calls.len(),
        3,
        "two failures, then a success: no fourth call"
    );
    // Tokio's timers tick in whole milliseconds: a delay may end up to 1 ms after its deadline.
    let tick = Duration::from_millis(1);
    let first = calls[1] - calls[0];
    assert!(
        first >= backoff / 2 && first <= backoff + tick,
        "first retry after {first:?}, expected between {:?} and {backoff:?}",
        backoff / 2
    );
    let second = calls[2] - calls[1];
    assert!(
        second >= backoff && second <= backoff * 2 + tick,
        "second retry after {second:?}, expected between {backoff:?} and {:?}",
        backoff * 2
    );
}

/// What a dead-letter hook saw, copied out of the `DeadLetter`.
#[derive(Debug, Clone)]
struct Letter {
    event_name: String,
    event_id: bus::EventId,
    payload: Option<Job>,
    listener_name: String,
    listener_id: bus::listener::ListenerId,
    attempts: u32,
    error: String,
    panicked: bool,
}

fn dead_letters(builder: bus::EventBusBuilder) -> (EventBus, Arc<Record<Letter>>) {
    let letters = Record::new();
    let bus = builder
        .dead_letter({
            let letters = Arc::clone(&letters);
            move |letter: &DeadLetter| {
                let (error, panicked) = match letter.error() {
                    DeliveryError::Failed { source, .. } => (source.to_string(), false),
                    DeliveryError::Panicked { message, .. } => (message.clone(), true),
                    other => (other.to_string(), false),
                };
                letters.push(Letter {
                    event_name: letter.event().name().to_owned(),
                    event_id: letter.event().id().clone(),
                    payload: letter.event().downcast_ref::<Job>().copied(),
                    listener_name: letter.listener().name().to_owned(),
                    listener_id: letter.listener().id(),
                    attempts: letter.attempts(),
                    error,
                    panicked,
                });
            }
        })
        .build();
    (bus, letters)
}

/// A layer recording every attempt it is told about.
#[derive(Default)]
struct Attempts {
    before: Mutex<Vec<u32>>,
    after: Mutex<Vec<(u32, String)>>,
    dead_letters: AtomicUsize,
}

impl Attempts {
    fn started(&self) -> Vec<u32> {
        self.before
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn ended(&self) -> Vec<(u32, String)> {
        self.after
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Layer for Attempts {
    fn before(&self, delivery: &bus::layer::DeliveryInfo<'_>) {
        self.before
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(delivery.attempt());
    }

    fn after(
        &self,
        delivery: &bus::layer::DeliveryInfo<'_>,
        outcome: &bus::layer::DeliveryOutcome<'_>,
    ) {
        let result = match outcome.result() {
            AttemptResult::Delivered => "delivered".to_owned(),
            AttemptResult::Failed(error) => format!("failed: {error}"),
            AttemptResult::Panicked(message) => format!("panicked: {message}"),
            AttemptResult::TimedOut(timeout) => format!("timed out: {timeout:?}"),
            AttemptResult::Aborted => "aborted".to_owned(),
            _ => "other".to_owned(),
        };
        self.after
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((delivery.attempt(), result));
    }

    fn on_dead_letter(&self, _: &DeadLetter) {
        self.dead_letters.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_delivery_out_of_retries_goes_to_the_dead_letter() {
    let attempts = Arc::new(Attempts::default());
    let (bus, letters) = dead_letters(EventBus::builder().layer(Arc::clone(&attempts)));
    let calls = Arc::new(AtomicUsize::new(0));
    let id = bus
        .on("orders.placed", {
            let calls = Arc::clone(&calls);
            move |order: Arc<Job>| {
                let attempt = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Err::<(), _>(format!("attempt {attempt}: no stock for {}", order.0)) }
            }
        })
        .policy(Policy::new().retry(2).backoff(Duration::from_millis(10)))
        .add();
    let emission = bus.emit("orders.placed", Job(7));
    let event_id = emission
        .event_id()
        .expect("an emitted event has an id")
        .clone();
    let report = guarded("emission", emission).await;

    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "one attempt and two retries"
    );
    assert_eq!((report.delivered(), report.failed()), (0, 1));
    match report.failures() {
        [failure @ DeliveryError::Failed { source, .. }] => {
            assert_eq!(source.to_string(), "attempt 3: no stock for 7");
            assert!(
                failure.to_string().contains("attempt 3: no stock for 7"),
                "{failure}"
            );
            assert_eq!(failure.listener_id(), id);
        }
        other => panic!("expected one Failed, got {other:?}"),
    }

    let letters = letters.items();
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    let letter = &letters[0];
    let registered = &bus.listeners("orders.placed")[0];
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.listener_id, id);
    assert_eq!(letter.listener_name, registered.name());
    assert_eq!(letter.error, "attempt 3: no stock for 7", "the last error");
    assert!(!letter.panicked);
    assert_eq!(letter.event_name, "orders.placed");
    assert_eq!(letter.event_id, event_id);
    assert_eq!(letter.payload, Some(Job(7)));

    assert_eq!(attempts.started(), [1, 2, 3]);
    assert_eq!(
        attempts.ended(),
        [
            (1, "failed: attempt 1: no stock for 7".to_owned()),
            (2, "failed: attempt 2: no stock for 7".to_owned()),
            (3, "failed: attempt 3: no stock for 7".to_owned()),
        ]
    );
    assert_eq!(attempts.dead_letters.load(Ordering::SeqCst), 1);
}

/// Panics, as a listener with a bug does.
fn curse(order: &Job) {
    panic!("order {} is cursed", order.0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_listener_is_retried_then_dead_lettered() {
    let (bus, letters) = dead_letters(EventBus::builder());
    let calls = Arc::new(AtomicUsize::new(0));
    bus.on("orders.placed", {
        let calls = Arc::clone(&calls);
        move |order: Arc<Job>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                curse(&order);
            }
        }
    })
    .policy(Policy::new().retry(1).backoff(Duration::from_millis(10)))
    .add();
    let healthy = Arc::new(AtomicUsize::new(0));
    bus.add_listener("orders.placed", {
        let healthy = Arc::clone(&healthy);
        move |_: Arc<Job>| {
            healthy.fetch_add(1, Ordering::SeqCst);
            async {}
        }
    });

    let report = guarded("emission", bus.emit("orders.placed", Job(9))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one attempt and one retry");
    assert_eq!((report.delivered(), report.failed()), (1, 1));
    match report.failures() {
        [DeliveryError::Panicked { message, .. }] => assert_eq!(message, "order 9 is cursed"),
        other => panic!("expected one Panicked, got {other:?}"),
    }
    let letters = letters.items();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].panicked);
    assert_eq!(letters[0].error, "order 9 is cursed");
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(letters[0].payload, Some(Job(9)));

    // The emitter, the bus and the runtime carry on.
    let report = guarded("second emission", bus.emit("orders.placed", Job(10))).await;
    assert_eq!((report.delivered(), report.failed()), (1, 1));
    assert_eq!(healthy.load(Ordering::SeqCst), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    guarded("drain", bus.drain()).await;
    assert_eq!(bus.in_flight(), 0);
    assert!(!bus.is_closed());
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_a_delivery_that_has_a_timeout() {
    let attempts = Arc::new(Attempts::default());
    let bus = EventBus::builder().layer(Arc::clone(&attempts)).build();
    let finished = Arc::new(AtomicBool::new(false));
    bus.on("reports.build", {
        let finished = Arc::clone(&finished);
        move |_: Arc<Job>| {
            let finished = Arc::clone(&finished);
            async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                finished.store(true, Ordering::SeqCst);
            }
        }
    })
    .policy(Policy::new().timeout(Duration::from_secs(5)).retry(2))
    .add();
    let emission = bus.emit("reports.build", Job(1));
    let start = Instant::now();
    let shutdown = guarded("shutdown", bus.shutdown(Duration::from_millis(50))).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(50),
        "virtual time: aborted at the shutdown deadline, before the timeout"
    );
    assert_eq!((shutdown.in_flight(), shutdown.aborted()), (1, 1));
    let report = guarded("emission", emission).await;
    match report.failures() {
        [DeliveryError::Aborted { event, .. }] => assert_eq!(&**event, "reports.build"),
        other => panic!("expected one Aborted, got {other:?}"),
    }
    assert!(!finished.load(Ordering::SeqCst));
    assert_eq!(attempts.started(), [1], "no retry after an abort");
    assert_eq!(attempts.ended(), [(1, "aborted".to_owned())]);
    assert_eq!(bus.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn timed_out_attempts_are_retried_then_dead_lettered() {
    let attempts = Arc::new(Attempts::default());
    let (bus, letters) = dead_letters(EventBus::builder().layer(Arc::clone(&attempts)));
    bus.on("reports.build", |_: Arc<Job>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .policy(
        Policy::new()
            .timeout(Duration::from_millis(50))
            .retry(1)
            .backoff(Duration::from_millis(10)),
    )
    .add();
    let report = guarded("emission", bus.emit("reports.build", Job(3))).await;
    match report.failures() {
        [DeliveryError::TimedOut { timeout, .. }] => {
            assert_eq!(*timeout, Duration::from_millis(50));
        }
        other => panic!("expected one TimedOut, got {other:?}"),
    }
    assert_eq!(
        attempts.ended(),
        [
            (1, "timed out: 50ms".to_owned()),
            (2, "timed out: 50ms".to_owned()),
        ]
    );
    let letters = letters.items();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].attempts, 2);
    assert!(
        letters[0].error.contains("timed out after 50ms"),
        "{letters:?}"
    );
}

/// A listener's own error type, to find again in the report.
#[derive(Debug, PartialEq, Eq)]
struct NoStock(u32);

impl std::fmt::Display for NoStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no stock for order {}", self.0)
    }
}

impl std::error::Error for NoStock {}

async fn out_of_stock(order: Arc<Job>) -> Result<(), NoStock> {
    Err(NoStock(order.0))
}

/// The report of a listener with a policy carries the error the listener returned, as a plain
/// listener's does: callers can downcast it to the listener's error type, and so can the
/// dead-letter hook.
#[tokio::test(start_paused = true)]
async fn a_retried_listener_error_keeps_its_type() {
    let downcast = Arc::new(AtomicBool::new(false));
    let bus = EventBus::builder()
        .dead_letter({
            let downcast = Arc::clone(&downcast);
            move |letter: &DeadLetter| {
                if let DeliveryError::Failed { source, .. } = letter.error()
                    && source.downcast_ref::<NoStock>() == Some(&NoStock(4))
                {
                    downcast.store(true, Ordering::SeqCst);
                }
            }
        })
        .build();
    bus.add_listener("orders.plain", out_of_stock);
    bus.on("orders.retried", out_of_stock)
        .policy(Policy::new().retry(1).backoff(Duration::from_millis(10)))
        .add();
    for name in ["orders.plain", "orders.retried"] {
        let report = guarded("emission", bus.emit(name, Job(4))).await;
        match report.failures() {
            [DeliveryError::Failed { source, .. }] => assert_eq!(
                source.downcast_ref::<NoStock>(),
                Some(&NoStock(4)),
                "`{name}`: the report's source is a {source:?}, not the listener's error"
            ),
            other => panic!("`{name}`: expected one Failed, got {other:?}"),
        }
    }
    assert!(
        downcast.load(Ordering::SeqCst),
        "the dead letter's error downcasts to the listener's error type"
    );
}
