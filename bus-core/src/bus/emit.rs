//! What one emit does, in named steps:
//!
//! 1. **resolve**: one load of the snapshot gives the listeners of the name (exact, and the
//!    patterns that match it, split by whether they take the event's type) and the layers;
//! 2. **check**, once for the local and the published path alike: the name, the bus (closed?),
//!    the runtime, the payload's encoding when it crosses the wire, and the listeners' types,
//!    reported as errors (`try_emit`), or logged and counted as failed deliveries (`emit`);
//! 3. **reserve** places under `max_in_flight`, or shed the event;
//! 4. **deliver** to the listeners of this process, and publish to the broker.

use std::any::TypeId;
use std::sync::Arc;

use tokio::runtime::Handle;

use super::EventBus;
use crate::delivery::run::{EmitContext, deliver_all, in_runtime};
use crate::delivery::{Emission, Entry, Outcomes};
use crate::error::{DeliveryError, EmitError, NameError, PublishError};
use crate::event::{AnyEvent, Meta};
use crate::layer::{EmitInfo, Layers};
use crate::name;
use crate::registry::{Registered, Registry};
use crate::remote::codec::Codec;
use crate::tasks::Reserved;

/// Whether an emit reports problems as errors (`try_emit`) or as failed deliveries (`emit`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Strictness {
    Strict,
    Lenient,
    /// Lenient, except that a full bus hands the event back to wait for room (`emit_async`).
    WaitForRoom,
}

/// An emit that delivered nothing, with its event handed back.
pub(super) struct Refusal<E> {
    pub(super) error: EmitError,
    pub(super) event: E,
    /// How many places under `max_in_flight` the emit needs.
    pub(super) needed: usize,
}

/// Step 1: the listeners an emit of `E` under one name is for.
struct Targets<'r> {
    /// The name, shared with its slot when it has listeners.
    name: Arc<str>,
    /// The listeners of exactly this name, of any type; after
    /// [`keep_local`](Targets::keep_local), those that get the event here.
    exact: &'r [Arc<Entry>],
    /// The listeners of matching patterns, on a bus that has patterns at all: a bus without
    /// them pays one branch (and nothing to drop).
    patterns: Option<Box<Patterns>>,
}

/// The listeners of the patterns that match an emitted name.
#[derive(Default)]
struct Patterns {
    /// Those that take `E` (or `AnyEvent`).
    matched: Vec<Arc<Entry>>,
    /// Those that take another type: they pass it by.
    passed_by: Vec<Arc<Entry>>,
}

impl<'r> Targets<'r> {
    #[inline]
    fn resolve<E: 'static>(
        registry: &'r Registry<Entry>,
        event_name: &str,
    ) -> Result<Self, NameError> {
        let slot = registry.exact(event_name);
        // Registered names are valid, so only a name without an exact slot needs checking,
        // before it can match any pattern.
        if slot.is_none() {
            name::validate(event_name)?;
        }
        let patterns = registry.has_patterns().then(|| {
            let mut patterns = Box::<Patterns>::default();
            registry.for_each_pattern_match(event_name, |entry| {
                // Pattern listeners of another type are passed by, not an error: a pattern may
                // cover names that carry different types.
                if takes::<E>(entry) {
                    patterns.matched.push(Arc::clone(entry));
                } else {
                    patterns.passed_by.push(Arc::clone(entry));
                }
            });
            patterns
        });
        Ok(Targets {
            name: slot.map_or_else(|| Arc::from(event_name), |slot| Arc::clone(&slot.name)),
            exact: slot.map_or(&[][..], |slot| &slot.entries),
            patterns,
        })
    }

    /// Leaves out the listeners that receive the event from the broker: an emit that
    /// publishes does not also deliver to them here. The others of the exact name are kept in
    /// `kept`, a list of the emit's own, so that an emit that does not publish (or has no
    /// such listener) copies nothing.
    fn keep_local(&mut self, kept: &'r mut Vec<Arc<Entry>>) {
        if self.exact.iter().any(|entry| entry.remote) {
            kept.extend(self.exact.iter().filter(|entry| !entry.remote).cloned());
            self.exact = kept;
        }
        if let Some(patterns) = &mut self.patterns {
            patterns.matched.retain(|entry| !entry.remote);
        }
    }

    /// The listeners of matching patterns that get the event here.
    #[inline]
    fn matched(&self) -> &[Arc<Entry>] {
        self.patterns.as_ref().map_or(&[][..], |p| &p.matched)
    }

    /// The listeners that get the event here.
    #[inline]
    fn count(&self) -> usize {
        self.exact.len() + self.matched().len()
    }

    #[inline]
    fn iter(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.exact.iter().chain(self.matched())
    }

    /// The type mismatch of the first listener of the exact name (of those `which` selects)
    /// that takes another type than `E`.
    #[inline]
    fn mismatch<E: 'static>(
        &self,
        event_name: &str,
        which: impl Fn(&Entry) -> bool,
    ) -> Option<EmitError> {
        let entry = self
            .exact
            .iter()
            .find(|entry| which(entry) && !takes::<E>(entry))?;
        Some(mismatch::<E>(event_name, entry))
    }

    /// Tells the layers about the pattern listeners that passed the event by.
    #[inline]
    fn tell_passed_by(&self, layers: &Layers, info: &EmitInfo<'_>) {
        let Some(patterns) = &self.patterns else {
            return;
        };
        for entry in &patterns.passed_by {
            layers.each("on_mismatch", |layer| layer.on_mismatch(info, &entry.info));
        }
    }
}

