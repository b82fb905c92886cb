//! Running one delivery under its listener's [`Policy`]: making attempts ([`attempt::run`])
//! until one succeeds or the policy has none left, with backoff between them. Its turn under
//! the concurrency limit is given by the listener's lane, or, in
//! [`Dispatch::Spawn`](super::Dispatch) mode, by the listener's [`Line`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use super::attempt::{self, Attempt, Outcome, Scope};
use super::entry::Entry;
use crate::event::{ErasedEvent, Meta};
use crate::layer::{DeadLetterHook, Layers};
use crate::policy::Policy;

/// One delivery of a listener that has a policy, ready to run.
pub(crate) struct PolicyDelivery {
    pub(crate) entry: Arc<Entry>,
    pub(crate) event: ErasedEvent,
    pub(crate) name: Arc<str>,
    pub(crate) meta: Meta,
    pub(crate) layers: Layers,
    pub(crate) dead_letter: Option<DeadLetterHook>,
}

impl PolicyDelivery {
    /// Makes attempts until one succeeds or the policy has none left; each attempt in a
    /// `bus.attempt` span. Returns the last attempt's outcome.
    pub(crate) async fn run(self) -> Outcome {
        let PolicyDelivery {
            entry,
            event,
            name,
            meta,
            layers,
            dead_letter,
        } = self;
        let scope = Scope {
            event: &name,
            entry: &entry,
            meta: &meta,
            layers: &layers,
        };
        let policy = entry.info.policy();
        let mut number = 1;
        loop {
            let attempt = Attempt {
                number,
                last: number >= policy.max_attempts(),
                timeout: policy.timeout_after(),
                dead_letter: dead_letter.as_ref(),
            };
            let last = attempt.last;
            let span = tracing::debug_span!("bus.attempt", attempt = number);
            let outcome = attempt::run(&scope, &event, attempt).instrument(span).await;
            if outcome.is_delivered() || last {
                return outcome;
            }
            tokio::time::sleep(policy.delay_after(number)).await;
            number += 1;
        }
    }
}

/// The line the deliveries of a listener with a policy wait in when each is a task of its own
/// ([`Dispatch::Spawn`](super::Dispatch)): with a concurrency limit, the permits they take.
#[derive(Debug)]
pub(crate) struct Line {
    permits: Option<Arc<Semaphore>>,
}

/// A delivery's place in its listener's line, taken when the event is emitted.
pub(crate) enum Turn {
    /// No limit, or a permit was free: the delivery may start.
    Now(Option<OwnedSemaphorePermit>),
    /// Queued behind earlier deliveries; resolves when it is this one's turn.
    Queued(Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>),
}

impl Line {
    pub(crate) fn new(policy: &Policy) -> Self {
        Line {
            permits: policy
                .concurrency_limit()
                .map(|limit| Arc::new(Semaphore::new(limit.get()))),
        }
    }

    /// Takes the next place in line, now, on the emitter's thread: Tokio's semaphore is fair
    /// (first come, first served), and a waiter joins its queue on its first poll, so polling
    /// here makes deliveries start in the order of the emits.
    pub(crate) fn queue(&self) -> Turn {
        let Some(permits) = &self.permits else {
            return Turn::Now(None);
        };
        if let Ok(permit) = Arc::clone(permits).try_acquire_owned() {
            return Turn::Now(Some(permit));
        }
        // The semaphore is never closed, so `acquire_owned` only fails if that changes; the
        // delivery then runs without a permit rather than not at all.
        let mut waiting: Pin<Box<dyn Future<Output = _> + Send>> =
            Box::pin(Arc::clone(permits).acquire_owned());
        // The task that runs the delivery polls it again with its own waker; futures wake the
        // waker of their latest poll.
        match waiting
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(permit) => Turn::Now(permit.ok()),
            Poll::Pending => Turn::Queued(Box::pin(async move { waiting.await.ok() })),
        }
    }
}

impl Turn {
    /// Waits for the turn; the permit it returns lets the next delivery start when dropped.
    pub(crate) async fn wait(self) -> Option<OwnedSemaphorePermit> {
        match self {
            Turn::Now(permit) => permit,
            Turn::Queued(waiting) => waiting.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_given_in_queue_order() {
        let lane = Line::new(&Policy::new().concurrency(1));
        let first = lane.queue();
        assert!(matches!(first, Turn::Now(Some(_))));
        let second = lane.queue();
        let third = lane.queue();
        assert!(matches!(second, Turn::Queued(_)));
        // The third is polled first, yet the second gets the permit the first gives back.
        let third = tokio::spawn(third.wait());
        tokio::task::yield_now().await;
        let first = first.wait().await;
        drop(first);
        let second = second.wait().await;
        assert!(!third.is_finished());
        drop(second);
        assert!(third.await.unwrap().is_some());
    }

    #[test]
    fn no_limit_means_no_permit() {
        let lane = Line::new(&Policy::new().retry(2));
        assert!(matches!(lane.queue(), Turn::Now(None)));
    }
}
