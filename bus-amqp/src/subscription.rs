//! Subscriptions: a channel and a consumer per subscription, the deliveries it holds, their
//! ack wait, what happens to them when they are settled, dropped, or their subscription
//! closes, and the subscription's recovery when its channel or connection is lost.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bus_core::transport::support::{Backoff, readable_event};
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

/// The longest wait between two attempts to subscribe again after a loss.
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(2);

/// 100 ms after the first failure, doubling up to [`MAX_RESUBSCRIBE_DELAY`].
fn resubscribe_delay(failures: u32) -> Duration {
    Backoff::new(Duration::from_millis(100), MAX_RESUBSCRIBE_DELAY).after(failures)
}

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
    /// The generation of the channel that delivered it.
    generation: u64,
}

/// A delivery yielded and not settled yet.
struct Held {
    acker: Acker,
    event: WireEvent,
    attempt: u32,
    deadline: Instant,
    /// The generation of the channel that delivered it.
    generation: u64,
}

/// The channel a subscription consumes on, and the queue it consumes: replaced when the
/// channel or its connection is lost.
struct Current {
    channel: Channel,
    consumer_tag: ShortString,
    /// The group's queue, or the server-named queue of a subscription outside any group
    /// (a new one after each loss).
    queue: String,
}

struct State {
    current: Current,
    /// Counts the channels this subscription consumed on: deliveries of an earlier one can no
    /// longer be settled.
    generation: u64,
    /// Deliveries of the current channel, received and not yielded yet.
    buffer: VecDeque<Buffered>,
    /// Deliveries of the current channel, yielded and not settled yet, by delivery tag.
    held: HashMap<u64, Held>,
    /// Errors to yield: the losses of a channel, and what subscribing again met that it does
    /// not cure by trying again.
    errors: VecDeque<TransportError>,
    /// The subscription was dropped: no more resubscribing.
    closing: bool,
    /// Deliveries received and not acknowledged yet (buffered or held, or being settled).
    outstanding: u64,
    waker: Option<Waker>,
}

/// What a subscription, its deliveries and its background tasks share.
pub(crate) struct Shared {
    inner: Arc<Inner>,
    /// The binding key of its pattern.
    key: String,
    group: Option<String>,
    /// The group's queue; `None` outside any group (the queue is in [`Current`]).
    group_queue: Option<String>,
    /// The group's delay queue; `None` outside any group.
    delay_queue: Option<String>,
    /// The group, or `subscription-<n>`: the `deadlettergroup` of its dead letters.
    label: String,
    max_deliveries: u32,
    ack_wait: Duration,
    state: Mutex<State>,
    /// The current generation, for acks in flight to learn that their channel was lost.
    generations: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn grouped(&self) -> bool {
        self.delay_queue.is_some()
    }

    /// The queue consumed now.
    fn queue(&self) -> String {
        match &self.group_queue {
            Some(queue) => queue.clone(),
            None => self.state().current.queue.clone(),
        }
    }

    /// Counts deliveries of a group's queue held (`add`) or no longer (`remove`).
    fn count_unacked(&self, add: u64, remove: u64) {
        if let Some(queue) = &self.group_queue {
            count_unacked(queue, add, remove);
        }
    }

    /// A held delivery of channel `generation`, taken out of the subscription's hands: `Err`
    /// when that channel is gone, `Ok(None)` when it was handed back already.
    fn take(&self, generation: u64, tag: u64, event: &str) -> Result<Option<Held>, TransportError> {
        let mut state = self.state();
        if state.generation != generation {
            return Err(lost(event));
        }
        Ok(state.held.remove(&tag))
    }

    /// `Err` when the channel of generation `generation` is gone: its deliveries can no longer
    /// be settled (nothing is to be published for them either: the broker returns them).
    fn check_alive(&self, generation: u64, event: &str) -> Result<(), TransportError> {
        if self.state().generation == generation {
            Ok(())
        } else {
            Err(lost(event))
        }
    }

