//! A subscription: the streams it reads (found by pattern), its consumer group or its own
//! cursor, the read loop on a connection of its own, the claims of entries left behind, and
//! the decoding of each entry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bus_core::transport::{
    DEAD_LETTER_PREFIX, Delivery, SubscribeOptions, TransportError, TransportSubscription,
    WireEvent,
};
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;
use tracing::Instrument;

use crate::connection::Inner;
use crate::delivery::{RedisDelivery, store_dead_letter};
use crate::error::{RedisError, invalid, is_no_group, is_transient};
use crate::keys::{self, Entry, Matcher};

/// How many entries a subscription outside any group reads at once.
const PLAIN_READ_BATCH: usize = 256;
/// The longest block of a subscription outside any group.
const PLAIN_MAX_BLOCK: Duration = Duration::from_secs(1);
/// How many entries one `XAUTOCLAIM`, or one page of a re-read of the own pending entries,
/// takes.
const CLAIM_BATCH: usize = 100;
/// The idle time given to the entries a closing subscription hands back: far past any ack
/// wait, so that the next claim of any consumer of the group takes them (30 days).
const HANDED_BACK_IDLE_MS: u64 = 30 * 24 * 3600 * 1000;
/// The longest pause between two attempts to reconnect a subscription.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// What a subscription is.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) pattern: String,
    pub(crate) matcher: Matcher,
    /// The consumer group, if any.
    pub(crate) group: Option<String>,
    /// The group as given, or `subscription-<consumer>` outside any group: the
    /// `deadlettergroup` of its dead letters and the key of its acked ids.
    pub(crate) label: String,
    /// The consumer's name in the group (outside any group: the subscription's name).
    pub(crate) consumer: String,
    pub(crate) max_deliveries: u32,
    pub(crate) ack_wait: Duration,
}

/// What a subscription shares with its deliveries.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) spec: Spec,
    local: Mutex<Local>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The subscription's own bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Local {
    /// In a group: entries nacked with a delay, claimed back by this consumer once due.
    pub(crate) retries: Vec<Retry>,
    /// Outside any group: deliveries handed out and not settled, by number.
    pub(crate) in_flight: HashMap<u64, Flight>,
    /// Outside any group: events to deliver again once due.
    pub(crate) redeliver: VecDeque<Redeliver>,
    next_flight: u64,
}

/// An entry of a group to claim back once due.
#[derive(Debug)]
pub(crate) struct Retry {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) entry: String,
    pub(crate) due: Instant,
    /// When its last delivery was received.
    pub(crate) received: Instant,
}

/// A delivery in flight outside any group.
#[derive(Debug)]
pub(crate) struct Flight {
    name: String,
    key: String,
    entry: String,
    event: Arc<WireEvent>,
    attempt: u32,
    deadline: Instant,
}

/// An event to deliver again outside any group.
#[derive(Debug)]
pub(crate) struct Redeliver {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) entry: String,
    pub(crate) event: Arc<WireEvent>,
    pub(crate) attempt: u32,
    pub(crate) due: Instant,
}

/// An entry received, to hand out.
#[derive(Debug)]
struct Ready {
    name: String,
    key: String,
    entry: String,
    event: Arc<WireEvent>,
    attempt: u32,
    /// When it was received from Redis.
    received: Instant,
}

/// One stream a subscription reads.
#[derive(Debug)]
struct StreamState {
    name: String,
    key: String,
    /// Outside any group: the last id read. In a group: the last id received (where a
    /// vanished group is created again).
    cursor: String,
    /// Where the next `XAUTOCLAIM` starts.
    claim_cursor: String,
    /// In a group: whether the group exists on the stream (as far as we know).
    has_group: bool,
}

/// Why a round of the read loop failed.
enum Failure {
    /// The connection broke or timed out: reconnect.
    Connection(TransportError),
    /// The group is gone: create it again.
    NoGroup,
    /// Anything else.
    Other(TransportError),
}

impl Failure {
    fn of(command: &'static str, key: &str, error: redis::RedisError) -> Failure {
        if is_no_group(&error) {
            Failure::NoGroup
        } else if is_transient(&error) {
            Failure::Connection(RedisError::command(command, key, error))
        } else {
            Failure::Other(RedisError::command(command, key, error))
        }
    }

    fn reply(command: &'static str, key: &str, detail: String) -> Failure {
        Failure::Other(
            RedisError::Reply {
                command,
                key: key.to_owned(),
                detail,
            }
            .broker(),
        )
    }
}

