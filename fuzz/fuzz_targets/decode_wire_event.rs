//! Fuzzes what a message from the broker goes through: its headers and payload are read back
//! as a [`WireEvent`] (`WireEvent::from_headers`, which validates), and the payload is then
//! decoded as a typed event by the bus's consumer, as a transport hands it over.
//!
//! The input is a message written as text: header lines `name: value` (lossy UTF-8), an empty
//! line, then the payload bytes (an input without an empty line is all headers). Checked:
//!
//! - a decoded event validates, keeps the payload, has a valid event name, and comes back the
//!   same from its own `headers()`, whatever the case of the header names and with other
//!   headers mixed in; so does its dead letter, when that validates;
//! - a payload over the limit is refused as such, unless the attributes are missing or too
//!   many;
//! - the decoded event, delivered to a bus listener through a transport, is rejected when its
//!   `time` is not RFC 3339, or without being decoded when its content type is not JSON (by
//!   the rules of `Codec::accepts`, written again here), and otherwise acknowledged with the
//!   value `serde_json` decodes, or rejected when that decode fails; the listener sees the
//!   event's id as it came.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use bus_core::transport::{
    BoxFuture, Capabilities, Delivery, MAX_ATTRIBUTES, SubscribeOptions, Transport, TransportError,
    TransportSubscription, WireError, WireEvent,
};
use bus_core::{
    EventBus, EventId,
    event::{current_event_id, validate_name},
};
use bytes::Bytes;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// The payload limit the decoder is given: small enough that inputs cross it.
const MAX_PAYLOAD: usize = 512;

/// A typed event as an application would send it; no floats, so that a decoded value
/// re-encodes to JSON that decodes to the same value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<Line>,
    note: Option<String>,
    status: Status,
    #[serde(default)]
    tags: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Placed,
    Paid { amount_cents: i64 },
    Cancelled(String),
}

fuzz_target!(|data: &[u8]| {
    let (head, payload) = match data.windows(2).position(|pair| pair == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let headers: Vec<(&str, &str)> = head
        .split('\n')
        .map(|line| match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        })
        .collect();
    let payload = Bytes::copy_from_slice(payload);

    match WireEvent::from_headers(headers.iter().copied(), payload.clone(), MAX_PAYLOAD) {
        Ok(event) => {
            assert_eq!(event.data, payload);
            check_decoded(&event);
            let letter = event.dead_letter("fuzz.group", 3, "fuzzed");
            if letter.validate(MAX_PAYLOAD).is_ok() {
                check_decoded(&letter);
            }
            check_delivery(event);
        }
        Err(WireError::TooLarge { size, max }) => {
            assert_eq!((size, max), (payload.len(), MAX_PAYLOAD));
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            // The size is checked before the attributes' values, after their presence.
            if matches!(
                error,
                WireError::Empty(_) | WireError::Name(_) | WireError::ExtensionName(_)
            ) {
                assert!(
                    payload.len() <= MAX_PAYLOAD,
                    "{error} for an oversized payload"
                );
            }
        }
    }
});

/// What holds for every event `from_headers` accepts.
fn check_decoded(event: &WireEvent) {
    event
        .validate(MAX_PAYLOAD)
        .unwrap_or_else(|error| panic!("decoded {event:?} does not validate: {error}"));
    validate_name(&event.ty).unwrap_or_else(|error| panic!("decoded {event:?}: {error}"));

    let headers = event.headers();
    assert!(headers.len() <= MAX_ATTRIBUTES, "{headers:?}");
    let decode = |headers: &[(String, String)]| {
        WireEvent::from_headers(
            headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
            event.data.clone(),
            MAX_PAYLOAD,
        )
    };
    assert_eq!(
        decode(&headers).as_ref(),
        Ok(event),
        "round trip of {headers:?}"
    );

    // Header names are case-insensitive, and headers other than CloudEvents attributes are
    // ignored.
    let shouting: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| (name.to_ascii_uppercase(), value.clone()))
        .collect();
    assert_eq!(
        decode(&shouting).as_ref(),
        Ok(event),
        "round trip of {shouting:?}"
    );
    if headers.len() < MAX_ATTRIBUTES {
        let mut mixed = headers.clone();
        mixed.insert(0, ("x-fuzz".to_owned(), "ignored".to_owned()));
        assert_eq!(
            decode(&mixed).as_ref(),
            Ok(event),
            "round trip of {mixed:?}"
        );
    }
}

