//! [`MetricsLayer`]: the bus's hooks as counters, a gauge and a histogram, recorded through the
//! [`metrics`] facade, so any `metrics` exporter (Prometheus, StatsD, OpenTelemetry...) shows them.

use std::collections::HashMap;
use std::sync::{Arc, Once, PoisonError, RwLock};

use metrics::{Key, Label, Level, Metadata, SharedString, Unit};

use super::{AttemptResult, DeadLetter, DeliveryInfo, DeliveryOutcome, EmitInfo, Layer};
use crate::info::ListenerInfo;

const EMITTED: &str = "bus_events_emitted_total";
const DELIVERIES: &str = "bus_deliveries_total";
const RETRIED: &str = "bus_deliveries_retried_total";
const DEAD_LETTERS: &str = "bus_dead_letters_total";
const SHED: &str = "bus_events_shed_total";
const MISMATCHES: &str = "bus_listener_mismatches_total";
const LAGGED: &str = "bus_stream_lagged_total";
const IN_FLIGHT: &str = "bus_deliveries_in_flight";
const DURATION: &str = "bus_delivery_duration_seconds";

/// The `outcome` label of `bus_deliveries_total`, indexed by [`outcome_index`].
const OUTCOMES: [&str; 5] = ["delivered", "failed", "panicked", "timed_out", "aborted"];

/// What the `metrics` macros would pass as the call site of every metric of this layer.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The hasher of the key caches: the lookup is on every hook call and names are short strings.
type Hasher = foldhash::fast::RandomState;

/// Records the bus's emits and deliveries through the [`metrics`] facade, to whatever recorder
/// (exporter) the program installed. Add it with
/// [`EventBusBuilder::layer`](crate::EventBusBuilder::layer); without a recorder it records
/// nothing, at the cost of a few lookups per delivery.
///
/// ```
/// use bus::{EventBus, layer::MetricsLayer};
///
/// // First install a recorder: metrics_exporter_prometheus::PrometheusBuilder, ...
/// let bus = EventBus::builder().layer(MetricsLayer::new()).build();
/// # drop(bus);
/// ```
///
/// # Metrics
///
/// | metric | kind | labels | counts |
/// |---|---|---|---|
/// | `bus_events_emitted_total` | counter | `event` | emits handed to their listeners, if any ([`Layer::on_emit`]); not the shed ones |
/// | `bus_deliveries_total` | counter | `event`, `listener`, `outcome` | delivery attempts by how they ended: `delivered`, `failed`, `panicked`, `timed_out`, `aborted` |
/// | `bus_deliveries_retried_total` | counter | `event`, `listener` | attempts after the first (retries) |
/// | `bus_dead_letters_total` | counter | `event`, `listener` | deliveries that failed their last attempt |
/// | `bus_events_shed_total` | counter | `event` | emits refused whole because the bus was full ([`max_in_flight`](crate::EventBusBuilder::max_in_flight)) |
/// | `bus_listener_mismatches_total` | counter | `event`, `listener` | pattern listeners passed by because they take another type |
/// | `bus_stream_lagged_total` | counter | `pattern` | events a slow stream reader missed |
/// | `bus_deliveries_in_flight` | gauge | `listener` | delivery attempts running now |
/// | `bus_delivery_duration_seconds` | histogram | `event`, `listener` | how long each attempt took, whatever its outcome |
///
/// Besides the layer, with this feature the broker transports (`bus-nats`, `bus-redis`) count
/// the duplicates they drop in `bus_duplicates_dropped_total` (labels `transport`, `stage`:
/// `publish` or `receive`, and `group` on receipt), whether or not the layer is added:
/// [`count_duplicate`](crate::transport::support::count_duplicate).
///
/// `listener` is the listener's [name](ListenerInfo::name): its fn path, or its type name for a
/// closure. `bus_deliveries_total` counts attempts, not deliveries: a delivery that failed
/// twice and then succeeded counts `failed` twice and `delivered` once, and its two retries in
/// `bus_deliveries_retried_total`; a delivery that failed for good is in
/// `bus_dead_letters_total`.
///
/// The in-flight gauge is per listener only, without `event`: it is what a listener's
/// [concurrency limit](crate::Policy::concurrency) bounds, and it stays meaningful without the
/// event label. It goes up when an attempt starts and down when it ends, so it does not count a
/// delivery waiting for its turn or for its next retry.
///
/// The layer asks the bus to time every attempt ([`Layer::timed`]), which reads the clock twice
/// per delivery.
///
/// # Label cardinality
///
/// Every distinct event name makes a time series of each per-event metric, per listener, and
/// per outcome: a bus with many event names makes many series, in the recorder and in the
/// monitoring system behind it. The layer itself keeps the labels of every (event, listener)
/// pair it has seen, for its whole life. When event names are many or open-ended, drop the
/// label with [`without_event_label`](MetricsLayer::without_event_label): the metrics are then
/// per listener (and, for emits and sheds, one series each for the whole bus). Event-stream
/// patterns are few, and are kept.
///
/// # Descriptions
///
/// The first time the layer records, it describes its metrics (help text and, for the
/// histogram, its unit) to the recorder in use then; a recorder installed later gets the values
/// but not the descriptions.
pub struct MetricsLayer {
    /// `true` when built [`without_event_label`](MetricsLayer::without_event_label).
    no_event_label: bool,
    /// The keys of each event name seen; under the one name `""` without the event label.
    events: RwLock<HashMap<Arc<str>, EventKeys, Hasher>>,
    /// The lag counter of each event-stream pattern seen.
    patterns: RwLock<HashMap<Arc<str>, Key, Hasher>>,
    described: Once,
}

