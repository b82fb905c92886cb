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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crossbeam_utils::atomic::AtomicCell;
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tracing::Instrument as _;

use crate::attempts::{PolicyDelivery, TimedOut};
use crate::emission::{Conclusion, Outcomes};
use crate::error::{BoxError, DeliveryError};
use crate::event::{Handling, Meta};
use crate::layer::{AttemptResult, DeadLetterHook, DeliveryInfo, DeliveryOutcome, Layers};
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
    /// Set by `shutdown`: no delivery task starts after it.
    closed: AtomicBool,
    /// Callers of [`idle`](Tasks::idle) waiting right now: the last delivery to finish only
    /// pays for a wake-up (a lock inside `Notify`) when somebody waits for it.
    idlers: AtomicUsize,
    idle: Notify,
    /// Set by [`cancel_all`](Tasks::cancel_all); deliveries that start later see it.
    cancelled: AtomicBool,
    /// Wakes the waiting deliveries when [`cancel_all`](Tasks::cancel_all) is called.
    cancel: Arc<Notify>,
    /// `max_in_flight`: at most this many deliveries held at once.
    limit: Option<usize>,
    /// Callers of [`room`](Tasks::room) waiting right now, as `idlers` for `idle`.
    room_waiters: AtomicUsize,
    room: Notify,
}

impl Tasks {
    pub(crate) fn new(limit: Option<usize>) -> Self {
        Tasks {
            limit,
            ..Tasks::default()
        }
    }

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
        // SeqCst, with `finish`: either the last finisher sees this waiter and wakes it, or
        // this waiter sees the count at zero.
        self.idlers.fetch_add(1, Ordering::SeqCst);
        let _idler = Idler(self);
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
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify_waiters();
    }

    /// Refuses every delivery task from now on; see [`try_start`](Tasks::try_start).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// `true` once [`close`](Tasks::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Counts one more delivery task as in flight, unless the bus is closed.
    ///
    /// SeqCst on both sides, with `close` followed by [`idle`](Tasks::idle) in `shutdown`:
    /// either this sees the bus closed and starts nothing, or `shutdown` sees this task in
    /// flight and waits for it. So no task ever starts behind a finished shutdown.
    fn try_start(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.start_reserved()
    }

    /// Starts a delivery task that already holds its place in the in-flight count (its
    /// [`Reservation`]), unless the bus is closed; then the place is given back.
    fn start_reserved(&self) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            self.finish();
            return false;
        }
        true
    }

    fn finish(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.idlers.load(Ordering::SeqCst) > 0
        {
            self.idle.notify_waiters();
        }
        if self.limit.is_some() && self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Counts a task that is not a local delivery (a publish to the broker, a delivery from
    /// it) as in flight until the returned guard drops, so `drain` and `shutdown` wait for it
    /// too. `None`, and nothing counted, once the bus is closed.
    pub(crate) fn track(self: &Arc<Self>) -> Option<Tracked> {
        self.try_start().then(|| Tracked(Arc::clone(self)))
    }

    /// Resolves once [`cancel_all`](Tasks::cancel_all) has been called.
    pub(crate) async fn cancelled(&self) {
        loop {
            let mut notified = pin!(self.cancel.notified());
            notified.as_mut().enable();
            if self.cancelled.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Counts one task aborted by shutdown.
    pub(crate) fn count_aborted(&self) {
        self.aborted.fetch_add(1, Ordering::AcqRel);
    }

    /// The `max_in_flight` limit, if the bus has one.
    pub(crate) fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Holds `places` places under the `max_in_flight` limit for the deliveries of one emit, all
    /// or none: `None` when they do not fit. Each place is given back when its delivery ends
    /// (see [`Reservation`]).
    pub(crate) fn try_reserve(&self, places: usize) -> Option<Reserved<'_>> {
        let limit = self.limit?;
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current.saturating_add(places) > limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + places,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(Reserved {
                        tasks: self,
                        left: places,
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Resolves once a delivery has ended since `ready` was called (so there may be room under
    /// the limit now). `ready` runs after the waiter is registered: whatever ends after its
    /// check wakes this.
    pub(crate) async fn room(&self, ready: impl FnOnce() -> bool) {
        self.room_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiter = RoomWaiter(self);
        let mut notified = pin!(self.room.notified());
        notified.as_mut().enable();
        if ready() {
            return;
        }
        notified.await;
    }
}

/// Counts a caller of [`Tasks::room`] as waiting until it returns or is dropped.
/// One task counted in flight by [`Tasks::track`], until dropped.
pub(crate) struct Tracked(Arc<Tasks>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.finish();
    }
}

struct RoomWaiter<'a>(&'a Tasks);

impl Drop for RoomWaiter<'_> {
    fn drop(&mut self) {
        self.0.room_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The places one emit holds under the `max_in_flight` limit, handed out one per delivery;
/// those not handed out are given back when this is dropped.
pub(crate) struct Reserved<'a> {
    tasks: &'a Tasks,
    left: usize,
}

impl<'a> Reserved<'a> {
    /// One place, for one delivery.
    pub(crate) fn take(&mut self) -> Option<Reservation<'a>> {
        self.left = self.left.checked_sub(1)?;
        Some(Reservation(self.tasks))
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        for _ in 0..self.left {
            self.tasks.finish();
        }
    }
}

/// One place held under the `max_in_flight` limit for one delivery. Dropped, it gives the
/// place back; a delivery that continues in a task [keeps](Reservation::keep) it, and its task
/// gives it back when it ends.
pub(crate) struct Reservation<'a>(&'a Tasks);

impl Reservation<'_> {
    /// Hands the place to a delivery task, which leaves the in-flight count when it ends.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Counts a caller of [`Tasks::idle`] as waiting until it returns or is dropped.
struct Idler<'a>(&'a Tasks);

impl Drop for Idler<'_> {
    fn drop(&mut self) {
        self.0.idlers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One delivery of one event to one listener, about to run.
pub(crate) struct Dispatcher<'a> {
    /// What every delivery of the emit shares, passed by reference: a delivery hands the
    /// listener only a few words.
    pub(crate) emit: &'a EmitContext<'a>,
    pub(crate) entry: &'a Arc<Entry>,
    pub(crate) outcomes: &'a mut Outcomes,
    /// This delivery's place under the `max_in_flight` limit, when the bus has one.
    pub(crate) reservation: Option<Reservation<'a>>,
}

/// Whether this thread runs in a Tokio runtime's context, where delivery tasks can be spawned.
///
/// Inside a task (the common case) that is a thread-local read of the task's id; elsewhere
/// (`block_on`, a thread that entered a runtime) it is the handle lookup, which clones an
/// `Arc`.
pub(crate) fn in_runtime() -> bool {
    tokio::task::try_id().is_some() || Handle::try_current().is_ok()
}

/// What the deliveries of one emit share.
pub(crate) struct EmitContext<'a> {
    pub(crate) mode: Dispatch,
    pub(crate) tasks: &'a Arc<Tasks>,
    pub(crate) event_name: &'a Arc<str>,
    pub(crate) emit_span: &'a tracing::Span,
    pub(crate) meta: &'a Meta,
    pub(crate) layers: &'a Layers,
    pub(crate) dead_letter: Option<&'a DeadLetterHook>,
}

