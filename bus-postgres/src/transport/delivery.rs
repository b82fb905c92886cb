//! [`PostgresDelivery`]: one claimed delivery record handed to a subscriber, and how settling
//! it writes to the tables.

use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::{BoxFuture, Delivery, TransportError, WireEvent};
use tracing::Instrument;

use super::error;
use super::sql::statement;
use super::{Columns, Inner};

/// What a delivery knows about the subscription it came from.
#[derive(Debug)]
pub(crate) struct Group {
    /// The group's row in `<prefix>groups`: the group as given, or `subscription-<instance>-<n>`
    /// outside any group; the `deadlettergroup` of its dead letters.
    pub(crate) name: String,
    pub(crate) max_deliveries: u32,
    pub(crate) ack_wait: Duration,
}

/// One delivery. Settled by `ack`, `nack`, `reject` or `release`; dropped unsettled, it is
/// released in a task of its own (which `Transport::flush` waits for).
pub(crate) struct PostgresDelivery {
    event: WireEvent,
    attempt: u32,
    settle: Option<Settle>,
}

/// What settling needs.
struct Settle {
    inner: Arc<Inner>,
    group: Arc<Group>,
    seq: i64,
    /// The delivery's `attempts` in the table: a settlement of a delivery that was claimed
    /// again since (its ack wait passed) changes nothing but an ack.
    attempts: i32,
}

impl PostgresDelivery {
    pub(crate) fn new(
        inner: Arc<Inner>,
        group: Arc<Group>,
        seq: i64,
        attempts: i32,
        event: WireEvent,
    ) -> PostgresDelivery {
        PostgresDelivery {
            event,
            attempt: u32::try_from(attempts).unwrap_or(1),
            settle: Some(Settle {
                inner,
                group,
                seq,
                attempts,
            }),
        }
    }

    fn take(&mut self) -> Option<(Settle, WireEvent)> {
        self.settle
            .take()
            .map(|settle| (settle, std::mem::replace(&mut self.event, empty())))
    }

    /// The span of a settlement.
    fn span(&self, how: &'static str) -> tracing::Span {
        tracing::debug_span!(
            "bus.postgres.settle",
            how,
            event = %self.event.ty,
            id = %self.event.id,
            attempt = self.attempt,
        )
    }
}

/// A placeholder for the event of a delivery being settled.
fn empty() -> WireEvent {
    WireEvent::new("", "", "", Vec::new())
}

impl std::fmt::Debug for PostgresDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDelivery")
            .field("event", &self.event.ty)
            .field("id", &self.event.id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery for PostgresDelivery {
    fn event(&self) -> &WireEvent {
        &self.event
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("ack");
        let taken = self.take();
        Box::pin(
            async move {
                let Some((settle, event)) = taken else {
                    return Ok(());
                };
                settle.ack(&event).await
            }
            .instrument(span),
        )
    }

    fn nack(
        mut self: Box<Self>,
        delay: Duration,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("nack");
        let taken = self.take();
        Box::pin(
            async move {
                let Some((settle, event)) = taken else {
                    return Ok(());
                };
                settle.fail(event, delay, reason).await
            }
            .instrument(span),
        )
    }

    fn reject(
        mut self: Box<Self>,
        reason: String,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("reject");
        let taken = self.take();
        Box::pin(
            async move {
                let Some((settle, event)) = taken else {
                    return Ok(());
                };
                let attempts = settle.attempts;
                settle.dead_letter(&event, attempts, &reason).await
            }
            .instrument(span),
        )
    }

    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let span = self.span("release");
        let taken = self.take();
        Box::pin(
            async move {
                let Some((settle, event)) = taken else {
                    return Ok(());
                };
                let reason = "released unsettled on its last allowed delivery".to_owned();
                settle.fail(event, Duration::ZERO, reason).await
            }
            .instrument(span),
        )
    }
}

