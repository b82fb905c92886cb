//! A subscription: its consumer (durable for a group, ephemeral otherwise), the pull loop, the
//! decoding of each message, and the dead letters of messages that do not decode.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::pull::{self, BatchConfig};
use async_nats::jetstream::consumer::{
    AckPolicy, DeliverPolicy, FromConsumer, PullConsumer, ReplayPolicy,
};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{self, ConsumerErrorKind};
use async_nats::{StatusCode, Subject};
use bus_core::transport::support::Backoff;
use bus_core::transport::{
    Delivery, GroupStats, SubscribeOptions, TransportError, TransportSubscription, WireEvent,
};
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;
use tracing::Instrument;

use crate::connection::Inner;
use crate::delivery::{NatsDelivery, Origin, dead_letter_raw, store_dead_letter};
use crate::error::{NatsError, invalid};
use crate::names;
use crate::streams::Route;

/// How long the broker keeps the consumer of a subscription outside any group once nobody pulls
/// from it (its process died without closing it): 5 min.
pub const EPHEMERAL_INACTIVE_THRESHOLD: Duration = Duration::from_secs(300);

/// Idle heartbeat asked of the server for each pull request: a silent server is noticed
/// after twice this.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a subscription with pull requests open waits for anything (a message, a status, a
/// heartbeat) before it takes them for lost and re-opens.
const SILENCE: Duration = HEARTBEAT.saturating_mul(2);
/// How long one pull request stays open.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The longest pause between two attempts to re-open a broken subscription.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(5);

/// Opens a subscription: checks the pattern, gets or creates its consumer on each stream the
/// pattern's events live in (one, or both for `>` and `*.…` when the dead letters are kept
/// apart), starts pulling.
pub(crate) async fn open(
    inner: Arc<Inner>,
    options: SubscribeOptions,
) -> Result<TransportSubscription, TransportError> {
    names::check_pattern(&options.pattern)
        .map_err(|reason| invalid("pattern", &options.pattern, reason))?;
    let mut opened = Vec::with_capacity(2);
    for route in inner.streams.routes(&options.pattern) {
        opened.push(open_one(Arc::clone(&inner), &options, route).await?);
    }
    Ok(match opened.len() {
        1 => opened.swap_remove(0),
        _ => Box::pin(futures_util::stream::select_all(opened)),
    })
}

/// Where the group of `options` stands: the durable consumer of the group on each stream the
/// pattern's events live in (one, or both for `>` and `*.…`), summed. `lag` is the consumers'
/// `num_pending` (messages of their filter past their delivered sequence); `pending` their
/// `num_ack_pending`, which holds every message delivered and not acked, those waiting for a
/// nak's delay or to be delivered again included (`num_redelivered` counts some of the same
/// messages again, so it is not added). `None` without a group, or when no stream has the
/// group's consumer (never created, or deleted after its inactive threshold).
pub(crate) async fn group_stats(
    inner: &Inner,
    options: &SubscribeOptions,
) -> Result<Option<GroupStats>, TransportError> {
    let Some(group) = &options.group else {
        return Ok(None);
    };
    names::check_pattern(&options.pattern)
        .map_err(|reason| invalid("pattern", &options.pattern, reason))?;
    let consumer = names::consumer_name(group);
    let mut found: Option<(u64, u64)> = None;
    for route in inner.streams.routes(&options.pattern) {
        let info = match route.stream.consumer_info(&consumer).await {
            Ok(info) => info,
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => continue,
            Err(error) => {
                let nats = NatsError::Consumer {
                    stream: route.stream.cached_info().config.name.clone(),
                    consumer,
                    filter: route.filter,
                    detail: error.to_string(),
                };
                return Err(match error.kind() {
                    ConsumerInfoErrorKind::TimedOut
                    | ConsumerInfoErrorKind::NoResponders
                    | ConsumerInfoErrorKind::Request
                    | ConsumerInfoErrorKind::Offline => nats.unreachable(),
                    _ => nats.broker(),
                });
            }
        };
        let (lag, pending) = found.unwrap_or_default();
        let acks = u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
        found = Some((
            lag.saturating_add(info.num_pending),
            pending.saturating_add(acks),
        ));
    }
    Ok(found.map(|(lag, pending)| GroupStats::new(lag, pending)))
}

