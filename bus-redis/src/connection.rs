//! What a connected [`RedisTransport`](crate::RedisTransport) shares with its subscriptions and
//! deliveries: the connection, the settled configuration, and the commands they all send
//! (publish, ack, hand back, the group's record), with their retries.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bus_core::transport::support::count_duplicate;
use bus_core::transport::{Retention, ServerUrl, TransportError, WireEvent};
use bytes::Bytes;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script, Value};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::dedup::AckedIds;
use crate::error::{NAME, RedisError, invalid, is_transient};
use crate::keys::{self, Keys};

/// The longest pause between two attempts of one publish or ack.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(500);

/// The publish of a duplicate window or a first-seen name, in one atomic step: `false` for a
/// duplicate, else the entry's id. The fields go to `XADD` as they are (`unpack`): building a
/// table of them first cost a quarter of the script's time.
const PUBLISH_SCRIPT: &str = r"
local window = tonumber(ARGV[1])
if window > 0 then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', window) then
    return false
  end
end
local id
if ARGV[3] == 'MAXLEN' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
elseif ARGV[3] == 'MINID' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local minid = now - tonumber(ARGV[4])
  if minid < 0 then minid = 0 end
  id = redis.call('XADD', KEYS[1], 'MINID', '~', string.format('%.0f', minid), '*', unpack(ARGV, 5))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
end
if redis.call('SADD', KEYS[3], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', '10000', '*', 'name', ARGV[2])
end
return id
";

/// The idle time given to the entries handed back to a group: far past any ack wait, so that
/// the next claim of any consumer of the group takes them (30 days).
const HANDED_BACK_IDLE_MS: u64 = 30 * 24 * 3600 * 1000;

/// How long a name this transport registered (through the publish script) is taken as known,
/// so that its publishes are a plain `XADD`. After this, the next publish registers it again:
/// a name registry lost to a flush is rebuilt within this time.
const NAME_REFRESH: Duration = Duration::from_secs(10);

/// Creates a group's record if missing; returns its pattern and start either way.
const GROUP_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSETNX', KEYS[1], 'pattern', ARGV[1])
redis.call('HSETNX', KEYS[1], 'start', string.format('%.0f', now))
return redis.call('HMGET', KEYS[1], 'pattern', 'start')
";

/// Counters of what the transport noticed.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) trimmed_while_pending: AtomicU64,
    pub(crate) groups_recreated: AtomicU64,
    pub(crate) duplicates_dropped: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
}

/// What a connected transport shares with its subscriptions and deliveries.
pub(crate) struct Inner {
    pub(crate) client: redis::Client,
    pub(crate) conn: ConnectionManager,
    pub(crate) config: Config,
    pub(crate) keys: Keys,
    publish_script: Script,
    group_script: Script,
    acked: Mutex<AckedIds>,
    pub(crate) stats: Stats,
    next_subscription: AtomicU64,
    /// The consumer slots in use per group: a subscription's consumer is
    /// `<instance>-<slot>`, the lowest free slot.
    slots: Mutex<HashMap<String, BTreeSet<u32>>>,
    /// The names this transport registered, and when: see [`NAME_REFRESH`].
    registered: Mutex<HashMap<String, Instant>>,
    /// The hand-backs of dropped deliveries and subscriptions, running in the background;
    /// [`Inner::flush`] waits for them.
    background: TaskTracker,
}

/// The settled configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) url: ServerUrl,
    pub(crate) prefix: String,
    pub(crate) instance: String,
    pub(crate) retention: Retention,
    pub(crate) publish_deadline: Duration,
    pub(crate) duplicate_window: Duration,
    pub(crate) max_payload: usize,
    pub(crate) claim_interval: Duration,
    pub(crate) discovery_interval: Duration,
    pub(crate) read_batch: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) restartable: bool,
}

