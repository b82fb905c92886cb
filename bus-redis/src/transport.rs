//! [`RedisTransport`] and its builder: the settings, TLS, and connecting. What the transport
//! shares with its subscriptions and deliveries is in [`connection`](crate::connection).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bus_core::transport::support::{self, RootCertificates};
use bus_core::transport::{
    BoxFuture, Capabilities, DEFAULT_MAX_PAYLOAD, GroupInfo, GroupStats, Retention, ServerUrl,
    StoredDeadLetter, SubscribeOptions, Transport, TransportError, TransportSubscription,
    WireEvent,
};
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::Instrument;

use crate::connection::{Config, Inner};
use crate::dedup::AckedIds;
use crate::error::{NAME, RedisError, invalid};
use crate::keys;

/// The default [`key_prefix`](RedisTransportBuilder::key_prefix): `bus`.
pub const DEFAULT_KEY_PREFIX: &str = "bus";
/// The default [`publish_deadline`](RedisTransportBuilder::publish_deadline): 30 s.
pub const DEFAULT_PUBLISH_DEADLINE: Duration = Duration::from_secs(30);
/// The default [`duplicate_window`](RedisTransportBuilder::duplicate_window): off. Repeats are
/// dropped on the consumer side ([`acked_window`](RedisTransportBuilder::acked_window)); the
/// publish-side window costs a Lua script and a key per event (see the builder method).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::ZERO;
/// The default [`acked_window`](RedisTransportBuilder::acked_window): 2 min.
pub const DEFAULT_ACKED_WINDOW: Duration = Duration::from_secs(120);
/// The default [`acked_capacity`](RedisTransportBuilder::acked_capacity): 100,000 events.
pub const DEFAULT_ACKED_CAPACITY: usize = 100_000;
/// The default [`retention`](RedisTransportBuilder::retention): about the last million entries
/// of each stream.
pub const DEFAULT_RETENTION: Retention = Retention::MaxLen(1_000_000);
/// The default [`claim_interval`](RedisTransportBuilder::claim_interval): 1 s.
pub const DEFAULT_CLAIM_INTERVAL: Duration = Duration::from_secs(1);
/// The default [`discovery_interval`](RedisTransportBuilder::discovery_interval): 250 ms.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_millis(250);
/// The default [`read_batch`](RedisTransportBuilder::read_batch): 1 entry per group read.
pub const DEFAULT_READ_BATCH: usize = 1;
/// The default [`request_timeout`](RedisTransportBuilder::request_timeout): 5 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The default [`connect_timeout`](RedisTransportBuilder::connect_timeout): 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Transport`] over Redis Streams.
///
/// - **One stream per event name**: event `a.b.c` is the stream `<prefix>:stream:a.b.c`, and its
///   dead letters go to `<prefix>:stream:dead-letter.a.b.c`. Each entry holds the CloudEvents
///   binary-mode headers of the NATS binding as fields (`ce-specversion`, `ce-id`,
///   `ce-source`, `ce-type`, `ce-time`, `ce-datacontenttype`, `ce-<extension>`), with the
///   same percent-encoded values, and the payload in the field `data`; the `content-type`
///   field of entries written by earlier versions is read too. See the
///   [crate documentation](crate#fields).
/// - **Publish** is one `XADD` with the [retention](RedisTransportBuilder::retention). A Lua
///   script does it instead when more is needed in the same step: with a
///   [duplicate window](RedisTransportBuilder::duplicate_window), `SET
///   <prefix>:dedup:<source>:<id> NX PX <window>` first (a duplicate stops there, is counted
///   and logged at `info`, and the publish resolves `Ok`); and, for a
///   name this transport has not registered in the last 10 s, the registration of the name in
///   `<prefix>:names` (and, the first time, in the stream `<prefix>:names:log`) that pattern
///   subscribers discover streams by. It resolves once Redis replied, on the shared
///   multiplexed connection; while Redis is away the publish is retried until the
///   [publish deadline](RedisTransportBuilder::publish_deadline).
/// - **Subscribe** reads, on a connection of its own (blocking reads never use the shared
///   connection), every stream whose name matches the pattern: found at start (`SCAN`, and the
///   name registry), and found later in the log of new names, every
///   [`discovery_interval`](RedisTransportBuilder::discovery_interval). With a group: the
///   consumer group of that name on each stream (`XREADGROUP`), created on a stream when first
///   seen, starting at the group's creation; without: `XREAD` from the moment of the subscribe.
/// - **Settling**: see the [crate documentation](crate).
///
/// Clones share one connection.
///
/// ```no_run
/// use bus_core::transport::{SubscribeOptions, Transport, WireEvent};
/// use bus_redis::RedisTransport;
/// use futures_util::StreamExt;
///
/// # async fn demo() -> Result<(), bus_core::transport::TransportError> {
/// let redis = RedisTransport::builder("redis://127.0.0.1:6379")
///     .key_prefix("shop")
///     .connect()
///     .await?;
/// let mut orders = redis.subscribe(SubscribeOptions::new("orders.>").group("billing")).await?;
/// redis.publish(WireEvent::new("id-1", "checkout", "orders.created", "{}")).await?;
/// let delivery = orders.next().await.expect("open")?;
/// delivery.ack().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisTransport {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransport")
            .field("url", &self.inner.config.url)
            .field("key_prefix", &self.inner.config.prefix)
            .field("instance", &self.inner.config.instance)
            .finish()
    }
}

