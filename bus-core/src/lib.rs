//! The runtime of `bus`: the registry, the event bus and its dispatch.
//!
//! Depend on the `bus` crate, which re-exports everything here along with the
//! `#[bus::listener]` attribute; this crate exists so that transports can build on the runtime
//! without compiling the macro.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod attempts;
mod bus;
mod dispatch;
mod emission;
mod error;
mod event;
mod global;
mod lane;
mod layer;
mod listener;
#[cfg(feature = "metrics")]
mod metrics_layer;
mod name;
mod name_rules;
mod once;
mod pattern;
mod policy;
mod registry;
mod remote;
mod shared_map;
mod subscription;
pub mod transport;
mod wait;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::bus::{EventBus, EventBusBuilder, ShutdownReport};
pub use crate::dispatch::Dispatch;
pub use crate::emission::{DeliveryReport, Emission, EmissionFuture};
pub use crate::error::{
    AddListenerError, BoxError, DeliveryError, EmitError, NameError, PublishError,
};
pub use crate::event::{AnyEvent, Envelope, Event, EventId, current_event_id};
pub use crate::global::{emit, global, install_global, publish, try_emit};
pub use crate::layer::{
    AttemptResult, DeadLetter, DeliveryInfo, DeliveryOutcome, EmitInfo, Layer, TracingLayer,
};
pub use crate::listener::{Listener, ListenerOutput};
#[cfg(feature = "metrics")]
pub use crate::metrics_layer::MetricsLayer;
pub use crate::name::{validate_name, validate_pattern};
pub use crate::policy::{DEFAULT_BACKOFF, Group, MAX_BACKOFF, Policy};
pub use crate::registry::{ListenerId, ListenerInfo, ListenerKind, SourceLocation};
pub use crate::remote::CAUSATION;
pub use crate::subscription::{Lagged, MAX_CAPACITY as MAX_SUBSCRIPTION_CAPACITY, Subscription};
pub use crate::wait::{WaitError, WaitFor};
