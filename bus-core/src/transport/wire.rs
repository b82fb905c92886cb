//! The wire format: CloudEvents 1.0 attributes and a payload, and their binary-mode mapping to
//! message headers (`ce-id`, `ce-type`, ...), which every transport shares.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::name;

/// The CloudEvents version this crate writes and accepts.
pub const SPEC_VERSION: &str = "1.0";

/// The largest payload a transport accepts by default: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// The most attributes (headers) a message may carry; more is refused as malformed.
pub const MAX_ATTRIBUTES: usize = 64;

/// The header prefix of CloudEvents attributes in binary mode.
const HEADER_PREFIX: &str = "ce-";

/// One event as it travels through a broker: its CloudEvents 1.0 context attributes and its
/// payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WireEvent {
    /// `id`: unique per event; the broker's deduplication key.
    pub id: String,
    /// `source`: the service that emitted it.
    pub source: String,
    /// `type`: the event name (`orders.eu.created`).
    pub ty: String,
    /// `time`: when it was emitted, RFC 3339.
    pub time: Option<String>,
    /// `datacontenttype`: the payload's media type (`application/json`).
    pub datacontenttype: Option<String>,
    /// Extension attributes (lower-case ASCII letters and digits), such as `causationid`.
    pub extensions: BTreeMap<String, String>,
    /// The payload.
    pub data: Bytes,
}

