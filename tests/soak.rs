//! A soak run: several emitters (`emit`, `emit_async`, `try_emit`) to several names, listeners
//! that complete at once, sleep a few ms, return `Err` now and then or panic now and then, and
//! listeners added and removed all the while, on a bus with a `max_in_flight` limit. For a
//! bounded time: `BUS_SOAK_SECS` seconds, else 60 when `CI=true`, else 10.
//!
//! At the end no delivery is left (`drain` returns, nothing in flight, no task alive in the
//! runtime), every removed listener's captured state has been dropped, every report accounts
//! for every listener it reached (as the listeners and a layer counted them), and RSS shows no
//! upward trend: the mean of the last third of the per-second samples is not far above that of
//! the middle third.
//!
//! The run prints one summary line and the RSS samples; run with `-- --nocapture` to see them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus::{
    DeliveryReport, Emission, EventBus,
    error::{DeliveryError, EmitError},
    layer::{AttemptResult, Layer},
    listener::ListenerId,
};
use common::guarded;

/// The names the emitters emit to; the last two match the pattern listeners of `soak.jobs.*`.
const NAMES: [&str; 4] = ["soak.orders", "soak.users", "soak.jobs.a", "soak.jobs.b"];
/// What listeners register under: the names, and a pattern.
const TARGETS: [&str; 4] = ["soak.orders", "soak.users", "soak.jobs.a", "soak.jobs.*"];
const EMITTERS: u64 = 3;
/// The emissions an emitter makes before it awaits their reports.
const BATCH: usize = 64;
/// Reached now and then, in bursts of slow deliveries: `emit` sheds, `emit_async` waits,
/// `try_emit` is refused.
const LIMIT: usize = 1_024;
/// At most this many churned listeners at once.
const MAX_CHURNED: usize = 24;
/// The deliberate panics' message, which the panic hook keeps quiet.
const DELIBERATE: &str = "deliberate soak panic";
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug)]
struct Job {
    seq: u64,
}

/// How a listener behaves.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Completes at once.
    Fast,
    /// Sleeps 1 to 5 ms.
    Slow,
    /// Returns `Err` for one event in five; yields first for one in two.
    Flaky,
    /// Panics for one event in seven, before or after a yield.
    Panicky,
}

const KINDS: [Kind; 4] = [Kind::Fast, Kind::Slow, Kind::Flaky, Kind::Panicky];

/// What the listeners did.
#[derive(Debug, Default)]
struct Calls {
    ok: AtomicU64,
    err: AtomicU64,
    panicked: AtomicU64,
}

async fn act(kind: Kind, job: Arc<Job>, calls: Arc<Calls>) -> Result<(), &'static str> {
    let seq = job.seq;
    match kind {
        Kind::Fast => {}
        Kind::Slow => tokio::time::sleep(Duration::from_millis(1 + seq % 5)).await,
        Kind::Flaky => {
            if seq.is_multiple_of(2) {
                tokio::task::yield_now().await;
            }
            if seq.is_multiple_of(5) {
                calls.err.fetch_add(1, Ordering::Relaxed);
                return Err("deliberate soak failure");
            }
        }
        Kind::Panicky => {
            if seq.is_multiple_of(2) {
                tokio::task::yield_now().await;
            }
            if seq.is_multiple_of(7) {
                calls.panicked.fetch_add(1, Ordering::Relaxed);
                panic!("{DELIBERATE}");
            }
        }
    }
    calls.ok.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// State a churned listener captures: counts its creations and drops.
struct Tracker {
    counts: Arc<Churn>,
}

#[derive(Debug, Default)]
struct Churn {
    created: AtomicU64,
    dropped: AtomicU64,
    added: AtomicU64,
    removed: AtomicU64,
}

