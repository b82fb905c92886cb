//! Consumer groups on the shared server: slow consumers with frequent claims, fan-out without a
//! group, the own pending entries re-read by the next life of an instance, the claim of what a
//! hung consumer holds, and a group's stats where Redis cannot count its lag.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus_core::transport::{GroupStats, SubscribeOptions, Transport, WireEvent};
use bus_redis::redis::{self, Value};
use common::{PATIENCE, TestRedis, assert_next_is, assert_quiet, next, publish_probe, unique};
use futures_util::StreamExt;
use tokio::task::JoinSet;

/// 20 consumers of one group, each on its own connection, each slow (a pause per event as
/// its work), with a claim every 20 ms: every entry is handled once (as a first attempt), and
/// the group has nothing pending at the end: each entry was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_with_frequent_claims_handle_each_entry_once() {
    const CONSUMERS: usize = 20;
    const EVENTS: usize = 200;
    let Some(redis) = TestRedis::connect("slow_consumers", |b| b).await else {
        return;
    };
    let group = format!("slow-{}", unique());
    let options = SubscribeOptions::new("jobs.created")
        .group(&group)
        .ack_wait(Duration::from_secs(10));
    let handled: Arc<Mutex<Vec<(String, u32, usize)>>> = Arc::default();
    let mut consumers = JoinSet::new();
    let mut connections = Vec::new();
    for consumer in 0..CONSUMERS {
        let connection = redis
            .another(|b| b.claim_interval(Duration::from_millis(20)))
            .await;
        let mut subscription = connection
            .subscribe(options.clone())
            .await
            .expect("subscribed");
        connections.push(connection);
        let handled = Arc::clone(&handled);
        consumers.spawn(async move {
            while let Some(delivery) = subscription.next().await {
                let delivery = delivery.expect("a delivery");
                // The work of a slow consumer.
                tokio::time::sleep(Duration::from_millis(25)).await;
                let id = delivery.event().id.clone();
                let attempt = delivery.attempt();
                delivery.ack().await.expect("acked");
                handled
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((id, attempt, consumer));
            }
        });
    }
    let events: Vec<WireEvent> = (0..EVENTS)
        .map(|n| WireEvent::new(format!("job-{n}-{}", unique()), "s", "jobs.created", "{}"))
        .collect();
    for event in &events {
        redis.publish(event.clone()).await.expect("published");
    }
    common::eventually("every event handled", || {
        let count = handled.lock().unwrap_or_else(PoisonError::into_inner).len();
        async move { count >= EVENTS }
    })
    .await;
    consumers.abort_all();
    let handled = handled
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut times: HashMap<&str, usize> = HashMap::new();
    for (id, attempt, _) in &handled {
        *times.entry(id.as_str()).or_default() += 1;
        assert_eq!(
            *attempt, 1,
            "{id} was delivered again: claimed from a live consumer"
        );
    }
    for event in &events {
        assert_eq!(
            times.get(event.id.as_str()),
            Some(&1),
            "{} not handled once",
            event.id
        );
    }
    let busy: HashSet<usize> = handled.iter().map(|(_, _, consumer)| *consumer).collect();
    assert!(busy.len() > 1, "the group spread the work: {busy:?}");
    let mut conn = redis.connection();
    let summary: Value = redis::cmd("XPENDING")
        .arg(redis.stream_key("jobs.created"))
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
        "entries left pending"
    );
}

/// Subscriptions outside any group, on three connections: each gets every event, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_group_every_subscription_gets_every_event() {
    let Some(redis) = TestRedis::connect("fan_out_without_group", |b| b).await else {
        return;
    };
    let mut subscriptions = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..3 {
        let connection = redis.another(|b| b).await;
        subscriptions.push(
            connection
                .subscribe(SubscribeOptions::new("news.*"))
                .await
                .expect("subscribed"),
        );
        connections.push(connection);
    }
    let events: Vec<WireEvent> = (0..50)
        .map(|n| {
            let name = if n % 2 == 0 { "news.eu" } else { "news.us" };
            WireEvent::new(format!("news-{n}-{}", unique()), "s", name, "{}")
        })
        .collect();
    for event in &events {
        redis.publish(event.clone()).await.expect("published");
    }
    let expected: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    for (index, subscription) in subscriptions.iter_mut().enumerate() {
        let mut got = HashSet::new();
        while got.len() < expected.len() {
            let delivery = next(subscription, "the next event").await;
            assert_eq!(delivery.attempt(), 1);
            assert!(
                got.insert(delivery.event().id.clone()),
                "subscription {index} got {} twice",
                delivery.event().id
            );
            delivery.ack().await.expect("acked");
        }
        assert_eq!(got, expected);
        assert_quiet(subscription, &format!("subscription {index}")).await;
    }
    // Each was alive all along: a probe published now is the next delivery of each.
    let probe = publish_probe(&redis.transport, "news.eu").await;
    for (index, subscription) in subscriptions.iter_mut().enumerate() {
        assert_next_is(subscription, &probe, &format!("subscription {index}")).await;
    }
}

