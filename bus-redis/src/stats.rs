//! Where a consumer group stands ([`Transport::group_stats`](bus_core::transport::Transport::group_stats)):
//! its `XINFO GROUPS` entry on each stream of its pattern, summed, with the lag counted here
//! where Redis leaves it nil.

use std::sync::LazyLock;

use bus_core::transport::{GroupStats, SubscribeOptions, TransportError};
use redis::{Script, Value};

use crate::connection::Inner;
use crate::error::{RedisError, invalid};
use crate::keys::{self, Matcher};

/// How many entries one call of [`COUNT_SCRIPT`] counts at most: a bound on the time a count
/// holds the server.
const COUNT_PAGE: u64 = 1000;

/// Counts the entries of stream `KEYS[1]` from `ARGV[1]` (an `XRANGE` start, `(<id>` for
/// "after"), `ARGV[2]` at most: returns the count and the last id counted (`''` for none). In
/// the server, so that counting sends no entry over the network.
const COUNT_SCRIPT: &str = r"
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local n = #entries
if n == 0 then return {0, ''} end
return {n, entries[n][1]}
";

static COUNT: LazyLock<Script> = LazyLock::new(|| Script::new(COUNT_SCRIPT));

/// What one stream says of a group.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct OnStream {
    /// Whether the group exists on the stream.
    has_group: bool,
    lag: u64,
    pending: u64,
    /// The group's consumers on the stream.
    consumers: u64,
}

/// Where a group stands, over the streams of its pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The pattern of the group's record (or the one asked about, for a group without one).
    pub(crate) pattern: String,
    pub(crate) stats: GroupStats,
    /// The most consumers the group has on one of its streams.
    pub(crate) consumers: u64,
}

/// The group's stats, summed over the streams of its pattern (the pattern of its record, which
/// is the one its subscriptions read; `options.pattern` for a group without a record):
///
/// - `pending` is the length of the group's pending list (`XINFO GROUPS` `pending`): entries
///   read by a member and not acknowledged, nacked ones waiting for their delay and those
///   handed back by a closed subscription included; an entry trimmed while pending stays
///   counted until a claim drops it.
/// - `lag` is the entries past the group's last-delivered id: `XINFO GROUPS` `lag`, at most the
///   stream's length (`XLEN`: trimming only removes the oldest entries, so when Redis counts
///   trimmed ones the whole stream is past the group). Where Redis leaves `lag` nil (a group
///   created at an id between entries, as every group created on a stream with history is,
///   until it reads the stream's last entry; entries deleted with `XDEL` past its position;
///   Redis before 7), they are counted: the stream's length when its first entry is past the
///   group's id, else `XRANGE (<last-delivered-id> +` counted in the server a page at a time,
///   which costs time in proportion to the lag. A stream of the pattern without the group yet
///   (a subscription creates it there when it finds the stream, from the group's start) counts
///   its entries past the group's start.
///
/// `None` for options without a group, and for a group with neither a record nor a consumer
/// group on any stream of the pattern.
pub(crate) async fn group_stats(
    inner: &Inner,
    options: &SubscribeOptions,
) -> Result<Option<GroupStats>, TransportError> {
    let Some(group) = &options.group else {
        return Ok(None);
    };
    keys::check_pattern(&options.pattern)
        .map_err(|reason| invalid("pattern", &options.pattern, reason))?;
    Ok(summary(inner, group, &options.pattern)
        .await?
        .map(|summary| summary.stats))
}