/// Opens the part of a subscription on one stream.
async fn open_one(
    inner: Arc<Inner>,
    options: &SubscribeOptions,
    route: Route,
) -> Result<TransportSubscription, TransportError> {
    let spec = Spec {
        stream: route.stream,
        filter: route.filter,
        durable: options.group.as_deref().map(names::consumer_name),
        group: options.group.clone(),
        pattern: options.pattern.clone(),
        ack_wait: options.ack_wait,
        max_deliveries: options.max_deliveries.max(1),
    };
    let span = tracing::info_span!(
        "bus.nats.subscription",
        subject = %spec.filter,
        consumer = tracing::field::Empty,
        group = options.group.as_deref().unwrap_or("-"),
    );
    let consumer = spec
        .ensure(&inner, DeliverPolicy::New)
        .instrument(span.clone())
        .await?;
    let info = consumer.cached_info();
    let consumer_name = info.name.clone();
    let last_sequence = info.delivered.stream_sequence;
    span.record("consumer", consumer_name.as_str());
    let messages = pull(&inner, &consumer).instrument(span.clone()).await?;
    tracing::debug!(parent: &span, "subscribed");
    let origin = Arc::new(Origin::new(
        options.group.as_deref(),
        consumer_name,
        spec.max_deliveries,
    ));
    let pump = Pump {
        inner,
        spec,
        origin,
        messages: Some(Messages(Some(messages))),
        last_sequence,
        retry_at: None,
        failures: 0,
        span,
    };
    Ok(Box::pin(futures_util::stream::unfold(
        pump,
        |mut pump| async move {
            let span = pump.span.clone();
            let item = pump.next().instrument(span).await;
            Some((item, pump))
        },
    )))
}

/// Starts the pull loop of `consumer`: its inbox, subscribed; the first pull request is sent
/// when the subscription is first polled.
async fn pull(inner: &Inner, consumer: &PullConsumer) -> Result<Puller, TransportError> {
    let inbox = Subject::from(inner.client.new_inbox());
    let subscriber = inner
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| {
            NatsError::Consumer {
                stream: consumer.cached_info().stream_name.clone(),
                consumer: consumer.cached_info().name.clone(),
                filter: consumer.cached_info().config.filter_subject.clone(),
                detail: error.to_string(),
            }
            .unreachable()
        })?;
    let mut reconnects = inner.reconnects.clone();
    reconnects.borrow_and_update();
    Ok(Puller {
        consumer: consumer.clone(),
        context: inner.js.clone(),
        inbox,
        subscriber,
        batch: inner.config.fetch_batch.max(1),
        owed: 0,
        reconnects,
        background: inner.background.clone(),
    })
}

/// The pull loop of a subscription, on an inbox of its own.
///
/// Not async-nats' `consumer.stream().messages()`: that one sends its pull requests from a
/// task of its own, and counts a request only when that task reports it sent; a message
/// answering the request can be counted first, when it is not counted at all (the count is
/// already zero). With one message per request the stream then believes one still owed and
/// never asks again: no pull request open, no heartbeat, until the missed heartbeats end the
/// stream (2 × 5 s here), again and again under load. Here the request is sent and counted in
/// the same step, before any answer can be read.
struct Puller {
    consumer: PullConsumer,
    context: async_nats::jetstream::Context,
    inbox: Subject,
    subscriber: async_nats::Subscriber,
    /// Messages one pull request asks for at most: `fetch_batch`.
    batch: usize,
    /// Messages the open pull requests may still bring, and those received not handed out:
    /// never more than `batch`.
    owed: usize,
    /// Seen at the last pull request; a change means the connection was re-established since.
    reconnects: tokio::sync::watch::Receiver<u64>,
    /// The transport's background work, where the naks of a closing subscription run.
    background: tokio_util::task::TaskTracker,
}

