//! What the bus tells about a registered listener: [`ListenerInfo`], as
//! [`EventBus::listeners`](crate::EventBus::listeners) lists it and as the layers see it. A
//! leaf: it names only ids and the policy.

use std::sync::Arc;

use crate::id::{ListenerId, SourceLocation};
use crate::policy::Policy;

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
    pub(crate) id: ListenerId,
    pub(crate) name: Arc<str>,
    pub(crate) event_type: &'static str,
    pub(crate) location: SourceLocation,
    pub(crate) kind: ListenerKind,
    pub(crate) policy: Policy,
    pub(crate) distributed: bool,
    pub(crate) group: Option<Arc<str>>,
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
    /// process: the bus has no transport, the event type does not travel (it is not marked
    /// `#[event(.., distributed)]` nor named by
    /// [`EventBusBuilder::distributed`](crate::EventBusBuilder::distributed)), the listener takes
    /// [`AnyEvent`](crate::AnyEvent), or the bus made it (`once`, `wait_for`, `stream`).
    pub fn is_distributed(&self) -> bool {
        self.distributed
    }

    /// The consumer group it receives its events in, when it is distributed and grouped
    /// (see [`Group`](crate::policy::Group)).
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}
