//! The wire checked by an independent CloudEvents implementation, the official Rust SDK
//! (`cloudevents-sdk`), on each broker (issue 15):
//!
//! 1. the SDK reads what a bus writes: an event a listener emits (with its `causationid`),
//!    from a service whose name has spaces and a non-ASCII letter;
//! 2. a bus reads what the SDK builds: ids the SDK chose, a source with a space and `é`, a
//!    `time` with an offset, extensions, a content type with a parameter, written as the
//!    NATS binding says (values percent-encoded) and as other SDKs write (an HTTP-style
//!    `content-type`, ASCII values as they are);
//! 3. the SDK reads a dead letter the bus writes, its `deadletterreason` decoded.
//!
//! The SDK has no binary mode for NATS (its `nats` feature is the structured mode, on an older
//! NATS client) and CloudEvents has no Redis binding: the binary mode of the NATS binding
//! (§3.1.3: attribute `x` is header `ce-x`, values percent-encoded) is written here, in
//! [`RawMessage`]'s [`BinaryDeserializer`] and in [`BindingWriter`], a
//! [`BinarySerializer`]. Everything else (which names are attributes and which extensions,
//! the spec version, the required attributes, `time` as RFC 3339, the payload) is the SDK's.
//! Redis entries hold the same fields as NATS headers, and the payload in field `data`.

#![cfg(all(feature = "nats", feature = "redis"))]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bus::transport::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_GROUP, DEAD_LETTER_OF, DEAD_LETTER_REASON, SubscribeOptions,
    dead_letter_name,
};
use bus::{Envelope, EventBus};
use bus_conformance::checks::next;
use chrono::{DateTime, FixedOffset, Utc};
use cloudevents::event::{EventBuilderError, SpecVersion};
use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Error as SdkError, MessageAttributeValue,
    Result as SdkResult,
};
use cloudevents::{AttributesReader, Event as CloudEvent, EventBuilder, EventBuilderV10};
use common::brokers::{self, Raw as Broker};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(30);

/// A service name with spaces and a letter outside ASCII: not a URI reference as it is.
const SERVICE: &str = "billing eu é";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UPPER_UUID: &str = "0193A5F0-7C1E-4D2A-8B36-54231C7890AB";

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "sdk.orders", distributed)]
struct Order {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "sdk.receipts", distributed)]
struct Receipt {
    order: u64,
}

// ---------------------------------------------------------------------------------------------
// The binary mode of the CloudEvents NATS binding (§3.1.3), for the SDK.

/// What a header value percent-encodes (§3.1.3.2): space, `"`, `%`, the controls and, by
/// `utf8_percent_encode` itself, every byte of a character outside ASCII.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

fn sdk_error(message: String) -> SdkError {
    SdkError::Other {
        source: message.into(),
    }
}

/// One message as the broker holds it: the NATS headers or the Redis fields (but `data`), the
/// values as stored, and the payload.
#[derive(Debug, Clone)]
struct RawMessage {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawMessage {
    /// The stored value of `name` (names are case-insensitive).
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The event the SDK reads from this message.
    fn to_event(&self) -> SdkResult<CloudEvent> {
        BinaryDeserializer::into_event(self.clone())
    }
}

/// A value as a producer that follows the binding writes it is printable ASCII without space
/// or `"` (quoted strings are for older producers); reading it is one round of
/// percent-decoding.
fn decode_value(header: &str, value: &str) -> SdkResult<String> {
    if let Some(bad) = value
        .chars()
        .find(|c| !('!'..='~').contains(c) || *c == '"')
    {
        return Err(sdk_error(format!(
            "header `{header}`: {bad:?} in {value:?} is not percent-encoded (NATS binding §3.1.3.2)"
        )));
    }
    percent_decode_str(value)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|error| sdk_error(format!("header `{header}`: {error}")))
}

