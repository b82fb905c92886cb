//! Middleware: hooks the bus calls around every emit and every delivery, in process or from a
//! broker. The bus's own logging ([`TracingLayer`]) and the metrics layer are layers, like the
//! ones users add.

#[cfg(feature = "metrics")]
mod metrics;
mod tracing;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(feature = "metrics")]
pub use self::metrics::MetricsLayer;
pub use self::tracing::TracingLayer;
use crate::error::{BoxError, DeliveryError, panic_message};
use crate::event::{AnyEvent, Meta};
use crate::id::EventId;
use crate::info::ListenerInfo;

/// Hooks around the emits and deliveries of a bus. Every method has an empty default: implement
/// the ones you need.
///
/// Hooks run on the thread that emits or delivers, inside the `bus.emit` / `bus.deliver` span,
/// so they must be quick and must not block. A hook that panics is caught and logged, as a
/// listener's panic is: the other layers still run, and the emit or delivery goes on.
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
/// impl bus::layer::Layer for CountFailures {
///     fn after(&self, _: &bus::layer::DeliveryInfo<'_>, outcome: &bus::layer::DeliveryOutcome<'_>) {
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
    /// `emit.listener_count()` deliveries were not made.
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

    /// The reader of an [`EventStream`](crate::stream::EventStream) fell behind and `missed`
    /// events were dropped from its buffer.
    fn on_lagged(&self, pattern: &str, missed: u64) {
        let _ = (pattern, missed);
    }

    /// `true` when this layer needs [`DeliveryOutcome::elapsed`]; the bus then reads the clock
    /// around every delivery attempt.
    fn timed(&self) -> bool {
        false
    }
}

impl<L: Layer + ?Sized> Layer for Arc<L> {
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
    pub fn event(&self) -> &str {
        self.name
    }

    /// The event's id.
    pub fn event_id(&self) -> &EventId {
        &self.meta.id
    }

    /// The id of the event whose listener emitted this one, if any.
    pub fn causation(&self) -> Option<&EventId> {
        self.meta.causation.as_ref()
    }

    /// When it was emitted.
    pub fn emitted_at(&self) -> SystemTime {
        self.meta.emitted_at()
    }

    /// How many listeners of this process the event is for.
    pub fn listener_count(&self) -> usize {
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

    /// The event's id.
    pub fn event_id(&self) -> &EventId {
        &self.meta.id
    }

    /// The id of the event whose listener emitted this one, if any.
    pub fn causation(&self) -> Option<&EventId> {
        self.meta.causation.as_ref()
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
pub(crate) type DeadLetterHook = Arc<dyn Fn(&DeadLetter) + Send + Sync>;

/// The layers of a bus, in the order they were added, [`TracingLayer`] first. Kept in the
/// registry snapshot, so an emit finds them with the listeners, at no extra cost.
#[derive(Clone)]
pub(crate) struct Layers {
    list: Arc<[Arc<dyn Layer>]>,
    /// Whether any layer is [`timed`](Layer::timed).
    timed: bool,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            list: Arc::new([Arc::new(TracingLayer) as _]),
            timed: false,
        }
    }
}

impl Layers {
    /// These layers and `layer` after them.
    pub(crate) fn with(&self, layer: Arc<dyn Layer>) -> Layers {
        let timed = self.timed || layer.timed();
        let list = self.list.iter().cloned().chain([layer]).collect();
        Layers { list, timed }
    }

    /// Calls `hook` on every layer, in order. A hook that panics is caught and logged: the
    /// next layers still run, and the emit or delivery around it goes on (a delivery is
    /// finished exactly once, whatever a hook does).
    pub(crate) fn each(&self, hook: &'static str, mut call: impl FnMut(&dyn Layer)) {
        for layer in self.list.iter() {
            let called = std::panic::catch_unwind(AssertUnwindSafe(|| call(&**layer)));
            if let Err(payload) = called {
                ::tracing::error!(
                    hook,
                    panic = %panic_message(payload.as_ref()),
                    "a layer panicked in a hook; it was caught, the bus goes on"
                );
            }
        }
    }

    /// Calls `hook`, the bus's dead-letter hook, with its panic caught and logged as a layer's.
    pub(crate) fn dead_letter(&self, letter: &DeadLetter, hook: Option<&DeadLetterHook>) {
        self.each("on_dead_letter", |layer| layer.on_dead_letter(letter));
        if let Some(hook) = hook {
            let called = std::panic::catch_unwind(AssertUnwindSafe(|| hook(letter)));
            if let Err(payload) = called {
                ::tracing::error!(
                    panic = %panic_message(payload.as_ref()),
                    "the dead-letter hook panicked; it was caught, the bus goes on"
                );
            }
        }
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
