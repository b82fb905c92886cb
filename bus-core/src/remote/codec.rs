//! How an event's payload crosses the wire: JSON through serde, for the types that implement
//! `Serialize` and `Deserialize`.
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
    encode: fn(&(dyn Any + Send + Sync)) -> Result<Vec<u8>, String>,
    decode: fn(&[u8]) -> Result<ErasedEvent, String>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("type", &self.type_name)
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
            encode: encode_json::<E>,
            decode: decode_json::<E>,
        }
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
}
