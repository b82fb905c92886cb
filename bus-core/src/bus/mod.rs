//! The event bus handle, [`EventBus`]: its docs and short bodies over the parts beside it:
//! the builder (`builder`), what an emit does (`emit`), registration (`register`), the
//! listeners the bus makes for itself (`once`, `wait`, `stream`), and the `#[bus::listener]`
//! fns (`annotated`, `global`).

mod annotated;
mod builder;
mod emit;
mod global;
mod once;
mod register;
mod stream;
mod wait;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

pub use self::annotated::{Registration, StaticListener, registration};
pub use self::builder::EventBusBuilder;
use self::emit::Strictness;
pub use self::global::{emit, emit_event, global, install_global, try_emit};
pub use self::register::ListenerBuilder;
pub use self::stream::{EventStream, MAX_CAPACITY};
pub use self::wait::WaitFor;
use crate::delivery::{Dispatch, Emission, Engine, EngineRef, Listener, Outcomes, Snapshot};
use crate::error::{AddListenerError, EmitError, TransportError, TryEmitError};
use crate::event::Event;
use crate::id::ListenerId;
use crate::info::ListenerInfo;
use crate::layer::Layer;
use crate::remote::Remote;

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

/// What the clones of one bus share.
struct Shared {
    /// What its deliveries need: the snapshot of listeners and layers, the task accounting,
    /// the dispatch mode, the dead-letter hook. Shared with the consumers of its distributed
    /// listeners.
    engine: Engine,
    /// Serialises writers of the snapshot, so two concurrent adds cannot lose one another.
    writer: Mutex<()>,
    next_id: AtomicU64,
    /// The broker side, on a bus with a transport.
    remote: Option<Remote>,
}

