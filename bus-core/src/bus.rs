//! The event bus: listeners registered by name, events emitted by name, each delivery its own
//! Tokio task.

use std::any::TypeId;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::runtime::Handle;

use crate::dispatch::{self, Dispatch, Dispatcher, EmitContext, Reserved, Tasks};
use crate::emission::{Emission, Outcomes};
use crate::error::{AddListenerError, DeliveryError, EmitError};
use crate::event::{AnyEvent, Envelope, Event, Handling, Meta};
use crate::layer::{DeadLetter, DeadLetterHook, EmitInfo, Layer, Layers};
use crate::listener::{self, Erased, ErasedEvent, Listener};
use crate::name;
use crate::once::{self, OnceState};
use crate::pattern::Pattern;
use crate::policy::Policy;
use crate::registry::{
    Added, Entry, ListenerId, ListenerInfo, ListenerKind, NewListener, Registry, SourceLocation,
};
use crate::remote::codec::Codec;
use crate::remote::{Reach, Remote};
use crate::subscription::{self, Subscription};
use crate::transport::{Transport, TransportError};
use crate::wait::{self, WaitError, WaitFor};

/// An async event bus.
///
/// Listeners are registered under an event name; [`emit`](EventBus::emit) hands an event to
/// every listener of its name, concurrently, and returns without waiting for them.
///
/// `EventBus` is a cheap handle: clones share the same listeners and tasks. It is
/// `Send + Sync`, and every method takes `&self`.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
///
/// #[derive(Debug)]
/// struct UserCreated { name: String }
///
/// async fn greet(event: Arc<UserCreated>) {
///     println!("welcome, {}", event.name);
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = bus::EventBus::new();
/// bus.add_listener("user.created", greet);
/// let report = bus.emit("user.created", UserCreated { name: "Ada".into() }).await;
/// assert_eq!(report.delivered(), 1);
/// # }
/// ```
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
}

/// A handle that does not keep the bus alive: held by the listeners that remove themselves
/// (`once`, `wait_for`, `subscribe`), which live in the bus's own registry.
#[derive(Clone)]
pub(crate) struct WeakBus(Weak<Shared>);

impl WeakBus {
    /// The bus, unless it was dropped.
    pub(crate) fn upgrade(&self) -> Option<EventBus> {
        self.0.upgrade().map(|shared| EventBus { shared })
    }

    /// Tells the bus's layers that a subscription to `pattern` dropped `missed` events.
    pub(crate) fn lagged(&self, pattern: &str, missed: u64) {
        match self.upgrade() {
            Some(bus) => {
                for layer in bus.shared.registry.load().layers.iter() {
                    layer.on_lagged(pattern, missed);
                }
            }
            None => tracing::warn!(pattern, missed, "subscriber lagged: events dropped"),
        }
    }
}

/// Removes a listener from its bus when dropped: what `WaitFor` and `Subscription` hold, so
/// that dropping them ends their listener.
pub(crate) struct RemoveOnDrop {
    bus: WeakBus,
    id: ListenerId,
}

impl RemoveOnDrop {
    pub(crate) fn new(bus: WeakBus, id: ListenerId) -> Self {
        RemoveOnDrop { bus, id }
    }

    /// The listener this removes.
    pub(crate) fn id(&self) -> ListenerId {
        self.id
    }

    /// The bus of the listener.
    pub(crate) fn bus(&self) -> &WeakBus {
        &self.bus
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.remove(self.id);
        }
    }
}

struct Shared {
    /// The current snapshot. Readers never block; writers replace it whole.
    registry: ArcSwap<Registry>,
    /// Serialises writers, so two concurrent adds cannot lose one another.
    writer: Mutex<()>,
    next_id: AtomicU64,
    tasks: Arc<Tasks>,
    dispatch: Dispatch,
    dead_letter: Option<DeadLetterHook>,
    /// The broker side, on a bus with a transport.
    remote: Option<Remote>,
}

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

    /// Adds a [`Layer`]: hooks around every emit and delivery. Layers run in the order they
    /// were added, after the bus's own [`TracingLayer`](crate::TracingLayer).
    pub fn layer<L: Layer>(mut self, layer: L) -> Self {
        self.layers = self.layers.with(Arc::new(layer));
        self
    }

    /// Where deliveries go that failed their last attempt: `hook` is called with the event,
    /// the listener, the last error and the number of attempts. Without a hook they are only
    /// logged (and counted by the layers).
    ///
    /// This covers the listeners that have a [`Policy`] (retries, a timeout, a concurrency
    /// limit): their failures are handled by the bus. A plain listener's failure is reported
    /// to its emitter (the [`DeliveryReport`](crate::DeliveryReport)) and logged, as always.
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
    /// [`EmitError::Full`], [`emit_async`](EventBus::emit_async) waits for room, and
    /// [`emit`](EventBus::emit) sheds the event: no listener gets it, every listener counts it
    /// as not delivered in the report, and it is logged and counted by the layers
    /// ([`Layer::on_shed`]).
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

    /// The name of this service: the `source` of the events it publishes, and the first part
    /// of its listeners' consumer groups, so that the instances of one service share their
    /// events and each other service gets its own copy. `"bus"` when not set.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(Arc::from(name.into()));
        self
    }

    /// Goes distributed: events whose type is serde (`Serialize + Deserialize`) are published
    /// to the broker behind `transport`, and every listener of such a type receives its events
    /// from the broker, wherever they were emitted. Events of other types stay in process.
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

    /// Lets `E` cross the wire. Types that derive [`Event`](crate::Event), and the argument
    /// types of `#[bus::listener]` fns, are found at compile time and need no call; this is
    /// for the types that only runtime listeners and emits use.
    pub fn codec<E>(mut self) -> Self
    where
        E: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        self.codecs.push(Codec::json::<E>());
        self
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
        let mut registry = Registry::default();
        registry.layers = self.layers;
        let remote = self.transport.map(|transport| {
            let service = self.service.unwrap_or_else(|| Arc::from("bus"));
            Remote::new(service, transport, &self.codecs)
        });
        let bus = EventBus {
            shared: Arc::new(Shared {
                registry: ArcSwap::from_pointee(registry),
                writer: Mutex::new(()),
                next_id: AtomicU64::new(1),
                tasks: Arc::new(Tasks::new(self.max_in_flight)),
                dispatch: self.dispatch,
                dead_letter: self.dead_letter,
                remote,
            }),
        };
        if self.annotated {
            bus.add_annotated_listeners();
        }
        bus
    }
}

