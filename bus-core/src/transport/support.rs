//! What every broker transport needs and would otherwise write again: backoff between
//! reconnections, errors in this crate's terms, TLS root certificates, the dead letter of a
//! message that does not decode, and the key and the count of duplicates. For the authors of
//! transports; the bus does not use it.

use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use std::path::PathBuf;

use super::{TransportError, WireEvent};
pub use crate::policy::Backoff;

impl TransportError {
    /// A [`TransportError::Broker`] of the transport named `transport`.
    pub fn broker(
        transport: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        TransportError::Broker {
            transport: transport.to_owned(),
            source: source.into(),
        }
    }

    /// A [`TransportError::Unreachable`] of the transport named `transport`.
    pub fn unreachable(
        transport: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        TransportError::Unreachable {
            transport: transport.to_owned(),
            source: source.into(),
        }
    }

    /// A [`TransportError::Invalid`] of the transport named `transport`: `value`, a `what`
    /// (`"pattern"`, `"group"`, …), is not valid, for `reason`.
    pub fn invalid(
        transport: &str,
        what: &'static str,
        value: &str,
        reason: impl Into<String>,
    ) -> Self {
        TransportError::Invalid {
            transport: transport.to_owned(),
            what,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Checks an event name from outside (a message, a stream key) against the rules `emit`
/// applies, with the reason in a sentence when it breaks them.
///
/// # Errors
///
/// What is wrong with the name.
pub fn check_name(name: &str) -> Result<(), String> {
    crate::name::validate_name(name).map_err(|error| error.to_string())
}

/// Checks a subscription pattern against the listener-pattern rules `add_listener` applies:
/// tokens that are names, `*` (one token), or a last `>` (one or more).
///
/// # Errors
///
/// What is wrong with the pattern.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    crate::name::validate_pattern(pattern).map_err(|error| error.to_string())
}

/// CA certificates for a transport to trust over TLS, as its builder was given them: a PEM
/// file, read when the transport connects, or the PEM text itself.
#[derive(Clone)]
#[non_exhaustive]
pub enum RootCertificates {
    /// A PEM file.
    File(PathBuf),
    /// PEM text.
    Pem(Vec<u8>),
}

impl std::fmt::Debug for RootCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootCertificates::File(path) => f.debug_tuple("File").field(path).finish(),
            RootCertificates::Pem(pem) => write!(f, "Pem({} bytes)", pem.len()),
        }
    }
}

impl RootCertificates {
    /// The PEM text, checked to hold certificates, at least one.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] of `transport` naming the file (or the size of the text)
    /// and saying what is wrong: it cannot be read, it is not PEM certificates, or it holds
    /// none.
    #[cfg(feature = "tls")]
    pub fn load(&self, transport: &str) -> Result<Vec<u8>, TransportError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;

        const WHAT: &str = "TLS root certificates";
        let (pem, shown) = match self {
            RootCertificates::File(path) => {
                let shown = path.display().to_string();
                let pem = std::fs::read(path).map_err(|error| {
                    let reason = format!("cannot read the file: {error}");
                    TransportError::invalid(transport, WHAT, &shown, reason)
                })?;
                (pem, shown)
            }
            RootCertificates::Pem(pem) => (pem.clone(), format!("<{} bytes of PEM>", pem.len())),
        };
        let mut count = 0_usize;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            certificate.map_err(|error| {
                let reason = format!("not PEM certificates: {error}");
                TransportError::invalid(transport, WHAT, &shown, reason)
            })?;
            count += 1;
        }
        if count == 0 {
            let reason =
                "no certificate in it (PEM text with `-----BEGIN CERTIFICATE-----` blocks)";
            return Err(TransportError::invalid(transport, WHAT, &shown, reason));
        }
        Ok(pem)
    }
}