impl Puller {
    /// The next message; `Err` when the pull loop is broken (the subscription re-opens).
    async fn next(&mut self) -> Result<async_nats::jetstream::Message, String> {
        loop {
            if self.owed <= self.batch / 2 {
                let more = self.batch - self.owed;
                self.reconnects.borrow_and_update();
                let request = BatchConfig {
                    batch: more,
                    expires: Some(PULL_EXPIRES),
                    idle_heartbeat: HEARTBEAT,
                    ..Default::default()
                };
                self.consumer
                    .request_batch(request, self.inbox.clone())
                    .await
                    .map_err(|error| format!("cannot send a pull request: {error}"))?;
                self.owed += more;
                tracing::trace!(more, owed = self.owed, "pull request sent");
            }
            let message = tokio::select! {
                biased;
                message = self.subscriber.next() => message,
                changed = self.reconnects.changed() => {
                    if changed.is_err() {
                        return Err("the connection is closed".to_owned());
                    }
                    // The server forgot the pull requests of the connection it lost.
                    tracing::debug!("reconnected: pulling again");
                    self.owed = 0;
                    continue;
                }
                () = tokio::time::sleep(SILENCE) => {
                    return Err(format!(
                        "no message nor heartbeat for {SILENCE:?} with a pull request open"
                    ));
                }
            };
            let Some(message) = message else {
                return Err("the inbox subscription ended".to_owned());
            };
            match self.read(message) {
                Read::Message(message) => return Ok(message),
                Read::Status => {}
                Read::Broken(error) => return Err(error),
            }
        }
    }

    /// Reads what came to the inbox: a message (no longer owed), a status that ends a pull
    /// request (what it did not bring is no longer owed) or a heartbeat, or the end of the
    /// pull loop.
    fn read(&mut self, message: async_nats::Message) -> Read {
        match message.status {
            None | Some(StatusCode::OK) => {
                self.owed = self.owed.saturating_sub(1);
                Read::Message(async_nats::jetstream::Message {
                    message,
                    context: self.context.clone(),
                })
            }
            Some(StatusCode::IDLE_HEARTBEAT) => Read::Status,
            Some(StatusCode::NO_RESPONDERS) => {
                Read::Broken("no responders: the consumer or JetStream is gone".to_owned())
            }
            Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED | StatusCode::NOT_FOUND) => {
                let description = message.description.as_deref().unwrap_or_default();
                if description == "Consumer Deleted"
                    || description == "Consumer is push based"
                    || description.starts_with("Exceeded MaxRequest")
                {
                    return Read::Broken(format!("pull request refused: {description}"));
                }
                // A pull request ended (expired, or cut short): what it did not bring is no
                // longer owed. Without the count, take every request as ended.
                let left = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("Nats-Pending-Messages"))
                    .and_then(|value| value.as_str().parse::<usize>().ok());
                self.owed = left.map_or(0, |left| self.owed.saturating_sub(left));
                tracing::debug!(
                    status = %description,
                    ?left,
                    owed = self.owed,
                    "pull request ended"
                );
                Read::Status
            }
            Some(status) => Read::Broken(format!(
                "unexpected status {status} {}",
                message.description.as_deref().unwrap_or_default()
            )),
        }
    }

    /// [`read`](Puller::read) for a closed subscription: the message, if it is one; a
    /// broken loop owes nothing more.
    fn answer(&mut self, message: async_nats::Message) -> Option<async_nats::jetstream::Message> {
        match self.read(message) {
            Read::Message(message) => Some(message),
            Read::Status => None,
            Read::Broken(_) => {
                self.owed = 0;
                None
            }
        }
    }
}

