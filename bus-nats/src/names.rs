//! Names on both sides: event names and patterns ↔ NATS subjects, groups → consumer names,
//! CloudEvents attributes ↔ NATS headers. Nothing here panics on odd input.

use std::str::FromStr;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use bus_core::transport::WireEvent;
use bus_core::transport::support::duplicate_key;
pub(crate) use bus_core::transport::support::{check_name, check_pattern};

/// The NATS header that JetStream deduplicates on.
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";

/// Checks a subject prefix: one or more name tokens, no wildcard.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    check_name(prefix)
}

/// Checks a stream name against the JetStream naming rules: not empty, at most 255 bytes, no
/// whitespace, `.`, `*`, `>`, path separators or control characters.
pub(crate) fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a stream name must not be empty".to_owned());
    }
    if name.len() > 255 {
        return Err(format!("{} bytes long; the limit is 255", name.len()));
    }
    match name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        Some(bad) => Err(format!(
            "`{}` is not allowed in a stream name (no whitespace, `.`, `*`, `>`, `/`, `\\`)",
            bad.escape_default()
        )),
        None => Ok(()),
    }
}

/// The default stream name for a subject prefix: `bus` → `BUS`, `acme.bus` → `ACME_BUS`.
pub(crate) fn default_stream_name(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect()
}

/// The longest readable part of a consumer name taken from a group.
const MAX_READABLE: usize = 48;

/// The durable consumer name of group `group`: its ASCII letters, digits, `_` and `-`, with
/// every other character replaced by `_`; when anything was replaced or cut (or the group is
/// empty), a hash of the whole group name follows, so that distinct groups never share a
/// consumer. Deterministic across processes and releases (FNV-1a), never panics.
pub(crate) fn consumer_name(group: &str) -> String {
    let mut readable = String::with_capacity(group.len().min(MAX_READABLE));
    let mut exact = !group.is_empty();
    for c in group.chars() {
        if readable.len() == MAX_READABLE {
            exact = false;
            break;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            readable.push(c);
        } else {
            readable.push('_');
            exact = false;
        }
    }
    if exact {
        readable
    } else {
        format!("{readable}_{:016x}", fnv1a(group.as_bytes()))
    }
}

/// 64-bit FNV-1a: a stable hash, the same in every process and every Rust release.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An attribute that cannot travel as a NATS header.
#[derive(Debug)]
pub(crate) struct BadHeader {
    pub(crate) name: String,
    pub(crate) reason: &'static str,
}

/// The event's binary-mode headers as a NATS header map (values percent-encoded:
/// [`WireEvent::headers`]), plus `Nats-Msg-Id` = its source and id ([`msg_id`]).
pub(crate) fn event_headers(event: &WireEvent) -> Result<HeaderMap, BadHeader> {
    let mut map = HeaderMap::new();
    for (name, value) in event.headers() {
        insert(&mut map, &name, &value)?;
    }
    insert(&mut map, MSG_ID, &msg_id(&event.source, &event.id))?;
    Ok(map)
}

/// The `Nats-Msg-Id` of the event `id` of `source`, which JetStream deduplicates on: both,
/// percent-encoded and joined by `:` ([`duplicate_key`]), so that one id from two sources is
/// two events, and the value is always a valid header value.
pub(crate) fn msg_id(source: &str, id: &str) -> String {
    duplicate_key(source, id)
}

/// Inserts one header, refusing (never panicking on) a name or value NATS cannot carry.
pub(crate) fn insert(map: &mut HeaderMap, name: &str, value: &str) -> Result<(), BadHeader> {
    let header = HeaderName::from_str(name).map_err(|_| BadHeader {
        name: name.to_owned(),
        reason: "a header name must be printable ASCII without `:` or spaces",
    })?;
    let value = HeaderValue::from_str(value).map_err(|_| BadHeader {
        name: name.to_owned(),
        reason: "a header value must not contain a line break",
    })?;
    map.insert(header, value);
    Ok(())
}

