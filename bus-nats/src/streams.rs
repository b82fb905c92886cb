//! The transport's streams and where each name lives: the events' stream (`<prefix>.>`), the
//! dead letters' stream (`<prefix>-dead-letter.>`), their limits, and setting them up at
//! connect without overwriting the limits an operator gave an existing stream.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::{self, ErrorCode, stream};
use bus_core::transport::{DEAD_LETTER_PREFIX, Retention, TransportError};
use futures_util::TryStreamExt;

use crate::connection::Config;
use crate::error::NatsError;

/// The most replicas JetStream keeps of a stream.
pub(crate) const MAX_REPLICAS: usize = 5;

/// The longest `max_age` JetStream takes (nanoseconds in an `i64`: about 292 years).
const LONGEST_AGE: Duration = Duration::from_nanos(i64::MAX.unsigned_abs());

/// The limits of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `max_age`; zero for none.
    pub(crate) max_age: Duration,
    /// `max_msgs`; -1 for none.
    pub(crate) max_messages: i64,
    /// `max_bytes`; -1 for none.
    pub(crate) max_bytes: i64,
}

impl Limits {
    /// No limit at all.
    pub(crate) const NONE: Limits = Limits {
        max_age: Duration::ZERO,
        max_messages: -1,
        max_bytes: -1,
    };

    /// The limits of a retention list: each one applies (the last of a kind wins), and
    /// [`Retention::Unbounded`] adds none. A limit of zero is refused: it would keep nothing
    /// (JetStream reads 0 as "no limit", which is `Unbounded`).
    pub(crate) fn new(retention: &[Retention]) -> Result<Limits, String> {
        const ZERO: &str =
            "a limit of 0 would keep nothing; for no limit, use Retention::Unbounded";
        let mut limits = Limits::NONE;
        for limit in retention {
            match *limit {
                Retention::Unbounded => {}
                Retention::MaxLen(0) | Retention::MaxBytes(0) => return Err(ZERO.to_owned()),
                Retention::MaxAge(age) if age.is_zero() => return Err(ZERO.to_owned()),
                Retention::MaxLen(messages) => {
                    limits.max_messages = i64::try_from(messages).unwrap_or(i64::MAX);
                }
                Retention::MaxBytes(bytes) => {
                    limits.max_bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                }
                Retention::MaxAge(age) => limits.max_age = age.min(LONGEST_AGE),
                other => return Err(format!("{other:?} is not a limit bus-nats knows")),
            }
        }
        Ok(limits)
    }

    /// The limits of a stream's configuration (0 and -1 both read as "none").
    fn of(config: &stream::Config) -> Limits {
        let none_below_one = |value: i64| if value < 1 { -1 } else { value };
        Limits {
            max_age: config.max_age,
            max_messages: none_below_one(config.max_messages),
            max_bytes: none_below_one(config.max_bytes),
        }
    }

    /// The duplicate window a stream with these limits can have: JetStream refuses one longer
    /// than the stream's `max_age`.
    pub(crate) fn window(&self, wanted: Duration) -> Duration {
        if self.max_age.is_zero() {
            wanted
        } else {
            wanted.min(self.max_age)
        }
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |value: i64| match value {
            ..=0 => "none".to_owned(),
            value => value.to_string(),
        };
        let age = match self.max_age {
            Duration::ZERO => "none".to_owned(),
            age => format!("{age:?}"),
        };
        write!(
            f,
            "max_age {age}, max_msgs {}, max_bytes {}",
            count(self.max_messages),
            count(self.max_bytes)
        )
    }
}

/// Where the dead letters live.
#[derive(Debug)]
pub(crate) enum DeadLetters {
    /// In a stream of their own, under `<root>.<event>`.
    Apart {
        /// The dead letters' stream (boxed: a stream handle holds its whole info).
        stream: Box<stream::Stream>,
        /// `<prefix>-dead-letter`.
        root: String,
    },
    /// In the events' stream, under `<prefix>.dead-letter.<event>`: a stream set up before
    /// dead letters had a stream of their own, which holds some.
    Shared,
}

/// The streams of a connected transport, and where each name and pattern lives.
#[derive(Debug)]
pub(crate) struct Streams {
    /// The events' stream (and the dead letters', when they are [`DeadLetters::Shared`]).
    pub(crate) events: stream::Stream,
    /// Where the dead letters live.
    pub(crate) dead_letters: DeadLetters,
    /// The subject prefix.
    prefix: String,
}