/// What [`Puller::read`] made of what came to the inbox.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per message and matched at once, never stored: boxing would allocate per message"
)]
enum Read {
    /// A message of the stream.
    Message(async_nats::jetstream::Message),
    /// A heartbeat, or the end of a pull request.
    Status,
    /// The pull loop is broken (the subscription re-opens).
    Broken(String),
}

/// What a subscription asked for, on one stream.
struct Spec {
    /// The stream its consumer is on.
    stream: stream::Stream,
    filter: String,
    pattern: String,
    group: Option<String>,
    /// The durable consumer's name; `None` for an ephemeral consumer.
    durable: Option<String>,
    ack_wait: Duration,
    max_deliveries: u32,
}

impl Spec {
    /// The consumer configuration. JetStream's `max_deliver` is one more than
    /// `max_deliveries`: the spare delivery only happens when the last allowed one was never
    /// settled (its ack wait expired, its subscriber went away), and the subscription
    /// dead-letters it instead of handing it out, so an event is never parked silently.
    fn config(&self, start: DeliverPolicy, inactive_threshold: Duration) -> pull::Config {
        pull::Config {
            durable_name: self.durable.clone(),
            description: Some(match &self.group {
                Some(group) => format!("bus group `{group}` on `{}`", self.pattern),
                None => format!("bus subscription to `{}`", self.pattern),
            }),
            deliver_policy: start,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: i64::from(self.max_deliveries) + 1,
            filter_subject: self.filter.clone(),
            replay_policy: ReplayPolicy::Instant,
            inactive_threshold: if self.durable.is_some() {
                inactive_threshold
            } else {
                EPHEMERAL_INACTIVE_THRESHOLD
            },
            ..Default::default()
        }
    }

    fn consumer_error(&self, detail: String) -> NatsError {
        NatsError::Consumer {
            stream: self.stream.cached_info().config.name.clone(),
            consumer: self
                .durable
                .clone()
                .unwrap_or_else(|| "ephemeral".to_owned()),
            filter: self.filter.clone(),
            detail,
        }
    }

    fn create_error(&self, error: &async_nats::jetstream::stream::ConsumerError) -> TransportError {
        let nats = self.consumer_error(error.to_string());
        match error.kind() {
            ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => nats.unreachable(),
            _ => nats.broker(),
        }
    }

