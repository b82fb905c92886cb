//! The relay: two at once publish every row once; a transaction that commits after a later
//! one is not skipped; NOTIFY wakes it, polling is the fallback; failed publishes are
//! retried; kept rows are deleted after their age; the real NATS gets the event with its id.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::{
    BoxFuture, Capabilities, SubscribeOptions, Transport, TransportError, TransportSubscription,
    WireEvent,
};
use bus_postgres::PublishedRows;
use bus_postgres::sqlx::{self, AssertSqlSafe};
use common::{PATIENCE, Recorder, TestDb};
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_every_row_once() {
    let Some(db) = TestDb::connect("two_relays_publish_every_row_once").await else {
        return;
    };
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    let first = db.relay(recorder.shared()).batch_size(7).start().unwrap();
    let second = db.relay(recorder.shared()).batch_size(7).start().unwrap();

    let mut ids = HashSet::new();
    for batch in 0..20 {
        let mut tx = db.pool.begin().await.unwrap();
        for n in 0..10 {
            ids.insert(
                outbox
                    .emit(&mut tx, "order.placed", &(batch * 10 + n))
                    .await
                    .unwrap(),
            );
        }
        tx.commit().await.unwrap();
    }
    recorder.wait_for(200, "200 events").await;
    db.wait_until_all_published("200 events").await;
    let counts = recorder.counts();
    let published: HashSet<String> = counts.keys().cloned().collect();
    assert_eq!(published, ids);
    let twice: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    assert_eq!(first.published() + second.published(), 200);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let Some(db) = TestDb::connect("a_transaction_that_commits_late_is_not_skipped").await else {
        return;
    };
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    let relay = db.relay(recorder.shared()).start().unwrap();

    // A writes first (the lower position) and stays open.
    let mut a = db.pool.begin().await.unwrap();
    let early = outbox.emit(&mut a, "order.placed", &"a").await.unwrap();
    // B writes after it and commits first.
    let mut b = db.pool.begin().await.unwrap();
    let late = outbox.emit(&mut b, "order.placed", &"b").await.unwrap();
    b.commit().await.unwrap();

    let published = recorder.wait_for(1, "B").await;
    assert_eq!(published[0].id, late);
    db.wait_until_all_published("B").await;
    // The relay passed over A's position while A was open; A commits now.
    a.commit().await.unwrap();
    let published = recorder.wait_for(2, "A, committed after B").await;
    assert_eq!(published[1].id, early);
    db.wait_until_all_published("A").await;
    assert_eq!(recorder.published().len(), 2);
    relay.stop().await;
}

#[tokio::test]
async fn notify_wakes_a_relay_that_polls_rarely() {
    let Some(db) = TestDb::connect("notify_wakes_a_relay_that_polls_rarely").await else {
        return;
    };
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    outbox
        .emit(&mut *db.conn().await, "order.placed", &1)
        .await
        .unwrap();
    let relay = db
        .relay(recorder.shared())
        .poll_interval(Duration::from_secs(3600))
        .start()
        .unwrap();
    // The first pass (after the relay listens) publishes the first event; then the relay
    // sleeps for an hour, unless a notification wakes it.
    recorder
        .wait_for(1, "the event written before the start")
        .await;
    let mut tx = db.pool.begin().await.unwrap();
    let id = outbox.emit(&mut tx, "order.placed", &2).await.unwrap();
    tx.commit().await.unwrap();
    let published = recorder
        .wait_for(2, "the event whose NOTIFY wakes the relay")
        .await;
    assert_eq!(published[1].id, id);
    relay.stop().await;
}

#[tokio::test]
async fn without_listen_the_relay_polls() {
    let Some(db) = TestDb::connect("without_listen_the_relay_polls").await else {
        return;
    };
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    let relay = db.relay(recorder.shared()).listen(false).start().unwrap();
    for n in 0..3 {
        outbox
            .emit(&mut *db.conn().await, "order.placed", &n)
            .await
            .unwrap();
    }
    recorder.wait_for(3, "the polled events").await;
    relay.stop().await;
}

#[tokio::test]
async fn a_failed_publish_is_retried_and_recorded() {
    let Some(db) = TestDb::connect("a_failed_publish_is_retried_and_recorded").await else {
        return;
    };
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    recorder.fail_next(3);
    let relay = db
        .relay(recorder.shared())
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .published_rows(PublishedRows::KeepFor(Duration::from_secs(3600)))
        .start()
        .unwrap();
    let id = outbox
        .emit(&mut *db.conn().await, "order.placed", &1)
        .await
        .unwrap();
    let published = recorder
        .wait_for(1, "the event, after three failures")
        .await;
    assert_eq!(published[0].id, id);
    assert_eq!(recorder.failed(), 3);
    db.wait_until_all_published("the event").await;
    let sql = format!(
        "SELECT attempts, last_error, published_at IS NOT NULL FROM {}outbox WHERE id = $1",
        db.prefix
    );
    let (attempts, last_error, published): (i32, Option<String>, bool) =
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(&id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 3);
    assert!(
        last_error
            .as_deref()
            .is_some_and(|error| error.contains("closed")),
        "{last_error:?}"
    );
    assert!(published);
    relay.stop().await;
}

