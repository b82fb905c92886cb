//! Middleware: hooks the bus calls around every emit and every delivery. The bus's own logging
//! ([`TracingLayer`]) and the metrics layer are layers, like the ones users add.

use std::time::{Duration, SystemTime};

use crate::error::{BoxError, DeliveryError};
use crate::event::{AnyEvent, EventId, Meta};
use crate::registry::ListenerInfo;

/// Hooks around the emits and deliveries of a bus. Every method has an empty default: implement
/// the ones you need.
///
/// Hooks run on the thread that emits or delivers, inside the `bus.emit` / `bus.deliver` span,
/// so they must be quick and must not block. A panic in a hook is not caught.
///
/// Add one with [`EventBusBuilder::layer`](crate::EventBusBuilder::layer) or
/// [`EventBus::layer`](crate::EventBus::layer).
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// #[derive(Default)]
/// struct CountFailures(AtomicUsize);
///
/// impl bus::Layer for CountFailures {
///     fn after(&self, _: &bus::DeliveryInfo<'_>, outcome: &bus::DeliveryOutcome<'_>) {
///         if !outcome.is_delivered() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let failures = Arc::new(CountFailures::default());
/// let bus = bus::EventBus::builder().layer(Arc::clone(&failures)).build();
/// bus.add_listener("job.done", |_: Arc<u32>| async { Err::<(), _>("disk full") });
/// bus.emit("job.done", 1_u32).await;
/// assert_eq!(failures.0.load(Ordering::Relaxed), 1);
/// # }
/// ```
pub trait Layer: Send + Sync + 'static {
    /// An event is about to be handed to its listeners.
    fn on_emit(&self, emit: &EmitInfo<'_>) {
        let _ = emit;
    }

    /// An attempt of a delivery starts (attempt 1, then one call per retry).
    fn before(&self, delivery: &DeliveryInfo<'_>) {
        let _ = delivery;
    }

    /// An attempt of a delivery ended. `outcome.elapsed()` is measured only when some layer of
    /// the bus asks for it with [`timed`](Layer::timed).
    fn after(&self, delivery: &DeliveryInfo<'_>, outcome: &DeliveryOutcome<'_>) {
        let _ = (delivery, outcome);
    }

    /// An emit found the bus full (see
    /// [`max_in_flight`](crate::EventBusBuilder::max_in_flight)) and its event was shed:
    /// `emit.listeners()` deliveries were not made.
    fn on_shed(&self, emit: &EmitInfo<'_>) {
        let _ = emit;
    }

    /// A listener of a matching pattern takes another type than the event's: it was passed by.
    fn on_mismatch(&self, emit: &EmitInfo<'_>, listener: &ListenerInfo) {
        let _ = (emit, listener);
    }

    /// A delivery failed its last attempt and went to the dead letter.
    fn on_dead_letter(&self, letter: &DeadLetter) {
        let _ = letter;
    }

    /// A subscription's reader fell behind and `missed` events were dropped from its buffer.
    fn on_lagged(&self, pattern: &str, missed: u64) {
        let _ = (pattern, missed);
    }

    /// `true` when this layer needs [`DeliveryOutcome::elapsed`]; the bus then reads the clock
    /// around every delivery attempt.
    fn timed(&self) -> bool {
        false
    }
}

impl<L: Layer + ?Sized> Layer for std::sync::Arc<L> {
    fn on_emit(&self, emit: &EmitInfo<'_>) {
        (**self).on_emit(emit);
    }
    fn before(&self, delivery: &DeliveryInfo<'_>) {
        (**self).before(delivery);
    }
    fn after(&self, delivery: &DeliveryInfo<'_>, outcome: &DeliveryOutcome<'_>) {
        (**self).after(delivery, outcome);
    }
    fn on_shed(&self, emit: &EmitInfo<'_>) {
        (**self).on_shed(emit);
    }
    fn on_mismatch(&self, emit: &EmitInfo<'_>, listener: &ListenerInfo) {
        (**self).on_mismatch(emit, listener);
    }
    fn on_dead_letter(&self, letter: &DeadLetter) {
        (**self).on_dead_letter(letter);
    }
    fn on_lagged(&self, pattern: &str, missed: u64) {
        (**self).on_lagged(pattern, missed);
    }
    fn timed(&self) -> bool {
        (**self).timed()
    }
}

