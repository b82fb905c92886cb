//! The tables: [`Schema`] creates them, idempotently, under a table prefix.

use sqlx::{AssertSqlSafe, PgPool};

use crate::error::OutboxError;

/// The table prefix when none is given: tables `bus_outbox`, `bus_inbox`, `bus_events`, ...
pub const DEFAULT_PREFIX: &str = "bus_";

/// The longest table prefix: the longest name derived from it (`<prefix>outbox_published`)
/// must fit PostgreSQL's 63 bytes, which would otherwise cut it silently.
pub const MAX_PREFIX_LEN: usize = 32;

/// The key of the advisory lock that [`Schema::create`] holds while it creates the tables, so
/// that two processes creating them at once do not collide (`CREATE TABLE IF NOT EXISTS` is
/// not safe against a concurrent one: the second fails on the catalog's unique index).
/// `"bus_pg_1"` in ASCII.
pub const SCHEMA_LOCK_KEY: i64 = 0x6275_735f_7067_5f31;

/// One part of the schema: the DDL of some tables, for a table prefix. Every statement must be
/// idempotent (`IF NOT EXISTS`), as [`Schema::create`] runs them all on every call.
pub type SchemaPart = fn(prefix: &str) -> String;

/// The parts [`Schema::new`] creates: the outbox, the inbox and the tables of
/// [`PostgresTransport`](crate::PostgresTransport), so that one call makes every table of the
/// crate.
pub const DEFAULT_PARTS: &[SchemaPart] = &[
    crate::outbox::ddl,
    crate::inbox::ddl,
    crate::transport::schema::part,
];

/// Creates the tables of this crate in one call, idempotently: safe to call at every start,
/// from several processes at once.
///
/// ```no_run
/// use bus_postgres::Schema;
///
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), bus_postgres::OutboxError> {
/// Schema::new().prefix("shop_").create(&pool).await?; // shop_outbox, shop_inbox, shop_events, ...
/// # Ok(())
/// # }
/// ```
///
/// Users who manage their schema with migrations apply `migrations/0001_outbox.sql` (outbox
/// and inbox) and `migrations/0002_transport.sql` (the transport's tables) of this crate
/// instead: the same DDL, for the default prefix `bus_` only, e.g. copied into their own
/// migrations directory.
#[derive(Debug, Clone)]
pub struct Schema {
    prefix: String,
    parts: Vec<SchemaPart>,
}

impl Default for Schema {
    fn default() -> Self {
        Schema::new()
    }
}

impl Schema {
    /// The tables of [`DEFAULT_PARTS`] under the [`DEFAULT_PREFIX`].
    pub fn new() -> Self {
        Schema {
            prefix: DEFAULT_PREFIX.to_owned(),
            parts: DEFAULT_PARTS.to_vec(),
        }
    }

    /// Names the tables `<prefix>outbox`, `<prefix>inbox`, `<prefix>events`, ...: one to
    /// [`MAX_PREFIX_LEN`] lower-case ASCII letters, digits and `_`, not starting with a digit.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Adds a part to create after the others (the tables of another component).
    #[must_use]
    pub fn part(mut self, part: SchemaPart) -> Self {
        self.parts.push(part);
        self
    }

    /// The DDL that [`create`](Schema::create) runs: every part, in order.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Prefix`] when the prefix is invalid.
    pub fn ddl(&self) -> Result<String, OutboxError> {
        validate_prefix(&self.prefix)?;
        Ok(self
            .parts
            .iter()
            .map(|part| part(&self.prefix).trim().to_owned())
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Creates the tables that do not exist yet, in one transaction that holds the advisory
    /// lock [`SCHEMA_LOCK_KEY`] (`pg_advisory_xact_lock`), so that concurrent calls run one
    /// after the other. Existing tables are left as they are.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Prefix`] for an invalid prefix, [`OutboxError::Database`] when a
    /// statement fails (unreachable database, missing privilege).
    pub async fn create(&self, pool: &PgPool) -> Result<(), OutboxError> {
        let ddl = self.ddl()?;
        let table = format!("{}outbox", self.prefix);
        let failed = || OutboxError::database("creating the tables", &table);
        let mut tx = pool.begin().await.map_err(failed())?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(failed())?;
        // The DDL is made of the validated prefix and constant text, never of user data.
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(&mut *tx)
            .await
            .map_err(failed())?;
        tx.commit().await.map_err(failed())?;
        tracing::debug!(prefix = %self.prefix, "bus-postgres tables in place");
        Ok(())
    }
}

/// Checks that `prefix` can start a PostgreSQL identifier without quoting: the one rule of
/// every table prefix of the crate.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), OutboxError> {
    crate::transport::schema::check_prefix(prefix).map_err(|_| OutboxError::Prefix {
        prefix: prefix.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for good in ["bus_", "_x", "t0123456789abcdefghijklmnopqrstu"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in [
            "0bus",
            "Bus_",
            "bus-",
            "bus.",
            "a\"b",
            "a b",
            "t0123456789abcdefghijklmnopqrstuv",
            "é",
            "",
        ] {
            assert!(
                matches!(validate_prefix(bad), Err(OutboxError::Prefix { .. })),
                "{bad}"
            );
        }
    }

    /// The migration files, in order, are the DDL of the default prefix, so that the two
    /// never drift.
    #[test]
    fn the_migrations_are_the_default_ddl() {
        let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<_> = std::fs::read_dir(&directory)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
            .collect();
        files.sort();
        let statements: Vec<String> = files
            .iter()
            .map(|file| {
                let text = std::fs::read_to_string(file).unwrap();
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|line| !line.starts_with("--"))
                    .collect();
                lines.join("\n").trim().to_owned()
            })
            .collect();
        let ddl = Schema::new().ddl().unwrap();
        assert_eq!(statements.join("\n"), ddl.trim());
    }

    #[test]
    fn an_invalid_prefix_is_refused() {
        let error = Schema::new().prefix("Bad-").ddl().unwrap_err();
        assert!(error.to_string().contains("`Bad-`"), "{error}");
    }
}
