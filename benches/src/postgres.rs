//! Scenario (p), issue 17: the PostgreSQL transport of `bus-postgres` beside a raw
//! `FOR UPDATE SKIP LOCKED` queue loop doing the same work, in the same run, against a real
//! server.
//!
//! Each [`Row`] runs on tables of its own (a table prefix unique to the row and the run,
//! every table under it dropped at the end of the row), in the three phases of scenario (r)
//! (`crate::redis`): publish ([`Counts::published`] events, [`Counts::window`] in flight),
//! end to end (the group subscribed first, then [`Counts::events`] published by another task
//! while this one receives and acks each, every id checked), and latency (one event at a
//! time, publish call to receipt).
//!
//! The raw loop is the job queue every Postgres user writes: one table holding the columns the
//! transport stores for an event (name, source, id, time, content type, extensions, payload),
//! a publish that inserts a row and notifies a channel in one statement, and a consumer that
//! `LISTEN`s on that channel and, until the table is empty, opens a transaction, locks the
//! oldest rows nobody else holds (`SELECT seq, event_id ... ORDER BY seq FOR UPDATE SKIP LOCKED
//! LIMIT <batch>`), hands them out, deletes each as it is acked, and commits after the last of
//! the batch: a job is done or, if the worker dies, back in the queue, as a transport's
//! delivery is acked or redelivered. What it
//! does not do is what the transport adds: competing groups that each get every event
//! (delivery records per group), events kept for other groups and for redelivery, attempts
//! counted, nack with a delay, dead letters, deduplication on (source, id), out-of-order
//! commits held back until they are final, a subscription outside any group, decoding every
//! row into a [`WireEvent`].
//!
//! The transport's rows run with its defaults, where claims and acks commit without waiting
//! for the WAL flush (`ack_sync(false)`: a server crash may redeliver the last acked events);
//! a last row runs with `ack_sync(true)`, where each of them waits for it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::broker::{EVENT, GROUP, Measure, event, guard, percentile, rate};
use bus_core::transport::{
    Delivery, SubscribeOptions, Transport, TransportSubscription, WireEvent,
};
use bus_postgres::PostgresTransport;
use bus_postgres::sqlx::postgres::{PgListener, PgPoolOptions};
use bus_postgres::sqlx::{self, AssertSqlSafe, PgPool, Postgres, Transaction};
use futures_util::{StreamExt, TryStreamExt};
use tokio::runtime::Runtime;

/// The server the scenario uses unless `DATABASE_URL` says otherwise.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long the raw consumer waits for a notification before it looks again: the transport's
/// default poll interval.
const RAW_POLL: Duration = bus_postgres::DEFAULT_POLL_INTERVAL;

/// The server's URL: `DATABASE_URL`, or [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The sizes of a run of scenario (p).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Events published in the publish phase.
    pub published: u64,
    /// Events published and consumed in the end-to-end phase.
    pub events: u64,
    /// Publishes in flight at most (awaiting their reply).
    pub window: usize,
    /// Untimed latency round trips first.
    pub warmup: u64,
    /// Timed latency samples.
    pub samples: u64,
}

impl Counts {
    /// The full counts (20,000 events published, 10,000 end to end, 1,000 latency samples)
    /// divided by `divisor`.
    pub fn new(divisor: u64) -> Counts {
        let divisor = divisor.max(1);
        Counts {
            published: (20_000 / divisor).max(1),
            events: (10_000 / divisor).max(1),
            window: 64,
            warmup: (100 / divisor).max(1),
            samples: (1_000 / divisor).max(1),
        }
    }
}

/// Who publishes and consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The raw `SKIP LOCKED` queue loop.
    Raw,
    /// `bus_postgres::PostgresTransport` through the `Transport` trait (its default: acks
    /// commit without waiting for the WAL flush).
    Transport,
    /// The same with `ack_sync(true)`: every claim and ack waits for its flush.
    TransportAckSync,
}

