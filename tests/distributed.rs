//! A bus with a transport, on the in-memory one (the NATS transport runs the same through
//! `bus-nats/tests/bus.rs`): serde events are published and every distributed listener gets
//! them from the broker, once per service; other events stay in process; failures are
//! retried then dead-lettered; undecodable messages are dead-lettered; a delivery cut short
//! by shutdown comes back to another instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus::transport::{MemoryTransport, SubscribeOptions, Transport, WireEvent};
use bus::{EventBus, Policy, policy::Group};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, bus::Event)]
#[event(name = "orders.created", distributed)]
struct OrderCreated {
    id: u64,
}

/// Not serde: stays in process.
#[derive(Debug)]
struct LocalOnly;

fn bus_on(transport: &MemoryTransport, service: &str) -> EventBus {
    EventBus::builder()
        .service(service)
        .transport(transport.clone())
        .distributed::<OrderCreated>()
        .build()
}

/// Receives `count` values, or fails the test after 10 s.
async fn receive<T>(receiver: &mut mpsc::UnboundedReceiver<T>, count: usize) -> Vec<T> {
    let mut received = Vec::new();
    while received.len() < count {
        match tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await {
            Ok(Some(value)) => received.push(value),
            _ => panic!("received {} of {count}", received.len()),
        }
    }
    received
}

/// The order id of a probe: published after everything a test checks.
const PROBE: u64 = u64::MAX;

/// Nothing more arrives: once every instance settled what it has, a probe published after
/// everything else is handled `probes` times (once per service), with nothing before it; and
/// nothing after it once the instances settled again. The probe shows that the consumers are
/// alive (a dead one fails here, where it would pass a wait for quiet), and the memory broker
/// hands a group its events in order, redeliveries first: an extra delivery queued before the
/// probe comes before it. Returns what the probe's handlers sent.
async fn assert_nothing_more<T: std::fmt::Debug>(
    receiver: &mut mpsc::UnboundedReceiver<T>,
    buses: &[&EventBus],
    probes: usize,
    is_probe: impl Fn(&T) -> bool,
) -> Vec<T> {
    for bus in buses {
        bus.drain().await;
    }
    let report = buses[0].emit_event(OrderCreated { id: PROBE }).await;
    assert!(report.is_ok(), "publishing the probe: {report:?}");
    let received = receive(receiver, probes).await;
    for value in &received {
        assert!(is_probe(value), "unexpected extra delivery: {value:?}");
    }
    for bus in buses {
        bus.drain().await;
    }
    if let Ok(more) = receiver.try_recv() {
        panic!("unexpected extra delivery after the probe: {more:?}");
    }
    received
}

#[tokio::test]
async fn a_published_event_reaches_the_listener_through_the_broker() {
    let transport = MemoryTransport::new();
    let bus = bus_on(&transport, "billing");
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let id = bus.add_listener("orders.created", move |order: Arc<OrderCreated>| {
        let sender = sender.clone();
        async move {
            let _ = sender.send((order.id, bus::event::current_event_id()));
        }
    });
    let info = bus.listeners("orders.created").pop().unwrap();
    assert!(info.is_distributed());
    assert_eq!(
        info.group(),
        Some(format!("billing.{}", info.name()).as_str()),
        "the group is the service and the listener"
    );
    bus.ready().await.unwrap();

    let report = bus.emit_event(OrderCreated { id: 7 }).await;
    assert!(matches!(report.published(), Some(Ok(()))), "{report:?}");
    assert_eq!(
        report.delivered(),
        0,
        "no in-process delivery: it comes from the broker"
    );
    let [(order, handled)] = receive(&mut receiver, 1).await.try_into().unwrap();
    assert_eq!(order, 7);
    assert_eq!(
        handled.as_ref(),
        report.event_id(),
        "the envelope crosses the wire"
    );
    assert_nothing_more(&mut receiver, &[&bus], 1, |(id, _)| *id == PROBE).await;
    assert!(bus.remove(id));
}