/// Builds a [`RedisTransport`]; every setting has a documented default.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect` is awaited"]
pub struct RedisTransportBuilder {
    url: ServerUrl,
    prefix: String,
    instance: Option<String>,
    retention: Retention,
    publish_deadline: Duration,
    duplicate_window: Duration,
    acked_window: Duration,
    acked_capacity: usize,
    max_payload: usize,
    claim_interval: Duration,
    discovery_interval: Duration,
    read_batch: usize,
    request_timeout: Duration,
    connect_timeout: Duration,
    restartable: bool,
    tls_root_certificates: Vec<RootCertificates>,
}

impl RedisTransportBuilder {
    /// The prefix of every key: streams are `<prefix>:stream:<event name>`. ASCII letters,
    /// digits, `_`, `-`, `.` and `:`. Default: [`DEFAULT_KEY_PREFIX`] (`bus`). Two buses share
    /// events when they share a prefix (and a database).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How each stream is trimmed on each publish, always approximately (`~`: Redis trims whole
    /// radix-tree nodes, so a stream keeps at least the limit, and a little more):
    /// [`Retention::Unbounded`] (no trimming), [`Retention::MaxLen`]`(n)` (`XADD <key> MAXLEN ~
    /// n`: about the last `n` entries of each stream) or [`Retention::MaxAge`]`(age)` (`XADD
    /// <key> MINID ~ <now - age>`: about the entries of the last `age`, by the server's clock,
    /// since entry ids are the server's time in milliseconds). [`Retention::MaxBytes`] is
    /// refused at [`connect`](Self::connect) with [`TransportError::Invalid`]: Redis trims by
    /// count or by id, not by size. Default: [`DEFAULT_RETENTION`] (`MaxLen(1_000_000)`).
    ///
    /// Trimming is blind to consumer groups: an entry trimmed while it is still pending in a
    /// group is lost to that group. The transport detects such entries (the deleted ids that
    /// `XAUTOCLAIM` returns, and the empty entries of a re-read of a consumer's own pending
    /// list), acknowledges them, logs each at `warn` and counts them in
    /// [`RedisTransport::trimmed_while_pending`]. Size the retention well above what a group
    /// may fall behind.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// How long a publish (and a dead letter, and an ack) keeps being retried while Redis is
    /// away before it fails with [`TransportError::PublishTimedOut`]. A retry whose first
    /// attempt was stored after all stores the event twice, unless a
    /// [duplicate window](Self::duplicate_window) at least this long is set; without one, the
    /// consumer side drops the second copy when its group acknowledged the first through the
    /// same transport ([`acked_window`](Self::acked_window)). Default:
    /// [`DEFAULT_PUBLISH_DEADLINE`] (30 s).
    pub fn publish_deadline(mut self, deadline: Duration) -> Self {
        self.publish_deadline = deadline;
        self
    }