/// One row of the table: a client, and how many rows one claim takes at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Who publishes and consumes.
    pub client: Client,
    /// Rows per claim: `PostgresTransportBuilder::batch_size`, or the raw loop's `LIMIT`.
    pub batch: usize,
}

impl Row {
    /// The rows, in table order: each batch size with the raw loop first.
    pub const ALL: [Row; 5] = [
        Row {
            client: Client::Raw,
            batch: 1,
        },
        Row {
            client: Client::Transport,
            batch: 1,
        },
        Row {
            client: Client::Raw,
            batch: bus_postgres::DEFAULT_BATCH_SIZE,
        },
        Row {
            client: Client::Transport,
            batch: bus_postgres::DEFAULT_BATCH_SIZE,
        },
        Row {
            client: Client::TransportAckSync,
            batch: bus_postgres::DEFAULT_BATCH_SIZE,
        },
    ];

    /// The row's label in the table.
    pub fn label(self) -> String {
        match (self.client, self.batch) {
            (Client::Raw, n) => format!("raw SKIP LOCKED loop, LIMIT {n}"),
            (Client::Transport, n) if n == bus_postgres::DEFAULT_BATCH_SIZE => {
                format!("PostgresTransport (default batch_size {n})")
            }
            (Client::Transport, n) => format!("PostgresTransport, batch_size({n})"),
            (Client::TransportAckSync, n) => {
                format!("PostgresTransport, ack_sync(true), batch_size({n})")
            }
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

/// Connects to the server at `url` and returns its version. An error is the reason to skip
/// the scenario.
pub fn probe(url: &str, runtime: &Runtime) -> Result<String, String> {
    runtime.block_on(async {
        let pool = pool(url, 1).await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await
            .map_err(|e| format!("PostgreSQL at {url} did not answer: {e}"))?;
        pool.close().await;
        Ok(version)
    })
}

/// Runs `row` once, on tables of its own (`tag` makes their prefix unique), and drops them
/// afterwards.
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
        "pbench_{}_{}_{tag}_",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    runtime.block_on(async {
        let admin = pool(url, 1).await?;
        let outcome = measure(row, counts, url, &prefix).await;
        let dropped = drop_prefix(&admin, &prefix).await;
        admin.close().await;
        let measure = outcome?;
        dropped.map_err(|e| format!("dropping the tables of {prefix}: {e}"))?;
        Ok(measure)
    })
}

/// A pool of at most `connections` connections to `url`.
async fn pool(url: &str, connections: u32) -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| format!("PostgreSQL unreachable at {url}: {e}"))
}

/// Drops every table whose name starts with `prefix` (the row's own).
pub(crate) async fn drop_prefix(pool: &PgPool, prefix: &str) -> Result<(), sqlx::Error> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables \
         WHERE schemaname = current_schema() AND starts_with(tablename, $1)",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    if !tables.is_empty() {
        let statement = format!("DROP TABLE IF EXISTS {} CASCADE", tables.join(", "));
        sqlx::query(AssertSqlSafe(statement)).execute(pool).await?;
    }
    Ok(())
}

