//! [`NatsDelivery`]: one JetStream message handed to a subscriber, and the dead letters.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use bus_core::transport::support::readable_event;
use bus_core::transport::{BoxFuture, Delivery, TransportError, WireEvent, decode_header_value};
use bytes::Bytes;
use tracing::Instrument;

use crate::connection::{Inner, Published};
use crate::error::NatsError;
use crate::names::{self, MSG_ID};
use crate::streams::Streams;

/// How long after a delivery was dropped unsettled it is delivered again. Not zero: a delivery
/// is often dropped together with its subscription, and this lets the server see that
/// subscription gone (it reads the unsubscribe first) before it redelivers, so the event goes
/// to a live subscriber.
pub(crate) const DROPPED_DELAY: Duration = Duration::from_millis(100);

/// What a delivery knows about the subscription it came from.
#[derive(Debug)]
pub(crate) struct Origin {
    /// The group as given, or `subscription-<consumer>` for a subscription outside any group:
    /// the [`DEAD_LETTER_GROUP`] of its dead letters.
    pub(crate) group: String,
    /// The consumer's name, for logs.
    pub(crate) consumer: String,
    /// The subscription's `max_deliveries`.
    pub(crate) max_deliveries: u32,
}

impl Origin {
    /// The origin of the deliveries of `consumer`, in `group` if any.
    pub(crate) fn new(group: Option<&str>, consumer: String, max_deliveries: u32) -> Origin {
        Origin {
            group: group.map_or_else(|| format!("subscription-{consumer}"), str::to_owned),
            consumer,
            max_deliveries,
        }
    }
}

/// One delivery of one event. Settled by `ack`, `nack` or `reject`; dropped unsettled, it is
/// nak'd by a spawned task, to be delivered again after [`DROPPED_DELAY`] (without a Tokio
/// runtime, the broker delivers it again after the ack wait).
pub(crate) struct NatsDelivery {
    pub(crate) inner: Arc<Inner>,
    pub(crate) origin: Arc<Origin>,
    pub(crate) subject: String,
    pub(crate) event: WireEvent,
    pub(crate) attempt: u32,
    /// `None` once settled.
    pub(crate) acker: Option<Acker>,
}

impl NatsDelivery {
    fn span(&self, what: &'static str) -> tracing::Span {
        tracing::debug_span!(
            "bus.nats.settle",
            what,
            subject = %self.subject,
            consumer = %self.origin.consumer,
            event_id = %self.event.id,
            attempt = self.attempt,
        )
    }

    /// Takes what settling needs, marking the delivery settled.
    fn take(mut self: Box<Self>) -> (Settle, Acker) {
        match self.take_parts() {
            Some(parts) => parts,
            // A delivery is only ever built with its acker, and is settled once: by value.
            None => (self.settle_parts(), Acker::new(self.inner.js.clone(), None)),
        }
    }

    /// What settling needs, if not settled yet; marks the delivery settled.
    fn take_parts(&mut self) -> Option<(Settle, Acker)> {
        let acker = self.acker.take()?;
        Some((self.settle_parts(), acker))
    }

    fn settle_parts(&mut self) -> Settle {
        Settle {
            inner: Arc::clone(&self.inner),
            origin: Arc::clone(&self.origin),
            subject: std::mem::take(&mut self.subject),
            event: std::mem::replace(&mut self.event, WireEvent::new("", "", "", Bytes::new())),
            attempt: self.attempt,
        }
    }
}

/// A delivery being settled.
struct Settle {
    inner: Arc<Inner>,
    origin: Arc<Origin>,
    subject: String,
    event: WireEvent,
    attempt: u32,
}

impl Settle {
    async fn send(&self, acker: &Acker, kind: AckKind) -> Result<(), TransportError> {
        let (what, sent) = match kind {
            AckKind::Ack if self.inner.config.ack_sync => ("ack", acker.double_ack().await),
            AckKind::Ack => ("ack", acker.ack().await),
            AckKind::Term => ("term", acker.ack_with(kind).await),
            _ => ("nak", acker.ack_with(kind).await),
        };
        sent.map_err(|error| {
            tracing::warn!(what, %error, "cannot settle the delivery");
            NatsError::Settle {
                subject: self.subject.clone(),
                what,
                detail: error.to_string(),
            }
            .broker()
        })
    }

