//! The inbox: a claim is granted once per group and event, only if its transaction commits;
//! an event redelivered to a listener that claims it has one effect; old claims are cleaned.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::transport::MemoryTransport;
use bus_core::{Envelope, EventBus, Policy};
use bus_postgres::sqlx::{self, AssertSqlSafe};
use common::{PATIENCE, TestDb};
use serde::{Deserialize, Serialize};

#[tokio::test]
async fn a_claim_is_granted_once_per_group_and_only_when_committed() {
    let Some(db) =
        TestDb::connect("a_claim_is_granted_once_per_group_and_only_when_committed").await
    else {
        return;
    };
    let inbox = db.inbox();

    // Rolled back: not claimed.
    let mut tx = db.pool.begin().await.unwrap();
    assert!(
        inbox
            .claim_id(&mut tx, "billing", "shop", "e1")
            .await
            .unwrap()
    );
    tx.rollback().await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    assert!(
        inbox
            .claim_id(&mut tx, "billing", "shop", "e1")
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    assert!(
        !inbox
            .claim_id(&mut tx, "billing", "shop", "e1")
            .await
            .unwrap()
    );
    // Another group, another source: other claims.
    assert!(
        inbox
            .claim_id(&mut tx, "shipping", "shop", "e1")
            .await
            .unwrap()
    );
    assert!(
        inbox
            .claim_id(&mut tx, "billing", "legacy", "e1")
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_claim_waits_for_the_first_and_follows_its_outcome() {
    let Some(db) =
        TestDb::connect("a_concurrent_claim_waits_for_the_first_and_follows_its_outcome").await
    else {
        return;
    };
    for commit in [true, false] {
        let id = format!("e-{commit}");
        let inbox = db.inbox();
        let mut first = db.pool.begin().await.unwrap();
        assert!(
            inbox
                .claim_id(&mut first, "billing", "shop", &id)
                .await
                .unwrap()
        );
        let second = {
            let (pool, inbox, id) = (db.pool.clone(), inbox.clone(), id.clone());
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                let claimed = inbox
                    .claim_id(&mut tx, "billing", "shop", &id)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                claimed
            })
        };
        // The second claim waits on the first's row lock.
        let waiting = async {
            loop {
                let waiting: bool = sqlx::query_scalar(
                    "SELECT count(*) > 0 FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'
                       AND strpos(query, $1) > 0",
                )
                .bind(format!("{}inbox", db.prefix))
                .fetch_one(&db.pool)
                .await
                .unwrap();
                if waiting {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("the second claim waits for the first");
        if commit {
            first.commit().await.unwrap();
        } else {
            first.rollback().await.unwrap();
        }
        let claimed = tokio::time::timeout(PATIENCE, second)
            .await
            .expect("the second claim ends with the first")
            .unwrap();
        assert_eq!(claimed, !commit, "first committed: {commit}");
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PaymentReceived {
    order: i64,
}

/// What the listener saw: the envelope ids of its calls, and the claims it got.
#[derive(Debug, Default)]
struct Calls {
    ids: Vec<String>,
    claims: Vec<bool>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_has_one_effect() {
    let Some(db) = TestDb::connect("a_redelivered_event_has_one_effect").await else {
        return;
    };
    let effects = format!("{}effects", db.prefix);
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {effects} (order_id BIGINT NOT NULL)"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let insert = format!("INSERT INTO {effects} (order_id) VALUES ($1)");

    let transport = MemoryTransport::new();
    let bus = EventBus::builder()
        .service("billing")
        .transport(transport.clone())
        .distributed::<PaymentReceived>()
        .build();
    let calls = Arc::new(Mutex::new(Calls::default()));
    {
        let (pool, inbox, calls) = (db.pool.clone(), db.inbox(), Arc::clone(&calls));
        let insert: Arc<str> = Arc::from(insert);
        bus.on(
            "payment.received",
            move |payment: Arc<PaymentReceived>, envelope: Envelope| {
                let (pool, inbox, calls) = (pool.clone(), inbox.clone(), Arc::clone(&calls));
                let insert = Arc::clone(&insert);
                async move {
                    let mut tx = pool.begin().await?;
                    let first = inbox.claim(&mut tx, "billing", &envelope).await?;
                    if first {
                        sqlx::query(AssertSqlSafe(insert))
                            .bind(payment.order)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    let mut calls = calls.lock().unwrap();
                    calls.ids.push(envelope.id().to_string());
                    calls.claims.push(first);
                    if calls.ids.len() == 1 {
                        // Committed, then lost before the ack: the broker delivers it again.
                        return Err("the process died before its ack".into());
                    }
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                }
            },
        )
        .policy(Policy::new().retry(2).backoff(Duration::from_millis(10)))
        .add();
    }
    bus.ready().await.unwrap();
    let report = bus
        .emit("payment.received", PaymentReceived { order: 7 })
        .await;
    assert!(report.is_ok(), "{report:?}");

    let delivered_twice = async {
        while calls.lock().unwrap().ids.len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, delivered_twice)
        .await
        .expect("the event is delivered again after the failure");
    bus.drain().await;

    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.ids.len(), 2, "{calls:?}");
        assert_eq!(calls.ids[0], calls.ids[1], "the same event: {calls:?}");
        assert_eq!(calls.claims, [true, false]);
    }
    let rows: Vec<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT order_id FROM {effects}")))
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, [7], "one effect");
}

#[tokio::test]
async fn old_claims_are_cleaned_up() {
    let Some(db) = TestDb::connect("old_claims_are_cleaned_up").await else {
        return;
    };
    let inbox = db.inbox();
    for id in ["e1", "e2"] {
        assert!(
            inbox
                .claim_id(&mut *db.conn().await, "billing", "shop", id)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        inbox
            .cleanup(&db.pool, Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "nothing is an hour old"
    );
    assert!(
        !inbox
            .claim_id(&mut *db.conn().await, "billing", "shop", "e1")
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(inbox.cleanup(&db.pool, Duration::ZERO).await.unwrap(), 2);
    // Forgotten: claimed again.
    assert!(
        inbox
            .claim_id(&mut *db.conn().await, "billing", "shop", "e1")
            .await
            .unwrap()
    );
}
