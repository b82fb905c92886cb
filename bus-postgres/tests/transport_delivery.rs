//! What the transport promises beyond the conformance suite, as a user sees it: no event is
//! skipped when transactions commit out of order, where a new group and a plain subscription
//! start, a group's durable position, nack delays, dead letters, the ack wait, refusals.

#[path = "common/pg_server.rs"]
mod pg_server;

use std::time::Duration;

use bus_core::transport::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_REASON, SubscribeOptions, Transport,
    TransportError, WireEvent, dead_letter_name,
};
use bus_postgres::PostgresTransport;
use bus_postgres::sqlx::{self, AssertSqlSafe};
use futures_util::StreamExt;
use pg_server::{TestPostgres, next, unique, within};

fn event(name: &str) -> WireEvent {
    WireEvent::new(format!("id-{}", unique()), "tests", name, "{}")
}

async fn publish(transport: &PostgresTransport, event: &WireEvent) {
    within("a publish", transport.publish(event.clone()))
        .await
        .unwrap_or_else(|error| panic!("publishing {}: {error}", event.id));
}

/// A sequence number is allocated before its transaction commits: an event of a transaction
/// still open has a smaller `seq` than one published after it and committed first. The group
/// must get both once the first commits, never skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_after_a_later_one_is_not_skipped() {
    let Some(pg) = TestPostgres::connect("out_of_order", |builder| builder).await else {
        return;
    };
    let name = format!("orders.{}", unique());
    let mut subscription = pg
        .subscribe(SubscribeOptions::new(&name).group("billing"))
        .await
        .expect("subscribed");
    // The slow transaction: its row gets the smaller seq, and stays invisible for a while.
    let mut slow = pg.pool.begin().await.expect("a transaction");
    let insert = format!(
        "INSERT INTO {}events (name, source, event_id, data) VALUES ($1, 'tests', 'slow', '')",
        pg.prefix
    );
    sqlx::query(AssertSqlSafe(insert))
        .bind(&name)
        .execute(&mut *slow)
        .await
        .expect("the slow insert");
    let fast = event(&name);
    publish(&pg, &fast).await;
    // The subscription polls while the slow transaction is open: it must not move past it
    // (the fast event may or may not be handed out meanwhile).
    let mut got = Vec::new();
    if let Ok(Some(item)) =
        tokio::time::timeout(Duration::from_millis(500), subscription.next()).await
    {
        let delivery = item.expect("a delivery");
        got.push(delivery.event().id.clone());
        delivery.ack().await.expect("acked");
    }
    slow.commit().await.expect("the slow commit");
    while got.len() < 2 {
        let delivery = next(&mut subscription, "both events").await;
        got.push(delivery.event().id.clone());
        delivery.ack().await.expect("acked");
    }
    got.sort();
    let mut expected = vec![fast.id.clone(), "slow".to_owned()];
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_at_its_first_subscription_and_keeps_its_position() {
    let Some(pg) = TestPostgres::connect("group_position", |builder| builder).await else {
        return;
    };
    let name = format!("orders.{}", unique());
    let before = event(&name);
    publish(&pg, &before).await;
    let options = SubscribeOptions::new(&name).group("billing");
    let mut first = pg.subscribe(options.clone()).await.expect("subscribed");
    let during = event(&name);
    publish(&pg, &during).await;
    let delivery = next(&mut first, "the event published after the group").await;
    assert_eq!(
        delivery.event().id,
        during.id,
        "not the one published before the group"
    );
    delivery.ack().await.expect("acked");
    drop(first);
    // Published while no instance of the group is subscribed: kept for the group.
    let meanwhile = event(&name);
    publish(&pg, &meanwhile).await;
    let other = pg.another(|builder| builder).await;
    let mut second = other.subscribe(options).await.expect("subscribed again");
    let delivery = next(&mut second, "the event published meanwhile").await;
    assert_eq!(
        (&delivery.event().id, delivery.attempt()),
        (&meanwhile.id, 1),
        "the group resumes where it stood"
    );
    delivery.ack().await.expect("acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subscription_gets_what_is_published_after_it() {
    let Some(pg) = TestPostgres::connect("plain_start", |builder| builder).await else {
        return;
    };
    let name = format!("orders.{}", unique());
    publish(&pg, &event(&name)).await;
    let mut subscription = pg
        .subscribe(SubscribeOptions::new(&name))
        .await
        .expect("subscribed");
    let after = event(&name);
    publish(&pg, &after).await;
    let delivery = next(&mut subscription, "the event published after").await;
    assert_eq!(delivery.event().id, after.id);
    assert_eq!(delivery.event(), &after, "every attribute as published");
    delivery.ack().await.expect("acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_wait_their_delay_then_the_last_failure_dead_letters() {
    let Some(pg) = TestPostgres::connect("nack_dead_letter", |builder| {
        builder.poll_interval(Duration::from_millis(100))
    })
    .await
    else {
        return;
    };
    let name = format!("orders.{}", unique());
    let mut letters = pg
        .subscribe(SubscribeOptions::new(dead_letter_name(&name)))
        .await
        .expect("subscribed to the dead letters");
    let mut subscription = pg
        .subscribe(
            SubscribeOptions::new(&name)
                .group("billing")
                .max_deliveries(2),
        )
        .await
        .expect("subscribed");
    let poison = event(&name).extension("trace", "t-1");
    publish(&pg, &poison).await;
    let first = next(&mut subscription, "the first delivery").await;
    assert_eq!(first.attempt(), 1);
    first
        .nack(Duration::from_millis(200), "not yet".into())
        .await
        .expect("nacked");
    let second = next(&mut subscription, "the redelivery").await;
    assert_eq!((&second.event().id, second.attempt()), (&poison.id, 2));
    second
        .nack(Duration::ZERO, "still failing".into())
        .await
        .expect("nacked");
    let letter = next(&mut letters, "the dead letter").await;
    let dead = letter.event();
    assert_eq!(dead.ty, dead_letter_name(&name));
    assert_eq!(dead.id, format!("{}.dead.billing", poison.id));
    assert_eq!(dead.extensions["trace"], "t-1");
    assert_eq!(dead.extensions[DEAD_LETTER_GROUP], "billing");
    assert_eq!(dead.extensions[DEAD_LETTER_ATTEMPTS], "2");
    assert_eq!(dead.extensions[DEAD_LETTER_REASON], "still failing");
    letter.ack().await.expect("acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_delivery_comes_back_after_the_ack_wait() {
    let Some(pg) = TestPostgres::connect("ack_wait", |builder| {
        builder.poll_interval(Duration::from_millis(100))
    })
    .await
    else {
        return;
    };
    let name = format!("orders.{}", unique());
    let options = SubscribeOptions::new(&name)
        .group("billing")
        .ack_wait(Duration::from_secs(1));
    let mut hung = pg.subscribe(options.clone()).await.expect("subscribed");
    let other = pg
        .another(|builder| builder.poll_interval(Duration::from_millis(100)))
        .await;
    let sent = event(&name);
    publish(&pg, &sent).await;
    let held = next(&mut hung, "the first delivery").await;
    assert_eq!(held.event().id, sent.id);
    // A hung consumer: the delivery is never settled, the subscription never read again.
    std::mem::forget(held);
    let mut survivor = other.subscribe(options).await.expect("subscribed");
    let again = next(&mut survivor, "the event after the ack wait").await;
    assert_eq!((&again.event().id, again.attempt()), (&sent.id, 2));
    again.ack().await.expect("acked");
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_dropped_and_counted() {
    let Some(pg) = TestPostgres::connect("duplicates", |builder| builder).await else {
        return;
    };
    let name = format!("orders.{}", unique());
    let mut subscription = pg
        .subscribe(SubscribeOptions::new(&name))
        .await
        .expect("subscribed");
    let twice = event(&name);
    publish(&pg, &twice).await;
    publish(&pg, &twice).await;
    assert_eq!(pg.duplicates_dropped(), 1);
    let after = event(&name);
    publish(&pg, &after).await;
    for expected in [&twice, &after] {
        let delivery = next(&mut subscription, "the events, once each").await;
        assert_eq!(
            delivery.event().id,
            expected.id,
            "in order, the duplicate dropped"
        );
        delivery.ack().await.expect("acked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_what_is_wrong() {
    let Some(pg) = TestPostgres::connect("refusals", |builder| builder).await else {
        return;
    };
    let name = format!("orders.{}", unique());
    drop(
        pg.subscribe(SubscribeOptions::new(&name).group("g"))
            .await
            .expect("subscribed"),
    );
    let Err(error) = pg
        .subscribe(SubscribeOptions::new(format!("{name}.>")).group("g"))
        .await
    else {
        panic!("a group with another pattern is refused");
    };
    assert!(
        matches!(error, TransportError::Invalid { what: "group", .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&name), "{error}");
    let Err(error) = pg.subscribe(SubscribeOptions::new("orders.>.x")).await else {
        panic!("a bad pattern is refused");
    };
    assert!(
        matches!(
            error,
            TransportError::Invalid {
                what: "pattern",
                ..
            }
        ),
        "{error}"
    );
    let error = PostgresTransport::builder(pg.pool.clone())
        .table_prefix("Bad;prefix")
        .connect()
        .await
        .expect_err("a bad prefix is refused");
    assert!(
        matches!(
            error,
            TransportError::Invalid {
                what: "table prefix",
                ..
            }
        ),
        "{error}"
    );
    let error = pg
        .publish(WireEvent::new("", "tests", &name, "{}"))
        .await
        .expect_err("an event without id is refused");
    assert!(matches!(error, TransportError::Invalid { .. }), "{error}");
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_such() {
    let error = PostgresTransport::builder("postgres://postgres@127.0.0.1:1/test")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        matches!(error, TransportError::Unreachable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
}

/// A delivery dropped unsettled and a closed subscription are handed back in the background;
/// `flush` waits for both, so that a process exiting right after loses neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_the_hand_backs() {
    let Some(pg) = TestPostgres::connect("flush", |builder| builder).await else {
        return;
    };
    let name = format!("orders.{}", unique());
    let mut group = pg
        .subscribe(SubscribeOptions::new(&name).group("billing"))
        .await
        .expect("subscribed");
    let plain = pg
        .subscribe(SubscribeOptions::new(&name))
        .await
        .expect("subscribed");
    publish(&pg, &event(&name)).await;
    let delivery = next(&mut group, "the event").await;
    drop(delivery);
    drop(plain);
    within("flush", pg.flush()).await;
    let held: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}deliveries WHERE claimed_by IS NOT NULL",
        pg.prefix
    )))
    .fetch_one(&pg.pool)
    .await
    .expect("the count");
    assert_eq!(
        held, 0,
        "the dropped delivery was handed back before flush resolved"
    );
    let plains: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}groups WHERE plain",
        pg.prefix
    )))
    .fetch_one(&pg.pool)
    .await
    .expect("the count");
    assert_eq!(
        plains, 0,
        "the closed subscription's row was removed before flush resolved"
    );
    let again = next(&mut group, "the event handed back").await;
    assert_eq!(again.attempt(), 2);
    again.ack().await.expect("acked");
}

