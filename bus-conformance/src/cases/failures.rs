//! Cases where consumers fail: nacks, cancelled and killed consumers, poison events, and a
//! broker that restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_REASON, SubscribeOptions, Transport,
    TransportSubscription, WireEvent, dead_letter_name,
};
use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::support::{CRASH_ACK_WAIT, Case, Need, Received, Tally, describe, ids};
use crate::{Harness, Size};

/// Redelivery after a nack (Watermill's `TestResendOnError`): of 100 events reaching a plain
/// subscription, the first 2 deliveries are nacked (for a redelivery at once) and the others
/// acked; all 100 are still acked in the end, the 2 nacked ones redelivered with `attempt > 1`.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn resend_on_error(harness: &dyn Harness, size: Size) {
    const NACKS: usize = 2;
    let (case, transport) = Case::start(harness, "resend_on_error").await;
    let name = case.name("events");
    let mut subscription = case
        .subscribe(&*transport, SubscribeOptions::new(&name))
        .await;
    let events = case.events(&name, size.scale(100).max(NACKS + 1));
    for event in &events {
        case.publish(&*transport, event.clone()).await;
    }
    let expected = ids(&events);
    let mut nacked = Vec::new();
    let mut acked = HashSet::new();
    while acked.len() < expected.len() {
        let what = format!("event {} of {}", acked.len() + 1, expected.len());
        let delivery = case.next(&mut subscription, what).await;
        let id = delivery.event().id.clone();
        case.check(expected.contains(&id), || {
            format!(
                "got an event never published: {}",
                describe(delivery.event(), delivery.attempt())
            )
        });
        if nacked.len() < NACKS && !nacked.contains(&id) {
            nacked.push(id);
            case.nack(delivery, "conformance: failed on purpose").await;
        } else {
            if nacked.contains(&id) {
                case.check(delivery.attempt() > 1, || {
                    format!(
                        "{} was nacked before: its redelivery must count as another attempt",
                        describe(delivery.event(), delivery.attempt())
                    )
                });
            }
            case.ack(delivery).await;
            acked.insert(id);
        }
    }
}

/// Many nacks by many instances (Watermill's `TestContinueAfterErrors`): 50 events published
/// to a group; 3 successive instances (fresh connections) each nack 100 deliveries and close;
/// a last instance then gets all 50. The group allows more deliveries than the nacks, so
/// nothing may be dead-lettered; a transport that caps deliveries on its own fails here.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn continue_after_errors(harness: &dyn Harness, size: Size) {
    let (case, transport) = Case::start(harness, "continue_after_errors").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let (instances, nacks) = match size {
        Size::Full => (3, 100),
        Size::Short => (1, 10),
    };
    let name = case.name("events");
    let max_deliveries = u32::try_from(instances * nacks + 2).expect("a small count");
    let options = SubscribeOptions::new(&name)
        .group(case.group("failing"))
        .max_deliveries(max_deliveries);
    let mut first = Some(case.subscribe(&*transport, options.clone()).await);
    let events = case.events(&name, 50);
    case.publish_all(std::slice::from_ref(&transport), &events, 5)
        .await;
    let expected = ids(&events);
    for instance in 0..instances {
        let connection = case.connect().await;
        let mut subscription = match first.take() {
            Some(subscription) => subscription,
            None => case.subscribe(&*connection, options.clone()).await,
        };
        for nack in 0..nacks {
            let what = format!(
                "instance {instance}: delivery {} of {nacks} to nack",
                nack + 1
            );
            let delivery = case.next(&mut subscription, what).await;
            case.check(expected.contains(&delivery.event().id), || {
                format!(
                    "got an event never published: {}",
                    describe(delivery.event(), delivery.attempt())
                )
            });
            case.nack(delivery, "conformance: failed on purpose").await;
        }
    }
    let connection = case.connect().await;
    let mut subscription = case.subscribe(&*connection, options).await;
    let mut tally = Tally::default();
    while !tally.covers(&expected) {
        let what = format!(
            "the last instance: all 50 events; missing {}",
            tally.missing(&expected)
        );
        let delivery = case.next(&mut subscription, what).await;
        tally.record(Received {
            from: instances,
            event: delivery.event().clone(),
            attempt: delivery.attempt(),
        });
        case.ack(delivery).await;
    }
}

