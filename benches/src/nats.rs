//! Scenario (n), issue 5: the NATS JetStream transport of `bus-nats` beside a raw `async-nats`
//! JetStream loop doing the same work, in the same run, against a real server.
//!
//! Each [`Row`] runs on a fresh stream of its own (unique subject prefix and stream name,
//! deleted at the end of the row), in three phases:
//!
//! 1. **publish**: [`Counts::events`] events published with [`Counts::window`] publishes in
//!    flight (`buffered`: issued in order), timed until every PubAck has arrived;
//! 2. **end to end**: a durable pull consumer (explicit acks) is opened first, then the same
//!    number of events are published (same window, in a task) while this task receives and
//!    acks every one; timed until the last ack is sent and the last PubAck received;
//! 3. **latency**: one event at a time, from the publish call to its receipt by the consumer
//!    (then acked, untimed), [`Counts::samples`] samples after [`Counts::warmup`].
//!
//! Both sides publish the same CloudEvents binary-mode headers (from
//! [`WireEvent::headers`]) and a `Nats-Msg-Id` (the transport's is `<source>:<id>`, the raw
//! loop's the id alone: a few bytes less), on a stream of the same configuration, and
//! consume through a pull consumer of the same configuration with the same batch size. What
//! the raw loop does not do is what the transport adds: checking and re-decoding the event
//! before publishing, decoding every message received into a [`WireEvent`], and boxing.
//!
//! The bus rows do the same through an `EventBus` wired to a `NatsTransport` (see
//! `measure_bus`): what `emit` and a distributed listener cost on top of the transport.

use std::collections::HashSet;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::broker::{EVENT, GROUP, Measure, event, guard, percentile, rate};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{self, Stream as PullStream};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bus::EventBus;
use bus_core::transport::{
    Delivery, SubscribeOptions, Transport, TransportSubscription, WireEvent,
};
use bus_nats::NatsTransport;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

/// The server the scenario uses unless `NATS_URL` says otherwise.
pub const DEFAULT_URL: &str = "127.0.0.1:4222";

/// The server's URL: `NATS_URL`, or [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The sizes of a run of scenario (n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Events published in the publish phase, and again in the end-to-end phase.
    pub events: u64,
    /// Publishes in flight at most (awaiting their PubAck).
    pub window: usize,
    /// Untimed latency round trips first.
    pub warmup: u64,
    /// Timed latency samples.
    pub samples: u64,
}

impl Counts {
    /// The full counts (20,000 events, 2,000 latency samples) divided by `divisor`.
    pub fn new(divisor: u64) -> Counts {
        let divisor = divisor.max(1);
        Counts {
            events: (20_000 / divisor).max(1),
            window: 64,
            warmup: (200 / divisor).max(1),
            samples: (2_000 / divisor).max(1),
        }
    }
}

/// Who publishes and consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A raw `async-nats` JetStream loop.
    Raw,
    /// `bus_nats::NatsTransport` through the `Transport` trait.
    Transport,
    /// An `EventBus` wired to a `NatsTransport`: `emit` publishes, a listener consumes.
    Bus,
}

/// One row of the table: a client, and how many messages a pull request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Who publishes and consumes.
    pub client: Client,
    /// Messages per pull request (`NatsTransportBuilder::fetch_batch`, or the raw
    /// consumer's `max_messages_per_batch`).
    pub fetch_batch: usize,
}

impl Row {
    /// The rows, in table order: each batch size with the raw loop first.
    pub const ALL: [Row; 6] = [
        Row {
            client: Client::Raw,
            fetch_batch: 1,
        },
        Row {
            client: Client::Transport,
            fetch_batch: 1,
        },
        Row {
            client: Client::Bus,
            fetch_batch: 1,
        },
        Row {
            client: Client::Raw,
            fetch_batch: 64,
        },
        Row {
            client: Client::Transport,
            fetch_batch: 64,
        },
        Row {
            client: Client::Bus,
            fetch_batch: 64,
        },
    ];