/// Whether `entry` takes events of type `E`: its own type, or `AnyEvent`, which takes all.
#[inline]
fn takes<E: 'static>(entry: &Entry) -> bool {
    let expected = entry.event_type();
    expected == TypeId::of::<E>() || expected == TypeId::of::<AnyEvent>()
}

#[cold]
fn mismatch<E>(event_name: &str, entry: &Entry) -> EmitError {
    EmitError::TypeMismatch {
        event: event_name.to_owned(),
        listener: entry.info.name().to_owned(),
        expected: entry.info.event_type(),
        actual: std::any::type_name::<E>(),
    }
}

impl Strictness {
    /// An emit that stops before any delivery: the error for `try_emit`, or a logged error
    /// and an emission with no listener (and `published`, if the event was to be published).
    #[cold]
    fn stop<E>(
        self,
        error: EmitError,
        event: E,
        name: Arc<str>,
        published: bool,
    ) -> Result<Emission, Refusal<E>> {
        if self == Strictness::Strict {
            return Err(Refusal {
                error,
                event,
                needed: 0,
            });
        }
        tracing::error!(event = %name, %error, "event not emitted");
        let mut outcomes = Outcomes::new(Arc::clone(&name), 0);
        if published {
            outcomes.not_published(PublishError::Refused {
                event: name.to_string(),
                reason: error,
            });
        }
        Ok(outcomes.into_emission())
    }
}

/// Step 2's verdict on an emit that goes ahead.
struct Checked {
    /// How many listeners of this process get the event.
    listeners: usize,
    /// Why no listener can be reached: a lenient emit then counts each as not delivered.
    unreachable: Option<Unreachable>,
    /// What becomes of the event on the wire.
    publish: Publish,
}

/// Why an emit can reach no listener.
#[derive(Clone, Copy)]
enum Unreachable {
    /// The bus is shut down.
    Closed,
    /// No Tokio runtime runs on this thread.
    NoRuntime,
}

impl Unreachable {
    #[cold]
    fn error(self, event_name: &str) -> EmitError {
        let event = event_name.to_owned();
        match self {
            Unreachable::Closed => EmitError::Closed { event },
            Unreachable::NoRuntime => EmitError::NoRuntime { event },
        }
    }
}

/// Whether an emit publishes its event.
///
/// The errors of this step are boxed: what it returns is moved on every emit, and small.
enum Publish {
    /// Its type stays in process.
    No,
    /// To the broker, encoded.
    Yes(Vec<u8>),
    /// Not, for this reason.
    Refused(Box<EmitError>),
}

/// An emit stopped before any delivery, for `error`.
struct Stop {
    error: Box<EmitError>,
    /// The event was to be published.
    published: bool,
}

