//! `MetricsLayer`: what each hook of the bus records through the `metrics` facade.
//!
//! Each test records into a `DebuggingRecorder` of its own, set as the local recorder of its
//! thread, and runs its bus on a current-thread runtime on that same thread: every listener, and
//! so every hook, runs there, and tests running side by side cannot see each other's metrics.
//! One test uses the global recorder instead, to show the layer on a multi-thread runtime.
#![cfg(feature = "metrics")]

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bus::{Dispatch, EventBus, Policy, error::Lagged, layer::MetricsLayer, listener::ListenerId};
use common::guarded;
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;

const EMITTED: &str = "bus_events_emitted_total";
const DELIVERIES: &str = "bus_deliveries_total";
const RETRIED: &str = "bus_deliveries_retried_total";
const DEAD_LETTERS: &str = "bus_dead_letters_total";
const SHED: &str = "bus_events_shed_total";
const MISMATCHES: &str = "bus_listener_mismatches_total";
const LAGGED: &str = "bus_stream_lagged_total";
const IN_FLIGHT: &str = "bus_deliveries_in_flight";
const DURATION: &str = "bus_delivery_duration_seconds";

/// Everything a recorder got so far. A `Snapshotter` hands each value over once (a snapshot
/// resets counters and gauges to zero and empties histograms), so every snapshot is added to
/// running totals: the sum of a gauge's snapshots is its value, since the layer only moves it
/// up and down.
struct Recorded {
    snapshotter: Snapshotter,
    totals: RefCell<HashMap<CompositeKey, Total>>,
}

#[derive(Debug, Default)]
struct Total {
    counter: u64,
    gauge: f64,
    samples: Vec<f64>,
    unit: Option<Unit>,
    described: bool,
}

impl Recorded {
    fn new(snapshotter: Snapshotter) -> Self {
        Recorded {
            snapshotter,
            totals: RefCell::default(),
        }
    }

    /// Runs `check` on the total of metric `name` with exactly these labels, if it was
    /// registered.
    fn with<R>(
        &self,
        kind: MetricKind,
        name: &str,
        labels: &[(&str, &str)],
        check: impl FnOnce(Option<&Total>) -> R,
    ) -> R {
        let mut totals = self.totals.borrow_mut();
        for (key, unit, description, value) in self.snapshotter.snapshot().into_vec() {
            let total = totals.entry(key).or_default();
            total.unit = total.unit.or(unit);
            total.described |= description.is_some();
            match value {
                DebugValue::Counter(n) => total.counter += n,
                DebugValue::Gauge(value) => total.gauge += value.into_inner(),
                DebugValue::Histogram(values) => {
                    total
                        .samples
                        .extend(values.into_iter().map(|v| v.into_inner()));
                }
            }
        }
        let mut wanted: Vec<(&str, &str)> = labels.to_vec();
        wanted.sort_unstable();
        let found = totals.iter().find(|(key, _)| {
            let mut have: Vec<(&str, &str)> = key
                .key()
                .labels()
                .map(|label| (label.key(), label.value()))
                .collect();
            have.sort_unstable();
            key.kind() == kind && key.key().name() == name && have == wanted
        });
        check(found.map(|(_, total)| total))
    }

    /// A counter's value; 0 when it was never registered.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.with(MetricKind::Counter, name, labels, |total| {
            total.map_or(0, |total| total.counter)
        })
    }

    /// A gauge's value; `None` when it was never registered.
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.with(MetricKind::Gauge, name, labels, |total| {
            total.map(|total| total.gauge)
        })
    }

    /// A histogram's samples, its unit and whether it was described.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> (Vec<f64>, Option<Unit>, bool) {
        self.with(MetricKind::Histogram, name, labels, |total| {
            total.map_or((Vec::new(), None, false), |total| {
                (total.samples.clone(), total.unit, total.described)
            })
        })
    }
}

impl std::fmt::Debug for Recorded {
    /// Every metric recorded, for the message of a failed assertion.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let totals = self.totals.borrow();
        let mut lines: Vec<String> = totals
            .iter()
            .map(|(key, total)| format!("{:?} {}: {total:?}", key.kind(), key.key()))
            .collect();
        lines.sort();
        f.debug_list().entries(lines).finish()
    }
}

/// Runs `test` on a current-thread runtime, with a fresh `DebuggingRecorder` as this thread's
/// recorder.
fn run<F, Fut>(test: F)
where
    F: FnOnce(Recorded) -> Fut,
    Fut: Future<Output = ()>,
{
    let recorder = DebuggingRecorder::new();
    let recorded = Recorded::new(recorder.snapshotter());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    metrics::with_local_recorder(&recorder, || runtime.block_on(test(recorded)));
}

