//! The registry: which listeners are registered under which event name or pattern.
//!
//! It is generic over what a listener is ([`Registered`]): it indexes listeners, and the
//! delivery engine above it decides what they hold. The registry is an immutable snapshot. Writers (add, remove) build a new snapshot and swap it
//! in; `emit` loads the current one without taking any lock a writer holds, so a listener that
//! adds or removes listeners while it runs can never deadlock an emit, and a removal affects the
//! emits that start after it.

use std::any::TypeId;
use std::sync::Arc;

use crate::event::AnyEvent;
use crate::id::ListenerId;
use crate::info::ListenerInfo;
use crate::name::pattern::{Pattern, PatternIndex};
use crate::shared_map::LayeredMap;

/// What the registry needs to know of a listener to index it.
pub(crate) trait Registered {
    /// Its description, with its id and name.
    fn info(&self) -> &ListenerInfo;

    /// `Some` when the listener's identity is its type: adding it again under the same name is
    /// then a no-op.
    fn identity(&self) -> Option<TypeId>;

    /// The event type it takes.
    fn event_type(&self) -> TypeId;

    /// `true` for a listener of [`AnyEvent`], which takes events of every type.
    fn takes_any(&self) -> bool {
        self.event_type() == TypeId::of::<AnyEvent>()
    }
}

/// The listeners registered under one event name or pattern.
pub(crate) struct Slot<T> {
    pub(crate) name: Arc<str>,
    pub(crate) entries: Arc<[Arc<T>]>,
    /// `Some` when `name` has a wildcard (`orders.*`, `orders.>`): its entries are also in the
    /// registry's pattern index, and an emit never looks this slot up by name.
    pub(crate) pattern: Option<Pattern>,
}

// Not derived: a derive would ask `T: Clone`, and only the `Arc`s are cloned.
impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot {
            name: Arc::clone(&self.name),
            entries: Arc::clone(&self.entries),
            pattern: self.pattern.clone(),
        }
    }
}

/// One snapshot of the registry.
///
/// Every part is persistent ([`LayeredMap`], [`PatternIndex`]): cloning a
/// snapshot to change it is O(1) and the change costs amortised O(log n), so adding n listeners
/// one by one stays O(n log n).
pub(crate) struct Registry<T> {
    /// Slots of plain event names, looked up on every emit.
    by_name: LayeredMap<Arc<str>, Slot<T>>,
    /// Slots of wildcard patterns, by pattern text. Kept apart from `by_name` so that an emit's
    /// lookup never walks past thousands of patterns it would not take anyway.
    by_pattern: LayeredMap<Arc<str>, Slot<T>>,
    /// The slot name of every listener, so removing by id does not scan every slot.
    names_by_id: LayeredMap<ListenerId, Arc<str>>,
    /// The listeners of wildcard patterns, found by walking the emitted name's tokens, so an
    /// emit's cost does not grow with the number of patterns that do not match.
    patterns: PatternIndex<Arc<T>>,
}

impl<T> Clone for Registry<T> {
    fn clone(&self) -> Self {
        Registry {
            by_name: self.by_name.clone(),
            by_pattern: self.by_pattern.clone(),
            names_by_id: self.names_by_id.clone(),
            patterns: self.patterns.clone(),
        }
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry {
            by_name: LayeredMap::default(),
            by_pattern: LayeredMap::default(),
            names_by_id: LayeredMap::default(),
            patterns: PatternIndex::default(),
        }
    }
}

impl<T: Registered> Registry<T> {
    /// The slot registered under exactly this name or pattern text.
    pub(crate) fn slot(&self, event: &str) -> Option<&Slot<T>> {
        self.slots_of(event).get(event)
    }

    /// The slot of the listeners registered under exactly the event name `event` (no pattern).
    pub(crate) fn exact(&self, event: &str) -> Option<&Slot<T>> {
        self.by_name.get(event)
    }