/// What [`EventBus::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    in_flight: usize,
    aborted: usize,
}

impl ShutdownReport {
    /// How many deliveries were still running when shutdown began.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How many deliveries did not finish before the deadline and were aborted.
    pub fn aborted(&self) -> usize {
        self.aborted
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.shared.registry.load();
        f.debug_struct("EventBus")
            .field("event_names", &registry.event_names())
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl EventBus {
    /// An empty bus with the default settings: no listener, not even the `#[bus::listener]`
    /// ones (see [`EventBus::with_annotated_listeners`] and [`global`](crate::global) for those).
    pub fn new() -> Self {
        EventBus::builder().build()
    }

    /// A builder, for a bus with other settings than [`EventBus::new`]'s.
    pub fn builder() -> EventBusBuilder {
        EventBusBuilder::default()
    }

    /// How this bus runs its listeners.
    pub fn dispatch_mode(&self) -> Dispatch {
        self.shared.dispatch
    }

    /// Registers `listener` for events named `event_name` and returns its id.
    ///
    /// `event_name` may be a pattern in NATS token syntax: a whole token `*` matches exactly one
    /// token (`orders.*.created`), a last token `>` matches one or more (`orders.>`). A pattern
    /// listener receives the matching events of its own type; events of other types under a
    /// matching name pass it by.
    ///
    /// `listener` is an `async fn` or a closure taking `Arc<E>` and returning `()` or
    /// `Result<(), Err>`. Adding the same fn (or a closure that captures nothing) again under the
    /// same name changes nothing and returns the same id: its type is its identity. A closure
    /// that captures state is a new listener on every call; keep its id to remove it.
    ///
    /// Takes effect for the emits that start after it returns.
    ///
    /// # Errors
    ///
    /// This method does not fail. When `event_name` is not a valid name the listener is not
    /// registered, the error is logged, and the returned id belongs to no listener. Use
    /// [`try_add_listener`](EventBus::try_add_listener) to get the error instead.
    #[track_caller]
    pub fn add_listener<E, L>(&self, event_name: &str, listener: L) -> ListenerId
    where
        E: Send + Sync + 'static,
        L: Listener<E>,
    {
        let added = self.try_add_listener(event_name, listener);
        self.id_or_log(event_name, added)
    }

    /// Like [`add_listener`](EventBus::add_listener), but returns an error for an invalid event
    /// name instead of logging it.
    ///
    /// # Errors
    ///
    /// [`AddListenerError::InvalidName`] when `event_name` breaks the naming rules (dot-separated
    /// tokens of ASCII letters, digits, `_` and `-`, or the wildcards `*` and a last `>`).
    #[track_caller]
    pub fn try_add_listener<E, L>(
        &self,
        event_name: &str,
        listener: L,
    ) -> Result<ListenerId, AddListenerError>
    where
        E: Send + Sync + 'static,
        L: Listener<E>,
    {
        self.try_add_listener_with(event_name, listener, Policy::new())
    }

    /// Like [`add_listener`](EventBus::add_listener), with a delivery [`Policy`]: a concurrency
    /// limit, a timeout, retries with backoff.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// async fn charge(order: Arc<u64>) -> Result<(), std::io::Error> {
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bus = bus::EventBus::new();
    /// let policy = bus::Policy::new().concurrency(1).retry(3).timeout(Duration::from_secs(5));
    /// bus.add_listener_with("order.placed", charge, policy);
    /// assert_eq!(bus.listeners("order.placed")[0].policy(), policy);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`add_listener`](EventBus::add_listener): an invalid name is logged and the returned
    /// id belongs to no listener. [`try_add_listener_with`](EventBus::try_add_listener_with)
    /// returns the error.
    #[track_caller]
    pub fn add_listener_with<E, L>(
        &self,
        event_name: &str,
        listener: L,
        policy: Policy,
    ) -> ListenerId
    where
        E: Send + Sync + 'static,
        L: Listener<E>,
    {
        let added = self.try_add_listener_with(event_name, listener, policy);
        self.id_or_log(event_name, added)
    }

    /// Like [`add_listener_with`](EventBus::add_listener_with), but returns an error for an
    /// invalid event name instead of logging it.
    ///
    /// # Errors
    ///
    /// [`AddListenerError::InvalidName`] when `event_name` breaks the naming rules.
    #[track_caller]
    pub fn try_add_listener_with<E, L>(
        &self,
        event_name: &str,
        listener: L,
        policy: Policy,
    ) -> Result<ListenerId, AddListenerError>
    where
        E: Send + Sync + 'static,
        L: Listener<E>,
    {
        let location = SourceLocation::from(std::panic::Location::caller());
        let name = std::any::type_name::<L>();
        let erased = Erased::new::<E, L>(listener);
        self.register(
            event_name,
            name,
            location,
            ListenerKind::Added,
            erased,
            policy,
            Reach::Distributable,
        )
    }

    /// Adds a [`Layer`] to this bus: from the next emit on, its hooks run around every emit
    /// and delivery, after the layers already there.
    pub fn layer<L: Layer>(&self, layer: L) {
        let layer: Arc<dyn Layer> = Arc::new(layer);
        self.update(|registry| registry.layers = registry.layers.with(layer));
    }

    /// Registers an erased listener: the one path every listener takes into the registry.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one fact about the listener, named at every call site"
    )]
    pub(crate) fn register(
        &self,
        event_name: &str,
        listener_name: &str,
        location: SourceLocation,
        kind: ListenerKind,
        erased: Erased,
        policy: Policy,
        reach: Reach,
    ) -> Result<ListenerId, AddListenerError> {
        let pattern =
            Pattern::parse(event_name).map_err(|source| AddListenerError::InvalidName {
                listener: listener_name.to_owned(),
                source,
            })?;
        let (event_type, event_type_name) = (erased.event_type, erased.event_type_name);
        let plan =
            self.shared.remote.as_ref().and_then(|remote| {
                remote.plan(reach, event_name, listener_name, event_type, &policy)
            });
        let new = NewListener {
            name: Arc::from(listener_name),
            location,
            kind,
            erased,
            policy,
            distributed: plan
                .as_ref()
                .map(|plan| plan.options.group.as_deref().map(Arc::from)),
        };
        let added = self.update(|registry| {
            let added = registry.add(&pattern, new, || self.next_id());
            let other = registry
                .slot(event_name)
                .into_iter()
                .flat_map(|slot| slot.entries.iter())
                .find(|entry| {
                    entry.erased.event_type != event_type
                        && !entry.erased.takes_any()
                        && event_type != TypeId::of::<AnyEvent>()
                });
            if let (Added::New(id), Some(other)) = (&added, other) {
                tracing::warn!(
                    event = event_name,
                    listener = listener_name,
                    listener_id = id.get(),
                    event_type = event_type_name,
                    other_listener = %other.info.name(),
                    other_event_type = other.info.event_type(),
                    "listeners of one event take different types; an emit reaches only the \
                     listeners of its own type"
                );
            }
            added
        });
        Ok(match added {
            Added::New(id) => {
                tracing::debug!(event = event_name, listener = listener_name, listener_id = id.get(), %location, distributed = plan.is_some(), "listener added");
                if let (Some(remote), Some(plan)) = (&self.shared.remote, plan) {
                    let entry = self.shared.registry.load().entry(id).cloned();
                    if let Some(entry) = entry {
                        remote.start(entry, plan, &self.shared.tasks);
                    }
                }
                id
            }
            Added::Existing(id) => id,
        })
    }

