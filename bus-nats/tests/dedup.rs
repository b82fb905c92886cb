//! Duplicates are an event's source and id together (CloudEvents makes them unique per event):
//! `Nats-Msg-Id` is both, so JetStream's duplicate window stores one id from two sources as two
//! events (and their dead letters as two), while a real repeat (same source and id) is still
//! dropped: its PubAck says `duplicate`, and the transport counts it, logs it at `info` and
//! records it in `bus_duplicates_dropped_total`.

mod common;

use std::collections::HashMap;

use bus_conformance::secure::{capture_logs, logged};
use bus_core::transport::support::DUPLICATES_DROPPED;
use bus_core::transport::{
    DEAD_LETTER_OF, SubscribeOptions, Transport, TransportSubscription, WireEvent,
};
use common::{TestNats, next, unique};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Takes the next delivery of `subscription`, checks it is `expected` (by source and id), and
/// acks it.
async fn expect(subscription: &mut TransportSubscription, expected: &WireEvent, what: &str) {
    let delivery = next(subscription, what).await;
    let got = delivery.event();
    assert_eq!(
        (got.source.as_str(), got.id.as_str(), got.data.as_ref()),
        (
            expected.source.as_str(),
            expected.id.as_str(),
            expected.data.as_ref()
        ),
        "{what}"
    );
    delivery.ack().await.expect("acked");
}

/// An event of one id, from the shop and from billing.
fn same_id_two_sources(name: &str) -> (WireEvent, WireEvent) {
    let id = format!("order-{}", unique());
    (
        WireEvent::new(&id, "https://shop.example/eu", name, "from the shop"),
        WireEvent::new(&id, "billing", name, "from billing"),
    )
}

/// A group and a subscription outside any group both get the event of id X from the shop and
/// the event of id X from billing (JetStream dropped the second as a duplicate when
/// `Nats-Msg-Id` was the id alone); the shop's event published again is dropped by the stream,
/// counted and logged at `info`, and neither subscription sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_from_two_sources_is_two_events() {
    capture_logs();
    let Some(nats) = TestNats::connect("one_id_from_two_sources_is_two_events", |b| b).await else {
        return;
    };
    let mut grouped = nats
        .subscribe(SubscribeOptions::new("dedup.orders").group("billing"))
        .await
        .expect("subscribed");
    let mut plain = nats
        .subscribe(SubscribeOptions::new("dedup.orders"))
        .await
        .expect("subscribed");
    let (shop, billing) = same_id_two_sources("dedup.orders");
    for event in [&shop, &billing] {
        nats.publish(event.clone()).await.expect("published");
    }
    assert_eq!(nats.duplicates_dropped(), 0, "nothing was a duplicate yet");
    for (subscription, who) in [(&mut grouped, "the group"), (&mut plain, "plain")] {
        expect(subscription, &shop, &format!("{who}: the shop's event")).await;
        expect(
            subscription,
            &billing,
            &format!("{who}: billing's, same id"),
        )
        .await;
    }

    nats.publish(shop.clone())
        .await
        .expect("a duplicate resolves Ok");
    assert_eq!(nats.duplicates_dropped(), 1);
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .expect("the stream");
    let stored = stream.get_info().await.expect("its info").state.messages;
    assert_eq!(stored, 2, "the repeat was stored");
    let probe = common::publish_probe(&nats.transport, "dedup.orders").await;
    common::assert_next_is(&mut grouped, &probe, "the group after the repeat").await;
    common::assert_next_is(&mut plain, &probe, "plain after the repeat").await;

    let logs = logged();
    let line = logs
        .lines()
        .find(|line| {
            line.contains("duplicate dropped")
                && line.contains(&format!("event_id={}", shop.id))
                && line.contains("source=https://shop.example/eu")
        })
        .unwrap_or_else(|| panic!("no log line of the duplicate {}", shop.id));
    assert!(line.contains(" INFO "), "not at info: {line}");
    assert!(line.contains("event=dedup.orders"), "no event name: {line}");
}

/// Two events of one id from two sources, both rejected by one group: two dead letters (their
/// `Nats-Msg-Id`s differ by the source), not one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letters_of_one_id_from_two_sources_are_two() {
    let Some(nats) = TestNats::connect("the_dead_letters_of_one_id_from_two_sources", |b| b).await
    else {
        return;
    };
    let mut letters = nats
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .expect("subscribed");
    let mut grouped = nats
        .subscribe(SubscribeOptions::new("dedup.orders").group("billing"))
        .await
        .expect("subscribed");
    let (shop, billing) = same_id_two_sources("dedup.orders");
    for event in [&shop, &billing] {
        nats.publish(event.clone()).await.expect("published");
        let delivery = next(&mut grouped, "an event to reject").await;
        delivery.reject("poison".into()).await.expect("rejected");
    }
    let mut sources = Vec::new();
    for _ in 0..2 {
        let letter = next(&mut letters, "a dead letter").await;
        assert_eq!(letter.event().extensions[DEAD_LETTER_OF], shop.id);
        sources.push(letter.event().source.clone());
        letter.ack().await.expect("acked");
    }
    sources.sort();
    assert_eq!(sources, ["billing", "https://shop.example/eu"]);
    assert_eq!(nats.dead_lettered(), 2);
    assert_eq!(nats.duplicates_dropped(), 0);
}

/// The counts of `bus_duplicates_dropped_total` by label set, read from a debugging recorder
/// (whose snapshots take the counts out: they are added up here).
struct Duplicates {
    snapshotter: Snapshotter,
    totals: HashMap<Vec<(String, String)>, u64>,
}

impl Duplicates {
    /// The count with exactly `labels`; 0 if never recorded.
    fn count(&mut self, labels: &[(&str, &str)]) -> u64 {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            if key.key().name() != DUPLICATES_DROPPED {
                continue;
            }
            let DebugValue::Counter(count) = value else {
                panic!("{DUPLICATES_DROPPED} is not a counter: {value:?}");
            };
            let mut labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            labels.sort();
            *self.totals.entry(labels).or_default() += count;
        }
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        self.totals.get(&wanted).copied().unwrap_or(0)
    }
}

/// `bus_duplicates_dropped_total{transport="nats",stage="publish"}` counts the publish the
/// stream dropped, not the event of the same id from another source. The test records into a
/// recorder of its own, on a current-thread runtime on this thread.
#[test]
fn dropped_duplicates_are_counted_in_metrics() {
    let recorder = DebuggingRecorder::new();
    let mut duplicates = Duplicates {
        snapshotter: recorder.snapshotter(),
        totals: HashMap::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let Some(nats) = TestNats::connect("dropped_duplicates_are_counted", |b| b).await
            else {
                return;
            };
            let (shop, billing) = same_id_two_sources("dedup.orders");
            let publish = [("transport", "nats"), ("stage", "publish")];
            for event in [&shop, &billing] {
                nats.publish(event.clone()).await.expect("published");
            }
            assert_eq!(duplicates.count(&publish), 0);
            nats.publish(shop.clone()).await.expect("published");
            assert_eq!(duplicates.count(&publish), 1);
        });
    });
}
