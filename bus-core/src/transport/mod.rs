//! The transport layer: how a bus reaches listeners in other processes through a broker.
//!
//! A [`Transport`] publishes [`WireEvent`]s (CloudEvents 1.0 attributes and a payload) and opens
//! [`TransportSubscription`]s for a pattern, optionally in a competing-consumer group; each
//! [`Delivery`] is acknowledged ([`ack`](Delivery::ack)), handed back for a later retry
//! ([`nack`](Delivery::nack)) or dead-lettered ([`reject`](Delivery::reject)). The trait is
//! dyn-compatible so that a bus holds any transport as `Arc<dyn Transport>`, and small so that a
//! new broker is one crate: [`MemoryTransport`] in process, `bus-nats` for NATS JetStream.
//!
//! Every transport must pass the same conformance suite (`bus-conformance`); what a transport
//! cannot do is declared in its [`Capabilities`], so the suite skips a case by name, never
//! silently.

mod memory;
mod replay;
mod retention;
mod server_url;
pub mod support;
mod wire;

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;

pub use self::memory::MemoryTransport;
pub use self::replay::{DeadLetterQueue, REPLAY_OF, ReplayReport, revived};
pub use self::retention::Retention;
pub use self::server_url::ServerUrl;
pub use self::wire::{
    DEFAULT_MAX_PAYLOAD, MAX_ATTRIBUTES, SPEC_VERSION, WireError, WireEvent, decode_header_value,
    encode_header_value,
};
pub use crate::error::TransportError;

/// How long [`EventBus::shutdown`](crate::EventBus::shutdown) waits, past its own deadline,
/// for the consumers to close their subscriptions and the transport to hand back what they
/// held ([`Transport::flush`]): 5 s.
pub const HAND_BACK_GRACE: Duration = Duration::from_secs(5);

/// How often, by default, each consumer of a group samples the group's lag and pending count
/// into the gauges ([`EventBusBuilder::group_stats_interval`](crate::EventBusBuilder::group_stats_interval)):
/// 15 s, a common scrape interval.
pub const DEFAULT_GROUP_STATS_INTERVAL: Duration = Duration::from_secs(15);

