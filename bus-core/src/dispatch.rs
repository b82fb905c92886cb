//! Running deliveries: isolated so that a panic or an error stays with its listener, tracked so
//! that `drain` and `shutdown` can wait for every one, and cheap when a listener has nothing to
//! wait for.
//!
//! In the default [`Dispatch::InlineFirst`] mode a delivery is polled once, right away, on the
//! emitter's thread. A listener that completes in that poll costs no task; one that awaits
//! something not ready yet continues as its own Tokio task, and from then on that listener is
//! spawned directly (it suspends, so polling it first would only cost it twice).
//! [`Dispatch::Spawn`] spawns every delivery.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt as _;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::emission::{Conclusion, Outcomes};
use crate::error::{BoxError, DeliveryError};
use crate::listener::{ErasedEvent, ListenerOutput};
use crate::registry::Entry;

/// How a bus runs its listeners. Every mode keeps the same guarantees: `emit` never waits for a
/// listener's `.await`, panics and errors are isolated and reported, and every delivery is
/// tracked by `drain`, `shutdown` and the [`DeliveryReport`](crate::DeliveryReport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Dispatch {
    /// Poll each delivery once on the emitter's thread, before `emit` returns. If it completes,
    /// that is all: no task, no allocation per listener. If it awaits something not ready, it
    /// continues as its own Tokio task, and later deliveries to that listener are spawned
    /// directly.
    ///
    /// So the code of a listener before its first `.await` runs on the emitter's thread (keep
    /// blocking work out of listeners, as in any async code); a listener that emits in turn is
    /// polled inline only up to a small depth, then spawned, so the stack stays bounded.
    #[default]
    InlineFirst,
    /// Spawn every delivery as its own Tokio task: a listener never runs on the emitter's
    /// thread, at the cost of a task per delivery.
    Spawn,
}

/// How deep inline deliveries may nest (a listener that emits, whose listener emits...) before
/// further deliveries are spawned instead.
const MAX_INLINE_DEPTH: u32 = 8;

thread_local! {
    static INLINE_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Marks the current thread as running an inline delivery while alive.
struct InlineDepth;

impl InlineDepth {
    fn enter() -> Option<InlineDepth> {
        INLINE_DEPTH.with(|depth| {
            let current = depth.get();
            (current < MAX_INLINE_DEPTH).then(|| {
                depth.set(current + 1);
                InlineDepth
            })
        })
    }
}

impl Drop for InlineDepth {
    fn drop(&mut self) {
        INLINE_DEPTH.with(|depth| depth.set(depth.get() - 1));
    }
}

/// Counts the delivery tasks of one bus that have not finished yet.
///
/// A plain counter rather than `tokio_util::task::TaskTracker`: `drain` must be able to wait for
/// idleness many times, concurrently, without closing anything, and a tracker only reports
/// "empty" once it is closed.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    in_flight: AtomicUsize,
    aborted: AtomicUsize,
    idle: Notify,
    cancel: CancellationToken,
}

impl Tasks {
    /// Deliveries that have started and not finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Deliveries aborted so far (by `shutdown`, or by their runtime shutting down).
    pub(crate) fn aborted(&self) -> usize {
        self.aborted.load(Ordering::Acquire)
    }