/// Opens a subscription: checks the pattern, sets up the group (or the start), finds the
/// streams, connects the reader.
pub(crate) async fn open(
    inner: Arc<Inner>,
    options: SubscribeOptions,
) -> Result<TransportSubscription, TransportError> {
    keys::check_pattern(&options.pattern)
        .map_err(|reason| invalid("pattern", &options.pattern, reason))?;
    let number = inner.next_subscription();
    let (spec, slot, start_ms) = match &options.group {
        Some(group) => {
            let (pattern, start) = inner.group_record(group, &options.pattern).await?;
            if pattern != options.pattern {
                return Err(invalid(
                    "group",
                    group,
                    format!(
                        "the group subscribes to `{pattern}`; one group has one pattern (delete \
                         key `{}` and the group on its streams to change it)",
                        inner.keys.group(group)
                    ),
                ));
            }
            let slot = inner.take_slot(group);
            let consumer = format!("{}-{slot}", inner.config.instance);
            let spec = Spec {
                matcher: Matcher::new(&options.pattern),
                pattern: options.pattern.clone(),
                group: Some(group.clone()),
                label: group.clone(),
                consumer,
                max_deliveries: options.max_deliveries.max(1),
                ack_wait: options.ack_wait,
            };
            (spec, Some((group.clone(), slot)), start)
        }
        None => {
            let consumer = format!("{}-s{number}", inner.config.instance);
            let spec = Spec {
                matcher: Matcher::new(&options.pattern),
                pattern: options.pattern.clone(),
                group: None,
                label: format!("subscription-{consumer}"),
                consumer,
                max_deliveries: options.max_deliveries.max(1),
                ack_wait: options.ack_wait,
            };
            (spec, None, inner.server_ms().await?)
        }
    };
    let span = tracing::info_span!(
        "bus.redis.subscription",
        pattern = %spec.pattern,
        consumer = %spec.consumer,
        group = spec.group.as_deref().unwrap_or("-"),
    );
    let mut pump = Pump {
        inner: Arc::clone(&inner),
        shared: Arc::new(Shared {
            spec,
            local: Mutex::new(Local::default()),
        }),
        slot,
        reader: None,
        streams: Vec::new(),
        known: HashSet::new(),
        log_cursor: "0-0".to_owned(),
        start: keys::id_before_ms(start_ms),
        buffer: VecDeque::new(),
        reread_pending: true,
        next_claim: Instant::now(),
        next_discovery: Instant::now(),
        retry_at: None,
        failures: 0,
        span: span.clone(),
    };
    pump.start().instrument(span.clone()).await?;
    tracing::debug!(parent: &span, streams = pump.streams.len(), "subscribed");
    let stream = futures_util::stream::unfold(pump, |mut pump| async move {
        let span = pump.span.clone();
        let next = pump.next().instrument(span).await;
        Some((next, pump))
    });
    Ok(Box::pin(stream))
}

/// The state behind a subscription's stream.
struct Pump {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    /// The consumer slot taken (group and slot), given back when the subscription closes.
    slot: Option<(String, u32)>,
    /// The connection of this subscription's blocking reads.
    reader: Option<MultiplexedConnection>,
    streams: Vec<StreamState>,
    known: HashSet<String>,
    /// Where the next look into the log of new names starts.
    log_cursor: String,
    /// The id after which the subscription (or its group) starts on a stream.
    start: String,
    /// Entries received and not handed out yet: they become deliveries when handed out (a
    /// subscription outside any group starts their ack wait then).
    buffer: VecDeque<Ready>,
    /// Whether the own pending entries are to be re-read (at start, after a reconnect).
    reread_pending: bool,
    next_claim: Instant,
    next_discovery: Instant,
    retry_at: Option<Instant>,
    failures: u32,
    span: tracing::Span,
}