    /// Removes `listener` from the listeners of `event_name`. The listener is recognised by its
    /// type, as in [`add_listener`](EventBus::add_listener).
    ///
    /// Returns `false` when it was not registered under that name, and for closures that capture
    /// state (they have no identity to find them by: remove those with
    /// [`remove`](EventBus::remove) and the id `add_listener` returned).
    ///
    /// Deliveries already started run to completion; later emits no longer reach it.
    pub fn remove_listener<E, L>(&self, event_name: &str, listener: L) -> bool
    where
        E: Send + Sync + 'static,
        L: Listener<E>,
    {
        drop(listener);
        match listener::identity_of::<L>() {
            Some(identity) => self.remove_identity(event_name, identity),
            None => {
                tracing::debug!(
                    event = event_name,
                    listener = std::any::type_name::<L>(),
                    "a closure that captures state is not recognised by value; remove it by id"
                );
                false
            }
        }
    }

    fn remove_identity(&self, event_name: &str, identity: TypeId) -> bool {
        let removed = self.update(|registry| registry.remove_identity(event_name, identity));
        tracing::debug!(event = event_name, removed, "remove_listener");
        self.stop_removed_consumers();
        removed
    }

    /// Removes the listener with this id. Returns `false` when there is none (already removed,
    /// or never registered).
    pub fn remove(&self, id: ListenerId) -> bool {
        let removed = self.update(|registry| registry.remove_id(id));
        tracing::debug!(listener_id = id.get(), removed, "remove");
        self.stop_removed_consumers();
        removed
    }

    /// Registers `listener` for the next event of `event_name` (a name or a pattern) only:
    /// the first delivery calls it and removes it, so later emits no longer reach it.
    ///
    /// Exactly one delivery calls `listener`, even when several emits race: an emit that
    /// started before the removal still counts a delivery in its report, but it returns at
    /// once without calling `listener`. Returns the id, to remove it before it fires.
    ///
    /// # Errors
    ///
    /// This method does not fail; an invalid `event_name` is logged, as in
    /// [`add_listener`](EventBus::add_listener). [`try_once`](EventBus::try_once) returns it.
    #[track_caller]
    pub fn once<E, L>(&self, event_name: &str, listener: L) -> ListenerId
    where
        E: Send + Sync + 'static,
        L: Listener<E>,
    {
        let added = self.try_once(event_name, listener);
        self.id_or_log(event_name, added)
    }

    /// Like [`once`](EventBus::once), but returns an error for an invalid event name.
    ///
    /// # Errors
    ///
    /// [`AddListenerError::InvalidName`] when `event_name` breaks the naming rules.
    #[track_caller]
    pub fn try_once<E, L>(
        &self,
        event_name: &str,
        listener: L,
    ) -> Result<ListenerId, AddListenerError>
    where
        E: Send + Sync + 'static,
        L: Listener<E>,
    {
        let location = SourceLocation::from(std::panic::Location::caller());
        let state = Arc::new(OnceState::default());
        let wrapped = once::wrap(listener, Arc::clone(&state), self.downgrade());
        let erased = Erased::new::<E, _>(wrapped);
        let id = self.register(
            event_name,
            std::any::type_name::<L>(),
            location,
            ListenerKind::Added,
            erased,
            Policy::new(),
            Reach::Local,
        )?;
        state.registered(&self.downgrade(), id);
        Ok(id)
    }

