//! Messages written by other clients straight to the broker (Redis with its own CLI,
//! `redis-cli XADD`; NATS with a raw JetStream client) that a bus cannot take: a payload that
//! is not JSON, JSON of another shape than the listener's type, a message missing its
//! CloudEvents attributes, a value that does not percent-decode, a payload over the size
//! limit, and a message with a hundred headers. Each is dead-lettered with a reason that names
//! the problem, the listener never sees it, and the events around it are handled.

#![cfg(all(feature = "nats", feature = "redis"))]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::nats::NatsTransport;
use bus::redis::RedisTransport;
use bus::transport::{DEAD_LETTER_REASON, MAX_ATTRIBUTES, Transport, dead_letter_name};
use bus::{EventBus, Policy, policy::Group};
use serde::{Deserialize, Serialize};

/// The payload limit the transports are given here.
const MAX_PAYLOAD: usize = 4096;
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "wire.orders", distributed)]
struct Order {
    id: u64,
}

/// One bad message: its id, headers and payload, and what its dead letter's reason must say.
struct Bad {
    id: &'static str,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    says: String,
}

/// The CloudEvents headers of a well-formed `wire.orders` message with id `id`.
fn ce(id: &str) -> Vec<(String, String)> {
    [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "other-client"),
        ("ce-type", "wire.orders"),
        ("content-type", "application/json"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

fn bad_messages() -> Vec<Bad> {
    let mut many_headers = ce("many-headers");
    many_headers.extend((0..100).map(|n| (format!("ce-x{n}"), "1".to_owned())));
    vec![
        Bad {
            id: "not-json",
            headers: ce("not-json"),
            payload: b"{id: 1,".to_vec(),
            says: "does not decode as".to_owned(),
        },
        Bad {
            id: "wrong-type",
            headers: ce("wrong-type"),
            payload: br#"{"name":"a user, not an order"}"#.to_vec(),
            says: "missing field `id`".to_owned(),
        },
        Bad {
            id: "no-attributes",
            headers: vec![
                ("ce-specversion".to_owned(), "1.0".to_owned()),
                ("ce-type".to_owned(), "wire.orders".to_owned()),
            ],
            payload: br#"{"id":7}"#.to_vec(),
            says: "attribute (header `ce-id`) is missing".to_owned(),
        },
        Bad {
            id: "too-large",
            headers: ce("too-large"),
            payload: format!(r#"{{"id":8,"pad":"{}"}}"#, "x".repeat(2 * MAX_PAYLOAD)).into_bytes(),
            says: format!("over the {MAX_PAYLOAD}-byte limit"),
        },
        Bad {
            id: "bad-encoding",
            headers: ce("bad-encoding")
                .into_iter()
                .map(|(name, value)| match name.as_str() {
                    // An overlong space: not UTF-8 once percent-decoded.
                    "ce-source" => (name, "a%C0%A0b".to_owned()),
                    _ => (name, value),
                })
                .collect(),
            payload: br#"{"id":10}"#.to_vec(),
            says: "the value of header `ce-source` does not decode".to_owned(),
        },
        Bad {
            id: "many-headers",
            headers: many_headers,
            payload: br#"{"id":9}"#.to_vec(),
            says: format!("too many headers: more than {MAX_ATTRIBUTES}"),
        },
    ]
}

/// The ids the listener handled.
type Handled = Arc<Mutex<Vec<u64>>>;

/// A bus on `transport` whose listener records the orders it handles.
async fn billing(transport: Arc<dyn Transport>) -> (EventBus, Handled) {
    let bus = EventBus::builder()
        .service("shop")
        .shared_transport(transport)
        .distributed::<Order>()
        .build();
    let handled = Handled::default();
    {
        let handled = Arc::clone(&handled);
        bus.on("wire.orders", move |order: Arc<Order>| {
            let handled = Arc::clone(&handled);
            async move { handled.lock().unwrap().push(order.id) }
        })
        .policy(Policy::new().group(Group::Named("billing")))
        .add();
    }
    bus.ready().await.unwrap();
    (bus, handled)
}

/// Checks that each bad message has a dead letter whose reason names its problem; `letters`
/// maps each dead letter's id to its reason.
fn check_letters(label: &str, letters: &BTreeMap<String, String>, bad: &[Bad]) {
    for message in bad {
        // A message without an id gets one made from its place in the broker.
        let found = letters.iter().any(|(id, reason)| {
            (id.starts_with(message.id) || message.id == "no-attributes")
                && reason.contains(&message.says)
        });
        assert!(
            found,
            "{label}: no dead letter of `{}` saying {:?}: {letters:#?}",
            message.id, message.says
        );
    }
}

/// Publishes order 1, the bad messages (written by `write`), then order 2; checks the
/// listener handled exactly 1 and 2, and each bad message was dead-lettered with its reason
/// (the letters' ids and reasons, as `letters` reads them from the broker once there are
/// `count` of them).
async fn bad_input_is_dead_lettered<W, WriteFut, L, LettersFut>(
    label: &str,
    transport: Arc<dyn Transport>,
    write: W,
    letters: L,
) where
    W: Fn(&'static str, Vec<(String, String)>, Vec<u8>) -> WriteFut,
    WriteFut: Future<Output = ()>,
    L: FnOnce(usize) -> LettersFut,
    LettersFut: Future<Output = BTreeMap<String, String>>,
{
    let (bus, handled) = billing(Arc::clone(&transport)).await;
    assert!(bus.emit_event(Order { id: 1 }).await.is_ok());
    let bad = bad_messages();
    for message in &bad {
        write(message.id, message.headers.clone(), message.payload.clone()).await;
    }
    assert!(bus.emit_event(Order { id: 2 }).await.is_ok());

    let letters = letters(bad.len()).await;
    for (id, reason) in &letters {
        println!("{label}: dead letter {id}: {reason}");
    }
    check_letters(label, &letters, &bad);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while handled.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: the good orders were not handled: {:?}",
            handled.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.drain().await;
    let mut handled = handled.lock().unwrap().clone();
    handled.sort_unstable();
    assert_eq!(
        handled,
        [1, 2],
        "{label}: the listener saw only the good orders"
    );
    bus.shutdown(Duration::from_secs(5)).await;
    println!(
        "wire_bad_input {label}: {} bad messages dead-lettered with their reasons, the 2 good \
         orders around them handled",
        bad.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bad_messages_are_dead_lettered_with_reasons() {
    let prefix = format!("t{}", common::unique());
    let stream_name = format!("TEST_{}", prefix.to_uppercase());
    let connected = NatsTransport::builder("nats://127.0.0.1:4222")
        .subject_prefix(prefix)
        .stream_name(stream_name.clone())
        .max_payload(MAX_PAYLOAD)
        .connect()
        .await;
    let Some(nats) = common::reachable("nats_bad_messages", connected) else {
        return;
    };
    let jetstream = nats.jetstream().clone();
    let (subject, letters_subject) = (
        nats.subject("wire.orders"),
        nats.subject(&dead_letter_name("wire.orders")),
    );
    let write = |_, headers: Vec<(String, String)>, payload: Vec<u8>| {
        let (jetstream, subject) = (jetstream.clone(), subject.clone());
        async move {
            let mut map = bus::nats::async_nats::HeaderMap::new();
            for (name, value) in headers {
                map.insert(name.as_str(), value.as_str());
            }
            jetstream
                .publish_with_headers(subject, map, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    // Read raw from the stream: the letter of the message with a hundred headers keeps them,
    // so no transport would hand it out again.
    // Dead letters have a stream of their own.
    let letters_stream = nats
        .dead_letter_stream_name()
        .expect("a new deployment keeps dead letters apart")
        .to_owned();
    let letters = |count: usize| {
        let (jetstream, letters_stream) = (jetstream.clone(), letters_stream.clone());
        async move {
            let stream = jetstream.get_stream(&letters_stream).await.unwrap();
            let deadline = tokio::time::Instant::now() + PATIENCE;
            let (mut letters, mut next) = (BTreeMap::new(), 1);
            while letters.len() < count {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} of {count} dead letters: {letters:#?}",
                    letters.len()
                );
                let last = stream.get_info().await.unwrap().state.last_sequence;
                while next <= last {
                    let message = stream.get_raw_message(next).await.unwrap();
                    next += 1;
                    if message.subject.as_str() != letters_subject {
                        continue;
                    }
                    let header = |name: &str| {
                        message
                            .headers
                            .get(name)
                            .map_or_else(String::new, |value| value.as_str().to_owned())
                    };
                    // Percent-encoded on the wire, as the CloudEvents NATS binding says.
                    let decoded = |name: &str| {
                        percent_encoding::percent_decode_str(&header(name))
                            .decode_utf8()
                            .expect("UTF-8")
                            .into_owned()
                    };
                    letters.insert(
                        decoded("ce-id"),
                        decoded(&format!("ce-{DEAD_LETTER_REASON}")),
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            letters
        }
    };
    bad_input_is_dead_lettered("nats", Arc::new(nats.clone()), write, letters).await;
    let _ = jetstream.delete_stream(&stream_name).await;
    let _ = jetstream.delete_stream(&letters_stream).await;
    assert_eq!(
        nats.dead_lettered(),
        bad_messages().len() as u64,
        "the transport counts every dead letter it wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bad_messages_written_by_redis_cli_are_dead_lettered_with_reasons() {
    let prefix = format!("t{}", common::unique());
    let connected = RedisTransport::builder("redis://127.0.0.1:6379")
        .key_prefix(prefix)
        .max_payload(MAX_PAYLOAD)
        .connect()
        .await;
    let Some(redis) = common::reachable("redis_bad_messages", connected) else {
        return;
    };
    let key = redis.stream_key("wire.orders");
    let write = |id, headers: Vec<(String, String)>, payload: Vec<u8>| {
        // The broker's own CLI, as another team's script would write to the stream.
        let mut command = std::process::Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", "6379", "XADD", &key, "*"]);
        for (name, value) in headers {
            command.arg(name).arg(value);
        }
        command
            .arg("data")
            .arg(String::from_utf8(payload).expect("the payloads here are text"));
        let output = command.output().expect("redis-cli runs");
        assert!(
            output.status.success() && !output.stdout.starts_with(b"ERR"),
            "redis-cli XADD {id}: {output:?}"
        );
        std::future::ready(())
    };
    // Read raw from the stream: the letter of the message with a hundred fields keeps them,
    // so no transport would hand it out again.
    let letters_key = redis.stream_key(&dead_letter_name("wire.orders"));
    let mut conn = redis.connection();
    let letters = |count: usize| async move {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let entries: Vec<(String, Vec<(String, String)>)> = bus::redis::redis::cmd("XRANGE")
                .arg(&letters_key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap();
            let letters: BTreeMap<String, String> = entries
                .into_iter()
                .map(|(_, fields)| {
                    let field = |name: &str| {
                        fields
                            .iter()
                            .find(|(field, _)| field == name)
                            .map_or_else(String::new, |(_, value)| value.clone())
                    };
                    // Percent-encoded, as on NATS: the same value rules.
                    let decoded = |name: &str| {
                        percent_encoding::percent_decode_str(&field(name))
                            .decode_utf8()
                            .expect("UTF-8")
                            .into_owned()
                    };
                    (
                        decoded("ce-id"),
                        decoded(&format!("ce-{DEAD_LETTER_REASON}")),
                    )
                })
                .collect();
            if letters.len() >= count {
                return letters;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {count} dead letters: {letters:#?}",
                letters.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    bad_input_is_dead_lettered("redis", Arc::new(redis.clone()), write, letters).await;
    assert_eq!(
        redis.dead_lettered(),
        bad_messages().len() as u64,
        "the transport counts every dead letter it wrote"
    );
}
