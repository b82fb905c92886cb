//! The outbox: an event emitted in a transaction is relayed once if it commits, never if it
//! rolls back; the relay publishes exactly the CloudEvent that was written; the causation of
//! an event emitted by a listener; the lag; the schema.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bus_core::trace::{TRACEPARENT as TRACEPARENT_NAME, TRACESTATE as TRACESTATE_NAME};
use bus_core::transport::{CAUSATION, MemoryTransport, Transport, WireEvent};
use bus_core::{Envelope, EventBus};
use bus_postgres::sqlx::{self, AssertSqlSafe};
use bus_postgres::{Outbox, OutboxError, Schema};
use common::{Recorder, TestDb};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct OrderPlaced {
    order: i64,
    total: f64,
}

impl bus_core::Event for OrderPlaced {
    const NAME: &'static str = "order.placed";
}

/// A table of the test's own, for the user's writes beside the event.
async fn create_orders(db: &TestDb) -> String {
    let table = format!("{}orders", db.prefix);
    let sql = format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY)");
    sqlx::query(AssertSqlSafe(sql))
        .execute(&db.pool)
        .await
        .unwrap();
    table
}

async fn insert_order(tx: &mut sqlx::PgConnection, table: &str, id: i64) {
    let sql = format!("INSERT INTO {table} (id) VALUES ($1)");
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .execute(tx)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_committed_event_is_relayed_once_with_its_attributes() {
    let Some(db) = TestDb::connect("a_committed_event_is_relayed_once_with_its_attributes").await
    else {
        return;
    };
    let orders = create_orders(&db).await;
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    let relay = db.relay(recorder.shared()).start().unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    insert_order(&mut tx, &orders, 42).await;
    let payload = OrderPlaced {
        order: 42,
        total: 9.5,
    };
    let id = outbox
        .emit(&mut tx, "order.placed", &payload)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let published = recorder.wait_for(1, "the committed event").await;
    let event = &published[0];
    assert_eq!(event.id, id);
    assert_eq!(event.source, "shop");
    assert_eq!(event.ty, "order.placed");
    assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(event.data.as_ref(), serde_json::to_vec(&payload).unwrap());
    let time = event.time.as_deref().expect("a time");
    assert!(
        time.len() > 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
        "not RFC 3339: {time}"
    );
    assert!(!event.extensions.contains_key(CAUSATION), "{event:?}");

    // Once: a probe emitted after it is published, and the first event not again.
    let probe = outbox
        .emit_event(
            &mut *db.conn().await,
            &OrderPlaced {
                order: 0,
                total: 0.0,
            },
        )
        .await
        .unwrap();
    recorder.wait_for(2, "the probe").await;
    db.wait_until_all_published("both events").await;
    let counts = recorder.counts();
    assert_eq!(counts.get(&id), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&probe), Some(&1), "{counts:?}");
    assert_eq!(db.rows().await, 0, "published rows are deleted by default");
    relay.stop().await;
}