    /// Hands an unsettled delivery back (`how`: why it was not settled): a nak, or on the last
    /// allowed delivery the dead letter, as after a last nack.
    async fn hand_back(&self, acker: &Acker, how: &str) -> Result<(), TransportError> {
        if self.attempt >= self.origin.max_deliveries {
            let reason = format!("{how} (after {} deliveries)", self.attempt);
            self.dead_letter(acker, &reason, DROPPED_DELAY).await
        } else {
            tracing::debug!("delivery {how}: nak");
            self.send(acker, AckKind::Nak(Some(DROPPED_DELAY))).await
        }
    }

    /// Dead-letters the event with `reason`, then terminates it; if the dead letter cannot be
    /// stored, naks it after `retry` instead, so that it is not lost.
    async fn dead_letter(
        &self,
        acker: &Acker,
        reason: &str,
        retry: Duration,
    ) -> Result<(), TransportError> {
        // The reason goes whole, line breaks and all: every header value is percent-encoded.
        let letter = self
            .event
            .dead_letter(&self.origin.group, self.attempt, reason);
        let headers = match names::event_headers(&letter) {
            Ok(headers) => headers,
            Err(bad) => {
                // Every attribute came in as a header; only a name we add could fail here.
                let detail = format!("header `{}`: {}", bad.name, bad.reason);
                return self
                    .dead_letter_failed(acker, &letter.ty, detail, retry)
                    .await;
            }
        };
        let dead_subject = self.inner.streams.subject(&letter.ty);
        let data = letter.data.clone();
        let published = Published::of(&letter);
        match store_dead_letter(&self.inner, &dead_subject, published, headers, data).await {
            Ok(()) => {
                tracing::warn!(
                    dead_letter = %dead_subject,
                    reason,
                    "event dead-lettered"
                );
                self.send(acker, AckKind::Term).await
            }
            Err(error) => {
                self.dead_letter_failed(acker, &letter.ty, error.to_string(), retry)
                    .await
            }
        }
    }

    async fn dead_letter_failed(
        &self,
        acker: &Acker,
        dead_letter: &str,
        detail: String,
        retry: Duration,
    ) -> Result<(), TransportError> {
        tracing::error!(%detail, "cannot store the dead letter; the event will be delivered again");
        let _ = self.send(acker, AckKind::Nak(Some(retry))).await;
        Err(NatsError::DeadLetter {
            subject: self.subject.clone(),
            dead_letter: dead_letter.to_owned(),
            deadline: self.inner.config.publish_deadline,
            detail,
        }
        .broker())
    }
}

