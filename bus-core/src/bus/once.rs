//! `once` listeners: called for the first matching event only, then removed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::WeakBus;
use crate::delivery::{Listener, ListenerOutput};
use crate::error::BoxError;
use crate::event::Envelope;
use crate::id::ListenerId;

/// What a `once` listener shares with its registration: whether it has fired, and the id to
/// remove it by once it has.
#[derive(Default)]
pub(crate) struct OnceState {
    fired: AtomicBool,
    id: OnceLock<ListenerId>,
}

impl OnceState {
    /// Records the listener's id after it was added, and removes it at once if an emit that
    /// raced with the add has already fired it.
    pub(crate) fn registered(&self, bus: &WeakBus, id: ListenerId) {
        let _ = self.id.set(id);
        if self.fired.load(Ordering::Acquire) {
            self.remove(bus);
        }
    }

    fn remove(&self, bus: &WeakBus) {
        if let (Some(bus), Some(&id)) = (bus.upgrade(), self.id.get()) {
            bus.remove(id);
        }
    }
}

/// Wraps `listener` so that exactly one delivery calls it, however many emits race: the
/// first to swap the flag wins; the others find it set and return at once. The winner removes
/// the listener, so later emits no longer reach it.
///
/// The wrapper takes the envelope, which it hands on to a listener that takes it: `once`
/// listeners are few, and making the envelope of their one call costs little.
pub(crate) fn wrap<E, L, Args>(
    listener: L,
    state: Arc<OnceState>,
    bus: WeakBus,
) -> impl Listener<E, (Arc<E>, Envelope), Output = Result<(), BoxError>>
where
    E: Send + Sync + 'static,
    L: Listener<E, Args>,
{
    move |event: Arc<E>, envelope: Envelope| {
        let first = !state.fired.swap(true, Ordering::AcqRel);
        // Every call after the first also tries: the id may not have been recorded yet when
        // the first one ran.
        state.remove(&bus);
        let call = first.then(|| listener.call(event, || envelope));
        async move {
            match call {
                Some(future) => future.await.into_result(),
                None => Ok(()),
            }
        }
    }
}
