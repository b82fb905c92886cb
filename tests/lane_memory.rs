//! A million deliveries queued behind a slow listener (`concurrency = 1`): they wait as queue
//! entries in the listener's lane, not as a task or a future each, so memory stays bounded;
//! `drain` sees every one delivered, in emit order; `shutdown` aborts them all and counts them.
//!
//! Alone in its binary: it measures the process's resident memory, which tests running beside
//! it would disturb.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus::{EventBus, Policy};
use common::guarded;
use tokio::sync::Semaphore;

const QUEUED: u64 = 1_000_000;

/// Before issue 16 each queued delivery was a task holding a boxed semaphore acquire: about
/// 1.6 KB. A queue entry, the event's `Arc` and the emit's share of what its deliveries have in
/// common stay well under this. (BENCHMARKS.md has the measured figure.)
const MAX_BYTES_PER_QUEUED: f64 = 512.0;

#[derive(Debug)]
struct Job(u64);

/// The resident memory of this process, in bytes.
fn resident() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("the resident field of /proc/self/statm");
    pages * 4096.0
}

/// A bus whose one listener takes a permit of `gate` per event and records the order.
fn slow_listener(gate: &Arc<Semaphore>, next: &Arc<AtomicU64>) -> EventBus {
    let bus = EventBus::new();
    let (gate, next) = (Arc::clone(gate), Arc::clone(next));
    bus.on("job", move |job: Arc<Job>| {
        let (gate, next) = (Arc::clone(&gate), Arc::clone(&next));
        async move {
            gate.acquire().await.expect("never closed").forget();
            // In emit order, one at a time: each delivery finds the count at its own number.
            let expected = next.fetch_add(1, Ordering::SeqCst);
            if expected == job.0 {
                Ok(())
            } else {
                Err(format!("job {} ran as number {expected}", job.0))
            }
        }
    })
    .policy(Policy::new().concurrency(1))
    .add();
    bus
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn a_million_queued_deliveries_stay_small_are_all_delivered_or_all_aborted() {
    let gate = Arc::new(Semaphore::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let bus = slow_listener(&gate, &next);
    drop(bus.emit("job", Job(0)));
    // The first delivery starts and waits at the gate; the rest queue behind it.
    tokio::task::yield_now().await;
    let before = resident();
    for n in 1..QUEUED {
        drop(bus.emit("job", Job(n)));
    }
    tokio::task::yield_now().await;
    let per_queued = (resident() - before) / (QUEUED - 1) as f64;
    assert_eq!(bus.in_flight(), QUEUED as usize);
    assert!(
        per_queued < MAX_BYTES_PER_QUEUED,
        "{per_queued:.0} bytes per queued delivery"
    );
    println!("{per_queued:.0} bytes of resident memory per queued delivery");

    gate.add_permits(QUEUED as usize);
    tokio::time::timeout(Duration::from_secs(120), bus.drain())
        .await
        .expect("a million deliveries drained");
    assert_eq!(
        next.load(Ordering::SeqCst),
        QUEUED,
        "every delivery ran once"
    );
    assert_eq!(bus.in_flight(), 0);
    // Each ran in its turn: a delivery out of order would have failed, and been counted.
    let failed = guarded("one more emit", bus.emit("job", Job(QUEUED)));
    gate.add_permits(1);
    let report = failed.await;
    assert!(report.is_ok(), "{report:?}");

    // A second bus: a million queued again, then shutdown aborts them all.
    let gate = Arc::new(Semaphore::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let bus = slow_listener(&gate, &next);
    for n in 0..QUEUED {
        drop(bus.emit("job", Job(n)));
    }
    tokio::task::yield_now().await;
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        bus.shutdown(Duration::from_millis(10)),
    )
    .await
    .expect("shutdown of a million queued deliveries");
    assert_eq!(report.in_flight(), QUEUED as usize);
    assert_eq!(report.aborted(), QUEUED as usize);
    assert_eq!(bus.in_flight(), 0);
    assert_eq!(next.load(Ordering::SeqCst), 0, "none ran");
}
