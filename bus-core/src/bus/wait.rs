//! `wait_for`: a future that resolves with the next matching event.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::sync::oneshot;

use super::register::NewListener;
use super::{EventBus, RemoveOnDrop};
use crate::delivery::Erased;
use crate::error::{AddListenerError, WaitError};
use crate::id::SourceLocation;
use crate::info::ListenerKind;
use crate::policy::Policy;
use crate::remote::Reach;

/// The future [`EventBus::wait_for`] returns: resolves with the next
/// event of type `E` whose name matches the pattern (and the predicate, if any).
///
/// The wait starts when `wait_for` is called, not when the future is first polled, so an event
/// emitted between the two is not missed.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future removes its listener from the bus. An event that matched
/// but was not yet returned is dropped with it.
#[must_use = "the wait ends (and its listener is removed) when this future is dropped"]
pub struct WaitFor<E> {
    state: State<E>,
}

enum State<E> {
    Waiting {
        receiver: oneshot::Receiver<Arc<E>>,
        /// Never read: dropping it removes the listener.
        _registration: RemoveOnDrop,
        pattern: String,
    },
    Failed(WaitError),
    Done,
}

impl<E> std::fmt::Debug for WaitFor<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Waiting { pattern, .. } => format!("waiting for {pattern:?}"),
            State::Failed(error) => format!("failed: {error}"),
            State::Done => "done".to_owned(),
        };
        f.debug_struct("WaitFor")
            .field("event_type", &std::any::type_name::<E>())
            .field("state", &state)
            .finish()
    }
}

/// The listener half of a wait: hands the first matching event to the future.
type Slot<E> = Arc<Mutex<Option<oneshot::Sender<Arc<E>>>>>;

/// Hands `event` to the waiting future, if nothing was handed yet.
fn fill<E>(slot: &Slot<E>, event: Arc<E>) {
    let sender = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(sender) = sender {
        // The future may be gone already: then there is nobody to tell.
        let _ = sender.send(event);
    }
}

impl<E: Send + Sync + 'static> WaitFor<E> {
    /// Registers the listener of a wait on `bus`: see
    /// [`EventBus::wait_for_matching`].
    #[track_caller]
    pub(super) fn register<P>(bus: &EventBus, pattern: &str, predicate: P) -> Self
    where
        P: Fn(&E) -> bool + Send + Sync + 'static,
    {
        let location = SourceLocation::from(std::panic::Location::caller());
        let (sender, receiver) = oneshot::channel();
        let slot: Slot<E> = Arc::new(Mutex::new(Some(sender)));
        let listener = move |event: Arc<E>| {
            if predicate(&event) {
                fill(&slot, event);
            }
            std::future::ready(())
        };
        let listener_name = format!("wait_for::<{}>", std::any::type_name::<E>());
        let registered = bus.register(NewListener {
            event_name: pattern,
            listener_name: &listener_name,
            location,
            kind: ListenerKind::Added,
            erased: Erased::new::<E, _, _>(listener),
            policy: Policy::new(),
            reach: Reach::Local,
        });
        let state = match registered {
            Ok(id) => State::Waiting {
                receiver,
                _registration: RemoveOnDrop {
                    bus: bus.downgrade(),
                    id,
                },
                pattern: pattern.to_owned(),
            },
            Err(AddListenerError::InvalidName { source, .. }) => {
                State::Failed(WaitError::InvalidPattern(source))
            }
            Err(other) => unreachable!("registering a listener fails only on its name: {other}"),
        };
        WaitFor { state }
    }
}

impl<E> Future for WaitFor<E> {
    type Output = Result<Arc<E>, WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `State` holds no self-reference: every field is `Unpin`.
        let this = Pin::into_inner(self);
        let result = match &mut this.state {
            State::Waiting {
                receiver, pattern, ..
            } => match ready!(Pin::new(receiver).poll(cx)) {
                Ok(event) => Ok(event),
                Err(_) => Err(WaitError::Closed {
                    pattern: std::mem::take(pattern),
                }),
            },
            State::Failed(error) => Err(error.clone()),
            State::Done => panic!("`WaitFor` polled after it completed"),
        };
        // Dropping the registration removes the listener.
        this.state = State::Done;
        Poll::Ready(result)
    }
}
