//! The brokers of the multi-process tests (`crash_recovery`, `graceful_shutdown`): which one,
//! its URL, a transport on a run's own prefix, and deleting what a run created. PostgreSQL
//! (`PostgresTransport`, feature `postgres`) is one of them for `crash_recovery`; it has no
//! [`Raw`] side (the tests that write and read behind the bus's back run on NATS and Redis).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus::nats::NatsTransport;
#[cfg(feature = "postgres")]
use bus::postgres::PostgresTransport;
use bus::redis::RedisTransport;
use bus::transport::{Transport, TransportError};

pub const NATS_URL: &str = "nats://127.0.0.1:4222";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Nats,
    Redis,
    /// `PostgresTransport` on the tables `<prefix>_events`, `<prefix>_groups`,
    /// `<prefix>_deliveries` of [`POSTGRES_URL`].
    #[cfg(feature = "postgres")]
    Postgres,
}

impl Broker {
    pub fn name(self) -> &'static str {
        match self {
            Broker::Nats => "nats",
            Broker::Redis => "redis",
            #[cfg(feature = "postgres")]
            Broker::Postgres => "postgres",
        }
    }

    pub fn url(self) -> &'static str {
        match self {
            Broker::Nats => NATS_URL,
            Broker::Redis => REDIS_URL,
            #[cfg(feature = "postgres")]
            Broker::Postgres => POSTGRES_URL,
        }
    }

    /// The transport of a run, as a user builds it, on `prefix` (the NATS subject prefix and
    /// stream, the Redis key prefix, the PostgreSQL table prefix `<prefix>_`). `instance`: the
    /// consumer instance's name (default: a name of its own per process); on Redis the
    /// consumer in the group, whose pending entries a new instance of the same name takes
    /// over at once; on PostgreSQL only the `claimed_by` of its deliveries, for a reader of
    /// the tables (a killed instance's claims come back after the ack wait, whatever the
    /// name); unused on NATS.
    pub async fn connect(
        self,
        prefix: &str,
        instance: Option<String>,
    ) -> Result<Arc<dyn Transport>, TransportError> {
        Ok(match self {
            Broker::Nats => Arc::new(
                NatsTransport::builder(self.url())
                    .subject_prefix(prefix)
                    .stream_name(stream_name(prefix))
                    .connect()
                    .await?,
            ),
            Broker::Redis => {
                let builder = RedisTransport::builder(self.url()).key_prefix(prefix);
                let builder = match instance {
                    Some(instance) => builder.instance_name(instance),
                    None => builder,
                };
                Arc::new(builder.connect().await?)
            }
            #[cfg(feature = "postgres")]
            Broker::Postgres => {
                let builder =
                    PostgresTransport::builder(self.url()).table_prefix(table_prefix(prefix));
                let builder = match instance {
                    Some(instance) => builder.instance_name(instance),
                    None => builder,
                };
                Arc::new(builder.connect().await?)
            }
        })
    }
}

/// The NATS stream of a run's prefix.
pub fn stream_name(prefix: &str) -> String {
    prefix.to_uppercase()
}

/// The PostgreSQL table prefix of a run's prefix: its tables are `<prefix>_events`, ...
/// The `_` also keeps it from being the start of another run's prefix.
pub fn table_prefix(prefix: &str) -> String {
    format!("{prefix}_")
}

/// A prefix (NATS subject prefix, Redis key prefix, PostgreSQL table prefix but its last `_`)
/// of this run alone: `<test>_<broker>_<pid>_<nanos>`, lower case. PostgreSQL takes a table
/// prefix of at most 32 bytes (`connect` refuses a longer one): `crash` fits.
pub fn unique_prefix(test: &str, broker: Broker) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!("{test}_{}_{}_{nanos:x}", broker.name(), std::process::id())
}

/// A NATS or Redis transport of a run, and what a test writes and reads behind its back with
/// the broker's own client: messages as another client writes them, and messages as the
/// broker holds them.
pub enum Raw {
    Nats(NatsTransport),
    Redis(RedisTransport),
}

/// A message as the broker holds it: its headers (NATS) or its fields but `data` (Redis),
/// values as stored, and its payload.
pub struct Stored {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Raw {
    /// The broker `which`, on a prefix of `test`'s own (deleted when the guard drops), or
    /// `None` when it is down (locally only).
    pub async fn connect(test: &str, which: Broker) -> Option<(Raw, Cleanup)> {
        let prefix = unique_prefix(test, which);
        let raw = match which {
            Broker::Nats => Raw::Nats(super::reachable(
                test,
                NatsTransport::builder(which.url())
                    .subject_prefix(prefix.clone())
                    .stream_name(stream_name(&prefix))
                    .connect()
                    .await,
            )?),
            Broker::Redis => Raw::Redis(super::reachable(
                test,
                RedisTransport::builder(which.url())
                    .key_prefix(prefix.clone())
                    .connect()
                    .await,
            )?),
            #[cfg(feature = "postgres")]
            Broker::Postgres => panic!(
                "{test}: PostgreSQL has no raw side here: the tests that write and read behind \
                 the bus's back run on NATS and Redis"
            ),
        };
        let cleanup = Cleanup {
            broker: which,
            prefix,
        };
        Some((raw, cleanup))
    }

    pub fn transport(&self) -> Arc<dyn Transport> {
        match self {
            Raw::Nats(nats) => Arc::new(nats.clone()),
            Raw::Redis(redis) => Arc::new(redis.clone()),
        }
    }

