//! The RabbitMQ transport of the `bus` event bus: [`AmqpTransport`] implements
//! [`Transport`](bus_core::transport::Transport) on AMQP 0-9-1, through
//! [`lapin`](https://docs.rs/lapin) on Tokio.
//!
//! ```no_run
//! # async fn run() -> Result<(), bus_core::transport::TransportError> {
//! use bus_amqp::AmqpTransport;
//!
//! let transport = AmqpTransport::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .exchange("shop")
//!     .connect()
//!     .await?;
//! # let _ = transport; Ok(()) }
//! ```
//!
//! # How the bus maps onto RabbitMQ
//!
//! | bus | RabbitMQ |
//! |---|---|
//! | a deployment | one durable **topic exchange** (builder option [`exchange`](AmqpTransportBuilder::exchange), default `bus`) |
//! | event name `orders.eu.created` | the routing key of the message |
//! | pattern `orders.*.created`, `orders.>` | binding key `orders.*.created`, `orders.*.#` (a last `>` is one token or more; AMQP's `#` alone would also match none) |
//! | consumer group `billing` | a durable **quorum queue** `<exchange>.billing`, bound with the pattern (a later subscription with another pattern adds a binding). A group with other characters than ASCII letters, digits, `-`, `_` and `.` (the bus's `<service>.<module>::<listener>`), or too long, is named by its readable part, `_` for the others, and a hash of the whole name |
//! | subscription outside any group | a server-named **exclusive, auto-delete** queue: it gets the events published while it is open, and goes with it |
//! | attributes (binary mode) | the CloudEvents AMQP binding, §3.1: each attribute a `cloudEvents_<name>` header (the `_` separator the binding says SHOULD be preferred; `cloudEvents:` is read too) holding an AMQP string; `datacontenttype` is the `content-type` property, `id` also the `message-id` |
//! | publish | persistent message, **publisher confirm**: `Ok` once the broker confirmed it. Not `mandatory`: an event no queue is bound for is dropped by the exchange, as nobody subscribed to it (confirmed all the same) |
//! | ack | `basic.ack` |
//! | nack with delay | the event is published again with its attempt count in header `x-bus-attempts`, to the group's queue (no delay) or to its **delay queue** `<exchange>.<group>.delay` with a per-message TTL (`expiration`) and the group's queue as dead-letter target, then acked. Outside a group, the delay is a timer of the process |
//! | attempt | `x-bus-attempts` (deliveries before this copy) + quorum queues' `x-delivery-count` (returns by the broker: a channel or connection that closed holding the message) + 1 |
//! | dead letter | published as `dead-letter.<name>` to the exchange, with a new id and the extensions `deadletterof`, `deadletterreason`, `deadlettergroup`, `deadletterattempts`: replayable with [`DeadLetterQueue`](bus_core::transport::DeadLetterQueue) |
//! | `ack_wait` | a timer of the subscription: a delivery unsettled that long is handed back (another attempt, or its dead letter on the last). RabbitMQ's own `consumer_timeout` (30 min by default) closes the whole channel, and 3.10 has no per-queue setting, so it is a last resort only |
//! | back-pressure | `basic.qos` prefetch per subscription ([`prefetch`](AmqpTransportBuilder::prefetch), default 64) |
//! | dropped subscription | its consumer is cancelled; what it yielded and did not settle is handed back as another attempt; what it received and never yielded goes back uncounted (published again with its count, then acked); then its channel closes |
//! | `release` | the delivery is handed back at once (another attempt; its dead letter on the last) |
//! | lost channel or connection | the subscription yields the error and subscribes again by itself (see [Reconnects](#reconnects)) |
//! | ordering | one queue per group, delivered in publish order; a redelivery goes to the back of the queue |
//! | deduplication | none: RabbitMQ keeps no id window (`deduplicates: false`); listeners must be idempotent, as at-least-once asks anyway |
//! | retention | events wait in their group's queue until acked, with no age or size limit of the bus's own (set queue policies, `x-max-length`, on the broker); events no group's queue matched are not stored |
//! | group stats | `lag`: the group queue's ready messages (passive `queue.declare`); `pending`: the deliveries the subscriptions of **this process** hold unacked plus the messages in the delay queue (AMQP 0-9-1 cannot ask a queue for its unacked count; the management API can) |
//!
//! # What the broker does not do for the bus
//!
//! - A delay queue expires messages from its head only (per-message TTL): a long delay holds
//!   back shorter ones nacked after it in the same group.
//! - Handing back (nack, drop, ack wait) publishes a copy and then acks the original: a process
//!   that dies between the two leaves both, and the event comes twice.
//! - A process that dies holding deliveries leaves them to the broker, which returns them when
//!   the connection closes, each counted as an attempt by the quorum queue's
//!   `x-delivery-count`, the ones it had only prefetched too. An event whose count passed
//!   `max_deliveries` that way is dead-lettered when it next arrives.
//! - A subscription outside any group is a new exclusive queue after each reconnection: the
//!   events published while it was disconnected are lost to it (as on the other transports;
//!   a group's queue keeps them).
//!
//! # Reconnects
//!
//! The transport shares one connection. When it breaks (or a subscription's channel is closed,
//! or the broker cancels its consumer), each subscription yields the error as an `Err` item
//! (the bus's consumer logs it and goes on) and subscribes again by itself: 100 ms after the
//! loss, then with a backoff doubling up to 2 s, forever. The first to need the connection
//! opens it again (within the [connect timeout](AmqpTransportBuilder::connect_timeout)), the
//! others find it open; a publish does the same on its next call. Subscribing again declares
//! the queues and bindings again: a group's durable quorum queue kept what was published
//! meanwhile, a subscription outside any group gets a new exclusive queue. Only errors that
//! trying again does not cure (the broker refusing a declaration) are yielded while it tries.
//!
//! The deliveries the lost channel had delivered and not settled are the broker's again: it
//! delivers them again (counted as an attempt by the quorum queue). Settling them is an
//! error ([`AmqpError::DeliveryLost`]), and nothing is published for them (no copy handed
//! back); `release` and dropping them do nothing. What the lost channel had delivered and the
//! subscription not yielded yet is forgotten the same way. An ack pending as its channel is
//! lost returns [`AmqpError::AckUncertain`] at once (lapin may never complete it): the broker
//! delivers the event again if the ack did not reach it. Every ack is bounded by the
//! [publish timeout](AmqpTransportBuilder::publish_timeout) too.
//!
//! [`is_connected`](bus_core::transport::Transport::is_connected) says whether the shared
//! connection is open: `false` from the loss until someone opened it again.
//!
//! The tests cut the connection through a TCP proxy of their own, and the conformance suite's
//! `broker_restart` case kills (SIGKILL) a private RabbitMQ node and starts it again on the
//! same data, twice, during 10,000 publishes: nothing confirmed is lost. Its harness declares
//! the node restartable with the builder's [`restartable`](AmqpTransportBuilder::restartable);
//! a transport is not otherwise (`restartable: false`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod names;
mod subscription;
mod transport;
mod wire;

pub use crate::error::AmqpError;
pub use crate::transport::{
    AmqpTransport, AmqpTransportBuilder, DEFAULT_EXCHANGE, DEFAULT_PREFETCH, DEFAULT_URL,
};
