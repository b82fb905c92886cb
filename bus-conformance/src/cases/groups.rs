//! Cases on competing-consumer groups: sharing, durability, independence, and where a group
//! stands.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::SubscribeOptions;
use futures_util::future::join_all;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::support::{CRASH_ACK_WAIT, Case, Consumers, Need, Received, Tally, describe, ids};
use crate::{Harness, Size};

/// Many instances of one group (Watermill's `TestConcurrentSubscribe`): 50 instances of one
/// group, each on its own connection, subscribed before 5,000 events are published by 50
/// concurrent publishers; together they receive every event, each once (a second delivery
/// only as a redelivery, with `attempt > 1`).
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn concurrent_subscribe(harness: &dyn Harness, size: Size) {
    let (case, transport) = Case::start(harness, "concurrent_subscribe").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let instances = size.scale(50).max(2);
    let name = case.name("events");
    let options = SubscribeOptions::new(&name).group(case.group("workers"));
    let connections = join_all((0..instances).map(|_| case.connect())).await;
    let subscriptions = join_all(
        connections
            .iter()
            .map(|connection| case.subscribe(&**connection, options.clone())),
    )
    .await;
    let mut consumers = Consumers::new();
    for (instance, subscription) in subscriptions.into_iter().enumerate() {
        consumers.spawn(instance, subscription);
    }
    let events = case.events(&name, size.scale(5_000));
    case.publish_all(std::slice::from_ref(&transport), &events, instances)
        .await;
    let what = format!("the {instances} instances of the group");
    let tally = consumers.collect_settled(&case, &what, &ids(&events)).await;
    tally.assert_once_unless_redelivered(&case, &what);
}

/// Instances closed and reopened (Watermill's `TestContinueAfterSubscribeClose`): 5,000 events
/// published to a group are read by 5 successive instances, each on a fresh connection, each
/// reading a fifth of them, acking all but its last delivery and closing while it holds that
/// one; a last instance then gets every event not acked yet. Nothing is lost; events may come
/// twice. The group's ack wait is [`CRASH_ACK_WAIT`](crate::CRASH_ACK_WAIT), for transports
/// that return a closed subscription's deliveries only after it.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn continue_after_subscribe_close(harness: &dyn Harness, size: Size) {
    const BATCHES: usize = 5;
    let (case, transport) = Case::start(harness, "continue_after_subscribe_close").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let name = case.name("events");
    let options = SubscribeOptions::new(&name)
        .group(case.group("readers"))
        .ack_wait(CRASH_ACK_WAIT);
    // The group starts here, before the events.
    let mut first = Some(case.subscribe(&*transport, options.clone()).await);
    let events = case.events(&name, size.scale(5_000));
    case.publish_all(std::slice::from_ref(&transport), &events, 20)
        .await;
    let expected = ids(&events);
    let per_batch = events.len() / BATCHES;
    let mut tally = Tally::default();
    for batch in 0..BATCHES {
        let connection = case.connect().await;
        let mut subscription = match first.take() {
            Some(subscription) => subscription,
            None => case.subscribe(&*connection, options.clone()).await,
        };
        let mut held = None;
        for read in 0..per_batch {
            let what = format!("batch {batch}: event {} of {per_batch}", read + 1);
            let delivery = case.next(&mut subscription, what).await;
            tally.record(Received {
                from: batch,
                event: delivery.event().clone(),
                attempt: delivery.attempt(),
            });
            if read + 1 == per_batch {
                held = Some(delivery);
            } else {
                case.ack(delivery).await;
            }
        }
        // Closed while holding a delivery: it goes back to the group.
        drop(subscription);
        drop(connection);
        drop(held);
    }
    let connection = case.connect().await;
    let mut subscription = case.subscribe(&*connection, options).await;
    while !tally.covers(&expected) {
        let what = format!(
            "the rest of the events; missing {}",
            tally.missing(&expected)
        );
        let delivery = case.next(&mut subscription, what).await;
        tally.record(Received {
            from: BATCHES,
            event: delivery.event().clone(),
            attempt: delivery.attempt(),
        });
        case.ack(delivery).await;
    }
}

