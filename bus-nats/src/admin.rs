//! What an operator asks of the broker rather than of a subscription: the groups (the durable
//! consumers of the streams), and the dead letters stored in the dead letters' stream, read
//! back and deleted.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, ReplayPolicy, pull};
use async_nats::jetstream::context::RequestErrorKind;
use async_nats::jetstream::stream::{self, DeleteMessageErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::{ErrorCode, Message};
use bus_core::transport::{
    DEAD_LETTER_PREFIX, GroupInfo, GroupStats, StoredDeadLetter, TransportError, WireEvent,
    dead_letter_name,
};
use futures_util::{StreamExt, TryStreamExt};

use crate::connection::Inner;
use crate::error::{NatsError, invalid};
use crate::names;
use crate::streams::DeadLetters;

/// How many messages one pull request of [`dead_letters`] asks for at most.
const READ_BATCH: u64 = 256;

/// How long the server keeps the consumer [`dead_letters`] reads with, should the reader die
/// before deleting it.
const READER_INACTIVE: Duration = Duration::from_secs(60);

/// A group as the streams know it, while the consumers of both streams are summed.
struct Found {
    group: String,
    pattern: String,
    lag: u64,
    pending: u64,
    waiting: u64,
}

/// The group's name and pattern from a consumer's description, as the subscriptions write it
/// (`` bus group `<group>` on `<pattern>` ``).
fn described(description: Option<&str>) -> Option<(String, String)> {
    let rest = description?
        .strip_prefix("bus group `")?
        .strip_suffix('`')?;
    let (group, pattern) = rest.rsplit_once("` on `")?;
    Some((group.to_owned(), pattern.to_owned()))
}

/// The streams of the transport: the events', and the dead letters' when apart.
fn all_streams(inner: &Inner) -> Vec<stream::Stream> {
    let mut streams = vec![inner.streams.events.clone()];
    if let DeadLetters::Apart { stream, .. } = &inner.streams.dead_letters {
        streams.push(stream::Stream::clone(stream));
    }
    streams
}

/// The stream the dead letters live in.
fn dead_letter_stream(inner: &Inner) -> &stream::Stream {
    match &inner.streams.dead_letters {
        DeadLetters::Apart { stream, .. } => stream,
        DeadLetters::Shared => &inner.streams.events,
    }
}

/// An error of a JetStream request on `stream`, `Unreachable` when the request got no answer.
fn request_error(
    stream: &stream::Stream,
    what: &'static str,
    unanswered: bool,
    detail: String,
) -> TransportError {
    let error = NatsError::Admin {
        what,
        stream: stream.cached_info().config.name.clone(),
        detail,
    };
    if unanswered {
        error.unreachable()
    } else {
        error.broker()
    }
}

/// Every durable consumer of the streams, as a group: named and patterned after its
/// description (its name and filter for a consumer the subscriptions did not create), with its
/// `num_pending` (lag), `num_ack_pending` (pending) and `num_waiting` (the pull requests
/// waiting: about one per idle subscription). A group on both streams (`>`) is summed; its
/// members are the most waiting on one.
pub(crate) async fn groups(inner: &Inner) -> Result<Vec<GroupInfo>, TransportError> {
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for stream in all_streams(inner) {
        let mut consumers = stream.consumers();
        loop {
            let info = match consumers.try_next().await {
                Ok(Some(info)) => info,
                Ok(None) => break,
                Err(error) => {
                    let unanswered = matches!(
                        error.kind(),
                        RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
                    );
                    return Err(request_error(
                        &stream,
                        "list the consumers",
                        unanswered,
                        error.to_string(),
                    ));
                }
            };
            if info.config.durable_name.is_none() {
                continue;
            }
            let (group, pattern) =
                described(info.config.description.as_deref()).unwrap_or_else(|| {
                    let filter = &info.config.filter_subject;
                    let pattern = inner
                        .streams
                        .name_of(filter)
                        .unwrap_or_else(|| filter.clone());
                    (info.name.clone(), pattern)
                });
            let entry = found.entry(info.name.clone()).or_insert(Found {
                group,
                pattern,
                lag: 0,
                pending: 0,
                waiting: 0,
            });
            entry.lag = entry.lag.saturating_add(info.num_pending);
            let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
            entry.pending = entry.pending.saturating_add(count(info.num_ack_pending));
            entry.waiting = entry.waiting.max(count(info.num_waiting));
        }
    }
    let mut groups: Vec<GroupInfo> = found
        .into_values()
        .map(|found| {
            GroupInfo::new(found.group, found.pattern)
                .with_stats(GroupStats::new(found.lag, found.pending))
                .with_consumers(found.waiting)
        })
        .collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(groups)
}

/// Whether `name` is a dead letter's: `dead-letter.<event>`.
fn is_dead_letter(name: &str) -> bool {
    name.strip_prefix(DEAD_LETTER_PREFIX)
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
}

/// The dead letters of the events matching `events`: every message of the dead letters'
/// stream under the pattern's filter, read by an ephemeral consumer of its own (from the first
/// message, no acks, deleted at the end) up to the count the stream had when it was created;
/// a letter's position is its stream sequence. Messages that do not decode are left out.
pub(crate) async fn dead_letters(
    inner: &Inner,
    events: &str,
) -> Result<Vec<StoredDeadLetter>, TransportError> {
    names::check_pattern(events).map_err(|reason| invalid("pattern", events, reason))?;
    let mut letters = Vec::new();
    for route in inner.streams.routes(&dead_letter_name(events)) {
        let config = pull::Config {
            description: Some("bus dead letters, read back".to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            filter_subject: route.filter.clone(),
            replay_policy: ReplayPolicy::Instant,
            inactive_threshold: READER_INACTIVE,
            ..Default::default()
        };
        let consumer: PullConsumer =
            route
                .stream
                .create_consumer(config)
                .await
                .map_err(|error| {
                    let unanswered = matches!(
                        error.kind(),
                        stream::ConsumerErrorKind::TimedOut | stream::ConsumerErrorKind::Request
                    );
                    request_error(
                        &route.stream,
                        "create a consumer to read the dead letters",
                        unanswered,
                        error.to_string(),
                    )
                })?;
        let read = read_all(inner, &route.stream, &consumer, &mut letters).await;
        let name = consumer.cached_info().name.clone();
        if let Err(error) = route.stream.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, %error, "reader not deleted; the server drops it when inactive");
        }
        read?;
    }
    Ok(letters)
}

