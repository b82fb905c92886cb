//! The metrics of the distributed path (feature `metrics`): publishes stored and failed with
//! their latency, and a consumer's deliveries received, redelivered, dead-lettered (rejected or
//! exhausted) with their processing time, labelled by transport, event, group and listener. On
//! the in-memory transport, NATS JetStream, Redis Streams and PostgreSQL.
//!
//! Each run records into a `DebuggingRecorder` of its own, the local recorder of its thread,
//! with the bus and the transport's tasks on a current-thread runtime on that thread.
#![cfg(feature = "metrics")]

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus::transport::{MemoryTransport, Transport, WireEvent};
use bus::{EventBus, Policy, policy::Group};
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

/// Everything the recorder got so far, summed over snapshots (each hands a value over once).
struct Recorded {
    snapshotter: Snapshotter,
    totals: RefCell<HashMap<CompositeKey, (u64, usize)>>,
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
    let recorder = DebuggingRecorder::new();
    let recorded = Recorded {
        snapshotter: recorder.snapshotter(),
        totals: RefCell::default(),
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

#[test]
fn memory_publishes_and_deliveries_are_measured() {
    run(|recorded| async move {
        measured(Arc::new(MemoryTransport::new()), recorded, false).await;
    });
}

/// [`measured`] on `broker`, on a prefix of its own deleted at the end.
#[cfg(all(feature = "nats", feature = "redis"))]
fn on_broker(broker: common::brokers::Broker, test: &str) {
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
        measured(transport, recorded, true).await;
    });
}

#[cfg(all(feature = "nats", feature = "redis"))]
#[test]
fn nats_publishes_and_deliveries_are_measured() {
    on_broker(
        common::brokers::Broker::Nats,
        "nats_publishes_and_deliveries_are_measured",
    );
}

#[cfg(all(feature = "nats", feature = "redis"))]
#[test]
fn redis_publishes_and_deliveries_are_measured() {
    on_broker(
        common::brokers::Broker::Redis,
        "redis_publishes_and_deliveries_are_measured",
    );
}

#[cfg(all(feature = "nats", feature = "redis", feature = "postgres"))]
#[test]
fn postgres_publishes_and_deliveries_are_measured() {
    on_broker(
        common::brokers::Broker::Postgres,
        "postgres_publishes_and_deliveries_are_measured",
    );
}
