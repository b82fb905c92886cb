//! One attempt of one delivery, the same for every delivery, in process or from a broker: the
//! call of the listener and the poll and drop of its future with panics caught ([`call`],
//! [`Caught`]), the timeout, the layers' `before` and `after` around it ([`Scope`]), the
//! outcome as one type ([`Outcome`]), and the dead letter after a last failed attempt.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;

use super::emission::Conclusion;
use super::entry::Entry;
use super::erased::{ErasedListener, ListenerOutput, MakeEnvelope};
use crate::error::{BoxError, DeliveryError, panic_message};
use crate::event::{AnyEvent, Envelope, ErasedEvent, Handling, Meta};
use crate::id::EventId;
use crate::layer::{
    AttemptResult, DeadLetter, DeadLetterHook, DeliveryInfo, DeliveryOutcome, Layers,
};

/// How one attempt of a delivery ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The listener returned `Ok` (or `()`).
    Delivered,
    /// The listener returned this error.
    Failed(BoxError),
    /// The listener panicked (in its call, a poll of its future, or the future's `Drop`), with
    /// this message.
    Panicked(String),
    /// The attempt ran past the listener's timeout and was cancelled.
    TimedOut(Duration),
    /// Shutdown, or the runtime going away, cut the delivery short.
    Aborted,
}

impl Outcome {
    fn of(result: Result<(), BoxError>) -> Outcome {
        match result {
            Ok(()) => Outcome::Delivered,
            Err(error) => Outcome::Failed(error),
        }
    }

    pub(crate) fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered)
    }

    /// The outcome as the layers see it.
    pub(crate) fn result(&self) -> AttemptResult<'_> {
        match self {
            Outcome::Delivered => AttemptResult::Delivered,
            Outcome::Failed(error) => AttemptResult::Failed(error),
            Outcome::Panicked(message) => AttemptResult::Panicked(message),
            Outcome::TimedOut(timeout) => AttemptResult::TimedOut(*timeout),
            Outcome::Aborted => AttemptResult::Aborted,
        }
    }

    /// The outcome as a report entry, naming the event and the listener.
    pub(crate) fn into_conclusion(self, event: &Arc<str>, entry: &Entry) -> Conclusion {
        if let Outcome::Delivered = self {
            // The common case names nothing: no reference counts to touch.
            return Ok(());
        }
        let info = &entry.info;
        let (event, listener, listener_id) = (Arc::clone(event), Arc::clone(&info.name), info.id());
        Err(match self {
            Outcome::Delivered => return Ok(()),
            Outcome::Failed(source) => DeliveryError::Failed {
                event,
                listener,
                listener_id,
                source,
            },
            Outcome::Panicked(message) => DeliveryError::Panicked {
                event,
                listener,
                listener_id,
                message,
            },
            Outcome::TimedOut(timeout) => DeliveryError::TimedOut {
                event,
                listener,
                listener_id,
                timeout,
            },
            Outcome::Aborted => DeliveryError::Aborted {
                event,
                listener,
                listener_id,
            },
        })
    }

    /// The outcome a report entry was made of: the way back from
    /// [`into_conclusion`](Outcome::into_conclusion), once a dead letter has shown the error.
    fn of_error(error: DeliveryError) -> Outcome {
        match error {
            DeliveryError::Failed { source, .. } => Outcome::Failed(source),
            DeliveryError::Panicked { message, .. } => Outcome::Panicked(message),
            DeliveryError::TimedOut { timeout, .. } => Outcome::TimedOut(timeout),
            DeliveryError::Aborted { .. } | DeliveryError::NotDelivered { .. } => Outcome::Aborted,
        }
    }

    /// Why a failed attempt failed, in a sentence that names the listener: the reason a
    /// broker keeps with a delivery it gets back.
    pub(crate) fn reason(&self, listener: &str) -> String {
        match self {
            Outcome::Delivered => format!("listener `{listener}` delivered"),
            Outcome::Failed(error) => format!("listener `{listener}` failed: {error}"),
            Outcome::Panicked(message) => format!("listener `{listener}` panicked: {message}"),
            Outcome::TimedOut(timeout) => {
                format!("listener `{listener}` failed: timed out after {timeout:?}")
            }
            Outcome::Aborted => format!("listener `{listener}` was aborted"),
        }
    }
}

