//! [`PostgresTransport`]: a [`Transport`] on three tables of the service's own PostgreSQL, for
//! a service that has a database and no broker. The design, and why, is in the
//! [crate documentation](crate#transport).

mod delivery;
mod error;
mod pattern;
mod purge;
pub(crate) mod schema;
mod sql;
mod subscription;
mod wake;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus_core::transport::support::{self, check_pattern};
use bus_core::transport::{
    BoxFuture, Capabilities, DEFAULT_MAX_PAYLOAD, GroupInfo, GroupStats, Retention, ServerUrl,
    StoredDeadLetter, SubscribeOptions, Transport, TransportError, TransportSubscription,
    WireEvent, dead_letter_name,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use self::error::PostgresTransportError;

use self::error::{NAME, is_transient};
use self::pattern::Matcher;
use self::sql::{Sql, statement};
use self::wake::Wakers;
use crate::schema::DEFAULT_PREFIX;

/// The default [`poll_interval`](PostgresTransportBuilder::poll_interval): 500 ms.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The default [`batch_size`](PostgresTransportBuilder::batch_size): 16 deliveries per claim.
pub const DEFAULT_BATCH_SIZE: usize = 16;
/// The default [`publish_deadline`](PostgresTransportBuilder::publish_deadline): 30 s.
pub const DEFAULT_PUBLISH_DEADLINE: Duration = Duration::from_secs(30);
/// The default [`max_connections`](PostgresTransportBuilder::max_connections) of a pool the
/// transport opens itself: 10.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// The default [`connect_timeout`](PostgresTransportBuilder::connect_timeout): 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default [`retention`](PostgresTransportBuilder::retention): events are kept until an
/// operator deletes them.
pub const DEFAULT_RETENTION: Retention = Retention::Unbounded;
/// How often a transport with a [`retention`](PostgresTransportBuilder::retention) deletes
/// what is past it: at connect, then every 30 s.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// The shortest wait between two polls of a subscription that found nothing: after a
/// notification, a subscription polls at once, then after 10 ms, 20 ms, ... up to the poll
/// interval (an event whose transaction ended while an older transaction was still open only
/// becomes claimable when that one ends).
const MIN_POLL: Duration = Duration::from_millis(10);

/// Where a [`PostgresTransport`] finds its database: a URL (the transport opens a pool of its
/// own) or a pool the application has already.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectTo {
    /// `postgres://user:password@host:5432/database`; shown with the password masked.
    Url(ServerUrl),
    /// An existing pool: the transport borrows its connections (and opens one more, for
    /// `LISTEN`, with the same options).
    Pool(PgPool),
}

impl From<&str> for ConnectTo {
    fn from(url: &str) -> ConnectTo {
        ConnectTo::Url(ServerUrl::new(url))
    }
}

impl From<String> for ConnectTo {
    fn from(url: String) -> ConnectTo {
        ConnectTo::Url(ServerUrl::new(url))
    }
}

impl From<PgPool> for ConnectTo {
    fn from(pool: PgPool) -> ConnectTo {
        ConnectTo::Pool(pool)
    }
}

impl From<&PgPool> for ConnectTo {
    fn from(pool: &PgPool) -> ConnectTo {
        ConnectTo::Pool(pool.clone())
    }
}

/// A [`Transport`] on PostgreSQL tables: events in `<prefix>events`, consumer groups in
/// `<prefix>groups`, what each group has still to settle in `<prefix>deliveries`. See the
/// [crate documentation](crate#transport) for the mapping, the guarantees and the limits.
///
/// Clones share one pool, one `LISTEN` connection and one set of background tasks.
///
/// ```no_run
/// use bus_core::transport::{SubscribeOptions, Transport, WireEvent};
/// use bus_postgres::PostgresTransport;
/// use futures_util::StreamExt;
///
/// # async fn demo() -> Result<(), bus_core::transport::TransportError> {
/// let postgres = PostgresTransport::builder("postgres://app@127.0.0.1:5432/shop")
///     .table_prefix("bus_")
///     .connect()
///     .await?;
/// let mut orders = postgres
///     .subscribe(SubscribeOptions::new("orders.>").group("billing"))
///     .await?;
/// postgres.publish(WireEvent::new("id-1", "checkout", "orders.created", "{}")).await?;
/// let delivery = orders.next().await.expect("open")?;
/// delivery.ack().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTransport")
            .field("table_prefix", &self.inner.prefix)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PostgresTransport`]; every setting has a documented default.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect` is awaited"]
