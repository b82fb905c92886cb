//! The relay's metrics (feature `metrics`): the lag gauges and the publish counters, read back
//! through a debugging recorder installed for this test binary.
#![cfg(feature = "metrics")]

mod common;

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{PATIENCE, Recorder, TestDb};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

/// A recorder that keeps every value (the debugging one resets them when read).
#[derive(Clone)]
struct Store(Arc<Registry<Key, AtomicStorage>>);

impl metrics::Recorder for Store {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |counter| Counter::from_arc(Arc::clone(counter)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |gauge| Gauge::from_arc(Arc::clone(gauge)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |histogram| Histogram::from_arc(Arc::clone(histogram)))
    }
}

impl Store {
    /// The counter `name` labelled `table = <table>`.
    fn counter(&self, name: &str, table: &str) -> Option<u64> {
        self.0
            .get_counter_handles()
            .into_iter()
            .find(|(key, _)| is(key, name, table))
            .map(|(_, counter)| counter.load(Ordering::SeqCst))
    }

    /// The gauge `name` labelled `table = <table>`.
    fn gauge(&self, name: &str, table: &str) -> Option<f64> {
        self.0
            .get_gauge_handles()
            .into_iter()
            .find(|(key, _)| is(key, name, table))
            .map(|(_, gauge)| f64::from_bits(gauge.load(Ordering::SeqCst)))
    }
}

fn is(key: &Key, name: &str, table: &str) -> bool {
    key.name() == name
        && key
            .labels()
            .any(|label| label.key() == "table" && label.value() == table)
}

#[tokio::test]
async fn the_relay_reports_its_lag_and_publishes() {
    let store = Store(Arc::new(Registry::atomic()));
    metrics::set_global_recorder(store.clone()).unwrap();
    let Some(db) = TestDb::connect("the_relay_reports_its_lag_and_publishes").await else {
        return;
    };
    let table = format!("{}outbox", db.prefix);
    let outbox = db.outbox("shop");
    let transport = Recorder::new();
    transport.fail_next(1);
    let relay = db
        .relay(transport.shared())
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .start()
        .unwrap();
    for n in 0..3 {
        outbox
            .emit(&mut *db.conn().await, "order.placed", &n)
            .await
            .unwrap();
    }
    transport.wait_for(3, "the events").await;
    let settled = async {
        loop {
            let published = store.counter("bus_outbox_published_total", &table);
            let pending = store.gauge("bus_outbox_pending", &table);
            if published == Some(3) && pending == Some(0.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, settled)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not 3 published and nothing pending, through the metrics: {:?} {:?}",
                store.counter("bus_outbox_published_total", &table),
                store.gauge("bus_outbox_pending", &table)
            )
        });
    assert_eq!(
        store.counter("bus_outbox_publish_failures_total", &table),
        Some(1)
    );
    assert_eq!(store.gauge("bus_outbox_oldest_seconds", &table), Some(0.0));
    relay.stop().await;
}