/// A transport made from a URL opens a pool of its own, and reads what a transport on another
/// pool of the same prefix publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_from_a_url_shares_the_tables_of_its_prefix() {
    let Some(pg) = TestPostgres::connect("from_url", |builder| builder).await else {
        return;
    };
    let from_url = PostgresTransport::builder(pg.url.as_str())
        .table_prefix(pg.prefix.clone())
        .max_connections(2)
        .connect()
        .await
        .expect("connected from the URL");
    assert_eq!(from_url.table_prefix(), pg.prefix);
    let name = format!("orders.{}", unique());
    let mut subscription = from_url
        .subscribe(SubscribeOptions::new(&name).group("g"))
        .await
        .expect("subscribed");
    let sent = event(&name);
    publish(&pg, &sent).await;
    let delivery = next(&mut subscription, "the event").await;
    assert_eq!(delivery.event().id, sent.id);
    delivery.ack().await.expect("acked");
}

/// A subscription outside any group whose process died leaves its row behind; another
/// transport removes it once it has not been renewed within its time to live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_process_s_plain_subscription_is_removed() {
    let Some(pg) = TestPostgres::connect("plain_expiry", |builder| builder).await else {
        return;
    };
    // What a crashed process leaves: a plain row past its `expires_at`.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}groups (name, pattern, regex, horizon, plain, expires_at)
         VALUES ('subscription-dead-0', 'a', '^a$', pg_current_xact_id(), true,
                 now() - interval '1 minute')",
        pg.prefix
    )))
    .execute(&pg.pool)
    .await
    .expect("the stale row");
    // A subscription starts the transport's heartbeat, which removes expired rows at once.
    let _alive = pg
        .subscribe(SubscribeOptions::new(format!("orders.{}", unique())))
        .await
        .expect("subscribed");
    let deadline = tokio::time::Instant::now() + pg_server::PATIENCE;
    loop {
        let names: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT name FROM {}groups WHERE plain ORDER BY name",
            pg.prefix
        )))
        .fetch_all(&pg.pool)
        .await
        .expect("the rows");
        if names.len() == 1 && !names.contains(&"subscription-dead-0".to_owned()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale row is still there: {names:?}"
        );
        // A poll of the table for the heartbeat's work, bounded by the deadline above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A subscription whose row was removed under it (an operator, or an expiry while its process
