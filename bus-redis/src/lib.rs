//! The Redis Streams transport of the `bus` event bus: [`RedisTransport`] implements
//! [`bus_core::transport::Transport`] with the semantics of the in-process
//! [`MemoryTransport`](bus_core::transport::MemoryTransport), on Redis Streams (Redis 7 or
//! later: it uses `XAUTOCLAIM`'s list of deleted entries).
//!
//! ```no_run
//! use bus_core::transport::{SubscribeOptions, Transport, WireEvent};
//! use bus_redis::{RedisTransport, Retention};
//! use futures_util::StreamExt;
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), bus_core::transport::TransportError> {
//! let redis = RedisTransport::builder("redis://127.0.0.1:6379")
//!     .key_prefix("bus")                                    // streams are `bus:stream:<name>`
//!     .retention(Retention::MaxAge(Duration::from_secs(24 * 3600)))
//!     .claim_interval(Duration::from_secs(1))              // XAUTOCLAIM once a second
//!     .publish_deadline(Duration::from_secs(10))           // retry through a Redis restart
//!     .connect()
//!     .await?;
//! let mut billing = redis
//!     .subscribe(SubscribeOptions::new("orders.*").group("billing").max_deliveries(5))
//!     .await?;
//! redis.publish(WireEvent::new("order-1", "shop", "orders.created", "{}")).await?; // stored
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
//! | bus | Redis |
//! |---|---|
//! | event name `a.b.c` | stream `<prefix>:stream:a.b.c` |
//! | pattern `a.*`, `a.>` | every stream whose name matches, read together: found at subscribe time (`SCAN`, and the set `<prefix>:names`) and later in the stream `<prefix>:names:log`, which a publish appends a name to the first time it is used (a publish registers its name again every 10 s, so that a flushed registry is rebuilt) |
//! | [`WireEvent`](bus_core::transport::WireEvent) attributes | stream fields named and encoded as the CloudEvents NATS binding's headers (`ce-id`, `ce-type`, `ce-datacontenttype`, ...), payload in field `data`: see [Fields](#fields) |
//! | publish resolved | the `XADD` replied: stored (as durable as the server's persistence: with `appendonly yes` and `appendfsync always`, a reply means the event is in the append-only file; with the default `everysec`, a crash or kill can lose up to two seconds of acknowledged events) |
//! | retention | `XADD ... MAXLEN ~ n` or `MINID ~ <now - age>` ([`Retention`]) |
//! | duplicate (same source and id) | the consumer drops an event (source and id) its group acknowledged through this transport within the [`acked_window`](RedisTransportBuilder::acked_window); with a [`duplicate_window`](RedisTransportBuilder::duplicate_window) (off by default), `SET <prefix>:dedup:<source>:<id> NX PX <window>` (both percent-encoded) and the `XADD` in one Lua script: a second publish within the window is not stored. Either way counted ([`RedisTransport::duplicates_dropped`], `bus_duplicates_dropped_total`) and logged at `info`; the same id from another source is another event |
//! | group `g` | consumer group `g` on each matching stream, created from the group's first subscribe (record `<prefix>:group:g`) |
//! | no group | `XREAD` from the moment of the subscribe, with the bookkeeping of redeliveries in the subscription |
//! | group instance | consumer `<instance>-<n>` ([`instance_name`](RedisTransportBuilder::instance_name)) |
//! | `max_deliveries` | the delivery count of the pending list, checked by the consumer |
//! | `ack_wait` | the idle time after which `XAUTOCLAIM` takes an entry over |
//! | `attempt()` | the entry's delivery count in the pending list (1 for a first read) |
//! | `ack` / `nack(d)` / `reject` | `XACK` / claimed back by the same consumer after `d` / dead letter then `XACK` |
//! | dead letter | `dead-letter.<name>` under the same prefix, id `<id>.dead.<group>` |
//! | `Transport::groups` | the group records (`SCAN MATCH <prefix>:group:*`), each with the stats of `group_stats` and as consumers the most it has on one of its streams (`XINFO GROUPS`) |
//! | `Transport::dead_letters` | `XRANGE` of the streams `dead-letter.<name>` the pattern matches, oldest first; position: the entry id |
//! | `Transport::delete_dead_letters` | one script per stream: `XACK` in every group of the stream, then `XDEL`, of the entries whose `ce-id` is the letter's |
//!
//! **Groups.** A new group starts with the events published after its first subscription
//! (Redis's clock); an existing group resumes where it stood. Subscribing to an existing group
//! with another pattern is [`TransportError::Invalid`](bus_core::transport::TransportError::Invalid).
//! Every subscription of a group is a consumer of its own, named after the transport's
//! instance, and reads on a connection of its own (`XREADGROUP ... BLOCK`; the shared
//! multiplexed connection, with its short response timeout, never carries a blocking read).
//! On start, and after its connection broke, a consumer first re-reads the entries pending on
//! itself (`XREADGROUP ... 0`): with a stable instance name, what a crashed instance held is
//! taken up again by its next life at once. Every
//! [`claim_interval`](RedisTransportBuilder::claim_interval), a consumer takes over with
//! `XAUTOCLAIM` the entries pending longer than its `ack_wait` on any consumer of the group
//! (dead, hung, or itself). A subscription that closes hands its pending entries back
//! (`XCLAIM ... IDLE <30 days> JUSTID`: claimable by the next `XAUTOCLAIM` of any member, no
//! delivery counted), then removes its consumer when nothing is left pending on it.
//!
//! **Settling.** `ack` is `XACK`, retried through reconnects until the publish deadline (an
//! `XACK` is idempotent). `nack(delay)` keeps the entry pending on the consumer, which claims it
//! back (`XCLAIM`, counting a delivery) once the delay is over: no busy loop, and a delay
//! longer than the `ack_wait` is cut short by the claims of the group. A delivery dropped
//! unsettled is handed back to the group at once (in the background), one released
//! (`Delivery::release`, what the bus's shutdown does with a delivery it aborted) too, in a
//! future it awaits; `Transport::flush` waits for the background hand-backs of dropped
//! deliveries and closed subscriptions. On the last allowed delivery
//! (`max_deliveries`), a nack, a reject or a drop dead-letters the event, then acks it; an entry
//! whose delivery count is past `max_deliveries` (its last delivery was never settled: the
//! consumer died, or the ack wait passed) is dead-lettered by the consumer that claims it,
//! with the reason `not settled within the ack wait (after n deliveries)`. A dead letter is the
//! event under `dead-letter.<name>`, with the id `<id>.dead.<group>` and the extensions
//! `deadletterof`, `deadletterreason`, `deadlettergroup` (the group as given, or
//! `subscription-<consumer>` outside any group) and `deadletterattempts`
//! ([`WireEvent::dead_letter`](bus_core::transport::WireEvent::dead_letter)).
//!
//! **Entries that do not decode** (written by another client: `redis-cli XADD` with random
//! fields, a missing or empty attribute, a field that is not UTF-8 or does not percent-decode,
//! an invalid name, a payload
//! over [`max_payload`](RedisTransportBuilder::max_payload), a type that is not its stream's
//! name) are dead-lettered by the subscription itself, with the decoding error as the reason,
//! logged at `warn`, then acknowledged; the subscription goes on and never yields them. The
//! dead letter keeps every field of the entry as it was (`ce-time`, `content-type`, every
//! extension, fields that are not CloudEvents attributes, the payload in `data`), but the four
//! that make it a dead letter (`ce-specversion` 1.0, `ce-id` `<id>.dead.<group>` with the
//! original `ce-id` or `entry-<entry id>`, `ce-source`, `ce-type` `dead-letter.<name>`) and
//! the dead-letter extensions, as NATS does with a message's headers. A defect that lies in a
//! field kept (an invalid extension name, too many fields, a value that is not UTF-8) stays
//! in the dead letter, which then does not decode either: read it raw (`XRANGE`). A dead
//! letter that does not decode is dropped by its subscribers, not dead-lettered again.
//!
//! **The group vanishing** (`NOGROUP`: Redis flushed, or restarted without persistence) is
//! logged at `warn`, counted ([`RedisTransport::groups_recreated`]), and cured: the
//! subscription creates the group again on each stream from the last entry it received there,
//! and goes on.
//!
//! **Trimming** ([`Retention`]) may delete entries still pending in a group. Such entries are
//! detected (the deleted ids `XAUTOCLAIM` returns, the empty entries of a re-read of the own
//! pending entries), logged at `warn` and counted ([`RedisTransport::trimmed_while_pending`]).
//!
//! **Deduplication**, twice, on an event's source and id together (CloudEvents makes them
//! unique per event: the same id from two sources is two events, both delivered). On publish:
//! the pair is stored for the [`duplicate_window`](RedisTransportBuilder::duplicate_window)
//! (one small key per event), and a second publish of it within the window is dropped; this
//! also makes a publish retried after a lost reply store the event once. On receipt: a
//! consumer drops (and acks) an entry whose event its group acknowledged through the same
//! transport within the [`acked_window`](RedisTransportBuilder::acked_window) (process
//! memory, bounded by [`acked_capacity`](RedisTransportBuilder::acked_capacity)). Every
//! duplicate dropped is logged at `info` (event name, id, source, and the group on receipt)
//! and counted: [`RedisTransport::duplicates_dropped`], and, with `bus-core`'s feature
//! `metrics`, the counter `bus_duplicates_dropped_total` (labels `transport`, `stage`:
//! `publish` or `receive`, and `group` on receipt).
//!
//! **Reconnects.** The shared connection reconnects by itself; a publish or ack made while
//! Redis is away is retried until the publish deadline. A subscription whose connection broke
//! reconnects with a backoff (100 ms doubling up to 2 s), forever, and only yields an error for
//! what reconnecting does not cure.
//!
//! **Limits.** Not for Redis Cluster (the publish script touches keys of several slots).
//! A subscription to a pattern with wildcards scans the keyspace once as it starts (`SCAN MATCH
//! <prefix>:stream:* TYPE stream`): on a database with millions of keys, subscribing takes a
//! moment. Streams written by other clients after it started are not found by it (only those
//! published through this transport are logged as new names). Group names are used as they
//! are (Redis accepts any string). The blocking read
//! of a group subscription wakes at least every `claim_interval`, and of a pattern subscription
//! every `discovery_interval`: an idle subscription costs a few commands a second.
//!
//! # Fields
//!
//! CloudEvents has no Redis binding. An entry holds the event as the NATS binding's binary
//! mode writes a message (§3.1.3), fields for headers: the same names, the same values, and the
//! payload in the field `data`. A tool that reads both brokers reads both alike.
//!
//! | attribute | stream field | value |
//! |---|---|---|
//! | `specversion` | `ce-specversion` | `1.0` |
//! | `id` | `ce-id` | the event id |
//! | `source` | `ce-source` | the service name of the bus that emitted it |
//! | `type` | `ce-type` | the event name: the stream's key, without `<prefix>:stream:` |
//! | `time` | `ce-time` | when it was emitted, RFC 3339 |
//! | `datacontenttype` | `ce-datacontenttype` (read: also `content-type`) | `application/json` for a bus's events |
//! | extension `x` | `ce-x` | `ce-causationid`; a dead letter's `ce-deadletterof`, `ce-deadletterreason`, `ce-deadlettergroup`, `ce-deadletterattempts` |
//! | `data` | `data` | the payload, bytes as they are |
//!
//! **Values** follow the NATS binding's rules (§3.1.3.2), though Redis would store any bytes:
//! space, `"`, `%`, control characters and every character outside printable ASCII are
//! percent-encoded (`%XX` for each byte of their UTF-8, upper-case hex), so that a service named
//! `a b é` is `ce-source` = `a%20b%20%C3%A9`. Read back, a value in double quotes is unquoted
//! first (RFC 7230, backslash escapes), then percent-decoded once: lower-case hex and needless
//! encodings are accepted, and a value another producer wrote unencoded (`redis-cli XADD`)
//! reads as it is; bytes that are not UTF-8 (`%C0%A0`) make the entry one that does not decode
//! (see above), the reason naming the field. Field names are case-insensitive.
//!
//! **The content type** is read from `ce-datacontenttype`, else from a `content-type` field
//! (what earlier versions of this crate wrote, and HTTP-minded producers write), taken as it
//! is. A bus listener reads JSON only: no content type, `application/json` (any parameters, any
//! case) or `application/<x>+json`. An event of another content type (`text/plain`,
//! `application/xml`) is dead-lettered without being decoded, with a reason naming its content
//! type and what the listener decodes.
//!
//! # Credentials and TLS
//!
//! Credentials travel in the URL: `redis://user:password@host:6379` (an ACL user) or
//! `redis://:password@host:6379` (`requirepass`). The transport shows the URL only with them
//! masked (`redis://user:***@host:6379`): in its errors, its logs and its `Debug`. Credentials
//! the server refuses (or a user not allowed a command the transport needs at connect) are
//! [`RedisError::Auth`], under a [`TransportError::Broker`](bus_core::transport::TransportError::Broker).
//!
//! A `rediss://` URL connects over TLS (rustls), for the shared connection and every
//! subscription's own; a server certificate signed by a CA of your own is trusted with
//! [`tls_root_certificates`](RedisTransportBuilder::tls_root_certificates) (a file) or
//! [`tls_root_certificates_pem`](RedisTransportBuilder::tls_root_certificates_pem). A failed
//! handshake (a certificate not trusted, say) is [`RedisError::Tls`], also a broker error.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bus_core::transport::TransportError> {
//! let redis = bus_redis::RedisTransport::builder("rediss://alice:s3cret@redis.internal:6380")
//!     .tls_root_certificates("/etc/bus/ca.pem")
//!     .connect()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Logs
//!
//! Spans: `bus.redis.connect` (url, prefix, instance), `bus.redis.publish` (stream, event id),
//! `bus.redis.subscription` (pattern, consumer, group), `bus.redis.settle` (stream, entry,
//! consumer, event id, attempt), `bus.redis.group_stats` (group), `bus.redis.groups`,
//! `bus.redis.dead_letters` (events), `bus.redis.delete_dead_letters` (letters).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admin;
mod connection;
mod dedup;
mod delivery;
mod error;
mod keys;
mod stats;
mod subscription;
mod transport;

pub use crate::error::RedisError;
pub use crate::transport::{
    DEFAULT_ACKED_CAPACITY, DEFAULT_ACKED_WINDOW, DEFAULT_CLAIM_INTERVAL, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DISCOVERY_INTERVAL, DEFAULT_DUPLICATE_WINDOW, DEFAULT_KEY_PREFIX,
    DEFAULT_PUBLISH_DEADLINE, DEFAULT_READ_BATCH, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETENTION,
    RedisTransport, RedisTransportBuilder,
};
pub use bus_core::transport::Retention;

/// The client library, re-exported for the escape hatches [`RedisTransport::connection`] and
/// [`RedisTransport::client`].
pub use redis;
