//! Names on both sides: event names and patterns ↔ stream keys, CloudEvents attributes ↔ stream
//! fields, and the parsing of stream replies. Nothing here panics on odd input.

use bus_core::transport::WireEvent;
pub(crate) use bus_core::transport::support::{check_name, check_pattern};
use bus_core::transport::support::{duplicate_key, readable_event};
use bytes::Bytes;
use redis::Value;

/// The stream field that holds the payload; every other field is a binary-mode header of the
/// NATS binding, named and encoded alike (`ce-id`, `ce-type`, `ce-datacontenttype`, ...; the
/// `content-type` of entries written by earlier versions is read too).
pub(crate) const DATA_FIELD: &str = "data";

/// Checks a key prefix: 1 to 100 ASCII letters, digits, `_`, `-`, `.` and `:`, so that it is
/// never a glob pattern in `SCAN MATCH`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 100 {
        return Err("a key prefix is 1 to 100 characters long".to_owned());
    }
    match prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        Some(bad) => Err(format!(
            "`{}` is not allowed in a key prefix (ASCII letters, digits, `_`, `-`, `.`, `:`)",
            bad.escape_default()
        )),
        None => Ok(()),
    }
}

/// The keys of one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream of event `name`: `<prefix>:stream:<name>`.
    pub(crate) fn stream(&self, name: &str) -> String {
        format!("{}:stream:{name}", self.prefix)
    }

    /// The event name of stream key `key`, if it is one of this prefix's streams.
    pub(crate) fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix(":stream:")
    }

    /// The `SCAN MATCH` pattern of every stream of the prefix.
    pub(crate) fn stream_glob(&self) -> String {
        format!("{}:stream:*", self.prefix)
    }

    /// The publish-side duplicate marker of the event `id` of `source`:
    /// `<prefix>:dedup:<source>:<id>`, both percent-encoded
    /// ([`duplicate_key`](bus_core::transport::support::duplicate_key)).
    pub(crate) fn dedup(&self, source: &str, id: &str) -> String {
        format!("{}:dedup:{}", self.prefix, duplicate_key(source, id))
    }

    /// The set of every event name published under the prefix.
    pub(crate) fn names(&self) -> String {
        format!("{}:names", self.prefix)
    }

    /// The stream that logs each event name the first time it is published, for the
    /// subscriptions to a pattern to discover new streams.
    pub(crate) fn names_log(&self) -> String {
        format!("{}:names:log", self.prefix)
    }

    /// The hash of group `group`'s pattern and start.
    pub(crate) fn group(&self, group: &str) -> String {
        format!("{}:group:{group}", self.prefix)
    }

    /// The `SCAN MATCH` pattern of every group record of the prefix.
    pub(crate) fn group_glob(&self) -> String {
        format!("{}:group:*", self.prefix)
    }

    /// The group whose record is `key`, if it is one of this prefix's.
    pub(crate) fn group_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?.strip_prefix(":group:")
    }
}

/// A subscription pattern in NATS token syntax: `*` is one token, a last `>` one or more.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    tokens: Vec<String>,
}

impl Matcher {
    /// `pattern` must have passed [`check_pattern`].
    pub(crate) fn new(pattern: &str) -> Matcher {
        Matcher {
            tokens: pattern.split('.').map(str::to_owned).collect(),
        }
    }

    /// Whether the pattern is a plain name (no wildcard).
    pub(crate) fn is_literal(&self) -> bool {
        self.tokens.iter().all(|token| token != "*" && token != ">")
    }

    /// Whether `name` matches.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let mut names = name.split('.');
        for (position, token) in self.tokens.iter().enumerate() {
            let Some(part) = names.next() else {
                return false;
            };
            match token.as_str() {
                ">" if position + 1 == self.tokens.len() => return true,
                "*" => {}
                literal if literal == part => {}
                _ => return false,
            }
        }
        names.next().is_none()
    }
}

/// The stream fields of an event: its binary-mode headers, then the payload.
pub(crate) fn event_fields(event: &WireEvent) -> Vec<(String, Bytes)> {
    let mut fields: Vec<(String, Bytes)> = event
        .headers()
        .into_iter()
        .map(|(name, value)| (name, Bytes::from(value)))
        .collect();
    fields.push((DATA_FIELD.to_owned(), event.data.clone()));
    fields
}

