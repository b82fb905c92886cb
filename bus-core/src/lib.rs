//! The runtime of `bus`: the registry, the event bus and its delivery engine.
//!
//! Depend on the `bus` crate, which re-exports everything here along with the
//! `#[bus::listener]` attribute; this crate exists so that transports can build on the runtime
//! without compiling the macro.
//!
//! # Layout
//!
//! The modules read bottom to top, each importing only from those below it:
//!
//! 1. leaves: `id` (event and listener ids), [`error`], `name` (names, patterns and their
//!    index), [`event`] (events and envelopes), [`policy`], `info` (what a listener is said to
//!    be), `shared_map`;
//! 2. [`layer`] (middleware), `registry` (which listeners are under which name) and `testing`
//!    (the test kit's recorder, feature `testing`);
//! 3. `tasks`: what is in flight, `max_in_flight`, drain and shutdown;
//! 4. `delivery`: the one engine every delivery goes through (its module docs say how);
//! 5. [`health`], `remote`, [`trace`] and [`transport`]: the broker side;
//! 6. `bus`: the [`EventBus`] handle, its builder, emit, registration, and the listeners it
//!    makes for itself.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bus;
mod delivery;
pub mod error;
pub mod event;
pub mod health;
mod id;
mod info;
pub mod layer;
mod name;
pub mod policy;
mod registry;
mod remote;
mod shared_map;
mod tasks;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
pub mod transport;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::bus::{
    EventBus, EventBusBuilder, emit, emit_event, global, install_global, try_emit,
};
pub use crate::delivery::{DeliveryReport, Dispatch, Emission};
pub use crate::event::{AnyEvent, Envelope, Event, EventId};
pub use crate::policy::Policy;

/// What a listener is, and what the bus tells about one: the [`Listener`](listener::Listener)
/// trait every async fn and closure taking `Arc<E>` implements, the ids and descriptions
/// [`EventBus::listeners`] returns, and the [`ListenerBuilder`](listener::ListenerBuilder) of
/// [`EventBus::on`].
pub mod listener {
    pub use crate::bus::ListenerBuilder;
    pub use crate::delivery::{Listener, ListenerOutput};
    pub use crate::id::{ListenerId, SourceLocation};
    pub use crate::info::{ListenerInfo, ListenerKind};
}

/// Waiting for events outside a listener: [`WaitFor`](stream::WaitFor), the next matching
/// event ([`EventBus::wait_for`]), and [`EventStream`](stream::EventStream), every matching
/// event as a `Stream` ([`EventBus::stream`]).
pub mod stream {
    pub use crate::bus::{EventStream, MAX_CAPACITY, WaitFor};
}

/// What an emit and a shutdown report: the [`DeliveryReport`] an awaited [`Emission`] resolves
/// to (through [`EmissionFuture`](report::EmissionFuture)), and the
/// [`ShutdownReport`](report::ShutdownReport) of [`EventBus::shutdown`].
pub mod report {
    pub use crate::bus::ShutdownReport;
    pub use crate::delivery::{DeliveryReport, EmissionFuture};
}
