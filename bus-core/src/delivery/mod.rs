//! The delivery engine: how an event reaches a listener and how its outcome is concluded.
//!
//! Every delivery, whether an emit in this process started it or a broker handed it over,
//! goes through the same code from the call of the listener to its outcome:
//!
//! - [`Caught`](attempt::Caught) calls the listener, polls its future and drops it, with a
//!   panic in any of the three caught, and turns how it ended into an
//!   [`Outcome`](attempt::Outcome). An inline delivery does so in place, on the emitter's
//!   thread, through the listener's concrete future (`Caught::start`), and so does the
//!   listener's lane, in place in the lane's set of running futures; a delivery in a task of
//!   its own ([`Dispatch::Spawn`]) through its boxed future ([`attempt::erased`]).
//! - [`attempt::Scope`] calls the layers' `before` and `after` around each attempt (a hook's
//!   panic caught there too), and hands a delivery whose last attempt failed to the dead
//!   letter (the layers, then the bus's hook).
//! - [`attempt::conclude`] turns the outcome into the report's entry.
//!
//! What differs is only how attempts are driven. An emit hands each listener to
//! [`run::Dispatcher`] (`erased` → `run`, a double dispatch so that the listener's concrete
//! future is polled inline, unboxed, and moved to the listener's lane ([`lane`]) only if it
//! has to wait; the lane's task, generic over the same concrete listener, calls it there). A
//! listener with a [`Policy`](crate::Policy) runs [`attempt::run`] once per attempt, in its
//! lane ([`policy`]), and so does a delivery from a broker, in its consumer's task, once per
//! delivery the broker makes (`remote::consumer`): the same timeout, the same hooks, the same
//! metrics.
//!
//! `erased`, `run` and `lane` import each other (the double dispatch above: the registry's
//! erased listener hands its concrete type to the engine); those are the only cycles between
//! modules of the crate, and they stay inside this folder.

pub(crate) mod attempt;
mod emission;
mod entry;
mod erased;
mod lane;
pub(crate) mod policy;
pub(crate) mod run;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub(crate) use self::emission::Outcomes;
pub use self::emission::{DeliveryReport, Emission, EmissionFuture};
pub(crate) use self::entry::Entry;
pub(crate) use self::erased::{Erased, identity_of};
pub use self::erased::{Listener, ListenerOutput};
use crate::layer::{DeadLetterHook, Layers};
use crate::registry::Registry;
use crate::tasks::Tasks;

/// How a bus runs its listeners. Every mode keeps the same guarantees: `emit` never waits for a
/// listener's `.await`, panics and errors are isolated and reported, and every delivery is
/// tracked by `drain`, `shutdown` and the [`DeliveryReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Dispatch {
    /// Poll each delivery once on the emitter's thread, before `emit` returns. If it completes,
    /// that is all: no task, no allocation per listener. If it awaits something not ready, it
    /// continues in the listener's *lane*, and the listener's later deliveries are handed to
    /// its lane whole (the listener is called there).
    ///
    /// A lane is a queue per listener and per Tokio runtime, drained by one task that lives
    /// while the lane has work and is woken once per batch of events, not once per event. It
    /// runs the listener's deliveries concurrently (a listener with a concurrency limit starts
    /// that many; the rest wait as queue entries), each with its own panic guard, span, layers'
    /// hooks and report entry; `drain`, `shutdown` (which aborts them at their next `.await`)
    /// and `max_in_flight` count every delivery. A listener with a [`Policy`](crate::Policy)
    /// always runs in its lane.
    ///
    /// So the code of a listener before its first `.await` may run on the emitter's thread
    /// (keep blocking work out of listeners, as in any async code); a listener that emits in
    /// turn is polled inline only up to a small depth, then handed to its lane, so the stack
    /// stays bounded.
    #[default]
    InlineFirst,
    /// Spawn every delivery as its own Tokio task: a listener never runs on the emitter's
    /// thread, at the cost of a task per delivery.
    Spawn,
}

/// What an emit reads in one atomic load: the listeners, and the layers around them.
#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) listeners: Registry<Entry>,
    pub(crate) layers: Layers,
}

/// What every delivery of a bus needs from it: held by the bus handle, and reached by the
/// consumers of its distributed listeners through [`EngineRef`].
pub(crate) struct Engine {
    /// The current snapshot. Readers never block; writers replace it whole.
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) tasks: Arc<Tasks>,
    pub(crate) mode: Dispatch,
    pub(crate) dead_letter: Option<DeadLetterHook>,
    /// The bus's service: the `source` of the events emitted on it.
    pub(crate) service: Arc<str>,
    /// The test kit's recorder of emits, when a harness is attached.
    #[cfg(feature = "testing")]
    pub(crate) probe: Option<Arc<crate::testing::Probe>>,
}

/// How a consumer reaches the engine of its bus without keeping the bus alive: a weak handle
/// to whatever holds the engine (the bus's shared state, which the engine lives in, so that an
/// emit reaches it with no pointer more to follow). A dropped bus stops its consumers.
pub(crate) type EngineRef = std::sync::Weak<dyn AsRef<Engine> + Send + Sync>;