/// A boxed future, as the dyn-compatible transport traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A broker connection that publishes events and opens subscriptions.
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs and the conformance report (`"memory"`, `"nats"`).
    fn name(&self) -> &str;

    /// What this transport can do; the conformance suite skips, by name, the cases it cannot.
    fn capabilities(&self) -> Capabilities;

    /// Publishes `event` under its [`type`](WireEvent::ty) (the event name). Resolves once the
    /// broker has stored it: a publish that resolved `Ok` survives the publisher. Publishing the
    /// same [`source`](WireEvent::source) and [`id`](WireEvent::id) again within the broker's
    /// duplicate window stores it once; the same id from another source is another event.
    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>>;

    /// Opens a subscription to the events whose name matches `options.pattern` (NATS token
    /// syntax: `*` one token, a last `>` one or more). Resolves once the subscription is in
    /// place: events published after that reach it.
    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>>;

    /// Resolves once the work this transport still does in the background for subscriptions
    /// and deliveries already dropped (handing their events back to the broker) is done, and
    /// what it sent has reached the broker. The bus awaits it last in
    /// [`shutdown`](crate::EventBus::shutdown), so that a process exiting right after loses
    /// no hand-back and no event waits for its ack wait. The transport stays usable.
    ///
    /// The default resolves at once: for a transport with no such background work.
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Whether the connection to the broker is up right now, as far as the transport knows
    /// without a round trip to it; `None` when it cannot tell (then
    /// [`EventBus::health`](crate::EventBus::health) learns it from the group stats it asks
    /// for). The default is `None`.
    fn is_connected(&self) -> Option<bool> {
        None
    }

    /// Where the consumer group of `options` stands on the broker: how many events of its
    /// pattern it has not been handed yet, and how many it holds unsettled. `Ok(None)` when
    /// `options` names no group, when the broker does not know the group (no subscription
    /// ever created it), or when the transport cannot tell ([`Capabilities::group_stats`] is
    /// `false`). The bus samples it for its consumers into the `bus_consumer_lag` and
    /// `bus_consumer_pending` gauges and reports it in [`EventBus::health`](crate::EventBus::health).
    ///
    /// The default resolves to `Ok(None)`.
    fn group_stats<'a>(
        &'a self,
        options: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<Option<GroupStats>, TransportError>> {
        let _ = options;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Every durable consumer group the broker knows, by name: the pattern it was created
    /// with, where it stands ([`GroupStats`], as [`group_stats`](Transport::group_stats) gives
    /// them) and how many members the broker sees, for an operator's overview (the `bus
    /// groups` command). Subscriptions outside any group are not listed. `Ok(None)` when the
    /// transport cannot list its groups ([`Capabilities::list_groups`] is `false`).
    ///
    /// The default resolves to `Ok(None)`.
    fn groups(&self) -> BoxFuture<'_, Result<Option<Vec<GroupInfo>>, TransportError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// The dead letters the broker stores of the events matching `events` (an event name or a
    /// pattern, as listeners take: `>` for every dead letter), oldest first: every letter still
    /// kept (within the broker's retention), whether or not a group read it. A letter that
    /// does not decode as an event (written by another client) is left out. `Ok(None)` when
    /// the transport cannot read them back ([`Capabilities::stored_dead_letters`] is `false`).
    /// For the operator's tools (`bus dead-letters`): it reads them all, into memory.
    ///
    /// The default resolves to `Ok(None)`.
    fn dead_letters<'a>(
        &'a self,
        events: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<StoredDeadLetter>>, TransportError>> {
        let _ = events;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Deletes `letters` (as [`dead_letters`](Transport::dead_letters) gave them) from the
    /// broker: no subscription, no group and no later [`dead_letters`](Transport::dead_letters)
    /// sees them again, including the groups that hold one unsettled (a
    /// [`DeadLetterQueue`]'s). Resolves to how many were deleted: a letter already gone, or
    /// one that is not a dead letter, is not counted. `Ok(None)` when the transport cannot
    /// delete them ([`Capabilities::stored_dead_letters`] is `false`).
    ///
    /// The default resolves to `Ok(None)`.
    fn delete_dead_letters<'a>(
        &'a self,
        letters: &'a [StoredDeadLetter],
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>> {
        let _ = letters;
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// One durable consumer group, as [`Transport::groups`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's name, as given to [`SubscribeOptions::group`].
    pub name: String,
    /// The pattern the group subscribes to (on NATS, the event names its consumer's filter
    /// stands for).
    pub pattern: String,
    /// Where the group stands, as [`Transport::group_stats`] counts it; `None` when the
    /// transport cannot tell.
    pub stats: Option<GroupStats>,
    /// How many members the broker sees: the open subscriptions of the group (memory), the
    /// consumers of the group (Redis, the most on one of its streams; a consumer stays until
    /// its subscription closes cleanly), the pull requests waiting on its consumer (NATS: about
    /// one per idle subscription; 0 while every member is busy). `None` when the broker does
    /// not know its members (PostgreSQL).
    pub consumers: Option<u64>,
}

impl GroupInfo {
    /// The group `name` on `pattern`, without stats or members yet.
    pub fn new(name: impl Into<String>, pattern: impl Into<String>) -> Self {
        GroupInfo {
            name: name.into(),
            pattern: pattern.into(),
            stats: None,
            consumers: None,
        }
    }

    /// Sets [`stats`](GroupInfo::stats).
    #[must_use]
    pub fn with_stats(mut self, stats: GroupStats) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Sets [`consumers`](GroupInfo::consumers).
    #[must_use]
    pub fn with_consumers(mut self, consumers: u64) -> Self {
        self.consumers = Some(consumers);
        self
    }
}

/// A dead letter as the broker stores it: [`Transport::dead_letters`] reads them,
/// [`Transport::delete_dead_letters`] deletes them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredDeadLetter {
    /// The letter: the event under [`dead_letter_name`], with the extensions
    /// [`DEAD_LETTER_OF`], [`DEAD_LETTER_REASON`], [`DEAD_LETTER_GROUP`] and
    /// [`DEAD_LETTER_ATTEMPTS`].
    pub letter: WireEvent,
    /// Where the broker keeps it, in the transport's own terms (a stream sequence, a stream
    /// entry id, a row number): what [`Transport::delete_dead_letters`] finds it by.
    pub position: String,
}

impl StoredDeadLetter {
    /// `letter`, stored at `position`.
    pub fn new(letter: WireEvent, position: impl Into<String>) -> Self {
        StoredDeadLetter {
            letter,
            position: position.into(),
        }
    }
}

/// Where one consumer group stands on the broker: [`Transport::group_stats`].
///
/// An event counts in one of the two at most: first in `lag`, then, once handed to a member
/// of the group, in `pending` until it is settled (acked, or dead-lettered). "Handed" includes
/// what a subscription fetched or claimed ahead and has not yielded yet (NATS `fetch_batch`,
/// Redis `read_batch`, PostgreSQL `batch_size`), and a nacked event waiting for its delay
/// counts in `pending` on every transport. Brokers may update their counts a little after the
/// deliveries and acks (NATS); asking can cost in proportion to the lag (Redis when its own
/// count is unknown, PostgreSQL for events not yet filled into the group), which is why the bus
/// samples on an interval. The stats are of the pattern the group was created with where the
/// broker keeps it (memory, Redis, PostgreSQL); on NATS, of the streams `options.pattern`
/// routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GroupStats {
    /// Events matching the group's pattern that no member has been handed yet.
    pub lag: u64,
    /// Events handed to a member (or waiting to be handed again) and not yet settled.
    pub pending: u64,
}

