//! The registry: which listeners are registered under which event name.
//!
//! The registry is an immutable snapshot. Writers (add, remove) build a new snapshot and swap it
//! in; `emit` loads the current one without taking any lock a writer holds, so a listener that
//! adds or removes listeners while it runs can never deadlock an emit, and a removal affects the
//! emits that start after it.

use std::any::TypeId;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::lane::Lane;
use crate::layer::Layers;
use crate::listener::Erased;
use crate::pattern::{Pattern, PatternIndex};
use crate::policy::Policy;
use crate::shared_map::LayeredMap;

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

/// How a listener was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenerKind {
    /// By `#[bus::listener]`, at link time. The location is the attribute's.
    Annotated,
    /// By [`EventBus::add_listener`](crate::EventBus::add_listener) at run time. The location is
    /// the call's.
    Added,
}

/// A registered listener, as [`EventBus::listeners`](crate::EventBus::listeners) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    id: ListenerId,
    pub(crate) name: Arc<str>,
    event_type: &'static str,
    location: SourceLocation,
    kind: ListenerKind,
    policy: Policy,
    distributed: bool,
    group: Option<Arc<str>>,
}

impl ListenerInfo {
    /// The listener's id on this bus.
    pub fn id(&self) -> ListenerId {
        self.id
    }

    /// The listener's name: its fn path (`my_app::billing::on_user_created`) for fns, its type
    /// name for closures.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the event type the listener takes.
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// Where it was declared (`#[bus::listener]`) or added (`add_listener`).
    pub fn location(&self) -> SourceLocation {
        self.location
    }

    /// How it was registered.
    pub fn kind(&self) -> ListenerKind {
        self.kind
    }

    /// Its delivery policy ([`Policy::new`] unless one was given).
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// `true` when it receives its events from the bus's
    /// [transport](crate::EventBusBuilder::transport), `false` when they stay in this
    /// process: the bus has no transport, the event type is not serde (no
    /// `Serialize + Deserialize`, so it cannot cross the wire), the listener takes
    /// [`AnyEvent`](crate::AnyEvent), or the bus made it (`once`, `wait_for`, `subscribe`).
    pub fn is_distributed(&self) -> bool {
        self.distributed
    }

    /// The consumer group it receives its events in, when it is distributed and grouped
    /// (see [`Group`](crate::Group)).
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

/// A registered listener.
pub(crate) struct Entry {
    pub(crate) info: ListenerInfo,
    pub(crate) erased: Erased,
    /// `Some` when the listener has a policy other than the default: its deliveries then take
    /// the policy path (always a task, with its lane, timeout and retries).
    pub(crate) lane: Option<Lane>,
    /// `true` when its events come from the broker: an emit that publishes its event skips
    /// it, so it does not get the event twice.
    pub(crate) remote: bool,
    /// Set once a delivery of this listener did not complete in its first poll; from then on
    /// its deliveries are spawned directly (see [`Dispatch`](crate::Dispatch)).
    suspends: AtomicBool,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("info", &self.info)
            .field("suspends", &self.suspends())
            .finish_non_exhaustive()
    }
}

impl Entry {
    pub(crate) fn suspends(&self) -> bool {
        self.suspends.load(Ordering::Relaxed)
    }

    /// `true` when the listener can see its event's envelope beyond the id: it takes
    /// `AnyEvent`, or it has a policy (whose dead letters carry the envelope).
    pub(crate) fn observes_envelope(&self) -> bool {
        self.lane.is_some() || self.erased.takes_any()
    }

    pub(crate) fn mark_suspends(&self) {
        self.suspends.store(true, Ordering::Relaxed);
    }
}

/// The listeners registered under one event name or pattern.
#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) name: Arc<str>,
    pub(crate) entries: Arc<[Arc<Entry>]>,
    /// `Some` when `name` has a wildcard (`orders.*`, `orders.>`): its entries are also in the
    /// registry's pattern index, and an emit never looks this slot up by name.
    pub(crate) pattern: Option<Pattern>,
}