/// Cancelling a subscription (Watermill's `TestSubscribeCtx`): an instance of a group gets 5
/// of 20 events, acks 2, and is dropped holding the other 3 (one dropped unsettled just before
/// the subscription, two just after it); 10 more events are published
/// while no instance is subscribed. A new instance (fresh connection) gets the 3 held events
/// again (`attempt > 1`), the 15 never delivered and the 10 new ones, and never the 2 acked.
/// The group's ack wait is [`CRASH_ACK_WAIT`](crate::CRASH_ACK_WAIT), for transports that
/// return a closed subscription's deliveries only after it.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn subscription_cancel(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    let (case, transport) = Case::start(harness, "subscription_cancel").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let name = case.name("events");
    let options = SubscribeOptions::new(&name)
        .group(case.group("cancelled"))
        .ack_wait(CRASH_ACK_WAIT);
    let connection = case.connect().await;
    let mut subscription = case.subscribe(&*connection, options.clone()).await;
    let mut events = case.events(&name, 20);
    case.publish_all(std::slice::from_ref(&transport), &events, 5)
        .await;
    let mut acked = HashSet::new();
    let mut held = Vec::new();
    for read in 0..5 {
        let delivery = case
            .next(&mut subscription, format!("delivery {} of 5", read + 1))
            .await;
        if read < 2 {
            acked.insert(delivery.event().id.clone());
            case.ack(delivery).await;
        } else {
            held.push(delivery);
        }
    }
    let held_ids: HashSet<String> = held
        .iter()
        .map(|delivery| delivery.event().id.clone())
        .collect();
    // One held delivery is dropped unsettled before the subscription, two after it.
    let mut held = held.into_iter();
    drop(held.next());
    drop(subscription);
    drop(connection);
    drop(held);
    let later = case.events(&name, 10);
    case.publish_all(std::slice::from_ref(&transport), &later, 5)
        .await;
    events.extend(later);
    let expected: HashSet<String> = ids(&events).difference(&acked).cloned().collect();
    let connection = case.connect().await;
    let mut subscription = case.subscribe(&*connection, options).await;
    let mut tally = Tally::default();
    while !tally.covers(&expected) {
        let what = format!(
            "the new instance: the events not acked; missing {}",
            tally.missing(&expected)
        );
        let delivery = case.next(&mut subscription, what).await;
        let id = delivery.event().id.clone();
        case.check(!acked.contains(&id), || {
            format!(
                "{} was acked by the cancelled instance, yet delivered again",
                describe(delivery.event(), delivery.attempt())
            )
        });
        case.check(expected.contains(&id), || {
            format!(
                "got an event never published: {}",
                describe(delivery.event(), delivery.attempt())
            )
        });
        if held_ids.contains(&id) {
            case.check(delivery.attempt() > 1, || {
                format!(
                    "{} was held by the cancelled instance: its delivery to the new one must \
                     count as another attempt",
                    describe(delivery.event(), delivery.attempt())
                )
            });
        }
        tally.record(Received {
            from: 1,
            event: delivery.event().clone(),
            attempt: delivery.attempt(),
        });
        case.ack(delivery).await;
    }
}

/// How an instance dies holding a delivery, in [`killed_consumer`].
#[derive(Debug, Clone, Copy)]
enum Death {
    /// The handler's task died: the delivery is dropped unsettled, the subscription lives on.
    DeliveryDropped,
    /// The process died: the delivery is never settled nor dropped (it leaks, as a dead
    /// process's would), and the subscription and connection close.
    ProcessDied,
    /// The process hangs: the delivery is never settled, the subscription stays open and is
    /// never read again; only the ack wait gives the event back.
    ProcessHung,
    /// The process shuts down: the delivery is released (`Delivery::release`, awaited), then
    /// the subscription and connection close at once, as a process exits after its shutdown.
    Released,
}