    /// Acknowledges a message of channel `generation`: it leaves the queue.
    ///
    /// Gives up when that channel is lost meanwhile, or after the publish timeout: an ack sent
    /// as the connection breaks may otherwise never complete in lapin, and a settlement that
    /// never returns stalls the bus's shutdown.
    async fn ack(&self, acker: &Acker, generation: u64, event: &str) -> Result<(), TransportError> {
        let after = self.inner.publish_timeout;
        let mut generations = self.generations.subscribe();
        let acked = tokio::select! {
            biased;
            acked = tokio::time::timeout(after, acker.ack(BasicAckOptions::default())) => acked.ok(),
            _ = generations.wait_for(|current| *current != generation) => None,
        };
        {
            let mut state = self.state();
            state.outstanding = state.outstanding.saturating_sub(1);
        }
        self.count_unacked(0, 1);
        match acked {
            Some(Ok(true)) => Ok(()),
            // The acker was poisoned: its channel closed.
            Some(Ok(false)) => Err(lost(event)),
            Some(Err(error)) => Err(channel("basic.ack", error)),
            None => Err(TransportError::unreachable(
                NAME,
                AmqpError::AckUncertain {
                    event: event.to_owned(),
                    after,
                },
            )),
        }
    }

    /// The channel is lost (or its consumer cancelled): what it delivered can no longer be
    /// settled and is forgotten (the broker returns it), and the loss is yielded.
    fn lose(&self, error: TransportError) -> Channel {
        let mut state = self.state();
        state.generation += 1;
        self.generations.send_replace(state.generation);
        let dropped = u64::try_from(state.buffer.len() + state.held.len()).unwrap_or(u64::MAX);
        state.buffer.clear();
        state.held.clear();
        state.outstanding = state.outstanding.saturating_sub(dropped);
        self.count_unacked(0, dropped);
        state.errors.push_back(error);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        state.current.channel.clone()
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
                    .send("", &self.queue(), properties, &event.data, &event.ty)
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
                        .send("", &shared.queue(), properties, &event.data, &event.ty)
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
        self.check_alive(held.generation, &held.event.ty)?;
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
        self.ack(&held.acker, held.generation, &held.event.ty).await
    }

    /// A held delivery that failed through no fault of the event: delivered again (another
    /// attempt), or dead-lettered when it was the last.
    async fn hand_back(self: &Arc<Self>, held: Held, reason: &str) -> Result<(), TransportError> {
        if held.attempt >= self.max_deliveries {
            return self.dead_letter(held, reason).await;
        }
        self.check_alive(held.generation, &held.event.ty)?;
        self.requeue(&held.event, held.attempt, Duration::ZERO)
            .await?;
        self.ack(&held.acker, held.generation, &held.event.ty).await
    }

    /// A message received and never yielded goes back to the queue, not counted as an
    /// attempt: published again with the count it came with, then acknowledged.
    async fn return_unyielded(&self, buffered: Buffered) {
        let delivery = buffered.delivery;
        let event = delivery.routing_key.as_str().to_owned();
        if self.check_alive(buffered.generation, &event).is_err() {
            return;
        }
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
        let result = match self
            .inner
            .send("", &self.queue(), properties, &delivery.data, &event)
            .await
        {
            Ok(()) => self.ack(&delivery.acker, buffered.generation, &event).await,
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
        generation: u64,
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
            generation,
        };
        if let Err(error) = self.dead_letter(held, &reason).await {
            tracing::warn!(%error, "dead-lettering failed: the broker delivers the message again");
        }
    }
}

/// `Err` for a delivery whose channel is gone.
fn lost(event: &str) -> TransportError {
    TransportError::unreachable(
        NAME,
        AmqpError::DeliveryLost {
            event: event.to_owned(),
        },
    )
}

/// A channel consuming a subscription's queue.
struct Opened {
    channel: Channel,
    consumer: lapin::Consumer,
    queue: String,
}

/// Opens a channel on the shared connection (opened again when it broke), declares the
/// subscription's queue (the group's queues, or a new exclusive queue), binds it and consumes
/// it: as a subscription opens, and each time it subscribes again after a loss.
async fn open(inner: &Inner, key: &str, group: Option<&str>) -> Result<Opened, TransportError> {
    let link = inner.connection().await?;
    let channel_ = link
        .connection
        .create_channel()
        .await
        .map_err(|error| channel("channel.open", error))?;
    let opened = declare_and_consume(inner, &channel_, key, group).await;
    if opened.is_err() {
        let _ = channel_.close(200, "OK".into()).await;
    }
    let (consumer, queue) = opened?;
    Ok(Opened {
        channel: channel_,
        consumer,
        queue,
    })
}