pub struct PostgresTransportBuilder {
    to: ConnectTo,
    prefix: String,
    instance: Option<String>,
    poll_interval: Duration,
    batch_size: usize,
    publish_deadline: Duration,
    max_payload: usize,
    max_connections: u32,
    ack_sync: bool,
    connect_timeout: Duration,
    create_schema: bool,
    restartable: bool,
    retention: Retention,
}

impl PostgresTransportBuilder {
    /// The prefix of the three tables (`<prefix>events`, `<prefix>groups`,
    /// `<prefix>deliveries`) and of the `NOTIFY` channel (`<prefix>events`): lower-case ASCII
    /// letters, digits and `_`, not starting with a digit, at most [`MAX_PREFIX_LEN`](crate::MAX_PREFIX_LEN)
    /// bytes; written into SQL as it is, so nothing else is accepted ([`connect`](Self::connect)
    /// refuses it with [`TransportError::Invalid`]). Two transports share events when they
    /// share a prefix and a database. Default: [`DEFAULT_PREFIX`] (`bus_`).
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The name of this instance, written in `claimed_by` of the deliveries it claims and in
    /// the names of its subscriptions outside any group (`subscription-<instance>-<n>`): for
    /// an operator reading the tables. Default: `<process id>-<random>`.
    pub fn instance_name(mut self, name: impl Into<String>) -> Self {
        self.instance = Some(name.into());
        self
    }