/// Installs rustls' ring provider as the process default, unless one is installed already:
/// with both of rustls' providers compiled in (another crate may enable the other), rustls
/// cannot choose by itself, and clients that build their TLS configuration with the process
/// default fail.
#[cfg(feature = "tls")]
pub fn ensure_crypto_provider() {
    use rustls::crypto::{CryptoProvider, ring};
    if CryptoProvider::get_default().is_none() {
        // Lost a race with another thread installing one: that one is used, as wanted.
        let _ = ring::default_provider().install_default();
    }
}

/// What a part of a [`duplicate_key`] keeps as it is: everything but control characters, space,
/// `%` and the separator `:` (and every non-ASCII byte, which percent-encoding always encodes).
const KEY_PART: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b':');

/// The key a transport detects duplicates on: an event's source and id, which together identify
/// it (CloudEvents: "Producers MUST ensure that `source` + `id` is unique for each distinct
/// event"), so that two events with one id from two sources are never taken for one.
///
/// Both parts are percent-encoded (control characters, space, `%`, `:` and every non-ASCII
/// byte), then joined by `:`: no two pairs give one key, and the key is printable ASCII
/// without line breaks, fit for a NATS header or a Redis key. `("shop", "order-1")` is
/// `shop:order-1`; `("https://acme.com/shop", "7")` is `https%3A//acme.com/shop:7`.
pub fn duplicate_key(source: &str, id: &str) -> String {
    format!(
        "{}:{}",
        utf8_percent_encode(source, KEY_PART),
        utf8_percent_encode(id, KEY_PART)
    )
}

/// The counter of the duplicates the transports drop: [`count_duplicate`].
pub const DUPLICATES_DROPPED: &str = "bus_duplicates_dropped_total";