/// A listener about to be registered.
pub(crate) struct NewListener {
    pub(crate) name: Arc<str>,
    pub(crate) location: SourceLocation,
    pub(crate) kind: ListenerKind,
    pub(crate) erased: Erased,
    pub(crate) policy: Policy,
    /// `Some` for a distributed listener, with its group, if any.
    pub(crate) distributed: Option<Option<Arc<str>>>,
}

/// What [`Registry::add`] did.
pub(crate) enum Added {
    /// A new listener, with the id it was given.
    New(ListenerId),
    /// The same listener was already registered under this name: nothing changed.
    Existing(ListenerId),
}

/// One snapshot of the registry.
///
/// Every part is persistent ([`LayeredMap`], [`PatternIndex`]): cloning a
/// snapshot to change it is O(1) and the change costs amortised O(log n), so adding n listeners
/// one by one stays O(n log n).
#[derive(Clone, Default)]
pub(crate) struct Registry {
    /// Slots of plain event names, looked up on every emit.
    by_name: LayeredMap<Arc<str>, Slot>,
    /// Slots of wildcard patterns, by pattern text. Kept apart from `by_name` so that an emit's
    /// lookup never walks past thousands of patterns it would not take anyway.
    by_pattern: LayeredMap<Arc<str>, Slot>,
    /// The slot name of every listener, so removing by id does not scan every slot.
    names_by_id: LayeredMap<ListenerId, Arc<str>>,
    /// The listeners of wildcard patterns, found by walking the emitted name's tokens, so an
    /// emit's cost does not grow with the number of patterns that do not match.
    patterns: PatternIndex<Arc<Entry>>,
    /// The bus's middleware, read by every emit along with the listeners.
    pub(crate) layers: Layers,
}

impl Registry {
    /// The slot registered under exactly this name or pattern text.
    pub(crate) fn slot(&self, event: &str) -> Option<&Slot> {
        self.slots_of(event).get(event)
    }

    /// The slot of the listeners registered under exactly the event name `event` (no pattern).
    pub(crate) fn exact(&self, event: &str) -> Option<&Slot> {
        self.by_name.get(event)
    }

    /// The map that holds the slot of `text`: a name or a pattern.
    fn slots_of(&self, text: &str) -> &LayeredMap<Arc<str>, Slot> {
        if is_pattern_text(text) {
            &self.by_pattern
        } else {
            &self.by_name
        }
    }

