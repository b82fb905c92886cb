//! A subscription: its registration in `<prefix>groups`, and the stream that polls for it
//! (woken by `NOTIFY`): give the group delivery records for the events that are final, claim
//! a batch of them, hand them out one by one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bus_core::transport::{
    Delivery, SubscribeOptions, TransportError, TransportSubscription, WireEvent,
};
use sqlx::Row;
use sqlx::postgres::PgRow;
use tokio::sync::Notify;
use tracing::Instrument;

use super::delivery::{self, Group, PostgresDelivery};
use super::error::{self, NAME, is_transient};
use super::sql::statement;
use super::wake::{PLAIN_TTL, ensure_listener};
use super::{Inner, MIN_POLL, check_options};

/// Registers the subscription (a group's row is created by its first subscription, and kept;
/// a subscription outside any group gets a row of its own) and returns its stream.
pub(crate) async fn open(
    inner: Arc<Inner>,
    options: SubscribeOptions,
) -> Result<TransportSubscription, TransportError> {
    let matcher = check_options(&options)?;
    let (name, plain) = match &options.group {
        Some(group) => (group.clone(), false),
        None => {
            let n = inner.plain_count.fetch_add(1, Ordering::Relaxed);
            (format!("subscription-{}-{n}", inner.instance), true)
        }
    };
    let span = tracing::info_span!(
        "bus.postgres.subscription",
        pattern = %options.pattern,
        group = %name,
    );
    let registration = Registration {
        pattern: options.pattern.clone(),
        regex: matcher.regex(),
        plain,
    };
    registration
        .register(&inner, &name)
        .instrument(span.clone())
        .await?;
    ensure_listener(&inner);
    let notify = Arc::new(Notify::new());
    let waker = inner
        .wakers
        .register(matcher, plain.then(|| name.clone()), Arc::clone(&notify));
    let group = Arc::new(Group {
        name,
        max_deliveries: options.max_deliveries.max(1),
        ack_wait: options.ack_wait,
    });
    let state = Polling {
        inner,
        group,
        registration,
        notify,
        waker,
        buffer: VecDeque::new(),
        pause: MIN_POLL,
        span,
    };
    Ok(Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            let item = state.next().await;
            Some((item, state))
        },
    )))
}

/// How a subscription's row is made.
#[derive(Debug)]
struct Registration {
    pattern: String,
    regex: String,
    plain: bool,
}

impl Registration {
    /// Creates the row of `name` unless it exists; a group that exists with another pattern is
    /// refused.
    async fn register(&self, inner: &Inner, name: &str) -> Result<(), TransportError> {
        let stored: Option<String> = inner
            .retrying(|| {
                sqlx::query_scalar(statement(&inner.sql.register))
                    .bind(name)
                    .bind(&self.pattern)
                    .bind(&self.regex)
                    .bind(self.plain)
                    .bind(PLAIN_TTL.as_secs_f64())
                    .fetch_optional(&inner.pool)
            })
            .await
            .map_err(|error| {
                error::statement(
                    format!("registration of the subscription `{name}`"),
                    format!("{}groups", inner.prefix),
                    error,
                )
            })?;
        match stored {
            Some(pattern) if pattern == self.pattern => Ok(()),
            Some(pattern) => Err(TransportError::invalid(
                NAME,
                "group",
                name,
                format!(
                    "the group exists with the pattern `{pattern}`, not `{}`: a group has one \
                     pattern; use another group name",
                    self.pattern
                ),
            )),
            // Created by a transaction that had not committed when this statement began: it
            // is there now.
            None => Box::pin(self.register(inner, name)).await,
        }
    }
}

/// A claimed delivery record not handed out yet.
struct Claimed {
    seq: i64,
    attempts: i32,
    event: WireEvent,
}

/// The state of a subscription's stream.
struct Polling {
    inner: Arc<Inner>,
    group: Arc<Group>,
    registration: Registration,
    notify: Arc<Notify>,
    waker: u64,
    buffer: VecDeque<Claimed>,
    /// The wait before the next poll when the last one found nothing.
    pause: Duration,
    span: tracing::Span,
}

impl Polling {
    async fn next(&mut self) -> Result<Box<dyn Delivery>, TransportError> {
        loop {
            while let Some(claimed) = self.buffer.pop_front() {
                if let Some(delivery) = self.hand_out(claimed).await {
                    return Ok(delivery);
                }
            }
            let span = self.span.clone();
            match self.poll().instrument(span).await {
                Ok(0) => self.wait().await,
                Ok(_) => self.pause = MIN_POLL,
                Err(error) if is_transient(&error) => {
                    tracing::debug!(parent: &self.span, %error, "poll failed; trying again");
                    tokio::time::sleep(self.pause.max(Duration::from_millis(100))).await;
                    self.pause = (self.pause * 2).min(self.inner.poll_interval);
                }
                Err(error) => {
                    tokio::time::sleep(self.inner.poll_interval).await;
                    return Err(error::statement(
                        format!("claim for `{}`", self.group.name),
                        format!("{}deliveries", self.inner.prefix),
                        error,
                    ));
                }
            }
        }
    }