impl Inner {
    /// The state of a transport connected with `client` and `conn`.
    pub(crate) fn new(
        client: redis::Client,
        conn: ConnectionManager,
        config: Config,
        acked: AckedIds,
    ) -> Inner {
        Inner {
            client,
            conn,
            keys: Keys::new(&config.prefix),
            publish_script: Script::new(PUBLISH_SCRIPT),
            group_script: Script::new(GROUP_SCRIPT),
            acked: Mutex::new(acked),
            stats: Stats::default(),
            next_subscription: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
            background: TaskTracker::new(),
            config,
        }
    }

    /// Runs `work` on `runtime` in the background, counted by [`Inner::background`].
    pub(crate) fn spawn_background(
        &self,
        runtime: &tokio::runtime::Handle,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        self.background.spawn_on(work, runtime);
    }

    /// Waits for the work running in the background (what was spawned before the call).
    pub(crate) async fn flush(&self) {
        self.background.close();
        self.background.wait().await;
        self.background.reopen();
    }

    /// Checks and publishes an event.
    pub(crate) async fn publish(&self, event: WireEvent) -> Result<(), TransportError> {
        keys::check_name(&event.ty).map_err(|reason| invalid("event name", &event.ty, reason))?;
        if event.data.len() > self.config.max_payload {
            return Err(invalid(
                "payload",
                &event.ty,
                format!(
                    "{} bytes is over the {}-byte max_payload of this transport; send a \
                     reference to the data instead, or raise max_payload",
                    event.data.len(),
                    self.config.max_payload
                ),
            ));
        }
        // What a subscriber would refuse (an empty id, an extension name in capitals, too
        // many attributes) is refused here, before it reaches the stream.
        event.validate(self.config.max_payload).map_err(|error| {
            invalid(
                "event",
                &event.ty,
                format!("subscribers could not decode it: {error}"),
            )
        })?;
        self.publish_fields(&event, keys::event_fields(&event))
            .await
            .map(drop)
    }

    /// Stores an event (`fields`, the entry of `event`) until Redis replies, retrying what a
    /// reconnect may cure until the publish deadline. `Ok(false)`: a duplicate (the same source
    /// and id within the duplicate window), dropped, counted and logged at `info`.
    ///
    /// The common case is one plain `XADD` (with the retention's `MAXLEN ~`). The publish
    /// script, which costs Redis about twice the time of an `XADD`, runs only when it must: a
    /// duplicate window (the `SET NX` and the `XADD` are one step), `MaxAge` retention (the
    /// server's clock), or a name this transport has not registered in the last
    /// [`NAME_REFRESH`].
    pub(crate) async fn publish_fields<F: AsRef<[u8]>>(
        &self,
        event: &WireEvent,
        fields: Vec<(F, Bytes)>,
    ) -> Result<bool, TransportError> {
        let name = event.ty.as_str();
        let key = self.keys.stream(name);
        let (trim, limit) = match self.config.retention {
            Retention::Unbounded => ("", 0_u64),
            Retention::MaxLen(entries) => ("MAXLEN", entries),
            Retention::MaxAge(age) => ("MINID", u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            // `MaxBytes` (and any later kind) is refused at connect.
            _ => ("", 0_u64),
        };
        let window = u64::try_from(self.config.duplicate_window.as_millis()).unwrap_or(u64::MAX);
        let plain = window == 0 && trim != "MINID" && self.is_registered(name);
        let mut invocation = self.publish_script.prepare_invoke();
        let mut command = redis::cmd("XADD");
        if plain {
            command.arg(&key);
            if trim == "MAXLEN" {
                command.arg("MAXLEN").arg("~").arg(limit);
            }
            command.arg("*");
            for (field, value) in &fields {
                command.arg(field.as_ref()).arg(value.as_ref());
            }
        } else {
            invocation
                .key(&key)
                .key(self.keys.dedup(&event.source, &event.id))
                .key(self.keys.names())
                .key(self.keys.names_log())
                .arg(window)
                .arg(name)
                .arg(trim)
                .arg(limit);
            for (field, value) in &fields {
                invocation.arg(field.as_ref()).arg(value.as_ref());
            }
        }
        let deadline = Instant::now() + self.config.publish_deadline;
        let timed_out = || TransportError::PublishTimedOut {
            transport: NAME.to_owned(),
            event: name.to_owned(),
            deadline: self.config.publish_deadline,
        };
        let mut pause = Duration::from_millis(10);
        for attempt in 1_u32.. {
            let mut conn = self.conn.clone();
            let sent = async {
                if plain {
                    command.query_async::<Option<String>>(&mut conn).await
                } else {
                    invocation.invoke_async::<Option<String>>(&mut conn).await
                }
            };
            let error = match tokio::time::timeout_at(deadline, sent).await {
                Err(_elapsed) => {
                    tracing::warn!(attempt, "publish not confirmed before the deadline");
                    return Err(timed_out());
                }
                Ok(Ok(Some(entry))) => {
                    tracing::trace!(attempt, entry, "stored");
                    if !plain {
                        self.registered(name);
                    }
                    return Ok(true);
                }
                Ok(Ok(None)) => {
                    self.stats
                        .duplicates_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    count_duplicate(NAME, None);
                    tracing::info!(
                        event = %name,
                        event_id = %event.id,
                        source = %event.source,
                        attempt,
                        "duplicate dropped: an event of this source and id was published within \
                         the duplicate window (or an earlier attempt of this publish stored it)"
                    );
                    return Ok(false);
                }
                Ok(Err(error)) => error,
            };
            if !is_transient(&error) {
                return Err(RedisError::command("XADD", &key, error));
            }
            tracing::debug!(attempt, %error, "publish not confirmed; retrying");
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(attempt, %error, "publish not confirmed before the deadline");
                return Err(timed_out());
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_RETRY_DELAY);
        }
        Err(timed_out())
    }

