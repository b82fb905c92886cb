//! What Redis leaves to the library: a group that vanished (`FLUSHALL`, on a private server),
//! garbage written by another client, entries trimmed while pending, a restart with
//! `appendonly yes`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bus_core::transport::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_OF, DEAD_LETTER_REASON, SubscribeOptions,
    Transport, WireEvent, dead_letter_name,
};
use bus_redis::Retention;
use bus_redis::redis::{self, Value};
use common::{PATIENCE, PrivateRedisServer, TestRedis, next, unique};
use futures_util::StreamExt;

/// `FLUSHALL` on a private server takes the group (and the streams) away under a live
/// subscription: it logs, creates the group again, and the events published after reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_group_is_created_again() {
    let Some(server) = PrivateRedisServer::start("a_flushed_group") else {
        return;
    };
    let Some(redis) = TestRedis::connect_to(&server.url(), "a_flushed_group", |b| {
        b.claim_interval(Duration::from_millis(100))
    })
    .await
    else {
        return;
    };
    let options = SubscribeOptions::new("orders.created").group("billing");
    let mut subscription = redis.subscribe(options).await.expect("subscribed");
    let before = WireEvent::new("before", "s", "orders.created", "{}");
    redis.publish(before.clone()).await.expect("published");
    let delivery = next(&mut subscription, "the event before the flush").await;
    assert_eq!(delivery.event().id, "before");
    delivery.ack().await.expect("acked");

    let mut conn = redis.connection();
    let _: Value = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL on the private server");
    let after = WireEvent::new("after", "s", "orders.created", "{}");
    redis.publish(after.clone()).await.expect("published");
    let delivery = next(&mut subscription, "the event after the flush").await;
    assert_eq!(delivery.event().id, "after");
    assert_eq!(delivery.attempt(), 1);
    delivery.ack().await.expect("acked");
    assert!(
        redis.groups_recreated() >= 1,
        "the recovery was not counted"
    );
}

/// Entries written with `XADD` by another client, with random fields, are dead-lettered by a
/// group's subscription with the decoding error as the reason, and acknowledged; the good
/// event after them is delivered; the subscription never yields the garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_entries_are_dead_lettered_with_the_reason() {
    let Some(redis) = TestRedis::connect("garbage_entries", |b| b).await else {
        return;
    };
    let group = format!("readers-{}", unique());
    let mut letters = redis
        .subscribe(SubscribeOptions::new(dead_letter_name("inbox.raw")))
        .await
        .expect("subscribed to the dead letters");
    let mut subscription = redis
        .subscribe(SubscribeOptions::new("inbox.raw").group(&group))
        .await
        .expect("subscribed");
    let key = redis.stream_key("inbox.raw");
    let mut conn = redis.connection();
    let _: Value = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("foo")
        .arg("bar")
        .arg("data")
        .arg("payload")
        .query_async(&mut conn)
        .await
        .expect("XADD garbage");
    let _: Value = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("ce-specversion")
        .arg("1.0")
        .arg("ce-id")
        .arg("bin-1")
        .arg("ce-source")
        .arg(&[0xff_u8, 0xfe][..])
        .arg("ce-type")
        .arg("inbox.raw")
        .query_async(&mut conn)
        .await
        .expect("XADD binary garbage");
    let good = WireEvent::new(format!("good-{}", unique()), "s", "inbox.raw", "{}");
    redis.publish(good.clone()).await.expect("published");

    let delivery = next(&mut subscription, "the good event").await;
    assert_eq!(delivery.event().id, good.id, "garbage was handed out");
    delivery.ack().await.expect("acked");

    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let letter = next(&mut letters, "the dead letters of the garbage").await;
        let event = letter.event().clone();
        assert_eq!(event.ty, dead_letter_name("inbox.raw"));
        assert_eq!(event.extensions.get(DEAD_LETTER_GROUP), Some(&group));
        assert_eq!(
            event
                .extensions
                .get(DEAD_LETTER_ATTEMPTS)
                .map(String::as_str),
            Some("1")
        );
        let reason = event.extensions[DEAD_LETTER_REASON].clone();
        if event.extensions[DEAD_LETTER_OF] == "bin-1" {
            assert!(reason.contains("not UTF-8"), "{reason}");
        } else {
            assert!(reason.contains("specversion"), "{reason}");
            assert_eq!(event.data.as_ref(), b"payload", "the payload was not kept");
        }
        reasons.push(reason);
        letter.ack().await.expect("acked");
    }
    let what = "the group after the garbage";
    common::assert_quiet(&mut subscription, what).await;
    let summary: Value = redis::cmd("XPENDING")
        .arg(&key)
        .arg(&group)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    let Value::Array(summary) = summary else {
        panic!("XPENDING summary: {summary:?}");
    };
    assert_eq!(
        summary.first(),
        Some(&Value::Int(0)),
        "garbage left pending"
    );
    assert!(redis.dead_lettered() >= 2);
    // The subscription was alive all along: a probe is its next delivery.
    let probe = common::publish_probe(&redis.transport, "inbox.raw").await;
    common::assert_next_is(&mut subscription, &probe, what).await;
}

