//! A subscription: how it opens, and the read loop behind its stream ([`Pump`]), which
//! reconnects when its connection breaks.
//!
//! The loop has two halves. An [`Intake`], the same for every subscription: the streams it
//! reads ([`streams`]), the connection of its blocking reads, and the decoding of each entry
//! received (an entry that does not decode is dead-lettered here). And a [`Mode`], the protocol
//! of one kind of subscription, which runs the rounds of the loop and makes the deliveries: in a
//! consumer group ([`group`]: `XREADGROUP`, claims, the group's pending list), or outside any
//! group ([`plain`]: `XREAD` with a cursor, and the bookkeeping of redeliveries kept here).

mod group;
mod plain;
mod streams;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bus_core::transport::support::{Backoff, count_duplicate};
use bus_core::transport::{
    DEAD_LETTER_PREFIX, Delivery, SubscribeOptions, TransportError, TransportSubscription,
    WireEvent,
};
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;
use tracing::Instrument;

use self::group::GroupReader;
use self::plain::PlainReader;
use self::streams::Streams;
use crate::connection::Inner;
use crate::delivery::{EntryRef, Origin, RedisDelivery, Settlement, store_dead_letter};
use crate::error::{NAME, RedisError, invalid, is_no_group, is_transient};
use crate::keys::{self, Entry};

/// The longest pause between two attempts to reconnect a subscription.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Why a round of the read loop failed.
enum Failure {
    /// The connection broke or timed out: reconnect.
    Connection(TransportError),
    /// The group is gone: create it again.
    NoGroup,
    /// Anything else.
    Other(TransportError),
}

impl Failure {
    fn of(command: &'static str, key: &str, error: redis::RedisError) -> Failure {
        if is_no_group(&error) {
            Failure::NoGroup
        } else if is_transient(&error) {
            Failure::Connection(RedisError::command(command, key, error))
        } else {
            Failure::Other(RedisError::command(command, key, error))
        }
    }

    fn reply(command: &'static str, key: &str, detail: String) -> Failure {
        Failure::Other(
            RedisError::Reply {
                command,
                key: key.to_owned(),
                detail,
            }
            .broker(),
        )
    }
}

/// Opens a subscription: checks the pattern, sets up the group (or the start), finds the
/// streams, connects the reader.
pub(crate) async fn open(
    inner: Arc<Inner>,
    options: SubscribeOptions,
) -> Result<TransportSubscription, TransportError> {
    keys::check_pattern(&options.pattern)
        .map_err(|reason| invalid("pattern", &options.pattern, reason))?;
    let number = inner.next_subscription();
    let max_deliveries = options.max_deliveries.max(1);
    let (origin, mode, start_ms) = match &options.group {
        Some(group) => {
            let (pattern, start) = inner.group_record(group, &options.pattern).await?;
            if pattern != options.pattern {
                return Err(invalid(
                    "group",
                    group,
                    format!(
                        "the group subscribes to `{pattern}`; one group has one pattern (delete \
                         key `{}` and the group on its streams to change it)",
                        inner.keys.group(group)
                    ),
                ));
            }
            // The lowest free slot: an instance restarted under the same name is the same
            // consumers again, and re-reads what they left pending.
            let slot = inner.take_slot(group);
            let origin = Origin {
                label: group.clone(),
                consumer: format!("{}-{slot}", inner.config.instance),
                max_deliveries,
            };
            let reader = GroupReader::new(group.clone(), slot, options.ack_wait);
            (origin, Mode::Group(reader), start)
        }
        None => {
            let consumer = format!("{}-s{number}", inner.config.instance);
            let origin = Origin {
                label: format!("subscription-{consumer}"),
                consumer,
                max_deliveries,
            };
            let reader = PlainReader::new(options.ack_wait);
            // From now by the server's clock, which makes the entry ids.
            (origin, Mode::Plain(reader), inner.server_ms().await?)
        }
    };
    let span = tracing::info_span!(
        "bus.redis.subscription",
        pattern = %options.pattern,
        consumer = %origin.consumer,
        group = options.group.as_deref().unwrap_or("-"),
    );
    let mut pump = Pump {
        intake: Intake {
            inner,
            origin: Arc::new(origin),
            pattern: options.pattern.clone(),
            reader: None,
            streams: Streams::new(&options.pattern, keys::id_before_ms(start_ms)),
            buffer: VecDeque::new(),
        },
        mode,
        retry_at: None,
        failures: 0,
        span: span.clone(),
    };
    pump.start().instrument(span.clone()).await?;
    tracing::debug!(parent: &span, streams = pump.intake.streams.iter().len(), "subscribed");
    let stream = futures_util::stream::unfold(pump, |mut pump| async move {
        let span = pump.span.clone();
        let next = pump.next().instrument(span).await;
        Some((next, pump))
    });
    Ok(Box::pin(stream))
}