/// The metric keys of one event name, built once: recording then allocates nothing.
struct EventKeys {
    /// The event label's value, shared by every key of the event.
    event: Option<SharedString>,
    emitted: Key,
    shed: Key,
    /// The keys of each listener seen for this event, by listener name.
    listeners: RwLock<HashMap<Arc<str>, ListenerKeys, Hasher>>,
}

/// The metric keys of one listener of one event.
struct ListenerKeys {
    /// `bus_deliveries_total`, one key per outcome, in the order of [`OUTCOMES`].
    outcomes: [Key; 5],
    retried: Key,
    dead_letters: Key,
    mismatches: Key,
    in_flight: Key,
    duration: Key,
}

impl Default for MetricsLayer {
    fn default() -> Self {
        MetricsLayer {
            no_event_label: false,
            events: RwLock::default(),
            patterns: RwLock::default(),
            described: Once::new(),
        }
    }
}

impl MetricsLayer {
    /// A layer that records every metric with its `event` label.
    pub fn new() -> Self {
        MetricsLayer::default()
    }

    /// Leaves out the `event` label everywhere: for a bus with many event names, so that the
    /// number of series is bounded by the number of listeners. See
    /// [Label cardinality](MetricsLayer#label-cardinality).
    #[must_use]
    pub fn without_event_label(mut self) -> Self {
        self.no_event_label = true;
        self
    }

    /// Runs `record` with the keys of event `name`, building them on its first use.
    fn with_event<R>(&self, name: &str, record: impl FnOnce(&EventKeys) -> R) -> R {
        self.described.call_once(describe);
        let name = if self.no_event_label { "" } else { name };
        {
            let events = self.events.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(keys) = events.get(name) {
                return record(keys);
            }
        }
        let mut events = self.events.write().unwrap_or_else(PoisonError::into_inner);
        if !events.contains_key(name) {
            let name: Arc<str> = Arc::from(name);
            let label = (!self.no_event_label).then(|| SharedString::from(Arc::clone(&name)));
            events.insert(name, EventKeys::new(label));
        }
        record(&events[name])
    }

    /// Runs `record` with the keys of `listener` for event `name`, building them on first use.
    fn with_listener<R>(
        &self,
        name: &str,
        listener: &ListenerInfo,
        record: impl FnOnce(&ListenerKeys) -> R,
    ) -> R {
        self.with_event(name, |event| {
            {
                let listeners = event
                    .listeners
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(keys) = listeners.get(listener.name()) {
                    return record(keys);
                }
            }
            let mut listeners = event
                .listeners
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let keys = listeners
                .entry(Arc::clone(&listener.name))
                .or_insert_with(|| ListenerKeys::new(event.event.as_ref(), &listener.name));
            record(keys)
        })
    }
}

impl EventKeys {
    fn new(event: Option<SharedString>) -> Self {
        let labels = || -> Vec<Label> {
            event
                .iter()
                .map(|event| Label::new("event", event.clone()))
                .collect()
        };
        EventKeys {
            emitted: Key::from_parts(EMITTED, labels()),
            shed: Key::from_parts(SHED, labels()),
            event,
            listeners: RwLock::default(),
        }
    }
}

impl ListenerKeys {
    fn new(event: Option<&SharedString>, listener: &Arc<str>) -> Self {
        let listener = SharedString::from(Arc::clone(listener));
        let labels = |outcome: Option<&'static str>| -> Vec<Label> {
            let event = event.map(|event| Label::new("event", event.clone()));
            let listener = Some(Label::new("listener", listener.clone()));
            let outcome = outcome.map(|outcome| Label::new("outcome", outcome));
            [event, listener, outcome].into_iter().flatten().collect()
        };
        ListenerKeys {
            outcomes: OUTCOMES.map(|outcome| Key::from_parts(DELIVERIES, labels(Some(outcome)))),
            retried: Key::from_parts(RETRIED, labels(None)),
            dead_letters: Key::from_parts(DEAD_LETTERS, labels(None)),
            mismatches: Key::from_parts(MISMATCHES, labels(None)),
            in_flight: Key::from_parts(IN_FLIGHT, vec![Label::new("listener", listener.clone())]),
            duration: Key::from_parts(DURATION, labels(None)),
        }
    }
}