/// One emit, as [`Layer`] hooks see it.
#[derive(Debug, Clone, Copy)]
pub struct EmitInfo<'a> {
    pub(crate) name: &'a str,
    pub(crate) meta: &'a Meta,
    pub(crate) listeners: usize,
}

impl EmitInfo<'_> {
    /// The event name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The event's unique id.
    pub fn id(&self) -> EventId {
        self.meta.id
    }

    /// The id of the event whose listener emitted this one, if any.
    pub fn causation(&self) -> Option<EventId> {
        self.meta.causation
    }

    /// When it was emitted.
    pub fn emitted_at(&self) -> SystemTime {
        self.meta.emitted_at()
    }

    /// How many listeners the event is for.
    pub fn listeners(&self) -> usize {
        self.listeners
    }
}

/// One attempt of one delivery, as [`Layer`] hooks see it.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryInfo<'a> {
    pub(crate) name: &'a str,
    pub(crate) meta: &'a Meta,
    pub(crate) listener: &'a ListenerInfo,
    pub(crate) attempt: u32,
}

impl DeliveryInfo<'_> {
    /// The event name.
    pub fn event(&self) -> &str {
        self.name
    }

    /// The event's unique id.
    pub fn event_id(&self) -> EventId {
        self.meta.id
    }

    /// The id of the event whose listener emitted this one, if any.
    pub fn causation(&self) -> Option<EventId> {
        self.meta.causation
    }

    /// The listener.
    pub fn listener(&self) -> &ListenerInfo {
        self.listener
    }

    /// Which attempt this is: 1, then 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// How one delivery attempt ended.
#[derive(Debug)]
pub struct DeliveryOutcome<'a> {
    pub(crate) result: AttemptResult<'a>,
    pub(crate) elapsed: Option<Duration>,
    pub(crate) retried: bool,
}

/// How one delivery attempt ended, without its timing.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum AttemptResult<'a> {
    /// The listener returned `Ok` (or `()`).
    Delivered,
    /// The listener returned this error.
    Failed(&'a BoxError),
    /// The listener panicked with this message.
    Panicked(&'a str),
    /// The attempt ran past the policy's timeout and was cancelled.
    TimedOut(Duration),
    /// Shutdown (or the runtime going away) aborted it.
    Aborted,
}

impl<'a> DeliveryOutcome<'a> {
    /// How the attempt ended.
    pub fn result(&self) -> AttemptResult<'a> {
        self.result
    }

    /// `true` when this was the delivery's last attempt: it was delivered, or it failed and
    /// its listener's [`Policy`](crate::Policy) has no retry left (a dead letter follows for
    /// listeners with a policy). `false` when the bus tries again after a backoff.
    pub fn is_final(&self) -> bool {
        !self.retried
    }

    /// `true` when the listener completed with `Ok`.
    pub fn is_delivered(&self) -> bool {
        matches!(self.result, AttemptResult::Delivered)
    }

    /// How long the attempt took, from its first poll to its end; `None` unless a layer of the
    /// bus is [`timed`](Layer::timed).
    pub fn elapsed(&self) -> Option<Duration> {
        self.elapsed
    }
}

/// A delivery that failed its last attempt: what the dead-letter hook and
/// [`Layer::on_dead_letter`] receive.
#[derive(Debug)]
pub struct DeadLetter {
    pub(crate) event: AnyEvent,
    pub(crate) listener: ListenerInfo,
    pub(crate) error: DeliveryError,
    pub(crate) attempts: u32,
}

impl DeadLetter {
    /// The event, with its envelope; its payload through [`AnyEvent::downcast_ref`].
    pub fn event(&self) -> &AnyEvent {
        &self.event
    }