    /// Turns a claimed record into a delivery; `None` when it is dead-lettered instead (its
    /// last allowed delivery was never settled, or it does not decode).
    async fn hand_out(&mut self, claimed: Claimed) -> Option<Box<dyn Delivery>> {
        let max = self.group.max_deliveries;
        let attempt = u32::try_from(claimed.attempts).unwrap_or(u32::MAX);
        let verdict = if attempt > max {
            let delivered = attempt.saturating_sub(1).min(max);
            Some((
                delivered,
                format!(
                    "not settled within the ack wait of {:?} (after {delivered} deliveries)",
                    self.group.ack_wait
                ),
            ))
        } else {
            claimed
                .event
                .validate(self.inner.max_payload)
                .err()
                .map(|error| (attempt, format!("does not decode: {error}")))
        };
        match verdict {
            None => Some(Box::new(PostgresDelivery::new(
                Arc::clone(&self.inner),
                Arc::clone(&self.group),
                claimed.seq,
                claimed.attempts,
                claimed.event,
            ))),
            Some((reported, reason)) => {
                let result = delivery::dead_letter(
                    &self.inner,
                    &self.group,
                    claimed.seq,
                    claimed.attempts,
                    &claimed.event,
                    reported,
                    &reason,
                )
                .instrument(self.span.clone())
                .await;
                if let Err(error) = result {
                    tracing::warn!(
                        parent: &self.span,
                        %error,
                        "dead-lettering failed; the event comes back after its ack wait"
                    );
                }
                None
            }
        }
    }

    /// Gives the group its delivery records for the events that are final, then claims a
    /// batch; returns how many were claimed.
    async fn poll(&mut self) -> Result<usize, sqlx::Error> {
        let inner = &self.inner;
        let row = sqlx::query(statement(&inner.sql.materialize))
            .bind(&self.group.name)
            .fetch_one(&inner.pool)
            .await?;
        if !row.try_get::<bool, _>("present")? {
            // Removed under it: a subscription outside any group that did not renew in time
            // (its process stalled), or a group an operator deleted. Registered again from
            // now on.
            tracing::warn!(
                parent: &self.span,
                "the subscription's row was removed; registering it again: events published \
                 meanwhile are not delivered to it"
            );
            if let Err(error) = self.registration.register(inner, &self.group.name).await {
                tracing::warn!(parent: &self.span, %error, "registering again failed");
            }
        }
        let rows = sqlx::query(statement(&inner.sql.claim))
            .bind(&self.group.name)
            .bind(inner.batch_size)
            .bind(self.group.ack_wait.as_secs_f64())
            .bind(&inner.instance)
            .fetch_all(&inner.pool)
            .await?;
        let claimed = rows.len();
        for row in rows {
            self.buffer.push_back(decode(&row)?);
        }
        Ok(claimed)
    }

    /// Waits for a notification, or the next poll.
    async fn wait(&mut self) {
        tokio::select! {
            () = self.notify.notified() => self.pause = MIN_POLL,
            () = tokio::time::sleep(self.pause) => {
                self.pause = (self.pause * 2).min(self.inner.poll_interval);
            }
        }
    }
}

/// A claimed row: its record and its event, as stored (checked when handed out).
fn decode(row: &PgRow) -> Result<Claimed, sqlx::Error> {
    Ok(Claimed {
        seq: row.try_get("seq")?,
        attempts: row.try_get("attempts")?,
        event: event_of(row)?,
    })
}

/// The event of a row with the columns of `<prefix>events`, as stored.
pub(crate) fn event_of(row: &PgRow) -> Result<WireEvent, sqlx::Error> {
    let extensions: serde_json::Value = row.try_get("extensions")?;
    let data: Vec<u8> = row.try_get("data")?;
    let mut event = WireEvent::new(
        row.try_get::<String, _>("event_id")?,
        row.try_get::<String, _>("source")?,
        row.try_get::<String, _>("name")?,
        data,
    );
    event.time = row.try_get("time")?;
    event.datacontenttype = row.try_get("content_type")?;
    if let serde_json::Value::Object(extensions) = extensions {
        for (name, value) in extensions {
            let value = match value {
                serde_json::Value::String(value) => value,
                other => other.to_string(),
            };
            event.extensions.insert(name, value);
        }
    }
    Ok(event)
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.inner.wakers.unregister(self.waker);
        let held: Vec<Claimed> = self.buffer.drain(..).collect();
        if held.is_empty() && !self.registration.plain {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let group = Arc::clone(&self.group);
        let plain = self.registration.plain;
        let span = self.span.clone();
        inner.tracker.clone().spawn_on(
            async move {
                if plain {
                    // Its records go with its row.
                    let removed = inner
                        .retrying(|| {
                            sqlx::query(statement(&inner.sql.unregister))
                                .bind(&group.name)
                                .execute(&inner.pool)
                        })
                        .await;
                    if let Err(error) = removed {
                        tracing::warn!(%error, "removing a closed subscription failed; it expires");
                    }
                    return;
                }
                let seqs: Vec<i64> = held.iter().map(|claimed| claimed.seq).collect();
                let attempts: Vec<i32> = held.iter().map(|claimed| claimed.attempts).collect();
                let returned = inner
                    .retrying(|| {
                        sqlx::query(statement(&inner.sql.unclaim))
                            .bind(&group.name)
                            .bind(&seqs)
                            .bind(&attempts)
                            .bind(&inner.channel)
                            .execute(&inner.pool)
                    })
                    .await;
                if let Err(error) = returned {
                    tracing::warn!(%error, "handing back claimed deliveries failed; they come back after their ack wait");
                }
            }
            .instrument(span),
            &runtime,
        );
    }
}
