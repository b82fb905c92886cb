//! The baseline a `PostgresTransport` is measured against: a bare job queue on one table,
//! claimed with `FOR UPDATE SKIP LOCKED` and deleted by the worker that took it, with nothing
//! of a transport (no groups, no fan-out, no redelivery, no dead letters). Kept here for a
//! benchmark to reuse: `create`, `enqueue`, `work`, `drop`.

#![allow(
    dead_code,
    reason = "kept for a benchmark to reuse: the test uses a part of it"
)]

use bus_postgres::sqlx::{self, AssertSqlSafe, PgPool};

/// Creates the queue table `table` (a trusted identifier: the caller makes it).
pub async fn create(pool: &PgPool, table: &str) -> Result<(), sqlx::Error> {
    let statement = format!(
        "CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         payload bytea NOT NULL)"
    );
    sqlx::query(AssertSqlSafe(statement)).execute(pool).await?;
    Ok(())
}

/// Adds `count` jobs, their payload their number, in one statement.
pub async fn enqueue(pool: &PgPool, table: &str, count: i64) -> Result<(), sqlx::Error> {
    let statement = format!(
        "INSERT INTO {table} (payload) SELECT int8send(n) FROM generate_series(1, $1) AS n"
    );
    sqlx::query(AssertSqlSafe(statement))
        .bind(count)
        .execute(pool)
        .await?;
    Ok(())
}

/// One worker: claims and deletes the oldest job nobody else holds, one statement a job,
/// until the queue is empty; returns the numbers of the jobs it did.
pub async fn work(pool: &PgPool, table: &str) -> Result<Vec<i64>, sqlx::Error> {
    let statement = format!(
        "DELETE FROM {table} WHERE id = (
             SELECT id FROM {table} ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
         RETURNING payload"
    );
    let mut done = Vec::new();
    loop {
        let job: Option<Vec<u8>> = sqlx::query_scalar(AssertSqlSafe(statement.clone()))
            .fetch_optional(pool)
            .await?;
        let Some(payload) = job else {
            return Ok(done);
        };
        let number: [u8; 8] = payload.try_into().expect("an int8send payload");
        done.push(i64::from_be_bytes(number));
    }
}

/// Drops the queue table.
pub async fn drop(pool: &PgPool, table: &str) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(pool)
        .await?;
    Ok(())
}