#[tokio::test]
async fn each_service_handles_each_event_once_and_instances_compete() {
    let transport = MemoryTransport::new();
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let mut buses = Vec::new();
    for service in ["billing", "shipping"] {
        // Each instance handles one event at a time and holds its first one until the other
        // instance has one too: both instances of the service take part.
        let both_busy = Arc::new(tokio::sync::Barrier::new(2));
        for instance in [1, 2] {
            let bus = bus_on(&transport, service);
            let sender = sender.clone();
            let both_busy = Arc::clone(&both_busy);
            let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
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
            bus.ready().await.unwrap();
            buses.push(bus);
        }
    }
    let events = 200;
    for id in 0..events {
        let report = buses[id as usize % 4].emit_event(OrderCreated { id }).await;
        assert!(report.is_ok(), "{report:?}");
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
    let buses: Vec<&EventBus> = buses.iter().collect();
    let probes = assert_nothing_more(&mut receiver, &buses, 2, |(_, _, id)| *id == PROBE).await;
    let mut services: Vec<&str> = probes.iter().map(|(service, _, _)| *service).collect();
    services.sort_unstable();
    assert_eq!(
        services,
        ["billing", "shipping"],
        "the probe, once per service"
    );
}

#[tokio::test]
async fn an_ungrouped_listener_gets_every_event_in_every_instance() {
    let transport = MemoryTransport::new();
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let mut buses = Vec::new();
    for instance in [1, 2] {
        let bus = bus_on(&transport, "cache");
        let sender = sender.clone();
        bus.on("orders.*", move |order: Arc<OrderCreated>| {
            let sender = sender.clone();
            async move {
                let _ = sender.send((instance, order.id));
            }
        })
        .policy(Policy::new().group(Group::Ungrouped))
        .add();
        assert_eq!(bus.listeners("orders.*")[0].group(), None);
        bus.ready().await.unwrap();
        buses.push(bus);
    }
    for id in 0..10 {
        buses[0].emit_event(OrderCreated { id }).await;
    }
    let mut received = receive(&mut receiver, 20).await;
    received.sort_unstable();
    let expected: Vec<(u32, u64)> = [1, 2]
        .into_iter()
        .flat_map(|instance| (0..10).map(move |id| (instance, id)))
        .collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn a_type_that_is_not_serde_stays_in_process_and_the_listing_says_so() {
    let transport = MemoryTransport::new();
    let bus = bus_on(&transport, "billing");
    let other = bus_on(&transport, "billing");
    let calls = Arc::new(AtomicUsize::new(0));
    for bus in [&bus, &other] {
        let calls = Arc::clone(&calls);
        bus.add_listener("orders.local", move |_: Arc<LocalOnly>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {}
        });
    }
    let info = &bus.listeners("orders.local")[0];
    assert!(!info.is_distributed());
    assert_eq!(info.group(), None);
    let report = bus.emit("orders.local", LocalOnly).await;
    assert!(report.published().is_none());
    assert_eq!(report.delivered(), 1);
    other.drain().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only this process's listener"
    );
}

#[tokio::test]
async fn the_bus_own_listeners_stay_in_process_beside_distributed_ones() {
    let transport = MemoryTransport::new();
    let bus = bus_on(&transport, "billing");
    let (sender, mut receiver) = mpsc::unbounded_channel();
    bus.add_listener("orders.created", move |order: Arc<OrderCreated>| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(order.id);
        }
    });
    bus.ready().await.unwrap();
    let waiting = bus.wait_for::<OrderCreated>("orders.created");
    let report = bus.emit_event(OrderCreated { id: 3 }).await;
    assert_eq!(report.delivered(), 1, "the wait_for, in process");
    assert_eq!(waiting.await.unwrap().id, 3);
    assert_eq!(
        receive(&mut receiver, 1).await,
        [3],
        "the listener, through the broker"
    );
}

