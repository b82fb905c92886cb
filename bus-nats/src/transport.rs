//! [`NatsTransport`] and its builder: the settings, TLS, connecting, and the stream. What the
//! transport shares with its subscriptions and deliveries is in
//! [`connection`](crate::connection).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bus_core::transport::support::{self, Backoff, RootCertificates};
use bus_core::transport::{
    BoxFuture, Capabilities, DEFAULT_MAX_PAYLOAD, GroupInfo, GroupStats, Retention, ServerUrl,
    StoredDeadLetter, SubscribeOptions, Transport, TransportError, TransportSubscription,
    WireEvent,
};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::connection::{Config, Inner};
use crate::error::{NAME, NatsError, invalid};
use crate::names;
use crate::servers::{self, Credentials};
use crate::streams::{self, Limits, MAX_REPLICAS};

/// The default [`subject_prefix`](NatsTransportBuilder::subject_prefix): `bus`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "bus";
/// The default [`publish_deadline`](NatsTransportBuilder::publish_deadline): 30 s.
pub const DEFAULT_PUBLISH_DEADLINE: Duration = Duration::from_secs(30);
/// The default [`duplicate_window`](NatsTransportBuilder::duplicate_window): 2 min (JetStream's
/// own default, set explicitly).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The default [`request_timeout`](NatsTransportBuilder::request_timeout): 5 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The default [`connect_timeout`](NatsTransportBuilder::connect_timeout): 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default [`fetch_batch`](NatsTransportBuilder::fetch_batch): 1 message per pull request.
pub const DEFAULT_FETCH_BATCH: usize = 1;
/// The default [`retention`](NatsTransportBuilder::retention) of a new events' stream: the
/// events of the last 7 days.
pub const DEFAULT_RETENTION: Retention = Retention::MaxAge(Duration::from_secs(7 * DAY));
/// The default [`dead_letter_retention`](NatsTransportBuilder::dead_letter_retention) of a new
/// dead letters' stream: the dead letters of the last 30 days.
pub const DEFAULT_DEAD_LETTER_RETENTION: Retention =
    Retention::MaxAge(Duration::from_secs(30 * DAY));
/// The default [`replicas`](NatsTransportBuilder::replicas) of a new stream: 1.
pub const DEFAULT_REPLICAS: usize = 1;
/// The default [`inactive_threshold`](NatsTransportBuilder::inactive_threshold) of a group's
/// durable consumer: 30 days.
pub const DEFAULT_INACTIVE_THRESHOLD: Duration = Duration::from_secs(30 * DAY);

/// Seconds in a day.
const DAY: u64 = 24 * 3600;