/// Publishes a dead letter (its `Nats-Msg-Id`, made of its source and id, makes a second one
/// of the same event and group a duplicate), counting it in [`Inner::dead_lettered`].
pub(crate) async fn store_dead_letter(
    inner: &Inner,
    subject: &str,
    letter: Published<'_>,
    headers: HeaderMap,
    data: Bytes,
) -> Result<(), TransportError> {
    inner
        .publish_raw(subject, letter, || headers.clone(), data)
        .await?;
    inner
        .dead_lettered
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The dead letter of a message that does not decode (its payload is the message's).
#[derive(Debug)]
pub(crate) struct RawLetter {
    /// Where it goes: the subject of `<name>` in the dead letters' stream.
    pub(crate) subject: String,
    /// Its name, `dead-letter.<name>`.
    pub(crate) name: String,
    /// Its source: the message's `ce-source`, or `bus-nats`.
    pub(crate) source: String,
    /// Its id, `<original id>.dead.<group>`.
    pub(crate) id: String,
    pub(crate) headers: HeaderMap,
}

impl RawLetter {
    /// What it is, for the log of a duplicate.
    pub(crate) fn published(&self) -> Published<'_> {
        Published {
            name: &self.name,
            source: &self.source,
            id: &self.id,
        }
    }
}

/// The dead letter of a message that does not decode: its payload and every header (`ce-time`,
/// `content-type`, every extension, headers that are not CloudEvents attributes), but the
/// JetStream ones and those that make it a valid CloudEvent of type
/// `dead-letter.<subject without prefix>` (`ce-specversion`, `ce-id`, `ce-source`, `ce-type`),
/// with the four extensions and its own `Nats-Msg-Id` (its source and id).
///
/// The attributes it writes are those of the [`readable_event`]'s dead letter, encoded as
/// [`WireEvent::headers`] encodes; the message's other headers are kept as they were.
pub(crate) fn dead_letter_raw(
    streams: &Streams,
    message: &async_nats::Message,
    sequence: u64,
    group: &str,
    attempts: u32,
    reason: &str,
) -> RawLetter {
    let subject = message.subject.as_str();
    let rest = streams
        .name_of(subject)
        .unwrap_or_else(|| subject.to_owned());
    let rest = rest.as_str();
    let pairs = names::header_pairs(message.headers.as_ref());
    // Without a `ce-id`, the id JetStream deduplicated it on (as `event_headers` writes it,
    // encoded), else its stream sequence.
    let fallback_id = || {
        let message_id = pairs
            .iter()
            .find(|(header, value)| header.eq_ignore_ascii_case(MSG_ID) && !value.is_empty());
        message_id.map_or_else(
            || format!("seq-{sequence}"),
            |(header, id)| decode_header_value(header, id).unwrap_or_else(|_| (*id).to_owned()),
        )
    };
    let readable = readable_event(
        "bus-nats",
        rest,
        pairs.iter().copied(),
        Bytes::new(),
        fallback_id,
    );
    let letter = readable.dead_letter(group, attempts, reason);
    let ours = letter.headers();
    let mut headers = HeaderMap::new();
    if let Some(original) = &message.headers {
        for (header, values) in original.iter() {
            let lower = AsRef::<str>::as_ref(header).to_ascii_lowercase();
            if lower.starts_with("nats-") || ours.iter().any(|(name, _)| *name == lower) {
                continue;
            }
            for value in values {
                headers.append(header.clone(), value.clone());
            }
        }
    }
    for (header, value) in &ours {
        // Valid header names (the extensions' are ours), and printable ASCII values.
        let _ = names::insert(&mut headers, header, value);
    }
    let _ = names::insert(
        &mut headers,
        MSG_ID,
        &names::msg_id(&letter.source, &letter.id),
    );
    RawLetter {
        subject: streams.subject(&letter.ty),
        name: letter.ty,
        source: letter.source,
        id: letter.id,
        headers,
    }
}

impl Delivery for NatsDelivery {
    fn event(&self) -> &WireEvent {
        &self.event
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("ack");
        let (settle, acker) = self.take();
        Box::pin(async move { settle.send(&acker, AckKind::Ack).await }.instrument(span))
    }

    fn nack(
        self: Box<Self>,
        delay: Duration,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("nack");
        let (settle, acker) = self.take();
        Box::pin(
            async move {
                if settle.attempt >= settle.origin.max_deliveries {
                    let reason = format!("{reason} (after {} deliveries)", settle.attempt);
                    settle.dead_letter(&acker, &reason, delay).await
                } else {
                    tracing::debug!(?delay, reason, "nak");
                    settle.send(&acker, AckKind::Nak(Some(delay))).await
                }
            }
            .instrument(span),
        )
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("released");
        let (settle, acker) = self.take();
        Box::pin(
            async move { settle.hand_back(&acker, "released unsettled").await }.instrument(span),
        )
    }

    fn reject(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("reject");
        let (settle, acker) = self.take();
        Box::pin(
            async move {
                settle
                    .dead_letter(&acker, &reason, Duration::from_secs(1))
                    .await
            }
            .instrument(span),
        )
    }
}

impl Drop for NatsDelivery {
    fn drop(&mut self) {
        if self.acker.is_none() {
            // Settled already: nothing to hand back.
            return;
        }
        let span = self.span("dropped");
        let Some((settle, acker)) = self.take_parts() else {
            return;
        };
        let inner = Arc::clone(&settle.inner);
        inner.spawn_background(
            async move {
                let _ = settle.hand_back(&acker, "dropped unsettled").await;
            }
            .instrument(span),
        );
    }
}
