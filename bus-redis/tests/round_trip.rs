//! Publish and subscribe on the shared server: what is stored, what comes back, what is refused.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bus_core::transport::{SubscribeOptions, Transport, TransportError, WireEvent};
use bus_redis::redis::{self, Value};
use bus_redis::{RedisTransport, Retention};
use common::{TestRedis, next, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stream_entries_with_cloudevents_fields() {
    let Some(redis) = TestRedis::connect("events_are_stream_entries", |b| b).await else {
        return;
    };
    let mut subscription = redis
        .subscribe(SubscribeOptions::new("orders.created"))
        .await
        .expect("subscribed");
    let event = WireEvent::new(format!("id-{}", unique()), "shop", "orders.created", "{}")
        .content_type("application/json")
        .extension("traceparent", "00-ab-cd-01")
        .extension("note", "line\nbreak, \"é\" 100%");
    redis.publish(event.clone()).await.expect("published");
    let delivery = next(&mut subscription, "the event").await;
    assert_eq!(delivery.event(), &event);
    assert_eq!(delivery.attempt(), 1);
    delivery.ack().await.expect("acked");

    // Stored as documented: one stream per name, attributes as fields, payload in `data`.
    let mut conn = redis.connection();
    let fields: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(redis.stream_key("orders.created"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    assert_eq!(fields.len(), 1);
    let stored = &fields[0].1;
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", event.id.as_str()),
        ("ce-source", "shop"),
        ("ce-type", "orders.created"),
        ("ce-datacontenttype", "application/json"),
        ("ce-traceparent", "00-ab-cd-01"),
        // Percent-encoded as the NATS binding's headers are.
        ("ce-note", "line%0Abreak,%20%22%C3%A9%22%20100%25"),
        ("data", "{}"),
    ] {
        assert!(
            stored.get(name).map(String::as_str) == Some(value),
            "field {name}={value} missing from {stored:?}"
        );
    }
    assert_eq!(
        redis.stream_key("orders.created"),
        format!("{}:stream:orders.created", redis.prefix)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_publish_of_an_id_is_dropped() {
    let Some(redis) = TestRedis::connect("a_second_publish_of_an_id", |b| {
        b.duplicate_window(Duration::from_secs(120))
    })
    .await
    else {
        return;
    };
    let event = WireEvent::new(format!("id-{}", unique()), "shop", "orders.paid", "{}");
    redis.publish(event.clone()).await.expect("first publish");
    redis.publish(event.clone()).await.expect("second publish");
    let mut conn = redis.connection();
    let length: u64 = redis::cmd("XLEN")
        .arg(redis.stream_key("orders.paid"))
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(length, 1, "the duplicate was stored");
    assert!(redis.capabilities().deduplicates);

    // With the duplicate window off (the default), both are stored, and the capability says
    // so.
    let loose = redis.another(|b| b).await;
    assert!(!loose.capabilities().deduplicates);
    loose.publish(event.clone()).await.expect("publish");
    let length: u64 = redis::cmd("XLEN")
        .arg(redis.stream_key("orders.paid"))
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(length, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_streams_approximately() {
    let Some(redis) =
        TestRedis::connect("retention_trims", |b| b.retention(Retention::MaxLen(10))).await
    else {
        return;
    };
    for n in 0..500 {
        redis
            .publish(WireEvent::new(format!("r-{n}"), "shop", "logs.line", "x"))
            .await
            .expect("published");
    }
    let mut conn = redis.connection();
    let length: u64 = redis::cmd("XLEN")
        .arg(redis.stream_key("logs.line"))
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert!(
        (10..500).contains(&length),
        "MAXLEN ~ 10 keeps at least 10 and trims whole nodes: {length}"
    );

    let by_age = redis
        .another(|b| b.retention(Retention::MaxAge(Duration::from_secs(3600))))
        .await;
    by_age
        .publish(WireEvent::new("aged", "shop", "logs.aged", "x"))
        .await
        .expect("published with MINID");
}

/// Redis trims by count or id, never by size: a byte limit is refused before connecting, not
/// ignored.
#[tokio::test]
async fn a_byte_retention_is_refused_at_connect() {
    let refused = RedisTransport::builder("redis://127.0.0.1:6379")
        .retention(Retention::MaxBytes(1 << 30))
        .connect()
        .await;
    match refused {
        Err(TransportError::Invalid {
            what: "retention",
            reason,
            ..
        }) => assert!(reason.contains("MaxLen"), "{reason}"),
        other => panic!("expected Invalid retention, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_refused_with_the_reason() {
    let Some(redis) = TestRedis::connect("invalid_input", |b| b).await else {
        return;
    };
    for pattern in ["", "a..b", "a.>.c", "a b"] {
        match redis.subscribe(SubscribeOptions::new(pattern)).await {
            Err(TransportError::Invalid {
                what: "pattern", ..
            }) => {}
            Err(other) => panic!("pattern `{pattern}`: {other}"),
            Ok(_) => panic!("pattern `{pattern}` accepted"),
        }
    }
    let refused = redis
        .publish(WireEvent::new("1", "s", "orders.*", "{}"))
        .await;
    assert!(matches!(
        refused,
        Err(TransportError::Invalid {
            what: "event name",
            ..
        })
    ));
    let refused = redis
        .publish(WireEvent::new("1", "s", "a.b", "").extension("Bad", "x"))
        .await;
    assert!(matches!(
        refused,
        Err(TransportError::Invalid { what: "event", .. })
    ));
    let group = format!("g-{}", unique());
    let _first = redis
        .subscribe(SubscribeOptions::new("a.*").group(&group))
        .await
        .expect("subscribed");
    match redis
        .subscribe(SubscribeOptions::new("b.*").group(&group))
        .await
    {
        Err(TransportError::Invalid {
            what: "group",
            reason,
            ..
        }) => {
            assert!(reason.contains("a.*"), "{reason}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a group took a second pattern"),
    }
    let bad_prefix = RedisTransport::builder(common::SHARED_URL)
        .key_prefix("a*b")
        .connect()
        .await;
    assert!(matches!(
        bad_prefix,
        Err(TransportError::Invalid {
            what: "key prefix",
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port");
    let error = RedisTransport::builder(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(error, TransportError::Unreachable { .. }),
        "{error}"
    );
    let source = std::error::Error::source(&error).expect("a source");
    assert!(
        source.downcast_ref::<bus_redis::RedisError>().is_some(),
        "{source}"
    );
    assert!(error.to_string().contains("redis-server"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_find_streams_created_before_and_after() {
    let Some(redis) = TestRedis::connect("patterns_find_streams", |b| b).await else {
        return;
    };
    // A stream that exists before the subscription, written by another client.
    let mut conn = redis.connection();
    let _: Value = redis::cmd("XADD")
        .arg(redis.stream_key("shop.eu.old"))
        .arg("*")
        .arg("note")
        .arg("before")
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let mut subscription = redis
        .subscribe(SubscribeOptions::new("shop.*.>"))
        .await
        .expect("subscribed");
    let old = WireEvent::new("old-1", "s", "shop.eu.old", "{}");
    let new = WireEvent::new("new-1", "s", "shop.us.new", "{}");
    let other = WireEvent::new("other-1", "s", "shop.us", "{}");
    for event in [&other, &old, &new] {
        redis.publish(event.clone()).await.expect("published");
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let delivery = next(&mut subscription, "the two matching events").await;
        got.push(delivery.event().id.clone());
        delivery.ack().await.expect("acked");
    }
    got.sort();
    assert_eq!(got, ["new-1", "old-1"]);
    let what = "shop.*.> after the two matching events";
    common::assert_nothing_more(&mut subscription, &redis.transport, "shop.us.new", what).await;
}

/// With the publish-side window off, an id published twice is stored twice; a group that
/// acknowledged the first drops (and acknowledges) the second: the next delivery is the event
/// published after both. With the consumer-side window off too, the second comes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_drop_an_id_their_group_acked() {
    let Some(redis) = TestRedis::connect("consumers_drop_an_id", |b| {
        b.duplicate_window(Duration::ZERO)
    })
    .await
    else {
        return;
    };
    for (acked_window, dropped) in [(Duration::from_secs(60), true), (Duration::ZERO, false)] {
        let connection = redis
            .another(|b| {
                b.duplicate_window(Duration::ZERO)
                    .acked_window(acked_window)
            })
            .await;
        let group = format!("g-{}", unique());
        let mut subscription = connection
            .subscribe(SubscribeOptions::new("audit.log").group(&group))
            .await
            .expect("subscribed");
        let twice = WireEvent::new(format!("twice-{}", unique()), "s", "audit.log", "{}");
        let after = WireEvent::new(format!("after-{}", unique()), "s", "audit.log", "{}");
        for event in [&twice, &twice, &after] {
            connection.publish(event.clone()).await.expect("published");
        }
        let first = next(&mut subscription, "the first copy").await;
        assert_eq!(first.event().id, twice.id);
        first.ack().await.expect("acked");
        let second = next(&mut subscription, "the next delivery").await;
        if dropped {
            assert_eq!(second.event().id, after.id, "the second copy was delivered");
            assert_eq!(connection.duplicates_dropped(), 1);
        } else {
            assert_eq!(second.event().id, twice.id, "the second copy was dropped");
            assert_eq!(connection.duplicates_dropped(), 0);
        }
        second.ack().await.expect("acked");
    }
}
