//! Registration: the one path every listener takes into the registry ([`EventBus::register`]),
//! the builder users reach it through ([`ListenerBuilder`]), and removal.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Arc;

use super::once::OnceState;
use super::{EventBus, once};
use crate::delivery::{Entry, Erased, Listener, identity_of};
use crate::error::AddListenerError;
use crate::event::AnyEvent;
use crate::id::{ListenerId, SourceLocation};
use crate::info::{ListenerInfo, ListenerKind};
use crate::name::pattern::Pattern;
use crate::policy::Policy;
use crate::registry::Registered;
use crate::remote::Reach;

/// A listener about to be added, from [`EventBus::on`]: set how it runs, then
/// [`add`](ListenerBuilder::add) it (an invalid name is logged) or
/// [`try_add`](ListenerBuilder::try_add) it (an invalid name is an error).
#[must_use = "a listener is added only by `add` or `try_add`"]
pub struct ListenerBuilder<'a, E, L, Args = (Arc<E>,)> {
    bus: &'a EventBus,
    event_name: &'a str,
    listener: L,
    policy: Policy,
    once: bool,
    location: SourceLocation,
    _event: PhantomData<fn(Arc<E>, Args)>,
}

impl<E, L, Args> std::fmt::Debug for ListenerBuilder<'_, E, L, Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerBuilder")
            .field("event_name", &self.event_name)
            .field("listener", &std::any::type_name::<L>())
            .field("policy", &self.policy)
            .field("once", &self.once)
            .finish()
    }
}

impl<'a, E, L, Args> ListenerBuilder<'a, E, L, Args>
where
    E: Send + Sync + 'static,
    L: Listener<E, Args>,
    Args: 'static,
{
    #[track_caller]
    pub(super) fn new(bus: &'a EventBus, event_name: &'a str, listener: L) -> Self {
        ListenerBuilder {
            bus,
            event_name,
            listener,
            policy: Policy::new(),
            once: false,
            location: SourceLocation::from(std::panic::Location::caller()),
            _event: PhantomData,
        }
    }

    /// Runs the listener under `policy`: a concurrency limit, a timeout, retries with backoff,
    /// and on a bus with a transport, its consumer group.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Makes it a listener for the next event only: the first delivery calls it and removes
    /// it, so later emits no longer reach it.
    ///
    /// Exactly one delivery calls it, even when several emits race: an emit that started
    /// before the removal still counts a delivery in its report, but that delivery returns at
    /// once without calling the listener. It stays in process on a bus with a transport.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// Adds the listener and returns its id. Takes effect for the emits that start after it
    /// returns. Adding the same fn (or a closure that captures nothing) again under the same
    /// name changes nothing and returns the same id.
    ///
    /// # Errors
    ///
    /// This method does not fail. When the event name is not valid the listener is not
    /// registered, the error is logged, and the returned id belongs to no listener;
    /// [`try_add`](ListenerBuilder::try_add) returns the error instead.
    pub fn add(self) -> ListenerId {
        let (bus, event_name) = (self.bus, self.event_name);
        bus.id_or_log(event_name, self.try_add())
    }

    /// Like [`add`](ListenerBuilder::add), but returns an error for an invalid event name
    /// instead of logging it.
    ///
    /// # Errors
    ///
    /// [`AddListenerError::InvalidName`] when the event name breaks the naming rules
    /// (dot-separated tokens of ASCII letters, digits, `_` and `-`, or the wildcards `*` and a
    /// last `>`).
    pub fn try_add(self) -> Result<ListenerId, AddListenerError> {
        let new = |erased, reach| NewListener {
            event_name: self.event_name,
            listener_name: std::any::type_name::<L>(),
            location: self.location,
            kind: ListenerKind::Added,
            erased,
            policy: self.policy,
            reach,
        };
        if !self.once {
            let erased = Erased::new::<E, Args, L>(self.listener);
            return self.bus.register(new(erased, Reach::Distributable));
        }
        let state = Arc::new(OnceState::default());
        let wrapped = once::wrap(self.listener, Arc::clone(&state), self.bus.downgrade());
        let erased = Erased::new::<E, _, _>(wrapped);
        let id = self.bus.register(new(erased, Reach::Local))?;
        state.registered(&self.bus.downgrade(), id);
        Ok(id)
    }
}

/// A listener about to be registered, with everything the registry and the remote side need
/// to know about it.
pub(super) struct NewListener<'a> {
    pub(super) event_name: &'a str,
    pub(super) listener_name: &'a str,
    pub(super) location: SourceLocation,
    pub(super) kind: ListenerKind,
    pub(super) erased: Erased,
    pub(super) policy: Policy,
    pub(super) reach: Reach,
}

