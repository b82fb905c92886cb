//! Settling in a group, counted on a private server: a nack with a delay is one claim back
//! once the delay is over, not a busy loop; a nack on the last attempt is a dead letter and an
//! ack.

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

    let mut conn = redis.connection();
    let _: Value = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("CONFIG RESETSTAT");
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