/// The longest pause between two reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// A [`Transport`] over NATS JetStream.
///
/// - **Two streams.** The events' stream (`stream_name`, default the prefix in capitals:
///   `BUS`) captures `<prefix>.>`: an event named `a.b.c` is the subject `<prefix>.a.b.c`. The
///   dead letters' stream (`<stream_name>_DEAD_LETTERS`) captures `<prefix>-dead-letter.>`: the
///   dead letter `dead-letter.a.b.c` is the subject `<prefix>-dead-letter.a.b.c`. Each is
///   created at [`connect`](NatsTransportBuilder::connect) if missing, with its
///   [`retention`](NatsTransportBuilder::retention) (default: 7 days of events) or
///   [`dead_letter_retention`](NatsTransportBuilder::dead_letter_retention) (30 days of dead
///   letters) and [`replicas`](NatsTransportBuilder::replicas); an existing one keeps its
///   limits and replicas (an operator's settings win), and only its subjects and duplicate
///   window are brought back to these values if they differ. Storage: files, retention by
///   limits, oldest discarded first. An events' stream made by an earlier bus-nats that holds
///   dead letters keeps them, and gets the new ones too (see
///   [`dead_letter_retention`](NatsTransportBuilder::dead_letter_retention)).
/// - **Publish** is a JetStream publish with the CloudEvents binary-mode headers and
///   `Nats-Msg-Id` = the event id; it resolves once the server's PubAck says the event is
///   stored. While the server is away (a restart, a network blip) the publish is retried, with
///   the same id (so it is stored once), until
///   [`publish_deadline`](NatsTransportBuilder::publish_deadline) passes, then fails with
///   [`TransportError::PublishTimedOut`]. The client reconnects by itself, forever.
/// - **Subscribe** opens a pull consumer filtered on `<prefix>.<pattern>` (`*` and `>` map
///   one to one), on the dead letters' stream for `dead-letter.…`, and one on each stream for a
///   pattern that matches events and dead letters (`>`, `*.>`). With a group: the durable
///   consumer named after the group (see [`SubscribeOptions::group`]); a new group starts with
///   the events published after it was created, an existing group resumes where it stood; all
///   subscriptions of a group, in any process, share its events (competing consumers). The
///   server deletes the consumer of a group left without subscriptions for the
///   [`inactive_threshold`](NatsTransportBuilder::inactive_threshold) (30 days). Without a
///   group: an ephemeral consumer of this subscription alone, from now on, deleted when the
///   subscription is dropped.
/// - **Settling**: `ack` acks (a plain ack, or a double ack confirmed by the server with
///   [`ack_sync`](NatsTransportBuilder::ack_sync)); `nack` naks with the delay, or on the last
///   allowed delivery dead-letters the event and terminates it; `reject` dead-letters and
///   terminates. A delivery dropped unsettled is nak'd at once (in a spawned task, which
///   [`flush`](Transport::flush) waits for), as `release` does (awaited). A message
///   that does not decode as an event is dead-lettered by the subscription itself, with the
///   decoding error as the reason, and never reaches the caller.
///
/// Clones share one connection.
///
/// ```no_run
/// use bus_core::transport::{SubscribeOptions, Transport, WireEvent};
/// use bus_nats::NatsTransport;
/// use futures_util::StreamExt;
///
/// # async fn demo() -> Result<(), bus_core::transport::TransportError> {
/// let nats = NatsTransport::builder("nats://127.0.0.1:4222")
///     .subject_prefix("shop")
///     .connect()
///     .await?;
/// let mut orders = nats.subscribe(SubscribeOptions::new("orders.>").group("billing")).await?;
/// nats.publish(WireEvent::new("id-1", "checkout", "orders.created", "{}")).await?;
/// let delivery = orders.next().await.expect("open")?;
/// delivery.ack().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsTransport {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("url", &self.inner.config.url)
            .field("subject_prefix", &self.inner.config.prefix)
            .field("stream", &self.inner.config.stream_name)
            .field("state", &self.inner.client.connection_state())
            .finish()
    }
}

/// Builds a [`NatsTransport`]; every setting has a documented default.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect` is awaited"]
pub struct NatsTransportBuilder {
    url: ServerUrl,
    prefix: String,
    stream_name: Option<String>,
    publish_deadline: Duration,
    max_payload: usize,
    duplicate_window: Duration,
    request_timeout: Duration,
    connect_timeout: Duration,
    fetch_batch: usize,
    ack_sync: bool,
    restartable: bool,
    tls_root_certificates: Vec<PathBuf>,
    require_tls: bool,
    retention: Vec<Retention>,
    dead_letter_retention: Vec<Retention>,
    replicas: usize,
    inactive_threshold: Duration,
}

impl NatsTransportBuilder {
    /// The subject prefix of every event: event `a.b` is subject `<prefix>.a.b`, and the stream
    /// captures `<prefix>.>`. One or more tokens of letters, digits, `_` and `-`. Default:
    /// [`DEFAULT_SUBJECT_PREFIX`] (`bus`). Two buses share events when they share a prefix.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The JetStream stream's name. Default: the prefix in capitals, dots as `_` (`bus` →
    /// `BUS`, `acme.bus` → `ACME_BUS`).
    pub fn stream_name(mut self, name: impl Into<String>) -> Self {
        self.stream_name = Some(name.into());
        self
    }

    /// How long a publish (and a dead letter) keeps being retried while the broker is away
    /// before it fails with [`TransportError::PublishTimedOut`]. Keep it within the
    /// [duplicate window](Self::duplicate_window), so a retried publish is stored once.
    /// Default: [`DEFAULT_PUBLISH_DEADLINE`] (30 s).
    pub fn publish_deadline(mut self, deadline: Duration) -> Self {
        self.publish_deadline = deadline;
        self
    }