    /// The row's label in the table.
    pub fn label(self) -> String {
        match (self.client, self.fetch_batch) {
            (Client::Raw, n) => format!("raw async-nats, batch {n}"),
            (Client::Transport, 1) => "NatsTransport (default fetch_batch 1)".to_owned(),
            (Client::Transport, n) => format!("NatsTransport, fetch_batch({n})"),
            (Client::Bus, 1) => "EventBus on NatsTransport (fetch_batch 1)".to_owned(),
            (Client::Bus, n) => format!("EventBus on NatsTransport, fetch_batch({n})"),
        }
    }

    /// The raw row with the same batch size.
    pub fn raw(self) -> Row {
        Row {
            client: Client::Raw,
            ..self
        }
    }
}

/// Connects to the server at `url` and checks that JetStream answers; returns the server's
/// version. An error is the reason to skip the scenario.
pub fn probe(url: &str, runtime: &Runtime) -> Result<String, String> {
    runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url)
            .await
            .map_err(|e| format!("NATS unreachable at {url}: {e}"))?;
        let version = client.server_info().version;
        // A raw account-info request: the typed `query_account` of async-nats 0.51 does not
        // parse the answer of older servers (2.9).
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            client.request("$JS.API.INFO", bytes::Bytes::new()),
        )
        .await
        .map_err(|_| format!("JetStream at {url} did not answer"))?
        .map_err(|e| format!("no JetStream at {url}: {e}"))?;
        let answer = String::from_utf8_lossy(&answer.payload);
        if answer.contains("\"error\"") {
            return Err(format!("no JetStream at {url}: {answer}"));
        }
        Ok(version)
    })
}

/// Runs `row` once, on a stream of its own (`tag` makes its name unique), and deletes the
/// stream afterwards.
///
/// # Errors
///
/// When the server fails, a phase times out, or an event is lost or delivered twice.
pub fn run(
    row: Row,
    counts: Counts,
    url: &str,
    tag: &str,
    runtime: &Runtime,
) -> Result<Measure, String> {
    let prefix = format!(
        "nbench_{}_{}_{tag}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let stream_name = prefix.to_uppercase();
    runtime.block_on(async {
        let admin = async_nats::connect(url)
            .await
            .map_err(|e| format!("NATS unreachable at {url}: {e}"))?;
        let admin_js = jetstream::new(admin.clone());
        let outcome = match row.client {
            Client::Bus => measure_bus(row, counts, url, &prefix, &stream_name).await,
            Client::Raw | Client::Transport => {
                measure(row, counts, url, &prefix, &stream_name).await
            }
        };
        let deleted = admin_js.delete_stream(&stream_name).await;
        // The transport's dead letters' stream, if it made one (a run's own prefix).
        let _ = admin_js
            .delete_stream(format!("{stream_name}_DEAD_LETTERS"))
            .await;
        let _ = admin.flush().await;
        let measure = outcome?;
        deleted.map_err(|e| format!("deleting stream {stream_name}: {e}"))?;
        Ok(measure)
    })
}

async fn measure(
    row: Row,
    counts: Counts,
    url: &str,
    prefix: &str,
    stream_name: &str,
) -> Result<Measure, String> {
    let side = Side::connect(row, url, prefix, stream_name).await?;

    // 1. Publish.
    let start = Instant::now();
    guard("publish", publish_all(&side.publisher, prefix, "p", counts)).await??;
    let publish = rate(counts.events, start.elapsed());

    // 2. End to end, through a consumer opened before the first publish.
    let mut consumer = side.subscribe(row, prefix).await?;
    let start = Instant::now();
    let publisher = side.publisher.clone();
    let (tag, prefix_owned) = ("e", prefix.to_owned());
    let publishing =
        tokio::spawn(async move { publish_all(&publisher, &prefix_owned, tag, counts).await });
    let mut seen = HashSet::with_capacity(usize::try_from(counts.events).unwrap_or(0));
    guard("end to end", async {
        while (seen.len() as u64) < counts.events {
            let received = consumer.receive().await?;
            if !seen.insert(received.id()?) {
                return Err(format!("event {} delivered twice", received.id()?));
            }
            received.ack().await?;
        }
        Ok::<_, String>(())
    })
    .await??;
    guard("end to end (publishes)", publishing)
        .await?
        .map_err(|e| format!("publishing task: {e}"))??;
    let end_to_end = rate(counts.events, start.elapsed());

    // 3. Latency.
    let mut times = Vec::with_capacity(usize::try_from(counts.samples).unwrap_or(0));
    guard("latency", async {
        for seq in 0..counts.warmup + counts.samples {
            let event = event(prefix, "l", seq);
            let id = event.id.clone();
            let start = Instant::now();
            let (published, received) = tokio::join!(side.publisher.publish(event), async {
                let received = consumer.receive().await;
                (start.elapsed(), received)
            });
            published?;
            let (elapsed, received) = received;
            let received = received?;
            if received.id()? != id {
                return Err(format!("expected {id}, received {}", received.id()?));
            }
            received.ack().await?;
            if seq >= counts.warmup {
                times.push(elapsed.as_nanos() as f64);
            }
        }
        Ok::<_, String>(())
    })
    .await??;
    times.sort_by(f64::total_cmp);
    drop(consumer);
    side.close().await;
    Ok(Measure {
        publish,
        end_to_end,
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
    })
}

/// The event a bus row emits: serde, so the bus publishes it (JSON) and its listener is
/// distributed.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    seq: u64,
}

