//! Scenario (r), issue 6: the Redis Streams transport of `bus-redis` beside a raw `redis`
//! XADD / XREADGROUP loop doing the same work, in the same run, against a real server.
//!
//! Each [`Row`] runs on fresh keys of its own (a key prefix unique to the row and the run;
//! every key under it, streams, group record and publish-side duplicate markers, is deleted
//! at the end of the row), in three phases:
//!
//! 1. **publish**: [`Counts::events`] events published with [`Counts::window`] publishes in
//!    flight (`buffered`: issued in order), timed until every `XADD` has replied;
//! 2. **end to end**: the consumer group is created first, then the same number of events
//!    are published (same window, in a task) while this task receives and acks (`XACK`) every
//!    one, each id checked (none lost, none twice, none from another phase); timed until the
//!    last ack has replied and the last publish too;
//! 3. **latency**: one event at a time, from the publish call to its receipt by the consumer
//!    (then acked, untimed), [`Counts::samples`] samples after [`Counts::warmup`].
//!
//! Both sides write the same stream `<prefix>:stream:bench.e` with the same fields (the
//! CloudEvents binary-mode headers of [`WireEvent::headers`], then the payload in `data`,
//! as `bus-redis` stores an event), and consume through a consumer group with `XREADGROUP
//! ... COUNT <batch> BLOCK` on a connection of its own, acking each entry with `XACK` on the
//! other connection. The raw loop publishes with a plain `XADD <key> MAXLEN ~ 1000000 *
//! <fields>` (the transport's default retention) on a multiplexed connection, and reads only
//! the entry id and the `ce-id` field of what it receives. What it does not do is what the
//! transport adds: on publish, validating the event (name, payload size, attributes), the
//! registration of the name (the first publish of a name, and every 10 s, runs the publish
//! script, which `SADD`s it), a `ConnectionManager` with retries; on receipt, its read loop's
//! bookkeeping (its own pending entries re-read at start, `XAUTOCLAIM` once a second),
//! decoding every entry into a [`WireEvent`], the consumer-side duplicate check (acked ids
//! remembered in memory), and boxing.
//!
//! The deduplicating rows run the transport with a `duplicate_window`: every publish is then
//! the Lua script (`EVALSHA`: `SET <prefix>:dedup:<source>:<id> NX PX`, `XADD`, `SADD`), the
//! price of broker-side deduplication, shown beside the default.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::broker::{EVENT, GROUP, Measure, event, guard, percentile, rate};
use bus_core::transport::{
    Delivery, SubscribeOptions, Transport, TransportSubscription, WireEvent,
};
use bus_redis::RedisTransport;
use futures_util::{StreamExt, TryStreamExt};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::runtime::Runtime;

/// The server the scenario uses unless `REDIS_URL` says otherwise.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// The raw consumer's name in the group.
const RAW_CONSUMER: &str = "raw-0";

/// The longest block of the raw consumer's `XREADGROUP`: the transport's, with its default
/// claim interval.
const RAW_BLOCK: Duration = bus_redis::DEFAULT_CLAIM_INTERVAL;

/// The server's URL: `REDIS_URL`, or [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The sizes of a run of scenario (r).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Events published in the publish phase: more than in the end-to-end phase, which is
    /// slower, so that the shared VM's hiccups average out over a second or two.
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
    /// The full counts (200,000 events published, 20,000 end to end, 2,000 latency samples)
    /// divided by `divisor`.
    pub fn new(divisor: u64) -> Counts {
        let divisor = divisor.max(1);
        Counts {
            published: (200_000 / divisor).max(1),
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
    /// A raw `redis` XADD / XREADGROUP loop.
    Raw,
    /// `bus_redis::RedisTransport` through the `Transport` trait.
    Transport,
    /// The same with a publish-side `duplicate_window` of 2 min (each publish a Lua script).
    Deduplicating,
}

/// One row of the table: a client, and how many entries one `XREADGROUP` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Who publishes and consumes.
    pub client: Client,
    /// Entries per `XREADGROUP` (`COUNT`): `RedisTransportBuilder::read_batch`, or the raw
    /// consumer's.
    pub read_batch: usize,
}

impl Row {
    /// The rows, in table order: each batch size with the raw loop first.
    pub const ALL: [Row; 6] = [
        Row {
            client: Client::Raw,
            read_batch: 1,
        },
        Row {
            client: Client::Transport,
            read_batch: 1,
        },
        Row {
            client: Client::Deduplicating,
            read_batch: 1,
        },
        Row {
            client: Client::Raw,
            read_batch: 64,
        },
        Row {
            client: Client::Transport,
            read_batch: 64,
        },
        Row {
            client: Client::Deduplicating,
            read_batch: 64,
        },
    ];