    /// Waits for the next event of type `E` whose name matches `pattern` (a name, or a pattern
    /// such as `orders.*`).
    ///
    /// The wait begins now, not when the future is first polled. Combine it with
    /// `tokio::time::timeout` to bound it. Events of other types under a matching name pass it
    /// by (under an exact name, an emit of another type is a type mismatch, as for any
    /// listener).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bus = bus::EventBus::new();
    /// let paid = bus.wait_for::<u64>("orders.*.paid");
    /// bus.emit("orders.42.paid", 42_u64);
    /// assert_eq!(*paid.await.unwrap(), 42);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The future resolves to [`WaitError::InvalidPattern`] when `pattern` is not valid, and to
    /// [`WaitError::Closed`] when the bus is dropped first.
    #[track_caller]
    pub fn wait_for<E>(&self, pattern: &str) -> WaitFor<E>
    where
        E: Send + Sync + 'static,
    {
        self.wait_for_matching(pattern, |_: &E| true)
    }

    /// Like [`wait_for`](EventBus::wait_for), for the next matching event that `predicate`
    /// accepts too.
    ///
    /// # Errors
    ///
    /// As [`wait_for`](EventBus::wait_for).
    #[track_caller]
    pub fn wait_for_matching<E, P>(&self, pattern: &str, predicate: P) -> WaitFor<E>
    where
        E: Send + Sync + 'static,
        P: Fn(&E) -> bool + Send + Sync + 'static,
    {
        let location = SourceLocation::from(std::panic::Location::caller());
        let (slot, receiver) = wait::channel::<E>();
        let listener = move |event: Arc<E>| {
            if predicate(&event) {
                wait::fill(&slot, event);
            }
            std::future::ready(())
        };
        let erased = Erased::new::<E, _>(listener);
        let listener_name = format!("wait_for::<{}>", std::any::type_name::<E>());
        match self.register(
            pattern,
            &listener_name,
            location,
            ListenerKind::Added,
            erased,
            Policy::new(),
            Reach::Local,
        ) {
            Ok(id) => WaitFor::waiting(receiver, self.downgrade(), id, pattern),
            Err(AddListenerError::InvalidName { source, .. }) => {
                WaitFor::failed(WaitError::InvalidPattern(source))
            }
            Err(other) => unreachable!("registering a listener fails only on its name: {other}"),
        }
    }

    /// The events of type `E` whose names match `pattern`, as a
    /// [`Stream`](tokio_stream::Stream), buffered up to `capacity` unread events.
    ///
    /// Emitters never wait for the subscriber. When it reads too slowly and the buffer is full,
    /// the oldest unread events are dropped and the stream yields `Err(Lagged(n))` before going
    /// on: nothing is lost without the subscriber being told. Dropping the subscription
    /// removes its listener.
    ///
    /// ```
    /// use tokio_stream::StreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bus = bus::EventBus::new();
    /// let mut orders = bus.subscribe::<u32>("orders.>", 16).unwrap();
    /// bus.emit("orders.eu.created", 7_u32);
    /// assert_eq!(*orders.next().await.unwrap().unwrap(), 7);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`AddListenerError::InvalidName`] for an invalid pattern,
    /// [`AddListenerError::InvalidCapacity`] for a capacity of 0 or above
    /// [`MAX_SUBSCRIPTION_CAPACITY`](crate::MAX_SUBSCRIPTION_CAPACITY).
    #[track_caller]
    pub fn subscribe<E>(
        &self,
        pattern: &str,
        capacity: usize,
    ) -> Result<Subscription<E>, AddListenerError>
    where
        E: Send + Sync + 'static,
    {
        if capacity == 0 || capacity > subscription::MAX_CAPACITY {
            return Err(AddListenerError::InvalidCapacity {
                pattern: pattern.to_owned(),
                capacity,
            });
        }
        let location = SourceLocation::from(std::panic::Location::caller());
        let (sender, receiver) = tokio::sync::broadcast::channel::<Arc<E>>(capacity);
        let listener = move |event: Arc<E>| {
            // An error means the subscription is gone and its listener about to be removed.
            let _ = sender.send(event);
            std::future::ready(())
        };
        let erased = Erased::new::<E, _>(listener);
        let listener_name = format!("subscribe::<{}>", std::any::type_name::<E>());
        let id = self.register(
            pattern,
            &listener_name,
            location,
            ListenerKind::Added,
            erased,
            Policy::new(),
            Reach::Local,
        )?;
        Ok(Subscription::new(receiver, pattern, self.downgrade(), id))
    }

    /// The id of a listener that was added, or, for the methods that do not fail, a logged
    /// error and an id that belongs to no listener.
    fn id_or_log(
        &self,
        event_name: &str,
        added: Result<ListenerId, AddListenerError>,
    ) -> ListenerId {
        added.unwrap_or_else(|error| {
            tracing::error!(event = event_name, %error, "listener not added");
            self.next_id()
        })
    }

    pub(crate) fn downgrade(&self) -> WeakBus {
        WeakBus(Arc::downgrade(&self.shared))
    }

    /// The listeners registered for `event_name`, in registration order, with their names,
    /// types and source locations.
    pub fn listeners(&self, event_name: &str) -> Vec<ListenerInfo> {
        let registry = self.shared.registry.load();
        registry.slot(event_name).map_or_else(Vec::new, |slot| {
            slot.entries
                .iter()
                .map(|entry| entry.info.clone())
                .collect()
        })
    }