impl EventBus {
    /// Emits `event` under `event_name`: see the module docs for the steps.
    pub(super) fn emit_with<E>(
        &self,
        event_name: &str,
        event: E,
        strictness: Strictness,
        received: Option<Meta>,
    ) -> Result<Emission, Refusal<E>>
    where
        E: Send + Sync + 'static,
    {
        let snapshot = self.shared.engine.snapshot.load();
        let layers = &snapshot.layers;
        // What `keep_local` keeps: empty, and never allocated, unless the event is published.
        let mut kept = Vec::new();
        let mut targets = match Targets::resolve::<E>(&snapshot.listeners, event_name) {
            Ok(targets) => targets,
            Err(error) => {
                let name = Arc::from(event_name);
                return strictness.stop(EmitError::InvalidName(error), event, name, false);
            }
        };
        let checked = match self.check(event_name, &mut targets, &mut kept, &event, strictness) {
            Ok(checked) => checked,
            Err(Stop { error, published }) => {
                return strictness.stop(*error, event, targets.name, published);
            }
        };
        // The clock is read only when something can see the time.
        let clocked = !matches!(checked.publish, Publish::No)
            || !layers.only_tracing()
            || targets.iter().any(|entry| entry.observes_envelope());
        let meta = match received {
            Some(meta) => meta,
            None if clocked => Meta::now(),
            None => Meta::unclocked(),
        };
        let mut outcomes = Outcomes::new(Arc::clone(&targets.name), checked.listeners);
        outcomes.set_event_id(meta.id.clone());
        if let Some(reason) = checked.unreachable {
            let reason = reason.error(event_name);
            return Ok(unreachable(
                event_name,
                &targets,
                outcomes,
                reason,
                checked.publish,
            ));
        }
        let listeners = checked.listeners;
        let info = EmitInfo {
            name: event_name,
            meta: &meta,
            listeners,
        };
        let reserved = match self.reserve(event_name, listeners, strictness) {
            Ok(reserved) => reserved,
            Err(Reserve::Wait(error)) => {
                return Err(Refusal {
                    error,
                    event,
                    needed: listeners,
                });
            }
            Err(Reserve::Shed(full)) => {
                // Counted and logged by the layers, failed in the report. The broker, if any,
                // still gets it: the limit bounds this process's work.
                targets.tell_passed_by(layers, &info);
                layers.each("on_shed", |layer| layer.on_shed(&info));
                self.shared.engine.tasks.count_shed(listeners);
                #[cfg(feature = "testing")]
                self.probe_emitted(&info, event);
                for entry in targets.iter() {
                    record_not_delivered(&mut outcomes, &targets.name, entry, full.clone());
                }
                self.publish(&mut outcomes, checked.publish, event_name, &meta);
                return Ok(outcomes.into_emission());
            }
        };
        targets.tell_passed_by(layers, &info);
        self.deliver(&targets, event, &info, layers, reserved, &mut outcomes);
        self.publish(&mut outcomes, checked.publish, event_name, &meta);
        Ok(outcomes.into_emission())
    }

