//! The transactional outbox: [`Outbox::emit`] writes an event in the caller's transaction, so
//! that it is published if and only if the transaction commits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use bus_core::transport::{CAUSATION, DEFAULT_MAX_PAYLOAD, WireEvent};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, SqlSafeStr as _, SqlStr};
use tracing::Instrument;

use crate::error::OutboxError;
use crate::schema::{DEFAULT_PREFIX, validate_prefix};

/// The media type of the payloads [`Outbox::emit`] writes.
pub const JSON: &str = "application/json";

/// The DDL of the outbox table `<prefix>outbox` and its indexes.
pub(crate) fn ddl(prefix: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {prefix}outbox (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid             XID8 NOT NULL DEFAULT pg_current_xact_id(),
    id              TEXT NOT NULL,
    source          TEXT NOT NULL,
    type            TEXT NOT NULL,
    time            TEXT,
    datacontenttype TEXT,
    extensions      JSONB NOT NULL DEFAULT '{{}}',
    data            BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    last_error      TEXT,
    published_at    TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS {prefix}outbox_pending ON {prefix}outbox (position)
    WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}outbox_published ON {prefix}outbox (published_at)
    WHERE published_at IS NOT NULL;"
    )
}

/// Writes events into the outbox table, inside the caller's transaction: committed, the event
/// is published by a [`Relay`](crate::Relay); rolled back, it never existed.
///
/// ```no_run
/// use bus_postgres::Outbox;
/// use serde::Serialize;
///
/// #[derive(Serialize)]
/// struct OrderPlaced { order: u64 }
///
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::new("shop"); // the events' `source`
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
/// outbox.emit(&mut tx, "order.placed", &OrderPlaced { order: 42 }).await?;
/// tx.commit().await?; // the order and its event, or neither
/// # Ok(())
/// # }
/// ```
///
/// Cloning is cheap: the outbox holds its service name and its statements.
#[derive(Debug, Clone)]
pub struct Outbox {
    source: Arc<str>,
    max_payload: usize,
    sql: Sql,
}

/// The statements of one table prefix, or why there are none.
#[derive(Debug, Clone)]
pub(crate) struct Sql {
    prefix: Arc<str>,
    statements: Result<Arc<Statements>, ()>,
}

#[derive(Debug)]
struct Statements {
    table: String,
    insert: SqlStr,
    lag: SqlStr,
}

impl Sql {
    pub(crate) fn new(prefix: &str) -> Sql {
        let statements = validate_prefix(prefix).map_err(drop).map(|()| {
            let table = format!("{prefix}outbox");
            // Built from the validated prefix and constant text only.
            let insert = format!(
                "WITH inserted AS (
                     INSERT INTO {table} (id, source, type, time, datacontenttype, extensions, data)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING position)
                 SELECT pg_notify('{table}', '') FROM inserted"
            );
            let lag = format!(
                "SELECT count(*)::BIGINT,
                        EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::FLOAT8
                 FROM {table} WHERE published_at IS NULL"
            );
            Arc::new(Statements {
                insert: AssertSqlSafe(insert).into_sql_str(),
                lag: AssertSqlSafe(lag).into_sql_str(),
                table,
            })
        });
        Sql {
            prefix: Arc::from(prefix),
            statements,
        }
    }

    fn statements(&self) -> Result<&Statements, OutboxError> {
        self.statements
            .as_deref()
            .map_err(|()| OutboxError::Prefix {
                prefix: self.prefix.to_string(),
            })
    }

    /// The outbox table's name, as far as the prefix makes one.
    pub(crate) fn table(&self) -> String {
        format!("{}outbox", self.prefix)
    }

    /// How far behind the relays are.
    pub(crate) async fn lag(&self, pool: &PgPool) -> Result<Lag, OutboxError> {
        let statements = self.statements()?;
        let (pending, oldest): (i64, Option<f64>) = sqlx::query_as(statements.lag.clone())
            .fetch_one(pool)
            .await
            .map_err(OutboxError::database(
                "measuring the lag",
                &statements.table,
            ))?;
        Ok(Lag {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest: oldest.and_then(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).ok()),
        })
    }
}