/// A consumer killed before its ack (issue 5): two instances of a group (one connection each)
/// race for an event; the one that gets it dies holding it, in four ways in turn
/// (delivery dropped unsettled; delivery leaked and subscription closed; delivery leaked and
/// the instance hung; delivery released and subscription closed), and each time the other
/// instance gets the event, as another attempt.
/// The group's ack wait is [`CRASH_ACK_WAIT`](crate::CRASH_ACK_WAIT).
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn killed_consumer(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    let (case, transport) = Case::start(harness, "killed_consumer").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let name = case.name("events");
    let options = SubscribeOptions::new(&name)
        .group(case.group("mortal"))
        .ack_wait(CRASH_ACK_WAIT);
    // The group starts before the first event.
    drop(case.subscribe(&*transport, options.clone()).await);
    let mut hung = Vec::new();
    for death in [
        Death::DeliveryDropped,
        Death::ProcessDied,
        Death::ProcessHung,
        Death::Released,
    ] {
        let connections = [case.connect().await, case.connect().await];
        let mut subscriptions = [
            case.subscribe(&*connections[0], options.clone()).await,
            case.subscribe(&*connections[1], options.clone()).await,
        ];
        let event = case.event(&name);
        case.publish(&*transport, event.clone()).await;
        let (victim, item) = {
            let [first, second] = &mut subscriptions;
            case.guarded(format!("{death:?}: the event to either instance"), async {
                tokio::select! {
                    Some(item) = first.next() => (0, item),
                    Some(item) = second.next() => (1, item),
                    else => case.fail(format!("{death:?}: both subscriptions ended")),
                }
            })
            .await
        };
        let delivery = item.unwrap_or_else(|error| {
            case.fail(format!("{death:?}: a subscription failed: {error}"))
        });
        case.check(delivery.event().id == event.id, || {
            format!(
                "{death:?}: expected {}, got {}",
                event.id,
                describe(delivery.event(), delivery.attempt())
            )
        });
        let [first, second] = subscriptions;
        let [first_connection, second_connection] = connections;
        let (victim, (mut survivor, survivor_connection)) = if victim == 0 {
            ((first, first_connection), (second, second_connection))
        } else {
            ((second, second_connection), (first, first_connection))
        };
        // The victim is never read again.
        let mut lingering = None;
        match death {
            Death::DeliveryDropped => {
                drop(delivery);
                lingering = Some(victim);
            }
            Death::ProcessDied => {
                std::mem::forget(delivery);
                drop(victim);
            }
            Death::ProcessHung => {
                std::mem::forget(delivery);
                hung.push(victim);
            }
            Death::Released => {
                case.release(delivery).await;
                drop(victim);
            }
        }
        let again = case
            .next(
                &mut survivor,
                format!("{death:?}: the event again, at the other instance"),
            )
            .await;
        case.check(again.event().id == event.id, || {
            format!(
                "{death:?}: expected {} again, got {}",
                event.id,
                describe(again.event(), again.attempt())
            )
        });
        case.check(again.attempt() > 1, || {
            format!(
                "{death:?}: the redelivery of {} must count as another attempt",
                describe(again.event(), again.attempt())
            )
        });
        case.ack(again).await;
        drop(survivor);
        drop(survivor_connection);
        drop(lingering);
    }
    drop(hung);
}

