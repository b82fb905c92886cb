//! [`AmqpTransport`]: its builder, its connection, publishing with confirms, and group stats.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bus_core::transport::{
    BoxFuture, Capabilities, DEFAULT_MAX_PAYLOAD, GroupStats, ServerUrl, SubscribeOptions,
    Transport, TransportError, TransportSubscription, WireEvent,
};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::error::{AmqpError, NAME, channel};
use crate::names::MAX_SHORT;

/// The URL [`AmqpTransport::builder`] is usually given: RabbitMQ on this machine, as `guest`.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The default exchange ([`AmqpTransportBuilder::exchange`]): `bus`.
pub const DEFAULT_EXCHANGE: &str = "bus";

/// The default prefetch ([`AmqpTransportBuilder::prefetch`]): 64 unacknowledged deliveries
/// per subscription.
pub const DEFAULT_PREFETCH: u16 = 64;

/// How a transport connects: [`AmqpTransport::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct AmqpTransportBuilder {
    url: ServerUrl,
    exchange: String,
    prefetch: u16,
    connect_timeout: Duration,
    publish_timeout: Duration,
    max_payload: usize,
    source: String,
    restartable: bool,
}

impl AmqpTransportBuilder {
    /// The topic exchange events are published to, one per deployment (default `bus`):
    /// group queues are named after it (`<exchange>.<group>`), so it is also their prefix.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// How many deliveries a subscription may hold unacknowledged (`basic.qos`), yielded or
    /// still waiting to be: the back-pressure on a slow consumer. At least 1; default
    /// [`DEFAULT_PREFETCH`].
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How long [`connect`](Self::connect), and each reconnection, may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a publish waits for the broker's confirm, and an ack for the client to send it
    /// (default 10 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// The largest payload published or accepted (default 1 MiB).
    pub fn max_payload(mut self, max_payload: usize) -> Self {
        self.max_payload = max_payload;
        self
    }

    /// The `source` of the dead letters of messages that do not decode (default `amqp`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// For test harnesses: declare in [`Capabilities::restartable`] that the test owns this
    /// broker (a private RabbitMQ node it started) and may restart it. Default: `false`.
    pub fn restartable(mut self, restartable: bool) -> Self {
        self.restartable = restartable;
        self
    }

    /// Connects, enables publisher confirms on the publishing channel and declares the
    /// exchange (a durable topic exchange).
    ///
    /// # Errors
    ///
    /// [`TransportError::Unreachable`] (with an [`AmqpError`] source) when the broker cannot
    /// be reached within the connect timeout, [`TransportError::Invalid`] for an exchange name
    /// AMQP cannot carry.
    pub async fn connect(self) -> Result<AmqpTransport, TransportError> {
        if self.exchange.is_empty() || self.exchange.len() > MAX_SHORT - 16 {
            return Err(TransportError::invalid(
                NAME,
                "exchange",
                &self.exchange,
                "between 1 and 239 bytes",
            ));
        }
        let inner = Arc::new(Inner {
            url: self.url,
            exchange: self.exchange,
            prefetch: self.prefetch,
            connect_timeout: self.connect_timeout,
            publish_timeout: self.publish_timeout,
            max_payload: self.max_payload,
            source: self.source,
            restartable: self.restartable,
            connection: tokio::sync::Mutex::new(None),
            connected: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            subscriptions: AtomicU64::new(0),
            groups: std::sync::Mutex::default(),
        });
        inner.connection().await?;
        Ok(AmqpTransport { inner })
    }
}

/// The connection and its publishing channel (in confirm mode).
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) connection: Arc<Connection>,
    publisher: Channel,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// What the transport, its subscriptions and its deliveries share.
pub(crate) struct Inner {
    url: ServerUrl,
    pub(crate) exchange: String,
    pub(crate) prefetch: u16,
    connect_timeout: Duration,
    /// Also how long an ack may take.
    pub(crate) publish_timeout: Duration,
    pub(crate) max_payload: usize,
    pub(crate) source: String,
    /// What [`Capabilities::restartable`] says: set by test harnesses only.
    restartable: bool,
    connection: tokio::sync::Mutex<Option<Link>>,
    connected: AtomicBool,
    /// Hand-backs and subscription cleanups still running: [`Transport::flush`] awaits them.
    pub(crate) tasks: TaskTracker,
    /// Numbers the subscriptions outside any group, for their dead letters' group.
    pub(crate) subscriptions: AtomicU64,
    /// The groups whose queues this transport declared.
    pub(crate) groups: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Inner {
    /// The connection, opened again when it broke (once, within the connect timeout).
    pub(crate) async fn connection(&self) -> Result<Link, TransportError> {
        let mut slot = self.connection.lock().await;
        if let Some(link) = slot.as_ref().filter(|link| link.usable()) {
            return Ok(link.clone());
        }
        *slot = None;
        self.connected.store(false, Ordering::Relaxed);
        let link = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| {
                TransportError::unreachable(
                    NAME,
                    AmqpError::ConnectTimedOut {
                        url: self.url.shown().to_owned(),
                        after: self.connect_timeout,
                    },
                )
            })??;
        *slot = Some(link.clone());
        self.connected.store(true, Ordering::Relaxed);
        Ok(link)
    }

