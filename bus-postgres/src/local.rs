//! Durable in-process events: [`LocalBus`] is the "transport" of a relay that delivers the
//! outbox's events to the listeners of an [`EventBus`] in this process, with no broker.

use std::collections::HashMap;
use std::sync::Arc;

use bus_core::transport::{
    BoxFuture, Capabilities, SubscribeOptions, Transport, TransportError, TransportSubscription,
    WireEvent,
};
use bus_core::{Emission, Event, EventBus};
use serde::de::DeserializeOwned;

/// Decodes the payload of a relayed event as the type registered for its name, and emits it.
type Decoder = fn(&EventBus, &WireEvent) -> Result<Emission, String>;

/// Delivers the events a [`Relay`](crate::Relay) reads from the outbox to the listeners of an
/// [`EventBus`] in this process: events emitted in a transaction, delivered after its commit,
/// and again after a crash until delivered, with no broker.
///
/// ```no_run
/// use std::sync::Arc;
/// use bus_postgres::{LocalBus, Outbox, Relay};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { order: i64 }
///
/// # async fn demo(pool: sqlx::PgPool, bus: bus_core::EventBus) -> Result<(), Box<dyn std::error::Error>> {
/// let local = LocalBus::new(bus.clone()).event_named::<OrderPlaced>("order.placed");
/// let relay = Relay::builder(pool.clone(), Arc::new(local)).start()?;
/// let mut tx = pool.begin().await?;
/// Outbox::new("shop").emit(&mut tx, "order.placed", &OrderPlaced { order: 42 }).await?;
/// tx.commit().await?; // the bus's listeners of `order.placed` get it now
/// # Ok(())
/// # }
/// ```
///
/// Each event is decoded from JSON as the type registered for its name
/// ([`event`](LocalBus::event), [`event_named`](LocalBus::event_named)) and emitted with
/// [`EventBus::try_emit_received`]: its listeners see the event's id, source (the outbox's
/// service), time and causation as they were written. The publish resolves once the
/// emission's report is in, so the relay marks the row only after every listener ran; a
/// listener that failed is reported by the bus as for any emit, and the row is marked all the
/// same (retries are the listener's [`Policy`](bus_core::Policy)). After a crash before the
/// report, the event is delivered again: make listeners idempotent ([`Inbox`](crate::Inbox)).
///
/// An event whose name has no registered type, whose payload does not decode, or that the bus
/// refuses (shut down, full, a listener of another type) is a failed publish: logged and
/// retried with backoff, never marked.
#[derive(Clone)]
pub struct LocalBus {
    bus: EventBus,
    decoders: Arc<HashMap<String, Decoder>>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("events", &self.decoders.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl LocalBus {
    /// Delivers to the listeners of `bus`; register the event types with
    /// [`event`](LocalBus::event) or [`event_named`](LocalBus::event_named).
    pub fn new(bus: EventBus) -> Self {
        LocalBus {
            bus,
            decoders: Arc::new(HashMap::new()),
        }
    }

    /// Decodes the events named [`E::NAME`](Event::NAME) as `E`.
    #[must_use]
    pub fn event<E>(self) -> Self
    where
        E: Event + DeserializeOwned,
    {
        self.event_named::<E>(E::NAME)
    }

    /// Decodes the events named `name` as `E`.
    #[must_use]
    pub fn event_named<E>(mut self, name: &str) -> Self
    where
        E: DeserializeOwned + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.decoders).insert(name.to_owned(), decode::<E>);
        self
    }

    fn refused(wire: &WireEvent, reason: String) -> TransportError {
        TransportError::Invalid {
            transport: "local".to_owned(),
            what: "event",
            value: wire.ty.clone(),
            reason,
        }
    }
}

/// The payload of `wire` as an `E`, emitted on `bus` with the attributes of `wire`.
fn decode<E>(bus: &EventBus, wire: &WireEvent) -> Result<Emission, String>
where
    E: DeserializeOwned + Send + Sync + 'static,
{
    if let Some(content_type) = wire.datacontenttype.as_deref()
        && !content_type.to_ascii_lowercase().contains("json")
    {
        return Err(format!(
            "its payload is `{content_type}`, not JSON: it does not decode as `{}`",
            std::any::type_name::<E>()
        ));
    }
    let event: E = serde_json::from_slice(&wire.data).map_err(|error| {
        format!(
            "its payload does not decode as `{}`: {error}",
            std::any::type_name::<E>()
        )
    })?;
    bus.try_emit_received(wire, event)
        .map_err(|error| error.error().to_string())
}

impl Transport for LocalBus {
    fn name(&self) -> &str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let Some(decode) = self.decoders.get(&event.ty) else {
                return Err(LocalBus::refused(
                    &event,
                    "no type is registered for this name: add it with `LocalBus::event`".into(),
                ));
            };
            let emission =
                decode(&self.bus, &event).map_err(|reason| LocalBus::refused(&event, reason))?;
            let report = emission.await;
            if !report.is_ok() {
                tracing::warn!(
                    event = %event.ty, id = %event.id, ?report,
                    "a relayed event failed in a listener; its row is marked all the same"
                );
            }
            Ok(())
        })
    }

    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        Box::pin(async move {
            Err(TransportError::Invalid {
                transport: "local".to_owned(),
                what: "pattern",
                value: options.pattern,
                reason: "`LocalBus` only delivers what a relay publishes; subscribe on the bus"
                    .to_owned(),
            })
        })
    }
}
