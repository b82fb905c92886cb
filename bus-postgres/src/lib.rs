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
//! [`Schema::create`] makes them (`IF NOT EXISTS`, under an advisory lock, so concurrent calls
//! are safe), under a prefix (`bus_` by default). The same DDL, for the default prefix only,
//! is the sqlx migration `migrations/0001_outbox.sql` of this crate, for users who manage
//! their schema.
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
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod inbox;
mod local;
mod outbox;
mod relay;
mod schema;

pub use crate::error::OutboxError;
pub use crate::inbox::Inbox;
pub use crate::local::LocalBus;
pub use crate::outbox::{JSON, Lag, Outbox};
pub use crate::relay::{PublishedRows, Relay, RelayBuilder};
pub use crate::schema::{
    DEFAULT_PARTS, DEFAULT_PREFIX, MAX_PREFIX_LEN, SCHEMA_LOCK_KEY, Schema, SchemaPart,
};

/// The client library, re-exported so that users name the same `sqlx` as this crate.
pub use sqlx;
