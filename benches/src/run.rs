//! Running one job on one system: the same driver code for every system, monomorphised per
//! system so the emit loop has no dynamic dispatch of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::scenario::{Job, Output, Plan};
use crate::system::{Delivery, NotApplicable, Setup, System};
use crate::work::{Event, Work, guarded};

/// How long any phase of a run may take before it is declared hung. Generous: the slowest
/// full-size run takes a few seconds on a loaded 2-core machine.
pub const GUARD: Duration = Duration::from_secs(180);

/// The event names of a run: `bench.n0`, `bench.n1`, ...
pub fn names(count: usize) -> Vec<Arc<str>> {
    (0..count)
        .map(|i| Arc::from(format!("bench.n{i}")))
        .collect()
}

/// The names of a pattern run, each matched by one of [`patterns`]: `bench.n0.e`, ...
pub fn pattern_names(count: usize) -> Vec<Arc<str>> {
    (0..count)
        .map(|i| Arc::from(format!("bench.n{i}.e")))
        .collect()
}

/// The listener patterns of a pattern run: `bench.n0.*`, `bench.n1.*`, ...
pub fn patterns(count: usize) -> Vec<Arc<str>> {
    (0..count)
        .map(|i| Arc::from(format!("bench.n{i}.*")))
        .collect()
}

/// Runs `job` once on a fresh system from `factory`, on `runtime`.
///
/// The emits run in a task of `runtime` (on one of its workers, as an application's emitter
/// would), not on the thread that calls this.
///
/// # Panics
///
/// When the run loses events, hangs past `guard`, or the system reports a failure: a broken
/// run never produces a number.
pub(crate) fn run<S, F>(
    system_name: &'static str,
    factory: &F,
    job: Job,
    runtime: &Runtime,
    guard: Duration,
) -> Result<Output, NotApplicable>
where
    S: System,
    F: Fn(&Setup) -> S,
{
    crate::system::check::<S>(&job)?;
    let claim = Work::claim();
    let work = claim.work(job.mode());
    // Before the system exists, so (g) counts everything it allocates.
    let base = matches!(job, Job::Memory { .. }).then(memory::current);
    let (name_count, listeners, capacity) = match job {
        Job::Throughput(plan) => (plan.names, plan.listeners, plan.emits_per_name()),
        // A round trip waits for its listener before the next emit: one slot would do.
        Job::Latency { .. } | Job::RoundTrips { .. } => (1, 1, 16),
        Job::Memory { deliveries } => (1, 1, deliveries),
    };
    let (names, listened) = if let Job::Throughput(plan) = job
        && plan.patterns > 0
    {
        assert!(
            plan.names <= plan.patterns,
            "{plan:?}: a name without its pattern"
        );
        (pattern_names(name_count), patterns(plan.patterns))
    } else {
        let names = names(name_count);
        (names.clone(), names)
    };
    let system = {
        let _runtime = runtime.enter();
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        let mut system = factory(&Setup { capacity });
        for name in &listened {
            for index in 0..listeners {
                system.add_listener(name, index, work);
            }
        }
        system
    };
    let run = Run {
        label: format!("{system_name}, {job:?}"),
        names,
        work,
        guard,
    };
    let task = runtime.spawn(async move {
        match job {
            Job::Throughput(plan) => run.throughput(system, plan).await,
            Job::Latency { warmup, samples } => run.latency(system, warmup, samples).await,
            Job::RoundTrips { count } => run.roundtrips(system, count).await,
            Job::Memory { deliveries } => {
                let base = base.expect("measured above");
                run.memory(system, deliveries, base).await
            }
        }
    });
    match runtime.block_on(task) {
        Ok(output) => Ok(output),
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("{system_name}: the run's task did not finish: {error}"),
        },
    }
}

/// The state of one run, inside its runtime.
struct Run {
    label: String,
    names: Vec<Arc<str>>,
    work: &'static Work,
    guard: Duration,
}

