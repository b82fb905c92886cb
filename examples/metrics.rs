//! Metrics: a bus with a `MetricsLayer`, recorded by the Prometheus exporter, then printed in the
//! Prometheus text format, as a scrape would read it.
//!
//! ```text
//! cargo run --example metrics --features metrics
//! ```
//!
//! A service serves `handle.render()` on its `/metrics` route (or lets the exporter's
//! `http-listener` feature do it); here it is printed once, at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bus::{EventBus, Policy, layer::MetricsLayer};
use metrics_exporter_prometheus::PrometheusBuilder;

#[derive(Debug)]
struct OrderPlaced {
    id: u32,
}

async fn confirm(order: Arc<OrderPlaced>) {
    println!("  [confirm] order {} confirmed", order.id);
}

/// Fails for every third order: `bus_deliveries_total{outcome="failed"}`.
async fn reserve_stock(order: Arc<OrderPlaced>) -> Result<(), String> {
    if order.id.is_multiple_of(3) {
        return Err(format!("no stock left for order {}", order.id));
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(())
}

/// Flaky: its first two calls fail. With retries, those deliveries end delivered.
async fn sync_crm(order: Arc<OrderPlaced>) -> Result<(), String> {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    if CALLS.fetch_add(1, Ordering::Relaxed) < 2 {
        return Err(format!("crm unreachable (order {})", order.id));
    }
    Ok(())
}

/// Always fails: after its retry, the event goes to the dead letter.
async fn refund(order: Arc<OrderPlaced>) -> Result<(), String> {
    Err(format!("refund service is down (order {})", order.id))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: the layer describes its metrics to the recorder it finds.
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.000_1, 0.001, 0.01, 0.1, 1.0])?
        .install_recorder()?;

    let bus = EventBus::builder()
        .layer(MetricsLayer::new())
        .dead_letter(|letter| {
            println!(
                "  [dead letter] {} gave up on {} after {} attempts: {}",
                letter.listener().name(),
                letter.event().name(),
                letter.attempts(),
                letter.error()
            );
        })
        .build();

    let retry = |retries| {
        Policy::new()
            .retry(retries)
            .backoff(Duration::from_millis(5))
    };
    bus.add_listener("orders.placed", confirm);
    bus.add_listener("orders.placed", reserve_stock);
    bus.on("orders.placed", sync_crm).policy(retry(2)).add();
    bus.on("orders.refunded", refund).policy(retry(1)).add();

    println!("emitting 6 orders and a refund:");
    for id in 1..=6 {
        bus.emit("orders.placed", OrderPlaced { id });
    }
    bus.emit("orders.refunded", OrderPlaced { id: 2 });

    // Every delivery ends, retries included, well within the guard.
    tokio::time::timeout(Duration::from_secs(5), bus.drain()).await?;

    println!("\nwhat a Prometheus scrape would read:\n");
    print!("{}", handle.render());
    Ok(())
}
