//! A test kit (feature `testing`): a [`Harness`] records what a bus does, every emit with its
//! payload, every delivery attempt with its outcome, every dead letter and every shed, and
//! asserts on it by waiting for the events themselves, never on a clock of its own.
//!
//! Each assertion waits until what it expects is recorded, up to a bound (5 s by default,
//! [`Harness::within`]); past it, it panics with what was recorded instead, nearest first.
//! Every assertion also has a `try_wait` form that returns the failure as an [`Unmet`].
//!
//! ```
//! use std::sync::Arc;
//! use bus::testing::Harness;
//!
//! #[derive(Debug)]
//! struct OrderPlaced { id: u32 }
//! #[derive(Debug)]
//! struct Receipt { order: u32 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let harness = Harness::new();
//! let bus = bus::EventBus::builder().harness(&harness).build();
//! let emitter = bus.clone();
//! bus.add_listener("orders.placed", move |order: Arc<OrderPlaced>| {
//!     let emitter = emitter.clone();
//!     async move {
//!         emitter.emit("receipts.sent", Receipt { order: order.id });
//!     }
//! });
//!
//! bus.emit("orders.placed", OrderPlaced { id: 7 });
//!
//! // Waits until it is recorded (or fails after 5 s, saying what was recorded instead).
//! let receipt = harness.emitted::<Receipt>("receipts.*").matching(|r| r.order == 7).await;
//! assert_eq!(receipt.event().order, 7);
//! harness.handled("orders.placed").await;
//! harness.chain(&["orders.placed", "receipts.sent"]).await;
//! # }
//! ```
//!
//! "Nothing arrives" is [`Harness::nothing_emitted`]: it waits out the whole bound, so run it
//! with Tokio's clock paused (`#[tokio::test(start_paused = true)]`), where that takes no real
//! time. Listeners that receive their events from a broker are recorded as well: build every
//! bus of the test (on a shared
//! [`MemoryTransport`](crate::transport::MemoryTransport)) with the same harness.

use std::any::Any;
use std::fmt::{self, Write as _};
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::event::{ErasedEvent, EventId, Meta};
use crate::layer::{AttemptResult, DeadLetter, DeliveryInfo, DeliveryOutcome, EmitInfo, Layer};
use crate::name::pattern::Pattern;

/// How long an assertion waits by default: long enough for a loaded CI machine, short enough
/// that a failing test says so quickly.
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(5);

/// How many records a failure message shows at most.
const SHOWN: usize = 20;

/// Records what the buses built with it do, and asserts on it. Cheap to clone: clones share
/// the records.
#[derive(Clone)]
pub struct Harness {
    probe: Arc<Probe>,
    within: Duration,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("records", &self.probe.lock().len())
            .field("within", &self.within)
            .finish()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

/// One thing a bus did, as the harness recorded it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Record {
    /// An event was emitted (and handed to this many listeners of this process).
    Emitted {
        /// Its name.
        name: String,
        /// Its id.
        id: EventId,
        /// The id of the event whose listener emitted it.
        causation: Option<EventId>,
        /// The payload's type.
        type_name: &'static str,
        /// Listeners of this process it was for.
        listeners: usize,
    },
    /// One attempt of one delivery ended.
    Attempted {
        /// The event's name.
        name: String,
        /// The event's id.
        id: EventId,
        /// The listener's name.
        listener: String,
        /// 1 for the first attempt.
        attempt: u32,
        /// `None` when delivered; the error, panic, timeout or abort otherwise.
        error: Option<String>,
        /// No attempt follows (delivered, or no retry left).
        last: bool,
    },
    /// A delivery failed its last attempt.
    DeadLettered {
        /// The event's name.
        name: String,
        /// The event's id.
        id: EventId,
        /// The listener's name.
        listener: String,
        /// The last attempt's error.
        error: String,
        /// Attempts made.
        attempts: u32,
    },
    /// An emit was shed: the bus held as many deliveries as it may.
    Shed {
        /// The event's name.
        name: String,
        /// The event's id.
        id: EventId,
    },
}

