//! Events: the [`Event`] trait that binds a type to its name, what every emitted event carries
//! besides its payload (an [`Envelope`] with a unique id, the emit time and the event that
//! caused it), [`AnyEvent`] for listeners that take events of any type, and the name rules
//! ([`validate_name`], [`validate_pattern`]).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

pub use crate::id::EventId;
use crate::id::{IdRef, MadeId};
pub use crate::name::{validate_name, validate_pattern};

/// An event as the bus passes it around: shared, with its type erased. Each listener gets its
/// typed `Arc<E>` back by a checked downcast, never by a cast.
pub(crate) type ErasedEvent = Arc<dyn Any + Send + Sync>;

/// A type bound to one event name, so that the name cannot be wrong where the type is known.
///
/// Derive it with `#[derive(bus::Event)]` and `#[event(name = "user.created")]`; the derive
/// checks the name at compile time. Then [`emit_event`](crate::emit_event) takes the name from the
/// type, and `#[bus::listener] async fn f(e: &UserCreated)` listens to it with no name given.
///
/// ```
/// #[derive(Debug)]
/// struct UserCreated { name: String }
///
/// impl bus::Event for UserCreated {
///     const NAME: &'static str = "user.created";
/// }
/// assert_eq!(<UserCreated as bus::Event>::NAME, "user.created");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `bus::Event`: it has no event name",
    label = "`{Self}` does not implement `bus::Event`",
    note = "derive it: `#[derive(bus::Event)] #[event(name = \"...\")]`, or name the event: \
            `#[bus::listener(\"name\")]`, `bus::emit(\"name\", event)`"
)]
pub trait Event: Send + Sync + 'static {
    /// The event name this type is emitted under.
    const NAME: &'static str;
}

/// What the bus knows about one emitted event besides its payload and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) id: EventId,
    pub(crate) emitted_at: SystemTime,
    pub(crate) causation: Option<EventId>,
    /// What an event that came from a broker carried besides: `None` for one emitted here,
    /// so that an emit allocates nothing for it.
    pub(crate) received: Option<Arc<Received>>,
}

/// The attributes of an event from a broker that an event emitted here does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    /// `source`.
    pub(crate) source: Arc<str>,
    /// `datacontenttype`, when the message had one.
    pub(crate) content_type: Option<String>,
    /// The extension attributes, but `causationid` (read into [`Meta::causation`]).
    pub(crate) extensions: BTreeMap<String, String>,
}

impl Meta {
    /// The envelope of an event emitted now, on this thread: caused by the event whose
    /// delivery is running here, if any.
    pub(crate) fn now() -> Meta {
        Meta {
            id: EventId::next(),
            emitted_at: SystemTime::now(),
            causation: current_event_id(),
            received: None,
        }
    }

    /// Like [`now`](Meta::now), without reading the clock: for an emit where nothing can see
    /// the time (no listener taking `AnyEvent` or having a policy, no layer but the tracing
    /// one). Reading the wall clock is a quarter of a plain emit's cost. Its time reads as
    /// `UNIX_EPOCH`, which the observers check in debug builds.
    pub(crate) fn unclocked() -> Meta {
        Meta {
            id: EventId::next(),
            emitted_at: SystemTime::UNIX_EPOCH,
            causation: current_event_id(),
            received: None,
        }
    }

    /// The emit time, for those who can see it.
    pub(crate) fn emitted_at(&self) -> SystemTime {
        debug_assert_ne!(
            self.emitted_at,
            SystemTime::UNIX_EPOCH,
            "the emit time of an event is observed, but the clock was not read for it"
        );
        self.emitted_at
    }
}

/// The envelope of one event: its CloudEvents context attributes (name as `type`, `id`,
/// `source`, `time`, the `causationid` extension, and for an event from a broker its
/// `datacontenttype` and other extensions, such as `traceparent`).
///
/// A listener takes it as a second argument, in process and from a broker alike:
/// `#[bus::listener] async fn f(order: &Order, envelope: &bus::Envelope)`, or a closure
/// `|order: Arc<Order>, envelope: bus::Envelope| async move { .. }`. Listeners that take
/// [`AnyEvent`] find it in the event.
///
/// ```
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = bus::EventBus::builder().service("billing").build();
/// bus.add_listener("orders.placed", |amount: Arc<u64>, envelope: bus::Envelope| async move {
///     assert_eq!(envelope.name(), "orders.placed");
///     assert_eq!(envelope.source(), "billing");
///     println!("{} from {}: {amount}", envelope.id(), envelope.source());
/// });
/// assert_eq!(bus.emit("orders.placed", 42_u64).await.delivered(), 1);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    name: Arc<str>,
    source: Arc<str>,
    meta: Meta,
}