/// Poison events (issue 5): in a group allowing 3 deliveries, one event is nacked on every
/// attempt and another rejected at once, among 10 good events published after them. The
/// nacked one is delivered exactly 3 times, the rejected one once; each is then dead-lettered
/// under [`dead_letter_name`] (a plain subscription to `dead-letter.<prefix>.>` receives
/// them) with its payload and attributes, and the extensions `deadletterreason` (holding the
/// nack's or reject's reason), `deadlettergroup` (the group's name) and `deadletterattempts`.
/// The good events are all handled. After the dead letters, neither subscription receives
/// anything for [`QUIET_PERIOD`](crate::QUIET_PERIOD).
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn poison_dead_letter(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    const MAX_DELIVERIES: u32 = 3;
    let (case, transport) = Case::start(harness, "poison_dead_letter").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let group = case.group("handlers");
    let options = SubscribeOptions::new(case.name(">"))
        .group(&group)
        .max_deliveries(MAX_DELIVERIES);
    let mut letters = case
        .subscribe(
            &*transport,
            SubscribeOptions::new(dead_letter_name(&case.name(">"))),
        )
        .await;
    let mut subscription = case.subscribe(&*transport, options).await;
    let nacked = case.event(&case.name("poison.nacked"));
    let rejected = case.event(&case.name("poison.rejected"));
    let good = case.events(&case.name("good"), 10);
    for event in [&nacked, &rejected].into_iter().chain(&good) {
        case.publish(&*transport, event.clone()).await;
    }
    let (nack_reason, reject_reason) = ("conformance: nacked poison", "conformance: rejected");
    let good_ids = ids(&good);
    let mut handled = HashSet::new();
    let mut nacked_attempts = Vec::new();
    let mut rejected_attempts = Vec::new();
    while handled.len() < good_ids.len()
        || nacked_attempts.len() < MAX_DELIVERIES as usize
        || rejected_attempts.is_empty()
    {
        let what = format!(
            "{} of {} good events handled, the nacked poison delivered {} of {MAX_DELIVERIES} \
             times, the rejected one {} of 1",
            handled.len(),
            good_ids.len(),
            nacked_attempts.len(),
            rejected_attempts.len()
        );
        let delivery = case.next(&mut subscription, what).await;
        let (id, attempt) = (delivery.event().id.clone(), delivery.attempt());
        if id == nacked.id {
            nacked_attempts.push(attempt);
            case.check(nacked_attempts.len() <= MAX_DELIVERIES as usize, || {
                format!(
                    "{} delivered {} times with max_deliveries {MAX_DELIVERIES}",
                    describe(delivery.event(), attempt),
                    nacked_attempts.len()
                )
            });
            case.nack(delivery, nack_reason).await;
        } else if id == rejected.id {
            rejected_attempts.push(attempt);
            case.check(rejected_attempts.len() == 1, || {
                format!(
                    "{} delivered again after it was rejected",
                    describe(delivery.event(), attempt)
                )
            });
            case.reject(delivery, reject_reason).await;
        } else {
            case.check(good_ids.contains(&id), || {
                format!(
                    "got an event never published: {}",
                    describe(delivery.event(), attempt)
                )
            });
            case.ack(delivery).await;
            handled.insert(id);
        }
    }
    let expected_attempts: Vec<u32> = (1..=MAX_DELIVERIES).collect();
    case.check(nacked_attempts == expected_attempts, || {
        format!("the nacked poison's attempts were {nacked_attempts:?}, not {expected_attempts:?}")
    });
    let mut dead = BTreeMap::new();
    while dead.len() < 2 {
        let delivery = case.next(&mut letters, "the two dead letters").await;
        let letter = delivery.event().clone();
        let original = [&nacked, &rejected]
            .into_iter()
            .find(|original| letter.ty == dead_letter_name(&original.ty))
            .unwrap_or_else(|| {
                case.fail(format!(
                    "an unexpected dead letter: {}",
                    describe(&letter, delivery.attempt())
                ))
            });
        case.check(!dead.contains_key(&letter.ty), || {
            format!("a second dead letter for `{}`", original.ty)
        });
        case.ack(delivery).await;
        dead.insert(letter.ty.clone(), (original.clone(), letter));
    }
    for (original, letter, reason, attempts) in [
        (
            &nacked,
            &dead[&dead_letter_name(&nacked.ty)].1,
            nack_reason,
            MAX_DELIVERIES,
        ),
        (
            &rejected,
            &dead[&dead_letter_name(&rejected.ty)].1,
            reject_reason,
            1,
        ),
    ] {
        check_dead_letter(&case, original, letter, &group, attempts, Some(reason));
    }
    let (what_group, what_letters) = ("the group after the poison", "the dead letters");
    futures_util::future::join(
        case.assert_quiet(&mut subscription, what_group),
        case.assert_quiet(&mut letters, what_letters),
    )
    .await;
}