impl WireEvent {
    /// An event with the required attributes and a payload; no time, content type or
    /// extension yet.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Self {
        WireEvent {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            time: None,
            datacontenttype: None,
            extensions: BTreeMap::new(),
            data: data.into(),
        }
    }

    /// Sets `time` to `at`, written in RFC 3339.
    #[must_use]
    pub fn at(mut self, at: std::time::SystemTime) -> Self {
        self.time = Some(humantime::format_rfc3339_nanos(at).to_string());
        self
    }

    /// Sets `datacontenttype`.
    #[must_use]
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.datacontenttype = Some(content_type.into());
        self
    }

    /// Sets the extension attribute `name` (lower-case ASCII letters and digits).
    #[must_use]
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }

    /// The dead letter of this event, as every transport writes it: the same attributes and
    /// payload under [`dead_letter_name`](super::dead_letter_name), a new id
    /// `<id>.dead.<group>` (the broker keeps one event per id, and the original is stored
    /// already), and the extensions [`DEAD_LETTER_OF`](super::DEAD_LETTER_OF) (the original
    /// id), [`DEAD_LETTER_REASON`](super::DEAD_LETTER_REASON),
    /// [`DEAD_LETTER_GROUP`](super::DEAD_LETTER_GROUP) and
    /// [`DEAD_LETTER_ATTEMPTS`](super::DEAD_LETTER_ATTEMPTS).
    #[must_use]
    pub fn dead_letter(&self, group: &str, attempts: u32, reason: &str) -> WireEvent {
        let mut letter = self.clone();
        letter.ty = super::dead_letter_name(&self.ty);
        letter.id = format!("{}.dead.{group}", self.id);
        for (name, value) in [
            (super::DEAD_LETTER_OF, self.id.clone()),
            (super::DEAD_LETTER_REASON, reason.to_owned()),
            (super::DEAD_LETTER_GROUP, group.to_owned()),
            (super::DEAD_LETTER_ATTEMPTS, attempts.to_string()),
        ] {
            letter.extensions.insert(name.to_owned(), value);
        }
        letter
    }

    /// The attributes as binary-mode headers: `ce-specversion`, `ce-id`, `ce-source`,
    /// `ce-type`, `ce-time`, `content-type` for `datacontenttype`, and `ce-<name>` per
    /// extension.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![
            (
                format!("{HEADER_PREFIX}specversion"),
                SPEC_VERSION.to_owned(),
            ),
            (format!("{HEADER_PREFIX}id"), self.id.clone()),
            (format!("{HEADER_PREFIX}source"), self.source.clone()),
            (format!("{HEADER_PREFIX}type"), self.ty.clone()),
        ];
        if let Some(time) = &self.time {
            headers.push((format!("{HEADER_PREFIX}time"), time.clone()));
        }
        if let Some(content_type) = &self.datacontenttype {
            headers.push(("content-type".to_owned(), content_type.clone()));
        }
        for (name, value) in &self.extensions {
            headers.push((format!("{HEADER_PREFIX}{name}"), value.clone()));
        }
        headers
    }

    /// Reads an event back from binary-mode headers and a payload, checking everything a
    /// message from another client may get wrong: the spec version, the required attributes,
    /// the event name (validated like a local one), extension names, the number of headers
    /// and the payload size. Headers that are not CloudEvents attributes are ignored.
    ///
    /// # Errors
    ///
    /// A [`WireError`] naming what is wrong, for the dead letter's reason.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        data: Bytes,
        max_payload: usize,
    ) -> Result<WireEvent, WireError> {
        let mut attributes: BTreeMap<String, String> = BTreeMap::new();
        let mut content_type = None;
        for (count, (name, value)) in headers.into_iter().enumerate() {
            if count >= MAX_ATTRIBUTES {
                return Err(WireError::TooManyHeaders {
                    max: MAX_ATTRIBUTES,
                });
            }
            let lower = name.to_ascii_lowercase();
            if lower == "content-type" {
                content_type = Some(value.to_owned());
            } else if let Some(attribute) = lower.strip_prefix(HEADER_PREFIX) {
                attributes.insert(attribute.to_owned(), value.to_owned());
            }
        }
        let mut take = |name: &'static str| attributes.remove(name);
        match take("specversion") {
            Some(version) if version == SPEC_VERSION => {}
            Some(version) => return Err(WireError::SpecVersion(version)),
            None => return Err(WireError::Missing("specversion")),
        }
        let id = take("id").ok_or(WireError::Missing("id"))?;
        let source = take("source").ok_or(WireError::Missing("source"))?;
        let ty = take("type").ok_or(WireError::Missing("type"))?;
        let time = take("time");
        let event = WireEvent {
            id,
            source,
            ty,
            time,
            datacontenttype: content_type,
            extensions: attributes,
            data,
        };
        event.validate(max_payload)?;
        Ok(event)
    }

    /// Checks what a subscriber's [`from_headers`](WireEvent::from_headers) would refuse,
    /// without encoding: the payload size, empty required attributes, the event name,
    /// extension names and the attribute count. A publisher calls it to refuse, before
    /// sending, an event no subscriber could read.
    ///
    /// # Errors
    ///
    /// The [`WireError`] the subscriber would give.
    pub fn validate(&self, max_payload: usize) -> Result<(), WireError> {
        if self.data.len() > max_payload {
            return Err(WireError::TooLarge {
                size: self.data.len(),
                max: max_payload,
            });
        }
        for (required, value) in [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ] {
            if value.is_empty() {
                return Err(WireError::Empty(required));
            }
        }
        name::validate(&self.ty).map_err(|error| WireError::Name(error.to_string()))?;
        if let Some(bad) = self.extensions.keys().find(|name| !is_extension_name(name)) {
            return Err(WireError::ExtensionName(bad.clone()));
        }
        // specversion, id, source, type, time, content-type, then one header per extension.
        if self.extensions.len() + 6 > MAX_ATTRIBUTES {
            return Err(WireError::TooManyHeaders {
                max: MAX_ATTRIBUTES,
            });
        }
        Ok(())
    }
}

/// CloudEvents attribute names: lower-case ASCII letters and digits, 1 to 20 characters.
fn is_extension_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
}