    /// The map that holds the slot of `text`: a name or a pattern.
    fn slots_of(&self, text: &str) -> &LayeredMap<Arc<str>, Slot<T>> {
        if is_pattern_text(text) {
            &self.by_pattern
        } else {
            &self.by_name
        }
    }

    /// Every slot, names first.
    fn slots(&self) -> impl Iterator<Item = &Slot<T>> {
        self.by_name.values().chain(self.by_pattern.values())
    }

    /// Whether any listener is registered under a wildcard pattern.
    pub(crate) fn has_patterns(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Calls `f` with every listener whose wildcard pattern matches the event name `event`.
    pub(crate) fn for_each_pattern_match(&self, event: &str, f: impl FnMut(&Arc<T>)) {
        self.patterns.for_each_match(event, f);
    }

    /// Every name with at least one listener, sorted.
    pub(crate) fn event_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.slots().map(|slot| slot.name.to_string()).collect();
        names.sort();
        names
    }

    /// The listener of `pattern` whose identity is `identity`, if one is registered: adding
    /// the same listener again finds it instead.
    pub(crate) fn find(&self, pattern: &Pattern, identity: Option<TypeId>) -> Option<ListenerId> {
        let identity = identity?;
        self.slot(pattern.as_str())?
            .entries
            .iter()
            .find(|entry| entry.identity() == Some(identity))
            .map(|entry| entry.info().id())
    }

    /// Adds `entry` under `pattern`, after the listeners there.
    pub(crate) fn add(&mut self, pattern: &Pattern, entry: T) {
        let name: Arc<str> = Arc::from(pattern.as_str());
        let id = entry.info().id();
        let slots = if pattern.is_literal() {
            &mut self.by_name
        } else {
            &mut self.by_pattern
        };
        let mut slot = slots.get(&name).cloned().unwrap_or_else(|| Slot {
            name: Arc::clone(&name),
            entries: Arc::new([]),
            pattern: (!pattern.is_literal()).then(|| pattern.clone()),
        });
        let entry = Arc::new(entry);
        if let Some(pattern) = &slot.pattern {
            self.patterns.insert(pattern, Arc::clone(&entry));
        }
        let mut entries = slot.entries.to_vec();
        entries.push(entry);
        slot.entries = entries.into();
        slots.insert(Arc::clone(&name), slot);
        self.names_by_id.insert(id, name);
    }

    /// Removes the listener of `event` whose identity is `identity`.
    pub(crate) fn remove_identity(&mut self, event: &str, identity: TypeId) -> bool {
        self.remove_from_slot(event, |entry| entry.identity() == Some(identity))
    }

    /// `true` while the listener with this id is registered.
    pub(crate) fn contains(&self, id: ListenerId) -> bool {
        self.names_by_id.get(&id).is_some()
    }

    /// The entry of the listener with this id.
    pub(crate) fn entry(&self, id: ListenerId) -> Option<&Arc<T>> {
        let name = self.names_by_id.get(&id)?;
        self.slot(name)?
            .entries
            .iter()
            .find(|entry| entry.info().id() == id)
    }

    /// Removes the listener with this id, whatever its event.
    pub(crate) fn remove_id(&mut self, id: ListenerId) -> bool {
        let Some(name) = self.names_by_id.get(&id).cloned() else {
            return false;
        };
        self.remove_from_slot(&name, |entry| entry.info().id() == id)
    }