impl Record {
    /// The name of the event it is about.
    pub fn name(&self) -> &str {
        match self {
            Record::Emitted { name, .. }
            | Record::Attempted { name, .. }
            | Record::DeadLettered { name, .. }
            | Record::Shed { name, .. } => name,
        }
    }

    /// The id of the event it is about.
    pub fn id(&self) -> &EventId {
        match self {
            Record::Emitted { id, .. }
            | Record::Attempted { id, .. }
            | Record::DeadLettered { id, .. }
            | Record::Shed { id, .. } => id,
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Emitted {
                name,
                id,
                causation,
                type_name,
                listeners,
            } => {
                write!(f, "emitted {name} ({type_name}) id {id}")?;
                if let Some(causation) = causation {
                    write!(f, ", caused by {causation}")?;
                }
                write!(f, ", for {listeners} listener(s) here")
            }
            Record::Attempted {
                name,
                id,
                listener,
                attempt,
                error,
                ..
            } => match error {
                None => write!(f, "  {name} {id} handled by {listener} (attempt {attempt})"),
                Some(error) => write!(
                    f,
                    "  {name} {id} failed in {listener} (attempt {attempt}): {error}"
                ),
            },
            Record::DeadLettered {
                name,
                id,
                listener,
                error,
                attempts,
            } => write!(
                f,
                "  {name} {id} dead-lettered by {listener} after {attempts} attempt(s): {error}"
            ),
            Record::Shed { name, id } => write!(f, "shed {name} {id}"),
        }
    }
}

/// A record, and the payload of an emit.
struct Entry {
    record: Record,
    payload: Option<ErasedEvent>,
}

/// What the buses write into and the harness reads: the records, and a wake-up for every new
/// one. A bus holds it as its probe (emits, with their payloads) and as a layer (attempts,
/// dead letters, sheds).
pub(crate) struct Probe {
    entries: Mutex<Vec<Entry>>,
    changed: Notify,
}

impl Probe {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, record: Record, payload: Option<ErasedEvent>) {
        self.lock().push(Entry { record, payload });
        self.changed.notify_waiters();
    }

    /// An emit of `payload` (of type `type_name`) under `name`, for `listeners` listeners here.
    pub(crate) fn emitted(
        &self,
        name: &str,
        meta: &Meta,
        type_name: &'static str,
        listeners: usize,
        payload: ErasedEvent,
    ) {
        let record = Record::Emitted {
            name: name.to_owned(),
            id: meta.id.clone(),
            causation: meta.causation.clone(),
            type_name,
            listeners,
        };
        self.push(record, Some(payload));
    }
}

/// The probe as a layer of the bus: attempts, dead letters and sheds.
pub(crate) struct Recording(pub(crate) Arc<Probe>);

impl Layer for Recording {
    fn after(&self, delivery: &DeliveryInfo<'_>, outcome: &DeliveryOutcome<'_>) {
        let error = match outcome.result() {
            AttemptResult::Delivered => None,
            AttemptResult::Failed(error) => Some(error.to_string()),
            AttemptResult::Panicked(message) => Some(format!("panicked: {message}")),
            AttemptResult::TimedOut(after) => Some(format!("timed out after {after:?}")),
            AttemptResult::Aborted => Some("aborted by shutdown".to_owned()),
        };
        self.0.push(
            Record::Attempted {
                name: delivery.event().to_owned(),
                id: delivery.event_id().clone(),
                listener: delivery.listener().name().to_owned(),
                attempt: delivery.attempt(),
                error,
                last: outcome.is_final(),
            },
            None,
        );
    }

    fn on_dead_letter(&self, letter: &DeadLetter) {
        self.0.push(
            Record::DeadLettered {
                name: letter.event().name().to_owned(),
                id: letter.event().id().clone(),
                listener: letter.listener().name().to_owned(),
                error: letter.error().to_string(),
                attempts: letter.attempts(),
            },
            None,
        );
    }

    fn on_shed(&self, emit: &EmitInfo<'_>) {
        self.0.push(
            Record::Shed {
                name: emit.event().to_owned(),
                id: emit.event_id().clone(),
            },
            None,
        );
    }
}