/// Why a message does not decode as an event: the reason its dead letter carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A required attribute is missing.
    #[error("not a CloudEvent: the `{0}` attribute (header `ce-{0}`) is missing")]
    Missing(&'static str),
    /// A required attribute is empty.
    #[error("not a valid CloudEvent: the `{0}` attribute is empty")]
    Empty(&'static str),
    /// The spec version is not 1.0.
    #[error("unsupported CloudEvents specversion `{0}`: only 1.0 is read")]
    SpecVersion(String),
    /// The event name breaks the naming rules.
    #[error("{0}")]
    Name(String),
    /// An extension attribute's name is not lower-case letters and digits.
    #[error("invalid CloudEvents extension name `{0}`: lower-case ASCII letters and digits only")]
    ExtensionName(String),
    /// Too many headers.
    #[error("too many headers: more than {max}")]
    TooManyHeaders {
        /// The limit.
        max: usize,
    },
    /// The payload is over the size limit.
    #[error("payload of {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> WireEvent {
        WireEvent::new("id-1", "billing", "orders.eu.created", &b"{\"n\":1}"[..])
            .at(std::time::SystemTime::UNIX_EPOCH)
            .content_type("application/json")
            .extension("causationid", "id-0")
    }

    fn decode(event: &WireEvent) -> Result<WireEvent, WireError> {
        let headers = event.headers();
        WireEvent::from_headers(
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            event.data.clone(),
            DEFAULT_MAX_PAYLOAD,
        )
    }

    #[test]
    fn headers_round_trip() {
        let event = sample();
        assert_eq!(decode(&event).unwrap(), event);
        assert_eq!(
            event.time.as_deref(),
            Some("1970-01-01T00:00:00.000000000Z")
        );
    }

    #[test]
    fn bad_messages_are_named() {
        let data = Bytes::from_static(b"{}");
        let cases: Vec<(Vec<(&str, &str)>, WireError)> = vec![
            (vec![], WireError::Missing("specversion")),
            (
                vec![("ce-specversion", "0.3")],
                WireError::SpecVersion("0.3".into()),
            ),
            (
                vec![
                    ("ce-specversion", "1.0"),
                    ("ce-source", "s"),
                    ("ce-type", "a"),
                ],
                WireError::Missing("id"),
            ),
            (
                vec![
                    ("ce-specversion", "1.0"),
                    ("ce-id", ""),
                    ("ce-source", "s"),
                    ("ce-type", "a"),
                ],
                WireError::Empty("id"),
            ),
            (
                vec![
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "a"),
                    ("ce-Bad_Name", "x"),
                ],
                WireError::ExtensionName("bad_name".into()),
            ),
        ];
        for (headers, expected) in cases {
            let got = WireEvent::from_headers(headers, data.clone(), DEFAULT_MAX_PAYLOAD);
            assert_eq!(got.unwrap_err(), expected);
        }
        let wildcard = [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "s"),
            ("ce-type", "orders.*"),
        ];
        assert!(matches!(
            WireEvent::from_headers(wildcard, data.clone(), DEFAULT_MAX_PAYLOAD),
            Err(WireError::Name(_))
        ));
        assert_eq!(
            WireEvent::from_headers(wildcard, Bytes::from(vec![0; 11]), 10).unwrap_err(),
            WireError::TooLarge { size: 11, max: 10 }
        );
        let many: Vec<(String, String)> = (0..100)
            .map(|n| (format!("x-{n}"), String::new()))
            .collect();
        assert_eq!(
            WireEvent::from_headers(many.iter().map(|(k, v)| (k.as_str(), v.as_str())), data, 10)
                .unwrap_err(),
            WireError::TooManyHeaders {
                max: MAX_ATTRIBUTES
            }
        );
    }

    proptest! {
        #[test]
        fn decoding_never_panics(
            headers in proptest::collection::vec((".{0,12}", ".{0,12}"), 0..80),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = WireEvent::from_headers(
                headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                Bytes::from(data),
                32,
            );
        }

        #[test]
        fn valid_events_round_trip(
            id in "[a-z0-9-]{1,20}",
            ty in "[a-z]{1,8}(\\.[a-z0-9_-]{1,8}){0,3}",
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let event = WireEvent::new(id, "svc", ty, data);
            prop_assert_eq!(decode(&event).unwrap(), event);
        }
    }
}
