//! A registered listener, as the engine runs it: the listener itself (type-erased), what the
//! bus tells about it, and its run-time state (its lane under a policy, whether it suspends).

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::erased::Erased;
use super::policy::Line;
use crate::info::ListenerInfo;
use crate::registry::Registered;

/// A registered listener.
pub(crate) struct Entry {
    pub(crate) info: ListenerInfo,
    pub(crate) erased: Erased,
    /// `Some` when the listener has a policy other than the default: its deliveries then take
    /// the policy path (never inline: with timeout and retries, in its lane or, in
    /// [`Dispatch::Spawn`](crate::Dispatch) mode, a task each, in this line).
    pub(crate) line: Option<Line>,
    /// `true` when its events come from the broker: an emit that publishes its event skips
    /// it, so it does not get the event twice.
    pub(crate) remote: bool,
    /// The `source` of the events emitted on its bus: the bus's service.
    pub(crate) source: Arc<str>,
    /// Set once a delivery of this listener did not complete in its first poll; from then on
    /// its deliveries go to its lane whole (see [`Dispatch`](crate::Dispatch)).
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
    /// The entry of a listener described by `info`; its lane follows from its policy.
    pub(crate) fn new(info: ListenerInfo, erased: Erased, source: Arc<str>) -> Self {
        let policy = info.policy();
        Entry {
            remote: info.is_distributed(),
            line: (!policy.is_default()).then(|| Line::new(&policy)),
            info,
            erased,
            source,
            suspends: AtomicBool::new(false),
        }
    }

    #[inline]
    pub(crate) fn suspends(&self) -> bool {
        self.suspends.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn mark_suspends(&self) {
        self.suspends.store(true, Ordering::Relaxed);
    }

    /// `true` when the listener has a policy other than the default.
    #[inline]
    pub(crate) fn has_policy(&self) -> bool {
        self.line.is_some()
    }

    /// `true` when the listener can see its event's envelope beyond the id: it takes
    /// the envelope or `AnyEvent`, or it has a policy (whose dead letters carry the envelope).
    #[inline]
    pub(crate) fn observes_envelope(&self) -> bool {
        self.has_policy() || self.erased.takes_any() || self.erased.takes_envelope
    }
}

impl Registered for Entry {
    fn info(&self) -> &ListenerInfo {
        &self.info
    }

    fn identity(&self) -> Option<TypeId> {
        self.erased.identity
    }

    fn event_type(&self) -> TypeId {
        self.erased.event_type
    }
}