/// Checks that `letter` is the dead letter of `original`, given up by `group` after
/// `attempts` deliveries, for a reason holding `reason` (when given).
fn check_dead_letter(
    case: &Case<'_>,
    original: &WireEvent,
    letter: &WireEvent,
    group: &str,
    attempts: u32,
    reason: Option<&str>,
) {
    let what = format!("the dead letter of {}", original.id);
    case.check(letter.ty == dead_letter_name(&original.ty), || {
        format!("{what} is named `{}`", letter.ty)
    });
    case.check(
        letter.source == original.source
            && letter.time == original.time
            && letter.datacontenttype == original.datacontenttype
            && letter.data == original.data,
        || format!("{what} lost attributes or payload: {letter:?}, from {original:?}"),
    );
    for (name, value) in &original.extensions {
        case.check(letter.extensions.get(name) == Some(value), || {
            format!(
                "{what} lost the extension `{name}`: {:?}",
                letter.extensions
            )
        });
    }
    let extension = |name: &str| letter.extensions.get(name).cloned().unwrap_or_default();
    let given = extension(DEAD_LETTER_REASON);
    case.check(!given.is_empty(), || {
        format!(
            "{what} has no `{DEAD_LETTER_REASON}`: {:?}",
            letter.extensions
        )
    });
    if let Some(reason) = reason {
        case.check(given.contains(reason), || {
            format!("{what}: the reason `{given}` does not hold the handler's `{reason}`")
        });
    }
    case.check(extension(DEAD_LETTER_GROUP) == group, || {
        format!(
            "{what}: `{DEAD_LETTER_GROUP}` is `{}`, not the group's name `{group}`",
            extension(DEAD_LETTER_GROUP)
        )
    });
    case.check(
        extension(DEAD_LETTER_ATTEMPTS) == attempts.to_string(),
        || {
            format!(
                "{what}: `{DEAD_LETTER_ATTEMPTS}` is `{}`, not {attempts}",
                extension(DEAD_LETTER_ATTEMPTS)
            )
        },
    );
}

/// A poison event that kills its consumer (issue 5): in a group allowing 3 deliveries, every
/// delivery of one event kills the instance holding it (the delivery leaks, the subscription
/// and connection close, a new instance takes over). The event is delivered exactly 3 times
/// and then dead-lettered, with `deadletterattempts` 3 and a reason; 5 good events published
/// after it are all handled. The group's ack wait is [`CRASH_ACK_WAIT`](crate::CRASH_ACK_WAIT).
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn crashed_poison_dead_letter(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    const MAX_DELIVERIES: u32 = 3;
    let (case, transport) = Case::start(harness, "crashed_poison_dead_letter").await;
    if !case.requires(&[Need::Groups]) {
        return;
    }
    let group = case.group("crashing");
    let name = case.name("events");
    let options = SubscribeOptions::new(&name)
        .group(&group)
        .max_deliveries(MAX_DELIVERIES)
        .ack_wait(CRASH_ACK_WAIT);
    let mut letters = case
        .subscribe(&*transport, SubscribeOptions::new(dead_letter_name(&name)))
        .await;
    let mut connection = case.connect().await;
    let mut subscription = case.subscribe(&*connection, options.clone()).await;
    let poison = case.event(&name);
    let good = case.events(&name, 5);
    case.publish(&*transport, poison.clone()).await;
    for event in &good {
        case.publish(&*transport, event.clone()).await;
    }
    let good_ids = ids(&good);
    let mut handled = HashSet::new();
    let mut attempts = Vec::new();
    let mut letter = None;
    while handled.len() < good_ids.len() || letter.is_none() {
        let what = format!(
            "{} of {} good events handled, the poison delivered {} times, {} dead letter",
            handled.len(),
            good_ids.len(),
            attempts.len(),
            if letter.is_some() { "a" } else { "no" },
        );
        let delivery = tokio::select! {
            delivery = case.next(&mut subscription, &what) => delivery,
            dead = case.next(&mut letters, &what) => {
                case.check(letter.is_none(), || "a second dead letter".to_owned());
                letter = Some(dead.event().clone());
                case.ack(dead).await;
                continue;
            }
        };
        let (id, attempt) = (delivery.event().id.clone(), delivery.attempt());
        if id == poison.id {
            attempts.push(attempt);
            case.check(attempts.len() <= MAX_DELIVERIES as usize, || {
                format!(
                    "{} delivered {} times with max_deliveries {MAX_DELIVERIES}: an event \
                     whose deliveries are never settled must still be dead-lettered after the \
                     last one",
                    describe(delivery.event(), attempt),
                    attempts.len()
                )
            });
            // The instance dies with the delivery: never settled, never dropped.
            std::mem::forget(delivery);
            drop(subscription);
            connection = case.connect().await;
            subscription = case.subscribe(&*connection, options.clone()).await;
        } else {
            case.check(good_ids.contains(&id), || {
                format!(
                    "got an event never published: {}",
                    describe(delivery.event(), attempt)
                )
            });
            case.ack(delivery).await;
            handled.insert(id);
        }
    }
    drop(connection);
    let letter = letter.unwrap_or_else(|| unreachable!("the loop waits for it"));
    case.check(attempts.len() == MAX_DELIVERIES as usize, || {
        format!(
            "the poison was dead-lettered after {} deliveries, not {MAX_DELIVERIES}",
            attempts.len()
        )
    });
    check_dead_letter(&case, &poison, &letter, &group, MAX_DELIVERIES, None);
}

