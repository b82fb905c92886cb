//! The streams' limits and the groups' inactive threshold (issue 15, point 8): what a stream
//! the transport creates gets, what an operator set on an existing one keeps, the dead
//! letters' stream of their own, replicas, and limits the server really applies.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bus_core::transport::{
    Retention, SubscribeOptions, Transport, TransportError, TransportSubscription, WireEvent,
};
use bus_nats::{
    DEFAULT_DEAD_LETTER_RETENTION, DEFAULT_INACTIVE_THRESHOLD, DEFAULT_RETENTION, NatsError,
    NatsTransport,
};
use common::{SHARED_URL, StreamCleanup, TestNats, fresh_prefix, next, test_stream_name, unique};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// How long a test waits for the server to expire something.
const EXPIRY_PATIENCE: Duration = Duration::from_secs(60);

/// The configuration of stream `name`, as the server has it.
async fn stream_config(nats: &NatsTransport, name: &str) -> stream::Config {
    let mut stream = nats.jetstream().get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

/// The number of messages in stream `name`.
async fn stream_messages(nats: &NatsTransport, name: &str) -> u64 {
    let mut stream = nats.jetstream().get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// The shared server's JetStream context, on a connection of the "operator" (not the
/// transport's). `None` when the server is down and this is not CI.
async fn operator(test: &str) -> Option<jetstream::Context> {
    match async_nats::connect(SHARED_URL).await {
        Ok(client) => Some(jetstream::new(client)),
        Err(error) if !common::ci() => {
            common::skip(test, format_args!("NATS is not reachable: {error}"));
            None
        }
        Err(error) => panic!("{test}: NATS is not reachable at {SHARED_URL}: {error}"),
    }
}

/// Polls `done` every 100 ms until it holds, for at most `patience`; panics with `what`.
async fn wait_until<F, Fut>(patience: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_gets_the_configured_limits() {
    let Some(nats) = TestNats::connect("a_new_stream_gets_the_configured_limits", |b| {
        b.retention([
            Retention::MaxAge(HOUR),
            Retention::MaxLen(1000),
            Retention::MaxBytes(1 << 20),
        ])
        .dead_letter_retention(Retention::MaxLen(50))
        .replicas(1)
    })
    .await
    else {
        return;
    };
    let events = stream_config(&nats, nats.stream_name()).await;
    assert_eq!(events.subjects, [format!("{}.>", nats.prefix)]);
    assert_eq!(events.max_age, HOUR);
    assert_eq!(events.max_messages, 1000);
    assert_eq!(events.max_bytes, 1 << 20);
    assert_eq!(events.num_replicas, 1);
    assert_eq!(events.discard, stream::DiscardPolicy::Old);

    let dead_name = nats
        .dead_letter_stream_name()
        .expect("a new deployment keeps its dead letters apart");
    assert_eq!(dead_name, format!("{}_DEAD_LETTERS", nats.stream_name()));
    let dead = stream_config(&nats, dead_name).await;
    assert_eq!(dead.subjects, [format!("{}-dead-letter.>", nats.prefix)]);
    assert_eq!(dead.max_messages, 50);
    assert_eq!(
        dead.max_age,
        Duration::ZERO,
        "no age limit for the dead letters"
    );
    assert!(dead.max_bytes < 1, "no size limit: {}", dead.max_bytes);
    assert_eq!(dead.num_replicas, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_and_groups_get_the_documented_defaults() {
    let Some(nats) = TestNats::connect("new_streams_get_the_defaults", |b| b).await else {
        return;
    };
    assert_eq!(DEFAULT_RETENTION, Retention::MaxAge(7 * DAY));
    assert_eq!(DEFAULT_DEAD_LETTER_RETENTION, Retention::MaxAge(30 * DAY));
    assert_eq!(DEFAULT_INACTIVE_THRESHOLD, 30 * DAY);

    let events = stream_config(&nats, nats.stream_name()).await;
    assert_eq!(
        (events.max_age, events.max_messages, events.max_bytes),
        (7 * DAY, -1, -1)
    );
    assert_eq!(events.num_replicas, 1);
    let dead_name = nats.dead_letter_stream_name().expect("kept apart");
    let dead = stream_config(&nats, dead_name).await;
    assert_eq!(
        (dead.max_age, dead.max_messages, dead.max_bytes),
        (30 * DAY, -1, -1)
    );

    let _billing = nats
        .subscribe(SubscribeOptions::new("orders.*").group("billing"))
        .await
        .unwrap();
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let consumer = stream.consumer_info("billing").await.unwrap();
    assert_eq!(consumer.config.inactive_threshold, 30 * DAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_have_a_stream_and_limits_of_their_own() {
    let Some(nats) = TestNats::connect("dead_letters_have_a_stream_of_their_own", |b| {
        b.retention(Retention::MaxLen(100))
            .dead_letter_retention(Retention::MaxLen(2))
    })
    .await
    else {
        return;
    };
    let mut jobs = nats
        .subscribe(SubscribeOptions::new("jobs.*").group("workers"))
        .await
        .unwrap();
    for n in 0..3 {
        nats.publish(WireEvent::new(
            format!("job-{n}-{}", unique()),
            "t",
            "jobs.run",
            "{}",
        ))
        .await
        .unwrap();
    }
    for _ in 0..3 {
        next(&mut jobs, "a job")
            .await
            .reject("cannot run".to_owned())
            .await
            .unwrap();
    }
    assert_eq!(nats.dead_lettered(), 3);
    let dead_name = nats.dead_letter_stream_name().expect("kept apart");
    // Three dead letters, two kept: the dead letters' own limit; the events are all there.
    assert_eq!(stream_messages(&nats, dead_name).await, 2);
    assert_eq!(stream_messages(&nats, nats.stream_name()).await, 3);
    let mut dead_stream = nats.jetstream().get_stream(dead_name).await.unwrap();
    let last = dead_stream
        .get_last_raw_message_by_subject(&format!("{}-dead-letter.jobs.run", nats.prefix))
        .await
        .unwrap();
    assert_eq!(
        last.headers.get("ce-type").map(|value| value.as_str()),
        Some("dead-letter.jobs.run")
    );
    assert_eq!(dead_stream.info().await.unwrap().state.first_sequence, 2);

    // They are read as ever, by their names.
    let mut dead = nats
        .subscribe(SubscribeOptions::new("dead-letter.jobs.*").group("ops"))
        .await
        .unwrap();
    let letter = WireEvent::new(unique(), "t", "dead-letter.jobs.manual", "{}");
    nats.publish(letter.clone()).await.unwrap();
    let delivery = next(&mut dead, "a dead letter").await;
    assert_eq!(delivery.event(), &letter);
    delivery.ack().await.unwrap();
}

/// `>` matches every name, dead letters included, as in the memory transport: one consumer on
/// each stream, for a group too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_all_pattern_sees_events_and_dead_letters() {
    let Some(nats) = TestNats::connect("a_catch_all_pattern_sees_dead_letters", |b| b).await else {
        return;
    };
    let mut everything = nats.subscribe(SubscribeOptions::new(">")).await.unwrap();
    let mut audit = nats
        .subscribe(SubscribeOptions::new("*.>").group("audit"))
        .await
        .unwrap();
    let mut orders = nats
        .subscribe(SubscribeOptions::new("orders.*").group("billing"))
        .await
        .unwrap();
    let event = WireEvent::new(unique(), "t", "orders.created", "{}");
    nats.publish(event.clone()).await.unwrap();
    next(&mut orders, "the order")
        .await
        .reject("no".to_owned())
        .await
        .unwrap();

    async fn names(subscription: &mut TransportSubscription, what: &str) -> Vec<String> {
        let mut names = Vec::new();
        for _ in 0..2 {
            let delivery = next(subscription, what).await;
            names.push(delivery.event().ty.clone());
            delivery.ack().await.unwrap();
        }
        names.sort();
        names
    }
    let expected = ["dead-letter.orders.created", "orders.created"];
    assert_eq!(names(&mut everything, "`>`").await, expected);
    assert_eq!(names(&mut audit, "group on `*.>`").await, expected);
    let dead_name = nats.dead_letter_stream_name().expect("kept apart");
    for stream in [nats.stream_name(), dead_name] {
        let stream = nats.jetstream().get_stream(stream).await.unwrap();
        let info = stream.consumer_info("audit").await.unwrap();
        assert_eq!(info.num_ack_pending, 0, "{}", info.stream_name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_beyond_one_fail_at_once_on_a_single_server() {
    let test = "replicas_beyond_one_fail_at_once_on_a_single_server";
    let Some(js) = operator(test).await else {
        return;
    };
    let prefix = fresh_prefix();
    let stream_name = test_stream_name(&prefix);
    let _cleanup = StreamCleanup::new(SHARED_URL, &stream_name);
    let builder = || {
        NatsTransport::builder(SHARED_URL)
            .subject_prefix(prefix.clone())
            .stream_name(stream_name.clone())
    };
    // Bounded: the failure must come back, not hang.
    let refused = tokio::time::timeout(Duration::from_secs(30), builder().replicas(3).connect())
        .await
        .expect("the connect answers");
    let error = refused.expect_err("a single server keeps 1 replica");
    let TransportError::Broker { source, .. } = &error else {
        panic!("expected a broker error, got {error:?}");
    };
    match source.downcast_ref::<NatsError>() {
        Some(NatsError::Replicas { replicas: 3, .. }) => {}
        other => panic!("expected NatsError::Replicas, got {other:?}"),
    }
    assert!(error.to_string().contains("replicas(1)"), "{error}");
    for name in [stream_name.clone(), format!("{stream_name}_DEAD_LETTERS")] {
        assert!(
            js.get_stream(&name).await.is_err(),
            "{name} was not created"
        );
    }

    for replicas in [0, 6] {
        match builder().replicas(replicas).connect().await {
            Err(TransportError::Invalid {
                what: "replicas", ..
            }) => {}
            other => panic!("replicas({replicas}): expected Invalid, got {other:?}"),
        }
    }
    for retention in [Retention::MaxLen(0), Retention::MaxAge(Duration::ZERO)] {
        match builder().dead_letter_retention(retention).connect().await {
            Err(TransportError::Invalid {
                what: "dead-letter retention",
                ..
            }) => {}
            other => panic!("{retention:?}: expected Invalid, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_consumer_gets_the_inactive_threshold() {
    let Some(nats) = TestNats::connect("a_group_consumer_gets_the_inactive_threshold", |b| {
        b.inactive_threshold(2 * HOUR)
    })
    .await
    else {
        return;
    };
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    let billing = nats
        .subscribe(SubscribeOptions::new("orders.*").group("billing"))
        .await
        .unwrap();
    let info = stream.consumer_info("billing").await.unwrap();
    assert_eq!(info.config.inactive_threshold, 2 * HOUR);
    drop(billing);

    // A group's consumer made without one (by an earlier bus-nats: never expires) gets it
    // when a subscription of the group opens.
    let older = NatsTransport::builder(SHARED_URL)
        .subject_prefix(nats.prefix.clone())
        .stream_name(nats.stream_name())
        .inactive_threshold(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    let _shipping = older
        .subscribe(SubscribeOptions::new("orders.*").group("shipping"))
        .await
        .unwrap();
    let info = stream.consumer_info("shipping").await.unwrap();
    assert_eq!(info.config.inactive_threshold, Duration::ZERO);
    let _shipping_again = nats
        .subscribe(SubscribeOptions::new("orders.*").group("shipping"))
        .await
        .unwrap();
    let info = stream.consumer_info("shipping").await.unwrap();
    assert_eq!(info.config.inactive_threshold, 2 * HOUR);
}

/// The point of the threshold: the consumer of a group nobody subscribes to any more goes
/// away by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_deletes_a_group_consumer_left_inactive() {
    let Some(nats) = TestNats::connect("the_server_deletes_a_group_consumer_left_inactive", |b| {
        b.inactive_threshold(Duration::from_secs(2))
    })
    .await
    else {
        return;
    };
    let mut renamed = nats
        .subscribe(SubscribeOptions::new("orders.*").group("old-name"))
        .await
        .unwrap();
    // Polled once, so that its pull request is open: the group is active.
    let probe = WireEvent::new(unique(), "t", "orders.probe", "{}");
    nats.publish(probe.clone()).await.unwrap();
    next(&mut renamed, "the probe").await.ack().await.unwrap();
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    drop(renamed);
    nats.flush().await;
    wait_until(EXPIRY_PATIENCE, "the inactive consumer deleted", || {
        let stream = stream.clone();
        async move { stream.consumer_info("old-name").await.is_err() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_limits_on_existing_streams_are_kept() {
    let test = "an_operators_limits_on_existing_streams_are_kept";
    let Some(js) = operator(test).await else {
        return;
    };
    let prefix = fresh_prefix();
    let stream_name = test_stream_name(&prefix);
    let _cleanup = StreamCleanup::new(SHARED_URL, &stream_name);
    // The operator made both streams, with limits of their own.
    js.create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}.>")],
        max_age: 3 * HOUR,
        max_messages: 10,
        max_bytes: 1 << 16,
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    js.create_stream(stream::Config {
        name: format!("{stream_name}_DEAD_LETTERS"),
        subjects: vec![format!("{prefix}-dead-letter.>")],
        max_messages: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    let Some(nats) = TestNats::connect_with_prefix(SHARED_URL, test, &prefix, |b| {
        b.retention([Retention::MaxAge(HOUR), Retention::MaxLen(1000)])
            .dead_letter_retention(Retention::MaxAge(DAY))
    })
    .await
    else {
        return;
    };
    let events = stream_config(&nats, &stream_name).await;
    assert_eq!(
        (events.max_age, events.max_messages, events.max_bytes),
        (3 * HOUR, 10, 1 << 16),
        "the operator's limits are kept"
    );
    // The duplicate window is the transport's (2 min, within the 3 h max_age).
    assert_eq!(events.duplicate_window, Duration::from_secs(120));
    let dead_name = nats.dead_letter_stream_name().expect("kept apart");
    let dead = stream_config(&nats, dead_name).await;
    assert_eq!((dead.max_age, dead.max_messages), (Duration::ZERO, 5));
    // And they work as before.
    let mut orders = nats
        .subscribe(SubscribeOptions::new("orders.*").group("billing"))
        .await
        .unwrap();
    let event = WireEvent::new(unique(), "t", "orders.created", "{}");
    nats.publish(event.clone()).await.unwrap();
    assert_eq!(next(&mut orders, "the order").await.event(), &event);
}

/// An events' stream made before the dead letters had a stream of their own, holding none:
/// it keeps its limits, and the dead letters' stream is created next to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_without_dead_letters_gets_a_dead_letter_stream() {
    let test = "an_existing_stream_without_dead_letters_gets_a_dead_letter_stream";
    let Some(js) = operator(test).await else {
        return;
    };
    let prefix = fresh_prefix();
    let stream_name = test_stream_name(&prefix);
    let _cleanup = StreamCleanup::new(SHARED_URL, &stream_name);
    js.create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let Some(nats) = TestNats::connect_with_prefix(SHARED_URL, test, &prefix, |b| {
        b.dead_letter_retention(Retention::MaxLen(7))
    })
    .await
    else {
        return;
    };
    let events = stream_config(&nats, &stream_name).await;
    assert_eq!(
        (events.max_age, events.max_messages),
        (Duration::ZERO, -1),
        "unbounded as it was"
    );
    let dead_name = nats.dead_letter_stream_name().expect("created");
    assert_eq!(stream_config(&nats, dead_name).await.max_messages, 7);
}

/// An events' stream made before the dead letters had a stream of their own, holding some:
/// they stay where they are, and the new ones join them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_holding_dead_letters_keeps_them() {
    let test = "an_existing_stream_holding_dead_letters_keeps_them";
    let Some(js) = operator(test).await else {
        return;
    };
    let prefix = fresh_prefix();
    let stream_name = test_stream_name(&prefix);
    let _cleanup = StreamCleanup::new(SHARED_URL, &stream_name);
    js.create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    // A dead letter as an earlier bus-nats wrote it.
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "old-1.dead.billing"),
        ("ce-source", "shop"),
        ("ce-type", "dead-letter.orders.created"),
    ] {
        headers.insert(name, value);
    }
    js.publish_with_headers(
        format!("{prefix}.dead-letter.orders.created"),
        headers,
        "{}".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let Some(nats) = TestNats::connect_with_prefix(SHARED_URL, test, &prefix, |b| b).await else {
        return;
    };
    assert_eq!(nats.dead_letter_stream_name(), None);
    assert!(
        js.get_stream(format!("{stream_name}_DEAD_LETTERS"))
            .await
            .is_err(),
        "no dead letters' stream"
    );
    assert_eq!(
        nats.subject("dead-letter.orders.created"),
        format!("{prefix}.dead-letter.orders.created")
    );
    let mut dead = nats
        .subscribe(SubscribeOptions::new("dead-letter.>").group("ops"))
        .await
        .unwrap();
    let mut orders = nats
        .subscribe(SubscribeOptions::new("orders.*").group("billing"))
        .await
        .unwrap();
    nats.publish(WireEvent::new(unique(), "shop", "orders.created", "{}"))
        .await
        .unwrap();
    next(&mut orders, "the order")
        .await
        .reject("no".to_owned())
        .await
        .unwrap();
    let letter = next(&mut dead, "the new dead letter").await;
    assert_eq!(letter.event().ty, "dead-letter.orders.created");
    assert_ne!(letter.event().id, "old-1.dead.billing");
    letter.ack().await.unwrap();
    // Old and new together, in the events' stream.
    assert_eq!(stream_messages(&nats, &stream_name).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_expires_events_on_the_server() {
    let Some(nats) = TestNats::connect("max_age_expires_events_on_the_server", |b| {
        b.retention(Retention::MaxAge(Duration::from_secs(1)))
    })
    .await
    else {
        return;
    };
    let events = stream_config(&nats, nats.stream_name()).await;
    assert_eq!(events.max_age, Duration::from_secs(1));
    assert_eq!(
        events.duplicate_window,
        Duration::from_secs(1),
        "the duplicate window fits in the max age"
    );
    nats.publish(WireEvent::new(unique(), "t", "logs.line", "x"))
        .await
        .unwrap();
    assert_eq!(stream_messages(&nats, nats.stream_name()).await, 1);
    let transport = &nats.transport;
    wait_until(EXPIRY_PATIENCE, "the event expired", || async move {
        stream_messages(transport, transport.stream_name()).await == 0
    })
    .await;
}