/// The fields of one stream entry, as stored (any bytes).
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads an event back from the fields of an entry of stream `name`.
pub(crate) fn decode(name: &str, fields: &Fields, max_payload: usize) -> Result<WireEvent, String> {
    let mut headers = Vec::with_capacity(fields.len());
    let mut data = Bytes::new();
    for (field, value) in fields {
        let field =
            std::str::from_utf8(field).map_err(|_| "a field name is not UTF-8".to_owned())?;
        if field == DATA_FIELD {
            data = Bytes::copy_from_slice(value);
            continue;
        }
        let value = std::str::from_utf8(value)
            .map_err(|_| format!("the value of field `{field}` is not UTF-8"))?;
        headers.push((field, value));
    }
    let event = WireEvent::from_headers(headers, data, max_payload).map_err(|e| e.to_string())?;
    if event.ty != name {
        return Err(format!(
            "the event's type `{}` does not match its stream `{name}`",
            event.ty
        ));
    }
    Ok(event)
}

/// The dead letter of an entry that does not decode: every field of the entry as it was
/// (`ce-time`, `content-type`, every extension, the payload in `data`, fields that are not
/// CloudEvents attributes, and names or values that are not UTF-8), but the four that make it a
/// dead letter: `ce-specversion` (1.0), `ce-id` (`<original id>.dead.<group>`, the original
/// being `ce-id` or `entry-<entry id>`), `ce-source` (the original when readable) and `ce-type`
/// (`dead-letter.<name>`), plus the dead-letter extensions (`ce-deadletterof`, `-reason`,
/// `-group`, `-attempts`), which replace any the entry had. Returns the letter as an event
/// (for its name, id and source) and the fields to store, the letter's own first.
///
/// A defect of a field kept (a bad extension name, too many fields, a value that is not UTF-8)
/// is kept too: such a dead letter does not decode either, and is read raw (`XRANGE`).
pub(crate) fn dead_letter_raw(
    name: &str,
    entry: &str,
    fields: &Fields,
    group: &str,
    attempts: u32,
    reason: &str,
) -> (WireEvent, Vec<(Bytes, Bytes)>) {
    let texts = fields.iter().filter_map(|(field, value)| {
        Some((
            std::str::from_utf8(field).ok()?,
            std::str::from_utf8(value).ok()?,
        ))
    });
    let fallback_id = || format!("entry-{entry}");
    let letter = readable_event("bus-redis", name, texts, Bytes::new(), fallback_id)
        .dead_letter(group, attempts, reason);
    let mut stored: Vec<(Bytes, Bytes)> = event_fields(&letter)
        .into_iter()
        .filter(|(field, _)| field != DATA_FIELD)
        .map(|(field, value)| (Bytes::from(field), value))
        .collect();
    let replaced: Vec<Bytes> = stored.iter().map(|(field, _)| field.clone()).collect();
    for (field, value) in fields {
        let lower = field.to_ascii_lowercase();
        if replaced
            .iter()
            .any(|ours| ours.as_ref() == lower.as_slice())
        {
            continue;
        }
        stored.push((Bytes::copy_from_slice(field), Bytes::copy_from_slice(value)));
    }
    (letter, stored)
}

/// One entry of a stream reply; `fields` is `None` for an entry deleted (trimmed) while
/// pending.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Option<Fields>,
}