    /// How often a subscription polls when no notification woke it: the bound on how late an
    /// event is when its `NOTIFY` was lost (the `LISTEN` connection was down), and the
    /// precision of nack delays and ack waits. Default: [`DEFAULT_POLL_INTERVAL`] (500 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(MIN_POLL);
        self
    }

    /// How many deliveries one claim takes (`LIMIT` of the `FOR UPDATE SKIP LOCKED` select).
    /// The ack wait of each starts at the claim; those not handed out when the subscription
    /// closes go back uncounted. At least 1. Default: [`DEFAULT_BATCH_SIZE`] (16).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// How long a publish (and an ack, a nack, a dead letter) keeps being retried while the
    /// server is unreachable (a restart, a failover) before it fails: a publish with
    /// [`TransportError::PublishTimedOut`]. A retried publish that was stored after all is
    /// dropped as a duplicate (its source and id are stored). Default:
    /// [`DEFAULT_PUBLISH_DEADLINE`] (30 s).
    pub fn publish_deadline(mut self, deadline: Duration) -> Self {
        self.publish_deadline = deadline;
        self
    }

    /// The largest payload published or delivered; a bigger one is refused at publish
    /// ([`TransportError::Invalid`]) and dead-lettered at delivery. Default:
    /// [`DEFAULT_MAX_PAYLOAD`] (1 MiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The size of the pool the transport opens from a URL (ignored for a pool given). Each
    /// transport also holds one more connection for `LISTEN`, from its first subscription on.
    /// Publishes hold all but a fifth of the pool at most (at least one connection left over;
    /// of a pool given too), so that a burst of them never keeps the subscriptions from
    /// claiming and acking.
    /// Default: [`DEFAULT_MAX_CONNECTIONS`] (10).
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Whether an ack (and a subscription's fill and claim) waits for its commit to be flushed
    /// to PostgreSQL's WAL. Off (the default), those statements commit with
    /// `synchronous_commit = off` (for their own transaction only): an ack resolves once
    /// PostgreSQL has applied it (every client sees it) without waiting for the disk, and a
    /// crash of the *server* within about three `wal_writer_delay`s (600 ms by default) may
    /// forget the last acks and claims, whose events are then delivered again: at-least-once,
    /// as always, and never an event lost, since a publish (and a nack, a dead letter) always
    /// waits for its flush. On, an ack is durable when it resolves, at the price of one flush
    /// each. Default: `false` (as [`NatsTransportBuilder::ack_sync`] of `bus-nats`).
    ///
    /// [`NatsTransportBuilder::ack_sync`]: https://docs.rs/bus-nats
    pub fn ack_sync(mut self, durable: bool) -> Self {
        self.ack_sync = durable;
        self
    }

    /// How long opening a connection from a URL may take. Default: [`DEFAULT_CONNECT_TIMEOUT`]
    /// (5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether [`connect`](Self::connect) creates the tables when they are missing
    /// ([`PostgresTransport::create_schema`]). Turn it off when the user of the URL may not
    /// create tables, and create them with the migration `0002_transport.sql` (prefix `bus_`).
    /// Default: `true`.
    pub fn create_schema(mut self, create: bool) -> Self {
        self.create_schema = create;
        self
    }

    /// How much of its events the transport keeps; past it the oldest go, whether or not every
    /// group has read them (their delivery records go with them), and a publish of their
    /// source and id is no longer a duplicate. [`Retention::Unbounded`]: kept until an
    /// operator deletes them. [`Retention::MaxAge`]`(age)`: the events published more than
    /// `age` ago (by the server's clock). [`Retention::MaxLen`]`(n)`: about the newest `n`
    /// events of the prefix, all names together. [`Retention::MaxBytes`] is refused at
    /// [`connect`](Self::connect) with [`TransportError::Invalid`]. The transport deletes at
    /// connect and every [`PURGE_INTERVAL`], in batches of 10,000 rows; every transport with a
    /// retention does it, so one per deployment is enough. Default: [`DEFAULT_RETENTION`]
    /// (unbounded).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Declares that the server may be restarted under the transport, for
    /// [`Capabilities::restartable`]: the conformance suite then restarts it. The transport
    /// rides through a restart either way. Default: `false`.
    pub fn restartable(mut self, restartable: bool) -> Self {
        self.restartable = restartable;
        self
    }

    /// Opens the pool (or takes the one given), creates the tables if asked to, and returns
    /// the transport. The `LISTEN` connection is opened with the first subscription.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a bad table prefix;
    /// [`TransportError::Unreachable`] when the server cannot be reached
    /// ([`PostgresTransportError::Connect`]); [`TransportError::Broker`] when it refuses the
    /// login or the tables cannot be created ([`PostgresTransportError::Schema`]).
    pub async fn connect(self) -> Result<PostgresTransport, TransportError> {
        schema::check_prefix(&self.prefix).map_err(|reason| {
            TransportError::invalid(NAME, "table prefix", &self.prefix, reason)
        })?;
        if let Retention::MaxBytes(bytes) = self.retention {
            return Err(TransportError::invalid(
                NAME,
                "retention",
                &format!("MaxBytes({bytes})"),
                "PostgreSQL tables are trimmed by age or count here: use Retention::MaxAge or \
                 Retention::MaxLen",
            ));
        }
        let span = tracing::info_span!("bus.postgres.connect", prefix = %self.prefix);
        async move {
            let pool = match &self.to {
                ConnectTo::Pool(pool) => pool.clone(),
                ConnectTo::Url(url) => PgPoolOptions::new()
                    .max_connections(self.max_connections)
                    .acquire_timeout(self.connect_timeout)
                    // A broken connection shows on use, and is retried then: no ping per
                    // statement.
                    .test_before_acquire(false)
                    .connect(url.expose())
                    .await
                    .map_err(|source| {
                        let transient = is_transient(&source);
                        let error = PostgresTransportError::Connect {
                            url: url.shown().to_owned(),
                            source,
                        };
                        if transient {
                            TransportError::unreachable(NAME, error)
                        } else {
                            TransportError::broker(NAME, error)
                        }
                    })?,
            };
            if self.create_schema {
                PostgresTransport::create_schema(&pool, &self.prefix).await?;
            }
            let instance = self
                .instance
                .clone()
                .unwrap_or_else(|| format!("{}-{:08x}", std::process::id(), fastrand::u32(..)));
            let publishers = publish_share(pool.options().get_max_connections());
            let inner = Arc::new(Inner {
                publishing: Semaphore::new(publishers),
                sql: Sql::new(&self.prefix, self.ack_sync),
                channel: format!("{}events", self.prefix),
                prefix: self.prefix,
                pool,
                instance,
                poll_interval: self.poll_interval,
                batch_size: i64::try_from(self.batch_size).unwrap_or(i64::MAX),
                publish_deadline: self.publish_deadline,
                max_payload: self.max_payload,
                restartable: self.restartable,
                wakers: Wakers::default(),
                tracker: TaskTracker::new(),
                cancel: CancellationToken::new(),
                plain_count: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
            });
            purge::start(&inner, self.retention);
            Ok(PostgresTransport { inner })
        }
        .instrument(span)
        .await
    }
}

