//! Scenario (q), issue 20: the RabbitMQ transport of `bus-amqp` beside a raw `lapin` loop
//! doing the same work, in the same run, against a real broker.
//!
//! Each [`Row`] runs on a topic exchange of its own (a name unique to the row and the run;
//! the exchange and every queue of the row deleted at the end of it), in the three phases of
//! `broker::measure_side` (the bus row: `broker::measure_bus`). During the publish phase one durable
//! quorum queue, the *sink*, is bound to the exchange for the event's name, so that every
//! publish is routed, stored persistently and confirmed only once the quorum queue has it;
//! the sink is deleted before the end-to-end phase, where the group's queue alone stores the
//! events.
//!
//! Both sides publish persistent messages (`delivery-mode` 2) to the exchange under the
//! event's name with publisher confirms, [`Phases::window`] in flight, carrying the same
//! CloudEvents attributes as `cloudEvents_*` headers, `content-type` and `message-id` (the
//! raw loop writes what `bus-amqp` writes, so the messages are of the same size); both
//! consume a durable quorum queue `<exchange>.bench` bound for the event's name, with the
//! same prefetch (`basic.qos`), and ack each message (`basic.ack`, manual acks). What the raw
//! loop does not do is what the transport adds: checking the event before publishing, the
//! shared connection's lock and the confirm's timeout, a delay queue per group, decoding
//! every message into a [`WireEvent`] (checked like any transport's), the bookkeeping of
//! held deliveries (ack wait, hand-back, lost channels), boxing.

use std::sync::Arc;
use std::time::SystemTime;

use crate::broker::{
    Consume, EVENT, GROUP, Measure, Phases, Received, Side, TransportSide, measure_bus,
    measure_side,
};
use bus_amqp::AmqpTransport;
use bus_core::transport::WireEvent;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::runtime::Runtime;

/// The broker the scenario uses unless `AMQP_URL` says otherwise.
pub const DEFAULT_URL: &str = bus_amqp::DEFAULT_URL;

/// The broker's URL: `AMQP_URL`, or [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The sizes of a run of scenario (q): 20,000 events published, 10,000 end to end, 1,000
/// latency samples after 100, divided by `divisor`; 64 publishes in flight.
pub fn phases(divisor: u64) -> Phases {
    let divisor = divisor.max(1);
    Phases {
        published: (20_000 / divisor).max(1),
        events: (10_000 / divisor).max(1),
        window: 64,
        warmup: (100 / divisor).max(1),
        samples: (1_000 / divisor).max(1),
    }
}

/// Who publishes and consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The raw `lapin` loop.
    Raw,
    /// `bus_amqp::AmqpTransport` through the `Transport` trait.
    Transport,
    /// An `EventBus` wired to an `AmqpTransport`: `emit` publishes, a listener consumes.
    Bus,
}

/// One row of the table: a client, and its prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Who publishes and consumes.
    pub client: Client,
    /// Unacknowledged deliveries a consumer may hold (`basic.qos`).
    pub prefetch: u16,
}

impl Row {
    /// The rows, in table order: the raw loop first.
    pub const ALL: [Row; 3] = [
        Row {
            client: Client::Raw,
            prefetch: bus_amqp::DEFAULT_PREFETCH,
        },
        Row {
            client: Client::Transport,
            prefetch: bus_amqp::DEFAULT_PREFETCH,
        },
        Row {
            client: Client::Bus,
            prefetch: bus_amqp::DEFAULT_PREFETCH,
        },
    ];

    /// The row's label in the table.
    pub fn label(self) -> String {
        match self.client {
            Client::Raw => format!("raw lapin, prefetch {}", self.prefetch),
            Client::Transport => format!("AmqpTransport (default prefetch {})", self.prefetch),
            Client::Bus => format!("EventBus on AmqpTransport (prefetch {})", self.prefetch),
        }
    }

