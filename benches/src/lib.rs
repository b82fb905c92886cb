//! The benchmark suite of `bus` (issue 3): ours beside the seed design, the inline lower bound,
//! `tokio::sync::broadcast`, and the peer crates, in the same scenarios and runtimes.
//!
//! - [`System`]: what a system must do for the suite: add a listener under a name, emit one
//!   event, and optionally await an emit's completion. One module per system in `systems/`.
//! - [`contenders`]: the list of systems, in table order. Adding one is one line.
//! - [`Scenario`], [`Job`], [`Flavor`]: what is measured, and on which runtime.
//! - [`Work`]: the handlers' work, and the one way completion is detected for every system:
//!   each handler counts itself, and the runner waits for the count, under a guard timeout that
//!   panics. A system that loses events can never produce a number.
//!
//! - [`broker`]: what the broker scenarios share: the event, the phase guard, the measure of a run, the
//!   loop over the rows and the table.
//! - [`nats`]: scenario (n) of issue 5, the NATS JetStream transport beside a raw
//!   `async-nats` loop, against a real server (the driver runs it; criterion does not).
//! - [`redis`]: scenario (r) of issue 6, the Redis Streams transport beside a raw `redis`
//!   XADD / XREADGROUP loop, against a real server (the driver runs it, likewise).
//! - [`postgres`]: scenario (p) of issue 17, the PostgreSQL transport beside a raw
//!   `FOR UPDATE SKIP LOCKED` queue loop, against a real server (likewise).
//! - [`amqp`]: scenario (q) of issue 20, the RabbitMQ transport beside a raw `lapin` loop
//!   (publisher confirms, manual acks), against a real broker (likewise).
//! - [`outbox`]: scenario (o) of issue 17, the transactional outbox: a transaction with and
//!   without `Outbox::emit`, and the relay to NATS (likewise).
//!
//! `benches/dispatch.rs` (criterion, `cargo bench`) and `examples/bench.rs` (the driver that
//! prints `BENCHMARKS.md`'s tables) both run through [`Contender::run`].

pub mod amqp;
pub mod broker;
mod contender;
pub mod nats;
pub mod outbox;
pub mod postgres;
pub mod redis;
mod report;
mod run;
mod scenario;
mod system;
pub mod systems;
mod work;

pub use contender::{Contender, Role, contenders};
pub use report::{Cell, Header, Results, Value, load_average, machine};
pub use run::{GUARD, names};
pub use scenario::{Flavor, Job, Output, Plan, Scenario};
pub use system::{Delivery, NotApplicable, Setup, System};
pub use work::{Claim, Event, Mode, Work, guarded};

#[cfg(test)]
mod tests;