    /// Every slot, names first.
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.by_name.values().chain(self.by_pattern.values())
    }

    /// Whether any listener is registered under a wildcard pattern.
    pub(crate) fn has_patterns(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Calls `f` with every listener whose wildcard pattern matches the event name `event`.
    pub(crate) fn for_each_pattern_match(&self, event: &str, f: impl FnMut(&Arc<Entry>)) {
        self.patterns.for_each_match(event, f);
    }

    /// Every name with at least one listener, sorted.
    pub(crate) fn event_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.slots().map(|slot| slot.name.to_string()).collect();
        names.sort();
        names
    }

    /// Adds `listener` under `event` unless a listener with the same identity is there already.
    /// `next_id` is called only when a new listener is stored.
    pub(crate) fn add(
        &mut self,
        pattern: &Pattern,
        listener: NewListener,
        next_id: impl FnOnce() -> ListenerId,
    ) -> Added {
        let name: Arc<str> = Arc::from(pattern.as_str());
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
        if let Some(identity) = listener.erased.identity
            && let Some(existing) = slot
                .entries
                .iter()
                .find(|entry| entry.erased.identity == Some(identity))
        {
            return Added::Existing(existing.info.id);
        }
        let id = next_id();
        let entry = Arc::new(Entry {
            info: ListenerInfo {
                id,
                name: listener.name,
                event_type: listener.erased.event_type_name,
                location: listener.location,
                kind: listener.kind,
                policy: listener.policy,
                distributed: listener.distributed.is_some(),
                group: listener.distributed.clone().flatten(),
            },
            remote: listener.distributed.is_some(),
            erased: listener.erased,
            lane: (!listener.policy.is_default()).then(|| Lane::new(&listener.policy)),
            suspends: AtomicBool::new(false),
        });
        if let Some(pattern) = &slot.pattern {
            self.patterns.insert(pattern, Arc::clone(&entry));
        }
        let mut entries = slot.entries.to_vec();
        entries.push(entry);
        slot.entries = entries.into();
        slots.insert(Arc::clone(&name), slot);
        self.names_by_id.insert(id, name);
        Added::New(id)
    }

    /// Removes the listener of `event` whose identity is `identity`.
    pub(crate) fn remove_identity(&mut self, event: &str, identity: TypeId) -> bool {
        self.remove_from_slot(event, |entry| entry.erased.identity == Some(identity))
    }

    /// `true` while the listener with this id is registered.
    pub(crate) fn contains(&self, id: ListenerId) -> bool {
        self.names_by_id.get(&id).is_some()
    }

    /// The entry of the listener with this id.
    pub(crate) fn entry(&self, id: ListenerId) -> Option<&Arc<Entry>> {
        let name = self.names_by_id.get(&id)?;
        self.slot(name)?
            .entries
            .iter()
            .find(|entry| entry.info.id == id)
    }

    /// Removes the listener with this id, whatever its event.
    pub(crate) fn remove_id(&mut self, id: ListenerId) -> bool {
        let Some(name) = self.names_by_id.get(&id).cloned() else {
            return false;
        };
        self.remove_from_slot(&name, |entry| entry.info.id == id)
    }

    /// Removes the first listener of slot `name` that `matches` selects.
    fn remove_from_slot(&mut self, name: &str, matches: impl Fn(&Entry) -> bool) -> bool {
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
        self.names_by_id.remove(&removed.info.id);
        true
    }

    /// The names whose listeners take more than one event type, with those types, sorted.
    pub(crate) fn type_conflicts(&self) -> Vec<(Arc<str>, Vec<&ListenerInfo>)> {
        let mut conflicts: Vec<_> = self
            .slots()
            .filter(|slot| {
                // `AnyEvent` listeners take every type: they conflict with none.
                let mut typed = slot.entries.iter().filter(|e| !e.erased.takes_any());
                let first = typed.next().map(|e| e.erased.event_type);
                typed.any(|e| Some(e.erased.event_type) != first)
            })
            .map(|slot| {
                let infos = slot.entries.iter().map(|e| &e.info).collect();
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
    use super::*;
    use std::sync::atomic::AtomicU64;

    async fn first(_: Arc<u8>) {}
    async fn second(_: Arc<u8>) {}
    async fn text(_: Arc<String>) {}

    fn new_listener(erased: Erased) -> NewListener {
        NewListener {
            name: Arc::from("test"),
            location: SourceLocation::new(file!(), line!(), column!()),
            kind: ListenerKind::Added,
            erased,
            policy: Policy::new(),
            distributed: None,
        }
    }

    fn ids() -> impl FnMut() -> ListenerId {
        let counter = AtomicU64::new(1);
        move || {
            let raw = counter.fetch_add(1, Ordering::Relaxed);
            ListenerId::from_raw(NonZeroU64::new(raw).unwrap())
        }
    }

    fn add(
        registry: &mut Registry,
        event: &str,
        erased: Erased,
        next: &mut impl FnMut() -> ListenerId,
    ) -> Added {
        let pattern = Pattern::parse(event).expect("test patterns are valid");
        registry.add(&pattern, new_listener(erased), next)
    }

    #[test]
    fn same_fn_twice_is_one_listener() {
        let mut registry = Registry::default();
        let mut next = ids();
        let Added::New(a) = add(&mut registry, "e", Erased::new::<u8, _>(first), &mut next) else {
            panic!("first add must be new")
        };
        let Added::Existing(b) = add(&mut registry, "e", Erased::new::<u8, _>(first), &mut next)
        else {
            panic!("second add must find the first")
        };
        assert_eq!(a, b);
        assert_eq!(registry.slot("e").unwrap().entries.len(), 1);
        // The same fn under another name is another registration.
        assert!(matches!(
            add(&mut registry, "f", Erased::new::<u8, _>(first), &mut next),
            Added::New(_)
        ));
    }

    #[test]
    fn remove_by_identity_and_by_id() {
        let mut registry = Registry::default();
        let mut next = ids();
        add(&mut registry, "e", Erased::new::<u8, _>(first), &mut next);
        let Added::New(id) = add(&mut registry, "e", Erased::new::<u8, _>(second), &mut next)
        else {
            panic!()
        };
        assert!(!registry.remove_identity("e", TypeId::of::<fn(Arc<u8>)>()));
        let first_identity = Erased::new::<u8, _>(first).identity.unwrap();
        assert!(!registry.remove_identity("other", first_identity));
        assert!(registry.remove_identity("e", first_identity));
        assert!(!registry.remove_identity("e", first_identity));
        assert!(registry.remove_id(id));
        assert!(!registry.remove_id(id));
        assert!(registry.slot("e").is_none(), "an empty slot is dropped");
    }

    #[test]
    fn snapshots_are_independent() {
        let mut registry = Registry::default();
        let mut next = ids();
        add(&mut registry, "e", Erased::new::<u8, _>(first), &mut next);
        let before = registry.clone();
        add(&mut registry, "e", Erased::new::<u8, _>(second), &mut next);
        assert_eq!(before.slot("e").unwrap().entries.len(), 1);
        assert_eq!(registry.slot("e").unwrap().entries.len(), 2);
    }

    #[test]
    fn patterns_are_kept_apart_from_names() {
        let mut registry = Registry::default();
        let mut next = ids();
        add(
            &mut registry,
            "orders.*",
            Erased::new::<u8, _>(first),
            &mut next,
        );
        let Added::New(id) = add(
            &mut registry,
            "orders.eu",
            Erased::new::<u8, _>(second),
            &mut next,
        ) else {
            panic!()
        };
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

        // Removal by id finds the slot through the id index, and forgets the id.
        assert!(registry.remove_id(id));
        assert!(registry.names_by_id.get(&id).is_none());
        assert!(registry.exact("orders.eu").is_none());
        let first_identity = Erased::new::<u8, _>(first).identity.unwrap();
        assert!(registry.remove_identity("orders.*", first_identity));
        assert!(!registry.has_patterns());
        assert_eq!(registry.names_by_id.values().count(), 0);
        assert!(registry.event_names().is_empty());
    }

    #[test]
    fn type_conflicts_are_found() {
        let mut registry = Registry::default();
        let mut next = ids();
        add(&mut registry, "ok", Erased::new::<u8, _>(first), &mut next);
        add(&mut registry, "ok", Erased::new::<u8, _>(second), &mut next);
        assert!(registry.type_conflicts().is_empty());
        add(
            &mut registry,
            "mixed",
            Erased::new::<u8, _>(first),
            &mut next,
        );
        add(
            &mut registry,
            "mixed",
            Erased::new::<String, _>(text),
            &mut next,
        );
        let conflicts = registry.type_conflicts();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(&*conflicts[0].0, "mixed");
        let types: Vec<_> = conflicts[0].1.iter().map(|i| i.event_type()).collect();
        assert_eq!(types, ["u8", "alloc::string::String"]);
    }

    #[test]
    fn any_event_listeners_conflict_with_no_type() {
        let mut registry = Registry::default();
        let mut next = ids();
        let any = |_: Arc<crate::AnyEvent>| async {};
        add(&mut registry, "ok", Erased::new::<u8, _>(first), &mut next);
        add(
            &mut registry,
            "ok",
            Erased::new::<crate::AnyEvent, _>(any),
            &mut next,
        );
        assert!(registry.type_conflicts().is_empty());
    }
}