impl Harness {
    /// A harness with nothing recorded; give it to
    /// [`EventBusBuilder::harness`](crate::EventBusBuilder::harness).
    pub fn new() -> Self {
        Harness {
            probe: Arc::new(Probe {
                entries: Mutex::new(Vec::new()),
                changed: Notify::new(),
            }),
            within: DEFAULT_WITHIN,
        }
    }

    /// This harness (sharing its records) with assertions that wait up to `within`.
    #[must_use]
    pub fn within(mut self, within: Duration) -> Self {
        self.within = within;
        self
    }

    pub(crate) fn probe(&self) -> &Arc<Probe> {
        &self.probe
    }

    /// Everything recorded so far, in order.
    pub fn records(&self) -> Vec<Record> {
        self.probe
            .lock()
            .iter()
            .map(|entry| entry.record.clone())
            .collect()
    }

    /// Expects an emit of an `E` under a name `pattern` matches (`AnyEvent` is not a type
    /// here: name the payload's type). Narrow it with
    /// [`matching`](ExpectEmitted::matching); await it for the event.
    pub fn emitted<E: Send + Sync + 'static>(&self, pattern: &str) -> ExpectEmitted<'_, E> {
        ExpectEmitted {
            harness: self,
            pattern: pattern.to_owned(),
            predicate: None,
            _type: PhantomData,
        }
    }

    /// Expects a delivery of an event under a name `pattern` matches to end delivered (to any
    /// listener, or the one named with [`by`](ExpectDelivery::by)).
    pub fn handled(&self, pattern: &str) -> ExpectDelivery<'_> {
        self.delivery(pattern, Expected::Handled)
    }

    /// Expects an attempt of a delivery of an event under a name `pattern` matches to fail
    /// (error, panic, timeout or abort).
    pub fn failed(&self, pattern: &str) -> ExpectDelivery<'_> {
        self.delivery(pattern, Expected::Failed)
    }

    /// Expects a delivery of an event under a name `pattern` matches to be dead-lettered.
    pub fn dead_lettered(&self, pattern: &str) -> ExpectDelivery<'_> {
        self.delivery(pattern, Expected::DeadLettered)
    }

    /// Expects an emit under a name `pattern` matches to be shed.
    pub fn shed(&self, pattern: &str) -> ExpectDelivery<'_> {
        self.delivery(pattern, Expected::Shed)
    }

    fn delivery(&self, pattern: &str, expected: Expected) -> ExpectDelivery<'_> {
        ExpectDelivery {
            harness: self,
            pattern: pattern.to_owned(),
            listener: None,
            expected,
        }
    }

    /// Expects a chain of emits: one under the first name (or pattern), one under the second
    /// caused by it (its [causation](crate::Envelope::causation) is the first's id), and so
    /// on. Resolves to the ids along the chain.
    pub fn chain(&self, patterns: &[&str]) -> ExpectChain<'_> {
        ExpectChain {
            harness: self,
            patterns: patterns.iter().map(|&pattern| pattern.to_owned()).collect(),
        }
    }

    /// Expects no emit under a name `pattern` matches from now on, for the whole bound: it
    /// fails at the first one. Run it with Tokio's clock paused, where waiting out the bound
    /// takes no real time.
    pub fn nothing_emitted(&self, pattern: &str) -> ExpectNothing<'_> {
        ExpectNothing {
            harness: self,
            pattern: pattern.to_owned(),
        }
    }

    /// Waits until `find` finds something in the records, up to the bound.
    async fn wait<T>(&self, mut find: impl FnMut(&[Entry]) -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + self.within;
        loop {
            // Registered before looking, so a record pushed meanwhile still wakes it.
            let changed = self.probe.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = find(&self.probe.lock()) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// The failure of an expectation: what was recorded instead, the records about names
    /// `pattern` matches first.
    fn unmet(&self, expected: String, pattern: Option<&Pattern>) -> Unmet {
        let entries = self.probe.lock();
        let relevant =
            |entry: &&Entry| pattern.is_some_and(|pattern| pattern.matches(entry.record.name()));
        let nearest: Vec<String> = entries
            .iter()
            .filter(relevant)
            .chain(entries.iter().filter(|entry| !relevant(entry)))
            .take(SHOWN)
            .map(|entry| entry.record.to_string())
            .collect();
        Unmet {
            expected,
            within: self.within,
            recorded: entries.len(),
            nearest,
        }
    }
}

/// A pattern as the assertions take it; an invalid one fails the assertion, with the reason.
fn parse(pattern: &str) -> Result<Pattern, String> {
    Pattern::parse(pattern).map_err(|error| format!("`{pattern}` is not a valid pattern: {error}"))
}

/// An assertion that was not met within its bound: what it expected and what was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    expected: String,
    within: Duration,
    recorded: usize,
    nearest: Vec<String>,
}