/// Calls the listener (`call` runs it), catching a panic in the call itself: a closure may run
/// code before it returns its future.
pub(crate) fn call<F>(call: impl FnOnce() -> F) -> Result<F, Outcome> {
    std::panic::catch_unwind(AssertUnwindSafe(call))
        .map_err(|payload| Outcome::Panicked(panic_message(payload.as_ref())))
}

pin_project! {
    /// A listener's future, polled and dropped with its panics caught: it resolves to the
    /// attempt's [`Outcome`]. The future is dropped as soon as it completes, here, so that a
    /// panic in its `Drop` is the attempt's too; one dropped unfinished (a timeout, an abort)
    /// is dropped with its panic caught and logged.
    ///
    /// Empty between deliveries when it serves as a listener's reusable slot.
    pub(crate) struct Caught<F> {
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for Caught<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut future = this.project().future;
            if future.is_some() {
                let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| future.set(None)));
                if let Err(payload) = dropped {
                    tracing::error!(
                        panic = %panic_message(payload.as_ref()),
                        "a listener's future panicked while it was dropped unfinished"
                    );
                }
            }
        }
    }
}

impl<F> Caught<F> {
    /// An attempt of `future`.
    pub(crate) fn new(future: F) -> Self {
        Caught {
            future: Some(future),
        }
    }

    /// Nothing to poll yet: the memory of a future to come.
    pub(crate) fn empty() -> Self {
        Caught { future: None }
    }
}

impl<F> Caught<F>
where
    F: Future,
    F::Output: ListenerOutput,
{
    /// Calls the listener (`call`), writes its future into this empty slot (in place, not
    /// moved), and polls it once: the start of an inline attempt, with one panic guard around
    /// the three.
    #[inline(always)]
    pub(crate) fn start(
        self: Pin<&mut Self>,
        call: impl FnOnce() -> F,
        cx: &mut Context<'_>,
    ) -> Poll<Outcome> {
        self.run(|mut future| future.set(Some(call())), cx)
    }

    /// Runs `start`, then polls the future with its panics caught, and drops it (here, with
    /// its panic caught as the poll's) once it is done.
    #[inline(always)]
    fn run(
        self: Pin<&mut Self>,
        start: impl FnOnce(Pin<&mut Option<F>>),
        cx: &mut Context<'_>,
    ) -> Poll<Outcome> {
        let mut future = self.project().future;
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            start(future.as_mut());
            let Some(running) = future.as_mut().as_pin_mut() else {
                // Only polled after its end by a bug: it has nothing left to give.
                return Poll::Pending;
            };
            let result = std::task::ready!(running.poll(cx)).into_result();
            future.set(None);
            Poll::Ready(result)
        }));
        match caught {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Outcome::of(result)),
            Err(payload) => {
                // The call, a poll or the drop panicked. A future that panicked in a poll is
                // dropped now, its own panic caught.
                let message = panic_message(payload.as_ref());
                if future.is_some() {
                    let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| future.set(None)));
                    if let Err(payload) = dropped {
                        tracing::error!(
                            panic = %panic_message(payload.as_ref()),
                            "a listener's future panicked as it was dropped after a panic"
                        );
                    }
                }
                Poll::Ready(Outcome::Panicked(message))
            }
        }
    }
}

impl<F> Future for Caught<F>
where
    F: Future,
    F::Output: ListenerOutput,
{
    type Output = Outcome;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.run(|_| {}, cx)
    }
}

pin_project! {
    /// A delivery's future, polled with its event marked as the one being handled, so that
    /// events its listener emits record it as their causation.
    pub(crate) struct Handled<F> {
        id: EventId,
        #[pin]
        future: F,
    }
}

impl<F> Handled<F> {
    pub(crate) fn new(id: EventId, future: F) -> Self {
        Handled { id, future }
    }
}

impl<F: Future> Future for Handled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _handling = Handling::enter(this.id);
        this.future.poll(cx)
    }
}

