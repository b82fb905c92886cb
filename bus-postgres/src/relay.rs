//! The relay: a background task that publishes the committed rows of an outbox table to a
//! transport, and marks them published only once the broker has stored them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus_core::transport::Transport;
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr as _, SqlStr};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::OutboxError;
use crate::outbox::{Lag, Row, Sql};
use crate::schema::{DEFAULT_PREFIX, validate_prefix};

/// What becomes of a row once its event is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishedRows {
    /// Deleted in the transaction that would mark it: the table holds only what is pending.
    Delete,
    /// Marked (`published_at`), and deleted by the relays once published longer ago than
    /// this (they look for such rows every minute, or every `age` when shorter): to look
    /// back at what was published.
    KeepFor(Duration),
}

/// The defaults of [`RelayBuilder`].
const POLL_INTERVAL: Duration = Duration::from_secs(1);
const BATCH_SIZE: u32 = 100;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The most often a relay deletes old published rows.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// The most rows one cleanup statement deletes, so that it never holds a long lock.
const CLEANUP_BATCH: i64 = 10_000;
/// The most often the lag gauges are measured.
#[cfg(feature = "metrics")]
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes the committed rows of an outbox table to a [`Transport`], in the background.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use bus_postgres::{PublishedRows, Relay};
///
/// # async fn demo(pool: sqlx::PgPool, nats: Arc<dyn bus_core::transport::Transport>)
/// # -> Result<(), bus_postgres::OutboxError> {
/// let relay = Relay::builder(pool, nats)
///     .poll_interval(Duration::from_secs(5)) // NOTIFY wakes it earlier
///     .published_rows(PublishedRows::KeepFor(Duration::from_secs(3600)))
///     .start()?;
/// println!("{:?}", relay.lag().await?);
/// relay.stop().await; // finishes the batch in hand
/// # Ok(())
/// # }
/// ```
///
/// # How it works
///
/// Each pass, in one transaction, takes up to [`batch_size`](RelayBuilder::batch_size) rows
/// not published yet, in the order they were written, with `FOR UPDATE SKIP LOCKED`: rows
/// another relay holds are left to it, so several relays (in several processes) share the
/// table, none publishing a row another is publishing. It publishes them one after the other,
/// then marks (or deletes) those whose publish resolved `Ok`, and commits. A relay that dies
/// before its commit publishes nothing twice by itself: its transaction is rolled back, its
/// rows are taken again by the next pass of any relay and published again, which a
/// deduplicating transport (`NatsTransport`: same source and id within its duplicate window)
/// stores once.
///
/// **No row is ever skipped.** A relay keeps no position: every pass reads every row still
/// unpublished. A transaction that committed after a later one (out-of-order commits, which
/// an offset-based relay would step over) is read by the next pass, which its own `NOTIFY`
/// (delivered at its commit) starts at once. The `xid` column records each row's
/// transaction (`pg_current_xact_id()`) for diagnosis.
///
/// **Waking.** The relay `LISTEN`s on the channel named after the table, on which each emit
/// notifies at commit; it also polls every [`poll_interval`](RelayBuilder::poll_interval),
/// in case a notification was lost (while its listening connection reconnected, say). A full
/// batch is followed by another pass at once.
///
/// **Failures.** A publish that fails (or does not resolve within the
/// [`publish_timeout`](RelayBuilder::publish_timeout)) is logged, counted on its row
/// (`attempts`, `last_error`), and the row waits before its next attempt (`next_attempt_at`)
/// for a backoff that doubles with each attempt, from 100 ms to 30 s by default
/// ([`retry_backoff`](RelayBuilder::retry_backoff)); the relay stops its pass there and waits
/// as long before the next one, so that a broker that is down is not hammered. A row is never
/// given up.
///
/// **Order.** One relay publishes the rows committed when its pass starts in the order of
/// their inserts (`position`); a row committed late goes out with a later pass, and a failed
/// row waits while the rows after it go first. Several relays publish in parallel, so events
/// may reach the broker out of order.
///
/// **Connections.** A relay holds one connection of the pool to `LISTEN`, and takes another
/// for each pass, held while the pass publishes: size the pool for it. Closing the pool
/// ([`PgPool::close`]) stops the relay.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    /// Cancels the task when the relay is dropped.
    stop: DropGuard,
}

