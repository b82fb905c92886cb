//! The metrics of the distributed path (feature `metrics`): publishes stored and failed with
//! their latency, and a consumer's deliveries received, redelivered, dead-lettered (rejected or
//! exhausted) with their processing time, labelled by transport, event, group and listener; and
//! a group's lag and pending gauges rising while its consumer is held up and falling after. On
//! the in-memory transport, NATS JetStream, Redis Streams and PostgreSQL.
//!
//! Each run records into a `DebuggingRecorder` of its own, the local recorder of its thread,
//! with the bus and the transport's tasks on a current-thread runtime on that thread.
#![cfg(feature = "metrics")]

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus::transport::{MemoryTransport, Transport, WireEvent};
use bus::{EventBus, Policy, policy::Group};
use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use serde::{Deserialize, Serialize};

const PUBLISHED: &str = "bus_published_total";
const PUBLISH_FAILURES: &str = "bus_publish_failures_total";
const PUBLISH_DURATION: &str = "bus_publish_duration_seconds";
const RECEIVED: &str = "bus_consumer_received_total";
const REDELIVERED: &str = "bus_consumer_redelivered_total";
const DEAD_LETTERED: &str = "bus_consumer_dead_lettered_total";
const PROCESSING: &str = "bus_consumer_processing_seconds";
const LAG: &str = "bus_consumer_lag";
const PENDING: &str = "bus_consumer_pending";

/// How long a run waits for the deliveries it expects before it fails.
const PATIENCE: Duration = Duration::from_secs(60);
/// The order the listener fails on every time: dead-lettered after its two deliveries.
const POISON: u64 = 3;

#[derive(Debug, Clone, Serialize, Deserialize, bus::Event)]
#[event(name = "metrics.order", distributed)]
struct Order {
    seq: u64,
    note: String,
}

/// Everything the recorder got so far, summed over snapshots (each hands a value over once);
/// gauges as their last value set.
struct Recorded {
    snapshotter: Snapshotter,
    totals: RefCell<HashMap<CompositeKey, (u64, usize)>>,
    gauges: Gauges,
}

/// The last value set on each gauge. The debugging recorder's snapshot resets a gauge to 0 as
/// it reads it, which a test could not tell from a gauge set to 0.
#[derive(Clone, Default)]
struct Gauges(Arc<Mutex<HashMap<Key, f64>>>);

impl Gauges {
    fn set(&self, key: &Key, value: impl FnOnce(f64) -> f64) {
        let mut gauges = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let gauge = gauges.entry(key.clone()).or_default();
        *gauge = value(*gauge);
    }
}

/// One gauge of [`Gauges`].
struct LastValue {
    key: Key,
    gauges: Gauges,
}

impl GaugeFn for LastValue {
    fn increment(&self, value: f64) {
        self.gauges.set(&self.key, |gauge| gauge + value);
    }

    fn decrement(&self, value: f64) {
        self.gauges.set(&self.key, |gauge| gauge - value);
    }

    fn set(&self, value: f64) {
        self.gauges.set(&self.key, |_| value);
    }
}

/// The debugging recorder, with its gauges kept in [`Gauges`] instead.
struct TestRecorder {
    inner: DebuggingRecorder,
    gauges: Gauges,
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(LastValue {
            key: key.clone(),
            gauges: self.gauges.clone(),
        }))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

impl Recorded {
    fn take(&self) {
        let mut totals = self.totals.borrow_mut();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let total = totals.entry(key).or_default();
            match value {
                DebugValue::Counter(n) => total.0 += n,
                DebugValue::Histogram(samples) => total.1 += samples.len(),
                DebugValue::Gauge(_) => {}
            }
        }
    }

    /// The sum of a counter (`Counter`) or the number of samples of a histogram over every
    /// label set that holds `labels`.
    fn total(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.take();
        self.totals
            .borrow()
            .iter()
            .filter(|(key, _)| key.kind() == kind && key.key().name() == name)
            .filter(|(key, _)| {
                labels.iter().all(|(label, value)| {
                    key.key()
                        .labels()
                        .any(|have| have.key() == *label && have.value() == *value)
                })
            })
            .map(|(_, (count, samples))| match kind {
                MetricKind::Histogram => *samples as u64,
                _ => *count,
            })
            .sum()
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.total(MetricKind::Counter, name, labels)
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.total(MetricKind::Histogram, name, labels)
    }

    /// The last value of the gauge `name` with exactly `labels`.
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.gauges
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(key, _)| {
                key.name() == name
                    && key.labels().count() == labels.len()
                    && labels.iter().all(|(label, value)| {
                        key.labels()
                            .any(|have| have.key() == *label && have.value() == *value)
                    })
            })
            .map(|(_, value)| *value)
    }

    fn describe(&self) -> String {
        self.take();
        let mut lines: Vec<String> = self
            .totals
            .borrow()
            .iter()
            .map(|(key, total)| format!("{:?} {}: {total:?}", key.kind(), key.key()))
            .collect();
        lines.sort();
        lines.join("\n")
    }
}