impl Run {
    async fn throughput<S: System>(&self, system: S, plan: Plan) -> Output {
        let (work, names) = (self.work, &self.names);
        let calls = plan.calls();
        work.expect_calls(calls);
        let start = Instant::now();
        self.guarded("the emits and their handler calls", async {
            let mut next = 0;
            for seq in 0..plan.emits {
                system.emit(&names[next], seq).await;
                next += 1;
                if next == names.len() {
                    next = 0;
                }
            }
            work.wait_calls(calls).await;
        })
        .await;
        let elapsed = start.elapsed();
        self.finish(&system, calls).await;
        Output::Elapsed(elapsed)
    }

    async fn latency<S: System>(&self, system: S, warmup: u64, samples: u64) -> Output {
        let (work, name) = (self.work, &self.names[0]);
        let mut times = Vec::with_capacity(usize::try_from(samples).unwrap_or(0));
        self.guarded("the round trips", async {
            for seq in 0..warmup {
                system.roundtrip(name, seq, work).await;
            }
            for seq in warmup..warmup + samples {
                let start = Instant::now();
                system.roundtrip(name, seq, work).await;
                let nanos = start.elapsed().as_nanos();
                times.push(u64::try_from(nanos).unwrap_or(u64::MAX));
            }
        })
        .await;
        self.finish(&system, warmup + samples).await;
        Output::Samples(times)
    }

    async fn roundtrips<S: System>(&self, system: S, count: u64) -> Output {
        let (work, name) = (self.work, &self.names[0]);
        let start = Instant::now();
        self.guarded("the round trips", async {
            for seq in 0..count {
                system.roundtrip(name, seq, work).await;
            }
        })
        .await;
        let elapsed = start.elapsed();
        self.finish(&system, count).await;
        Output::Elapsed(elapsed)
    }

    async fn memory<S: System>(&self, system: S, deliveries: u64, base: memory::Usage) -> Output {
        let (work, name) = (self.work, &self.names[0]);
        let system = Arc::new(system);
        // A queue system parks one delivery per listener at the gate and keeps the rest in
        // its queue; every other system parks every delivery.
        let parked = match S::DELIVERY {
            Delivery::Queue => 1,
            Delivery::Task | Delivery::Inline => deliveries,
        };
        work.expect_arrivals(parked);
        work.expect_calls(deliveries);
        self.guarded("the emits up to the gate", async {
            for seq in 0..deliveries {
                match S::DELIVERY {
                    Delivery::Task | Delivery::Queue => system.emit(name, seq).await,
                    Delivery::Inline => {
                        let (system, name) = (Arc::clone(&system), Arc::clone(name));
                        drop(tokio::spawn(async move { system.emit(&name, seq).await }));
                    }
                }
            }
            work.wait_arrivals(parked).await;
        })
        .await;
        let peak = memory::current();
        work.open_gate();
        self.guarded(
            "the deliveries after the gate opened",
            work.wait_calls(deliveries),
        )
        .await;
        self.finish(&*system, deliveries).await;
        let growth = peak.peak.saturating_sub(base.resident) as f64;
        Output::BytesPerDelivery(growth / deliveries as f64 - size_of::<Event>() as f64)
    }

    /// Lets the system wind down, then checks that the handlers ran exactly `calls` times.
    async fn finish<S: System>(&self, system: &S, calls: u64) {
        self.guarded("settling", system.settle()).await;
        self.work.check_failure();
        let seen = self.work.calls();
        assert_eq!(
            seen, calls,
            "{}: {seen} handler calls where the scenario makes {calls}",
            self.label
        );
    }

    async fn guarded<T>(&self, phase: &str, future: impl Future<Output = T>) -> T {
        guarded(self.guard, || format!("{}: {phase}", self.label), future).await
    }
}

/// The process's memory, from `/proc/self/status`.
pub(crate) mod memory {
    /// Resident and peak resident set sizes, in bytes.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Usage {
        pub(crate) resident: u64,
        pub(crate) peak: u64,
    }

    /// `VmRSS` and `VmHWM` now.
    ///
    /// # Panics
    ///
    /// Where `/proc/self/status` does not exist (not Linux).
    pub(crate) fn current() -> Usage {
        let status = std::fs::read_to_string("/proc/self/status")
            .expect("scenario (g) reads /proc/self/status, which needs Linux");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .unwrap_or_else(|| panic!("no `{name}` in /proc/self/status"))
        };
        Usage {
            resident: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }
}
