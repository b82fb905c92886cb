//! Subscriptions: a channel and a consumer per subscription, the deliveries it holds, their
//! ack wait, and what happens to them when they are settled, dropped, or their subscription
//! closes.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bus_core::transport::support::readable_event;
use bus_core::transport::{
    BoxFuture, Delivery, SubscribeOptions, TransportError, TransportSubscription, WireEvent,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use lapin::Acker;
use lapin::Channel;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::time::Instant;

use crate::error::{AmqpError, NAME, channel};
use crate::transport::Inner;
use crate::wire::{ATTEMPTS_HEADER, DELIVERY_COUNT_HEADER};

/// How long a closing subscription waits for the broker to confirm its consumer's cancel and
/// for the deliveries already on their way.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The deliveries the subscriptions of this process hold unacknowledged, per group queue:
/// the `pending` of [`group_stats`](bus_core::transport::Transport::group_stats), as AMQP
/// 0-9-1 has no way to ask a queue for its unacknowledged count.
static UNACKED: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Mutex::default);

/// The deliveries of queue `queue` that subscriptions of this process hold unacknowledged.
pub(crate) fn unacked(queue: &str) -> u64 {
    UNACKED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(queue)
        .copied()
        .unwrap_or(0)
}

fn count_unacked(queue: &str, add: u64, remove: u64) {
    let mut counts = UNACKED.lock().unwrap_or_else(PoisonError::into_inner);
    let count = counts.entry(queue.to_owned()).or_default();
    *count = count.saturating_add(add).saturating_sub(remove);
    if *count == 0 {
        counts.remove(queue);
    }
}

/// A message the consumer received and the subscription has not yielded yet.
struct Buffered {
    delivery: lapin::message::Delivery,
    arrived: Instant,
}

/// A delivery yielded and not settled yet.
struct Held {
    acker: Acker,
    event: WireEvent,
    attempt: u32,
    deadline: Instant,
}

#[derive(Default)]
struct State {
    buffer: VecDeque<Buffered>,
    held: HashMap<u64, Held>,
    /// The consumer ended: with an error to yield first, or cancelled.
    ended: Option<Option<TransportError>>,
    /// Deliveries received and not acknowledged yet (buffered or held, or being settled).
    outstanding: u64,
    waker: Option<Waker>,
}

/// What a subscription, its deliveries and its background tasks share.
pub(crate) struct Shared {
    inner: Arc<Inner>,
    channel: Channel,
    consumer_tag: ShortString,
    queue: String,
    /// The group's delay queue; `None` outside any group.
    delay_queue: Option<String>,
    /// The group, or `subscription-<n>`: the `deadlettergroup` of its dead letters.
    label: String,
    max_deliveries: u32,
    ack_wait: Duration,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn grouped(&self) -> bool {
        self.delay_queue.is_some()
    }

    fn take(&self, tag: u64) -> Option<Held> {
        self.state().held.remove(&tag)
    }

    /// Acknowledges a message: it leaves the queue.
    async fn ack(&self, acker: &Acker) -> Result<(), TransportError> {
        let acked = acker.ack(BasicAckOptions::default()).await;
        {
            let mut state = self.state();
            state.outstanding = state.outstanding.saturating_sub(1);
        }
        if self.grouped() {
            count_unacked(&self.queue, 0, 1);
        }
        acked.map(drop).map_err(|error| channel("basic.ack", error))
    }