#[tokio::test]
async fn failed_deliveries_are_retried_then_dead_lettered_and_the_stream_flows() {
    let transport = MemoryTransport::new();
    let bus = bus_on(&transport, "billing");
    let mut dead = transport
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (sender, mut receiver) = mpsc::unbounded_channel();
    {
        let attempts = Arc::clone(&attempts);
        bus.on("orders.created", move |order: Arc<OrderCreated>| {
            let attempts = Arc::clone(&attempts);
            let sender = sender.clone();
            async move {
                if order.id == 13 {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    return Err(format!("order {} is poison", order.id));
                }
                let _ = sender.send(order.id);
                Ok(())
            }
        })
        .policy(Policy::new().retry(2).backoff(Duration::from_millis(1)))
        .add();
    }
    bus.ready().await.unwrap();
    for id in [12, 13, 14] {
        bus.emit_event(OrderCreated { id }).await;
    }
    let mut flowed = receive(&mut receiver, 2).await;
    flowed.sort_unstable();
    assert_eq!(flowed, [12, 14], "the others keep flowing");
    let letter = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("a dead letter")
        .unwrap()
        .unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "1 try + 2 retries");
    let event = letter.event();
    assert_eq!(event.ty, "dead-letter.orders.created");
    assert_eq!(event.extensions["deadletterattempts"], "3");
    let reason = &event.extensions["deadletterreason"];
    assert!(reason.contains("order 13 is poison"), "{reason}");
    assert!(
        reason.contains("listener `"),
        "the reason names the listener: {reason}"
    );
    letter.ack().await.unwrap();
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_dead_lettered_and_the_consumer_goes_on() {
    let transport = MemoryTransport::new();
    let bus = bus_on(&transport, "billing");
    let mut dead = transport
        .subscribe(SubscribeOptions::new("dead-letter.>"))
        .await
        .unwrap();
    let (sender, mut receiver) = mpsc::unbounded_channel();
    bus.add_listener("orders.created", move |order: Arc<OrderCreated>| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(order.id);
        }
    });
    bus.ready().await.unwrap();
    let garbage = WireEvent::new("garbage-1", "someone-else", "orders.created", "{not json");
    transport.publish(garbage).await.unwrap();
    bus.emit_event(OrderCreated { id: 1 }).await;
    assert_eq!(receive(&mut receiver, 1).await, [1]);
    let letter = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("a dead letter")
        .unwrap()
        .unwrap();
    let reason = &letter.event().extensions["deadletterreason"];
    assert!(reason.contains("does not decode as"), "{reason}");
    assert_eq!(letter.event().extensions["deadletterof"], "garbage-1");
}

#[tokio::test]
async fn a_delivery_cut_short_by_shutdown_is_delivered_again_to_another_instance() {
    let transport = MemoryTransport::new();
    // Both instances name the group: their closures have different type names.
    let group = Policy::new().group(Group::Named("billing.orders"));
    let stopping = bus_on(&transport, "billing");
    let started = Arc::new(tokio::sync::Notify::new());
    {
        let started = Arc::clone(&started);
        stopping
            .on("orders.created", move |_: Arc<OrderCreated>| {
                let started = Arc::clone(&started);
                async move {
                    started.notify_one();
                    std::future::pending::<()>().await;
                }
            })
            .policy(group)
            .add();
    }
    stopping.ready().await.unwrap();
    let published = stopping.emit_event(OrderCreated { id: 5 }).await;
    assert!(published.is_ok());
    started.notified().await;
    let report = stopping.shutdown(Duration::from_millis(50)).await;
    assert_eq!(report.aborted(), 1, "{report:?}");

    let next = bus_on(&transport, "billing");
    let (sender, mut receiver) = mpsc::unbounded_channel();
    next.on("orders.created", move |order: Arc<OrderCreated>| {
        let sender = sender.clone();
        async move {
            let _ = sender.send((order.id, bus::event::current_event_id()));
        }
    })
    .policy(group)
    .add();
    next.ready().await.unwrap();
    let [(order, id)] = receive(&mut receiver, 1).await.try_into().unwrap();
    assert_eq!(order, 5, "neither acked nor lost: delivered again");
    assert_eq!(id.as_ref(), published.event_id());
}

#[tokio::test]
async fn a_removed_listener_stops_consuming() {
    let transport = MemoryTransport::new();
    let bus = bus_on(&transport, "billing");
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let id = bus.add_listener("orders.created", move |order: Arc<OrderCreated>| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(order.id);
        }
    });
    bus.ready().await.unwrap();
    bus.emit_event(OrderCreated { id: 1 }).await;
    assert_eq!(receive(&mut receiver, 1).await, [1]);
    assert!(bus.remove(id));
    bus.emit_event(OrderCreated { id: 2 }).await;
    // The removed listener's sender went with it: the channel closes, nothing more arrives.
    let next = tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await;
    assert_eq!(next, Ok(None));
}

#[tokio::test]
async fn an_event_emitted_by_a_distributed_listener_records_its_cause() {
    let transport = MemoryTransport::new();
    let bus = bus_on(&transport, "billing");
    let emitter = bus.clone();
    bus.add_listener("orders.created", move |order: Arc<OrderCreated>| {
        let emitter = emitter.clone();
        async move {
            if order.id == 1 {
                emitter.emit_event(OrderCreated { id: 2 });
            }
        }
    });
    let (sender, mut receiver) = mpsc::unbounded_channel();
    bus.add_listener("orders.>", move |event: Arc<bus::AnyEvent>| {
        let sender = sender.clone();
        async move {
            let _ = sender.send((event.id().clone(), event.causation().cloned()));
        }
    });
    assert!(
        !bus.listeners("orders.>")[0].is_distributed(),
        "AnyEvent stays in process"
    );
    bus.ready().await.unwrap();
    let first = bus.emit_event(OrderCreated { id: 1 }).await;
    let [(first_id, none), (second_id, cause)] =
        receive(&mut receiver, 2).await.try_into().unwrap();
    assert_eq!(Some(&first_id), first.event_id());
    assert_eq!(none, None);
    assert_ne!(second_id, first_id);
    assert_eq!(
        cause,
        Some(first_id),
        "the second event names the first as its cause"
    );
}