/// Runs `test` on a current-thread runtime with a fresh recorder as this thread's.
fn run<F, Fut>(test: F)
where
    F: FnOnce(Recorded) -> Fut,
    Fut: Future<Output = ()>,
{
    let recorder = TestRecorder {
        inner: DebuggingRecorder::new(),
        gauges: Gauges::default(),
    };
    let recorded = Recorded {
        snapshotter: recorder.inner.snapshotter(),
        totals: RefCell::default(),
        gauges: recorder.gauges.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    metrics::with_local_recorder(&recorder, || runtime.block_on(test(recorded)));
}

/// Five orders through the bus (the fourth fails on both its deliveries), one event of the
/// same name written to the broker directly that does not decode, and, where the transport
/// refuses payloads over 1 MiB, one publish that fails.
async fn measured(transport: Arc<dyn Transport>, recorded: Recorded, refuses_large: bool) {
    let label = transport.name().to_owned();
    let bus = EventBus::builder()
        .service("shop")
        .shared_transport(Arc::clone(&transport))
        .distributed::<Order>()
        .build();
    let id = bus
        .on("metrics.order", |order: Arc<Order>| async move {
            if order.seq == POISON {
                return Err(format!("order {} is poison", order.seq));
            }
            Ok(())
        })
        .policy(
            Policy::new()
                .group(Group::Named("billing"))
                .retry(1)
                .backoff(Duration::from_millis(1)),
        )
        .add();
    let listener = bus
        .listeners("metrics.order")
        .into_iter()
        .find(|info| info.id() == id)
        .expect("the listener")
        .name()
        .to_owned();
    bus.ready().await.expect("subscribed");

    for seq in 0..5 {
        let report = bus
            .emit_event(Order {
                seq,
                note: String::new(),
            })
            .await;
        assert!(report.is_ok(), "{label}: order {seq}: {report:?}");
    }
    let unreadable = WireEvent::new(
        format!("unreadable-{}", common::unique()),
        "elsewhere",
        "metrics.order",
        "not json",
    )
    .content_type("application/json");
    transport
        .publish(unreadable)
        .await
        .expect("the unreadable event stored");
    if refuses_large {
        let report = bus
            .emit_event(Order {
                seq: 99,
                note: "x".repeat(2 << 20),
            })
            .await;
        assert!(!report.is_ok(), "{label}: a 2 MiB publish was stored");
    }

    // 4 orders delivered once, the poison one twice, the unreadable event once.
    let consumer = [
        ("transport", label.as_str()),
        ("group", "billing"),
        ("listener", listener.as_str()),
    ];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while recorded.samples(PROCESSING, &consumer) < 7 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: 7 deliveries settled within {PATIENCE:?}; recorded:\n{}",
            recorded.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.shutdown(Duration::from_secs(5)).await;

    let publish = [("transport", label.as_str()), ("event", "metrics.order")];
    let failures = u64::from(refuses_large);
    let all = recorded.describe();
    assert_eq!(recorded.counter(PUBLISHED, &publish), 5, "{label}:\n{all}");
    assert_eq!(
        recorded.counter(PUBLISH_FAILURES, &publish),
        failures,
        "{label}:\n{all}"
    );
    assert_eq!(
        recorded.samples(PUBLISH_DURATION, &publish),
        5 + failures,
        "{label}:\n{all}"
    );
    assert_eq!(recorded.counter(RECEIVED, &consumer), 7, "{label}:\n{all}");
    assert_eq!(
        recorded.counter(REDELIVERED, &consumer),
        1,
        "{label}:\n{all}"
    );
    for reason in ["exhausted", "rejected"] {
        let labels = [consumer[0], consumer[1], consumer[2], ("reason", reason)];
        assert_eq!(
            recorded.counter(DEAD_LETTERED, &labels),
            1,
            "{label}, {reason}:\n{all}"
        );
    }
    assert_eq!(
        recorded.samples(PROCESSING, &consumer),
        7,
        "{label}:\n{all}"
    );
}

/// Waits until the lag and pending gauges of group `held` satisfy `done`.
async fn wait_for_gauges(
    recorded: &Recorded,
    label: &str,
    what: &str,
    done: impl Fn(f64, f64) -> bool,
) {
    let labels = [("transport", label), ("group", "held")];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let lag = recorded.gauge(LAG, &labels);
        let pending = recorded.gauge(PENDING, &labels);
        if let (Some(lag), Some(pending)) = (lag, pending)
            && done(lag, pending)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: {what} within {PATIENCE:?}; lag {lag:?}, pending {pending:?}; recorded:\n{}",
            recorded.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A consumer held up (its listener waits on a gate, one delivery at a time) while five
/// orders are published: its group's lag and pending gauges, sampled every 50 ms, come to
/// count all five between them (how they split depends on how many the transport fetched
/// ahead); once the gate opens, both fall to zero.
async fn lag_measured(transport: Arc<dyn Transport>, recorded: Recorded) {
    let label = transport.name().to_owned();
    let publisher = EventBus::builder()
        .service("shop")
        .shared_transport(Arc::clone(&transport))
        .build();
    let bus = EventBus::builder()
        .service("billing")
        .shared_transport(Arc::clone(&transport))
        .group_stats_interval(Duration::from_millis(50))
        .build();
    let (open, gate) = tokio::sync::watch::channel(false);
    bus.on("metrics.order", move |_: Arc<Order>| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
        }
    })
    .policy(Policy::new().group(Group::Named("held")).concurrency(1))
    .add();
    bus.ready().await.expect("subscribed");
    wait_for_gauges(
        &recorded,
        &label,
        "the group sampled, empty",
        |lag, pending| lag + pending == 0.0,
    )
    .await;

    for seq in 0..5 {
        let report = publisher
            .emit_event(Order {
                seq,
                note: String::new(),
            })
            .await;
        assert!(report.is_ok(), "{label}: order {seq}: {report:?}");
    }
    wait_for_gauges(
        &recorded,
        &label,
        "five orders outstanding",
        |lag, pending| lag + pending == 5.0 && pending >= 1.0,
    )
    .await;

    open.send_replace(true);
    wait_for_gauges(&recorded, &label, "nothing outstanding", |lag, pending| {
        lag == 0.0 && pending == 0.0
    })
    .await;
    let health = bus.health().await;
    assert!(health.is_healthy(), "{label}: {health}");
    let consumer = &health.consumers()[0];
    assert_eq!(consumer.group(), Some("held"), "{label}");
    let stats = consumer.stats().expect("read").expect("a group");
    assert_eq!((stats.lag, stats.pending), (0, 0), "{label}");
    bus.shutdown(Duration::from_secs(5)).await;
    publisher.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn memory_lag_and_pending_are_sampled() {
    run(|recorded| async move {
        lag_measured(Arc::new(MemoryTransport::new()), recorded).await;
    });
}

#[test]
fn memory_publishes_and_deliveries_are_measured() {
    run(|recorded| async move {
        measured(Arc::new(MemoryTransport::new()), recorded, false).await;
    });
}

/// [`measured`] (or, `lag`, [`lag_measured`]) on `broker`, on a prefix of its own deleted
/// at the end.
#[cfg(all(feature = "nats", feature = "redis"))]
fn on_broker(broker: common::brokers::Broker, test: &str, lag: bool) {
    use common::brokers::{Cleanup, unique_prefix};
    run(|recorded| async move {
        let prefix = unique_prefix("metrics", broker);
        let _cleanup = Cleanup {
            broker,
            prefix: prefix.clone(),
        };
        let Some(transport) = common::reachable(test, broker.connect(&prefix, None).await) else {
            return;
        };
        if lag {
            lag_measured(transport, recorded).await;
        } else {
            measured(transport, recorded, true).await;
        }
    });
}

#[cfg(all(feature = "nats", feature = "redis"))]
#[test]
fn nats_publishes_and_deliveries_are_measured() {
    on_broker(
        common::brokers::Broker::Nats,
        "nats_publishes_and_deliveries_are_measured",
        false,
    );
}

#[cfg(all(feature = "nats", feature = "redis"))]
#[test]
fn redis_publishes_and_deliveries_are_measured() {
    on_broker(
        common::brokers::Broker::Redis,
        "redis_publishes_and_deliveries_are_measured",
        false,
    );
}

#[cfg(all(feature = "nats", feature = "redis", feature = "postgres"))]
#[test]
fn postgres_publishes_and_deliveries_are_measured() {
    on_broker(
        common::brokers::Broker::Postgres,
        "postgres_publishes_and_deliveries_are_measured",
        false,
    );
}

#[cfg(all(feature = "nats", feature = "redis"))]
#[test]
fn nats_lag_and_pending_are_sampled() {
    on_broker(
        common::brokers::Broker::Nats,
        "nats_lag_and_pending_are_sampled",
        true,
    );
}

#[cfg(all(feature = "nats", feature = "redis"))]
#[test]
fn redis_lag_and_pending_are_sampled() {
    on_broker(
        common::brokers::Broker::Redis,
        "redis_lag_and_pending_are_sampled",
        true,
    );
}

#[cfg(all(feature = "nats", feature = "redis", feature = "postgres"))]
#[test]
fn postgres_lag_and_pending_are_sampled() {
    on_broker(
        common::brokers::Broker::Postgres,
        "postgres_lag_and_pending_are_sampled",
        true,
    );
}