#[tokio::test]
async fn kept_rows_are_deleted_after_their_age() {
    let Some(db) = TestDb::connect("kept_rows_are_deleted_after_their_age").await else {
        return;
    };
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    let relay = db
        .relay(recorder.shared())
        .published_rows(PublishedRows::KeepFor(Duration::from_secs(1)))
        .start()
        .unwrap();
    outbox
        .emit(&mut *db.conn().await, "order.placed", &1)
        .await
        .unwrap();
    recorder.wait_for(1, "the event").await;
    db.wait_until_all_published("the event").await;
    assert_eq!(db.rows().await, 1, "kept for a second");
    let deleted = async {
        while db.rows().await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, deleted)
        .await
        .expect("the published row is deleted after its age");
    relay.stop().await;
}

#[tokio::test]
async fn the_relay_publishes_to_nats_with_the_event_id() {
    let Some(db) = TestDb::connect("the_relay_publishes_to_nats_with_the_event_id").await else {
        return;
    };
    let Some(nats) =
        common::TestNats::connect("the_relay_publishes_to_nats_with_the_event_id").await
    else {
        return;
    };
    let mut subscription = nats
        .transport
        .subscribe(SubscribeOptions::new("order.placed"))
        .await
        .unwrap();
    let transport: Arc<dyn Transport> = Arc::new(nats.transport.clone());
    let relay = db.relay(transport).start().unwrap();
    let outbox = db.outbox("shop");
    let mut tx = db.pool.begin().await.unwrap();
    let id = outbox
        .emit(&mut tx, "order.placed", &serde_json::json!({"order": 42}))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let delivery = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("a delivery from NATS")
        .expect("the subscription is open")
        .expect("a delivery");
    let event = delivery.event().clone();
    delivery.ack().await.unwrap();
    assert_eq!(event.id, id);
    assert_eq!(event.source, "shop");
    assert_eq!(event.ty, "order.placed");
    assert_eq!(event.data.as_ref(), br#"{"order":42}"#);
    db.wait_until_all_published("the event").await;
    assert_eq!(nats.stream_messages().await, 1);
    relay.stop().await;
}

#[tokio::test]
async fn closing_the_pool_stops_the_relay() {
    let Some(db) = TestDb::connect("closing_the_pool_stops_the_relay").await else {
        return;
    };
    let recorder = Recorder::new();
    let relay = db.relay(recorder.shared()).start().unwrap();
    assert!(relay.is_running());
    db.pool.close().await;
    let stopped = async {
        while relay.is_running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("the relay stops once its pool is closed");
    relay.stop().await;
}

/// Holds each publish until the test lets it through, and records what it let through.
struct Gate {
    entered: tokio::sync::mpsc::UnboundedSender<String>,
    open: Arc<tokio::sync::Semaphore>,
    recorder: Recorder,
}

impl Transport for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let _ = self.entered.send(event.id.clone());
            self.open.acquire().await.unwrap().forget();
            self.recorder.publish(event).await
        })
    }

    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        self.recorder.subscribe(options)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_lets_the_publish_in_flight_finish_and_marks_it() {
    let Some(db) = TestDb::connect("stop_lets_the_publish_in_flight_finish_and_marks_it").await
    else {
        return;
    };
    let (entered, mut publishing) = tokio::sync::mpsc::unbounded_channel();
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let recorder = Recorder::new();
    let gate = Gate {
        entered,
        open: Arc::clone(&open),
        recorder: recorder.clone(),
    };
    let relay = db.relay(Arc::new(gate)).start().unwrap();
    let id = db
        .outbox("shop")
        .emit(&mut *db.conn().await, "order.placed", &1)
        .await
        .unwrap();
    let in_flight = tokio::time::timeout(PATIENCE, publishing.recv())
        .await
        .expect("the relay publishes")
        .unwrap();
    assert_eq!(in_flight, id);

    let stopping = tokio::spawn(relay.stop());
    // The stop waits for the publish in flight...
    tokio::task::yield_now().await;
    assert!(!stopping.is_finished());
    open.add_permits(1);
    // ... which then completes, and its row is marked before the relay ends.
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the relay stops once its publish resolved")
        .unwrap();
    assert_eq!(recorder.counts().get(&id), Some(&1));
    assert_eq!(db.lag().await.pending, 0);
    assert_eq!(db.rows().await, 0);
}