    /// The publish-side duplicate window: a publish of an event (its source and id) published
    /// less than this long ago is dropped by Redis (and resolves `Ok`; it is counted in
    /// [`RedisTransport::duplicates_dropped`] and logged at `info`), and
    /// [`Capabilities::deduplicates`] is `true`. The same id from another source is another
    /// event, stored. It has a price, which is why it is off by default: every publish runs a
    /// Lua script (`SET NX PX` and `XADD` in one step), which costs Redis about twice the time
    /// of the plain `XADD` published otherwise (BENCHMARKS.md, scenario (r)), and each event
    /// costs one key `<prefix>:dedup:<source>:<id>` (both percent-encoded; about 60 bytes plus
    /// the source and id) for this long: 2 minutes at 10,000 events/s is 1.2 million keys,
    /// about 100 MB. Default: [`DEFAULT_DUPLICATE_WINDOW`] (off).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// The consumer-side duplicate window: a subscription drops (and acknowledges) an entry
    /// whose event (its source and id) its group acknowledged through this transport less
    /// than this long ago: the second copy of an event published twice past the duplicate
    /// window, or an entry whose ack was lost with the connection. The same id from another
    /// source is another event, delivered. A dropped entry is counted in
    /// [`RedisTransport::duplicates_dropped`] and logged at `info`. Held in process memory,
    /// shared by the subscriptions of this transport: about 130 bytes plus the group, source
    /// and id lengths per event, at most [`acked_capacity`](Self::acked_capacity) events (the
    /// oldest are forgotten first). `Duration::ZERO` turns it off. Default:
    /// [`DEFAULT_ACKED_WINDOW`] (2 min).
    pub fn acked_window(mut self, window: Duration) -> Self {
        self.acked_window = window;
        self
    }

    /// The most events the consumer-side duplicate window remembers. Default:
    /// [`DEFAULT_ACKED_CAPACITY`] (100,000: about 25 MB with groups, sources and ids of 20
    /// bytes each).
    pub fn acked_capacity(mut self, events: usize) -> Self {
        self.acked_capacity = events;
        self
    }

    /// The largest payload published or accepted, in bytes: a bigger publish is refused with
    /// [`TransportError::Invalid`], a bigger entry received is dead-lettered. Default:
    /// [`DEFAULT_MAX_PAYLOAD`] (1 MiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How often a group subscription runs `XAUTOCLAIM` on its streams, taking over the
    /// entries pending longer than its [`ack_wait`](SubscribeOptions::ack_wait) on any consumer
    /// of the group (a dead one, a hung one, or itself); also the longest a blocking read
    /// waits. An entry left behind is redelivered at most this long after its ack wait.
    /// Default: [`DEFAULT_CLAIM_INTERVAL`] (1 s).
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How often a subscription to a pattern with wildcards looks for streams created after
    /// it started (in the log of new names). Default: [`DEFAULT_DISCOVERY_INTERVAL`] (250 ms).
    pub fn discovery_interval(mut self, interval: Duration) -> Self {
        self.discovery_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How many entries one `XREADGROUP` asks for (at least 1). Entries read but not handed
    /// out yet are pending on the subscription's consumer: when it closes they go back to the
    /// group and count one delivery each. Default: [`DEFAULT_READ_BATCH`] (1). Subscriptions
    /// outside any group always read up to 256 at once (they have no pending list).
    pub fn read_batch(mut self, entries: usize) -> Self {
        self.read_batch = entries.max(1);
        self
    }

    /// The name of this process instance, from which the consumer names of its subscriptions
    /// are made (`<instance>-<n>`, `n` the lowest number free in the group). Give a name that
    /// is stable across restarts of the instance (a pod name, say): a restarted instance then
    /// first re-reads the entries it left pending. Two live instances must never share one.
    /// Default: `<host>-<pid>-<random>`, new on every connect.
    pub fn instance_name(mut self, name: impl Into<String>) -> Self {
        self.instance = Some(name.into());
        self
    }

    /// How long one command on the shared connection waits for its reply. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`] (5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long one connection attempt may take. Default: [`DEFAULT_CONNECT_TIMEOUT`] (5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// For test harnesses: declare in [`Capabilities::restartable`] that the test owns this
    /// server (a private `redis-server` it started) and may restart it. Default: `false`.
    pub fn restartable(mut self, restartable: bool) -> Self {
        self.restartable = restartable;
        self
    }

    /// Trusts the CA certificates of the PEM file at `path` for the server's TLS certificate
    /// (with a `rediss://` URL): for a server whose certificate is signed by a CA of your own.
    /// May be given more than once, and with
    /// [`tls_root_certificates_pem`](Self::tls_root_certificates_pem); the certificates add
    /// up. Once any is given, only these are trusted (not the system's roots). The file is
    /// read at [`connect`](Self::connect), and must hold at least one certificate. Default:
    /// the system's roots.
    ///
    /// TLS is rustls with its `ring` provider: unless the process installed a rustls
    /// `CryptoProvider` of its own, connecting to a `rediss://` URL installs ring's as the
    /// process default.
    pub fn tls_root_certificates(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_root_certificates
            .push(RootCertificates::File(path.into()));
        self
    }

    /// As [`tls_root_certificates`](Self::tls_root_certificates), with the PEM text itself
    /// (one or more `-----BEGIN CERTIFICATE-----` blocks) rather than a file.
    pub fn tls_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificates
            .push(RootCertificates::Pem(pem.into()));
        self
    }