impl AsRef<Engine> for Shared {
    fn as_ref(&self) -> &Engine {
        &self.engine
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
        f.debug_struct("EventBus")
            .field("event_names", &self.event_names())
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

    /// A new bus holding every `#[bus::listener]` fn linked into this binary, in a stable order
    /// (by event name, then fn path).
    ///
    /// [`global`](crate::global) is built this way. Tests use it for a bus of their own with
    /// the annotated listeners, so that they do not share state through the global one.
    ///
    /// Listeners live in a crate that the binary links; a dependency that is never named in code
    /// is not linked (see the crate docs, "Listeners in other crates"). Names that listeners of
    /// different event types share are logged as errors here.
    pub fn with_annotated_listeners() -> Self {
        EventBus::builder().annotated_listeners().build()
    }

    /// How this bus runs its listeners.
    pub fn dispatch_mode(&self) -> Dispatch {
        self.shared.engine.mode
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
    /// Takes effect for the emits that start after it returns. For a [`Policy`](crate::Policy),
    /// a listener for the next event only, or an error instead of a log, use
    /// [`on`](EventBus::on).
    ///
    /// # Errors
    ///
    /// This method does not fail. When `event_name` is not a valid name the listener is not
    /// registered, the error is logged, and the returned id belongs to no listener.
    /// [`on(..).try_add()`](ListenerBuilder::try_add) returns the error instead.
    #[track_caller]
    pub fn add_listener<E, L, Args>(&self, event_name: &str, listener: L) -> ListenerId
    where
        E: Send + Sync + 'static,
        L: Listener<E, Args>,
        Args: 'static,
    {
        self.on(event_name, listener).add()
    }

    /// A listener to add under `event_name` (a name or a pattern, as in
    /// [`add_listener`](EventBus::add_listener)), with more say in how: give it a delivery
    /// [`Policy`](crate::Policy), make it a listener for the next event only
    /// ([`once`](ListenerBuilder::once)), then [`add`](ListenerBuilder::add) it, or
    /// [`try_add`](ListenerBuilder::try_add) it to get an invalid name as an error.
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
    /// bus.on("order.placed", charge).policy(policy).add();
    /// assert_eq!(bus.listeners("order.placed")[0].policy(), policy);
    /// bus.on("session.started", |_: Arc<u32>| async {}).once().try_add().unwrap();
    /// # }
    /// ```
    #[track_caller]
    pub fn on<'a, E, L, Args>(
        &'a self,
        event_name: &'a str,
        listener: L,
    ) -> ListenerBuilder<'a, E, L, Args>
    where
        E: Send + Sync + 'static,
        L: Listener<E, Args>,
        Args: 'static,
    {
        ListenerBuilder::new(self, event_name, listener)
    }

    /// Adds a [`Layer`] to this bus: from the next emit on, its hooks run around every emit
    /// and delivery, after the layers already there.
    pub fn layer<L: Layer>(&self, layer: L) {
        let layer: Arc<dyn Layer> = Arc::new(layer);
        self.update(|snapshot| snapshot.layers = snapshot.layers.with(layer));
    }

    /// Removes `listener` from the listeners of `event_name`. The listener is recognised by its
    /// type, as in [`add_listener`](EventBus::add_listener).
    ///
    /// Returns `false` when it was not registered under that name, and for closures that capture
    /// state (they have no identity to find them by: remove those with
    /// [`remove`](EventBus::remove) and the id `add_listener` returned).
    ///
    /// Deliveries already started run to completion; later emits no longer reach it.
    pub fn remove_listener<E, L, Args>(&self, event_name: &str, listener: L) -> bool
    where
        E: Send + Sync + 'static,
        L: Listener<E, Args>,
        Args: 'static,
    {
        self.remove_by_identity(event_name, listener)
    }

    /// Removes the listener with this id. Returns `false` when there is none (already removed,
    /// or never registered).
    pub fn remove(&self, id: ListenerId) -> bool {
        self.remove_by_id(id)
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
    /// The future resolves to [`WaitError::InvalidPattern`](crate::error::WaitError) when
    /// `pattern` is not valid, and to [`WaitError::Closed`](crate::error::WaitError) when the
    /// bus is dropped first.
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
        WaitFor::register(self, pattern, predicate)
    }

    /// The events of type `E` whose names match `pattern`, as a
    /// [`Stream`](tokio_stream::Stream) that holds up to `capacity` unread events.
    ///
    /// Emitters never wait for the reader. When it reads too slowly and `capacity` events are
    /// unread, the oldest is dropped for each new one, and the stream yields `Err(Lagged(n))`
    /// (`n` the exact number dropped) before going on: nothing is lost without the reader being
    /// told. Dropping the stream removes its listener.
    ///
    /// ```
    /// use tokio_stream::StreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bus = bus::EventBus::new();
    /// let mut orders = bus.stream::<u32>("orders.>", 16).unwrap();
    /// bus.emit("orders.eu.created", 7_u32);
    /// assert_eq!(*orders.next().await.unwrap().unwrap(), 7);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`AddListenerError::InvalidName`] for an invalid pattern,
    /// [`AddListenerError::InvalidCapacity`] for a capacity of 0 or above
    /// [`MAX_CAPACITY`](crate::stream::MAX_CAPACITY).
    #[track_caller]
    pub fn stream<E>(
        &self,
        pattern: &str,
        capacity: usize,
    ) -> Result<EventStream<E>, AddListenerError>
    where
        E: Send + Sync + 'static,
    {
        EventStream::register(self, pattern, capacity)
    }

    /// The listeners registered for `event_name`, in registration order, with their names,
    /// types and source locations.
    pub fn listeners(&self, event_name: &str) -> Vec<ListenerInfo> {
        let snapshot = self.shared.engine.snapshot.load();
        snapshot
            .listeners
            .slot(event_name)
            .map_or_else(Vec::new, |slot| {
                slot.entries
                    .iter()
                    .map(|entry| entry.info.clone())
                    .collect()
            })
    }

    /// Every event name that has at least one listener, sorted.
    pub fn event_names(&self) -> Vec<String> {
        self.shared.engine.snapshot.load().listeners.event_names()
    }

    /// Hands `event` to every listener of `event_name` and returns without waiting for them.
    ///
    /// Listeners run concurrently with each other and with the emitter; `emit` never waits on a
    /// listener's `.await`. In the default [`Dispatch::InlineFirst`] mode each delivery is
    /// polled once before `emit` returns, and continues in its listener's lane if it has to
    /// wait; in [`Dispatch::Spawn`] mode every delivery is a task. Drop the returned [`Emission`] to
    /// fire and forget, or `.await` it for a [`DeliveryReport`](crate::DeliveryReport).
    ///
    /// An event nobody listens to is dropped quietly (logged at `debug`). On a bus with a
    /// [transport](EventBusBuilder::transport), an event whose type crosses the wire is
    /// published too, and its distributed listeners (here and in every other instance) get it
    /// from the broker.
    ///
    /// # Errors
    ///
    /// `emit` does not fail and does not panic. What [`try_emit`](EventBus::try_emit) would
    /// return as an error is logged instead, and every listener that could not take the event
    /// is counted as failed in the report: listeners of another type than `E` are skipped (the
    /// others still get the event); with no runtime, or after shutdown, no listener gets it.
    /// An event that a listener of this process would receive from the broker as another type
    /// is not published ([`DeliveryReport::published`](crate::DeliveryReport::published) says
    /// why).
    pub fn emit<E>(&self, event_name: &str, event: E) -> Emission
    where
        E: Send + Sync + 'static,
    {
        match self.emit_with(event_name, event, Strictness::Lenient, None) {
            Ok(emission) => emission,
            // A lenient emit turns every error into failed deliveries.
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
            let needed = match self.emit_with(event_name, event, Strictness::WaitForRoom, None) {
                Ok(emission) => return emission,
                Err(refusal) => {
                    event = refusal.event;
                    refusal.needed
                }
            };
            let tasks = &self.shared.engine.tasks;
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
    /// bus.emit_event(UserCreated { name: "Ada".into() });
    /// assert_eq!(created.await.unwrap().name, "Ada");
    /// # }
    /// ```
    pub fn emit_event<E: Event>(&self, event: E) -> Emission {
        self.emit(E::NAME, event)
    }

    /// Like [`emit`](EventBus::emit), but checks everything that can be known up front and
    /// delivers nothing when a check fails: the event is then given back with the reason.
    ///
    /// # Errors
    ///
    /// A [`TryEmitError`] holding the event and one of:
    ///
    /// - [`EmitError::InvalidName`]: `event_name` breaks the naming rules.
    /// - [`EmitError::Closed`]: the bus was shut down.
    /// - [`EmitError::NoRuntime`]: no Tokio runtime runs on this thread.
    /// - [`EmitError::TypeMismatch`]: a listener of `event_name` takes another type than `E`
    ///   (on a bus with a transport, the listeners that receive it from the broker included).
    /// - [`EmitError::Full`]: the bus holds as many deliveries as its
    ///   [`max_in_flight`](EventBusBuilder::max_in_flight) allows.
    /// - [`EmitError::Unencodable`]: the event crosses the wire, and serde cannot encode it.
    pub fn try_emit<E>(&self, event_name: &str, event: E) -> Result<Emission, TryEmitError<E>>
    where
        E: Send + Sync + 'static,
    {
        self.emit_with(event_name, event, Strictness::Strict, None)
            .map_err(|refusal| TryEmitError::new(refusal.error, refusal.event))
    }

    /// Like [`try_emit`](EventBus::try_emit), for an event that was emitted elsewhere and
    /// kept: `event` is the payload of `wire`, decoded by the caller, and its listeners see
    /// the attributes of `wire` as they see those of an event from a broker: its
    /// [`id`](crate::Envelope::id), [`source`](crate::Envelope::source),
    /// [time](crate::Envelope::emitted_at), [causation](crate::Envelope::causation) (the
    /// `causationid` extension), content type and other extensions. It is emitted under
    /// `wire.ty`.
    ///
    /// For the relays of durable stores (the outbox of `bus-postgres`), which deliver a kept
    /// event to the listeners of this process once its report is in. Like every emit, on a
    /// bus with a transport, an event whose type crosses the wire is published too (as this
    /// bus's, with the kept id).
    ///
    /// # Errors
    ///
    /// As [`try_emit`](EventBus::try_emit), and [`EmitError::Malformed`] when the `time` of
    /// `wire` is not an RFC 3339 timestamp.
    pub fn try_emit_received<E>(
        &self,
        wire: &crate::transport::WireEvent,
        event: E,
    ) -> Result<Emission, TryEmitError<E>>
    where
        E: Send + Sync + 'static,
    {
        let meta = match crate::remote::meta_of(wire) {
            Ok(meta) => meta,
            Err(reason) => {
                let error = EmitError::Malformed {
                    event: wire.ty.clone(),
                    reason,
                };
                return Err(TryEmitError::new(error, event));
            }
        };
        self.emit_with(&wire.ty, event, Strictness::Strict, Some(meta))
            .map_err(|refusal| TryEmitError::new(refusal.error, refusal.event))
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
        self.shared.engine.tasks.idle().await;
    }

    /// Stops the bus: refuses new emits ([`EmitError::Closed`]), waits up to `timeout` for the
    /// deliveries in flight, then aborts the ones still running and reports how many it aborted.
    ///
    /// An aborted delivery stops at its next `.await` and is reported as
    /// [`DeliveryError::Aborted`](crate::error::DeliveryError::Aborted). A listener that never
    /// reaches an `.await` cannot be aborted; shutdown waits for it. Listeners can still be
    /// added and removed after shutdown.
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
        let tasks = &self.shared.engine.tasks;
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
        self.shared.engine.tasks.is_closed()
    }

    /// How many deliveries are running right now.
    pub fn in_flight(&self) -> usize {
        self.shared.engine.tasks.in_flight()
    }

    /// The bus's state for a probe or an operator: open or closed, deliveries in flight and
    /// shed, and on a bus with a transport, whether it is connected and, per distributed
    /// listener, its subscription's state and its group's lag and pending count, read from
    /// the broker now ([`Transport::group_stats`](crate::transport::Transport::group_stats):
    /// one round trip per distributed listener). [`Health::is_healthy`](crate::health::Health::is_healthy)
    /// is the verdict; its `Display` is one line per part.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn health(&self) -> crate::health::Health {
        let tasks = &self.shared.engine.tasks;
        let (transport, consumers) = match &self.shared.remote {
            Some(remote) => {
                let (transport, consumers) = remote.health().await;
                (Some(transport), consumers)
            }
            None => (None, Vec::new()),
        };
        crate::health::Health::new(
            tasks.is_closed(),
            tasks.in_flight(),
            tasks.shed(),
            transport,
            consumers,
        )
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

    /// Builds the next snapshot from the current one and swaps it in.
    ///
    /// The snapshot it replaces is dropped after the writer's lock is released: dropping it
    /// may drop the last reference to a removed listener, and with it user code (a captured
    /// [`EventStream`] or [`WaitFor`] removes its own listener as it drops, which takes the
    /// lock again).
    fn update<R>(&self, change: impl FnOnce(&mut Snapshot) -> R) -> R {
        let (result, replaced) = {
            let _writer = self
                .shared
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let engine = &self.shared.engine;
            let mut next = Snapshot::clone(&engine.snapshot.load());
            let result = change(&mut next);
            (result, engine.snapshot.swap(Arc::new(next)))
        };
        drop(replaced);
        result
    }

    fn next_id(&self) -> ListenerId {
        let raw = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        ListenerId::from_raw(std::num::NonZeroU64::new(raw).unwrap_or(std::num::NonZeroU64::MAX))
    }

    fn downgrade(&self) -> WeakBus {
        WeakBus(Arc::downgrade(&self.shared))
    }

    /// The engine, for a consumer: a weak handle, so that a consumer does not keep its bus
    /// alive.
    fn engine_ref(&self) -> EngineRef {
        let shared: std::sync::Weak<Shared> = Arc::downgrade(&self.shared);
        shared
    }
}

/// A handle that does not keep the bus alive: held by the listeners that remove themselves
/// (`once`, `wait_for`, `stream`), which live in the bus's own registry.
#[derive(Clone)]
struct WeakBus(Weak<Shared>);

impl WeakBus {
    /// The bus, unless it was dropped.
    fn upgrade(&self) -> Option<EventBus> {
        self.0.upgrade().map(|shared| EventBus { shared })
    }
}

/// Removes a listener from its bus when dropped: what `WaitFor` and `EventStream` hold, so
/// that dropping them ends their listener.
struct RemoveOnDrop {
    bus: WeakBus,
    id: ListenerId,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handle_is_send_sync_and_cheap_to_clone() {
        fn send_sync<T: Send + Sync + Clone>() {}
        send_sync::<EventBus>();
        let bus = EventBus::new();
        let clone = bus.clone();
        assert!(Arc::ptr_eq(&bus.shared, &clone.shared));
    }

    /// `try_emit_received`: the listeners see the kept attributes, not new ones.
    #[tokio::test]
    async fn an_event_emitted_as_received_keeps_its_attributes() {
        use crate::Envelope;
        use crate::transport::{CAUSATION, WireEvent};
        use std::time::{SystemTime, UNIX_EPOCH};

        let bus = EventBus::builder().service("billing").build();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        bus.add_listener(
            "order.placed",
            move |order: Arc<u64>, envelope: Envelope| {
                let sender = sender.clone();
                async move { sender.send((*order, envelope)).unwrap() }
            },
        );
        let at: SystemTime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let wire = WireEvent::new("py-order-3", "shop", "order.placed", "42")
            .at(at)
            .content_type("application/json")
            .extension(CAUSATION, "cause-1")
            .extension(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            );
        let report = bus.try_emit_received(&wire, 42_u64).unwrap().await;
        assert_eq!(report.delivered(), 1, "{report:?}");
        let (order, envelope) = receiver.recv().await.unwrap();
        assert_eq!(order, 42);
        assert_eq!(envelope.name(), "order.placed");
        assert_eq!(envelope.id().to_string(), "py-order-3");
        assert_eq!(report.event_id(), Some(envelope.id()));
        assert_eq!(envelope.source(), "shop");
        assert_eq!(envelope.emitted_at(), at);
        let causation = envelope.causation().map(ToString::to_string);
        assert_eq!(causation.as_deref(), Some("cause-1"));
        assert_eq!(
            envelope.extension("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(envelope.content_type(), Some("application/json"));
    }

    #[tokio::test]
    async fn an_event_emitted_as_received_is_checked_as_by_try_emit() {
        use crate::transport::WireEvent;

        let bus = EventBus::new();
        bus.add_listener("order.placed", |_: Arc<u64>| async {});
        let mut wire = WireEvent::new("1", "shop", "order.placed", "42");
        wire.time = Some("yesterday".into());
        let error = bus.try_emit_received(&wire, 42_u64).unwrap_err();
        assert!(
            matches!(error.error(), EmitError::Malformed { event, .. } if event == "order.placed"),
            "{error}"
        );
        assert!(error.to_string().contains("yesterday"), "{error}");
        assert_eq!(error.into_event(), 42);

        let wire = WireEvent::new("1", "shop", "order.placed", "42");
        let error = bus.try_emit_received(&wire, "text").unwrap_err();
        assert!(
            matches!(error.error(), EmitError::TypeMismatch { .. }),
            "{error}"
        );
    }
}