/// The text of a bulk or simple string.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// Entries `[[id, [field, value, ...]], ...]` (a `nil` field list: deleted).
pub(crate) fn entries(value: &Value) -> Result<Vec<Entry>, String> {
    let Some(list) = items(value) else {
        return match value {
            Value::Nil => Ok(Vec::new()),
            other => Err(format!("expected a list of entries, got {other:?}")),
        };
    };
    list.iter()
        .map(|entry| {
            let parts = items(entry).ok_or_else(|| format!("expected an entry, got {entry:?}"))?;
            let id = parts
                .first()
                .and_then(text)
                .ok_or_else(|| format!("an entry without an id: {entry:?}"))?;
            let fields = match parts.get(1) {
                None | Some(Value::Nil) => None,
                Some(Value::Map(pairs)) => Some(
                    pairs
                        .iter()
                        .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                        .collect(),
                ),
                Some(list) => {
                    let flat = items(list).ok_or_else(|| format!("entry {id}: fields {list:?}"))?;
                    Some(
                        flat.chunks(2)
                            .filter_map(|pair| match pair {
                                [k, v] => Some((bytes(k)?, bytes(v)?)),
                                _ => None,
                            })
                            .collect(),
                    )
                }
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

/// An `XREAD` / `XREADGROUP` reply: entries by stream key (nothing on a timeout).
pub(crate) fn read_reply(value: &Value) -> Result<Vec<(String, Vec<Entry>)>, String> {
    let pairs: Vec<(&Value, &Value)> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(list) => list
            .iter()
            .map(|stream| match items(stream) {
                Some([key, entries]) => Ok((key, entries)),
                _ => Err(format!("expected [key, entries], got {stream:?}")),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(format!("expected streams, got {other:?}")),
    };
    pairs
        .into_iter()
        .map(|(key, list)| {
            let key = text(key).ok_or_else(|| format!("a stream key {key:?}"))?;
            Ok((key, entries(list)?))
        })
        .collect()
}

/// An `XAUTOCLAIM` reply: the next cursor, the entries claimed, the ids deleted meanwhile.
pub(crate) fn autoclaim_reply(value: &Value) -> Result<(String, Vec<Entry>, Vec<String>), String> {
    let parts = items(value).ok_or_else(|| format!("expected a list, got {value:?}"))?;
    let cursor = parts
        .first()
        .and_then(text)
        .ok_or_else(|| format!("no cursor in {value:?}"))?;
    let claimed = match parts.get(1) {
        Some(list) => entries(list)?,
        None => Vec::new(),
    };
    let deleted = parts
        .get(2)
        .and_then(items)
        .map(|ids| ids.iter().filter_map(text).collect())
        .unwrap_or_default();
    Ok((cursor, claimed, deleted))
}

/// An extended `XPENDING` reply: `(id, consumer, delivery count)` per entry.
pub(crate) fn pending_reply(value: &Value) -> Result<Vec<(String, String, u32)>, String> {
    let Some(list) = items(value) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|row| match items(row) {
            Some([id, consumer, _idle, count]) => {
                let count = match count {
                    Value::Int(n) => u32::try_from(*n).unwrap_or(u32::MAX),
                    other => text(other).and_then(|text| text.parse().ok()).unwrap_or(1),
                };
                Ok((
                    text(id).unwrap_or_default(),
                    text(consumer).unwrap_or_default(),
                    count,
                ))
            }
            _ => Err(format!("expected a pending entry, got {row:?}")),
        })
        .collect()
}

/// One group of an `XINFO GROUPS` reply, as [`group_stats`](crate::RedisTransport) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    pub(crate) name: String,
    /// The length of the group's pending list.
    pub(crate) pending: u64,
    /// The id of the last entry the group handed out (or the id it was created at).
    pub(crate) last_delivered: String,
    /// The entries not handed out yet; `None` when Redis cannot tell (a nil `lag`: the group
    /// was created at an id between entries, or entries were deleted past it) or does not
    /// say (before Redis 7).
    pub(crate) lag: Option<u64>,
    /// The group's consumers on the stream; `None` when the reply does not say.
    pub(crate) consumers: Option<u64>,
}

/// A count in a reply: an integer, or its text.
fn count(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// An `XINFO GROUPS` reply: one map per group (RESP3), or a flat list of field and value
/// (RESP2). `name`, `pending` and `last-delivered-id` are required; `lag` may be nil or
/// missing.
pub(crate) fn groups_reply(value: &Value) -> Result<Vec<GroupInfo>, String> {
    let Some(list) = items(value) else {
        return Err(format!("expected a list of groups, got {value:?}"));
    };
    list.iter()
        .map(|group| {
            let pairs: Vec<(&Value, &Value)> = match group {
                Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
                other => match items(other) {
                    Some(flat) if flat.len() % 2 == 0 => flat
                        .chunks(2)
                        .filter_map(|pair| match pair {
                            [k, v] => Some((k, v)),
                            _ => None,
                        })
                        .collect(),
                    _ => return Err(format!("expected a group, got {other:?}")),
                },
            };
            let field = |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| text(k).as_deref() == Some(name))
                    .map(|(_, v)| *v)
            };
            let missing = |name: &str| format!("a group without `{name}`: {group:?}");
            let name = field("name")
                .and_then(text)
                .ok_or_else(|| missing("name"))?;
            let pending = field("pending")
                .and_then(count)
                .ok_or_else(|| missing("pending"))?;
            let last_delivered = field("last-delivered-id")
                .and_then(text)
                .ok_or_else(|| missing("last-delivered-id"))?;
            let lag = match field("lag") {
                None | Some(Value::Nil) => None,
                Some(lag) => Some(count(lag).ok_or_else(|| format!("a lag {lag:?}"))?),
            };
            let consumers = field("consumers").and_then(count);
            Ok(GroupInfo {
                name,
                pending,
                last_delivered,
                lag,
                consumers,
            })
        })
        .collect()
}

/// The entry id just before `ms`-0: reading or creating a group "after" it starts at
/// millisecond `ms`.
pub(crate) fn id_before_ms(ms: u64) -> String {
    match ms.checked_sub(1) {
        Some(previous) => format!("{previous}-{}", u64::MAX),
        None => "0-0".to_owned(),
    }
}

/// Compares two entry ids (`<ms>-<seq>`) numerically; unreadable ids sort first.
pub(crate) fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_nats_tokens() {
        let cases = [
            ("a", "a", true),
            ("a", "a.b", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            ("*.b.>", "a.b.c", true),
            ("*.b.>", "a.b", false),
            (">", "a", true),
            ("A", "a", false),
            ("a.*.c", "a.b.d", false),
            ("a.b", "a.bc", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                Matcher::new(pattern).matches(name),
                expected,
                "{pattern} {name}"
            );
        }
        assert!(Matcher::new("a.b").is_literal());
        assert!(!Matcher::new("a.*").is_literal());
    }

    #[test]
    fn prefixes_are_never_globs() {
        assert!(check_prefix("bus").is_ok());
        assert!(check_prefix("acme:bus-1.x").is_ok());
        for bad in ["", "a*", "a?", "a[b]", "a b", "a\\b"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip() {
        let keys = Keys::new("p");
        assert_eq!(keys.stream("a.b"), "p:stream:a.b");
        assert_eq!(keys.name_of("p:stream:a.b"), Some("a.b"));
        assert_eq!(keys.name_of("q:stream:a.b"), None);
        assert_eq!(keys.group_glob(), "p:group:*");
        assert_eq!(keys.group_of(&keys.group("billing.eu")), Some("billing.eu"));
        assert_eq!(keys.group_of("q:group:x"), None);
    }

    #[test]
    fn events_round_trip_through_fields() {
        let event = WireEvent::new("id-1", "svc", "orders.created", &b"\x00\xffbinary"[..])
            .content_type("application/octet-stream")
            .extension("note", "naïve value");
        let fields: Fields = event_fields(&event)
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v.to_vec()))
            .collect();
        assert_eq!(decode("orders.created", &fields, 1 << 20).unwrap(), event);
        assert!(decode("orders.other", &fields, 1 << 20).is_err());
    }

    #[test]
    fn fields_are_named_and_encoded_as_the_nats_headers() {
        let event = WireEvent::new("id-1", "a b é", "orders.created", "{}")
            .content_type("application/json")
            .extension("deadletterreason", "it \"failed\"\n");
        let fields = event_fields(&event);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(field, _)| field == name)
                .map(|(_, value)| std::str::from_utf8(value).unwrap().to_owned())
        };
        assert_eq!(field("ce-source").as_deref(), Some("a%20b%20%C3%A9"));
        assert_eq!(
            field("ce-datacontenttype").as_deref(),
            Some("application/json")
        );
        assert_eq!(field("content-type"), None);
        assert_eq!(
            field("ce-deadletterreason").as_deref(),
            Some("it%20%22failed%22%0A")
        );
        let nats_headers: Vec<(String, String)> = event.headers();
        for (name, value) in &nats_headers {
            assert_eq!(field(name).as_ref(), Some(value), "{name}");
        }
    }

    #[test]
    fn entries_of_earlier_versions_and_other_producers_read() {
        let fields: Fields = [
            ("ce-specversion", "1.0"),
            ("CE-ID", "old-1"),
            ("ce-source", "a%20b%20%c3%a9"),
            ("ce-type", "orders.created"),
            ("content-type", "application/json; charset=utf-8"),
            ("data", "{}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let event = decode("orders.created", &fields, 1 << 20).unwrap();
        assert_eq!(event.source, "a b é");
        assert_eq!(
            event.datacontenttype.as_deref(),
            Some("application/json; charset=utf-8")
        );
        let mut bad = fields;
        bad[2].1 = b"%C0%A0".to_vec();
        let reason = decode("orders.created", &bad, 1 << 20).unwrap_err();
        assert!(reason.contains("`ce-source`"), "{reason}");
    }

    #[test]
    fn garbage_is_a_reason_and_a_valid_dead_letter() {
        let fields: Fields = vec![
            (b"foo".to_vec(), b"bar".to_vec()),
            (vec![0xff], b"x".to_vec()),
            (b"ce-id".to_vec(), b"g-1".to_vec()),
        ];
        assert!(decode("a.b", &fields, 1 << 20).is_err());
        let (letter, stored) = dead_letter_raw("a.b", "1-0", &fields, "grp", 1, "bad");
        assert_eq!(letter.ty, "dead-letter.a.b");
        assert_eq!(letter.id, "g-1.dead.grp");
        assert!(letter.validate(1 << 20).is_ok());
        assert!(
            stored
                .iter()
                .any(|(k, v)| k == "foo" && v.as_ref() == b"bar")
        );
    }

    #[test]
    fn a_dead_letter_keeps_every_field_of_the_entry() {
        let original: Vec<(&[u8], &[u8])> = vec![
            (b"ce-specversion", b"0.3"),
            (b"ce-id", b"o-1"),
            (b"ce-source", b"other-team"),
            (b"ce-type", b"a.b"),
            (b"ce-time", b"2024-05-01T10:00:00Z"),
            (b"content-type", b"application/json"),
            (
                b"ce-traceparent",
                b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            (b"ce-causationid", b"o-0"),
            (b"ce-tenant", b"acme"),
            (b"ce-deadletterreason", b"an old reason"),
            (b"x-unknown", b"kept"),
            (&[0xff, 0xfe], b"not UTF-8, kept"),
            (b"data", b"{\"n\":1}"),
        ];
        let fields: Fields = original
            .iter()
            .map(|(field, value)| (field.to_vec(), value.to_vec()))
            .collect();
        let reason = decode("a.b", &fields, 1 << 20).unwrap_err();
        assert!(reason.contains("not UTF-8"), "{reason}");
        let (letter, stored) = dead_letter_raw("a.b", "1-0", &fields, "grp", 2, &reason);
        let value = |name: &[u8]| -> Vec<&[u8]> {
            stored
                .iter()
                .filter(|(field, _)| field.as_ref() == name)
                .map(|(_, value)| value.as_ref())
                .collect()
        };
        for (field, expected) in &original[4..original.len()] {
            if *field == b"ce-deadletterreason" {
                continue;
            }
            assert_eq!(
                value(field),
                [*expected],
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        assert_eq!(value(b"ce-specversion"), [b"1.0"]);
        assert_eq!(value(b"ce-id"), [b"o-1.dead.grp"]);
        assert_eq!(value(b"ce-source"), [b"other-team"]);
        assert_eq!(value(b"ce-type"), [b"dead-letter.a.b"]);
        // Percent-encoded, as every value the bus writes.
        let encoded = bus_core::transport::encode_header_value(&reason);
        assert_eq!(value(b"ce-deadletterreason"), [encoded.as_bytes()]);
        assert_eq!(value(b"ce-deadletterof"), [b"o-1"]);
        assert_eq!(value(b"ce-deadlettergroup"), [b"grp"]);
        assert_eq!(value(b"ce-deadletterattempts"), [b"2"]);
        assert_eq!(stored.len(), original.len() + 3, "{stored:?}");
        assert_eq!(
            (letter.id.as_str(), letter.source.as_str()),
            ("o-1.dead.grp", "other-team")
        );
    }

    #[test]
    fn a_dead_letter_of_fields_without_defects_in_them_decodes() {
        let fields: Fields = [
            ("ce-specversion", "0.3"),
            ("ce-id", "o-1"),
            ("ce-source", "s"),
            ("ce-type", "a.b"),
            ("ce-time", "2024-05-01T10:00:00Z"),
            ("content-type", "text/plain"),
            ("ce-tenant", "acme"),
            ("data", "hello"),
        ]
        .iter()
        .map(|(field, value)| (field.as_bytes().to_vec(), value.as_bytes().to_vec()))
        .collect();
        let (_, stored) = dead_letter_raw("a.b", "1-0", &fields, "grp", 1, "bad");
        let stored: Fields = stored
            .into_iter()
            .map(|(field, value)| (field.to_vec(), value.to_vec()))
            .collect();
        let letter = decode("dead-letter.a.b", &stored, 1 << 20).expect("the letter decodes");
        assert_eq!(letter.time.as_deref(), Some("2024-05-01T10:00:00Z"));
        assert_eq!(letter.datacontenttype.as_deref(), Some("text/plain"));
        assert_eq!(letter.extensions["tenant"], "acme");
        assert_eq!(&letter.data[..], b"hello");
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn xinfo_groups_parses_in_both_protocols() {
        // RESP2: a flat list per group, as `redis-cli XINFO GROUPS` shows it.
        let resp2 = Value::Array(vec![
            Value::Array(vec![
                bulk("name"),
                bulk("billing"),
                bulk("consumers"),
                Value::Int(2),
                bulk("pending"),
                Value::Int(3),
                bulk("last-delivered-id"),
                bulk("1700000000000-4"),
                bulk("entries-read"),
                Value::Nil,
                bulk("lag"),
                Value::Nil,
            ]),
            Value::Array(vec![
                bulk("name"),
                bulk("shipping"),
                bulk("pending"),
                Value::Int(0),
                bulk("last-delivered-id"),
                bulk("0-0"),
                bulk("lag"),
                Value::Int(7),
            ]),
        ]);
        let groups = groups_reply(&resp2).unwrap();
        assert_eq!(
            groups,
            [
                GroupInfo {
                    name: "billing".to_owned(),
                    pending: 3,
                    last_delivered: "1700000000000-4".to_owned(),
                    lag: None,
                    consumers: Some(2),
                },
                GroupInfo {
                    name: "shipping".to_owned(),
                    pending: 0,
                    last_delivered: "0-0".to_owned(),
                    lag: Some(7),
                    consumers: None,
                },
            ]
        );
        // RESP3: a map per group; before Redis 7 there is no `lag` at all.
        let resp3 = Value::Array(vec![Value::Map(vec![
            (Value::SimpleString("name".to_owned()), bulk("billing")),
            (bulk("pending"), Value::Int(1)),
            (bulk("last-delivered-id"), bulk("5-0")),
        ])]);
        let groups = groups_reply(&resp3).unwrap();
        assert_eq!(groups[0].name, "billing");
        assert_eq!((groups[0].pending, groups[0].lag), (1, None));
        assert!(groups_reply(&Value::Array(Vec::new())).unwrap().is_empty());
    }

    #[test]
    fn xinfo_groups_garbage_is_an_error() {
        assert!(groups_reply(&Value::Int(1)).is_err());
        assert!(groups_reply(&Value::Array(vec![Value::Int(1)])).is_err());
        // An odd list, a group without its pending count, a lag that is no number.
        let odd = Value::Array(vec![Value::Array(vec![bulk("name")])]);
        assert!(groups_reply(&odd).is_err());
        let no_pending = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("last-delivered-id"),
            bulk("0-0"),
        ])]);
        assert!(groups_reply(&no_pending).unwrap_err().contains("pending"));
        let bad_lag = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("pending"),
            Value::Int(0),
            bulk("last-delivered-id"),
            bulk("0-0"),
            bulk("lag"),
            Value::Int(-1),
        ])]);
        assert!(groups_reply(&bad_lag).is_err());
    }

    #[test]
    fn replies_parse_and_garbage_replies_are_errors() {
        let entry = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"k".to_vec()),
                Value::BulkString(b"v".to_vec()),
            ]),
        ]);
        let deleted = Value::Array(vec![Value::BulkString(b"2-0".to_vec()), Value::Nil]);
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"key".to_vec()),
            Value::Array(vec![entry, deleted]),
        ])]);
        let parsed = read_reply(&reply).unwrap();
        assert_eq!(parsed[0].0, "key");
        assert_eq!(parsed[0].1[0].fields.as_ref().unwrap()[0].0, b"k");
        assert!(parsed[0].1[1].fields.is_none());
        assert!(read_reply(&Value::Int(3)).is_err());
        assert!(read_reply(&Value::Nil).unwrap().is_empty());
        assert_eq!(id_before_ms(10), format!("9-{}", u64::MAX));
        assert!(id_key("2-1") > id_key("1-5"));
    }
}