    /// The raw row with the same prefetch.
    pub fn raw(self) -> Row {
        Row {
            client: Client::Raw,
            ..self
        }
    }
}

/// Connects to the broker at `url` (lapin does not show the server's version). An error is
/// the reason to skip the scenario.
pub fn probe(url: &str, runtime: &Runtime) -> Result<(), String> {
    runtime.block_on(async {
        let connection = connect(url).await?;
        let _ = connection.close(200, "OK".into()).await;
        Ok(())
    })
}

async fn connect(url: &str) -> Result<Connection, String> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ unreachable at {url}: {e}"))
}

/// Runs `row` once, on an exchange of its own (`tag` makes its name unique), and deletes the
/// exchange and the row's queues afterwards.
///
/// # Errors
///
/// When the broker fails, a phase times out, or an event is lost or delivered twice.
pub fn run(
    row: Row,
    phases: Phases,
    url: &str,
    tag: &str,
    runtime: &Runtime,
) -> Result<Measure, String> {
    let exchange = format!(
        "qbench_{}_{}_{tag}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    runtime.block_on(async {
        let admin = Admin::open(url, &exchange).await?;
        let (outcome, groups) = match row.client {
            Client::Raw => {
                let raw = Raw::connect(url, &exchange, row.prefetch).await?;
                let outcome = measure_side(&raw, phases, &exchange, admin.drop_sink()).await;
                let _ = raw.connection.close(200, "OK".into()).await;
                (outcome, Vec::new())
            }
            Client::Transport | Client::Bus => {
                let transport = AmqpTransport::builder(url)
                    .exchange(&exchange)
                    .prefetch(row.prefetch)
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                let outcome = if row.client == Client::Transport {
                    let side = TransportSide(transport.clone());
                    measure_side(&side, phases, &exchange, admin.drop_sink()).await
                } else {
                    measure_bus(transport.clone(), phases, admin.drop_sink()).await
                };
                let groups = transport.declared_groups();
                for group in &groups {
                    let _ = transport.delete_group(group).await;
                }
                (outcome, groups)
            }
        };
        let cleaned = admin.clean().await;
        let measure = outcome?;
        cleaned.map_err(|e| format!("deleting {exchange} and its queues ({groups:?}): {e}"))?;
        Ok(measure)
    })
}

/// A durable quorum queue.
fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

/// Declares a durable topic exchange.
async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), String> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("exchange.declare {exchange}: {e}"))
}

/// Declares durable quorum queue `queue` and binds it to `exchange` for [`EVENT`].
async fn declare_bound(channel: &Channel, exchange: &str, queue: &str) -> Result<(), String> {
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), quorum())
        .await
        .map_err(|e| format!("queue.declare {queue}: {e}"))?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            EVENT.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("queue.bind {queue}: {e}"))
}

/// The row's own connection for declaring and deleting: the exchange, the sink, and at the
/// end every queue the row may have made.
struct Admin {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

impl Admin {
    async fn open(url: &str, exchange: &str) -> Result<Admin, String> {
        let connection = connect(url).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("channel.open: {e}"))?;
        declare_exchange(&channel, exchange).await?;
        declare_bound(&channel, exchange, &format!("{exchange}.sink")).await?;
        Ok(Admin {
            connection,
            channel,
            exchange: exchange.to_owned(),
        })
    }

    /// Deletes the sink, with what the publish phase stored in it.
    async fn drop_sink(&self) -> Result<(), String> {
        self.delete_queue(&format!("{}.sink", self.exchange)).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), String> {
        self.channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .map(drop)
            .map_err(|e| format!("queue.delete {queue}: {e}"))
    }

