//! `subscribe`: the events matching a pattern as a `Stream`, with a bounded buffer that never
//! blocks the emitters.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::bus::{RemoveOnDrop, WeakBus};
use crate::registry::ListenerId;

/// The largest buffer a subscription may ask for: 2^24 events. The buffer is allocated up
/// front, so a larger one would mostly be a mistake.
pub const MAX_CAPACITY: usize = 1 << 24;

/// The subscriber fell behind: its buffer was full, and the `n` oldest events it had not read
/// yet were dropped to make room. The stream goes on with the oldest event it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "subscriber fell behind: {0} events were dropped; read faster or subscribe with a larger \
     capacity"
)]
pub struct Lagged(pub u64);

/// The events of type `E` whose names match a pattern, from
/// [`EventBus::subscribe`](crate::EventBus::subscribe), as a [`Stream`].
///
/// Each item is `Ok(event)`, or `Err(Lagged(n))` when the subscriber read too slowly and `n`
/// events were dropped (logged at `warn`, reported to the bus's layers, and added to
/// [`lagged`](Subscription::lagged)).
/// Emitters never wait for a subscriber. The stream ends when the bus is dropped.
///
/// Dropping the subscription removes its listener from the bus.
#[must_use = "a subscription does nothing unless its stream is read"]
pub struct Subscription<E> {
    stream: BroadcastStream<Arc<E>>,
    pattern: Arc<str>,
    lagged: u64,
    registration: RemoveOnDrop,
}

impl<E> std::fmt::Debug for Subscription<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .field("event_type", &std::any::type_name::<E>())
            .field("lagged", &self.lagged)
            .finish_non_exhaustive()
    }
}

impl<E: Send + Sync + 'static> Subscription<E> {
    pub(crate) fn new(
        receiver: tokio::sync::broadcast::Receiver<Arc<E>>,
        pattern: &str,
        bus: WeakBus,
        id: ListenerId,
    ) -> Self {
        Subscription {
            stream: BroadcastStream::new(receiver),
            pattern: Arc::from(pattern),
            lagged: 0,
            registration: RemoveOnDrop::new(bus, id),
        }
    }

    /// The pattern this subscription listens to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The id of the subscription's listener on its bus.
    pub fn listener_id(&self) -> ListenerId {
        self.registration.id()
    }

    /// How many events were dropped so far because the subscriber fell behind.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}

impl<E: Send + Sync + 'static> Stream for Subscription<E> {
    type Item = Result<Arc<E>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.stream).poll_next(cx) {
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(dropped)))) => {
                self.lagged += dropped;
                // Logged by the bus's tracing layer, counted by its metrics layer.
                self.registration.bus().lagged(&self.pattern, dropped);
                Poll::Ready(Some(Err(Lagged(dropped))))
            }
            Poll::Ready(Some(Ok(event))) => Poll::Ready(Some(Ok(event))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
