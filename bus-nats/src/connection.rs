//! What a connected [`NatsTransport`](crate::NatsTransport) shares with its subscriptions and
//! deliveries: the client, the streams, the settled configuration, and publishing with its
//! retries.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use bus_core::transport::support::count_duplicate;
use bus_core::transport::{ServerUrl, TransportError, WireEvent};
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::error::{NAME, NatsError, invalid};
use crate::names;
use crate::streams::{Limits, Streams};

/// The longest pause between two attempts of one publish.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(500);

/// What a connected transport shares with its subscriptions and deliveries.
pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    /// How many times the connection was re-established since the first: the server forgets
    /// the pull requests of a connection it lost, so each subscription asks again.
    pub(crate) reconnects: tokio::sync::watch::Receiver<u64>,
    pub(crate) js: jetstream::Context,
    /// The events' stream, the dead letters', and where each name lives.
    pub(crate) streams: Streams,
    pub(crate) config: Config,
    /// The hand-backs of dropped deliveries and subscriptions (naks), and the deletions of
    /// ephemeral consumers, running in the background;
    /// [`Transport::flush`](bus_core::transport::Transport::flush) waits for them.
    pub(crate) background: TaskTracker,
    /// The dead letters written:
    /// [`NatsTransport::dead_lettered`](crate::NatsTransport::dead_lettered).
    pub(crate) dead_lettered: std::sync::atomic::AtomicU64,
    /// The publishes the stream dropped as duplicates:
    /// [`NatsTransport::duplicates_dropped`](crate::NatsTransport::duplicates_dropped).
    pub(crate) duplicates_dropped: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// Runs `work` in the background, counted by [`Inner::background`]; not at all outside a
    /// Tokio runtime.
    pub(crate) fn spawn_background(&self, work: impl Future<Output = ()> + Send + 'static) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.background.spawn_on(work, &runtime);
        }
    }
}

/// What a publish is of, for the log of a duplicate: the event's name, source and id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published<'a> {
    pub(crate) name: &'a str,
    pub(crate) source: &'a str,
    pub(crate) id: &'a str,
}

impl<'a> Published<'a> {
    pub(crate) fn of(event: &'a WireEvent) -> Published<'a> {
        Published {
            name: &event.ty,
            source: &event.source,
            id: &event.id,
        }
    }
}

impl Inner {
    /// Counts and logs (at `info`) a publish the stream dropped as a duplicate.
    fn duplicate_dropped(&self, published: Published<'_>, attempt: u32) {
        self.duplicates_dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        count_duplicate(NAME, None);
        tracing::info!(
            event = %published.name,
            event_id = %published.id,
            source = %published.source,
            attempt,
            "duplicate dropped: the stream stored an event of this source and id within its \
             duplicate window (or an earlier attempt of this publish did)"
        );
    }
}

impl Drop for Inner {
    /// The last handle of a connection is gone: what it queued (acks, naks) must still reach
    /// the server, so a task flushes the connection before it closes.
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let timeout = self.config.request_timeout;
        runtime.spawn(async move {
            if let Ok(Err(error)) = tokio::time::timeout(timeout, client.flush()).await {
                tracing::debug!(%error, "final flush of the connection failed");
            }
        });
    }
}

/// The settled configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) url: ServerUrl,
    pub(crate) prefix: String,
    pub(crate) stream_name: String,
    /// `<stream_name>_DEAD_LETTERS`.
    pub(crate) dead_letter_stream_name: String,
    /// The limits a new events' stream gets.
    pub(crate) limits: Limits,
    /// The limits a new dead letters' stream gets.
    pub(crate) dead_letter_limits: Limits,
    /// The replicas a new stream gets.
    pub(crate) replicas: usize,
    /// How long a group's durable consumer lives without a subscription (zero: forever).
    pub(crate) inactive_threshold: Duration,
    pub(crate) publish_deadline: Duration,
    pub(crate) max_payload: usize,
    pub(crate) duplicate_window: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) fetch_batch: usize,
    pub(crate) ack_sync: bool,
    pub(crate) restartable: bool,
    pub(crate) tls_root_certificates: Vec<PathBuf>,
    pub(crate) require_tls: bool,
}

impl Config {
    /// The subject of event `name` (or of pattern `name`) in the events' stream:
    /// `<prefix>.<name>`. Where a dead letter lives is [`Streams::subject`].
    pub(crate) fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// The first token(s) of the dead letters' subjects when they have a stream of their own:
    /// `<prefix>-dead-letter` (outside `<prefix>.>`, which the events' stream captures).
    pub(crate) fn dead_letter_root(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            bus_core::transport::DEAD_LETTER_PREFIX
        )
    }
}

