//! An async event bus: annotate an async fn, emit anywhere.
//!
//! ```
//! # #[derive(Debug)] struct UserCreated { name: String }
//! #[bus::listener("user.created")]
//! async fn send_welcome(event: &UserCreated) {
//!     println!("welcome, {}", event.name);
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Anywhere in the program: no wiring.
//! bus::emit("user.created", UserCreated { name: "Ada".into() });
//! # bus::global().drain().await;
//! # }
//! ```
//!
//! - [`emit`] never waits for a listener. Listeners run concurrently: each delivery is polled
//!   once on the spot and, if it has to wait, continues in its listener's lane, a queue that one
//!   task drains, running its deliveries concurrently (see [`Dispatch`] for the exact rule and
//!   the plain task-per-delivery mode). The returned [`Emission`] can be
//!   dropped, or awaited for a [`DeliveryReport`].
//! - A listener that panics or returns `Err` is caught, logged through `tracing` with the event
//!   and the listener, and counted in the report. Nothing else is disturbed.
//! - [`EventBus`] is the bus itself; [`global`] is the one holding every `#[listener]` fn, which
//!   [`emit`] and [`try_emit`] use. [`EventBus::add_listener`] and
//!   [`EventBus::remove_listener`] work on any bus, the global one included.
//! - An event is shared by its listeners, never copied or serialised in process: listeners get
//!   `Arc<E>`, `&E`, or (through the macro, when `E: Clone`) `E`.
//!
//! # Typed events
//!
//! [`derive(Event)`](macro@Event) binds a type to its event name, checked at compile time.
//! [`emit_event`] then emits a value under its type's name, and a `#[listener]` that names no
//! event listens to the name of its argument's type. The attribute's options set how the bus
//! runs the listener: `once`, and a [`Policy`] (`concurrency`, `timeout`, `retry`, `backoff`).
//!
//! ```
//! #[derive(Debug, bus::Event)]
//! #[event(name = "order.placed")]
//! struct OrderPlaced {
//!     total: u64,
//! }
//!
//! #[bus::listener(concurrency = 1, timeout = "5s", retry = 3, backoff = "100ms")]
//! async fn charge(order: &OrderPlaced) -> Result<(), String> {
//!     if order.total == 0 {
//!         return Err("nothing to charge".into());
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let report = bus::emit_event(OrderPlaced { total: 42 }).await; // emitted as "order.placed"
//! assert_eq!(report.delivered(), 1);
//! # }
//! ```
//!
//! # Listeners in other crates
//!
//! `#[listener]` registers at link time through [`inventory`](https://docs.rs/inventory). The
//! linker only keeps crates that the program refers to: a crate of listeners that is a
//! dependency but is never named in code is dropped, and its listeners with it. Name it once,
//! anywhere in the binary:
//!
//! ```text
//! use my_listeners as _;
//! ```
//!
//! [`EventBus::listeners`] shows what the bus holds, with each listener's fn path and location.
//!
//! # Modules
//!
//! The root holds what a program types every day; the rest is grouped by concept:
//! [`error`] (every error type), [`event`] (events, envelopes, the name rules), [`layer`]
//! (middleware: tracing, metrics, your own), [`listener`](mod@listener) (what a listener is
//! and how the bus describes it), [`policy`] (how a listener's deliveries run), [`stream`]
//! (waiting for events outside a listener), [`report`] (what emits and shutdowns report) and
//! [`transport`] (the broker side).
//!
//! # Features
//!
//! | feature | default | what it enables |
//! |---|---|---|
//! | `macros` | yes | the [`listener`](macro@listener) attribute and [`derive(Event)`](macro@Event) |
//! | `metrics` | no | [`MetricsLayer`](layer::MetricsLayer): the bus's emits and deliveries as counters, a gauge and a histogram, through the [`metrics`](https://docs.rs/metrics) facade |
//! | `nats` | no | [`nats`]: the NATS JetStream transport ([`nats::NatsTransport`], crate `bus-nats`) |
//! | `redis` | no | [`redis`]: the Redis Streams transport ([`redis::RedisTransport`], crate `bus-redis`) |
//! | `amqp` | no | [`amqp`]: the RabbitMQ transport ([`amqp::AmqpTransport`], crate `bus-amqp`) |
//! | `postgres` | no | [`postgres`]: a transactional outbox, an idempotent inbox and a transport on PostgreSQL (crate `bus-postgres`) |
//! | `testing` | no | [`testing`]: a harness that records what a bus does, and assertions that wait on the events |
//! | `opentelemetry` | no | the distributed path's `publish` and `process` spans join OpenTelemetry traces across services ([`trace`]) |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use bus_core::{
    AnyEvent, DeliveryReport, Dispatch, Emission, Envelope, Event, EventBus, EventBusBuilder,
    EventId, Policy, emit, emit_event, global, install_global, try_emit,
};
pub use bus_core::{error, event, health, layer, listener, policy, report, stream, trace};

#[cfg(feature = "testing")]
#[doc(inline)]
pub use bus_core::testing;

#[cfg(feature = "macros")]
#[doc(inline)]
pub use bus_macros::{Event, listener};

/// Not public API. Used by code generated by `#[bus::listener]`.
#[doc(hidden)]
pub use bus_core::__private;

/// Transports: how a bus reaches other processes through a broker. See [`transport::Transport`].
pub use bus_core::transport;

/// The NATS JetStream transport: [`nats::NatsTransport`] (crate `bus-nats`).
#[cfg(feature = "nats")]
pub use bus_nats as nats;

/// The Redis Streams transport: [`redis::RedisTransport`] (crate `bus-redis`).
#[cfg(feature = "redis")]
pub use bus_redis as redis;

/// The RabbitMQ (AMQP 0-9-1) transport: [`amqp::AmqpTransport`] (crate `bus-amqp`).
#[cfg(feature = "amqp")]
pub use bus_amqp as amqp;

/// PostgreSQL: a transactional outbox, an idempotent inbox and a transport (crate `bus-postgres`).
#[cfg(feature = "postgres")]
pub use bus_postgres as postgres;
