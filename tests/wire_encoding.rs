//! The wire form of events as other CloudEvents clients see it (issue 15, points 3 and 4),
//! checked with the brokers' raw clients: header (NATS) and field (Redis) values
//! percent-encoded as the CloudEvents NATS binding says, `datacontenttype` written as
//! `ce-datacontenttype`; foreign messages with encoded values and an HTTP-style `content-type`
//! read back decoded; dead-letter reasons encoded on the wire; and payloads of a content type
//! the listener's codec does not read dead-lettered without being decoded (on the in-memory
//! transport too).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bus::transport::{
    DEAD_LETTER_OF, DEAD_LETTER_REASON, MemoryTransport, SubscribeOptions, Transport,
    TransportSubscription, WireEvent, dead_letter_name,
};
use bus::{EventBus, Policy, policy::Group};
use bus_conformance::checks::next;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "wire.orders", distributed)]
struct Order {
    id: u64,
}

/// `(name, value)` pairs, as written.
type Pairs = Vec<(String, String)>;

fn pairs(pairs: &[(&str, &str)]) -> Pairs {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// The value of `name` among `pairs`.
fn get<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(pair, _)| pair.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// A transport, and what a test writes and reads behind its back with the broker's own
/// client.
enum Broker {
    Memory(MemoryTransport),
    #[cfg(all(feature = "nats", feature = "redis"))]
    Raw(common::brokers::Raw),
}

impl Broker {
    fn transport(&self) -> Arc<dyn Transport> {
        match self {
            Broker::Memory(memory) => Arc::new(memory.clone()),
            #[cfg(all(feature = "nats", feature = "redis"))]
            Broker::Raw(raw) => raw.transport(),
        }
    }

    /// Writes a message of event `name` as another client would: the NATS headers or the
    /// Redis fields `headers` (values as they are) and `payload`. The memory transport has no
    /// raw form: the event is read from the headers as a transport reads a message.
    async fn write(&self, name: &str, headers: &Pairs, payload: &[u8]) {
        match self {
            Broker::Memory(memory) => {
                let event = WireEvent::from_headers(
                    headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    payload.to_vec().into(),
                    bus::transport::DEFAULT_MAX_PAYLOAD,
                )
                .expect("a valid message");
                memory.publish(event).await.unwrap();
            }
            #[cfg(all(feature = "nats", feature = "redis"))]
            Broker::Raw(raw) => raw.write(name, headers, payload).await,
        }
    }

    /// The headers (NATS) or fields (Redis, but `data`) of every stored message of event
    /// `name`, in order, as the broker holds them; `None` for the memory transport.
    async fn raw(&self, name: &str) -> Option<Vec<Pairs>> {
        match self {
            Broker::Memory(_) => None,
            #[cfg(all(feature = "nats", feature = "redis"))]
            Broker::Raw(raw) => Some(
                raw.read(name)
                    .await
                    .into_iter()
                    .map(|stored| stored.headers)
                    .collect(),
            ),
        }
    }
}

#[cfg(all(feature = "nats", feature = "redis"))]
mod brokers {
    use super::*;
    use crate::common::brokers::{self, Cleanup, Raw};

    /// The broker `which`, on a prefix of `test`'s own (deleted when the guard drops), or
    /// `None` when it is down (locally only).
    pub(super) async fn connect(test: &str, which: brokers::Broker) -> Option<(Broker, Cleanup)> {
        let (raw, cleanup) = Raw::connect(test, which).await?;
        Some((Broker::Raw(raw), cleanup))
    }
}

/// The CloudEvents headers of a `wire.orders` message from `source` with id `id`, and
/// `extra`, as they are written (the values encoded or not).
fn order_headers(id: &str, source: &str, extra: &[(&str, &str)]) -> Pairs {
    let mut headers = pairs(&[
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", source),
        ("ce-type", "wire.orders"),
    ]);
    headers.extend(pairs(extra));
    headers
}

/// (a) A bus's service name and content type, as the broker stores them.
async fn service_names_travel_percent_encoded(label: &str, broker: &Broker) {
    let bus = EventBus::builder()
        .service("a b é")
        .shared_transport(broker.transport())
        .build();
    let report = bus.emit_event(Order { id: 1 }).await;
    assert_eq!(
        report.published().map(|published| published.is_ok()),
        Some(true),
        "{label}"
    );
    let stored = broker.raw("wire.orders").await.expect("a broker");
    assert_eq!(stored.len(), 1, "{label}: {stored:?}");
    let headers = &stored[0];
    assert_eq!(
        get(headers, "ce-source"),
        Some("a%20b%20%C3%A9"),
        "{label}: {headers:?}"
    );
    assert_eq!(
        get(headers, "ce-datacontenttype"),
        Some("application/json"),
        "{label}: {headers:?}"
    );
    assert_eq!(get(headers, "content-type"), None, "{label}: {headers:?}");
    for (name, value) in headers {
        assert!(
            value.bytes().all(|byte| (0x21..=0x7e).contains(&byte)),
            "{label}: {name}: {value:?} is not printable ASCII without spaces"
        );
    }
    #[cfg(all(feature = "nats", feature = "redis"))]
    if let Broker::Raw(common::brokers::Raw::Nats(_)) = broker {
        // JetStream deduplicates on the source and the id, each encoded as in its header.
        let msg_id = get(headers, "ce-source").zip(get(headers, "ce-id"));
        assert_eq!(
            get(headers, "Nats-Msg-Id"),
            msg_id
                .map(|(source, id)| format!("{source}:{id}"))
                .as_deref(),
            "{label}: JetStream deduplicates on the source and the id"
        );
    }
    bus.shutdown(Duration::from_secs(5)).await;
}

/// (b) Messages of other producers: values percent-encoded (lower-case hex too), quoted, or
/// not encoded at all (earlier versions of this crate), and the content type HTTP-style.
async fn foreign_messages_are_read_decoded(label: &str, broker: &Broker) {
    let transport = broker.transport();
    let mut subscription = transport
        .subscribe(SubscribeOptions::new("wire.orders"))
        .await
        .unwrap();
    let encoded = order_headers(
        "foreign%201",
        "a%20b%20%c3%a9",
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("ce-note", r#""a \"quoted\" note""#),
        ],
    );
    broker.write("wire.orders", &encoded, br#"{"id":1}"#).await;
    // As earlier versions of this crate wrote it: values as they are.
    let unencoded = order_headers(
        "old-1",
        "old service é",
        &[("content-type", "application/json")],
    );
    broker
        .write("wire.orders", &unencoded, br#"{"id":2}"#)
        .await;

    let delivery = next(&mut subscription, "the encoded foreign message").await;
    let event = delivery.event();
    assert_eq!(event.id, "foreign 1", "{label}");
    assert_eq!(event.source, "a b é", "{label}");
    assert_eq!(
        event.datacontenttype.as_deref(),
        Some("application/json; charset=utf-8"),
        "{label}"
    );
    assert_eq!(event.extensions["note"], r#"a "quoted" note"#, "{label}");
    delivery.ack().await.unwrap();
    let delivery = next(&mut subscription, "the unencoded message").await;
    let event = delivery.event();
    assert_eq!(event.id, "old-1", "{label}");
    assert_eq!(event.source, "old service é", "{label}");
    assert_eq!(
        event.datacontenttype.as_deref(),
        Some("application/json"),
        "{label}"
    );
    delivery.ack().await.unwrap();
}

/// Reads `count` dead letters of `wire.orders` from `watcher`: the original id → the reason,
/// as the transport decodes them.
async fn watched_letters(
    watcher: &mut TransportSubscription,
    count: usize,
) -> BTreeMap<String, String> {
    let mut letters = BTreeMap::new();
    while letters.len() < count {
        let letter = next(watcher, "a dead letter").await;
        let event = letter.event();
        letters.insert(
            event.extensions[DEAD_LETTER_OF].clone(),
            event.extensions[DEAD_LETTER_REASON].clone(),
        );
        letter.ack().await.unwrap();
    }
    letters
}

/// (c) and (d): a `text/plain` payload (that is valid JSON of the listener's type) and an
/// XML payload are dead-lettered without reaching the listener, each reason naming the content
/// type and what the listener decodes, encoded on the wire; JSON with a charset, a `+json`
/// type and the bus's own events are delivered.
async fn content_types_the_codec_does_not_read_are_dead_lettered(label: &str, broker: &Broker) {
    let transport = broker.transport();
    let mut watcher = transport
        .subscribe(SubscribeOptions::new(dead_letter_name("wire.orders")))
        .await
        .unwrap();
    let bus = EventBus::builder()
        .service("shop")
        .shared_transport(Arc::clone(&transport))
        .build();
    let (handled, mut handled_rx) = mpsc::unbounded_channel();
    bus.on("wire.orders", move |order: Arc<Order>| {
        let handled = handled.clone();
        async move {
            let _ = handled.send(order.id);
        }
    })
    .policy(Policy::new().group(Group::Named("billing")))
    .add();
    bus.ready().await.unwrap();

    // (id, the header of the content type, its value, payload)
    let writes: [(&str, &str, &str, &[u8]); 4] = [
        ("plain-1", "content-type", "text/plain", br#"{"id":1}"#),
        (
            "xml-2",
            "ce-datacontenttype",
            "application/xml",
            b"<order><id>2</id></order>",
        ),
        (
            "charset-3",
            "ce-datacontenttype",
            "application/json;%20charset=utf-8",
            br#"{"id":3}"#,
        ),
        (
            "suffix-4",
            "content-type",
            "Application/vnd.shop+JSON",
            br#"{"id":4}"#,
        ),
    ];
    for (id, header, content_type, payload) in writes {
        let headers = order_headers(id, "other-sdk", &[(header, content_type)]);
        broker.write("wire.orders", &headers, payload).await;
    }
    let report = bus.emit_event(Order { id: 5 }).await;
    assert_eq!(
        report.published().map(|published| published.is_ok()),
        Some(true),
        "{label}"
    );

    let letters = watched_letters(&mut watcher, 2).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        match tokio::time::timeout(PATIENCE, handled_rx.recv()).await {
            Ok(Some(id)) => got.push(id),
            _ => panic!("{label}: handled only {got:?}"),
        }
    }
    bus.drain().await;
    while let Ok(id) = handled_rx.try_recv() {
        got.push(id);
    }
    got.sort_unstable();
    assert_eq!(got, [3, 4, 5], "{label}: the listener saw only JSON");

    for (id, content_type) in [("plain-1", "text/plain"), ("xml-2", "application/xml")] {
        let reason = letters
            .get(id)
            .unwrap_or_else(|| panic!("{label}: no dead letter of {id}: {letters:#?}"));
        println!("{label}: dead letter of {id}: {reason}");
        for says in [
            "the payload of `wire.orders` is `".to_owned() + content_type + "`",
            "listener `".to_owned(),
            format!(
                "decodes `{}` from application/json",
                std::any::type_name::<Order>()
            ),
        ] {
            assert!(reason.contains(&says), "{label}: {reason:?} lacks {says:?}");
        }
        assert!(
            !reason.contains("does not decode"),
            "{label}: {reason}: not decoded at all"
        );
    }

    // (c) On the wire, each reason is percent-encoded, and decodes to the reason.
    if let Some(stored) = broker.raw(&dead_letter_name("wire.orders")).await {
        assert_eq!(stored.len(), 2, "{label}: {stored:#?}");
        for headers in &stored {
            let of = get(headers, "ce-deadletterof").expect("deadletterof");
            let raw = get(headers, "ce-deadletterreason").expect("deadletterreason");
            assert!(
                !raw.contains(' ') && raw.contains("%20"),
                "{label}: {raw:?} is not encoded"
            );
            let decoded = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .expect("UTF-8");
            assert_eq!(
                Some(&*decoded),
                letters.get(of).map(String::as_str),
                "{label}"
            );
        }
    }
    bus.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_content_types_the_codec_does_not_read_are_dead_lettered() {
    let broker = Broker::Memory(MemoryTransport::new());
    content_types_the_codec_does_not_read_are_dead_lettered("memory", &broker).await;
}

/// Stamps the broker cases for one broker.
#[cfg(all(feature = "nats", feature = "redis"))]
macro_rules! broker_cases {
    ($module:ident, $broker:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn service_names_travel_percent_encoded() {
                let test = concat!(stringify!($module), "_service_names");
                let Some((broker, _cleanup)) = brokers::connect(test, $broker).await else {
                    return;
                };
                super::service_names_travel_percent_encoded(test, &broker).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn foreign_messages_are_read_decoded() {
                let test = concat!(stringify!($module), "_foreign_messages");
                let Some((broker, _cleanup)) = brokers::connect(test, $broker).await else {
                    return;
                };
                super::foreign_messages_are_read_decoded(test, &broker).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn content_types_the_codec_does_not_read_are_dead_lettered() {
                let test = concat!(stringify!($module), "_content_types");
                let Some((broker, _cleanup)) = brokers::connect(test, $broker).await else {
                    return;
                };
                super::content_types_the_codec_does_not_read_are_dead_lettered(test, &broker).await;
            }
        }
    };
}

#[cfg(all(feature = "nats", feature = "redis"))]
broker_cases!(nats, crate::common::brokers::Broker::Nats);
#[cfg(all(feature = "nats", feature = "redis"))]
broker_cases!(redis, crate::common::brokers::Broker::Redis);
