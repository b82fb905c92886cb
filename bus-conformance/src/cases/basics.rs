//! Cases on plain subscriptions: what reaches whom, intact and in order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use bus_core::EventBus;
use bus_core::transport::{SubscribeOptions, WireEvent};
use bytes::Bytes;
use futures_util::future::join_all;

use crate::support::{Case, Consumers, Need, Tally, describe, ids};
use crate::{Harness, Size};

/// Publish, then subscribe (Watermill's `TestPublishSubscribe`): 100 events published to a
/// plain subscription arrive with every attribute and the payload exactly as published. Four
/// of them stretch the wire format: no time and no content type with an empty payload, every
/// byte value, a 64 KiB payload, and extension values with spaces and non-ASCII text.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn publish_subscribe(harness: &dyn Harness, size: Size) {
    let (case, transport) = Case::start(harness, "publish_subscribe").await;
    let name = case.name("events");
    let mut subscription = case
        .subscribe(&*transport, SubscribeOptions::new(&name))
        .await;
    let mut events = case.events(&name, size.scale(100).max(4));
    events[0].time = None;
    events[0].datacontenttype = None;
    events[0].data = Bytes::new();
    events[1].datacontenttype = Some("application/octet-stream".to_owned());
    events[1].data = (0..=255_u8).collect::<Vec<u8>>().into();
    events[2].datacontenttype = Some("text/plain; charset=utf-8".to_owned());
    events[2].data = "conformance ".repeat(64 * 1024 / 12).into_bytes().into();
    events[3] = events[3]
        .clone()
        .extension(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .extension("note", "naïve value, with spaces; and = signs");
    for event in &events {
        case.publish(&*transport, event.clone()).await;
    }
    let published: HashMap<&str, &WireEvent> = events
        .iter()
        .map(|event| (event.id.as_str(), event))
        .collect();
    let mut seen = HashSet::new();
    while seen.len() < events.len() {
        let what = format!("event {} of {}", seen.len() + 1, events.len());
        let delivery = case.next(&mut subscription, what).await;
        let got = delivery.event().clone();
        let Some(sent) = published.get(got.id.as_str()) else {
            case.fail(format!(
                "got an event never published: {}",
                describe(&got, delivery.attempt())
            ));
        };
        let differences = differences(sent, &got);
        case.check(differences.is_empty(), || {
            format!(
                "event {} did not arrive as published: {}",
                got.id,
                differences.join("; ")
            )
        });
        case.ack(delivery).await;
        seen.insert(got.id);
    }
}

