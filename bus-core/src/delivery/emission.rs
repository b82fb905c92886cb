//! What `emit` returns: a handle that can be dropped (fire and forget) or awaited for a
//! [`DeliveryReport`].

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::task::JoinHandle;

use super::entry::Entry;
use crate::error::{DeliveryError, PublishError};
use crate::event::Meta;
use crate::id::EventId;
use crate::layer::Layers;

/// The outcome of every delivery of one emitted event.
#[derive(Debug)]
pub struct DeliveryReport {
    event: Arc<str>,
    event_id: Option<EventId>,
    delivered: usize,
    failures: Vec<DeliveryError>,
    /// Boxed: a report is moved from the emit to its awaiter, and a publish error is rare.
    published: Option<Result<(), Box<PublishError>>>,
}

impl DeliveryReport {
    /// The event name.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The emitted event's unique id; `None` when the emit was refused before it got one (an
    /// invalid name).
    pub fn event_id(&self) -> Option<&EventId> {
        self.event_id.as_ref()
    }

    /// How many listeners completed with `Ok` (or `()`).
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// How many listeners returned `Err`, panicked, were aborted by shutdown, or could not take
    /// the event (type mismatch, no runtime, bus shut down).
    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// `true` when no delivery failed and, on a bus with a transport, the event was
    /// published. An event with no listener is ok.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty() && !matches!(self.published, Some(Err(_)))
    }

    /// On a bus with a [transport](crate::EventBusBuilder::transport), for an event whose
    /// type crosses the wire: `Some(Ok(()))` once the broker has stored it (so it survives
    /// this process, and reaches the distributed listeners of every instance), or why it was
    /// not. `None` for an event that stayed in process.
    ///
    /// [`delivered`](DeliveryReport::delivered) and [`failures`](DeliveryReport::failures)
    /// count the listeners in this process only; the broker's deliveries are settled by the
    /// consumers that receive them.
    pub fn published(&self) -> Option<Result<(), &PublishError>> {
        self.published
            .as_ref()
            .map(|published| published.as_ref().map(|&()| ()).map_err(|error| &**error))
    }

    /// What went wrong, one entry per failed delivery.
    pub fn failures(&self) -> &[DeliveryError] {
        &self.failures
    }
}

/// How one delivery ended, as its report entry.
pub(crate) type Conclusion = Result<(), DeliveryError>;

/// What the deliveries of one emit that wait in their listeners' lanes share: the event's
/// name and envelope, the layers, the emit's span, and where they conclude. Made once per
/// emit, at its first delivery that goes to a lane, so that a queued delivery holds one
/// pointer to all of it.
pub(crate) struct Emitted {
    pub(crate) name: Arc<str>,
    pub(crate) meta: Meta,
    pub(crate) layers: Layers,
    /// The emit's span, the parent of each delivery's span, when it is recorded (boxed: a
    /// span is five words, and this is one allocation per emit).
    pub(crate) span: Option<Box<tracing::Span>>,
    pub(crate) gathered: Gathered,
}

impl std::fmt::Debug for Emitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitted")
            .field("name", &self.name)
            .field("gathered", &self.gathered)
            .finish_non_exhaustive()
    }
}

impl Emitted {
    pub(crate) fn new(name: Arc<str>, meta: Meta, layers: Layers, span: tracing::Span) -> Self {
        Emitted {
            name,
            meta,
            layers,
            span: (!span.is_disabled()).then(|| Box::new(span)),
            gathered: Gathered::default(),
        }
    }
}

/// The conclusions of an emit's deliveries that ran in lanes, counted as they end, for the
/// emission to wait for.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    /// Deliveries handed to lanes and not concluded yet (an emit has fewer deliveries than
    /// its bus has listeners, which are far fewer than `u32::MAX`).
    pending: AtomicU32,
    delivered: AtomicU32,
    /// Boxed when there is one: most emits have none, and this is one allocation per emit
    /// (a box is one word, an empty `Vec` three).
    #[allow(
        clippy::box_collection,
        reason = "the box keeps the shared state of every emit two words smaller"
    )]
    failures: Mutex<Option<Box<Vec<DeliveryError>>>>,
    /// The emission awaiting them, if it is awaited.
    waker: AtomicWaker,
}

