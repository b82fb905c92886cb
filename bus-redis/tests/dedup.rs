//! Duplicates are an event's source and id together (CloudEvents makes them unique per event):
//! one id from two sources is two events, delivered to a group and to a subscription outside
//! any group, while a real repeat (same source and id) is still dropped, on publish (the
//! duplicate window) and on receipt (the acked window), counted, logged at `info` and recorded
//! in `bus_duplicates_dropped_total`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bus_conformance::secure::{capture_logs, logged};
use bus_core::transport::support::DUPLICATES_DROPPED;
use bus_core::transport::{
    DEAD_LETTER_OF, SubscribeOptions, Transport, TransportSubscription, WireEvent, dead_letter_name,
};
use bus_redis::redis;
use common::{TestRedis, next, unique};
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

/// Asserts that a line of the captured logs says a duplicate of event `id` of `source` was
/// dropped, at `info` (a level a user sees), naming the event and, when given, the group.
fn assert_logged_at_info(id: &str, source: &str, group: Option<&str>) {
    let logs = logged();
    let line = logs
        .lines()
        .find(|line| {
            line.contains("duplicate dropped")
                && line.contains(&format!("event_id={id}"))
                && line.contains(&format!("source={source}"))
        })
        .unwrap_or_else(|| panic!("no log line of the duplicate {source}:{id}"));
    assert!(line.contains(" INFO "), "not at info: {line}");
    assert!(line.contains("event=dedup.orders"), "no event name: {line}");
    if let Some(group) = group {
        assert!(line.contains(&format!("group={group}")), "no group: {line}");
    }
}

/// The counts of `bus_duplicates_dropped_total` by label set, read from a debugging recorder
/// (whose snapshots take the counts out: they are added up here).
struct Duplicates {
    snapshotter: Snapshotter,
    totals: HashMap<Vec<(String, String)>, u64>,
}

impl Duplicates {
    fn new(snapshotter: Snapshotter) -> Duplicates {
        Duplicates {
            snapshotter,
            totals: HashMap::new(),
        }
    }

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

/// Consumer side (the acked window, on by default; the duplicate window off, the default): an
/// event of id X from `shop` is acked by a group and a plain subscription; then an event of id
/// X from `billing` reaches both (it was dropped as "acked before" when the window was keyed on
/// the id alone); then `shop`'s event again is dropped by both, counted and logged at `info`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_from_two_sources_is_two_events_for_the_consumers() {
    capture_logs();
    let Some(redis) = TestRedis::connect("one_id_from_two_sources_consumers", |b| b).await else {
        return;
    };
    let group = format!("g-{}", unique());
    let mut grouped = redis
        .subscribe(SubscribeOptions::new("dedup.orders").group(&group))
        .await
        .expect("subscribed");
    let mut plain = redis
        .subscribe(SubscribeOptions::new("dedup.orders"))
        .await
        .expect("subscribed");
    let id = format!("order-{}", unique());
    let shop = WireEvent::new(&id, "shop", "dedup.orders", "from the shop");
    let billing = WireEvent::new(&id, "billing", "dedup.orders", "from billing");

    redis.publish(shop.clone()).await.expect("published");
    expect(&mut grouped, &shop, "the group: shop's event").await;
    expect(&mut plain, &shop, "plain: shop's event").await;
    redis.publish(billing.clone()).await.expect("published");
    expect(
        &mut grouped,
        &billing,
        "the group: billing's event, same id",
    )
    .await;
    expect(&mut plain, &billing, "plain: billing's event, same id").await;
    assert_eq!(redis.duplicates_dropped(), 0, "nothing was a duplicate yet");

    // A real repeat: the same source and id. Stored (no publish-side window), dropped by both
    // consumers, which then get the probe published after it.
    redis.publish(shop.clone()).await.expect("published");
    let probe = common::publish_probe(&redis.transport, "dedup.orders").await;
    common::assert_next_is(&mut grouped, &probe, "the group after the repeat").await;
    common::assert_next_is(&mut plain, &probe, "plain after the repeat").await;
    assert_eq!(redis.duplicates_dropped(), 2, "one drop per consumer");
    assert_logged_at_info(&id, "shop", Some(&group));
    assert_logged_at_info(&id, "shop", None);
}