/// Where a delivery's conclusion is reported: its event, listener, envelope and layers.
pub(crate) struct Scope<'a> {
    pub(crate) event: &'a Arc<str>,
    pub(crate) entry: &'a Arc<Entry>,
    pub(crate) meta: &'a Meta,
    pub(crate) layers: &'a Layers,
}

impl Scope<'_> {
    pub(crate) fn info(&self, attempt: u32) -> DeliveryInfo<'_> {
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
        for layer in self.layers.iter() {
            layer.before(&info);
        }
        self.layers.timed().then(Instant::now)
    }

    /// Calls every layer's `after` for the last attempt of a delivery.
    #[inline]
    pub(crate) fn after(&self, attempt: u32, started: Option<Instant>, result: AttemptResult<'_>) {
        self.after_attempt(attempt, started, result, false);
    }

    /// Calls every layer's `after` for `attempt`; `retried` when another attempt follows.
    #[inline]
    pub(crate) fn after_attempt(
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
        for layer in self.layers.iter() {
            layer.after(&info, &outcome);
        }
    }
}

impl<'a> Dispatcher<'a> {
    fn scope(&self) -> Scope<'a> {
        Scope {
            event: self.emit.event_name,
            entry: self.entry,
            meta: self.emit.meta,
            layers: self.emit.layers,
        }
    }

    /// Runs the delivery under the bus's mode. Its outcome lands in the emission's report and
    /// in the layers (the log among them), whatever happens: completion, error, panic,
    /// shutdown, or the runtime going away.
    ///
    /// The emit marks its event as the one being handled (for causation) around all its
    /// inline deliveries at once; a delivery task marks it around each of its polls.
    ///
    /// `call` calls the listener. It runs here, on the emitter's thread, only in
    /// [`Dispatch::InlineFirst`] mode and below the inline depth limit; otherwise the delivery
    /// is deferred to a task that calls the listener there. `slots` keeps the memory of an
    /// inline delivery for the listener's next one, so a listener that completes at once costs
    /// no allocation.
    pub(crate) fn run<E, F>(
        self,
        event: Arc<E>,
        call: impl FnOnce(Arc<E>) -> F,
        slots: &FutureSlots<F>,
    ) where
        E: Send + Sync + 'static,
        F: Future + Send + 'static,
        F::Output: ListenerOutput,
    {
        let span = tracing::debug_span!(
            parent: self.emit.emit_span,
            "bus.deliver",
            event = %self.emit.event_name,
            event_id = %self.emit.meta.id,
            listener = %self.entry.info.name(),
            listener_id = self.entry.info.id().get(),
            attempt = tracing::field::Empty,
        );
        if self.entry.lane.is_some() {
            // The policy path calls the layers for each attempt itself, each attempt in a
            // `bus.attempt` span of its own.
            return self.with_policy(event, span);
        }
        if !span.is_disabled() {
            span.record("attempt", 1_u32);
        }
        let started = if self.emit.layers.only_tracing() {
            None
        } else {
            span.in_scope(|| self.scope().before(1))
        };
        let inline_depth = match self.emit.mode {
            Dispatch::InlineFirst => InlineDepth::enter(),
            Dispatch::Spawn => None,
        };
        let Some(inline_depth) = inline_depth else {
            return self.defer(event, span, started);
        };
        if self.entry.suspends() {
            // The call itself may run user code (a closure's body before its `async` block), so
            // it is caught and counts towards the depth.
            let called = {
                let _entered = span.enter();
                std::panic::catch_unwind(AssertUnwindSafe(|| call(event)))
            };
            drop(inline_depth);
            return match called {
                Ok(future) => self.spawn(future, span, started),
                Err(payload) => self.conclude_here(&span, started, Some(Err(payload))),
            };
        }

        let mut slot = slots.take();
        let polled = {
            let _entered = span.enter();
            // A waker that does nothing: if the listener is not done, it is polled again as a
            // task, and futures register the waker of their latest poll.
            let mut cx = Context::from_waker(Waker::noop());
            // The call is caught and counted towards the depth as above; its future is written
            // straight into the slot.
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                slot.set(Some(call(event)));
                poll_slot(slot.as_mut(), &mut cx)
            }))
        };
        drop(inline_depth);
        let outcome = match polled {
            Ok(Poll::Pending) => {
                // The future stays where it is, in `slot`, and the task polls it from there.
                self.entry.mark_suspends();
                let mut slot = slot;
                let rest = std::future::poll_fn(move |cx| poll_slot(slot.as_mut(), cx));
                return self.spawn(rest, span, started);
            }
            Ok(Poll::Ready(output)) => Ok(output.into_result()),
            Err(payload) => Err(payload),
        };
        // Drops the finished future in place; the memory serves the next delivery.
        slot.set(None);
        slots.put(slot);
        if self.emit.layers.only_tracing() && matches!(outcome, Ok(Ok(()))) {
            // Only the tracing layer, which has nothing to say about a success: the report
            // counts it, as `conclude` would.
            self.outcomes.record(Ok(()));
            return;
        }
        self.conclude_here(&span, started, Some(outcome));
    }

    /// Concludes a delivery that ended on the emitter's thread (completed inline, or refused
    /// a task by shutdown) straight into the emission. Its place under `max_in_flight`, if
    /// any, is given back as `self` is dropped.
    fn conclude_here(self, span: &tracing::Span, started: Option<Instant>, outcome: Outcome) {
        let conclusion = span.in_scope(|| conclude(&self.scope(), started, outcome));
        self.outcomes.record(conclusion);
    }

    /// Runs the whole delivery, the call to the listener included, in a task of its own.
    fn defer(self, event: ErasedEvent, span: tracing::Span, started: Option<Instant>) {
        let entry = Arc::clone(self.entry);
        let delivery = async move {
            match entry.erased.listener.call_boxed(&event) {
                Some(future) => future.await,
                // The bus checked the event's type before dispatching it here.
                None => Err("the event is not of the listener's type".into()),
            }
        };
        self.spawn(delivery, span, started);
    }

    /// Runs the delivery under its listener's policy, in a task of its own: its place in line
    /// is taken now, so that deliveries of a `concurrency = 1` listener run in emit order.
    fn with_policy(self, event: ErasedEvent, span: tracing::Span) {
        let Some(lane) = &self.entry.lane else {
            return self.defer(event, span, None);
        };
        let delivery = PolicyDelivery {
            turn: lane.queue(),
            entry: Arc::clone(self.entry),
            event,
            name: Arc::clone(self.emit.event_name),
            meta: *self.emit.meta,
            layers: self.emit.layers.clone(),
            dead_letter: self.emit.dead_letter.cloned(),
        };
        self.spawn(delivery.run(), span, None);
    }

    fn spawn<F>(mut self, delivery: F, span: tracing::Span, started: Option<Instant>)
    where
        F: Future + Send + 'static,
        F::Output: ListenerOutput,
    {
        // Looked up here rather than by the emit: most deliveries complete inline, and the
        // lookup clones the handle's `Arc`.
        let Ok(runtime) = Handle::try_current() else {
            // The emit was in a runtime's context (`in_runtime`), but this thread is not in
            // one now: a task dropped by a runtime that has gone away, emitting as it drops.
            self.emit.tasks.aborted.fetch_add(1, Ordering::AcqRel);
            drop(delivery);
            return self.conclude_here(&span, started, None);
        };
        let started_task = match self.reservation.take() {
            Some(reservation) => {
                // The task gives the place back when it ends, as any task leaves the count.
                reservation.keep();
                self.emit.tasks.start_reserved()
            }
            None => self.emit.tasks.try_start(),
        };
        if !started_task {
            // Shutdown began after this emit checked: the delivery is aborted before it starts.
            self.emit.tasks.aborted.fetch_add(1, Ordering::AcqRel);
            drop(delivery);
            return self.conclude_here(&span, started, None);
        }
        let task = DeliveryTask {
            delivery: Some(delivery),
            cancelled: None,
            guard: DeliveryGuard {
                tasks: Arc::clone(self.emit.tasks),
                event: Arc::clone(self.emit.event_name),
                entry: Arc::clone(self.entry),
                meta: *self.emit.meta,
                layers: self.emit.layers.clone(),
                started,
                recorded: false,
            },
        };
        // A span nobody records costs nothing to leave out, and its wrapper would grow every
        // task.
        let handle = if span.is_disabled() {
            runtime.spawn(task)
        } else {
            runtime.spawn(task.instrument(span))
        };
        self.outcomes.continued_in_task(handle, self.entry);
    }
}