/// What the relay's task and its handle share.
struct Shared {
    pool: PgPool,
    transport: Arc<dyn Transport>,
    sql: Sql,
    statements: Statements,
    table: String,
    channel: String,
    poll_interval: Duration,
    batch_size: u32,
    publish_timeout: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    published_rows: PublishedRows,
    listen: bool,
    published: AtomicU64,
}

#[derive(Debug)]
struct Statements {
    claim: SqlStr,
    mark: SqlStr,
    failed: SqlStr,
    cleanup: SqlStr,
}

/// Builds a [`Relay`]: [`Relay::builder`].
#[must_use = "a relay does nothing until `start` is called"]
pub struct RelayBuilder {
    pool: PgPool,
    transport: Arc<dyn Transport>,
    prefix: String,
    poll_interval: Duration,
    batch_size: u32,
    publish_timeout: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    published_rows: PublishedRows,
    listen: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("table", &self.table)
            .field("transport", &self.transport.name())
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("prefix", &self.prefix)
            .field("transport", &self.transport.name())
            .field("poll_interval", &self.poll_interval)
            .field("batch_size", &self.batch_size)
            .field("publish_timeout", &self.publish_timeout)
            .field("published_rows", &self.published_rows)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay of the table `bus_outbox` of `pool` to `transport`; configure it, then
    /// [`start`](RelayBuilder::start) it.
    pub fn builder(pool: PgPool, transport: Arc<dyn Transport>) -> RelayBuilder {
        RelayBuilder {
            pool,
            transport,
            prefix: DEFAULT_PREFIX.to_owned(),
            poll_interval: POLL_INTERVAL,
            batch_size: BATCH_SIZE,
            publish_timeout: PUBLISH_TIMEOUT,
            min_backoff: MIN_BACKOFF,
            max_backoff: MAX_BACKOFF,
            published_rows: PublishedRows::Delete,
            listen: true,
        }
    }

    /// How far behind the relays of this table are (this one and any other): as
    /// [`Outbox::lag`](crate::Outbox::lag).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the query fails.
    pub async fn lag(&self) -> Result<Lag, OutboxError> {
        self.shared.sql.lag(&self.shared.pool).await
    }

    /// Whether the relay's task still runs: `false` once stopped, or once its pool was closed.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// How many rows this relay has published and marked (or deleted) since it started.
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// Stops the relay gracefully: the pass under way ends (the publish in flight resolves,
    /// within the [`publish_timeout`](RelayBuilder::publish_timeout); what was published is
    /// marked and committed), then the task ends. Dropping the relay stops it the same way,
    /// without waiting.
    ///
    /// # Cancel safety
    ///
    /// Cancelled, the relay still stops, in the background.
    pub async fn stop(self) {
        let Relay { task, stop, .. } = self;
        drop(stop);
        if let Err(error) = task.await {
            tracing::error!(%error, "the outbox relay's task failed");
        }
    }
}

impl RelayBuilder {
    /// Relays the table `<prefix>outbox` ([`Schema::prefix`](crate::Schema::prefix)).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long the relay sleeps between passes when no `NOTIFY` wakes it: 1 s by default.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How many rows one pass takes (and holds): 100 by default, at least 1.
    pub fn batch_size(mut self, rows: u32) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// How long one publish may take before it counts as failed (and is retried): 30 s by
    /// default. The rows of the pass stay locked meanwhile.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// The wait after a failed publish: `min` after the first failure of a row, doubling with
    /// each further one, never more than `max` (100 ms and 30 s by default).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// What becomes of a published row: [`PublishedRows::Delete`] by default.
    pub fn published_rows(mut self, rows: PublishedRows) -> Self {
        self.published_rows = rows;
        self
    }