impl Inner {
    /// Checks and publishes an event.
    pub(crate) async fn publish(&self, event: WireEvent) -> Result<(), TransportError> {
        names::check_name(&event.ty).map_err(|reason| invalid("event name", &event.ty, reason))?;
        if event.data.len() > self.config.max_payload {
            return Err(invalid(
                "payload",
                &event.ty,
                format!(
                    "{} bytes is over the {}-byte max_payload of this transport; send a \
                     reference to the data instead, or raise max_payload (and the server's)",
                    event.data.len(),
                    self.config.max_payload
                ),
            ));
        }
        let headers = names::event_headers(&event).map_err(|bad| {
            invalid(
                "attribute",
                &bad.name,
                format!("cannot travel as a NATS header: {}", bad.reason),
            )
        })?;
        // What a subscriber would refuse (an empty id, an extension name in capitals, too
        // many attributes) is refused here, before it reaches the stream.
        event.validate(self.config.max_payload).map_err(|error| {
            invalid(
                "event",
                &event.ty,
                format!("subscribers could not decode it: {error}"),
            )
        })?;
        let subject = self.streams.subject(&event.ty);
        let mut first = Some(headers);
        let headers = || {
            // Built once above without error; the same event gives the same headers again.
            first
                .take()
                .unwrap_or_else(|| names::event_headers(&event).unwrap_or_default())
        };
        let published = Published::of(&event);
        self.publish_raw(&subject, published, headers, event.data.clone())
            .await
    }

    /// Publishes until the PubAck, retrying what a reconnect may cure until the publish
    /// deadline. `headers` gives each attempt its headers (moved into the first, built again
    /// for a retry, so the common path copies nothing); they must carry `Nats-Msg-Id` (made
    /// from the source and id of `published`), so that retries are stored once. A PubAck that
    /// says `duplicate` (the stream stored that `Nats-Msg-Id` within its duplicate window) is a
    /// duplicate dropped: counted and logged at `info`; the publish is `Ok`.
    pub(crate) async fn publish_raw(
        &self,
        subject: &str,
        published: Published<'_>,
        mut headers: impl FnMut() -> HeaderMap,
        data: Bytes,
    ) -> Result<(), TransportError> {
        let event = published.name;
        let deadline = Instant::now() + self.config.publish_deadline;
        let timed_out = || TransportError::PublishTimedOut {
            transport: NAME.to_owned(),
            event: event.to_owned(),
            deadline: self.config.publish_deadline,
        };
        // async-nats bounds an attempt by the request timeout twice (sending, then the
        // PubAck): while that fits before the deadline, a timer of our own adds nothing.
        let bounded_by_client = self.config.request_timeout.saturating_mul(2);
        let mut pause = Duration::from_millis(10);
        for attempt in 1_u32.. {
            let message = PublishMessage::build()
                .payload(data.clone())
                .headers(headers());
            let publish = async {
                let ack = self.js.send_publish(subject.to_owned(), message).await?;
                ack.await
            };
            let outcome = if deadline.saturating_duration_since(Instant::now()) >= bounded_by_client
            {
                Ok(publish.await)
            } else {
                tokio::time::timeout_at(deadline, publish).await
            };
            let error = match outcome {
                Err(_elapsed) => {
                    tracing::warn!(attempt, "publish not confirmed before the deadline");
                    return Err(timed_out());
                }
                Ok(Ok(ack)) if ack.duplicate => {
                    self.duplicate_dropped(published, attempt);
                    return Ok(());
                }
                Ok(Ok(ack)) => {
                    tracing::trace!(attempt, sequence = ack.sequence, "stored");
                    return Ok(());
                }
                Ok(Err(error)) => error,
            };
            match error.kind() {
                PublishErrorKind::MaxPayloadExceeded
                | PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence => {
                    return Err(NatsError::Publish {
                        subject: subject.to_owned(),
                        detail: error.to_string(),
                    }
                    .broker());
                }
                _ => {
                    tracing::debug!(attempt, %error, "publish not confirmed; retrying");
                }
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(attempt, %error, "publish not confirmed before the deadline");
                return Err(timed_out());
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_RETRY_DELAY);
        }
        Err(timed_out())
    }
}
