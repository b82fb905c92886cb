//! The map type of registry snapshots.
//!
//! Every `add_listener` / `remove_listener` builds a new registry snapshot from the current one
//! (emits read snapshots without a lock). With a plain `HashMap` that copy is O(n), so
//! registering n listeners one by one costs O(n²): 100,000 patterns took minutes. A hash array
//! mapped trie shares all but the changed path with the previous snapshot, so a clone is O(1)
//! and an update O(log n).

/// A persistent hash map: `clone` is O(1) and shares structure; updates copy only the path to
/// the changed entry. Hashed with foldhash, as the registry's lookups are on every emit.
pub(crate) type SharedMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;