    /// Every event name that has at least one listener, sorted.
    pub fn event_names(&self) -> Vec<String> {
        self.shared.registry.load().event_names()
    }

    /// Hands `event` to every listener of `event_name` and returns without waiting for them.
    ///
    /// Listeners run concurrently with each other and with the emitter; `emit` never waits on a
    /// listener's `.await`. In the default [`Dispatch::InlineFirst`] mode each delivery is
    /// polled once before `emit` returns, and continues as its own Tokio task if it has to wait;
    /// in [`Dispatch::Spawn`] mode every delivery is a task. Drop the returned [`Emission`] to
    /// fire and forget, or `.await` it for a [`DeliveryReport`](crate::DeliveryReport).
    ///
    /// An event nobody listens to is dropped quietly (logged at `debug`).
    ///
    /// # Errors
    ///
    /// `emit` does not fail and does not panic. What [`try_emit`](EventBus::try_emit) would
    /// return as an error is logged instead, and every listener that could not take the event
    /// is counted as failed in the report: listeners of another type than `E` are skipped (the
    /// others still get the event); with no runtime, or after shutdown, no listener gets it.
    pub fn emit<E>(&self, event_name: &str, event: E) -> Emission
    where
        E: Send + Sync + 'static,
    {
        match self.dispatch(event_name, event, Strictness::Lenient) {
            Ok(emission) => emission,
            // Lenient dispatch turns every error into failed deliveries.
            Err(refusal) => {
                tracing::error!(error = %refusal.error, "emit failed");
                Outcomes::new(Arc::from(event_name), 0).into_emission()
            }
        }
    }

    /// Like [`emit`](EventBus::emit), but when the bus is full (see
    /// [`max_in_flight`](EventBusBuilder::max_in_flight)) waits for room instead of shedding
    /// the event. Without a limit it never waits.
    ///
    /// The returned [`Emission`] is the same as `emit`'s: drop it, or await it for the report.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bus = bus::EventBus::builder().max_in_flight(1).build();
    /// bus.add_listener("tick", |_: Arc<u32>| async { tokio::task::yield_now().await });
    /// for n in 0..10_u32 {
    ///     // Waits until the previous delivery is done: nothing is shed.
    ///     bus.emit_async("tick", n).await;
    /// }
    /// bus.drain().await;
    /// # }
    /// ```
    ///
    /// An emit that needs more places than the limit itself (more listeners than
    /// `max_in_flight`) could never fit: it is shed as by `emit`.
    ///
    /// A listener holds its place while it runs, so a listener that awaits `emit_async` on its
    /// own bounded bus can wait forever once every place is held by listeners doing the same.
    /// Inside listeners, prefer `try_emit` (and handle [`EmitError::Full`]) or `emit`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves drops the event undelivered.
    pub async fn emit_async<E>(&self, event_name: &str, event: E) -> Emission
    where
        E: Send + Sync + 'static,
    {
        let mut event = event;
        loop {
            let needed = match self.dispatch(event_name, event, Strictness::WaitForRoom) {
                Ok(emission) => return emission,
                Err(refusal) => {
                    event = refusal.event;
                    refusal.needed
                }
            };
            let tasks = &self.shared.tasks;
            let limit = tasks.limit().unwrap_or(usize::MAX);
            tasks
                .room(|| tasks.in_flight().saturating_add(needed) <= limit)
                .await;
        }
    }

    /// Emits `event` under its type's [`Event::NAME`]: [`emit`](EventBus::emit) with the name
    /// taken from the type, so the two cannot disagree.
    ///
    /// ```
    /// #[derive(Debug, bus::Event)]
    /// #[event(name = "user.created")]
    /// struct UserCreated { name: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bus = bus::EventBus::new();
    /// let created = bus.wait_for::<UserCreated>("user.created");
    /// bus.publish(UserCreated { name: "Ada".into() });
    /// assert_eq!(created.await.unwrap().name, "Ada");
    /// # }
    /// ```
    pub fn publish<E: Event>(&self, event: E) -> Emission {
        self.emit(E::NAME, event)
    }

    /// Like [`emit`](EventBus::emit), but checks everything that can be known up front and
    /// delivers nothing when a check fails.
    ///
    /// # Errors
    ///
    /// - [`EmitError::InvalidName`]: `event_name` breaks the naming rules.
    /// - [`EmitError::Closed`]: the bus was shut down.
    /// - [`EmitError::NoRuntime`]: no Tokio runtime runs on this thread.
    /// - [`EmitError::TypeMismatch`]: a listener of `event_name` takes another type than `E`.
    pub fn try_emit<E>(&self, event_name: &str, event: E) -> Result<Emission, EmitError>
    where
        E: Send + Sync + 'static,
    {
        self.dispatch(event_name, event, Strictness::Strict)
            .map_err(|refusal| refusal.error)
    }

    fn dispatch<E>(
        &self,
        event_name: &str,
        event: E,
        strictness: Strictness,
    ) -> Result<Emission, Refusal<E>>
    where
        E: Send + Sync + 'static,
    {
        if let Some(remote) = &self.shared.remote
            && let Some(codec) = remote.codec(TypeId::of::<E>())
        {
            return self.dispatch_published(remote, *codec, event_name, event, strictness);
        }
        self.dispatch_local(event_name, event, strictness, None)
    }