    /// The largest payload published or accepted, in bytes: a bigger publish is refused with
    /// [`TransportError::Invalid`], a bigger message received is dead-lettered. The server's
    /// own `max_payload` (1 MiB by default, headers included) also applies. Default:
    /// [`DEFAULT_MAX_PAYLOAD`] (1 MiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The streams' duplicate window: a publish of an event whose source and id (its
    /// `Nats-Msg-Id`) were stored less than this long ago is acknowledged and dropped, counted
    /// in [`NatsTransport::duplicates_dropped`] and logged at `info`. The same id from another
    /// source is another event, stored. At most the stream's `max_age` (JetStream's rule):
    /// with a shorter [`MaxAge`](Retention::MaxAge), the window is that age. Default:
    /// [`DEFAULT_DUPLICATE_WINDOW`] (2 min).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// The limits of the events' stream, when this transport creates it: one [`Retention`] or
    /// several, which all apply (JetStream deletes the oldest events past any of them):
    /// [`MaxAge`](Retention::MaxAge)`(d)` is `max_age`, [`MaxLen`](Retention::MaxLen)`(n)` is
    /// `max_msgs` (for the whole stream, every event name together),
    /// [`MaxBytes`](Retention::MaxBytes)`(b)` is `max_bytes`, and
    /// [`Unbounded`](Retention::Unbounded) adds no limit. Of two limits of one kind the last
    /// wins; a limit of 0 is [`TransportError::Invalid`] at connect.
    ///
    /// ```no_run
    /// use bus_nats::{NatsTransport, Retention};
    /// use std::time::Duration;
    ///
    /// const DAY: Duration = Duration::from_secs(24 * 3600);
    /// let builder = NatsTransport::builder("nats://127.0.0.1:4222")
    ///     .retention([Retention::MaxAge(3 * DAY), Retention::MaxBytes(10 << 30)]) // both apply
    ///     .dead_letter_retention(Retention::MaxAge(90 * DAY));
    /// ```
    ///
    /// An existing stream keeps the limits it has (an operator's `nats stream edit` wins); the
    /// connect logs at `info` when they differ from these. Events are deleted past a limit
    /// whether or not every group has read them (a group behind resumes at the oldest event
    /// left): keep the limits well above what a group may fall behind. Default:
    /// [`DEFAULT_RETENTION`] (`MaxAge(7 days)`).
    pub fn retention(mut self, limits: impl IntoIterator<Item = Retention>) -> Self {
        self.retention = limits.into_iter().collect();
        self
    }

    /// The limits of the dead letters' stream, when this transport creates it; as
    /// [`retention`](Self::retention). Dead letters live in a stream of their own,
    /// `<stream_name>_DEAD_LETTERS`, capturing `<prefix>-dead-letter.>` (JetStream applies one
    /// set of limits to a stream, and a stream's subjects cannot leave out part of
    /// `<prefix>.>`), so that they can be kept longer (or shorter) than the events. An events'
    /// stream set up by an earlier bus-nats, which holds dead letters under
    /// `<prefix>.dead-letter.>`, keeps them, and the new dead letters go there too, under its
    /// limits: this setting then does not apply (logged at `info`). Once those are replayed
    /// or purged, the next connect creates the dead letters' stream (restart every process, so
    /// that none keeps writing to the old place). Default: [`DEFAULT_DEAD_LETTER_RETENTION`]
    /// (`MaxAge(30 days)`).
    pub fn dead_letter_retention(mut self, limits: impl IntoIterator<Item = Retention>) -> Self {
        self.dead_letter_retention = limits.into_iter().collect();
        self
    }

    /// How many copies a cluster keeps of each stream this transport creates (1 to 5; group
    /// consumers follow their stream). A single nats-server keeps 1: asking it for more fails
    /// the connect with [`NatsError::Replicas`]. An existing stream keeps its own. Default:
    /// [`DEFAULT_REPLICAS`] (1); 3 is usual in a cluster.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// How long a group's durable consumer lives with no subscription pulling from it, before
    /// the server deletes it: the consumer of a group that was renamed or retired goes away by
    /// itself instead of being kept forever. An existing group's consumer is brought to this
    /// value when a subscription of the group opens. `Duration::ZERO`: never deleted.
    ///
    /// A group whose consumer expired starts again as a new group: its next subscription
    /// receives the events published after it subscribed, not those published while the group
    /// had no subscriber. Keep it well above the longest time a group may go without any
    /// running subscriber (a long deployment, a service switched off for a while), and without
    /// asking for events (the server counts inactivity from a group's last pull request, and a
    /// subscription asks when it is polled: a handler that runs for hours holds none). Default:
    /// [`DEFAULT_INACTIVE_THRESHOLD`] (30 days). Subscriptions outside any group use
    /// [`EPHEMERAL_INACTIVE_THRESHOLD`](crate::EPHEMERAL_INACTIVE_THRESHOLD).
    pub fn inactive_threshold(mut self, threshold: Duration) -> Self {
        self.inactive_threshold = threshold;
        self
    }

