//! The wire format: CloudEvents 1.0 attributes and a payload, and their binary-mode mapping to
//! message headers (`ce-id`, `ce-type`, ...), which every transport shares.
//!
//! Header names and values follow the binary mode of the CloudEvents NATS protocol binding
//! (§3.1.3): attribute `x` is header `ce-x` (`datacontenttype` too: `ce-datacontenttype`), and
//! every value is percent-encoded ([`encode_header_value`]) so that any Unicode text travels
//! as printable ASCII; reading undoes it ([`decode_header_value`]). A [`WireEvent`] holds the
//! decoded values.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::name;

/// The CloudEvents version this crate writes and accepts.
pub const SPEC_VERSION: &str = "1.0";

/// The largest payload a transport accepts by default: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// The most attributes (headers) a message may carry; more is refused as malformed.
pub const MAX_ATTRIBUTES: usize = 64;

/// The header prefix of CloudEvents attributes in binary mode.
const HEADER_PREFIX: &str = "ce-";

/// The HTTP-style header of `datacontenttype` that other SDKs (and earlier versions of this
/// crate) write instead of `ce-datacontenttype`: read, never written.
const HTTP_CONTENT_TYPE: &str = "content-type";

/// What a header value percent-encodes (NATS binding §3.1.3.2): the controls U+0000 to U+001F
/// and DEL, space, `"` and `%`. Every non-ASCII character is encoded too (each byte of its
/// UTF-8), by [`utf8_percent_encode`] itself.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// The header form of an attribute value: percent-encoded as the CloudEvents NATS binding says
/// (§3.1.3.2), with upper-case hex: space, `"`, `%`, controls and every character outside
/// printable ASCII. `Euro € 😀` is `Euro%20%E2%82%AC%20%F0%9F%98%80`. Borrowed when nothing
/// needs encoding.
pub fn encode_header_value(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, ENCODED).into()
}

/// An attribute value read back from its header `header` (named in the error): a value in
/// double quotes is first unquoted (RFC 7230 §3.2.6, with backslash escapes), then one round of
/// percent-decoding is applied. Lower-case hex, characters encoded without need, and values not
/// encoded at all (printable, without `%`) read as they are; a `%` not followed by two hex
/// digits stays a `%`.
///
/// # Errors
///
/// [`WireError::HeaderValue`] when the percent-encoded bytes are not UTF-8 (`%C0%A0`, an
/// overlong space), or when a value opening a quoted string does not close it properly.
pub fn decode_header_value(header: &str, value: &str) -> Result<String, WireError> {
    let problem = |problem: &'static str| WireError::HeaderValue {
        header: header.to_owned(),
        problem,
    };
    let unquoted = unquote(value).ok_or_else(|| {
        problem("it opens a quoted string that it does not close, or that holds an unescaped `\"`")
    })?;
    percent_decode_str(&unquoted)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| problem("its percent-encoded bytes are not UTF-8"))
}

/// `value` without its double quotes and backslash escapes if it is a quoted string (RFC 7230
/// §3.2.6), as it is otherwise; `None` when it opens a quoted string it does not close, or
/// holds a `"` that is not escaped.
fn unquote(value: &str) -> Option<Cow<'_, str>> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(Cow::Borrowed(value));
    };
    let mut unquoted = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => unquoted.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(Cow::Owned(unquoted)),
            c => unquoted.push(c),
        }
    }
    None
}

