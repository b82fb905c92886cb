//! The brokers of the multi-process tests (`crash_recovery`, `graceful_shutdown`): which one,
//! its URL, a transport on a run's own prefix, and deleting what a run created.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus::nats::NatsTransport;
use bus::redis::RedisTransport;
use bus::transport::{Transport, TransportError};

pub const NATS_URL: &str = "nats://127.0.0.1:4222";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Nats,
    Redis,
}

impl Broker {
    pub fn name(self) -> &'static str {
        match self {
            Broker::Nats => "nats",
            Broker::Redis => "redis",
        }
    }

    pub fn url(self) -> &'static str {
        match self {
            Broker::Nats => NATS_URL,
            Broker::Redis => REDIS_URL,
        }
    }

    /// The transport of a run, as a user builds it, on `prefix` (the NATS subject prefix and
    /// stream, the Redis key prefix). `redis_instance`: the Redis consumer instance's name
    /// (default: a name of its own per process).
    pub async fn connect(
        self,
        prefix: &str,
        redis_instance: Option<String>,
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
                let builder = match redis_instance {
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

/// A prefix (NATS subject prefix, Redis key prefix) of this run alone: `<test>_<broker>_...`.
pub fn unique_prefix(test: &str, broker: Broker) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!("{test}_{}_{}_{nanos:x}", broker.name(), std::process::id())
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