/// The state behind a subscription's stream.
struct Pump {
    intake: Intake,
    mode: Mode,
    retry_at: Option<Instant>,
    failures: u32,
    span: tracing::Span,
}

/// The protocol of a subscription: decided once, as it opens.
enum Mode {
    /// In a consumer group.
    Group(GroupReader),
    /// Outside any group.
    Plain(PlainReader),
}

impl Drop for Pump {
    fn drop(&mut self) {
        // The blocking read goes first: no more entries for this consumer.
        drop(self.intake.reader.take());
        if let Mode::Group(group) = &self.mode {
            group.close(&self.intake, &self.span);
        }
    }
}

/// 100 ms, doubling up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(failures: u32) -> Duration {
    Backoff::new(Duration::from_millis(100), MAX_RECONNECT_DELAY).after(failures)
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The dead-letter reason of an event whose last allowed delivery, the `deliveries`-th, was
/// never settled.
fn not_settled(deliveries: u32) -> String {
    format!("not settled within the ack wait (after {deliveries} deliveries)")
}

impl Pump {
    /// The longest single block of this subscription's reads: its connection's response
    /// timeout must outlast it.
    fn longest_block(&self) -> Duration {
        let config = &self.intake.inner.config;
        let base = match &self.mode {
            Mode::Group(_) => config.claim_interval,
            Mode::Plain(_) => plain::MAX_BLOCK,
        };
        if self.intake.streams.wildcard() {
            base.min(config.discovery_interval)
        } else {
            base
        }
    }

    /// Finds the streams, creates the group on them, connects the reader.
    async fn start(&mut self) -> Result<(), TransportError> {
        self.intake.streams.find(&self.intake.inner).await?;
        if let Mode::Group(group) = &self.mode {
            group.start(&mut self.intake).await?;
        }
        let reader = self
            .intake
            .inner
            .reader(self.longest_block())
            .await
            .map_err(|error| RedisError::command("CONNECT", "-", error))?;
        self.intake.reader = Some(reader);
        Ok(())
    }