/// Where the events a pattern matches live: a stream, and the consumer filter there.
pub(crate) struct Route {
    pub(crate) stream: stream::Stream,
    pub(crate) filter: String,
}

impl Streams {
    /// The subject of the event named `name`: `<root>.<event>` for a dead letter
    /// (`dead-letter.<event>`) kept apart, else `<prefix>.<name>`.
    pub(crate) fn subject(&self, name: &str) -> String {
        match (&self.dead_letters, dead_letter_of(name)) {
            (DeadLetters::Apart { root, .. }, Some(event)) => format!("{root}.{event}"),
            _ => format!("{}.{name}", self.prefix),
        }
    }

    /// Whether a message on `subject` may be the event named `name`: on its subject, or (for a
    /// dead letter) where dead letters were kept before they had a stream of their own.
    pub(crate) fn is_subject_of(&self, subject: &str, name: &str) -> bool {
        subject == self.subject(name)
            || subject
                .strip_prefix(self.prefix.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                == Some(name)
    }

    /// The name (or pattern) a subject (or filter) of either stream stands for.
    pub(crate) fn name_of(&self, subject: &str) -> Option<String> {
        if let DeadLetters::Apart { root, .. } = &self.dead_letters
            && let Some(event) = subject
                .strip_prefix(root.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
        {
            return Some(format!("{DEAD_LETTER_PREFIX}.{event}"));
        }
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .map(str::to_owned)
    }

    /// Whether `subject` is a dead letter's (in either place).
    pub(crate) fn is_dead_letter(&self, subject: &str) -> bool {
        let shared = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|name| dead_letter_of(name).is_some());
        let apart = match &self.dead_letters {
            DeadLetters::Apart { root, .. } => subject
                .strip_prefix(root.as_str())
                .is_some_and(|rest| rest.starts_with('.')),
            DeadLetters::Shared => false,
        };
        shared || apart
    }

    /// Where the events matching `pattern` live: the events' stream, the dead letters', or
    /// both (`>`, `*.>`: one consumer on each).
    pub(crate) fn routes(&self, pattern: &str) -> Vec<Route> {
        let DeadLetters::Apart { stream, root } = &self.dead_letters else {
            return vec![Route {
                stream: self.events.clone(),
                filter: format!("{}.{pattern}", self.prefix),
            }];
        };
        let (events, dead) = split_pattern(pattern);
        let mut routes = Vec::with_capacity(2);
        if events {
            routes.push(Route {
                stream: self.events.clone(),
                filter: format!("{}.{pattern}", self.prefix),
            });
        }
        if let Some(dead) = dead {
            routes.push(Route {
                stream: stream::Stream::clone(stream),
                filter: format!("{root}.{dead}"),
            });
        }
        routes
    }
}

/// The event a dead letter's name is of: `dead-letter.a.b` → `a.b`.
fn dead_letter_of(name: &str) -> Option<&str> {
    name.strip_prefix(DEAD_LETTER_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .filter(|event| !event.is_empty())
}

/// Which names a pattern matches: whether some may be events (not dead letters), and the
/// pattern the events of the dead letters it matches must match (`dead-letter.a.*` → `a.*`,
/// `*.>` → `>`, `>` → `>`).
fn split_pattern(pattern: &str) -> (bool, Option<&str>) {
    let (first, rest) = match pattern.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (pattern, None),
    };
    match first {
        ">" => (true, Some(">")),
        "*" => (true, rest),
        DEAD_LETTER_PREFIX => (rest.is_none(), rest),
        _ => (true, None),
    }
}

/// What one stream should be.
struct Wanted<'a> {
    name: &'a str,
    subject: String,
    limits: Limits,
    description: &'static str,
}

impl Wanted<'_> {
    fn config(&self, config: &Config) -> stream::Config {
        stream::Config {
            name: self.name.to_owned(),
            subjects: vec![self.subject.clone()],
            duplicate_window: self.limits.window(config.duplicate_window),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: self.limits.max_age,
            max_messages: self.limits.max_messages,
            max_bytes: self.limits.max_bytes,
            num_replicas: config.replicas,
            description: Some(self.description.to_owned()),
            ..Default::default()
        }
    }

    fn error(&self, detail: String) -> NatsError {
        NatsError::Stream {
            stream: self.name.to_owned(),
            subjects: self.subject.clone(),
            detail,
        }
    }
}