    /// How long one JetStream request (set-up, one publish attempt's PubAck, a double ack)
    /// waits for its answer. Default: [`DEFAULT_REQUEST_TIMEOUT`] (5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long the first connection may take. Default: [`DEFAULT_CONNECT_TIMEOUT`] (5 s).
    /// Reconnects after that are automatic and never give up.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many messages one pull request of a subscription asks for (at least 1).
    ///
    /// A subscription asks for more only when it is polled for its next delivery. With 1, it
    /// never holds a message it has not handed out, so [`attempt`] counts exactly the
    /// deliveries handed out, as in the memory transport. With more, a subscription fetches
    /// ahead: faster (fewer round trips), but the messages it holds unhandled when it closes
    /// are returned to the broker and count one delivery each toward
    /// [`max_deliveries`](bus_core::transport::SubscribeOptions::max_deliveries). Default:
    /// [`DEFAULT_FETCH_BATCH`] (1).
    ///
    /// [`attempt`]: bus_core::transport::Delivery::attempt
    pub fn fetch_batch(mut self, messages: usize) -> Self {
        self.fetch_batch = messages.max(1);
        self
    }

    /// `true`: [`ack`](bus_core::transport::Delivery::ack) waits until the server confirms the
    /// ack (a double ack, one round trip per ack), so an acknowledged event is never delivered
    /// again, even if the connection breaks right after. `false`: a plain ack, sent and not
    /// confirmed. Default: `false`.
    pub fn ack_sync(mut self, confirm: bool) -> Self {
        self.ack_sync = confirm;
        self
    }

    /// For test harnesses: declare in [`Capabilities::restartable`] that the test owns this
    /// server (a private `nats-server` it started) and may restart it. Default: `false`.
    pub fn restartable(mut self, restartable: bool) -> Self {
        self.restartable = restartable;
        self
    }

    /// Trusts the CA certificates of the PEM file at `path` for the server's TLS certificate:
    /// for a server whose certificate is signed by a CA of your own. May be given more than
    /// once; the certificates add up. Once any is given, only these are trusted (not the
    /// system's roots). The file is checked at [`connect`](Self::connect) (it must hold at
    /// least one certificate) and read by the client at each connection.
    ///
    /// TLS is used when the server asks for it (`nats-server --tls`), when the URL's scheme is
    /// `tls://`, or with [`require_tls`](Self::require_tls). Default: the system's roots.
    ///
    /// TLS is rustls with its `ring` provider: unless the process installed a rustls
    /// `CryptoProvider` of its own, connecting with TLS set up here installs ring's as the
    /// process default.
    pub fn tls_root_certificates(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_root_certificates.push(path.into());
        self
    }

