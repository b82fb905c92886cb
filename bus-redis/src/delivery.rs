//! [`RedisDelivery`]: one stream entry handed to a subscriber; the bookkeeping of its
//! subscription that settling it writes into ([`Settlement`]); and the dead letters.
//!
//! A subscription in a group and one outside any group settle differently. In a group, Redis
//! keeps the entry pending until `XACK`, and counts its deliveries; a nack leaves it pending,
//! and the subscription claims it back once the delay is over ([`GroupShared`]). Outside any
//! group, `XREAD` keeps nothing: the subscription keeps the deliveries in flight and the events
//! to deliver again itself ([`PlainShared`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bus_core::transport::{BoxFuture, Delivery, TransportError, WireEvent, dead_letter_name};
use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use crate::connection::Inner;
use crate::error::RedisError;
use crate::keys;

/// How long after a failed dead letter of a subscription outside any group the event is
/// tried again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// One entry of one stream.
#[derive(Debug, Clone)]
pub(crate) struct EntryRef {
    /// The event name, which is the stream's.
    pub(crate) name: String,
    /// The stream's key.
    pub(crate) key: String,
    /// The entry's id.
    pub(crate) entry: String,
}

/// What a delivery knows about the subscription it came from.
#[derive(Debug)]
pub(crate) struct Origin {
    /// The group as given, or `subscription-<consumer>` outside any group: the
    /// `deadlettergroup` of its dead letters and the key of its acked ids.
    pub(crate) label: String,
    /// The consumer's name in the group (outside any group: the subscription's name).
    pub(crate) consumer: String,
    /// The subscription's `max_deliveries`.
    pub(crate) max_deliveries: u32,
}

/// In a group: what a subscription shares with its deliveries.
#[derive(Debug)]
pub(crate) struct GroupShared {
    /// The consumer group.
    pub(crate) group: String,
    /// The entries nacked with a delay, which the subscription claims back once due.
    retries: Mutex<Vec<Retry>>,
}

impl GroupShared {
    pub(crate) fn new(group: String) -> GroupShared {
        GroupShared {
            group,
            retries: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn retries(&self) -> MutexGuard<'_, Vec<Retry>> {
        self.retries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An entry of a group to claim back once due.
#[derive(Debug)]
pub(crate) struct Retry {
    pub(crate) at: EntryRef,
    pub(crate) due: Instant,
    /// When its last delivery was received.
    pub(crate) received: Instant,
}

/// Outside any group: what a subscription shares with its deliveries.
#[derive(Debug, Default)]
pub(crate) struct PlainShared(Mutex<Flights>);

impl PlainShared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Flights> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The bookkeeping of a subscription outside any group.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    /// The deliveries handed out and not settled, by number.
    in_flight: HashMap<u64, Flight>,
    /// The events to deliver again once due.
    redeliver: VecDeque<Redeliver>,
    /// The number of the next delivery handed out.
    next: u64,
}

impl Flights {
    /// Registers a delivery handed out; returns its number.
    pub(crate) fn start(&mut self, flight: Flight) -> u64 {
        let number = self.next;
        self.next += 1;
        self.in_flight.insert(number, flight);
        number
    }

    /// Takes out the deliveries whose ack wait is over at `now`.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<Flight> {
        let numbers: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, flight)| flight.deadline <= now)
            .map(|(number, _)| *number)
            .collect();
        numbers
            .into_iter()
            .filter_map(|number| self.in_flight.remove(&number))
            .collect()
    }

    /// Puts an event in line to be delivered again once due.
    pub(crate) fn redeliver(&mut self, again: Redeliver) {
        self.redeliver.push_back(again);
    }

    /// Takes out the events due to be delivered again at `now`, in line order.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Redeliver> {
        let (due, later): (Vec<Redeliver>, Vec<Redeliver>) = std::mem::take(&mut self.redeliver)
            .into_iter()
            .partition(|again| again.due <= now);
        self.redeliver = later.into();
        due
    }

    /// The earliest of the next redelivery and the next end of an ack wait.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let redeliver = self.redeliver.iter().map(|again| again.due);
        let deadlines = self.in_flight.values().map(|flight| flight.deadline);
        redeliver.chain(deadlines).min()
    }
}

/// A delivery in flight outside any group.
#[derive(Debug)]
pub(crate) struct Flight {
    pub(crate) at: EntryRef,
    pub(crate) event: Arc<WireEvent>,
    pub(crate) attempt: u32,
    /// When its ack wait is over.
    pub(crate) deadline: Instant,
}