impl Drop for Pump {
    fn drop(&mut self) {
        // The blocking read goes first: no more entries for this consumer.
        drop(self.reader.take());
        let Some((group, slot)) = self.slot.take() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let keys: Vec<String> = self.streams.iter().map(|s| s.key.clone()).collect();
        let consumer = self.shared.spec.consumer.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner.release_slot(&group, slot);
            return;
        };
        let span = self.span.clone();
        let background = Arc::clone(&inner);
        background.spawn_background(
            &runtime,
            async move {
                // Twice: a read in flight as the subscription closed may still have given
                // this consumer entries, until its block ended.
                let longest = inner
                    .config
                    .claim_interval
                    .max(inner.config.discovery_interval)
                    + Duration::from_millis(500);
                let first = hand_back_all(&inner, &keys, &group, &consumer).await;
                tokio::time::sleep(longest.min(Duration::from_secs(10))).await;
                let second = hand_back_all(&inner, &keys, &group, &consumer).await;
                if matches!((first, second), (Ok(_), Ok(0))) {
                    for key in &keys {
                        let mut conn = inner.conn.clone();
                        let _ = redis::cmd("XGROUP")
                            .arg("DELCONSUMER")
                            .arg(key)
                            .arg(&group)
                            .arg(&consumer)
                            .query_async::<Value>(&mut conn)
                            .await;
                    }
                }
                inner.release_slot(&group, slot);
                tracing::debug!("subscription closed");
            }
            .instrument(span),
        );
    }
}

/// Makes the entries pending on `consumer` in `keys` claimable at once by any consumer of the
/// group; returns how many there were.
async fn hand_back_all(
    inner: &Inner,
    keys: &[String],
    group: &str,
    consumer: &str,
) -> Result<usize, TransportError> {
    let mut total = 0;
    for key in keys {
        let mut conn = inner.conn.clone();
        let reply: Value = redis::cmd("XPENDING")
            .arg(key)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(10_000)
            .arg(consumer)
            .query_async(&mut conn)
            .await
            .map_err(|error| RedisError::command("XPENDING", key, error))?;
        let ids: Vec<String> = keys::pending_reply(&reply)
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        if !ids.is_empty() {
            hand_back(inner, key, group, consumer, &ids).await?;
            tracing::debug!(
                key,
                returned = ids.len(),
                "handed pending entries back to the group"
            );
        }
        total += ids.len();
    }
    Ok(total)
}