impl Unmet {
    /// What the assertion expected.
    pub fn expected(&self) -> &str {
        &self.expected
    }

    /// The records shown, nearest first.
    pub fn nearest(&self) -> &[String] {
        &self.nearest
    }
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected {} within {:?}; recorded instead ({} record(s)",
            self.expected, self.within, self.recorded
        )?;
        if self.recorded > self.nearest.len() {
            write!(f, ", the {} nearest", self.nearest.len())?;
        }
        f.write_str("):")?;
        if self.nearest.is_empty() {
            f.write_str(" nothing")?;
        }
        for line in &self.nearest {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Unmet {}

/// Panics with `unmet`: what the awaited assertions do.
fn fail(unmet: Unmet) -> ! {
    panic!("{unmet}")
}

/// An emit the harness recorded, with its payload.
#[derive(Debug)]
pub struct Emitted<E> {
    event: Arc<E>,
    name: String,
    id: EventId,
    causation: Option<EventId>,
}

impl<E> Emitted<E> {
    /// The payload.
    pub fn event(&self) -> &Arc<E> {
        &self.event
    }

    /// The name it was emitted under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its id.
    pub fn id(&self) -> &EventId {
        &self.id
    }

    /// The id of the event whose listener emitted it.
    pub fn causation(&self) -> Option<&EventId> {
        self.causation.as_ref()
    }
}

type BoxedFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`ExpectEmitted::matching`] takes.
type Predicate<'a, E> = Box<dyn Fn(&E) -> bool + Send + Sync + 'a>;

/// [`Harness::emitted`]: await it for the first matching emit recorded.
#[must_use = "an expectation does nothing until awaited"]
pub struct ExpectEmitted<'a, E> {
    harness: &'a Harness,
    pattern: String,
    predicate: Option<Predicate<'a, E>>,
    _type: PhantomData<fn() -> E>,
}

impl<E> fmt::Debug for ExpectEmitted<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectEmitted")
            .field("type", &std::any::type_name::<E>())
            .field("pattern", &self.pattern)
            .field("predicate", &self.predicate.is_some())
            .finish()
    }
}

impl<'a, E: Send + Sync + 'static> ExpectEmitted<'a, E> {
    /// Only an event that `predicate` accepts.
    pub fn matching(mut self, predicate: impl Fn(&E) -> bool + Send + Sync + 'a) -> Self {
        self.predicate = Some(Box::new(predicate));
        self
    }

    /// Waits for it; the failure as an [`Unmet`].
    ///
    /// # Errors
    ///
    /// [`Unmet`] when no such emit is recorded within the bound, or the pattern is invalid.
    pub async fn try_wait(self) -> Result<Emitted<E>, Unmet> {
        let what = format!(
            "an emit of {} under `{}`{}",
            std::any::type_name::<E>(),
            self.pattern,
            if self.predicate.is_some() {
                " matching the predicate"
            } else {
                ""
            }
        );
        let pattern = parse(&self.pattern).map_err(|reason| self.harness.unmet(reason, None))?;
        let predicate = self.predicate;
        let found = self
            .harness
            .wait(|entries| {
                entries.iter().find_map(|entry| {
                    let Record::Emitted {
                        name,
                        id,
                        causation,
                        ..
                    } = &entry.record
                    else {
                        return None;
                    };
                    if !pattern.matches(name) {
                        return None;
                    }
                    let payload: Arc<dyn Any + Send + Sync> = Arc::clone(entry.payload.as_ref()?);
                    let event = payload.downcast::<E>().ok()?;
                    if predicate.as_ref().is_some_and(|accepts| !accepts(&event)) {
                        return None;
                    }
                    Some(Emitted {
                        event,
                        name: name.clone(),
                        id: id.clone(),
                        causation: causation.clone(),
                    })
                })
            })
            .await;
        found.ok_or_else(|| self.harness.unmet(what, Some(&pattern)))
    }
}