#[tokio::test]
async fn a_rolled_back_event_is_never_relayed() {
    let Some(db) = TestDb::connect("a_rolled_back_event_is_never_relayed").await else {
        return;
    };
    let orders = create_orders(&db).await;
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    let relay = db.relay(recorder.shared()).start().unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    insert_order(&mut tx, &orders, 1).await;
    let rolled_back = outbox.emit(&mut tx, "order.placed", &1).await.unwrap();
    tx.rollback().await.unwrap();

    // A transaction dropped without commit rolls back too.
    let dropped = {
        let mut tx = db.pool.begin().await.unwrap();
        outbox.emit(&mut tx, "order.placed", &2).await.unwrap()
    };

    let mut tx = db.pool.begin().await.unwrap();
    let committed = outbox.emit(&mut tx, "order.placed", &3).await.unwrap();
    tx.commit().await.unwrap();

    recorder.wait_for(1, "the committed event").await;
    db.wait_until_all_published("the committed event").await;
    let counts = recorder.counts();
    assert_eq!(counts.get(&committed), Some(&1), "{counts:?}");
    assert!(!counts.contains_key(&rolled_back), "{counts:?}");
    assert!(!counts.contains_key(&dropped), "{counts:?}");
    assert_eq!(recorder.published().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn the_relay_publishes_exactly_the_event_written() {
    let Some(db) = TestDb::connect("the_relay_publishes_exactly_the_event_written").await else {
        return;
    };
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    let relay = db.relay(recorder.shared()).start().unwrap();

    let written = WireEvent::new(
        "py-order-7",
        "legacy/orders €",
        "order.shipped",
        &b"\x00\xffbytes"[..],
    )
    .at(std::time::SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789))
    .content_type("application/octet-stream")
    .extension(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .extension(CAUSATION, "cause-1");
    let bare = WireEvent::new("bare-1", "shop", "order.shipped", "");
    let mut tx = db.pool.begin().await.unwrap();
    outbox.emit_wire(&mut tx, written.clone()).await.unwrap();
    outbox.emit_wire(&mut tx, bare.clone()).await.unwrap();
    tx.commit().await.unwrap();

    let published = recorder.wait_for(2, "the written events").await;
    assert_eq!(published, vec![written, bare]);
    relay.stop().await;
}

#[tokio::test]
async fn an_event_emitted_by_a_listener_carries_its_causation() {
    let Some(db) = TestDb::connect("an_event_emitted_by_a_listener_carries_its_causation").await
    else {
        return;
    };
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    let relay = db.relay(recorder.shared()).start().unwrap();

    let bus = EventBus::new();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    {
        let pool = db.pool.clone();
        let outbox = outbox.clone();
        bus.add_listener("order.paid", move |order: Arc<i64>, envelope: Envelope| {
            let (pool, outbox, sender) = (pool.clone(), outbox.clone(), sender.clone());
            async move {
                let mut tx = pool.begin().await.unwrap();
                let id = outbox.emit(&mut tx, "order.ship", &*order).await.unwrap();
                tx.commit().await.unwrap();
                sender.send((envelope.id().to_string(), id)).unwrap();
            }
        });
    }
    let report = bus.emit("order.paid", 7_i64).await;
    assert_eq!(report.delivered(), 1, "{report:?}");
    let (cause, id) = receiver.recv().await.unwrap();

    let published = recorder.wait_for(1, "the listener's event").await;
    assert_eq!(published[0].id, id);
    assert_eq!(published[0].extensions.get(CAUSATION), Some(&cause));
    relay.stop().await;
}

/// A listener of an event from a broker that came with a trace context writes the events
/// it emits to the outbox with that context: the relay publishes them with it.
#[tokio::test]
async fn an_event_emitted_by_a_listener_carries_its_trace_context() {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let Some(db) =
        TestDb::connect("an_event_emitted_by_a_listener_carries_its_trace_context").await
    else {
        return;
    };
    let outbox = db.outbox("shop");
    let recorder = Recorder::new();
    let relay = db.relay(recorder.shared()).start().unwrap();

    let broker = MemoryTransport::new();
    let bus = EventBus::builder()
        .service("billing")
        .transport(broker.clone())
        .distributed::<i64>()
        .build();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    {
        let pool = db.pool.clone();
        let outbox = outbox.clone();
        bus.add_listener("order.paid", move |order: Arc<i64>| {
            let (pool, outbox, sender) = (pool.clone(), outbox.clone(), sender.clone());
            async move {
                let mut tx = pool.begin().await.unwrap();
                let id = outbox.emit(&mut tx, "order.ship", &*order).await.unwrap();
                tx.commit().await.unwrap();
                sender.send(id).unwrap();
            }
        });
    }
    bus.ready().await.unwrap();
    let paid = WireEvent::new("paid-1", "payments", "order.paid", "7")
        .content_type("application/json")
        .extension(TRACEPARENT_NAME, TRACEPARENT)
        .extension(TRACESTATE_NAME, "vendor=opaque");
    broker.publish(paid).await.unwrap();
    let id = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
        .await
        .expect("the listener ran")
        .unwrap();

    let published = recorder.wait_for(1, "the listener's event").await;
    assert_eq!(published[0].id, id);
    let extension = |name| published[0].extensions.get(name).map(String::as_str);
    assert_eq!(extension(TRACEPARENT_NAME), Some(TRACEPARENT));
    assert_eq!(extension(TRACESTATE_NAME), Some("vendor=opaque"));
    relay.stop().await;
    bus.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_lag_counts_the_pending_rows_and_the_oldest() {
    let Some(db) = TestDb::connect("the_lag_counts_the_pending_rows_and_the_oldest").await else {
        return;
    };
    let outbox = db.outbox("shop");
    let empty = outbox.lag(&db.pool).await.unwrap();
    assert_eq!((empty.pending, empty.oldest), (0, None));

    let mut tx = db.pool.begin().await.unwrap();
    for n in 0..3 {
        outbox.emit(&mut tx, "order.placed", &n).await.unwrap();
    }
    // Not committed: not counted.
    assert_eq!(outbox.lag(&db.pool).await.unwrap().pending, 0);
    tx.commit().await.unwrap();
    let lag = outbox.lag(&db.pool).await.unwrap();
    assert_eq!(lag.pending, 3);
    assert!(lag.oldest.is_some(), "{lag:?}");

    let recorder = Recorder::new();
    let relay = db.relay(recorder.shared()).start().unwrap();
    recorder.wait_for(3, "the pending rows").await;
    db.wait_until_all_published("the pending rows").await;
    let lag = relay.lag().await.unwrap();
    assert_eq!((lag.pending, lag.oldest), (0, None));
    assert_eq!(relay.published(), 3);
    relay.stop().await;
}

#[tokio::test]
async fn emit_takes_a_transaction_or_a_connection() {
    let Some(db) = TestDb::connect("emit_takes_a_transaction_or_a_connection").await else {
        return;
    };
    let outbox = db.outbox("shop");
    let mut tx = db.pool.begin().await.unwrap();
    outbox.emit(&mut tx, "order.placed", &1).await.unwrap();
    let connection: &mut sqlx::PgConnection = &mut tx;
    outbox.emit(connection, "order.placed", &2).await.unwrap();
    tx.commit().await.unwrap();
    // Outside any transaction: committed at once.
    let mut conn = db.pool.acquire().await.unwrap();
    outbox.emit(&mut conn, "order.placed", &3).await.unwrap();
    assert_eq!(outbox.lag(&db.pool).await.unwrap().pending, 3);
}

#[tokio::test]
async fn the_schema_is_created_idempotently_and_concurrently() {
    let Some(db) = TestDb::connect("the_schema_is_created_idempotently_and_concurrently").await
    else {
        return;
    };
    // The tables exist (TestDb created them); a fresh prefix, created by four at once.
    let prefix = format!("{}again_", db.prefix);
    let creates = (0..4).map(|_| {
        let pool = db.pool.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move { Schema::new().prefix(prefix).create(&pool).await })
    });
    for create in creates {
        create.await.unwrap().unwrap();
    }
    Schema::new()
        .prefix(db.prefix.clone())
        .create(&db.pool)
        .await
        .unwrap();
    let outbox = Outbox::new("shop").prefix(&prefix);
    outbox
        .emit(&mut *db.conn().await, "order.placed", &1)
        .await
        .unwrap();
    assert_eq!(outbox.lag(&db.pool).await.unwrap().pending, 1);
    let claimed = db
        .inbox()
        .prefix(&prefix)
        .claim_id(&mut *db.conn().await, "billing", "shop", "1")
        .await
        .unwrap();
    assert!(claimed);
}

#[tokio::test]
async fn a_missing_table_is_an_error_naming_it() {
    let Some(db) = TestDb::connect("a_missing_table_is_an_error_naming_it").await else {
        return;
    };
    let outbox = Outbox::new("shop").prefix(&format!("{}missing_", db.prefix));
    let error = outbox
        .emit(&mut *db.conn().await, "order.placed", &1)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("missing_outbox"), "{message}");
    assert!(message.contains("order.placed"), "{message}");
    assert!(message.contains("Schema::create"), "{message}");
}

#[tokio::test]
async fn bad_events_and_prefixes_are_refused_before_any_write() {
    let Some(db) = TestDb::connect("bad_events_and_prefixes_are_refused_before_any_write").await
    else {
        return;
    };
    let outbox = db.outbox("shop");
    let mut tx = db.pool.begin().await.unwrap();
    let error = outbox.emit(&mut tx, "Bad Name", &1).await.unwrap_err();
    assert!(matches!(error, OutboxError::Invalid { .. }), "{error}");
    assert!(error.to_string().contains("`Bad Name`"), "{error}");

    let error = outbox
        .clone()
        .prefix("bad-")
        .emit(&mut tx, "order.placed", &1)
        .await
        .unwrap_err();
    assert!(matches!(error, OutboxError::Prefix { .. }), "{error}");

    let error = outbox
        .clone()
        .max_payload(4)
        .emit(&mut tx, "order.placed", "too long")
        .await
        .unwrap_err();
    assert!(matches!(error, OutboxError::Invalid { .. }), "{error}");

    // Nothing reached the database: the transaction is still usable.
    outbox.emit(&mut tx, "order.placed", &1).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.lag().await.pending, 1);
}

/// The migration file applies with sqlx's migrator and makes the tables the default
/// `Outbox` and `Inbox` use: in a schema of the test's own, so that the default names do not
/// meet another test's.
#[tokio::test]
async fn the_migration_creates_the_default_tables() {
    let Some(db) = TestDb::connect("the_migration_creates_the_default_tables").await else {
        return;
    };
    let schema = format!("{}schema", db.prefix);
    let mut conn = db.conn().await.detach();
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let migrated = async {
        sqlx::query(AssertSqlSafe(format!("SET search_path TO {schema}")))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::migrate!("./migrations").run(&mut conn).await.unwrap();
        // Twice: a migration already applied is not applied again.
        sqlx::migrate!("./migrations").run(&mut conn).await.unwrap();
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        Outbox::new("shop")
            .emit(&mut tx, "order.placed", &1)
            .await
            .unwrap();
        let claimed = bus_postgres::Inbox::new()
            .claim_id(&mut tx, "billing", "shop", "1")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM bus_outbox")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (claimed, pending)
    }
    .await;
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(migrated, (true, 1));
}