/// One event as it travels through a broker: its CloudEvents 1.0 context attributes and its
/// payload. The fields hold the attributes' values as they are, decoded: their header form
/// ([`headers`](WireEvent::headers)) is percent-encoded.
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

    /// The attributes as binary-mode headers (CloudEvents NATS binding, §3.1.3):
    /// `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-time`, `ce-datacontenttype` and
    /// `ce-<name>` per extension, each value percent-encoded ([`encode_header_value`]).
    pub fn headers(&self) -> Vec<(String, String)> {
        let header = |attribute: &str, value: &str| {
            (
                format!("{HEADER_PREFIX}{attribute}"),
                encode_header_value(value).into_owned(),
            )
        };
        let mut headers = vec![
            header("specversion", SPEC_VERSION),
            header("id", &self.id),
            header("source", &self.source),
            header("type", &self.ty),
        ];
        if let Some(time) = &self.time {
            headers.push(header("time", time));
        }
        if let Some(content_type) = &self.datacontenttype {
            headers.push(header("datacontenttype", content_type));
        }
        for (name, value) in &self.extensions {
            headers.push(header(name, value));
        }
        headers
    }

    /// Reads an event back from binary-mode headers and a payload, checking everything a
    /// message from another client may get wrong: the spec version, the required attributes,
    /// the event name (validated like a local one), extension names, the encoding of the
    /// values, the number of headers and the payload size. Header names are
    /// case-insensitive; headers that are not CloudEvents attributes are ignored.
    ///
    /// Every `ce-*` value is decoded with [`decode_header_value`]. `datacontenttype` is read
    /// from `ce-datacontenttype`, else from an HTTP-style `content-type` header (as other SDKs
    /// and earlier versions of this crate write it), taken as it is.
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
        let mut http_content_type = None;
        for (count, (name, value)) in headers.into_iter().enumerate() {
            if count >= MAX_ATTRIBUTES {
                return Err(WireError::TooManyHeaders {
                    max: MAX_ATTRIBUTES,
                });
            }
            let lower = name.to_ascii_lowercase();
            if lower == HTTP_CONTENT_TYPE {
                http_content_type = Some(value.to_owned());
            } else if let Some(attribute) = lower.strip_prefix(HEADER_PREFIX) {
                attributes.insert(attribute.to_owned(), decode_header_value(name, value)?);
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
        let datacontenttype = take("datacontenttype").or(http_content_type);
        let event = WireEvent {
            id,
            source,
            ty,
            time,
            datacontenttype,
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
        // specversion, id, source, type, time, datacontenttype, then one header per
        // extension.
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
    /// A header's value does not decode (CloudEvents NATS binding §3.1.3.2).
    #[error(
        "the value of header `{header}` does not decode: {problem} (percent-encoding of the \
         CloudEvents NATS binding, §3.1.3.2)"
    )]
    HeaderValue {
        /// The header, as the message names it.
        header: String,
        /// What is wrong with its value.
        problem: &'static str,
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

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    /// A valid message with `extra` headers after the required ones.
    fn message<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut headers = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "s"),
            ("ce-type", "a.b"),
        ];
        headers.extend_from_slice(extra);
        headers
    }

    fn read(headers: Vec<(&str, &str)>) -> Result<WireEvent, WireError> {
        WireEvent::from_headers(headers, Bytes::new(), DEFAULT_MAX_PAYLOAD)
    }

    #[test]
    fn values_are_percent_encoded_as_the_nats_binding_says() {
        // The example of §3.1.3.2.
        assert_eq!(
            encode_header_value("Euro € 😀"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(encode_header_value("100% \"ok\""), "100%25%20%22ok%22");
        assert_eq!(
            encode_header_value("a\r\nb\t\u{7f}\u{85}"),
            "a%0D%0Ab%09%7F%C2%85"
        );
        assert!(matches!(
            encode_header_value("orders.eu-1/x?y=z&w"),
            Cow::Borrowed("orders.eu-1/x?y=z&w")
        ));
        let event = WireEvent::new("id 1", "a b é", "orders.placed", "{}")
            .content_type("application/json; charset=utf-8")
            .extension(super::super::DEAD_LETTER_REASON, "it failed:\nbadly");
        let headers = event.headers();
        assert_eq!(header(&headers, "ce-source"), Some("a%20b%20%C3%A9"));
        assert_eq!(header(&headers, "ce-id"), Some("id%201"));
        assert_eq!(
            header(&headers, "ce-datacontenttype"),
            Some("application/json;%20charset=utf-8")
        );
        assert_eq!(header(&headers, "content-type"), None);
        assert_eq!(
            header(&headers, "ce-deadletterreason"),
            Some("it%20failed:%0Abadly")
        );
        assert_eq!(decode(&event).unwrap(), event);
    }

    #[test]
    fn values_are_decoded_leniently_but_not_into_invalid_utf8() {
        let source = |value: &str| {
            read(message(&[("ce-causationid", value)]))
                .map(|event| event.extensions["causationid"].clone())
        };
        assert_eq!(
            source("Euro%20%E2%82%AC%20%F0%9F%98%80").unwrap(),
            "Euro € 😀"
        );
        assert_eq!(source("a%c3%a9%2f").unwrap(), "aé/", "lower-case hex");
        assert_eq!(source("%41%42c").unwrap(), "ABc", "unnecessary encodings");
        assert_eq!(source("plain-value/1").unwrap(), "plain-value/1");
        assert_eq!(source("raw é and spaces").unwrap(), "raw é and spaces");
        assert_eq!(source("100%").unwrap(), "100%", "a lone `%` is no encoding");
        assert_eq!(
            source(r#""a \"quoted\" \\ value""#).unwrap(),
            r#"a "quoted" \ value"#
        );
        assert_eq!(
            source(r#""a%20b""#).unwrap(),
            "a b",
            "unquoted, then decoded"
        );
        assert_eq!(source(r#""""#).unwrap(), "");
        let bad = |value: &str| match source(value) {
            Err(WireError::HeaderValue { header, problem }) => {
                assert_eq!(header, "ce-causationid");
                problem
            }
            other => panic!("{value}: {other:?}"),
        };
        assert!(bad("%C0%A0").contains("not UTF-8"), "overlong space");
        assert!(bad("%FF").contains("not UTF-8"));
        assert!(bad("%E2%82").contains("not UTF-8"), "cut short");
        for unclosed in [r#""abc"#, r#""abc\""#, r#""a"b""#, "\""] {
            assert!(bad(unclosed).contains("quoted string"), "{unclosed}");
        }
        let error = read(message(&[("CE-Source", "%C0%A0")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the value of header `CE-Source` does not decode: its percent-encoded bytes are \
             not UTF-8 (percent-encoding of the CloudEvents NATS binding, §3.1.3.2)"
        );
    }

    #[test]
    fn the_content_type_is_read_from_either_header() {
        let content_type = |extra: &[(&str, &str)]| read(message(extra)).unwrap().datacontenttype;
        assert_eq!(content_type(&[]), None);
        assert_eq!(
            content_type(&[("ce-datacontenttype", "text/plain;%20charset=utf-8")]).as_deref(),
            Some("text/plain; charset=utf-8")
        );
        // HTTP style, as other SDKs write it: taken as it is.
        assert_eq!(
            content_type(&[("Content-Type", r#"text/plain; charset="utf-8""#)]).as_deref(),
            Some(r#"text/plain; charset="utf-8""#)
        );
        for both in [
            [
                ("content-type", "text/plain"),
                ("CE-DataContentType", "application/json"),
            ],
            [
                ("ce-datacontenttype", "application/json"),
                ("content-type", "text/plain"),
            ],
        ] {
            assert_eq!(
                content_type(&both).as_deref(),
                Some("application/json"),
                "{both:?}"
            );
        }
        let event = read(message(&[("ce-datacontenttype", "application/xml")])).unwrap();
        assert!(event.extensions.is_empty(), "{:?}", event.extensions);
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

        #[test]
        fn any_unicode_value_round_trips_as_printable_ascii(
            id in any::<String>(),
            source in any::<String>(),
            content_type in any::<String>(),
            value in any::<String>(),
            time in any::<String>(),
        ) {
            let mut event = WireEvent::new(id, source, "orders.placed", "{}")
                .content_type(content_type)
                .extension("note", value);
            event.time = Some(time);
            prop_assume!(!event.id.is_empty() && !event.source.is_empty());
            let headers = event.headers();
            for (_, value) in &headers {
                prop_assert!(
                    value.bytes().all(|byte| (0x21..=0x7e).contains(&byte) && byte != b'"'),
                    "{value:?}"
                );
            }
            prop_assert_eq!(decode(&event).unwrap(), event);
        }

        #[test]
        fn printable_values_without_percent_or_quote_read_as_written(
            value in "[!#$&-~]([ !#$&-~\\p{L}]{0,30}[!#$&-~])?",
        ) {
            prop_assert_eq!(decode_header_value("ce-x", &value).unwrap(), value);
        }

        #[test]
        fn encoding_is_decoded_whatever_the_case_of_the_hex(value in any::<String>()) {
            let encoded = encode_header_value(&value);
            // Only the hex digits after each `%`, lower-cased.
            let mut lower = String::with_capacity(encoded.len());
            let mut hex = 0;
            for c in encoded.chars() {
                if hex > 0 {
                    lower.push(c.to_ascii_lowercase());
                    hex -= 1;
                } else {
                    hex = if c == '%' { 2 } else { 0 };
                    lower.push(c);
                }
            }
            prop_assert_eq!(decode_header_value("ce-x", &lower).unwrap(), value);
        }
    }
}
