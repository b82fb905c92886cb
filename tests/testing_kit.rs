//! The test kit (`bus::testing`, feature `testing`), used as a user would: emits with their
//! payloads, deliveries handled and failed, dead letters, sheds, causation chains, "nothing
//! arrives" on Tokio's paused clock, distributed listeners on `MemoryTransport`; and every
//! assertion failing when it should, with what was recorded instead.
#![cfg(feature = "testing")]

use std::sync::Arc;
use std::time::Duration;

use bus::testing::{Harness, Record};
use bus::transport::MemoryTransport;
use bus::{EventBus, Policy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    id: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PaymentTaken {
    order: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct ReceiptSent {
    order: u32,
}

async fn charge(order: Arc<OrderPlaced>) -> Result<(), String> {
    if order.id == 13 {
        return Err(format!("card declined for order {}", order.id));
    }
    Ok(())
}

/// Shop: an order is charged, then a payment and a receipt follow from it.
fn shop(harness: &Harness) -> EventBus {
    let bus = EventBus::builder().harness(harness).build();
    bus.on("orders.placed", charge)
        .policy(Policy::new().retry(1).backoff(Duration::from_millis(1)))
        .add();
    let emitter = bus.clone();
    bus.add_listener("orders.placed", move |order: Arc<OrderPlaced>| {
        let emitter = emitter.clone();
        async move {
            emitter.emit("payments.taken", PaymentTaken { order: order.id });
        }
    });
    let emitter = bus.clone();
    bus.add_listener("payments.taken", move |payment: Arc<PaymentTaken>| {
        let emitter = emitter.clone();
        async move {
            emitter.emit(
                "receipts.sent",
                ReceiptSent {
                    order: payment.order,
                },
            );
        }
    });
    bus
}

#[tokio::test]
async fn emits_deliveries_and_chains_are_awaited() {
    let harness = Harness::new();
    let bus = shop(&harness);
    bus.emit("orders.placed", OrderPlaced { id: 7 });

    let receipt = harness
        .emitted::<ReceiptSent>("receipts.*")
        .matching(|receipt| receipt.order == 7)
        .await;
    assert_eq!(**receipt.event(), ReceiptSent { order: 7 });
    assert_eq!(receipt.name(), "receipts.sent");
    assert!(receipt.causation().is_some(), "emitted by a listener");

    let handled = harness.handled("orders.placed").by("charge").await;
    assert!(
        matches!(&handled, Record::Attempted { listener, error: None, .. } if listener.ends_with("::charge")),
        "{handled}"
    );
    let chain = harness
        .chain(&["orders.placed", "payments.taken", "receipts.sent"])
        .await;
    assert_eq!(chain.len(), 3);
    assert_eq!(&chain[2], receipt.id(), "the chain ends at the receipt");
    assert_eq!(
        Some(&chain[0]),
        harness
            .emitted::<PaymentTaken>("payments.taken")
            .await
            .causation()
    );
}

#[tokio::test]
async fn failures_and_dead_letters_are_awaited() {
    let harness = Harness::new();
    let bus = shop(&harness);
    bus.emit("orders.placed", OrderPlaced { id: 13 });

    let failed = harness.failed("orders.placed").by("charge").await;
    assert!(failed.to_string().contains("card declined"), "{failed}");
    let letter = harness.dead_lettered("orders.*").by("charge").await;
    assert!(
        matches!(&letter, Record::DeadLettered { attempts: 2, .. }),
        "{letter}"
    );
}

#[tokio::test]
async fn sheds_are_awaited() {
    let harness = Harness::new();
    let bus = EventBus::builder()
        .harness(&harness)
        .max_in_flight(1)
        .build();
    let (open, gate) = tokio::sync::watch::channel(false);
    bus.add_listener("jobs.run", move |_: Arc<u32>| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
        }
    });
    let running = bus.emit("jobs.run", 1_u32);
    bus.emit("jobs.run", 2_u32);
    let shed = harness.shed("jobs.*").await;
    assert_eq!(shed.name(), "jobs.run");
    // A shed emit is recorded as emitted too, for no listener here.
    let second = harness
        .emitted::<u32>("jobs.run")
        .matching(|job| *job == 2)
        .await;
    assert_eq!(second.id(), shed.id());
    open.send_replace(true);
    running.await;
}