impl<'a, E: Send + Sync + 'static> IntoFuture for ExpectEmitted<'a, E> {
    type Output = Emitted<E>;
    type IntoFuture = BoxedFuture<'a, Emitted<E>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.try_wait().await.unwrap_or_else(|unmet| fail(unmet)) })
    }
}

/// What an [`ExpectDelivery`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Handled,
    Failed,
    DeadLettered,
    Shed,
}

/// [`Harness::handled`], [`failed`](Harness::failed), [`dead_lettered`](Harness::dead_lettered)
/// and [`shed`](Harness::shed): await it for the record.
#[must_use = "an expectation does nothing until awaited"]
#[derive(Debug)]
pub struct ExpectDelivery<'a> {
    harness: &'a Harness,
    pattern: String,
    listener: Option<String>,
    expected: Expected,
}

impl<'a> ExpectDelivery<'a> {
    /// Only by the listener of this name: its full name (`billing::charge`) or its last
    /// segment (`charge`). Not for [`shed`](Harness::shed), which is about the emit.
    pub fn by(mut self, listener: &str) -> Self {
        self.listener = Some(listener.to_owned());
        self
    }

    /// Waits for it; the failure as an [`Unmet`].
    ///
    /// # Errors
    ///
    /// [`Unmet`] when no such record is recorded within the bound, or the pattern is invalid.
    pub async fn try_wait(self) -> Result<Record, Unmet> {
        let what = match self.expected {
            Expected::Handled => "handled",
            Expected::Failed => "a failed attempt of",
            Expected::DeadLettered => "a dead letter of",
            Expected::Shed => "a shed of",
        };
        let by = self
            .listener
            .as_deref()
            .map(|listener| format!(" by `{listener}`"))
            .unwrap_or_default();
        let what = match self.expected {
            Expected::Handled => format!("an event under `{}` {what}{by}", self.pattern),
            _ => format!("{what} an event under `{}`{by}", self.pattern),
        };
        let pattern = parse(&self.pattern).map_err(|reason| self.harness.unmet(reason, None))?;
        let names = |listener: &str| {
            self.listener.as_deref().is_none_or(|wanted| {
                listener == wanted
                    || listener
                        .strip_suffix(wanted)
                        .is_some_and(|path| path.ends_with("::"))
            })
        };
        let expected = self.expected;
        let found = self
            .harness
            .wait(|entries| {
                entries
                    .iter()
                    .map(|entry| &entry.record)
                    .find(|record| {
                        pattern.matches(record.name())
                            && match (expected, record) {
                                (
                                    Expected::Handled,
                                    Record::Attempted {
                                        listener, error, ..
                                    },
                                ) => error.is_none() && names(listener),
                                (
                                    Expected::Failed,
                                    Record::Attempted {
                                        listener, error, ..
                                    },
                                ) => error.is_some() && names(listener),
                                (Expected::DeadLettered, Record::DeadLettered { listener, .. }) => {
                                    names(listener)
                                }
                                (Expected::Shed, Record::Shed { .. }) => true,
                                _ => false,
                            }
                    })
                    .cloned()
            })
            .await;
        found.ok_or_else(|| self.harness.unmet(what, Some(&pattern)))
    }
}

impl<'a> IntoFuture for ExpectDelivery<'a> {
    type Output = Record;
    type IntoFuture = BoxedFuture<'a, Record>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.try_wait().await.unwrap_or_else(|unmet| fail(unmet)) })
    }
}