/// The envelope of the event `name` with `meta`, delivered to `entry`: an event from a broker
/// has the source its message said; one emitted here, the service of the listener's bus.
pub(crate) fn envelope_of(name: &Arc<str>, entry: &Entry, meta: &Meta) -> Envelope {
    let source = match &meta.received {
        Some(received) => &received.source,
        None => &entry.source,
    };
    Envelope::new(Arc::clone(name), Arc::clone(source), meta.clone())
}

/// Where a delivery's attempts are reported: its event, listener, envelope and layers.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) event: &'a Arc<str>,
    pub(crate) entry: &'a Arc<Entry>,
    pub(crate) meta: &'a Meta,
    pub(crate) layers: &'a Layers,
}

impl Scope<'_> {
    /// The event's envelope, for a listener that takes it or sees it in an [`AnyEvent`].
    pub(crate) fn envelope(&self) -> Envelope {
        envelope_of(self.event, self.entry, self.meta)
    }

    fn info(&self, attempt: u32) -> DeliveryInfo<'_> {
        DeliveryInfo {
            name: self.event,
            meta: self.meta,
            listener: &self.entry.info,
            attempt,
        }
    }

    /// Calls every layer's `before` for `attempt`, and reads the clock if a layer times
    /// deliveries.
    #[inline]
    pub(crate) fn before(&self, attempt: u32) -> Option<Instant> {
        if self.layers.only_tracing() {
            return None;
        }
        let info = self.info(attempt);
        self.layers.each("before", |layer| layer.before(&info));
        self.layers.timed().then(Instant::now)
    }

    /// Calls every layer's `after` for `attempt`; `retried` when another attempt follows.
    #[inline]
    pub(crate) fn after(
        &self,
        attempt: u32,
        started: Option<Instant>,
        result: AttemptResult<'_>,
        retried: bool,
    ) {
        if self.layers.only_tracing() && matches!(result, AttemptResult::Delivered) {
            return;
        }
        let info = self.info(attempt);
        let outcome = DeliveryOutcome {
            result,
            elapsed: started.map(|started| started.elapsed()),
            retried,
        };
        self.layers
            .each("after", |layer| layer.after(&info, &outcome));
    }

    /// Hands the event of a delivery whose last attempt failed to the dead letter: the
    /// layers' `on_dead_letter`, then `hook`. Returns the outcome, unchanged.
    fn dead_letter(
        &self,
        event: &ErasedEvent,
        attempts: u32,
        outcome: Outcome,
        hook: Option<&DeadLetterHook>,
    ) -> Outcome {
        let Err(error) = outcome.into_conclusion(self.event, self.entry) else {
            return Outcome::Delivered;
        };
        let letter = DeadLetter {
            event: self.any_event(event),
            listener: self.entry.info.clone(),
            error,
            attempts,
        };
        self.layers.dead_letter(&letter, hook);
        Outcome::of_error(letter.error)
    }

    /// The event as an [`AnyEvent`]: itself when the listener takes `AnyEvent`.
    fn any_event(&self, event: &ErasedEvent) -> AnyEvent {
        match event.downcast_ref::<AnyEvent>() {
            Some(any) => any.clone(),
            None => AnyEvent::new(
                self.envelope(),
                Arc::clone(event),
                self.entry.info.event_type(),
            ),
        }
    }
}

/// Turns how a delivery run in one go ended into its report entry, and tells the layers (the
/// log among them). Runs inside the delivery's span.
///
/// A listener with a policy has told the layers about each of its attempts already (see
/// [`run`]); its outcome here is that of its last attempt.
pub(crate) fn conclude(
    scope: &Scope<'_>,
    started: Option<Instant>,
    outcome: Outcome,
) -> Conclusion {
    if !scope.entry.has_policy() {
        scope.after(1, started, outcome.result(), false);
    }
    outcome.into_conclusion(scope.event, scope.entry)
}

/// An attempt of a listener called with a type-erased event, in a task: the call, the polls
/// and the drop of its future go through [`Caught`], as an inline delivery's do.
/// `envelope` makes the event's envelope, for a listener that takes it.
pub(crate) async fn erased(
    listener: &dyn ErasedListener,
    event: &ErasedEvent,
    envelope: MakeEnvelope<'_>,
) -> Outcome {
    let mut caught = std::pin::pin!(Caught::empty());
    let mut call = Some(|| listener.call_boxed(event, envelope));
    std::future::poll_fn(|cx| match call.take() {
        Some(call) => caught.as_mut().start(call, cx),
        None => caught.as_mut().poll(cx),
    })
    .await
}

