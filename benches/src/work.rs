//! The handlers' work and the one way every system's completion is detected: count handler
//! calls, wake the driver when the count reaches its target.
//!
//! The state is a `static`: the `seed` design registers plain `fn` pointers, which cannot
//! capture anything, so its handlers can only reach a static. Every other system's handler uses
//! the same static, so all of them do exactly the same work per call. One run at a time holds
//! it through [`Work::claim`].

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The event every system carries: a sequence number, 8 bytes.
///
/// Each system passes it its own idiomatic way (`Arc<Event>` for `bus`, `seed` and `direct`, a
/// clone per receiver for `broadcast` and `typed-emitter`, bincode for `async-event-emitter`,
/// bytes for `event_bus_rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The emit's rank in its scenario.
    pub seq: u64,
}

/// What a handler does besides counting itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// An atomic increment, nothing else: scenarios (a), (b), (d), (e).
    Count = 0,
    /// `tokio::task::yield_now().await` once, then the increment: scenario (c).
    Yield = 1,
    /// Waits at a shared gate until the driver opens it, then the increment: scenario (g).
    Gate = 2,
    /// `tokio::time::sleep` of 1 ms once, then the increment: scenario (h).
    Sleep = 3,
}

/// Shared state of the handlers of the run in progress.
#[derive(Debug)]
pub struct Work {
    /// Handler calls completed.
    calls: AtomicU64,
    /// Wake the driver when `calls` reaches this (`u64::MAX`: never).
    calls_target: AtomicU64,
    /// Handlers that reached the gate ([`Mode::Gate`]).
    arrived: AtomicU64,
    /// Wake the driver when `arrived` reaches this.
    arrived_target: AtomicU64,
    /// The driver waits here; handlers and failures wake it.
    wake: Notify,
    mode: AtomicU8,
    gate_open: AtomicBool,
    gate: Notify,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// The one [`Work`] of the process.
static WORK: Work = Work::new();
/// Serialises runs: only one may use [`WORK`] at a time.
static CLAIM: Mutex<()> = Mutex::new(());

/// Exclusive use of the handlers' state for one run; see [`Work::claim`].
#[derive(Debug)]
pub struct Claim {
    _guard: MutexGuard<'static, ()>,
}

impl Claim {
    /// The claimed state, reset, with its handlers in `mode`.
    pub fn work(&self, mode: Mode) -> &'static Work {
        WORK.reset(mode);
        &WORK
    }
}

impl Work {
    const fn new() -> Self {
        Work {
            calls: AtomicU64::new(0),
            calls_target: AtomicU64::new(u64::MAX),
            arrived: AtomicU64::new(0),
            arrived_target: AtomicU64::new(u64::MAX),
            wake: Notify::const_new(),
            mode: AtomicU8::new(Mode::Count as u8),
            gate_open: AtomicBool::new(false),
            gate: Notify::const_new(),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    /// Takes the process's handler state for one run, waiting for the run that holds it.
    ///
    /// Runs in one process are sequential anyway; this only matters for tests, which run on
    /// several threads.
    pub fn claim() -> Claim {
        Claim {
            _guard: CLAIM.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// The static state, for `seed`'s handlers, which are `fn` pointers and cannot capture it.
    /// Only valid while a [`Claim`] is held, which every run does.
    pub(crate) fn global() -> &'static Work {
        &WORK
    }

    fn reset(&self, mode: Mode) {
        self.calls.store(0, Ordering::SeqCst);
        self.calls_target.store(u64::MAX, Ordering::SeqCst);
        self.arrived.store(0, Ordering::SeqCst);
        self.arrived_target.store(u64::MAX, Ordering::SeqCst);
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.gate_open.store(false, Ordering::SeqCst);
        self.failed.store(false, Ordering::SeqCst);
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// One handler call: the scenario's work, then the count that the driver waits on.
    pub async fn handle(&self, seq: u64) {
        black_box(seq);
        match self.mode.load(Ordering::Relaxed) {
            0 => {}
            1 => tokio::task::yield_now().await,
            2 => self.pass_gate().await,
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
        let calls = self.calls.fetch_add(1, Ordering::AcqRel) + 1;
        if calls == self.calls_target.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
    }

    async fn pass_gate(&self) {
        let arrived = self.arrived.fetch_add(1, Ordering::AcqRel) + 1;
        if arrived == self.arrived_target.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
        loop {
            let mut opened = pin!(self.gate.notified());
            // Register before checking, or an opening between the check and the await is lost.
            opened.as_mut().enable();
            if self.gate_open.load(Ordering::Acquire) {
                return;
            }
            opened.await;
        }
    }

    /// Handler calls completed so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Acquire)
    }

    /// Handlers waiting at the gate so far, or that passed it.
    pub fn arrived(&self) -> u64 {
        self.arrived.load(Ordering::Acquire)
    }

    /// Arms the wake-up for when `calls` reaches `target`. Call it before the emits.
    pub fn expect_calls(&self, target: u64) {
        self.calls_target.store(target, Ordering::Release);
    }

    /// Arms the wake-up for when `arrived` reaches `target`. Call it before the emits.
    pub fn expect_arrivals(&self, target: u64) {
        self.arrived_target.store(target, Ordering::Release);
    }

    /// Lets every handler waiting at the gate, and every later one, through.
    pub fn open_gate(&self) {
        self.gate_open.store(true, Ordering::Release);
        self.gate.notify_waiters();
    }

    /// Records that the system lost or could not deliver events, and wakes the driver, which
    /// panics with `message`: a broken run must never produce a number.
    pub fn fail(&self, message: String) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert(message);
        self.failed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Panics with the recorded failure, if any.
    pub fn check_failure(&self) {
        if self.failed.load(Ordering::Acquire) {
            let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            panic!(
                "{}",
                failure.as_deref().unwrap_or("a system reported a failure")
            );
        }
    }

    /// Waits until `calls() >= target`, which must be armed with
    /// [`expect_calls`](Work::expect_calls).
    ///
    /// # Panics
    ///
    /// When a failure was recorded.
    pub async fn wait_calls(&self, target: u64) {
        self.wait_until(|work| work.calls() >= target).await;
    }

    /// Waits until `arrived() >= target`, armed with
    /// [`expect_arrivals`](Work::expect_arrivals).
    ///
    /// # Panics
    ///
    /// When a failure was recorded.
    pub async fn wait_arrivals(&self, target: u64) {
        self.wait_until(|work| work.arrived() >= target).await;
    }

    async fn wait_until(&self, done: impl Fn(&Work) -> bool) {
        loop {
            // `notify_one` leaves a permit when nobody waits, so a wake-up between the check
            // and the await is not lost; a stale permit only costs one more check.
            let woken = self.wake.notified();
            self.check_failure();
            if done(self) {
                return;
            }
            woken.await;
        }
    }
}

/// Runs `phase` under a guard: a run that does not finish within `limit` panics with what it
/// was waiting for and how far it got, so a hang never becomes a number.
pub async fn guarded<T>(
    limit: Duration,
    what: impl FnOnce() -> String,
    phase: impl Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, phase).await {
        Ok(value) => value,
        Err(_) => {
            let work = Work::global();
            panic!(
                "{} did not finish within {limit:?}: {} handler calls, {} at the gate; events \
                 were lost or the system hangs",
                what(),
                work.calls(),
                work.arrived()
            )
        }
    }
}