impl Tracker {
    fn new(counts: &Arc<Churn>) -> Self {
        counts.created.fetch_add(1, Ordering::SeqCst);
        Tracker {
            counts: Arc::clone(counts),
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// What the layer hooks saw.
#[derive(Debug, Default)]
struct Counted {
    emitted: AtomicU64,
    shed_emits: AtomicU64,
    shed_deliveries: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    other: AtomicU64,
}

impl Layer for Counted {
    fn on_emit(&self, _: &bus::layer::EmitInfo<'_>) {
        self.emitted.fetch_add(1, Ordering::Relaxed);
    }

    fn on_shed(&self, emit: &bus::layer::EmitInfo<'_>) {
        self.shed_emits.fetch_add(1, Ordering::Relaxed);
        self.shed_deliveries
            .fetch_add(emit.listener_count() as u64, Ordering::Relaxed);
    }

    fn after(&self, _: &bus::layer::DeliveryInfo<'_>, outcome: &bus::layer::DeliveryOutcome<'_>) {
        let counter = match outcome.result() {
            AttemptResult::Delivered => &self.delivered,
            AttemptResult::Failed(_) => &self.failed,
            AttemptResult::Panicked(_) => &self.panicked,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the reports said.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    emits: u64,
    /// `try_emit`s refused because the bus was full.
    refused: u64,
    /// Sum of `Emission::listeners`: the deliveries the emits addressed.
    addressed: u64,
    delivered: u64,
    failed: u64,
    panicked: u64,
    /// Deliveries shed (`NotDelivered(Full)`).
    shed: u64,
    other: u64,
}

impl Tally {
    fn add(&mut self, listeners: usize, report: &DeliveryReport) {
        assert_eq!(
            report.delivered() + report.failed(),
            listeners,
            "a report accounts for every listener the emit reached: {report:?}"
        );
        self.emits += 1;
        self.addressed += listeners as u64;
        self.delivered += report.delivered() as u64;
        for failure in report.failures() {
            let counter = match failure {
                DeliveryError::Failed { .. } => &mut self.failed,
                DeliveryError::Panicked { .. } => &mut self.panicked,
                DeliveryError::NotDelivered {
                    reason: EmitError::Full { .. },
                    ..
                } => &mut self.shed,
                _ => &mut self.other,
            };
            *counter += 1;
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.emits += other.emits;
        self.refused += other.refused;
        self.addressed += other.addressed;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.panicked += other.panicked;
        self.shed += other.shed;
        self.other += other.other;
    }
}

/// A small deterministic generator (xorshift), seeded per task.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// How long to soak.
fn soak_duration() -> Duration {
    let secs = match std::env::var("BUS_SOAK_SECS") {
        Ok(secs) => secs
            .parse()
            .unwrap_or_else(|_| panic!("BUS_SOAK_SECS={secs:?} is not a number of seconds")),
        Err(_) if std::env::var("CI").is_ok_and(|ci| ci == "true") => 60,
        Err(_) => 10,
    };
    Duration::from_secs(secs)
}

/// This process's RSS, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status")
        * 1024
}

fn mean(samples: &[u64]) -> f64 {
    samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64
}

/// Keeps the deliberate panics out of the output; every other panic is printed as usual.
fn quiet_deliberate_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        if message != Some(DELIBERATE) {
            default(info);
        }
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    quiet_deliberate_panics();
    let duration = soak_duration();
    let counted = Arc::new(Counted::default());
    let bus = EventBus::builder()
        .max_in_flight(LIMIT)
        .layer(Arc::clone(&counted))
        .build();
    let calls = Arc::new(Calls::default());
    let churn = Arc::new(Churn::default());

    // One listener of each kind on each target.
    for target in TARGETS {
        for kind in KINDS {
            let calls = Arc::clone(&calls);
            bus.add_listener(target, move |job: Arc<Job>| {
                act(kind, job, Arc::clone(&calls))
            });
        }
    }

    // RSS, once a second, on a thread of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let mut samples = vec![rss_bytes()];
            let start = Instant::now();
            let mut next = Duration::from_secs(1);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if start.elapsed() >= next {
                    samples.push(rss_bytes());
                    next += Duration::from_secs(1);
                }
            }
            samples
        }
    });

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let emitters: Vec<_> = (0..EMITTERS)
        .map(|emitter| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut batch: Vec<(usize, Emission)> = Vec::with_capacity(BATCH);
                let mut seq = emitter;
                while tokio::time::Instant::now() < deadline {
                    let name = NAMES[(seq / EMITTERS) as usize % NAMES.len()];
                    let job = Job { seq };
                    let emission = match seq % 3 {
                        0 => bus.emit(name, job),
                        1 => bus.emit_async(name, job).await,
                        _ => match bus.try_emit(name, job).map_err(EmitError::from) {
                            Ok(emission) => emission,
                            Err(EmitError::Full { .. }) => {
                                tally.refused += 1;
                                seq += EMITTERS;
                                // Backs off, as a producer told the bus is full would.
                                tokio::task::yield_now().await;
                                continue;
                            }
                            Err(other) => panic!("try_emit to {name} failed: {other}"),
                        },
                    };
                    batch.push((emission.listener_count(), emission));
                    if batch.len() == BATCH {
                        for (listeners, emission) in batch.drain(..) {
                            tally.add(listeners, &guarded("a report", emission).await);
                        }
                    }
                    seq += EMITTERS;
                }
                for (listeners, emission) in batch {
                    tally.add(listeners, &guarded("a report", emission).await);
                }
                tally
            })
        })
        .collect();

    let churner = tokio::spawn({
        let (bus, calls, churn) = (bus.clone(), Arc::clone(&calls), Arc::clone(&churn));
        async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut live: Vec<ListenerId> = Vec::new();
            while tokio::time::Instant::now() < deadline {
                let add = live.is_empty() || (live.len() < MAX_CHURNED && rng.below(2) == 0);
                if add {
                    let kind = KINDS[rng.below(KINDS.len())];
                    let target = TARGETS[rng.below(TARGETS.len())];
                    let tracker = Tracker::new(&churn);
                    let calls = Arc::clone(&calls);
                    let id = bus.add_listener(target, move |job: Arc<Job>| {
                        let _captured = &tracker;
                        act(kind, job, Arc::clone(&calls))
                    });
                    churn.added.fetch_add(1, Ordering::SeqCst);
                    live.push(id);
                } else {
                    let id = live.swap_remove(rng.below(live.len()));
                    assert!(bus.remove(id), "listener {id:?} was registered");
                    churn.removed.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            for id in live {
                assert!(bus.remove(id), "listener {id:?} was registered");
                churn.removed.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    // Past the soak time, each task has at most a batch of reports left to await.
    tokio::time::sleep_until(deadline).await;
    let mut tally = Tally::default();
    for emitter in emitters {
        let emitted = guarded("an emitter", emitter)
            .await
            .expect("an emitter panicked");
        tally.merge(&emitted);
    }
    guarded("the churner", churner)
        .await
        .expect("the churner panicked");
    guarded("drain", bus.drain()).await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("the sampler did not panic");

    assert_eq!(
        bus.in_flight(),
        0,
        "drain returned with deliveries in flight"
    );
    // No task of the run is left in the runtime (the count is updated as tasks are released,
    // so it may lag a moment behind).
    let metrics = tokio::runtime::Handle::current().metrics();
    guarded("the runtime's tasks to end", async {
        while metrics.num_alive_tasks() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let (added, removed) = (
        churn.added.load(Ordering::SeqCst),
        churn.removed.load(Ordering::SeqCst),
    );
    let (created, dropped) = (
        churn.created.load(Ordering::SeqCst),
        churn.dropped.load(Ordering::SeqCst),
    );
    let (start, end) = (samples[0], samples[samples.len() - 1]);
    let third = samples.len() / 3;
    let middle = mean(&samples[third..2 * third]);
    let last = mean(&samples[2 * third..]);
    println!(
        "soak | {:.1} s | emits {} (+{} try_emit refused) | deliveries {} | delivered {} | \
         failures {} | panics {} | shed {} | listeners added {added} / removed {removed} | RSS \
         start {:.1} / middle {:.1} / end {:.1} MiB (mean of last third {:.1} MiB)",
        took.as_secs_f64(),
        tally.emits,
        tally.refused,
        tally.addressed,
        tally.delivered,
        tally.failed,
        tally.panicked,
        tally.shed,
        start as f64 / MIB,
        middle / MIB,
        end as f64 / MIB,
        last / MIB,
    );
    let shown: Vec<String> = samples
        .iter()
        .map(|rss| format!("{:.1}", *rss as f64 / MIB))
        .collect();
    println!("soak | RSS each second (MiB): {}", shown.join(" "));

    // Every report accounts for every listener it reached, as the listeners and the layer
    // counted them.
    assert_eq!(tally.other, 0, "{tally:?}");
    assert_eq!(
        tally.delivered + tally.failed + tally.panicked + tally.shed,
        tally.addressed,
        "{tally:?}"
    );
    assert_eq!(
        tally.delivered,
        calls.ok.load(Ordering::Relaxed),
        "{tally:?}"
    );
    assert_eq!(tally.failed, calls.err.load(Ordering::Relaxed), "{tally:?}");
    assert_eq!(
        tally.panicked,
        calls.panicked.load(Ordering::Relaxed),
        "{tally:?}"
    );
    assert_eq!(
        (tally.delivered, tally.failed, tally.panicked),
        (
            counted.delivered.load(Ordering::Relaxed),
            counted.failed.load(Ordering::Relaxed),
            counted.panicked.load(Ordering::Relaxed),
        ),
        "the layer saw what the reports say: {counted:?}"
    );
    assert_eq!(counted.other.load(Ordering::Relaxed), 0, "{counted:?}");
    assert_eq!(
        tally.shed,
        counted.shed_deliveries.load(Ordering::Relaxed),
        "{counted:?}"
    );
    assert_eq!(
        tally.emits,
        counted.emitted.load(Ordering::Relaxed) + counted.shed_emits.load(Ordering::Relaxed),
        "every emit that went ahead was emitted or shed: {counted:?}"
    );
    assert!(tally.failed > 0 && tally.panicked > 0, "{tally:?}");

    // Churn: every listener added was removed, and what it captured was dropped with it.
    assert!(added > 0, "the churner added no listener");
    assert_eq!(added, removed, "{churn:?}");
    assert_eq!(created, added, "{churn:?}");
    assert_eq!(
        dropped, created,
        "removed listeners' captured state was not dropped: {churn:?}"
    );

    // No upward trend in memory.
    assert!(
        samples.len() >= 6,
        "too few RSS samples for a trend: {shown:?}"
    );
    let allowed = middle * 1.2 + 16.0 * MIB;
    assert!(
        last <= allowed,
        "RSS grew: mean of the last third {:.1} MiB, of the middle third {:.1} MiB (allowed \
         {:.1} MiB); samples: {shown:?}",
        last / MIB,
        middle / MIB,
        allowed / MIB,
    );
}