    /// The next delivery; reconnects when the connection breaks, recreates a vanished group,
    /// and yields an error only for what neither cures (then goes on when polled again).
    async fn next(&mut self) -> Result<Box<dyn Delivery>, TransportError> {
        loop {
            if let Some(ready) = self.intake.buffer.pop_front() {
                return Ok(self.hand_out(ready));
            }
            if let Some(at) = self.retry_at.take() {
                tokio::time::sleep_until(at).await;
            }
            if self.intake.reader.is_none() {
                match self.intake.inner.reader(self.longest_block()).await {
                    Ok(reader) => {
                        tracing::info!("subscription reconnected");
                        self.intake.reader = Some(reader);
                        if let Mode::Group(group) = &mut self.mode {
                            group.reconnected();
                        }
                    }
                    Err(error) => {
                        self.failures = self.failures.saturating_add(1);
                        tracing::warn!(%error, "cannot reconnect the subscription yet");
                        self.retry_at = Some(Instant::now() + reconnect_delay(self.failures));
                        continue;
                    }
                }
            }
            match self.round().await {
                Ok(()) => self.failures = 0,
                Err(Failure::Connection(error)) => {
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(%error, "the subscription's connection broke; reconnecting");
                    self.intake.reader = None;
                    self.retry_at = Some(Instant::now() + reconnect_delay(self.failures));
                }
                Err(Failure::NoGroup) => {
                    let recreated = match &mut self.mode {
                        Mode::Group(group) => group.recreate(&mut self.intake).await,
                        // Only the commands of a group answer `NOGROUP`.
                        Mode::Plain(_) => Ok(()),
                    };
                    if let Err(failure) = recreated {
                        self.failures = self.failures.saturating_add(1);
                        self.retry_at = Some(Instant::now() + reconnect_delay(self.failures));
                        if let Failure::Other(error) = failure {
                            tracing::error!(%error, "cannot create the group again");
                            return Err(error);
                        }
                    }
                }
                Err(Failure::Other(error)) => {
                    self.failures = self.failures.saturating_add(1);
                    self.retry_at = Some(Instant::now() + reconnect_delay(self.failures));
                    tracing::error!(%error, "the subscription failed; it goes on when polled");
                    return Err(error);
                }
            }
        }
    }

    /// One round: look for new streams when due, then the round of the mode, which fills the
    /// buffer or ends in one blocking read.
    async fn round(&mut self) -> Result<(), Failure> {
        let intake = &mut self.intake;
        intake.streams.discover_when_due(&intake.inner).await?;
        match &mut self.mode {
            Mode::Group(group) => group.round(intake).await,
            Mode::Plain(plain) => plain.round(intake).await,
        }
    }

    /// Makes a received entry a delivery, as it is handed out.
    fn hand_out(&self, ready: Ready) -> Box<dyn Delivery> {
        match &self.mode {
            Mode::Group(group) => group.hand_out(&self.intake, ready),
            Mode::Plain(plain) => plain.hand_out(&self.intake, ready),
        }
    }
}

/// The half of a subscription's read loop that is the same in both modes.
struct Intake {
    inner: Arc<Inner>,
    origin: Arc<Origin>,
    pattern: String,
    /// The connection of this subscription's blocking reads: a block on the shared
    /// multiplexed connection would hold up every command behind it.
    reader: Option<MultiplexedConnection>,
    streams: Streams,
    /// Entries received and not handed out yet: they become deliveries when handed out (a
    /// subscription outside any group starts their ack wait then).
    buffer: VecDeque<Ready>,
}

/// An entry received, to hand out.
#[derive(Debug)]
struct Ready {
    at: EntryRef,
    event: Arc<WireEvent>,
    attempt: u32,
    /// When it was received from Redis.
    received: Instant,
}

/// What became of an entry received.
enum Received {
    /// To hand out.
    Ready(Ready),
    /// Settled here, not to hand out: trimmed while pending, dead-lettered because it does not
    /// decode, or a repeat of an event acked before. A group acknowledges it.
    Done(String),
    /// Left as it is: not of this subscription's streams, or its dead letter could not be
    /// stored (in a group it stays pending, and comes back after the ack wait).
    Left,
}

impl Intake {
    /// The delivery of `ready`, settled as `settlement` says.
    fn deliver(&self, ready: Ready, settlement: Settlement) -> Box<dyn Delivery> {
        Box::new(RedisDelivery::new(
            Arc::clone(&self.inner),
            Arc::clone(&self.origin),
            ready.at,
            ready.event,
            ready.attempt,
            settlement,
        ))
    }