impl PostgresTransport {
    /// A builder for a transport on the database at `to`: a URL
    /// (`postgres://user:password@host:5432/database`) or an existing [`PgPool`].
    pub fn builder(to: impl Into<ConnectTo>) -> PostgresTransportBuilder {
        PostgresTransportBuilder {
            to: to.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            instance: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            batch_size: DEFAULT_BATCH_SIZE,
            publish_deadline: DEFAULT_PUBLISH_DEADLINE,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ack_sync: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            create_schema: true,
            restartable: false,
            retention: DEFAULT_RETENTION,
        }
    }

    /// Creates the tables of the table prefix `prefix` in the database of `pool` when they are
    /// missing (`CREATE ... IF NOT EXISTS`, in one transaction under an advisory lock, so
    /// that many transports may connect at once). [`connect`](PostgresTransportBuilder::connect)
    /// calls it unless told not to.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a bad prefix; [`TransportError::Broker`] (or
    /// `Unreachable`) with [`PostgresTransportError::Schema`] when the statements fail.
    pub async fn create_schema(pool: &PgPool, prefix: &str) -> Result<(), TransportError> {
        schema::check_prefix(prefix)
            .map_err(|reason| TransportError::invalid(NAME, "table prefix", prefix, reason))?;
        schema::create_schema(pool, prefix).await.map_err(|source| {
            let transient = is_transient(&source);
            let error = PostgresTransportError::Schema {
                prefix: prefix.to_owned(),
                source,
            };
            if transient {
                TransportError::unreachable(NAME, error)
            } else {
                TransportError::broker(NAME, error)
            }
        })
    }

    /// The pool the transport works with: to read its tables, or to publish in the same
    /// database.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The table prefix.
    pub fn table_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// How many publishes this transport dropped because their source and id were stored
    /// already (they also count in `bus_duplicates_dropped_total` with the feature `metrics`).
    pub fn duplicates_dropped(&self) -> u64 {
        self.inner.duplicates.load(Ordering::Relaxed)
    }
}

impl Transport for PostgresTransport {
    fn name(&self) -> &str {
        NAME
    }