fn metered() -> EventBus {
    EventBus::builder().layer(MetricsLayer::new()).build()
}

/// The name the bus gave listener `id` of `event`: the `listener` label.
fn name_of(bus: &EventBus, event: &str, id: ListenerId) -> String {
    bus.listeners(event)
        .into_iter()
        .find(|listener| listener.id() == id)
        .map(|listener| listener.name().to_owned())
        .expect("the listener is registered")
}

async fn succeeds(_: Arc<u32>) {}

async fn fails(_: Arc<u32>) -> Result<(), &'static str> {
    Err("disk full")
}

async fn panics(_: Arc<u32>) {
    panic!("listener bug");
}

/// The future of a [`gated`] listener.
type Gated = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A listener that says it started, then waits for a permit of `gate`.
fn gated(
    gate: &Arc<Semaphore>,
) -> (
    impl Fn(Arc<u32>) -> Gated + Send + Sync + 'static,
    mpsc::UnboundedReceiver<()>,
) {
    let (started, receiver) = mpsc::unbounded_channel();
    let gate = Arc::clone(gate);
    let listener = move |_: Arc<u32>| {
        let (gate, started) = (Arc::clone(&gate), started.clone());
        Box::pin(async move {
            let _ = started.send(());
            gate.acquire().await.expect("the gate stays open").forget();
        }) as Gated
    };
    (listener, receiver)
}

#[test]
fn emits_and_outcomes_are_counted_per_event_and_listener() {
    run(|recorded| async move {
        let bus = metered();
        let ok = name_of(&bus, "jobs.done", bus.add_listener("jobs.done", succeeds));
        let bad = name_of(&bus, "jobs.done", bus.add_listener("jobs.done", fails));
        assert_ne!(ok, bad);

        for job in 0..2_u32 {
            let report = guarded("the emit", bus.emit("jobs.done", job)).await;
            assert_eq!((report.delivered(), report.failed()), (1, 1));
        }
        guarded("drain", bus.drain()).await;

        let outcome = |listener: &str, outcome: &str| {
            let labels = [
                ("event", "jobs.done"),
                ("listener", listener),
                ("outcome", outcome),
            ];
            recorded.counter(DELIVERIES, &labels)
        };
        assert_eq!(
            recorded.counter(EMITTED, &[("event", "jobs.done")]),
            2,
            "{recorded:?}"
        );
        assert_eq!(outcome(&ok, "delivered"), 2, "{recorded:?}");
        assert_eq!(outcome(&ok, "failed"), 0, "{recorded:?}");
        assert_eq!(outcome(&bad, "failed"), 2, "{recorded:?}");
        assert_eq!(outcome(&bad, "delivered"), 0, "{recorded:?}");
        assert_eq!(
            recorded.counter(RETRIED, &[("event", "jobs.done"), ("listener", &bad)]),
            0
        );

        let (samples, unit, described) =
            recorded.histogram(DURATION, &[("event", "jobs.done"), ("listener", &ok)]);
        assert_eq!(samples.len(), 2, "one sample per attempt: {recorded:?}");
        assert!(
            samples.iter().all(|s| s.is_finite() && *s >= 0.0),
            "{samples:?}"
        );
        assert_eq!(unit, Some(Unit::Seconds));
        assert!(described, "the layer describes its metrics to the recorder");
        let (samples, ..) =
            recorded.histogram(DURATION, &[("event", "jobs.done"), ("listener", &bad)]);
        assert_eq!(
            samples.len(),
            2,
            "failed attempts are timed too: {recorded:?}"
        );
    });
}

#[test]
fn a_panicking_listener_counts_as_panicked() {
    run(|recorded| async move {
        let bus = metered();
        let name = name_of(&bus, "jobs.run", bus.add_listener("jobs.run", panics));
        let report = guarded("the emit", bus.emit("jobs.run", 1_u32)).await;
        assert_eq!(report.failed(), 1);
        guarded("drain", bus.drain()).await;

        let labels = |outcome| {
            [
                ("event", "jobs.run"),
                ("listener", &*name),
                ("outcome", outcome),
            ]
        };
        assert_eq!(
            recorded.counter(DELIVERIES, &labels("panicked")),
            1,
            "{recorded:?}"
        );
        assert_eq!(
            recorded.counter(DELIVERIES, &labels("failed")),
            0,
            "{recorded:?}"
        );
        let in_flight = recorded.gauge(IN_FLIGHT, &[("listener", &name)]);
        assert_eq!(in_flight, Some(0.0), "{recorded:?}");
    });
}

