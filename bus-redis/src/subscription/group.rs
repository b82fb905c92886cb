//! A subscription in a consumer group: one consumer of the group on each stream, reading with
//! `XREADGROUP`.
//!
//! Redis keeps each entry read by a consumer in the group's pending list until it is acked
//! (`XACK`), with its delivery count. What Redis leaves to its consumers is done here:
//! re-reading the entries left pending on this consumer, claiming back an entry nacked with a
//! delay once due, taking over (`XAUTOCLAIM`) the entries left unsettled past the ack wait,
//! dead-lettering an entry past `max_deliveries`, creating the group again when it vanished,
//! and handing the pending entries back to the group when the subscription closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::{Delivery, TransportError};
use redis::Value;
use redis::aio::ConnectionManager;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Failure, Intake, Ready, Received, ms, not_settled};
use crate::connection::Inner;
use crate::delivery::{GroupShared, Retry, Settlement, dead_letter};
use crate::error::RedisError;
use crate::keys::{self, Entry};

/// How many entries one `XAUTOCLAIM`, or one page of a re-read of the own pending entries,
/// takes.
const CLAIM_BATCH: usize = 100;

/// The protocol of a subscription in a group.
pub(super) struct GroupReader {
    /// The group, and the retries its deliveries ask for.
    shared: Arc<GroupShared>,
    /// The consumer slot taken (the consumer is `<instance>-<slot>`), given back when the
    /// subscription closes.
    slot: u32,
    ack_wait: Duration,
    /// Whether the own pending entries are to be re-read (at start, after a reconnect).
    reread_pending: bool,
    /// When the next `XAUTOCLAIM` is due.
    next_claim: Instant,
}

impl GroupReader {
    pub(super) fn new(group: String, slot: u32, ack_wait: Duration) -> GroupReader {
        GroupReader {
            shared: Arc::new(GroupShared::new(group)),
            slot,
            ack_wait,
            reread_pending: true,
            next_claim: Instant::now(),
        }
    }

    fn group(&self) -> &str {
        &self.shared.group
    }

    /// Creates the group on the streams found at start.
    pub(super) async fn start(&self, intake: &mut Intake) -> Result<(), TransportError> {
        self.ensure_groups(intake)
            .await
            .map_err(|failure| match failure {
                Failure::Connection(error) | Failure::Other(error) => error,
                Failure::NoGroup => RedisError::Reply {
                    command: "XGROUP",
                    key: intake.pattern.clone(),
                    detail: "NOGROUP while creating the group".to_owned(),
                }
                .broker(),
            })
    }

    /// The reader's connection is new. The entries the broken one had read and not handed
    /// out are pending on this consumer, and nobody else takes them before their ack wait is
    /// over: the next round re-reads them.
    pub(super) fn reconnected(&mut self) {
        self.reread_pending = true;
    }

    /// One round of a group subscription, in this order:
    ///
    /// 1. Create the group on the streams found since the last round.
    /// 2. At start and after a reconnect, re-read the entries pending on this consumer
    ///    (`XREADGROUP ... 0`): those a previous life of it (with a stable instance name) or
    ///    the broken connection received and never settled. The group gives them to nobody
    ///    else before their ack wait is over.
    /// 3. Claim back (`XCLAIM`) the entries nacked here whose delay is over.
    /// 4. Every `claim_interval`, take over (`XAUTOCLAIM`) the entries pending longer than the
    ///    ack wait on any consumer of the group: a dead one, a hung one, or this one.
    /// 5. Block in `XREADGROUP ... >` for new entries until the earliest of the next claim,
    ///    the next look for new streams, and the next retry due, so that each runs on time.
    ///
    /// Steps 2 to 4 bring entries delivered before; as soon as one brings any, the round ends
    /// and they are handed out before anything new is read (what is read and not handed out
    /// sits pending on this consumer, out of reach of the other members until its ack wait
    /// is over).
    pub(super) async fn round(&mut self, intake: &mut Intake) -> Result<(), Failure> {
        self.ensure_groups(intake).await?;
        if intake.streams.is_empty() {
            // Nothing to read or claim until a look for new streams finds one.
            tokio::time::sleep_until(intake.streams.next_discovery()).await;
            return Ok(());
        }
        if self.reread_pending {
            self.reread_own(intake).await?;
            self.reread_pending = false;
            if !intake.buffer.is_empty() {
                return Ok(());
            }
        }
        self.claim_due_retries(intake).await?;
        if !intake.buffer.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= self.next_claim {
            self.claim_round(intake).await?;
            self.next_claim = now + intake.inner.config.claim_interval;
            if !intake.buffer.is_empty() {
                return Ok(());
            }
        }
        let mut until = self.next_claim;
        if intake.streams.wildcard() {
            until = until.min(intake.streams.next_discovery());
        }
        if let Some(due) = self.shared.retries().iter().map(|r| r.due).min() {
            until = until.min(due);
        }
        // At least 1 ms: `BLOCK 0` blocks for ever.
        let block = ms(until.saturating_duration_since(Instant::now())).max(1);
        let mut command = self.read_command(intake, intake.inner.config.read_batch);
        command.arg("BLOCK").arg(block).arg("STREAMS");
        for stream in intake.streams.iter() {
            command.arg(&stream.key);
        }
        for _ in intake.streams.iter() {
            command.arg(">");
        }
        let reply = intake.read(&command, "XREADGROUP").await?;
        for (key, entries) in reply {
            for entry in entries {
                self.receive(intake, &key, entry, 1).await?;
            }
        }
        Ok(())
    }