    /// Persistent (the tables), ordered (a single subscriber gets each name's events in the
    /// order they were published one after the other), groups, deduplicates (a unique index on
    /// source and id), group stats, restartable as the builder said.
    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.persistent = true;
        capabilities.ordered = true;
        capabilities.groups = true;
        capabilities.deduplicates = true;
        capabilities.restartable = self.inner.restartable;
        capabilities.group_stats = true;
        capabilities.list_groups = true;
        capabilities.stored_dead_letters = true;
        capabilities
    }

    fn publish(&self, event: WireEvent) -> BoxFuture<'_, Result<(), TransportError>> {
        let span = tracing::debug_span!(
            "bus.postgres.publish",
            event = %event.ty,
            id = %event.id,
        );
        Box::pin(self.inner.publish(event).instrument(span))
    }

    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<TransportSubscription, TransportError>> {
        Box::pin(subscription::open(Arc::clone(&self.inner), options))
    }

    /// One statement on the group's row and records: `lag` is the events of its pattern
    /// committed past its horizon (not given a record yet) plus its records never claimed;
    /// `pending` its records claimed and not settled (held, past their ack wait, or waiting
    /// for a nack's delay). `None` for a group without a row. One attempt: a caller that
    /// samples asks again later.
    fn group_stats<'a>(
        &'a self,
        options: &'a SubscribeOptions,
    ) -> BoxFuture<'a, Result<Option<GroupStats>, TransportError>> {
        let span = tracing::debug_span!(
            "bus.postgres.group_stats",
            group = options.group.as_deref().unwrap_or("-"),
        );
        Box::pin(
            async move {
                let Some(group) = &options.group else {
                    return Ok(None);
                };
                let inner = &self.inner;
                let row: Option<(i64, i64)> = sqlx::query_as(statement(&inner.sql.group_stats))
                    .bind(group)
                    .fetch_optional(&inner.pool)
                    .await
                    .map_err(|error| {
                        error::statement(
                            format!("stats of the group `{group}`"),
                            format!("{}deliveries", inner.prefix),
                            error,
                        )
                    })?;
                let count = |n: i64| u64::try_from(n).unwrap_or(0);
                Ok(row.map(|(lag, pending)| GroupStats::new(count(lag), count(pending))))
            }
            .instrument(span),
        )
    }

    /// The rows of `<prefix>groups` (not the subscriptions outside any group), by name, with
    /// the stats of [`group_stats`](Transport::group_stats), in one statement. No members:
    /// PostgreSQL does not know a group's subscriptions (`consumers` is `None`).
    fn groups(&self) -> BoxFuture<'_, Result<Option<Vec<GroupInfo>>, TransportError>> {
        let span = tracing::debug_span!("bus.postgres.groups");
        Box::pin(
            async move {
                let inner = &self.inner;
                let rows: Vec<(String, String, i64, i64)> =
                    sqlx::query_as(statement(&inner.sql.groups))
                        .fetch_all(&inner.pool)
                        .await
                        .map_err(|error| {
                            error::statement(
                                "listing the groups".to_owned(),
                                format!("{}groups", inner.prefix),
                                error,
                            )
                        })?;
                let count = |n: i64| u64::try_from(n).unwrap_or(0);
                Ok(Some(
                    rows.into_iter()
                        .map(|(name, pattern, lag, pending)| {
                            GroupInfo::new(name, pattern)
                                .with_stats(GroupStats::new(count(lag), count(pending)))
                        })
                        .collect(),
                ))
            }
            .instrument(span),
        )
    }

    /// The rows of `<prefix>events` named `dead-letter.<name>` for the names the pattern
    /// matches, by `seq`; a letter's position is its `seq`.
    fn dead_letters<'a>(
        &'a self,
        events: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<StoredDeadLetter>>, TransportError>> {
        let span = tracing::debug_span!("bus.postgres.dead_letters", events);
        Box::pin(
            async move {
                check_pattern(events)
                    .map_err(|reason| TransportError::invalid(NAME, "pattern", events, reason))?;
                let inner = &self.inner;
                let regex = Matcher::new(&dead_letter_name(events)).regex();
                let failed = |error| {
                    error::statement(
                        format!("reading the dead letters of `{events}`"),
                        format!("{}events", inner.prefix),
                        error,
                    )
                };
                let rows = sqlx::query(statement(&inner.sql.dead_letters))
                    .bind(regex)
                    .fetch_all(&inner.pool)
                    .await
                    .map_err(failed)?;
                let mut letters = Vec::with_capacity(rows.len());
                for row in &rows {
                    let seq: i64 = sqlx::Row::try_get(row, "seq").map_err(failed)?;
                    let letter = subscription::event_of(row).map_err(failed)?;
                    letters.push(StoredDeadLetter::new(letter, seq.to_string()));
                }
                Ok(Some(letters))
            }
            .instrument(span),
        )
    }

    /// Deletes the rows of the letters (their `seq` and event id must match, and their name be
    /// a dead letter's) in one statement; their delivery records go with them (`ON DELETE
    /// CASCADE`), so no group gets them again.
    fn delete_dead_letters<'a>(
        &'a self,
        letters: &'a [StoredDeadLetter],
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>> {
        let span =
            tracing::debug_span!("bus.postgres.delete_dead_letters", letters = letters.len());
        Box::pin(
            async move {
                let inner = &self.inner;
                let (seqs, ids): (Vec<i64>, Vec<&str>) = letters
                    .iter()
                    .filter_map(|stored| {
                        let seq = stored.position.parse::<i64>().ok()?;
                        Some((seq, stored.letter.id.as_str()))
                    })
                    .unzip();
                if seqs.is_empty() {
                    return Ok(Some(0));
                }
                let done = sqlx::query(statement(&inner.sql.delete_dead_letters))
                    .bind(&seqs)
                    .bind(&ids)
                    .execute(&inner.pool)
                    .await
                    .map_err(|error| {
                        error::statement(
                            "deleting dead letters".to_owned(),
                            format!("{}events", inner.prefix),
                            error,
                        )
                    })?;
                Ok(Some(done.rows_affected()))
            }
            .instrument(span),
        )
    }

    /// Waits for the hand-backs of deliveries dropped unsettled and of subscriptions closed.
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let tracker = &self.inner.tracker;
            tracker.close();
            tracker.wait().await;
            tracker.reopen();
        })
    }
}

/// What the clones of a transport, its subscriptions and its deliveries share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    /// Publishes in flight hold a permit: see [`publish_share`].
    publishing: Semaphore,
    pub(crate) prefix: String,
    pub(crate) sql: Sql,
    /// The `NOTIFY` channel: `<prefix>events`.
    pub(crate) channel: String,
    pub(crate) instance: String,
    pub(crate) poll_interval: Duration,
    pub(crate) batch_size: i64,
    pub(crate) publish_deadline: Duration,
    pub(crate) max_payload: usize,
    restartable: bool,
    pub(crate) wakers: Wakers,
    /// The hand-backs in the background, which `flush` waits for.
    pub(crate) tracker: TaskTracker,
    /// Stops the background tasks when the last clone goes.
    pub(crate) cancel: CancellationToken,
    /// The number of the next subscription outside any group.
    pub(crate) plain_count: AtomicU64,
    duplicates: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An event's columns, as `publish` and a dead letter store them.
