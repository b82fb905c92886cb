//! Settling on RabbitMQ beyond the conformance suite: a nack with a delay waits in the group's
//! delay queue, and a dead letter is replayed to the group with `DeadLetterQueue`.

mod common;

use std::time::Duration;

use bus_core::transport::{DeadLetterQueue, SubscribeOptions, Transport, WireEvent};
use common::{TestAmqp, next, unique};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_nack_comes_back_after_its_delay_as_another_attempt() {
    let Some((_test, transport)) = TestAmqp::connect("delayed_nack", |builder| builder).await
    else {
        return;
    };
    let name = format!("settle.{}", unique());
    let group = format!("g-{}", unique());
    let options = SubscribeOptions::new(&name).group(&group);
    let mut subscription = transport
        .subscribe(options.clone())
        .await
        .expect("subscribed");
    let event = WireEvent::new(unique(), "test", &name, "{}");
    transport.publish(event.clone()).await.expect("published");
    let delivery = next(&mut subscription, "the first delivery").await;
    assert_eq!(delivery.attempt(), 1);
    let delay = Duration::from_millis(700);
    let nacked = Instant::now();
    delivery.nack(delay, "later".into()).await.expect("nacked");
    let stats = transport
        .group_stats(&options)
        .await
        .expect("stats")
        .expect("a group");
    assert_eq!(
        (stats.lag, stats.pending),
        (0, 1),
        "waiting in the delay queue"
    );
    let again = next(&mut subscription, "the delivery after the delay").await;
    assert!(
        nacked.elapsed() >= delay,
        "back after {:?}",
        nacked.elapsed()
    );
    assert_eq!(
        (again.event().id.as_str(), again.attempt()),
        (event.id.as_str(), 2)
    );
    again.ack().await.expect("acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_to_their_group() {
    let Some((_test, transport)) = TestAmqp::connect("replay", |builder| builder).await else {
        return;
    };
    let name = format!("settle.{}", unique());
    let group = format!("g-{}", unique());
    let options = SubscribeOptions::new(&name).group(&group).max_deliveries(1);
    let mut subscription = transport.subscribe(options).await.expect("subscribed");
    let replay_group = format!("r-{}", unique());
    let letters =
        DeadLetterQueue::open(std::sync::Arc::new(transport.clone()), &name, &replay_group)
            .await
            .expect("a dead-letter queue");
    let event = WireEvent::new(unique(), "test", &name, "{}");
    transport.publish(event.clone()).await.expect("published");
    let delivery = next(&mut subscription, "the poison").await;
    delivery
        .nack(Duration::ZERO, "broken".into())
        .await
        .expect("dead-lettered");
    let report = letters
        .replay(Duration::from_secs(1))
        .await
        .expect("replayed");
    assert_eq!(report.replayed, 1);
    let replayed = next(&mut subscription, "the replayed event").await;
    assert_eq!(replayed.event().ty, name);
    assert_eq!(
        replayed.attempt(),
        1,
        "a replay is a new event to the group"
    );
    assert_eq!(
        replayed
            .event()
            .extensions
            .get(bus_core::transport::REPLAY_OF),
        Some(&format!("{}.dead.{group}", event.id))
    );
    replayed.ack().await.expect("acked");
}