/// Where `group` stands (see [`group_stats`]), and its consumers; `pattern_asked` for a group
/// without a record. `None` for a group with neither a record nor a consumer group on any stream of
/// the pattern.
pub(crate) async fn summary(
    inner: &Inner,
    group: &str,
    pattern_asked: &str,
) -> Result<Option<Summary>, TransportError> {
    let record = inner.keys.group(group);
    let mut conn = inner.conn.clone();
    let (pattern, start): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(&record)
        .arg("pattern")
        .arg("start")
        .query_async(&mut conn)
        .await
        .map_err(|error| RedisError::command("HMGET", &record, error))?;
    // Where a subscription creates the group on a stream it finds.
    let start = start
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(keys::id_before_ms);
    let pattern = pattern.unwrap_or_else(|| pattern_asked.to_owned());
    let matcher = Matcher::new(&pattern);
    let names = if matcher.is_literal() {
        vec![pattern.clone()]
    } else {
        inner.names_matching(&matcher).await?
    };
    let mut known = start.is_some();
    let (mut lag, mut pending, mut consumers) = (0_u64, 0_u64, 0_u64);
    for name in names {
        let on = on_stream(inner, &inner.keys.stream(&name), group, start.as_deref()).await?;
        known |= on.has_group;
        lag = lag.saturating_add(on.lag);
        pending = pending.saturating_add(on.pending);
        consumers = consumers.max(on.consumers);
    }
    Ok(known.then(|| Summary {
        pattern,
        stats: GroupStats::new(lag, pending),
        consumers,
    }))
}

/// What stream `key` says of `group`; a stream that does not exist has no entries and no
/// group.
async fn on_stream(
    inner: &Inner,
    key: &str,
    group: &str,
    start: Option<&str>,
) -> Result<OnStream, TransportError> {
    let mut conn = inner.conn.clone();
    let reply: Result<(Value, u64), redis::RedisError> = redis::pipe()
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .cmd("XLEN")
        .arg(key)
        .query_async(&mut conn)
        .await;
    let (groups, length) = match reply {
        Ok(reply) => reply,
        Err(error) if is_no_such_key(&error) => return Ok(OnStream::default()),
        Err(error) => return Err(RedisError::command("XINFO", key, error)),
    };
    let groups = keys::groups_reply(&groups).map_err(|detail| {
        RedisError::Reply {
            command: "XINFO",
            key: key.to_owned(),
            detail,
        }
        .broker()
    })?;
    let Some(info) = groups.into_iter().find(|info| info.name == group) else {
        let lag = match start {
            Some(start) => count_after(inner, key, start, length).await?,
            None => 0,
        };
        return Ok(OnStream {
            has_group: false,
            lag,
            pending: 0,
            consumers: 0,
        });
    };
    let lag = match info.lag {
        Some(lag) => lag.min(length),
        None => count_after(inner, key, &info.last_delivered, length).await?,
    };
    Ok(OnStream {
        has_group: true,
        lag,
        pending: info.pending,
        consumers: info.consumers.unwrap_or(0),
    })
}

/// Whether `error` is `XINFO` on a key that does not exist.
fn is_no_such_key(error: &redis::RedisError) -> bool {
    error
        .detail()
        .is_some_and(|detail| detail.eq_ignore_ascii_case("no such key"))
}

/// The entries of stream `key` (of `length` entries) after entry id `after`.
async fn count_after(
    inner: &Inner,
    key: &str,
    after: &str,
    length: u64,
) -> Result<u64, TransportError> {
    if length == 0 {
        return Ok(0);
    }
    let mut conn = inner.conn.clone();
    let first: Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .map_err(|error| RedisError::command("XRANGE", key, error))?;
    let first = keys::entries(&first).map_err(|detail| {
        RedisError::Reply {
            command: "XRANGE",
            key: key.to_owned(),
            detail,
        }
        .broker()
    })?;
    match first.first() {
        None => return Ok(0),
        Some(entry) if keys::id_key(&entry.id) > keys::id_key(after) => return Ok(length),
        Some(_) => {}
    }
    let mut from = after.to_owned();
    let mut total = 0_u64;
    loop {
        let (counted, last): (u64, String) = COUNT
            .key(key)
            .arg(format!("({from}"))
            .arg(COUNT_PAGE)
            .invoke_async(&mut conn)
            .await
            .map_err(|error| RedisError::command("XRANGE", key, error))?;
        total = total.saturating_add(counted);
        if counted < COUNT_PAGE || last.is_empty() {
            return Ok(total.min(length));
        }
        from = last;
    }
}
