//! The CloudEvents AMQP protocol binding, binary content mode (§3.1), as AMQP 0-9-1 carries
//! it: the attributes in the message's `headers` table (RabbitMQ's application properties),
//! `datacontenttype` in the `content-type` property, the payload as the body.

use bus_core::transport::{WireError, WireEvent, encode_header_value};
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The prefix this transport writes: the binding's `cloudEvents_`, which it says SHOULD be
/// preferred (JMS 2.0 selectors cannot name `cloudEvents:`). Both are read.
pub(crate) const WRITTEN_PREFIX: &str = "cloudEvents_";

/// The prefixes read, matched case-insensitively.
const READ_PREFIXES: [&str; 2] = ["cloudEvents_", "cloudEvents:"];

/// The header that counts the deliveries made before this copy of the message: a nacked or
/// handed-back event is published again (to its queue or its group's delay queue) with it one
/// higher. Not a CloudEvents attribute.
pub(crate) const ATTEMPTS_HEADER: &str = "x-bus-attempts";

/// The header a quorum queue adds: how many times the broker handed this message back (a
/// channel or connection closed while it was unacknowledged).
pub(crate) const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Persistent messages (`delivery-mode` 2): written to disk by durable queues.
const PERSISTENT: u8 = 2;

/// The properties of `event` with `attempts` deliveries made before: the CloudEvents
/// attributes as `cloudEvents_*` headers holding AMQP strings (the canonical string form the
/// binding allows, so that `time` keeps its nanoseconds, which an AMQP 0-9-1 timestamp, in
/// seconds, would lose), `content-type` = `datacontenttype`, `message-id` = `id`, persistent.
///
/// `None` when `datacontenttype` is longer than the 255 bytes of an AMQP short string.
pub(crate) fn properties(event: &WireEvent, attempts: u32) -> Option<BasicProperties> {
    let mut headers = FieldTable::default();
    let mut put = |attribute: &str, value: &str| {
        headers.insert(
            ShortString::from(format!("{WRITTEN_PREFIX}{attribute}")),
            AMQPValue::LongString(LongString::from(value)),
        );
    };
    put("specversion", bus_core::transport::SPEC_VERSION);
    put("id", &event.id);
    put("source", &event.source);
    put("type", &event.ty);
    if let Some(time) = &event.time {
        put("time", time);
    }
    for (name, value) in &event.extensions {
        put(name, value);
    }
    if attempts > 0 {
        headers.insert(
            ShortString::from(ATTEMPTS_HEADER),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
    }
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT);
    if let Ok(id) = ShortString::try_new(event.id.clone()) {
        properties = properties.with_message_id(id);
    }
    if let Some(content_type) = &event.datacontenttype {
        properties = properties.with_content_type(ShortString::try_new(content_type.clone()).ok()?);
    }
    Some(properties)
}

/// An attribute value in its canonical string form, whatever AMQP type carried it (the
/// binding: "MUST be able to interpret both forms"); `None` for a value no attribute can have
/// (a table, an array, a non-UTF-8 string).
fn canonical(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(text) => String::from_utf8(text.as_bytes().to_vec()).ok()?,
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::Boolean(value) => value.to_string(),
        AMQPValue::ShortShortInt(value) => value.to_string(),
        AMQPValue::ShortShortUInt(value) => value.to_string(),
        AMQPValue::ShortInt(value) => value.to_string(),
        AMQPValue::ShortUInt(value) => value.to_string(),
        AMQPValue::LongInt(value) => value.to_string(),
        AMQPValue::LongUInt(value) => value.to_string(),
        AMQPValue::LongLongInt(value) => value.to_string(),
        // An AMQP 0-9-1 timestamp: seconds since the epoch.
        AMQPValue::Timestamp(seconds) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(*seconds),
        )
        .to_string(),
        AMQPValue::ByteArray(bytes) => String::from_utf8(bytes.as_slice().to_vec()).ok()?,
        _ => return None,
    })
}

/// The attribute an AMQP header name carries, if it is one: the name without its
/// `cloudEvents_` or `cloudEvents:` prefix, lower-cased.
fn attribute(header: &str) -> Option<String> {
    READ_PREFIXES.iter().find_map(|prefix| {
        let head = header.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| header[prefix.len()..].to_ascii_lowercase())
    })
}

