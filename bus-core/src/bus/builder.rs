//! [`EventBusBuilder`]: a bus with other settings than the defaults.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{EventBus, Shared};
use crate::delivery::{Dispatch, Engine, Snapshot};
use crate::layer::{DeadLetter, DeadLetterHook, Layer, Layers};
use crate::registry::Registry;
use crate::remote::Remote;
use crate::remote::codec::Codec;
use crate::tasks::Tasks;
use crate::transport::{DEFAULT_GROUP_STATS_INTERVAL, Transport};

/// Builds an [`EventBus`] with other settings than the defaults.
///
/// ```
/// let bus = bus::EventBus::builder().dispatch(bus::Dispatch::Spawn).build();
/// assert_eq!(bus.dispatch_mode(), bus::Dispatch::Spawn);
/// ```
#[derive(Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct EventBusBuilder {
    dispatch: Dispatch,
    layers: Layers,
    dead_letter: Option<DeadLetterHook>,
    max_in_flight: Option<usize>,
    service: Option<Arc<str>>,
    transport: Option<Arc<dyn Transport>>,
    codecs: Vec<Codec>,
    annotated: bool,
    /// `None`: [`DEFAULT_GROUP_STATS_INTERVAL`].
    stats_interval: Option<Duration>,
    #[cfg(feature = "testing")]
    probe: Option<Arc<crate::testing::Probe>>,
}

impl std::fmt::Debug for EventBusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBusBuilder")
            .field("dispatch", &self.dispatch)
            .field("layers", &self.layers.len())
            .field("dead_letter", &self.dead_letter.is_some())
            .field("max_in_flight", &self.max_in_flight)
            .field("service", &self.service)
            .field(
                "transport",
                &self.transport.as_ref().map(|transport| transport.name()),
            )
            .field("codecs", &self.codecs)
            .field("annotated", &self.annotated)
            .finish()
    }
}

impl EventBusBuilder {
    /// How the bus runs its listeners; [`Dispatch::InlineFirst`] by default.
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// Adds a [`Layer`]: hooks around every emit and delivery (from a broker too). Layers run
    /// in the order they were added, after the bus's own
    /// [`TracingLayer`](crate::layer::TracingLayer).
    pub fn layer<L: Layer>(mut self, layer: L) -> Self {
        self.layers = self.layers.with(Arc::new(layer));
        self
    }

    /// Where deliveries go that failed their last attempt: `hook` is called with the event,
    /// the listener, the last error and the number of attempts. Without a hook they are only
    /// logged (and counted by the layers).
    ///
    /// This covers the listeners that have a [`Policy`](crate::Policy) (retries, a timeout, a concurrency
    /// limit): their failures are handled by the bus. A plain listener's failure is reported
    /// to its emitter (the [`DeliveryReport`](crate::DeliveryReport)) and logged, as always.
    /// On a bus with a transport it also covers every distributed listener, when the broker's
    /// last allowed delivery of an event fails (besides the transport's own dead letter,
    /// `dead-letter.<name>`).
    ///
    /// A hook that panics is caught and logged.
    ///
    /// The hook runs on the delivery's task; hand slow work (storing the event) to a task or
    /// a channel of your own.
    pub fn dead_letter<F>(mut self, hook: F) -> Self
    where
        F: Fn(&DeadLetter) + Send + Sync + 'static,
    {
        self.dead_letter = Some(Arc::new(hook));
        self
    }