/// An instance dies holding a delivery, its subscription never closed (leaked, as a killed
/// process leaves it); its next life, with the same instance name, first re-reads what was
/// pending on it, long before the ack wait would give it to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_rereads_its_own_pending_entries() {
    let Some(redis) = TestRedis::connect("own_pending", |b| b).await else {
        return;
    };
    let instance = format!("svc-{}", unique());
    let options = SubscribeOptions::new("mail.send")
        .group(format!("mailer-{}", unique()))
        .ack_wait(Duration::from_secs(3600));
    let first_life = redis.another(|b| b.instance_name(&instance)).await;
    let mut subscription = first_life
        .subscribe(options.clone())
        .await
        .expect("subscribed");
    let event = WireEvent::new(format!("mail-{}", unique()), "s", "mail.send", "{}");
    redis.publish(event.clone()).await.expect("published");
    let delivery = next(&mut subscription, "the first delivery").await;
    assert_eq!(delivery.event().id, event.id);
    // The process dies: nothing is settled, nothing is closed.
    std::mem::forget(delivery);
    std::mem::forget(subscription);
    drop(first_life);

    let second_life = redis.another(|b| b.instance_name(&instance)).await;
    let mut subscription = second_life.subscribe(options).await.expect("subscribed");
    let again = next(&mut subscription, "the pending entry, re-read").await;
    assert_eq!(again.event().id, event.id);
    assert_eq!(again.attempt(), 2);
    again.ack().await.expect("acked");
}

/// A consumer hangs holding a delivery (its subscription open, never read again): once the ack
/// wait has passed, a live consumer claims the entry with `XAUTOCLAIM`, as another attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_consumers_entry_is_claimed_after_the_ack_wait() {
    let Some(redis) = TestRedis::connect("hung_consumer", |b| b).await else {
        return;
    };
    let options = SubscribeOptions::new("pay.capture")
        .group(format!("payments-{}", unique()))
        .ack_wait(Duration::from_millis(500));
    let hung = redis.another(|b| b).await;
    let mut stuck = hung.subscribe(options.clone()).await.expect("subscribed");
    let event = WireEvent::new(format!("pay-{}", unique()), "s", "pay.capture", "{}");
    redis.publish(event.clone()).await.expect("published");
    let delivery = next(&mut stuck, "the first delivery").await;
    std::mem::forget(delivery);

    let live = redis
        .another(|b| b.claim_interval(Duration::from_millis(100)))
        .await;
    let mut subscription = live.subscribe(options).await.expect("subscribed");
    let again = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("claimed within the patience")
        .expect("open")
        .expect("a delivery");
    assert_eq!(again.event().id, event.id);
    assert_eq!(again.attempt(), 2);
    again.ack().await.expect("acked");
    drop(stuck);
}

/// A subscription that closes holding a delivery hands it back to the group at once (claimed
/// by the next member's first claim, long before the ack wait), and its consumer is removed
/// once nothing is pending on it: closed subscriptions leave no consumers behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_subscription_hands_back_and_leaves_no_consumer() {
    let Some(redis) = TestRedis::connect("closed_subscription", |b| {
        b.claim_interval(Duration::from_millis(100))
    })
    .await
    else {
        return;
    };
    let group = format!("closing-{}", unique());
    let options = SubscribeOptions::new("cart.updated")
        .group(&group)
        .ack_wait(Duration::from_secs(3600));
    let mut first = redis.subscribe(options.clone()).await.expect("subscribed");
    let event = WireEvent::new(format!("cart-{}", unique()), "s", "cart.updated", "{}");
    redis.publish(event.clone()).await.expect("published");
    let held = next(&mut first, "the first delivery").await;
    drop(first);
    std::mem::forget(held); // the process died with it: only the subscription's close counts

    let other = redis
        .another(|b| b.claim_interval(Duration::from_millis(100)))
        .await;
    let mut second = other.subscribe(options).await.expect("subscribed");
    let again = next(&mut second, "the handed-back entry").await;
    assert_eq!(again.event().id, event.id);
    assert_eq!(again.attempt(), 2);
    again.ack().await.expect("acked");
    drop(second);

    let key = redis.stream_key("cart.updated");
    common::eventually("every consumer removed", || {
        let mut conn = redis.connection();
        let (key, group) = (key.clone(), group.clone());
        async move {
            let consumers: Vec<Value> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&key)
                .arg(&group)
                .query_async(&mut conn)
                .await
                .expect("XINFO CONSUMERS");
            consumers.is_empty()
        }
    })
    .await;
}