/// Concurrent close (Watermill's `TestConcurrentClose`): 10 instances of a group, each on its
/// own connection, subscribe and close at the same moment on the runtime's threads; then 50
/// events are published, and a new instance gets all of them.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn concurrent_close(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    const INSTANCES: usize = 10;
    let (case, transport) = Case::start(harness, "concurrent_close").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let name = case.name("events");
    let options = SubscribeOptions::new(&name).group(case.group("closing"));
    let connections = join_all((0..INSTANCES).map(|_| case.connect())).await;
    let barrier = Arc::new(Barrier::new(INSTANCES));
    let mut tasks = JoinSet::new();
    for (instance, connection) in connections.into_iter().enumerate() {
        let (barrier, options, guard) = (Arc::clone(&barrier), options.clone(), case.guard());
        tasks.spawn(async move {
            barrier.wait().await;
            let subscribed = tokio::time::timeout(guard, connection.subscribe(options)).await;
            match subscribed {
                Ok(Ok(subscription)) => drop(subscription),
                Ok(Err(error)) => return Err(format!("instance {instance}: {error}")),
                Err(_) => return Err(format!("instance {instance}: no subscription")),
            }
            drop(connection);
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => case.fail(format!("subscribing concurrently: {error}")),
            Err(error) => case.fail(format!("an instance's task failed: {error}")),
        }
    }
    let events = case.events(&name, 50);
    case.publish_all(std::slice::from_ref(&transport), &events, 10)
        .await;
    let connection = case.connect().await;
    let mut consumers = Consumers::new();
    consumers.spawn(0, case.subscribe(&*connection, options).await);
    let what = "a new instance after the concurrent closes";
    let tally = consumers.collect_settled(&case, what, &ids(&events)).await;
    tally.assert_once_unless_redelivered(&case, what);
}

/// Durable, independent groups (Watermill's `TestConsumerGroups`): two groups are created
/// (subscribed, then closed) before 50 events are published; each group, subscribed again on a
/// new connection, gets all 50.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn consumer_groups(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    let (case, transport) = Case::start(harness, "consumer_groups").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let name = case.name("events");
    let groups = [case.group("first"), case.group("second")];
    for group in &groups {
        let connection = case.connect().await;
        let subscription = case
            .subscribe(&*connection, SubscribeOptions::new(&name).group(group))
            .await;
        drop(subscription);
    }
    let events = case.events(&name, 50);
    case.publish_all(std::slice::from_ref(&transport), &events, 5)
        .await;
    let mut consumers = Vec::new();
    for group in &groups {
        let connection = case.connect().await;
        let mut consumer = Consumers::new();
        consumer.spawn(
            0,
            case.subscribe(&*connection, SubscribeOptions::new(&name).group(group))
                .await,
        );
        consumers.push(consumer);
    }
    let expected = ids(&events);
    let whats = groups.clone().map(|group| format!("group `{group}`"));
    let tallies = join_all(
        consumers
            .iter_mut()
            .zip(&whats)
            .map(|(consumer, what)| consumer.collect_settled(&case, what, &expected)),
    )
    .await;
    for (tally, what) in tallies.iter().zip(&whats) {
        tally.assert_once_unless_redelivered(&case, what);
    }
}