    /// Bounds the deliveries the bus holds at once, queued and running, to `limit`. An emit
    /// that would go past it is refused whole: [`try_emit`](EventBus::try_emit) returns
    /// [`EmitError::Full`](crate::error::EmitError::Full), [`emit_async`](EventBus::emit_async) waits for room, and
    /// [`emit`](EventBus::emit) sheds the event: no listener gets it, every listener counts it
    /// as not delivered in the report, and it is logged and counted by the layers
    /// ([`Layer::on_shed`](crate::layer::Layer::on_shed)).
    ///
    /// A delivery that completes inline, in the emit, holds its place only while it runs.
    /// Unbounded by default.
    ///
    /// What it bounds is the bus's own work: deliveries and their tasks. An
    /// [`Emission`](crate::Emission) that the caller keeps (to await its report later) holds
    /// its event and report until dropped, whatever the limit: await or drop them as you go.
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.max_in_flight = Some(limit);
        self
    }

    /// The name of this service: the `source` of the events emitted on this bus (in process
    /// too: [`Envelope::source`](crate::Envelope::source)), and the first part
    /// of its listeners' consumer groups, so that the instances of one service share their
    /// events and each other service gets its own copy. `"bus"` when not set.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(Arc::from(name.into()));
        self
    }

    /// Goes distributed: events of the types that say they travel (`#[event(.., distributed)]`
    /// on their derive, or [`distributed`](EventBusBuilder::distributed) here) are published to
    /// the broker behind `transport`, and every listener of such a type receives its events
    /// from the broker, wherever they were emitted. Events of every other type stay in
    /// process, serde or not: deriving `Serialize` for a log line moves nothing. `build` logs
    /// the types that travel, and [`EventBus::listeners`] tells which listeners are
    /// distributed ([`ListenerInfo::is_distributed`](crate::listener::ListenerInfo::is_distributed)).
    ///
    /// See the [`transport`](crate::transport) module for what a transport does, and
    /// [`EventBus::ready`] to wait until the bus's subscriptions are in place.
    pub fn transport<T: Transport>(mut self, transport: T) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// [`transport`](EventBusBuilder::transport) for a transport shared with other code.
    pub fn shared_transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Makes `E` travel through the broker of a bus with a transport, as JSON: what
    /// `#[event(.., distributed)]` on a `#[derive(bus::Event)]` does at compile time, for the
    /// types that do not derive `Event` (or are generic). Without a transport, nothing.
    pub fn distributed<E>(mut self) -> Self
    where
        E: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        self.codecs.push(Codec::json::<E>());
        self
    }

    /// How often each consumer of a group samples the group's lag and pending count into the
    /// `bus_consumer_lag` and `bus_consumer_pending` gauges (feature `metrics`, on a bus with
    /// a transport that can tell: [`Transport::group_stats`]). One round trip to the broker
    /// per consumer and interval. [`DEFAULT_GROUP_STATS_INTERVAL`] when not set; at least
    /// 10 ms.
    pub fn group_stats_interval(mut self, interval: Duration) -> Self {
        self.stats_interval = Some(interval.max(Duration::from_millis(10)));
        self
    }

    /// Records what the bus does into `harness` (feature `testing`): every emit with its
    /// payload, every delivery attempt with its outcome, every dead letter and shed. The
    /// harness's assertions then wait on them; see [`testing`](crate::testing).
    #[cfg(feature = "testing")]
    pub fn harness(self, harness: &crate::testing::Harness) -> Self {
        let probe = Arc::clone(harness.probe());
        let mut this = self.layer(crate::testing::Recording(Arc::clone(&probe)));
        this.probe = Some(probe);
        this
    }

    /// Registers every `#[bus::listener]` fn linked into the binary on the bus being built,
    /// as [`EventBus::with_annotated_listeners`] does.
    pub fn annotated_listeners(mut self) -> Self {
        self.annotated = true;
        self
    }

    /// The bus. With a transport, the consumers of its distributed listeners start on this
    /// thread's Tokio runtime: build it inside one, then await [`EventBus::ready`].
    pub fn build(self) -> EventBus {
        let snapshot = Snapshot {
            listeners: Registry::default(),
            layers: self.layers,
        };
        let service = self.service.unwrap_or_else(|| Arc::from("bus"));
        let remote = self.transport.map(|transport| {
            Remote::new(
                Arc::clone(&service),
                transport,
                &self.codecs,
                self.stats_interval.unwrap_or(DEFAULT_GROUP_STATS_INTERVAL),
            )
        });
        let engine = Engine {
            snapshot: ArcSwap::from_pointee(snapshot),
            tasks: Arc::new(Tasks::new(self.max_in_flight)),
            mode: self.dispatch,
            dead_letter: self.dead_letter,
            service,
            #[cfg(feature = "testing")]
            probe: self.probe,
        };
        let bus = EventBus {
            shared: Arc::new(Shared {
                engine,
                writer: Mutex::new(()),
                next_id: AtomicU64::new(1),
                remote,
            }),
        };
        if self.annotated {
            bus.add_annotated_listeners();
        }
        bus
    }
}