/// The three phases through an `EventBus` of service `bench` wired to a `NatsTransport`:
/// awaiting an `Emission` waits for the PubAck; the listener (a distributed one, group
/// `bench.<listener>`, the default concurrency) gets each event from the broker, and the bus
/// acks it when the listener returns. End to end is timed until every event was handled and
/// every publish confirmed (the acks are sent as each listener returns, not awaited).
async fn measure_bus(
    row: Row,
    counts: Counts,
    url: &str,
    prefix: &str,
    stream_name: &str,
) -> Result<Measure, String> {
    let transport = NatsTransport::builder(url)
        .subject_prefix(prefix)
        .stream_name(stream_name)
        .fetch_batch(row.fetch_batch)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let bus = EventBus::builder()
        .service("bench")
        .transport(transport.clone())
        .distributed::<Order>()
        .build();
    let emit_all = |bus: EventBus, base: u64| async move {
        futures_util::stream::iter(base..base + counts.events)
            .map(|seq| bus.emit(EVENT, Order { seq }).into_future())
            .buffered(counts.window)
            .map(|report| match report.published() {
                Some(Ok(())) => Ok(()),
                Some(Err(error)) => Err(format!("publish failed: {error}")),
                None => Err("the emit was not published".to_owned()),
            })
            .try_for_each(|()| std::future::ready(Ok(())))
            .await
    };

    // 1. Publish (no listener yet: the events go to the stream only).
    let start = Instant::now();
    guard("publish", emit_all(bus.clone(), 0)).await??;
    let publish = rate(counts.events, start.elapsed());

    // 2. End to end, through a listener whose consumer exists before the first emit.
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel::<u64>();
    bus.add_listener(EVENT, move |order: Arc<Order>| {
        let _ = sender.send(order.seq);
        async {}
    });
    bus.ready().await.map_err(|e| e.to_string())?;
    let base = counts.events;
    let start = Instant::now();
    let publishing = tokio::spawn(emit_all(bus.clone(), base));
    let mut seen = HashSet::with_capacity(usize::try_from(counts.events).unwrap_or(0));
    guard("end to end", async {
        while (seen.len() as u64) < counts.events {
            let seq = received
                .recv()
                .await
                .ok_or("the listener is gone".to_owned())?;
            if !(base..base + counts.events).contains(&seq) || !seen.insert(seq) {
                return Err(format!("event {seq} delivered twice or out of phase"));
            }
        }
        Ok::<_, String>(())
    })
    .await??;
    guard("end to end (publishes)", publishing)
        .await?
        .map_err(|e| format!("publishing task: {e}"))??;
    let end_to_end = rate(counts.events, start.elapsed());

    // 3. Latency: emit to the listener's call.
    let mut times = Vec::with_capacity(usize::try_from(counts.samples).unwrap_or(0));
    let base = 2 * counts.events;
    guard("latency", async {
        for seq in base..base + counts.warmup + counts.samples {
            let start = Instant::now();
            let (report, got) = tokio::join!(bus.emit(EVENT, Order { seq }), async {
                let got = received.recv().await;
                (start.elapsed(), got)
            });
            if !matches!(report.published(), Some(Ok(()))) {
                return Err(format!("event {seq} not published: {report:?}"));
            }
            let (elapsed, got) = got;
            if got != Some(seq) {
                return Err(format!("expected {seq}, received {got:?}"));
            }
            if seq >= base + counts.warmup {
                times.push(elapsed.as_nanos() as f64);
            }
        }
        Ok::<_, String>(())
    })
    .await??;
    times.sort_by(f64::total_cmp);
    bus.shutdown(Duration::from_secs(5)).await;
    let _ = transport.client().flush().await;
    Ok(Measure {
        publish,
        end_to_end,
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
    })
}

