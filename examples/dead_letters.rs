//! Dead letters and their replay: a listener fails on some events, which end in the dead
//! letters with the reason; once it is fixed, `DeadLetterQueue::replay` puts them back.
//!
//! ```sh
//! cargo run --example dead_letters
//! ```
//!
//! It runs on the in-memory transport; the same code runs on NATS JetStream or Redis Streams
//! with their transport in place of `MemoryTransport` (see `examples/distributed.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus::transport::{
    DEAD_LETTER_REASON, DeadLetterQueue, MemoryTransport, SubscribeOptions, Transport,
    dead_letter_name,
};
use bus::{EventBus, Policy};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "invoices.due", distributed)]
struct InvoiceDue {
    number: u32,
    amount_cents: i64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    // At start-up: keep every dead letter of an invoice event, to replay them later.
    let queue =
        DeadLetterQueue::open(Arc::clone(&transport), "invoices.>", "invoices-replay").await?;
    // Only to print the reasons here; an operator would read them from the broker.
    let mut letters = transport
        .subscribe(SubscribeOptions::new(dead_letter_name("invoices.>")))
        .await?;

    let bus = EventBus::builder()
        .service("billing")
        .shared_transport(Arc::clone(&transport))
        .distributed::<InvoiceDue>()
        .build();
    // The bug: negative amounts are refused. Fixed below by flipping this flag.
    let fixed = Arc::new(AtomicBool::new(false));
    {
        let fixed = Arc::clone(&fixed);
        bus.on("invoices.due", move |invoice: Arc<InvoiceDue>| {
            let fixed = Arc::clone(&fixed);
            async move {
                if invoice.amount_cents < 0 && !fixed.load(Ordering::SeqCst) {
                    return Err(format!("invoice {}: negative amount", invoice.number));
                }
                println!(
                    "charged invoice {} ({} cents)",
                    invoice.number, invoice.amount_cents
                );
                Ok(())
            }
        })
        .policy(Policy::new().retry(2).backoff(Duration::from_millis(10)))
        .add();
    }
    bus.ready().await?;

    for (number, amount_cents) in [(1, 1_200), (2, -300), (3, 4_500), (4, -50)] {
        bus.emit_event(InvoiceDue {
            number,
            amount_cents,
        })
        .await;
    }
    for _ in 0..2 {
        let letter = tokio::time::timeout(Duration::from_secs(10), letters.next())
            .await?
            .ok_or("the dead letters' subscription ended")??;
        println!(
            "dead letter: {}",
            letter.event().extensions[DEAD_LETTER_REASON]
        );
        letter.ack().await?;
    }

    // The fix is deployed: put the failed invoices back.
    fixed.store(true, Ordering::SeqCst);
    let report = queue.replay(DeadLetterQueue::DEFAULT_IDLE).await?;
    println!("replayed {} dead letters", report.replayed);
    bus.drain().await;
    bus.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