/// The attributes of a message as `(ce-<attribute>, percent-encoded value)` pairs, with the
/// `content-type` property as `content-type`: what [`WireEvent::from_headers`] reads, so that
/// an AMQP message is checked by the same rules as a message of any other transport.
pub(crate) fn attribute_headers(
    properties: &BasicProperties,
) -> Result<Vec<(String, String)>, WireError> {
    let mut pairs = Vec::new();
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            let Some(attribute) = attribute(name.as_str()) else {
                continue;
            };
            let value = canonical(value).ok_or_else(|| WireError::HeaderValue {
                header: name.as_str().to_owned(),
                problem: "its value is not a string, a number, a boolean or a timestamp",
            })?;
            pairs.push((
                format!("ce-{attribute}"),
                encode_header_value(&value).into_owned(),
            ));
        }
    }
    if let Some(content_type) = properties.content_type() {
        pairs.push(("content-type".to_owned(), content_type.as_str().to_owned()));
    }
    Ok(pairs)
}

/// Reads an event back from a message.
pub(crate) fn decode(
    properties: &BasicProperties,
    data: Bytes,
    max_payload: usize,
) -> Result<WireEvent, WireError> {
    let pairs = attribute_headers(properties)?;
    WireEvent::from_headers(
        pairs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
        data,
        max_payload,
    )
}

/// An integer header, whatever integer type carries it.
fn count(properties: &BasicProperties, header: &str) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(header).cloned());
    let count = match value {
        Some(AMQPValue::LongLongInt(value)) => value,
        Some(AMQPValue::LongInt(value)) => i64::from(value),
        Some(AMQPValue::LongUInt(value)) => i64::from(value),
        Some(AMQPValue::ShortInt(value)) => i64::from(value),
        Some(AMQPValue::ShortUInt(value)) => i64::from(value),
        Some(AMQPValue::ShortShortInt(value)) => i64::from(value),
        Some(AMQPValue::ShortShortUInt(value)) => i64::from(value),
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

/// Which delivery this is: the deliveries made before this copy ([`ATTEMPTS_HEADER`]), plus
/// those the broker handed back since ([`DELIVERY_COUNT_HEADER`]), plus this one.
pub(crate) fn attempt(properties: &BasicProperties) -> u32 {
    count(properties, ATTEMPTS_HEADER)
        .saturating_add(count(properties, DELIVERY_COUNT_HEADER))
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WireEvent {
        WireEvent::new("id 1 €", "billing", "orders.eu.created", &b"{\"n\":1}"[..])
            .at(std::time::SystemTime::UNIX_EPOCH)
            .content_type("application/json")
            .extension("causationid", "id-0")
    }

    #[test]
    fn events_round_trip_through_the_binding() {
        let event = sample();
        let properties = properties(&event, 0).expect("fits");
        let headers = properties.headers().clone().expect("headers");
        assert!(headers.contains_key("cloudEvents_id"));
        assert!(headers.contains_key("cloudEvents_causationid"));
        assert!(!headers.contains_key("cloudEvents_datacontenttype"));
        assert_eq!(
            headers.inner().get("cloudEvents_id"),
            Some(&AMQPValue::LongString("id 1 €".into())),
            "AMQP strings are UTF-8: no percent-encoding"
        );
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(decode(&properties, event.data.clone(), 1 << 20), Ok(event));
        assert_eq!(attempt(&properties), 1);
    }

    #[test]
    fn both_separators_and_native_types_are_read() {
        let mut headers = FieldTable::default();
        headers.insert(
            "cloudEvents:specversion".into(),
            AMQPValue::LongString("1.0".into()),
        );
        headers.insert("cloudEvents:id".into(), AMQPValue::LongLongInt(42));
        headers.insert(
            "cloudEvents:source".into(),
            AMQPValue::ShortString("/s".into()),
        );
        headers.insert(
            "cloudEvents:type".into(),
            AMQPValue::LongString("a.b".into()),
        );
        headers.insert("cloudEvents:time".into(), AMQPValue::Timestamp(0));
        headers.insert("x-delivery-count".into(), AMQPValue::LongInt(2));
        headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(3));
        let properties = BasicProperties::default().with_headers(headers);
        let event = decode(&properties, Bytes::new(), 1 << 20).expect("decodes");
        assert_eq!(event.id, "42");
        assert_eq!(event.source, "/s");
        assert_eq!(event.time.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(attempt(&properties), 6);
    }

    #[test]
    fn a_message_without_attributes_is_named() {
        let error = decode(&BasicProperties::default(), Bytes::new(), 1 << 20).unwrap_err();
        assert_eq!(error, WireError::Missing("specversion"));
    }
}