/// Publishes `counts.events` events with `counts.window` in flight.
async fn publish_all(
    publisher: &Publisher,
    prefix: &str,
    tag: &str,
    counts: Counts,
) -> Result<(), String> {
    futures_util::stream::iter(0..counts.events)
        .map(|seq| publisher.publish(event(prefix, tag, seq)))
        .buffered(counts.window)
        .try_for_each(|()| std::future::ready(Ok(())))
        .await
}

/// The pull settings of a `NatsTransport` subscription.
async fn pull_messages(consumer: &PullConsumer, batch: usize) -> Result<PullStream, String> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .expires(Duration::from_secs(30))
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// A connected side of a row.
struct Side {
    publisher: Publisher,
    stream: Option<stream::Stream>,
}

impl Side {
    async fn connect(row: Row, url: &str, prefix: &str, stream_name: &str) -> Result<Side, String> {
        match row.client {
            // A bus row measures through `measure_bus`; its transport side is the same.
            Client::Transport | Client::Bus => {
                let transport = NatsTransport::builder(url)
                    .subject_prefix(prefix)
                    .stream_name(stream_name)
                    .fetch_batch(row.fetch_batch)
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Side {
                    publisher: Publisher::Transport(transport),
                    stream: None,
                })
            }
            Client::Raw => {
                let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
                let js = jetstream::new(client);
                // The configuration `NatsTransport` gives its stream, but its retention limit
                // (`MaxAge(7 days)` by default), which no run comes near.
                let stream = js
                    .get_or_create_stream(stream::Config {
                        name: stream_name.to_owned(),
                        subjects: vec![format!("{prefix}.>")],
                        duplicate_window: bus_nats::DEFAULT_DUPLICATE_WINDOW,
                        storage: stream::StorageType::File,
                        retention: stream::RetentionPolicy::Limits,
                        discard: stream::DiscardPolicy::Old,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Side {
                    publisher: Publisher::Raw {
                        js,
                        subject: format!("{prefix}.{EVENT}"),
                    },
                    stream: Some(stream),
                })
            }
        }
    }

