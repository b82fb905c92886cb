//! Running one delivery under its listener's [`Policy`](crate::Policy): waiting for its turn,
//! bounding each attempt by the timeout, retrying with backoff, and handing the event to the
//! dead letter after the last attempt.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tracing::Instrument as _;

use crate::dispatch::{Scope, panic_message};
use crate::error::{BoxError, DeliveryError};
use crate::event::{AnyEvent, Envelope, Meta};
use crate::lane::Turn;
use crate::layer::{AttemptResult, DeadLetter, DeadLetterHook, Layers};
use crate::listener::ErasedEvent;
use crate::registry::Entry;

/// The error of an attempt that ran past its timeout; the dispatch turns it into
/// [`DeliveryError::TimedOut`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("timed out after {0:?}")]
pub(crate) struct TimedOut(pub(crate) Duration);

/// How one attempt ended.
enum Attempt {
    Delivered,
    Failed(BoxError),
    Panicked(Box<dyn Any + Send>),
    TimedOut(Duration),
}

/// One delivery of a listener that has a policy, ready to run as a task.
pub(crate) struct PolicyDelivery {
    pub(crate) turn: Turn,
    pub(crate) entry: Arc<Entry>,
    pub(crate) event: ErasedEvent,
    pub(crate) name: Arc<str>,
    pub(crate) meta: Meta,
    pub(crate) layers: Layers,
    pub(crate) dead_letter: Option<DeadLetterHook>,
}

impl PolicyDelivery {
    /// Waits for the delivery's turn, then makes attempts until one succeeds or the policy
    /// has none left. Returns the last attempt's error; a last panic is resumed, so the task
    /// reports it as a panic.
    pub(crate) async fn run(self) -> Result<(), BoxError> {
        let PolicyDelivery {
            turn,
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
        let Some(lane) = &entry.lane else {
            return Err("a policy delivery for a listener without a policy".into());
        };
        let policy = lane.policy;
        // Held until the last attempt ends: the next delivery in line starts then.
        let _permit = turn.wait().await;
        let mut attempt = 1;
        loop {
            let span = tracing::debug_span!("bus.attempt", attempt);
            let started = span.in_scope(|| scope.before(attempt));
            let mut pending = PendingAttempt {
                scope: &scope,
                attempt,
                started,
                done: false,
            };
            let ended = attempt_once(&entry, &event, policy.timeout_after())
                .instrument(span.clone())
                .await;
            pending.done = true;
            let message = match &ended {
                Attempt::Panicked(payload) => panic_message(payload.as_ref()),
                _ => String::new(),
            };
            let result = match &ended {
                Attempt::Delivered => AttemptResult::Delivered,
                Attempt::Failed(error) => AttemptResult::Failed(error),
                Attempt::Panicked(_) => AttemptResult::Panicked(&message),
                Attempt::TimedOut(timeout) => AttemptResult::TimedOut(*timeout),
            };
            let retried = !matches!(ended, Attempt::Delivered) && attempt < policy.max_attempts();
            span.in_scope(|| scope.after_attempt(attempt, started, result, retried));
            if matches!(ended, Attempt::Delivered) {
                return Ok(());
            }
            if retried {
                tokio::time::sleep(policy.delay_after(attempt)).await;
                attempt += 1;
                continue;
            }
            return give_up(&scope, &event, dead_letter.as_ref(), attempt, ended);
        }
    }
}

/// Calls the listener once, catching a panic (in the call or in the future) and bounding the
/// attempt by `timeout`.
async fn attempt_once(entry: &Entry, event: &ErasedEvent, timeout: Option<Duration>) -> Attempt {
    let called =
        std::panic::catch_unwind(AssertUnwindSafe(|| entry.erased.listener.call_boxed(event)));
    let future = match called {
        Ok(Some(future)) => future,
        // The bus checked the event's type before dispatching it here.
        Ok(None) => return Attempt::Failed("the event is not of the listener's type".into()),
        Err(payload) => return Attempt::Panicked(payload),
    };
    let caught = AssertUnwindSafe(future).catch_unwind();
    let finished = match timeout {
        Some(timeout) => match tokio::time::timeout(timeout, caught).await {
            Ok(finished) => finished,
            Err(_) => return Attempt::TimedOut(timeout),
        },
        None => caught.await,
    };
    match finished {
        Ok(Ok(())) => Attempt::Delivered,
        Ok(Err(error)) => Attempt::Failed(error),
        Err(payload) => Attempt::Panicked(payload),
    }
}

/// After the last attempt: hands the event to the dead letter (the hook and the layers) and
/// returns the error the delivery's report shows.
fn give_up(
    scope: &Scope<'_>,
    event: &ErasedEvent,
    hook: Option<&DeadLetterHook>,
    attempts: u32,
    last: Attempt,
) -> Result<(), BoxError> {
    let info = &scope.entry.info;
    let (name, listener, listener_id) =
        (Arc::clone(scope.event), Arc::clone(&info.name), info.id());
    let mut panic = None;
    let error = match last {
        Attempt::Failed(source) => DeliveryError::Failed {
            event: name,
            listener,
            listener_id,
            source,
        },
        Attempt::TimedOut(timeout) => DeliveryError::TimedOut {
            event: name,
            listener,
            listener_id,
            timeout,
        },
        Attempt::Panicked(payload) => {
            let message = panic_message(payload.as_ref());
            panic = Some(payload);
            DeliveryError::Panicked {
                event: name,
                listener,
                listener_id,
                message,
            }
        }
        Attempt::Delivered => return Ok(()),
    };
    let letter = DeadLetter {
        event: any_event(scope, event),
        listener: info.clone(),
        error,
        attempts,
    };
    for layer in scope.layers.iter() {
        layer.on_dead_letter(&letter);
    }
    if let Some(hook) = hook {
        hook(&letter);
    }
    if let Some(payload) = panic {
        // The task catches it again and reports the delivery as panicked.
        std::panic::resume_unwind(payload);
    }
    // The dead letter has been seen: its error, the listener's own, goes on to the report.
    match letter.error {
        DeliveryError::Failed { source, .. } => Err(source),
        DeliveryError::TimedOut { timeout, .. } => Err(Box::new(TimedOut(timeout))),
        _ => Ok(()),
    }
}

/// The event as an [`AnyEvent`]: itself when the listener takes `AnyEvent`.
fn any_event(scope: &Scope<'_>, event: &ErasedEvent) -> AnyEvent {
    match event.downcast_ref::<AnyEvent>() {
        Some(any) => any.clone(),
        None => AnyEvent::new(
            Envelope::new(Arc::clone(scope.event), *scope.meta),
            Arc::clone(event),
            scope.entry.info.event_type(),
        ),
    }
}

/// An attempt in progress: tells the layers it was aborted if the delivery is dropped
/// (shutdown) before the attempt ends, so every `before` has its `after`.
struct PendingAttempt<'a> {
    scope: &'a Scope<'a>,
    attempt: u32,
    started: Option<Instant>,
    done: bool,
}

impl Drop for PendingAttempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.scope
                .after(self.attempt, self.started, AttemptResult::Aborted);
        }
    }
}