/// What differs between the event `sent` and the event `got`, attribute by attribute.
fn differences(sent: &WireEvent, got: &WireEvent) -> Vec<String> {
    let mut differences = Vec::new();
    let mut compare = |attribute: &str, sent: String, got: String| {
        if sent != got {
            differences.push(format!("`{attribute}` was {sent}, arrived as {got}"));
        }
    };
    compare("id", format!("{:?}", sent.id), format!("{:?}", got.id));
    compare(
        "source",
        format!("{:?}", sent.source),
        format!("{:?}", got.source),
    );
    compare("type", format!("{:?}", sent.ty), format!("{:?}", got.ty));
    compare(
        "time",
        format!("{:?}", sent.time),
        format!("{:?}", got.time),
    );
    compare(
        "datacontenttype",
        format!("{:?}", sent.datacontenttype),
        format!("{:?}", got.datacontenttype),
    );
    compare(
        "extensions",
        format!("{:?}", sent.extensions),
        format!("{:?}", got.extensions),
    );
    if sent.data != got.data {
        let first = sent
            .data
            .iter()
            .zip(got.data.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(sent.data.len().min(got.data.len()));
        differences.push(format!(
            "the payload of {} bytes arrived as {} bytes, differing from byte {first}",
            sent.data.len(),
            got.data.len()
        ));
    }
    differences
}

/// Many names on one connection (Watermill's `TestConcurrentSubscribeMultipleTopics`): 20
/// plain subscriptions opened concurrently on one connection, 100 events published to each
/// name concurrently; each subscription receives all of its name's events and nothing else.
/// The names are `t0` ... `t19`, so `t1` is a string prefix of `t10` to `t19`.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn concurrent_subscribe_multiple_topics(harness: &dyn Harness, size: Size) {
    let (case, transport) = Case::start(harness, "concurrent_subscribe_multiple_topics").await;
    let topics = size.scale(20).max(2);
    let names: Vec<String> = (0..topics).map(|n| case.name(&format!("t{n}"))).collect();
    let subscriptions = join_all(
        names
            .iter()
            .map(|name| case.subscribe(&*transport, SubscribeOptions::new(name))),
    )
    .await;
    let mut consumers: Vec<Consumers> = subscriptions
        .into_iter()
        .enumerate()
        .map(|(topic, subscription)| {
            let mut consumers = Consumers::new();
            consumers.spawn(topic, subscription);
            consumers
        })
        .collect();
    let per_topic: Vec<Vec<WireEvent>> = names
        .iter()
        .map(|name| case.events(name, size.scale(100)))
        .collect();
    let all: Vec<WireEvent> = per_topic.iter().flatten().cloned().collect();
    case.publish_all(std::slice::from_ref(&transport), &all, topics)
        .await;
    let expected: Vec<HashSet<String>> = per_topic.iter().map(|events| ids(events)).collect();
    let whats: Vec<String> = names
        .iter()
        .map(|name| format!("subscription to `{name}`"))
        .collect();
    join_all(
        consumers
            .iter_mut()
            .zip(&expected)
            .zip(&whats)
            .map(|((consumers, expected), what)| consumers.collect(&case, what, expected)),
    )
    .await;
}

/// Per-name order (Watermill's `TestPublishSubscribeInOrder`, single-subscriber variant): 1,000
/// events published one after the other over 16 names reach one plain subscription to
/// `<prefix>.>` in publish order, name by name.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn publish_subscribe_in_order(harness: &dyn Harness, size: Size) {
    const KEYS: usize = 16;
    let (case, transport) = Case::start(harness, "publish_subscribe_in_order").await;
    if !case.requires(&[Need::Ordered]) {
        return;
    }
    let mut subscription = case
        .subscribe(&*transport, SubscribeOptions::new(case.name(">")))
        .await;
    let names: Vec<String> = (0..KEYS).map(|key| case.name(&format!("k{key}"))).collect();
    let count = size.scale(1_000);
    let mut position = HashMap::new();
    for n in 0..count {
        let event = case.event(&names[n % KEYS]);
        position.insert(event.id.clone(), n);
        case.publish(&*transport, event).await;
    }
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut seen = HashSet::new();
    while seen.len() < count {
        let what = format!("event {} of {count}", seen.len() + 1);
        let delivery = case.next(&mut subscription, what).await;
        let event = delivery.event().clone();
        let attempt = delivery.attempt();
        case.ack(delivery).await;
        let Some(&n) = position.get(&event.id) else {
            case.fail(format!(
                "got an event never published: {}",
                describe(&event, attempt)
            ));
        };
        if !seen.insert(event.id.clone()) {
            // A redelivery: the order promise is about first deliveries.
            continue;
        }
        if let Some(previous) = last.insert(event.ty.clone(), n) {
            case.check(previous < n, || {
                format!(
                    "`{}`: the event published {n}th arrived after the one published \
                     {previous}th",
                    event.ty
                )
            });
        }
    }
}