    /// Whether the relay `LISTEN`s for the emits' notifications (`true` by default); without,
    /// it only polls.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Starts the relay on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Prefix`] for an invalid prefix, [`OutboxError::NoRuntime`] outside a
    /// Tokio runtime. Database failures are not errors here: the relay logs them and retries.
    pub fn start(self) -> Result<Relay, OutboxError> {
        validate_prefix(&self.prefix)?;
        let table = format!("{}outbox", self.prefix);
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| OutboxError::NoRuntime {
                table: table.clone(),
            })?;
        // Built from the validated prefix and constant text only.
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();
        let statements = Statements {
            claim: sql(format!(
                "SELECT position, attempts, id, source, type, time, datacontenttype, extensions,
                        data
                 FROM {table}
                 WHERE published_at IS NULL
                   AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())
                 ORDER BY position
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED"
            )),
            mark: sql(match self.published_rows {
                PublishedRows::Delete => format!("DELETE FROM {table} WHERE position = ANY($1)"),
                PublishedRows::KeepFor(_) => format!(
                    "UPDATE {table} SET published_at = clock_timestamp(), next_attempt_at = NULL
                     WHERE position = ANY($1)"
                ),
            }),
            failed: sql(format!(
                "UPDATE {table}
                 SET attempts = attempts + 1, last_error = $2,
                     next_attempt_at = clock_timestamp() + make_interval(secs => $3)
                 WHERE position = $1"
            )),
            cleanup: sql(format!(
                "DELETE FROM {table} WHERE position IN (
                     SELECT position FROM {table}
                     WHERE published_at < clock_timestamp() - make_interval(secs => $1)
                     LIMIT $2)"
            )),
        };
        let shared = Arc::new(Shared {
            sql: Sql::new(&self.prefix),
            pool: self.pool,
            transport: self.transport,
            statements,
            channel: table.clone(),
            table,
            poll_interval: self.poll_interval,
            batch_size: self.batch_size,
            publish_timeout: self.publish_timeout,
            min_backoff: self.min_backoff,
            max_backoff: self.max_backoff,
            published_rows: self.published_rows,
            listen: self.listen,
            published: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let span = tracing::info_span!("outbox.relay", table = %shared.table);
        let task = runtime.spawn(tracing::Instrument::instrument(
            Arc::clone(&shared).run(stop.clone()),
            span,
        ));
        Ok(Relay {
            shared,
            task,
            stop: stop.drop_guard(),
        })
    }
}

/// What one pass did.
#[derive(Debug, Default)]
struct Pass {
    /// Rows taken.
    claimed: usize,
    /// The attempts of the row whose publish failed (the pass ended there), if one did.
    failed: Option<i32>,
}

