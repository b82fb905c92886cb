//! The transport conformance suite of `bus`: one set of cases every
//! [`Transport`](bus_core::transport::Transport) must pass, ported from the reference Pub/Sub
//! suite of the Go library Watermill (`pubsub/tests/test_pubsub.go`) and extended with the
//! checks of issue 5 (consumer killed before its ack, poison events, fan-out, wildcard parity,
//! deduplication).
//!
//! # Using it for a transport
//!
//! A transport's test file provides a [`Harness`] (how to open a new connection to its broker,
//! and, for a broker the test starts itself, how to restart it) and stamps the suite with
//! [`conformance_tests!`], which writes one `#[test]` per case ([`CASES`]):
//!
//! ```
//! // tests/conformance.rs of a transport crate, with `bus-conformance` as a dev-dependency.
//! use std::sync::Arc;
//!
//! use bus_conformance::Harness;
//! use bus_core::transport::{BoxFuture, MemoryTransport, Transport};
//!
//! /// Every connection reaches the same broker.
//! struct MemoryHarness(MemoryTransport);
//!
//! impl Harness for MemoryHarness {
//!     fn name(&self) -> &str {
//!         "memory"
//!     }
//!
//!     fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
//!         // A real broker: `Box::pin(async { Arc::new(NatsTransport::connect(URL).await.expect(..)) })`.
//!         Box::pin(std::future::ready(Arc::new(self.0.clone()) as Arc<dyn Transport>))
//!     }
//!
//!     // A transport whose `capabilities()` say `restartable` also overrides
//!     // `restart_broker`, which stops and restarts its private server.
//! }
//!
//! // The expression runs inside each test's runtime, so it may `.await` (to start a server).
//! bus_conformance::conformance_tests!(MemoryHarness(MemoryTransport::new()));
//! # fn main() {}
//! ```
//!
//! `cargo test --test conformance` then runs every case against the transport, with the full
//! counts; `BUS_CONFORMANCE=short` divides them by ten for a quick local run.
//!
//! # What the cases assume
//!
//! - Each case names its events `conformance.<case>-<random>.…` and its groups
//!   `<case>-<random>-…`, so the cases of one run (and of runs before it) never see each
//!   other's events on a shared broker.
//! - A subscription receives the events published after it is in place (a group: after the
//!   group was first created), so cases subscribe, or create their groups, before publishing.
//! - A case that needs a capability the transport lacks
//!   ([`Capabilities`](bus_core::transport::Capabilities)) passes after printing
//!   `SKIP <case>: <transport> lacks <capability>` to the standard error, past the test
//!   harness's capture: never silently.
//! - No case measures time. Each wait has a guard ([`Harness::guard_timeout`]) that fails the
//!   case when nothing arrives for that long. A few checks that "nothing more arrives" wait a
//!   short quiet period ([`QUIET_PERIOD`]); each is documented on its case.
//!
//! # Cases
//!
//! Every case is also a plain `async fn` in [`cases`], for a transport that wants to run one
//! by hand.
#![forbid(unsafe_code)]

pub mod cases;
pub mod checks;
mod harness;
mod macros;
#[cfg(feature = "secure")]
pub mod secure;
mod support;

/// Not public API. Used by the code [`conformance_tests!`] generates.
#[doc(hidden)]
pub mod __private;

pub use crate::harness::{DEFAULT_GUARD, Harness, SIZE_ENV, Size};
pub use crate::support::{CRASH_ACK_WAIT, QUIET_PERIOD};

__with_cases! { __case_names! () }