    /// Connects (and checks that the server answers).
    ///
    /// Credentials come from the URL: `redis://user:password@host:6379` (an ACL user) or
    /// `redis://:password@host:6379` (`requirepass`); `rediss://` connects over TLS (see
    /// [`tls_root_certificates`](Self::tls_root_certificates)). They never show: errors,
    /// logs and `Debug` show the URL with them masked (`redis://user:***@host:6379`).
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a bad prefix, URL or root certificates, or a
    /// [`Retention::MaxBytes`] retention, [`TransportError::Unreachable`] when the server cannot
    /// be reached,
    /// [`TransportError::Broker`] when the server refuses the credentials
    /// ([`RedisError::Auth`]) or the TLS handshake fails ([`RedisError::Tls`], for instance a
    /// server certificate signed by a CA not trusted); the source is a [`RedisError`] saying
    /// what to do.
    pub async fn connect(self) -> Result<RedisTransport, TransportError> {
        keys::check_prefix(&self.prefix)
            .map_err(|reason| invalid("key prefix", &self.prefix, reason))?;
        let mut root_certificates: Option<Vec<u8>> = None;
        for source in &self.tls_root_certificates {
            let pem = source.load(NAME)?;
            let all = root_certificates.get_or_insert_with(Vec::new);
            all.extend_from_slice(&pem);
            all.push(b'\n');
        }
        if !matches!(
            self.retention,
            Retention::Unbounded | Retention::MaxLen(_) | Retention::MaxAge(_)
        ) {
            return Err(invalid(
                "retention",
                &format!("{:?}", self.retention),
                "Redis trims a stream by its number of entries or by their age, not by size: use \
                 Retention::MaxLen or Retention::MaxAge",
            ));
        }
        let instance = self.instance.clone().unwrap_or_else(default_instance);
        if instance.is_empty() || instance.chars().any(char::is_whitespace) {
            return Err(invalid(
                "instance name",
                &instance,
                "an instance name is not empty and has no whitespace",
            ));
        }
        let config = Config {
            url: self.url,
            prefix: self.prefix,
            instance,
            retention: self.retention,
            publish_deadline: self.publish_deadline,
            duplicate_window: self.duplicate_window,
            max_payload: self.max_payload,
            claim_interval: self.claim_interval,
            discovery_interval: self.discovery_interval,
            read_batch: self.read_batch,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            restartable: self.restartable,
        };
        let acked = AckedIds::new(self.acked_window, self.acked_capacity);
        let span = tracing::info_span!(
            "bus.redis.connect",
            url = %config.url,
            prefix = %config.prefix,
            instance = %config.instance,
        );
        connect(config, acked, root_certificates)
            .instrument(span)
            .await
    }
}

/// `<host>-<pid>-<random>`.
fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty() && !host.chars().any(char::is_whitespace))
        .unwrap_or_else(|| "host".to_owned());
    let random: String = (0..6).map(|_| fastrand::alphanumeric()).collect();
    format!("{host}-{}-{random}", std::process::id())
}