/// A broker restarted under load (Watermill's `TestReconnect`): 10,000 events are published by
/// 20 publishers (one connection each), each publish retried until it resolves `Ok`, while the
/// harness restarts the broker twice, once a third and once half of the events are published.
/// An instance of a group subscribed before reads through the restarts (an error from its
/// stream is tolerated, an ended stream is subscribed again) and gets every event.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn broker_restart(harness: &dyn Harness, size: Size) {
    const PUBLISHERS: usize = 20;
    let (case, transport) = Case::start(harness, "broker_restart").await;
    if !case.requires(&[Need::Restartable, Need::Persistent, Need::Groups]) {
        return;
    }
    let name = case.name("events");
    let options = SubscribeOptions::new(&name).group(case.group("survivors"));
    let subscription = case.subscribe(&*transport, options.clone()).await;
    let events = case.events(&name, size.scale(10_000));
    let expected = ids(&events);
    let publishers = join_all((0..PUBLISHERS).map(|_| case.connect())).await;
    let (progress, mut published) = watch::channel(0_usize);
    let progress = Arc::new(progress);
    let mut tasks = JoinSet::new();
    for (publisher, connection) in publishers.into_iter().enumerate() {
        let mine: Vec<WireEvent> = events
            .iter()
            .skip(publisher)
            .step_by(PUBLISHERS)
            .cloned()
            .collect();
        let (progress, guard) = (Arc::clone(&progress), case.guard());
        tasks.spawn(publish_with_retry(
            publisher, connection, mine, progress, guard,
        ));
    }
    let total = events.len();
    let restarts = async {
        for (restart, at) in [(1, total / 3), (2, total / 2)] {
            case.guarded(
                format!("{at} of {total} events published before restart {restart}"),
                published.wait_for(|count| *count >= at),
            )
            .await
            .unwrap_or_else(|_| case.fail("the publishers stopped"));
            case.guarded(
                format!("restart {restart} of the broker"),
                case.harness().restart_broker(),
            )
            .await;
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => case.fail(error),
                Err(error) => case.fail(format!("a publisher task failed: {error}")),
            }
        }
    };
    let reading = read_through_restarts(&case, &*transport, options, subscription, &expected);
    let ((), tally) = tokio::join!(restarts, reading);
    case.check(tally.covers(&expected), || {
        format!("missing {}", tally.missing(&expected))
    });
}

