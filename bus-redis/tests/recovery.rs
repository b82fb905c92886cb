//! What Redis leaves to the library: a group that vanished (`FLUSHALL`, on a private server),
//! garbage written by another client, entries trimmed while pending, a restart with
//! `appendonly yes`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bus_core::transport::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_OF, DEAD_LETTER_REASON,
    DEFAULT_MAX_PAYLOAD, SubscribeOptions, Transport, WireEvent, dead_letter_name,
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

/// The fields of an entry written by another client, every optional kind there is: a time, a
/// content type, the extensions `traceparent` and `causationid`, a custom one, a field that is
/// no CloudEvents attribute, the payload.
fn rich_fields(id: &str, ty: &str, specversion: &str) -> Vec<(String, String)> {
    [
        ("ce-specversion", specversion),
        ("ce-id", id),
        ("ce-source", "legacy-script"),
        ("ce-type", ty),
        ("ce-time", "2024-05-01T10:00:00.5Z"),
        ("content-type", "application/json"),
        (
            "ce-traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("ce-causationid", "order-0"),
        ("ce-tenant", "acme"),
        ("x-written-by", "nightly-import"),
        ("data", r#"{"order":7}"#),
    ]
    .into_iter()
    .map(|(field, value)| (field.to_owned(), value.to_owned()))
    .collect()
}

/// Entries that do not decode (spec version 0.3; a type that is not its stream's name) but
/// carry a time, a content type and extensions: each dead letter, read raw, keeps every field
/// of the entry as it was, but the four a dead letter sets (`ce-specversion`, `ce-id`,
/// `ce-source`, `ce-type`), and adds the reason, the group, the attempts and the original id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_of_an_entry_that_does_not_decode_keeps_every_field() {
    let Some(redis) = TestRedis::connect("dead_letter_keeps_every_field", |b| b).await else {
        return;
    };
    let group = format!("readers-{}", unique());
    let mut subscription = redis
        .subscribe(SubscribeOptions::new("inbox.kept").group(&group))
        .await
        .expect("subscribed");
    let key = redis.stream_key("inbox.kept");
    let mut conn = redis.connection();
    let old = format!("old-{}", unique());
    let liar = format!("liar-{}", unique());
    let entries = [
        (
            old.clone(),
            rich_fields(&old, "inbox.kept", "0.3"),
            "specversion `0.3`",
        ),
        (
            liar.clone(),
            rich_fields(&liar, "inbox.other", "1.0"),
            "does not match its stream",
        ),
    ];
    for (_, fields, _) in &entries {
        let mut command = redis::cmd("XADD");
        command.arg(&key).arg("*");
        for (field, value) in fields {
            command.arg(field).arg(value);
        }
        let _: Value = command.query_async(&mut conn).await.expect("XADD");
    }
    let good = WireEvent::new(format!("good-{}", unique()), "s", "inbox.kept", "{}");
    redis.publish(good.clone()).await.expect("published");
    let delivery = next(&mut subscription, "the good event").await;
    assert_eq!(
        delivery.event().id,
        good.id,
        "an entry that does not decode was handed out"
    );
    delivery.ack().await.expect("acked");

    // The entries come in order: both dead letters were stored before the good event came.
    let letters: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(redis.stream_key(&dead_letter_name("inbox.kept")))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    assert_eq!(letters.len(), 2, "{letters:#?}");
    for ((id, fields, says), (_, letter)) in entries.iter().zip(&letters) {
        let value = |name: &str| -> Vec<&str> {
            letter
                .iter()
                .filter(|(field, _)| field == name)
                .map(|(_, value)| value.as_str())
                .collect()
        };
        let replaced = ["ce-specversion", "ce-id", "ce-source", "ce-type"];
        for (field, original) in fields {
            if !replaced.contains(&field.as_str()) {
                assert_eq!(
                    value(field),
                    [original.as_str()],
                    "{field} of {id}: {letter:?}"
                );
            }
        }
        assert_eq!(value("ce-specversion"), ["1.0"]);
        assert_eq!(value("ce-id"), [format!("{id}.dead.{group}").as_str()]);
        assert_eq!(value("ce-source"), ["legacy-script"]);
        assert_eq!(value("ce-type"), ["dead-letter.inbox.kept"]);
        assert_eq!(value(&format!("ce-{DEAD_LETTER_OF}")), [id.as_str()]);
        assert_eq!(value(&format!("ce-{DEAD_LETTER_GROUP}")), [group.as_str()]);
        assert_eq!(value(&format!("ce-{DEAD_LETTER_ATTEMPTS}")), ["1"]);
        // Percent-encoded, as every value the bus writes.
        let reason: Vec<String> = value(&format!("ce-{DEAD_LETTER_REASON}"))
            .into_iter()
            .map(|reason| {
                bus_core::transport::decode_header_value(DEAD_LETTER_REASON, reason).unwrap()
            })
            .collect();
        assert!(
            reason.len() == 1 && reason[0].contains(says),
            "the reason of {id} does not say {says:?}: {reason:?}"
        );
        assert_eq!(letter.len(), fields.len() + 4, "{letter:?}");
    }
    // Such a dead letter decodes: a subscriber of the dead letters reads it whole.
    let (fields, data): (Vec<_>, Vec<_>) =
        letters[0].1.iter().partition(|(field, _)| field != "data");
    let letter = WireEvent::from_headers(
        fields
            .iter()
            .map(|(field, value)| (field.as_str(), value.as_str())),
        data.first()
            .map(|(_, data)| data.clone())
            .unwrap_or_default()
            .into(),
        DEFAULT_MAX_PAYLOAD,
    )
    .expect("the dead letter decodes");
    assert_eq!(letter.data.as_ref(), br#"{"order":7}"#);
    assert_eq!(letter.time.as_deref(), Some("2024-05-01T10:00:00.5Z"));
    assert_eq!(letter.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(letter.extensions["tenant"], "acme");
    assert_eq!(letter.extensions["causationid"], "order-0");
    assert!(letter.extensions.contains_key("traceparent"));
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
