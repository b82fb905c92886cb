//! Competing consumers within a group, fan-out across groups, durable positions, and where a
//! group stands.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bus_core::transport::{GroupStats, SubscribeOptions, Transport, TransportError, WireEvent};
use bus_nats::NatsTransport;
use common::{PATIENCE, TestNats, next, unique};
use futures_util::StreamExt;
use tokio::sync::mpsc;

const EVENTS: usize = 200;

/// Runs `subscription` in a task that acks everything and reports `(member, event id)`.
fn drain(
    member: usize,
    mut subscription: bus_core::transport::TransportSubscription,
    report: mpsc::UnboundedSender<(usize, String)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(delivery) = subscription.next().await {
            let delivery = delivery.expect("no subscription error");
            let id = delivery.event().id.clone();
            delivery.ack().await.expect("ack");
            if report.send((member, id)).is_err() {
                return;
            }
        }
    })
}

/// Collects `count` reports, within [`PATIENCE`] each.
async fn collect(
    reports: &mut mpsc::UnboundedReceiver<(usize, String)>,
    count: usize,
) -> Vec<(usize, String)> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match tokio::time::timeout(PATIENCE, reports.recv()).await {
            Ok(Some(report)) => got.push(report),
            _ => panic!("only {} of {count} deliveries arrived", got.len()),
        }
    }
    got
}

async fn publish_all(nats: &NatsTransport, name: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for n in 0..EVENTS {
        let id = format!("{n}-{}", unique());
        nats.publish(WireEvent::new(id.clone(), "t", name, "{}"))
            .await
            .unwrap();
        ids.insert(id);
    }
    ids
}

