//! Scenario (o), issue 17: what the transactional outbox of `bus-postgres` costs, against a
//! real PostgreSQL and a real NATS server.
//!
//! - **emit in a transaction**: [`Counts::transactions`] transactions, [`Counts::workers`] at
//!   a time on a pool of as many connections, each inserting an order row and committing;
//!   then the same transactions with an `Outbox::emit` of the order before the commit. The
//!   ratio of the two rates is what the outbox adds to a transaction that already writes.
//! - **relay to NATS**: [`Counts::relayed`] events committed to the outbox first, then one
//!   `Relay` started towards a `NatsTransport` (a stream of the run's own), timed until it has
//!   published and marked every row (`Relay::published`, then the outbox's lag at zero).
//!
//! Every table of a run has the run's own prefix and is dropped at its end, with the stream.

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use bus_core::transport::Transport;
use bus_nats::NatsTransport;
use bus_postgres::sqlx::postgres::PgPoolOptions;
use bus_postgres::sqlx::{self, AssertSqlSafe, PgPool};
use bus_postgres::{Outbox, Relay, Schema};
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::broker::guard;
use crate::postgres::drop_prefix;

/// The sizes of a run of scenario (o).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Transactions of each emit row.
    pub transactions: u64,
    /// Transactions running at once (and connections in the pool).
    pub workers: usize,
    /// Events in the outbox when the relay starts.
    pub relayed: u64,
}

impl Counts {
    /// The full counts (10,000 transactions, 8 at a time; 10,000 events relayed) divided by
    /// `divisor`.
    pub fn new(divisor: u64) -> Counts {
        let divisor = divisor.max(1);
        Counts {
            transactions: (10_000 / divisor).max(1),
            workers: 8,
            relayed: (10_000 / divisor).max(1),
        }
    }
}

/// The rates of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    /// Transactions a second, each inserting an order.
    pub plain: f64,
    /// Transactions a second, each inserting an order and emitting it through the outbox.
    pub with_outbox: f64,
    /// Events a second, from the outbox to NATS (published and marked).
    pub relay: f64,
}

/// An order, as the example's service writes it.
#[derive(Debug, Serialize)]
struct OrderPlaced {
    order: i64,
    total_cents: i64,
}

/// Runs scenario (o) once, on tables and a stream of its own (`tag` makes their names
/// unique), and drops them afterwards.
///
/// # Errors
///
/// When a server fails, a phase times out, or the relay loses an event.
pub fn run(
    counts: Counts,
    database: &str,
    nats: &str,
    tag: &str,
    runtime: &Runtime,
) -> Result<Measure, String> {
    let prefix = format!(
        "obench_{}_{}_{tag}_",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let stream = prefix.trim_end_matches('_').to_uppercase();
    runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(counts.workers).unwrap_or(8))
            .acquire_timeout(Duration::from_secs(10))
            .connect(database)
            .await
            .map_err(|e| format!("PostgreSQL unreachable at {database}: {e}"))?;
        let outcome = measure(counts, &pool, nats, &prefix, &stream).await;
        let dropped = drop_prefix(&pool, &prefix).await;
        pool.close().await;
        if let Ok(admin) = async_nats::connect(nats).await {
            let _ = jetstream::new(admin.clone()).delete_stream(&stream).await;
            let _ = admin.flush().await;
        }
        let measure = outcome?;
        dropped.map_err(|e| format!("dropping the tables of {prefix}: {e}"))?;
        Ok(measure)
    })
}