    /// The row's label in the table.
    pub fn label(self) -> String {
        match (self.client, self.read_batch) {
            (Client::Raw, n) => format!("raw redis, COUNT {n}"),
            (Client::Transport, 1) => "RedisTransport (default read_batch 1)".to_owned(),
            (Client::Transport, n) => format!("RedisTransport, read_batch({n})"),
            (Client::Deduplicating, n) => {
                format!("RedisTransport, read_batch({n}), duplicate_window(2 min)")
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

/// Connects to the server at `url` and checks that it answers and is Redis 7 or later (what
/// `bus-redis` needs); returns the server's version. An error is the reason to skip the
/// scenario.
pub fn probe(url: &str, runtime: &Runtime) -> Result<String, String> {
    runtime.block_on(async {
        let mut conn = connect(url, Duration::from_secs(2), Duration::from_secs(5)).await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("Redis at {url} did not answer INFO: {e}"))?;
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned());
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        if major.is_some_and(|major| major < 7) {
            return Err(format!(
                "Redis {version} at {url}: bus-redis needs Redis 7 or later"
            ));
        }
        Ok(version)
    })
}

/// Runs `row` once, under a key prefix of its own (`tag` makes it unique), and deletes every
/// key under the prefix afterwards.
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
        "rbench_{}_{}_{tag}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    runtime.block_on(async {
        let mut admin = connect(url, Duration::from_secs(2), Duration::from_secs(10)).await?;
        let outcome = measure(row, counts, url, &prefix).await;
        let deleted = delete_prefix(&mut admin, &prefix).await;
        let measure = outcome?;
        deleted.map_err(|e| format!("deleting the keys under {prefix}: {e}"))?;
        Ok(measure)
    })
}

/// A multiplexed connection with the given timeouts.
async fn connect(
    url: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL {url}: {e}"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("Redis unreachable at {url}: {e}"))
}

/// Deletes every key under `prefix` (`SCAN MATCH <prefix>:*`, then `DEL`).
async fn delete_prefix(conn: &mut MultiplexedConnection, prefix: &str) -> Result<(), String> {
    let pattern = format!("{prefix}:*");
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<Value>(conn)
                .await
                .map_err(|e| e.to_string())?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
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

    // 2. End to end, through a group created before the first publish. The transport's new
    // group starts at the server's current millisecond: a short pause (untimed) keeps the last
    // events of phase 1 out of it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut consumer = side.subscribe(row).await?;
    let start = Instant::now();
    let publisher = side.publisher.clone();
    let (tag, prefix_owned) = ("e", prefix.to_owned());
    let publishing =
        tokio::spawn(async move { publish_all(&publisher, &prefix_owned, tag, counts).await });
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
            Client::Transport | Client::Deduplicating => {
                let window = if row.client == Client::Deduplicating {
                    Duration::from_secs(120)
                } else {
                    Duration::ZERO
                };
                let transport = RedisTransport::builder(url)
                    .key_prefix(prefix)
                    .read_batch(row.read_batch)
                    .duplicate_window(window)
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                Publisher::Transport(transport)
            }
            Client::Raw => {
                // The transport's shared connection has the same request timeout.
                let conn = connect(
                    url,
                    Duration::from_secs(5),
                    bus_redis::DEFAULT_REQUEST_TIMEOUT,
                )
                .await?;
                Publisher::Raw {
                    conn,
                    // The stream `bus-redis` writes event `EVENT` to.
                    key: Arc::from(format!("{prefix}:stream:{EVENT}")),
                }
            }
        };
        Ok(Side {
            publisher,
            url: url.to_owned(),
        })
    }

    /// Joins [`GROUP`] from now on: the transport's subscription, or the raw loop's group
    /// (`XGROUP CREATE ... $ MKSTREAM`) and its reading connection.
    async fn subscribe(&self, row: Row) -> Result<Consumer, String> {
        match &self.publisher {
            Publisher::Transport(transport) => {
                let subscription = transport
                    .subscribe(SubscribeOptions::new(EVENT).group(GROUP))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Consumer::Transport(subscription))
            }
            Publisher::Raw { conn, key } => {
                let mut admin = conn.clone();
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&**key)
                    .arg(GROUP)
                    .arg("$")
                    .arg("MKSTREAM")
                    .query_async::<Value>(&mut admin)
                    .await
                    .map_err(|e| format!("XGROUP CREATE: {e}"))?;
                // A connection of its own for the blocking reads, as the transport's
                // subscription has: the response timeout covers the longest block.
                let reader = connect(
                    &self.url,
                    Duration::from_secs(5),
                    RAW_BLOCK + bus_redis::DEFAULT_REQUEST_TIMEOUT,
                )
                .await?;
                let mut read = redis::cmd("XREADGROUP");
                read.arg("GROUP")
                    .arg(GROUP)
                    .arg(RAW_CONSUMER)
                    .arg("COUNT")
                    .arg(row.read_batch)
                    .arg("BLOCK")
                    .arg(u64::try_from(RAW_BLOCK.as_millis()).unwrap_or(u64::MAX))
                    .arg("STREAMS")
                    .arg(&**key)
                    .arg(">");
                Ok(Consumer::Raw {
                    reader,
                    acker: conn.clone(),
                    key: Arc::clone(key),
                    read,
                    buffer: VecDeque::new(),
                })
            }
        }
    }
}

#[derive(Clone)]
enum Publisher {
    Raw {
        conn: MultiplexedConnection,
        key: Arc<str>,
    },
    Transport(RedisTransport),
}