async fn declare_and_consume(
    inner: &Inner,
    channel_: &Channel,
    key: &str,
    group: Option<&str>,
) -> Result<(lapin::Consumer, String), TransportError> {
    channel_
        .basic_qos(inner.prefetch, BasicQosOptions::default())
        .await
        .map_err(|error| channel("basic.qos", error))?;
    let queue = match group {
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
                .insert(group.to_owned());
            queue
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
            declared.name().as_str().to_owned()
        }
    };
    channel_
        .queue_bind(
            queue.as_str().into(),
            inner.exchange.as_str().into(),
            key.into(),
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
    Ok((consumer, queue))
}

/// Opens a subscription.
pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    options: SubscribeOptions,
) -> Result<TransportSubscription, TransportError> {
    let key = crate::names::check_pattern(&options.pattern)?;
    let group_queues = match &options.group {
        Some(group) => Some(crate::names::group_queues(&inner.exchange, group)?),
        None => None,
    };
    let opened = open(&inner, &key, options.group.as_deref()).await?;
    let label = match &options.group {
        Some(group) => group.clone(),
        None => {
            let number = inner.subscriptions.fetch_add(1, Ordering::Relaxed) + 1;
            format!("subscription-{number}")
        }
    };
    tracing::debug!(pattern = %options.pattern, binding = %key, queue = %opened.queue, group = %label, "subscribed");
    let (group_queue, delay_queue) = group_queues.unzip();
    let shared = Arc::new(Shared {
        inner,
        key,
        group: options.group.clone(),
        group_queue,
        delay_queue,
        label,
        max_deliveries: options.max_deliveries.max(1),
        ack_wait: options.ack_wait,
        state: Mutex::new(State {
            current: Current {
                channel: opened.channel,
                consumer_tag: opened.consumer.tag(),
                queue: opened.queue,
            },
            generation: 0,
            buffer: VecDeque::new(),
            held: HashMap::new(),
            errors: VecDeque::new(),
            closing: false,
            outstanding: 0,
            waker: None,
        }),
        generations: tokio::sync::watch::Sender::new(0),
    });
    let pump = tokio::spawn(pump(Arc::downgrade(&shared), opened.consumer));
    let timer = tokio::spawn(ack_wait_timer(Arc::downgrade(&shared)));
    Ok(Box::pin(Subscription {
        shared,
        pump: Some(pump),
        timer,
    }))
}

/// Moves what the consumer receives into the subscription's buffer, in order; when the
/// consumer fails (its channel or connection lost) or is cancelled by the broker, yields the
/// loss and subscribes again. Ends when the subscription is dropped.
async fn pump(weak: Weak<Shared>, mut consumer: lapin::Consumer) {
    loop {
        let item = consumer.next().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let error = {
            let mut state = shared.state();
            let error = match item {
                Some(Ok(delivery)) => {
                    let generation = state.generation;
                    state.buffer.push_back(Buffered {
                        delivery,
                        arrived: Instant::now(),
                        generation,
                    });
                    state.outstanding += 1;
                    shared.count_unacked(1, 0);
                    if let Some(waker) = state.waker.take() {
                        waker.wake();
                    }
                    continue;
                }
                // Cancelled by the subscription itself, as it closes.
                _ if state.closing => return,
                Some(Err(error)) => channel("consuming", error),
                None => TransportError::broker(
                    NAME,
                    AmqpError::ConsumerCancelled {
                        queue: state.current.queue.clone(),
                    },
                ),
            };
            drop(state);
            error
        };
        tracing::warn!(%error, group = %shared.label, "subscription lost its channel: subscribing again");
        let old = shared.lose(error);
        drop(shared);
        // What the old channel delivered goes back to the queue as it closes (when only the
        // consumer was cancelled, the channel is still open).
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLOSE_GRACE, old.close(200, "OK".into())).await;
        });
        consumer = match resubscribe(&weak).await {
            Some(consumer) => consumer,
            None => return,
        };
    }
}