    /// Deletes the sink, the group's queue and delay queue (`<exchange>.bench[.delay]`, the
    /// raw loop's or the transport's), and the exchange. The transport's other groups (the
    /// bus row's) were deleted by the transport.
    async fn clean(self) -> Result<(), String> {
        let group = format!("{}.{GROUP}", self.exchange);
        let mut outcome = Ok(());
        for queue in [
            format!("{}.sink", self.exchange),
            format!("{group}.delay"),
            group,
        ] {
            outcome = outcome.and(self.delete_queue(&queue).await);
        }
        outcome = outcome.and(
            self.channel
                .exchange_delete(
                    self.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await
                .map_err(|e| format!("exchange.delete: {e}")),
        );
        let _ = self.connection.close(200, "OK".into()).await;
        outcome
    }
}

/// The raw loop: a connection, a publishing channel in confirm mode, and a channel per
/// consumer.
#[derive(Clone)]
struct Raw {
    connection: Arc<Connection>,
    publisher: Channel,
    exchange: Arc<str>,
    prefetch: u16,
}

impl Raw {
    async fn connect(url: &str, exchange: &str, prefetch: u16) -> Result<Raw, String> {
        let connection = connect(url).await?;
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| format!("channel.open: {e}"))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirm.select: {e}"))?;
        declare_exchange(&publisher, exchange).await?;
        Ok(Raw {
            connection: Arc::new(connection),
            publisher,
            exchange: Arc::from(exchange),
            prefetch,
        })
    }
}

/// What `bus-amqp` writes for `event`: its attributes as `cloudEvents_*` string headers,
/// `content-type`, `message-id`, persistent.
fn properties(event: &WireEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut put = |attribute: &str, value: &str| {
        headers.insert(
            ShortString::from(format!("cloudEvents_{attribute}")),
            AMQPValue::LongString(LongString::from(value)),
        );
    };
    put("specversion", bus_core::transport::SPEC_VERSION);
    put("id", &event.id);
    put("source", &event.source);
    put("type", &event.ty);
    if let Some(time) = &event.time {
        put("time", time);
    }
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(event.id.clone()));
    if let Some(content_type) = &event.datacontenttype {
        properties = properties.with_content_type(ShortString::from(content_type.clone()));
    }
    properties
}

impl Side for Raw {
    type Consumer = RawConsumer;

    fn publish(&self, event: WireEvent) -> impl Future<Output = Result<(), String>> + Send {
        let (publisher, exchange) = (self.publisher.clone(), Arc::clone(&self.exchange));
        async move {
            let confirm = publisher
                .basic_publish(
                    exchange.as_ref().into(),
                    event.ty.as_str().into(),
                    BasicPublishOptions::default(),
                    &event.data,
                    properties(&event),
                )
                .await
                .map_err(|e| format!("basic.publish: {e}"))?;
            match confirm.await.map_err(|e| format!("confirm: {e}"))? {
                Confirmation::Ack(_) => Ok(()),
                other => Err(format!("not confirmed: {other:?}")),
            }
        }
    }

    async fn subscribe(&self) -> Result<RawConsumer, String> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| format!("channel.open: {e}"))?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("basic.qos: {e}"))?;
        let queue = format!("{}.{GROUP}", self.exchange);
        declare_bound(&channel, &self.exchange, &queue).await?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("basic.consume: {e}"))?;
        Ok(RawConsumer {
            consumer,
            _channel: channel,
        })
    }
}

struct RawConsumer {
    consumer: lapin::Consumer,
    /// Kept open while the consumer lives.
    _channel: Channel,
}

impl Consume for RawConsumer {
    type Received = RawReceived;

    async fn receive(&mut self) -> Result<RawReceived, String> {
        match self.consumer.next().await {
            Some(Ok(delivery)) => Ok(RawReceived {
                id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
                acker: delivery.acker,
            }),
            Some(Err(e)) => Err(format!("consuming: {e}")),
            None => Err("the consumer was cancelled".to_owned()),
        }
    }
}

struct RawReceived {
    id: String,
    acker: lapin::Acker,
}

impl Received for RawReceived {
    fn id(&self) -> &str {
        &self.id
    }

    async fn ack(self) -> Result<(), String> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|e| format!("basic.ack: {e}"))
    }
}