/// Fan-out across services, competing consumers within one (issue 5): two services (groups),
/// two instances each (one connection each), subscribed before 100 events are published; each
/// service handles each event once, whichever of its instances does. "Once" is checked for
/// [`QUIET_PERIOD`](crate::QUIET_PERIOD) after the last event.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn fan_out(harness: &dyn Harness, size: Size) {
    const INSTANCES: usize = 2;
    let (case, transport) = Case::start(harness, "fan_out").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let name = case.name("events");
    let services = [case.group("billing"), case.group("shipping")];
    let mut consumers = Vec::new();
    for service in &services {
        let mut consumer = Consumers::new();
        for instance in 0..INSTANCES {
            let connection = case.connect().await;
            let options = SubscribeOptions::new(&name).group(service);
            consumer.spawn(instance, case.subscribe(&*connection, options).await);
        }
        consumers.push(consumer);
    }
    let events = case.events(&name, size.scale(100));
    case.publish_all(std::slice::from_ref(&transport), &events, 4)
        .await;
    let expected = ids(&events);
    let whats = services
        .clone()
        .map(|service| format!("service `{service}`"));
    let tallies = join_all(
        consumers
            .iter_mut()
            .zip(&whats)
            .map(|(consumer, what)| consumer.collect_settled(&case, what, &expected)),
    )
    .await;
    for (tally, what) in tallies.iter().zip(&whats) {
        for id in &expected {
            let deliveries = tally.of(id);
            case.check(deliveries.len() == 1, || {
                let all: Vec<String> = deliveries
                    .iter()
                    .map(|received| {
                        format!(
                            "{} to instance {}",
                            describe(&received.event, received.attempt),
                            received.from
                        )
                    })
                    .collect();
                format!(
                    "{what} handled event {id} {} times, not once: {all:?}",
                    deliveries.len()
                )
            });
        }
    }
    join_all(
        consumers
            .iter_mut()
            .zip(&whats)
            .map(|(consumer, what)| consumer.assert_quiet(&case, what)),
    )
    .await;
}

/// Where a group stands ([`Transport::group_stats`](bus_core::transport::Transport::group_stats),
/// issue 5's lag and pending gauges): a group is created by a subscription that is then closed,
/// and 3 events are published; the stats come to `lag + pending == 3`. A new instance receives
/// one event and holds it: they come to `pending >= 1` and `lag + pending == 3`. It receives and
/// acks the 3 events: they come to `lag == 0` and `pending == 0`. A group no subscription
/// created, and options without a group, have no stats (`None`). Each "come to" is asked again
/// until it holds, within the guard: brokers update their counts behind the deliveries.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn group_stats(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    const EVENTS: u64 = 3;
    let (case, transport) = Case::start(harness, "group_stats").await;
    if !case.requires(&[Need::Groups, Need::GroupStats]) {
        return;
    }
    let name = case.name("events");
    let options = SubscribeOptions::new(&name).group(case.group("stats"));
    // The group is created, and its only member closed: nothing consumes while it is behind.
    drop(case.subscribe(&*transport, options.clone()).await);
    let events = case.events(&name, 3);
    case.publish_all(std::slice::from_ref(&transport), &events, 1)
        .await;
    // The sum, not `lag == 3`: a closed subscription may have been handed some events already
    // (a NATS pull request still open as it closed is answered, and the closing subscription
    // naks what it brings), which then count as pending until they are delivered again.
    case.group_stats_until(
        &*transport,
        &options,
        "lag + pending == 3 for the 3 events published behind the group",
        |stats| stats.lag + stats.pending == EVENTS,
    )
    .await;

    let connection = case.connect().await;
    let mut subscription = case.subscribe(&*connection, options.clone()).await;
    let expected = ids(&events);
    let mut acked = HashSet::new();
    let held = case
        .next(&mut subscription, "the first of the 3 events")
        .await;
    case.check(expected.contains(&held.event().id), || {
        format!(
            "got an event it should not: {}",
            describe(held.event(), held.attempt())
        )
    });
    // Held, not acked: pending; the other two in either count (a transport may hand out, or
    // claim, more than one delivery at a time).
    case.group_stats_until(
        &*transport,
        &options,
        "pending >= 1 and lag + pending == 3 with one delivery held",
        |stats| stats.pending >= 1 && stats.lag + stats.pending == EVENTS,
    )
    .await;
    acked.insert(held.event().id.clone());
    case.ack(held).await;
    while acked.len() < expected.len() {
        let delivery = case
            .next(&mut subscription, format!("event {} of 3", acked.len() + 1))
            .await;
        case.check(expected.contains(&delivery.event().id), || {
            format!(
                "got an event it should not: {}",
                describe(delivery.event(), delivery.attempt())
            )
        });
        acked.insert(delivery.event().id.clone());
        case.ack(delivery).await;
    }
    case.group_stats_until(
        &*transport,
        &options,
        "lag == 0 and pending == 0 once the 3 events are acked",
        |stats| stats.lag == 0 && stats.pending == 0,
    )
    .await;

    let unknown = SubscribeOptions::new(&name).group(case.group("never-subscribed"));
    let stats = case.group_stats(&*transport, &unknown).await;
    case.check(stats.is_none(), || {
        format!("group_stats of a group no subscription created: {stats:?}, expected None")
    });
    let plain = SubscribeOptions::new(&name);
    let stats = case.group_stats(&*transport, &plain).await;
    case.check(stats.is_none(), || {
        format!("group_stats of options without a group: {stats:?}, expected None")
    });
    drop(subscription);
}

