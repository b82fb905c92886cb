//! How an event's payload crosses the wire: JSON through serde, for the types that implement
//! `Serialize` and `Deserialize`.
//!
//! A codec reads only the payloads whose `datacontenttype` is its media type
//! ([`Codec::accepts`]): a `text/plain` or XML payload is not decoded as JSON.
//!
//! A type travels only when it says so: the bus finds a type's codec by its `TypeId` in a
//! table built from the codecs that `#[derive(bus::Event)]` submits through `inventory` for a
//! type marked `#[event(.., distributed)]`, and from the types named by
//! [`EventBusBuilder::distributed`](crate::EventBusBuilder::distributed).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::ErasedEvent;

/// The media type of every payload a codec writes.
pub const JSON: &str = "application/json";

/// Encodes and decodes the payloads of one event type, as JSON.
#[derive(Clone, Copy)]
pub struct Codec {
    type_id: fn() -> TypeId,
    type_name: &'static str,
    media_type: &'static str,
    encode: fn(&(dyn Any + Send + Sync)) -> Result<Vec<u8>, String>,
    decode: fn(&[u8]) -> Result<ErasedEvent, String>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("type", &self.type_name)
            .field("media_type", &self.media_type)
            .finish_non_exhaustive()
    }
}

impl Codec {
    /// The JSON codec of `E`.
    pub fn json<E>() -> Codec
    where
        E: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        Codec {
            type_id: TypeId::of::<E>,
            type_name: std::any::type_name::<E>(),
            media_type: JSON,
            encode: encode_json::<E>,
            decode: decode_json::<E>,
        }
    }

    /// The media type this codec writes and reads: [`JSON`] (`application/json`).
    pub fn media_type(&self) -> &'static str {
        self.media_type
    }

    /// Whether this codec reads a payload whose `datacontenttype` is `content_type`:
    ///
    /// - no content type: yes, the payload is taken for JSON;
    /// - the codec's [`media_type`](Codec::media_type), in any case, with optional whitespace
    ///   around its parts (RFC 2045) and any parameters: `application/json`,
    ///   `Application/JSON; charset=utf-8`;
    /// - a structured-syntax suffix of it (RFC 6839): `application/<x>+json`, such as
    ///   `application/cloudevents+json`;
    /// - anything else, another media type (`text/plain`, `application/xml`) or text that is
    ///   no media type: no.
    ///
    /// Parameters are not looked at: JSON is UTF-8.
    pub fn accepts(&self, content_type: Option<&str>) -> bool {
        let Some(content_type) = content_type else {
            return true;
        };
        let (Some(theirs), Some(ours)) = (essence(content_type), essence(self.media_type)) else {
            return false;
        };
        theirs.0.eq_ignore_ascii_case(ours.0)
            && (theirs.1.eq_ignore_ascii_case(ours.1)
                || theirs.1.rsplit_once('+').is_some_and(|(base, suffix)| {
                    !base.is_empty() && suffix.eq_ignore_ascii_case(ours.1)
                }))
    }

    /// The type this codec encodes.
    pub(crate) fn type_id(&self) -> TypeId {
        (self.type_id)()
    }

    /// The name of the type this codec encodes.
    pub(crate) fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// `event` as JSON. Fails when serde does (a map with non-string keys, a failing
    /// `Serialize` impl), with serde's message.
    pub(crate) fn encode(&self, event: &(dyn Any + Send + Sync)) -> Result<Vec<u8>, String> {
        (self.encode)(event)
    }

    /// The event `bytes` encode. Fails on anything but the JSON of this codec's type, with
    /// serde's message (which says where).
    pub(crate) fn decode(&self, bytes: &[u8]) -> Result<ErasedEvent, String> {
        (self.decode)(bytes)
    }
}

/// The type and subtype of media type `media_type` (RFC 2045 §5.1: `type "/" subtype *(";"
/// parameter)`, with optional whitespace around the parts), as written; `None` when it is not a
/// media type. The parameters are left out, unread.
fn essence(media_type: &str) -> Option<(&str, &str)> {
    let essence = media_type.split(';').next().unwrap_or_default();
    let (ty, subtype) = essence.split_once('/')?;
    let space = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    let (ty, subtype) = (ty.trim_matches(space), subtype.trim_matches(space));
    (is_token(ty) && is_token(subtype)).then_some((ty, subtype))
}

/// An RFC 2045 token: one or more printable ASCII characters but the `tspecials`.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&byte))
}

fn encode_json<E: Serialize + 'static>(event: &(dyn Any + Send + Sync)) -> Result<Vec<u8>, String> {
    let event = event.downcast_ref::<E>().ok_or_else(|| {
        format!(
            "the codec of `{}` was given another type",
            std::any::type_name::<E>()
        )
    })?;
    serde_json::to_vec(event).map_err(|error| error.to_string())
}

fn decode_json<E: DeserializeOwned + Send + Sync + 'static>(
    bytes: &[u8],
) -> Result<ErasedEvent, String> {
    let event: E = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
    Ok(Arc::new(event))
}

/// A codec submitted at link time by `#[derive(bus::Event)]` with `#[event(.., distributed)]`.
#[doc(hidden)]
#[derive(Debug)]
pub struct CodecEntry(fn() -> Codec);

impl CodecEntry {
    #[doc(hidden)]
    pub const fn new(codec: fn() -> Codec) -> Self {
        CodecEntry(codec)
    }
}

inventory::collect!(CodecEntry);

