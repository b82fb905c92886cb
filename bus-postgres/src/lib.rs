//! PostgreSQL for the `bus` event bus (crate `bus-postgres`, facade feature `postgres`): a
//! transactional outbox, a relay that publishes it, and an idempotent inbox, on sqlx.
//!
//! "Save, then publish" loses the event when the process dies between the two, and publishes
//! an event whose data was rolled back when done the other way round. The outbox writes the
//! event in the transaction of the data ([`Outbox::emit`]); a [`Relay`] publishes the
//! committed rows to a [`Transport`](bus_core::transport::Transport) and marks them once the
//! broker has stored them; the [`Inbox`] makes the consumer's side idempotent, since a broker
//! delivers at least once.
//!
//! ```no_run
//! use std::sync::Arc;
//! use bus_postgres::{Outbox, Relay, Schema};
//! use serde::Serialize;
//!
//! #[derive(Serialize)]
//! struct OrderPlaced { order: i64 }
//!
//! # async fn demo(nats: Arc<dyn bus_core::transport::Transport>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/shop").await?;
//! Schema::new().create(&pool).await?;              // bus_outbox, bus_inbox
//! let relay = Relay::builder(pool.clone(), nats).start()?;
//!
//! let outbox = Outbox::new("shop");
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(42_i64).execute(&mut *tx).await?;
//! outbox.emit(&mut tx, "order.placed", &OrderPlaced { order: 42 }).await?;
//! tx.commit().await?;                              // now the relay publishes it
//! # relay.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! Without a broker, a relay delivers to the listeners of an `EventBus` in this process
//! ([`LocalBus`]): in-process events that survive a crash between the commit and their
//! delivery.
//!
//! # Guarantees
//!
//! - Committed: published at least once, whatever crashes; a deduplicating transport
//!   (`NatsTransport`) stores it once, since the relay publishes the same `source` and `id`
//!   again. Rolled back: never published.
//! - No committed row is ever skipped, even when transactions commit in another order than
//!   they wrote (see [`Relay`]).
//! - Several relays (in several processes) share a table: `FOR UPDATE SKIP LOCKED`.
//! - A failed publish is retried with backoff, logged, never given up.
//!
//! # Tables
//!
//! [`Schema::create`] makes every table of the crate in one call (`IF NOT EXISTS`, under an
//! advisory lock, so concurrent calls are safe), under a prefix (`bus_` by default): the
//! outbox's and the inbox's below, and the transport's (see [Transport](#transport)). The
//! same DDL, for the default prefix only, is the sqlx migrations `migrations/0001_outbox.sql`
//! and `migrations/0002_transport.sql` of this crate, for users who manage their schema.
//!
//! `<prefix>outbox`, one row per event:
//!
//! | column | type | |
//! |---|---|---|
//! | `position` | `BIGINT` identity, primary key | the order of the writes |
//! | `xid` | `XID8`, default `pg_current_xact_id()` | the writing transaction (diagnosis) |
//! | `id`, `source`, `type` | `TEXT` | CloudEvents attributes |
//! | `time`, `datacontenttype` | `TEXT`, nullable | CloudEvents attributes, as written (RFC 3339) |
//! | `extensions` | `JSONB` object of strings | extension attributes (`causationid`, ...) |
//! | `data` | `BYTEA` | the payload's bytes (JSON from [`Outbox::emit`]) |
//! | `created_at` | `TIMESTAMPTZ` | when the row was written: the lag's clock |
//! | `attempts`, `last_error`, `next_attempt_at` | `INTEGER`, `TEXT`, `TIMESTAMPTZ` | failed publishes: how many, the last error, when the next attempt is due |
//! | `published_at` | `TIMESTAMPTZ`, null until published | kept rows only ([`PublishedRows::KeepFor`]) |
//!
//! with the partial indexes `<prefix>outbox_pending` (`position` of the unpublished rows)
//! and `<prefix>outbox_published` (`published_at` of the published ones). Each emit also
//! sends `NOTIFY <prefix>outbox` (delivered at commit), on which the relays listen.
//!
//! `<prefix>inbox`, one row per event handled per consumer group: `consumer_group`,
//! `source`, `id` (`TEXT`, together the primary key) and `handled_at` (`TIMESTAMPTZ`,
//! indexed as `<prefix>inbox_handled_at` for [`Inbox::cleanup`]).
//!
//! # Metrics
//!
//! With the feature `metrics`, through the `metrics` facade, labelled `table`: the gauges
//! `bus_outbox_pending` (rows not published yet) and `bus_outbox_oldest_seconds` (the age of
//! the oldest, 0 when none), measured by each relay at most once a second, and the counters
//! `bus_outbox_published_total` and `bus_outbox_publish_failures_total`.
//!
//! # Transport
//!
//! [`PostgresTransport`] implements [`bus_core::transport::Transport`] on three tables of a
//! database the service has already, so that a service with PostgreSQL and no broker can go
//! distributed: competing-consumer groups, ack / nack with a delay / reject, dead letters,
//! redelivery of what a crashed consumer held, deduplication, `LISTEN/NOTIFY` wake-ups with
//! polling as the fallback.
//!
//! ```no_run
//! use bus_core::transport::{SubscribeOptions, Transport, WireEvent};
//! use bus_postgres::PostgresTransport;
//! use futures_util::StreamExt;
//! use std::time::Duration;
//!
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), bus_core::transport::TransportError> {
//! let postgres = PostgresTransport::builder(pool)              // or a URL
//!     .table_prefix("bus_")                                   // bus_events, bus_groups, ...
//!     .instance_name("billing-1")
//!     .poll_interval(Duration::from_millis(500))              // the fallback of NOTIFY
//!     .connect()
//!     .await?;
//! let mut billing = postgres
//!     .subscribe(SubscribeOptions::new("orders.*").group("billing").max_deliveries(5))
//!     .await?;
//! postgres.publish(WireEvent::new("order-1", "shop", "orders.created", "{}")).await?;
//! while let Some(delivery) = billing.next().await {
//!     let delivery = delivery?;
//!     match delivery.attempt() {
//!         1 => delivery.nack(Duration::from_millis(100), "try again".into()).await?,
//!         _ => delivery.ack().await?,
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Tables
//!
//! Created by [`connect`](PostgresTransportBuilder::connect) when missing
//! ([`create_schema`](PostgresTransportBuilder::create_schema)), by [`Schema::create`], or by
//! the migration `migrations/0002_transport.sql` (prefix `bus_`):
//!
//! | table | one row per | columns |
//! |---|---|---|
//! | `<prefix>events` | event, every name in one table | `seq` (identity), `xid` (`pg_current_xact_id()` of the publishing transaction), `name`, `source`, `event_id`, `time`, `content_type`, `extensions` (jsonb object of strings), `data` (bytea), `published_at`; unique `(source, event_id)`; index on `xid` |
//! | `<prefix>groups` | consumer group, and live subscription outside any group (`plain`) | `name`, `pattern`, `regex` (the pattern as a PostgreSQL regular expression), `horizon` (xid8), `plain`, `expires_at`, `created_at` |
//! | `<prefix>deliveries` | event a group has still to settle | `group_name`, `seq`, `attempts`, `available_at`, `claimed_by`; deleted by the ack; indexes on `seq` and on `(group_name, available_at, seq)` |
//!
//! **One events table with a name column**, not a table per name: a pattern subscription
//! (`orders.>`) is then one indexed range scan with a regular-expression filter instead of a
//! union over tables found by name, a new event name needs no DDL at publish (no `CREATE
//! TABLE` racing in the hot path, no catalogue growth per name), and the unique index on
//! `(source, event_id)` deduplicates across names, as the CloudEvents identity says it should.
//!
//! ## Delivery
//!
//! **Per-row delivery records, filled from a transaction-id horizon.** A sequence number is
//! allocated before its transaction commits, so a cursor over `seq` that passed a row whose
//! transaction is still open would skip it for good. Instead each group keeps a `horizon`:
//! every event whose `xid` is below it has a delivery record of the group. A poll moves it
//! to `pg_snapshot_xmin(pg_current_snapshot())`, in one statement that also inserts the
//! records of the events with `horizon <= xid < xmin` whose name matches: a transaction below
//! the snapshot's `xmin` has ended, so its events are visible now or never, whatever order
//! their `seq`s were allocated and committed in. The records are then claimed with
//! `FOR UPDATE SKIP LOCKED` (a batch of [`batch_size`](PostgresTransportBuilder::batch_size),
//! those due first, and in `seq` order among the records due together: a fill's records are
//! all due at once), which makes the members of a group compete without blocking each other.
//! The claim walks the index `(group_name, available_at, seq)`, whose order is its own, so it
//! stops at its `LIMIT` whatever statistics the planner holds of a table that is empty one
//! minute and thousands of rows behind the next.
//! Per-row records rather than a bare cursor because a group must also remember, per event,
//! how many deliveries were made, until when one is claimed, and when a nacked one is due:
//! the record is that state, and the ack deletes it.
//!
//! The price of the horizon: an event becomes claimable only once every transaction that was
//! open when it committed (with a transaction id, in the whole cluster) has ended. A
//! long-running writing transaction elsewhere on the server delays delivery (not order, not
//! completeness) until it ends.
//!
//! | bus | PostgreSQL |
//! |---|---|
//! | publish | `INSERT ... ON CONFLICT (source, event_id) DO NOTHING` and `pg_notify('<prefix>events', name)` in one statement: resolved once committed |
//! | duplicate (same source and id) | not inserted: the publish resolves `Ok`, is logged at `info`, counted in [`PostgresTransport::duplicates_dropped`] and, with the feature `metrics`, `bus_duplicates_dropped_total`; the same id from another source is another event |
//! | group `g` | row `g` of `<prefix>groups`, created by its first subscription with `horizon = pg_current_xact_id()`: a new group gets the events published after its first subscription; an existing group resumes where it stood (durable). Subscribing to it with another pattern is [`TransportError::Invalid`](bus_core::transport::TransportError::Invalid) |
//! | no group | a row `subscription-<instance>-<n>` of its own (`plain`), created the same way and deleted when the subscription closes; renewed every 15 s, and removed by any transport that has a subscription once it has not been renewed for 60 s (its process died) |
//! | pattern `a.*`, `a.>` | the regular expression `^a\.[^.]+$`, `^a\..+$` on `name` (NATS token semantics: `*` one token, a last `>` one or more) |
//! | wake-up | `LISTEN <prefix>events` on one connection per transport (from its first subscription); a notification wakes the subscriptions whose pattern matches the name it carries. Without one, a subscription polls every [`poll_interval`](PostgresTransportBuilder::poll_interval) |
//! | `attempt()` | the record's `attempts`, counted by the claim |
//! | retention | [`Retention::MaxAge`], [`Retention::MaxLen`]: `DELETE` of the events past it, at connect and every [`PURGE_INTERVAL`] |
//! | `ack` | the record deleted; resolved once applied (every client sees it), without waiting for the WAL flush unless [`ack_sync`](PostgresTransportBuilder::ack_sync) (see *Acks without a flush* below) |
//! | `nack(d)` | `available_at = now() + d`: claimed again once due (within a poll interval) |
//! | `ack_wait` | a claim sets `available_at = now() + ack_wait`: a delivery left unsettled (a crashed or hung consumer) is claimed again by any member after it |
//! | `reject`, or a failure on the last allowed attempt | the dead letter stored and the record deleted, in one statement |
//! | `release`, or a delivery dropped unsettled | `available_at = now()`: claimed again at once (dead-lettered instead on the last allowed attempt); a drop does it in a task, which [`flush`](bus_core::transport::Transport::flush) waits for |
//! | a subscription closed | the records it had claimed and not handed out go back, their claim not counted |
//! | dead letter | the event under `dead-letter.<name>`, id `<id>.dead.<group>`, with `deadletterof`, `deadletterreason`, `deadlettergroup` (the group, or `subscription-<instance>-<n>`) and `deadletterattempts` ([`WireEvent::dead_letter`](bus_core::transport::WireEvent::dead_letter)), published in the same tables |
//!
//! A record claimed again after its ack wait whose `attempts` are past `max_deliveries` (its
//! last delivery was never settled) is dead-lettered by the member that claims it, with the
//! reason `not settled within the ack wait of ... (after n deliveries)`. A row that does not
//! decode as an event (written by another client: an invalid name, an empty id, a payload over
//! [`max_payload`](PostgresTransportBuilder::max_payload)) is dead-lettered with the reason
//! and never handed out.
//!
//! **Capabilities**: persistent (the tables are as durable as the server makes commits),
//! ordered (a single subscriber gets the events of a name in the order they were published
//! one after another: later publishes have later transaction ids and `seq`s), groups,
//! deduplicates (for as long as the event is stored), and restartable when the builder says
//! so ([`restartable`](PostgresTransportBuilder::restartable)).
//!
//! **Acks without a flush.** Unless [`ack_sync`](PostgresTransportBuilder::ack_sync), an ack,
//! a subscription's fill and its claim commit with `synchronous_commit = off`, set for their
//! own transaction (`set_config(.., true)` inside the statement, so a pool shared with the
//! application and a pooler in transaction mode are unaffected): an ack does not wait for the
//! disk, and a crash of the server (not of the client) within about three
//! `wal_writer_delay`s (600 ms by default) may forget the last fills, claims and acks, whose
//! events are then delivered again: at-least-once as always, the duplicate for an [`Inbox`]
//! to absorb. Nothing is lost: a publish, a nack and a dead letter always wait for their
//! flush, and a forgotten fill is made again from the events, which are durable.
//! `ack_sync(true)` makes every ack durable when it resolves, at the price of one flush each
//! (`BENCHMARKS.md` measures both).
//!
//! **Restarts.** A publish, an ack, a nack or a dead letter that meets a broken connection or
//! a server starting up is retried until the
//! [`publish_deadline`](PostgresTransportBuilder::publish_deadline); a subscription retries
//! its polls forever with a backoff, and yields an error only for what retrying does not cure.
//!
//! **Retention.** Events stay in `<prefix>events` until an operator deletes them, or, with a
//! [`retention`](PostgresTransportBuilder::retention) (`MaxAge`, `MaxLen`), until the
//! transport deletes them past it; deleting an event deletes its delivery records, and its
//! source and id are no longer a duplicate.
//!
//! **Limits.** Every idle subscription polls (two short statements) every poll interval. Each transport holds one connection for `LISTEN`
//! besides its pool: on a server with a small `max_connections`, give many transports of one
//! process one [`PgPool`](sqlx::PgPool).
//!
//! **Logs.** Spans `bus.postgres.connect` (prefix), `bus.postgres.publish` (event, id),
//! `bus.postgres.subscription` (pattern, group), `bus.postgres.settle` (how, event, id,
//! attempt), `bus.postgres.group_stats` (group).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod inbox;
mod local;
mod outbox;
mod relay;
mod schema;
mod transport;

pub use crate::error::OutboxError;
pub use crate::inbox::Inbox;
pub use crate::local::LocalBus;
pub use crate::outbox::{JSON, Lag, Outbox};
pub use crate::relay::{PublishedRows, Relay, RelayBuilder};
pub use crate::schema::{
    DEFAULT_PARTS, DEFAULT_PREFIX, MAX_PREFIX_LEN, SCHEMA_LOCK_KEY, Schema, SchemaPart,
};
pub use crate::transport::{
    ConnectTo, DEFAULT_BATCH_SIZE, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POLL_INTERVAL, DEFAULT_PUBLISH_DEADLINE, DEFAULT_RETENTION, PURGE_INTERVAL,
    PostgresTransport, PostgresTransportBuilder, PostgresTransportError,
};
/// How much of its events the transport keeps: see
/// [`PostgresTransportBuilder::retention`].
pub use bus_core::transport::Retention;

/// The client library, re-exported so that users name the same `sqlx` as this crate.
pub use sqlx;
