//! `wait_for`: a future that resolves with the next matching event.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::sync::oneshot;

use crate::bus::{RemoveOnDrop, WeakBus};
use crate::error::NameError;
use crate::registry::ListenerId;

/// Why a [`WaitFor`] ended without an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The pattern breaks the naming rules, so nothing could ever match it.
    #[error("cannot wait: {0}")]
    InvalidPattern(#[from] NameError),
    /// The bus was dropped (or the waiting listener removed) before a matching event came.
    #[error("stopped waiting for `{pattern}`: the bus was dropped before a matching event came")]
    Closed {
        /// The pattern that was waited for.
        pattern: String,
    },
}

/// The future [`EventBus::wait_for`](crate::EventBus::wait_for) returns: resolves with the next
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
pub(crate) type Slot<E> = Arc<Mutex<Option<oneshot::Sender<Arc<E>>>>>;

/// A new pair: the slot the listener fills, and the receiver the future waits on.
pub(crate) fn channel<E>() -> (Slot<E>, oneshot::Receiver<Arc<E>>) {
    let (sender, receiver) = oneshot::channel();
    (Arc::new(Mutex::new(Some(sender))), receiver)
}

/// Hands `event` to the waiting future, if nothing was handed yet.
pub(crate) fn fill<E>(slot: &Slot<E>, event: Arc<E>) {
    let sender = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(sender) = sender {
        // The future may be gone already: then there is nobody to tell.
        let _ = sender.send(event);
    }
}

impl<E> WaitFor<E> {
    pub(crate) fn waiting(
        receiver: oneshot::Receiver<Arc<E>>,
        bus: WeakBus,
        id: ListenerId,
        pattern: &str,
    ) -> Self {
        WaitFor {
            state: State::Waiting {
                receiver,
                _registration: RemoveOnDrop::new(bus, id),
                pattern: pattern.to_owned(),
            },
        }
    }

    pub(crate) fn failed(error: WaitError) -> Self {
        WaitFor {
            state: State::Failed(error),
        }
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
