//! The tables of [`PostgresTransport`](super::PostgresTransport): their DDL for a table
//! prefix, and creating them once however many transports connect at the same moment.
//!
//! Three tables, named after the prefix (`bus_` by default):
//!
//! - `<prefix>events`: one row per event, every event name in one table (column `name`).
//!   `seq` orders them, `xid` is the publishing transaction (`pg_current_xact_id()`), which is
//!   what consumers advance over (see [`super`]); `(source, event_id)` is unique, which is the
//!   deduplication.
//! - `<prefix>groups`: one row per consumer group, and one per live subscription outside any
//!   group (`plain`, removed when it closes or stops renewing `expires_at`): its pattern, as
//!   given and as a PostgreSQL regular expression, and its `horizon`: every event whose `xid`
//!   is below it has been given a delivery record of this group.
//! - `<prefix>deliveries`: one row per event a group has still to settle: how many deliveries
//!   were made (`attempts`), from when it may be claimed (`available_at`: after a nack's
//!   delay, or when a claim's ack wait is over), and who claimed it last. An ack deletes it.
//!   Indexed by `seq` (for the deletes of retention) and by `(group_name, available_at, seq)`
//!   (the claim's order: due first).

use sqlx::PgPool;

use crate::schema::{MAX_PREFIX_LEN, SCHEMA_LOCK_KEY};

/// Checks a table prefix: lower-case ASCII letters, digits and `_`, not starting with a
/// digit, at most [`MAX_PREFIX_LEN`] bytes. The prefix is written into SQL as it is, so
/// nothing else is accepted.
///
/// # Errors
///
/// Why the prefix is refused, in a sentence.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("it is empty: use something like `bus_`".to_owned());
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "it is {} bytes long, over the limit of {MAX_PREFIX_LEN}",
            prefix.len()
        ));
    }
    if prefix.as_bytes()[0].is_ascii_digit() {
        return Err("it starts with a digit".to_owned());
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "it holds `{bad}`: only lower-case ASCII letters, digits and `_` are allowed"
        ));
    }
    Ok(())
}

/// The transport's tables as a part of [`Schema`](crate::Schema): [`ddl`] as one script, each
/// statement ended by `;`, in the form of `migrations/0002_transport.sql`.
pub(crate) fn part(prefix: &str) -> String {
    ddl(prefix)
        .into_iter()
        .map(|statement| format!("\n{statement};\n"))
        .collect()
}

/// The DDL of the transport's tables for `prefix` (checked by [`check_prefix`]), one statement
/// per item, each idempotent (`IF NOT EXISTS`): what [`create_schema`] runs, and what
/// `migrations/0002_transport.sql` holds for the prefix `bus_`.
pub(crate) fn ddl(prefix: &str) -> Vec<String> {
    let p = prefix;
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {p}events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    name text NOT NULL,
    source text NOT NULL,
    event_id text NOT NULL,
    time text,
    content_type text,
    extensions jsonb NOT NULL DEFAULT '{{}}',
    data bytea NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT {p}events_source_id UNIQUE (source, event_id)
)"
        ),
        format!("CREATE INDEX IF NOT EXISTS {p}events_xid ON {p}events (xid)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {p}groups (
    name text PRIMARY KEY,
    pattern text NOT NULL,
    regex text NOT NULL,
    horizon xid8 NOT NULL,
    plain boolean NOT NULL DEFAULT false,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {p}deliveries (
    group_name text NOT NULL REFERENCES {p}groups (name) ON DELETE CASCADE,
    seq bigint NOT NULL REFERENCES {p}events (seq) ON DELETE CASCADE,
    attempts integer NOT NULL DEFAULT 0,
    available_at timestamptz NOT NULL DEFAULT now(),
    claimed_by text,
    PRIMARY KEY (group_name, seq)
)"
        ),
        format!("CREATE INDEX IF NOT EXISTS {p}deliveries_seq ON {p}deliveries (seq)"),
        format!(
            "CREATE INDEX IF NOT EXISTS {p}deliveries_due \
             ON {p}deliveries (group_name, available_at, seq)"
        ),
    ]
}

/// The DDL of [`ddl`] as one SQL script, statements ended by `;`: the text of the migration.
#[cfg(test)]
pub(crate) fn script(prefix: &str) -> String {
    let mut script = String::from(
        "-- The tables of PostgresTransport (bus-postgres), for the table prefix `bus_`.\n\
         -- Generated from `transport::schema::ddl`: a test checks that they agree.\n",
    );
    for statement in ddl(prefix) {
        script.push('\n');
        script.push_str(&statement);
        script.push_str(";\n");
    }
    script
}

/// Creates the tables of `prefix` if they do not exist, in one transaction under an advisory
/// lock named after the prefix, so that transports connecting at the same moment do not race
/// on `CREATE TABLE IF NOT EXISTS` (which is not safe against itself).
pub(crate) async fn create_schema(pool: &PgPool, prefix: &str) -> Result<(), sqlx::Error> {
    let mut transaction = pool.begin().await?;
    // The lock of `Schema::create`, which creates the same tables: the two never race.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK_KEY)
        .execute(&mut *transaction)
        .await?;
    for statement in ddl(prefix) {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("bus_").is_ok());
        assert!(check_prefix("t_abc123_").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("1bus").is_err());
        assert!(check_prefix("Bus").is_err());
        assert!(check_prefix("bus;drop").is_err());
        assert!(check_prefix("bus\"").is_err());
        assert!(check_prefix(&"a".repeat(MAX_PREFIX_LEN)).is_ok());
        assert!(check_prefix(&"a".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }

    #[test]
    fn the_migration_is_the_ddl_of_the_default_prefix() {
        let migration = include_str!("../../migrations/0002_transport.sql");
        assert_eq!(migration, script(crate::schema::DEFAULT_PREFIX));
    }

    #[test]
    fn every_name_fits_in_a_postgres_identifier() {
        let prefix = "a".repeat(MAX_PREFIX_LEN);
        let longest = format!("{prefix}deliveries_seq");
        assert!(longest.len() <= 63, "{longest}");
        for statement in ddl(&prefix) {
            assert!(statement.contains(&prefix));
        }
    }
}
