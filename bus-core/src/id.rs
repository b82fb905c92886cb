//! Identities: of an emitted event ([`EventId`]), of a registered listener ([`ListenerId`]), and
//! of the place in the source a listener comes from ([`SourceLocation`]). A leaf: every other
//! module names these, and this one names nothing of the crate.

use std::cell::Cell;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

/// Identifies one registered listener on one bus.
///
/// Returned by [`EventBus::add_listener`](crate::EventBus::add_listener); pass it to
/// [`EventBus::remove`](crate::EventBus::remove) to remove a closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(NonZeroU64);

impl ListenerId {
    pub(crate) fn from_raw(raw: NonZeroU64) -> Self {
        ListenerId(raw)
    }

    /// The id as a number, unique within one bus.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for ListenerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where a listener comes from in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceLocation {
    file: &'static str,
    line: u32,
    column: u32,
}

impl SourceLocation {
    pub(crate) const fn new(file: &'static str, line: u32, column: u32) -> Self {
        SourceLocation { file, line, column }
    }

    /// The source file.
    pub fn file(&self) -> &'static str {
        self.file
    }

    /// The line, starting at 1.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The column, starting at 1.
    pub fn column(&self) -> u32 {
        self.column
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl From<&'static std::panic::Location<'static>> for SourceLocation {
    fn from(location: &'static std::panic::Location<'static>) -> Self {
        SourceLocation::new(location.file(), location.line(), location.column())
    }
}

/// The id of one emitted event: unique per source (CloudEvents makes `source` + `id` unique).
///
/// An event emitted here gets a fresh id of 128 bits: a random prefix drawn once per process,
/// then a counter, so ids never repeat within a process and collide across processes only by
/// chance of 2^-64; it displays as 32 lowercase hex digits in the 8-4-4-4-12 groups of a UUID.
/// An event that comes from a broker keeps the id it was published with, whatever string
/// another producer chose (`py-order-3`, an upper-case UUID): it displays exactly as it came,
/// so the causation of a reply names an id that is on the wire.
///
/// Cloning an id made here copies two words; a received id shares its text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Repr);

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Repr {
    /// Made by [`EventId::next`], or read back from its canonical spelling.
    Made(MadeId),
    /// Any other id read from the wire, as it came.
    Received(Arc<str>),
}

/// An id a bus made: two words, `Copy`, so that the thread-local of the event being handled
/// ([`current_event_id`](crate::event::current_event_id)) holds it without a clone to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MadeId {
    /// A random prefix, never 0.
    prefix: NonZeroU64,
    counter: u64,
}

/// What an [`EventId`] is, borrowed.
pub(crate) enum IdRef<'a> {
    Made(MadeId),
    Received(&'a Arc<str>),
}

impl EventId {
    /// The id as a number, for an id made by this crate (in this process or another); `None`
    /// for an id another producer chose.
    pub fn as_u128(&self) -> Option<u128> {
        match &self.0 {
            Repr::Made(MadeId { prefix, counter }) => {
                Some((u128::from(prefix.get()) << 64) | u128::from(*counter))
            }
            Repr::Received(_) => None,
        }
    }

    /// What the id is, borrowed.
    #[inline]
    pub(crate) fn as_parts(&self) -> IdRef<'_> {
        match &self.0 {
            Repr::Made(made) => IdRef::Made(*made),
            Repr::Received(text) => IdRef::Received(text),
        }
    }

    /// The id a bus made, `made`.
    #[inline]
    pub(crate) fn made(made: MadeId) -> EventId {
        EventId(Repr::Made(made))
    }

    /// A received id whose text is `text`, as it came.
    #[inline]
    pub(crate) fn received(text: Arc<str>) -> EventId {
        EventId(Repr::Received(text))
    }

    /// A fresh id. Each thread takes a block of counter values at a time, so making an id is
    /// a thread-local increment, not a shared atomic per emit.
    pub(crate) fn next() -> EventId {
        const BLOCK: u64 = 1024;
        static PREFIX: LazyLock<NonZeroU64> =
            LazyLock::new(|| NonZeroU64::new(fastrand::u64(1..)).unwrap_or(NonZeroU64::MIN));
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
        EventId(Repr::Made(MadeId {
            prefix: *PREFIX,
            counter,
        }))
    }

    /// The id of an event read from the wire: `text` as it came. The canonical spelling of an
    /// id this crate makes (lowercase hex digits in groups of 8-4-4-4-12) reads back as that
    /// id, so that an event published here and received here compares equal; nothing else is
    /// rewritten, so two different wire ids never become the same id.
    pub(crate) fn from_wire(text: &str) -> EventId {
        Self::parse_made(text).unwrap_or_else(|| EventId(Repr::Received(Arc::from(text))))
    }

    /// The id exactly as [`Display`](fmt::Display) writes a made one, or `None`.
    fn parse_made(text: &str) -> Option<EventId> {
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
        let raw = u128::from_str_radix(&hex, 16).ok()?;
        // Truncation intended: the high and the low half.
        #[expect(clippy::cast_possible_truncation, reason = "splitting into halves")]
        let (prefix, counter) = ((raw >> 64) as u64, raw as u64);
        Some(EventId(Repr::Made(MadeId {
            prefix: NonZeroU64::new(prefix)?,
            counter,
        })))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Made(MadeId { prefix, counter }) => {
                let hex = format!("{:016x}{counter:016x}", prefix.get());
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
            Repr::Received(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
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
        let id = EventId::from_wire("01234567-89ab-cdef-0011-223344556677");
        assert_eq!(
            id.as_u128(),
            Some(0x0123_4567_89ab_cdef_0011_2233_4455_6677)
        );
        assert_eq!(id.to_string(), "01234567-89ab-cdef-0011-223344556677");
    }

    #[test]
    fn made_ids_read_back_as_themselves() {
        let id = EventId::next();
        assert_eq!(EventId::from_wire(&id.to_string()), id);
        assert!(id.as_u128().is_some());
    }

    #[test]
    fn other_ids_are_kept_as_they_came() {
        for other in [
            "py-order-3",
            "dup-1",
            // What `u128::from_str_radix` alone would take: a sign, upper case, other dashes.
            "+1234567-89ab-cdef-0011-223344556677",
            "01234567-89AB-CDEF-0011-223344556677",
            "0123456789abcdef0011223344556677----",
            "0123456789abcdef0011223344556677",
            "01234567-89ab-cdef-0011-22334455667",
            "00000000-0000-0000-0000-000000000000",
            "01234567-89ab-cdef-0011-2233445566é",
            " 01234567-89ab-cdef-0011-223344556677",
        ] {
            let id = EventId::from_wire(other);
            assert_eq!(id.to_string(), other);
            assert_eq!(id.as_u128(), None, "{other}");
            assert_eq!(id, EventId::from_wire(other));
        }
        // Two spellings of one number are two ids.
        let lower = EventId::from_wire("01234567-89ab-cdef-0011-223344556677");
        let upper = EventId::from_wire("01234567-89AB-CDEF-0011-223344556677");
        assert_ne!(lower, upper);
    }

    #[test]
    fn an_id_is_small() {
        assert!(size_of::<EventId>() <= 24);
        assert_eq!(size_of::<Option<EventId>>(), size_of::<EventId>());
    }
}