#[test]
fn the_in_flight_gauge_counts_running_attempts_and_returns_to_zero() {
    run(|recorded| async move {
        let bus = metered();
        let gate = Arc::new(Semaphore::new(0));
        let (listener, mut started) = gated(&gate);
        let name = name_of(&bus, "jobs.slow", bus.add_listener("jobs.slow", listener));

        bus.emit("jobs.slow", 1_u32);
        bus.emit("jobs.slow", 2_u32);
        for _ in 0..2 {
            guarded("a delivery to start", started.recv()).await;
        }
        let labels = [("listener", &*name)];
        assert_eq!(
            recorded.gauge(IN_FLIGHT, &labels),
            Some(2.0),
            "{recorded:?}"
        );

        gate.add_permits(1);
        guarded("one delivery to end", async {
            while recorded.gauge(IN_FLIGHT, &labels) != Some(1.0) {
                tokio::task::yield_now().await;
            }
        })
        .await;

        gate.add_permits(1);
        guarded("drain", bus.drain()).await;
        assert_eq!(
            recorded.gauge(IN_FLIGHT, &labels),
            Some(0.0),
            "{recorded:?}"
        );
        let delivered = [
            ("event", "jobs.slow"),
            ("listener", &*name),
            ("outcome", "delivered"),
        ];
        assert_eq!(recorded.counter(DELIVERIES, &delivered), 2, "{recorded:?}");
    });
}

#[test]
fn retries_and_dead_letters_are_counted() {
    run(|recorded| async move {
        let (letters, mut dead) = mpsc::unbounded_channel();
        let bus = EventBus::builder()
            .layer(MetricsLayer::new())
            .dead_letter(move |letter| {
                let _ = letters.send((letter.listener().name().to_owned(), letter.attempts()));
            })
            .build();
        let policy = Policy::new().retry(2).backoff(Duration::from_millis(1));
        let id = bus.on("billing.charge", fails).policy(policy).add();
        let name = name_of(&bus, "billing.charge", id);

        bus.emit("billing.charge", 7_u32);
        guarded("drain", bus.drain()).await;
        let letter = guarded("the dead letter", dead.recv()).await;
        assert_eq!(letter, Some((name.clone(), 3)));

        let labels = [("event", "billing.charge"), ("listener", &*name)];
        assert_eq!(recorded.counter(RETRIED, &labels), 2, "{recorded:?}");
        assert_eq!(recorded.counter(DEAD_LETTERS, &labels), 1, "{recorded:?}");
        let failed = [labels[0], labels[1], ("outcome", "failed")];
        assert_eq!(
            recorded.counter(DELIVERIES, &failed),
            3,
            "one per attempt: {recorded:?}"
        );
        assert_eq!(
            recorded.histogram(DURATION, &labels).0.len(),
            3,
            "{recorded:?}"
        );
        assert_eq!(recorded.gauge(IN_FLIGHT, &[("listener", &name)]), Some(0.0));
    });
}

#[test]
fn a_timed_out_attempt_counts_as_timed_out() {
    run(|recorded| async move {
        let bus = metered();
        let policy = Policy::new().timeout(Duration::from_millis(5));
        let never = |_: Arc<u32>| std::future::pending::<()>();
        let name = name_of(
            &bus,
            "jobs.stuck",
            bus.on("jobs.stuck", never).policy(policy).add(),
        );

        bus.emit("jobs.stuck", 1_u32);
        guarded("drain", bus.drain()).await;

        let labels = [
            ("event", "jobs.stuck"),
            ("listener", &*name),
            ("outcome", "timed_out"),
        ];
        assert_eq!(recorded.counter(DELIVERIES, &labels), 1, "{recorded:?}");
        assert_eq!(recorded.gauge(IN_FLIGHT, &[("listener", &name)]), Some(0.0));
    });
}

