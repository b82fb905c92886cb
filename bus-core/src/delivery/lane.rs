//! Lanes: where the deliveries of a listener wait and run when they do not complete on the
//! emitter's thread, in the default [`Dispatch::InlineFirst`](super::Dispatch) mode.
//!
//! A task per waiting delivery costs a Tokio task cell, a spawn and a cancellation
//! registration each. A lane instead is a queue per listener (and per runtime, so that a
//! delivery runs on the runtime of its emitter), drained by one task that lives while the lane
//! has work: `emit` pushes the event, or the future it polled once and found waiting, and wakes
//! the lane's task only if nobody woke it since it last looked. The task starts the deliveries
//! (up to the listener's concurrency limit; the rest wait as queue entries, not futures), polls
//! them together in a [`FuturesUnordered`], and concludes each as it ends: its report entry,
//! its layers' hooks, its place in the bus's in-flight count. Deliveries of one listener still
//! run concurrently, each with its own panic guard, span and causation.
//!
//! The lane's task works in turns of [`POLLS_PER_TURN`] starts and polls, then lets the
//! runtime run other tasks. It registers once for the bus's cancellation (`shutdown`), and
//! aborts every delivery it holds when that comes, or when its runtime drops it.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use pin_project_lite::pin_project;
use tokio::runtime::{Handle, Id};
use tokio::sync::futures::OwnedNotified;

use super::attempt::{self, Caught, Outcome, Scope};
use super::emission::Emitted;
use super::entry::Entry;
use super::erased::Concrete;
use super::policy::PolicyDelivery;
use crate::event::{ErasedEvent, Handling};
use crate::layer::DeadLetterHook;
use crate::tasks::Tasks;

/// How many starts and polls of its deliveries a lane's task makes in one turn at most before
/// it lets the runtime run other tasks (it wakes itself to go on). A turn also ends when the
/// task has spent Tokio's cooperative budget, as any task's does: the lane is one task, and
/// its deliveries share the budget of its turn.
const POLLS_PER_TURN: u32 = 1024;

thread_local! {
    /// The polls left in the turn of the lane running on this thread.
    static POLLS_LEFT: std::cell::Cell<u32> = const { std::cell::Cell::new(u32::MAX) };
}

/// One delivery waiting in a lane, not started yet.
pub(crate) enum Job<E, F> {
    /// Call the listener with this event: the lane makes the whole delivery.
    Call {
        event: Arc<E>,
        emitted: Arc<Emitted>,
    },
    /// A delivery polled once on the emitter's thread that has to wait: the lane polls it on.
    Started(Box<Started<F>>),
}

/// A delivery started on the emitter's thread: its future in the listener's slot, its span,
/// and when its layers' `before` ran.
pub(crate) struct Started<F> {
    pub(crate) slot: Pin<Box<Caught<F>>>,
    pub(crate) emitted: Arc<Emitted>,
    pub(crate) span: tracing::Span,
    pub(crate) started: Option<Instant>,
}

/// The lanes of one listener: one per runtime its deliveries were emitted on (almost always
/// one), each with the jobs its task has not taken yet.
pub(crate) struct Lanes<E, F> {
    lanes: Mutex<Vec<Lane<E, F>>>,
    /// Deliveries of the listener running now, in all its lanes: what its concurrency limit
    /// bounds.
    running: AtomicUsize,
}

impl<E, F> Default for Lanes<E, F> {
    fn default() -> Self {
        Lanes {
            lanes: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
        }
    }
}

/// A lane whose task is alive: present from the push that spawns the task until the task
/// ends (idle) or is dropped.
struct Lane<E, F> {
    runtime: Id,
    queue: Vec<Job<E, F>>,
    /// The task's waker, taken by the first push since the task last looked at the queue: the
    /// task is woken once per batch, not once per event.
    waker: Option<Waker>,
}

/// What a push did: whether the caller must spawn the lane's task.
pub(crate) enum Pushed {
    /// The lane's task was running and is woken (or will see the job anyway).
    Queued,
    /// The lane had no task: the caller spawns one.
    SpawnTask,
}

