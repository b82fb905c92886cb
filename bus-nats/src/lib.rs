//! The NATS JetStream transport of the `bus` event bus: [`NatsTransport`] implements
//! [`bus_core::transport::Transport`] with the semantics of the in-process
//! [`MemoryTransport`](bus_core::transport::MemoryTransport), on a JetStream stream.
//!
//! ```no_run
//! use bus_core::transport::{SubscribeOptions, Transport, WireEvent};
//! use bus_nats::NatsTransport;
//! use futures_util::StreamExt;
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), bus_core::transport::TransportError> {
//! let nats = NatsTransport::builder("nats://127.0.0.1:4222")
//!     .subject_prefix("bus")                       // events live under `bus.>`
//!     .publish_deadline(Duration::from_secs(10))   // retry through a broker restart
//!     .connect()
//!     .await?;
//! let mut billing = nats
//!     .subscribe(SubscribeOptions::new("orders.*").group("billing").max_deliveries(5))
//!     .await?;
//! nats.publish(WireEvent::new("order-1", "shop", "orders.created", "{}")).await?; // stored
//! while let Some(delivery) = billing.next().await {
//!     let delivery = delivery?;
//!     match delivery.attempt() {
//!         1 => delivery.nack(Duration::from_millis(100), "try again".into()).await?,
//!         _ => delivery.ack().await?,
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Mapping
//!
//! | bus | NATS JetStream |
//! |---|---|
//! | event name `a.b.c` | subject `<prefix>.a.b.c`, in the events' stream (`<STREAM>`) capturing `<prefix>.>` |
//! | pattern `a.*`, `a.>` | consumer filter `<prefix>.a.*`, `<prefix>.a.>` |
//! | pattern `>`, `*.…` (dead letters match too) | one consumer on each stream, merged in one subscription |
//! | [`WireEvent`](bus_core::transport::WireEvent) attributes | CloudEvents binary-mode headers (`ce-id`, `ce-type`, ...), percent-encoded, and `Nats-Msg-Id` = `<source>:<id>` (both percent-encoded): see [Headers](#headers) |
//! | publish resolved | PubAck received: the event is stored |
//! | duplicate (same source and id) | dropped by the stream within its duplicate window (2 min by default): the PubAck says `duplicate`, the publish is `Ok`, counted ([`NatsTransport::duplicates_dropped`], `bus_duplicates_dropped_total`) and logged at `info`; the same id from another source is another event |
//! | group `g` | durable pull consumer [`NatsTransport::consumer_name`]`(g)`, explicit acks, `inactive_threshold` [30 days](NatsTransportBuilder::inactive_threshold) |
//! | no group | ephemeral pull consumer, deleted with the subscription |
//! | `max_deliveries` n | `max_deliver` n + 1: see below |
//! | `ack_wait` | `ack_wait` |
//! | `attempt()` | the message's delivery count |
//! | `ack` / `nack(d)` / `reject` | `+ACK` / `-NAK` with delay `d` / dead letter then `+TERM` |
//! | dead letter `dead-letter.<name>` | subject `<prefix>-dead-letter.<name>` in the dead letters' stream (`<STREAM>_DEAD_LETTERS`), id `<id>.dead.<group>` |
//! | [`Retention`] of events ([`retention`](NatsTransportBuilder::retention)) | limits of a new events' stream: `MaxAge` → `max_age`, `MaxLen` → `max_msgs`, `MaxBytes` → `max_bytes`; default `MaxAge(7 days)` |
//! | [`Retention`] of dead letters ([`dead_letter_retention`](NatsTransportBuilder::dead_letter_retention)) | limits of a new dead letters' stream; default `MaxAge(30 days)` |
//! | [`replicas`](NatsTransportBuilder::replicas) | `num_replicas` of a new stream; default 1 |
//! | existing stream | keeps its limits and replicas (logged at `info` when they differ); its subjects and duplicate window are brought to the transport's |
//! | pull requests | one message at a time, asked for when the subscription is polled ([`fetch_batch`](NatsTransportBuilder::fetch_batch)) |
//! | `Transport::groups` | the durable consumers of both streams: group and pattern from the consumer's description, lag `num_pending`, pending `num_ack_pending`, consumers `num_waiting` (the pull requests waiting) |
//! | `Transport::dead_letters` | the dead letters' stream under the pattern's filter, read from its first message by an ephemeral consumer without acks (deleted after); position: the stream sequence |
//! | `Transport::delete_dead_letters` | `STREAM.MSG.DELETE` of each letter's sequence, once the message there is checked to be that letter (its `ce-id`) |
//!
//! **Groups.** A new group starts with the events published after it was created; an existing
//! group resumes where it stood, even across restarts of its services. Subscribing to an
//! existing group with another pattern is [`TransportError::Invalid`](bus_core::transport::TransportError::Invalid);
//! a different `ack_wait` or `max_deliveries` updates the group.
//!
//! **Retention.** Each stream is limited by its own settings: events past a limit are deleted
//! (oldest first, `discard: old`) whether or not every group has read them, and a group behind
//! resumes at the oldest event left; size the limits well above what a group may fall behind.
//! Dead letters live in a stream of their own so that they can outlive the events (default 30
//! days against 7): JetStream applies one set of limits to a whole stream, and a stream's
//! subjects cannot leave dead letters out of `<prefix>.>`, hence the subject root
//! `<prefix>-dead-letter` beside `<prefix>`. The limits are applied to a stream the transport
//! creates; a stream that exists keeps its own, so `nats stream edit` is how an operator
//! changes them later. An events' stream made by an earlier bus-nats, which already holds dead
//! letters under `<prefix>.dead-letter.>`, keeps them and receives the new ones there too (no
//! dead letters' stream, [`NatsTransport::dead_letter_stream_name`] is `None`, logged at `info`);
//! replaying or purging them, then restarting every process, moves the deployment to a dead
//! letters' stream. A group's durable consumer that nobody pulls from for its
//! [`inactive_threshold`](NatsTransportBuilder::inactive_threshold) (30 days) is deleted by the
//! server, so a renamed or retired group leaves nothing behind; a group whose consumer expired
//! starts again as a new group, with the events published after its next subscription.
//!
//! **The last delivery.** When a group's last allowed delivery (`max_deliveries`) fails in any
//! way, the event is dead-lettered, as by the memory transport: nacked (reason `<reason> (after
//! n deliveries)`), rejected, dropped unsettled (`dropped unsettled (after n deliveries)`), or
//! not settled within the ack wait. For the last case JetStream is given one spare delivery
//! (`max_deliver` = `max_deliveries` + 1): the subscription that receives it dead-letters the
//! event (`not settled within the ack wait (after n deliveries)`) instead of handing it out, so
//! no event is left unnoticed in the stream. A dead letter is the event under
//! `dead-letter.<name>`, with the id `<id>.dead.<group>` and the extensions `deadletterof`
//! (the original id), `deadletterreason`, `deadlettergroup` (the group as given, or
//! `subscription-<consumer>` outside any group) and `deadletterattempts`.
//!
//! **Messages that do not decode** (no CloudEvents headers, a missing or empty attribute, a
//! value that does not percent-decode, an invalid name, a payload over [`max_payload`](NatsTransportBuilder::max_payload), a type that
//! is not its subject) are dead-lettered by the subscription itself, with the decoding error as
//! the reason, keeping their payload and every header (`ce-time`, `content-type`, every
//! extension, headers that are not CloudEvents attributes; not the JetStream `Nats-*` ones),
//! but the four that make the dead letter a CloudEvent (`ce-specversion`, `ce-id`,
//! `ce-source`, `ce-type`) and the dead-letter extensions, logged at `warn`; the subscription
//! goes on and never yields them. A defect that lies in a header kept (an invalid extension
//! name, too many headers) stays in the dead letter, which then does not decode either: read
//! it raw from the stream. A dead letter that does not decode is terminated, not
//! dead-lettered again.
//!
//! **Closing.** A delivery dropped unsettled is nak'd by a spawned task and delivered again
//! 100 ms later (or dead-lettered, on its last allowed delivery). Dropping a subscription
//! naks the messages it had received but not handed out, and keeps its inbox for up to a
//! second while its open pull requests are answered, nak'ing what they bring, before it
//! unsubscribes; a message the server sends to a subscription after that is delivered again by
//! JetStream after its ack wait. Dropping the last handle of a connection flushes it first, so
//! the acks it sent are not lost. `Delivery::release` (what the bus's shutdown does with a
//! delivery it aborted) naks as a drop does, in a future it awaits; `Transport::flush` waits for
//! the naks of dropped deliveries and subscriptions and flushes the connection, so a process
//! that exits after the bus's `shutdown` leaves nothing for the ack wait.
//!
//! **Throughput.** A subscription asks for one message per round trip by default, so that it
//! never holds messages it has not handed out (they would count a delivery when it closes).
//! `fetch_batch(64)` is an order of magnitude faster for a busy subscriber (on one machine:
//! about 7,000 deliveries per second and subscription at 1, about 100,000 at 64), at that
//! cost.
//!
//! **Reconnects** are automatic and never give up; a publish made meanwhile is retried (with
//! the same `Nats-Msg-Id`, so it is stored once) until the publish deadline; subscriptions
//! resume by themselves and only yield an error for what reconnecting does not cure.
//!
//! # Headers
//!
//! An event is a CloudEvent 1.0 in binary mode, as the CloudEvents NATS protocol binding says
//! (§3.1.3): the payload is the message's body, and each attribute a header of its own.
//!
//! | attribute | NATS header | value |
//! |---|---|---|
//! | `specversion` | `ce-specversion` | `1.0` |
//! | `id` | `ce-id` | the event id |
//! | `source` | `ce-source` | the service name of the bus that emitted it |
//! | `type` | `ce-type` | the event name: the subject, without the prefix |
//! | `time` | `ce-time` | when it was emitted, RFC 3339 |
//! | `datacontenttype` | `ce-datacontenttype` (read: also `content-type`) | `application/json` for a bus's events |
//! | extension `x` | `ce-x` | `ce-causationid`; a dead letter's `ce-deadletterof`, `ce-deadletterreason`, `ce-deadlettergroup`, `ce-deadletterattempts` |
//! | (none: deduplication) | `Nats-Msg-Id` | the id, encoded as in `ce-id` |
//!
//! **Values** are percent-encoded (§3.1.3.2): space, `"`, `%`, control characters and every
//! character outside printable ASCII become `%XX` for each byte of their UTF-8, in upper-case
//! hex. A service named `a b é` is `ce-source: a%20b%20%C3%A9`; a dead letter's reason
//! `ce-deadletterreason: the%20payload%20of%20...`. Read back, a value in double quotes is
//! unquoted first (RFC 7230, backslash escapes), then percent-decoded once: lower-case hex and
//! needless encodings are accepted, and a value another producer wrote unencoded reads as it
//! is; bytes that are not UTF-8 (`%C0%A0`) make the message one that does not decode (see
//! above), the reason naming the header. Header names are case-insensitive.
//!
//! **The content type** is read from `ce-datacontenttype`, else from an HTTP-style
//! `content-type` header (other SDKs, and earlier versions of this crate, write that one), taken
//! as it is. A bus listener reads JSON only: no content type, `application/json` (any
//! parameters, any case) or `application/<x>+json`. An event of another content type
//! (`text/plain`, `application/xml`) is dead-lettered without being decoded, with a reason
//! naming its content type and what the listener decodes.
//!
//! # Credentials and TLS
//!
//! Credentials travel in the URL: `nats://user:password@host:4222` or `nats://token@host:4222`
//! (the servers of a list share them). The transport hands them to the client apart from the
//! servers' addresses, and shows the URL only with them masked (`nats://user:***@host:4222`):
//! in its errors, its logs and its `Debug`. Credentials the server refuses are
//! [`NatsError::Auth`], under a [`TransportError::Broker`](bus_core::transport::TransportError::Broker).
//!
//! TLS (rustls) is used when the server asks for it, with a `tls://` URL, or with
//! [`require_tls`](NatsTransportBuilder::require_tls); a server certificate signed by a CA of
//! your own is trusted with [`tls_root_certificates`](NatsTransportBuilder::tls_root_certificates).
//! A failed handshake (a certificate not trusted, say) is [`NatsError::Tls`], also a broker
//! error: it fails the connect at once, it is not retried.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bus_core::transport::TransportError> {
//! let nats = bus_nats::NatsTransport::builder("tls://alice:s3cret@nats.internal:4222")
//!     .tls_root_certificates("/etc/bus/ca.pem")
//!     .connect()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Logs
//!
//! Spans: `bus.nats.connect` (url, stream), `bus.nats.publish` (subject, event id),
//! `bus.nats.subscription` (subject, consumer, group), `bus.nats.settle` (subject, consumer,
//! event id, attempt), `bus.nats.group_stats` (group), `bus.nats.groups`,
//! `bus.nats.dead_letters` (events), `bus.nats.delete_dead_letters` (letters).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admin;
mod connection;
mod delivery;
mod error;
mod names;
mod servers;
mod streams;
mod subscription;
mod transport;

pub use crate::error::NatsError;
pub use crate::subscription::EPHEMERAL_INACTIVE_THRESHOLD;
pub use crate::transport::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEAD_LETTER_RETENTION, DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_FETCH_BATCH, DEFAULT_INACTIVE_THRESHOLD, DEFAULT_PUBLISH_DEADLINE, DEFAULT_REPLICAS,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETENTION, DEFAULT_SUBJECT_PREFIX, NatsTransport,
    NatsTransportBuilder,
};
/// The limits of the streams: [`NatsTransportBuilder::retention`] and
/// [`NatsTransportBuilder::dead_letter_retention`] (the type `bus-redis` takes too).
pub use bus_core::transport::Retention;

/// The client library, re-exported for the escape hatches [`NatsTransport::client`] and
/// [`NatsTransport::jetstream`].
pub use async_nats;
