//! The list of systems the suite compares. Adding a system, or a dispatch mode of ours, is
//! one line in [`contenders`].

use std::time::Duration;

use tokio::runtime::Runtime;

use crate::run::{self, GUARD};
use crate::scenario::{Job, Output, Scenario};
use crate::system::{self, Delivery, NotApplicable, Setup, System};
use crate::systems::{AsyncEventEmitter, Broadcast, Bus, Direct, EventBusRs, Seed, TypedEmitter};

/// Every system of the suite, in table order.
///
/// `bus` is `EventBus::new()`, the default dispatch mode; every other mode we offer is one
/// more line built with `EventBus::builder()`.
pub fn contenders() -> Vec<Contender> {
    vec![
        Contender::new("bus", Role::Ours, |_| Bus::new(bus::EventBus::new())),
        Contender::new("bus-spawn", Role::Ours, |_| {
            Bus::new(
                bus::EventBus::builder()
                    .dispatch(bus::Dispatch::Spawn)
                    .build(),
            )
        }),
        Contender::new("seed", Role::Baseline, |_| Seed::new()),
        Contender::new("direct", Role::Baseline, |_| Direct::new()),
        Contender::new("broadcast", Role::Baseline, |s| Broadcast::new(s.capacity)),
        Contender::new("async-event-emitter", Role::Peer, |_| {
            AsyncEventEmitter::new()
        }),
        Contender::new("typed-emitter", Role::Peer, |_| TypedEmitter::new()),
        Contender::new("event_bus_rs", Role::Peer, |s| EventBusRs::new(s.capacity)),
    ]
}

/// What a system is to the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ours: the tables give its ratios to `direct`, to `seed` and to the best peer.
    Ours,
    /// `seed`, `direct`, `broadcast`: the reference points of the issue.
    Baseline,
    /// A crate from crates.io; "the best peer" is the fastest of these.
    Peer,
}

type Runner = dyn Fn(Job, &Runtime, Duration) -> Result<Output, NotApplicable> + Send + Sync;

/// A named system with its factory, ready to run any job.
pub struct Contender {
    name: &'static str,
    role: Role,
    supports: fn(&Job) -> Result<(), NotApplicable>,
    delivery: Delivery,
    runner: Box<Runner>,
}

impl std::fmt::Debug for Contender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contender")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Contender {
    /// A contender that builds a fresh `S` with `factory` for every run.
    pub fn new<S, F>(name: &'static str, role: Role, factory: F) -> Self
    where
        S: System,
        F: Fn(&Setup) -> S + Send + Sync + 'static,
    {
        Contender {
            name,
            role,
            supports: system::check::<S>,
            delivery: S::DELIVERY,
            runner: Box::new(move |job, runtime, guard| {
                run::run(name, &factory, job, runtime, guard)
            }),
        }
    }

    /// The name in the tables and in criterion's output.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Ours, a baseline, or a peer.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The job this contender runs for `scenario` at `divisor`: the scenario's, except in (h),
    /// where a system that handles a listener's events one at a time (a queue drained by one
    /// task, or an emit that awaits its listeners) runs 1/100 of the emits. Each of its calls
    /// waits its 1 ms in turn, so the full count would take minutes per run; its rate is
    /// calls per second all the same.
    pub fn job(&self, scenario: Scenario, divisor: u64) -> Job {
        match (scenario, self.delivery) {
            (Scenario::H, Delivery::Queue | Delivery::Inline) => scenario.job(divisor * 100),
            _ => scenario.job(divisor),
        }
    }

    /// Whether the system can express `job`.
    ///
    /// # Errors
    ///
    /// The reason it cannot.
    pub fn supports(&self, job: &Job) -> Result<(), NotApplicable> {
        (self.supports)(job)
    }

    /// Runs `job` once, on a fresh system, on `runtime`.
    ///
    /// # Errors
    ///
    /// [`NotApplicable`] when the system cannot express `job`.
    ///
    /// # Panics
    ///
    /// When the run loses events, hangs, or the system reports a failure.
    pub fn run(&self, job: Job, runtime: &Runtime) -> Result<Output, NotApplicable> {
        self.run_guarded(job, runtime, GUARD)
    }

    /// [`run`](Contender::run) with another hang guard than [`GUARD`].
    ///
    /// # Errors
    ///
    /// [`NotApplicable`] when the system cannot express `job`.
    ///
    /// # Panics
    ///
    /// As [`run`](Contender::run), and when a phase takes longer than `guard`.
    pub fn run_guarded(
        &self,
        job: Job,
        runtime: &Runtime,
        guard: Duration,
    ) -> Result<Output, NotApplicable> {
        (self.runner)(job, runtime, guard)
    }

    /// The timed phase of a [`Job::Throughput`] or [`Job::RoundTrips`] run, for criterion's
    /// `iter_custom`.
    ///
    /// # Panics
    ///
    /// When the system cannot express `job` (check [`supports`](Contender::supports) first),
    /// when `job` measures no time, and as [`run`](Contender::run).
    pub fn elapsed(&self, job: Job, runtime: &Runtime) -> Duration {
        match self.run(job, runtime) {
            Ok(Output::Elapsed(elapsed)) => elapsed,
            Ok(other) => panic!("{}: {job:?} measures no time but {other:?}", self.name),
            Err(not_applicable) => panic!("{}: {not_applicable}", self.name),
        }
    }
}
