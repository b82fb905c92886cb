//! The process-wide bus that holds every `#[bus::listener]` fn linked into the binary, and the
//! free functions that emit on it.

use std::sync::OnceLock;

use super::EventBus;
use crate::delivery::Emission;
use crate::error::TryEmitError;
use crate::event::Event;

static GLOBAL: OnceLock<EventBus> = OnceLock::new();

/// Makes `bus` the process-wide bus that [`global`], [`emit`] and [`emit_event`] use: for a bus
/// with other settings than the default one, such as a
/// [transport](crate::EventBusBuilder::transport). Build it with
/// [`annotated_listeners`](crate::EventBusBuilder::annotated_listeners) to keep the
/// `#[bus::listener]` fns.
///
/// # Errors
///
/// Gives `bus` back when the global bus exists already (it was installed, or used: it is built
/// on first use). Install it first thing in `main`.
pub fn install_global(bus: EventBus) -> Result<(), EventBus> {
    GLOBAL.set(bus)
}

/// The process-wide bus: every `#[bus::listener]` fn of the binary, plus whatever is added to it
/// at run time. Built on first use.
pub fn global() -> &'static EventBus {
    GLOBAL.get_or_init(EventBus::with_annotated_listeners)
}

/// [`EventBus::emit`] on the [`global`] bus.
pub fn emit<E>(event_name: &str, event: E) -> Emission
where
    E: Send + Sync + 'static,
{
    global().emit(event_name, event)
}

/// [`EventBus::try_emit`] on the [`global`] bus.
///
/// # Errors
///
/// As [`EventBus::try_emit`].
pub fn try_emit<E>(event_name: &str, event: E) -> Result<Emission, TryEmitError<E>>
where
    E: Send + Sync + 'static,
{
    global().try_emit(event_name, event)
}

/// [`EventBus::emit_event`] on the [`global`] bus: emits `event` under its type's
/// [`Event::NAME`].
pub fn emit_event<E: Event>(event: E) -> Emission {
    global().emit_event(event)
}