    /// `XREADGROUP GROUP <group> <consumer> COUNT <count>`, to go on with.
    fn read_command(&self, intake: &Intake, count: usize) -> redis::Cmd {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(self.group())
            .arg(&intake.origin.consumer)
            .arg("COUNT")
            .arg(count);
        command
    }

    /// Re-reads the entries pending on this consumer (left by a previous life of it, or by a
    /// broken connection): `XREADGROUP ... 0`, page by page.
    async fn reread_own(&self, intake: &mut Intake) -> Result<(), Failure> {
        // The nacked entries are pending on this consumer too: the re-read brings them back
        // now, so their retries go (else they would be delivered twice).
        self.shared.retries().clear();
        for key in intake.streams.keys() {
            let mut cursor = "0".to_owned();
            loop {
                let mut command = self.read_command(intake, CLAIM_BATCH);
                command.arg("STREAMS").arg(&key).arg(&cursor);
                let reply = intake.read(&command, "XREADGROUP").await?;
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
                self.receive_counted(intake, &key, entries).await?;
                if count < CLAIM_BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Claims back the nacked entries whose delay is over.
    async fn claim_due_retries(&self, intake: &mut Intake) -> Result<(), Failure> {
        let now = Instant::now();
        let due: Vec<Retry> = {
            let mut retries = self.shared.retries();
            let (due, later) = std::mem::take(&mut *retries)
                .into_iter()
                .partition(|retry| retry.due <= now);
            *retries = later;
            due
        };
        for retry in due {
            // Never take it from another consumer that claimed it after its ack wait: that
            // claim reset its idle time, which is then less than the time since this consumer
            // received it, minus the ack wait.
            let min_idle = now
                .saturating_duration_since(retry.received)
                .saturating_sub(self.ack_wait);
            let key = &retry.at.key;
            let mut conn = intake.inner.conn.clone();
            let reply: Value = redis::cmd("XCLAIM")
                .arg(key)
                .arg(self.group())
                .arg(&intake.origin.consumer)
                .arg(ms(min_idle))
                .arg(&retry.at.entry)
                .query_async(&mut conn)
                .await
                .map_err(|error| Failure::of("XCLAIM", key, error))?;
            let entries =
                keys::entries(&reply).map_err(|detail| Failure::reply("XCLAIM", key, detail))?;
            if entries.is_empty() {
                tracing::debug!(entry = %retry.at.entry, stream = %retry.at.name, "a nacked entry was settled or claimed meanwhile");
            }
            self.receive_counted(intake, key, entries).await?;
        }
        Ok(())
    }

    /// `XAUTOCLAIM` on every stream: the entries pending longer than the ack wait on any
    /// consumer of the group. Each stream's claim goes on where the last one stopped, so a
    /// long pending list is swept a page per round. Entries trimmed while pending are reported
    /// (Redis drops them from the pending list as it returns their ids).
    async fn claim_round(&self, intake: &mut Intake) -> Result<(), Failure> {
        let min_idle = ms(self.ack_wait);
        let cursors: Vec<(String, String)> = intake
            .streams
            .iter()
            .map(|stream| (stream.key.clone(), stream.claim_cursor.clone()))
            .collect();
        for (key, start) in cursors {
            let mut conn = intake.inner.conn.clone();
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(self.group())
                .arg(&intake.origin.consumer)
                .arg(min_idle)
                .arg(&start)
                .arg("COUNT")
                .arg(CLAIM_BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|error| Failure::of("XAUTOCLAIM", &key, error))?;
            let (cursor, claimed, deleted) = keys::autoclaim_reply(&reply)
                .map_err(|detail| Failure::reply("XAUTOCLAIM", &key, detail))?;
            if let Some(stream) = intake.streams.get_mut(&key) {
                stream.claim_cursor = cursor;
            }
            for entry in &deleted {
                intake.report_trimmed(&key, entry);
            }
            if !claimed.is_empty() {
                tracing::info!(
                    key,
                    count = claimed.len(),
                    "claimed entries left unsettled past the ack wait"
                );
            }
            self.receive_counted(intake, &key, claimed).await?;
        }
        Ok(())
    }

    /// Receives entries whose delivery count is in the pending list (re-read, claimed).
    async fn receive_counted(
        &self,
        intake: &mut Intake,
        key: &str,
        entries: Vec<Entry>,
    ) -> Result<(), Failure> {
        if entries.is_empty() {
            return Ok(());
        }
        // The replies of a re-read and of a claim do not say how often an entry was
        // delivered: the pending list does, asked for all of them in one round trip.
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("XPENDING")
                .arg(key)
                .arg(self.group())
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let mut conn = intake.inner.conn.clone();
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
                    intake.report_trimmed(key, &entry.id);
                }
                continue;
            };
            self.receive(intake, key, entry, count.max(1)).await?;
        }
        Ok(())
    }

