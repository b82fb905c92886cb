//! Messages that do not decode, published with the raw client: dead-lettered by the
//! subscription with the decoding error as the reason, never handed out, and the subscription
//! keeps flowing.

mod common;

use async_nats::HeaderMap;
use bus_core::transport::{
    DEAD_LETTER_GROUP, DEAD_LETTER_OF, DEAD_LETTER_REASON, SubscribeOptions, Transport, WireEvent,
};
use bus_nats::NatsTransport;
use common::{TestNats, assert_next_is, assert_quiet, next, publish_probe, unique};

/// Publishes a raw message through JetStream (stored, acknowledged), outside the transport.
async fn publish_raw(nats: &NatsTransport, name: &str, headers: HeaderMap, payload: Vec<u8>) {
    nats.jetstream()
        .publish_with_headers(nats.subject(name), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn ce_headers(id: &str, ty: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id);
    headers.insert("ce-source", "raw-client");
    headers.insert("ce-type", ty);
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dead_lettered_and_the_stream_flows() {
    let Some(nats) = TestNats::connect("garbage_is_dead_lettered_and_the_stream_flows", |b| {
        b.max_payload(1024)
    })
    .await
    else {
        return;
    };
    // The dead letters are read on another connection to the same stream, with the default
    // max_payload: the dead letter of the oversized message keeps its payload.
    let reader = NatsTransport::builder(common::SHARED_URL)
        .subject_prefix(nats.prefix.clone())
        .stream_name(nats.stream_name())
        .connect()
        .await
        .unwrap();
    let mut dead = reader
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .unwrap();
    let mut orders = nats
        .subscribe(SubscribeOptions::new("orders.>").group("billing"))
        .await
        .unwrap();

    // 1. No headers at all, not even JSON.
    nats.jetstream()
        .publish(nats.subject("orders.raw"), "\u{0}garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // 2. Valid attributes, a payload over max_payload.
    publish_raw(
        &nats,
        "orders.big",
        ce_headers("big-1", "orders.big"),
        vec![b'x'; 4096],
    )
    .await;
    // 3. Attributes with a type that is not its subject.
    publish_raw(
        &nats,
        "orders.mine",
        ce_headers("liar-1", "users.created"),
        b"{}".to_vec(),
    )
    .await;
    // 4. An unknown spec version, and a custom header that must survive.
    let mut headers = ce_headers("old-1", "orders.old");
    headers.insert("ce-specversion", "0.3");
    headers.insert("x-trace", "keep-me");
    publish_raw(&nats, "orders.old", headers, b"{}".to_vec()).await;
    // Then a good one: it still arrives.
    let good = WireEvent::new(unique(), "shop", "orders.created", "{}");
    nats.publish(good.clone()).await.unwrap();

    let delivery = next(&mut orders, "the good event after the garbage").await;
    assert_eq!(delivery.event(), &good, "garbage was never handed out");
    delivery.ack().await.unwrap();

    let mut letters = Vec::new();
    for _ in 0..4 {
        let letter = next(&mut dead, "a dead letter").await;
        letters.push(letter.event().clone());
        letter.ack().await.unwrap();
    }
    letters.sort_by(|a, b| a.ty.cmp(&b.ty));
    let reason = |letter: &WireEvent| letter.extensions[DEAD_LETTER_REASON].clone();
    let [big, mine, old, raw] = &letters[..] else {
        panic!("four dead letters: {letters:?}")
    };

    assert_eq!(raw.ty, "dead-letter.orders.raw");
    assert!(reason(raw).contains("specversion"), "{}", reason(raw));
    assert_eq!(&raw.data[..], b"\0garbage");
    assert_eq!(raw.source, "bus-nats");
    assert_eq!(raw.extensions[DEAD_LETTER_GROUP], "billing");

    assert_eq!(big.ty, "dead-letter.orders.big");
    assert!(reason(big).contains("4096"), "{}", reason(big));
    assert!(reason(big).contains("1024"), "{}", reason(big));
    assert_eq!(big.data.len(), 4096, "the raw payload is kept");
    assert_eq!(big.id, "big-1.dead.billing");
    assert_eq!(big.extensions[DEAD_LETTER_OF], "big-1");
    assert_eq!(big.source, "raw-client");

    assert_eq!(mine.ty, "dead-letter.orders.mine");
    assert!(reason(mine).contains("users.created"), "{}", reason(mine));

    assert_eq!(old.ty, "dead-letter.orders.old");
    assert!(reason(old).contains("0.3"), "{}", reason(old));

    // The raw headers travel with the dead letter, stored in the dead letters' stream.
    let dead_stream = nats
        .jetstream()
        .get_stream(
            nats.dead_letter_stream_name()
                .expect("dead letters kept apart"),
        )
        .await
        .unwrap();
    let stored = dead_stream
        .get_last_raw_message_by_subject(&nats.subject("dead-letter.orders.old"))
        .await
        .unwrap();
    assert_eq!(
        stored.headers.get("x-trace").map(|v| v.as_str()),
        Some("keep-me")
    );

    // Nothing else arrives, and the group has nothing left.
    let what = "the group after the garbage";
    assert_quiet(&mut orders, what).await;
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let info = stream
        .consumer_info(NatsTransport::consumer_name("billing"))
        .await
        .unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    // The subscription was alive all along: a probe is its next delivery.
    let probe = publish_probe(&nats.transport, "orders.probe").await;
    assert_next_is(&mut orders, &probe, what).await;
}

/// The headers of a message written by another client, every optional kind there is: a time, a
/// content type, the extensions `traceparent` and `causationid`, a custom one, a header that is
/// no CloudEvents attribute.
fn rich_headers(id: &str, ty: &str, specversion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ce-specversion", specversion.to_owned()),
        ("ce-id", id.to_owned()),
        ("ce-source", "legacy-script".to_owned()),
        ("ce-type", ty.to_owned()),
        ("ce-time", "2024-05-01T10:00:00.5Z".to_owned()),
        ("content-type", "application/json".to_owned()),
        (
            "ce-traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        ),
        ("ce-causationid", "order-0".to_owned()),
        ("ce-tenant", "acme".to_owned()),
        ("x-written-by", "nightly-import".to_owned()),
    ]
}

/// Messages that do not decode (spec version 0.3; a type that is not its subject) but carry a
/// time, a content type and extensions: each dead letter, read raw from the stream, keeps every
/// header of the message as it was, but the four a dead letter sets (`ce-specversion`,
/// `ce-id`, `ce-source`, `ce-type`), and adds the reason, the group, the attempts and the
/// original id; its payload is the message's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_of_a_message_that_does_not_decode_keeps_every_header() {
    let Some(nats) = TestNats::connect("the_dead_letter_keeps_every_header", |b| b).await else {
        return;
    };
    let mut orders = nats
        .subscribe(SubscribeOptions::new("kept.>").group("billing"))
        .await
        .unwrap();
    let (old, liar) = (format!("old-{}", unique()), format!("liar-{}", unique()));
    let messages = [
        (
            "kept.old",
            rich_headers(&old, "kept.old", "0.3"),
            &old,
            "0.3",
        ),
        (
            "kept.liar",
            rich_headers(&liar, "kept.other", "1.0"),
            &liar,
            "kept.other",
        ),
    ];
    for (name, headers, _, _) in &messages {
        let mut map = HeaderMap::new();
        for (header, value) in headers {
            map.insert(*header, value.as_str());
        }
        publish_raw(&nats, name, map, br#"{"order":7}"#.to_vec()).await;
    }
    let good = WireEvent::new(unique(), "shop", "kept.good", "{}");
    nats.publish(good.clone()).await.unwrap();
    let delivery = next(&mut orders, "the good event").await;
    assert_eq!(
        delivery.event(),
        &good,
        "a message that does not decode was handed out"
    );
    delivery.ack().await.unwrap();

    let letters = nats
        .dead_letter_stream_name()
        .expect("a new stream keeps dead letters apart");
    let stream = nats.jetstream().get_stream(letters).await.unwrap();
    for (name, headers, id, says) in &messages {
        let subject = nats.subject(&format!("dead-letter.{name}"));
        let letter = common::within(&format!("the dead letter of {name}"), async {
            loop {
                if let Ok(letter) = stream.get_last_raw_message_by_subject(&subject).await {
                    return letter;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        let value = |header: &str| -> Vec<String> {
            letter
                .headers
                .get_all(header)
                .map(|value| value.as_str().to_owned())
                .collect()
        };
        let replaced = ["ce-specversion", "ce-id", "ce-source", "ce-type"];
        for (header, original) in headers {
            if !replaced.contains(header) {
                assert_eq!(value(header), [original.as_str()], "{header} of {name}");
            }
        }
        assert_eq!(value("ce-specversion"), ["1.0"]);
        assert_eq!(value("ce-id"), [format!("{id}.dead.billing")]);
        assert_eq!(value("ce-source"), ["legacy-script"]);
        assert_eq!(value("ce-type"), [format!("dead-letter.{name}")]);
        assert_eq!(value(&format!("ce-{DEAD_LETTER_OF}")), [id.as_str()]);
        assert_eq!(value(&format!("ce-{DEAD_LETTER_GROUP}")), ["billing"]);
        assert_eq!(value("ce-deadletterattempts"), ["1"]);
        let reason = value(&format!("ce-{DEAD_LETTER_REASON}"));
        assert!(
            reason.len() == 1 && reason[0].contains(says),
            "the reason of {name} does not say {says:?}: {reason:?}"
        );
        assert_eq!(letter.payload.as_ref(), br#"{"order":7}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_does_not_decode_is_not_dead_lettered_again() {
    let Some(nats) = TestNats::connect(
        "a_dead_letter_that_does_not_decode_is_not_dead_lettered_again",
        |b| b,
    )
    .await
    else {
        return;
    };
    let mut dead = nats
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .unwrap();
    nats.jetstream()
        .publish(nats.subject("dead-letter.orders.x"), "junk".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A dead letter that decodes, after the junk in the same stream: received once the junk
    // was dealt with.
    let marker = WireEvent::new(unique(), "t", "dead-letter.orders.after", "{}");
    nats.publish(marker.clone()).await.unwrap();
    let delivery = next(&mut dead, "the dead letter after the junk").await;
    assert_eq!(delivery.event(), &marker);
    delivery.ack().await.unwrap();
    // No `dead-letter.dead-letter...` chain: the dead letters' stream holds the junk and the
    // marker only, and the events' stream nothing.
    let stream_messages = |name: String| {
        let js = nats.jetstream().clone();
        async move {
            let mut stream = js.get_stream(name).await.unwrap();
            stream.info().await.unwrap().state.messages
        }
    };
    let dead_stream = nats
        .dead_letter_stream_name()
        .expect("dead letters kept apart");
    assert_eq!(stream_messages(dead_stream.to_owned()).await, 2);
    assert_eq!(stream_messages(nats.stream_name().to_owned()).await, 0);
}