    /// Gets or creates the consumer; a new one starts at `start`.
    async fn ensure(
        &self,
        inner: &Inner,
        start: DeliverPolicy,
    ) -> Result<PullConsumer, TransportError> {
        let config = self.config(start, inner.config.inactive_threshold);
        let Some(name) = &self.durable else {
            return self
                .stream
                .create_consumer(config)
                .await
                .map_err(|error| self.create_error(&error));
        };
        match self.stream.consumer_info(name).await {
            Ok(info) => self.adopt(inner, info).await,
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
                match self.stream.create_consumer(config).await {
                    Ok(consumer) => {
                        tracing::info!(consumer = %name, "created the group's durable consumer");
                        Ok(consumer)
                    }
                    // Another member of the group may have created it first.
                    Err(create) => match self.stream.consumer_info(name).await {
                        Ok(info) => self.adopt(inner, info).await,
                        Err(_) => Err(self.create_error(&create)),
                    },
                }
            }
            Err(error) => {
                let nats = self.consumer_error(error.to_string());
                Err(match error.kind() {
                    ConsumerInfoErrorKind::TimedOut
                    | ConsumerInfoErrorKind::NoResponders
                    | ConsumerInfoErrorKind::Request
                    | ConsumerInfoErrorKind::Offline => nats.unreachable(),
                    _ => nats.broker(),
                })
            }
        }
    }

    /// Binds to an existing durable consumer: same filter required; ack wait, max deliver and
    /// inactive threshold brought to this subscription's (the group resumes where it stood).
    async fn adopt(
        &self,
        inner: &Inner,
        info: async_nats::jetstream::consumer::Info,
    ) -> Result<PullConsumer, TransportError> {
        let group = self.group.as_deref().unwrap_or_default();
        if info.config.deliver_subject.is_some() {
            return Err(invalid(
                "group",
                group,
                format!(
                    "a push consumer `{}` already exists on stream `{}`; delete it or choose \
                     another group name",
                    info.name, info.stream_name
                ),
            ));
        }
        if info.config.filter_subject != self.filter {
            let theirs = inner
                .streams
                .name_of(&info.config.filter_subject)
                .unwrap_or_else(|| info.config.filter_subject.clone());
            return Err(invalid(
                "group",
                group,
                format!(
                    "the group subscribes to `{theirs}`; one group has one pattern (delete \
                     consumer `{}` of stream `{}` to change it)",
                    info.name, info.stream_name
                ),
            ));
        }
        let wanted = self.config(info.config.deliver_policy, inner.config.inactive_threshold);
        if info.config.ack_wait != wanted.ack_wait
            || info.config.max_deliver != wanted.max_deliver
            || info.config.inactive_threshold != wanted.inactive_threshold
        {
            tracing::info!(
                consumer = %info.name,
                ack_wait = ?wanted.ack_wait,
                max_deliver = wanted.max_deliver,
                inactive_threshold = ?wanted.inactive_threshold,
                "updating the group's ack wait, max deliver and inactive threshold"
            );
            return self
                .stream
                .create_consumer(wanted)
                .await
                .map_err(|error| self.create_error(&error));
        }
        let config = pull::Config::try_from_consumer_config(info.config.clone())
            .map_err(|error| self.consumer_error(error.to_string()).broker())?;
        Ok(PullConsumer::new(config, info, inner.js.clone()))
    }
}

/// The pull loop of a subscription. Dropped, it naks the messages it had already received,
/// and those its open pull requests still bring, in the transport's background (which
/// `flush` waits for), so they are delivered again at once rather than after the ack wait.
struct Messages(Option<Puller>);

/// How long a closed subscription keeps its inbox for the answers to its open pull requests:
/// a message sent to an inbox already gone would wait for the ack wait.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

