//! [`RedisDelivery`]: one stream entry handed to a subscriber, and the dead letters.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bus_core::transport::{BoxFuture, Delivery, TransportError, WireEvent};
use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use crate::connection::Inner;
use crate::error::RedisError;
use crate::keys;
use crate::subscription::{Redeliver, Retry, Shared};

/// How long after a failed dead letter of a subscription outside any group the event is
/// tried again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// One delivery of one entry. Settled by `ack`, `nack` or `reject`; dropped unsettled, it goes
/// back to the group (a spawned task makes it claimable at once) or, outside any group, back in
/// line of its subscription.
pub(crate) struct RedisDelivery {
    pub(crate) inner: Arc<Inner>,
    pub(crate) shared: Arc<Shared>,
    /// The event name, which is the stream's.
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) entry: String,
    pub(crate) event: Arc<WireEvent>,
    pub(crate) attempt: u32,
    /// When the subscription received it.
    pub(crate) received: Instant,
    /// Outside any group: its number among the subscription's deliveries in flight.
    pub(crate) flight: Option<u64>,
    pub(crate) settled: bool,
}

impl RedisDelivery {
    fn span(&self, what: &'static str) -> tracing::Span {
        tracing::debug_span!(
            "bus.redis.settle",
            what,
            stream = %self.key,
            entry = %self.entry,
            consumer = %self.shared.spec.consumer,
            event_id = %self.event.id,
            attempt = self.attempt,
        )
    }

    /// Marks the delivery settled and takes what settling needs.
    fn take(&mut self) -> Settle {
        self.settled = true;
        Settle {
            inner: Arc::clone(&self.inner),
            shared: Arc::clone(&self.shared),
            name: std::mem::take(&mut self.name),
            key: std::mem::take(&mut self.key),
            entry: std::mem::take(&mut self.entry),
            event: Arc::clone(&self.event),
            attempt: self.attempt,
            received: self.received,
            flight: self.flight,
        }
    }
}

/// A delivery being settled.
pub(crate) struct Settle {
    pub(crate) inner: Arc<Inner>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) entry: String,
    pub(crate) event: Arc<WireEvent>,
    pub(crate) attempt: u32,
    pub(crate) received: Instant,
    pub(crate) flight: Option<u64>,
}

impl Settle {
    /// Outside any group: whether the delivery was still in flight (not expired meanwhile);
    /// takes it out. In a group: always `true`.
    fn leave_flight(&self) -> bool {
        match self.flight {
            Some(flight) => self.shared.lock().in_flight.remove(&flight).is_some(),
            None => true,
        }
    }

    async fn ack(self) -> Result<(), TransportError> {
        let spec = &self.shared.spec;
        if !self.leave_flight() {
            return Ok(());
        }
        if let Some(group) = &spec.group {
            self.inner.ack(&self.key, group, &self.entry).await?;
        }
        self.inner.record_ack(&spec.label, &self.event.id);
        Ok(())
    }

    async fn nack(self, delay: Duration, reason: String) -> Result<(), TransportError> {
        if !self.leave_flight() {
            return Ok(());
        }
        let max = self.shared.spec.max_deliveries;
        if self.attempt >= max {
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
        if self.attempt >= self.shared.spec.max_deliveries {
            let reason = format!("dropped unsettled (after {} deliveries)", self.attempt);
            let _ = self.dead_letter(&reason, self.attempt).await;
            return;
        }
        match &self.shared.spec.group {
            Some(group) => {
                tracing::debug!("delivery dropped unsettled: back to the group");
                let consumer = &self.shared.spec.consumer;
                if let Err(error) = crate::subscription::hand_back(
                    &self.inner,
                    &self.key,
                    group,
                    consumer,
                    std::slice::from_ref(&self.entry),
                )
                .await
                {
                    tracing::debug!(%error, "cannot hand the entry back; it is claimed after the ack wait");
                }
            }
            None => self.requeue(Instant::now()),
        }
    }

    /// Delivers the event again once `due`: in a group, this subscription claims the entry
    /// back then; outside, it goes back in line.
    fn requeue(&self, due: Instant) {
        let mut local = self.shared.lock();
        match &self.shared.spec.group {
            Some(_) => local.retries.push(Retry {
                name: self.name.clone(),
                key: self.key.clone(),
                entry: self.entry.clone(),
                due,
                received: self.received,
            }),
            None => local.redeliver.push_back(Redeliver {
                name: self.name.clone(),
                key: self.key.clone(),
                entry: self.entry.clone(),
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
        let spec = &self.shared.spec;
        let letter = self.event.dead_letter(&spec.label, attempts, reason);
        let stored = store_dead_letter(&self.inner, &letter, keys::event_fields(&letter)).await;
        match stored {
            Ok(()) => {
                tracing::warn!(dead_letter = %letter.ty, reason, attempts, "event dead-lettered");
                if let Some(group) = &spec.group {
                    self.inner.ack(&self.key, group, &self.entry).await?;
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot store the dead letter; the event will be delivered again");
                if spec.group.is_none() {
                    self.requeue(Instant::now() + DEAD_LETTER_RETRY);
                }
                Err(RedisError::DeadLetter {
                    event: self.name.clone(),
                    dead_letter: letter.ty.clone(),
                    detail: error.to_string(),
                }
                .broker())
            }
        }
    }
}

/// Publishes a dead letter (its id makes a second one of the same event and group a
/// duplicate), counting it.
pub(crate) async fn store_dead_letter(
    inner: &Inner,
    letter: &WireEvent,
    fields: Vec<(String, Bytes)>,
) -> Result<(), TransportError> {
    inner.publish_fields(&letter.ty, &letter.id, fields).await?;
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
        let span = self.span("ack");
        let settle = self.take();
        Box::pin(settle.ack().instrument(span))
    }

    fn nack(
        mut self: Box<Self>,
        delay: Duration,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("nack");
        let settle = self.take();
        Box::pin(settle.nack(delay, reason).instrument(span))
    }

    fn reject(
        mut self: Box<Self>,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("reject");
        let settle = self.take();
        Box::pin(settle.reject(reason).instrument(span))
    }

    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("released");
        let settle = self.take();
        Box::pin(
            async move {
                settle.dropped().await;
                Ok(())
            }
            .instrument(span),
        )
    }
}

impl Drop for RedisDelivery {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let span = self.span("dropped");
        let settle = self.take();
        if settle.flight.is_some() && settle.attempt < settle.shared.spec.max_deliveries {
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