    /// Step 2: the name was checked by `resolve`; this checks the bus (closed?), the runtime,
    /// the types and, for an event that crosses the wire, its encoding, for the local and the
    /// published path alike. Types are checked against every listener of the exact name, the
    /// ones that receive it from the broker included: the same with and without a transport.
    #[inline]
    fn check<'r, E: Send + Sync + 'static>(
        &self,
        event_name: &str,
        targets: &mut Targets<'r>,
        kept: &'r mut Vec<Arc<Entry>>,
        event: &E,
        strictness: Strictness,
    ) -> Result<Checked, Stop> {
        let codec: Option<Codec> = self
            .shared
            .remote
            .as_ref()
            .and_then(|remote| remote.codec(TypeId::of::<E>()).copied());
        let wrong_type = match strictness {
            Strictness::Strict => targets.mismatch::<E>(event_name, |_| true),
            Strictness::Lenient | Strictness::WaitForRoom => None,
        };
        // The broker hands a published event to every listener of its name in this process
        // too, as that listener's type: one that takes another type must not get it.
        let wrong_type_for_the_broker = match codec {
            Some(_) => targets
                .mismatch::<E>(event_name, |entry| entry.remote)
                .map(Box::new),
            None => None,
        };
        if codec.is_some() {
            targets.keep_local(kept);
        }
        let listeners = targets.count();
        // A shutdown that begins after this check still stops every delivery task of this
        // emit from starting (`Tasks::try_start`); deliveries that complete inline finish.
        let closed = self.shared.engine.tasks.is_closed();
        let unreachable = if closed {
            Some(Unreachable::Closed)
        } else if (listeners > 0 || codec.is_some()) && !in_runtime() {
            Some(Unreachable::NoRuntime)
        } else {
            None
        };
        let published = codec.is_some();
        let stop = |error| {
            Err(Stop {
                error: Box::new(error),
                published,
            })
        };
        if strictness == Strictness::Strict {
            if let Some(reason) = unreachable {
                return stop(reason.error(event_name));
            }
            if let Some(error) = wrong_type {
                return stop(error);
            }
        }
        if listeners == 0 && closed {
            return stop(Unreachable::Closed.error(event_name));
        }
        let publish = match (codec, unreachable) {
            (None, _) => Publish::No,
            (Some(_), Some(reason)) => Publish::Refused(Box::new(reason.error(event_name))),
            (Some(codec), None) => match codec.encode(event) {
                Err(reason) => {
                    return stop(EmitError::Unencodable {
                        event: event_name.to_owned(),
                        type_name: std::any::type_name::<E>(),
                        reason,
                    });
                }
                Ok(data) => match wrong_type_for_the_broker {
                    Some(wrong_type) => Publish::Refused(wrong_type),
                    None => Publish::Yes(data),
                },
            },
        };
        Ok(Checked {
            listeners,
            unreachable,
            publish,
        })
    }