#[test]
fn deliveries_aborted_by_shutdown_count_as_aborted() {
    run(|recorded| async move {
        let bus = metered();
        let gate = Arc::new(Semaphore::new(0));
        let (listener, mut started) = gated(&gate);
        let name = name_of(&bus, "jobs.long", bus.add_listener("jobs.long", listener));

        bus.emit("jobs.long", 1_u32);
        guarded("the delivery to start", started.recv()).await;
        let report = guarded("shutdown", bus.shutdown(Duration::from_millis(1))).await;
        assert_eq!(report.aborted(), 1);
        // An aborted task is dropped by the runtime, not at once by `shutdown`.
        guarded("the abort to be recorded", async {
            let labels = [
                ("event", "jobs.long"),
                ("listener", &*name),
                ("outcome", "aborted"),
            ];
            while recorded.counter(DELIVERIES, &labels) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!(recorded.gauge(IN_FLIGHT, &[("listener", &name)]), Some(0.0));
    });
}

#[test]
fn an_emit_past_max_in_flight_is_counted_as_shed() {
    run(|recorded| async move {
        let bus = EventBus::builder()
            .layer(MetricsLayer::new())
            .max_in_flight(1)
            .build();
        let gate = Arc::new(Semaphore::new(0));
        let (listener, mut started) = gated(&gate);
        let name = name_of(&bus, "jobs.busy", bus.add_listener("jobs.busy", listener));

        bus.emit("jobs.busy", 1_u32);
        guarded("the first delivery to start", started.recv()).await;
        let report = guarded("the shed emit", bus.emit("jobs.busy", 2_u32)).await;
        assert_eq!(
            report.delivered(),
            0,
            "the bus is full: the second event is shed"
        );
        let busy = [("event", "jobs.busy")];
        assert_eq!(recorded.counter(SHED, &busy), 1, "{recorded:?}");
        let emitted = recorded.counter(EMITTED, &busy);
        assert_eq!(emitted, 1, "a shed event is not emitted: {recorded:?}");

        gate.add_permits(1);
        guarded("drain", bus.drain()).await;
        let delivered = [
            ("event", "jobs.busy"),
            ("listener", &*name),
            ("outcome", "delivered"),
        ];
        assert_eq!(recorded.counter(DELIVERIES, &delivered), 1, "{recorded:?}");
        assert_eq!(recorded.counter(SHED, &busy), 1, "{recorded:?}");
    });
}

#[test]
fn a_pattern_listener_of_another_type_counts_as_a_mismatch() {
    run(|recorded| async move {
        let bus = metered();
        let id = bus.add_listener("orders.>", succeeds);
        let name = name_of(&bus, "orders.>", id);

        guarded("the emit", bus.emit("orders.x", String::from("not a u32"))).await;
        guarded("drain", bus.drain()).await;

        let labels = [("event", "orders.x"), ("listener", &*name)];
        assert_eq!(recorded.counter(MISMATCHES, &labels), 1, "{recorded:?}");
        let delivered = [labels[0], labels[1], ("outcome", "delivered")];
        assert_eq!(recorded.counter(DELIVERIES, &delivered), 0, "{recorded:?}");
    });
}

#[test]
fn a_lagging_stream_counts_its_missed_events_by_pattern() {
    run(|recorded| async move {
        let bus = metered();
        let mut stream = bus.stream::<u32>("p.>", 1).expect("a valid stream");
        for n in 1..=3_u32 {
            guarded("the emit", bus.emit("p.a", n)).await;
        }

        let first = guarded("the first item", stream.next()).await;
        assert_eq!(first.map(|item| item.map(|n| *n)), Some(Err(Lagged(2))));
        let next = guarded("the next item", stream.next()).await;
        assert_eq!(next.map(|item| item.map(|n| *n)), Some(Ok(3)));

        assert_eq!(
            recorded.counter(LAGGED, &[("pattern", "p.>")]),
            2,
            "{recorded:?}"
        );

        // Lagging again adds to the same series.
        for n in 4..=6_u32 {
            guarded("the emit", bus.emit("p.b", n)).await;
        }
        let again = guarded("the item after", stream.next()).await;
        assert_eq!(again.map(|item| item.map(|n| *n)), Some(Err(Lagged(2))));
        assert_eq!(
            recorded.counter(LAGGED, &[("pattern", "p.>")]),
            4,
            "{recorded:?}"
        );
    });
}

#[test]
fn without_the_event_label_metrics_are_per_listener() {
    run(|recorded| async move {
        let bus = EventBus::builder()
            .layer(MetricsLayer::new().without_event_label())
            .build();
        let name = name_of(
            &bus,
            "users.created",
            bus.add_listener("users.created", succeeds),
        );
        bus.add_listener("users.deleted", succeeds);

        guarded("the emit", bus.emit("users.created", 1_u32)).await;
        guarded("the emit", bus.emit("users.deleted", 2_u32)).await;
        guarded("drain", bus.drain()).await;

        assert_eq!(recorded.counter(EMITTED, &[]), 2, "{recorded:?}");
        let delivered = [("listener", &*name), ("outcome", "delivered")];
        assert_eq!(recorded.counter(DELIVERIES, &delivered), 2, "{recorded:?}");
        let with_event = [("event", "users.created"), delivered[0], delivered[1]];
        assert_eq!(recorded.counter(DELIVERIES, &with_event), 0, "{recorded:?}");
    });
}

/// The only test on the global recorder: the other tests set a local one on their own thread,
/// which the worker threads of this runtime never see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_on_worker_threads_reach_the_global_recorder() {
    let recorder = DebuggingRecorder::new();
    let recorded = Recorded::new(recorder.snapshotter());
    recorder
        .install()
        .expect("no other test installs a global recorder");

    let bus = EventBus::builder()
        .dispatch(Dispatch::Spawn)
        .layer(MetricsLayer::new())
        .build();
    let name = name_of(
        &bus,
        "global.tick",
        bus.add_listener("global.tick", succeeds),
    );
    let emitters: Vec<_> = (0..4_u32)
        .map(|task| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for n in 0..10 {
                    bus.emit("global.tick", task * 10 + n);
                }
            })
        })
        .collect();
    for emitter in emitters {
        guarded("an emitter", emitter)
            .await
            .expect("the emitter ran");
    }
    guarded("drain", bus.drain()).await;

    assert_eq!(
        recorded.counter(EMITTED, &[("event", "global.tick")]),
        40,
        "{recorded:?}"
    );
    let delivered = [
        ("event", "global.tick"),
        ("listener", &*name),
        ("outcome", "delivered"),
    ];
    assert_eq!(recorded.counter(DELIVERIES, &delivered), 40, "{recorded:?}");
    assert_eq!(recorded.gauge(IN_FLIGHT, &[("listener", &name)]), Some(0.0));
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Invoice {
    id: u64,
}

