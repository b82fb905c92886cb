//! What an operator asks of the broker rather than of a subscription: the groups (their
//! records, and `XINFO GROUPS` on their streams), and the dead letters stored in the
//! `dead-letter.<name>` streams, read back (`XRANGE`) and deleted (`XACK` in every group of the
//! stream, then `XDEL`).

use std::sync::LazyLock;

use bus_core::transport::{
    DEAD_LETTER_PREFIX, GroupInfo, StoredDeadLetter, TransportError, dead_letter_name,
    encode_header_value,
};
use redis::{Script, Value};

use crate::connection::Inner;
use crate::error::{RedisError, invalid};
use crate::keys::{self, Matcher};

/// How many entries one `XRANGE` of [`dead_letters`] reads, and one call of [`DELETE_SCRIPT`]
/// deletes, at most.
const PAGE: usize = 500;

/// Deletes from stream `KEYS[1]` the entries `ARGV[1], ARGV[3], ...` whose `ce-id` field is
/// `ARGV[2], ARGV[4], ...` (as stored: percent-encoded): first acknowledged in every group of
/// the stream, so that no group finds them missing from its pending list, then `XDEL`.
/// Returns how many were deleted.
const DELETE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ids = {}
for i = 1, #ARGV, 2 do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 1 then
    local fields = found[1][2]
    for j = 1, #fields, 2 do
      if string.lower(fields[j]) == 'ce-id' then
        if fields[j + 1] == ARGV[i + 1] then table.insert(ids, ARGV[i]) end
        break
      end
    end
  end
end
if #ids == 0 then return 0 end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for k = 1, #group, 2 do
    if group[k] == 'name' then redis.call('XACK', KEYS[1], group[k + 1], unpack(ids)) end
  end
end
return redis.call('XDEL', KEYS[1], unpack(ids))
";

static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_SCRIPT));

/// Every group with a record (`<prefix>:group:<group>`, found with `SCAN`), by name: its
/// pattern, its stats ([`group_stats`](crate::stats::group_stats)) and the most consumers it
/// has on one of its streams (`XINFO GROUPS`).
pub(crate) async fn groups(inner: &Inner) -> Result<Vec<GroupInfo>, TransportError> {
    let glob = inner.keys.group_glob();
    let mut conn = inner.conn.clone();
    let mut names = Vec::new();
    let mut cursor = 0_u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&glob)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("hash")
            .query_async(&mut conn)
            .await
            .map_err(|error| RedisError::command("SCAN", &glob, error))?;
        names.extend(
            found
                .iter()
                .filter_map(|key| inner.keys.group_of(key))
                .map(str::to_owned),
        );
        if next == 0 {
            break;
        }
        cursor = next;
    }
    names.sort();
    names.dedup();
    let mut groups = Vec::with_capacity(names.len());
    for name in names {
        let record = inner.keys.group(&name);
        let pattern: Option<String> = redis::cmd("HGET")
            .arg(&record)
            .arg("pattern")
            .query_async(&mut conn)
            .await
            .map_err(|error| RedisError::command("HGET", &record, error))?;
        // Not a record of this transport's (or removed meanwhile).
        let Some(pattern) = pattern.filter(|pattern| keys::check_pattern(pattern).is_ok()) else {
            continue;
        };
        let Some(summary) = crate::stats::summary(inner, &name, &pattern).await? else {
            continue;
        };
        groups.push(
            GroupInfo::new(name, summary.pattern)
                .with_stats(summary.stats)
                .with_consumers(summary.consumers),
        );
    }
    Ok(groups)
}

/// Whether `name` is a dead letter's: `dead-letter.<event>`.
fn is_dead_letter(name: &str) -> bool {
    name.strip_prefix(DEAD_LETTER_PREFIX)
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
}

/// The dead letters of the events matching `events`: the entries of every stream
/// `dead-letter.<name>` the pattern matches (`XRANGE`, a page at a time), oldest first across
/// the streams; a letter's position is its entry id. Entries that do not decode are left out.
pub(crate) async fn dead_letters(
    inner: &Inner,
    events: &str,
) -> Result<Vec<StoredDeadLetter>, TransportError> {
    keys::check_pattern(events).map_err(|reason| invalid("pattern", events, reason))?;
    let matcher = Matcher::new(&dead_letter_name(events));
    let mut letters: Vec<(String, StoredDeadLetter)> = Vec::new();
    let mut conn = inner.conn.clone();
    for name in inner.names_matching(&matcher).await? {
        let key = inner.keys.stream(&name);
        let mut from = "-".to_owned();
        loop {
            let reply: Value = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await
                .map_err(|error| RedisError::command("XRANGE", &key, error))?;
            let entries = keys::entries(&reply).map_err(|detail| {
                RedisError::Reply {
                    command: "XRANGE",
                    key: key.clone(),
                    detail,
                }
                .broker()
            })?;
            let count = entries.len();
            for entry in entries {
                from = format!("({}", entry.id);
                let Some(fields) = entry.fields else {
                    continue;
                };
                match keys::decode(&name, &fields, inner.config.max_payload) {
                    Ok(letter) => {
                        letters.push((entry.id.clone(), StoredDeadLetter::new(letter, entry.id)));
                    }
                    Err(error) => {
                        tracing::debug!(
                            stream = %key,
                            entry = %entry.id,
                            %error,
                            "a dead letter that does not decode: left out"
                        );
                    }
                }
            }
            if count < PAGE {
                break;
            }
        }
    }
    letters.sort_by_key(|(id, _)| keys::id_key(id));
    Ok(letters.into_iter().map(|(_, letter)| letter).collect())
}

/// Deletes the letters, stream by stream ([`DELETE_SCRIPT`]): an entry is deleted only if its
/// `ce-id` is the letter's; how many were.
pub(crate) async fn delete_dead_letters(
    inner: &Inner,
    letters: &[StoredDeadLetter],
) -> Result<u64, TransportError> {
    let mut by_stream: std::collections::BTreeMap<&str, Vec<&StoredDeadLetter>> =
        std::collections::BTreeMap::new();
    for stored in letters {
        if is_dead_letter(&stored.letter.ty) && keys::check_name(&stored.letter.ty).is_ok() {
            by_stream.entry(&stored.letter.ty).or_default().push(stored);
        }
    }
    let mut conn = inner.conn.clone();
    let mut deleted = 0_u64;
    for (name, stored) in by_stream {
        let key = inner.keys.stream(name);
        for page in stored.chunks(PAGE) {
            let mut invocation = DELETE.key(&key);
            for letter in page {
                invocation
                    .arg(&letter.position)
                    .arg(encode_header_value(&letter.letter.id).as_ref());
            }
            let count: u64 = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|error| RedisError::command("XDEL", &key, error))?;
            deleted += count;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_names() {
        assert!(is_dead_letter("dead-letter.a.b"));
        assert!(!is_dead_letter("dead-letter."));
        assert!(!is_dead_letter("dead-letters.a"));
        assert!(!is_dead_letter("a.dead-letter.b"));
    }
}