    /// The listener that failed.
    pub fn listener(&self) -> &ListenerInfo {
        &self.listener
    }

    /// The last attempt's error.
    pub fn error(&self) -> &DeliveryError {
        &self.error
    }

    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// What [`EventBusBuilder::dead_letter`](crate::EventBusBuilder::dead_letter) takes.
pub(crate) type DeadLetterHook = std::sync::Arc<dyn Fn(&DeadLetter) + Send + Sync>;

/// The bus's logging, as a layer: every bus has it. Failed, panicked, timed-out and aborted
/// deliveries are logged as `tracing` events inside their `bus.deliver` span, along with sheds,
/// type mismatches, dead letters and lag.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLayer;

impl Layer for TracingLayer {
    fn after(&self, delivery: &DeliveryInfo<'_>, outcome: &DeliveryOutcome<'_>) {
        let (event, listener, attempt) = (
            delivery.event(),
            delivery.listener().name(),
            delivery.attempt(),
        );
        match outcome.result {
            AttemptResult::Delivered => {}
            AttemptResult::Failed(error) => {
                tracing::error!(
                    event, listener, attempt, error = %error, "listener returned an error"
                );
            }
            AttemptResult::Panicked(message) => {
                tracing::error!(event, listener, attempt, panic = %message, "listener panicked");
            }
            AttemptResult::TimedOut(timeout) => {
                tracing::error!(event, listener, attempt, ?timeout, "listener timed out");
            }
            AttemptResult::Aborted => {
                tracing::warn!(event, listener, "listener aborted before it finished");
            }
        }
    }

    fn on_shed(&self, emit: &EmitInfo<'_>) {
        tracing::warn!(
            event = emit.name(),
            event_id = %emit.id(),
            listeners = emit.listeners(),
            "bus full (max_in_flight): event shed, no listener got it"
        );
    }

    fn on_mismatch(&self, emit: &EmitInfo<'_>, listener: &ListenerInfo) {
        tracing::debug!(
            event = emit.name(),
            listener = listener.name(),
            expected = listener.event_type(),
            "pattern listener passed by: it takes another type"
        );
    }

    fn on_dead_letter(&self, letter: &DeadLetter) {
        tracing::error!(
            event = letter.event().name(),
            event_id = %letter.event().id(),
            listener = letter.listener().name(),
            attempts = letter.attempts(),
            error = %letter.error(),
            "delivery dead-lettered after its last attempt"
        );
    }

    fn on_lagged(&self, pattern: &str, missed: u64) {
        tracing::warn!(
            pattern,
            missed,
            "subscriber lagged: events dropped from its buffer"
        );
    }
}

/// The layers of a bus, in the order they were added, [`TracingLayer`] first. Kept in the
/// registry snapshot, so an emit finds them with the listeners, at no extra cost.
#[derive(Clone)]
pub(crate) struct Layers {
    list: std::sync::Arc<[std::sync::Arc<dyn Layer>]>,
    /// Whether any layer is [`timed`](Layer::timed).
    timed: bool,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            list: std::sync::Arc::new([std::sync::Arc::new(TracingLayer) as _]),
            timed: false,
        }
    }
}

impl Layers {
    /// These layers and `layer` after them.
    pub(crate) fn with(&self, layer: std::sync::Arc<dyn Layer>) -> Layers {
        let timed = self.timed || layer.timed();
        let list = self.list.iter().cloned().chain([layer]).collect();
        Layers { list, timed }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &dyn Layer> {
        self.list.iter().map(|layer| &**layer)
    }

    /// `true` when the bus has only its [`TracingLayer`], whose `on_emit` and `before` do
    /// nothing and whose `after` does nothing for a delivered event: the dispatch path then
    /// skips those calls.
    #[inline]
    pub(crate) fn only_tracing(&self) -> bool {
        self.list.len() == 1
    }

    pub(crate) fn timed(&self) -> bool {
        self.timed
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}
