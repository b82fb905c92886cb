//! `max_in_flight` under load: 1,000,000 emits to 10 listeners that suspend, on a bus that holds
//! at most 10,000 deliveries at once. The deliveries in flight never exceed the limit (counted
//! from outside by a layer), memory stays bounded by it (RSS sampled through the run), every
//! delivery is either handled or counted as shed (by a layer and in the reports), and `drain`
//! returns with nothing in flight.
//!
//! `emit` sheds what does not fit; `emit_async` waits for room and sheds nothing.
//!
//! RSS belongs to the process, which the tests of one binary share: this binary's tests take
//! turns (a lock) and each measures its growth from its own start. Freed heap is not always
//! given back to the OS, so the second test to run starts from the first one's footprint; run
//! one alone (`cargo test --test load_bounded emit_async`) for its own figure.
//!
//! Each test prints one line of figures (for the table in RELIABILITY.md); run with
//! `-- --nocapture` to see them.

mod common;

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bus::{
    DeliveryReport, Emission, EventBus,
    error::{DeliveryError, EmitError},
    layer::Layer,
    report::EmissionFuture,
};
use common::guarded;

const EMITS: u64 = 1_000_000;
const LISTENERS: u64 = 10;
/// The bus's `max_in_flight`.
const LIMIT: usize = 10_000;
/// Emitter tasks; each emits its share of [`EMITS`].
const EMITTERS: u64 = 4;
/// How many emits an emitter makes between two yields to the runtime: a producer faster
/// than its consumers, for the limit to be needed.
const YIELD_EVERY: u64 = 1_000;
/// The unfinished reports an emitter holds before it waits for all of them: the test's own
/// bound on what it keeps, 25 times what the bus lets through (`LIMIT / LISTENERS` emits), so
/// that it is the bus's limit, not this, that bounds memory. Without the limit, this lets
/// `EMITTERS * WINDOW * LISTENERS` = 1,000,000 deliveries pile up.
const WINDOW: usize = 25_000;
/// What one held delivery may cost, generously: a task of a few hundred bytes, its report entry.
const BYTES_PER_DELIVERY: u64 = 4 * 1024;
/// Room for everything else that grows during a run: the runtime's queues, allocator caches.
const SLACK_BYTES: u64 = 64 * MIB;
/// Growth beyond this fails the test: about 103 MiB, where 1,000,000 held deliveries of
/// ~500 bytes would be ~500 MB, and all 10,000,000 ~5 GB.
const RSS_BOUND: u64 = LIMIT as u64 * BYTES_PER_DELIVERY + SLACK_BYTES;
/// How often RSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// A guard against a hung run (the whole run, not a measure of its speed).
const RUN_DEADLINE: Duration = Duration::from_secs(900);
const MIB: u64 = 1024 * 1024;

const NAME: &str = "load.tick";

/// The tests of this binary take turns: each measures the RSS of the process.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Debug)]
struct Tick(u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `emit`: sheds when the bus is full.
    Shed,
    /// `emit_async`: waits for room.
    Wait,
}

/// What the layer hooks saw.
#[derive(Default)]
struct Counted {
    emitted: AtomicU64,
    shed_emits: AtomicU64,
    shed_deliveries: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    /// The deliveries emitted and not concluded yet: what `max_in_flight` bounds, queued and
    /// running, seen from outside the bus. `on_emit` comes once the emit holds its places and
    /// `after` before a delivery gives its place back, so this never counts more than the bus
    /// holds.
    in_flight: AtomicUsize,
    /// The highest `in_flight` reached.
    most_in_flight: AtomicUsize,
}

impl Layer for Counted {
    fn on_emit(&self, emit: &bus::layer::EmitInfo<'_>) {
        self.emitted.fetch_add(1, Ordering::Relaxed);
        let now = self
            .in_flight
            .fetch_add(emit.listener_count(), Ordering::SeqCst)
            + emit.listener_count();
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
    }

