//! Running the deliveries of an emit: each isolated so that a panic or an error stays with its
//! listener, tracked so that `drain` and `shutdown` can wait for every one, and cheap when a
//! listener has nothing to wait for.
//!
//! In the default [`Dispatch::InlineFirst`] mode a delivery is polled once, right away, on the
//! emitter's thread. A listener that completes in that poll costs no task; one that awaits
//! something not ready yet continues in the listener's lane ([`lane`](super::lane)), and from
//! then on that listener's deliveries go to its lane whole (it suspends, so polling it first
//! would only cost it twice). [`Dispatch::Spawn`] spawns every delivery.

use std::any::TypeId;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crossbeam_utils::atomic::AtomicCell;
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::sync::futures::OwnedNotified;
use tracing::Instrument as _;

use super::Dispatch;
use super::attempt::{self, Caught, Outcome, Scope};
use super::emission::Emitted;
use super::emission::{Conclusion, Outcomes};
use super::entry::Entry;
use super::erased::Concrete;
use super::lane::{self, Job, LaneContext, Pushed, Started};
use super::policy::PolicyDelivery;
use crate::event::{AnyEvent, ErasedEvent, Handling, Meta};
use crate::layer::{DeadLetterHook, Layers};
use crate::tasks::{Reservation, Reserved, Tasks};

/// How deep inline deliveries may nest (a listener that emits, whose listener emits...) before
/// further deliveries go to their listeners' lanes instead.
const MAX_INLINE_DEPTH: u32 = 8;

thread_local! {
    static INLINE_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Marks the current thread as running an inline delivery while alive.
struct InlineDepth;

impl InlineDepth {
    #[inline]
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
    #[inline]
    fn drop(&mut self) {
        INLINE_DEPTH.with(|depth| depth.set(depth.get() - 1));
    }
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
    /// The test kit's recorder of emits, when a harness is attached, and the emit's listener
    /// count.
    #[cfg(feature = "testing")]
    pub(crate) probe: Option<(&'a Arc<crate::testing::Probe>, usize)>,
    /// The runtime of the emitting thread, looked up by the first delivery that goes to a
    /// lane (the lookup clones an `Arc`: once per emit, not per delivery).
    pub(crate) runtime: std::cell::OnceCell<Option<(Handle, tokio::runtime::Id)>>,
}

/// Hands `event` to each of `targets`, in order, with their places under `max_in_flight`
/// (if any) from `reserved`. Every listener but the last gets a clone of the event's `Arc`;
/// the last gets the `Arc` itself; listeners of `AnyEvent` share one `AnyEvent` around a
/// clone. Returns the listeners that turned out to take another type.
#[inline]
pub(crate) fn deliver_all<'a, E>(
    context: &EmitContext<'_>,
    targets: impl Iterator<Item = &'a Arc<Entry>>,
    event: E,
    mut reserved: Option<Reserved<'_>>,
    outcomes: &mut Outcomes,
) -> Vec<Arc<Entry>>
where
    E: Send + Sync + 'static,
{
    let any = TypeId::of::<AnyEvent>();
    let wraps_in_any = TypeId::of::<E>() != any;
    let mut mismatched = Vec::new();
    // What the listeners emit while they are polled here records this event as its cause.
    let _handling = Handling::enter(&context.meta.id);
    let mut event: Option<ErasedEvent> = Some(Arc::new(event));
    #[cfg(feature = "testing")]
    if let (Some((probe, listeners)), Some(payload)) = (context.probe, &event) {
        probe.emitted(
            context.event_name,
            context.meta,
            std::any::type_name::<E>(),
            listeners,
            Arc::clone(payload),
        );
    }
    let mut any_event: Option<ErasedEvent> = None;
    let mut targets = targets.peekable();
    while let Some(entry) = targets.next() {
        let this = if wraps_in_any && entry.erased.event_type == any {
            event.clone().map(|payload| {
                Arc::clone(any_event.get_or_insert_with(|| {
                    let envelope = attempt::envelope_of(context.event_name, entry, context.meta);
                    Arc::new(AnyEvent::new(envelope, payload, std::any::type_name::<E>()))
                }))
            })
        } else {
            match targets.peek() {
                Some(_) => event.clone(),
                None => event.take(),
            }
        };
        let Some(this) = this else { continue };
        let dispatcher = Dispatcher {
            emit: context,
            entry,
            outcomes: &mut *outcomes,
            reservation: reserved.as_mut().and_then(Reserved::take),
        };
        if !entry.erased.listener.deliver(this, dispatcher) {
            mismatched.push(Arc::clone(entry));
        }
    }
    mismatched
}

/// A delivery on its way to its listener's lane.
enum Handed<E, F> {
    /// The lane calls the listener.
    Call(Arc<E>),
    /// Polled once here, and waiting: its future in the listener's slot, its span, and when
    /// its layers' `before` ran.
    Started {
        slot: Pin<Box<Caught<F>>>,
        span: tracing::Span,
        started: Option<Instant>,
    },
}

/// One delivery of one event to one listener, about to run.
pub(crate) struct Dispatcher<'a> {
    /// What every delivery of the emit shares, passed by reference: a delivery hands the
    /// listener only a few words.
    emit: &'a EmitContext<'a>,
    entry: &'a Arc<Entry>,
    outcomes: &'a mut Outcomes,
    /// This delivery's place under the `max_in_flight` limit, when the bus has one.
    reservation: Option<Reservation<'a>>,
}