/// The binary mode of §3.1.3, read: `ce-specversion` first, then every other `ce-x` header as
/// the SDK's attribute `x` if its spec version has one of that name, else as extension `x`;
/// the body is the data. Headers that are not `ce-` ones (`Nats-Msg-Id`) are not attributes.
impl BinaryDeserializer for RawMessage {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(self, mut visitor: V) -> SdkResult<R> {
        let version = self
            .get("ce-specversion")
            .ok_or_else(|| sdk_error("no `ce-specversion` header".to_owned()))?;
        let version = SpecVersion::try_from(decode_value("ce-specversion", version)?.as_str())?;
        let attributes = version.attribute_names();
        visitor = visitor.set_spec_version(version)?;
        for (header, value) in &self.headers {
            let lower = header.to_ascii_lowercase();
            let Some(name) = lower.strip_prefix("ce-") else {
                continue;
            };
            if name == "specversion" {
                continue;
            }
            let value = MessageAttributeValue::String(decode_value(header, value)?);
            visitor = if attributes.contains(&name) {
                visitor.set_attribute(name, value)?
            } else {
                visitor.set_extension(name, value)?
            };
        }
        if self.body.is_empty() {
            visitor.end()
        } else {
            visitor.end_with_data(self.body)
        }
    }
}

/// How a producer writes the binary mode.
#[derive(Debug, Clone, Copy)]
enum Style {
    /// As the NATS binding says: values percent-encoded, `ce-datacontenttype`; `time` written
    /// at the producer's UTC offset (the SDK holds it in UTC).
    Binding { offset: FixedOffset },
    /// As SDKs with an HTTP habit write it: `datacontenttype` in `content-type`, values as
    /// they are (ASCII only), `time` as the SDK writes it (`+00:00`).
    Http,
}

/// The binary mode of §3.1.3, written from an SDK event (`Event::deserialize_binary` walks it).
#[derive(Debug)]
struct BindingWriter {
    style: Style,
    headers: Vec<(String, String)>,
}

impl BindingWriter {
    fn new(style: Style) -> Self {
        BindingWriter {
            style,
            headers: Vec::new(),
        }
    }

    fn push(mut self, name: &str, value: String) -> SdkResult<Self> {
        let header = match (self.style, name) {
            (Style::Http, "datacontenttype") => "content-type".to_owned(),
            _ => format!("ce-{name}"),
        };
        let value = match self.style {
            Style::Binding { .. } => utf8_percent_encode(&value, ENCODED).to_string(),
            Style::Http if value.chars().all(|c| (' '..='~').contains(&c)) => value,
            Style::Http => {
                return Err(sdk_error(format!(
                    "{value:?} is not ASCII: the HTTP style writes values as they are"
                )));
            }
        };
        self.headers.push((header, value));
        Ok(self)
    }
}

impl BinarySerializer<RawMessage> for BindingWriter {
    fn set_spec_version(self, spec_version: SpecVersion) -> SdkResult<Self> {
        self.push("specversion", spec_version.as_str().to_owned())
    }

    fn set_attribute(self, name: &str, value: MessageAttributeValue) -> SdkResult<Self> {
        let value = match (value, self.style) {
            (MessageAttributeValue::DateTime(time), Style::Binding { offset }) => {
                time.with_timezone(&offset).to_rfc3339()
            }
            (value, _) => value.to_string(),
        };
        self.push(name, value)
    }

    fn set_extension(self, name: &str, value: MessageAttributeValue) -> SdkResult<Self> {
        self.push(name, value.to_string())
    }

    fn end_with_data(self, body: Vec<u8>) -> SdkResult<RawMessage> {
        Ok(RawMessage {
            headers: self.headers,
            body,
        })
    }

    fn end(self) -> SdkResult<RawMessage> {
        self.end_with_data(Vec::new())
    }
}

/// The extensions of an SDK event, as strings (the binary mode carries strings).
fn extensions_of(event: &CloudEvent) -> BTreeMap<String, String> {
    event
        .iter_extensions()
        .map(|(name, value)| (name.to_owned(), value.to_string()))
        .collect()
}

/// The SDK event's data as JSON.
fn json_of(event: &CloudEvent) -> serde_json::Value {
    let data = event.data().cloned().expect("the event has data");
    serde_json::Value::try_from(data).expect("the data is JSON")
}