impl<E, F> Lanes<E, F> {
    fn lock(&self) -> MutexGuard<'_, Vec<Lane<E, F>>> {
        // Nothing panics while the lock is held, but a poisoned lock still holds good data.
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` in the lane of `runtime`.
    pub(crate) fn push(&self, runtime: Id, job: Job<E, F>) -> Pushed {
        let mut lanes = self.lock();
        match lanes.iter_mut().find(|lane| lane.runtime == runtime) {
            Some(lane) => {
                lane.queue.push(job);
                let waker = lane.waker.take();
                drop(lanes);
                if let Some(waker) = waker {
                    waker.wake();
                }
                Pushed::Queued
            }
            None => {
                lanes.push(Lane {
                    runtime,
                    queue: vec![job],
                    waker: None,
                });
                Pushed::SpawnTask
            }
        }
    }

    /// Takes the jobs queued in the lane of `runtime` into `batch`, and leaves `waker` to be
    /// woken by the next push. `false` if the lane is gone (its task was replaced).
    fn take(&self, runtime: Id, batch: &mut Vec<Job<E, F>>, waker: &Waker) -> bool {
        let mut lanes = self.lock();
        let Some(lane) = lanes.iter_mut().find(|lane| lane.runtime == runtime) else {
            return false;
        };
        std::mem::swap(&mut lane.queue, batch);
        match &mut lane.waker {
            Some(current) if current.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        true
    }

    /// Ends the lane of `runtime` if no job waits in it: its task then ends. `false` when a
    /// job came in meanwhile.
    fn close_if_empty(&self, runtime: Id) -> bool {
        let mut lanes = self.lock();
        let Some(index) = lanes.iter().position(|lane| lane.runtime == runtime) else {
            return true;
        };
        if !lanes[index].queue.is_empty() {
            return false;
        }
        lanes.swap_remove(index);
        true
    }

    /// Ends the lane of `runtime` whatever it holds, and returns the jobs it held.
    fn close(&self, runtime: Id) -> Vec<Job<E, F>> {
        let mut lanes = self.lock();
        match lanes.iter().position(|lane| lane.runtime == runtime) {
            Some(index) => lanes.swap_remove(index).queue,
            None => Vec::new(),
        }
    }

    /// Wakes the tasks of the other lanes, after a delivery ended: a place under the
    /// concurrency limit is free, and their waiting jobs may take it.
    fn wake_others(&self, runtime: Id) {
        let wakers: Vec<Waker> = {
            let mut lanes = self.lock();
            if lanes.len() < 2 {
                return;
            }
            lanes
                .iter_mut()
                .filter(|lane| lane.runtime != runtime)
                .filter_map(|lane| lane.waker.take())
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Takes a place under `limit` for one delivery, if one is free.
    fn try_run(&self, limit: Option<usize>) -> bool {
        let Some(limit) = limit else {
            return true;
        };
        let mut current = self.running.load(Ordering::Acquire);
        loop {
            if current >= limit {
                return false;
            }
            match self.running.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// What the lane's task of a listener needs besides the listener: the same for every delivery
/// of the listener's bus.
pub(crate) struct LaneContext {
    pub(crate) entry: Arc<Entry>,
    pub(crate) tasks: Arc<Tasks>,
    pub(crate) dead_letter: Option<DeadLetterHook>,
    pub(crate) runtime: Id,
}

/// Spawns the task of the lane of `runtime` on it.
pub(crate) fn spawn<T: Concrete>(runtime: &Handle, context: LaneContext) {
    let limit = context
        .entry
        .info
        .policy()
        .concurrency_limit()
        .map(|limit| limit.get());
    let task = LaneTask::<T> {
        context,
        limit,
        running: FuturesUnordered::new(),
        waiting: VecDeque::new(),
        batch: Vec::new(),
        cancelled: None,
        ended: false,
        _listener: PhantomData,
    };
    drop(runtime.spawn(task));
}

pin_project! {
    /// The task of one lane: takes its jobs, runs them together, concludes each.
    #[project = LaneTaskProj]
    struct LaneTask<T: Concrete> {
        context: LaneContext,
        // The listener's concurrency limit, if it has one.
        limit: Option<usize>,
        running: FuturesUnordered<Running<T::Future>>,
        // Jobs taken from the queue that wait for a place under the concurrency limit, or
        // for the next turn.
        waiting: VecDeque<Job<T::Event, T::Future>>,
        // The queue's jobs, taken in one swap.
        batch: Vec<Job<T::Event, T::Future>>,
        // Registered on the first poll, before the flag is checked.
        #[pin]
        cancelled: Option<OwnedNotified>,
        // Set when the task ended by itself, having closed its lane.
        ended: bool,
        _listener: PhantomData<fn() -> T>,
    }

    impl<T: Concrete> PinnedDrop for LaneTask<T> {
        fn drop(this: Pin<&mut Self>) {
            if !this.ended {
                // Dropped with work in hand: its runtime shut down. Every delivery it holds
                // is aborted, as a delivery task dropped by its runtime is.
                this.project().abort_all(true);
            }
        }
    }
}

impl<T: Concrete> Future for LaneTask<T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // One reference count per poll, so that the listener can be borrowed beside the task.
        let entry = Arc::clone(&this.context.entry);
        let Some(listener) = entry.erased.listener.as_any().downcast_ref::<T>() else {
            // The lane was spawned for its listener's own type: this is unreachable, and
            // ending with every delivery aborted is the safe way out.
            this.abort_all(true);
            *this.ended = true;
            return Poll::Ready(());
        };
        let lanes = listener.lanes();
        let runtime = this.context.runtime;
        let _turn = Turn::begin();
        loop {
            if !lanes.take(runtime, this.batch, cx.waker()) {
                // Closed by a drop of this task that did not happen: nothing to run.
                *this.ended = true;
                return Poll::Ready(());
            }
            if this.cancelled(cx) {
                this.abort_all(false);
            } else if this.limit.is_none() && this.waiting.is_empty() {
                // No limit: the jobs start now, as many as the turn allows, straight from the
                // batch, which keeps its memory for the lane's queue at the next swap; the
                // rest of a burst waits for the next turns.
                let mut batch = std::mem::take(this.batch);
                let mut jobs = batch.drain(..);
                while spend_turn() {
                    let Some(job) = jobs.next() else { break };
                    if let Some(running) = this.start(listener, job) {
                        this.running.push(running);
                    }
                }
                this.waiting.extend(jobs);
                *this.batch = batch;
            } else {
                if this.waiting.is_empty() {
                    // A whole batch becomes the waiting line without a copy.
                    *this.waiting = VecDeque::from(std::mem::take(this.batch));
                } else {
                    this.waiting.extend(this.batch.drain(..));
                }
                this.start_waiting(listener);
            }
            if turn_over() && !(this.running.is_empty() && this.waiting.is_empty()) {
                // Out of polls for this turn (see `Running::poll`): come back for more.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            while let Poll::Ready(Some(done)) = this.running.poll_next_unpin(cx) {
                this.conclude(done);
                if this.limit.is_some() {
                    this.release(lanes, 1);
                    if this.waiting.is_empty() {
                        lanes.wake_others(runtime);
                    }
                    this.start_waiting(listener);
                }
                if turn_over() {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            if !this.running.is_empty() || !this.waiting.is_empty() {
                // Woken by a delivery that can go on, by the next push, or by a place freed
                // in another lane.
                return Poll::Pending;
            }
            if lanes.close_if_empty(runtime) {
                *this.ended = true;
                return Poll::Ready(());
            }
        }
    }
}

/// Whether the lane running on this thread has ended its turn: its own count, or Tokio's
/// budget.
fn turn_over() -> bool {
    POLLS_LEFT.get() == 0 || !tokio::task::coop::has_budget_remaining()
}

/// Counts one start or poll against the turn of the lane running on this thread: `false`
/// when the turn had none left.
fn spend_turn() -> bool {
    let left = POLLS_LEFT.get();
    if left == 0 {
        return false;
    }
    POLLS_LEFT.set(left - 1);
    true
}

/// The turn of the lane polled on this thread: its polls left, restored when it ends.
struct Turn(u32);

impl Turn {
    fn begin() -> Turn {
        Turn(POLLS_LEFT.replace(POLLS_PER_TURN))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        POLLS_LEFT.set(self.0);
    }
}

impl<T: Concrete> LaneTaskProj<'_, T> {
    /// Whether the bus's deliveries are cancelled (`shutdown` ran out of time).
    fn cancelled(&mut self, cx: &mut Context<'_>) -> bool {
        let tasks = &self.context.tasks;
        if self.cancelled.is_none() {
            // Created before the flag is checked, so no cancellation falls between the two,
            // and polled once: it keeps the waker of this task (a task's waker wakes that
            // task, whichever poll it came from), so `cancel_all` wakes the lane, which then
            // sees the flag. Polling it again each turn would only take its lock.
            self.cancelled.set(Some(tasks.cancellation()));
            let notified = self.cancelled.as_mut().as_pin_mut();
            if notified.is_some_and(|notified| notified.poll(cx).is_ready()) {
                return true;
            }
        }
        tasks.is_cancelled()
    }

    /// Starts the waiting jobs, in order, as far as the concurrency limit lets them.
    fn start_waiting(&mut self, listener: &T) {
        let lanes = listener.lanes();
        while !self.waiting.is_empty() && POLLS_LEFT.get() > 0 && lanes.try_run(*self.limit) {
            spend_turn();
            let Some(job) = self.waiting.pop_front() else {
                return;
            };
            match self.start(listener, job) {
                Some(running) => self.running.push(running),
                // Ended in its call: its place is free again.
                None => self.release(lanes, 1),
            }
        }
    }

    /// Gives back `count` places under the concurrency limit, if the listener has one.
    fn release(&self, lanes: &Lanes<T::Event, T::Future>, count: usize) {
        if self.limit.is_some() && count > 0 {
            lanes.running.fetch_sub(count, Ordering::AcqRel);
        }
    }

    /// Starts one job: calls the listener (its call's panic caught), or takes the future
    /// started on the emitter's thread. `None` when the delivery ended in its call (a panic),
    /// concluded here.
    fn start(&mut self, listener: &T, job: Job<T::Event, T::Future>) -> Option<Running<T::Future>> {
        let entry = &self.context.entry;
        let (event, emitted) = match job {
            Job::Started(started) => {
                let Started {
                    slot,
                    emitted,
                    span,
                    started,
                } = *started;
                return Some(Running::new(
                    Attempting::Started { slot },
                    emitted,
                    Extras::new(span, started),
                ));
            }
            Job::Call { event, emitted } => (event, emitted),
        };
        let span = tracing::debug_span!(
            parent: emitted.span.as_deref().and_then(tracing::Span::id),
            "bus.deliver",
            event = %emitted.name,
            event_id = %emitted.meta.id,
            listener = %entry.info.name(),
            listener_id = entry.info.id().get(),
            attempt = tracing::field::Empty,
        );
        if entry.has_policy() {
            // The policy makes the attempts, each with its hooks and its `bus.attempt` span.
            let delivery = PolicyDelivery {
                entry: Arc::clone(entry),
                event: event as ErasedEvent,
                name: Arc::clone(&emitted.name),
                meta: emitted.meta.clone(),
                layers: emitted.layers.clone(),
                dead_letter: self.context.dead_letter.clone(),
            };
            let future = Box::pin(delivery.run());
            return Some(Running::new(
                Attempting::Policy { future },
                emitted,
                Extras::new(span, None),
            ));
        }
        let recorded = !span.is_disabled();
        if recorded {
            span.record("attempt", 1_u32);
        }
        let scope = Scope {
            event: &emitted.name,
            entry,
            meta: &emitted.meta,
            layers: &emitted.layers,
        };
        let started = if emitted.layers.only_tracing() {
            None
        } else {
            span.in_scope(|| scope.before(1))
        };
        let called = {
            let _entered = recorded.then(|| span.enter());
            let _handling = Handling::enter(&emitted.meta.id);
            attempt::call(|| listener.call(event, || scope.envelope()))
        };
        match called {
            Ok(future) => Some(Running::new(
                Attempting::Inline {
                    caught: Caught::new(future),
                },
                emitted,
                Extras::new(span, started),
            )),
            Err(panicked) => {
                self.finish(&emitted, Extras::new(span, started), panicked);
                None
            }
        }
    }

    fn conclude(&mut self, done: Done) {
        let Done {
            outcome,
            emitted,
            extras,
        } = done;
        self.finish(&emitted, extras, outcome);
    }

    /// Concludes one delivery: tells the layers, leaves the in-flight count, then records the
    /// conclusion where its emission finds it.
    fn finish(&self, emitted: &Emitted, extras: Option<Box<Extras>>, outcome: Outcome) {
        let tasks = &self.context.tasks;
        if extras.is_none()
            && matches!(outcome, Outcome::Delivered)
            && emitted.layers.only_tracing()
            && !self.context.entry.has_policy()
        {
            // Only the tracing layer, which has nothing to say about a success, and no span
            // to enter: the report counts it, as `conclude` would.
            tasks.finish();
            emitted.gathered.record(Ok(()));
            return;
        }
        if matches!(outcome, Outcome::Aborted) {
            tasks.count_aborted();
        }
        let scope = Scope {
            event: &emitted.name,
            entry: &self.context.entry,
            meta: &emitted.meta,
            layers: &emitted.layers,
        };
        let (span, started) = match extras.as_deref() {
            Some(Extras { span, started }) => (span.as_ref(), *started),
            None => (None, None),
        };
        let conclusion = match span {
            Some(span) => span.in_scope(|| attempt::conclude(&scope, started, outcome)),
            None => attempt::conclude(&scope, started, outcome),
        };
        // As a delivery task does: the delivery leaves the in-flight count before its
        // conclusion is visible, so whoever awaited the report sees the bus without it.
        tasks.finish();
        emitted.gathered.record(conclusion);
    }

    /// Aborts every delivery the task holds: the running ones (dropped at their `.await`), the
    /// waiting ones, and, when the task is going away (`closing`), those still in its queue.
    fn abort_all(&mut self, closing: bool) {
        // The listener, for its lanes; the lane was spawned for this type, so it is found.
        let entry = Arc::clone(&self.context.entry);
        let lanes = entry
            .erased
            .listener
            .as_any()
            .downcast_ref::<T>()
            .map(Concrete::lanes);
        let mut aborted = Vec::new();
        for running in Pin::new(&mut *self.running).iter_pin_mut() {
            if let Some(done) = running.abort() {
                aborted.push(done);
            }
        }
        self.running.clear();
        if let Some(lanes) = lanes {
            self.release(lanes, aborted.len());
        }
        for done in aborted {
            self.conclude(done);
        }
        let mut jobs: Vec<_> = self.waiting.drain(..).collect();
        jobs.append(self.batch);
        if let Some(lanes) = lanes.filter(|_| closing) {
            jobs.extend(lanes.close(self.context.runtime));
        }
        for job in jobs {
            self.abort_job(job);
        }
    }

    /// Concludes a job that never started as aborted, with its layers' `before` and `after`
    /// in pairs: one started on the emitter's thread had its `before` there; one the lane was
    /// to call has it now (but under a policy, which reports attempts only, and made none).
    fn abort_job(&self, job: Job<T::Event, T::Future>) {
        match job {
            Job::Started(started) => {
                let Started {
                    slot,
                    emitted,
                    span,
                    started,
                } = *started;
                drop(slot);
                self.finish(&emitted, Extras::new(span, started), Outcome::Aborted);
            }
            Job::Call { event, emitted } => {
                drop(event);
                let entry = &self.context.entry;
                let started = if entry.has_policy() {
                    None
                } else {
                    Scope {
                        event: &emitted.name,
                        entry,
                        meta: &emitted.meta,
                        layers: &emitted.layers,
                    }
                    .before(1)
                };
                self.finish(
                    &emitted,
                    Extras::new(tracing::Span::none(), started),
                    Outcome::Aborted,
                );
            }
        }
    }
}

/// What a running delivery needs at its end, when known: its span (when it is recorded) and
/// the time its layers' `before` ran (when a layer times deliveries). Boxed, and only when
/// there is something to keep, so a running delivery stays small.
struct Extras {
    span: Option<tracing::Span>,
    started: Option<Instant>,
}

impl Extras {
    fn new(span: tracing::Span, started: Option<Instant>) -> Option<Box<Extras>> {
        let span = (!span.is_disabled()).then_some(span);
        (span.is_some() || started.is_some()).then(|| Box::new(Extras { span, started }))
    }
}

pin_project! {
    /// How a running delivery makes its attempt.
    #[project = AttemptingProj]
    enum Attempting<F> {
        /// Called by the lane: the listener's future, in place.
        Inline { #[pin] caught: Caught<F> },
        /// Started on the emitter's thread: the future, in the listener's slot.
        Started { slot: Pin<Box<Caught<F>>> },
        /// Under a policy: its attempts, retries and backoff.
        Policy { future: Pin<Box<dyn Future<Output = Outcome> + Send>> },
        /// Ended, or aborted.
        Done,
    }
}

pin_project! {
    /// One delivery running in a lane.
    struct Running<F> {
        #[pin]
        attempting: Attempting<F>,
        // Taken when it ends.
        emitted: Option<Arc<Emitted>>,
        extras: Option<Box<Extras>>,
    }
}

/// A delivery that ended, with what its conclusion needs.
struct Done {
    outcome: Outcome,
    emitted: Arc<Emitted>,
    extras: Option<Box<Extras>>,
}

impl<F> Running<F> {
    fn new(attempting: Attempting<F>, emitted: Arc<Emitted>, extras: Option<Box<Extras>>) -> Self {
        Running {
            attempting,
            emitted: Some(emitted),
            extras,
        }
    }

    /// Drops the delivery's future where it waits (its drop's panic caught), and hands back
    /// what its conclusion needs; `None` if it had ended.
    fn abort(self: Pin<&mut Self>) -> Option<Done> {
        let mut this = self.project();
        let emitted = this.emitted.take()?;
        {
            let _entered = this
                .extras
                .as_ref()
                .and_then(|extras| extras.span.as_ref())
                .map(tracing::Span::enter);
            this.attempting.set(Attempting::Done);
        }
        Some(Done {
            outcome: Outcome::Aborted,
            emitted,
            extras: this.extras.take(),
        })
    }
}

impl<F> Future for Running<F>
where
    F: Future,
    F::Output: super::erased::ListenerOutput,
{
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let mut this = self.project();
        let Some(emitted) = this.emitted.as_ref() else {
            // Polled after its end: only a bug gets here.
            return Poll::Pending;
        };
        if !tokio::task::coop::has_budget_remaining() || !spend_turn() {
            // The lane's task has used up its turn. Every Tokio resource the listener awaits
            // would refuse at once and defer its wake-up, and the set would poll each of its
            // deliveries for nothing. Woken now, this one makes the set yield to the lane,
            // which yields to the runtime and comes back for a new turn.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = {
            let _entered = this
                .extras
                .as_ref()
                .and_then(|extras| extras.span.as_ref())
                .map(tracing::Span::enter);
            // What the listener emits while it runs records this event as its cause.
            let _handling = Handling::enter(&emitted.meta.id);
            match this.attempting.as_mut().project() {
                AttemptingProj::Inline { caught } => caught.poll(cx),
                AttemptingProj::Started { slot } => slot.as_mut().poll(cx),
                AttemptingProj::Policy { future } => future.as_mut().poll(cx),
                AttemptingProj::Done => return Poll::Pending,
            }
        };
        let outcome = std::task::ready!(polled);
        this.attempting.set(Attempting::Done);
        let Some(emitted) = this.emitted.take() else {
            return Poll::Pending;
        };
        Poll::Ready(Done {
            outcome,
            emitted,
            extras: this.extras.take(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued delivery is its event and the emit's shared part; what an emit's deliveries
    /// share stays small (BENCHMARKS.md, issue 16, counts both per queued delivery).
    #[test]
    fn a_queued_delivery_is_two_pointers() {
        assert_eq!(
            size_of::<Job<u64, std::future::Ready<()>>>(),
            2 * size_of::<usize>()
        );
        assert!(size_of::<Emitted>() <= 168, "{}", size_of::<Emitted>());
        assert_eq!(size_of::<Option<Box<Extras>>>(), size_of::<usize>());
    }
}
