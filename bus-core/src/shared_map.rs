//! The maps of registry snapshots.
//!
//! Every `add_listener` / `remove_listener` builds a new registry snapshot from the current one
//! (emits read snapshots without a lock). With a plain `HashMap` that copy is O(n), so
//! registering n listeners one by one costs O(n²): 100,000 patterns took minutes. Two answers,
//! for two kinds of reads:
//!
//! - [`SharedMap`], a hash array mapped trie: clone O(1), update O(log n). Its lookups walk a
//!   few nodes, which is fine off the emit path (ids, pattern trie children).
//! - [`LayeredMap`], for the event-name lookup of every emit: a flat hash table shared between
//!   snapshots, plus a small [`SharedMap`] of the changes since that table was built. The
//!   table is rebuilt once the changes reach a sixteenth of it, so an update costs amortised
//!   O(log n); an emit does one flat-table probe, and looks at the changes only for a name the
//!   table does not have or has marked as changed. With a `SharedMap` alone, scenario (d) of
//!   the benchmarks (10,000 names) lost a third of its throughput to the trie's cache misses.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The hasher of every registry map. foldhash: names are short strings and the lookup is on
/// every emit; SipHash was a visible share of an emit's time in the profile. It keeps a random
/// per-map seed.
type Hasher = foldhash::fast::RandomState;

/// A persistent hash map: `clone` is O(1) and shares structure; updates copy only the path to
/// the changed entry.
pub(crate) type SharedMap<K, V> =
    imbl::GenericHashMap<K, V, Hasher, imbl::shared_ptr::DefaultSharedPtr>;

/// Below this many entries, a [`LayeredMap`] folds every change into its flat table at once.
const SMALL: usize = 1024;

/// A map that is O(1) to clone, amortised O(log n) to update, and one probe of a flat hash
/// table to read once its changes are folded in. See the module docs.
///
/// The flat table is also kinder to the memory around it: it is one allocation, rebuilt now
/// and then, where a trie leaves many small nodes between the listeners' own allocations
/// (in scenario (d), an id index kept as a [`SharedMap`] cost 10% of the throughput).
#[derive(Clone)]
pub(crate) struct LayeredMap<K, V> {
    /// The bulk, shared between snapshots.
    base: Arc<HashMap<K, Based<V>, Hasher>>,
    /// Changes since `base` was built: `Some` replaces or adds an entry, `None` removes one.
    recent: SharedMap<K, Option<V>>,
}

/// An entry of the base table.
struct Based<V> {
    value: V,
    /// Set, never cleared, once some snapshot changes this entry: readers then look in their
    /// own `recent` first. A snapshot that has no such change finds nothing there and takes
    /// `value`, so the mark only ever costs a lookup, never a wrong answer.
    changed: AtomicBool,
}

impl<V> Based<V> {
    fn new(value: V) -> Self {
        Based {
            value,
            changed: AtomicBool::new(false),
        }
    }
}

// Written out because the derive would require `K: Default, V: Default`.
impl<K, V> Default for LayeredMap<K, V> {
    fn default() -> Self {
        LayeredMap {
            base: Arc::default(),
            recent: SharedMap::default(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> LayeredMap<K, V> {
    /// The value under `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.base.get(key) {
            // Relaxed is enough: the mark is stored before the snapshot holding the change is
            // published (`ArcSwap` store and load: release, acquire), so every reader of that
            // snapshot sees it. Readers of older snapshots may not, and read `value`, which is
            // what their snapshot holds.
            Some(based) if !based.changed.load(Ordering::Relaxed) => Some(&based.value),
            Some(based) => match self.recent.get(key) {
                Some(change) => change.as_ref(),
                None => Some(&based.value),
            },
            None if self.recent.is_empty() => None,
            None => self.recent.get(key).and_then(Option::as_ref),
        }
    }

    /// Puts `value` under `key`, replacing what was there.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.change(key, Some(value));
    }

    /// Removes the entry under `key`, if any.
    pub(crate) fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.base.get_key_value(key) {
            // The base still has it: the removal must be recorded to hide it.
            Some((key, _)) => {
                let key = key.clone();
                self.change(key, None);
            }
            None => {
                self.recent.remove(key);
            }
        }
    }

    /// Every entry, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.values_by_key().map(|(_, value)| value)
    }

    /// Records a change, and folds the changes into a new base once they reach a sixteenth of
    /// it: amortised, each change copies O(1) entries. A base of fewer than 1,024 entries is
    /// rebuilt at every change (a few microseconds), so a small bus, the usual case, always
    /// reads from the flat table alone.
    fn change(&mut self, key: K, value: Option<V>) {
        if let Some(based) = self.base.get(&key) {
            based.changed.store(true, Ordering::Relaxed);
        }
        self.recent.insert(key, value);
        if self.base.len() < SMALL || self.recent.len() > self.base.len() / 16 {
            let mut base: HashMap<K, Based<V>, Hasher> = self
                .values_by_key()
                .map(|(key, value)| (key.clone(), Based::new(value.clone())))
                .collect();
            base.shrink_to_fit();
            self.base = Arc::new(base);
            self.recent = SharedMap::default();
        }
    }

    /// Every entry with its key.
    fn values_by_key(&self) -> impl Iterator<Item = (&K, &V)> {
        let hidden = |key: &K| !self.recent.is_empty() && self.recent.contains_key(key);
        self.base
            .iter()
            .filter(move |(key, _)| !hidden(key))
            .map(|(key, based)| (key, &based.value))
            .chain(
                self.recent
                    .iter()
                    .filter_map(|(key, change)| Some((key, change.as_ref()?))),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => any::<u8>().prop_map(Op::Remove),
            1 => Just(Op::Snapshot),
        ]
    }

    proptest! {
        /// Agrees with a `BTreeMap` through enough changes to be folded several times, and
        /// snapshots taken along the way keep their contents.
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec(op(), 0..600)) {
            let mut map = LayeredMap::default();
            let mut model = BTreeMap::new();
            let mut snapshots = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        map.insert(Arc::from(k.to_string()), v);
                        model.insert(k.to_string(), v);
                    }
                    Op::Remove(k) => {
                        map.remove(&k.to_string());
                        model.remove(&k.to_string());
                    }
                    Op::Snapshot => snapshots.push((map.clone(), model.clone())),
                }
                prop_assert_eq!(map.values().count(), model.len());
            }
            snapshots.push((map, model));
            for (map, model) in snapshots {
                for k in 0..=u8::MAX {
                    prop_assert_eq!(map.get(&k.to_string()), model.get(&k.to_string()));
                }
                let mut values: Vec<u32> = map.values().copied().collect();
                let mut expected: Vec<u32> = model.values().copied().collect();
                values.sort_unstable();
                expected.sort_unstable();
                prop_assert_eq!(values, expected);
            }
        }
    }

    #[test]
    fn changes_are_folded_into_the_base() {
        let mut map = LayeredMap::default();
        for i in 0..1000_u32 {
            map.insert(Arc::from(i.to_string()), i);
        }
        // Small: every change is in the flat table.
        assert!(map.recent.is_empty());
        assert_eq!(map.base.len(), 1000);
        for i in 1000..5000_u32 {
            map.insert(Arc::from(i.to_string()), i);
        }
        assert!(map.recent.len() <= map.base.len() / 16);
        assert_eq!(map.values().count(), 5000);
        assert_eq!(map.get("4999"), Some(&4999));
    }
}
