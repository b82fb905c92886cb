//! An order service that saves an order and emits `order.placed` in one PostgreSQL
//! transaction (the transactional outbox), relayed to NATS JetStream, where the billing
//! service's listener gets it; or, with `local`, relayed to a listener of a bus in this
//! process, with no broker (in-process events that survive a crash between commit and
//! delivery).
//!
//! ```sh
//! cargo run --example outbox --features postgres,nats                # through NATS on 127.0.0.1:4222
//! cargo run --example outbox --features postgres,nats -- local       # in process, no broker
//! cargo run --example outbox --features postgres,nats -- postgres://user@host/db nats://host:4222
//! ```
//!
//! The order and its event commit together or not at all: the second order's transaction is
//! rolled back, and its event is never published. If the process died between the commit and
//! the publish, the next relay to start would publish the event (NATS stores it once: the
//! event id is the message id it deduplicates on).

use std::sync::Arc;
use std::time::Duration;

use bus::EventBus;
use bus::nats::NatsTransport;
use bus::postgres::sqlx::PgPool;
use bus::postgres::sqlx::postgres::PgPoolOptions;
use bus::postgres::{LocalBus, Outbox, Relay, Schema};
use bus::transport::Transport;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, bus::Event)]
#[event(name = "order.placed", distributed)]
struct OrderPlaced {
    order: i64,
    total_cents: i64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

const DEFAULT_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// The tables of the example (its outbox, its orders) and its NATS subjects live under this
/// prefix, apart from anything else on the servers.
const PREFIX: &str = "example_outbox_";

/// Saves order `order` and emits `order.placed` in one transaction; rolls it back instead of
/// committing when `commit` is false.
async fn place_order(
    pool: &PgPool,
    outbox: &Outbox,
    order: i64,
    total_cents: i64,
    commit: bool,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx_insert_order(&mut tx, order, total_cents).await?;
    outbox
        .emit(&mut tx, "order.placed", &OrderPlaced { order, total_cents })
        .await?;
    if commit {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(())
}

/// The service's own write, in the user's transaction.
async fn sqlx_insert_order(
    tx: &mut bus::postgres::sqlx::PgConnection,
    order: i64,
    total_cents: i64,
) -> Result<(), Error> {
    bus::postgres::sqlx::query(
        "INSERT INTO example_outbox_orders (id, total_cents) VALUES ($1, $2) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(order)
    .bind(total_cents)
    .execute(tx)
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let local = args.first().is_some_and(|arg| arg == "local");
    if local {
        args.remove(0);
    }
    let mut args = args.into_iter();
    let database = args.next().unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    let nats_url = args.next().unwrap_or_else(|| DEFAULT_NATS.to_owned());

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&database)
        .await?;
    // One call creates the crate's tables (idempotent); the orders are the service's own.
    Schema::new().prefix(PREFIX).create(&pool).await?;
    bus::postgres::sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_outbox_orders \
         (id bigint PRIMARY KEY, total_cents bigint NOT NULL)",
    )
    .execute(&pool)
    .await?;

    // The billing service's listener, on a bus of its own: on NATS, or in this process.
    let (billing, transport): (EventBus, Arc<dyn Transport>) = if local {
        let billing = EventBus::builder().service("billing").build();
        let local = LocalBus::new(billing.clone()).event::<OrderPlaced>();
        (billing, Arc::new(local))
    } else {
        let nats = NatsTransport::builder(&nats_url)
            .subject_prefix("example-outbox")
            .stream_name("EXAMPLE_OUTBOX")
            .connect()
            .await?;
        let billing = EventBus::builder()
            .service("billing")
            .transport(nats.clone())
            .build();
        (billing, Arc::new(nats))
    };
    let (seen, mut received) = tokio::sync::mpsc::unbounded_channel();
    billing.add_listener("order.placed", move |placed: Arc<OrderPlaced>| {
        let seen = seen.clone();
        async move {
            println!(
                "billing: order {} placed, {} cents",
                placed.order, placed.total_cents
            );
            let _ = seen.send(placed.order);
        }
    });
    billing.ready().await?;

    // The order service: its relay publishes what the outbox holds once committed.
    let relay = Relay::builder(pool.clone(), transport)
        .prefix(PREFIX)
        .start()?;
    let outbox = Outbox::new("orders").prefix(PREFIX);

    let committed = i64::from(std::process::id()) * 10;
    place_order(&pool, &outbox, committed, 4_200, true).await?;
    println!("orders: order {committed} saved and emitted in one transaction");
    place_order(&pool, &outbox, committed + 1, 999, false).await?;
    println!(
        "orders: order {} rolled back: its event is never published",
        committed + 1
    );

    // Billing sees the committed order (and never the rolled-back one).
    let order = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match received.recv().await {
                Some(order) if order == committed => return Ok(order),
                Some(order) if order == committed + 1 => {
                    return Err(format!("order {order} was rolled back, yet delivered"));
                }
                Some(_) => continue, // an order of an earlier run, redelivered
                None => return Err("the listener is gone".to_owned()),
            }
        }
    })
    .await
    .map_err(|_| "order.placed did not arrive within 30 s")??;
    println!("billing: received order {order}");
    // The relay marks the row once the publish resolved: wait for it, then show the lag.
    let lag = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let lag = relay.lag().await?;
            if lag.pending == 0 {
                return Ok::<_, Error>(lag);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| "the relay did not mark the row within 30 s")??;
    println!(
        "relay: {} event(s) published{}; {} row(s) left to publish",
        relay.published(),
        if local {
            " to this process's bus"
        } else {
            " to NATS"
        },
        lag.pending
    );

    relay.stop().await;
    billing.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
