//! The scenarios of issue 3 and the runtimes they run on.

use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

use crate::work::Mode;

/// A scenario of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// (a) 1,000,000 emits, 1 listener that does an atomic increment.
    A,
    /// (b) 200,000 emits, 10 listeners.
    B,
    /// (c) 200,000 emits, 3 listeners that each `yield_now().await` once.
    C,
    /// (d) 10,000 names with 1 listener each, 200,000 emits round-robin over the names.
    D,
    /// (d) with 1 name: the denominator of the (d) ratio target.
    D1,
    /// (e) latency: emit one event, await its one listener; 100,000 samples after 10,000
    /// warm-up round trips.
    E,
    /// (f) 100,000 wildcard patterns (`bench.n{i}.*`) with 1 listener each, 200,000 emits
    /// round-robin over 10 names that each match one of them (`bench.n{i}.e`): what the other
    /// 99,990 patterns cost an emit.
    F,
    /// (f) with 10 patterns: the denominator of the (f) ratio target.
    F10,
    /// (f) with the emits spread over all 100,000 names, so that every emit reaches a pattern
    /// of its own: memory-bound, like (d).
    FSpread,
    /// (g) memory: peak RSS growth with 1,000,000 pending deliveries.
    G,
    /// (h) 100,000 emits, 3 listeners that each await a 1 ms `tokio::time::sleep` once: I/O-like
    /// listeners, whose deliveries must overlap to keep up.
    H,
}

impl Scenario {
    /// Every scenario, in table order.
    pub const ALL: [Scenario; 11] = [
        Scenario::A,
        Scenario::B,
        Scenario::C,
        Scenario::D,
        Scenario::D1,
        Scenario::E,
        Scenario::F,
        Scenario::F10,
        Scenario::FSpread,
        Scenario::G,
        Scenario::H,
    ];

    /// The throughput scenarios.
    pub const THROUGHPUT: [Scenario; 9] = [
        Scenario::A,
        Scenario::B,
        Scenario::C,
        Scenario::D,
        Scenario::D1,
        Scenario::F,
        Scenario::F10,
        Scenario::FSpread,
        Scenario::H,
    ];

    /// Short id, as in the issues: `a`, `b`, `c`, `d`, `d1`, `e`, `f`, `f10`, `fs`, `g`, `h`.
    pub fn id(self) -> &'static str {
        match self {
            Scenario::A => "a",
            Scenario::B => "b",
            Scenario::C => "c",
            Scenario::D => "d",
            Scenario::D1 => "d1",
            Scenario::E => "e",
            Scenario::F => "f",
            Scenario::F10 => "f10",
            Scenario::FSpread => "fs",
            Scenario::G => "g",
            Scenario::H => "h",
        }
    }

    /// The scenario with this [`id`](Scenario::id).
    pub fn from_id(id: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.id() == id)
    }

    /// A name usable as a criterion group name.
    pub fn slug(self) -> &'static str {
        match self {
            Scenario::A => "a_1_listener",
            Scenario::B => "b_10_listeners",
            Scenario::C => "c_3_yielding_listeners",
            Scenario::D => "d_10k_names",
            Scenario::D1 => "d1_1_name",
            Scenario::E => "e_latency",
            Scenario::F => "f_100k_patterns",
            Scenario::F10 => "f10_10_patterns",
            Scenario::FSpread => "fs_100k_patterns_spread",
            Scenario::G => "g_memory",
            Scenario::H => "h_3_sleeping_listeners",
        }
    }

    /// What the scenario does, at full size.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::A => "(a) 1,000,000 emits, 1 listener",
            Scenario::B => "(b) 200,000 emits, 10 listeners",
            Scenario::C => "(c) 200,000 emits, 3 listeners that yield once",
            Scenario::D => "(d) 200,000 emits over 10,000 names, 1 listener each",
            Scenario::D1 => "(d) 200,000 emits, 1 name, 1 listener",
            Scenario::E => "(e) latency, emit to completion of 1 listener",
            Scenario::F => "(f) 200,000 emits over 10 names, 100,000 wildcard patterns",
            Scenario::F10 => "(f) 200,000 emits over 10 names, 10 wildcard patterns",
            Scenario::FSpread => "(f) 200,000 emits over 100,000 names, 100,000 patterns",
            Scenario::G => "(g) memory, 1,000,000 pending deliveries",
            Scenario::H => "(h) 100,000 emits, 3 listeners that sleep 1 ms once",
        }
    }

    /// The job at full size divided by `divisor` (1 for the real measurement, 10 for
    /// `--quick`). Only counts of emits, samples and deliveries shrink: the shape (listeners,
    /// names) stays.
    pub fn job(self, divisor: u64) -> Job {
        let n = |full: u64| (full / divisor.max(1)).max(1);
        let plan = |emits, names, listeners, mode| {
            Job::Throughput(Plan {
                emits: n(emits),
                names,
                listeners,
                mode,
                patterns: 0,
            })
        };
        let patterns = |emits, names, patterns| {
            Job::Throughput(Plan {
                emits: n(emits),
                names,
                listeners: 1,
                mode: Mode::Count,
                patterns,
            })
        };
        match self {
            Scenario::A => plan(1_000_000, 1, 1, Mode::Count),
            Scenario::B => plan(200_000, 1, 10, Mode::Count),
            Scenario::C => plan(200_000, 1, 3, Mode::Yield),
            Scenario::H => plan(100_000, 1, 3, Mode::Sleep),
            Scenario::D => plan(200_000, 10_000, 1, Mode::Count),
            Scenario::D1 => plan(200_000, 1, 1, Mode::Count),
            Scenario::F => patterns(200_000, 10, 100_000),
            Scenario::F10 => patterns(200_000, 10, 10),
            Scenario::FSpread => patterns(200_000, 100_000, 100_000),
            Scenario::E => Job::Latency {
                warmup: n(10_000),
                samples: n(100_000),
            },
            Scenario::G => Job::Memory {
                deliveries: n(1_000_000),
            },
        }
    }
}