/// The client for `config.url`, over TLS with `root_certificates` trusted when given.
fn client(
    config: &Config,
    root_certificates: Option<Vec<u8>>,
) -> Result<redis::Client, TransportError> {
    let url = config.url.expose();
    let tls = url
        .get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"));
    if tls {
        support::ensure_crypto_provider();
    }
    let built = match root_certificates {
        Some(root_cert) if tls => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
        Some(_) => {
            return Err(invalid(
                "URL",
                config.url.shown(),
                "TLS root certificates are given, but the URL is not a TLS one: write it \
                 `rediss://host:port`",
            ));
        }
        None => redis::Client::open(url),
    };
    built.map_err(|source| {
        RedisError::Url {
            url: config.url.to_string(),
            source,
        }
        .broker()
    })
}

/// A failed first connection (or its first command), as the error that says what to do.
fn connect_error(url: &ServerUrl, source: redis::RedisError) -> TransportError {
    let url = url.to_string();
    let error = if crate::error::is_auth(&source) {
        RedisError::Auth { url, source }.broker()
    } else if crate::error::is_tls(&source) {
        RedisError::Tls { url, source }.broker()
    } else {
        RedisError::Connect { url, source }.unreachable()
    };
    tracing::debug!(%error, "cannot connect");
    error
}

async fn connect(
    config: Config,
    acked: AckedIds,
    root_certificates: Option<Vec<u8>>,
) -> Result<RedisTransport, TransportError> {
    let client = client(&config, root_certificates)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.request_timeout))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_millis(500));
    let conn = tokio::time::timeout(
        config.connect_timeout + config.request_timeout,
        ConnectionManager::new_with_config(client.clone(), manager_config),
    )
    .await
    .unwrap_or_else(|_| {
        Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connecting timed out",
        )))
    })
    .map_err(|source| connect_error(&config.url, source))?;
    let inner = Inner::new(client, conn, config, acked);
    // One round trip, so that a server that accepts connections but does not answer fails here.
    let mut conn = inner.conn.clone();
    redis::cmd("PING")
        .query_async::<Value>(&mut conn)
        .await
        .map_err(|source| connect_error(&inner.config.url, source))?;
    tracing::info!("connected");
    Ok(RedisTransport {
        inner: Arc::new(inner),
    })
}

impl RedisTransport {
    /// Connects to `url` (`redis://127.0.0.1:6379`, `redis://:password@host:port/db`,
    /// `redis://user:password@host:port`, `rediss://host:port` for TLS) with every default; see
    /// [`RedisTransport::builder`].
    ///
    /// # Errors
    ///
    /// As [`RedisTransportBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<RedisTransport, TransportError> {
        RedisTransport::builder(url).connect().await
    }

    /// A builder for a connection to `url`.
    pub fn builder(url: impl Into<String>) -> RedisTransportBuilder {
        RedisTransportBuilder {
            url: ServerUrl::new(url),
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
            instance: None,
            retention: DEFAULT_RETENTION,
            publish_deadline: DEFAULT_PUBLISH_DEADLINE,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            acked_window: DEFAULT_ACKED_WINDOW,
            acked_capacity: DEFAULT_ACKED_CAPACITY,
            max_payload: DEFAULT_MAX_PAYLOAD,
            claim_interval: DEFAULT_CLAIM_INTERVAL,
            discovery_interval: DEFAULT_DISCOVERY_INTERVAL,
            read_batch: DEFAULT_READ_BATCH,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            restartable: false,
            tls_root_certificates: Vec::new(),
        }
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.inner.config.prefix
    }

    /// This instance's name, from which its consumer names are made.
    pub fn instance_name(&self) -> &str {
        &self.inner.config.instance
    }

    /// The key of the stream of event `event`: `<prefix>:stream:<event>`.
    pub fn stream_key(&self, event: &str) -> String {
        self.inner.keys.stream(event)
    }

    /// How many entries were found trimmed (deleted by the retention) while still pending in
    /// a group, since this transport connected. Each is also logged at `warn`.
    pub fn trimmed_while_pending(&self) -> u64 {
        self.inner
            .stats
            .trimmed_while_pending
            .load(Ordering::Relaxed)
    }

    /// How many times a subscription found its consumer group gone (`NOGROUP`: Redis flushed,
    /// or restarted without persistence) and created it again.
    pub fn groups_recreated(&self) -> u64 {
        self.inner.stats.groups_recreated.load(Ordering::Relaxed)
    }

    /// How many duplicates this transport dropped: publishes not stored because an event of
    /// the same source and id was published within the
    /// [duplicate window](RedisTransportBuilder::duplicate_window), and entries received and
    /// dropped because their group had acknowledged an event of the same source and id within
    /// the [acked window](RedisTransportBuilder::acked_window). Each is also logged at `info`
    /// (event name, id, source, and the group of a received one) and, with the feature
    /// `metrics` of `bus-core` (`bus`'s `metrics`), counted in `bus_duplicates_dropped_total`
    /// (labels `transport="redis"`, `stage="publish"` or `stage="receive"` with `group`).
    pub fn duplicates_dropped(&self) -> u64 {
        self.inner.stats.duplicates_dropped.load(Ordering::Relaxed)
    }

    /// How many dead letters this transport's subscriptions wrote.
    pub fn dead_lettered(&self) -> u64 {
        self.inner.stats.dead_lettered.load(Ordering::Relaxed)
    }

    /// The shared multiplexed connection, for what the transport does not cover (tests,
    /// admin). It has a short response timeout: never send blocking commands on it.
    pub fn connection(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// The underlying client, to open connections of your own.
    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }
}