    /// Publishes `event` again to this subscription's queue (after `delay`, through the
    /// group's delay queue), counting `attempts` deliveries made.
    async fn requeue(
        self: &Arc<Self>,
        event: &WireEvent,
        attempts: u32,
        delay: Duration,
    ) -> Result<(), TransportError> {
        let properties = crate::wire::properties(event, attempts).unwrap_or_default();
        match (&self.delay_queue, delay.is_zero()) {
            (_, true) => {
                self.inner
                    .send("", &self.queue, properties, &event.data, &event.ty)
                    .await
            }
            (Some(delay_queue), false) => {
                let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
                let properties = properties.with_expiration(millis.to_string().into());
                self.inner
                    .send("", delay_queue, properties, &event.data, &event.ty)
                    .await
            }
            (None, false) => {
                // Outside any group the queue lives as long as its subscription: the wait is
                // a timer of this process.
                let (shared, event) = (Arc::clone(self), event.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Err(error) = shared
                        .inner
                        .send("", &shared.queue, properties, &event.data, &event.ty)
                        .await
                    {
                        tracing::warn!(%error, event = %event.ty, id = %event.id, "redelivery after a delay failed");
                    }
                });
                Ok(())
            }
        }
    }

    /// Dead-letters a held delivery and acknowledges it.
    async fn dead_letter(&self, held: Held, reason: &str) -> Result<(), TransportError> {
        let letter = held.event.dead_letter(&self.label, held.attempt, reason);
        tracing::warn!(
            event = %held.event.ty,
            id = %held.event.id,
            group = %self.label,
            attempts = held.attempt,
            reason,
            "dead-lettered"
        );
        self.inner.publish_event(&letter, 0).await?;
        self.ack(&held.acker).await
    }

    /// A held delivery that failed through no fault of the event: delivered again (another
    /// attempt), or dead-lettered when it was the last.
    async fn hand_back(self: &Arc<Self>, held: Held, reason: &str) -> Result<(), TransportError> {
        if held.attempt >= self.max_deliveries {
            return self.dead_letter(held, reason).await;
        }
        self.requeue(&held.event, held.attempt, Duration::ZERO)
            .await?;
        self.ack(&held.acker).await
    }

    /// A message received and never yielded goes back to the queue, not counted as an
    /// attempt: published again with the count it came with, then acknowledged.
    async fn return_unyielded(&self, delivery: lapin::message::Delivery) {
        let attempts = crate::wire::attempt(&delivery.properties).saturating_sub(1);
        let mut headers = delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default()
            .inner()
            .clone();
        headers.remove(DELIVERY_COUNT_HEADER);
        headers.insert(
            ATTEMPTS_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
        let properties = delivery
            .properties
            .clone()
            .with_headers(FieldTable::from(headers));
        let event = delivery.routing_key.as_str().to_owned();
        let result = match self
            .inner
            .send("", &self.queue, properties, &delivery.data, &event)
            .await
        {
            Ok(()) => self.ack(&delivery.acker).await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::debug!(%error, "returning an unread delivery: the broker returns it when the channel closes");
        }
    }

    /// A message that cannot be yielded: one that does not decode (dead-lettered as the event
    /// it can be read as), or one whose last attempt was not settled (its consumer died).
    async fn refuse(
        self: Arc<Self>,
        delivery: lapin::message::Delivery,
        event: Option<WireEvent>,
        reason: String,
    ) {
        let attempt = crate::wire::attempt(&delivery.properties);
        let event = event.unwrap_or_else(|| {
            let attributes =
                crate::wire::attribute_headers(&delivery.properties).unwrap_or_default();
            readable_event(
                &self.inner.source,
                delivery.routing_key.as_str(),
                attributes
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
                Bytes::from(delivery.data.clone()),
                || format!("amqp-{}", delivery.delivery_tag),
            )
        });
        let held = Held {
            acker: delivery.acker.clone(),
            event,
            attempt: attempt.min(self.max_deliveries),
            deadline: Instant::now(),
        };
        if let Err(error) = self.dead_letter(held, &reason).await {
            tracing::warn!(%error, "dead-lettering failed: the broker delivers the message again");
        }
    }
}

/// Opens a subscription.
pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    options: SubscribeOptions,
) -> Result<TransportSubscription, TransportError> {
    let key = crate::names::check_pattern(&options.pattern)?;
    let link = inner.connection().await?;
    let channel_ = link
        .connection
        .create_channel()
        .await
        .map_err(|error| channel("channel.open", error))?;
    channel_
        .basic_qos(inner.prefetch, BasicQosOptions::default())
        .await
        .map_err(|error| channel("basic.qos", error))?;
    let (queue, delay_queue, label) = match &options.group {
        Some(group) => {
            let (queue, delay) = crate::names::group_queues(&inner.exchange, group)?;
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            channel_
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    arguments,
                )
                .await
                .map_err(|error| channel("queue.declare", error))?;
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(queue.as_str().into()),
            );
            channel_
                .queue_declare(
                    delay.as_str().into(),
                    QueueDeclareOptions::durable(),
                    arguments,
                )
                .await
                .map_err(|error| channel("queue.declare (delay)", error))?;
            inner
                .groups
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(group.clone());
            (queue, Some(delay), group.clone())
        }
        None => {
            let declared = channel_
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions::exclusive().auto_delete(),
                    FieldTable::default(),
                )
                .await
                .map_err(|error| channel("queue.declare", error))?;
            let number = inner.subscriptions.fetch_add(1, Ordering::Relaxed) + 1;
            (
                declared.name().as_str().to_owned(),
                None,
                format!("subscription-{number}"),
            )
        }
    };
    channel_
        .queue_bind(
            queue.as_str().into(),
            inner.exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| channel("queue.bind", error))?;
    let consumer = channel_
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| channel("basic.consume", error))?;
    tracing::debug!(pattern = %options.pattern, binding = %key, %queue, group = %label, "subscribed");
    let shared = Arc::new(Shared {
        inner,
        channel: channel_,
        consumer_tag: consumer.tag(),
        queue,
        delay_queue,
        label,
        max_deliveries: options.max_deliveries.max(1),
        ack_wait: options.ack_wait,
        state: Mutex::default(),
    });
    let pump = tokio::spawn(pump(Arc::downgrade(&shared), consumer));
    let timer = tokio::spawn(ack_wait_timer(Arc::downgrade(&shared)));
    Ok(Box::pin(Subscription {
        shared,
        pump: Some(pump),
        timer,
    }))
}