    /// Removes the first listener of slot `name` that `matches` selects.
    fn remove_from_slot(&mut self, name: &str, matches: impl Fn(&T) -> bool) -> bool {
        let Some(at) = self
            .slot(name)
            .and_then(|slot| slot.entries.iter().position(|entry| matches(entry)))
        else {
            return false;
        };
        // Not `slots_of`: `self.patterns` is changed below while `slots` is borrowed.
        let slots = if is_pattern_text(name) {
            &mut self.by_pattern
        } else {
            &mut self.by_name
        };
        let mut slot = slots.get(name).cloned().expect("the slot was just found");
        let mut entries = slot.entries.to_vec();
        let removed = entries.remove(at);
        if let Some(pattern) = &slot.pattern {
            self.patterns
                .remove(pattern, |entry| Arc::ptr_eq(entry, &removed));
        }
        if entries.is_empty() {
            slots.remove(name);
        } else {
            slot.entries = entries.into();
            slots.insert(Arc::clone(&slot.name), slot);
        }
        self.names_by_id.remove(&removed.info().id());
        true
    }

    /// The names whose listeners take more than one event type, with those types, sorted.
    pub(crate) fn type_conflicts(&self) -> Vec<(Arc<str>, Vec<&ListenerInfo>)> {
        let mut conflicts: Vec<_> = self
            .slots()
            .filter(|slot| {
                // `AnyEvent` listeners take every type: they conflict with none.
                let mut typed = slot.entries.iter().filter(|e| !e.takes_any());
                let first = typed.next().map(|e| e.event_type());
                typed.any(|e| Some(e.event_type()) != first)
            })
            .map(|slot| {
                let infos = slot.entries.iter().map(|e| e.info()).collect();
                (Arc::clone(&slot.name), infos)
            })
            .collect();
        conflicts.sort_by(|a, b| a.0.cmp(&b.0));
        conflicts
    }
}