    /// Opens the durable pull consumer of [`GROUP`], explicit acks, from now on.
    async fn subscribe(&self, row: Row, prefix: &str) -> Result<Consumer, String> {
        match (&self.publisher, &self.stream) {
            (Publisher::Transport(transport), _) => {
                let subscription = transport
                    .subscribe(SubscribeOptions::new(EVENT).group(GROUP))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Consumer::Transport(subscription))
            }
            (Publisher::Raw { .. }, Some(stream)) => {
                // The configuration `NatsTransport` gives a group's consumer (default
                // `max_deliveries` 5 and `ack_wait` 30 s).
                let consumer = stream
                    .create_consumer(pull::Config {
                        durable_name: Some(GROUP.to_owned()),
                        deliver_policy: DeliverPolicy::New,
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(30),
                        max_deliver: 6,
                        filter_subject: format!("{prefix}.{EVENT}"),
                        replay_policy: ReplayPolicy::Instant,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let messages = pull_messages(&consumer, row.fetch_batch).await?;
                Ok(Consumer::Raw {
                    consumer,
                    messages,
                    batch: row.fetch_batch,
                })
            }
            (Publisher::Raw { .. }, None) => Err("raw side without its stream".to_owned()),
        }
    }

    /// Flushes what is queued (the last acks) before the connection goes.
    async fn close(self) {
        let client = match &self.publisher {
            Publisher::Raw { js, .. } => js.client(),
            Publisher::Transport(transport) => transport.client().clone(),
        };
        drop(self);
        let _ = client.flush().await;
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one value per side or per message; boxing the raw side would add an allocation it does not make"
)]
#[derive(Clone)]
enum Publisher {
    Raw {
        js: jetstream::Context,
        subject: String,
    },
    Transport(NatsTransport),
}

impl Publisher {
    /// Publishes one event and waits for its PubAck.
    async fn publish(&self, event: WireEvent) -> Result<(), String> {
        match self {
            Publisher::Raw { js, subject } => {
                let mut headers = HeaderMap::new();
                for (name, value) in event.headers() {
                    headers.insert(name.as_str(), value.as_str());
                }
                headers.insert("Nats-Msg-Id", event.id.as_str());
                let message = PublishMessage::build().payload(event.data).headers(headers);
                let ack = js
                    .send_publish(subject.clone(), message)
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map(drop).map_err(|e| e.to_string())
            }
            Publisher::Transport(transport) => {
                transport.publish(event).await.map_err(|e| e.to_string())
            }
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one value per side or per message; boxing the raw side would add an allocation it does not make"
)]
enum Consumer {
    Raw {
        consumer: PullConsumer,
        messages: PullStream,
        batch: usize,
    },
    Transport(TransportSubscription),
}

impl Consumer {
    async fn receive(&mut self) -> Result<Received, String> {
        match self {
            // A missed idle heartbeat (seen on a loaded machine) may leave the pull stream
            // stuck: the raw loop re-opens it, as the transport does.
            Consumer::Raw {
                consumer,
                messages,
                batch,
            } => loop {
                match messages.next().await {
                    Some(Ok(message)) => return Ok(Received::Raw(message)),
                    Some(Err(e)) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                        *messages = pull_messages(consumer, *batch).await?;
                    }
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the pull stream ended".to_owned()),
                }
            },
            Consumer::Transport(subscription) => match subscription.next().await {
                Some(Ok(delivery)) => Ok(Received::Transport(delivery)),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the subscription ended".to_owned()),
            },
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one value per side or per message; boxing the raw side would add an allocation it does not make"
)]
enum Received {
    Raw(jetstream::Message),
    Transport(Box<dyn Delivery>),
}

impl Received {
    /// The event id (the raw side reads `Nats-Msg-Id` only: it decodes nothing).
    fn id(&self) -> Result<String, String> {
        match self {
            Received::Raw(message) => message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .ok_or_else(|| "a message without Nats-Msg-Id".to_owned()),
            Received::Transport(delivery) => Ok(delivery.event().id.clone()),
        }
    }

    async fn ack(self) -> Result<(), String> {
        match self {
            Received::Raw(message) => message.ack().await.map_err(|e| e.to_string()),
            Received::Transport(delivery) => delivery.ack().await.map_err(|e| e.to_string()),
        }
    }
}