/// The `lag` of group `group` on stream `key`, as `XINFO GROUPS` gives it (`None`: nil).
async fn redis_lag(redis: &TestRedis, key: &str, group: &str) -> Option<i64> {
    let mut conn = redis.connection();
    let groups: Vec<Vec<Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("XINFO GROUPS");
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => format!("{other:?}"),
    };
    let fields = groups
        .iter()
        .find(|fields| {
            fields
                .chunks(2)
                .any(|pair| text(&pair[0]) == "name" && text(&pair[1]) == group)
        })
        .expect("the group on the stream");
    match fields.chunks(2).find(|pair| text(&pair[0]) == "lag") {
        Some([_, Value::Int(lag)]) => Some(*lag),
        _ => None,
    }
}

/// A group's stats where Redis cannot count the lag: a group created on a stream with history
/// has a nil `lag` until it reads the stream's last entry, and so has one with an entry deleted
/// past it; the transport counts those entries itself. A stream of the pattern the group is not
/// on yet counts its entries since the group's start; one of another name counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_stats_count_the_lag_redis_leaves_nil() {
    let Some(redis) = TestRedis::connect("group_stats_nil_lag", |b| b).await else {
        return;
    };
    let event = |name: &str| WireEvent::new(format!("stats-{}", unique()), "s", name, "{}");
    for _ in 0..2 {
        redis.publish(event("hist.a")).await.expect("history");
    }
    // The group's start is a millisecond: past the history's.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let group = format!("stats-{}", unique());
    let options = SubscribeOptions::new("hist.*")
        .group(&group)
        .ack_wait(Duration::from_secs(3600));
    drop(redis.subscribe(options.clone()).await.expect("subscribed"));
    for name in ["hist.a", "hist.a", "hist.a", "hist.b", "hist.b", "other.x"] {
        redis.publish(event(name)).await.expect("published");
    }
    let key = redis.stream_key("hist.a");
    assert_eq!(
        redis_lag(&redis, &key, &group).await,
        None,
        "Redis's lag is nil"
    );
    let stats = redis.group_stats(&options).await.expect("group_stats");
    // 3 on hist.a past the group's position, 2 on hist.b since the group's start.
    assert_eq!(stats, Some(GroupStats::new(5, 0)));

    // An entry deleted past the group's position no longer counts.
    let mut conn = redis.connection();
    let last: Value = redis::cmd("XREVRANGE")
        .arg(&key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("XREVRANGE");
    let Value::Array(entries) = last else {
        panic!("XREVRANGE: {last:?}");
    };
    let Some(Value::Array(entry)) = entries.first() else {
        panic!("no entry: {entries:?}");
    };
    let Some(Value::BulkString(deleted_id)) = entry.first() else {
        panic!("no id: {entry:?}");
    };
    let _: i64 = redis::cmd("XDEL")
        .arg(&key)
        .arg(deleted_id.as_slice())
        .query_async(&mut conn)
        .await
        .expect("XDEL");
    let stats = redis.group_stats(&options).await.expect("group_stats");
    assert_eq!(stats, Some(GroupStats::new(4, 0)));

    // A member holds one: pending; acked, all of them: nothing left.
    let member = redis.another(|b| b).await;
    let mut subscription = member.subscribe(options.clone()).await.expect("subscribed");
    let held = next(&mut subscription, "the first event").await;
    common::eventually("one held, pending", || {
        let (redis, options) = (&redis, &options);
        async move {
            let stats = redis.group_stats(options).await.expect("group_stats");
            stats.is_some_and(|stats| stats.pending >= 1 && stats.lag + stats.pending == 4)
        }
    })
    .await;
    held.ack().await.expect("acked");
    for n in 1..4 {
        let delivery = next(&mut subscription, &format!("event {n} more")).await;
        assert_ne!(delivery.event().ty, "other.x");
        delivery.ack().await.expect("acked");
    }
    common::eventually("nothing left", || {
        let (redis, options) = (&redis, &options);
        async move {
            let stats = redis.group_stats(options).await.expect("group_stats");
            stats == Some(GroupStats::new(0, 0))
        }
    })
    .await;
    let unknown = SubscribeOptions::new("hist.*").group(format!("never-{}", unique()));
    assert_eq!(
        redis.group_stats(&unknown).await.expect("group_stats"),
        None
    );
    drop(subscription);
}