    /// `true`: connect only over TLS, and fail the connect (rather than talk in clear) with a
    /// server that does not offer it; the same as a `tls://` URL. Default: `false` (TLS when
    /// the server asks for it).
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// Connects, and creates or updates the streams.
    ///
    /// Credentials come from the URL: `nats://user:password@host:4222` (user and password,
    /// percent-encoded where needed), or `nats://token@host:4222` (a token). They are handed
    /// to the client apart from the server's address, and never show: errors, logs and
    /// `Debug` show the URL with them masked (`nats://user:***@host:4222`).
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a bad prefix, stream name, URL, root certificate file,
    /// retention (a limit of 0) or replica count (not 1 to 5), [`TransportError::Unreachable`]
    /// when the server cannot be reached or has no JetStream, [`TransportError::Broker`] when
    /// the server refuses the credentials ([`NatsError::Auth`]), the TLS handshake fails
    /// ([`NatsError::Tls`], for instance a server certificate signed by a CA not trusted), a
    /// stream cannot have the replicas asked for ([`NatsError::Replicas`]), or a stream cannot
    /// be set up ([`NatsError::Stream`]); the source is a [`NatsError`] saying what to do.
    pub async fn connect(self) -> Result<NatsTransport, TransportError> {
        names::check_prefix(&self.prefix)
            .map_err(|reason| invalid("subject prefix", &self.prefix, reason))?;
        for path in &self.tls_root_certificates {
            RootCertificates::File(path.clone()).load(NAME)?;
        }
        let stream_name = self
            .stream_name
            .clone()
            .unwrap_or_else(|| names::default_stream_name(&self.prefix));
        names::check_stream_name(&stream_name)
            .map_err(|reason| invalid("stream name", &stream_name, reason))?;
        let dead_letter_stream_name = format!("{stream_name}_DEAD_LETTERS");
        names::check_stream_name(&dead_letter_stream_name).map_err(|reason| {
            invalid(
                "stream name",
                &stream_name,
                format!("its dead letters' stream `{dead_letter_stream_name}`: {reason}"),
            )
        })?;
        let limits = Limits::new(&self.retention)
            .map_err(|reason| invalid("retention", &format!("{:?}", self.retention), reason))?;
        let dead_letter_limits = Limits::new(&self.dead_letter_retention).map_err(|reason| {
            invalid(
                "dead-letter retention",
                &format!("{:?}", self.dead_letter_retention),
                reason,
            )
        })?;
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(invalid(
                "replicas",
                &self.replicas.to_string(),
                format!("JetStream keeps 1 to {MAX_REPLICAS} replicas of a stream"),
            ));
        }
        let config = Config {
            url: self.url,
            prefix: self.prefix,
            stream_name,
            dead_letter_stream_name,
            limits,
            dead_letter_limits,
            replicas: self.replicas,
            inactive_threshold: self.inactive_threshold,
            publish_deadline: self.publish_deadline,
            max_payload: self.max_payload,
            duplicate_window: self.duplicate_window,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            fetch_batch: self.fetch_batch,
            ack_sync: self.ack_sync,
            restartable: self.restartable,
            tls_root_certificates: self.tls_root_certificates,
            require_tls: self.require_tls,
        };
        let span = tracing::info_span!(
            "bus.nats.connect",
            url = %config.url,
            stream = %config.stream_name,
            subjects = %config.subject(">"),
        );
        connect(config).instrument(span).await
    }
}

/// Whether the TLS handshake (or setting it up) is what failed.
fn is_tls_failure(error: &async_nats::ConnectError) -> bool {
    use std::error::Error as _;
    if error.kind() == async_nats::ConnectErrorKind::Tls {
        return true;
    }
    let mut cause = error.source();
    while let Some(current) = cause {
        if current.is::<async_nats::rustls::Error>() {
            return true;
        }
        // An I/O error's `source` skips the error it wraps: look at that one too.
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
        {
            return true;
        }
        cause = current.source();
    }
    false
}

async fn connect(config: Config) -> Result<NatsTransport, TransportError> {
    let servers = servers::parse(config.url.expose())
        .map_err(|reason| invalid("URL", config.url.shown(), reason))?;
    let mut options = async_nats::ConnectOptions::new();
    match servers.credentials {
        Some(Credentials::UserPassword { user, password }) => {
            options = options.user_and_password(user, password);
        }
        Some(Credentials::Token(token)) => options = options.token(token),
        None => {}
    }
    if !config.tls_root_certificates.is_empty() || config.require_tls || servers.tls_scheme {
        support::ensure_crypto_provider();
    }
    for path in &config.tls_root_certificates {
        options = options.add_root_certificates(path.clone());
    }
    if config.require_tls {
        options = options.require_tls(true);
    }
    let url = config.url.to_string();
    let (reconnected, reconnects) = tokio::sync::watch::channel(0_u64);
    // Events come in order, the first connection's `Connected` first: it is not counted.
    let connected_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = options
        .name("bus-nats")
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            if matches!(event, async_nats::Event::Connected)
                && connected_once.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                reconnected.send_modify(|count| *count += 1);
            }
            let url = url.clone();
            async move { log_event(&url, event) }
        })
        .connect(servers.addresses)
        .await
        .map_err(|source| {
            let url = config.url.to_string();
            let error = match source.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication => {
                    NatsError::Auth { url, source }.broker()
                }
                _ if is_tls_failure(&source) => NatsError::Tls { url, source }.broker(),
                _ => NatsError::Connect { url, source }.unreachable(),
            };
            tracing::debug!(%error, "cannot connect");
            error
        })?;
    let js = jetstream::ContextBuilder::new()
        .timeout(config.request_timeout)
        .build(client.clone());
    let streams = streams::ensure(&js, &config).await?;
    tracing::info!("connected; streams ready");
    Ok(NatsTransport {
        inner: Arc::new(Inner {
            client,
            reconnects,
            js,
            streams,
            config,
            background: TaskTracker::new(),
            dead_lettered: std::sync::atomic::AtomicU64::new(0),
            duplicates_dropped: std::sync::atomic::AtomicU64::new(0),
        }),
    })
}