    /// Receives an entry as its `attempt`-th delivery: to the buffer, or settled here.
    async fn receive(
        &self,
        intake: &mut Intake,
        key: &str,
        entry: Entry,
        attempt: u32,
    ) -> Result<(), Failure> {
        let max = intake.origin.max_deliveries;
        match intake.receive(key, entry, attempt).await {
            Received::Ready(ready) if ready.attempt > max => {
                // Its last allowed delivery was never settled (the consumer died, or the ack
                // wait passed): dead-lettered here rather than delivered once more.
                let reason = not_settled(max);
                match dead_letter(&intake.inner, &intake.origin, &ready.event, max, &reason).await {
                    Ok(()) => self.ack(intake, key, &ready.at.entry).await?,
                    Err(error) => {
                        tracing::error!(%error, "cannot store the dead letter; the entry stays pending");
                    }
                }
            }
            Received::Ready(ready) => intake.buffer.push_back(ready),
            Received::Done(entry) => self.ack(intake, key, &entry).await?,
            Received::Left => {}
        }
        Ok(())
    }

    /// Acknowledges an entry the subscription settled itself.
    async fn ack(&self, intake: &Intake, key: &str, entry: &str) -> Result<(), Failure> {
        intake
            .inner
            .ack(key, self.group(), entry)
            .await
            .map_err(Failure::Connection)
    }

    /// A delivery of `ready`, settled in the group.
    pub(super) fn hand_out(&self, intake: &Intake, ready: Ready) -> Box<dyn Delivery> {
        let settlement = Settlement::Group {
            shared: Arc::clone(&self.shared),
            received: ready.received,
        };
        intake.deliver(ready, settlement)
    }

    /// Creates the group on the streams that do not have it yet, from the group's start: a
    /// stream found after the group began is read from its first entry published since, not
    /// from the moment it was found.
    async fn ensure_groups(&self, intake: &mut Intake) -> Result<(), Failure> {
        let mut conn = intake.inner.conn.clone();
        let start = intake.streams.start().to_owned();
        for stream in intake.streams.iter_mut().filter(|stream| !stream.has_group) {
            create_group(&mut conn, &stream.key, self.group(), &start).await?;
            stream.has_group = true;
        }
        Ok(())
    }

    /// The group vanished (`NOGROUP`): writes its record again and creates it on every
    /// stream, each from the last entry this subscription received there.
    pub(super) async fn recreate(&mut self, intake: &mut Intake) -> Result<(), Failure> {
        let group = self.group().to_owned();
        tracing::warn!(
            group,
            "the consumer group is gone (Redis flushed, or restarted without persistence): \
             creating it again"
        );
        intake
            .inner
            .stats
            .groups_recreated
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conn = intake.inner.conn.clone();
        let record = intake.inner.keys.group(&group);
        let start_ms = keys::id_key(intake.streams.start()).0.saturating_add(1);
        redis::cmd("HSET")
            .arg(&record)
            .arg("pattern")
            .arg(&intake.pattern)
            .arg("start")
            .arg(start_ms)
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|error| Failure::of("HSET", &record, error))?;
        for stream in intake.streams.iter_mut() {
            create_group(&mut conn, &stream.key, &group, &stream.cursor).await?;
            stream.has_group = true;
            stream.claim_cursor = "0-0".to_owned();
        }
        // The pending list went with the group: nothing nacked is left to claim back.
        self.shared.retries().clear();
        Ok(())
    }

    /// As the subscription closes: hands its pending entries back to the group and removes
    /// its consumer, in the background; gives its slot back.
    pub(super) fn close(&self, intake: &Intake, span: &tracing::Span) {
        let inner = Arc::clone(&intake.inner);
        let keys = intake.streams.keys();
        let group = self.group().to_owned();
        let consumer = intake.origin.consumer.clone();
        let slot = self.slot;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner.release_slot(&group, slot);
            return;
        };
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
                // Deleting a consumer deletes its pending entries: only once none is left.
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
                // Only now may a new subscription be this consumer again.
                inner.release_slot(&group, slot);
                tracing::debug!("subscription closed");
            }
            .instrument(span.clone()),
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
            inner.hand_back(key, group, consumer, &ids).await?;
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

/// `XGROUP CREATE <key> <group> <start> MKSTREAM` (a literal pattern's stream may not exist
/// yet); a group that exists already is fine.
async fn create_group(
    conn: &mut ConnectionManager,
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