/// Publishers closed at the end (Watermill's `TestPublisherClose`): 10,000 events published
/// concurrently by 20 publishers, each on its own connection, which are all closed once their
/// publishes resolved; a plain subscription opened before gets every event.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn many_publishers(harness: &dyn Harness, size: Size) {
    const PUBLISHERS: usize = 20;
    let (case, transport) = Case::start(harness, "many_publishers").await;
    let name = case.name("events");
    let subscription = case
        .subscribe(&*transport, SubscribeOptions::new(&name))
        .await;
    let events = case.events(&name, size.scale(10_000));
    let publishers = join_all((0..PUBLISHERS).map(|_| case.connect())).await;
    case.publish_all(&publishers, &events, PUBLISHERS).await;
    drop(publishers);
    let mut consumers = Consumers::new();
    consumers.spawn(0, subscription);
    let tally = consumers
        .collect_settled(&case, "the subscription", &ids(&events))
        .await;
    tally.assert_once_unless_redelivered(&case, "the subscription");
}

/// Name isolation (Watermill's `TestTopic`): plain subscriptions to `<prefix>.t1` and
/// `<prefix>.t10` each receive the one event of their name, and nothing of `<prefix>.t10`,
/// `<prefix>.t1`, `<prefix>.t1.x`, `<prefix>.t` or `<prefix>.t10.t1`, all published first.
/// The "nothing else" is checked for [`QUIET_PERIOD`](crate::QUIET_PERIOD) after the expected
/// events.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn topic_isolation(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    let (case, transport) = Case::start(harness, "topic_isolation").await;
    let (one, ten) = (case.name("t1"), case.name("t10"));
    let mut subscription_one = case
        .subscribe(&*transport, SubscribeOptions::new(&one))
        .await;
    let mut subscription_ten = case
        .subscribe(&*transport, SubscribeOptions::new(&ten))
        .await;
    for decoy in ["t1.x", "t", "t10.t1"] {
        case.publish(&*transport, case.event(&case.name(decoy)))
            .await;
    }
    let event_ten = case.event(&ten);
    let event_one = case.event(&one);
    case.publish(&*transport, event_ten.clone()).await;
    case.publish(&*transport, event_one.clone()).await;
    for (subscription, expected) in [
        (&mut subscription_one, &event_one),
        (&mut subscription_ten, &event_ten),
    ] {
        let delivery = case
            .next(subscription, format!("the event of `{}`", expected.ty))
            .await;
        case.check(delivery.event().id == expected.id, || {
            format!(
                "the subscription to `{}` got {}",
                expected.ty,
                describe(delivery.event(), delivery.attempt())
            )
        });
        case.ack(delivery).await;
    }
    let what_one = format!("the subscription to `{one}`");
    let what_ten = format!("the subscription to `{ten}`");
    futures_util::future::join(
        case.assert_quiet(&mut subscription_one, &what_one),
        case.assert_quiet(&mut subscription_ten, &what_ten),
    )
    .await;
}

/// The names of [`wildcard_parity`], after the case's prefix `P` (`""` is `P` itself).
const PARITY_NAMES: &[&str] = &[
    "", "a", "b", "A", "ab", "a-b", "a_b", "a.b", "a.c", "x.c", "a.b.c", "a.b.d", "a.x.d",
    "a.b.c.d", "a_b.c",
];

/// The patterns of [`wildcard_parity`]: `P` stands for the case's prefix
/// `conformance.<token>`, `T` for its unique token. Every pattern holds the token, so that no
/// other case's events on a shared broker match it.
const PARITY_PATTERNS: &[&str] = &[
    "P",
    "P.a",
    "P.A",
    "P.*",
    "P.>",
    "P.a.*",
    "P.a.>",
    "P.*.c",
    "P.*.*",
    "P.*.>",
    "P.a.*.d",
    "P.*.b.>",
    "*.T",
    "*.T.a",
    "*.T.>",
    "*.T.*.c",
    "conformance.T.*.*.*",
];

/// Whether `pattern` matches `name` in NATS subject semantics, as documented: token by token,
/// `*` is exactly one token, a last `>` is one or more.
pub(crate) fn nats_matches(pattern: &str, name: &str) -> bool {
    let name: Vec<&str> = name.split('.').collect();
    let pattern: Vec<&str> = pattern.split('.').collect();
    for (position, token) in pattern.iter().enumerate() {
        match *token {
            ">" => return name.len() > position,
            "*" if position < name.len() => {}
            literal if name.get(position) == Some(&literal) => {}
            _ => return false,
        }
    }
    name.len() == pattern.len()
}