/// Reconnect at once, then after 50 ms, doubling up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), MAX_RECONNECT_DELAY);
    match attempts {
        0 | 1 => Duration::ZERO,
        _ => BACKOFF.after(u32::try_from(attempts - 1).unwrap_or(u32::MAX)),
    }
}

fn log_event(url: &str, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => tracing::info!(url, "NATS connection (re)established"),
        async_nats::Event::Disconnected => {
            tracing::warn!(url, "NATS connection lost; reconnecting");
        }
        async_nats::Event::SlowConsumer(sid) => {
            tracing::warn!(
                url,
                sid,
                "NATS slow consumer: messages dropped by the client"
            );
        }
        other => tracing::debug!(url, event = %other, "NATS client event"),
    }
}

impl NatsTransport {
    /// Connects to `url` (`nats://127.0.0.1:4222`, `127.0.0.1:4222`, `tls://host:4222`,
    /// `nats://user:password@host:4222`, `nats://token@host:4222`, or several comma-separated)
    /// with every default; see [`NatsTransport::builder`].
    ///
    /// # Errors
    ///
    /// As [`NatsTransportBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<NatsTransport, TransportError> {
        NatsTransport::builder(url).connect().await
    }

    /// A builder for a connection to `url`.
    pub fn builder(url: impl Into<String>) -> NatsTransportBuilder {
        NatsTransportBuilder {
            url: ServerUrl::new(url),
            prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            stream_name: None,
            publish_deadline: DEFAULT_PUBLISH_DEADLINE,
            max_payload: DEFAULT_MAX_PAYLOAD,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            fetch_batch: DEFAULT_FETCH_BATCH,
            ack_sync: false,
            restartable: false,
            tls_root_certificates: Vec::new(),
            require_tls: false,
            retention: vec![DEFAULT_RETENTION],
            dead_letter_retention: vec![DEFAULT_DEAD_LETTER_RETENTION],
            replicas: DEFAULT_REPLICAS,
            inactive_threshold: DEFAULT_INACTIVE_THRESHOLD,
        }
    }

    /// The subject prefix.
    pub fn subject_prefix(&self) -> &str {
        &self.inner.config.prefix
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.inner.config.stream_name
    }

    /// How many dead letters this transport's subscriptions wrote (after a last failed
    /// delivery, a reject, or a message that is not an event of the bus).
    pub fn dead_lettered(&self) -> u64 {
        self.inner
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The name of the dead letters' stream (`<stream_name>_DEAD_LETTERS`), or `None` when the
    /// dead letters are kept in the events' stream (an events' stream set up before they had a
    /// stream of their own, which holds some: see [`NatsTransportBuilder::dead_letter_retention`]).
    pub fn dead_letter_stream_name(&self) -> Option<&str> {
        match self.inner.streams.dead_letters {
            streams::DeadLetters::Apart { .. } => Some(&self.inner.config.dead_letter_stream_name),
            streams::DeadLetters::Shared => None,
        }
    }

    /// How many publishes (events and dead letters) the stream dropped as duplicates: its
    /// PubAck said `duplicate`, because an event of the same source and id (`Nats-Msg-Id`) was
    /// stored within the [duplicate window](NatsTransportBuilder::duplicate_window). A publish
    /// retried after a lost PubAck, whose first attempt was stored after all, counts too. Each
    /// is also logged at `info` (event name, id, source) and, with the feature `metrics` of
    /// `bus-core` (`bus`'s `metrics`), counted in `bus_duplicates_dropped_total` (labels
    /// `transport="nats"`, `stage="publish"`).
    pub fn duplicates_dropped(&self) -> u64 {
        self.inner
            .duplicates_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The subject an event named `event` is published on: `<prefix>.<event>`, and for a dead
    /// letter (`dead-letter.<name>`) kept apart `<prefix>-dead-letter.<name>`.
    pub fn subject(&self, event: &str) -> String {
        self.inner.streams.subject(event)
    }

    /// The durable consumer that the subscriptions of group `group` share (the group's name
    /// with characters NATS refuses replaced, plus a hash when anything was replaced).
    pub fn consumer_name(group: &str) -> String {
        names::consumer_name(group)
    }

    /// The underlying NATS client, for what the transport does not cover (tests, admin).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The underlying JetStream context, for what the transport does not cover (tests, admin).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }
}

impl Transport for NatsTransport {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.persistent = true;
        capabilities.ordered = true;
        capabilities.groups = true;
        capabilities.deduplicates = true;
        capabilities.restartable = self.inner.config.restartable;
        capabilities.group_stats = true;
        capabilities.list_groups = true;
        capabilities.stored_dead_letters = true;
        capabilities
    }

    /// The client's own state: `false` while it reconnects (publishes then wait, up to their
    /// timeout, for the connection to come back).
    fn is_connected(&self) -> Option<bool> {
        Some(self.inner.client.connection_state() == async_nats::connection::State::Connected)
    }

    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        let span = tracing::debug_span!(
            "bus.nats.publish",
            subject = %self.subject(&event.ty),
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

    /// The group's durable consumer ([`NatsTransport::consumer_name`]) on each stream of the
    /// pattern: `lag` is its `num_pending`, `pending` its `num_ack_pending` (nak'd messages
    /// waiting for their delay included). `None` when no stream has the consumer.
    fn group_stats<'a>(
        &'a self,
        options: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<Option<GroupStats>, TransportError>> {
        let span = tracing::debug_span!(
            "bus.nats.group_stats",
            group = options.group.as_deref().unwrap_or("-"),
        );
        Box::pin(crate::subscription::group_stats(&self.inner, options).instrument(span))
    }

    /// The durable consumers of the streams, each a group: its name and pattern from the
    /// consumer's description (which the subscriptions write), `lag` its `num_pending`,
    /// `pending` its `num_ack_pending` (summed over both streams for `>`), and as members the
    /// pull requests waiting on it (`num_waiting`: about one per idle subscription).
    fn groups(&self) -> BoxFuture<'_, Result<Option<Vec<GroupInfo>>, TransportError>> {
        let span = tracing::debug_span!("bus.nats.groups");
        Box::pin(async move { crate::admin::groups(&self.inner).await.map(Some) }.instrument(span))
    }

    /// The messages of the dead letters' stream under `<prefix>-dead-letter.<events>`, read
    /// from the first by an ephemeral consumer without acks; a letter's position is its stream
    /// sequence.
    fn dead_letters<'a>(
        &'a self,
        events: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<StoredDeadLetter>>, TransportError>> {
        let span = tracing::debug_span!("bus.nats.dead_letters", events);
        Box::pin(
            async move {
                crate::admin::dead_letters(&self.inner, events)
                    .await
                    .map(Some)
            }
            .instrument(span),
        )
    }

    /// Deletes each letter's message from the dead letters' stream (`STREAM.MSG.DELETE`),
    /// once the message at its sequence is checked to be that letter; the consumers that held
    /// it skip it.
    fn delete_dead_letters<'a>(
        &'a self,
        letters: &'a [StoredDeadLetter],
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>> {
        let span = tracing::debug_span!("bus.nats.delete_dead_letters", letters = letters.len());
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
            let background = &self.inner.background;
            background.close();
            background.wait().await;
            background.reopen();
            // The naks are queued on the connection: through to the server before returning.
            let timeout = self.inner.config.request_timeout;
            match tokio::time::timeout(timeout, self.inner.client.flush()).await {
                Ok(Ok(())) => tracing::debug!("flushed"),
                Ok(Err(error)) => tracing::warn!(%error, "cannot flush the connection"),
                Err(_) => tracing::warn!(?timeout, "flushing the connection timed out"),
            }
        })
    }
}
