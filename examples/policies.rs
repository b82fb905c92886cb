//! Delivery policies and back-pressure: a `concurrency = 1` listener that handles events one at
//! a time in emit order, a flaky listener retried with backoff, a listener that always fails
//! and ends in the dead-letter hook, a timeout, `max_in_flight` with `emit_async`, and a
//! `#[bus::listener]` with policy options.
//!
//! ```text
//! cargo run --example policies
//! ```
//!
//! It runs in about a second. Set `RUST_LOG=bus_core=warn` to see the bus's own log lines
//! (each failed attempt, the dead letter) as well.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bus::{EventBus, Policy, error::DeliveryError};

#[derive(Debug)]
struct Entry(u32);

#[derive(Debug)]
struct Payment {
    id: u32,
}

#[derive(Debug)]
struct Report;

#[derive(Debug)]
struct Upload(u32);

#[derive(Debug)]
struct Audit(&'static str);

/// Milliseconds since the program started, to show when things happen.
fn ms() -> u128 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis()
}

/// Later entries are quicker: without the concurrency limit they would overtake earlier ones.
async fn apply_entry(entry: Arc<Entry>) {
    tokio::time::sleep(Duration::from_millis(u64::from(50 - 10 * entry.0))).await;
    println!("  [ledger]   applied entry {}", entry.0);
}

/// Fails on its first two attempts: the payment gateway is down for a moment.
async fn charge(payment: Arc<Payment>) -> Result<(), String> {
    static ATTEMPTS: AtomicU32 = AtomicU32::new(0);
    let attempt = ATTEMPTS.fetch_add(1, Ordering::SeqCst) + 1;
    if attempt <= 2 {
        println!("  [charge]   +{}ms attempt {attempt}: gateway down", ms());
        return Err(format!("gateway down for payment {}", payment.id));
    }
    println!("  [charge]   +{}ms attempt {attempt}: charged", ms());
    Ok(())
}

/// Always fails.
async fn refund(payment: Arc<Payment>) -> Result<(), String> {
    Err(format!("refund {} rejected by the bank", payment.id))
}

/// Far slower than its timeout.
async fn build_report(_: Arc<Report>) {
    tokio::time::sleep(Duration::from_secs(30)).await;
    println!("  [report]   never printed");
}

async fn upload(upload: Arc<Upload>) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("  [upload]   +{}ms upload {} done", ms(), upload.0);
}

/// An annotated listener with a policy: one delivery at a time, three retries 100 ms apart
/// (then 200 ms, 400 ms). It fails on its first attempt.
#[bus::listener("audit.record", concurrency = 1, retry = 3, backoff = "100ms")]
async fn record_audit(audit: &Audit) -> Result<(), String> {
    static ATTEMPTS: AtomicU32 = AtomicU32::new(0);
    let attempt = ATTEMPTS.fetch_add(1, Ordering::SeqCst) + 1;
    if attempt == 1 {
        println!("  [audit]    attempt {attempt}: audit store busy");
        return Err("audit store busy".to_owned());
    }
    println!("  [audit]    attempt {attempt}: recorded {:?}", audit.0);
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "bus_core=off".into()),
        )
        .with_target(false)
        .init();
    ms(); // starts the clock

    let bus = EventBus::builder()
        .dead_letter(|letter: &bus::layer::DeadLetter| {
            println!(
                "  [dead]     `{}` ({}) given up on by `{}` after {} attempt(s): {}",
                letter.event().name(),
                letter.event().type_name(),
                letter.listener().name(),
                letter.attempts(),
                letter.error(),
            );
        })
        .build();

    println!("concurrency = 1: entries applied one at a time, in emit order");
    bus.on("ledger.entry", apply_entry)
        .policy(Policy::new().concurrency(1))
        .add();
    for n in 0..5 {
        drop(bus.emit("ledger.entry", Entry(n)));
    }
    bus.drain().await;

    println!("retry(3) with a 100 ms backoff: a flaky listener fails twice, then succeeds");
    bus.on("payment.received", charge)
        .policy(Policy::new().retry(3).backoff(Duration::from_millis(100)))
        .add();
    let report = bus.emit("payment.received", Payment { id: 1 }).await;
    println!(
        "  report: {} delivered, {} failed",
        report.delivered(),
        report.failed()
    );

    println!("retry(2): a listener that always fails goes to the dead-letter hook");
    bus.on("payment.refunded", refund)
        .policy(Policy::new().retry(2).backoff(Duration::from_millis(50)))
        .add();
    let report = bus.emit("payment.refunded", Payment { id: 2 }).await;
    for failure in report.failures() {
        println!("  report: {failure}");
    }

    // A policy listener's failed last attempt goes to the dead letter too, retries or not.
    println!("timeout(200ms): a slow listener is cancelled");
    bus.on("report.requested", build_report)
        .policy(Policy::new().timeout(Duration::from_millis(200)))
        .add();
    let report = bus.emit("report.requested", Report).await;
    match report.failures() {
        [DeliveryError::TimedOut { timeout, .. }] => {
            println!("  report: timed out after {timeout:?}");
        }
        other => println!("  report: {other:?}"),
    }

    println!("max_in_flight(2): emit_async waits for room, try_emit says the bus is full");
    let small = EventBus::builder().max_in_flight(2).build();
    small.add_listener("upload.started", upload);
    for n in 0..4 {
        // Returns once the upload has a place: the third waits for the first two to finish.
        drop(small.emit_async("upload.started", Upload(n)).await);
        println!(
            "  [emitter]  +{}ms upload {n} accepted ({} in flight)",
            ms(),
            small.in_flight()
        );
    }
    // Two uploads still hold both places: `try_emit` refuses with `EmitError::Full`.
    if let Err(error) = small.try_emit("upload.started", Upload(4)) {
        println!("  try_emit: {error}");
    }
    small.drain().await;

    println!("#[bus::listener(\"audit.record\", concurrency = 1, retry = 3, backoff = \"100ms\")]");
    let annotated = EventBus::with_annotated_listeners();
    let policy = annotated.listeners("audit.record")[0].policy();
    println!(
        "  policy: concurrency {:?}, {} retries, first backoff {:?}",
        policy.concurrency_limit(),
        policy.retries(),
        policy.initial_backoff()
    );
    let report = annotated
        .emit("audit.record", Audit("user 7 logged in"))
        .await;
    println!(
        "  report: {} delivered, {} failed",
        report.delivered(),
        report.failed()
    );

    bus.shutdown(Duration::from_secs(1)).await;
    println!("done in {}ms", ms());
}