    /// Step 3: places under `max_in_flight` for the emit's deliveries, all or none.
    #[inline]
    fn reserve(
        &self,
        event_name: &str,
        listeners: usize,
        strictness: Strictness,
    ) -> Result<Option<Reserved<'_>>, Reserve> {
        let tasks = &self.shared.engine.tasks;
        let Some(limit) = tasks.limit().filter(|_| listeners > 0) else {
            return Ok(None);
        };
        if let Some(reserved) = tasks.try_reserve(listeners) {
            return Ok(Some(reserved));
        }
        let full = EmitError::Full {
            event: event_name.to_owned(),
            limit,
            listeners,
        };
        match strictness {
            Strictness::Strict => Err(Reserve::Wait(full)),
            Strictness::WaitForRoom if listeners <= limit => Err(Reserve::Wait(full)),
            // An emit that could never fit is shed even by `emit_async`.
            Strictness::WaitForRoom | Strictness::Lenient => Err(Reserve::Shed(full)),
        }
    }

    /// Step 4, in process: the `bus.emit` span, the layers' `on_emit`, and a delivery to each
    /// listener.
    #[inline]
    fn deliver<E>(
        &self,
        targets: &Targets<'_>,
        event: E,
        info: &EmitInfo<'_>,
        layers: &Layers,
        reserved: Option<Reserved<'_>>,
        outcomes: &mut Outcomes,
    ) where
        E: Send + Sync + 'static,
    {
        let (event_name, meta) = (info.name, info.meta);
        if info.listeners == 0 {
            #[cfg(feature = "testing")]
            self.probe_emitted(info, event);
            if !layers.only_tracing() {
                layers.each("on_emit", |layer| layer.on_emit(info));
            }
            tracing::debug!(
                event = event_name,
                "no listener for this event in this process"
            );
            return;
        }
        let emit_span = tracing::debug_span!(
            "bus.emit",
            event = event_name,
            event_id = %meta.id,
            causation = tracing::field::Empty,
            listeners = info.listeners,
        );
        if let Some(causation) = &meta.causation {
            emit_span.record("causation", tracing::field::display(causation));
        }
        if !layers.only_tracing() {
            let _entered = emit_span.enter();
            layers.each("on_emit", |layer| layer.on_emit(info));
        }
        let engine = &self.shared.engine;
        let context = EmitContext {
            mode: engine.mode,
            tasks: &engine.tasks,
            event_name: &targets.name,
            emit_span: &emit_span,
            meta,
            layers,
            dead_letter: engine.dead_letter.as_ref(),
            #[cfg(feature = "testing")]
            probe: engine.probe.as_ref().map(|probe| (probe, info.listeners)),
            runtime: std::cell::OnceCell::new(),
        };
        let mismatched = deliver_all(&context, targets.iter(), event, reserved, outcomes);
        if !mismatched.is_empty() {
            for entry in mismatched {
                let reason = mismatch::<E>(event_name, &entry);
                not_delivered(outcomes, &targets.name, &entry, reason);
            }
        }
    }

    /// Tells the test kit's harness, if one is attached, of an emit that no listener here
    /// receives (none, or shed).
    #[cfg(feature = "testing")]
    #[cold]
    fn probe_emitted<E: Send + Sync + 'static>(&self, info: &EmitInfo<'_>, event: E) {
        if let Some(probe) = &self.shared.engine.probe {
            let type_name = std::any::type_name::<E>();
            probe.emitted(
                info.name,
                info.meta,
                type_name,
                info.listeners,
                Arc::new(event),
            );
        }
    }

    /// Step 4, on the wire: publishes the event, or says in the report why it was not.
    #[inline(always)]
    fn publish(&self, outcomes: &mut Outcomes, publish: Publish, event_name: &str, meta: &Meta) {
        let refused = |reason| PublishError::Refused {
            event: event_name.to_owned(),
            reason,
        };
        let data = match publish {
            Publish::No => return,
            Publish::Yes(data) => data,
            Publish::Refused(reason) => {
                tracing::error!(event = event_name, error = %reason, "event not published");
                return outcomes.not_published(refused(*reason));
            }
        };
        let (Some(remote), Ok(runtime)) = (&self.shared.remote, Handle::try_current()) else {
            let reason = EmitError::NoRuntime {
                event: event_name.to_owned(),
            };
            return outcomes.not_published(refused(reason));
        };
        let wire = remote.wire(event_name, meta, data);
        let tasks = &self.shared.engine.tasks;
        outcomes.published_by(remote.publish(&runtime, tasks, wire, meta.id.clone()));
    }
}

/// Why step 3 found no room.
enum Reserve {
    /// Hand the event back: `try_emit` refuses it, `emit_async` waits for room.
    Wait(EmitError),
    /// Shed the event.
    Shed(EmitError),
}

/// A lenient emit that can reach no listener (the bus is closed, or no runtime runs here):
/// each listener counts it as not delivered, and it is not published.
#[cold]
fn unreachable(
    event_name: &str,
    targets: &Targets<'_>,
    mut outcomes: Outcomes,
    reason: EmitError,
    publish: Publish,
) -> Emission {
    for entry in targets.iter() {
        not_delivered(&mut outcomes, &targets.name, entry, reason.clone());
    }
    if let Publish::Refused(reason) = publish {
        tracing::error!(event = event_name, error = %reason, "event not published");
        outcomes.not_published(PublishError::Refused {
            event: event_name.to_owned(),
            reason: *reason,
        });
    }
    outcomes.into_emission()
}

/// Records and logs that `entry` could not take the event.
#[cold]
fn not_delivered(outcomes: &mut Outcomes, event: &Arc<str>, entry: &Entry, reason: EmitError) {
    tracing::error!(
        event = %event, listener = %entry.info.name(), error = %reason,
        "event not delivered"
    );
    record_not_delivered(outcomes, event, entry, reason);
}

/// Records that `entry` could not take the event, for a reason logged elsewhere.
fn record_not_delivered(
    outcomes: &mut Outcomes,
    event: &Arc<str>,
    entry: &Entry,
    reason: EmitError,
) {
    outcomes.record(Err(DeliveryError::NotDelivered {
        event: Arc::clone(event),
        listener: Arc::clone(&entry.info.name),
        listener_id: entry.info.id(),
        reason,
    }));
}