/// One throughput run: `emits` events spread round-robin over `names` names, each name with
/// `listeners` listeners whose handlers work in `mode`. With `patterns` > 0, the listeners
/// are registered under `patterns` wildcard patterns (`bench.n{i}.*`) instead of under the
/// names, and the names (`bench.n{i}.e`, `names` <= `patterns`) each match one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Events emitted.
    pub emits: u64,
    /// Distinct event names.
    pub names: usize,
    /// Listeners per name.
    pub listeners: usize,
    /// What each handler does.
    pub mode: Mode,
    /// Wildcard patterns registered, `listeners` each; 0 to register under the names.
    pub patterns: usize,
}

impl Plan {
    /// Handler calls the run must observe: `emits * listeners`.
    pub fn calls(&self) -> u64 {
        self.emits * self.listeners as u64
    }

    /// The most events any one name receives.
    pub fn emits_per_name(&self) -> u64 {
        self.emits.div_ceil(self.names as u64)
    }
}

/// What one run of a system measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Time from the first emit until the last handler call: [`Output::Elapsed`].
    Throughput(Plan),
    /// `warmup` round trips, then `samples` timed one by one: [`Output::Samples`].
    Latency {
        /// Untimed round trips first.
        warmup: u64,
        /// Timed round trips.
        samples: u64,
    },
    /// `count` round trips timed together, for criterion: [`Output::Elapsed`].
    RoundTrips {
        /// Round trips.
        count: u64,
    },
    /// Peak RSS growth with `deliveries` deliveries pending at a gate:
    /// [`Output::BytesPerDelivery`]. Meaningful only in a fresh process.
    Memory {
        /// Events emitted to the one listener while its gate is closed.
        deliveries: u64,
    },
}

impl Job {
    /// Whether the job registers its listeners under wildcard patterns.
    pub fn uses_patterns(&self) -> bool {
        matches!(self, Job::Throughput(plan) if plan.patterns > 0)
    }

    /// What the handlers do in this job.
    pub fn mode(&self) -> Mode {
        match self {
            Job::Throughput(plan) => plan.mode,
            Job::Latency { .. } | Job::RoundTrips { .. } => Mode::Count,
            Job::Memory { .. } => Mode::Gate,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Wall time of the timed phase.
    Elapsed(Duration),
    /// Each round trip's wall time, in nanoseconds.
    Samples(Vec<u64>),
    /// Peak RSS growth per pending delivery, beyond the event itself (`size_of::<Event>()`).
    BytesPerDelivery(f64),
}

/// The Tokio runtime a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// Multi-thread runtime with 2 workers.
    MultiThread,
    /// Current-thread runtime.
    CurrentThread,
}

impl Flavor {
    /// Both, in table order.
    pub const ALL: [Flavor; 2] = [Flavor::MultiThread, Flavor::CurrentThread];

    /// `mt` or `ct`.
    pub fn id(self) -> &'static str {
        match self {
            Flavor::MultiThread => "mt",
            Flavor::CurrentThread => "ct",
        }
    }

    /// The flavor with this [`id`](Flavor::id).
    pub fn from_id(id: &str) -> Option<Flavor> {
        Flavor::ALL.into_iter().find(|f| f.id() == id)
    }

    /// A human-readable description.
    pub fn title(self) -> &'static str {
        match self {
            Flavor::MultiThread => "multi-thread runtime, 2 workers",
            Flavor::CurrentThread => "current-thread runtime",
        }
    }

    /// A new runtime of this flavor, with timers (the runs' guard timeouts need them).
    ///
    /// # Panics
    ///
    /// When the runtime cannot be built (out of threads or memory).
    pub fn runtime(self) -> Runtime {
        let mut builder = match self {
            Flavor::MultiThread => {
                let mut builder = Builder::new_multi_thread();
                builder.worker_threads(2);
                builder
            }
            Flavor::CurrentThread => Builder::new_current_thread(),
        };
        builder
            .enable_all()
            .build()
            .expect("building a tokio runtime")
    }
}