impl Envelope {
    pub(crate) fn new(name: Arc<str>, source: Arc<str>, meta: Meta) -> Self {
        Envelope { name, source, meta }
    }

    /// The name the event was emitted under: its CloudEvents `type`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The event's id: made here for an event emitted here, as it came for an event from a
    /// broker. Unique per [`source`](Envelope::source).
    pub fn id(&self) -> &EventId {
        &self.meta.id
    }

    /// The service that emitted it: its CloudEvents `source`. For an event emitted here, the
    /// bus's [`service`](crate::EventBusBuilder::service) (`"bus"` when not set); for an event
    /// from a broker, its `source` as it came (percent-decoded).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// When it was emitted: its CloudEvents `time`. An event from a broker keeps the instant
    /// it was published with, whatever offset its time was written in (`+02:00` and `Z`
    /// alike); one published without a time reads as the time it was received.
    pub fn emitted_at(&self) -> SystemTime {
        self.meta.emitted_at()
    }

    /// The id of the event being handled where this one was emitted: set when a listener
    /// emits, so chains of events can be followed (the `causationid` extension on the wire).
    /// `None` for an event emitted outside any listener.
    pub fn causation(&self) -> Option<&EventId> {
        self.meta.causation.as_ref()
    }

    /// The payload's media type (`datacontenttype`) of an event from a broker; `None` for an
    /// event emitted here, which never was bytes, and for a message that did not say.
    pub fn content_type(&self) -> Option<&str> {
        self.meta.received.as_ref()?.content_type.as_deref()
    }

    /// The value of the extension attribute `name` (such as `traceparent`) of an event from a
    /// broker. `causationid` is read as [`causation`](Envelope::causation).
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.meta
            .received
            .as_ref()?
            .extensions
            .get(name)
            .map(String::as_str)
    }

    /// Every extension attribute of an event from a broker (but `causationid`), by name.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.meta
            .received
            .iter()
            .flat_map(|received| &received.extensions)
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }
}

/// The event being handled on a thread, as its thread-local holds it: an id a bus made is
/// held whole (two words, `Copy`: entering and leaving a delivery copies it, as every inline
/// delivery does); for a received one, its text is in [`CURRENT_TEXT`].
#[derive(Clone, Copy)]
enum Current {
    None,
    Made(MadeId),
    Received,
}