/// Counts a duplicate that transport `transport` dropped, in the counter
/// `bus_duplicates_dropped_total` ([`DUPLICATES_DROPPED`]) of the
/// [`metrics`](https://docs.rs/metrics) facade, when this crate's feature `metrics` is on
/// (without it, this does nothing). Labels:
/// `transport`, and `stage`: `publish` (the broker did not store a publish of a key it stored
/// within its duplicate window) or `receive` (a consumer dropped an event its group had
/// acknowledged), with `group` (the group, or the subscription outside any group) for the
/// latter; `group` is `None` for a publish. The transport logs the duplicate itself, at
/// `info`, with the event's name, id and source.
pub fn count_duplicate(transport: &str, group: Option<&str>) {
    #[cfg(feature = "metrics")]
    {
        // Described on every count, to whatever recorder is current then: duplicates are rare,
        // and a recorder installed late still gets the description.
        metrics::describe_counter!(
            DUPLICATES_DROPPED,
            "Duplicates a transport dropped (same source and id within its window), by stage: \
             publish or receive."
        );
        let transport = transport.to_owned();
        match group {
            Some(group) => metrics::counter!(
                DUPLICATES_DROPPED,
                "transport" => transport,
                "stage" => "receive",
                "group" => group.to_owned()
            )
            .increment(1),
            None => metrics::counter!(
                DUPLICATES_DROPPED,
                "transport" => transport,
                "stage" => "publish"
            )
            .increment(1),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (transport, group);
}

/// The event a message that does not decode stood for, as far as it can be read: a valid event
/// named `name` with the message's payload, its id and source when they are readable among its
/// `attributes` (header or field names, matched case-insensitively: `ce-id`, `ce-source`; their
/// values decoded as [`decode_header_value`](super::decode_header_value) says, or taken as they
/// are when they do not decode), else `fallback_id` and `fallback_source`. Its
/// [`dead_letter`](WireEvent::dead_letter) is what a transport stores when such a message is
/// rejected.
pub fn readable_event<'a>(
    fallback_source: &str,
    name: &str,
    attributes: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    data: Bytes,
    fallback_id: impl FnOnce() -> String,
) -> WireEvent {
    let find = |wanted: &str| {
        attributes
            .clone()
            .into_iter()
            .find(|(attribute, value)| attribute.eq_ignore_ascii_case(wanted) && !value.is_empty())
            .map(|(attribute, value)| {
                super::decode_header_value(attribute, value).unwrap_or_else(|_| value.to_owned())
            })
            .filter(|value| !value.is_empty())
    };
    let id = find("ce-id").unwrap_or_else(fallback_id);
    let source = find("ce-source").unwrap_or_else(|| fallback_source.to_owned());
    WireEvent::new(id, source, name, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readable_event_of_a_raw_message_keeps_what_it_can_read() {
        let attributes = [("CE-ID", "order%207"), ("ce-source", ""), ("x", "y")];
        let event = readable_event(
            "memory",
            "orders.placed",
            attributes,
            Bytes::from_static(b"{not json"),
            || "entry-1".to_owned(),
        );
        assert_eq!(event.id, "order 7", "decoded, to be encoded again once");
        assert_eq!(event.source, "memory", "an empty source is not a source");
        assert_eq!(event.ty, "orders.placed");
        assert_eq!(&event.data[..], b"{not json");
        let letter = event.dead_letter("billing", 3, "does not decode");
        assert_eq!(letter.id, "order 7.dead.billing");
        let undecodable = [("ce-id", "%C0%A0"), ("ce-source", "%22%22")];
        let event = readable_event("memory", "a.b", undecodable, Bytes::new(), String::new);
        assert_eq!(event.id, "%C0%A0", "kept as it is");
        assert_eq!(event.source, "\"\"");
        assert_eq!(letter.ty, "dead-letter.orders.placed");
        let unnamed = readable_event("memory", "a.b", [], Bytes::new(), || "seq-9".into());
        assert_eq!(unnamed.id, "seq-9");
    }

    #[test]
    fn duplicate_keys_are_readable() {
        assert_eq!(duplicate_key("shop", "order-1"), "shop:order-1");
        assert_eq!(
            duplicate_key("https://acme.com/shop", "7"),
            "https%3A//acme.com/shop:7"
        );
        assert_eq!(duplicate_key("a:b", "c"), "a%3Ab:c");
        assert_eq!(duplicate_key("a", "b:c"), "a:b%3Ac");
        assert_eq!(duplicate_key("50%", "x\r\ny é"), "50%25:x%0D%0Ay%20%C3%A9");
    }

    /// The parts back from a key: the key is injective if this inverts it.
    fn parts(key: &str) -> (String, String) {
        let (source, id) = key.split_once(':').expect("one separator");
        assert!(!id.contains(':'), "the separator is never in a part: {key}");
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .expect("UTF-8")
                .into_owned()
        };
        (decode(source), decode(id))
    }

    proptest::proptest! {
        #[test]
        fn duplicate_keys_are_unambiguous(source in ".*", id in ".*") {
            let key = duplicate_key(&source, &id);
            proptest::prop_assert_eq!(parts(&key), (source, id));
            proptest::prop_assert!(
                key.bytes().all(|byte| byte.is_ascii_graphic()),
                "printable ASCII, no space or line break: {}", key
            );
        }

        #[test]
        fn distinct_pairs_have_distinct_keys(
            a in ("[a:%]{0,4}", "[a:%]{0,4}"),
            b in ("[a:%]{0,4}", "[a:%]{0,4}"),
        ) {
            proptest::prop_assert_eq!(
                duplicate_key(&a.0, &a.1) == duplicate_key(&b.0, &b.1),
                a == b
            );
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn root_certificates_say_what_is_wrong() {
        let empty = RootCertificates::Pem(Vec::new()).load("nats").unwrap_err();
        assert!(empty.to_string().contains("no certificate"), "{empty}");
        let missing = RootCertificates::File("/nonexistent/ca.pem".into())
            .load("redis")
            .unwrap_err();
        assert!(
            missing.to_string().contains("cannot read the file"),
            "{missing}"
        );
        assert!(missing.to_string().starts_with("redis:"), "{missing}");
    }
}
