//! A private nats-server, killed and started again while 1,000 events are published: every
//! publish that returned `Ok` is stored once, and a group's subscription resumes by itself.
//! And the transport's connection state (`is_connected`, which `EventBus::health` reports)
//! follows the server going down and coming back.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus_core::transport::{SubscribeOptions, Transport, WireEvent};
use common::{PATIENCE, PrivateNatsServer, TestNats, unique};
use futures_util::StreamExt;

const EVENTS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_restarts() {
    let test = "nothing_acknowledged_is_lost_across_restarts";
    let Some(mut server) = PrivateNatsServer::start(test) else {
        return;
    };
    let url = server.url();
    let Some(nats) = TestNats::connect_to(&url, test, |builder| {
        builder
            .restartable(true)
            .publish_deadline(Duration::from_secs(30))
            .request_timeout(Duration::from_secs(2))
    })
    .await
    else {
        panic!("{test}: the private server at {url} is not reachable");
    };
    assert!(nats.capabilities().restartable);
    let mut subscription = nats
        .subscribe(SubscribeOptions::new("ledger.>").group("auditors"))
        .await
        .unwrap();

    // Publish from a task; restart the server twice while it runs.
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let transport = nats.transport.clone();
        let published = Arc::clone(&published);
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(EVENTS);
            for n in 0..EVENTS {
                let id = format!("{n}-{}", unique());
                let event = WireEvent::new(id.clone(), "ledger", "ledger.entry", n.to_string());
                transport
                    .publish(event)
                    .await
                    .unwrap_or_else(|error| panic!("publish {n} failed: {error}"));
                ids.push(id);
                published.fetch_add(1, Ordering::SeqCst);
            }
            ids
        })
    };
    let mut restarts = 0;
    for threshold in [EVENTS / 4, EVENTS / 2] {
        while published.load(Ordering::SeqCst) < threshold && !publisher.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if publisher.is_finished() {
            break;
        }
        server.restart(); // SIGKILL, then the same port and store
        restarts += 1;
    }
    let ids = tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("the publishes finish")
        .expect("every publish returned Ok");
    assert_eq!(restarts, 2, "the server was restarted during the publishes");

    // Every acknowledged event is stored, once.
    let stream = nats
        .jetstream()
        .get_stream(nats.stream_name())
        .await
        .unwrap();
    assert_eq!(
        stream.get_info().await.unwrap().state.messages,
        EVENTS as u64
    );

    // The group's subscription, opened before the restarts, gets them all.
    let expected: BTreeSet<String> = ids.into_iter().collect();
    let mut seen = BTreeSet::new();
    while seen.len() < EVENTS {
        let delivery = match tokio::time::timeout(PATIENCE, subscription.next()).await {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(error))) => panic!("subscription error: {error}"),
            other => panic!(
                "{} of {EVENTS} events received, then {}",
                seen.len(),
                if other.is_err() { "nothing" } else { "the end" }
            ),
        };
        seen.insert(delivery.event().id.clone());
        delivery.ack().await.unwrap();
    }
    assert_eq!(seen, expected);
}

/// Waits until `is_connected` says `connected`.
async fn connection_becomes(nats: &TestNats, connected: bool) {
    tokio::time::timeout(PATIENCE, async {
        while nats.is_connected() != Some(connected) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("is_connected() became Some({connected}) within {PATIENCE:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_state_follows_the_server() {
    let test = "the_connection_state_follows_the_server";
    let Some(mut server) = PrivateNatsServer::start(test) else {
        return;
    };
    let url = server.url();
    let Some(nats) = TestNats::connect_to(&url, test, |builder| builder.restartable(true)).await
    else {
        panic!("{test}: the private server at {url} is not reachable");
    };
    assert_eq!(nats.is_connected(), Some(true));
    server.stop();
    connection_becomes(&nats, false).await;
    server.launch();
    connection_becomes(&nats, true).await;
}