impl Drop for Messages {
    fn drop(&mut self) {
        let Some(mut puller) = self.0.take() else {
            return;
        };
        // What has already arrived, here and now (never waiting for more).
        let mut held = Vec::new();
        while let Some(Some(message)) = puller.subscriber.next().now_or_never() {
            if let Some(message) = puller.answer(message) {
                held.push(message);
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let background = puller.background.clone();
        background.spawn_on(
            async move {
                let mut returned = 0_usize;
                for message in &held {
                    returned += usize::from(nak(message).await);
                }
                // The open pull requests may still bring messages (a nak'd one among them):
                // they are nak'd too, until none is owed, the requests end, or the drain's
                // time is up. Only then the inbox goes.
                let deadline = tokio::time::Instant::now() + CLOSE_DRAIN;
                while puller.owed > 0 {
                    let Ok(Some(message)) =
                        tokio::time::timeout_at(deadline, puller.subscriber.next()).await
                    else {
                        break;
                    };
                    if let Some(message) = puller.answer(message) {
                        returned += usize::from(nak(&message).await);
                    }
                }
                tracing::debug!(
                    returned,
                    owed = puller.owed,
                    "subscription closed: nak'd the messages in hand"
                );
            },
            &runtime,
        );
    }
}

/// Naks `message` for a redelivery after a short delay, so that the server redelivers after
/// it has read the unsubscribe (an immediate nak here makes nats-server 2.9 mix up
/// redeliveries); whether the nak was sent.
async fn nak(message: &async_nats::jetstream::Message) -> bool {
    message
        .ack_with(AckKind::Nak(Some(crate::delivery::DROPPED_DELAY)))
        .await
        .is_ok()
}

/// The state behind a subscription's stream.
struct Pump {
    inner: Arc<Inner>,
    spec: Spec,
    origin: Arc<Origin>,
    messages: Option<Messages>,
    /// The stream sequence of the last message received: where a lost ephemeral consumer
    /// resumes.
    last_sequence: u64,
    retry_at: Option<Instant>,
    failures: u32,
    span: tracing::Span,
}

impl Drop for Pump {
    fn drop(&mut self) {
        if self.spec.durable.is_some() {
            return;
        }
        let stream = self.spec.stream.clone();
        let name = self.origin.consumer.clone();
        self.inner.spawn_background(async move {
            if let Err(error) = stream.delete_consumer(&name).await {
                tracing::debug!(
                    consumer = %name,
                    %error,
                    "ephemeral consumer not deleted; the server drops it when inactive"
                );
            }
        });
    }
}

impl Pump {
    /// The next delivery; re-opens the consumer and the pull loop when they break, and yields
    /// an error only for what reconnecting does not cure (then tries again when polled).
    async fn next(&mut self) -> Result<Box<dyn Delivery>, TransportError> {
        loop {
            let messages = match self.messages.as_mut().and_then(|m| m.0.as_mut()) {
                Some(messages) => messages,
                None => {
                    if let Some(at) = self.retry_at.take() {
                        tokio::time::sleep_until(at).await;
                    }
                    if let Err(error) = self.reopen().await {
                        self.failures = self.failures.saturating_add(1);
                        self.retry_at = Some(Instant::now() + reopen_delay(self.failures));
                        match error {
                            TransportError::Unreachable { .. } => {
                                tracing::warn!(%error, "cannot re-open the subscription yet");
                                continue;
                            }
                            error => {
                                tracing::error!(%error, "cannot re-open the subscription");
                                return Err(error);
                            }
                        }
                    }
                    self.failures = 0;
                    continue;
                }
            };
            match messages.next().await {
                Ok(message) => {
                    if let Some(delivery) = self.receive(message).await {
                        return Ok(delivery);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "pulling failed; re-opening the subscription");
                    self.messages = None;
                    self.retry_at = Some(Instant::now() + reopen_delay(1));
                }
            }
        }
    }

    /// Gets the consumer back (or creates it again from where this subscription stood) and
    /// starts a new pull loop.
    async fn reopen(&mut self) -> Result<(), TransportError> {
        let start = DeliverPolicy::ByStartSequence {
            start_sequence: self.last_sequence + 1,
        };
        let consumer = match &self.spec.durable {
            Some(_) => self.spec.ensure(&self.inner, start).await?,
            None => {
                // An ephemeral consumer may be gone (inactive, server restart): look first.
                match self.spec.stream.consumer_info(&self.origin.consumer).await {
                    Ok(info) => PullConsumer::new(
                        pull::Config::try_from_consumer_config(info.config.clone()).map_err(
                            |error| self.spec.consumer_error(error.to_string()).broker(),
                        )?,
                        info,
                        self.inner.js.clone(),
                    ),
                    Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
                        let consumer = self.spec.ensure(&self.inner, start).await?;
                        let name = consumer.cached_info().name.clone();
                        tracing::warn!(
                            consumer = %name,
                            from_sequence = self.last_sequence + 1,
                            "the ephemeral consumer was gone: created a new one"
                        );
                        self.origin = Arc::new(Origin::new(None, name, self.origin.max_deliveries));
                        consumer
                    }
                    Err(error) => {
                        return Err(self.spec.consumer_error(error.to_string()).unreachable());
                    }
                }
            }
        };
        let messages = pull(&self.inner, &consumer).await?;
        tracing::info!("subscription re-opened");
        self.messages = Some(Messages(Some(messages)));
        Ok(())
    }

    /// Turns a message into a delivery; a message that does not decode, or a spare delivery
    /// past `max_deliveries`, is dead-lettered here and yields nothing.
    async fn receive(
        &mut self,
        message: async_nats::jetstream::Message,
    ) -> Option<Box<dyn Delivery>> {
        let (delivered, sequence) = match message.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(_) => (1, 0),
        };
        self.last_sequence = self.last_sequence.max(sequence);
        tracing::trace!(delivered, sequence, "received");
        let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        let (message, acker) = message.split();
        let decoded = WireEvent::from_headers(
            names::header_pairs(message.headers.as_ref()),
            message.payload.clone(),
            self.inner.config.max_payload,
        )
        .map_err(|error| error.to_string())
        .and_then(|event| {
            if self
                .inner
                .streams
                .is_subject_of(&message.subject, &event.ty)
            {
                Ok(event)
            } else {
                Err(format!(
                    "the event's type `{}` does not match its subject `{}`",
                    event.ty, message.subject
                ))
            }
        });
        let (reason, attempts) = match decoded {
            Ok(event) if attempt <= self.origin.max_deliveries => {
                return Some(Box::new(NatsDelivery {
                    inner: Arc::clone(&self.inner),
                    origin: Arc::clone(&self.origin),
                    subject: message.subject.to_string(),
                    event,
                    attempt,
                    acker: Some(acker),
                }));
            }
            Ok(_) => (
                format!(
                    "not settled within the ack wait (after {} deliveries)",
                    attempt - 1
                ),
                attempt - 1,
            ),
            Err(reason) => (reason, attempt),
        };
        if self.inner.streams.is_dead_letter(&message.subject) {
            // A dead letter that does not decode is not dead-lettered again (no loop).
            tracing::warn!(
                message_subject = %message.subject,
                sequence,
                %reason,
                "dropping a dead letter that does not decode"
            );
            let _ = acker.ack_with(AckKind::Term).await;
            return None;
        }
        let letter = |reason: &str| {
            dead_letter_raw(
                &self.inner.streams,
                &message,
                sequence,
                &self.origin.group,
                attempts,
                reason,
            )
        };
        let mut raw = letter(&reason);
        let mut data = message.payload.clone();
        let server_limit = match self.inner.client.server_info().max_payload {
            0 => usize::MAX,
            limit => limit,
        };
        let header_bytes = |headers: &async_nats::HeaderMap| -> usize {
            names::header_pairs(Some(headers))
                .iter()
                .map(|(name, value)| name.len() + value.len() + 4)
                .sum::<usize>()
                + 12
        };
        if data.len().saturating_add(header_bytes(&raw.headers)) > server_limit {
            let shorter = format!(
                "{reason} (its payload of {} bytes is left out: with the dead-letter headers it \
                 exceeds the server's max_payload; it stays in the stream at sequence \
                 {sequence})",
                data.len()
            );
            raw = letter(&shorter);
            data = bytes::Bytes::new();
        }
        let headers = std::mem::take(&mut raw.headers);
        let subject = &raw.subject;
        match store_dead_letter(&self.inner, subject, raw.published(), headers, data).await {
            Ok(()) => {
                tracing::warn!(
                    message_subject = %message.subject,
                    sequence,
                    dead_letter = %subject,
                    %reason,
                    "message dead-lettered"
                );
                let _ = acker.ack_with(AckKind::Term).await;
            }
            Err(error) => {
                tracing::error!(
                    message_subject = %message.subject,
                    sequence,
                    %reason,
                    %error,
                    "cannot dead-letter a message; it will be delivered again"
                );
                let _ = acker
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
        None
    }
}

/// 100 ms, doubling up to [`MAX_REOPEN_DELAY`].
fn reopen_delay(failures: u32) -> Duration {
    Backoff::new(Duration::from_millis(100), MAX_REOPEN_DELAY).after(failures)
}
