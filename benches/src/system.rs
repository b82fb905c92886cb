//! What the runner needs from a system: register a listener under a name, emit one event, and,
//! where the system has one, a way to await an emit's completion.

use std::future::Future;
use std::sync::Arc;

use crate::scenario::Job;
use crate::work::Work;

/// An event-dispatch system under test.
///
/// The runner builds a fresh system for every run with its factory (see
/// [`Contender::new`](crate::Contender::new)), registers the scenario's listeners, then emits
/// through [`emit`](System::emit) in a loop. Completion is detected the same way for every
/// system: each handler counts itself in [`Work`], and the runner waits for the count.
pub trait System: Send + Sync + Sized + 'static {
    /// How an emit reaches the listeners; decides how scenario (g) holds its pending
    /// deliveries.
    const DELIVERY: Delivery;

    /// Whether listeners can be registered under NATS-style wildcard patterns (`orders.*`),
    /// which scenario (f) needs.
    const PATTERNS: bool = false;

    /// Whether the system can express `job` at all. A cell the system cannot express is
    /// reported as n/a with the reason, never approximated.
    ///
    /// # Errors
    ///
    /// The reason the system cannot run `job`.
    fn supports(job: &Job) -> Result<(), NotApplicable> {
        let _ = job;
        Ok(())
    }

    /// Registers one more listener for `name` (a wildcard pattern when the job
    /// [uses patterns](Job::uses_patterns)), as the system's docs show. Its handler calls
    /// [`Work::handle`] with the event's `seq` once per event it receives. `index` is the
    /// listener's rank under `name` (0, 1, ...).
    ///
    /// Called with the scenario's runtime entered, so it may spawn tasks.
    fn add_listener(&mut self, name: &Arc<str>, index: usize, work: &'static Work);

    /// Emits one event with sequence number `seq` to the listeners of `name`.
    ///
    /// For systems whose emit returns at once this future is ready at its first poll; systems
    /// whose emit awaits its listeners ([`Delivery::Inline`]) await them here.
    fn emit(&self, name: &Arc<str>, seq: u64) -> impl Future<Output = ()> + Send;

    /// Emits one event to a name with one listener and resolves once that listener has run:
    /// scenario (e).
    ///
    /// The default is for systems with no completion handle: the handler signals through
    /// [`Work`] and this awaits the signal. Systems with a handle (an awaitable emission, or
    /// an emit that awaits its listeners) override it to use that handle.
    fn roundtrip(
        &self,
        name: &Arc<str>,
        seq: u64,
        work: &'static Work,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let target = work.calls() + 1;
            work.expect_calls(target);
            self.emit(name, seq).await;
            work.wait_calls(target).await;
        }
    }

    /// Waits, untimed, for whatever the system still runs after the last handler call counted
    /// (for `bus`, the bookkeeping at the end of each delivery task), so it does not spill
    /// into the next run.
    fn settle(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How an emit reaches a system's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// `emit` returns at once; every delivery is its own task (`bus`, `seed`).
    Task,
    /// `emit` returns at once; deliveries wait in a queue per listener, drained by one
    /// receiver task per listener (`broadcast`, `event_bus_rs`).
    Queue,
    /// `emit` awaits the listeners in the caller's task (`direct`, `async-event-emitter`,
    /// `typed-emitter`). In scenario (g) each emit is spawned as a task of its own, as a
    /// caller who does not want to wait would do.
    Inline,
}

/// Why a system cannot express a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotApplicable(pub &'static str);

impl std::fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "n/a: {}", self.0)
    }
}

/// What a system's factory is told about the run it is built for.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// The most events any one name receives in the run: the capacity channel-based systems
    /// need so that no receiver lags, even on the current-thread runtime where the emitter
    /// runs before any receiver.
    pub capacity: usize,
}

/// Whether `S` can run `job`: its own [`System::supports`], and the patterns (f) needs.
///
/// # Errors
///
/// The reason `S` cannot run `job`.
pub(crate) fn check<S: System>(job: &Job) -> Result<(), NotApplicable> {
    if job.uses_patterns() && !S::PATTERNS {
        return Err(NotApplicable("no wildcard listener patterns"));
    }
    S::supports(job)
}