/// stalled) registers again and gets what is published from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_row_was_removed_registers_again() {
    let Some(pg) = TestPostgres::connect("registers_again", |builder| {
        builder.poll_interval(Duration::from_millis(50))
    })
    .await
    else {
        return;
    };
    let name = format!("orders.{}", unique());
    let mut subscription = pg
        .subscribe(SubscribeOptions::new(&name).group("billing"))
        .await
        .expect("subscribed");
    let removed = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {}groups WHERE name = 'billing'",
        pg.prefix
    )))
    .execute(&pg.pool)
    .await
    .expect("the delete");
    assert_eq!(removed.rows_affected(), 1);
    let deadline = tokio::time::Instant::now() + pg_server::PATIENCE;
    loop {
        let present: bool = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {}groups WHERE name = 'billing')",
            pg.prefix
        )))
        .fetch_one(&pg.pool)
        .await
        .expect("the row");
        if present {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not registered again"
        );
        // Polling drives the stream: take the next item briefly, then look again.
        let _ = tokio::time::timeout(Duration::from_millis(50), subscription.next()).await;
    }
    let sent = event(&name);
    publish(&pg, &sent).await;
    let delivery = next(&mut subscription, "the event after the new registration").await;
    assert_eq!(delivery.event().id, sent.id);
    delivery.ack().await.expect("acked");
}

/// An ack settles the delivery for good whether or not it waits for the WAL flush
/// (`ack_sync`); the unit tests of `transport::sql` check the setting each statement makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_settles_with_and_without_ack_sync() {
    for ack_sync in [false, true] {
        let Some(pg) =
            TestPostgres::connect("ack_sync", |builder| builder.ack_sync(ack_sync)).await
        else {
            return;
        };
        let name = format!("orders.{}", unique());
        let mut subscription = pg
            .subscribe(SubscribeOptions::new(&name).group("billing"))
            .await
            .expect("subscribed");
        let sent = event(&name);
        publish(&pg, &sent).await;
        let delivery = next(&mut subscription, "the event").await;
        assert_eq!(delivery.event().id, sent.id);
        delivery.ack().await.expect("acked");
        let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}deliveries",
            pg.prefix
        )))
        .fetch_one(&pg.pool)
        .await
        .expect("the records left");
        assert_eq!(left, 0, "ack_sync({ack_sync}): the ack deleted the record");
    }
}