/// Publish side (a duplicate window): id X from `shop`, id X from `billing`, then `shop`'s
/// again: the first two are stored (two keys `<prefix>:dedup:<source>:<id>`) and delivered, the
/// third is not stored, is counted and logged at `info`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_from_two_sources_is_two_events_for_the_duplicate_window() {
    capture_logs();
    let Some(redis) = TestRedis::connect("one_id_from_two_sources_window", |b| {
        b.duplicate_window(Duration::from_secs(120))
    })
    .await
    else {
        return;
    };
    let mut plain = redis
        .subscribe(SubscribeOptions::new("dedup.orders"))
        .await
        .expect("subscribed");
    let id = format!("order:{}", unique());
    let shop = WireEvent::new(&id, "https://shop.example/eu", "dedup.orders", "shop");
    let billing = WireEvent::new(&id, "billing", "dedup.orders", "billing");
    for event in [&shop, &billing, &shop] {
        redis.publish(event.clone()).await.expect("published");
    }
    let mut conn = redis.connection();
    let length: u64 = redis::cmd("XLEN")
        .arg(redis.stream_key("dedup.orders"))
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(length, 2, "the two events are stored, the repeat is not");
    assert_eq!(redis.duplicates_dropped(), 1);
    for key in [
        format!(
            "{}:dedup:https%3A//shop.example/eu:order%3A{}",
            redis.prefix,
            &id[6..]
        ),
        format!("{}:dedup:billing:order%3A{}", redis.prefix, &id[6..]),
    ] {
        let exists: u64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        assert_eq!(exists, 1, "no duplicate marker {key}");
    }
    expect(&mut plain, &shop, "shop's event").await;
    expect(&mut plain, &billing, "billing's event, same id").await;
    let what = "plain after the two events";
    common::assert_nothing_more(&mut plain, &redis.transport, "dedup.orders", what).await;
    assert_logged_at_info(&id, "https://shop.example/eu", None);
}

/// With a duplicate window (which dead letters go through too), two events of one id from two
/// sources rejected by one group make two dead letters, not one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letters_of_one_id_from_two_sources_are_two() {
    let Some(redis) = TestRedis::connect("the_dead_letters_of_one_id_from_two_sources", |b| {
        b.duplicate_window(Duration::from_secs(120))
    })
    .await
    else {
        return;
    };
    let dead = dead_letter_name("dedup.orders");
    let mut letters = redis
        .subscribe(SubscribeOptions::new(&dead))
        .await
        .expect("subscribed");
    let group = format!("g-{}", unique());
    let mut grouped = redis
        .subscribe(SubscribeOptions::new("dedup.orders").group(&group))
        .await
        .expect("subscribed");
    let id = format!("order-{}", unique());
    for source in ["shop", "billing"] {
        let event = WireEvent::new(&id, source, "dedup.orders", "{}");
        redis.publish(event).await.expect("published");
        let delivery = next(&mut grouped, "an event to reject").await;
        delivery.reject("poison".into()).await.expect("rejected");
    }
    let mut sources = Vec::new();
    for _ in 0..2 {
        let letter = next(&mut letters, "a dead letter").await;
        assert_eq!(letter.event().extensions[DEAD_LETTER_OF], id);
        sources.push(letter.event().source.clone());
        letter.ack().await.expect("acked");
    }
    sources.sort();
    assert_eq!(sources, ["billing", "shop"]);
    assert_eq!(redis.duplicates_dropped(), 0);
}

/// `bus_duplicates_dropped_total`: a publish dropped by the duplicate window counts under
/// `stage="publish"`, an entry dropped by a group's acked window under `stage="receive"` with
/// the group; an event of the same id from another source counts nowhere. The test records
/// into a recorder of its own, on a current-thread runtime on this thread.
#[test]
fn dropped_duplicates_are_counted_in_metrics() {
    let recorder = DebuggingRecorder::new();
    let mut duplicates = Duplicates::new(recorder.snapshotter());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let Some(redis) = TestRedis::connect("dropped_duplicates_are_counted", |b| {
                b.duplicate_window(Duration::from_secs(120))
            })
            .await
            else {
                return;
            };
            let group = format!("g-{}", unique());
            let mut grouped = redis
                .subscribe(SubscribeOptions::new("dedup.orders").group(&group))
                .await
                .expect("subscribed");
            let id = format!("order-{}", unique());
            let shop = WireEvent::new(&id, "shop", "dedup.orders", "shop");
            let billing = WireEvent::new(&id, "billing", "dedup.orders", "billing");
            for event in [&shop, &billing, &shop] {
                redis.publish(event.clone()).await.expect("published");
            }
            let publish = [("transport", "redis"), ("stage", "publish")];
            assert_eq!(duplicates.count(&publish), 1);
            expect(&mut grouped, &shop, "shop's event").await;
            expect(&mut grouped, &billing, "billing's event").await;
            let receive = [
                ("transport", "redis"),
                ("stage", "receive"),
                ("group", &group),
            ];
            assert_eq!(duplicates.count(&receive), 0);

            // Past the publish-side window (another connection without one), the repeat is
            // stored, and the group drops it on receipt.
            let loose = redis.another(|b| b).await;
            loose.publish(shop.clone()).await.expect("published");
            let probe = common::publish_probe(&loose, "dedup.orders").await;
            common::assert_next_is(&mut grouped, &probe, "the group after the repeat").await;
            assert_eq!(duplicates.count(&receive), 1);
            assert_eq!(duplicates.count(&publish), 1);
        });
    });
}