impl Outbox {
    /// An outbox whose events have `service` as their `source`, in the table
    /// `bus_outbox` ([`DEFAULT_PREFIX`]).
    pub fn new(service: impl Into<String>) -> Self {
        Outbox {
            source: Arc::from(service.into()),
            max_payload: DEFAULT_MAX_PAYLOAD,
            sql: Sql::new(DEFAULT_PREFIX),
        }
    }

    /// Uses the table `<prefix>outbox`, as created by
    /// [`Schema::prefix`](crate::Schema::prefix). An invalid prefix makes every call fail
    /// with [`OutboxError::Prefix`].
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.sql = Sql::new(prefix);
        self
    }

    /// Refuses payloads larger than `bytes` ([`DEFAULT_MAX_PAYLOAD`], 1 MiB, by default): set
    /// it to what the relay's transport accepts, so that no row is written that could never
    /// be published.
    #[must_use]
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The `source` of the events: the service name given to [`Outbox::new`].
    pub fn service(&self) -> &str {
        &self.source
    }

    /// The outbox table's name (`bus_outbox`).
    pub fn table(&self) -> String {
        self.sql.table()
    }

    /// Writes the event `name` with `payload` (as JSON) into the outbox, through `conn`: the
    /// caller's transaction (`&mut tx`, a `sqlx::Transaction<'_, Postgres>`), or a connection
    /// outside any transaction (`&mut conn`, a `PoolConnection`: the event is then committed at
    /// once, alone). Returns the event's id.
    ///
    /// It takes `&mut PgConnection`, which both coerce to, rather than a generic
    /// `impl Acquire`: the future of a generic one is not provably `Send` inside a listener or
    /// a spawned task (rust-lang/rust#110338), which is where events are emitted.
    ///
    /// The event is a CloudEvent: a fresh `id` (32 hex digits in the groups of a UUID, as
    /// `bus` makes them), `source` the outbox's service, `type` the name, `time` now (RFC
    /// 3339), `datacontenttype` `application/json`, and, when emitted by a listener of a bus,
    /// the extension `causationid` (the id of the event it handles), and the trace context
    /// of the emit (`traceparent`, `tracestate`: see [`bus_core::trace::current`]), which
    /// the relay publishes as written. The statement also sends
    /// a `NOTIFY` on the channel named after the table, which PostgreSQL delivers at commit,
    /// to wake the relays.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Encode`] when the payload does not serialize, [`OutboxError::Invalid`]
    /// for a bad event name or a payload over [`max_payload`](Outbox::max_payload),
    /// [`OutboxError::Database`] when the insert fails (the transaction is then aborted, as
    /// after any failed statement).
    ///
    /// # Cancel safety
    ///
    /// Cancelled, the event may or may not be written in the transaction: roll it back.
    pub async fn emit<E>(
        &self,
        conn: &mut PgConnection,
        name: &str,
        payload: &E,
    ) -> Result<String, OutboxError>
    where
        E: Serialize + ?Sized,
    {
        // Read before any await: the bus marks the event being handled (and its trace
        // context) around each poll.
        let causation = bus_core::event::current_event_id();
        let trace = bus_core::trace::current();
        let data = serde_json::to_vec(payload).map_err(|source| OutboxError::Encode {
            event: name.to_owned(),
            source,
        })?;
        let mut event = WireEvent::new(new_id(), &*self.source, name, data)
            .at(SystemTime::now())
            .content_type(JSON);
        if let Some(causation) = causation {
            event = event.extension(CAUSATION, causation.to_string());
        }
        if let Some(trace) = trace {
            trace.write_to(&mut event);
        }
        let id = event.id.clone();
        self.emit_wire(conn, event).await?;
        Ok(id)
    }

    /// [`emit`](Outbox::emit) under the name the type carries ([`bus_core::Event::NAME`]).
    ///
    /// # Errors
    ///
    /// As [`emit`](Outbox::emit).
    pub async fn emit_event<E>(
        &self,
        conn: &mut PgConnection,
        event: &E,
    ) -> Result<String, OutboxError>
    where
        E: bus_core::Event + Serialize,
    {
        self.emit(conn, E::NAME, event).await
    }

    /// Writes `event` as it is (its own id, source, time, extensions and payload bytes): for
    /// events built by hand, with a `traceparent` say. The relay publishes exactly this
    /// [`WireEvent`].
    ///
    /// # Errors
    ///
    /// [`OutboxError::Invalid`] when a subscriber could not read the event back
    /// ([`WireEvent::validate`]), [`OutboxError::Database`] when the insert fails.
    ///
    /// # Cancel safety
    ///
    /// As [`emit`](Outbox::emit).
    pub async fn emit_wire(
        &self,
        conn: &mut PgConnection,
        event: WireEvent,
    ) -> Result<(), OutboxError> {
        let statements = self.sql.statements()?;
        event
            .validate(self.max_payload)
            .map_err(|error| OutboxError::Invalid {
                event: event.ty.clone(),
                reason: error.to_string(),
            })?;
        let span = tracing::debug_span!("outbox.emit", event = %event.ty, id = %event.id);
        async {
            let failed =
                || OutboxError::database(format!("emitting `{}`", event.ty), &statements.table);
            sqlx::query(statements.insert.clone())
                .bind(&event.id)
                .bind(&event.source)
                .bind(&event.ty)
                .bind(&event.time)
                .bind(&event.datacontenttype)
                .bind(Json(&event.extensions))
                .bind(event.data.as_ref())
                .execute(conn)
                .await
                .map_err(failed())?;
            tracing::debug!("event written to the outbox");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// How far behind the relays of this table are: the rows not published yet, and the age
    /// of the oldest. Rows of transactions not committed yet are not counted.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the query fails.
    pub async fn lag(&self, pool: &PgPool) -> Result<Lag, OutboxError> {
        self.sql.lag(pool).await
    }
}

/// How far behind the relays of an outbox are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Lag {
    /// Committed rows not published yet (those waiting to be retried after a failure too).
    pub pending: u64,
    /// The age of the oldest of them; `None` when there is none.
    pub oldest: Option<Duration>,
}