/// The headers of a message as `(name, value)` pairs, every value of a repeated header.
pub(crate) fn header_pairs(headers: Option<&HeaderMap>) -> Vec<(&str, &str)> {
    headers
        .map(|map| {
            map.iter()
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |value| (AsRef::<str>::as_ref(name), value.as_str()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_valid_and_distinct() {
        let groups = [
            "billing",
            "billing.eu",
            "billing_eu",
            "bill ing",
            "",
            "*",
            ">",
            "émoji🚀",
            "a/b\\c",
            &"x".repeat(300),
        ];
        let names: Vec<String> = groups.iter().map(|group| consumer_name(group)).collect();
        for name in &names {
            assert!(!name.is_empty());
            assert!(name.len() <= MAX_READABLE + 17, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{name}"
            );
        }
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(consumer_name("billing"), "billing");
        assert_eq!(consumer_name("billing.eu"), consumer_name("billing.eu"));
    }

    #[test]
    fn patterns_follow_the_token_rules() {
        for good in ["a", "a.b", "a.*", "a.>", "*", ">", "a.*.c", "a.*.>"] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
        for bad in ["", "a..b", "a.>.c", "a.b*", "a.>x", "a b", ".a", "a."] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
        assert!(check_name("orders.created").is_ok());
        assert!(check_name("orders.*").is_err());
    }

    #[test]
    fn stream_names() {
        assert_eq!(default_stream_name("acme.bus"), "ACME_BUS");
        assert!(check_stream_name("BUS").is_ok());
        assert!(check_stream_name("a.b").is_err());
        assert!(check_stream_name("").is_err());
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        let mut map = HeaderMap::new();
        assert!(insert(&mut map, "ce-Bad Name", "x").is_err());
        assert!(insert(&mut map, "ce-x", "a\nb").is_err());
        assert!(insert(&mut map, "ce-x", "fine").is_ok());
        let event = WireEvent::new("1", "s", "a.b", "").extension("bad name", "v");
        assert!(event_headers(&event).is_err());
    }

    #[test]
    fn the_msg_id_is_the_source_and_the_id() {
        let event = WireEvent::new("order-1", "shop", "a.b", "");
        let headers = event_headers(&event).unwrap();
        assert_eq!(headers.get(MSG_ID).unwrap().as_str(), "shop:order-1");
        let elsewhere = WireEvent::new("order-1", "billing", "a.b", "");
        let other = event_headers(&elsewhere).unwrap();
        assert_eq!(other.get(MSG_ID).unwrap().as_str(), "billing:order-1");
        // A source or id with a line break still makes a valid header value.
        let odd = WireEvent::new("a\r\nb", "s:t", "a.b", "");
        assert_eq!(msg_id(&odd.source, &odd.id), "s%3At:a%0D%0Ab");
    }

    #[test]
    fn every_value_travels_encoded() {
        let event = WireEvent::new("id 1\n", "a b é", "a.b", "")
            .content_type("text/plain; charset=utf-8")
            .extension("deadletterreason", "line one\nline \"two\"");
        let map = event_headers(&event).unwrap();
        let header = |name: &str| map.get(name).map(|value| value.as_str().to_owned());
        assert_eq!(header("ce-source").as_deref(), Some("a%20b%20%C3%A9"));
        assert_eq!(header("ce-id").as_deref(), Some("id%201%0A"));
        assert_eq!(header(MSG_ID), Some(msg_id(&event.source, &event.id)));
        assert_eq!(
            header("ce-datacontenttype").as_deref(),
            Some("text/plain;%20charset=utf-8")
        );
        assert_eq!(
            header("ce-deadletterreason").as_deref(),
            Some("line%20one%0Aline%20%22two%22")
        );
        let decoded = WireEvent::from_headers(header_pairs(Some(&map)), Default::default(), 10);
        assert_eq!(decoded.unwrap(), event);
    }
}