    async fn open(&self) -> Result<Link, TransportError> {
        let connect = |source| {
            TransportError::unreachable(
                NAME,
                AmqpError::Connect {
                    url: self.url.shown().to_owned(),
                    source,
                },
            )
        };
        let properties = ConnectionProperties::default().with_connection_name("bus".into());
        let connection = Connection::connect(self.url.expose(), properties)
            .await
            .map_err(connect)?;
        let publisher = connection.create_channel().await.map_err(connect)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|error| channel("confirm.select", error))?;
        publisher
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|error| channel("exchange.declare", error))?;
        tracing::debug!(url = %self.url, exchange = %self.exchange, "connected to RabbitMQ");
        Ok(Link {
            connection: Arc::new(connection),
            publisher,
        })
    }

    /// Publishes a message and waits for the broker's confirm. `exchange` `""` is the default
    /// exchange, whose routing key is a queue's name.
    pub(crate) async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        data: &[u8],
        event: &str,
    ) -> Result<(), TransportError> {
        let link = self.connection().await?;
        let confirm = link
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                data,
                properties,
            )
            .await
            .map_err(|error| channel("basic.publish", error))?;
        let confirmation = tokio::time::timeout(self.publish_timeout, confirm)
            .await
            .map_err(|_| TransportError::PublishTimedOut {
                transport: NAME.to_owned(),
                event: event.to_owned(),
                deadline: self.publish_timeout,
            })?
            .map_err(|error| channel("publisher confirm", error))?;
        match confirmation {
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(TransportError::broker(
                NAME,
                AmqpError::Refused {
                    event: event.to_owned(),
                },
            )),
        }
    }

    /// Publishes `event` to the exchange, under its name, with `attempts` deliveries made.
    pub(crate) async fn publish_event(
        &self,
        event: &WireEvent,
        attempts: u32,
    ) -> Result<(), TransportError> {
        let properties = crate::wire::properties(event, attempts).ok_or_else(|| {
            TransportError::invalid(
                NAME,
                "datacontenttype",
                event.datacontenttype.as_deref().unwrap_or_default(),
                "longer than the 255 bytes of the AMQP content-type property",
            )
        })?;
        self.send(
            &self.exchange,
            &event.ty,
            properties,
            &event.data,
            &event.ty,
        )
        .await
    }
}

/// The RabbitMQ transport: events published to a topic exchange under their names, read
/// through a quorum queue per consumer group. See the [crate documentation](crate).
///
/// Cloning is cheap: the clones share one connection.
#[derive(Clone)]
pub struct AmqpTransport {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("url", &self.inner.url)
            .field("exchange", &self.inner.exchange)
            .finish_non_exhaustive()
    }
}

impl AmqpTransport {
    /// A builder for a transport on the broker at `url`
    /// (`amqp://user:password@host:5672/vhost`, the vhost URL-encoded: `%2f` for `/`).
    pub fn builder(url: impl Into<String>) -> AmqpTransportBuilder {
        AmqpTransportBuilder {
            url: ServerUrl::new(url),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            prefetch: DEFAULT_PREFETCH,
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(10),
            max_payload: DEFAULT_MAX_PAYLOAD,
            source: NAME.to_owned(),
            restartable: false,
        }
    }