    /// A blocking read (`what`: `XREAD` or `XREADGROUP`) on the subscription's own connection.
    async fn read(
        &mut self,
        command: &redis::Cmd,
        what: &'static str,
    ) -> Result<Vec<(String, Vec<Entry>)>, Failure> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Vec::new());
        };
        let reply: Value = command
            .query_async(reader)
            .await
            .map_err(|error| Failure::of(what, &self.pattern, error))?;
        keys::read_reply(&reply).map_err(|detail| Failure::reply(what, &self.pattern, detail))
    }

    /// Decodes an entry of the stream `key`, as its `attempt`-th delivery. An entry that was
    /// trimmed, that does not decode (dead-lettered here), or that repeats an acked id is not
    /// to hand out.
    async fn receive(&mut self, key: &str, entry: Entry, attempt: u32) -> Received {
        let Some(stream) = self.streams.get_mut(key) else {
            return Received::Left;
        };
        let name = stream.name.clone();
        // The cursor follows the newest entry received: `XREAD` goes on after it, and a
        // vanished group is created again from it.
        if keys::id_key(&entry.id) > keys::id_key(&stream.cursor) {
            stream.cursor = entry.id.clone();
        }
        let Some(fields) = entry.fields else {
            self.report_trimmed(key, &entry.id);
            return Received::Done(entry.id);
        };
        let event = match keys::decode(&name, &fields, self.inner.config.max_payload) {
            Ok(event) => event,
            Err(reason) => {
                return self
                    .reject_raw(key, &name, entry.id, &fields, attempt, &reason)
                    .await;
            }
        };
        if self.inner.was_acked(&self.origin.label, &event) {
            self.report_duplicate(key, &entry.id, &event);
            return Received::Done(entry.id);
        }
        Received::Ready(Ready {
            at: EntryRef {
                name,
                key: key.to_owned(),
                entry: entry.id,
            },
            event: Arc::new(event),
            attempt,
            received: Instant::now(),
        })
    }

    /// Counts and logs (at `info`) an entry dropped because its group acknowledged its event
    /// (the same source and id) within the acked window.
    fn report_duplicate(&self, key: &str, entry: &str, event: &WireEvent) {
        let group = self.origin.label.as_str();
        self.inner
            .stats
            .duplicates_dropped
            .fetch_add(1, Ordering::Relaxed);
        count_duplicate(NAME, Some(group));
        tracing::info!(
            event = %event.ty,
            event_id = %event.id,
            source = %event.source,
            group = %group,
            key,
            entry,
            "duplicate dropped: the group acknowledged an event of this source and id within the \
             acked window"
        );
    }

    /// Counts and logs an entry found trimmed (deleted by the retention) while pending: only
    /// the reads of a group meet them.
    fn report_trimmed(&self, key: &str, entry: &str) {
        self.inner
            .stats
            .trimmed_while_pending
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            key,
            entry,
            group = self.origin.label.as_str(),
            "an entry was trimmed (deleted by the stream's retention) while pending: its event \
             is lost to the group; raise the retention"
        );
    }

    /// Dead-letters an entry that does not decode, with the reason; a dead letter that does
    /// not decode is dropped (no loop).
    async fn reject_raw(
        &self,
        key: &str,
        name: &str,
        entry: String,
        fields: &keys::Fields,
        attempt: u32,
        reason: &str,
    ) -> Received {
        if name.starts_with(&format!("{DEAD_LETTER_PREFIX}.")) {
            tracing::warn!(
                key,
                entry,
                reason,
                "dropping a dead letter that does not decode"
            );
            return Received::Done(entry);
        }
        let label = &self.origin.label;
        let (letter, stored) = keys::dead_letter_raw(name, &entry, fields, label, attempt, reason);
        match store_dead_letter(&self.inner, &letter, stored).await {
            Ok(()) => {
                tracing::warn!(
                    key,
                    entry,
                    dead_letter = %letter.ty,
                    reason,
                    "entry that does not decode dead-lettered"
                );
                Received::Done(entry)
            }
            Err(error) => {
                tracing::error!(key, entry, reason, %error, "cannot dead-letter an entry that does not decode");
                Received::Left
            }
        }
    }
}