/// On the paused clock, waiting out the bound takes no real time.
#[tokio::test(start_paused = true)]
async fn nothing_emitted_waits_out_its_bound_and_fails_at_the_first_emit() {
    let harness = Harness::new().within(Duration::from_secs(60));
    let bus = shop(&harness);
    harness.nothing_emitted("orders.*").await;

    let later = bus.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        later.emit("orders.placed", OrderPlaced { id: 8 });
    });
    let unmet = harness
        .nothing_emitted("orders.*")
        .try_wait()
        .await
        .expect_err("an order was emitted within the bound");
    assert!(
        unmet.expected().contains("no emit under `orders.*`")
            && unmet.expected().contains("emitted orders.placed"),
        "{unmet}"
    );
}

/// A failed assertion says what it expected and shows what was recorded, the records about
/// the names it looked for first.
#[tokio::test(start_paused = true)]
async fn an_unmet_assertion_shows_what_was_recorded_instead() {
    let harness = Harness::new();
    let bus = shop(&harness);
    bus.emit("unrelated.thing", 1_u8);
    bus.emit("orders.placed", OrderPlaced { id: 7 });
    harness
        .chain(&["orders.placed", "payments.taken", "receipts.sent"])
        .await;

    let unmet = harness
        .emitted::<OrderPlaced>("orders.*")
        .matching(|order| order.id == 9)
        .try_wait()
        .await
        .expect_err("no order 9");
    let text = unmet.to_string();
    assert!(
        text.starts_with(
            "expected an emit of testing_kit::OrderPlaced under `orders.*` matching the \
             predicate within 5s; recorded instead ("
        ),
        "{text}"
    );
    assert!(
        unmet.nearest()[0].starts_with("emitted orders.placed (testing_kit::OrderPlaced)"),
        "the order's records first: {text}"
    );
    assert!(
        unmet
            .nearest()
            .iter()
            .any(|line| line.contains("orders.placed") && line.contains("handled by")),
        "its listeners: {text}"
    );
    assert!(text.contains("emitted unrelated.thing (u8)"), "{text}");

    for unmet in [
        harness
            .handled("orders.placed")
            .by("refund")
            .try_wait()
            .await,
        harness.failed("orders.placed").try_wait().await,
        harness.dead_lettered("orders.placed").try_wait().await,
        harness.shed("orders.placed").try_wait().await,
    ] {
        let unmet = unmet.expect_err("not recorded");
        assert!(unmet.expected().contains("`orders.placed`"), "{unmet}");
    }
    // Each link is a direct cause: the receipt was not caused by the order itself.
    let unmet = harness
        .chain(&["orders.placed", "receipts.sent"])
        .try_wait()
        .await
        .expect_err("not a direct cause");
    assert!(unmet.expected().contains("orders.placed → receipts.sent"));
    let invalid = harness.emitted::<OrderPlaced>("orders..x").try_wait().await;
    assert!(
        invalid
            .expect_err("invalid")
            .expected()
            .contains("not a valid pattern")
    );
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "expected an event under `orders.placed` handled by `refund` within 5s")]
async fn an_awaited_assertion_panics_with_the_message() {
    let harness = Harness::new();
    let bus = shop(&harness);
    bus.emit("orders.placed", OrderPlaced { id: 7 });
    harness.handled("orders.placed").by("refund").await;
}

/// Distributed listeners in one process: two buses on one `MemoryTransport`, built with the
/// same harness; the consumer's deliveries and dead letters are recorded as in process.
#[tokio::test]
async fn distributed_listeners_are_recorded_on_the_memory_transport() {
    let harness = Harness::new();
    let broker = MemoryTransport::new();
    let build = |service: &str| {
        EventBus::builder()
            .service(service)
            .transport(broker.clone())
            .distributed::<OrderPlaced>()
            .harness(&harness)
            .build()
    };
    let billing = build("billing");
    billing
        .on("orders.placed", charge)
        .policy(Policy::new().retry(1).backoff(Duration::from_millis(1)))
        .add();
    billing.ready().await.unwrap();
    let shop = build("shop");

    shop.emit("orders.placed", OrderPlaced { id: 7 });
    shop.emit("orders.placed", OrderPlaced { id: 13 });
    harness
        .emitted::<OrderPlaced>("orders.placed")
        .matching(|order| order.id == 13)
        .await;
    harness.handled("orders.placed").by("charge").await;
    let letter = harness.dead_lettered("orders.placed").by("charge").await;
    assert!(letter.to_string().contains("card declined"), "{letter}");
    billing.shutdown(Duration::from_secs(1)).await;
    shop.shutdown(Duration::from_secs(1)).await;
}
