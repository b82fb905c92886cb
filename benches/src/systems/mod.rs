//! The systems of the suite: ours, the baselines, and the peer crates.

mod async_event_emitter;
mod broadcast;
mod bus;
mod direct;
mod event_bus_rs;
mod seed;
mod typed_emitter;

pub use self::async_event_emitter::AsyncEventEmitter;
pub use self::broadcast::Broadcast;
pub use self::bus::Bus;
pub use self::direct::Direct;
pub use self::event_bus_rs::EventBusRs;
pub use self::seed::Seed;
pub use self::typed_emitter::TypedEmitter;
