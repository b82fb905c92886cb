//! `#[bus::listener(concurrency = .., timeout = .., retry = .., backoff = ..)]`: the options
//! become the listener's `Policy`, and the bus runs the listener by it.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bus::{Event, EventBus, Policy};
use common::guarded;

#[derive(Debug, bus::Event)]
#[event(name = "macro-policy.job")]
struct Job;

#[bus::listener(concurrency = 1, timeout = "5s", retry = 3, backoff = "100ms")]
async fn every_option(_: &Job) {}

#[bus::listener(retry = 2, once)]
async fn retry_once(_: &Job) {}

#[bus::listener(timeout = "1m 30s")]
async fn long_timeout(_: &Job) {}

#[bus::listener]
async fn default_policy(_: &Job) {}

/// The policy of the listener `fn_name` of `Job` on `bus`.
#[track_caller]
fn policy_of(bus: &EventBus, fn_name: &str) -> Policy {
    let listeners = bus.listeners(Job::NAME);
    let path = format!("macro_policy::{fn_name}");
    match listeners.iter().find(|info| info.name() == path) {
        Some(info) => info.policy(),
        None => panic!("no listener {path} in {listeners:?}"),
    }
}

#[test]
fn the_options_are_the_listeners_policy() {
    let bus = EventBus::with_annotated_listeners();
    assert_eq!(
        policy_of(&bus, "every_option"),
        Policy::new()
            .concurrency(1)
            .timeout(Duration::from_secs(5))
            .retry(3)
            .backoff(Duration::from_millis(100))
    );
    assert_eq!(policy_of(&bus, "retry_once"), Policy::new().retry(2));
    assert_eq!(
        policy_of(&bus, "long_timeout"),
        Policy::new().timeout(Duration::from_secs(90))
    );
    assert_eq!(policy_of(&bus, "default_policy"), Policy::new());
}

#[derive(Debug, bus::Event)]
#[event(name = "macro-policy.step")]
struct Step {
    /// The test run that emitted it.
    run: u64,
    /// Its place in the emit order.
    seq: u64,
}

/// `(run, seq)` of every step `one_at_a_time` finished.
static FINISHED: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

#[bus::listener(concurrency = 1)]
async fn one_at_a_time(step: &Step) {
    // Steps wait for different things: run side by side, later ones would finish first.
    if step.seq.is_multiple_of(2) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    } else {
        tokio::task::yield_now().await;
    }
    FINISHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((step.run, step.seq));
}

/// Needs the runtime to run deliveries by their policy: `concurrency = 1` queues them in emit
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_one_handles_events_one_at_a_time_in_emit_order() {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let bus = EventBus::with_annotated_listeners();
    let emissions: Vec<_> = (0..50)
        .map(|seq| bus.emit(Step::NAME, Step { run, seq }))
        .collect();
    for emission in emissions {
        let report = guarded("emit", emission).await;
        assert_eq!((report.delivered(), report.failed()), (1, 0));
    }
    guarded("drain", bus.drain()).await;

    let finished: Vec<u64> = FINISHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|&&(of, _)| of == run)
        .map(|&(_, seq)| seq)
        .collect();
    assert_eq!(finished, (0..50).collect::<Vec<_>>());
}