impl Transport for RedisTransport {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.persistent = true;
        capabilities.ordered = true;
        capabilities.groups = true;
        capabilities.deduplicates = !self.inner.config.duplicate_window.is_zero();
        capabilities.restartable = self.inner.config.restartable;
        capabilities.group_stats = true;
        capabilities.list_groups = true;
        capabilities.stored_dead_letters = true;
        capabilities
    }

    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        let span = tracing::debug_span!(
            "bus.redis.publish",
            stream = %self.inner.keys.stream(&event.ty),
            event_id = %event.id,
        );
        Box::pin(self.inner.publish(event).instrument(span))
    }

    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        Box::pin(crate::subscription::open(Arc::clone(&self.inner), options))
    }

    /// `XINFO GROUPS` on each stream of the group's pattern, summed: `pending` is the group's
    /// pending list, `lag` its `lag` (counted with `XRANGE` in the server where Redis leaves it
    /// nil). `None` when the group has no record and no stream has it.
    fn group_stats<'a>(
        &'a self,
        options: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<Option<GroupStats>, TransportError>> {
        let span = tracing::debug_span!(
            "bus.redis.group_stats",
            group = options.group.as_deref().unwrap_or("-"),
        );
        Box::pin(crate::stats::group_stats(&self.inner, options).instrument(span))
    }

    /// The groups with a record (`<prefix>:group:<group>`), by name: the record's pattern,
    /// the stats of [`group_stats`](Transport::group_stats), and as members the most
    /// consumers the group has on one of its streams (`XINFO GROUPS` `consumers`: a consumer
    /// stays until its subscription closes with nothing pending on it).
    fn groups(&self) -> BoxFuture<'_, Result<Option<Vec<GroupInfo>>, TransportError>> {
        let span = tracing::debug_span!("bus.redis.groups");
        Box::pin(async move { crate::admin::groups(&self.inner).await.map(Some) }.instrument(span))
    }

    /// The entries of the streams `<prefix>:stream:dead-letter.<name>` the pattern matches
    /// (`XRANGE`), oldest first; a letter's position is its entry id.
    fn dead_letters<'a>(
        &'a self,
        events: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<StoredDeadLetter>>, TransportError>> {
        let span = tracing::debug_span!("bus.redis.dead_letters", events);
        Box::pin(
            async move {
                crate::admin::dead_letters(&self.inner, events)
                    .await
                    .map(Some)
            }
            .instrument(span),
        )
    }

    /// In one script per stream: `XACK` of the letters in every group of their stream (a
    /// [`DeadLetterQueue`](bus_core::transport::DeadLetterQueue) holding one never finds it
    /// missing), then `XDEL`; an entry is deleted only if its `ce-id` is the letter's.
    fn delete_dead_letters<'a>(
        &'a self,
        letters: &'a [StoredDeadLetter],
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>> {
        let span = tracing::debug_span!("bus.redis.delete_dead_letters", letters = letters.len());
        Box::pin(
            async move {
                crate::admin::delete_dead_letters(&self.inner, letters)
                    .await
                    .map(Some)
            }
            .instrument(span),
        )
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.flush().await;
            tracing::debug!("flushed");
        })
    }
}