/// Moves what the consumer receives into the subscription's buffer, in order.
async fn pump(shared: Weak<Shared>, mut consumer: lapin::Consumer) {
    loop {
        let item = consumer.next().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.state();
        match item {
            Some(Ok(delivery)) => {
                state.buffer.push_back(Buffered {
                    delivery,
                    arrived: Instant::now(),
                });
                state.outstanding += 1;
                if shared.grouped() {
                    count_unacked(&shared.queue, 1, 0);
                }
            }
            Some(Err(error)) => {
                state.ended = Some(Some(channel("consuming", error)));
            }
            None => {
                if state.ended.is_none() {
                    state.ended = Some(None);
                }
            }
        }
        let ended = state.ended.is_some();
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        if ended {
            return;
        }
    }
}

/// Hands back the deliveries held past their ack wait, and, in a group, the messages that
/// waited unread in the buffer for as long (a subscription nobody reads must not keep them
/// from the group's other members).
async fn ack_wait_timer(shared: Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(shared) => {
            (shared.ack_wait / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
        }
        None => return,
    };
    let mut interval = tokio::time::interval(period);
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (expired, unread) = {
            let mut state = shared.state();
            let tags: Vec<u64> = state
                .held
                .iter()
                .filter(|(_, held)| held.deadline <= now)
                .map(|(tag, _)| *tag)
                .collect();
            let expired: Vec<Held> = tags
                .iter()
                .filter_map(|tag| state.held.remove(tag))
                .collect();
            let mut unread = Vec::new();
            if shared.grouped() {
                while state
                    .buffer
                    .front()
                    .is_some_and(|buffered| buffered.arrived + shared.ack_wait <= now)
                {
                    unread.extend(state.buffer.pop_front());
                }
            }
            (expired, unread)
        };
        for held in expired {
            let shared = Arc::clone(&shared);
            shared.inner.tasks.clone().spawn(async move {
                let reason = format!("not settled within the ack wait of {:?}", shared.ack_wait);
                if let Err(error) = shared.hand_back(held, &reason).await {
                    tracing::warn!(%error, "handing back a delivery past its ack wait failed");
                }
            });
        }
        for buffered in unread {
            let shared = Arc::clone(&shared);
            shared
                .inner
                .tasks
                .clone()
                .spawn(async move { shared.return_unyielded(buffered.delivery).await });
        }
    }
}

/// The stream of one subscription.
struct Subscription {
    shared: Arc<Shared>,
    pump: Option<tokio::task::JoinHandle<()>>,
    timer: tokio::task::JoinHandle<()>,
}

impl Stream for Subscription {
    type Item = Result<Box<dyn Delivery>, TransportError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = &self.shared;
        loop {
            let buffered = {
                let mut state = shared.state();
                match state.buffer.pop_front() {
                    Some(buffered) => buffered,
                    None => {
                        return match &mut state.ended {
                            Some(error) => Poll::Ready(error.take().map(Err)),
                            None => {
                                state.waker = Some(cx.waker().clone());
                                Poll::Pending
                            }
                        };
                    }
                }
            };
            let delivery = buffered.delivery;
            let attempt = crate::wire::attempt(&delivery.properties);
            let data = Bytes::from(delivery.data.clone());
            let event = match crate::wire::decode(
                &delivery.properties,
                data,
                shared.inner.max_payload,
            ) {
                Ok(event) => event,
                Err(error) => {
                    let reason = format!("does not decode: {error}");
                    tracing::warn!(routing_key = %delivery.routing_key, %reason, "a message that is not an event");
                    let shared = Arc::clone(shared);
                    shared
                        .inner
                        .tasks
                        .clone()
                        .spawn(shared.refuse(delivery, None, reason));
                    continue;
                }
            };
            if attempt > shared.max_deliveries {
                // The last allowed delivery was never settled: its consumer died with it.
                let reason = format!(
                    "delivered {} times, the last not settled (its consumer died)",
                    shared.max_deliveries
                );
                let shared = Arc::clone(shared);
                shared
                    .inner
                    .tasks
                    .clone()
                    .spawn(shared.refuse(delivery, Some(event), reason));
                continue;
            }
            let tag = delivery.delivery_tag;
            shared.state().held.insert(
                tag,
                Held {
                    acker: delivery.acker,
                    event: event.clone(),
                    attempt,
                    deadline: Instant::now() + shared.ack_wait,
                },
            );
            return Poll::Ready(Some(Ok(Box::new(AmqpDelivery {
                shared: Arc::clone(shared),
                tag,
                event,
                attempt,
                settled: false,
            }))));
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.timer.abort();
        let shared = Arc::clone(&self.shared);
        let pump = self.pump.take();
        let tasks = shared.inner.tasks.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let _guard = runtime.enter();
        tasks.spawn(async move { close(shared, pump).await });
    }
}

