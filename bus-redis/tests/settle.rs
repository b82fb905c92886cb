//! What the transport asks of Redis, counted on a private server: a publish is one plain
//! `XADD` once its name is registered (the Lua script only with a duplicate window); a nack
//! with a delay is one claim back once the delay is over, not a busy loop; a nack on the last
//! attempt is a dead letter and an ack.

mod common;

use std::time::Duration;

use bus_core::transport::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_REASON, SubscribeOptions, Transport, WireEvent,
    dead_letter_name,
};
use bus_redis::redis::{self, Value};
use common::{PrivateRedisServer, TestRedis, next};

/// The calls of `command` the server counted since the last `CONFIG RESETSTAT`.
async fn calls(redis: &TestRedis, command: &str) -> u64 {
    let mut conn = redis.connection();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Zeroes the server's command counts, for [`calls`].
async fn reset_stats(redis: &TestRedis) {
    let mut conn = redis.connection();
    let _: Value = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("CONFIG RESETSTAT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_one_xadd_and_the_script_only_with_a_duplicate_window() {
    let Some(server) = PrivateRedisServer::start("a_publish_is_one_xadd") else {
        return;
    };
    let Some(redis) = TestRedis::connect_to(&server.url(), "a_publish_is_one_xadd", |b| b).await
    else {
        return;
    };
    let event = |n: u32| WireEvent::new(format!("plain-{n}"), "s", "orders.paid", "{}");
    // The first publish of a name registers it (through the script).
    redis.publish(event(0)).await.expect("published");
    reset_stats(&redis).await;
    for n in 1..=10 {
        redis.publish(event(n)).await.expect("published");
    }
    assert_eq!(calls(&redis, "xadd").await, 10, "one XADD per publish");
    assert_eq!(
        calls(&redis, "evalsha").await,
        0,
        "no script once registered"
    );
    assert_eq!(
        calls(&redis, "set").await,
        0,
        "no duplicate marker by default"
    );

    let deduplicating = redis
        .another(|b| b.duplicate_window(Duration::from_secs(60)))
        .await;
    reset_stats(&redis).await;
    for n in 11..=20 {
        deduplicating.publish(event(n)).await.expect("published");
    }
    assert_eq!(
        calls(&redis, "evalsha").await,
        10,
        "with a duplicate window, every publish is the script"
    );
    assert_eq!(calls(&redis, "set").await, 10, "one duplicate marker each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_nack_is_one_claim_once_due_not_a_busy_loop() {
    let Some(server) = PrivateRedisServer::start("a_delayed_nack") else {
        return;
    };
    let Some(redis) = TestRedis::connect_to(&server.url(), "a_delayed_nack", |b| b).await else {
        return;
    };
    let options = SubscribeOptions::new("tasks.run")
        .group("workers")
        .max_deliveries(2);
    let mut letters = redis
        .subscribe(SubscribeOptions::new(dead_letter_name("tasks.run")))
        .await
        .expect("subscribed to the dead letters");
    let mut subscription = redis.subscribe(options).await.expect("subscribed");
    let event = WireEvent::new("task-1", "s", "tasks.run", "{}");
    redis.publish(event.clone()).await.expect("published");
    let first = next(&mut subscription, "the first delivery").await;
    assert_eq!(first.attempt(), 1);

    reset_stats(&redis).await;
    first
        .nack(Duration::from_millis(1500), "busy".to_owned())
        .await
        .expect("nacked");
    let second = next(&mut subscription, "the delivery after the delay").await;
    assert_eq!(second.event().id, event.id);
    assert_eq!(second.attempt(), 2);
    // One claim back; while waiting, a blocking read at most every claim interval (1 s) or so,
    // nowhere near a loop.
    assert_eq!(calls(&redis, "xclaim").await, 1);
    let reads = calls(&redis, "xreadgroup").await;
    assert!(reads <= 10, "{reads} reads while waiting out a nack delay");

    // The last allowed attempt nacked: dead-lettered with the reason, then acknowledged.
    second
        .nack(Duration::ZERO, "still busy".to_owned())
        .await
        .expect("nacked");
    let letter = next(&mut letters, "the dead letter").await;
    let reason = &letter.event().extensions[DEAD_LETTER_REASON];
    assert_eq!(reason, "still busy (after 2 deliveries)");
    assert_eq!(
        letter
            .event()
            .extensions
            .get(DEAD_LETTER_ATTEMPTS)
            .map(String::as_str),
        Some("2")
    );
    letter.ack().await.expect("acked");
    let mut conn = redis.connection();
    let summary: Value = redis::cmd("XPENDING")
        .arg(redis.stream_key("tasks.run"))
        .arg("workers")
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    let Value::Array(summary) = summary else {
        panic!("XPENDING summary: {summary:?}");
    };
    assert_eq!(
        summary.first(),
        Some(&Value::Int(0)),
        "the entry was not acked"
    );
}