    /// Connects to `url` with the defaults: [`AmqpTransport::builder`], then
    /// [`connect`](AmqpTransportBuilder::connect).
    ///
    /// # Errors
    ///
    /// As [`AmqpTransportBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<AmqpTransport, TransportError> {
        AmqpTransport::builder(url).connect().await
    }

    /// The exchange this transport publishes to.
    pub fn exchange(&self) -> &str {
        &self.inner.exchange
    }

    /// The groups whose queues this transport declared (subscribed to), for cleaning up
    /// after tests with [`delete_group`](Self::delete_group).
    pub fn declared_groups(&self) -> Vec<String> {
        let groups = self.inner.groups.lock();
        let groups = groups.unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.iter().cloned().collect()
    }

    /// Deletes group `group`'s queues (its queue and its delay queue), with the events in
    /// them: for tests and for retiring a service.
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached or refuses.
    pub async fn delete_group(&self, group: &str) -> Result<(), TransportError> {
        let (queue, delay) = crate::names::group_queues(&self.inner.exchange, group)?;
        let link = self.inner.connection().await?;
        let channel_ = link
            .connection
            .create_channel()
            .await
            .map_err(|error| channel("channel.open", error))?;
        for queue in [queue, delay] {
            channel_
                .queue_delete(
                    queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
                .map_err(|error| channel("queue.delete", error))?;
        }
        let _ = channel_.close(200, "OK".into()).await;
        Ok(())
    }

    /// Deletes the exchange: for tests that used an exchange of their own.
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached or refuses.
    pub async fn delete_exchange(&self) -> Result<(), TransportError> {
        let link = self.inner.connection().await?;
        let channel_ = link
            .connection
            .create_channel()
            .await
            .map_err(|error| channel("channel.open", error))?;
        channel_
            .exchange_delete(
                self.inner.exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(|error| channel("exchange.delete", error))?;
        let _ = channel_.close(200, "OK".into()).await;
        Ok(())
    }
}

impl Transport for AmqpTransport {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.persistent = true;
        capabilities.ordered = true;
        capabilities.groups = true;
        capabilities.deduplicates = false;
        capabilities.restartable = self.inner.restartable;
        capabilities.group_stats = true;
        capabilities
    }

    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        let span = tracing::debug_span!(
            "amqp.publish",
            event = %event.ty,
            id = %event.id,
            exchange = %self.inner.exchange
        );
        Box::pin(
            async move {
                event.validate(self.inner.max_payload).map_err(|error| {
                    TransportError::invalid(NAME, "event", &event.ty, error.to_string())
                })?;
                if event.ty.len() > MAX_SHORT {
                    return Err(TransportError::invalid(
                        NAME,
                        "event name",
                        &event.ty,
                        "longer than the 255 bytes of an AMQP routing key",
                    ));
                }
                self.inner.publish_event(&event, 0).await
            }
            .instrument(span),
        )
    }

    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        Box::pin(crate::subscription::subscribe(
            Arc::clone(&self.inner),
            options,
        ))
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.tasks.close();
            self.inner.tasks.wait().await;
            self.inner.tasks.reopen();
        })
    }

    fn is_connected(&self) -> Option<bool> {
        let connection = self.inner.connection.try_lock().ok();
        match connection.as_ref().and_then(|slot| slot.as_ref()) {
            Some(link) => Some(link.usable()),
            None => Some(self.inner.connected.load(Ordering::Relaxed)),
        }
    }

    fn group_stats<'a>(
        &'a self,
        options: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<Option<GroupStats>, TransportError>> {
        Box::pin(async move {
            let Some(group) = &options.group else {
                return Ok(None);
            };
            let (queue, delay) = crate::names::group_queues(&self.inner.exchange, group)?;
            let link = self.inner.connection().await?;
            // A passive declare of a queue that does not exist closes its channel: one
            // channel per question.
            let count = |name: String| {
                let link = link.clone();
                async move {
                    let probe = link
                        .connection
                        .create_channel()
                        .await
                        .map_err(|error| channel("channel.open", error))?;
                    let declared = probe
                        .queue_declare(
                            ShortString::from(name),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await;
                    match declared {
                        Ok(queue) => {
                            let _ = probe.close(200, "OK".into()).await;
                            Ok(Some(u64::from(queue.message_count())))
                        }
                        Err(error) if is_not_found(&error) => Ok(None),
                        Err(error) => Err(channel("queue.declare (passive)", error)),
                    }
                }
            };
            let Some(ready) = count(queue.clone()).await? else {
                return Ok(None);
            };
            let waiting = count(delay).await?.unwrap_or(0);
            let unacked = crate::subscription::unacked(&queue);
            Ok(Some(GroupStats::new(
                ready,
                unacked.saturating_add(waiting),
            )))
        })
    }
}

/// Whether the broker answered "no such queue" (404).
fn is_not_found(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_id() == 404,
        _ => false,
    }
}