/// Closes a subscription: stops its consumer, hands back what it holds (another attempt each,
/// or a dead letter on the last), returns what it never yielded (no attempt), and closes its
/// channel. Outside any group, closing the channel is all: the queue goes with it.
async fn close(shared: Arc<Shared>, pump: Option<tokio::task::JoinHandle<()>>) {
    if shared.grouped() {
        let cancel = shared
            .channel
            .basic_cancel(shared.consumer_tag.clone(), BasicCancelOptions::default());
        let _ = tokio::time::timeout(CLOSE_GRACE, cancel).await;
        if let Some(pump) = pump {
            // The consumer's stream ends once the cancel is confirmed.
            let _ = tokio::time::timeout(CLOSE_GRACE, pump).await;
        }
        let (held, buffered) = {
            let mut state = shared.state();
            let held: Vec<Held> = state.held.drain().map(|(_, held)| held).collect();
            (held, std::mem::take(&mut state.buffer))
        };
        for held in held {
            if let Err(error) = shared.hand_back(held, "its subscription closed").await {
                tracing::debug!(%error, "handing back at close failed: the broker returns it");
            }
        }
        for buffered in buffered {
            shared.return_unyielded(buffered.delivery).await;
        }
    } else if let Some(pump) = pump {
        pump.abort();
    }
    let _ = shared.channel.close(200, "OK".into()).await;
    let outstanding = std::mem::take(&mut shared.state().outstanding);
    if shared.grouped() {
        count_unacked(&shared.queue, 0, outstanding);
    }
}

/// One delivery of an event to a subscription.
struct AmqpDelivery {
    shared: Arc<Shared>,
    tag: u64,
    event: WireEvent,
    attempt: u32,
    settled: bool,
}

impl AmqpDelivery {
    /// Takes the delivery out of its subscription's hands: `None` when the ack wait passed or
    /// the subscription closed first (it was handed back already).
    fn take(&mut self) -> Result<Held, TransportError> {
        self.settled = true;
        self.shared.take(self.tag).ok_or_else(|| {
            TransportError::broker(
                NAME,
                AmqpError::HandedBack {
                    event: self.event.ty.clone(),
                    ack_wait: self.shared.ack_wait,
                },
            )
        })
    }
}

impl Delivery for AmqpDelivery {
    fn event(&self) -> &WireEvent {
        &self.event
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let held = self.take();
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.ack(&held?.acker).await })
    }

    fn nack(
        mut self: Box<Self>,
        delay: Duration,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let held = self.take();
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let held = held?;
            if held.attempt >= shared.max_deliveries {
                return shared.dead_letter(held, &reason).await;
            }
            shared.requeue(&held.event, held.attempt, delay).await?;
            shared.ack(&held.acker).await
        })
    }

    fn reject(
        mut self: Box<Self>,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let held = self.take();
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.dead_letter(held?, &reason).await })
    }

    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let held = self.take();
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            match held {
                Ok(held) => shared.hand_back(held, "released unsettled").await,
                // Handed back already.
                Err(_) => Ok(()),
            }
        })
    }
}

impl Drop for AmqpDelivery {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Some(held) = self.shared.take(self.tag) else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let _guard = runtime.enter();
        shared.inner.tasks.clone().spawn(async move {
            if let Err(error) = shared.hand_back(held, "dropped unsettled").await {
                tracing::warn!(%error, "handing back a dropped delivery failed");
            }
        });
    }
}