thread_local! {
    static CURRENT: Cell<Current> = const { Cell::new(Current::None) };
    /// The text of the current event's id when it was received; stale otherwise.
    static CURRENT_TEXT: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// The id of the event whose delivery is running on this thread right now, if any.
///
/// Set by the bus around every poll of a listener's future, so a listener (and whatever it
/// calls) sees the event it handles. Code in a task that the listener spawns
/// itself is outside it; pass the id along there. Events emitted while it is set record it as
/// their [causation](Envelope::causation).
#[inline]
pub fn current_event_id() -> Option<EventId> {
    match CURRENT.get() {
        Current::None => None,
        Current::Made(made) => Some(EventId::made(made)),
        Current::Received => CURRENT_TEXT.with_borrow(|text| text.clone().map(EventId::received)),
    }
}

/// Marks `id` as the event being handled on this thread while alive; restores the previous
/// one when dropped (deliveries nest when a listener emits inline).
pub(crate) struct Handling {
    previous: Current,
    /// The previous text, when entering replaced it: only a received id does.
    previous_text: Option<Option<Arc<str>>>,
}

impl Handling {
    #[inline]
    pub(crate) fn enter(id: &EventId) -> Handling {
        let (current, previous_text) = match id.as_parts() {
            IdRef::Made(made) => (Current::Made(made), None),
            IdRef::Received(text) => (
                Current::Received,
                Some(CURRENT_TEXT.replace(Some(Arc::clone(text)))),
            ),
        };
        Handling {
            previous: CURRENT.replace(current),
            previous_text,
        }
    }
}

impl Drop for Handling {
    #[inline]
    fn drop(&mut self) {
        CURRENT.set(self.previous);
        if let Some(text) = self.previous_text.take() {
            CURRENT_TEXT.set(text);
        }
    }
}

/// An event of any type, with its envelope: what a listener that takes `AnyEvent` receives.
///
/// A pattern listener (`orders.>`) can see events of different payload types. Taking
/// `AnyEvent` it receives them all and looks inside with
/// [`downcast_ref`](AnyEvent::downcast_ref); taking a concrete type it receives only events of
/// that type (the others pass it by and are counted as mismatches).
///
/// ```
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = bus::EventBus::new();
/// bus.add_listener("orders.>", |event: Arc<bus::AnyEvent>| async move {
///     if let Some(amount) = event.downcast_ref::<u64>() {
///         println!("{} ({}): {amount}", event.name(), event.id());
///     }
/// });
/// let report = bus.emit("orders.eu.paid", 42_u64).await;
/// assert_eq!(report.delivered(), 1);
/// # }
/// ```
#[derive(Clone)]
pub struct AnyEvent {
    envelope: Envelope,
    payload: ErasedEvent,
    type_name: &'static str,
}

impl AnyEvent {
    pub(crate) fn new(envelope: Envelope, payload: ErasedEvent, type_name: &'static str) -> Self {
        AnyEvent {
            envelope,
            payload,
            type_name,
        }
    }

    /// The name the event was emitted under.
    pub fn name(&self) -> &str {
        self.envelope.name()
    }

    /// The event's id.
    pub fn id(&self) -> &EventId {
        self.envelope.id()
    }

    /// The service that emitted it.
    pub fn source(&self) -> &str {
        self.envelope.source()
    }

    /// When it was emitted.
    pub fn emitted_at(&self) -> SystemTime {
        self.envelope.emitted_at()
    }

    /// The id of the event whose listener emitted this one, if any.
    pub fn causation(&self) -> Option<&EventId> {
        self.envelope.causation()
    }

    /// The whole envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The name of the payload's type, as `std::any::type_name` gives it.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// `true` when the payload is a `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.payload.is::<T>()
    }

    /// The payload, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.payload.downcast_ref::<T>()
    }

    /// The payload as a shared `Arc<T>`, if it is a `T`.
    pub fn downcast<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        Arc::clone(&self.payload).downcast::<T>().ok()
    }
}

impl fmt::Debug for AnyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyEvent")
            .field("name", &self.name())
            .field("id", &self.id())
            .field("causation", &self.causation())
            .field("type", &self.type_name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handling_nests_and_restores() {
        assert_eq!(current_event_id(), None);
        let (a, b) = (EventId::next(), EventId::from_wire("py-order-3"));
        {
            let _outer = Handling::enter(&a);
            assert_eq!(current_event_id(), Some(a.clone()));
            assert_eq!(Meta::now().causation, Some(a.clone()));
            {
                let _inner = Handling::enter(&b);
                assert_eq!(current_event_id(), Some(b.clone()));
                assert_eq!(current_event_id(), Some(b), "reading it leaves it in place");
            }
            assert_eq!(current_event_id(), Some(a));
        }
        assert_eq!(current_event_id(), None);
    }

    /// Received ids keep their text in a second thread-local: every nesting of made and
    /// received ids restores the right one.
    #[test]
    fn handling_nests_made_and_received_ids_in_any_order() {
        let (r1, m, r2) = (
            EventId::from_wire("r-1"),
            EventId::next(),
            EventId::from_wire("r-2"),
        );
        let _first = Handling::enter(&r1);
        {
            let _made = Handling::enter(&m);
            assert_eq!(current_event_id(), Some(m.clone()));
            {
                let _second = Handling::enter(&r2);
                assert_eq!(current_event_id(), Some(r2.clone()));
            }
            assert_eq!(current_event_id(), Some(m));
        }
        assert_eq!(current_event_id(), Some(r1.clone()));
        {
            let _second = Handling::enter(&r2);
            assert_eq!(current_event_id(), Some(r2));
        }
        assert_eq!(current_event_id(), Some(r1));
    }

    #[test]
    fn any_event_downcasts_to_its_type_only() {
        let meta = Meta::now();
        let event = AnyEvent::new(
            Envelope::new(Arc::from("orders.created"), Arc::from("shop"), meta.clone()),
            Arc::new(7_u32),
            "u32",
        );
        assert_eq!(event.downcast_ref::<u32>(), Some(&7));
        assert_eq!(event.downcast_ref::<u64>(), None);
        assert!(event.is::<u32>());
        assert_eq!(*event.downcast::<u32>().unwrap(), 7);
        assert_eq!(event.name(), "orders.created");
        assert_eq!(event.id(), &meta.id);
        assert_eq!(event.source(), "shop");
    }
}