async fn measure(row: Row, counts: Counts, url: &str, prefix: &str) -> Result<Measure, String> {
    let side = Side::connect(row, url, prefix).await?;

    // 1. Publish.
    let start = Instant::now();
    let published = Counts {
        events: counts.published,
        ..counts
    };
    guard(
        "publish",
        publish_all(&side.publisher, prefix, "p", published),
    )
    .await??;
    let publish = rate(counts.published, start.elapsed());

    // 2. End to end, through a group joined before the first publish; the raw loop empties
    // its table first (untimed), since its consumer takes whatever is in it.
    let mut consumer = side.subscribe(row, prefix).await?;
    let start = Instant::now();
    let publisher = side.publisher.clone();
    let prefix_owned = prefix.to_owned();
    let publishing =
        tokio::spawn(async move { publish_all(&publisher, &prefix_owned, "e", counts).await });
    let expected = format!("{prefix}-e-");
    let mut seen = HashSet::with_capacity(usize::try_from(counts.events).unwrap_or(0));
    guard("end to end", async {
        while (seen.len() as u64) < counts.events {
            let received = consumer.receive().await?;
            let id = received.id();
            let seq = id
                .strip_prefix(&expected)
                .and_then(|seq| seq.parse::<u64>().ok())
                .filter(|&seq| seq < counts.events)
                .ok_or_else(|| format!("unexpected event {id}"))?;
            if !seen.insert(seq) {
                return Err(format!("event {id} delivered twice"));
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
            if received.id() != id {
                return Err(format!("expected {id}, received {}", received.id()));
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

/// A connected side of a row.
struct Side {
    publisher: Publisher,
    url: String,
}

impl Side {
    async fn connect(row: Row, url: &str, prefix: &str) -> Result<Side, String> {
        let publisher = match row.client {
            Client::Transport | Client::TransportAckSync => {
                let transport = PostgresTransport::builder(url)
                    .table_prefix(prefix)
                    .batch_size(row.batch)
                    .ack_sync(row.client == Client::TransportAckSync)
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                Publisher::Transport(transport)
            }
            Client::Raw => {
                // As many connections as the transport's pool.
                let pool = pool(url, bus_postgres::DEFAULT_MAX_CONNECTIONS).await?;
                let statement = format!(
                    "CREATE TABLE {prefix}queue (
                         seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                         name text NOT NULL, source text NOT NULL, event_id text NOT NULL,
                         time text, content_type text,
                         extensions jsonb NOT NULL DEFAULT '{{}}', data bytea NOT NULL)"
                );
                sqlx::query(AssertSqlSafe(statement))
                    .execute(&pool)
                    .await
                    .map_err(|e| format!("creating the raw queue: {e}"))?;
                Publisher::Raw {
                    pool,
                    insert: format!(
                        "WITH ins AS (INSERT INTO {prefix}queue
                             (name, source, event_id, time, content_type, extensions, data)
                             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq)
                         SELECT pg_notify($8, '') FROM ins"
                    ),
                    channel: format!("{prefix}queue"),
                }
            }
        };
        Ok(Side {
            publisher,
            url: url.to_owned(),
        })
    }

    /// Joins [`GROUP`] from now on: the transport's subscription, or the raw loop's
    /// `LISTEN` connection once its table is empty.
    async fn subscribe(&self, row: Row, prefix: &str) -> Result<Consumer, String> {
        match &self.publisher {
            Publisher::Transport(transport) => {
                let subscription = transport
                    .subscribe(SubscribeOptions::new(EVENT).group(GROUP))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Consumer::Transport(subscription))
            }
            Publisher::Raw { pool, channel, .. } => {
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {prefix}queue")))
                    .execute(pool)
                    .await
                    .map_err(|e| format!("emptying the raw queue: {e}"))?;
                let mut listener = PgListener::connect(&self.url)
                    .await
                    .map_err(|e| format!("LISTEN connection: {e}"))?;
                listener
                    .listen(channel)
                    .await
                    .map_err(|e| format!("LISTEN: {e}"))?;
                Ok(Consumer::Raw {
                    pool: pool.clone(),
                    listener,
                    claim: format!(
                        "SELECT seq, event_id FROM {prefix}queue ORDER BY seq
                         FOR UPDATE SKIP LOCKED LIMIT {}",
                        row.batch
                    ),
                    delete: Arc::from(format!("DELETE FROM {prefix}queue WHERE seq = $1")),
                    buffer: VecDeque::new(),
                })
            }
        }
    }

    async fn close(self) {
        match self.publisher {
            Publisher::Raw { pool, .. } => pool.close().await,
            Publisher::Transport(transport) => transport.pool().close().await,
        }
    }
}

#[derive(Clone)]
enum Publisher {
    Raw {
        pool: PgPool,
        /// Inserts an event's columns and notifies `channel`, in one statement.
        insert: String,
        channel: String,
    },
    Transport(PostgresTransport),
}

impl Publisher {
    /// Publishes one event and waits for the server's reply.
    async fn publish(&self, event: WireEvent) -> Result<(), String> {
        match self {
            Publisher::Raw {
                pool,
                insert,
                channel,
            } => {
                let extensions = serde_json::to_value(&event.extensions)
                    .map_err(|e| format!("extensions: {e}"))?;
                sqlx::query(AssertSqlSafe(insert.clone()))
                    .bind(&event.ty)
                    .bind(&event.source)
                    .bind(&event.id)
                    .bind(event.time.as_deref())
                    .bind(event.datacontenttype.as_deref())
                    .bind(extensions)
                    .bind(event.data.as_ref())
                    .bind(channel)
                    .execute(pool)
                    .await
                    .map(drop)
                    .map_err(|e| format!("INSERT: {e}"))
            }
            Publisher::Transport(transport) => {
                transport.publish(event).await.map_err(|e| e.to_string())
            }
        }
    }
}

enum Consumer {
    Raw {
        pool: PgPool,
        listener: PgListener,
        /// Locks up to a batch of the oldest rows nobody holds.
        claim: String,
        /// Deletes one row (its ack).
        delete: Arc<str>,
        /// Rows claimed and not handed out yet.
        buffer: VecDeque<Received>,
    },
    Transport(TransportSubscription),
}

impl Consumer {
    async fn receive(&mut self) -> Result<Received, String> {
        match self {
            Consumer::Raw {
                pool,
                listener,
                claim,
                delete,
                buffer,
            } => loop {
                if let Some(received) = buffer.pop_front() {
                    return Ok(received);
                }
                let mut transaction = pool.begin().await.map_err(|e| format!("BEGIN: {e}"))?;
                let rows: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(claim.clone()))
                    .fetch_all(&mut *transaction)
                    .await
                    .map_err(|e| format!("claim: {e}"))?;
                if rows.is_empty() {
                    drop(transaction);
                    // Empty: wait for the next notification, or look again after a poll.
                    let _ = tokio::time::timeout(RAW_POLL, listener.recv()).await;
                    continue;
                }
                let batch = Arc::new(Batch {
                    transaction: tokio::sync::Mutex::new(Some(transaction)),
                    unacked: AtomicUsize::new(rows.len()),
                });
                buffer.extend(rows.into_iter().map(|(seq, id)| Received::Raw {
                    seq,
                    id,
                    batch: Arc::clone(&batch),
                    delete: Arc::clone(delete),
                }));
            },
            Consumer::Transport(subscription) => match subscription.next().await {
                Some(Ok(delivery)) => Ok(Received::Transport(delivery)),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the subscription ended".to_owned()),
            },
        }
    }
}

/// The rows one claim of the raw loop locked: its transaction, committed when the last of
/// them is acked.
struct Batch {
    transaction: tokio::sync::Mutex<Option<Transaction<'static, Postgres>>>,
    unacked: AtomicUsize,
}

enum Received {
    Raw {
        seq: i64,
        id: String,
        batch: Arc<Batch>,
        delete: Arc<str>,
    },
    Transport(Box<dyn Delivery>),
}

impl Received {
    fn id(&self) -> &str {
        match self {
            Received::Raw { id, .. } => id,
            Received::Transport(delivery) => &delivery.event().id,
        }
    }

    async fn ack(self) -> Result<(), String> {
        match self {
            Received::Raw {
                seq, batch, delete, ..
            } => {
                let mut held = batch.transaction.lock().await;
                let transaction = held
                    .as_mut()
                    .ok_or_else(|| "the batch was committed already".to_owned())?;
                sqlx::query(AssertSqlSafe(delete.to_string()))
                    .bind(seq)
                    .execute(&mut **transaction)
                    .await
                    .map_err(|e| format!("DELETE: {e}"))?;
                if batch.unacked.fetch_sub(1, Ordering::AcqRel) == 1
                    && let Some(transaction) = held.take()
                {
                    transaction
                        .commit()
                        .await
                        .map_err(|e| format!("COMMIT: {e}"))?;
                }
                Ok(())
            }
            Received::Transport(delivery) => delivery.ack().await.map_err(|e| e.to_string()),
        }
    }
}