/// One row of the outbox, as the relay reads it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Row {
    pub(crate) position: i64,
    pub(crate) attempts: i32,
    id: String,
    source: String,
    #[sqlx(rename = "type")]
    ty: String,
    time: Option<String>,
    datacontenttype: Option<String>,
    extensions: Json<BTreeMap<String, String>>,
    data: Vec<u8>,
}

impl Row {
    /// The event exactly as it was written.
    pub(crate) fn into_wire(self) -> WireEvent {
        let mut event = WireEvent::new(self.id, self.source, self.ty, self.data);
        event.time = self.time;
        event.datacontenttype = self.datacontenttype;
        event.extensions = self.extensions.0;
        event
    }
}

/// A fresh event id: a random prefix drawn once per process, then a counter, written as 32
/// lower-case hex digits in the 8-4-4-4-12 groups of a UUID: the scheme and the text of the
/// ids `bus` makes (`EventId`), so that the bus reads it back as one of its own.
pub(crate) fn new_id() -> String {
    static PREFIX: LazyLock<u64> = LazyLock::new(|| fastrand::u64(1..));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hex = format!("{:016x}{counter:016x}", *PREFIX);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_shaped_like_the_bus_ids() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), 36);
            for (at, byte) in id.bytes().enumerate() {
                match at {
                    8 | 13 | 18 | 23 => assert_eq!(byte, b'-', "{id}"),
                    _ => assert!(matches!(byte, b'0'..=b'9' | b'a'..=b'f'), "{id}"),
                }
            }
            // The prefix is never 0: the bus reads such an id back as one it made.
            assert_ne!(&id[..18], "00000000-0000-0000");
        }
    }
}