impl EventBus {
    /// Registers a listener: the one path every listener takes into the registry.
    pub(super) fn register(&self, new: NewListener<'_>) -> Result<ListenerId, AddListenerError> {
        let NewListener {
            event_name,
            listener_name,
            location,
            kind,
            erased,
            policy,
            reach,
        } = new;
        let pattern =
            Pattern::parse(event_name).map_err(|source| AddListenerError::InvalidName {
                listener: listener_name.to_owned(),
                source,
            })?;
        let (event_type, event_type_name) = (erased.event_type, erased.event_type_name);
        let plan =
            self.shared.remote.as_ref().and_then(|remote| {
                remote.plan(reach, event_name, listener_name, event_type, &policy)
            });
        let group = plan
            .as_ref()
            .and_then(|plan| plan.options.group.as_deref().map(Arc::from));
        let added = self.update(|snapshot| {
            let listeners = &mut snapshot.listeners;
            if let Some(id) = listeners.find(&pattern, erased.identity) {
                // Given back, to be dropped once the writer's lock is released: dropping a
                // listener runs user code.
                return Err((id, erased));
            }
            let id = self.next_id();
            let info = ListenerInfo {
                id,
                name: Arc::from(listener_name),
                event_type: event_type_name,
                location,
                kind,
                policy,
                distributed: plan.is_some(),
                group,
            };
            let other = listeners
                .slot(event_name)
                .into_iter()
                .flat_map(|slot| slot.entries.iter())
                .find(|other| {
                    other.event_type() != event_type
                        && !other.takes_any()
                        && event_type != TypeId::of::<AnyEvent>()
                });
            if let Some(other) = other {
                tracing::warn!(
                    event = event_name,
                    listener = listener_name,
                    listener_id = id.get(),
                    event_type = event_type_name,
                    other_listener = %other.info.name(),
                    other_event_type = other.info.event_type(),
                    "listeners of one event take different types; an emit reaches only the \
                     listeners of its own type"
                );
            }
            listeners.add(
                &pattern,
                Entry::new(info, erased, Arc::clone(&self.shared.engine.service)),
            );
            Ok(id)
        });
        let id = match added {
            Ok(id) => id,
            Err((existing, unused)) => {
                drop(unused);
                return Ok(existing);
            }
        };
        tracing::debug!(event = event_name, listener = listener_name, listener_id = id.get(), %location, distributed = plan.is_some(), "listener added");
        if let (Some(remote), Some(plan)) = (&self.shared.remote, plan) {
            let entry = self
                .shared
                .engine
                .snapshot
                .load()
                .listeners
                .entry(id)
                .cloned();
            if let Some(entry) = entry {
                remote.start(entry, plan, self.engine_ref());
            }
        }
        Ok(id)
    }

    /// Removes the listener of `event_name` whose identity is `listener`'s type.
    pub(super) fn remove_by_identity<E, L, Args>(&self, event_name: &str, listener: L) -> bool
    where
        E: Send + Sync + 'static,
        L: Listener<E, Args>,
    {
        drop(listener);
        let Some(identity) = identity_of::<L>() else {
            tracing::debug!(
                event = event_name,
                listener = std::any::type_name::<L>(),
                "a closure that captures state is not recognised by value; remove it by id"
            );
            return false;
        };
        let removed =
            self.update(|snapshot| snapshot.listeners.remove_identity(event_name, identity));
        tracing::debug!(event = event_name, removed, "remove_listener");
        self.stop_removed_consumers();
        removed
    }

    /// Removes the listener with this id.
    pub(super) fn remove_by_id(&self, id: ListenerId) -> bool {
        let removed = self.update(|snapshot| snapshot.listeners.remove_id(id));
        tracing::debug!(listener_id = id.get(), removed, "remove");
        self.stop_removed_consumers();
        removed
    }

    /// Stops the consumers of distributed listeners that are no longer registered.
    fn stop_removed_consumers(&self) {
        if let Some(remote) = &self.shared.remote {
            let snapshot = self.shared.engine.snapshot.load();
            remote.stop_removed(|id| snapshot.listeners.contains(id));
        }
    }

    /// The id of a listener that was added, or, for the methods that do not fail, a logged
    /// error and an id that belongs to no listener.
    pub(super) fn id_or_log(
        &self,
        event_name: &str,
        added: Result<ListenerId, AddListenerError>,
    ) -> ListenerId {
        added.unwrap_or_else(|error| {
            tracing::error!(event = event_name, %error, "listener not added");
            self.next_id()
        })
    }
}