    /// Resolves once no delivery is in flight. Deliveries that start while this waits (for
    /// example events emitted by listeners) are waited for too.
    pub(crate) async fn idle(&self) {
        loop {
            let mut notified = pin!(self.idle.notified());
            // Register before checking, or a wake-up between the check and the await is lost.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Makes every running and future delivery stop at its next await point.
    pub(crate) fn cancel_all(&self) {
        self.cancel.cancel();
    }

    /// Counts the caller as in flight until the returned guard drops: `emit` holds one while it
    /// checks whether the bus is closed and dispatches, so `shutdown` cannot miss it.
    pub(crate) fn hold(&self) -> Hold<'_> {
        self.start();
        Hold(self)
    }

    // SeqCst, with the bus's `closed` flag: an emit increments then reads `closed`, shutdown
    // writes `closed` then reads the count; one of the two must see the other.
    fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    fn finish(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Keeps an emit counted as in flight; see [`Tasks::hold`].
pub(crate) struct Hold<'a>(&'a Tasks);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// One delivery of one event to one listener, about to run.
pub(crate) struct Dispatcher<'a> {
    pub(crate) mode: Dispatch,
    pub(crate) runtime: &'a Handle,
    pub(crate) tasks: &'a Arc<Tasks>,
    pub(crate) event_name: &'a Arc<str>,
    pub(crate) event: &'a ErasedEvent,
    pub(crate) entry: &'a Arc<Entry>,
    pub(crate) emit_span: &'a tracing::Span,
    pub(crate) outcomes: &'a mut Outcomes,
}

impl Dispatcher<'_> {
    /// Runs the delivery under the bus's mode. Its outcome lands in the emission's report and
    /// in the log, whatever happens: completion, error, panic, shutdown, or the runtime going
    /// away.
    ///
    /// `call` calls the listener. It runs here, on the emitter's thread, only in
    /// [`Dispatch::InlineFirst`] mode and below the inline depth limit; otherwise the delivery
    /// is deferred to a task that calls the listener there. `slots` keeps the memory of an
    /// inline delivery for the listener's next one, so a listener that completes at once costs
    /// no allocation.
    pub(crate) fn run<F>(self, call: impl FnOnce() -> F, slots: &FutureSlots<F>)
    where
        F: Future + Send + 'static,
        F::Output: ListenerOutput,
    {
        let span = tracing::debug_span!(
            parent: self.emit_span,
            "bus.deliver",
            event = %self.event_name,
            listener = %self.entry.info.name(),
            listener_id = self.entry.info.id().get(),
        );
        let inline_depth = match self.mode {
            Dispatch::InlineFirst => InlineDepth::enter(),
            Dispatch::Spawn => None,
        };
        let Some(inline_depth) = inline_depth else {
            return self.defer(span);
        };
        // The call itself may run user code (a closure's body before its `async` block), so it
        // counts towards the depth too.
        let called = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(call))
        };
        let future = match called {
            Ok(future) => future,
            Err(payload) => {
                drop(inline_depth);
                return self.conclude_inline(&span, Err(payload));
            }
        };
        if self.entry.suspends() {
            drop(inline_depth);
            return self.spawn(async move { future.await.into_result() }, span);
        }

        let mut slot = slots.take();
        slot.set(Some(future));
        let polled = {
            let _entered = span.enter();
            // A waker that does nothing: if the listener is not done, it is polled again as a
            // task, and futures register the waker of their latest poll.
            let mut cx = Context::from_waker(Waker::noop());
            std::panic::catch_unwind(AssertUnwindSafe(|| poll_slot(slot.as_mut(), &mut cx)))
        };
        drop(inline_depth);
        let outcome = match polled {
            Ok(Poll::Pending) => {
                // The future stays where it is, in `slot`, and the task polls it from there.
                self.entry.mark_suspends();
                let mut slot = slot;
                let rest = std::future::poll_fn(move |cx| poll_slot(slot.as_mut(), cx));
                return self.spawn(async move { rest.await.into_result() }, span);
            }
            Ok(Poll::Ready(output)) => Ok(output.into_result()),
            Err(payload) => Err(payload),
        };
        // Drops the finished future in place; the memory serves the next delivery.
        slot.set(None);
        slots.put(slot);
        self.conclude_inline(&span, outcome);
    }

    fn conclude_inline(
        self,
        span: &tracing::Span,
        outcome: Result<Result<(), BoxError>, Box<dyn Any + Send>>,
    ) {
        let conclusion = span.in_scope(|| conclude(self.event_name, self.entry, Some(outcome)));
        self.outcomes.record(conclusion);
    }

    /// Runs the whole delivery, the call to the listener included, in a task of its own.
    fn defer(self, span: tracing::Span) {
        let (entry, event) = (Arc::clone(self.entry), Arc::clone(self.event));
        let delivery = async move {
            match entry.erased.listener.call_boxed(&event) {
                Some(future) => future.await,
                // The bus checked the event's type before dispatching it here.
                None => Err("the event is not of the listener's type".into()),
            }
        };
        self.spawn(delivery, span);
    }

    fn spawn<F>(self, delivery: F, span: tracing::Span)
    where
        F: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.tasks.start();
        let mut guard = DeliveryGuard {
            tasks: Arc::clone(self.tasks),
            event: Arc::clone(self.event_name),
            entry: Arc::clone(self.entry),
            recorded: false,
        };
        let task = async move {
            let caught = AssertUnwindSafe(delivery).catch_unwind();
            let outcome = guard.tasks.cancel.run_until_cancelled(caught).await;
            guard.conclude(outcome)
        };
        let handle = self.runtime.spawn(task.instrument(span));
        self.outcomes.continued_in_task(handle, self.entry);
    }
}

/// Heap memory for one listener future, pinned, empty between deliveries.
type FutureSlot<F> = Pin<Box<Option<F>>>;