/// What a type needs to travel through a broker: JSON both ways, and to be shared.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is `distributed`, but cannot travel as JSON",
    label = "`{Self}` must implement `serde::Serialize` and `serde::Deserialize`",
    note = "derive them: `#[derive(serde::Serialize, serde::Deserialize, bus::Event)]`, or \
            remove `distributed` to keep the event in process"
)]
#[doc(hidden)]
pub trait Distributable: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Distributable for T {}

/// The codec of a type marked `distributed`: what the derive submits. A type that is not
/// serde is reported at the `distributed` flag.
#[doc(hidden)]
pub fn distributed_codec<T: Distributable>() -> Codec {
    Codec::json::<T>()
}

/// The codecs of one bus, by type.
#[derive(Clone, Default)]
pub(crate) struct Codecs(Arc<HashMap<TypeId, Codec>>);

impl Codecs {
    /// The codecs that `#[derive(bus::Event)]` submitted at link time, and `extra`.
    pub(crate) fn linked_and(extra: &[Codec]) -> Codecs {
        static LINKED: LazyLock<Vec<Codec>> = LazyLock::new(|| {
            inventory::iter::<CodecEntry>()
                .map(|entry| (entry.0)())
                .collect()
        });
        let map = LINKED
            .iter()
            .chain(extra)
            .map(|codec| (codec.type_id(), *codec))
            .collect();
        Codecs(Arc::new(map))
    }

    /// The names of the types that travel, sorted.
    pub(crate) fn type_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.0.values().map(Codec::type_name).collect();
        names.sort_unstable();
        names
    }

    /// The codec of the type `type_id`, if it has one.
    pub(crate) fn get(&self, type_id: TypeId) -> Option<&Codec> {
        self.0.get(&type_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_bad_ones_say_why() {
        let codec = Codec::json::<Vec<u32>>();
        let bytes = codec.encode(&vec![1_u32, 2]).unwrap();
        assert_eq!(bytes, b"[1,2]");
        let decoded = codec.decode(&bytes).unwrap();
        assert_eq!(decoded.downcast_ref::<Vec<u32>>(), Some(&vec![1, 2]));
        let error = codec.decode(b"[1,").unwrap_err();
        assert!(error.contains("EOF"), "{error}");
        assert!(codec.decode(br#"{"a":1}"#).is_err());
        assert!(codec.encode(&"not a vec").is_err());
    }

    #[test]
    fn a_json_codec_reads_json_media_types_only() {
        let codec = Codec::json::<Vec<u32>>();
        assert_eq!(codec.media_type(), "application/json");
        for json in [
            None,
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("application/json;charset=UTF-8"),
            Some("Application/JSON"),
            Some(" application / json ; charset=utf-8"),
            Some("\tapplication/json\t"),
            Some("application/cloudevents+json"),
            Some("application/vnd.api+JSON; ext=x"),
            Some("application/a+b+json"),
        ] {
            assert!(codec.accepts(json), "{json:?}");
        }
        for other in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/xml",
            "application/octet-stream",
            "text/json",
            "application/jsonx",
            "application/json+xml",
            "application/+json",
            "application/x-json",
            "json",
            "",
            " ",
            "application/",
            "/json",
            "application/js on",
            "application/json/x",
            "app(lication)/json",
            "applicätion/json",
        ] {
            assert!(!codec.accepts(Some(other)), "{other:?}");
        }
    }

    mod media_types {
        use super::*;
        use proptest::prelude::*;

        /// RFC 2045 token characters.
        const TOKEN: &str = "[!#$%&'*+.0-9A-Z^_`a-z{|}~-]{1,12}";
        /// Optional whitespace.
        const SPACE: &str = "[ \t]{0,2}";

        proptest! {
            #[test]
            fn never_panics(text in any::<String>()) {
                let _ = Codec::json::<u8>().accepts(Some(&text));
            }

            #[test]
            fn json_is_told_by_type_and_subtype_whatever_the_case_spaces_and_parameters(
                ty in TOKEN,
                subtype in TOKEN,
                spaces in proptest::collection::vec(SPACE, 4),
                parameters in proptest::collection::vec((TOKEN, "[ -:<-~]{0,12}"), 0..3),
            ) {
                let mut text = format!(
                    "{}{ty}{}/{}{subtype}{}",
                    spaces[0], spaces[1], spaces[2], spaces[3]
                );
                for (name, value) in &parameters {
                    text.push_str(&format!("; {name}={value}"));
                }
                let (ty, subtype) = (ty.to_ascii_lowercase(), subtype.to_ascii_lowercase());
                let expected = ty == "application"
                    && (subtype == "json"
                        || (subtype.ends_with("+json") && subtype.len() > "+json".len()));
                prop_assert_eq!(Codec::json::<u8>().accepts(Some(&text)), expected, "{}", text);
            }

            #[test]
            fn json_in_any_case_is_json(mask in any::<u32>(), suffixed in any::<bool>()) {
                let plain = if suffixed { "application/cloudevents+json" } else { "application/json" };
                let text: String = plain
                    .chars()
                    .enumerate()
                    .map(|(n, c)| if mask >> (n % 32) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                    .collect();
                prop_assert!(Codec::json::<u8>().accepts(Some(&text)), "{}", text);
            }

            #[test]
            fn text_without_a_slash_is_no_media_type(text in "[^/]*") {
                prop_assert!(!Codec::json::<u8>().accepts(Some(&text)));
            }
        }
    }
}