pub(crate) struct Columns<'a> {
    pub(crate) event: &'a WireEvent,
    pub(crate) extensions: serde_json::Value,
}

impl<'a> Columns<'a> {
    pub(crate) fn of(event: &'a WireEvent) -> Columns<'a> {
        let extensions = event
            .extensions
            .iter()
            .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
            .collect();
        Columns {
            event,
            extensions: serde_json::Value::Object(extensions),
        }
    }

    /// Binds the seven columns (name, source, id, time, content type, extensions, data) as
    /// the next parameters of `query`.
    pub(crate) fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.event.ty)
            .bind(&self.event.source)
            .bind(&self.event.id)
            .bind(self.event.time.as_deref())
            .bind(self.event.datacontenttype.as_deref())
            .bind(&self.extensions)
            .bind(&self.event.data[..])
    }
}

impl Inner {
    /// Runs `operation` until it succeeds, fails for good, or the publish deadline passes
    /// while it fails for a reason retrying may cure (the server restarting).
    pub(crate) async fn retrying<T, F, Fut>(&self, mut operation: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let deadline = Instant::now() + self.publish_deadline;
        let mut pause = Duration::from_millis(25);
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) if is_transient(&error) && Instant::now() + pause < deadline => {
                    tracing::debug!(%error, "retrying while PostgreSQL is unreachable");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn publish(&self, event: WireEvent) -> Result<(), TransportError> {
        event.validate(self.max_payload).map_err(|error| {
            TransportError::invalid(NAME, "event", &event.ty, error.to_string())
        })?;
        let columns = Columns::of(&event);
        // Never closed: a permit is always given, in turn.
        let _permit = self.publishing.acquire().await;
        let stored = self
            .retrying(|| {
                columns
                    .bind(sqlx::query(statement(&self.sql.publish)))
                    .bind(&self.channel)
                    .fetch_optional(&self.pool)
            })
            .await;
        match stored {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                support::count_duplicate(NAME, None);
                tracing::info!(
                    event = %event.ty,
                    id = %event.id,
                    source = %event.source,
                    "duplicate dropped: this source and id are stored already"
                );
                Ok(())
            }
            Err(error) if is_transient(&error) => Err(TransportError::PublishTimedOut {
                transport: NAME.to_owned(),
                event: event.ty.clone(),
                deadline: self.publish_deadline,
            }),
            Err(error) => Err(error::statement(
                format!("publish of `{}` (id {})", event.ty, event.id),
                format!("{}events", self.prefix),
                error,
            )),
        }
    }
}

/// How many of a pool's `connections` publishes may hold at once: all but a fifth of them (at
/// least one left over, at least one taken), so that a burst of publishes never takes them all
/// and the subscriptions' fills, claims and acks, which need no permit, find a connection
/// soon. Without it each statement of a consumer queued behind every publish in flight (64 in
/// the benchmark).
fn publish_share(connections: u32) -> usize {
    let connections = usize::try_from(connections).unwrap_or(usize::MAX);
    connections.saturating_sub((connections / 5).max(1)).max(1)
}

/// Checks a subscription's pattern and group for [`subscription::open`].
pub(crate) fn check_options(options: &SubscribeOptions) -> Result<Matcher, TransportError> {
    check_pattern(&options.pattern)
        .map_err(|reason| TransportError::invalid(NAME, "pattern", &options.pattern, reason))?;
    if let Some(group) = &options.group
        && (group.is_empty() || group.len() > 200 || group.chars().any(char::is_control))
    {
        return Err(TransportError::invalid(
            NAME,
            "group",
            group,
            "a group name is 1 to 200 bytes without control characters",
        ));
    }
    Ok(Matcher::new(&options.pattern))
}

#[cfg(test)]
mod tests {
    use super::publish_share;

    #[test]
    fn publishes_leave_connections_to_the_consumers() {
        assert_eq!(publish_share(1), 1);
        assert_eq!(publish_share(2), 1);
        assert_eq!(publish_share(5), 4);
        assert_eq!(publish_share(10), 8);
        assert_eq!(publish_share(100), 80);
    }
}
