//! Identities: of an emitted event ([`EventId`]), of a registered listener ([`ListenerId`]), and
//! of the place in the source a listener comes from ([`SourceLocation`]). A leaf: every other
//! module names these, and this one names nothing of the crate.

use std::cell::Cell;
use std::fmt;
use std::num::{NonZeroU64, NonZeroU128};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

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
        static PREFIX: LazyLock<u64> = LazyLock::new(|| fastrand::u64(1..));
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
}