    /// Whether `name` was registered by this transport less than [`NAME_REFRESH`] ago.
    fn is_registered(&self, name: &str) -> bool {
        let registered = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        registered
            .get(name)
            .is_some_and(|at| at.elapsed() < NAME_REFRESH)
    }

    /// Notes that the publish script just registered `name`.
    fn registered(&self, name: &str) {
        let mut registered = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match registered.get_mut(name) {
            Some(at) => *at = Instant::now(),
            None => {
                registered.insert(name.to_owned(), Instant::now());
            }
        }
    }

    /// `XACK`, retried through reconnects until the publish deadline. A group that is gone
    /// has nothing left to acknowledge: that is `Ok`.
    pub(crate) async fn ack(
        &self,
        key: &str,
        group: &str,
        entry: &str,
    ) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.config.publish_deadline;
        let mut pause = Duration::from_millis(10);
        loop {
            let mut conn = self.conn.clone();
            let mut command = redis::cmd("XACK");
            command.arg(key).arg(group).arg(entry);
            let sent = command.query_async::<Value>(&mut conn);
            let detail = match tokio::time::timeout_at(deadline, sent).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(error)) if crate::error::is_no_group(&error) => {
                    tracing::warn!(key, group, entry, "ack: the group is gone; nothing to ack");
                    return Ok(());
                }
                Ok(Err(error)) if !is_transient(&error) => {
                    return Err(RedisError::command("XACK", key, error));
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no reply".to_owned(),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(RedisError::Ack {
                    key: key.to_owned(),
                    entry: entry.to_owned(),
                    deadline: self.config.publish_deadline,
                    detail,
                }
                .unreachable());
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// Makes `entries` (pending on `consumer`) claimable at once by any consumer of the
    /// group: `XCLAIM ... IDLE <30 days> JUSTID`, which does not count a delivery.
    pub(crate) async fn hand_back(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        entries: &[String],
    ) -> Result<(), TransportError> {
        let mut conn = self.conn.clone();
        redis::cmd("XCLAIM")
            .arg(key)
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(entries)
            .arg("IDLE")
            .arg(HANDED_BACK_IDLE_MS)
            .arg("JUSTID")
            .query_async::<Value>(&mut conn)
            .await
            .map(drop)
            .map_err(|error| RedisError::command("XCLAIM", key, error))
    }

    /// The group's record (pattern, start in ms), created with `pattern` and the server's
    /// time if missing.
    pub(crate) async fn group_record(
        &self,
        group: &str,
        pattern: &str,
    ) -> Result<(String, u64), TransportError> {
        let key = self.keys.group(group);
        let mut conn = self.conn.clone();
        let reply: Vec<Option<String>> = self
            .group_script
            .key(&key)
            .arg(pattern)
            .invoke_async(&mut conn)
            .await
            .map_err(|error| RedisError::command("HSETNX", &key, error))?;
        match reply.as_slice() {
            [Some(pattern), Some(start)] => Ok((pattern.clone(), start.parse().unwrap_or(0))),
            _ => Err(RedisError::Reply {
                command: "HMGET",
                key,
                detail: format!("{reply:?}"),
            }
            .broker()),
        }
    }

    /// The event names with a stream that `matcher` matches: those of the registry of names
    /// (`SMEMBERS`) and of the keyspace (`SCAN`, for streams written by other clients), each
    /// once, in the order found.
    pub(crate) async fn names_matching(
        &self,
        matcher: &keys::Matcher,
    ) -> Result<Vec<String>, TransportError> {
        let mut conn = self.conn.clone();
        let names_key = self.keys.names();
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&names_key)
            .query_async(&mut conn)
            .await
            .map_err(|error| RedisError::command("SMEMBERS", &names_key, error))?;
        let glob = self.keys.stream_glob();
        let mut cursor = 0_u64;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&glob)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("stream")
                .query_async(&mut conn)
                .await
                .map_err(|error| RedisError::command("SCAN", &glob, error))?;
            names.extend(
                found
                    .iter()
                    .filter_map(|key| self.keys.name_of(key))
                    .map(str::to_owned),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|name| {
            keys::check_name(name).is_ok() && matcher.matches(name) && seen.insert(name.clone())
        });
        Ok(names)
    }

    /// The server's clock, in milliseconds.
    pub(crate) async fn server_ms(&self) -> Result<u64, TransportError> {
        let mut conn = self.conn.clone();
        let (seconds, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|error| RedisError::command("TIME", "-", error))?;
        Ok(seconds * 1000 + micros / 1000)
    }

    /// A new connection of its own, for one subscription's blocking reads: its response
    /// timeout is the longest block plus the request timeout.
    pub(crate) async fn reader(
        &self,
        longest_block: Duration,
    ) -> Result<MultiplexedConnection, redis::RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(longest_block + self.config.request_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A number for a new subscription, unique in this transport.
    pub(crate) fn next_subscription(&self) -> u64 {
        self.next_subscription.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes the lowest free consumer slot of `group`.
    pub(crate) fn take_slot(&self, group: &str) -> u32 {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let used = slots.entry(group.to_owned()).or_default();
        let slot = (0..).find(|slot| !used.contains(slot)).unwrap_or(u32::MAX);
        used.insert(slot);
        slot
    }

    /// Gives a consumer slot back.
    pub(crate) fn release_slot(&self, group: &str, slot: u32) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(used) = slots.get_mut(group) {
            used.remove(&slot);
            if used.is_empty() {
                slots.remove(group);
            }
        }
    }

    /// Whether `group` acknowledged `event` (its source and id) within the acked window.
    pub(crate) fn was_acked(&self, group: &str, event: &WireEvent) -> bool {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(group, &event.source, &event.id)
    }

    /// Records that `group` acknowledged `event` (its source and id).
    pub(crate) fn record_ack(&self, group: &str, event: &WireEvent) {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group, &event.source, &event.id);
    }
}