    /// An emit of a type that crosses the wire: published to the broker, and delivered here
    /// only to the listeners that stay in process (the distributed ones get it from the
    /// broker, like every other instance).
    fn dispatch_published<E>(
        &self,
        remote: &Remote,
        codec: Codec,
        event_name: &str,
        event: E,
        strictness: Strictness,
    ) -> Result<Emission, Refusal<E>>
    where
        E: Send + Sync + 'static,
    {
        let refused = |error: EmitError, event: E| {
            if strictness == Strictness::Strict {
                return Err(Refusal {
                    error,
                    event,
                    needed: 0,
                });
            }
            tracing::error!(event = event_name, %error, "event not emitted");
            Ok(Outcomes::new(Arc::from(event_name), 0).into_emission())
        };
        if let Err(error) = name::validate(event_name) {
            return refused(EmitError::InvalidName(error), event);
        }
        if self.is_closed() {
            let event_name = event_name.to_owned();
            return refused(EmitError::Closed { event: event_name }, event);
        }
        let Ok(runtime) = Handle::try_current() else {
            let event_name = event_name.to_owned();
            return refused(EmitError::NoRuntime { event: event_name }, event);
        };
        let data = match codec.encode(&event) {
            Ok(data) => data,
            Err(reason) => {
                let error = EmitError::Unencodable {
                    event: event_name.to_owned(),
                    type_name: std::any::type_name::<E>(),
                    reason,
                };
                return refused(error, event);
            }
        };
        let meta = Meta::now();
        let mut emission = self.dispatch_local(event_name, event, strictness, Some(meta))?;
        let wire = remote.wire(event_name, &meta, data);
        emission.published_by(remote.publish(&runtime, &self.shared.tasks, wire, meta.id));
        Ok(emission)
    }

    /// Delivers `event` to the listeners in this process. `published`: the event went to the
    /// broker too, with this envelope; the distributed listeners are skipped.
    fn dispatch_local<E>(
        &self,
        event_name: &str,
        event: E,
        strictness: Strictness,
        published: Option<Meta>,
    ) -> Result<Emission, Refusal<E>>
    where
        E: Send + Sync + 'static,
    {
        let shared = &*self.shared;
        let registry = shared.registry.load();
        // A shutdown that begins after this check still stops every delivery task of this
        // emit from starting (`Tasks::try_start`); deliveries that complete inline finish.
        let closed = shared.tasks.is_closed();
        let exact = registry.exact(event_name);
        // Listeners of wildcard patterns matching the name; collected only when the bus has
        // patterns at all, so a bus without them pays one branch.
        let mut matched: Vec<Arc<Entry>> = Vec::new();
        // Registered names are valid, so only a name without an exact slot needs checking,
        // before it can match any pattern.
        let invalid = match exact {
            Some(_) => None,
            None => name::validate(event_name).err(),
        };
        if invalid.is_none() && registry.has_patterns() {
            registry.for_each_pattern_match(event_name, |entry| matched.push(Arc::clone(entry)));
        }
        let mut exact_entries: &[Arc<Entry>] = exact.map_or(&[], |slot| &slot.entries);
        // What the distributed listeners get from the broker, they do not get here too.
        let local_entries: Vec<Arc<Entry>>;
        if published.is_some() {
            local_entries = exact_entries
                .iter()
                .filter(|entry| !entry.remote)
                .cloned()
                .collect();
            exact_entries = &local_entries;
            matched.retain(|entry| !entry.remote);
        }
        let refuse = |error: EmitError, event: E, needed: usize| {
            Err(Refusal {
                error,
                event,
                needed,
            })
        };
        if let Some(error) = invalid {
            if strictness == Strictness::Strict {
                return refuse(EmitError::InvalidName(error), event, 0);
            }
            tracing::error!(event = event_name, %error, "event not emitted");
            return Ok(Outcomes::new(Arc::from(event_name), 0).into_emission());
        }
        let layers = &registry.layers;
        let name: Arc<str> =
            exact.map_or_else(|| Arc::from(event_name), |slot| Arc::clone(&slot.name));

        // Listeners that take `AnyEvent` take every type.
        let actual = TypeId::of::<E>();
        let any = TypeId::of::<AnyEvent>();
        let takes = |entry: &Entry| {
            let expected = entry.erased.event_type;
            expected == actual || expected == any
        };
        let mismatch = |entry: &Entry| EmitError::TypeMismatch {
            event: event_name.to_owned(),
            listener: entry.info.name().to_owned(),
            expected: entry.info.event_type(),
            actual: std::any::type_name::<E>(),
        };
        // Pattern listeners of another type are passed by, not an error: a pattern may cover
        // names that carry different types.
        // Told to the layers once the emit goes ahead (not on each try of `emit_async`).
        let mut passed_by: Vec<Arc<Entry>> = Vec::new();
        if !matched.is_empty() {
            matched.retain(|entry| {
                let takes_it = takes(entry);
                if !takes_it {
                    passed_by.push(Arc::clone(entry));
                }
                takes_it
            });
        }
        let listeners = exact_entries.len() + matched.len();
        // The clock is read only when something can see the time.
        let clocked = !layers.only_tracing()
            || exact_entries
                .iter()
                .chain(&matched)
                .any(|entry| entry.observes_envelope());
        let meta = match published {
            Some(meta) => meta,
            None if clocked => Meta::now(),
            None => Meta::unclocked(),
        };
        let emit_info = |listeners| EmitInfo {
            name: event_name,
            meta: &meta,
            listeners,
        };
        let tell_passed_by = || {
            let info = emit_info(listeners);
            for entry in &passed_by {
                for layer in layers.iter() {
                    layer.on_mismatch(&info, &entry.info);
                }
            }
        };
        if listeners == 0 {
            tell_passed_by();
            if closed {
                let error = EmitError::Closed {
                    event: event_name.to_owned(),
                };
                if strictness == Strictness::Strict {
                    return refuse(error, event, 0);
                }
                tracing::error!(event = event_name, %error, "event not emitted");
                return Ok(Outcomes::new(name, 0).into_emission());
            }
            if !layers.only_tracing() {
                let info = emit_info(0);
                for layer in layers.iter() {
                    layer.on_emit(&info);
                }
            }
            tracing::debug!(event = event_name, "no listener for this event");
            let mut outcomes = Outcomes::new(name, 0);
            outcomes.set_event_id(meta.id);
            return Ok(outcomes.into_emission());
        }

        let runtime = if closed {
            Err(EmitError::Closed {
                event: event_name.to_owned(),
            })
        } else if dispatch::in_runtime() {
            Ok(())
        } else {
            Err(EmitError::NoRuntime {
                event: event_name.to_owned(),
            })
        };
        if strictness == Strictness::Strict {
            if let Err(error) = &runtime {
                return refuse(error.clone(), event, 0);
            }
            if let Some(entry) = exact_entries.iter().find(|entry| !takes(entry)) {
                return refuse(mismatch(entry), event, 0);
            }
        }

        let mut outcomes = Outcomes::new(Arc::clone(&name), listeners);
        outcomes.set_event_id(meta.id);
        match runtime {
            Ok(()) => {}
            Err(reason) => {
                for entry in exact_entries.iter().chain(&matched) {
                    not_delivered(&mut outcomes, &name, entry, reason.clone());
                }
                return Ok(outcomes.into_emission());
            }
        };
        let mut reserved = None;
        if let Some(limit) = shared.tasks.limit() {
            reserved = shared.tasks.try_reserve(listeners);
            if reserved.is_none() {
                let full = EmitError::Full {
                    event: event_name.to_owned(),
                    limit,
                    listeners,
                };
                let fits_later = listeners <= limit;
                match strictness {
                    Strictness::Strict => return refuse(full, event, listeners),
                    Strictness::WaitForRoom if fits_later => {
                        return refuse(full, event, listeners);
                    }
                    Strictness::WaitForRoom | Strictness::Lenient => {
                        // Shed: counted and logged by the layers, failed in the report.
                        tell_passed_by();
                        let info = emit_info(listeners);
                        for layer in layers.iter() {
                            layer.on_shed(&info);
                        }
                        for entry in exact_entries.iter().chain(&matched) {
                            record_not_delivered(&mut outcomes, &name, entry, full.clone());
                        }
                        return Ok(outcomes.into_emission());
                    }
                }
            }
        }

        tell_passed_by();
        let emit_span = tracing::debug_span!(
            "bus.emit",
            event = event_name,
            event_id = %meta.id,
            causation = tracing::field::Empty,
            listeners = listeners,
        );
        if let Some(causation) = meta.causation {
            emit_span.record("causation", tracing::field::display(causation));
        }
        if !layers.only_tracing() {
            let info = emit_info(listeners);
            let _entered = emit_span.enter();
            for layer in layers.iter() {
                layer.on_emit(&info);
            }
        }
        let context = EmitContext {
            mode: shared.dispatch,
            tasks: &shared.tasks,
            event_name: &name,
            emit_span: &emit_span,
            meta: &meta,
            layers,
            dead_letter: shared.dead_letter.as_ref(),
        };
        let targets = exact_entries.iter().chain(&matched);
        let mismatched = deliver_all(&context, targets, event, reserved, &mut outcomes);
        if !mismatched.is_empty() {
            for entry in mismatched {
                not_delivered(&mut outcomes, &name, &entry, mismatch(&entry));
            }
        }
        Ok(outcomes.into_emission())
    }

