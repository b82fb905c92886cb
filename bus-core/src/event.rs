//! What every emitted event carries besides its payload: an envelope with a unique id, the emit
//! time and the event that caused it; and [`AnyEvent`], for listeners that take events of any
//! type.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::num::NonZeroU128;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use once_cell::sync::Lazy;

use crate::listener::ErasedEvent;

/// A type bound to one event name, so that the name cannot be wrong where the type is known.
///
/// Derive it with `#[derive(bus::Event)]` and `#[event(name = "user.created")]`; the derive
/// checks the name at compile time. Then [`publish`](crate::publish) takes the name from the
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

/// The unique id of one emitted event.
///
/// 128 bits: a random prefix drawn once per process, then a counter, so ids never repeat
/// within a process and collide across processes only by chance of 2^-64. Displayed as 32
/// hex digits in the 8-4-4-4-12 groups of a UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(NonZeroU128);

impl EventId {
    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        self.0.get()
    }

    /// A fresh id. Each thread takes a block of counter values at a time, so making an id is
    /// a thread-local increment, not a shared atomic per emit.
    pub(crate) fn next() -> EventId {
        const BLOCK: u64 = 1024;
        static PREFIX: Lazy<u64> = Lazy::new(|| fastrand::u64(1..));
        static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        let counter = RANGE.with(|range| {
            let (mut next, mut end) = range.get();
            if next == end {
                next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
                end = next + BLOCK;
            }
            range.set((next + 1, end));
            next
        });
        let raw = (u128::from(*PREFIX) << 64) | u128::from(counter);
        // The prefix is never 0, so neither is the id.
        EventId(NonZeroU128::new(raw).unwrap_or(NonZeroU128::MAX))
    }
}

impl EventId {
    /// The id exactly as [`Display`](fmt::Display) writes it (lowercase hex digits in groups
    /// of 8-4-4-4-12), or `None`. Only that one spelling is read, so two different wire ids
    /// never map to the same local id.
    pub(crate) fn parse(text: &str) -> Option<EventId> {
        let bytes = text.as_bytes();
        let canonical = bytes.len() == 36
            && bytes.iter().enumerate().all(|(at, &byte)| match at {
                8 | 13 | 18 | 23 => byte == b'-',
                _ => matches!(byte, b'0'..=b'9' | b'a'..=b'f'),
            });
        if !canonical {
            return None;
        }
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        u128::from_str_radix(&hex, 16)
            .ok()
            .and_then(NonZeroU128::new)
            .map(EventId)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = format!("{:032x}", self.0.get());
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

/// What the bus knows about one emitted event besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) id: EventId,
    pub(crate) emitted_at: SystemTime,
    pub(crate) causation: Option<EventId>,
}

impl Meta {
    /// The envelope of an event emitted now, on this thread: caused by the event whose
    /// delivery is running here, if any.
    pub(crate) fn now() -> Meta {
        Meta {
            id: EventId::next(),
            emitted_at: SystemTime::now(),
            causation: current_event_id(),
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

/// The envelope of one emitted event: its name, unique id, emit time, and the id of the event
/// whose listener emitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    name: Arc<str>,
    meta: Meta,
}

impl Envelope {
    pub(crate) fn new(name: Arc<str>, meta: Meta) -> Self {
        Envelope { name, meta }
    }

    /// The name the event was emitted under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The event's unique id.
    pub fn id(&self) -> EventId {
        self.meta.id
    }

    /// When it was emitted.
    pub fn emitted_at(&self) -> SystemTime {
        self.meta.emitted_at()
    }

    /// The id of the event being handled where this one was emitted: set when a listener
    /// emits, so chains of events can be followed. `None` for an event emitted outside any
    /// listener.
    pub fn causation(&self) -> Option<EventId> {
        self.meta.causation
    }
}

thread_local! {
    static CURRENT: Cell<Option<EventId>> = const { Cell::new(None) };
}

/// The id of the event whose delivery is running on this thread right now, if any.
///
/// Set by the bus around every poll of a listener's future, so a listener (and whatever it
/// calls, on its own task) sees the event it handles. Code in a task that the listener spawns
/// itself is outside it; pass the id along there. Events emitted while it is set record it as
/// their [causation](Envelope::causation).
pub fn current_event_id() -> Option<EventId> {
    CURRENT.with(Cell::get)
}

/// Marks `id` as the event being handled on this thread while alive; restores the previous
/// one when dropped (deliveries nest when a listener emits inline).
pub(crate) struct Handling(Option<EventId>);

impl Handling {
    pub(crate) fn enter(id: EventId) -> Handling {
        Handling(CURRENT.with(|current| current.replace(Some(id))))
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
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

    /// The event's unique id.
    pub fn id(&self) -> EventId {
        self.envelope.id()
    }

    /// When it was emitted.
    pub fn emitted_at(&self) -> SystemTime {
        self.envelope.emitted_at()
    }

    /// The id of the event whose listener emitted this one, if any.
    pub fn causation(&self) -> Option<EventId> {
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
    fn ids_are_unique_across_threads() {
        let ids: Vec<EventId> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..5_000).map(|_| EventId::next()).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap())
                .collect()
        });
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn ids_display_as_uuids() {
        let id = EventId(NonZeroU128::new(0x0123_4567_89ab_cdef_0011_2233_4455_6677).unwrap());
        assert_eq!(id.to_string(), "01234567-89ab-cdef-0011-223344556677");
    }

    #[test]
    fn ids_parse_only_as_they_display() {
        let id = EventId::next();
        assert_eq!(EventId::parse(&id.to_string()), Some(id));
        let text = "01234567-89ab-cdef-0011-223344556677";
        assert!(EventId::parse(text).is_some());
        for other in [
            // What `u128::from_str_radix` alone would take: a sign, upper case, other dashes.
            "+1234567-89ab-cdef-0011-223344556677",
            "01234567-89AB-cdef-0011-223344556677",
            "0123456789abcdef0011223344556677----",
            "0123456789abcdef0011223344556677",
            "01234567-89ab-cdef-0011-22334455667",
            "00000000-0000-0000-0000-000000000000",
            "01234567-89ab-cdef-0011-2233445566é",
        ] {
            assert_eq!(EventId::parse(other), None, "{other}");
        }
    }

    #[test]
    fn handling_nests_and_restores() {
        assert_eq!(current_event_id(), None);
        let (a, b) = (EventId::next(), EventId::next());
        {
            let _outer = Handling::enter(a);
            assert_eq!(current_event_id(), Some(a));
            assert_eq!(Meta::now().causation, Some(a));
            {
                let _inner = Handling::enter(b);
                assert_eq!(current_event_id(), Some(b));
            }
            assert_eq!(current_event_id(), Some(a));
        }
        assert_eq!(current_event_id(), None);
    }

    #[test]
    fn any_event_downcasts_to_its_type_only() {
        let meta = Meta::now();
        let event = AnyEvent::new(
            Envelope::new(Arc::from("orders.created"), meta),
            Arc::new(7_u32),
            "u32",
        );
        assert_eq!(event.downcast_ref::<u32>(), Some(&7));
        assert_eq!(event.downcast_ref::<u64>(), None);
        assert!(event.is::<u32>());
        assert_eq!(*event.downcast::<u32>().unwrap(), 7);
        assert_eq!(event.name(), "orders.created");
        assert_eq!(event.id(), meta.id);
    }
}