/// The index of an attempt's outcome in [`OUTCOMES`]. No wildcard arm: a new outcome must get
/// a label of its own.
fn outcome_index(result: AttemptResult<'_>) -> usize {
    match result {
        AttemptResult::Delivered => 0,
        AttemptResult::Failed(_) => 1,
        AttemptResult::Panicked(_) => 2,
        AttemptResult::TimedOut(_) => 3,
        AttemptResult::Aborted => 4,
    }
}

fn increment(key: &Key, by: u64) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(by));
}

/// Describes every metric to the current recorder.
fn describe() {
    metrics::with_recorder(|recorder| {
        let counters = [
            (EMITTED, "Events emitted, by event name."),
            (
                DELIVERIES,
                "Delivery attempts by how they ended: delivered, failed, panicked, timed_out, \
                 aborted.",
            ),
            (RETRIED, "Delivery attempts after the first: retries."),
            (DEAD_LETTERS, "Deliveries that failed their last attempt."),
            (
                SHED,
                "Events refused whole because the bus was full (max_in_flight).",
            ),
            (
                MISMATCHES,
                "Events a matching pattern listener passed by: it takes another type.",
            ),
            (
                LAGGED,
                "Events dropped from the buffer of a slow event stream, by pattern.",
            ),
        ];
        for (name, help) in counters {
            recorder.describe_counter(name.into(), None, help.into());
        }
        recorder.describe_gauge(
            IN_FLIGHT.into(),
            None,
            "Delivery attempts running now, by listener.".into(),
        );
        recorder.describe_histogram(
            DURATION.into(),
            Some(Unit::Seconds),
            "How long each delivery attempt took, whatever its outcome.".into(),
        );
    });
}

impl Layer for MetricsLayer {
    fn on_emit(&self, emit: &EmitInfo<'_>) {
        self.with_event(emit.event(), |keys| increment(&keys.emitted, 1));
    }

    fn before(&self, delivery: &DeliveryInfo<'_>) {
        self.with_listener(delivery.event(), delivery.listener(), |keys| {
            metrics::with_recorder(|recorder| {
                recorder
                    .register_gauge(&keys.in_flight, &METADATA)
                    .increment(1.0);
                if delivery.attempt() > 1 {
                    recorder
                        .register_counter(&keys.retried, &METADATA)
                        .increment(1);
                }
            });
        });
    }

    fn after(&self, delivery: &DeliveryInfo<'_>, outcome: &DeliveryOutcome<'_>) {
        self.with_listener(delivery.event(), delivery.listener(), |keys| {
            metrics::with_recorder(|recorder| {
                recorder
                    .register_gauge(&keys.in_flight, &METADATA)
                    .decrement(1.0);
                let outcome_key = &keys.outcomes[outcome_index(outcome.result())];
                recorder
                    .register_counter(outcome_key, &METADATA)
                    .increment(1);
                if let Some(elapsed) = outcome.elapsed() {
                    recorder
                        .register_histogram(&keys.duration, &METADATA)
                        .record(elapsed.as_secs_f64());
                }
            });
        });
    }

    fn on_shed(&self, emit: &EmitInfo<'_>) {
        self.with_event(emit.event(), |keys| increment(&keys.shed, 1));
    }

    fn on_mismatch(&self, emit: &EmitInfo<'_>, listener: &ListenerInfo) {
        self.with_listener(emit.event(), listener, |keys| {
            increment(&keys.mismatches, 1);
        });
    }

    fn on_dead_letter(&self, letter: &DeadLetter) {
        self.with_listener(letter.event().name(), letter.listener(), |keys| {
            increment(&keys.dead_letters, 1);
        });
    }

    fn on_lagged(&self, pattern: &str, missed: u64) {
        self.described.call_once(describe);
        {
            let patterns = self.patterns.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(key) = patterns.get(pattern) {
                increment(key, missed);
                return;
            }
        }
        let mut patterns = self
            .patterns
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let key = patterns
            .entry(Arc::from(pattern))
            .or_insert_with_key(|pattern| {
                let label = Label::new("pattern", SharedString::from(Arc::clone(pattern)));
                Key::from_parts(LAGGED, vec![label])
            });
        increment(key, missed);
    }

    fn timed(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let events = self.events.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("MetricsLayer")
            .field("event_label", &!self.no_event_label)
            .field("events_seen", &events.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Meta;

    fn emit(layer: &MetricsLayer, name: &str) {
        let meta = Meta::now();
        layer.on_emit(&EmitInfo {
            name,
            meta: &meta,
            listeners: 1,
        });
    }

    #[test]
    fn without_the_event_label_the_keys_kept_do_not_grow_with_event_names() {
        let layer = MetricsLayer::new();
        let bounded = MetricsLayer::new().without_event_label();
        for name in [
            "users.created",
            "users.deleted",
            "orders.placed",
            "users.created",
        ] {
            emit(&layer, name);
            emit(&bounded, name);
        }
        assert_eq!(layer.events.read().unwrap().len(), 3);
        assert_eq!(bounded.events.read().unwrap().len(), 1);
    }
}
