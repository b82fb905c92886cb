//! A relay to the listeners of an `EventBus` in this process (`LocalBus`): the event keeps
//! the id, source and time it was written with, and its row is marked only once the
//! emission's report is in.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::{CAUSATION, Transport, WireEvent};
use bus_core::{Envelope, EventBus};
use bus_postgres::LocalBus;
use common::{PATIENCE, TestDb};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order: i64,
}

impl bus_core::Event for OrderPlaced {
    const NAME: &'static str = "order.placed";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_delivers_to_local_listeners_and_marks_after_the_report() {
    let Some(db) =
        TestDb::connect("the_relay_delivers_to_local_listeners_and_marks_after_the_report").await
    else {
        return;
    };
    let bus = EventBus::builder().service("billing").build();
    let (sender, mut received) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    {
        let gate = Arc::clone(&gate);
        bus.add_listener(
            "order.placed",
            move |order: Arc<OrderPlaced>, envelope: Envelope| {
                let (sender, gate) = (sender.clone(), Arc::clone(&gate));
                async move {
                    sender.send((order.order, envelope)).unwrap();
                    // Held until the test has seen the row still pending.
                    gate.acquire().await.unwrap().forget();
                }
            },
        );
    }
    let local: Arc<dyn Transport> = Arc::new(LocalBus::new(bus.clone()).event::<OrderPlaced>());
    let relay = db.relay(local).start().unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    let id = db
        .outbox("shop")
        .emit(&mut tx, "order.placed", &OrderPlaced { order: 42 })
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let (order, envelope) = tokio::time::timeout(PATIENCE, received.recv())
        .await
        .expect("the listener gets the event")
        .unwrap();
    assert_eq!(order, 42);
    assert_eq!(envelope.id().to_string(), id);
    assert_eq!(
        envelope.source(),
        "shop",
        "the outbox's service, not the bus's"
    );
    assert_eq!(envelope.content_type(), Some("application/json"));
    // The listener runs: the row is not marked yet.
    assert_eq!(db.lag().await.pending, 1);
    gate.add_permits(1);
    db.wait_until_all_published("the delivered event").await;
    assert_eq!(relay.published(), 1);
    relay.stop().await;
    assert!(received.try_recv().is_err(), "delivered once");
}

#[tokio::test]
async fn a_kept_event_keeps_its_time_and_causation() {
    let Some(db) = TestDb::connect("a_kept_event_keeps_its_time_and_causation").await else {
        return;
    };
    let bus = EventBus::new();
    let (sender, mut received) = mpsc::unbounded_channel();
    bus.add_listener(
        "order.placed",
        move |_: Arc<OrderPlaced>, envelope: Envelope| {
            let sender = sender.clone();
            async move { sender.send(envelope).unwrap() }
        },
    );
    let local: Arc<dyn Transport> = Arc::new(LocalBus::new(bus.clone()).event::<OrderPlaced>());
    let relay = db.relay(local).start().unwrap();
    let at = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let written = WireEvent::new("kept-1", "legacy", "order.placed", r#"{"order":1}"#)
        .at(at)
        .content_type("application/json")
        .extension(CAUSATION, "cause-9");
    db.outbox("shop")
        .emit_wire(&mut *db.conn().await, written)
        .await
        .unwrap();
    let envelope = tokio::time::timeout(PATIENCE, received.recv())
        .await
        .expect("the listener gets the event")
        .unwrap();
    assert_eq!(envelope.id().to_string(), "kept-1");
    assert_eq!(envelope.source(), "legacy");
    assert_eq!(envelope.emitted_at(), at);
    assert_eq!(
        envelope.causation().map(ToString::to_string).as_deref(),
        Some("cause-9")
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_event_without_a_registered_type_is_retried_not_lost() {
    let Some(db) = TestDb::connect("an_event_without_a_registered_type_is_retried_not_lost").await
    else {
        return;
    };
    let bus = EventBus::new();
    let local: Arc<dyn Transport> = Arc::new(LocalBus::new(bus).event::<OrderPlaced>());
    let relay = db
        .relay(local)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .start()
        .unwrap();
    db.outbox("shop")
        .emit(&mut *db.conn().await, "order.cancelled", &1)
        .await
        .unwrap();
    // Failed attempts are recorded on the row, which stays pending.
    let sql = format!("SELECT attempts, last_error FROM {}outbox", db.prefix);
    let failed = async {
        loop {
            let (attempts, error): (i32, Option<String>) =
                bus_postgres::sqlx::query_as(bus_postgres::sqlx::AssertSqlSafe(sql.clone()))
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            if attempts >= 2 {
                return error;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let error = tokio::time::timeout(PATIENCE, failed)
        .await
        .expect("the publish is retried");
    assert!(
        error
            .as_deref()
            .is_some_and(|error| error.contains("LocalBus::event")),
        "{error:?}"
    );
    assert_eq!(db.lag().await.pending, 1);
    relay.stop().await;
}