/// An event to deliver again outside any group.
#[derive(Debug)]
pub(crate) struct Redeliver {
    pub(crate) at: EntryRef,
    pub(crate) event: Arc<WireEvent>,
    pub(crate) attempt: u32,
    pub(crate) due: Instant,
}

/// How a delivery is settled: by the mode of its subscription.
pub(crate) enum Settlement {
    /// In a group: `XACK`; a nack leaves the entry pending, and the subscription claims it
    /// back once due.
    Group {
        shared: Arc<GroupShared>,
        /// When the subscription received the entry.
        received: Instant,
    },
    /// Outside any group: the subscription's own bookkeeping, and the number of this delivery
    /// among those in flight.
    Plain {
        shared: Arc<PlainShared>,
        flight: u64,
    },
}

/// One delivery of one entry. Settled by `ack`, `nack` or `reject`; dropped unsettled, it goes
/// back to the group (a spawned task makes it claimable at once) or, outside any group, back in
/// line of its subscription.
pub(crate) struct RedisDelivery {
    event: Arc<WireEvent>,
    attempt: u32,
    /// What settling needs; `None` once settled.
    settle: Option<Settle>,
}

impl RedisDelivery {
    pub(crate) fn new(
        inner: Arc<Inner>,
        origin: Arc<Origin>,
        at: EntryRef,
        event: Arc<WireEvent>,
        attempt: u32,
        settlement: Settlement,
    ) -> RedisDelivery {
        RedisDelivery {
            event: Arc::clone(&event),
            attempt,
            settle: Some(Settle {
                inner,
                origin,
                at,
                event,
                attempt,
                settlement,
            }),
        }
    }

    /// Settles the delivery with `settle`, in a span saying `what`.
    fn settle_with<F>(
        &mut self,
        what: &'static str,
        settle: impl FnOnce(Settle) -> F,
    ) -> BoxFuture<'static, Result<(), TransportError>>
    where
        F: Future<Output = Result<(), TransportError>> + Send + 'static,
    {
        match self.settle.take() {
            Some(taken) => {
                let span = taken.span(what);
                Box::pin(settle(taken).instrument(span))
            }
            // Only `Drop` leaves a delivery without what settling needs.
            None => Box::pin(std::future::ready(Ok(()))),
        }
    }
}

/// A delivery being settled.
struct Settle {
    inner: Arc<Inner>,
    origin: Arc<Origin>,
    at: EntryRef,
    event: Arc<WireEvent>,
    attempt: u32,
    settlement: Settlement,
}

impl Settle {
    fn span(&self, what: &'static str) -> tracing::Span {
        tracing::debug_span!(
            "bus.redis.settle",
            what,
            stream = %self.at.key,
            entry = %self.at.entry,
            consumer = %self.origin.consumer,
            event_id = %self.event.id,
            attempt = self.attempt,
        )
    }

    /// Outside any group: whether the delivery was still in flight (not expired meanwhile);
    /// takes it out. In a group: always `true`.
    fn leave_flight(&self) -> bool {
        match &self.settlement {
            Settlement::Group { .. } => true,
            Settlement::Plain { shared, flight } => {
                shared.lock().in_flight.remove(flight).is_some()
            }
        }
    }

    async fn ack(self) -> Result<(), TransportError> {
        if !self.leave_flight() {
            return Ok(());
        }
        if let Settlement::Group { shared, .. } = &self.settlement {
            self.inner
                .ack(&self.at.key, &shared.group, &self.at.entry)
                .await?;
        }
        self.inner.record_ack(&self.origin.label, &self.event);
        Ok(())
    }

    async fn nack(self, delay: Duration, reason: String) -> Result<(), TransportError> {
        if !self.leave_flight() {
            return Ok(());
        }
        if self.attempt >= self.origin.max_deliveries {
            let reason = format!("{reason} (after {} deliveries)", self.attempt);
            return self.dead_letter(&reason, self.attempt).await;
        }
        tracing::debug!(?delay, reason, "nack");
        self.requeue(Instant::now() + delay);
        Ok(())
    }

    async fn reject(self, reason: String) -> Result<(), TransportError> {
        if !self.leave_flight() {
            return Ok(());
        }
        self.dead_letter(&reason, self.attempt).await
    }