/// Whether `text`, a registered name or pattern, is a wildcard pattern. Wildcards are never
/// part of a valid name, and a pattern that is not literal always has one.
fn is_pattern_text(text: &str) -> bool {
    text.contains(['*', '>'])
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::id::SourceLocation;
    use crate::info::ListenerKind;
    use crate::policy::Policy;

    /// A listener as the registry sees it, with nothing to run.
    struct Fake {
        info: ListenerInfo,
        identity: Option<TypeId>,
        event_type: TypeId,
    }

    impl Registered for Fake {
        fn info(&self) -> &ListenerInfo {
            &self.info
        }
        fn identity(&self) -> Option<TypeId> {
            self.identity
        }
        fn event_type(&self) -> TypeId {
            self.event_type
        }
    }

    struct First;
    struct Second;

    /// Adds a listener of event type `E` and identity `I` (`()` for none), unless one with
    /// that identity is there already; returns its id and whether it is new.
    fn add<E: 'static, I: 'static>(
        registry: &mut Registry<Fake>,
        event: &str,
        next: &mut u64,
    ) -> (ListenerId, bool) {
        let pattern = Pattern::parse(event).expect("test patterns are valid");
        let identity = (TypeId::of::<I>() != TypeId::of::<()>()).then(TypeId::of::<I>);
        if let Some(id) = registry.find(&pattern, identity) {
            return (id, false);
        }
        *next += 1;
        let id = ListenerId::from_raw(NonZeroU64::new(*next).unwrap());
        let info = ListenerInfo {
            id,
            name: Arc::from("test"),
            event_type: std::any::type_name::<E>(),
            location: SourceLocation::new(file!(), line!(), column!()),
            kind: ListenerKind::Added,
            policy: Policy::new(),
            distributed: false,
            group: None,
        };
        let fake = Fake {
            info,
            identity,
            event_type: TypeId::of::<E>(),
        };
        registry.add(&pattern, fake);
        (id, true)
    }

    #[test]
    fn same_identity_twice_is_one_listener() {
        let mut registry = Registry::default();
        let mut next = 0;
        let (a, new) = add::<u8, First>(&mut registry, "e", &mut next);
        assert!(new);
        let (b, new) = add::<u8, First>(&mut registry, "e", &mut next);
        assert!(!new, "the second add finds the first");
        assert_eq!(a, b);
        assert_eq!(registry.slot("e").unwrap().entries.len(), 1);
        // The same identity under another name is another registration.
        assert!(add::<u8, First>(&mut registry, "f", &mut next).1);
        // No identity: every add is new.
        assert!(add::<u8, ()>(&mut registry, "e", &mut next).1);
        assert!(add::<u8, ()>(&mut registry, "e", &mut next).1);
        assert_eq!(registry.slot("e").unwrap().entries.len(), 3);
    }

    #[test]
    fn remove_by_identity_and_by_id() {
        let mut registry = Registry::default();
        let mut next = 0;
        add::<u8, First>(&mut registry, "e", &mut next);
        let (id, _) = add::<u8, Second>(&mut registry, "e", &mut next);
        assert!(!registry.remove_identity("e", TypeId::of::<u8>()));
        assert!(!registry.remove_identity("other", TypeId::of::<First>()));
        assert!(registry.remove_identity("e", TypeId::of::<First>()));
        assert!(!registry.remove_identity("e", TypeId::of::<First>()));
        assert!(registry.contains(id));
        assert!(registry.remove_id(id));
        assert!(!registry.remove_id(id));
        assert!(!registry.contains(id));
        assert!(registry.slot("e").is_none(), "an empty slot is dropped");
    }

    #[test]
    fn snapshots_are_independent() {
        let mut registry = Registry::default();
        let mut next = 0;
        add::<u8, First>(&mut registry, "e", &mut next);
        let before = registry.clone();
        add::<u8, Second>(&mut registry, "e", &mut next);
        assert_eq!(before.slot("e").unwrap().entries.len(), 1);
        assert_eq!(registry.slot("e").unwrap().entries.len(), 2);
    }

    #[test]
    fn patterns_are_kept_apart_from_names() {
        let mut registry = Registry::default();
        let mut next = 0;
        add::<u8, First>(&mut registry, "orders.*", &mut next);
        let (id, _) = add::<u8, Second>(&mut registry, "orders.eu", &mut next);
        assert!(
            registry.exact("orders.*").is_none(),
            "a pattern is not a name"
        );
        assert!(registry.slot("orders.*").is_some());
        assert!(registry.exact("orders.eu").is_some());
        assert_eq!(registry.event_names(), ["orders.*", "orders.eu"]);
        let mut matched = 0;
        registry.for_each_pattern_match("orders.eu", |_| matched += 1);
        assert_eq!(matched, 1);
        assert_eq!(registry.entry(id).map(|entry| entry.info().id()), Some(id));

        // Removal by id finds the slot through the id index, and forgets the id.
        assert!(registry.remove_id(id));
        assert!(registry.names_by_id.get(&id).is_none());
        assert!(registry.exact("orders.eu").is_none());
        assert!(registry.remove_identity("orders.*", TypeId::of::<First>()));
        assert!(!registry.has_patterns());
        assert_eq!(registry.names_by_id.values().count(), 0);
        assert!(registry.event_names().is_empty());
    }

    #[test]
    fn type_conflicts_are_found() {
        let mut registry = Registry::default();
        let mut next = 0;
        add::<u8, First>(&mut registry, "ok", &mut next);
        add::<u8, Second>(&mut registry, "ok", &mut next);
        assert!(registry.type_conflicts().is_empty());
        add::<u8, First>(&mut registry, "mixed", &mut next);
        add::<String, Second>(&mut registry, "mixed", &mut next);
        let conflicts = registry.type_conflicts();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(&*conflicts[0].0, "mixed");
        let types: Vec<_> = conflicts[0].1.iter().map(|i| i.event_type()).collect();
        assert_eq!(types, ["u8", "alloc::string::String"]);
    }

    #[test]
    fn any_event_listeners_conflict_with_no_type() {
        let mut registry = Registry::default();
        let mut next = 0;
        add::<u8, First>(&mut registry, "ok", &mut next);
        add::<AnyEvent, Second>(&mut registry, "ok", &mut next);
        assert!(registry.type_conflicts().is_empty());
    }
}
