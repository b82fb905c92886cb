//! `#[bus::listener(once)]`: an annotated listener for one event, called exactly once however
//! many emits race, then gone from its bus.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bus::{Event, EventBus};
use common::guarded;

#[derive(Debug, bus::Event)]
#[event(name = "macro-once.fired")]
struct Fired {
    /// The test run that emitted it: tests run concurrently, each on a bus of its own.
    run: u64,
}

/// The `run` of every call of the `once` listeners below.
static CALLS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn record(run: u64) {
    CALLS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(run);
}

fn calls_in(run: u64) -> usize {
    let calls = CALLS.lock().unwrap_or_else(PoisonError::into_inner);
    calls.iter().filter(|&&called| called == run).count()
}

/// A run id no other test uses.
fn next_run() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[bus::listener(once)]
async fn first_only(event: &Fired) {
    // Suspends, so that the emits racing with this one find it still registered.
    tokio::task::yield_now().await;
    record(event.run);
}

#[bus::listener("macro-once.named", once)]
async fn named_first_only(run: &u64) {
    record(*run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_emits_call_it_exactly_once_then_it_is_gone() {
    const TASKS: usize = 10;
    const EMITS_PER_TASK: usize = 10;

    let bus = EventBus::with_annotated_listeners();
    assert_eq!(bus.listeners(Fired::NAME).len(), 1);
    let run = next_run();
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (bus, start) = (bus.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let emissions: Vec<_> = (0..EMITS_PER_TASK)
                    .map(|_| bus.emit(Fired::NAME, Fired { run }))
                    .collect();
                for emission in emissions {
                    emission.await;
                }
            })
        })
        .collect();
    for task in tasks {
        guarded("emitting task", task).await.expect("no panic");
    }
    guarded("drain", bus.drain()).await;

    assert_eq!(calls_in(run), 1, "{} emits", TASKS * EMITS_PER_TASK);
    assert!(bus.listeners(Fired::NAME).is_empty());
    let report = guarded("emit", bus.emit(Fired::NAME, Fired { run })).await;
    assert_eq!(report.delivered(), 0);
    assert_eq!(calls_in(run), 1);
}

#[tokio::test]
async fn with_a_name_and_on_each_bus_of_its_own() {
    let (first, second) = (
        EventBus::with_annotated_listeners(),
        EventBus::with_annotated_listeners(),
    );
    let run = next_run();
    for bus in [&first, &second] {
        assert_eq!(bus.listeners("macro-once.named").len(), 1);
        for _ in 0..3 {
            guarded("emit", bus.emit("macro-once.named", run)).await;
        }
        assert!(bus.listeners("macro-once.named").is_empty());
    }
    assert_eq!(calls_in(run), 2, "once per bus");
}