    /// Waits until no listener task of this bus is running: every delivery started so far, and
    /// every delivery those start in turn, has finished.
    ///
    /// While emits keep coming, this keeps waiting; it returns at the first moment the bus is
    /// idle.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only stops the waiting.
    pub async fn drain(&self) {
        self.shared.tasks.idle().await;
    }

    /// Stops the bus: refuses new emits ([`EmitError::Closed`]), waits up to `timeout` for the
    /// deliveries in flight, then aborts the ones still running and reports how many it aborted.
    ///
    /// An aborted delivery stops at its next `.await` and is reported as
    /// [`DeliveryError::Aborted`]. A listener that never reaches an `.await` cannot be aborted;
    /// shutdown waits for it. Listeners can still be added and removed after shutdown.
    ///
    /// On a bus with a transport, the distributed listeners stop taking deliveries at once. An
    /// aborted delivery is never acknowledged: it is handed back to the broker (its consumer
    /// group), as are the events a subscription had received and not yet delivered, and
    /// shutdown waits for those hand-backs ([`Transport::flush`](crate::transport::Transport::flush)),
    /// for at most [`HAND_BACK_GRACE`](crate::transport::HAND_BACK_GRACE) past `timeout`, so
    /// that the process may exit as soon as it returns: another instance gets those events at
    /// once rather than after their ack wait.
    ///
    /// # Panics
    ///
    /// When the Tokio runtime was built without its time driver (`enable_time`), as
    /// `tokio::time::timeout` does.
    ///
    /// # Cancel safety
    ///
    /// The bus is closed as soon as this is first polled, whether or not it completes.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let tasks = &self.shared.tasks;
        tasks.close();
        if let Some(remote) = &self.shared.remote {
            // No more deliveries from the broker; the ones running are waited for below, and
            // those cut short stay unsettled, for the broker to deliver again.
            remote.close();
        }
        let in_flight = tasks.in_flight();
        let aborted_before = tasks.aborted();
        tracing::info!(in_flight, ?timeout, "bus shutting down");
        if tokio::time::timeout(timeout, tasks.idle()).await.is_err() {
            tasks.cancel_all();
            tasks.idle().await;
        }
        if let Some(remote) = &self.shared.remote {
            remote.finish(crate::transport::HAND_BACK_GRACE).await;
        }
        let report = ShutdownReport {
            in_flight,
            aborted: tasks.aborted() - aborted_before,
        };
        tracing::info!(in_flight, aborted = report.aborted, "bus shut down");
        report
    }

    /// `true` once [`shutdown`](EventBus::shutdown) has begun.
    pub fn is_closed(&self) -> bool {
        self.shared.tasks.is_closed()
    }

    /// How many deliveries are running right now.
    pub fn in_flight(&self) -> usize {
        self.shared.tasks.in_flight()
    }

    /// Stops the consumers of distributed listeners that are no longer registered.
    fn stop_removed_consumers(&self) {
        if let Some(remote) = &self.shared.remote {
            let registry = self.shared.registry.load();
            remote.stop_removed(|id| registry.contains(id));
        }
    }

    /// Resolves once the subscription of every distributed listener added so far is in place
    /// at the broker: from then on, every event published (by any instance) reaches them.
    /// Resolves at once on a bus without a transport.
    ///
    /// A subscription that fails is retried in the background, every second, until it works;
    /// `ready` reports the first failure it sees.
    ///
    /// # Errors
    ///
    /// The transport's error when a subscription could not be made (broker unreachable,
    /// pattern or group refused), or when a listener was added outside a Tokio runtime.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only stops the waiting.
    pub async fn ready(&self) -> Result<(), Arc<TransportError>> {
        match &self.shared.remote {
            Some(remote) => remote.ready().await,
            None => Ok(()),
        }
    }

    /// The transport's name and this bus's service, on a bus with a transport.
    pub fn distribution(&self) -> Option<(&str, &str)> {
        let remote = self.shared.remote.as_ref()?;
        Some((remote.transport_name(), remote.service()))
    }

    /// Builds the next registry snapshot from the current one and swaps it in.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut Registry) -> R) -> R {
        let _writer = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = Registry::clone(&self.shared.registry.load());
        let result = change(&mut next);
        self.shared.registry.store(Arc::new(next));
        result
    }

    /// The names that listeners of more than one event type share.
    pub(crate) fn type_conflicts(&self) -> Vec<(Arc<str>, Vec<ListenerInfo>)> {
        let registry = self.shared.registry.load();
        registry
            .type_conflicts()
            .into_iter()
            .map(|(name, infos)| (name, infos.into_iter().cloned().collect()))
            .collect()
    }

    fn next_id(&self) -> ListenerId {
        let raw = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        ListenerId::from_raw(NonZeroU64::new(raw).unwrap_or(NonZeroU64::MAX))
    }
}