/// Whether `text` holds only what RFC 3986 allows in a URI reference: unreserved and reserved
/// characters, and `%` followed by two hex digits. (A necessary condition, not the grammar.)
fn uri_reference_characters(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(at, byte)| match byte {
        b'%' => bytes
            .get(at + 1..at + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)),
        byte if byte.is_ascii_alphanumeric() => true,
        byte => b"-._~:/?#[]@!$&'()*+,;=".contains(byte),
    })
}

// ---------------------------------------------------------------------------------------------
// The brokers, reached behind the bus's back with their own clients.

async fn received<T>(what: &str, receiver: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(PATIENCE, receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
        .expect("the sender lives as long as the bus")
}

/// The one stored message of event `name`.
async fn only_message(label: &str, broker: &Broker, name: &str) -> RawMessage {
    let mut stored: Vec<RawMessage> = (broker.read(name).await)
        .into_iter()
        .map(|stored| RawMessage {
            headers: stored.headers,
            body: stored.payload,
        })
        .collect();
    assert_eq!(stored.len(), 1, "{label}: {name}: {stored:#?}");
    stored.remove(0)
}

// ---------------------------------------------------------------------------------------------
// The cases, run on each broker.

/// (1) A bus from service [`SERVICE`] emits an order; its listener replies with a receipt
/// (emitted inside the listener, so it names the order as its cause). The SDK reads both raw
/// messages, and finds the envelopes the bus's listeners were given.
async fn sdk_reads_what_the_bus_writes(label: &str, broker: &Broker) {
    let started = SystemTime::now();
    let bus = EventBus::builder()
        .service(SERVICE)
        .shared_transport(broker.transport())
        .build();
    let (seen, mut envelopes) = mpsc::unbounded_channel::<Envelope>();
    bus.add_listener("sdk.orders", {
        let bus = bus.clone();
        let seen = seen.clone();
        move |order: Arc<Order>, envelope: Envelope| {
            let _ = seen.send(envelope);
            bus.emit_event(Receipt { order: order.id });
            async {}
        }
    });
    bus.add_listener(
        "sdk.receipts",
        move |_: Arc<Receipt>, envelope: Envelope| {
            let _ = seen.send(envelope);
            async {}
        },
    );
    common::guarded("ready", bus.ready()).await.unwrap();
    let report = bus.emit_event(Order { id: 7 }).await;
    assert_eq!(
        report.published().map(|published| published.is_ok()),
        Some(true),
        "{label}"
    );
    let order = received("the order", &mut envelopes).await;
    let receipt = received("the receipt", &mut envelopes).await;
    assert_eq!(
        (order.name(), receipt.name()),
        ("sdk.orders", "sdk.receipts")
    );

    for (envelope, data, cause) in [
        (&order, json!({"id": 7}), None),
        (&receipt, json!({"order": 7}), Some(order.id().to_string())),
    ] {
        let raw = only_message(label, broker, envelope.name()).await;
        // The service name is percent-encoded on the wire: read without decoding, the source
        // would be `billing%20eu%20%C3%A9`.
        assert_eq!(
            raw.get("ce-source"),
            Some("billing%20eu%20%C3%A9"),
            "{label}"
        );
        assert_eq!(raw.get("content-type"), None, "{label}: {raw:?}");
        let event = raw
            .to_event()
            .unwrap_or_else(|error| panic!("{label}: the SDK refuses {raw:#?}: {error}"));
        assert_eq!(event.specversion(), SpecVersion::V10, "{label}");
        assert_eq!(event.id(), envelope.id().to_string(), "{label}");
        assert_eq!(event.source(), SERVICE, "{label}");
        assert_eq!(event.ty(), envelope.name(), "{label}");
        let time = *event.time().expect("a time");
        assert_eq!(SystemTime::from(time), envelope.emitted_at(), "{label}");
        assert!(
            started <= SystemTime::from(time) && SystemTime::from(time) <= SystemTime::now(),
            "{label}: {time} is the emit time"
        );
        assert_eq!(event.datacontenttype(), Some("application/json"), "{label}");
        let extensions: BTreeMap<String, String> = cause
            .clone()
            .map(|cause| ("causationid".to_owned(), cause))
            .into_iter()
            .collect();
        assert_eq!(extensions_of(&event), extensions, "{label}");
        assert_eq!(
            envelope.causation().map(ToString::to_string),
            cause,
            "{label}"
        );
        assert_eq!(json_of(&event), data, "{label}");
    }
    bus.shutdown(Duration::from_secs(5)).await;
    println!("{label}: the SDK reads the order and the receipt as the listeners saw them");
}

/// The SDK events of case (2): `py-order-3` from a source with a space and `é`, at 12:00:00.25
/// in UTC+2, written as the binding says; and an upper-case UUID from an ASCII source, written
/// as HTTP-minded SDKs do.
fn sdk_orders() -> Vec<(CloudEvent, Style, u64)> {
    let plus_two = FixedOffset::east_opt(2 * 3600).expect("a valid offset");
    let build = |id: &str, source: &str, tenant: &str, order: u64| {
        EventBuilderV10::new()
            .id(id)
            .source(source)
            .ty("sdk.orders")
            .time("2026-12-07T12:00:00.25+02:00")
            .extension("traceparent", TRACEPARENT)
            .extension("tenant", tenant)
            .data("application/json; charset=utf-8", json!({"id": order}))
            .build()
            .expect("a valid event")
    };
    vec![
        (
            build("py-order-3", "py shop é/orders", "Café Zürich", 3),
            Style::Binding { offset: plus_two },
            3,
        ),
        (
            build(UPPER_UUID, "/py-shop/orders", "acme", 4),
            Style::Http,
            4,
        ),
    ]
}

/// (2) Events the SDK builds, written raw in binary mode, reach a bus listener with exactly
/// their attributes.
async fn bus_reads_what_the_sdk_builds(label: &str, broker: &Broker) {
    let bus = EventBus::builder()
        .service("shop")
        .shared_transport(broker.transport())
        .build();
    let (seen, mut orders) = mpsc::unbounded_channel();
    bus.add_listener(
        "sdk.orders",
        move |order: Arc<Order>, envelope: Envelope| {
            let _ = seen.send((order.id, envelope));
            async {}
        },
    );
    common::guarded("ready", bus.ready()).await.unwrap();

    for (event, style, order) in sdk_orders() {
        let message = event
            .clone()
            .deserialize_binary(BindingWriter::new(style))
            .unwrap();
        match style {
            Style::Binding { .. } => {
                assert_eq!(
                    message.get("ce-time"),
                    Some("2026-12-07T12:00:00.250+02:00"),
                    "{label}"
                );
                assert_eq!(
                    message.get("ce-source"),
                    Some("py%20shop%20%C3%A9/orders"),
                    "{label}"
                );
            }
            Style::Http => assert_eq!(
                message.get("content-type"),
                Some("application/json; charset=utf-8"),
                "{label}"
            ),
        }
        broker
            .write("sdk.orders", &message.headers, &message.body)
            .await;

        let (got, envelope) = received("the SDK's order", &mut orders).await;
        assert_eq!(got, order, "{label}: the payload");
        assert_eq!(envelope.id().to_string(), event.id(), "{label}: the id");
        assert_eq!(envelope.source(), event.source(), "{label}");
        assert_eq!(envelope.name(), event.ty(), "{label}");
        // 12:00:00.25 at UTC+2 is 10:00:00.25 UTC.
        assert_eq!(
            envelope.emitted_at(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_637_600_250),
            "{label}: the instant"
        );
        assert_eq!(
            Some(DateTime::<Utc>::from(envelope.emitted_at())),
            event.time().copied(),
            "{label}"
        );
        assert_eq!(
            envelope.content_type(),
            Some("application/json; charset=utf-8"),
            "{label}"
        );
        let extensions: BTreeMap<String, String> = envelope
            .extensions()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        assert_eq!(extensions, extensions_of(&event), "{label}");
        assert_eq!(envelope.causation(), None, "{label}");
    }
    bus.shutdown(Duration::from_secs(5)).await;
    println!("{label}: the bus reads the SDK's events with their ids, times and extensions");
}

/// (3) An event the SDK builds whose payload does not decode as an order is dead-lettered by
/// the bus; the SDK reads the dead letter: the original's attributes and payload, and the
/// dead-letter extensions, `deadletterreason` decoded.
async fn sdk_reads_a_dead_letter(label: &str, broker: &Broker) {
    let transport = broker.transport();
    let letters_name = dead_letter_name("sdk.orders");
    let mut watcher = transport
        .subscribe(SubscribeOptions::new(letters_name.clone()))
        .await
        .unwrap();
    let bus = EventBus::builder()
        .service("shop")
        .shared_transport(Arc::clone(&transport))
        .build();
    let (seen, mut orders) = mpsc::unbounded_channel();
    bus.add_listener("sdk.orders", move |order: Arc<Order>| {
        let _ = seen.send(order.id);
        async {}
    });
    common::guarded("ready", bus.ready()).await.unwrap();

    let poison = EventBuilderV10::new()
        .id("py-order-9")
        .source("py shop é")
        .ty("sdk.orders")
        .time("2026-12-07T12:00:00+02:00")
        .extension("tenant", "Café")
        .data("application/json", json!({"id": "nine"}))
        .build()
        .unwrap();
    let plus_two = FixedOffset::east_opt(2 * 3600).expect("a valid offset");
    let message = poison
        .clone()
        .deserialize_binary(BindingWriter::new(Style::Binding { offset: plus_two }))
        .unwrap();
    broker
        .write("sdk.orders", &message.headers, &message.body)
        .await;
    let delivery = next(&mut watcher, "the dead letter").await;
    let bus_reason = delivery.event().extensions[DEAD_LETTER_REASON].clone();
    delivery.ack().await.unwrap();

    let raw = only_message(label, broker, &letters_name).await;
    let encoded = raw.get("ce-deadletterreason").expect("a reason");
    assert!(
        encoded.contains("%20") && !encoded.contains(' '),
        "{label}: {encoded:?}"
    );
    let letter = raw
        .to_event()
        .unwrap_or_else(|error| panic!("{label}: the SDK refuses {raw:#?}: {error}"));
    assert_eq!(letter.ty(), letters_name, "{label}");
    assert!(
        letter.id().starts_with("py-order-9.dead."),
        "{label}: {}",
        letter.id()
    );
    assert_eq!(letter.source(), "py shop é", "{label}");
    assert_eq!(letter.time(), poison.time(), "{label}");
    assert_eq!(
        letter.datacontenttype(),
        Some("application/json"),
        "{label}"
    );
    assert_eq!(json_of(&letter), json!({"id": "nine"}), "{label}");
    let extensions = extensions_of(&letter);
    let reason = &extensions[DEAD_LETTER_REASON];
    assert_eq!(reason, &bus_reason, "{label}");
    assert!(
        reason.contains("the payload of `sdk.orders` does not decode as `")
            && reason.contains("invalid type: string \"nine\""),
        "{label}: {reason}"
    );
    assert_eq!(extensions[DEAD_LETTER_OF], "py-order-9", "{label}");
    assert_eq!(extensions["tenant"], "Café", "{label}");
    assert_eq!(
        letter.id(),
        format!("py-order-9.dead.{}", extensions[DEAD_LETTER_GROUP]),
        "{label}"
    );
    assert!(extensions.contains_key(DEAD_LETTER_ATTEMPTS), "{label}");
    assert!(
        orders.try_recv().is_err(),
        "{label}: the listener never saw it"
    );
    bus.shutdown(Duration::from_secs(5)).await;
    println!("{label}: the SDK reads the dead letter: {reason}");
}

/// Stamps the broker cases for one broker.
macro_rules! broker_cases {
    ($module:ident, $broker:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sdk_reads_what_the_bus_writes() {
                let test = concat!(stringify!($module), "_sdk_reads");
                let Some((broker, _cleanup)) = Broker::connect(test, $broker).await else {
                    return;
                };
                super::sdk_reads_what_the_bus_writes(test, &broker).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bus_reads_what_the_sdk_builds() {
                let test = concat!(stringify!($module), "_bus_reads");
                let Some((broker, _cleanup)) = Broker::connect(test, $broker).await else {
                    return;
                };
                super::bus_reads_what_the_sdk_builds(test, &broker).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sdk_reads_a_dead_letter() {
                let test = concat!(stringify!($module), "_dead_letter");
                let Some((broker, _cleanup)) = Broker::connect(test, $broker).await else {
                    return;
                };
                super::sdk_reads_a_dead_letter(test, &broker).await;
            }
        }
    };
}

broker_cases!(nats, brokers::Broker::Nats);
broker_cases!(redis, brokers::Broker::Redis);

// ---------------------------------------------------------------------------------------------
// What the SDK checks, without a broker: the reason its acceptance above means something.

/// `source` is a URI reference in CloudEvents 1.0. A bus writes its service name there as it
/// is, and a service name need not be one: `billing eu é` has a space and a letter outside
/// ASCII, which RFC 3986 does not allow. This SDK (0.9) keeps `source` as a `String` and
/// refuses only an empty one (through its builder; its binary reader does not even check that),
/// so it reads such a bus's events; an SDK that parses `source` as a URI (Java's
/// `CloudEventBuilder` calls `new URI(value)`) refuses them. The value percent-encoded on the
/// wire, `billing%20eu%20%C3%A9`, is a URI reference; the attribute it decodes to is not.
#[test]
fn the_sdk_takes_sources_that_are_not_uri_references() {
    assert!(!uri_reference_characters(SERVICE));
    assert!(uri_reference_characters("billing%20eu%20%C3%A9"));
    assert!(uri_reference_characters("/py-shop/orders"));
    let event = EventBuilderV10::new()
        .id("1")
        .source(SERVICE)
        .ty("sdk.orders")
        .build()
        .expect("the SDK takes a source that is not a URI reference");
    assert_eq!(event.source(), SERVICE);
    let empty = EventBuilderV10::new()
        .id("1")
        .source("")
        .ty("sdk.orders")
        .build();
    assert!(
        matches!(
            empty,
            Err(EventBuilderError::InvalidUriRefError {
                attribute_name: "source"
            })
        ),
        "{empty:?}"
    );
    // Read in binary mode, an empty source is taken too (the bus refuses it: `WireError::Empty`).
    let empty_source = RawMessage {
        headers: [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", ""),
            ("ce-type", "sdk.orders"),
        ]
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect(),
        body: Vec::new(),
    };
    let event = empty_source
        .to_event()
        .expect("the SDK reads an empty source");
    assert_eq!(event.source(), "");
}

/// The SDK, through the binding reader above, refuses what is not a CloudEvent 1.0 (so that
/// its reading the bus's messages is a check): a `time` that is not RFC 3339, a missing `id`,
/// an unknown spec version, and a value the producer did not percent-encode.
#[test]
fn the_sdk_refuses_what_is_not_a_cloudevent() {
    let message = |headers: &[(&str, &str)]| RawMessage {
        headers: headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect(),
        body: br#"{"id":1}"#.to_vec(),
    };
    let valid = [
        ("ce-specversion", "1.0"),
        ("ce-id", "a%20b"),
        ("ce-source", "s"),
        ("ce-type", "sdk.orders"),
        ("ce-time", "2026-12-07T12:00:00+02:00"),
    ];
    let event = message(&valid).to_event().expect("a valid event");
    assert_eq!(event.id(), "a b");
    assert_eq!(
        event.time().map(DateTime::to_rfc3339).as_deref(),
        Some("2026-12-07T10:00:00+00:00")
    );

    let mut bad_time = valid;
    bad_time[4] = ("ce-time", "yesterday%20at%20noon");
    let error = message(&bad_time).to_event().unwrap_err();
    assert!(matches!(error, SdkError::ParseTimeError { .. }), "{error}");

    let error = message(&[valid[0], valid[2], valid[3]])
        .to_event()
        .unwrap_err();
    assert!(
        matches!(
            &error,
            SdkError::EventBuilderError {
                source: EventBuilderError::MissingRequiredAttribute {
                    attribute_name: "id"
                }
            }
        ),
        "{error}"
    );

    let mut old = valid;
    old[0] = ("ce-specversion", "0.2");
    let error = message(&old).to_event().unwrap_err();
    assert!(
        matches!(error, SdkError::UnknownSpecVersion { .. }),
        "{error}"
    );

    let mut unencoded = valid;
    unencoded[2] = ("ce-source", "billing eu é");
    let error = message(&unencoded).to_event().unwrap_err();
    assert!(error.to_string().contains("not percent-encoded"), "{error}");
}