    /// Dropped unsettled: dead-lettered on the last allowed attempt; otherwise back to the
    /// group (claimable at once) or back in line.
    async fn dropped(self) {
        if !self.leave_flight() {
            return;
        }
        if self.attempt >= self.origin.max_deliveries {
            let reason = format!("dropped unsettled (after {} deliveries)", self.attempt);
            let _ = self.dead_letter(&reason, self.attempt).await;
            return;
        }
        match &self.settlement {
            Settlement::Group { shared, .. } => {
                tracing::debug!("delivery dropped unsettled: back to the group");
                let entries = std::slice::from_ref(&self.at.entry);
                let consumer = &self.origin.consumer;
                let handed = self
                    .inner
                    .hand_back(&self.at.key, &shared.group, consumer, entries);
                if let Err(error) = handed.await {
                    tracing::debug!(%error, "cannot hand the entry back; it is claimed after the ack wait");
                }
            }
            Settlement::Plain { .. } => self.requeue(Instant::now()),
        }
    }

    /// Delivers the event again once `due`: in a group, this subscription claims the entry
    /// back then; outside, it goes back in line.
    fn requeue(&self, due: Instant) {
        match &self.settlement {
            Settlement::Group { shared, received } => shared.retries().push(Retry {
                at: self.at.clone(),
                due,
                received: *received,
            }),
            Settlement::Plain { shared, .. } => shared.lock().redeliver(Redeliver {
                at: self.at.clone(),
                event: Arc::clone(&self.event),
                attempt: self.attempt + 1,
                due,
            }),
        }
    }

    /// Stores the dead letter of the event, then acknowledges the entry. If the dead letter
    /// cannot be stored, the entry stays pending (a group claims it again after the ack wait)
    /// or goes back in line a little later.
    async fn dead_letter(&self, reason: &str, attempts: u32) -> Result<(), TransportError> {
        match dead_letter(&self.inner, &self.origin, &self.event, attempts, reason).await {
            Ok(()) => {
                if let Settlement::Group { shared, .. } = &self.settlement {
                    self.inner
                        .ack(&self.at.key, &shared.group, &self.at.entry)
                        .await?;
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot store the dead letter; the event will be delivered again");
                if let Settlement::Plain { .. } = &self.settlement {
                    self.requeue(Instant::now() + DEAD_LETTER_RETRY);
                }
                Err(RedisError::DeadLetter {
                    event: self.at.name.clone(),
                    dead_letter: dead_letter_name(&self.event.ty),
                    detail: error.to_string(),
                }
                .broker())
            }
        }
    }
}

/// Stores the dead letter of `event` after `attempts` deliveries
/// ([`WireEvent::dead_letter`], in the group of `origin`), counts it and logs it.
pub(crate) async fn dead_letter(
    inner: &Inner,
    origin: &Origin,
    event: &WireEvent,
    attempts: u32,
    reason: &str,
) -> Result<(), TransportError> {
    let letter = event.dead_letter(&origin.label, attempts, reason);
    store_dead_letter(inner, &letter, keys::event_fields(&letter)).await?;
    tracing::warn!(dead_letter = %letter.ty, reason, attempts, "event dead-lettered");
    Ok(())
}

/// Publishes a dead letter (its source and id make a second one of the same event and group a
/// duplicate), counting it.
pub(crate) async fn store_dead_letter<F: AsRef<[u8]>>(
    inner: &Inner,
    letter: &WireEvent,
    fields: Vec<(F, Bytes)>,
) -> Result<(), TransportError> {
    inner.publish_fields(letter, fields).await?;
    inner.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

impl Delivery for RedisDelivery {
    fn event(&self) -> &WireEvent {
        &self.event
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settle_with("ack", Settle::ack)
    }

    fn nack(
        mut self: Box<Self>,
        delay: Duration,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settle_with("nack", move |settle| settle.nack(delay, reason))
    }

    fn reject(
        mut self: Box<Self>,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settle_with("reject", move |settle| settle.reject(reason))
    }

    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settle_with("released", |settle| async move {
            settle.dropped().await;
            Ok(())
        })
    }
}

impl Drop for RedisDelivery {
    fn drop(&mut self) {
        let Some(settle) = self.settle.take() else {
            return;
        };
        let span = settle.span("dropped");
        if matches!(settle.settlement, Settlement::Plain { .. })
            && settle.attempt < settle.origin.max_deliveries
        {
            // Outside any group: back in line here and now, no task needed.
            if settle.leave_flight() {
                settle.requeue(Instant::now());
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&settle.inner);
        inner.spawn_background(&runtime, settle.dropped().instrument(span));
    }
}