/// The names each pattern matches in process: listeners of a fresh [`EventBus`] on every
/// pattern, and one emit per name.
async fn in_process_matches(patterns: &[String], names: &[String]) -> Vec<BTreeSet<String>> {
    #[derive(Debug)]
    struct Named(String);
    let bus = EventBus::new();
    let matches: Vec<Arc<Mutex<BTreeSet<String>>>> =
        patterns.iter().map(|_| Arc::default()).collect();
    for (pattern, matched) in patterns.iter().zip(&matches) {
        let matched = Arc::clone(matched);
        bus.on(pattern, move |event: Arc<Named>| {
            let matched = Arc::clone(&matched);
            async move {
                matched
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(event.0.clone());
            }
        })
        .try_add()
        .unwrap_or_else(|error| panic!("the in-process bus refused pattern `{pattern}`: {error}"));
    }
    for name in names {
        bus.emit(name, Named(name.clone())).await;
    }
    bus.drain().await;
    matches
        .iter()
        .map(|matched| {
            matched
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
        .collect()
}

/// Wildcard parity (issue 5): for a fixed set of patterns (`P.*`, `P.>`, `*.T.>`, ...) and
/// names (`P`, `P.a`, `P.A`, `P.a-b`, `P.a.b.c.d`, ...), each plain subscription to a pattern
/// receives exactly the names that the in-process bus matches, which must also be the names
/// that NATS semantics match (`*` one token, a last `>` one or more). One event is published
/// per name; "nothing else" is checked for [`QUIET_PERIOD`](crate::QUIET_PERIOD) after the
/// expected events, all subscriptions at once.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn wildcard_parity(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    let (case, transport) = Case::start(harness, "wildcard_parity").await;
    let prefix = case.prefix();
    let names: Vec<String> = PARITY_NAMES
        .iter()
        .map(|suffix| match *suffix {
            "" => prefix.clone(),
            suffix => case.name(suffix),
        })
        .collect();
    let patterns: Vec<String> = PARITY_PATTERNS
        .iter()
        .map(|pattern| {
            pattern
                .split('.')
                .map(|token| match token {
                    "P" => prefix.as_str(),
                    "T" => case.token(),
                    token => token,
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    let in_process = in_process_matches(&patterns, &names).await;
    let mut expected = Vec::new();
    for (pattern, in_process) in patterns.iter().zip(&in_process) {
        let nats: BTreeSet<String> = names
            .iter()
            .filter(|name| nats_matches(pattern, name))
            .cloned()
            .collect();
        case.check(&nats == in_process, || {
            format!(
                "in process, `{pattern}` matches {in_process:?}; NATS semantics match {nats:?} \
                 (a bug of bus-core's pattern matching)"
            )
        });
        case.check(!nats.is_empty(), || format!("`{pattern}` matches no name"));
        expected.push(nats);
    }

    let subscriptions = join_all(
        patterns
            .iter()
            .map(|pattern| case.subscribe(&*transport, SubscribeOptions::new(pattern))),
    )
    .await;
    let mut consumers: Vec<Consumers> = subscriptions
        .into_iter()
        .enumerate()
        .map(|(label, subscription)| {
            let mut consumers = Consumers::new();
            consumers.spawn(label, subscription);
            consumers
        })
        .collect();
    let mut id_of = BTreeMap::new();
    for name in &names {
        let event = case.event(name);
        id_of.insert(name.clone(), event.id.clone());
        case.publish(&*transport, event).await;
    }
    let expected_ids: Vec<HashSet<String>> = expected
        .iter()
        .map(|names| names.iter().map(|name| id_of[name].clone()).collect())
        .collect();
    let whats: Vec<String> = patterns
        .iter()
        .zip(&expected)
        .map(|(pattern, names)| format!("the subscription to `{pattern}` (expecting {names:?})"))
        .collect();
    let tallies: Vec<Tally> =
        join_all(
            consumers.iter_mut().zip(&expected_ids).zip(&whats).map(
                |((consumers, expected), what)| consumers.collect_settled(&case, what, expected),
            ),
        )
        .await;
    for (tally, what) in tallies.iter().zip(&whats) {
        tally.assert_once_unless_redelivered(&case, what);
    }
    join_all(
        consumers
            .iter_mut()
            .zip(&whats)
            .map(|(consumers, what)| consumers.assert_quiet(&case, what)),
    )
    .await;
}

/// Deduplication (issue 5): an event published twice with the same source and id, then an
/// event with that id from another source (another event: CloudEvents makes source + id unique),
/// then a second event of the same name, reach a plain subscription, and a group when the
/// transport has groups, once each. When the transport is `ordered`, the last event arriving
/// proves that no duplicate came before it; the case still waits
/// [`QUIET_PERIOD`](crate::QUIET_PERIOD) after it, for transports that are not.
///
/// # Panics
///
/// When the transport breaks the contract; see the [module documentation](crate::cases).
pub async fn dedup(harness: &dyn Harness, size: Size) {
    let _ = size; // the same counts at every size: they are small already
    let (case, transport) = Case::start(harness, "dedup").await;
    if !case.requires(&[Need::Deduplicates]) {
        return;
    }
    let name = case.name("events");
    let mut subscriptions = vec![(
        "a plain subscription",
        case.subscribe(&*transport, SubscribeOptions::new(&name))
            .await,
    )];
    if transport.capabilities().groups {
        let group = SubscribeOptions::new(&name).group(case.group("g"));
        subscriptions.push(("a group", case.subscribe(&*transport, group).await));
    }
    let twice = case.event(&name);
    let mut elsewhere = case.event(&name);
    elsewhere.id.clone_from(&twice.id);
    elsewhere.source = format!("{}-elsewhere", twice.source);
    let after = case.event(&name);
    for event in [&twice, &twice, &elsewhere, &after] {
        case.publish(&*transport, event.clone()).await;
    }
    let key = |event: &WireEvent| (event.source.clone(), event.id.clone());
    let published = [key(&twice), key(&elsewhere), key(&after)];
    for (who, subscription) in &mut subscriptions {
        let mut got = Vec::new();
        while !published.iter().all(|event| got.contains(event)) {
            let delivery = case
                .next(subscription, format!("the three events ({who})"))
                .await;
            let event = key(delivery.event());
            case.check(published.contains(&event), || {
                format!(
                    "{who} got an event never published: {} from `{}`",
                    describe(delivery.event(), delivery.attempt()),
                    delivery.event().source
                )
            });
            case.check(!got.contains(&event), || {
                format!(
                    "{} from `{}` reached {who} twice: the second publish of its source and id \
                     was not dropped",
                    describe(delivery.event(), delivery.attempt()),
                    delivery.event().source
                )
            });
            case.ack(delivery).await;
            got.push(event);
        }
    }
    let case = &case;
    join_all(
        subscriptions
            .iter_mut()
            .map(|(who, subscription)| async move {
                let what = format!("{who}, after the three events");
                case.assert_quiet(subscription, &what).await;
            }),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::nats_matches;

    #[test]
    fn the_reference_matcher_follows_nats() {
        assert!(nats_matches("a", "a"));
        assert!(!nats_matches("a", "a.b"));
        assert!(nats_matches("a.*", "a.b"));
        assert!(!nats_matches("a.*", "a"));
        assert!(!nats_matches("a.*", "a.b.c"));
        assert!(nats_matches("a.>", "a.b"));
        assert!(nats_matches("a.>", "a.b.c"));
        assert!(!nats_matches("a.>", "a"));
        assert!(nats_matches("*.b.>", "a.b.c"));
        assert!(!nats_matches("*.b.>", "a.b"));
        assert!(nats_matches(">", "a"));
        assert!(!nats_matches("A", "a"));
        assert!(!nats_matches("a.*.c", "a.b.d"));
    }
}