/// [`Harness::chain`]: await it for the ids along the chain.
#[must_use = "an expectation does nothing until awaited"]
#[derive(Debug)]
pub struct ExpectChain<'a> {
    harness: &'a Harness,
    patterns: Vec<String>,
}

impl<'a> ExpectChain<'a> {
    /// Waits for it; the failure as an [`Unmet`].
    ///
    /// # Errors
    ///
    /// [`Unmet`] when no such chain is recorded within the bound, or a pattern is invalid.
    pub async fn try_wait(self) -> Result<Vec<EventId>, Unmet> {
        let what = format!("the chain {}", self.patterns.join(" → "));
        let patterns = self
            .patterns
            .iter()
            .map(|pattern| parse(pattern))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| self.harness.unmet(reason, None))?;
        let found = self
            .harness
            .wait(|entries| {
                let emits: Vec<(&str, &EventId, Option<&EventId>)> = entries
                    .iter()
                    .filter_map(|entry| match &entry.record {
                        Record::Emitted {
                            name,
                            id,
                            causation,
                            ..
                        } => Some((name.as_str(), id, causation.as_ref())),
                        _ => None,
                    })
                    .collect();
                chain_in(&emits, &patterns)
            })
            .await;
        found.ok_or_else(|| self.harness.unmet(what, patterns.first()))
    }
}

/// The first chain through `emits` (name, id, causation) along `patterns`, each emit caused by
/// the one before.
fn chain_in(
    emits: &[(&str, &EventId, Option<&EventId>)],
    patterns: &[Pattern],
) -> Option<Vec<EventId>> {
    fn from(
        emits: &[(&str, &EventId, Option<&EventId>)],
        patterns: &[Pattern],
        cause: Option<&EventId>,
        chain: &mut Vec<EventId>,
    ) -> bool {
        let Some((pattern, rest)) = patterns.split_first() else {
            return true;
        };
        for (name, id, causation) in emits {
            if pattern.matches(name) && (cause.is_none() || *causation == cause) {
                chain.push((*id).clone());
                if from(emits, rest, Some(id), chain) {
                    return true;
                }
                chain.pop();
            }
        }
        false
    }
    let mut chain = Vec::with_capacity(patterns.len());
    from(emits, patterns, None, &mut chain).then_some(chain)
}

impl<'a> IntoFuture for ExpectChain<'a> {
    type Output = Vec<EventId>;
    type IntoFuture = BoxedFuture<'a, Vec<EventId>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.try_wait().await.unwrap_or_else(|unmet| fail(unmet)) })
    }
}

/// [`Harness::nothing_emitted`]: await it to wait out the bound.
#[must_use = "an expectation does nothing until awaited"]
#[derive(Debug)]
pub struct ExpectNothing<'a> {
    harness: &'a Harness,
    pattern: String,
}

impl<'a> ExpectNothing<'a> {
    /// Waits out the bound; the first matching emit as an [`Unmet`].
    ///
    /// # Errors
    ///
    /// [`Unmet`] at the first emit under a matching name recorded from now on, or when the
    /// pattern is invalid.
    pub async fn try_wait(self) -> Result<(), Unmet> {
        let pattern = parse(&self.pattern).map_err(|reason| self.harness.unmet(reason, None))?;
        let seen = self.harness.probe.lock().len();
        let arrived = self
            .harness
            .wait(|entries| {
                entries[seen.min(entries.len())..]
                    .iter()
                    .find(|entry| {
                        matches!(entry.record, Record::Emitted { .. })
                            && pattern.matches(entry.record.name())
                    })
                    .map(|entry| entry.record.to_string())
            })
            .await;
        match arrived {
            None => Ok(()),
            Some(arrived) => {
                let mut expected = format!("no emit under `{}`, but got: ", self.pattern);
                let _ = write!(expected, "{arrived}");
                Err(self.harness.unmet(expected, Some(&pattern)))
            }
        }
    }
}

impl<'a> IntoFuture for ExpectNothing<'a> {
    type Output = ();
    type IntoFuture = BoxedFuture<'a, ()>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.try_wait().await.unwrap_or_else(|unmet| fail(unmet)) })
    }
}