impl GroupStats {
    /// Stats of `lag` events not handed out yet and `pending` unsettled.
    pub fn new(lag: u64, pending: u64) -> Self {
        GroupStats { lag, pending }
    }
}

/// The deliveries of one subscription, in the order the broker hands them out. Dropping it
/// closes the subscription: deliveries not yet acknowledged go back to the broker and are
/// delivered again (to another member of the group, or to the next subscription).
pub type TransportSubscription =
    Pin<Box<dyn Stream<Item = Result<Box<dyn Delivery>, TransportError>> + Send>>;

/// One delivery of one event to one subscription. It must be settled exactly once: `ack`,
/// `nack` or `reject`; one dropped unsettled is delivered again after the subscription's
/// [`ack_wait`](SubscribeOptions::ack_wait) (or when its subscription closes).
pub trait Delivery: Send + Sync + 'static {
    /// The event.
    fn event(&self) -> &WireEvent;

    /// Which delivery of this event to this group this is: 1 the first time, then one more
    /// per redelivery (after a `nack`, an expired ack wait, or a closed subscription).
    fn attempt(&self) -> u32;

    /// The event was handled: it is not delivered to this group again.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>>;

    /// The event was not handled: deliver it again after `delay`. On the subscription's last
    /// allowed attempt ([`max_deliveries`](SubscribeOptions::max_deliveries)) the event is
    /// dead-lettered instead, with `reason`.
    fn nack(
        self: Box<Self>,
        delay: Duration,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>>;

    /// The event can never be handled (it does not decode, say): dead-letter it now, with
    /// `reason`, and do not deliver it to this group again.
    fn reject(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), TransportError>>;

    /// The event was not handled, through no fault of its listener (the bus is shutting down):
    /// hand it back now, for the broker to deliver again, to another member of the group or to
    /// the next subscription, without waiting for the ack wait. This is what dropping the
    /// delivery unsettled does, in a future the caller awaits, so that a process that exits
    /// right after does not cut the hand-back off. On the last allowed attempt a transport may
    /// dead-letter it, as after a `nack`.
    ///
    /// The default drops the delivery: a transport whose `Drop` hands back in a task of its
    /// own overrides this with that work.
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        drop(self);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// What to subscribe to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// The event names to receive: a name or a pattern in NATS token syntax.
    pub pattern: String,
    /// Competing consumers: the subscriptions of one group share the events, each event going
    /// to one of them, and the group's position survives its subscriptions (durable). `None`:
    /// this subscription alone gets every event published from now on.
    pub group: Option<String>,
    /// How many times an event is delivered to the group at most; after the last failed
    /// attempt it is dead-lettered. At least 1.
    pub max_deliveries: u32,
    /// How long a delivery may stay unsettled before it is delivered again.
    pub ack_wait: Duration,
}