/// Gets or creates the events' stream and, unless an existing events' stream already holds
/// dead letters, the dead letters' one (first, so that a process connecting meanwhile sees
/// it). A stream created here gets the configured limits and replicas; an existing one keeps
/// its own (logged at `info` when they differ), and only its subjects and duplicate window are
/// brought to the configured ones.
pub(crate) async fn ensure(
    js: &jetstream::Context,
    config: &Config,
) -> Result<Streams, TransportError> {
    let events = Wanted {
        name: &config.stream_name,
        subject: config.subject(">"),
        limits: config.limits,
        description: "events of the bus event bus (bus-nats)",
    };
    let root = config.dead_letter_root();
    let dead = Wanted {
        name: &config.dead_letter_stream_name,
        subject: format!("{root}.>"),
        limits: config.dead_letter_limits,
        description: "dead letters of the bus event bus (bus-nats)",
    };
    let existing_dead = get(js, config, &dead).await?;
    let mut existing_events = None;
    let apart = match existing_dead {
        Some(_) => true,
        None => {
            existing_events = get(js, config, &events).await?;
            match &existing_events {
                Some(existing) => !holds_dead_letters(existing, config, &events).await?,
                None => true,
            }
        }
    };
    let dead_letters = if apart {
        DeadLetters::Apart {
            stream: Box::new(ensure_one(js, config, &dead, existing_dead).await?),
            root,
        }
    } else {
        tracing::info!(
            stream = %config.stream_name,
            dead_letters = %config.subject(&format!("{DEAD_LETTER_PREFIX}.>")),
            "the events' stream already holds dead letters: they stay there, under its limits \
             (dead_letter_retention does not apply); to keep them apart, replay or purge them \
             and restart every process: the next connect creates stream {}",
            config.dead_letter_stream_name
        );
        DeadLetters::Shared
    };
    let events = ensure_one(js, config, &events, existing_events).await?;
    Ok(Streams {
        events,
        dead_letters,
        prefix: config.prefix.clone(),
    })
}

/// The stream, if it exists.
async fn get(
    js: &jetstream::Context,
    config: &Config,
    wanted: &Wanted<'_>,
) -> Result<Option<stream::Stream>, TransportError> {
    match js.get_stream(wanted.name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(server)
                if server.code() == 404 || server.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            GetStreamErrorKind::Request => Err(NatsError::JetStreamUnavailable {
                url: config.url.to_string(),
                detail: error.to_string(),
            }
            .unreachable()),
            _ => Err(wanted.error(error.to_string()).broker()),
        },
    }
}

/// Whether an existing events' stream holds messages under `<prefix>.dead-letter.>`.
async fn holds_dead_letters(
    stream: &stream::Stream,
    config: &Config,
    wanted: &Wanted<'_>,
) -> Result<bool, TransportError> {
    let filter = config.subject(&format!("{DEAD_LETTER_PREFIX}.>"));
    let mut subjects = stream
        .info_with_subjects(&filter)
        .await
        .map_err(|error| wanted.error(error.to_string()).broker())?;
    let first = subjects
        .try_next()
        .await
        .map_err(|error| wanted.error(error.to_string()).broker())?;
    Ok(first.is_some())
}

/// Gets or creates one stream (unless `existing` has it already); brings an existing one's
/// subjects and duplicate window to the configured ones, and logs limits that differ.
async fn ensure_one(
    js: &jetstream::Context,
    config: &Config,
    wanted: &Wanted<'_>,
    existing: Option<stream::Stream>,
) -> Result<stream::Stream, TransportError> {
    let mut stream = match existing {
        Some(stream) => stream,
        None => create(js, config, wanted).await?,
    };
    let current = stream.cached_info().config.clone();
    let theirs = Limits::of(&current);
    if theirs != wanted.limits || current.num_replicas != config.replicas {
        tracing::info!(
            stream = %wanted.name,
            limits = %theirs,
            replicas = current.num_replicas,
            configured = %wanted.limits,
            configured_replicas = config.replicas,
            "the stream exists with other limits: it keeps them (an operator's settings win)"
        );
    }
    let subjects = vec![wanted.subject.clone()];
    let window = theirs.window(config.duplicate_window);
    if current.subjects != subjects || current.duplicate_window != window {
        tracing::info!(
            stream = %wanted.name,
            from = ?current.subjects,
            window = ?current.duplicate_window,
            to_window = ?window,
            "updating the stream's subjects and duplicate window"
        );
        let updated = stream::Config {
            subjects,
            duplicate_window: window,
            ..current
        };
        js.update_stream(updated)
            .await
            .map_err(|error| wanted.error(error.to_string()).broker())?;
        stream = js
            .get_stream(wanted.name)
            .await
            .map_err(|error| wanted.error(error.to_string()).broker())?;
    }
    Ok(stream)
}