/// An entry pending on a consumer that died is trimmed away by the retention before anyone
/// claims it: the claim finds it deleted, logs it and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_while_pending_are_reported() {
    let Some(redis) = TestRedis::connect("trimmed_while_pending", |b| {
        b.retention(Retention::MaxLen(10))
            .claim_interval(Duration::from_millis(50))
    })
    .await
    else {
        return;
    };
    let options = SubscribeOptions::new("metrics.tick")
        .group(format!("collector-{}", unique()))
        .ack_wait(Duration::from_millis(200));
    let mut subscription = redis.subscribe(options).await.expect("subscribed");
    redis
        .publish(WireEvent::new("first", "s", "metrics.tick", "{}"))
        .await
        .expect("published");
    let held = next(&mut subscription, "the first event").await;
    assert_eq!(held.event().id, "first");
    // Its consumer dies holding it.
    std::mem::forget(held);
    for n in 0..300 {
        redis
            .publish(WireEvent::new(
                format!("tick-{n}"),
                "s",
                "metrics.tick",
                "{}",
            ))
            .await
            .expect("published");
    }
    // Reading on (the ticks the retention kept) runs the claims.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while redis.trimmed_while_pending() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trimmed entry was never reported"
        );
        if let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_millis(100), subscription.next()).await
        {
            assert_ne!(delivery.event().id, "first", "a trimmed entry came back");
            delivery.ack().await.expect("acked");
        }
    }
    assert_eq!(redis.trimmed_while_pending(), 1);
}

/// A private `redis-server --appendonly yes --appendfsync always`, killed (SIGKILL) and started again between
/// publishes: what `XADD` acknowledged before survives, the group resumes, and what is
/// published after the restart arrives too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_appendonly_loses_nothing() {
    let Some(mut server) = PrivateRedisServer::start("a_restart") else {
        return;
    };
    let Some(redis) = TestRedis::connect_to(&server.url(), "a_restart", |b| b).await else {
        return;
    };
    let options = SubscribeOptions::new("ledger.>").group("auditors");
    let mut subscription = redis.subscribe(options).await.expect("subscribed");
    let before: Vec<WireEvent> = (0..100)
        .map(|n| WireEvent::new(format!("b-{n}"), "s", "ledger.entry", "{}"))
        .collect();
    for event in &before {
        redis.publish(event.clone()).await.expect("published");
    }
    tokio::task::block_in_place(|| server.restart());
    let after: Vec<WireEvent> = (0..100)
        .map(|n| WireEvent::new(format!("a-{n}"), "s", "ledger.entry", "{}"))
        .collect();
    for event in &after {
        redis
            .publish(event.clone())
            .await
            .expect("published after the restart");
    }
    let expected: HashSet<String> = before.iter().chain(&after).map(|e| e.id.clone()).collect();
    let mut got = HashSet::new();
    while got.len() < expected.len() {
        let delivery = next(&mut subscription, "every event, through the restart").await;
        let id = delivery.event().id.clone();
        assert!(expected.contains(&id), "unexpected {id}");
        delivery.ack().await.expect("acked");
        got.insert(id);
    }
    assert_eq!(
        redis.groups_recreated(),
        0,
        "the group did not survive the restart: the append-only file lost it"
    );
}