async fn measure(
    counts: Counts,
    pool: &PgPool,
    nats: &str,
    prefix: &str,
    stream: &str,
) -> Result<Measure, String> {
    Schema::new()
        .prefix(prefix)
        .create(pool)
        .await
        .map_err(|e| e.to_string())?;
    let orders = format!("{prefix}orders");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {orders} (id bigint PRIMARY KEY, total_cents bigint NOT NULL)"
    )))
    .execute(pool)
    .await
    .map_err(|e| format!("creating {orders}: {e}"))?;
    let outbox = Outbox::new("bench").prefix(prefix);

    // Emit in a transaction, without then with the outbox (ids apart, so both insert).
    let plain = guard(
        "transactions without the outbox",
        transactions(pool, &orders, None, 0, counts),
    )
    .await??;
    let with_outbox = guard(
        "transactions with the outbox",
        transactions(pool, &orders, Some(&outbox), 1 << 40, counts),
    )
    .await??;

    // Relay: the outbox holds the rows of the second phase plus `relayed` more.
    let base = 2 << 40;
    guard(
        "filling the outbox",
        transactions(
            pool,
            &orders,
            Some(&outbox),
            base,
            Counts {
                transactions: counts.relayed,
                ..counts
            },
        ),
    )
    .await??;
    let pending = outbox.lag(pool).await.map_err(|e| e.to_string())?.pending;
    let transport = NatsTransport::builder(nats)
        .subject_prefix(prefix.trim_end_matches('_'))
        .stream_name(stream)
        .connect()
        .await
        .map_err(|e| format!("NATS unreachable at {nats}: {e}"))?;
    let transport: std::sync::Arc<dyn Transport> = std::sync::Arc::new(transport);
    let start = Instant::now();
    let relay = Relay::builder(pool.clone(), transport)
        .prefix(prefix)
        .start()
        .map_err(|e| e.to_string())?;
    guard("relaying", async {
        loop {
            if relay.published() >= pending {
                let lag = relay.lag().await.map_err(|e| e.to_string())?;
                if lag.pending == 0 {
                    return Ok::<_, String>(());
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await??;
    let relay_rate = pending as f64 / start.elapsed().as_secs_f64();
    if relay.published() != pending {
        return Err(format!(
            "the relay published {} events for {pending} rows",
            relay.published()
        ));
    }
    relay.stop().await;
    Ok(Measure {
        plain,
        with_outbox,
        relay: relay_rate,
    })
}

/// Runs `counts.transactions` transactions, `counts.workers` at a time, each inserting order
/// `base + n` (and emitting it through `outbox`, when given) then committing; returns
/// transactions a second.
async fn transactions(
    pool: &PgPool,
    orders: &str,
    outbox: Option<&Outbox>,
    base: i64,
    counts: Counts,
) -> Result<f64, String> {
    let insert = format!("INSERT INTO {orders} (id, total_cents) VALUES ($1, $2)");
    let start = Instant::now();
    futures_util::stream::iter(0..counts.transactions)
        .map(|n| {
            let insert = insert.clone();
            async move {
                let order = base + i64::try_from(n).unwrap_or(i64::MAX);
                let mut tx = pool.begin().await.map_err(|e| format!("BEGIN: {e}"))?;
                sqlx::query(AssertSqlSafe(insert))
                    .bind(order)
                    .bind(order % 10_000)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| format!("INSERT: {e}"))?;
                if let Some(outbox) = outbox {
                    let placed = OrderPlaced {
                        order,
                        total_cents: order % 10_000,
                    };
                    outbox
                        .emit(&mut tx, "order.placed", &placed)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                tx.commit().await.map_err(|e| format!("COMMIT: {e}"))
            }
        })
        .buffer_unordered(counts.workers)
        .try_for_each(|()| std::future::ready(Ok(())))
        .await?;
    Ok(counts.transactions as f64 / start.elapsed().as_secs_f64())
}

/// The markdown table of the runs' medians.
pub fn table(measures: &[Measure], counts: Counts) -> String {
    let median = |field: fn(&Measure) -> f64| {
        let mut values: Vec<f64> = measures.iter().map(field).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    let show =
        |value: Option<f64>| value.map_or_else(|| "failed".to_owned(), |v| format!("{v:.0}"));
    let plain = median(|m| m.plain);
    let with_outbox = median(|m| m.with_outbox);
    let ratio = match (with_outbox, plain) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    };
    format!(
        "| row | per second |\n|---|---:|\n\
         | transactions inserting an order, {workers} at a time | {} |\n\
         | the same, with `Outbox::emit` of the order | {} |\n\
         | with the outbox ÷ without | {ratio} |\n\
         | `Relay` to NATS: events published and marked | {} |\n",
        show(plain),
        show(with_outbox),
        show(median(|m| m.relay)),
        workers = counts.workers,
    )
}