impl Gathered {
    /// Counts one more delivery to wait for; called before it is handed to its lane.
    pub(crate) fn expect_one(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how a delivery handed to a lane ended, and wakes the emission after the last.
    pub(crate) fn record(&self, conclusion: Conclusion) {
        match conclusion {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => self
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_default()
                .push(error),
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    /// Ready once every delivery counted by [`expect_one`](Gathered::expect_one) is recorded.
    fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Checked again after registering: a last record in between woke no one.
        if self.pending.load(Ordering::Acquire) == 0 {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn take(&self) -> (usize, Vec<DeliveryError>) {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|failures| *failures)
            .unwrap_or_default();
        let delivered = self.delivered.load(Ordering::Acquire);
        (usize::try_from(delivered).unwrap_or(usize::MAX), failures)
    }
}

/// Where the deliveries of one emit end up.
///
/// Deliveries that finish while `emit` runs record straight into it (no allocation, no atomic).
/// A delivery that continues in its listener's lane concludes into the emit's [`Emitted`],
/// shared by all of them; one that continues in a task of its own ([`Dispatch::Spawn`])
/// leaves its `JoinHandle` here: the task's output is its conclusion.
///
/// [`Dispatch::Spawn`]: super::Dispatch::Spawn
#[derive(Debug)]
pub(crate) struct Outcomes {
    event: Arc<str>,
    event_id: Option<EventId>,
    listeners: usize,
    delivered: usize,
    failures: Vec<DeliveryError>,
    tasks: Vec<(JoinHandle<Conclusion>, Arc<Entry>)>,
    /// What the deliveries in lanes share, once one went to a lane.
    emitted: Option<Arc<Emitted>>,
    /// The publish to the broker, on a bus with a transport.
    publish: Option<Publish>,
}

/// What became of an emit's publish to the broker.
#[derive(Debug)]
enum Publish {
    /// On its way: the task resolves once the broker has it, or with why not.
    Sent(JoinHandle<Result<(), PublishError>>),
    /// Never sent. Boxed: an emission is moved around on every emit, and this is rare.
    Refused(Box<PublishError>),
}

impl Outcomes {
    pub(crate) fn new(event: Arc<str>, listeners: usize) -> Self {
        Outcomes {
            event,
            event_id: None,
            listeners,
            delivered: 0,
            failures: Vec::new(),
            tasks: Vec::new(),
            emitted: None,
            publish: None,
        }
    }

    /// What the emit's deliveries in lanes share, made by `make` for the first of them.
    pub(crate) fn emitted(&mut self, make: impl FnOnce() -> Emitted) -> &Arc<Emitted> {
        self.emitted.get_or_insert_with(|| Arc::new(make()))
    }

    #[inline]
    pub(crate) fn set_event_id(&mut self, id: EventId) {
        self.event_id = Some(id);
    }

    #[inline]
    pub(crate) fn record(&mut self, conclusion: Conclusion) {
        match conclusion {
            Ok(()) => self.delivered += 1,
            Err(error) => self.failures.push(error),
        }
    }

    /// Keeps the handle of a delivery that continues in a task.
    pub(crate) fn continued_in_task(&mut self, task: JoinHandle<Conclusion>, entry: &Arc<Entry>) {
        self.tasks.push((task, Arc::clone(entry)));
    }

    /// Makes awaiting the emission wait for `publish` too.
    pub(crate) fn published_by(&mut self, publish: JoinHandle<Result<(), PublishError>>) {
        self.publish = Some(Publish::Sent(publish));
    }

    /// Reports that the event was not published, and why.
    pub(crate) fn not_published(&mut self, error: PublishError) {
        self.publish = Some(Publish::Refused(Box::new(error)));
    }

    pub(crate) fn into_emission(self) -> Emission {
        Emission { outcomes: self }
    }

    /// Waits for the deliveries still running in tasks and adds their conclusions.
    async fn finish(mut self) -> DeliveryReport {
        let published = match self.publish.take() {
            Some(Publish::Sent(publish)) => Some(match publish.await {
                Ok(outcome) => outcome.map_err(Box::new),
                Err(_) => Err(Box::new(PublishError::Aborted {
                    event: self.event.to_string(),
                })),
            }),
            Some(Publish::Refused(error)) => Some(Err(error)),
            None => None,
        };
        for (task, entry) in std::mem::take(&mut self.tasks) {
            let conclusion = match task.await {
                Ok(conclusion) => conclusion,
                // The task was dropped unfinished (its runtime shut down), after logging it.
                Err(_) => Err(DeliveryError::Aborted {
                    event: Arc::clone(&self.event),
                    listener: Arc::clone(&entry.info.name),
                    listener_id: entry.info.id(),
                }),
            };
            self.record(conclusion);
        }
        if let Some(emitted) = self.emitted.take() {
            std::future::poll_fn(|cx| emitted.gathered.poll_done(cx)).await;
            let (delivered, failures) = emitted.gathered.take();
            self.delivered += delivered;
            self.failures.extend(failures);
        }
        let mut report = self.report();
        report.published = published;
        report
    }

    fn report(mut self) -> DeliveryReport {
        let published = match self.publish.take() {
            Some(Publish::Refused(error)) => Some(Err(error)),
            // Awaited by `finish`.
            Some(Publish::Sent(_)) | None => None,
        };
        DeliveryReport {
            event: self.event,
            event_id: self.event_id,
            delivered: self.delivered,
            failures: self.failures,
            published,
        }
    }
}

/// One emitted event, on its way to its listeners.
///
/// `emit` has already started every delivery when it returns this. Drop it to fire and forget;
/// `.await` it to wait until every listener of this emit has finished and get a
/// [`DeliveryReport`]. Awaiting does not wait for events that listeners emit in turn (use
/// [`EventBus::drain`](crate::EventBus::drain) for that).
#[derive(Debug)]
pub struct Emission {
    outcomes: Outcomes,
}

impl Emission {
    /// The event name.
    pub fn event(&self) -> &str {
        &self.outcomes.event
    }

    /// The emitted event's unique id, as its listeners see it in
    /// [`current_event_id`](crate::event::current_event_id) and the layers in their hooks; `None`
    /// when the emit was refused before it got one (an invalid name).
    pub fn event_id(&self) -> Option<&EventId> {
        self.outcomes.event_id.as_ref()
    }

    /// How many listeners of this process the event was addressed to, including those that
    /// could not take it (on a bus with a transport, the ones that receive it from the broker
    /// are not counted: their deliveries are the broker's).
    pub fn listener_count(&self) -> usize {
        self.outcomes.listeners
    }
}

/// The future of an awaited [`Emission`].
pub struct EmissionFuture {
    inner: EmissionFutureInner,
}

enum EmissionFutureInner {
    /// Every delivery finished during `emit`.
    Ready(Option<DeliveryReport>),
    /// Some continue in tasks.
    Waiting(Pin<Box<dyn Future<Output = DeliveryReport> + Send>>),
}

impl std::fmt::Debug for EmissionFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmissionFuture").finish_non_exhaustive()
    }
}

impl Future for EmissionFuture {
    type Output = DeliveryReport;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DeliveryReport> {
        match &mut self.inner {
            EmissionFutureInner::Ready(report) => Poll::Ready(
                report
                    .take()
                    .expect("EmissionFuture polled after completion"),
            ),
            EmissionFutureInner::Waiting(wait) => wait.as_mut().poll(cx),
        }
    }
}

impl IntoFuture for Emission {
    type Output = DeliveryReport;
    type IntoFuture = EmissionFuture;

    /// Waits for every delivery of this emit.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not cancel the deliveries; they run to completion either way.
    fn into_future(self) -> EmissionFuture {
        let outcomes = self.outcomes;
        let waits = !outcomes.tasks.is_empty()
            || outcomes.emitted.is_some()
            || matches!(outcomes.publish, Some(Publish::Sent(_)));
        let inner = if !waits {
            EmissionFutureInner::Ready(Some(outcomes.report()))
        } else {
            EmissionFutureInner::Waiting(Box::pin(outcomes.finish()))
        };
        EmissionFuture { inner }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ListenerId;

    fn aborted() -> DeliveryError {
        DeliveryError::Aborted {
            event: Arc::from("e"),
            listener: Arc::from("l"),
            listener_id: ListenerId::from_raw(1.try_into().unwrap()),
        }
    }

    #[tokio::test]
    async fn an_emission_finished_inline_is_ready() {
        let mut outcomes = Outcomes::new(Arc::from("e"), 2);
        outcomes.record(Ok(()));
        outcomes.record(Err(aborted()));
        let report = outcomes.into_emission().await;
        assert_eq!((report.delivered(), report.failed()), (1, 1));
        assert!(!report.is_ok());
        assert_eq!(report.event(), "e");
    }
}