/// Makes `entries` (pending on `consumer`) claimable at once: `XCLAIM ... IDLE <30 days>
/// JUSTID`, which does not count a delivery.
pub(crate) async fn hand_back(
    inner: &Inner,
    key: &str,
    group: &str,
    consumer: &str,
    entries: &[String],
) -> Result<(), TransportError> {
    let mut conn = inner.conn.clone();
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

/// 100 ms, doubling up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (Duration::from_millis(100) * 2_u32.pow(doublings)).min(MAX_RECONNECT_DELAY)
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Pump {
    fn spec(&self) -> &Spec {
        &self.shared.spec
    }

    fn wildcard(&self) -> bool {
        !self.spec().matcher.is_literal()
    }

    /// The longest single block of this subscription's reads.
    fn longest_block(&self) -> Duration {
        let base = match self.spec().group {
            Some(_) => self.inner.config.claim_interval,
            None => PLAIN_MAX_BLOCK,
        };
        if self.wildcard() {
            base.min(self.inner.config.discovery_interval)
        } else {
            base
        }
    }

    /// Finds the streams, creates the group on them, connects the reader.
    async fn start(&mut self) -> Result<(), TransportError> {
        if self.wildcard() {
            self.discover_initial().await?;
        } else {
            let name = self.spec().pattern.clone();
            self.add_stream(&name);
        }
        if self.spec().group.is_some() {
            self.ensure_groups()
                .await
                .map_err(|failure| match failure {
                    Failure::Connection(error) | Failure::Other(error) => error,
                    Failure::NoGroup => RedisError::Reply {
                        command: "XGROUP",
                        key: self.spec().pattern.clone(),
                        detail: "NOGROUP while creating the group".to_owned(),
                    }
                    .broker(),
                })?;
        }
        let reader = self
            .inner
            .reader(self.longest_block())
            .await
            .map_err(|error| RedisError::command("CONNECT", "-", error))?;
        self.reader = Some(reader);
        Ok(())
    }

    fn add_stream(&mut self, name: &str) {
        if !self.known.insert(name.to_owned()) {
            return;
        }
        self.streams.push(StreamState {
            name: name.to_owned(),
            key: self.inner.keys.stream(name),
            cursor: self.start.clone(),
            claim_cursor: "0-0".to_owned(),
            has_group: false,
        });
    }

    /// The streams matching the pattern now: the registry of names, and `SCAN` (for streams
    /// written by other clients); the log of new names is read from its current end on.
    async fn discover_initial(&mut self) -> Result<(), TransportError> {
        let mut conn = self.inner.conn.clone();
        let log = self.inner.keys.names_log();
        let last: Value = redis::cmd("XREVRANGE")
            .arg(&log)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|error| RedisError::command("XREVRANGE", &log, error))?;
        if let Some(entry) = keys::entries(&last).ok().and_then(|mut e| e.pop()) {
            self.log_cursor = entry.id;
        }
        let names_key = self.inner.keys.names();
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&names_key)
            .query_async(&mut conn)
            .await
            .map_err(|error| RedisError::command("SMEMBERS", &names_key, error))?;
        let glob = self.inner.keys.stream_glob();
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
                    .filter_map(|key| self.inner.keys.name_of(key))
                    .map(str::to_owned),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for name in names {
            if keys::check_name(&name).is_ok() && self.spec().matcher.matches(&name) {
                self.add_stream(&name);
            }
        }
        Ok(())
    }

    /// The names published for the first time since the last look.
    async fn discover(&mut self) -> Result<(), Failure> {
        let mut conn = self.inner.conn.clone();
        let log = self.inner.keys.names_log();
        loop {
            let reply: Value = redis::cmd("XRANGE")
                .arg(&log)
                .arg(format!("({}", self.log_cursor))
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|error| Failure::of("XRANGE", &log, error))?;
            let entries =
                keys::entries(&reply).map_err(|detail| Failure::reply("XRANGE", &log, detail))?;
            let Some(last) = entries.last() else {
                return Ok(());
            };
            self.log_cursor = last.id.clone();
            let count = entries.len();
            for entry in entries {
                let Some(fields) = entry.fields else { continue };
                for (field, value) in fields {
                    if field != b"name" {
                        continue;
                    }
                    let Ok(name) = String::from_utf8(value) else {
                        continue;
                    };
                    if self.spec().matcher.matches(&name) && !self.known.contains(&name) {
                        tracing::debug!(stream = %name, "found a new stream");
                        self.add_stream(&name);
                    }
                }
            }
            if count < 1000 {
                return Ok(());
            }
        }
    }

    /// Creates the group on the streams that do not have it yet (from the group's start).
    async fn ensure_groups(&mut self) -> Result<(), Failure> {
        let Some(group) = self.spec().group.clone() else {
            return Ok(());
        };
        let mut conn = self.inner.conn.clone();
        for stream in self.streams.iter_mut().filter(|stream| !stream.has_group) {
            create_group(&mut conn, &stream.key, &group, &self.start).await?;
            stream.has_group = true;
        }
        Ok(())
    }

    /// The group vanished (`NOGROUP`): writes its record again and creates it on every
    /// stream, each from the last entry this subscription received there.
    async fn recreate_groups(&mut self) -> Result<(), Failure> {
        let Some(group) = self.spec().group.clone() else {
            return Ok(());
        };
        tracing::warn!(
            group,
            "the consumer group is gone (Redis flushed, or restarted without persistence): \
             creating it again"
        );
        self.inner
            .stats
            .groups_recreated
            .fetch_add(1, Ordering::Relaxed);
        let mut conn = self.inner.conn.clone();
        let record = self.inner.keys.group(&group);
        let start_ms = keys::id_key(&self.start).0.saturating_add(1);
        redis::cmd("HSET")
            .arg(&record)
            .arg("pattern")
            .arg(&self.spec().pattern)
            .arg("start")
            .arg(start_ms)
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|error| Failure::of("HSET", &record, error))?;
        for stream in &mut self.streams {
            create_group(&mut conn, &stream.key, &group, &stream.cursor).await?;
            stream.has_group = true;
            stream.claim_cursor = "0-0".to_owned();
        }
        self.shared.lock().retries.clear();
        Ok(())
    }

    /// The next delivery; reconnects when the connection breaks, recreates a vanished group,
    /// and yields an error only for what neither cures (then goes on when polled again).
    async fn next(&mut self) -> Result<Box<dyn Delivery>, TransportError> {
        loop {
            if let Some(ready) = self.buffer.pop_front() {
                return Ok(self.hand_out(ready));
            }
            if let Some(at) = self.retry_at.take() {
                tokio::time::sleep_until(at).await;
            }
            if self.reader.is_none() {
                match self.inner.reader(self.longest_block()).await {
                    Ok(reader) => {
                        tracing::info!("subscription reconnected");
                        self.reader = Some(reader);
                        self.reread_pending = true;
                    }
                    Err(error) => {
                        self.failures = self.failures.saturating_add(1);
                        tracing::warn!(%error, "cannot reconnect the subscription yet");
                        self.retry_at = Some(Instant::now() + reconnect_delay(self.failures));
                        continue;
                    }
                }
            }
            match self.round().await {
                Ok(()) => self.failures = 0,
                Err(Failure::Connection(error)) => {
                    self.failures = self.failures.saturating_add(1);
                    tracing::warn!(%error, "the subscription's connection broke; reconnecting");
                    self.reader = None;
                    self.retry_at = Some(Instant::now() + reconnect_delay(self.failures));
                }
                Err(Failure::NoGroup) => {
                    if let Err(failure) = self.recreate_groups().await {
                        self.failures = self.failures.saturating_add(1);
                        self.retry_at = Some(Instant::now() + reconnect_delay(self.failures));
                        if let Failure::Other(error) = failure {
                            tracing::error!(%error, "cannot create the group again");
                            return Err(error);
                        }
                    }
                }
                Err(Failure::Other(error)) => {
                    self.failures = self.failures.saturating_add(1);
                    self.retry_at = Some(Instant::now() + reconnect_delay(self.failures));
                    tracing::error!(%error, "the subscription failed; it goes on when polled");
                    return Err(error);
                }
            }
        }
    }

    /// One round: look for new streams when due, then (in a group) the own pending entries,
    /// the retries due and the claims due; then one blocking read.
    async fn round(&mut self) -> Result<(), Failure> {
        let now = Instant::now();
        if self.wildcard() && now >= self.next_discovery {
            self.discover().await?;
            self.next_discovery = now + self.inner.config.discovery_interval;
        }
        match self.spec().group.clone() {
            Some(group) => self.group_round(&group).await,
            None => self.plain_round().await,
        }
    }

    async fn group_round(&mut self, group: &str) -> Result<(), Failure> {
        self.ensure_groups().await?;
        if self.streams.is_empty() {
            tokio::time::sleep_until(self.next_discovery).await;
            return Ok(());
        }
        if self.reread_pending {
            self.reread_own(group).await?;
            self.reread_pending = false;
            if !self.buffer.is_empty() {
                return Ok(());
            }
        }
        self.claim_due_retries(group).await?;
        if !self.buffer.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= self.next_claim {
            self.claim_round(group).await?;
            self.next_claim = now + self.inner.config.claim_interval;
            if !self.buffer.is_empty() {
                return Ok(());
            }
        }
        let mut until = self.next_claim;
        if self.wildcard() {
            until = until.min(self.next_discovery);
        }
        if let Some(due) = self.shared.lock().retries.iter().map(|r| r.due).min() {
            until = until.min(due);
        }
        let block = ms(until.saturating_duration_since(Instant::now())).max(1);
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(group)
            .arg(&self.spec().consumer)
            .arg("COUNT")
            .arg(self.inner.config.read_batch)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS");
        for stream in &self.streams {
            command.arg(&stream.key);
        }
        for _ in &self.streams {
            command.arg(">");
        }
        let reply = self.read(&command).await?;
        for (key, entries) in reply {
            for entry in entries {
                self.receive(&key, entry, 1).await?;
            }
        }
        Ok(())
    }

    async fn plain_round(&mut self) -> Result<(), Failure> {
        // Deliveries past their ack wait go back in line (or to the dead letter).
        let now = Instant::now();
        let expired: Vec<Flight> = {
            let mut local = self.shared.lock();
            let numbers: Vec<u64> = local
                .in_flight
                .iter()
                .filter(|(_, flight)| flight.deadline <= now)
                .map(|(number, _)| *number)
                .collect();
            numbers
                .into_iter()
                .filter_map(|number| local.in_flight.remove(&number))
                .collect()
        };
        for flight in expired {
            if flight.attempt >= self.spec().max_deliveries {
                let reason = format!(
                    "not settled within the ack wait (after {} deliveries)",
                    flight.attempt
                );
                self.plain_dead_letter(&flight.event, flight.attempt, &reason)
                    .await;
            } else {
                self.shared.lock().redeliver.push_back(Redeliver {
                    name: flight.name,
                    key: flight.key,
                    entry: flight.entry,
                    event: flight.event,
                    attempt: flight.attempt + 1,
                    due: now,
                });
            }
        }
        let due: Vec<Redeliver> = {
            let mut local = self.shared.lock();
            let (due, later): (VecDeque<Redeliver>, VecDeque<Redeliver>) =
                local.redeliver.drain(..).partition(|r| r.due <= now);
            local.redeliver = later;
            due.into_iter().collect()
        };
        if !due.is_empty() {
            for again in due {
                self.buffer.push_back(Ready {
                    name: again.name,
                    key: again.key,
                    entry: again.entry,
                    event: again.event,
                    attempt: again.attempt,
                    received: now,
                });
            }
            return Ok(());
        }
        let mut until = now + PLAIN_MAX_BLOCK;
        if self.wildcard() {
            until = until.min(self.next_discovery);
        }
        {
            let local = self.shared.lock();
            if let Some(due) = local.redeliver.iter().map(|r| r.due).min() {
                until = until.min(due);
            }
            if let Some(deadline) = local.in_flight.values().map(|f| f.deadline).min() {
                until = until.min(deadline);
            }
        }
        if self.streams.is_empty() {
            tokio::time::sleep_until(until).await;
            return Ok(());
        }
        let block = ms(until.saturating_duration_since(Instant::now())).max(1);
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(PLAIN_READ_BATCH)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS");
        for stream in &self.streams {
            command.arg(&stream.key);
        }
        for stream in &self.streams {
            command.arg(&stream.cursor);
        }
        let reply = self.read(&command).await?;
        for (key, entries) in reply {
            for entry in entries {
                self.receive(&key, entry, 1).await?;
            }
        }
        Ok(())
    }

    /// A blocking read on the subscription's own connection.
    async fn read(&mut self, command: &redis::Cmd) -> Result<Vec<(String, Vec<Entry>)>, Failure> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Vec::new());
        };
        let what = if self.shared.spec.group.is_some() {
            "XREADGROUP"
        } else {
            "XREAD"
        };
        let reply: Value = command
            .query_async(reader)
            .await
            .map_err(|error| Failure::of(what, &self.shared.spec.pattern, error))?;
        keys::read_reply(&reply)
            .map_err(|detail| Failure::reply(what, &self.shared.spec.pattern, detail))
    }

    /// Re-reads the entries pending on this consumer (left by a previous life of it, or by a
    /// broken connection): `XREADGROUP ... 0`, page by page.
    async fn reread_own(&mut self, group: &str) -> Result<(), Failure> {
        self.shared.lock().retries.clear();
        let keys: Vec<String> = self.streams.iter().map(|s| s.key.clone()).collect();
        for key in keys {
            let mut cursor = "0".to_owned();
            loop {
                let mut command = redis::cmd("XREADGROUP");
                command
                    .arg("GROUP")
                    .arg(group)
                    .arg(&self.spec().consumer)
                    .arg("COUNT")
                    .arg(CLAIM_BATCH)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&cursor);
                let reply = self.read(&command).await?;
                let entries: Vec<Entry> = reply.into_iter().flat_map(|(_, e)| e).collect();
                let Some(last) = entries.last() else { break };
                cursor = last.id.clone();
                let count = entries.len();
                if count > 0 {
                    tracing::info!(
                        key,
                        count,
                        "re-reading entries left pending on this consumer"
                    );
                }
                self.receive_counted(group, &key, entries).await?;
                if count < CLAIM_BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Claims back the nacked entries whose delay is over.
    async fn claim_due_retries(&mut self, group: &str) -> Result<(), Failure> {
        let now = Instant::now();
        let due: Vec<Retry> = {
            let mut local = self.shared.lock();
            let (due, later) = std::mem::take(&mut local.retries)
                .into_iter()
                .partition(|retry| retry.due <= now);
            local.retries = later;
            due
        };
        for retry in due {
            // Never take it from another consumer that claimed it after its ack wait.
            let min_idle = now
                .saturating_duration_since(retry.received)
                .saturating_sub(self.spec().ack_wait);
            let mut conn = self.inner.conn.clone();
            let reply: Value = redis::cmd("XCLAIM")
                .arg(&retry.key)
                .arg(group)
                .arg(&self.spec().consumer)
                .arg(ms(min_idle))
                .arg(&retry.entry)
                .query_async(&mut conn)
                .await
                .map_err(|error| Failure::of("XCLAIM", &retry.key, error))?;
            let entries = keys::entries(&reply)
                .map_err(|detail| Failure::reply("XCLAIM", &retry.key, detail))?;
            if entries.is_empty() {
                tracing::debug!(entry = %retry.entry, stream = %retry.name, "a nacked entry was settled or claimed meanwhile");
            }
            self.receive_counted(group, &retry.key, entries).await?;
        }
        Ok(())
    }

    /// `XAUTOCLAIM` on every stream: the entries pending longer than the ack wait on any
    /// consumer of the group. Entries trimmed while pending are reported.
    async fn claim_round(&mut self, group: &str) -> Result<(), Failure> {
        let min_idle = ms(self.spec().ack_wait);
        for index in 0..self.streams.len() {
            let (key, start) = {
                let stream = &self.streams[index];
                (stream.key.clone(), stream.claim_cursor.clone())
            };
            let mut conn = self.inner.conn.clone();
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(group)
                .arg(&self.spec().consumer)
                .arg(min_idle)
                .arg(&start)
                .arg("COUNT")
                .arg(CLAIM_BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|error| Failure::of("XAUTOCLAIM", &key, error))?;
            let (cursor, claimed, deleted) = keys::autoclaim_reply(&reply)
                .map_err(|detail| Failure::reply("XAUTOCLAIM", &key, detail))?;
            self.streams[index].claim_cursor = cursor;
            for entry in &deleted {
                self.report_trimmed(&key, entry);
            }
            if !claimed.is_empty() {
                tracing::info!(
                    key,
                    count = claimed.len(),
                    "claimed entries left unsettled past the ack wait"
                );
            }
            self.receive_counted(group, &key, claimed).await?;
        }
        Ok(())
    }

    fn report_trimmed(&self, key: &str, entry: &str) {
        self.inner
            .stats
            .trimmed_while_pending
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            key,
            entry,
            group = self.spec().group.as_deref().unwrap_or("-"),
            "an entry was trimmed (deleted by the stream's retention) while pending: its event \
             is lost to the group; raise the retention"
        );
    }

    /// Receives entries whose delivery count is in the pending list (re-read, claimed).
    async fn receive_counted(
        &mut self,
        group: &str,
        key: &str,
        entries: Vec<Entry>,
    ) -> Result<(), Failure> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("XPENDING")
                .arg(key)
                .arg(group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let mut conn = self.inner.conn.clone();
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|error| Failure::of("XPENDING", key, error))?;
        let counts: HashMap<String, u32> = replies
            .iter()
            .filter_map(|reply| keys::pending_reply(reply).ok())
            .flatten()
            .map(|(id, _, count)| (id, count))
            .collect();
        for entry in entries {
            // Not pending any more (acked meanwhile): nothing to deliver.
            let Some(&count) = counts.get(&entry.id) else {
                if entry.fields.is_none() {
                    self.report_trimmed(key, &entry.id);
                }
                continue;
            };
            self.receive(key, entry, count.max(1)).await?;
        }
        Ok(())
    }

    /// Turns an entry into a delivery; an entry that does not decode, that was trimmed, that
    /// repeats an acked id, or that is past `max_deliveries`, is settled here and yields
    /// nothing.
    async fn receive(&mut self, key: &str, entry: Entry, attempt: u32) -> Result<(), Failure> {
        let Some(index) = self.streams.iter().position(|s| s.key == key) else {
            return Ok(());
        };
        let name = self.streams[index].name.clone();
        if keys::id_key(&entry.id) > keys::id_key(&self.streams[index].cursor) {
            self.streams[index].cursor = entry.id.clone();
        }
        let group = self.spec().group.clone();
        let Some(fields) = entry.fields else {
            self.report_trimmed(key, &entry.id);
            if let Some(group) = &group {
                self.settle_here(key, group, &entry.id).await?;
            }
            return Ok(());
        };
        let decoded = keys::decode(&name, &fields, self.inner.config.max_payload);
        let event = match decoded {
            Ok(event) => event,
            Err(reason) => {
                self.reject_raw(key, &name, &entry.id, &fields, attempt, &reason)
                    .await?;
                return Ok(());
            }
        };
        if self.inner.was_acked(&self.spec().label, &event.id) {
            self.inner
                .stats
                .duplicates_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(event_id = %event.id, entry = %entry.id, "dropping an event acked before");
            if let Some(group) = &group {
                self.settle_here(key, group, &entry.id).await?;
            }
            return Ok(());
        }
        let event = Arc::new(event);
        if let Some(group) = &group {
            let max = self.spec().max_deliveries;
            if attempt > max {
                // Its last allowed delivery was never settled: dead-lettered here.
                let reason = format!("not settled within the ack wait (after {max} deliveries)");
                let letter = event.dead_letter(&self.spec().label, max, &reason);
                match store_dead_letter(&self.inner, &letter, keys::event_fields(&letter)).await {
                    Ok(()) => {
                        tracing::warn!(dead_letter = %letter.ty, %reason, "event dead-lettered");
                        self.settle_here(key, group, &entry.id).await?;
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot store the dead letter; the entry stays pending");
                    }
                }
                return Ok(());
            }
        }
        self.buffer.push_back(Ready {
            name,
            key: key.to_owned(),
            entry: entry.id,
            event,
            attempt,
            received: Instant::now(),
        });
        Ok(())
    }

    /// Makes a received entry a delivery, as it is handed out.
    fn hand_out(&self, ready: Ready) -> Box<dyn Delivery> {
        if self.spec().group.is_some() {
            return Box::new(RedisDelivery {
                inner: Arc::clone(&self.inner),
                shared: Arc::clone(&self.shared),
                name: ready.name,
                key: ready.key,
                entry: ready.entry,
                event: ready.event,
                attempt: ready.attempt,
                received: ready.received,
                flight: None,
                settled: false,
            });
        }
        self.plain_delivery(
            ready.name,
            ready.key,
            ready.entry,
            ready.event,
            ready.attempt,
        )
    }

    /// A delivery outside any group, registered in flight.
    fn plain_delivery(
        &self,
        name: String,
        key: String,
        entry: String,
        event: Arc<WireEvent>,
        attempt: u32,
    ) -> Box<dyn Delivery> {
        let now = Instant::now();
        let number = {
            let mut local = self.shared.lock();
            let number = local.next_flight;
            local.next_flight += 1;
            local.in_flight.insert(
                number,
                Flight {
                    name: name.clone(),
                    key: key.clone(),
                    entry: entry.clone(),
                    event: Arc::clone(&event),
                    attempt,
                    deadline: now + self.spec().ack_wait,
                },
            );
            number
        };
        Box::new(RedisDelivery {
            inner: Arc::clone(&self.inner),
            shared: Arc::clone(&self.shared),
            name,
            key,
            entry,
            event,
            attempt,
            received: now,
            flight: Some(number),
            settled: false,
        })
    }

    async fn plain_dead_letter(&self, event: &WireEvent, attempts: u32, reason: &str) {
        let letter = event.dead_letter(&self.spec().label, attempts, reason);
        match store_dead_letter(&self.inner, &letter, keys::event_fields(&letter)).await {
            Ok(()) => tracing::warn!(dead_letter = %letter.ty, reason, "event dead-lettered"),
            Err(error) => {
                tracing::error!(%error, reason, "cannot store the dead letter of an event; it is dropped");
            }
        }
    }

    /// Acknowledges an entry the subscription settled itself.
    async fn settle_here(&self, key: &str, group: &str, entry: &str) -> Result<(), Failure> {
        self.inner
            .ack(key, group, entry)
            .await
            .map_err(Failure::Connection)
    }

    /// Dead-letters an entry that does not decode, with the reason; a dead letter that does
    /// not decode is dropped (no loop).
    async fn reject_raw(
        &self,
        key: &str,
        name: &str,
        entry: &str,
        fields: &keys::Fields,
        attempt: u32,
        reason: &str,
    ) -> Result<(), Failure> {
        let group = self.spec().group.clone();
        if name.starts_with(&format!("{DEAD_LETTER_PREFIX}.")) {
            tracing::warn!(
                key,
                entry,
                reason,
                "dropping a dead letter that does not decode"
            );
        } else {
            let (letter, stored) =
                keys::dead_letter_raw(name, entry, fields, &self.spec().label, attempt, reason);
            match store_dead_letter(&self.inner, &letter, stored).await {
                Ok(()) => tracing::warn!(
                    key,
                    entry,
                    dead_letter = %letter.ty,
                    reason,
                    "entry that does not decode dead-lettered"
                ),
                Err(error) => {
                    tracing::error!(key, entry, reason, %error, "cannot dead-letter an entry that does not decode");
                    // In a group it stays pending, and comes back after the ack wait.
                    return Ok(());
                }
            }
        }
        if let Some(group) = &group {
            self.settle_here(key, group, entry).await?;
        }
        Ok(())
    }
}

/// `XGROUP CREATE <key> <group> <start> MKSTREAM`; a group that exists already is fine.
async fn create_group(
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
    group: &str,
    start: &str,
) -> Result<(), Failure> {
    let created = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async::<Value>(conn)
        .await;
    match created {
        Ok(_) => {
            tracing::debug!(key, group, start, "group created on the stream");
            Ok(())
        }
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        Err(error) => Err(Failure::of("XGROUP CREATE", key, error)),
    }
}