/// The default of [`SubscribeOptions::max_deliveries`].
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

/// The default of [`SubscribeOptions::ack_wait`].
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

impl SubscribeOptions {
    /// A subscription to `pattern`, outside any group, with the default limits.
    pub fn new(pattern: impl Into<String>) -> Self {
        SubscribeOptions {
            pattern: pattern.into(),
            group: None,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            ack_wait: DEFAULT_ACK_WAIT,
        }
    }

    /// Joins the competing-consumer group `group`.
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets [`max_deliveries`](SubscribeOptions::max_deliveries) (at least 1).
    #[must_use]
    pub fn max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries.max(1);
        self
    }

    /// Sets [`ack_wait`](SubscribeOptions::ack_wait).
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }
}

/// The name under which a transport dead-letters an event of name `event`: subscribe to
/// `dead-letter.>` to see them all. A dead-lettered event keeps its payload and attributes but
/// its id (a broker keeps one event per id, and the original is stored already): it gets a new
/// id, and the extensions [`DEAD_LETTER_OF`] (the original id), [`DEAD_LETTER_REASON`],
/// [`DEAD_LETTER_GROUP`] and [`DEAD_LETTER_ATTEMPTS`].
///
/// An event is dead-lettered when a group's last allowed delivery
/// ([`max_deliveries`](SubscribeOptions::max_deliveries)) fails in any way: nacked, rejected,
/// dropped unsettled, or not settled within the ack wait.
pub fn dead_letter_name(event: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}.{event}")
}

/// The extension attribute that carries an event's
/// [causation](crate::Envelope::causation): the id of the event whose listener emitted it.
pub const CAUSATION: &str = "causationid";

/// The first token of every dead-letter name.
pub const DEAD_LETTER_PREFIX: &str = "dead-letter";
/// Extension attribute of a dead-lettered event: the id of the event it is the dead letter of.
pub const DEAD_LETTER_OF: &str = "deadletterof";
/// Extension attribute of a dead-lettered event: why it was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "deadletterreason";
/// Extension attribute of a dead-lettered event: the group that gave up (its name as given to
/// [`SubscribeOptions::group`]; `subscription-<n>` for a subscription outside any group).
pub const DEAD_LETTER_GROUP: &str = "deadlettergroup";
/// Extension attribute of a dead-lettered event: how many deliveries were made.
pub const DEAD_LETTER_ATTEMPTS: &str = "deadletterattempts";

/// What a transport can do. The conformance suite skips a case that needs a capability the
/// transport lacks, and says so by name.
///
/// Build one from [`Capabilities::default`] (nothing) and set the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Events survive the restart of the broker (and of the subscribers).
    pub persistent: bool,
    /// Events of one name reach a single subscriber in publish order.
    pub ordered: bool,
    /// Competing-consumer groups.
    pub groups: bool,
    /// A publish of a source and id already stored is dropped by the broker.
    pub deduplicates: bool,
    /// The test can restart the broker (a private server it starts itself).
    pub restartable: bool,
    /// [`Transport::group_stats`] counts a group's lag and pending events.
    pub group_stats: bool,
    /// [`Transport::groups`] lists the consumer groups.
    pub list_groups: bool,
    /// [`Transport::dead_letters`] reads the stored dead letters back, and
    /// [`Transport::delete_dead_letters`] deletes them.
    pub stored_dead_letters: bool,
}