/// Hands `event` to each of `targets`, in order, with their places under `max_in_flight`
/// (if any) from `reserved`. Every listener but the last gets a clone of the event's `Arc`;
/// the last gets the `Arc` itself; listeners of `AnyEvent` share one `AnyEvent` around a
/// clone. Returns the listeners that turned out to take another type.
fn deliver_all<'a, E>(
    context: &EmitContext<'_>,
    targets: impl Iterator<Item = &'a Arc<Entry>>,
    event: E,
    mut reserved: Option<Reserved<'_>>,
    outcomes: &mut Outcomes,
) -> Vec<Arc<Entry>>
where
    E: Send + Sync + 'static,
{
    let any = TypeId::of::<AnyEvent>();
    let wraps_in_any = TypeId::of::<E>() != any;
    let mut mismatched = Vec::new();
    // What the listeners emit while they are polled here records this event as its cause.
    let _handling = Handling::enter(context.meta.id);
    let mut event: Option<ErasedEvent> = Some(Arc::new(event));
    let mut any_event: Option<ErasedEvent> = None;
    let mut targets = targets.peekable();
    while let Some(entry) = targets.next() {
        let this = if wraps_in_any && entry.erased.event_type == any {
            event.clone().map(|payload| {
                Arc::clone(any_event.get_or_insert_with(|| {
                    let envelope = Envelope::new(Arc::clone(context.event_name), *context.meta);
                    Arc::new(AnyEvent::new(envelope, payload, std::any::type_name::<E>()))
                }))
            })
        } else {
            match targets.peek() {
                Some(_) => event.clone(),
                None => event.take(),
            }
        };
        let Some(this) = this else { continue };
        let dispatcher = Dispatcher {
            emit: context,
            entry,
            outcomes: &mut *outcomes,
            reservation: reserved.as_mut().and_then(Reserved::take),
        };
        if !entry.erased.listener.deliver(this, dispatcher) {
            mismatched.push(Arc::clone(entry));
        }
    }
    mismatched
}

/// Records and logs that `entry` could not take the event.
fn not_delivered(outcomes: &mut Outcomes, event: &Arc<str>, entry: &Entry, reason: EmitError) {
    tracing::error!(
        event = %event, listener = %entry.info.name(), error = %reason,
        "event not delivered"
    );
    record_not_delivered(outcomes, event, entry, reason);
}

/// Records that `entry` could not take the event, for a reason logged elsewhere.
fn record_not_delivered(
    outcomes: &mut Outcomes,
    event: &Arc<str>,
    entry: &Entry,
    reason: EmitError,
) {
    outcomes.record(Err(DeliveryError::NotDelivered {
        event: Arc::clone(event),
        listener: Arc::clone(&entry.info.name),
        listener_id: entry.info.id(),
        reason,
    }));
}

/// Whether dispatch reports problems as errors (`try_emit`) or as failed deliveries (`emit`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    Strict,
    Lenient,
    /// Lenient, except that a full bus hands the event back to wait for room (`emit_async`).
    WaitForRoom,
}

/// An emit that delivered nothing, with its event handed back.
struct Refusal<E> {
    error: EmitError,
    event: E,
    /// How many places under `max_in_flight` the emit needs.
    needed: usize,
}
