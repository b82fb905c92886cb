//! The consumer side of deduplication: the event ids a group (or a subscription outside any
//! group) acknowledged recently, so that a second entry with one of them is dropped.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// The ids acknowledged within a window, per group label, at most `capacity` of them (the
/// oldest are forgotten first).
#[derive(Debug)]
pub(crate) struct AckedIds {
    window: Duration,
    capacity: usize,
    /// `(group label, event id)`.
    known: HashSet<(String, String)>,
    /// The same keys in acknowledgement order, with the time each expires.
    order: VecDeque<(Instant, (String, String))>,
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

    /// Records that `group` acknowledged event `id`.
    pub(crate) fn insert(&mut self, group: &str, id: &str) {
        if self.off() {
            return;
        }
        let now = Instant::now();
        let key = (group.to_owned(), id.to_owned());
        if self.known.insert(key.clone()) {
            self.order.push_back((now + self.window, key));
        }
        self.expire(now);
    }

    /// Whether `group` acknowledged event `id` within the window.
    pub(crate) fn contains(&mut self, group: &str, id: &str) -> bool {
        if self.off() {
            return false;
        }
        self.expire(Instant::now());
        self.known.contains(&(group.to_owned(), id.to_owned()))
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
        acked.insert("g", "1");
        assert!(acked.contains("g", "1"));
        assert!(!acked.contains("h", "1"));
        acked.insert("g", "2");
        acked.insert("g", "3");
        assert_eq!(acked.len(), 2);
        assert!(!acked.contains("g", "1"), "the oldest is forgotten first");
        assert!(acked.contains("g", "3"));
    }

    #[test]
    fn a_zero_window_is_off() {
        let mut acked = AckedIds::new(Duration::ZERO, 10);
        acked.insert("g", "1");
        assert!(!acked.contains("g", "1"));
    }

    #[tokio::test(start_paused = true)]
    async fn ids_expire_after_the_window() {
        let mut acked = AckedIds::new(Duration::from_secs(1), 10);
        acked.insert("g", "1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!acked.contains("g", "1"));
        assert_eq!(acked.len(), 0);
    }
}