impl<'a> Dispatcher<'a> {
    /// The runtime of the emitting thread, and its id. Looked up by the first delivery of
    /// the emit that needs it rather than by the emit: most deliveries complete inline, and
    /// the lookup clones the handle's `Arc`.
    fn runtime(&self) -> Option<&'a (Handle, tokio::runtime::Id)> {
        self.emit
            .runtime
            .get_or_init(|| {
                Handle::try_current().ok().map(|handle| {
                    let id = handle.id();
                    (handle, id)
                })
            })
            .as_ref()
    }

    /// Counts the delivery in the bus's in-flight count until it concludes (in a lane or a
    /// task of its own, which gives the place back when it ends), with the place it holds
    /// under `max_in_flight`, if any; `false`, and nothing counted, once the bus is closed.
    fn count_in_flight(&mut self) -> bool {
        match self.reservation.take() {
            Some(reservation) => {
                reservation.keep();
                self.emit.tasks.start_reserved()
            }
            None => self.emit.tasks.try_start(),
        }
    }

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
    /// inline deliveries at once; a lane or a delivery task marks it around each poll.
    ///
    /// In [`Dispatch::InlineFirst`] mode, below the inline depth limit, the listener is called
    /// and its future polled here, on the emitter's thread, in the listener's reusable slot
    /// (so a listener that completes at once costs no allocation); a future that has to wait
    /// goes on in the listener's lane ([`lane`](super::lane)), and so do, whole, the later
    /// deliveries of a listener known to wait, of one with a policy, and those past the depth
    /// limit. [`Dispatch::Spawn`] makes each delivery a task. The call, the poll and the drop
    /// of the future are caught as every attempt's are ([`attempt`]).
    pub(crate) fn run<T: Concrete>(self, event: Arc<T::Event>, listener: &T) {
        let inline_first = self.emit.mode == Dispatch::InlineFirst;
        if inline_first && (self.entry.has_policy() || self.entry.suspends()) {
            return self.hand_to_lane(listener, Handed::Call(event));
        }
        let inline_depth = if inline_first {
            match InlineDepth::enter() {
                Some(depth) => Some(depth),
                None => return self.hand_to_lane(listener, Handed::Call(event)),
            }
        } else {
            None
        };
        let span = tracing::debug_span!(
            parent: self.emit.emit_span,
            "bus.deliver",
            event = %self.emit.event_name,
            event_id = %self.emit.meta.id,
            listener = %self.entry.info.name(),
            listener_id = self.entry.info.id().get(),
            attempt = tracing::field::Empty,
        );
        if self.entry.has_policy() {
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
        let Some(inline_depth) = inline_depth else {
            return self.defer(event, span, started);
        };
        let slots = listener.slots();
        let mut slot = slots.take();
        let polled = {
            let _entered = span.enter();
            // A waker that does nothing: if the listener is not done, its lane polls it again,
            // and futures register the waker of their latest poll.
            let mut cx = Context::from_waker(Waker::noop());
            let scope = self.scope();
            slot.as_mut()
                .start(|| listener.call(event, || scope.envelope()), &mut cx)
        };
        drop(inline_depth);
        let outcome = match polled {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => {
                // The future stays where it is, in `slot`, and the lane polls it from there;
                // the listener's later deliveries go to its lane whole.
                self.entry.mark_suspends();
                return self.hand_to_lane(
                    listener,
                    Handed::Started {
                        slot,
                        span,
                        started,
                    },
                );
            }
        };
        // The finished future was dropped in place; the memory serves the next delivery.
        slots.put(slot);
        match outcome {
            Outcome::Delivered if self.emit.layers.only_tracing() => {
                // Only the tracing layer, which has nothing to say about a success: the report
                // counts it, as `conclude` would.
                self.outcomes.record(Ok(()));
            }
            outcome => self.conclude_here(&span, started, outcome),
        }
    }

    /// Hands the delivery to the listener's lane on this runtime, spawning the lane's task if
    /// the lane has none. The delivery holds its place in the bus's in-flight count (its
    /// reservation under `max_in_flight`, if any) until the lane concludes it.
    // Out of line: it is the path of deliveries that wait, and keeping it out of `run` keeps
    // the inline path (and the emit around it) small enough to be inlined whole.
    #[inline(never)]
    fn hand_to_lane<T: Concrete>(mut self, listener: &T, handed: Handed<T::Event, T::Future>) {
        let Some((runtime, id)) = self.runtime() else {
            // The emit was in a runtime's context (`in_runtime`), but this thread is not in
            // one now: a task dropped by a runtime that has gone away, emitting as it drops.
            self.emit.tasks.count_aborted();
            return self.abort_here(handed);
        };
        if !self.count_in_flight() {
            // Shutdown began after this emit checked: the delivery is aborted before it starts.
            self.emit.tasks.count_aborted();
            return self.abort_here(handed);
        }
        let emit = self.emit;
        let emitted = self.outcomes.emitted(|| {
            Emitted::new(
                Arc::clone(emit.event_name),
                emit.meta.clone(),
                emit.layers.clone(),
                emit.emit_span.clone(),
            )
        });
        emitted.gathered.expect_one();
        let emitted = Arc::clone(emitted);
        let job = match handed {
            Handed::Call(event) => Job::Call { event, emitted },
            Handed::Started {
                slot,
                span,
                started,
            } => Job::Started(Box::new(Started {
                slot,
                emitted,
                span,
                started,
            })),
        };
        let id = *id;
        if let Pushed::SpawnTask = listener.lanes().push(id, job) {
            let context = LaneContext {
                entry: Arc::clone(self.entry),
                tasks: Arc::clone(self.emit.tasks),
                dead_letter: self.emit.dead_letter.cloned(),
                runtime: id,
            };
            lane::spawn::<T>(runtime, context);
        }
    }

    /// Concludes, as aborted, a delivery that could not be handed to its lane, with its
    /// layers' `before` and `after` in pairs: a delivery started here had its `before`, one
    /// the lane was to call has it now (but under a policy, which reports attempts only).
    fn abort_here<E, F>(self, handed: Handed<E, F>) {
        match handed {
            Handed::Call(event) => {
                drop(event);
                let span = tracing::Span::none();
                // A listener with a policy tells its layers about attempts, and this one made
                // none.
                let started = if self.entry.has_policy() {
                    None
                } else {
                    self.scope().before(1)
                };
                self.conclude_here(&span, started, Outcome::Aborted);
            }
            Handed::Started {
                slot,
                span,
                started,
            } => {
                drop(slot);
                self.conclude_here(&span, started, Outcome::Aborted);
            }
        }
    }

    /// Concludes a delivery that ended on the emitter's thread (completed inline, or refused
    /// a task by shutdown) straight into the emission. Its place under `max_in_flight`, if
    /// any, is given back as `self` is dropped.
    fn conclude_here(self, span: &tracing::Span, started: Option<Instant>, outcome: Outcome) {
        let conclusion = span.in_scope(|| attempt::conclude(&self.scope(), started, outcome));
        self.outcomes.record(conclusion);
    }

    /// Runs the whole delivery, the call to the listener included, in a task of its own.
    fn defer(self, event: ErasedEvent, span: tracing::Span, started: Option<Instant>) {
        let entry = Arc::clone(self.entry);
        let (name, meta) = (Arc::clone(self.emit.event_name), self.emit.meta.clone());
        let delivery = async move {
            let envelope = || attempt::envelope_of(&name, &entry, &meta);
            attempt::erased(&*entry.erased.listener, &event, &envelope).await
        };
        self.spawn(delivery, span, started);
    }

    /// Runs the delivery under its listener's policy, in a task of its own
    /// ([`Dispatch::Spawn`]): its place in line is taken now, so that deliveries of a
    /// `concurrency = 1` listener run in emit order.
    fn with_policy(self, event: ErasedEvent, span: tracing::Span) {
        let Some(line) = &self.entry.line else {
            return self.defer(event, span, None);
        };
        let turn = line.queue();
        let delivery = PolicyDelivery {
            entry: Arc::clone(self.entry),
            event,
            name: Arc::clone(self.emit.event_name),
            meta: self.emit.meta.clone(),
            layers: self.emit.layers.clone(),
            dead_letter: self.emit.dead_letter.cloned(),
        };
        let delivery = async move {
            // Held until the last attempt ends: the next delivery in line starts then.
            let _permit = turn.wait().await;
            delivery.run().await
        };
        self.spawn(delivery, span, None);
    }

    fn spawn<F>(mut self, delivery: F, span: tracing::Span, started: Option<Instant>)
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let Some((runtime, _)) = self.runtime() else {
            // The emit was in a runtime's context (`in_runtime`), but this thread is not in
            // one now: a task dropped by a runtime that has gone away, emitting as it drops.
            self.emit.tasks.count_aborted();
            drop(delivery);
            return self.conclude_here(&span, started, Outcome::Aborted);
        };
        if !self.count_in_flight() {
            // Shutdown began after this emit checked: the delivery is aborted before it starts.
            self.emit.tasks.count_aborted();
            drop(delivery);
            return self.conclude_here(&span, started, Outcome::Aborted);
        }
        let task = DeliveryTask {
            delivery: Some(delivery),
            cancelled: None,
            guard: DeliveryGuard {
                tasks: Some(Arc::clone(self.emit.tasks)),
                event: Arc::clone(self.emit.event_name),
                entry: Arc::clone(self.entry),
                meta: self.emit.meta.clone(),
                layers: self.emit.layers.clone(),
                started,
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
    /// The task of one delivery: its attempt (or attempts), cancellable, concluded exactly
    /// once.
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
    F: Future<Output = Outcome>,
{
    type Output = Conclusion;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Conclusion> {
        let mut this = self.project();
        let polled = {
            // What the listener emits while it runs records this event as its cause.
            let _handling = Handling::enter(&this.guard.meta.id);
            match this.delivery.as_mut().as_pin_mut() {
                // Listener panics are caught inside (`Caught`), so a poll returns.
                Some(delivery) => delivery.poll(cx),
                // Only after an abort, which concluded the task.
                None => return Poll::Pending,
            }
        };
        let outcome = match polled {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => {
                let Some(tasks) = &this.guard.tasks else {
                    return Poll::Pending;
                };
                if this.cancelled.is_none() {
                    // Created before the flag is checked: no cancellation falls between the two.
                    this.cancelled.set(Some(tasks.cancellation()));
                }
                let cancelled = tasks.is_cancelled()
                    || this
                        .cancelled
                        .as_pin_mut()
                        .is_some_and(|notified| notified.poll(cx).is_ready());
                if !cancelled {
                    return Poll::Pending;
                }
                this.delivery.set(None);
                Outcome::Aborted
            }
        };
        Poll::Ready(this.guard.conclude(outcome))
    }
}

/// Concludes a task's delivery exactly once, and accounts for the task's end exactly once,
/// even when the task is dropped unfinished or a layer's hook misbehaves.
struct DeliveryGuard {
    /// The bus's task accounting until the delivery has left the in-flight count.
    tasks: Option<Arc<Tasks>>,
    event: Arc<str>,
    entry: Arc<Entry>,
    meta: Meta,
    layers: Layers,
    started: Option<Instant>,
}

impl DeliveryGuard {
    fn conclude(&mut self, outcome: Outcome) -> Conclusion {
        let Some(tasks) = self.tasks.take() else {
            // Concluded already: a task is polled to completion once.
            return Ok(());
        };
        if matches!(outcome, Outcome::Aborted) {
            tasks.count_aborted();
        }
        let scope = Scope {
            event: &self.event,
            entry: &self.entry,
            meta: &self.meta,
            layers: &self.layers,
        };
        let conclusion = attempt::conclude(&scope, self.started, outcome);
        // The delivery is over: leave the in-flight count before the task's output (the
        // conclusion) is visible, so that whoever awaited the report sees the bus without it.
        tasks.finish();
        conclusion
    }
}

impl Drop for DeliveryGuard {
    fn drop(&mut self) {
        if self.tasks.is_some() {
            // The task was dropped unfinished: its runtime shut down under it. Its emission
            // reports it as aborted when it finds the task gone.
            let _ = self.conclude(Outcome::Aborted);
        }
    }
}

/// Heap memory for one listener future, pinned, empty between deliveries.
type FutureSlot<F> = Pin<Box<Caught<F>>>;

/// A listener's spare [`FutureSlot`]: the memory of its last inline delivery, reused by the next.
///
/// [`Caught`] drops a finished future in place and `start` writes the next one into the same
/// pinned memory, so reuse needs no `unsafe`. One spare is enough for one emitter; a second
/// thread delivering to the same listener at the same moment allocates its own. The spare is
/// one pointer in an `AtomicCell`: taking and returning it is one atomic swap each.
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
        self.spare
            .take()
            .unwrap_or_else(|| Box::pin(Caught::empty()))
    }

    fn put(&self, slot: FutureSlot<F>) {
        // Another delivery may have put its slot back meanwhile: one of the two is freed.
        drop(self.spare.swap(Some(slot)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_spare_slot_is_one_lock_free_pointer() {
        type Slot = Option<FutureSlot<std::future::Ready<()>>>;
        assert_eq!(size_of::<Slot>(), size_of::<usize>());
        assert!(AtomicCell::<Slot>::is_lock_free());
    }
}
