//! Retention: a transport with a limit deletes the events past it, at connect and then
//! periodically; `MaxBytes` is refused.

#[path = "common/pg_server.rs"]
mod pg_server;

use std::time::Duration;

use bus_core::transport::{Retention, Transport, TransportError, WireEvent};
use bus_postgres::sqlx::{self, AssertSqlSafe};
use pg_server::{PATIENCE, TestPostgres, unique, within};

async fn stored_ids(pg: &TestPostgres) -> Vec<String> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT event_id FROM {}events ORDER BY seq",
        pg.prefix
    )))
    .fetch_all(&pg.pool)
    .await
    .expect("the events")
}

/// Waits until the stored ids are `expected`, within [`PATIENCE`].
async fn wait_for(pg: &TestPostgres, expected: &[String]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stored = stored_ids(pg).await;
        if stored == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored {stored:?}, expected {expected:?}, not within {PATIENCE:?}"
        );
        // A poll of the table for the purge task's work, bounded by the deadline above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_len_keeps_the_newest_events() {
    let Some(pg) = TestPostgres::connect("retention_len", |builder| builder).await else {
        return;
    };
    let name = format!("orders.{}", unique());
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = format!("e{n}");
        within(
            "a publish",
            pg.publish(WireEvent::new(&id, "tests", &name, "{}")),
        )
        .await
        .expect("published");
        ids.push(id);
    }
    let _trimming = pg
        .another(|builder| builder.retention(Retention::MaxLen(2)))
        .await;
    wait_for(&pg, &ids[3..]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_deletes_the_old_events() {
    let Some(pg) = TestPostgres::connect("retention_age", |builder| builder).await else {
        return;
    };
    let name = format!("orders.{}", unique());
    within(
        "a publish",
        pg.publish(WireEvent::new("old", "tests", &name, "{}")),
    )
    .await
    .expect("published");
    // Made old by hand rather than by waiting.
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {}events SET published_at = now() - interval '2 hours'",
        pg.prefix
    )))
    .execute(&pg.pool)
    .await
    .expect("aged");
    within(
        "a publish",
        pg.publish(WireEvent::new("new", "tests", &name, "{}")),
    )
    .await
    .expect("published");
    let _trimming = pg
        .another(|builder| builder.retention(Retention::MaxAge(Duration::from_secs(3600))))
        .await;
    wait_for(&pg, &["new".to_owned()]).await;
}

#[tokio::test]
async fn max_bytes_is_refused() {
    let Some(pg) = TestPostgres::connect("retention_bytes", |builder| builder).await else {
        return;
    };
    let error = bus_postgres::PostgresTransport::builder(pg.pool.clone())
        .table_prefix(pg.prefix.clone())
        .retention(Retention::MaxBytes(1 << 20))
        .connect()
        .await
        .expect_err("MaxBytes is refused");
    assert!(
        matches!(
            error,
            TransportError::Invalid {
                what: "retention",
                ..
            }
        ),
        "{error}"
    );
}
