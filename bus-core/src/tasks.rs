//! Task accounting: how many deliveries of a bus are in flight, so that `drain` can wait for
//! them, `shutdown` can refuse new ones, wait, and cancel the rest, and `max_in_flight` can
//! bound them.
//!
//! A delivery is counted from the moment its place is taken (by the emit, before it is run)
//! until it has concluded; a publish to the broker and a delivery from it are counted too.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// Counts the delivery tasks of one bus that have not finished yet.
///
/// A plain counter rather than `tokio_util::task::TaskTracker`: `drain` must be able to wait for
/// idleness many times, concurrently, without closing anything, and a tracker only reports
/// "empty" once it is closed.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    in_flight: AtomicUsize,
    aborted: AtomicUsize,
    /// Deliveries dropped because the bus was full (`max_in_flight`), for `health`.
    shed: AtomicUsize,
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
    pub(crate) fn try_start(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.start_reserved()
    }

    /// Starts a delivery task that already holds its place in the in-flight count (its
    /// [`Reservation`]), unless the bus is closed; then the place is given back.
    pub(crate) fn start_reserved(&self) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            self.finish();
            return false;
        }
        true
    }

    /// Counts one delivery task as ended: it leaves the in-flight count, and whoever waits for
    /// idleness or for room is told.
    pub(crate) fn finish(&self) {
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

    /// Deliveries shed so far: dropped because the bus held `max_in_flight` deliveries.
    pub(crate) fn shed(&self) -> usize {
        self.shed.load(Ordering::Relaxed)
    }

    /// Counts `deliveries` shed by one emit.
    pub(crate) fn count_shed(&self, deliveries: usize) {
        self.shed.fetch_add(deliveries, Ordering::Relaxed);
    }

    /// Counts one task aborted by shutdown.
    pub(crate) fn count_aborted(&self) {
        self.aborted.fetch_add(1, Ordering::AcqRel);
    }

    /// `true` once [`cancel_all`](Tasks::cancel_all) has been called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// A registration for the next [`cancel_all`](Tasks::cancel_all): it reaches every
    /// `Notified` created before it is called, so a delivery creates this before it checks
    /// [`is_cancelled`](Tasks::is_cancelled) and no cancellation falls between the two.
    pub(crate) fn cancellation(&self) -> OwnedNotified {
        Arc::clone(&self.cancel).notified_owned()
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

/// One task counted in flight by [`Tasks::track`], until dropped.
pub(crate) struct Tracked(Arc<Tasks>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Counts a caller of [`Tasks::room`] as waiting until it returns or is dropped.
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
    pub(crate) fn keep(self) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