impl Shared {
    /// The relay's task: passes until `stop` is cancelled.
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        tracing::info!(transport = self.transport.name(), "outbox relay started");
        let mut listener = None;
        let mut failures: u32 = 0;
        let mut last_cleanup: Option<Instant> = None;
        #[cfg(feature = "metrics")]
        let mut last_lag: Option<Instant> = None;
        while !stop.is_cancelled() {
            if self.listen && listener.is_none() {
                // Before the pass: a commit after it wakes the wait below.
                listener = self.listen().await;
            }
            let wait = match self.pass().await {
                Ok(Pass {
                    failed: Some(attempts),
                    ..
                }) => {
                    failures = failures.saturating_add(1);
                    self.backoff(attempts.max(0).unsigned_abs().max(failures))
                }
                Ok(Pass { claimed, .. }) => {
                    failures = 0;
                    if claimed >= self.batch_size as usize {
                        Duration::ZERO
                    } else {
                        self.poll_interval
                    }
                }
                Err(OutboxError::Database {
                    source: sqlx::Error::PoolClosed,
                    ..
                }) => {
                    tracing::info!("the pool of the outbox relay is closed: the relay stops");
                    break;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, "outbox relay pass failed; retrying");
                    self.backoff(failures)
                }
            };
            if let PublishedRows::KeepFor(age) = self.published_rows
                && last_cleanup.is_none_or(|at| at.elapsed() >= CLEANUP_INTERVAL.min(age))
            {
                last_cleanup = Some(Instant::now());
                self.cleanup(age).await;
            }
            #[cfg(feature = "metrics")]
            if last_lag.is_none_or(|at| at.elapsed() >= LAG_INTERVAL) {
                last_lag = Some(Instant::now());
                self.record_lag().await;
            }
            if wait.is_zero() {
                continue;
            }
            let notified = async {
                match listener.as_mut() {
                    // Not woken by notifications while backing off after a failure.
                    Some(listener) if failures == 0 => listener.recv().await.map(drop),
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
                woken = notified => if let Err(error) = woken {
                    tracing::warn!(
                        %error,
                        "outbox relay stopped listening; polling until it listens again"
                    );
                    listener = None;
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// A listener on the table's channel, or `None` (logged) when it cannot be had now.
    async fn listen(&self) -> Option<PgListener> {
        let listening = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(table = %self.table, %error, "outbox relay cannot LISTEN; polling");
                None
            }
        }
    }

    /// The wait after the `n`th failure in a row: `min_backoff * 2^(n-1)`, at most
    /// `max_backoff`.
    fn backoff(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.min_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }

    /// One pass: takes a batch, publishes it, marks what was published.
    async fn pass(&self) -> Result<Pass, OutboxError> {
        let table = &self.table;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(OutboxError::database("starting a relay pass", table))?;
        let rows: Vec<Row> = sqlx::query_as(self.statements.claim.clone())
            .bind(i64::from(self.batch_size))
            .fetch_all(&mut *tx)
            .await
            .map_err(OutboxError::database("reading the rows to publish", table))?;
        let mut pass = Pass {
            claimed: rows.len(),
            failed: None,
        };
        let mut published = Vec::with_capacity(rows.len());
        for row in rows {
            let (position, attempts) = (row.position, row.attempts);
            let event = row.into_wire();
            let span = tracing::debug_span!(
                "outbox.publish", event = %event.ty, id = %event.id, position
            );
            let outcome = tokio::time::timeout(
                self.publish_timeout,
                tracing::Instrument::instrument(self.transport.publish(event), span.clone()),
            )
            .await;
            let error = match outcome {
                Ok(Ok(())) => {
                    published.push(position);
                    continue;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!(
                    "the publish did not resolve within {:?}",
                    self.publish_timeout
                ),
            };
            let backoff = self.backoff(attempts.max(0).unsigned_abs().saturating_add(1));
            tracing::warn!(
                parent: &span, attempts = attempts + 1, %error, retry_in = ?backoff,
                "publishing an outbox event failed; it will be retried"
            );
            #[cfg(feature = "metrics")]
            metrics::counter!("bus_outbox_publish_failures_total", "table" => self.table.clone())
                .increment(1);
            sqlx::query(self.statements.failed.clone())
                .bind(position)
                .bind(&error)
                .bind(backoff.as_secs_f64())
                .execute(&mut *tx)
                .await
                .map_err(OutboxError::database("recording a failed publish", table))?;
            pass.failed = Some(attempts.saturating_add(1));
            break;
        }
        if !published.is_empty() {
            sqlx::query(self.statements.mark.clone())
                .bind(&published)
                .execute(&mut *tx)
                .await
                .map_err(OutboxError::database("marking published rows", table))?;
        }
        tx.commit()
            .await
            .map_err(OutboxError::database("committing a relay pass", table))?;
        let count = published.len() as u64;
        self.published.fetch_add(count, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("bus_outbox_published_total", "table" => self.table.clone())
            .increment(count);
        if count > 0 {
            tracing::debug!(table = %self.table, count, "outbox rows published");
        }
        Ok(pass)
    }

    /// Deletes the rows published longer ago than `age`, a batch at a time.
    async fn cleanup(&self, age: Duration) {
        loop {
            let deleted = sqlx::query(self.statements.cleanup.clone())
                .bind(age.as_secs_f64())
                .bind(CLEANUP_BATCH)
                .execute(&self.pool)
                .await;
            match deleted {
                Ok(done) if done.rows_affected() < CLEANUP_BATCH.unsigned_abs() => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(table = %self.table, %error, "deleting old published rows failed");
                    return;
                }
            }
        }
    }

    /// Sets the gauges `bus_outbox_pending` and `bus_outbox_oldest_seconds`.
    #[cfg(feature = "metrics")]
    async fn record_lag(&self) {
        match self.sql.lag(&self.pool).await {
            Ok(lag) => {
                #[expect(clippy::cast_precision_loss, reason = "a gauge")]
                metrics::gauge!("bus_outbox_pending", "table" => self.table.clone())
                    .set(lag.pending as f64);
                metrics::gauge!("bus_outbox_oldest_seconds", "table" => self.table.clone())
                    .set(lag.oldest.map_or(0.0, |age| age.as_secs_f64()));
            }
            Err(error) => tracing::debug!(%error, "measuring the outbox lag failed"),
        }
    }
}