/// The groups as the broker lists them ([`Transport::groups`](bus_core::transport::Transport::groups)):
/// a group on `<prefix>.a.>` with an open subscription and 2 events published behind it, and a
/// group on `<prefix>.b` whose only subscription was closed, come to be listed under their
/// names, with the patterns they were created with, `lag + pending == 2` for the first and 0
/// and 0 for the second (no stats at all is allowed), and for the second no members
/// (`consumers` `None` or 0, once its subscription's close is through). A subscription outside
/// any group is never listed. Listed again until that holds, within the guard: brokers update
/// their counts behind the deliveries.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn list_groups(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    let (case, transport) = Case::start(harness, "list_groups").await;
    if !case.requires(&[Need::Groups, Need::ListGroups]) {
        return;
    }
    let (busy, idle) = (case.group("busy"), case.group("idle"));
    let (busy_pattern, idle_pattern) = (case.name("a.>"), case.name("b"));
    let plain_pattern = case.name("plain.*");
    let _busy = case
        .subscribe(
            &*transport,
            SubscribeOptions::new(&busy_pattern).group(&busy),
        )
        .await;
    drop(
        case.subscribe(
            &*transport,
            SubscribeOptions::new(&idle_pattern).group(&idle),
        )
        .await,
    );
    let _plain = case
        .subscribe(&*transport, SubscribeOptions::new(&plain_pattern))
        .await;
    let events = case.events(&case.name("a.x"), 2);
    case.publish_all(std::slice::from_ref(&transport), &events, 1)
        .await;
    let deadline = tokio::time::Instant::now() + case.guard();
    loop {
        let what = "listing the groups";
        let groups = match case.guarded(what, transport.groups()).await {
            Ok(Some(groups)) => groups,
            Ok(None) => case.fail("groups() is None though the transport says list_groups"),
            Err(error) => case.fail(format!("{what}: {error}")),
        };
        case.check(
            groups.iter().all(|group| group.pattern != plain_pattern),
            || format!("a subscription outside any group is listed: {groups:?}"),
        );
        let mine: Vec<_> = groups
            .iter()
            .filter(|group| group.name.starts_with(case.token()))
            .collect();
        let found = |name: &str| mine.iter().find(|group| group.name == name);
        let busy_ok = found(&busy).is_some_and(|group| {
            group.pattern == busy_pattern
                && group
                    .stats
                    .is_none_or(|stats| stats.lag + stats.pending == 2)
        });
        let idle_ok = found(&idle).is_some_and(|group| {
            group.pattern == idle_pattern
                && group
                    .stats
                    .is_none_or(|stats| stats.lag == 0 && stats.pending == 0)
                && group.consumers.is_none_or(|members| members == 0)
        });
        if busy_ok && idle_ok && mine.len() == 2 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            case.fail(format!(
                "expected groups `{busy}` on `{busy_pattern}` (lag + pending 2) and `{idle}` on \
                 `{idle_pattern}` (0, 0, no members), and no other of this case; still {mine:?} \
                 after {:?}",
                case.guard()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