#[test]
fn deliveries_from_a_broker_are_counted_as_in_process_ones() {
    run(|recorded| async move {
        // The hook runs after the layers have seen the dead letter.
        let (dead, mut letters) = mpsc::unbounded_channel();
        let bus = EventBus::builder()
            .layer(MetricsLayer::new())
            .transport(bus::transport::MemoryTransport::new())
            .distributed::<Invoice>()
            .dead_letter(move |letter| {
                let _ = dead.send(letter.attempts());
            })
            .build();
        let (handled, mut handled_ids) = mpsc::unbounded_channel();
        let id = bus
            .on("invoices.due", move |invoice: Arc<Invoice>| {
                let handled = handled.clone();
                async move {
                    if invoice.id == 1 {
                        // Fails both of its attempts: the second is its last.
                        return Err("unpaid");
                    }
                    let _ = handled.send(invoice.id);
                    Ok(())
                }
            })
            .policy(Policy::new().retry(1).backoff(Duration::from_millis(1)))
            .add();
        assert!(bus.listeners("invoices.due")[0].is_distributed());
        let name = name_of(&bus, "invoices.due", id);
        guarded("ready", bus.ready()).await.unwrap();
        for id in [1, 2] {
            let report = guarded("publish", bus.emit("invoices.due", Invoice { id })).await;
            assert!(report.is_ok(), "{report:?}");
        }
        assert_eq!(
            guarded("the healthy one", handled_ids.recv()).await,
            Some(2)
        );
        assert_eq!(guarded("the dead letter", letters.recv()).await, Some(2));
        let listener = [("event", "invoices.due"), ("listener", name.as_str())];
        let outcome = |outcome| {
            recorded.counter(
                DELIVERIES,
                &[listener[0], listener[1], ("outcome", outcome)],
            )
        };
        guarded("drain", bus.drain()).await;
        assert_eq!(outcome("delivered"), 1, "{recorded:?}");
        assert_eq!(outcome("failed"), 2, "both attempts: {recorded:?}");
        assert_eq!(recorded.counter(RETRIED, &listener), 1, "{recorded:?}");
        assert_eq!(recorded.counter(DEAD_LETTERS, &listener), 1, "{recorded:?}");
        let (samples, ..) = recorded.histogram(DURATION, &listener);
        assert_eq!(samples.len(), 3, "one sample per attempt: {recorded:?}");
        assert_eq!(
            recorded.gauge(IN_FLIGHT, &[listener[1]]),
            Some(0.0),
            "{recorded:?}"
        );
    });
}
