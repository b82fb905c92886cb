//! An `EventBus` with the NATS transport: the same listeners, now fed by JetStream. Two
//! services of two instances each (four buses, one process): each service handles each event
//! once, its instances share the work; a poison event is dead-lettered after the listener's
//! retries while the others flow.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus_core::transport::{SubscribeOptions, Transport};
use bus_core::{EventBus, Policy};
use common::{PATIENCE, TestNats, next};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderCreated {
    id: u64,
}

fn bus_on(nats: &TestNats, service: &str) -> EventBus {
    EventBus::builder()
        .service(service)
        .transport(nats.transport.clone())
        .distributed::<OrderCreated>()
        .build()
}

async fn receive<T>(receiver: &mut mpsc::UnboundedReceiver<T>, count: usize) -> Vec<T> {
    let mut received = Vec::new();
    while received.len() < count {
        match tokio::time::timeout(PATIENCE, receiver.recv()).await {
            Ok(Some(value)) => received.push(value),
            _ => panic!("received {} of {count}", received.len()),
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_fan_out_and_instances_compete_through_jetstream() {
    let Some(nats) = TestNats::connect("services_fan_out_and_instances_compete", |b| b).await
    else {
        return;
    };
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let mut buses = Vec::new();
    for service in ["billing", "shipping"] {
        // One event at a time per instance, and each holds its first event until the other
        // instance of its service has one: both take part.
        let both_busy = Arc::new(tokio::sync::Barrier::new(2));
        for instance in [1, 2] {
            let bus = bus_on(&nats, service);
            let sender = sender.clone();
            let both_busy = Arc::clone(&both_busy);
            let first = Arc::new(AtomicBool::new(true));
            bus.on("orders.created", move |order: Arc<OrderCreated>| {
                let (sender, both_busy, first) =
                    (sender.clone(), Arc::clone(&both_busy), Arc::clone(&first));
                async move {
                    if first.swap(false, Ordering::SeqCst) {
                        both_busy.wait().await;
                    }
                    let _ = sender.send((service, instance, order.id));
                }
            })
            .policy(Policy::new().concurrency(1))
            .add();
            let info = &bus.listeners("orders.created")[0];
            assert!(info.is_distributed());
            assert!(info.group().unwrap().starts_with(&format!("{service}.")));
            bus.ready().await.unwrap();
            buses.push(bus);
        }
    }
    let events = 100_u64;
    for id in 0..events {
        let report = buses[id as usize % 4]
            .emit("orders.created", OrderCreated { id })
            .await;
        assert!(matches!(report.published(), Some(Ok(()))), "{report:?}");
    }
    let received = receive(&mut receiver, 2 * events as usize).await;
    for service in ["billing", "shipping"] {
        let mut ids: Vec<u64> = received
            .iter()
            .filter(|(s, _, _)| *s == service)
            .map(|(_, _, id)| *id)
            .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            (0..events).collect::<Vec<_>>(),
            "{service}: each event once"
        );
        for instance in [1, 2] {
            assert!(
                received
                    .iter()
                    .any(|(s, i, _)| *s == service && *i == instance),
                "{service} instance {instance} took part"
            );
        }
    }
    for bus in &buses {
        bus.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_after_the_retries_and_the_others_flow() {
    let Some(nats) = TestNats::connect("a_poison_event_is_dead_lettered", |b| b).await else {
        return;
    };
    let mut dead = nats
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .unwrap();
    let bus = bus_on(&nats, "billing");
    let (sender, mut receiver) = mpsc::unbounded_channel();
    bus.on("orders.created", move |order: Arc<OrderCreated>| {
        let sender = sender.clone();
        async move {
            if order.id == 13 {
                return Err(format!("order {} is poison", order.id));
            }
            let _ = sender.send(order.id);
            Ok(())
        }
    })
    .policy(Policy::new().retry(2).backoff(Duration::from_millis(10)))
    .add();
    bus.ready().await.unwrap();
    for id in [12, 13, 14] {
        assert!(
            bus.emit("orders.created", OrderCreated { id })
                .await
                .is_ok()
        );
    }
    let mut flowed = receive(&mut receiver, 2).await;
    flowed.sort_unstable();
    assert_eq!(flowed, [12, 14]);
    let letter = next(&mut dead, "the dead letter").await;
    let event = letter.event();
    assert_eq!(event.ty, "dead-letter.orders.created");
    assert_eq!(event.extensions["deadletterattempts"], "3");
    assert!(event.extensions["deadletterreason"].contains("order 13 is poison"));
    letter.ack().await.unwrap();
    bus.shutdown(Duration::from_secs(5)).await;
}