/// Publishes `events` in order on `connection`, retrying each until it resolves `Ok` or the
/// guard passes, and counts each publish in `progress`.
async fn publish_with_retry(
    publisher: usize,
    connection: Arc<dyn Transport>,
    events: Vec<WireEvent>,
    progress: Arc<watch::Sender<usize>>,
    guard: Duration,
) -> Result<(), String> {
    const RETRY_PAUSE: Duration = Duration::from_millis(50);
    for event in events {
        let deadline = tokio::time::Instant::now() + guard;
        loop {
            let publish = connection.publish(event.clone());
            let error = match tokio::time::timeout_at(deadline, publish).await {
                Ok(Ok(())) => break,
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no ack".to_owned(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "publisher {publisher}: `{}` (id {}) not published within {guard:?}: {error}",
                    event.ty, event.id
                ));
            }
            // A pause between retries, not a synchronisation: the broker is restarting.
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        progress.send_modify(|count| *count += 1);
    }
    Ok(())
}

/// Reads `subscription` until every id of `expected` was acked, through broker restarts:
/// errors from the stream are counted and skipped, an ended stream is subscribed again.
async fn read_through_restarts(
    case: &Case<'_>,
    transport: &dyn Transport,
    options: SubscribeOptions,
    mut subscription: TransportSubscription,
    expected: &HashSet<String>,
) -> Tally {
    let mut tally = Tally::default();
    let mut errors: HashMap<String, usize> = HashMap::new();
    while !tally.covers(expected) {
        let what = || {
            format!(
                "reading through the restarts: missing {}; stream errors so far: {errors:?}",
                tally.missing(expected)
            )
        };
        let item = match tokio::time::timeout(case.guard(), subscription.next()).await {
            Ok(item) => item,
            Err(_) => case.fail(format!("{}: nothing within {:?}", what(), case.guard())),
        };
        match item {
            Some(Ok(delivery)) => {
                let received = Received {
                    from: 0,
                    event: delivery.event().clone(),
                    attempt: delivery.attempt(),
                };
                if let Err(error) = delivery.ack().await {
                    // The ack was lost with the broker: the event comes again.
                    *errors.entry(format!("ack: {error}")).or_default() += 1;
                    continue;
                }
                tally.record(received);
            }
            Some(Err(error)) => *errors.entry(error.to_string()).or_default() += 1,
            None => {
                subscription = resubscribe(case, transport, &options).await;
            }
        }
    }
    tally
}