#[tokio::test]
async fn a_bus_with_a_transport_says_so() {
    let transport = MemoryTransport::new();
    let bus = bus_on(&transport, "billing");
    assert_eq!(bus.distribution(), Some(("memory", "billing")));
    assert_eq!(EventBus::new().distribution(), None);
    EventBus::new().ready().await.unwrap();
}

/// Derives `Event` and serde, and is only ever given to `#[bus::listener]` and `publish`: its
/// codec comes from the derive, with no `codec::<..>()` call.
#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "orders.shipped", distributed)]
struct OrderShipped {
    id: u64,
}

static SHIPPED: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

#[bus::listener]
async fn on_order_shipped(order: &OrderShipped) {
    SHIPPED.lock().unwrap().push(order.id);
}

#[tokio::test]
async fn annotated_listeners_and_derived_events_go_distributed_with_no_wiring() {
    let transport = MemoryTransport::new();
    let bus = EventBus::builder()
        .service("shipping")
        .transport(transport.clone())
        .annotated_listeners()
        .build();
    let info = &bus.listeners("orders.shipped")[0];
    assert!(info.is_distributed());
    assert_eq!(
        info.group(),
        Some("shipping.distributed::on_order_shipped"),
        "service, then the fn's path"
    );
    bus.ready().await.unwrap();

    // Another process's bus, without the listener: it publishes, the first one handles.
    let emitter = EventBus::builder().transport(transport).build();
    let report = emitter.emit_event(OrderShipped { id: 9 }).await;
    assert!(matches!(report.published(), Some(Ok(()))), "{report:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !SHIPPED.lock().unwrap().contains(&9) {
        assert!(tokio::time::Instant::now() < deadline, "never handled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[bus::listener("orders.audited", group = "audit")]
async fn audit(_order: &OrderShipped) {}

#[bus::listener("orders.audited", group = false)]
async fn mirror(_order: &OrderShipped) {}

#[tokio::test]
async fn the_group_option_of_the_attribute_names_or_drops_the_group() {
    let bus = EventBus::builder()
        .service("shipping")
        .transport(MemoryTransport::new())
        .annotated_listeners()
        .build();
    let listeners = bus.listeners("orders.audited");
    let group_of = |name: &str| {
        let info = listeners
            .iter()
            .find(|info| info.name().ends_with(name))
            .unwrap();
        assert!(info.is_distributed(), "{name}");
        info.group().map(str::to_owned)
    };
    assert_eq!(group_of("::audit"), Some("audit".to_owned()));
    assert_eq!(group_of("::mirror"), None);
    bus.ready().await.unwrap();
}

#[tokio::test]
async fn a_dropped_bus_stops_consuming_and_its_group_goes_on() {
    let transport = MemoryTransport::new();
    let group = Policy::new().group(Group::Named("billing.dropped"));
    let calls = Arc::new(AtomicUsize::new(0));
    let dropped = bus_on(&transport, "billing");
    {
        let calls = Arc::clone(&calls);
        dropped
            .on("orders.created", move |_: Arc<OrderCreated>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {}
            })
            .policy(group)
            .add();
    }
    dropped.ready().await.unwrap();
    // No shutdown: the last handle goes, and with it the listener's consumer.
    drop(dropped);

    let next = bus_on(&transport, "billing");
    let (sender, mut receiver) = mpsc::unbounded_channel();
    next.on("orders.created", move |order: Arc<OrderCreated>| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(order.id);
        }
    })
    .policy(group)
    .add();
    next.ready().await.unwrap();
    for id in 0..10 {
        assert!(next.emit_event(OrderCreated { id }).await.is_ok());
    }
    let mut received = receive(&mut receiver, 10).await;
    received.sort_unstable();
    assert_eq!(received, (0..10).collect::<Vec<_>>());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the dropped bus handled nothing"
    );
}