    fn on_shed(&self, emit: &bus::layer::EmitInfo<'_>) {
        self.shed_emits.fetch_add(1, Ordering::Relaxed);
        self.shed_deliveries
            .fetch_add(emit.listener_count() as u64, Ordering::Relaxed);
    }

    fn after(&self, _: &bus::layer::DeliveryInfo<'_>, outcome: &bus::layer::DeliveryOutcome<'_>) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if outcome.is_delivered() {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the reports of one emitter said.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    emits: u64,
    /// Sum of `Emission::listeners`.
    addressed: u64,
    delivered: u64,
    /// Failures that are `NotDelivered(Full)`.
    shed: u64,
    /// Emits whose every listener was shed.
    shed_emits: u64,
    /// Any other failure (there should be none).
    other_failures: u64,
}

impl Tally {
    fn add(&mut self, listeners: usize, report: &DeliveryReport) {
        let listeners = listeners as u64;
        let (delivered, failed) = (report.delivered() as u64, report.failed() as u64);
        assert_eq!(
            delivered + failed,
            listeners,
            "a report accounts for every listener: {report:?}"
        );
        let shed = report
            .failures()
            .iter()
            .filter(|failure| {
                matches!(
                    failure,
                    DeliveryError::NotDelivered {
                        reason: EmitError::Full { .. },
                        ..
                    }
                )
            })
            .count() as u64;
        if shed > 0 {
            assert_eq!(
                (shed, delivered),
                (listeners, 0),
                "an emit is shed whole: {report:?}"
            );
            self.shed_emits += 1;
        }
        self.emits += 1;
        self.addressed += listeners;
        self.delivered += delivered;
        self.shed += shed;
        self.other_failures += failed - shed;
    }

    fn merge(&mut self, other: &Tally) {
        self.emits += other.emits;
        self.addressed += other.addressed;
        self.delivered += other.delivered;
        self.shed += other.shed;
        self.shed_emits += other.shed_emits;
        self.other_failures += other.other_failures;
    }
}

/// The reports of one emitter's emissions: those already complete are tallied at once, the
/// others held until they are, and tallied as soon as they are (in whatever order), since a
/// held report keeps its finished delivery tasks allocated (their outputs live there).
#[derive(Default)]
struct Reports {
    pending: HashMap<u64, (usize, EmissionFuture)>,
    next: u64,
    /// The held reports whose deliveries have made progress since they were last polled.
    woken: Arc<Woken>,
    tally: Tally,
    most_pending: usize,
}

/// The ids of the held reports that were woken.
#[derive(Default)]
struct Woken(Mutex<Vec<u64>>);

/// Wakes one held report: marks it for the next poll.
struct ReportWaker {
    id: u64,
    woken: Arc<Woken>,
}

impl Wake for ReportWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.id);
    }
}

impl Reports {
    async fn add(&mut self, emission: Emission) {
        let listeners = emission.listener_count();
        let id = self.next;
        self.next += 1;
        self.poll(id, listeners, emission.into_future());
        let woken =
            std::mem::take(&mut *self.woken.0.lock().unwrap_or_else(PoisonError::into_inner));
        for id in woken {
            // A report may be woken more than once; only a held one is polled.
            if let Some((listeners, report)) = self.pending.remove(&id) {
                self.poll(id, listeners, report);
            }
        }
        self.most_pending = self.most_pending.max(self.pending.len());
        if self.pending.len() >= WINDOW {
            self.wait_for_all().await;
        }
    }

    /// Tallies the report if it is complete, holds it otherwise.
    fn poll(&mut self, id: u64, listeners: usize, mut report: EmissionFuture) {
        let waker = Waker::from(Arc::new(ReportWaker {
            id,
            woken: Arc::clone(&self.woken),
        }));
        let mut cx = Context::from_waker(&waker);
        // Outside Tokio's task budget, which would make a finished delivery look pending after
        // a burst of them.
        match pin!(tokio::task::unconstrained(&mut report)).poll(&mut cx) {
            Poll::Ready(report) => self.tally.add(listeners, &report),
            Poll::Pending => {
                self.pending.insert(id, (listeners, report));
            }
        }
    }