/// Gets or creates a stream with the configured limits and replicas.
async fn create(
    js: &jetstream::Context,
    config: &Config,
    wanted: &Wanted<'_>,
) -> Result<stream::Stream, TransportError> {
    js.get_or_create_stream(wanted.config(config))
        .await
        .map_err(|error| match error.kind() {
            CreateStreamErrorKind::JetStreamUnavailable | CreateStreamErrorKind::TimedOut => {
                NatsError::JetStreamUnavailable {
                    url: config.url.to_string(),
                    detail: error.to_string(),
                }
                .unreachable()
            }
            CreateStreamErrorKind::JetStream(server)
                if config.replicas > 1
                    && [
                        ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
                        ErrorCode::CLUSTER_NO_PEERS,
                        ErrorCode::INSUFFICIENT_RESOURCES,
                    ]
                    .contains(&server.error_code()) =>
            {
                NatsError::Replicas {
                    stream: wanted.name.to_owned(),
                    replicas: config.replicas,
                    detail: error.to_string(),
                }
                .broker()
            }
            _ => wanted.error(error.to_string()).broker(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn retention_lists_become_stream_limits() {
        assert_eq!(Limits::new(&[Retention::Unbounded]), Ok(Limits::NONE));
        assert_eq!(Limits::new(&[]), Ok(Limits::NONE));
        let all = Limits::new(&[
            Retention::MaxAge(DAY),
            Retention::MaxLen(10),
            Retention::MaxBytes(1 << 20),
            Retention::Unbounded,
        ])
        .expect("valid");
        assert_eq!(
            all,
            Limits {
                max_age: DAY,
                max_messages: 10,
                max_bytes: 1 << 20,
            }
        );
        let last_wins = Limits::new(&[Retention::MaxLen(10), Retention::MaxLen(20)]);
        assert_eq!(last_wins.map(|limits| limits.max_messages), Ok(20));
        for zero in [
            Retention::MaxLen(0),
            Retention::MaxBytes(0),
            Retention::MaxAge(Duration::ZERO),
        ] {
            let error = Limits::new(&[zero]).expect_err("zero keeps nothing");
            assert!(error.contains("Unbounded"), "{error}");
        }
        let huge = Limits::new(&[
            Retention::MaxLen(u64::MAX),
            Retention::MaxAge(Duration::MAX),
        ])
        .expect("clamped, not refused");
        assert_eq!(huge.max_messages, i64::MAX);
        assert_eq!(huge.max_age, LONGEST_AGE);
    }

    #[test]
    fn the_duplicate_window_fits_in_the_max_age() {
        let two_minutes = Duration::from_secs(120);
        assert_eq!(Limits::NONE.window(two_minutes), two_minutes);
        let short = Limits {
            max_age: Duration::from_secs(2),
            ..Limits::NONE
        };
        assert_eq!(short.window(two_minutes), Duration::from_secs(2));
        assert_eq!(short.window(Duration::from_secs(1)), Duration::from_secs(1));
    }

    #[test]
    fn limits_read_back_from_a_stream_treat_zero_as_none() {
        let config = stream::Config {
            max_messages: 0,
            max_bytes: -1,
            max_age: Duration::from_secs(60),
            ..Default::default()
        };
        assert_eq!(
            Limits::of(&config),
            Limits {
                max_age: Duration::from_secs(60),
                ..Limits::NONE
            }
        );
        assert_eq!(
            Limits::NONE.to_string(),
            "max_age none, max_msgs none, max_bytes none"
        );
    }

    #[test]
    fn patterns_split_between_events_and_dead_letters() {
        for (pattern, events, dead) in [
            (">", true, Some(">")),
            ("*.>", true, Some(">")),
            ("*.created", true, Some("created")),
            ("*", true, None),
            ("orders.>", true, None),
            ("orders.*", true, None),
            ("dead-letter.>", false, Some(">")),
            ("dead-letter.orders.*", false, Some("orders.*")),
            ("dead-letter", true, None),
            ("dead-letters.>", true, None),
        ] {
            assert_eq!(split_pattern(pattern), (events, dead), "{pattern}");
        }
        assert_eq!(dead_letter_of("dead-letter.a.b"), Some("a.b"));
        assert_eq!(dead_letter_of("dead-letter"), None);
        assert_eq!(dead_letter_of("dead-letters.a"), None);
        assert_eq!(dead_letter_of("orders.dead-letter.a"), None);
    }
}
