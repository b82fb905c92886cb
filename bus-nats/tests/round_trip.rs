//! Publish → subscribe through JetStream: attributes and payload intact, the stored message's
//! headers, deduplication by id, and what is refused up front.

mod common;

use std::time::{Duration, SystemTime};

use bus_core::transport::{SubscribeOptions, Transport, TransportError, WireEvent};
use common::{TestNats, assert_next_is, assert_quiet, next, publish_probe, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_attributes_and_payload() {
    let Some(nats) = TestNats::connect("round_trip_keeps_attributes_and_payload", |b| b).await
    else {
        return;
    };
    let mut subscription = nats
        .subscribe(SubscribeOptions::new("orders.*.created"))
        .await
        .unwrap();
    let event = WireEvent::new(
        format!("id-{}", unique()),
        "checkout",
        "orders.eu.created",
        &b"{\"total\":42}"[..],
    )
    .at(SystemTime::now())
    .content_type("application/json")
    .extension("causationid", "id-0")
    .extension("traceparent", "00-abc-def-01")
    .extension("note", "line\nbreak, \"é\" 100%");
    nats.publish(event.clone()).await.unwrap();

    let delivery = next(&mut subscription, "the published event").await;
    assert_eq!(delivery.event(), &event);
    assert_eq!(delivery.attempt(), 1);
    delivery.ack().await.unwrap();

    // Stored as binary-mode CloudEvents headers, with the source and the id as Nats-Msg-Id.
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let stored = stream
        .get_last_raw_message_by_subject(&format!("{}.orders.eu.created", nats.prefix))
        .await
        .unwrap();
    let header = |name: &str| {
        stored
            .headers
            .get(name)
            .map(|value| value.as_str().to_owned())
    };
    assert_eq!(
        header("Nats-Msg-Id"),
        Some(format!("checkout:{}", event.id))
    );
    assert_eq!(header("ce-id"), Some(event.id.clone()));
    assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(header("ce-type").as_deref(), Some("orders.eu.created"));
    assert_eq!(header("ce-source").as_deref(), Some("checkout"));
    assert_eq!(
        header("ce-datacontenttype").as_deref(),
        Some("application/json")
    );
    assert_eq!(header("ce-causationid").as_deref(), Some("id-0"));
    // Percent-encoded as the CloudEvents NATS binding says (§3.1.3.2): a line break travels.
    assert_eq!(
        header("ce-note").as_deref(),
        Some("line%0Abreak,%20%22%C3%A9%22%20100%25")
    );
    assert_eq!(&stored.payload[..], b"{\"total\":42}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_select_by_subject() {
    let Some(nats) = TestNats::connect("patterns_select_by_subject", |b| b).await else {
        return;
    };
    let mut one_token = nats
        .subscribe(SubscribeOptions::new("orders.*"))
        .await
        .unwrap();
    let mut all = nats
        .subscribe(SubscribeOptions::new("orders.>"))
        .await
        .unwrap();
    for name in ["orders.created", "orders.eu.created", "users.created"] {
        nats.publish(WireEvent::new(unique(), "t", name, "{}"))
            .await
            .unwrap();
    }
    let got = next(&mut one_token, "orders.*").await;
    assert_eq!(got.event().ty, "orders.created");
    got.ack().await.unwrap();
    let mut names = Vec::new();
    for _ in 0..2 {
        let got = next(&mut all, "orders.>").await;
        names.push(got.event().ty.clone());
        got.ack().await.unwrap();
    }
    assert_eq!(names, ["orders.created", "orders.eu.created"]);
    // Nothing else matched, and both subscriptions are alive: a probe both match comes next.
    tokio::join!(
        assert_quiet(&mut one_token, "orders.*"),
        assert_quiet(&mut all, "orders.>"),
    );
    let probe = publish_probe(&nats.transport, "orders.probe").await;
    assert_next_is(&mut one_token, &probe, "orders.*").await;
    assert_next_is(&mut all, &probe, "orders.>").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_id_is_stored_once() {
    let Some(nats) = TestNats::connect("a_republished_id_is_stored_once", |b| b).await else {
        return;
    };
    let mut subscription = nats
        .subscribe(SubscribeOptions::new("dedup.>").group("g"))
        .await
        .unwrap();
    let event = WireEvent::new(format!("id-{}", unique()), "t", "dedup.event", "{}");
    nats.publish(event.clone()).await.unwrap();
    nats.publish(event.clone()).await.unwrap(); // acknowledged, and dropped as a duplicate
    let other = WireEvent::new(format!("id-{}", unique()), "t", "dedup.event", "{}");
    nats.publish(other.clone()).await.unwrap();

    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    assert_eq!(stream.get_info().await.unwrap().state.messages, 2);
    let first = next(&mut subscription, "the event").await;
    assert_eq!(first.event().id, event.id);
    first.ack().await.unwrap();
    let second = next(&mut subscription, "the other event").await;
    assert_eq!(
        second.event().id,
        other.id,
        "the duplicate was not delivered"
    );
    second.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_invalid() {
    let Some(nats) =
        TestNats::connect("bad_input_is_refused_with_invalid", |b| b.max_payload(16)).await
    else {
        return;
    };
    let invalid = |result: Result<(), TransportError>, what: &str| match result {
        Err(TransportError::Invalid { what: got, .. }) => assert_eq!(got, what),
        other => panic!("expected Invalid {what}, got {other:?}"),
    };
    invalid(
        nats.publish(WireEvent::new("1", "t", "orders.*", "")).await,
        "event name",
    );
    invalid(
        nats.publish(WireEvent::new("1", "t", "", "")).await,
        "event name",
    );
    invalid(
        nats.publish(WireEvent::new("1", "t", "a.b", vec![0_u8; 17]))
            .await,
        "payload",
    );
    invalid(
        nats.publish(WireEvent::new("1", "t", "a.b", "").extension("bad name", "x"))
            .await,
        "attribute",
    );
    invalid(
        nats.publish(WireEvent::new("", "t", "a.b", "")).await,
        "event",
    );
    invalid(
        nats.publish(WireEvent::new("1", "t", "a.b", "").extension("bad_name", "x"))
            .await,
        "event",
    );
    for pattern in ["", "a..b", "a.>.b", "a*", "a b"] {
        match nats.subscribe(SubscribeOptions::new(pattern)).await {
            Err(TransportError::Invalid { what, .. }) => assert_eq!(what, "pattern"),
            Err(other) => panic!("pattern {pattern:?}: expected Invalid, got {other}"),
            Ok(_) => panic!("pattern {pattern:?}: expected Invalid, got a subscription"),
        }
    }
    // Groups with any characters are fine: the consumer name is sanitised.
    for group in ["with space", "dots.in.it", "*", ">", "ümlaut", "a/b"] {
        let subscription = nats
            .subscribe(SubscribeOptions::new("x.y").group(group))
            .await;
        assert!(subscription.is_ok(), "group {group:?}");
    }
    let capabilities = nats.capabilities();
    assert!(capabilities.persistent && capabilities.groups && capabilities.deduplicates);
    assert!(!capabilities.restartable);
    assert_eq!(nats.name(), "nats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_is_unreachable() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let result = bus_nats::NatsTransport::builder(format!("127.0.0.1:{port}"))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    match result {
        Err(TransportError::Unreachable { source, .. }) => {
            let message = source.to_string();
            assert!(message.contains("nats-server"), "{message}");
            assert!(source.downcast_ref::<bus_nats::NatsError>().is_some());
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}