    /// Writes a message of event `name` as another client would: a JetStream message with
    /// `headers`, or a stream entry with the fields `headers` and `data` (values as they are),
    /// and `payload`.
    pub async fn write(&self, name: &str, headers: &[(String, String)], payload: &[u8]) {
        match self {
            Raw::Nats(nats) => {
                let mut map = bus::nats::async_nats::HeaderMap::new();
                for (header, value) in headers {
                    map.insert(header.as_str(), value.as_str());
                }
                nats.jetstream()
                    .publish_with_headers(nats.subject(name), map, payload.to_vec().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            Raw::Redis(redis) => {
                let mut command = bus::redis::redis::cmd("XADD");
                command.arg(redis.stream_key(name)).arg("*");
                for (field, value) in headers {
                    command.arg(field).arg(value);
                }
                command.arg("data").arg(payload);
                let _: String = command.query_async(&mut redis.connection()).await.unwrap();
            }
        }
    }

    /// Every stored message of event `name`, in order, as the broker holds it (a dead letter
    /// in the dead letters' stream on NATS).
    pub async fn read(&self, name: &str) -> Vec<Stored> {
        match self {
            Raw::Nats(nats) => {
                let stream = match nats.dead_letter_stream_name() {
                    Some(dead_letters) if name.starts_with("dead-letter.") => dead_letters,
                    _ => nats.stream_name(),
                };
                let stream = nats.jetstream().get_stream(stream).await.unwrap();
                let last = stream.get_info().await.unwrap().state.last_sequence;
                let mut messages = Vec::new();
                for sequence in 1..=last {
                    let message = stream.get_raw_message(sequence).await.unwrap();
                    if message.subject.as_str() != nats.subject(name) {
                        continue;
                    }
                    let headers = message
                        .headers
                        .iter()
                        .flat_map(|(header, values)| {
                            values.iter().map(move |value| {
                                (
                                    AsRef::<str>::as_ref(header).to_owned(),
                                    value.as_str().to_owned(),
                                )
                            })
                        })
                        .collect();
                    messages.push(Stored {
                        headers,
                        payload: message.payload.to_vec(),
                    });
                }
                messages
            }
            Raw::Redis(redis) => {
                let entries: Vec<(String, HashMap<String, Vec<u8>>)> =
                    bus::redis::redis::cmd("XRANGE")
                        .arg(redis.stream_key(name))
                        .arg("-")
                        .arg("+")
                        .query_async(&mut redis.connection())
                        .await
                        .unwrap();
                entries
                    .into_iter()
                    .map(|(_, mut fields)| {
                        let payload = fields.remove("data").unwrap_or_default();
                        let headers = fields
                            .into_iter()
                            .map(|(field, value)| {
                                (field, String::from_utf8(value).expect("a UTF-8 field"))
                            })
                            .collect();
                        Stored { headers, payload }
                    })
                    .collect()
            }
        }
    }
}

/// Deletes what the run created on the broker, even when the test fails.
pub struct Cleanup {
    pub broker: Broker,
    pub prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (broker, prefix) = (self.broker, self.prefix.clone());
        // A runtime of its own: this runs inside the test's runtime, or while it unwinds.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let done = tokio::time::timeout(Duration::from_secs(30), async {
                    match broker {
                        Broker::Nats => delete_stream(&stream_name(&prefix)).await,
                        Broker::Redis => delete_keys(&format!("{prefix}:*")).await,
                        #[cfg(feature = "postgres")]
                        Broker::Postgres => drop_tables(&table_prefix(&prefix)).await,
                    }
                })
                .await;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => eprintln!("cleanup of `{prefix}` failed: {error}"),
                    Err(_) => eprintln!("cleanup of `{prefix}` did not finish within 30 s"),
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Deletes the events' stream and the dead letters' one (`<stream>_DEAD_LETTERS`), which a
/// transport makes beside it to keep its dead letters apart.
async fn delete_stream(stream: &str) -> Result<(), String> {
    use async_nats::jetstream::{ErrorCode, context::DeleteStreamErrorKind};
    use bus::nats::async_nats;
    let client = async_nats::connect(NATS_URL)
        .await
        .map_err(|error| error.to_string())?;
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .delete_stream(stream)
        .await
        .map_err(|error| error.to_string())?;
    match jetstream
        .delete_stream(format!("{stream}_DEAD_LETTERS"))
        .await
    {
        Ok(_) => Ok(()),
        Err(error)
            if matches!(error.kind(), DeleteStreamErrorKind::JetStream(ref error)
                if error.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(())
        }
        Err(error) => Err(error.to_string()),
    }
}

/// `SCAN MATCH glob` and `UNLINK` until the scan ends.
async fn delete_keys(glob: &str) -> Result<(), String> {
    use bus::redis::redis;
    let client = redis::Client::open(REDIS_URL).map_err(|error| error.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|error| error.to_string())?;
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(glob)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|error| error.to_string())?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|error| error.to_string())?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Drops every table of the current schema whose name starts with `table_prefix` (the
/// transport's `events`, `groups` and `deliveries`, and whatever else it made).
#[cfg(feature = "postgres")]
async fn drop_tables(table_prefix: &str) -> Result<(), String> {
    use bus::postgres::sqlx::{self, Connection, PgConnection};
    let mut conn = PgConnection::connect(POSTGRES_URL)
        .await
        .map_err(|error| error.to_string())?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables \
         WHERE schemaname = current_schema() AND starts_with(tablename, $1)",
    )
    .bind(table_prefix)
    .fetch_all(&mut conn)
    .await
    .map_err(|error| error.to_string())?;
    if !tables.is_empty() {
        let list = tables
            .iter()
            .map(|table| format!("\"{}\"", table.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {list} CASCADE"
        )))
        .execute(&mut conn)
        .await
        .map_err(|error| error.to_string())?;
    }
    conn.close().await.map_err(|error| error.to_string())
}
