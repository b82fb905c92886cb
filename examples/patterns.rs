//! Patterns, waiting and streaming: pattern listeners (`orders.*`, `orders.>`), a `once`
//! listener, `wait_for` with a timeout, and a `stream` that reports when it lags.
//!
//! ```text
//! cargo run --example patterns
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;

#[derive(Debug)]
struct Order {
    id: u32,
    region: &'static str,
}

/// One token after `orders.`: `orders.created`, not `orders.eu.created`.
#[bus::listener("orders.*")]
async fn count_top_level(order: &Order) {
    println!("  [orders.*]  order {} ({})", order.id, order.region);
}

/// Everything under `orders.`, however deep.
#[bus::listener("orders.>")]
async fn audit(order: &Order) {
    println!("  [orders.>]  audit of order {}", order.id);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = bus::EventBus::with_annotated_listeners();

    println!("a listener for the first EU order only:");
    bus.on("orders.eu.*", |order: Arc<Order>| async move {
        println!("  [once]      first EU order: {}", order.id);
    })
    .once()
    .add();

    println!("a stream with room for 2 unread events, and a wait:");
    let mut stream = bus.stream::<Order>("orders.eu.>", 2)?;
    let big_order = bus.wait_for_matching("orders.*.created", |order: &Order| order.id >= 3);

    for (id, name, region) in [
        (1, "orders.created", "us"),
        (2, "orders.eu.created", "eu"),
        (3, "orders.eu.created", "eu"),
        (4, "orders.eu.paid", "eu"),
    ] {
        bus.emit(name, Order { id, region }).await;
    }

    let order = tokio::time::timeout(Duration::from_secs(1), big_order).await??;
    println!("waited for an order with id >= 3: got {}", order.id);

    // Three EU events went into a buffer of two: the stream says what it dropped.
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(50), stream.next()).await
    {
        match item {
            Ok(order) => println!("  [stream]    order {}", order.id),
            Err(lagged) => println!("  [stream]    {lagged}"),
        }
    }
    println!("the stream dropped {} event(s) in all", stream.lagged());
    Ok(())
}
