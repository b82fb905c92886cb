//! `stream`: the events matching a pattern as a `Stream`, holding at most a set number of
//! unread events, never blocking the emitters: when the reader falls behind, the oldest unread
//! event is dropped for each new one, and the reader is told how many, exactly.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio_stream::Stream;

use super::register::NewListener;
use super::{EventBus, RemoveOnDrop};
use crate::delivery::Erased;
use crate::error::{AddListenerError, Lagged};
use crate::id::{ListenerId, SourceLocation};
use crate::info::ListenerKind;
use crate::policy::Policy;
use crate::remote::Reach;

/// The largest capacity an [`EventStream`] may ask for: 2^24 events.
pub const MAX_CAPACITY: usize = 1 << 24;

/// What the listener and the reader of a stream share.
struct Buffer<E> {
    unread: VecDeque<Arc<E>>,
    /// Events dropped since the reader was last told.
    dropped: u64,
    /// The listener is gone (removed, or its bus dropped): nothing more will come.
    closed: bool,
    /// The reader waiting for the next event.
    waker: Option<Waker>,
}

type Shared<E> = Arc<Mutex<Buffer<E>>>;

fn lock<E>(buffer: &Shared<E>) -> std::sync::MutexGuard<'_, Buffer<E>> {
    buffer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The listener's half of a stream: what its closure owns.
struct Feed<E> {
    buffer: Shared<E>,
    capacity: usize,
}

impl<E> Feed<E> {
    /// Adds `event`, dropping the oldest unread one if the buffer is full.
    fn push(&self, event: Arc<E>) {
        let (evicted, waker) = {
            let mut buffer = lock(&self.buffer);
            let evicted = if buffer.unread.len() >= self.capacity {
                buffer.dropped += 1;
                buffer.unread.pop_front()
            } else {
                None
            };
            buffer.unread.push_back(event);
            (evicted, buffer.waker.take())
        };
        // Outside the lock: dropping an event and waking a task may run user code.
        drop(evicted);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<E> Drop for Feed<E> {
    fn drop(&mut self) {
        let waker = {
            let mut buffer = lock(&self.buffer);
            buffer.closed = true;
            buffer.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The events of type `E` whose names match a pattern, from
/// [`EventBus::stream`], as a [`Stream`].
///
/// It holds at most the capacity it was opened with of unread events. Each item is
/// `Ok(event)`, or `Err(Lagged(n))` when the reader read too slowly and the `n` oldest unread
/// events were dropped to make room (`n` exact; also logged at `warn`, reported to the bus's
/// layers, and added to [`lagged`](EventStream::lagged)). Emitters never wait for a reader.
/// The stream ends when its bus is dropped.
///
/// Dropping the stream removes its listener from the bus.
#[must_use = "a stream does nothing unless it is read"]
pub struct EventStream<E> {
    buffer: Shared<E>,
    pattern: Arc<str>,
    lagged: u64,
    registration: RemoveOnDrop,
}

impl<E> std::fmt::Debug for EventStream<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("pattern", &self.pattern)
            .field("event_type", &std::any::type_name::<E>())
            .field("lagged", &self.lagged)
            .finish_non_exhaustive()
    }
}

impl<E: Send + Sync + 'static> EventStream<E> {
    /// Registers the listener of a stream on `bus`: see [`EventBus::stream`].
    #[track_caller]
    pub(super) fn register(
        bus: &EventBus,
        pattern: &str,
        capacity: usize,
    ) -> Result<Self, AddListenerError> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(AddListenerError::InvalidCapacity {
                pattern: pattern.to_owned(),
                capacity,
                max: MAX_CAPACITY,
            });
        }
        let location = SourceLocation::from(std::panic::Location::caller());
        let buffer = Arc::new(Mutex::new(Buffer {
            unread: VecDeque::new(),
            dropped: 0,
            closed: false,
            waker: None,
        }));
        let feed = Feed {
            buffer: Arc::clone(&buffer),
            capacity,
        };
        let listener = move |event: Arc<E>| {
            feed.push(event);
            std::future::ready(())
        };
        let listener_name = format!("stream::<{}>", std::any::type_name::<E>());
        let id = bus.register(NewListener {
            event_name: pattern,
            listener_name: &listener_name,
            location,
            kind: ListenerKind::Added,
            erased: Erased::new::<E, _, _>(listener),
            policy: Policy::new(),
            reach: Reach::Local,
        })?;
        Ok(EventStream {
            buffer,
            pattern: Arc::from(pattern),
            lagged: 0,
            registration: RemoveOnDrop {
                bus: bus.downgrade(),
                id,
            },
        })
    }
}

impl<E> EventStream<E> {
    /// The pattern this stream listens to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The id of the stream's listener on its bus.
    pub fn listener_id(&self) -> ListenerId {
        self.registration.id
    }

    /// How many events were dropped so far because the reader fell behind.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }

    /// Tells the bus's layers (its log among them) that `missed` events were dropped.
    fn report_lag(&self, missed: u64) {
        match self.registration.bus.upgrade() {
            Some(bus) => {
                let snapshot = bus.shared.engine.snapshot.load();
                snapshot
                    .layers
                    .each("on_lagged", |layer| layer.on_lagged(&self.pattern, missed));
            }
            None => {
                tracing::warn!(pattern = %self.pattern, missed, "stream lagged: events dropped");
            }
        }
    }
}

impl<E> Stream for EventStream<E> {
    type Item = Result<Arc<E>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let missed = {
            let mut buffer = lock(&self.buffer);
            if buffer.dropped == 0 {
                if let Some(event) = buffer.unread.pop_front() {
                    return Poll::Ready(Some(Ok(event)));
                }
                if buffer.closed {
                    return Poll::Ready(None);
                }
                buffer.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            std::mem::take(&mut buffer.dropped)
        };
        self.lagged += missed;
        self.report_lag(missed);
        Poll::Ready(Some(Err(Lagged(missed))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(capacity: usize) -> (Feed<u32>, Shared<u32>) {
        let buffer = Arc::new(Mutex::new(Buffer {
            unread: VecDeque::new(),
            dropped: 0,
            closed: false,
            waker: None,
        }));
        let feed = Feed {
            buffer: Arc::clone(&buffer),
            capacity,
        };
        (feed, buffer)
    }

    #[test]
    fn the_buffer_holds_exactly_its_capacity_and_counts_what_it_drops() {
        let (feed, buffer) = pair(3);
        for n in 0..10 {
            feed.push(Arc::new(n));
        }
        let buffer = lock(&buffer);
        assert_eq!(
            buffer.unread.iter().map(|n| **n).collect::<Vec<_>>(),
            [7, 8, 9]
        );
        assert_eq!(buffer.dropped, 7);
    }

    #[test]
    fn a_dropped_feed_closes_the_buffer() {
        let (feed, buffer) = pair(1);
        drop(feed);
        assert!(lock(&buffer).closed);
    }
}