pin_project! {
    /// The task of one delivery: the listener's future, caught and cancellable, concluded
    /// exactly once.
    ///
    /// Written as a struct rather than nested `async` blocks: each `async` layer around a
    /// future may keep its own copy of it, and tokio allocates every task at its future's size
    /// (rounded up to 128 bytes), so the layers made a pending delivery several times larger.
    struct DeliveryTask<F> {
        // `None` once an aborted delivery was dropped, before it is concluded: whatever its
        // drop does (a policy delivery tells the layers) happens before `shutdown` returns.
        #[pin]
        delivery: Option<F>,
        // Registered the first time the delivery waits: one that completes on its first poll
        // touches no shared lock.
        #[pin]
        cancelled: Option<OwnedNotified>,
        guard: DeliveryGuard,
    }
}

impl<F> Future for DeliveryTask<F>
where
    F: Future,
    F::Output: ListenerOutput,
{
    type Output = Conclusion;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Conclusion> {
        let mut this = self.project();
        let polled = {
            // What the listener emits while it runs records this event as its cause.
            let _handling = Handling::enter(this.guard.meta.id);
            match this.delivery.as_mut().as_pin_mut() {
                Some(delivery) => std::panic::catch_unwind(AssertUnwindSafe(|| delivery.poll(cx))),
                // Only after an abort, which concluded the task.
                None => return Poll::Pending,
            }
        };
        let outcome = match polled {
            Ok(Poll::Ready(output)) => Some(Ok(output.into_result())),
            Err(payload) => Some(Err(payload)),
            Ok(Poll::Pending) => {
                let tasks = &this.guard.tasks;
                if this.cancelled.is_none() {
                    // Created before the flag is checked: `notify_waiters` reaches every
                    // `Notified` created before it was called, so no cancellation falls
                    // between the two.
                    this.cancelled
                        .set(Some(Arc::clone(&tasks.cancel).notified_owned()));
                }
                let cancelled = tasks.cancelled.load(Ordering::SeqCst)
                    || this
                        .cancelled
                        .as_pin_mut()
                        .is_some_and(|notified| notified.poll(cx).is_ready());
                if !cancelled {
                    return Poll::Pending;
                }
                this.delivery.set(None);
                None
            }
        };
        Poll::Ready(this.guard.conclude(outcome))
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
/// delivering to the same listener at the same moment allocates its own. The spare is one
/// pointer in an `AtomicCell`: taking and returning it is one atomic swap each.
pub(crate) struct FutureSlots<F> {
    spare: AtomicCell<Option<FutureSlot<F>>>,
}

impl<F> Default for FutureSlots<F> {
    fn default() -> Self {
        FutureSlots {
            spare: AtomicCell::new(None),
        }
    }
}

impl<F> FutureSlots<F> {
    fn take(&self) -> FutureSlot<F> {
        self.spare.take().unwrap_or_else(|| Box::pin(None))
    }

    fn put(&self, slot: FutureSlot<F>) {
        // Another delivery may have put its slot back meanwhile: one of the two is freed.
        drop(self.spare.swap(Some(slot)));
    }
}

/// How a delivery ended: `None` when it was aborted.
type Outcome = Option<Result<Result<(), BoxError>, Box<dyn Any + Send>>>;

/// Turns how a delivery ended into its report entry, and tells the layers (the log among
/// them). Runs inside the delivery's span.
///
/// A listener with a policy has told the layers about each attempt already; its outcome here
/// is that of its last attempt.
fn conclude(scope: &Scope<'_>, started: Option<Instant>, outcome: Outcome) -> Conclusion {
    let hooks = scope.entry.lane.is_none();
    if let Some(Ok(Ok(()))) = outcome {
        if hooks {
            scope.after(1, started, AttemptResult::Delivered);
        }
        return Ok(());
    }
    let info = &scope.entry.info;
    let (event, listener, listener_id) =
        (Arc::clone(scope.event), Arc::clone(&info.name), info.id());
    match outcome {
        Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(source))) => {
            if let Some(&TimedOut(timeout)) = source.downcast_ref::<TimedOut>() {
                if hooks {
                    scope.after(1, started, AttemptResult::TimedOut(timeout));
                }
                return Err(DeliveryError::TimedOut {
                    event,
                    listener,
                    listener_id,
                    timeout,
                });
            }
            if hooks {
                scope.after(1, started, AttemptResult::Failed(&source));
            }
            Err(DeliveryError::Failed {
                event,
                listener,
                listener_id,
                source,
            })
        }
        Some(Err(payload)) => {
            let message = panic_message(payload.as_ref());
            if hooks {
                scope.after(1, started, AttemptResult::Panicked(&message));
            }
            Err(DeliveryError::Panicked {
                event,
                listener,
                listener_id,
                message,
            })
        }
        None => {
            if hooks {
                scope.after(1, started, AttemptResult::Aborted);
            }
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
    meta: Meta,
    layers: Layers,
    started: Option<Instant>,
    recorded: bool,
}

impl DeliveryGuard {
    fn conclude(&mut self, outcome: Outcome) -> Conclusion {
        self.recorded = true;
        if outcome.is_none() {
            self.tasks.aborted.fetch_add(1, Ordering::AcqRel);
        }
        let scope = Scope {
            event: &self.event,
            entry: &self.entry,
            meta: &self.meta,
            layers: &self.layers,
        };
        let conclusion = conclude(&scope, self.started, outcome);
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
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
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
        assert!(tasks.try_start());
        assert!(tasks.try_start());
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

    #[test]
    fn a_spare_slot_is_one_lock_free_pointer() {
        type Slot = Option<FutureSlot<std::future::Ready<()>>>;
        assert_eq!(size_of::<Slot>(), size_of::<usize>());
        assert!(AtomicCell::<Slot>::is_lock_free());
    }

    #[test]
    fn no_task_starts_once_closed() {
        let tasks = Tasks::default();
        assert!(tasks.try_start());
        tasks.close();
        assert!(!tasks.try_start(), "closed: refused");
        assert_eq!(tasks.in_flight(), 1, "the refused start left no trace");
        tasks.finish();
        assert_eq!(tasks.in_flight(), 0);
    }
}