impl Drop for PostgresDelivery {
    fn drop(&mut self) {
        let span = self.span("drop");
        let Some((settle, event)) = self.take() else {
            return;
        };
        // Without a runtime (dropped after it ended), the ack wait gives the event back.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tracker = settle.inner.tracker.clone();
        let reason = "dropped unsettled on its last allowed delivery".to_owned();
        tracker.spawn_on(
            async move {
                if let Err(error) = settle.fail(event, Duration::ZERO, reason).await {
                    tracing::warn!(%error, "handing back a dropped delivery failed; it comes back after its ack wait");
                }
            }
            .instrument(span),
            &runtime,
        );
    }
}

impl Settle {
    fn table(&self) -> String {
        format!("{}deliveries", self.inner.prefix)
    }

    async fn ack(self, event: &WireEvent) -> Result<(), TransportError> {
        let inner = &self.inner;
        inner
            .retrying(|| {
                sqlx::query(statement(&inner.sql.ack))
                    .bind(&self.group.name)
                    .bind(self.seq)
                    .execute(&inner.pool)
            })
            .await
            .map(drop)
            .map_err(|error| {
                error::statement(
                    format!(
                        "ack of `{}` (id {}) for `{}`",
                        event.ty, event.id, self.group.name
                    ),
                    self.table(),
                    error,
                )
            })
    }

    /// A failed delivery: delivered again after `delay`, or dead-lettered with `reason` on
    /// the last allowed attempt.
    async fn fail(
        self,
        event: WireEvent,
        delay: Duration,
        reason: String,
    ) -> Result<(), TransportError> {
        let attempt = u32::try_from(self.attempts).unwrap_or(0);
        if attempt >= self.group.max_deliveries {
            let attempts = self.attempts;
            return self.dead_letter(&event, attempts, &reason).await;
        }
        let inner = &self.inner;
        inner
            .retrying(|| {
                sqlx::query(statement(&inner.sql.retry))
                    .bind(&self.group.name)
                    .bind(self.seq)
                    .bind(self.attempts)
                    .bind(delay.as_secs_f64())
                    .bind(&inner.channel)
                    .bind(&event.ty)
                    .execute(&inner.pool)
            })
            .await
            .map(drop)
            .map_err(|error| {
                error::statement(
                    format!(
                        "hand-back of `{}` (id {}) for `{}`",
                        event.ty, event.id, self.group.name
                    ),
                    self.table(),
                    error,
                )
            })
    }

    /// Dead-letters `event` as given up by this group after `attempts` deliveries, and
    /// settles its delivery, in one statement.
    async fn dead_letter(
        self,
        event: &WireEvent,
        attempts: i32,
        reason: &str,
    ) -> Result<(), TransportError> {
        dead_letter(
            &self.inner,
            &self.group,
            self.seq,
            self.attempts,
            event,
            u32::try_from(attempts).unwrap_or(0),
            reason,
        )
        .await
    }
}

/// Stores the dead letter of `event` (delivery `seq` of `group`, whose record holds
/// `attempts`), reporting `reported` deliveries and `reason`, and deletes the delivery record,
/// in one statement; nothing when the record was claimed again since.
pub(crate) async fn dead_letter(
    inner: &Inner,
    group: &Group,
    seq: i64,
    attempts: i32,
    event: &WireEvent,
    reported: u32,
    reason: &str,
) -> Result<(), TransportError> {
    let letter = event.dead_letter(&group.name, reported, reason);
    let columns = Columns::of(&letter);
    tracing::warn!(
        event = %event.ty,
        id = %event.id,
        group = %group.name,
        attempts = reported,
        reason,
        "dead-lettered"
    );
    inner
        .retrying(|| {
            columns
                .bind(
                    sqlx::query(statement(&inner.sql.dead_letter))
                        .bind(&group.name)
                        .bind(seq)
                        .bind(attempts),
                )
                .bind(&inner.channel)
                .execute(&inner.pool)
        })
        .await
        .map(drop)
        .map_err(|error| {
            error::statement(
                format!(
                    "dead letter of `{}` (id {}) for `{}`",
                    event.ty, event.id, group.name
                ),
                format!("{}events", inner.prefix),
                error,
            )
        })
}
