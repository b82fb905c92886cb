//! The runtime of `bus`: the registry, the event bus and its dispatch.
//!
//! Depend on the `bus` crate, which re-exports everything here along with the
//! `#[bus::listener]` attribute; this crate exists so that transports can build on the runtime
//! without compiling the macro.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bus;
mod dispatch;
mod emission;
mod error;
mod global;
mod listener;
mod name;
mod name_rules;
mod once;
mod pattern;
mod registry;
mod shared_map;
mod subscription;
mod wait;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::bus::{EventBus, EventBusBuilder, ShutdownReport};
pub use crate::dispatch::Dispatch;
pub use crate::emission::{DeliveryReport, Emission, EmissionFuture};
pub use crate::error::{AddListenerError, BoxError, DeliveryError, EmitError, NameError};
pub use crate::global::{emit, global, try_emit};
pub use crate::listener::{Listener, ListenerOutput};
pub use crate::registry::{ListenerId, ListenerInfo, ListenerKind, SourceLocation};
pub use crate::subscription::{Lagged, MAX_CAPACITY as MAX_SUBSCRIPTION_CAPACITY, Subscription};
pub use crate::wait::{WaitError, WaitFor};