/// Subscribes again after the stream ended, retrying while the broker is away.
async fn resubscribe(
    case: &Case<'_>,
    transport: &dyn Transport,
    options: &SubscribeOptions,
) -> TransportSubscription {
    const RETRY_PAUSE: Duration = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + case.guard();
    loop {
        let error =
            match tokio::time::timeout_at(deadline, transport.subscribe(options.clone())).await {
                Ok(Ok(subscription)) => return subscription,
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no answer".to_owned(),
            };
        if tokio::time::Instant::now() >= deadline {
            case.fail(format!("subscribing again after a restart: {error}"));
        }
        // A pause between retries, not a synchronisation: the broker is restarting.
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Dead letters read back and deleted ([`Transport::dead_letters`],
/// [`Transport::delete_dead_letters`]): a keeper group subscribes to the dead letters of the
/// case first; two events, `<prefix>.x.one` then `<prefix>.y.two`, are rejected by a group.
/// Reading the dead letters of `<prefix>.>` comes to the two letters (each the dead letter of
/// its event, with the group and reason), in that order; of `<prefix>.x.>` to the first only.
/// The keeper takes the first letter and holds it; both are deleted (2 counted), then read
/// back as none, and deleting them again counts 0. The held letter's ack still succeeds; a
/// new member of the keeper group, after a probe letter published under the case's dead-letter
/// names, gets the probe next: nothing deleted is delivered again. An ordinary event is never
/// deleted as a letter.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn stored_dead_letters(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    let (case, transport) = Case::start(harness, "stored_dead_letters").await;
    if !case.requires(&[Need::Groups, Need::StoredDeadLetters]) {
        return;
    }
    let group = case.group("rejecting");
    let keeper = SubscribeOptions::new(dead_letter_name(&case.name(">")))
        .group(case.group("keeper"))
        .max_deliveries(u32::MAX);
    let mut kept = case.subscribe(&*transport, keeper.clone()).await;
    let mut subscription = case
        .subscribe(
            &*transport,
            SubscribeOptions::new(case.name(">"))
                .group(&group)
                .max_deliveries(1),
        )
        .await;
    let originals = [
        case.event(&case.name("x.one")),
        case.event(&case.name("y.two")),
    ];
    for original in &originals {
        case.publish(&*transport, original.clone()).await;
        let delivery = case.next(&mut subscription, "the event to reject").await;
        case.check(delivery.event().id == original.id, || {
            format!(
                "expected {}, got {}",
                original.id,
                describe(delivery.event(), delivery.attempt())
            )
        });
        case.reject(delivery, "conformance: stored").await;
    }
    let read = |events: String| {
        let case = &case;
        let transport = &transport;
        async move {
            let what = format!("reading the dead letters of `{events}`");
            match case.guarded(&what, transport.dead_letters(&events)).await {
                Ok(Some(letters)) => letters,
                Ok(None) => case.fail(format!(
                    "{what}: None though the transport says stored_dead_letters"
                )),
                Err(error) => case.fail(format!("{what}: {error}")),
            }
        }
    };
    let deadline = tokio::time::Instant::now() + case.guard();
    let letters = loop {
        let letters = read(case.name(">")).await;
        if letters.len() >= 2 || tokio::time::Instant::now() >= deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let names: Vec<&str> = letters.iter().map(|l| l.letter.ty.as_str()).collect();
    let expected: Vec<String> = originals.iter().map(|e| dead_letter_name(&e.ty)).collect();
    case.check(names == expected, || {
        format!("the dead letters of the case are {names:?}, expected {expected:?} in order")
    });
    for (original, stored) in originals.iter().zip(&letters) {
        check_dead_letter(
            &case,
            original,
            &stored.letter,
            &group,
            1,
            Some("conformance: stored"),
        );
    }
    let first_only = read(case.name("x.>")).await;
    case.check(first_only.len() == 1 && first_only[0] == letters[0], || {
        format!("the dead letters of `x.>` are {first_only:?}, expected the first only")
    });
    let held = case.next(&mut kept, "the first letter, kept").await;
    case.check(held.event().id == letters[0].letter.id, || {
        format!(
            "the keeper got {}, expected the first letter",
            describe(held.event(), held.attempt())
        )
    });
    let what = "deleting the two letters";
    let deleted = case
        .guarded(what, transport.delete_dead_letters(&letters))
        .await;
    case.check(matches!(deleted, Ok(Some(2))), || {
        format!("{what}: {deleted:?}, expected Ok(Some(2))")
    });
    let left = read(case.name(">")).await;
    case.check(left.is_empty(), || {
        format!("dead letters left after deleting them all: {left:?}")
    });
    let again = case
        .guarded(what, transport.delete_dead_letters(&letters))
        .await;
    case.check(matches!(again, Ok(Some(0))), || {
        format!("deleting the letters again: {again:?}, expected Ok(Some(0))")
    });
    case.ack(held).await;
    drop(kept);
    let mut member = case.subscribe(&*transport, keeper).await;
    let probe = case.event(&dead_letter_name(&case.name("probe")));
    case.publish(&*transport, probe.clone()).await;
    let next = case.next(&mut member, "the probe letter").await;
    case.check(next.event().id == probe.id, || {
        format!(
            "a deleted letter was delivered again: {}",
            describe(next.event(), next.attempt())
        )
    });
    case.ack(next).await;
    // An ordinary event, even given with a letter's position, is never deleted as a letter.
    let ordinary = bus_core::transport::StoredDeadLetter::new(
        originals[0].clone(),
        letters[0].position.clone(),
    );
    let none = case
        .guarded(
            "deleting an ordinary event",
            transport.delete_dead_letters(&[ordinary]),
        )
        .await;
    case.check(matches!(none, Ok(Some(0))), || {
        format!("deleting an event that is not a dead letter: {none:?}, expected Ok(Some(0))")
    });
}