/// The group's consumer, seen by the server: nothing pending, nothing unacknowledged, nothing
/// redelivered.
async fn assert_settled(nats: &NatsTransport, group: &str) {
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let info = stream
        .consumer_info(NatsTransport::consumer_name(group))
        .await
        .unwrap();
    assert_eq!(info.num_pending, 0, "{group}: events left undelivered");
    assert_eq!(info.num_ack_pending, 0, "{group}: deliveries left unacked");
    assert_eq!(info.num_redelivered, 0, "{group}: events delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_shares_the_events() {
    let Some(nats) = TestNats::connect("one_group_shares_the_events", |b| b.fetch_batch(8)).await
    else {
        return;
    };
    let (report, mut reports) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    for member in 0..2 {
        let subscription = nats
            .subscribe(SubscribeOptions::new("jobs.>").group("workers"))
            .await
            .unwrap();
        members.push(drain(member, subscription, report.clone()));
    }
    let ids = publish_all(&nats, "jobs.run").await;
    let got = collect(&mut reports, EVENTS).await;

    let mut seen = BTreeSet::new();
    for (_, id) in &got {
        assert!(seen.insert(id.clone()), "event {id} delivered twice");
    }
    assert_eq!(seen, ids, "every event once");
    let per_member: BTreeMap<usize, usize> = got.iter().fold(BTreeMap::new(), |mut map, (m, _)| {
        *map.entry(*m).or_default() += 1;
        map
    });
    println!("events per member: {per_member:?}");
    assert_settled(&nats, "workers").await;
    for member in members {
        member.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_get_every_event() {
    let Some(nats) = TestNats::connect("two_groups_each_get_every_event", |b| b).await else {
        return;
    };
    let (report, mut reports) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    for (member, group) in ["billing", "shipping"].into_iter().enumerate() {
        let subscription = nats
            .subscribe(SubscribeOptions::new("orders.*").group(group))
            .await
            .unwrap();
        members.push(drain(member, subscription, report.clone()));
    }
    let ids = publish_all(&nats, "orders.placed").await;
    let got = collect(&mut reports, 2 * EVENTS).await;
    for member in 0..2 {
        let mine: Vec<&String> = got
            .iter()
            .filter(|(m, _)| *m == member)
            .map(|(_, id)| id)
            .collect();
        let distinct: BTreeSet<String> = mine.iter().map(|id| (*id).clone()).collect();
        assert_eq!(mine.len(), EVENTS, "group {member}: each event once");
        assert_eq!(distinct, ids, "group {member}: every event");
    }
    assert_settled(&nats, "billing").await;
    assert_settled(&nats, "shipping").await;
    for member in members {
        member.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_now_and_an_existing_one_resumes() {
    let Some(nats) =
        TestNats::connect("a_new_group_starts_now_and_an_existing_one_resumes", |b| b).await
    else {
        return;
    };
    nats.publish(WireEvent::new("before", "t", "audit.log", "{}"))
        .await
        .unwrap();
    let mut first = nats
        .subscribe(SubscribeOptions::new("audit.>").group("auditors"))
        .await
        .unwrap();
    nats.publish(WireEvent::new("during", "t", "audit.log", "{}"))
        .await
        .unwrap();
    let delivery = next(
        &mut first,
        "the event published after the group was created",
    )
    .await;
    assert_eq!(delivery.event().id, "during");
    delivery.ack().await.unwrap();
    drop(first);

    // While nobody subscribes, the group's position stays where it was.
    nats.publish(WireEvent::new("while-away", "t", "audit.log", "{}"))
        .await
        .unwrap();
    let mut again = nats
        .subscribe(SubscribeOptions::new("audit.>").group("auditors"))
        .await
        .unwrap();
    let delivery = next(&mut again, "the event published while the group was away").await;
    assert_eq!(delivery.event().id, "while-away");
    delivery.ack().await.unwrap();
    assert_settled(&nats, "auditors").await;

    // One group, one pattern.
    match nats
        .subscribe(SubscribeOptions::new("other.>").group("auditors"))
        .await
    {
        Err(TransportError::Invalid { what, reason, .. }) => {
            assert_eq!(what, "group");
            assert!(reason.contains("audit.>"), "{reason}");
        }
        Err(other) => panic!("expected Invalid, got {other}"),
        Ok(_) => panic!("expected Invalid, got a subscription"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_subscription_hands_back_what_it_held() {
    let Some(nats) = TestNats::connect("a_closed_subscription_hands_back_what_it_held", |b| {
        b.fetch_batch(16)
    })
    .await
    else {
        return;
    };
    // A long ack wait: what comes back quickly was handed back, not timed out.
    let options = SubscribeOptions::new("tasks.>")
        .group("crew")
        .ack_wait(Duration::from_secs(120));
    let mut first = nats.subscribe(options.clone()).await.unwrap();
    for n in 0..10 {
        nats.publish(WireEvent::new(format!("task-{n}"), "t", "tasks.do", "{}"))
            .await
            .unwrap();
    }
    let held = next(&mut first, "the first task").await;
    assert_eq!(held.event().id, "task-0");
    // Wait until the server has handed all ten to `first`, and they reached this client (a
    // flush is a round trip: what the server sent before its answer has arrived).
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let consumer = NatsTransport::consumer_name("crew");
    let mut waited = 0;
    while stream
        .consumer_info(&consumer)
        .await
        .unwrap()
        .num_ack_pending
        < 10
    {
        waited += 1;
        assert!(waited < 400, "the server never handed out all ten tasks");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    nats.client().flush().await.unwrap();
    drop(held); // unsettled: nak'd at once
    drop(first); // the messages it had pulled: nak'd at once

    let mut second = nats.subscribe(options).await.unwrap();
    let mut ids = BTreeSet::new();
    while ids.len() < 10 {
        let delivery = next(&mut second, "the tasks handed back").await;
        ids.insert(delivery.event().id.clone());
        delivery.ack().await.unwrap();
    }
    assert!(ids.contains("task-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_takes_the_limits_of_its_latest_subscription() {
    let Some(nats) =
        TestNats::connect("a_group_takes_the_limits_of_its_latest_subscription", |b| b).await
    else {
        return;
    };
    let options = SubscribeOptions::new("limits.>").group("tuned");
    let _first = nats
        .subscribe(
            options
                .clone()
                .ack_wait(Duration::from_secs(30))
                .max_deliveries(5),
        )
        .await
        .unwrap();
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let consumer = NatsTransport::consumer_name("tuned");
    let info = stream.consumer_info(&consumer).await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(30));
    assert_eq!(info.config.max_deliver, 6, "one spare delivery");
    let _second = nats
        .subscribe(options.ack_wait(Duration::from_secs(10)).max_deliveries(2))
        .await
        .unwrap();
    let info = stream.consumer_info(&consumer).await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(10));
    assert_eq!(info.config.max_deliver, 3);
}

/// Asks for the stats of the group of `options` until `expected` holds of them, within
/// [`PATIENCE`]: the server counts behind the publishes and acks.
async fn stats_until(
    nats: &NatsTransport,
    options: &SubscribeOptions,
    what: &str,
    expected: impl Fn(GroupStats) -> bool,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = nats.group_stats(options).await.expect("group_stats");
        if stats.is_some_and(&expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stats of a group whose pattern covers both streams (`>`: one consumer on the events'
/// stream, one on the dead letters'): the two consumers' counts, summed; a nak'd delivery,
/// waiting for its delay, stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_stats_sum_the_consumers_of_both_streams() {
    let Some(nats) =
        TestNats::connect("group_stats_sum_the_consumers_of_both_streams", |b| b).await
    else {
        return;
    };
    assert!(
        nats.dead_letter_stream_name().is_some(),
        "dead letters apart"
    );
    let options = SubscribeOptions::new(">")
        .group("everything")
        .ack_wait(Duration::from_secs(3600));
    drop(nats.subscribe(options.clone()).await.unwrap());
    for (n, name) in [
        "orders.created",
        "orders.paid",
        "dead-letter.orders.created",
    ]
    .into_iter()
    .enumerate()
    {
        let event = WireEvent::new(format!("stats-{n}-{}", unique()), "s", name, "{}");
        nats.publish(event).await.unwrap();
    }
    stats_until(
        &nats,
        &options,
        "2 events and 1 dead letter behind",
        |stats| stats == GroupStats::new(3, 0),
    )
    .await;

    let mut subscription = nats.subscribe(options.clone()).await.unwrap();
    let delivery = next(&mut subscription, "a first delivery").await;
    delivery
        .nack(Duration::from_secs(3600), "later".to_owned())
        .await
        .unwrap();
    stats_until(&nats, &options, "a nak'd delivery pending", |stats| {
        stats.pending >= 1 && stats.lag + stats.pending == 3
    })
    .await;
    let unknown = SubscribeOptions::new(">").group("nobody");
    assert_eq!(nats.group_stats(&unknown).await.unwrap(), None);
    drop(subscription);
}
