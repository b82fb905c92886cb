//! The consumer side of deduplication: the events (source and id) a group (or a subscription
//! outside any group) acknowledged recently, so that a second entry of one of them is dropped.
//! An id alone is not an event: two sources may use one id for two events.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// `(group label, event source, event id)`: three strings, so no two keys are one. Shared by
/// the set and the queue of [`AckedIds`], so stored once.
type Key = Arc<(String, String, String)>;

/// The events acknowledged within a window, by source and id, per group label, at most
/// `capacity` of them (the oldest are forgotten first).
#[derive(Debug)]
pub(crate) struct AckedIds {
    window: Duration,
    capacity: usize,
    known: HashSet<Key>,
    /// The same keys in acknowledgement order, with the time each expires.
    order: VecDeque<(Instant, Key)>,
}

impl AckedIds {
    pub(crate) fn new(window: Duration, capacity: usize) -> AckedIds {
        AckedIds {
            window,
            capacity,
            known: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the cache is off (a zero window or capacity).
    fn off(&self) -> bool {
        self.window.is_zero() || self.capacity == 0
    }

    fn expire(&mut self, now: Instant) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now && self.order.len() <= self.capacity {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.known.remove(&key);
            }
        }
    }

    /// Records that `group` acknowledged the event `id` of `source`.
    pub(crate) fn insert(&mut self, group: &str, source: &str, id: &str) {
        if self.off() {
            return;
        }
        let now = Instant::now();
        let key = Arc::new((group.to_owned(), source.to_owned(), id.to_owned()));
        if self.known.insert(Arc::clone(&key)) {
            self.order.push_back((now + self.window, key));
        }
        self.expire(now);
    }

    /// Whether `group` acknowledged the event `id` of `source` within the window.
    pub(crate) fn contains(&mut self, group: &str, source: &str, id: &str) -> bool {
        if self.off() {
            return false;
        }
        self.expire(Instant::now());
        let key = (group.to_owned(), source.to_owned(), id.to_owned());
        self.known.contains(&key)
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_group_within_capacity() {
        let mut acked = AckedIds::new(Duration::from_secs(60), 2);
        acked.insert("g", "s", "1");
        assert!(acked.contains("g", "s", "1"));
        assert!(!acked.contains("h", "s", "1"));
        acked.insert("g", "s", "2");
        acked.insert("g", "s", "3");
        assert_eq!(acked.len(), 2);
        assert!(
            !acked.contains("g", "s", "1"),
            "the oldest is forgotten first"
        );
        assert!(acked.contains("g", "s", "3"));
    }

    #[test]
    fn one_id_from_two_sources_is_two_events() {
        let mut acked = AckedIds::new(Duration::from_secs(60), 10);
        acked.insert("g", "shop", "1");
        assert!(acked.contains("g", "shop", "1"));
        assert!(
            !acked.contains("g", "billing", "1"),
            "another source's event 1"
        );
        // No pair of strings runs into another: the parts are kept apart.
        acked.insert("g", "a:b", "c");
        assert!(!acked.contains("g", "a", "b:c"));
    }

    #[test]
    fn a_zero_window_is_off() {
        let mut acked = AckedIds::new(Duration::ZERO, 10);
        acked.insert("g", "s", "1");
        assert!(!acked.contains("g", "s", "1"));
    }

    #[tokio::test(start_paused = true)]
    async fn ids_expire_after_the_window() {
        let mut acked = AckedIds::new(Duration::from_secs(1), 10);
        acked.insert("g", "s", "1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!acked.contains("g", "s", "1"));
        assert_eq!(acked.len(), 0);
    }
}
