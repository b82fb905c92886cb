//! `max_in_flight`: a bus bounds the deliveries it holds. A full bus makes `try_emit` return
//! `Full`, `emit_async` wait for room, and `emit` shed the event, logged and counted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use bus::{
    DeliveryReport, EventBus,
    error::{DeliveryError, EmitError},
    layer::Layer,
};
use common::{Logs, guarded};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job(u32);

/// Holds listeners at an `.await` until opened: each listener takes the one permit and hands
/// it on as it returns.
#[derive(Clone)]
struct Gate(Arc<Semaphore>);

impl Gate {
    fn closed() -> Self {
        Gate(Arc::new(Semaphore::new(0)))
    }

    async fn pass(&self) {
        let _permit = self.0.acquire().await.expect("the gate is never closed");
    }

    fn open(&self) {
        self.0.add_permits(1);
    }
}

/// A listener that waits at `gate`, then counts the event in `calls`.
fn gated(
    gate: &Gate,
    calls: &Arc<Mutex<Vec<u32>>>,
) -> impl Fn(Arc<Job>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static
{
    let (gate, calls) = (gate.clone(), Arc::clone(calls));
    move |job: Arc<Job>| {
        let (gate, calls) = (gate.clone(), Arc::clone(&calls));
        Box::pin(async move {
            gate.pass().await;
            calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(job.0);
        })
    }
}

fn calls() -> Arc<Mutex<Vec<u32>>> {
    Arc::new(Mutex::new(Vec::new()))
}

fn seen(calls: &Arc<Mutex<Vec<u32>>>) -> Vec<u32> {
    calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Asserts that every listener of the report counts the event as shed by a full bus.
fn assert_shed(report: &DeliveryReport, event: &str, limit: usize, listeners: usize) {
    assert_eq!(report.delivered(), 0);
    assert_eq!(report.failed(), listeners, "{:?}", report.failures());
    for failure in report.failures() {
        match failure {
            DeliveryError::NotDelivered {
                reason:
                    EmitError::Full {
                        event: name,
                        limit: full_at,
                        listeners: needed,
                    },
                ..
            } => assert_eq!(
                (name.as_str(), *full_at, *needed),
                (event, limit, listeners)
            ),
            other => panic!("expected NotDelivered(Full), got {other:?}"),
        }
    }
}

#[tokio::test]
async fn try_emit_is_refused_while_the_bus_is_full() {
    let bus = EventBus::builder().max_in_flight(2).build();
    let (gate, calls) = (Gate::closed(), calls());
    bus.add_listener("jobs.run", gated(&gate, &calls));

    let first = bus.try_emit("jobs.run", Job(1)).expect("room for one");
    let second = bus.try_emit("jobs.run", Job(2)).expect("room for two");
    assert_eq!(bus.in_flight(), 2);
    let error = bus
        .try_emit("jobs.run", Job(3))
        .map_err(EmitError::from)
        .expect_err("the bus holds two suspended deliveries");
    assert_eq!(
        error,
        EmitError::Full {
            event: "jobs.run".to_owned(),
            limit: 2,
            listeners: 1,
        }
    );
    let message = error.to_string();
    for part in [
        "jobs.run",
        "full",
        "max_in_flight",
        "emit_async",
        "raise the limit",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }

    gate.open();
    assert_eq!(guarded("first", first).await.delivered(), 1);
    assert_eq!(guarded("second", second).await.delivered(), 1);
    assert_eq!(bus.in_flight(), 0);
    let third = bus.try_emit("jobs.run", Job(3)).expect("room again");
    assert_eq!(guarded("third", third).await.delivered(), 1);
    assert_eq!(
        seen(&calls),
        [1, 2, 3],
        "the refused event was never delivered"
    );
}

/// Counts sheds, with the listener count of each.
#[derive(Default)]
struct Sheds(Mutex<Vec<(String, usize)>>);

impl Layer for Sheds {
    fn on_shed(&self, emit: &bus::layer::EmitInfo<'_>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((emit.event().to_owned(), emit.listener_count()));
    }
}

#[tokio::test]
async fn emit_sheds_an_event_when_the_bus_is_full() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let sheds = Arc::new(Sheds::default());
    let bus = EventBus::builder()
        .max_in_flight(2)
        .layer(Arc::clone(&sheds))
        .build();
    let (gate, calls) = (Gate::closed(), calls());
    bus.add_listener("jobs.run", gated(&gate, &calls));
    bus.add_listener("jobs.run", gated(&gate, &calls));

    let held = bus.emit("jobs.run", Job(1));
    assert_eq!(bus.in_flight(), 2, "two listeners, two places");
    let shed = guarded("shed emission", bus.emit("jobs.run", Job(2))).await;
    assert_shed(&shed, "jobs.run", 2, 2);
    assert_eq!(
        *sheds.0.lock().unwrap_or_else(PoisonError::into_inner),
        [("jobs.run".to_owned(), 2)]
    );
    let warned = logs.lines_with(&[
        "WARN",
        "bus full (max_in_flight): event shed, no listener got it",
        "jobs.run",
    ]);
    assert_eq!(warned.len(), 1, "{}", logs.text());

    gate.open();
    let held = guarded("held emission", held).await;
    assert_eq!((held.delivered(), held.failed()), (2, 0));
    guarded("drain", bus.drain()).await;
    assert_eq!(seen(&calls), [1, 1], "the shed event reached no listener");
}

#[tokio::test]
async fn emit_async_waits_for_room() {
    let bus = EventBus::builder().max_in_flight(1).build();
    let (gate, calls) = (Gate::closed(), calls());
    bus.add_listener("jobs.run", gated(&gate, &calls));

    let held = bus.emit("jobs.run", Job(1));
    assert_eq!(bus.in_flight(), 1, "the bus is full");
    let mut waiting = std::pin::pin!(bus.emit_async("jobs.run", Job(2)));
    // Its first poll is where it dispatches when the bus has room; on a full bus it must wait.
    let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "emit_async returned on a full bus");
    assert_eq!(bus.in_flight(), 1, "emit_async took a place on a full bus");
    assert!(seen(&calls).is_empty());

    gate.open();
    let emission = guarded("emit_async", waiting).await;
    let report = guarded("the emission", emission).await;
    assert_eq!((report.delivered(), report.failed()), (1, 0));
    assert_eq!(guarded("held", held).await.delivered(), 1);
    assert_eq!(seen(&calls), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_under_a_limit() {
    const EMITTERS: usize = 4;
    const PER_EMITTER: usize = 500;
    const EVENTS: usize = EMITTERS * PER_EMITTER;
    const LIMIT: usize = 8;

    #[derive(Default)]
    struct Gauge {
        running: AtomicUsize,
        max: AtomicUsize,
    }

    let bus = EventBus::builder().max_in_flight(LIMIT).build();
    let gauge = Arc::new(Gauge::default());
    // How often each listener got each event.
    let counts: Vec<Arc<Vec<AtomicUsize>>> = (0..2)
        .map(|_| Arc::new((0..EVENTS).map(|_| AtomicUsize::new(0)).collect()))
        .collect();
    for count in &counts {
        let (gauge, count) = (Arc::clone(&gauge), Arc::clone(count));
        bus.add_listener("jobs.run", move |job: Arc<Job>| {
            let (gauge, count) = (Arc::clone(&gauge), Arc::clone(&count));
            async move {
                let now = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.max.fetch_max(now, Ordering::SeqCst);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                count[job.0 as usize].fetch_add(1, Ordering::SeqCst);
                gauge.running.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    let emitters: Vec<_> = (0..EMITTERS)
        .map(|emitter| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for seq in 0..PER_EMITTER {
                    let id = u32::try_from(emitter * PER_EMITTER + seq).expect("small");
                    drop(bus.emit_async("jobs.run", Job(id)).await);
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

    assert_eq!(bus.in_flight(), 0);
    let mut delivered = 0;
    for (listener, count) in counts.iter().enumerate() {
        for (event, times) in count.iter().enumerate() {
            let times = times.load(Ordering::SeqCst);
            assert_eq!(
                times, 1,
                "listener {listener} got event {event} {times} times"
            );
            delivered += times;
        }
    }
    assert_eq!(delivered, 2 * EVENTS);
    let max = gauge.max.load(Ordering::SeqCst);
    assert!(max <= LIMIT, "{max} deliveries ran at once, limit {LIMIT}");
}

#[tokio::test]
async fn deliveries_that_complete_inline_do_not_keep_their_place() {
    let bus = EventBus::builder().max_in_flight(1).build();
    let calls = Arc::new(AtomicUsize::new(0));
    bus.add_listener("jobs.run", {
        let calls = Arc::clone(&calls);
        move |_: Arc<Job>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {}
        }
    });
    for n in 0..1_000 {
        let emission = bus
            .try_emit("jobs.run", Job(n))
            .map_err(EmitError::from)
            .unwrap_or_else(|error| panic!("emit {n} refused: {error}"));
        // Not awaited: the delivery is done before `try_emit` returns.
        drop(emission);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1_000);
    assert_eq!(bus.in_flight(), 0);
}

#[tokio::test]
async fn an_emit_with_more_listeners_than_the_limit_never_fits() {
    let bus = EventBus::builder().max_in_flight(1).build();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let calls = Arc::clone(&calls);
        bus.add_listener("jobs.run", move |_: Arc<Job>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {}
        });
    }
    assert_eq!(
        bus.try_emit("jobs.run", Job(1))
            .map_err(EmitError::from)
            .expect_err("two places do not fit in one"),
        EmitError::Full {
            event: "jobs.run".to_owned(),
            limit: 1,
            listeners: 2,
        }
    );
    // Waiting would never end: `emit_async` sheds it instead, as `emit` does.
    let emission = guarded("emit_async", bus.emit_async("jobs.run", Job(2))).await;
    assert_shed(&guarded("report", emission).await, "jobs.run", 1, 2);
    let report = guarded("emit", bus.emit("jobs.run", Job(3))).await;
    assert_shed(&report, "jobs.run", 1, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(bus.in_flight(), 0);
}
