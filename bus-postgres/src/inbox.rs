//! The idempotent consumer: [`Inbox::claim`] records, in the listener's own transaction, that
//! a consumer group handled an event, so that a redelivery of it has no second effect.

use std::time::Duration;

use bus_core::Envelope;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, SqlSafeStr as _, SqlStr};

use crate::error::OutboxError;
use crate::schema::{DEFAULT_PREFIX, validate_prefix};

/// The DDL of the inbox table `<prefix>inbox` and its index.
pub(crate) fn ddl(prefix: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {prefix}inbox (
    consumer_group TEXT NOT NULL,
    source         TEXT NOT NULL,
    id             TEXT NOT NULL,
    handled_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer_group, source, id)
);
CREATE INDEX IF NOT EXISTS {prefix}inbox_handled_at ON {prefix}inbox (handled_at);"
    )
}

/// Makes a listener idempotent: it claims the event in the transaction of its own writes,
/// and skips it when the claim says it was handled already. Brokers deliver at least once
/// (a listener that committed, then crashed before its ack, gets the event again); with the
/// claim, the second delivery has no effect.
///
/// ```no_run
/// use std::sync::Arc;
/// use bus_postgres::Inbox;
///
/// # #[derive(Debug)] struct OrderPlaced { order: i64 }
/// async fn charge(
///     pool: &sqlx::PgPool,
///     inbox: &Inbox,
///     order: Arc<OrderPlaced>,
///     envelope: bus_core::Envelope,
/// ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     let mut tx = pool.begin().await?;
///     if !inbox.claim(&mut tx, "billing", &envelope).await? {
///         return Ok(()); // handled already: skip, and let the delivery be acked
///     }
///     // ... the listener's own writes, in `tx` ...
///     tx.commit().await?; // the writes and the claim, or neither
///     Ok(())
/// }
/// ```
///
/// A claim is keyed by (group, event source, event id): the CloudEvents identity of the event,
/// per consumer group (each group handles each event once). Two transactions claiming the
/// same key at once are serialized by the table's primary key: at `READ COMMITTED` (the
/// default isolation level), the second waits for the first to end, and gets `false` if it
/// committed, `true` if it rolled back; at `REPEATABLE READ` or `SERIALIZABLE`, PostgreSQL
/// fails the second with a serialization error instead, to be retried as usual.
#[derive(Debug, Clone)]
pub struct Inbox {
    prefix: String,
    statements: Result<std::sync::Arc<Statements>, ()>,
}

#[derive(Debug)]
struct Statements {
    table: String,
    claim: SqlStr,
    cleanup: SqlStr,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox::new()
    }
}

impl Inbox {
    /// The inbox in the table `bus_inbox` ([`DEFAULT_PREFIX`]).
    pub fn new() -> Self {
        Inbox::with_prefix(DEFAULT_PREFIX)
    }

    /// Uses the table `<prefix>inbox`, as created by
    /// [`Schema::prefix`](crate::Schema::prefix). An invalid prefix makes every call fail
    /// with [`OutboxError::Prefix`].
    #[must_use]
    pub fn prefix(self, prefix: &str) -> Self {
        Inbox::with_prefix(prefix)
    }

    fn with_prefix(prefix: &str) -> Self {
        let statements = validate_prefix(prefix).map_err(drop).map(|()| {
            let table = format!("{prefix}inbox");
            // Built from the validated prefix and constant text only.
            let sql = |text: String| AssertSqlSafe(text).into_sql_str();
            std::sync::Arc::new(Statements {
                claim: sql(format!(
                    "INSERT INTO {table} (consumer_group, source, id) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING"
                )),
                cleanup: sql(format!(
                    "DELETE FROM {table}
                     WHERE handled_at < clock_timestamp() - make_interval(secs => $1)"
                )),
                table,
            })
        });
        Inbox {
            prefix: prefix.to_owned(),
            statements,
        }
    }

    fn statements(&self) -> Result<&Statements, OutboxError> {
        self.statements
            .as_deref()
            .map_err(|()| OutboxError::Prefix {
                prefix: self.prefix.clone(),
            })
    }

    /// The inbox table's name (`bus_inbox`).
    pub fn table(&self) -> String {
        format!("{}inbox", self.prefix)
    }

    /// Claims the event of `envelope` for `group`, through `conn`: the transaction of the
    /// listener's writes (`&mut tx`; a `&mut PgConnection`, for the reason given at
    /// [`Outbox::emit`](crate::Outbox::emit)). `true`: the first time, handle it; `false`: the group
    /// handled it already (a claim committed before), skip it.
    ///
    /// The claim holds only if the transaction commits: rolled back, the event is handled
    /// again on its redelivery, as it should be.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the insert fails (the transaction is then aborted).
    ///
    /// # Cancel safety
    ///
    /// Cancelled, the claim may or may not be made in the transaction: roll it back.
    pub async fn claim(
        &self,
        conn: &mut PgConnection,
        group: &str,
        envelope: &Envelope,
    ) -> Result<bool, OutboxError> {
        self.claim_id(conn, group, envelope.source(), &envelope.id().to_string())
            .await
    }

    /// [`claim`](Inbox::claim) by the event's `source` and `id`, as they came (the
    /// CloudEvents attributes of a [`WireEvent`](bus_core::transport::WireEvent)).
    ///
    /// # Errors
    ///
    /// As [`claim`](Inbox::claim).
    ///
    /// # Cancel safety
    ///
    /// As [`claim`](Inbox::claim).
    pub async fn claim_id(
        &self,
        conn: &mut PgConnection,
        group: &str,
        source: &str,
        id: &str,
    ) -> Result<bool, OutboxError> {
        let statements = self.statements()?;
        let failed = || {
            OutboxError::database(
                format!("claiming event `{id}` from `{source}` for group `{group}`"),
                &statements.table,
            )
        };
        let done = sqlx::query(statements.claim.clone())
            .bind(group)
            .bind(source)
            .bind(id)
            .execute(conn)
            .await
            .map_err(failed())?;
        let first = done.rows_affected() == 1;
        tracing::debug!(group, source, id, first, "inbox claim");
        Ok(first)
    }

    /// Deletes the claims made longer ago than `age`, and returns how many. Keep them longer
    /// than a redelivery can come (the broker's retention of unacknowledged events): a claim
    /// deleted is a redelivery handled again.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the delete fails.
    pub async fn cleanup(&self, pool: &PgPool, age: Duration) -> Result<u64, OutboxError> {
        let statements = self.statements()?;
        let done = sqlx::query(statements.cleanup.clone())
            .bind(age.as_secs_f64())
            .execute(pool)
            .await
            .map_err(OutboxError::database(
                "deleting old claims",
                &statements.table,
            ))?;
        Ok(done.rows_affected())
    }
}