impl Publisher {
    /// Publishes one event and waits for the reply.
    async fn publish(&self, event: WireEvent) -> Result<(), String> {
        match self {
            Publisher::Raw { conn, key } => {
                // The fields `bus-redis` stores: the binary-mode headers, then `data`.
                let mut command = redis::cmd("XADD");
                command
                    .arg(&**key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(1_000_000)
                    .arg("*");
                for (name, value) in event.headers() {
                    command.arg(name).arg(value);
                }
                command.arg("data").arg(event.data.as_ref());
                let mut conn = conn.clone();
                command
                    .query_async::<Value>(&mut conn)
                    .await
                    .map(drop)
                    .map_err(|e| format!("XADD: {e}"))
            }
            Publisher::Transport(transport) => {
                transport.publish(event).await.map_err(|e| e.to_string())
            }
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one value per row; boxing the raw side would add an indirection it does not make"
)]
enum Consumer {
    Raw {
        /// The connection of the blocking reads.
        reader: MultiplexedConnection,
        /// The connection of the acks (the publisher's).
        acker: MultiplexedConnection,
        key: Arc<str>,
        /// `XREADGROUP GROUP bench raw-0 COUNT <batch> BLOCK <ms> STREAMS <key> >`.
        read: redis::Cmd,
        /// Entries read and not handed out yet: `(entry id, event id)`.
        buffer: VecDeque<(String, String)>,
    },
    Transport(TransportSubscription),
}

impl Consumer {
    async fn receive(&mut self) -> Result<Received, String> {
        match self {
            Consumer::Raw {
                reader,
                acker,
                key,
                read,
                buffer,
            } => loop {
                if let Some((entry, id)) = buffer.pop_front() {
                    return Ok(Received::Raw {
                        conn: acker.clone(),
                        key: Arc::clone(key),
                        entry,
                        id,
                    });
                }
                let reply: Value = read
                    .query_async(reader)
                    .await
                    .map_err(|e| format!("XREADGROUP: {e}"))?;
                read_entries(&reply, buffer)?;
            },
            Consumer::Transport(subscription) => match subscription.next().await {
                Some(Ok(delivery)) => Ok(Received::Transport(delivery)),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the subscription ended".to_owned()),
            },
        }
    }
}

/// Appends the `(entry id, ce-id)` of each entry of an `XREADGROUP` reply to `out` (RESP2
/// arrays or RESP3 maps; a nil reply is a block that timed out). Nothing else is decoded.
fn read_entries(reply: &Value, out: &mut VecDeque<(String, String)>) -> Result<(), String> {
    let streams: Vec<&Value> = match reply {
        Value::Nil => return Ok(()),
        Value::Array(streams) => streams
            .iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => Ok(&pair[1]),
                other => Err(format!("expected [key, entries], got {other:?}")),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(pairs) => pairs.iter().map(|(_, entries)| entries).collect(),
        other => return Err(format!("expected streams, got {other:?}")),
    };
    for entries in streams {
        let Value::Array(entries) = entries else {
            return Err(format!("expected entries, got {entries:?}"));
        };
        for entry in entries {
            let (entry_id, fields) = match entry {
                Value::Array(parts) if parts.len() == 2 => (&parts[0], &parts[1]),
                other => return Err(format!("expected [id, fields], got {other:?}")),
            };
            let entry_id = redis::from_redis_value_ref::<String>(entry_id)
                .map_err(|e| format!("entry id: {e}"))?;
            let id = match fields {
                Value::Array(flat) => flat
                    .chunks(2)
                    .find(|pair| matches!(&pair[0], Value::BulkString(name) if name == b"ce-id"))
                    .and_then(|pair| pair.get(1)),
                Value::Map(pairs) => pairs
                    .iter()
                    .find(|(name, _)| matches!(name, Value::BulkString(name) if name == b"ce-id"))
                    .map(|(_, value)| value),
                _ => None,
            }
            .and_then(|value| redis::from_redis_value_ref::<String>(value).ok())
            .ok_or_else(|| format!("entry {entry_id} without ce-id"))?;
            out.push_back((entry_id, id));
        }
    }
    Ok(())
}

enum Received {
    Raw {
        conn: MultiplexedConnection,
        key: Arc<str>,
        entry: String,
        id: String,
    },
    Transport(Box<dyn Delivery>),
}

impl Received {
    /// The event id (the raw side read the field `ce-id` only: it decodes nothing).
    fn id(&self) -> &str {
        match self {
            Received::Raw { id, .. } => id,
            Received::Transport(delivery) => &delivery.event().id,
        }
    }

    async fn ack(self) -> Result<(), String> {
        match self {
            Received::Raw {
                mut conn,
                key,
                entry,
                ..
            } => redis::cmd("XACK")
                .arg(&*key)
                .arg(GROUP)
                .arg(&entry)
                .query_async::<Value>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| format!("XACK: {e}")),
            Received::Transport(delivery) => delivery.ack().await.map_err(|e| e.to_string()),
        }
    }
}
