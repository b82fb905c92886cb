//! Settling deliveries: nack and redelivery, the last attempt and the dead letter, reject, a
//! delivery dropped unsettled, and a delivery whose ack wait expired.

mod common;

use std::time::Duration;

use bus_core::transport::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_OF, DEAD_LETTER_REASON, SubscribeOptions,
    Transport, WireEvent, dead_letter_name,
};
use bus_nats::NatsTransport;
use common::{TestNats, assert_nothing_more, next, unique};
use futures_util::StreamExt;

/// Checks that `group` has nothing left to deliver or settle. An ack is not confirmed by the
/// server (`ack_sync` is off), so the consumer's state is read until it converges, for at most
/// ten seconds.
async fn assert_settled(nats: &NatsTransport, group: &str) {
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = stream
            .consumer_info(NatsTransport::consumer_name(group))
            .await
            .unwrap();
        let settled = info.num_pending == 0 && info.num_ack_pending == 0;
        if settled || tokio::time::Instant::now() >= deadline {
            assert_eq!(info.num_pending, 0, "{group}: events left undelivered");
            assert_eq!(
                info.num_ack_pending, 0,
                "{group}: deliveries left unsettled"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_redelivers_with_the_next_attempt() {
    let Some(nats) = TestNats::connect("a_nack_redelivers_with_the_next_attempt", |b| b).await
    else {
        return;
    };
    let mut subscription = nats
        .subscribe(SubscribeOptions::new("pay.>").group("payments"))
        .await
        .unwrap();
    let event = WireEvent::new(unique(), "t", "pay.charge", "{}");
    nats.publish(event.clone()).await.unwrap();

    let first = next(&mut subscription, "the first delivery").await;
    assert_eq!((first.event(), first.attempt()), (&event, 1));
    first
        .nack(Duration::from_millis(50), "card declined".into())
        .await
        .unwrap();
    let second = next(&mut subscription, "the redelivery").await;
    assert_eq!((second.event(), second.attempt()), (&event, 2));
    second.ack().await.unwrap();
    assert_settled(&nats, "payments").await;
    let what = "the group after the redelivery was acked";
    assert_nothing_more(&mut subscription, &nats.transport, "pay.probe", what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_nack_dead_letters_with_the_extensions() {
    let Some(nats) = TestNats::connect("the_last_nack_dead_letters_with_the_extensions", |b| {
        b.ack_sync(true)
    })
    .await
    else {
        return;
    };
    let mut dead = nats
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .unwrap();
    let mut subscription = nats
        .subscribe(
            SubscribeOptions::new("mail.*")
                .group("mailer")
                .max_deliveries(3),
        )
        .await
        .unwrap();
    let poison = WireEvent::new(unique(), "t", "mail.send", "{\"to\":\"nobody\"}")
        .extension("causationid", "c-1");
    let healthy = WireEvent::new(unique(), "t", "mail.send", "{}");
    nats.publish(poison.clone()).await.unwrap();
    nats.publish(healthy.clone()).await.unwrap();

    let mut poison_attempts = Vec::new();
    let mut healthy_seen = false;
    while poison_attempts.len() < 3 || !healthy_seen {
        let delivery = next(&mut subscription, "the poison and the healthy event").await;
        if delivery.event().id == healthy.id {
            healthy_seen = true;
            delivery.ack().await.unwrap(); // the stream keeps flowing
        } else {
            poison_attempts.push(delivery.attempt());
            delivery
                .nack(Duration::from_millis(20), "smtp down".into())
                .await
                .unwrap();
        }
    }
    assert_eq!(poison_attempts, [1, 2, 3]);

    let letter = next(&mut dead, "the dead letter").await;
    let event = letter.event();
    assert_eq!(event.ty, dead_letter_name("mail.send"));
    assert_eq!(event.id, format!("{}.dead.mailer", poison.id));
    assert_eq!(event.data, poison.data);
    assert_eq!(event.source, poison.source);
    assert_eq!(event.extensions["causationid"], "c-1");
    assert_eq!(event.extensions[DEAD_LETTER_GROUP], "mailer");
    assert_eq!(event.extensions[DEAD_LETTER_OF], poison.id);
    assert_eq!(event.extensions[DEAD_LETTER_ATTEMPTS], "3");
    assert_eq!(
        event.extensions[DEAD_LETTER_REASON],
        "smtp down (after 3 deliveries)"
    );
    letter.ack().await.unwrap();
    assert_settled(&nats, "mailer").await;
    let what = "the group after the dead letter";
    assert_nothing_more(&mut subscription, &nats.transport, "mail.probe", what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_dead_letters_at_once() {
    let Some(nats) = TestNats::connect("a_reject_dead_letters_at_once", |b| b).await else {
        return;
    };
    let mut dead = nats
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .unwrap();
    let mut subscription = nats
        .subscribe(SubscribeOptions::new("import.row").group("importer"))
        .await
        .unwrap();
    let event = WireEvent::new(unique(), "t", "import.row", "not a row");
    nats.publish(event.clone()).await.unwrap();
    let delivery = next(&mut subscription, "the row").await;
    delivery
        .reject("unparseable row\non two lines".into())
        .await
        .unwrap();

    let letter = next(&mut dead, "the dead letter").await;
    assert_eq!(letter.event().ty, "dead-letter.import.row");
    assert_eq!(letter.event().data, event.data);
    // Whole: the header value is percent-encoded, so the line break travels.
    assert_eq!(
        letter.event().extensions[DEAD_LETTER_REASON],
        "unparseable row\non two lines"
    );
    assert_eq!(letter.event().extensions[DEAD_LETTER_GROUP], "importer");
    assert_eq!(letter.event().extensions[DEAD_LETTER_ATTEMPTS], "1");
    assert_eq!(letter.event().extensions[DEAD_LETTER_OF], event.id);
    letter.ack().await.unwrap();
    assert_settled(&nats, "importer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_delivery_dropped_is_dead_lettered() {
    let Some(nats) = TestNats::connect("a_last_delivery_dropped_is_dead_lettered", |b| b).await
    else {
        return;
    };
    let mut dead = nats
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .unwrap();
    let mut subscription = nats
        .subscribe(
            SubscribeOptions::new("crash.job")
                .group("crashy")
                .max_deliveries(2),
        )
        .await
        .unwrap();
    let event = WireEvent::new(unique(), "t", "crash.job", "{}");
    nats.publish(event.clone()).await.unwrap();
    let first = next(&mut subscription, "delivery 1").await;
    assert_eq!(first.attempt(), 1);
    drop(first); // not the last: delivered again
    let second = next(&mut subscription, "delivery 2").await;
    assert_eq!(second.attempt(), 2);
    drop(second); // the last: dead-lettered
    let letter = next(&mut dead, "the dead letter").await;
    assert_eq!(letter.event().extensions[DEAD_LETTER_OF], event.id);
    assert_eq!(letter.event().extensions[DEAD_LETTER_ATTEMPTS], "2");
    assert_eq!(
        letter.event().extensions[DEAD_LETTER_REASON],
        "dropped unsettled (after 2 deliveries)"
    );
    letter.ack().await.unwrap();
    assert_settled(&nats, "crashy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_delivery_comes_back() {
    let Some(nats) = TestNats::connect("a_dropped_delivery_comes_back", |b| b).await else {
        return;
    };
    // A long ack wait: a quick redelivery comes from the nak on drop, not from the timeout.
    let mut subscription = nats
        .subscribe(
            SubscribeOptions::new("work.>")
                .group("w")
                .ack_wait(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let event = WireEvent::new(unique(), "t", "work.item", "{}");
    nats.publish(event.clone()).await.unwrap();
    let delivery = next(&mut subscription, "the delivery").await;
    drop(delivery); // a handler cancelled mid-way
    let again = next(&mut subscription, "the redelivery").await;
    assert_eq!((again.event(), again.attempt()), (&event, 2));
    again.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_last_attempt_is_dead_lettered_not_lost() {
    let Some(nats) =
        TestNats::connect("an_expired_last_attempt_is_dead_lettered_not_lost", |b| b).await
    else {
        return;
    };
    let mut dead = nats
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .unwrap();
    let mut subscription = nats
        .subscribe(
            SubscribeOptions::new("slow.job")
                .group("slow")
                .max_deliveries(1)
                .ack_wait(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let event = WireEvent::new(unique(), "t", "slow.job", "{}");
    nats.publish(event.clone()).await.unwrap();
    let delivery = next(&mut subscription, "the only allowed delivery").await;
    assert_eq!(delivery.attempt(), 1);
    // Held past its ack wait, never settled (a hung handler): leak it so no nak is sent.
    std::mem::forget(delivery);
    // The subscription keeps pulling; the spare delivery is not handed out but dead-lettered.
    let (handed_out, mut handed) = tokio::sync::mpsc::unbounded_channel();
    let puller = tokio::spawn(async move {
        while let Some(item) = subscription.next().await {
            let _ = handed_out.send(item.map(|d| d.attempt()).map_err(|e| e.to_string()));
        }
    });
    let letter = next(&mut dead, "the dead letter of the expired delivery").await;
    assert_eq!(letter.event().id, format!("{}.dead.slow", event.id));
    assert_eq!(letter.event().extensions[DEAD_LETTER_ATTEMPTS], "1");
    assert!(
        letter.event().extensions[DEAD_LETTER_REASON]
            == "not settled within the ack wait (after 1 deliveries)",
        "{}",
        letter.event().extensions[DEAD_LETTER_REASON]
    );
    letter.ack().await.unwrap();
    assert_settled(&nats, "slow").await;
    puller.abort();
    assert!(
        handed.try_recv().is_err(),
        "the spare delivery was handed out"
    );
}