/// What [`run`] needs to know of an attempt besides its delivery.
pub(crate) struct Attempt<'a> {
    /// 1 for the first attempt, then one more per retry (or per redelivery by the broker).
    pub(crate) number: u32,
    /// `true` when no attempt follows a failure of this one: it then goes to the dead letter.
    pub(crate) last: bool,
    /// How long the attempt may take, if bounded.
    pub(crate) timeout: Option<Duration>,
    /// The bus's dead-letter hook.
    pub(crate) dead_letter: Option<&'a DeadLetterHook>,
}

/// Makes one attempt of a delivery run apart from its emitter: of a listener with a
/// [`Policy`](crate::Policy) (one call per retry, in the listener's lane, or in a task of its
/// own in [`Dispatch::Spawn`](crate::Dispatch) mode), or of a listener that receives its
/// events from a broker (one call per delivery the broker makes, in its consumer's task).
/// The layers' `before` and `after` surround the call and the future; a last attempt that
/// fails goes to the dead letter.
pub(crate) async fn run(scope: &Scope<'_>, event: &ErasedEvent, attempt: Attempt<'_>) -> Outcome {
    let number = attempt.number;
    let started = scope.before(number);
    let mut pending = PendingAttempt {
        scope,
        number,
        started,
        done: false,
    };
    let envelope = || scope.envelope();
    let called = erased(&*scope.entry.erased.listener, event, &envelope);
    let outcome = match attempt.timeout {
        Some(timeout) => tokio::time::timeout(timeout, called)
            .await
            .unwrap_or(Outcome::TimedOut(timeout)),
        None => called.await,
    };
    pending.done = true;
    let failed = !outcome.is_delivered();
    scope.after(number, started, outcome.result(), failed && !attempt.last);
    if failed && attempt.last {
        return scope.dead_letter(event, number, outcome, attempt.dead_letter);
    }
    outcome
}

/// An attempt in progress: tells the layers it was aborted if the delivery is dropped
/// (shutdown) before the attempt ends, so every `before` has its `after`.
struct PendingAttempt<'a> {
    scope: &'a Scope<'a>,
    number: u32,
    started: Option<Instant>,
    done: bool,
}

impl Drop for PendingAttempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.scope
                .after(self.number, self.started, AttemptResult::Aborted, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct PanicsOnDrop(bool);

    impl Future for PanicsOnDrop {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                self.0 = false;
                return Poll::Pending;
            }
            Poll::Ready(())
        }
    }

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("dropped");
        }
    }

    fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn a_future_that_panics_as_it_is_dropped_fails_its_attempt() {
        let mut caught = std::pin::pin!(Caught::new(PanicsOnDrop(false)));
        match poll_once(caught.as_mut()) {
            Poll::Ready(Outcome::Panicked(message)) => assert_eq!(message, "dropped"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_future_dropped_unfinished_has_its_panic_caught() {
        let mut caught = Box::pin(Caught::new(PanicsOnDrop(true)));
        assert!(poll_once(caught.as_mut()).is_pending());
        drop(caught);
    }

    #[test]
    fn a_panicking_call_is_an_outcome() {
        let called: Result<(), Outcome> = call(|| panic!("in the call"));
        assert!(matches!(called, Err(Outcome::Panicked(message)) if message == "in the call"));
    }

    #[test]
    fn an_emptied_slot_takes_the_next_future() {
        let mut slot = Box::pin(Caught::empty());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..2 {
            let started = slot.as_mut().start(|| std::future::ready(()), &mut cx);
            assert!(matches!(started, Poll::Ready(Outcome::Delivered)));
        }
        let panicked = slot.as_mut().start(
            || -> std::future::Ready<()> { panic!("in the call") },
            &mut cx,
        );
        assert!(
            matches!(&panicked, Poll::Ready(Outcome::Panicked(message)) if message == "in the call"),
            "{panicked:?}"
        );
        let started = slot.as_mut().start(|| std::future::ready(()), &mut cx);
        assert!(
            matches!(started, Poll::Ready(Outcome::Delivered)),
            "the slot serves on"
        );
    }
}