/// Polls the future in `slot`, which holds one until it completes.
fn poll_slot<F: Future>(slot: Pin<&mut Option<F>>, cx: &mut Context<'_>) -> Poll<F::Output> {
    slot.as_pin_mut()
        .expect("a slot holds its future until the future completes")
        .poll(cx)
}

/// A listener's spare [`FutureSlot`]: the memory of its last inline delivery, reused by the next.
///
/// `Pin::set` drops a finished future in place and writes the next one into the same pinned
/// memory, so reuse needs no `unsafe`. One spare is enough for one emitter; a second thread
/// delivering to the same listener at the same moment allocates its own.
pub(crate) struct FutureSlots<F> {
    spare: Mutex<Option<FutureSlot<F>>>,
}

impl<F> Default for FutureSlots<F> {
    fn default() -> Self {
        FutureSlots {
            spare: Mutex::new(None),
        }
    }
}

impl<F> FutureSlots<F> {
    fn take(&self) -> FutureSlot<F> {
        let spare = self
            .spare
            .try_lock()
            .ok()
            .and_then(|mut spare| spare.take());
        spare.unwrap_or_else(|| Box::pin(None))
    }

    fn put(&self, slot: FutureSlot<F>) {
        if let Ok(mut spare) = self.spare.try_lock() {
            *spare = Some(slot);
        }
    }
}

/// How a delivery ended: `None` when it was aborted.
type Outcome = Option<Result<Result<(), BoxError>, Box<dyn Any + Send>>>;

/// Turns how a delivery ended into its report entry, and logs failures. Runs inside the
/// delivery's span.
fn conclude(event: &Arc<str>, entry: &Entry, outcome: Outcome) -> Conclusion {
    if let Some(Ok(Ok(()))) = outcome {
        return Ok(());
    }
    let info = &entry.info;
    let (event, listener, listener_id) = (Arc::clone(event), Arc::clone(&info.name), info.id());
    match outcome {
        Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(source))) => {
            tracing::error!(
                event = %event, listener = %listener, error = %source,
                "listener returned an error"
            );
            Err(DeliveryError::Failed {
                event,
                listener,
                listener_id,
                source,
            })
        }
        Some(Err(payload)) => {
            let message = panic_message(payload.as_ref());
            tracing::error!(
                event = %event, listener = %listener, panic = %message,
                "listener panicked"
            );
            Err(DeliveryError::Panicked {
                event,
                listener,
                listener_id,
                message,
            })
        }
        None => {
            tracing::warn!(
                event = %event, listener = %listener,
                "listener aborted before it finished"
            );
            Err(DeliveryError::Aborted {
                event,
                listener,
                listener_id,
            })
        }
    }
}

/// Concludes a task's delivery exactly once, and accounts for the task's end even when the
/// task is dropped unfinished.
struct DeliveryGuard {
    tasks: Arc<Tasks>,
    event: Arc<str>,
    entry: Arc<Entry>,
    recorded: bool,
}

impl DeliveryGuard {
    fn conclude(&mut self, outcome: Outcome) -> Conclusion {
        self.recorded = true;
        if outcome.is_none() {
            self.tasks.aborted.fetch_add(1, Ordering::AcqRel);
        }
        let conclusion = conclude(&self.event, &self.entry, outcome);
        // The delivery is over: leave the in-flight count before the task's output (the
        // conclusion) is visible, so that whoever awaited the report sees the bus without it.
        self.tasks.finish();
        conclusion
    }
}

impl Drop for DeliveryGuard {
    fn drop(&mut self) {
        if !self.recorded {
            // The task was dropped unfinished: its runtime shut down under it. Its emission
            // reports it as aborted when it finds the task gone.
            let _ = self.conclude(None);
        }
    }
}

/// The text of a panic, when its payload is a string (as `panic!` with a message makes it).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "<panic payload is not a string>".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_extracted() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42_u8), "<panic payload is not a string>");
    }

    #[test]
    fn inline_depth_is_bounded() {
        let mut guards = Vec::new();
        while let Some(guard) = InlineDepth::enter() {
            guards.push(guard);
        }
        assert_eq!(guards.len(), MAX_INLINE_DEPTH as usize);
        guards.pop();
        assert!(
            InlineDepth::enter().is_some(),
            "a level freed is a level usable again"
        );
    }

    #[tokio::test]
    async fn idle_waits_for_every_task() {
        let tasks = Arc::new(Tasks::default());
        tasks.idle().await;
        tasks.start();
        tasks.start();
        let waiter = tokio::spawn({
            let tasks = Arc::clone(&tasks);
            async move { tasks.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tasks.finish();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tasks.finish();
        waiter.await.unwrap();
        assert_eq!(tasks.in_flight(), 0);
    }
}