    async fn wait_for_all(&mut self) {
        for (_, (listeners, report)) in self.pending.drain() {
            let report = guarded("a report", report).await;
            self.tally.add(listeners, &report);
        }
        self.woken
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    async fn finish(mut self) -> (Tally, usize) {
        self.wait_for_all().await;
        (self.tally, self.most_pending)
    }
}

/// A line of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn rss_bytes() -> u64 {
    status_kib("VmRSS") * 1024
}

/// Samples RSS on a thread of its own until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Sampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut peak = rss_bytes();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(SAMPLE_EVERY);
                    peak = peak.max(rss_bytes());
                }
                peak
            }
        });
        Sampler { stop, thread }
    }

    /// The highest RSS seen, in bytes.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self.thread.join().expect("the sampler did not panic");
        sampled.max(rss_bytes())
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

#[test]
fn emit_sheds_what_does_not_fit_and_counts_every_shed() {
    run(Mode::Shed);
}

#[test]
fn emit_async_waits_for_room_and_sheds_nothing() {
    run(Mode::Wait);
}

fn run(mode: Mode) {
    let _turn = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a multi-thread runtime");
    runtime.block_on(load(mode));
}

async fn load(mode: Mode) {
    let counted = Arc::new(Counted::default());
    let bus = EventBus::builder()
        .max_in_flight(LIMIT)
        .layer(Arc::clone(&counted))
        .build();
    let handled = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let most_running = Arc::new(AtomicUsize::new(0));
    for listener in 0..LISTENERS {
        let (handled, running, most_running) = (
            Arc::clone(&handled),
            Arc::clone(&running),
            Arc::clone(&most_running),
        );
        bus.add_listener(NAME, move |tick: Arc<Tick>| {
            let (handled, running, most_running) = (
                Arc::clone(&handled),
                Arc::clone(&running),
                Arc::clone(&most_running),
            );
            async move {
                let now = running.fetch_add(1, Ordering::Relaxed) + 1;
                most_running.fetch_max(now, Ordering::Relaxed);
                // Every delivery suspends, so each is a task that holds its place; one in a
                // thousand of each listener's sleeps, so that places are held for a while.
                tokio::task::yield_now().await;
                if tick.0 % 1_000 == listener {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                running.fetch_sub(1, Ordering::Relaxed);
                handled.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let rss_before = rss_bytes();
    let hwm_before = status_kib("VmHWM") * 1024;
    let sampler = Sampler::start();
    let started = Instant::now();

    let emitters: Vec<_> = (0..EMITTERS)
        .map(|emitter| {
            let bus = bus.clone();
            let share = EMITS / EMITTERS;
            tokio::spawn(async move {
                let mut reports = Reports::default();
                for seq in emitter * share..(emitter + 1) * share {
                    let emission = match mode {
                        Mode::Shed => bus.emit(NAME, Tick(seq)),
                        Mode::Wait => bus.emit_async(NAME, Tick(seq)).await,
                    };
                    reports.add(emission).await;
                    if seq.is_multiple_of(YIELD_EVERY) {
                        // A fast producer: lets the deliveries queued on this worker run only
                        // now and then.
                        tokio::task::yield_now().await;
                    }
                }
                reports.finish().await
            })
        })
        .collect();
    let (tally, most_pending) = tokio::time::timeout(RUN_DEADLINE, async {
        let mut tally = Tally::default();
        let mut most_pending = 0;
        for emitter in emitters {
            let (emitted, pending) = emitter.await.expect("an emitter panicked");
            tally.merge(&emitted);
            most_pending = most_pending.max(pending);
        }
        (tally, most_pending)
    })
    .await
    .unwrap_or_else(|_| panic!("{EMITS} emits did not finish within {RUN_DEADLINE:?}"));
    guarded("drain", bus.drain()).await;
    let took = started.elapsed();
    let rss_peak = sampler.stop();
    assert_eq!(
        bus.in_flight(),
        0,
        "drain returned with deliveries in flight"
    );

    let growth = rss_peak.saturating_sub(rss_before);
    let hwm_growth = (status_kib("VmHWM") * 1024).saturating_sub(hwm_before);
    let rss_after = rss_bytes();
    let handled = handled.load(Ordering::Relaxed);
    let most_in_flight = counted.most_in_flight.load(Ordering::SeqCst);
    let most_running = most_running.load(Ordering::Relaxed);
    let method = match mode {
        Mode::Shed => "emit",
        Mode::Wait => "emit_async",
    };
    println!(
        "load_bounded | {method} | emits {EMITS} | deliveries {} | handled {handled} | shed {} \
         ({} emits) | peak RSS growth {:.1} MiB (bound {:.1} MiB; VmHWM growth {:.1} MiB; RSS \
         {:.1} -> {:.1} MiB) | {:.1} s | most reports held per emitter {most_pending}, most \
         deliveries in flight {most_in_flight} (limit {LIMIT}), most running {most_running}",
        EMITS * LISTENERS,
        tally.shed,
        tally.shed_emits,
        mib(growth),
        mib(RSS_BOUND),
        mib(hwm_growth),
        mib(rss_before),
        mib(rss_after),
        took.as_secs_f64(),
    );

    // The limit held: never more deliveries emitted and not concluded (queued or running)
    // than `max_in_flight`. (The listeners running at once, `most_running`, are a part of
    // those that stays far below the limit even without one: the runtime polls only so many
    // at a time. It is printed, not a check of the limit.)
    assert!(
        most_in_flight <= LIMIT,
        "{most_in_flight} deliveries were in flight at once, past max_in_flight {LIMIT}"
    );
    assert_eq!(
        counted.in_flight.load(Ordering::SeqCst),
        0,
        "every emitted delivery concluded"
    );

    // Every emit and every delivery is accounted for, the same way by the reports, the layer
    // and the listeners.
    assert_eq!(tally.emits, EMITS, "{tally:?}");
    assert_eq!(tally.addressed, EMITS * LISTENERS, "{tally:?}");
    assert_eq!(tally.other_failures, 0, "{tally:?}");
    assert_eq!(counted.failed.load(Ordering::Relaxed), 0);
    assert_eq!(
        handled + tally.shed,
        EMITS * LISTENERS,
        "every delivery is handled or counted as shed: {tally:?}"
    );
    assert_eq!(tally.delivered, handled, "{tally:?}");
    assert_eq!(counted.delivered.load(Ordering::Relaxed), handled);
    let shed_emits = counted.shed_emits.load(Ordering::Relaxed);
    assert_eq!(shed_emits, tally.shed_emits, "{tally:?}");
    assert_eq!(
        counted.shed_deliveries.load(Ordering::Relaxed),
        LISTENERS * shed_emits
    );
    assert_eq!(tally.shed, LISTENERS * shed_emits, "{tally:?}");
    assert_eq!(
        counted.emitted.load(Ordering::Relaxed) + shed_emits,
        EMITS,
        "an emit is either emitted or shed"
    );
    match mode {
        Mode::Shed => assert!(
            shed_emits > 0,
            "the bus never filled up: nothing was shed, the test did not test shedding"
        ),
        Mode::Wait => assert_eq!(shed_emits, 0, "emit_async waits rather than shed"),
    }

    // Memory followed the limit, not the number of emits.
    assert!(
        growth <= RSS_BOUND,
        "RSS grew by {:.1} MiB, past the bound of {:.1} MiB for {LIMIT} deliveries in flight",
        mib(growth),
        mib(RSS_BOUND)
    );
}