/// Subscribes again after a loss, with a backoff, until it works or the subscription is
/// dropped (`None`). The connection is shared: the first subscription to need it opens it
/// again, the others find it open.
async fn resubscribe(weak: &Weak<Shared>) -> Option<lapin::Consumer> {
    let mut failures = 0_u32;
    loop {
        failures = failures.saturating_add(1);
        tokio::time::sleep(resubscribe_delay(failures)).await;
        let shared = weak.upgrade()?;
        if shared.state().closing {
            return None;
        }
        match open(&shared.inner, &shared.key, shared.group.as_deref()).await {
            Ok(opened) => {
                let installed = {
                    let mut state = shared.state();
                    // Dropped meanwhile, its close took the old channel: this one is ours.
                    (!state.closing).then(|| {
                        tracing::info!(queue = %opened.queue, group = %shared.label, attempts = failures, "subscribed again");
                        state.current = Current {
                            channel: opened.channel.clone(),
                            consumer_tag: opened.consumer.tag(),
                            queue: opened.queue,
                        };
                    })
                };
                if installed.is_none() {
                    let close = opened.channel.close(200, "OK".into());
                    let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
                    return None;
                }
                return Some(opened.consumer);
            }
            Err(error) => {
                let retry_in = resubscribe_delay(failures.saturating_add(1));
                tracing::warn!(%error, group = %shared.label, ?retry_in, "cannot subscribe again");
                if !matches!(error, TransportError::Unreachable { .. }) {
                    // Not a broker away: worth telling the consumer (it goes on).
                    let mut state = shared.state();
                    state.errors.push_back(error);
                    if let Some(waker) = state.waker.take() {
                        waker.wake();
                    }
                }
            }
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
                .spawn(async move { shared.return_unyielded(buffered).await });
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
                if let Some(error) = state.errors.pop_front() {
                    return Poll::Ready(Some(Err(error)));
                }
                match state.buffer.pop_front() {
                    Some(buffered) => buffered,
                    None => {
                        state.waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
            };
            let Buffered {
                delivery,
                generation,
                ..
            } = buffered;
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
                        .spawn(shared.refuse(delivery, generation, None, reason));
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
                shared.inner.tasks.clone().spawn(shared.refuse(
                    delivery,
                    generation,
                    Some(event),
                    reason,
                ));
                continue;
            }
            let tag = delivery.delivery_tag;
            {
                let mut state = shared.state();
                if state.generation != generation {
                    // Its channel was lost since it was buffered: the broker returns it.
                    continue;
                }
                state.held.insert(
                    tag,
                    Held {
                        acker: delivery.acker,
                        event: event.clone(),
                        attempt,
                        deadline: Instant::now() + shared.ack_wait,
                        generation,
                    },
                );
            }
            return Poll::Ready(Some(Ok(Box::new(AmqpDelivery {
                shared: Arc::clone(shared),
                generation,
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
        self.shared.state().closing = true;
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
    let (channel_, consumer_tag) = {
        let state = shared.state();
        (
            state.current.channel.clone(),
            state.current.consumer_tag.clone(),
        )
    };
    if shared.grouped() {
        let cancel = channel_.basic_cancel(consumer_tag, BasicCancelOptions::default());
        let _ = tokio::time::timeout(CLOSE_GRACE, cancel).await;
        if let Some(pump) = pump {
            // The consumer's stream ends once the cancel is confirmed (or the pump stops
            // subscribing again, seeing the subscription closed).
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
            shared.return_unyielded(buffered).await;
        }
    } else if let Some(pump) = pump {
        pump.abort();
    }
    let _ = channel_.close(200, "OK".into()).await;
    let outstanding = std::mem::take(&mut shared.state().outstanding);
    shared.count_unacked(0, outstanding);
}

/// One delivery of an event to a subscription.
struct AmqpDelivery {
    shared: Arc<Shared>,
    /// The generation of the channel that delivered it.
    generation: u64,
    tag: u64,
    event: WireEvent,
    attempt: u32,
    settled: bool,
}

impl AmqpDelivery {
    /// Takes the delivery out of its subscription's hands: `Err` when the ack wait passed or
    /// the subscription closed first (it was handed back already), or when the channel that
    /// delivered it is gone (the broker delivers it again).
    fn take(&mut self) -> Result<Held, TransportError> {
        self.settled = true;
        self.shared
            .take(self.generation, self.tag, &self.event.ty)?
            .ok_or_else(|| {
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
        Box::pin(async move {
            let held = held?;
            shared
                .ack(&held.acker, held.generation, &held.event.ty)
                .await
        })
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
            shared.check_alive(held.generation, &held.event.ty)?;
            shared.requeue(&held.event, held.attempt, delay).await?;
            shared
                .ack(&held.acker, held.generation, &held.event.ty)
                .await
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
                // Handed back already, or its channel is gone (the broker returns it).
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
        let Ok(Some(held)) = self.shared.take(self.generation, self.tag, &self.event.ty) else {
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
