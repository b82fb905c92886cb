//! The streams a subscription reads: the one its pattern names, or, for a pattern with
//! wildcards, every stream whose name matches, found as the subscription starts and later in
//! the log of new names.

use std::collections::HashSet;

use bus_core::transport::TransportError;
use redis::Value;
use tokio::time::Instant;

use super::Failure;
use crate::connection::Inner;
use crate::error::RedisError;
use crate::keys::{self, Matcher};

/// How many entries of the log of new names one look reads at most.
const LOG_PAGE: usize = 1000;

/// One stream a subscription reads.
#[derive(Debug)]
pub(super) struct StreamState {
    /// The event name, which is the stream's.
    pub(super) name: String,
    pub(super) key: String,
    /// Outside any group: the last id read. In a group: the last id received (where a
    /// vanished group is created again).
    pub(super) cursor: String,
    /// In a group: where the next `XAUTOCLAIM` starts.
    pub(super) claim_cursor: String,
    /// In a group: whether the group exists on the stream (as far as we know).
    pub(super) has_group: bool,
}

/// The streams a subscription reads, in the order found.
#[derive(Debug)]
pub(super) struct Streams {
    pattern: String,
    matcher: Matcher,
    list: Vec<StreamState>,
    /// The names in `list`.
    known: HashSet<String>,
    /// The id after which the subscription (or its group) starts on a stream.
    start: String,
    /// Where the next look into the log of new names starts.
    log_cursor: String,
    /// When the next look into the log of new names is due.
    next_discovery: Instant,
}

impl Streams {
    /// None yet, for `pattern`, starting after entry id `start`; [`find`](Streams::find)
    /// finds them.
    pub(super) fn new(pattern: &str, start: String) -> Streams {
        Streams {
            pattern: pattern.to_owned(),
            matcher: Matcher::new(pattern),
            list: Vec::new(),
            known: HashSet::new(),
            start,
            log_cursor: "0-0".to_owned(),
            next_discovery: Instant::now(),
        }
    }

    /// Whether the pattern has wildcards: its streams are looked for every
    /// `discovery_interval`.
    pub(super) fn wildcard(&self) -> bool {
        !self.matcher.is_literal()
    }

    /// The id after which the subscription (or its group) starts on a stream.
    pub(super) fn start(&self) -> &str {
        &self.start
    }

    /// When the next look for new streams is due.
    pub(super) fn next_discovery(&self) -> Instant {
        self.next_discovery
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, StreamState> {
        self.list.iter()
    }

    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, StreamState> {
        self.list.iter_mut()
    }

    /// The stream of key `key`, if this subscription reads it.
    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut StreamState> {
        self.list.iter_mut().find(|stream| stream.key == key)
    }

    /// The keys of the streams.
    pub(super) fn keys(&self) -> Vec<String> {
        self.list.iter().map(|stream| stream.key.clone()).collect()
    }

    /// Finds the streams as the subscription starts: the pattern's own, or those matching it.
    pub(super) async fn find(&mut self, inner: &Inner) -> Result<(), TransportError> {
        if self.wildcard() {
            self.discover_initial(inner).await
        } else {
            let name = self.pattern.clone();
            self.add(inner, &name);
            Ok(())
        }
    }

    /// Looks in the log of new names, when a pattern with wildcards is due to.
    pub(super) async fn discover_when_due(&mut self, inner: &Inner) -> Result<(), Failure> {
        let now = Instant::now();
        if self.wildcard() && now >= self.next_discovery {
            self.discover(inner).await?;
            self.next_discovery = now + inner.config.discovery_interval;
        }
        Ok(())
    }

    fn add(&mut self, inner: &Inner, name: &str) {
        if !self.known.insert(name.to_owned()) {
            return;
        }
        self.list.push(StreamState {
            name: name.to_owned(),
            key: inner.keys.stream(name),
            cursor: self.start.clone(),
            claim_cursor: "0-0".to_owned(),
            has_group: false,
        });
    }

    /// The streams matching the pattern now: the registry of names, and `SCAN` (for streams
    /// written by other clients); the log of new names is read from its current end on.
    async fn discover_initial(&mut self, inner: &Inner) -> Result<(), TransportError> {
        let mut conn = inner.conn.clone();
        // The end of the log first, then the registry and the keyspace: a name published in
        // between is in the log after that end, so the first `discover` finds it.
        let log = inner.keys.names_log();
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
        for name in inner.names_matching(&self.matcher).await? {
            self.add(inner, &name);
        }
        Ok(())
    }

    /// The names published for the first time since the last look.
    async fn discover(&mut self, inner: &Inner) -> Result<(), Failure> {
        let mut conn = inner.conn.clone();
        let log = inner.keys.names_log();
        loop {
            let reply: Value = redis::cmd("XRANGE")
                .arg(&log)
                .arg(format!("({}", self.log_cursor))
                .arg("+")
                .arg("COUNT")
                .arg(LOG_PAGE)
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
                    if self.matcher.matches(&name) && !self.known.contains(&name) {
                        tracing::debug!(stream = %name, "found a new stream");
                        self.add(inner, &name);
                    }
                }
            }
            if count < LOG_PAGE {
                return Ok(());
            }
        }
    }
}