/// Reads the messages `consumer` had pending when created into `letters`.
async fn read_all(
    inner: &Inner,
    stream: &stream::Stream,
    consumer: &PullConsumer,
    letters: &mut Vec<StoredDeadLetter>,
) -> Result<(), TransportError> {
    let mut left = consumer.cached_info().num_pending;
    while left > 0 {
        let asked = left.min(READ_BATCH);
        let mut batch = consumer
            .batch()
            .max_messages(usize::try_from(asked).unwrap_or(usize::MAX))
            .expires(inner.config.request_timeout)
            .messages()
            .await
            .map_err(|error| {
                request_error(stream, "read the dead letters", true, error.to_string())
            })?;
        let mut got = 0_u64;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|error| {
                request_error(stream, "read the dead letters", true, error.to_string())
            })?;
            got += 1;
            if let Some(letter) = decode(inner, &message) {
                letters.push(letter);
            }
        }
        if got == 0 {
            break;
        }
        left = left.saturating_sub(got);
    }
    Ok(())
}

/// A message of the dead letters' stream as a stored dead letter, if it decodes as one.
fn decode(inner: &Inner, message: &Message) -> Option<StoredDeadLetter> {
    let sequence = message.info().ok()?.stream_sequence;
    let letter = WireEvent::from_headers(
        names::header_pairs(message.headers.as_ref()),
        message.payload.clone(),
        inner.config.max_payload,
    );
    match letter {
        Ok(letter)
            if is_dead_letter(&letter.ty)
                && inner.streams.is_subject_of(&message.subject, &letter.ty) =>
        {
            Some(StoredDeadLetter::new(letter, sequence.to_string()))
        }
        Ok(letter) => {
            tracing::debug!(sequence, name = %letter.ty, "not a dead letter on its subject: left out");
            None
        }
        Err(error) => {
            tracing::debug!(sequence, %error, "a dead letter that does not decode: left out");
            None
        }
    }
}

/// Deletes each letter from the dead letters' stream by its sequence, once the message there
/// is checked to be that letter (its `ce-id`); how many were deleted.
pub(crate) async fn delete_dead_letters(
    inner: &Inner,
    letters: &[StoredDeadLetter],
) -> Result<u64, TransportError> {
    let stream = dead_letter_stream(inner);
    let mut deleted = 0_u64;
    for stored in letters {
        if !is_dead_letter(&stored.letter.ty) {
            continue;
        }
        let Ok(sequence) = stored.position.parse::<u64>() else {
            continue;
        };
        let message = match stream.get_raw_message(sequence).await {
            Ok(message) => message,
            Err(error) => match error.kind() {
                LastRawMessageErrorKind::NoMessageFound => continue,
                LastRawMessageErrorKind::JetStream(server)
                    if server.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                {
                    continue;
                }
                _ => {
                    return Err(request_error(
                        stream,
                        "read a dead letter",
                        false,
                        error.to_string(),
                    ));
                }
            },
        };
        let id = names::header_pairs(Some(&message.headers))
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("ce-id"))
            .and_then(|(name, value)| bus_core::transport::decode_header_value(name, value).ok());
        if id.as_deref() != Some(stored.letter.id.as_str()) {
            tracing::debug!(sequence, "another message is at this sequence: not deleted");
            continue;
        }
        match stream.delete_message(sequence).await {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(error) => match error.kind() {
                DeleteMessageErrorKind::JetStream(server)
                    if server.error_code() == ErrorCode::NO_MESSAGE_FOUND => {}
                kind => {
                    let unanswered = matches!(
                        kind,
                        DeleteMessageErrorKind::TimedOut | DeleteMessageErrorKind::Request
                    );
                    return Err(request_error(
                        stream,
                        "delete a dead letter",
                        unanswered,
                        error.to_string(),
                    ));
                }
            },
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_read_from_the_descriptions_the_subscriptions_write() {
        assert_eq!(
            described(Some("bus group `billing` on `orders.>`")),
            Some(("billing".to_owned(), "orders.>".to_owned()))
        );
        assert_eq!(
            described(Some("bus group `a` on `b` on `c.*`")),
            Some(("a` on `b".to_owned(), "c.*".to_owned()))
        );
        assert_eq!(described(Some("bus subscription to `a.*`")), None);
        assert_eq!(described(Some("made by hand")), None);
        assert_eq!(described(None), None);
    }

    #[test]
    fn dead_letter_names() {
        assert!(is_dead_letter("dead-letter.a.b"));
        assert!(!is_dead_letter("dead-letter."));
        assert!(!is_dead_letter("dead-letter"));
        assert!(!is_dead_letter("dead-letters.a"));
        assert!(!is_dead_letter("a.dead-letter.b"));
    }
}