/// Delivers `event` to the bus's listener of [`Order`]s and checks how the consumer settles
/// it against a plain `serde_json` decode of the payload.
fn check_delivery(event: WireEvent) {
    let harness = &*HARNESS;
    let expected = serde_json::from_slice::<Order>(&event.data);
    if let Ok(order) = &expected {
        let json = serde_json::to_vec(order).expect("an order encodes");
        assert_eq!(
            serde_json::from_slice::<Order>(&json).ok().as_ref(),
            Some(order)
        );
    }
    // Any payload: a generic decode must not panic either.
    let _ = serde_json::from_slice::<serde_json::Value>(&event.data);

    let json = reference_is_json(event.datacontenttype.as_deref());
    let content_type = event.datacontenttype.clone();
    let wire_id = event.id.clone();
    // CloudEvents times are RFC 3339, with any offset; any other is dead-lettered.
    let bad_time = event
        .time
        .as_deref()
        .filter(|time| OffsetDateTime::parse(time, &Rfc3339).is_err())
        .map(str::to_owned);
    let (settled, settlement) = oneshot::channel();
    harness
        .deliveries
        .send(Box::new(FuzzDelivery {
            event,
            settled: Mutex::new(Some(settled)),
        }))
        .unwrap_or_else(|_| panic!("the consumer is gone"));
    let settlement = harness
        .runtime
        .block_on(settlement)
        .expect("the delivery is settled");
    let received = RECEIVED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(time) = bad_time {
        match &settlement {
            Settlement::Reject(reason) => {
                assert!(reason.contains("RFC 3339"), "{reason} (time {time:?})");
            }
            other => panic!("{other:?} for a time that is not RFC 3339: {time:?}"),
        }
        assert!(received.is_none(), "the listener ran on {received:?}");
        return;
    }
    if !json {
        let content_type = content_type.unwrap_or_default();
        match &settlement {
            Settlement::Reject(reason) => {
                assert!(
                    reason.contains(&format!("is `{content_type}`"))
                        && reason.contains("from application/json"),
                    "{reason} (content type {content_type:?})"
                );
            }
            other => panic!("{other:?} for a payload of content type {content_type:?}"),
        }
        assert!(received.is_none(), "the listener ran on {received:?}");
        return;
    }
    match expected {
        Ok(order) => {
            assert_eq!(settlement, Settlement::Ack);
            let (got, id) = received.expect("the listener ran");
            assert_eq!(got, order);
            let id = id.expect("the listener sees its event's id");
            assert_eq!(
                id.to_string(),
                wire_id,
                "the event's id as the listener sees it: as it came"
            );
        }
        Err(error) => {
            match &settlement {
                Settlement::Reject(reason) => {
                    assert!(reason.contains("does not decode"), "{reason} ({error})");
                }
                other => panic!("{other:?} for a payload that does not decode ({error})"),
            }
            assert!(received.is_none(), "the listener ran on {received:?}");
        }
    }
}

/// Whether the bus's JSON codec reads a payload of content type `content_type`: none, or
/// `application/json` or `application/<x>+json` before any `;`, in any case, with spaces and
/// tabs around the type and the subtype, each a token of RFC 2045.
fn reference_is_json(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = content_type.split(';').next().unwrap_or_default();
    let Some((ty, subtype)) = essence.split_once('/') else {
        return false;
    };
    let trim = |part: &str| part.trim_matches([' ', '\t', '\r', '\n']).to_ascii_lowercase();
    let (ty, subtype) = (trim(ty), trim(subtype));
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| (0x21..0x7f).contains(&b) && !br#"()<>@,;:\"/[]?="#.contains(&b))
    };
    token(&ty)
        && token(&subtype)
        && ty == "application"
        && (subtype == "json"
            || subtype
                .strip_suffix("+json")
                .is_some_and(|base| !base.is_empty()))
}

/// What the listener last received: the order and the id of the event it handled.
static RECEIVED: Mutex<Option<(Order, Option<EventId>)>> = Mutex::new(None);

/// One bus, with one distributed listener of [`Order`]s fed by a [`FuzzTransport`], kept for
/// the whole run.
struct Harness {
    runtime: tokio::runtime::Runtime,
    deliveries: mpsc::UnboundedSender<Box<dyn Delivery>>,
    _bus: EventBus,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let (deliveries, subscription) = mpsc::unbounded_channel();
    let bus = runtime.block_on(async {
        let bus = EventBus::builder()
            .service("fuzz")
            .transport(FuzzTransport {
                subscription: Mutex::new(Some(subscription)),
            })
            .distributed::<Order>()
            .build();
        bus.add_listener(">", |order: Arc<Order>| async move {
            let seen = ((*order).clone(), current_event_id());
            *RECEIVED.lock().unwrap_or_else(PoisonError::into_inner) = Some(seen);
        });
        bus.ready().await.expect("the fuzz transport subscribes");
        bus
    });
    Harness {
        runtime,
        deliveries,
        _bus: bus,
    }
});

/// A transport whose one subscription delivers what the fuzz target sends it.
struct FuzzTransport {
    subscription: Mutex<Option<mpsc::UnboundedReceiver<Box<dyn Delivery>>>>,
}

impl Transport for FuzzTransport {
    fn name(&self) -> &str {
        "fuzz"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn publish(&self, _event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }

    fn subscribe(
        &self,
        _options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        let receiver = self
            .subscription
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("one subscription only");
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let delivery = receiver.recv().await?;
            Some((Ok(delivery), receiver))
        });
        Box::pin(async move { Ok(Box::pin(stream) as TransportSubscription) })
    }
}

/// How the consumer settled a delivery.
#[derive(Debug, PartialEq, Eq)]
enum Settlement {
    Ack,
    Nack(String),
    Reject(String),
}

struct FuzzDelivery {
    event: WireEvent,
    settled: Mutex<Option<oneshot::Sender<Settlement>>>,
}

impl FuzzDelivery {
    fn settle(&self, settlement: Settlement) -> BoxFuture<'static, Result<(), TransportError>> {
        let sender = self
            .settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("settled once");
        let _ = sender.send(settlement);
        Box::pin(async { Ok(()) })
    }
}

impl Delivery for FuzzDelivery {
    fn event(&self) -> &WireEvent {
        &self.event
    }

    fn attempt(&self) -> u32 {
        1
    }

    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settle(Settlement::Ack)
    }

    fn nack(
        self: Box<Self>,
        _delay: Duration,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settle(Settlement::Nack(reason))
    }

    fn reject(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settle(Settlement::Reject(reason))
    }
}
